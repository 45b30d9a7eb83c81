//! This process's memory as the kernel counts it (Linux `/proc/self/status`): the resident set
//! now, its peak, and a reset of the peak so one phase of a run can be measured on its own.
//! Elsewhere every reading is `None` and the reset does nothing.
//!
//! ```
//! use metarep_core::memory;
//!
//! memory::reset_peak();
//! let big = vec![1u8; 64 << 20];
//! if let (Some(now), Some(peak)) = (memory::resident_mib(), memory::peak_resident_mib()) {
//!     assert!(peak >= now - 1.0 && now >= 64.0);
//! }
//! drop(big);
//! ```

/// A size field of `/proc/self/status` (`VmRSS`, `VmHWM`, ...) in MiB, if readable.
pub fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The resident set of this process now (MiB; `VmRSS`).
pub fn resident_mib() -> Option<f64> {
    status_mib("VmRSS")
}

/// The largest resident set of this process since it started or since [`reset_peak`] (MiB;
/// `VmHWM`).
pub fn peak_resident_mib() -> Option<f64> {
    status_mib("VmHWM")
}

/// Resets [`peak_resident_mib`] to the resident set now (writes `5` to
/// `/proc/self/clear_refs`); does nothing where that file cannot be written.
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
