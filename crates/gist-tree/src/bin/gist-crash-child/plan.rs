//! The deterministic workload of the crash tests: what commit `v` of a seeded run appends and
//! edits. Shared (by `#[path]`) between the child process and the test that checks it.

/// Tree shape of crash-test trees: small blocks and segments so that levels and segment
/// rotation appear within a few commits.
pub fn config() -> metarep_gist_tree::TreeConfig {
    metarep_gist_tree::TreeConfig {
        block: 4,
        width: 4,
        dtype: metarep_gist_tree::GistDType::F16,
        segment_bytes: 8192,
    }
}

/// Seed of the mean-pooling summariser.
pub const POOL_SEED: u64 = 5;

/// splitmix64 step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What commit `version` does to a stream of `len` tokens.
pub struct Step {
    /// Tokens appended.
    pub append: Vec<u32>,
    /// An edit `(start, tokens)` applied after the append.
    pub edit: Option<(u64, Vec<u32>)>,
    /// Whether the child compacts after this commit.
    pub compact: bool,
}

/// The step of commit `version` (deterministic in `seed`, `version`, `len`).
pub fn step(seed: u64, version: u64, len: u64) -> Step {
    let r = mix(seed ^ mix(version));
    let n = 1 + (r % 60) as usize;
    let append: Vec<u32> = (0..n as u64).map(|i| (mix(r ^ i) % 1000) as u32).collect();
    let total = len + n as u64;
    let edit = (r >> 20).is_multiple_of(4);
    let edit = edit.then(|| {
        let start = mix(r ^ 0xE1) % total;
        let k = (1 + mix(r ^ 0xE2) % 9).min(total - start);
        (
            start,
            (0..k)
                .map(|i| 2000 + (mix(r ^ i ^ 0xE3) % 100) as u32)
                .collect(),
        )
    });
    Step {
        append,
        edit,
        compact: version.is_multiple_of(25),
    }
}
