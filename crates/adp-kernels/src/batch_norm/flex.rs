//! Native batch-norm kernels for burn-flex: per-channel reductions over the contiguous `H·W`
//! planes of an `[N, C, H, W]` tensor, in parallel over channels (statistics) and planes (output).
//!
//! Sums run in 8 independent f32 lanes within a plane and in f64 across planes, so a channel of
//! 64 × 32 × 32 values is summed about as accurately as a pairwise sum.

use burn::backend::Flex;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::buffer::{with_scratch, written};
use crate::lanes::{lane_sum, relu, relu_grad, vectorised};

use super::{AffineGrads, BatchNormGrads, BatchNormOutput, FusedBatchNorm};

type FlexTensor = FloatTensor<Flex>;

/// `[N, C, plane]` view of a contiguous f32 tensor of rank ≥ 2.
struct Planes<'a> {
    data: &'a [f32],
    channels: usize,
    plane: usize,
}

impl<'a> Planes<'a> {
    /// `t` must be contiguous f32 of rank ≥ 2 (what [`native`] admits, after `to_contiguous`).
    fn new(t: &'a FlexTensor) -> Self {
        let dims = t.layout().shape().to_vec();
        Self {
            data: t.as_slice::<f32>().expect("contiguous f32 data"),
            channels: dims[1],
            plane: dims[2..].iter().product(),
        }
    }

    /// Number of values per channel, `N · plane`.
    fn count(&self) -> usize {
        self.data.len() / self.channels
    }

    /// Plane `i` (image `i / C`, channel `i % C`).
    fn plane_at(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.plane..][..self.plane]
    }

    /// The `N` planes of channel `c`.
    fn channel(&self, c: usize) -> impl Iterator<Item = &'a [f32]> + '_ {
        let (plane, step) = (self.plane, self.plane * self.channels);
        self.data[c * plane..]
            .chunks(step)
            .map(move |chunk| &chunk[..plane])
    }
}

/// Per channel, the mean and the (biased) variance over all planes, in one pass over memory:
/// each plane, once in cache, is summed, then its squared deviations from its own mean `c`
/// (rounded to f32) are summed, and the planes combine exactly in f64 (Chan et al.):
///
/// ```text
/// Σ (x − μ)² = Σ_planes [ Σ (x − c)² + 2 (c − μ) Σ (x − c) + n (c − μ)² ]
/// ```
///
/// Sums run in 8 f32 lanes within a plane and in f64 across planes, as everywhere here.
fn channel_moments(x: &Planes) -> (Vec<f64>, Vec<f64>) {
    let (count, n) = (x.count() as f64, x.plane as f64);
    (0..x.channels)
        .into_par_iter()
        .map(|c| {
            let planes: Vec<(f64, f64)> = x
                .channel(c)
                .map(|plane| {
                    let sum = lane_sum(plane, plane, |a, _| a);
                    let centre = (sum / n) as f32;
                    let squares = lane_sum(plane, plane, |a, _| (a - centre) * (a - centre));
                    (sum, squares)
                })
                .collect();
            let mean = planes.iter().map(|&(sum, _)| sum).sum::<f64>() / count;
            let deviations: f64 = planes
                .iter()
                .map(|&(sum, squares)| {
                    let centre = f64::from((sum / n) as f32);
                    let d = centre - mean;
                    squares + 2.0 * d * (sum - n * centre) + n * d * d
                })
                .sum();
            (mean, deviations / count)
        })
        .unzip()
}

