//! Process memory settings for heavy activation work.
//!
//! Caching every activation of a forward pass allocates hundreds of MB that are all freed at
//! once when the cache is dropped; glibc's malloc then hands them back to the kernel, and the
//! next pass pays a page fault (and the kernel's zeroing) for every 4 KiB page again. For loops
//! that cache or capture repeatedly, [`retain_freed_memory`] keeps freed memory in the process.

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
