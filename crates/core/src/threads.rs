//! The CPU thread count, fixed once per process.
//!
//! candle-core 0.11 asks for its thread count on every matmul and, unless `RAYON_NUM_THREADS` is
//! set, recomputes it by reading `/proc/cpuinfo` (through `num_cpus`): measured here, one greedy
//! decoding step of SmolLM2-135M spends a fifth of its time there. [`fix_cpu_threads`] sets the
//! variable to the count candle would compute, so the file is read once.

/// Sets `RAYON_NUM_THREADS` to candle's own default when it is unset, and returns the thread
/// count in force. Call it at the start of `main`, before other threads exist (it changes the
/// process environment).
pub fn fix_cpu_threads() -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    let n = candle_core::utils::get_num_threads();
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_set_once_and_then_read_back() {
        let n = fix_cpu_threads();
        assert!(n >= 1);
        assert_eq!(std::env::var("RAYON_NUM_THREADS").unwrap(), n.to_string());
        assert_eq!(candle_core::utils::get_num_threads(), n);
        assert_eq!(fix_cpu_threads(), n);
    }
}
