//! Elementwise helpers for the `flex` kernels: sums in SIMD lanes in a fixed order of additions,
//! burn's ReLU, and loops compiled for AVX2 where the CPU has it.
//!
//! The build targets baseline x86-64, with which the compiler vectorises little (SSE2 at most), and
//! a plain `iter().sum()` of f32 is one dependent chain of scalar additions. Rust never contracts
//! `a · b + c` into a fused multiply-add, so a loop compiled for AVX2 rounds exactly as the
//! baseline build does: the values do not depend on the CPU.

/// `Σ f(x_i, y_i)` over two equally long slices, in 8 f32 lanes summed in f64 at the end.
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    vectorised(
        #[inline(always)]
        || {
            let mut lanes = [0f32; 8];
            let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
            let (xr, yr) = (xc.remainder(), yc.remainder());
            for (a, b) in xc.zip(yc) {
                for i in 0..8 {
                    lanes[i] += f(a[i], b[i]);
                }
            }
            let tail: f32 = xr.iter().zip(yr).map(|(&a, &b)| f(a, b)).sum();
            lanes.iter().map(|&l| l as f64).sum::<f64>() + tail as f64
        },
    )
}

/// `f()`, compiled for AVX2 where the CPU has it (pass an `#[inline(always)]` closure, so that
/// its loops are compiled inside the AVX2 function).
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(f) };
    }
    f()
}

/// burn's `relu`: values `≤ 0` become 0 (NaN stays NaN).
#[inline(always)]
pub(crate) fn relu(v: f32) -> f32 {
    if v <= 0.0 { 0.0 } else { v }
}

/// burn's `relu_backward` at one value: the gradient `g` where the ReLU's output `y` is `> 0`,
/// zero elsewhere.
#[inline(always)]
pub(crate) fn relu_grad(g: f32, y: f32) -> f32 {
    if y <= 0.0 { 0.0 } else { g }
}
