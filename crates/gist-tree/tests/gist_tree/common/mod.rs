//! Helpers shared by the integration tests: the tree shape a token count implies and the gists
//! mean pooling must produce, computed from scratch.

use metarep_gist_tree::{MeanPool, TreeConfig};

/// Node counts per level for `tokens` tokens (level 0 counts blocks, the last may be partial).
pub fn counts(tokens: u64, b: u64) -> Vec<u64> {
    let mut c = Vec::new();
    if tokens == 0 {
        return c;
    }
    c.push(tokens.div_ceil(b));
    let mut n = tokens / b;
    while n > 0 {
        c.push(n);
        n /= b;
    }
    c
}

/// Expected gists of every node of level ≥ 1 (`[level][index]`, level 0 empty), computed from
/// scratch: means in child order, rounded to the tree's dtype level by level.
pub fn expected_gists(cfg: &TreeConfig, pool: &MeanPool, tokens: &[u32]) -> Vec<Vec<Vec<f32>>> {
    let (b, d) = (cfg.block as usize, cfg.width as usize);
    let c = counts(tokens.len() as u64, b as u64);
    let mut levels: Vec<Vec<Vec<f32>>> = vec![Vec::new()];
    for (l, n) in c.iter().enumerate().skip(1) {
        let mut level = Vec::new();
        for j in 0..*n as usize {
            let mut g = vec![0.0f32; d];
            if l == 1 {
                for t in &tokens[j * b..(j + 1) * b] {
                    for (o, v) in g.iter_mut().zip(pool.embedding(*t)) {
                        *o += *v;
                    }
                }
            } else {
                for child in &levels[l - 1][j * b..(j + 1) * b] {
                    for (o, v) in g.iter_mut().zip(child) {
                        *o += *v;
                    }
                }
            }
            level.push(
                g.iter()
                    .map(|v| cfg.dtype.round_trip(*v / b as f32))
                    .collect(),
            );
        }
        levels.push(level);
    }
    levels
}