/// A new `shape`d tensor, shaped like `x`, whose plane `i` (channel `c = i % C`) is written by
/// `f(i, c, plane)`; `f` writes every value of its plane.
fn map_planes(
    x: &Planes,
    shape: Vec<usize>,
    f: impl Fn(usize, usize, &mut [MaybeUninit<f32>]) + Sync,
) -> FlexTensor {
    let out = written(x.data.len(), x.plane, |i, o| f(i, i % x.channels, o));
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// Runs `f` on a gradient plane `g`, zeroed where the fused ReLU's output plane `y` is `≤ 0`
/// (burn's `relu_backward`; masked in this thread's scratch buffer), or on `g` itself without a
/// ReLU.
fn through_relu<R>(g: &[f32], y: Option<&[f32]>, f: impl FnOnce(&[f32]) -> R) -> R {
    let Some(y) = y else { return f(g) };
    with_scratch(g.len(), |masked| {
        vectorised(
            #[inline(always)]
            || {
                for ((m, &g), &y) in masked.iter_mut().zip(g).zip(y) {
                    *m = relu_grad(g, y);
                }
            },
        );
        f(masked)
    })
}

/// Per channel, `mean(g)` and `mean(g · x̂)` with `x̂ = (x − μ) / σ`, `g` taken through the
/// fused ReLU where `y` is given: one pass over the activation, each plane summed as
/// [`channel_moments`] sums it.
fn gradient_means(
    x: &Planes,
    g: &Planes,
    y: Option<&Planes>,
    mean: &[f32],
    inv_std: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let count = x.count() as f64;
    (0..x.channels)
        .into_par_iter()
        .map(|c| {
            let (mut g_sum, mut gx_sum) = (0f64, 0f64);
            for i in (c..x.data.len() / x.plane).step_by(x.channels) {
                through_relu(g.plane_at(i), y.map(|y| y.plane_at(i)), |gp| {
                    g_sum += lane_sum(gp, gp, |g, _| g);
                    gx_sum += lane_sum(x.plane_at(i), gp, |a, g| g * (a - mean[c]) * inv_std[c]);
                });
            }
            (g_sum / count, gx_sum / count)
        })
        .unzip()
}

fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

fn vector(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}

/// A `[C]` parameter or statistic as f32 values (converted if stored in another float type).
fn read(t: &FlexTensor) -> Vec<f32> {
    t.clone()
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("a float tensor converts to f32")
}

/// Whether the native kernel applies: f32 data of rank ≥ 2 with at least one value per channel.
fn native(x: &FlexTensor) -> bool {
    let dims = x.layout().shape().to_vec();
    x.dtype() == DType::F32 && dims.len() >= 2 && dims.iter().all(|&d| d > 0)
}

/// Whether `t` is f32 data shaped like `x` (a residual, an output or its gradient).
fn like(t: &FlexTensor, x: &FlexTensor) -> bool {
    t.dtype() == DType::F32 && t.layout().shape() == x.layout().shape()
}

/// Whether every one of `vectors` holds one value per channel of `x`.
fn per_channel(x: &FlexTensor, vectors: &[&FlexTensor]) -> bool {
    let channels = x.layout().shape()[1];
    vectors
        .iter()
        .all(|v| v.layout().shape().to_vec() == [channels])
}

impl FusedBatchNorm for Flex {
    fn fused_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        forward(x, gamma, beta, epsilon, relu, None)
    }

    fn fused_batch_norm_add_relu_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        residual: FlexTensor,
        epsilon: f64,
    ) -> BatchNormOutput<Self> {
        forward(x, gamma, beta, epsilon, true, Some(residual))
    }

    fn fused_affine(x: FlexTensor, scale: FlexTensor, shift: FlexTensor, relu: bool) -> FlexTensor {
        affine(x, scale, shift, None, relu)
    }

    fn fused_affine_add_relu(
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        residual: FlexTensor,
    ) -> FlexTensor {
        affine(x, scale, shift, Some(residual), true)
    }

    fn fused_batch_norm_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> BatchNormGrads<Self> {
        backward(x, gamma, mean, variance, epsilon, None, output_grad)
    }

    fn fused_batch_norm_relu_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output: FlexTensor,
        output_grad: FlexTensor,
    ) -> BatchNormGrads<Self> {
        backward(x, gamma, mean, variance, epsilon, Some(output), output_grad)
    }

    fn fused_relu_backward(output: FlexTensor, output_grad: FlexTensor) -> FlexTensor {
        relu_backward(output, output_grad)
    }

    fn fused_affine_relu_backward(
        output: FlexTensor,
        output_grad: FlexTensor,
        scale: FlexTensor,
    ) -> AffineGrads<Self> {
        let masked = relu_backward(output, output_grad);
        if !native(&masked) || !per_channel(&masked, &[&scale]) {
            return AffineGrads::of(masked, scale);
        }
        let masked = masked.to_contiguous();
        let (shape, scale) = (masked.layout().shape().to_vec(), read(&scale));
        let g = Planes::new(&masked);
        let x = map_planes(&g, shape, |i, c, o| {
            let (g, s) = (g.plane_at(i), scale[c]);
            vectorised(
                #[inline(always)]
                || write(o, g, g, |g, _| g * s),
            )
        });
        AffineGrads { x, masked }
    }
}

