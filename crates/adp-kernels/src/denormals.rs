//! Subnormal floats on the CPU: flushed to zero, or kept as IEEE 754 prescribes.
//!
//! A subnormal f32 (nonzero, below 1.18e-38 in magnitude) costs a micro-code assist on x86: an
//! FMA that reads or writes one is tens to hundreds of times slower. Backward passes meet them
//! wherever a softmax saturates, since ∂(−log p_y)/∂z_j = p_j is then below that bound: on a
//! confidently classified image, which is what an attack starts from, and on an untrained
//! ResNet-20 in eval mode. Measured on this crate's convolution (example `conv_timing`): with
//! every output gradient around 1e-39, its input and weight gradients took 50 to 65 times
//! longer than with ordinary values; PyTorch 2.9's CPU convolution slowed about 100 times in the
//! same test (docs/performance.md).
//!
//! Flushing sets two bits of the thread's floating-point control register (x86-64 `MXCSR`):
//! FTZ writes zero instead of a subnormal result, DAZ reads a subnormal input as zero. An attack
//! changes only where a whole input gradient falls below 1.18e-38, a softmax saturated beyond
//! e^−87 in every member: there the gradient becomes exactly zero, and counts in the
//! zero-gradient indicator of `adp eval`, where IEEE arithmetic would keep its sign.
//! TensorFlow, the framework of the official ADP code, flushes subnormals in the threads of its
//! CPU thread pool in the same way; PyTorch keeps them unless told otherwise
//! (`torch.set_flush_denormal`).
//!
//! The register is per thread (a new thread starts with its creator's). [`flush_to_zero`] sets
//! it on the calling thread and on every thread of rayon's global pool, where burn's `flex`
//! backend and this crate's kernels compute. `adp` re-exports this module as `adp::denormals`;
//! its command line flushes unless given `--keep-denormals`. Only x86-64 is supported;
//! elsewhere the functions report `false` and subnormals are kept.

/// FTZ (bit 15) and DAZ (bit 6) of `MXCSR`.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

#[cfg(target_arch = "x86_64")]
fn read_mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: `stmxcsr` stores the 32-bit MXCSR register (SSE, part of the x86-64 baseline) to
    // the valid, aligned `u32` it is given, and touches nothing else.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
    }
    csr
}

#[cfg(target_arch = "x86_64")]
fn write_mxcsr(csr: u32) {
    // SAFETY: `ldmxcsr` loads MXCSR from a valid `u32`. Callers only change the FTZ and DAZ
    // bits of the value read from it, which select how subnormals are handled and raise no
    // exception.
    unsafe {
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly, preserves_flags));
    }
}

/// Sets (`flush = true`) or clears flush-to-zero and denormals-are-zero on the calling thread.
/// Returns whether this CPU architecture supports it (x86-64 only).
pub fn set_on_this_thread(flush: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let csr = read_mxcsr();
        write_mxcsr(if flush { csr | FTZ_DAZ } else { csr & !FTZ_DAZ });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = flush;
        false
    }
}

/// Whether the calling thread flushes subnormals to zero (both FTZ and DAZ set).
pub fn flushed_on_this_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        read_mxcsr() & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Flushes subnormals to zero on the calling thread and on every thread of rayon's global
/// pool (creating the pool if needed). Call it once, before the computation, from the thread
/// that runs it. Returns whether flushing is in effect (false on other architectures than
/// x86-64).
pub fn flush_to_zero() -> bool {
    let here = set_on_this_thread(true);
    let pool = rayon::broadcast(|_| set_on_this_thread(true));
    here && pool.into_iter().all(|ok| ok)
}

/// Whether the calling thread and every thread of rayon's global pool flush subnormals.
pub fn flushed_everywhere() -> bool {
    flushed_on_this_thread()
        && rayon::broadcast(|_| flushed_on_this_thread())
            .into_iter()
            .all(|f| f)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// 1e-30 · 1e-10, a subnormal result (flushed by FTZ), and the smallest subnormal times
    /// 1e30, a normal result of a subnormal input (zeroed by DAZ).
    fn products() -> (f32, f32) {
        (
            black_box(1e-30f32) * black_box(1e-10f32),
            black_box(f32::from_bits(1)) * black_box(1e30f32),
        )
    }

    /// The bits of both products: under DAZ, comparisons read a subnormal as zero too.
    fn bits((a, b): (f32, f32)) -> (u32, u32) {
        (a.to_bits(), b.to_bits())
    }

    #[test]
    fn flushing_zeroes_subnormal_results_and_inputs_on_its_own_thread_only() {
        let ieee = bits(products());
        assert!(
            ieee.0 != 0 && ieee.1 != 0,
            "the test thread keeps subnormals"
        );
        // Fresh threads, so that no other test's setting is in the way: `other` starts before
        // the flush (a thread started later inherits the register) and computes after it.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            wait.recv().unwrap();
            products()
        });
        std::thread::spawn(move || {
            assert!(!flushed_on_this_thread());
            assert_eq!(bits(products()), ieee);
            assert!(set_on_this_thread(true));
            assert!(flushed_on_this_thread());
            assert_eq!(bits(products()), (0, 0));
            go.send(()).unwrap();
            assert_eq!(bits(other.join().unwrap()), ieee, "the other thread");
            assert!(set_on_this_thread(false));
            assert!(!flushed_on_this_thread());
            assert_eq!(bits(products()), ieee);
        })
        .join()
        .unwrap();
    }
}
