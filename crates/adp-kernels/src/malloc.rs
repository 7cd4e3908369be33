//! glibc's `malloc` serves a block above its mmap threshold (128 KiB at first, raised as such
//! blocks are freed) with a fresh `mmap`, and hands freed memory at the top of its heap back to
//! the system beyond its trim threshold. A training or attack step allocates and frees the same
//! activations, gradients and im2col matrices of 0.1-4 MiB op after op, so by default each step
//! pays page faults and the kernel's zeroing of fresh pages again (a ResNet-20 step's profile
//! puts about 4% in the kernel's page-fault path alone). [`keep_freed_memory`] serves every block
//! up to 32 MiB (glibc's largest threshold) from the heap and keeps freed memory in the process
//! for the next step. On 2 cores that made ResNet-20 K = 3 training 2-12% faster and PGD 4-15%
//! (the small CNN: within the noise) at the same peak RSS (docs/performance.md); the process
//! keeps that peak until it exits.

use std::sync::atomic::{AtomicBool, Ordering};

static KEPT: AtomicBool = AtomicBool::new(false);

/// Sets glibc's mmap threshold to 32 MiB and its trim threshold to 1 GiB; returns whether glibc
/// took both (always false elsewhere than on Linux with glibc).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes the allocator's tuning parameters; it takes no pointers.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let ok = false;
    KEPT.fetch_or(ok, Ordering::Relaxed);
    ok
}

/// Whether [`keep_freed_memory`] has set the thresholds in this process.
pub fn keeps_freed_memory() -> bool {
    KEPT.load(Ordering::Relaxed)
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_both_thresholds() {
        assert!(keep_freed_memory());
        assert!(keeps_freed_memory());
    }
}