/// burn's `relu_backward` (`g` where `y > 0`, zero elsewhere), in parallel over planes where
/// the kernel applies.
fn relu_backward(y: FlexTensor, g: FlexTensor) -> FlexTensor {
    if !native(&y) || !like(&g, &y) {
        return <Flex as ActivationOps<Flex>>::relu_backward(y, g);
    }
    let (y, g) = (y.to_contiguous(), g.to_contiguous());
    let shape = y.layout().shape().to_vec();
    let (py, pg) = (Planes::new(&y), Planes::new(&g));
    map_planes(&py, shape, |i, _, o| {
        let (y, g) = (py.plane_at(i), pg.plane_at(i));
        vectorised(
            #[inline(always)]
            || write(o, g, y, relu_grad),
        )
    })
}

/// The training-mode forward, `bn(x)`, plus `residual` if given, then through the ReLU if
/// `relu`: two passes over the activation (both moments, then the output).
fn forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
    relu: bool,
    residual: Option<FlexTensor>,
) -> BatchNormOutput<Flex> {
    let residual_fits = residual.as_ref().is_none_or(|r| like(r, &x));
    if !native(&x) || !residual_fits || !per_channel(&x, &[&gamma, &beta]) {
        let mut out: BatchNormOutput<Flex> =
            <Flex as ModuleOps<Flex>>::batch_norm_train(x, gamma, beta, epsilon).into();
        out.output = super::add_relu::<Flex>(out.output, residual, relu);
        return out;
    }
    let x = x.to_contiguous();
    let residual = residual.map(|r| r.to_contiguous());
    let shape = x.layout().shape().to_vec();
    let p = Planes::new(&x);
    let pr = residual.as_ref().map(Planes::new);
    let (mean, variance) = channel_moments(&p);
    let mean32 = to_f32(&mean);
    let (gamma, beta) = (read(&gamma), read(&beta));
    let scale: Vec<f32> = (0..p.channels)
        .map(|c| (gamma[c] as f64 / (variance[c] + epsilon).sqrt()) as f32)
        .collect();
    let shift: Vec<f32> = (0..p.channels)
        .map(|c| beta[c] - mean32[c] * scale[c])
        .collect();
    BatchNormOutput {
        output: affine_planes(&p, shape, &scale, &shift, pr.as_ref(), relu),
        mean: vector(mean32),
        variance: vector(to_f32(&variance)),
    }
}

/// `x · scale + shift` per channel, plus the `residual` planes if given, through the ReLU if
/// `relu`: one pass over the activation.
fn affine_planes(
    p: &Planes,
    shape: Vec<usize>,
    scale: &[f32],
    shift: &[f32],
    residual: Option<&Planes>,
    relu: bool,
) -> FlexTensor {
    map_planes(p, shape, |i, c, o| {
        let (x, scale, shift) = (p.plane_at(i), scale[c], shift[c]);
        // (a · scale + shift) + r rounds as the separate batch norm and addition do; the ReLU
        // and the residual are chosen outside the loops, which then vectorise.
        vectorised(
            #[inline(always)]
            || match (residual.map(|r| r.plane_at(i)), relu) {
                (Some(r), true) => write(o, x, r, |a, r| self::relu(a * scale + shift + r)),
                (Some(r), false) => write(o, x, r, |a, r| a * scale + shift + r),
                (None, true) => write(o, x, x, |a, _| self::relu(a * scale + shift)),
                (None, false) => write(o, x, x, |a, _| a * scale + shift),
            },
        )
    })
}

