//! Process memory settings for heavy activation work.
//!
//! Caching every activation of a forward pass allocates hundreds of MB that are all freed at
//! once when the cache is dropped; glibc's malloc then hands them back to the kernel, and the
//! next pass pays a page fault (and the kernel's zeroing) for every 4 KiB page again (+25–40%
//! on a GPT-2-small pass caching every hook). [`retain_freed_memory`] keeps freed memory in
//! the process instead, and the first `run_with_cache` applies it unless
//! [`keep_allocator_defaults`] was called before: the setting is process-wide, so a program
//! that must keep glibc's trimming (a long-lived service sharing the machine) opts out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

/// Whether cached passes may apply [`retain_freed_memory`] on their own.
static AUTO_RETAIN: AtomicBool = AtomicBool::new(true);

/// Keeps memory freed by glibc's malloc in the process (no trimming of the heap, heap rather
/// than `mmap` for blocks up to 32 MiB), so repeated large runs reuse pages instead of faulting
/// them in again. Process-wide and permanent; returns whether it was applied (false on other
/// platforms and C libraries, where it does nothing).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning parameters; it is called with valid
        // parameter numbers and values and touches no memory we own.
        unsafe {
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            trim == 1 && mmap == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Keeps glibc's default trimming: cached passes no longer apply [`retain_freed_memory`] on
/// their own (call before the first `run_with_cache`; a setting already applied stays).
pub fn keep_allocator_defaults() {
    AUTO_RETAIN.store(false, Ordering::Relaxed);
}

/// Applies [`retain_freed_memory`] once per process, unless [`keep_allocator_defaults`] was
/// called; every caching entry point calls this first.
pub(crate) fn retain_for_caching() {
    static APPLIED: Once = Once::new();
    if AUTO_RETAIN.load(Ordering::Relaxed) {
        APPLIED.call_once(|| {
            retain_freed_memory();
        });
    }
}
