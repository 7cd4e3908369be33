//! Sums in SIMD lanes for the `flex` kernels: a fixed order of additions, which the compiler
//! vectorises (a plain `iter().sum()` of f32 is one dependent chain of scalar additions).

/// `Σ f(x_i, y_i)` over two equally long slices, in 8 f32 lanes summed in f64 at the end.
pub(crate) fn lane_sum(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
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
}