/// `o_i = f(x_i, y_i)`.
#[inline(always)]
fn write(o: &mut [MaybeUninit<f32>], x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in o.iter_mut().zip(x).zip(y) {
        o.write(f(a, b));
    }
}

/// Evaluation mode, [`affine_planes`] where the kernel applies, burn's operations elsewhere.
fn affine(
    x: FlexTensor,
    scale: FlexTensor,
    shift: FlexTensor,
    residual: Option<FlexTensor>,
    relu: bool,
) -> FlexTensor {
    let residual_fits = residual.as_ref().is_none_or(|r| like(r, &x));
    if !native(&x) || !residual_fits || !per_channel(&x, &[&scale, &shift]) {
        let y = super::affine::<Flex>(x, scale, shift);
        return super::add_relu::<Flex>(y, residual, relu);
    }
    let x = x.to_contiguous();
    let residual = residual.map(|r| r.to_contiguous());
    let shape = x.layout().shape().to_vec();
    let (scale, shift) = (read(&scale), read(&shift));
    let pr = residual.as_ref().map(Planes::new);
    affine_planes(&Planes::new(&x), shape, &scale, &shift, pr.as_ref(), relu)
}

/// The batch-norm backward, through the fused ReLU where its `output` is given: two passes over
/// the activation (both sums, then `∂x`), the ReLU's mask applied to each gradient plane in cache.
fn backward(
    x: FlexTensor,
    gamma: FlexTensor,
    mean: FlexTensor,
    variance: FlexTensor,
    epsilon: f64,
    output: Option<FlexTensor>,
    output_grad: FlexTensor,
) -> BatchNormGrads<Flex> {
    let grad_fits = like(&output_grad, &x) && output.as_ref().is_none_or(|y| like(y, &x));
    if !native(&x) || !grad_fits || !per_channel(&x, &[&gamma, &mean, &variance]) {
        let output_grad = match output {
            Some(y) => <Flex as ActivationOps<Flex>>::relu_backward(y, output_grad),
            None => output_grad,
        };
        return <Flex as ModuleOps<Flex>>::batch_norm_train_backward(
            x,
            gamma,
            mean,
            variance,
            epsilon,
            output_grad,
        )
        .into();
    }
    let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
    let y = output.map(|y| y.to_contiguous());
    let shape = x.layout().shape().to_vec();
    let (px, pg) = (Planes::new(&x), Planes::new(&dy));
    let py = y.as_ref().map(Planes::new);
    let (gamma, mean, variance) = (read(&gamma), read(&mean), read(&variance));
    let inv_std: Vec<f32> = variance
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
        .collect();
    // mean(g) and mean(g · x̂) per channel; x̂ = (x − μ) / σ.
    let (g_mean, gx_mean) = gradient_means(&px, &pg, py.as_ref(), &mean, &inv_std);
    let count = px.count() as f64;
    let (g_mean32, gx_mean32) = (to_f32(&g_mean), to_f32(&gx_mean));
    let x_grad = map_planes(&px, shape, |i, c, o| {
        let (k, m, s) = (gamma[c] * inv_std[c], mean[c], inv_std[c]);
        let (gm, gxm) = (g_mean32[c], gx_mean32[c]);
        through_relu(pg.plane_at(i), py.as_ref().map(|y| y.plane_at(i)), |g| {
            vectorised(
                #[inline(always)]
                || {
                    write(o, px.plane_at(i), g, |a, g| {
                        k * (g - gm - (a - m) * s * gxm)
                    })
                },
            )
        });
    });
    let sums = |means: &[f64]| vector(means.iter().map(|&m| (m * count) as f32).collect());
    BatchNormGrads {
        x: x_grad,
        gamma: sums(&gx_mean),
        beta: sums(&g_mean),
    }
}
