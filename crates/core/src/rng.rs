//! Seeded randomness: every random draw flows from a `u64` seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A ChaCha8 generator seeded from `seed` (same seed, same stream, on every platform).
pub fn seeded(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The seed an example takes as its first command-line argument (`cargo run --example X -- 7`),
/// 0 without one; an error naming the argument when it is not an unsigned integer.
pub fn seed_arg() -> Result<u64> {
    match std::env::args().nth(1) {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| Error::Invalid(format!("SEED must be an unsigned integer, got '{s}'"))),
    }
}

/// A stable child seed for the named sub-stream: the first 8 bytes (little-endian) of
/// `sha256(seed.to_le_bytes() ++ stream)`.
pub fn derive_seed(seed: u64, stream: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(stream.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// `n` draws from Normal(mean, std); a negative or non-finite `std`/`mean` is an error.
pub fn normal_vec<R: Rng + ?Sized>(rng: &mut R, n: usize, mean: f64, std: f64) -> Result<Vec<f64>> {
    if !mean.is_finite() {
        return Err(Error::Invalid(format!(
            "normal mean must be finite, got {mean}"
        )));
    }
    if !(std.is_finite() && std >= 0.0) {
        return Err(Error::Invalid(format!(
            "normal std must be finite and >= 0, got {std}"
        )));
    }
    let dist = Normal::new(mean, std).map_err(|e| {
        Error::Invalid(format!(
            "normal std must be finite and >= 0, got {std}: {e}"
        ))
    })?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}

/// `n` draws from Uniform[lo, hi); `lo >= hi` or non-finite bounds are an error.
pub fn uniform_vec<R: Rng + ?Sized>(rng: &mut R, n: usize, lo: f64, hi: f64) -> Result<Vec<f64>> {
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(Error::Invalid(format!(
            "uniform bounds must be finite with lo < hi, got [{lo}, {hi})"
        )));
    }
    let dist = Uniform::new(lo, hi)
        .map_err(|e| Error::Invalid(format!("uniform bounds [{lo}, {hi}): {e}")))?;
    Ok((0..n).map(|_| dist.sample(rng)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_seed_is_stable_and_distinct() {
        assert_eq!(derive_seed(42, "data"), derive_seed(42, "data"));
        assert_ne!(derive_seed(42, "data"), derive_seed(42, "init"));
        assert_ne!(derive_seed(42, "data"), derive_seed(43, "data"));
        // Pinned value: changing the derivation silently would break reproducibility.
        assert_eq!(derive_seed(0, ""), {
            let d = Sha256::digest(0u64.to_le_bytes());
            u64::from_le_bytes(d[..8].try_into().unwrap())
        });
        assert_eq!(derive_seed(42, "data"), PINNED_42_DATA);
    }

    const PINNED_42_DATA: u64 = 12_607_140_152_665_841_478;

    #[test]
    fn same_seed_same_draws() {
        let a = normal_vec(&mut seeded(7), 16, 0.0, 1.0).unwrap();
        let b = normal_vec(&mut seeded(7), 16, 0.0, 1.0).unwrap();
        let c = normal_vec(&mut seeded(8), 16, 0.0, 1.0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let u = uniform_vec(&mut seeded(7), 100, -2.0, 3.0).unwrap();
        assert_eq!(u, uniform_vec(&mut seeded(7), 100, -2.0, 3.0).unwrap());
        assert!(u.iter().all(|&x| (-2.0..3.0).contains(&x)));
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(normal_vec(&mut seeded(0), 3, 0.0, -1.0).is_err());
        assert!(normal_vec(&mut seeded(0), 3, f64::NAN, 1.0).is_err());
        assert!(uniform_vec(&mut seeded(0), 3, 1.0, 1.0).is_err());
        assert!(uniform_vec(&mut seeded(0), 3, 0.0, f64::INFINITY).is_err());
    }
}
