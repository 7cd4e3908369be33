//! Native batch-norm kernels for burn-flex: per-channel reductions over the contiguous `H·W`
//! planes of an `[N, C, H, W]` tensor, in parallel over channels (statistics) and planes (output).
//!
//! Sums run in 8 independent f32 lanes within a plane and in f64 across planes, so a channel of
//! 64 × 32 × 32 values is summed about as accurately as a pairwise sum.

use burn::backend::Flex;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::buffer::written;

use super::{BatchNormGrads, BatchNormOutput, FusedBatchNorm};

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

    /// The `N` planes of channel `c`.
    fn channel(&self, c: usize) -> impl Iterator<Item = &'a [f32]> + '_ {
        let (plane, step) = (self.plane, self.plane * self.channels);
        self.data[c * plane..]
            .chunks(step)
            .map(move |chunk| &chunk[..plane])
    }
}

/// `Σ f(x_i, y_i)` over two equally long slices, in 8 f32 lanes.
fn lane_sum(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
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

/// Per-channel `Σ f(x, y) / count` over all planes.
fn channel_means(x: &Planes, y: &Planes, f: impl Fn(usize, f32, f32) -> f32 + Sync) -> Vec<f64> {
    let count = x.count() as f64;
    (0..x.channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = x
                .channel(c)
                .zip(y.channel(c))
                .map(|(a, b)| lane_sum(a, b, |p, q| f(c, p, q)))
                .sum();
            sum / count
        })
        .collect()
}

/// A new `shape`d tensor whose plane `(n, c)` is `f(c, x_plane, y_plane, out_plane)`; `f` writes
/// every value of `out_plane`.
fn map_planes(
    x: &Planes,
    y: &Planes,
    shape: Vec<usize>,
    f: impl Fn(usize, &[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
) -> FlexTensor {
    let plane = x.plane;
    let out = written(x.data.len(), plane, |i, o| {
        let (a, b) = (&x.data[i * plane..][..plane], &y.data[i * plane..][..plane]);
        f(i % x.channels, a, b, o)
    });
    FlexTensor::from_data(TensorData::new(out, shape))
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
    ) -> BatchNormOutput<Self> {
        if !native(&x) || !per_channel(&x, &[&gamma, &beta]) {
            return <Flex as ModuleOps<Flex>>::batch_norm_train(x, gamma, beta, epsilon).into();
        }
        let x = x.to_contiguous();
        let shape = x.layout().shape().to_vec();
        let p = Planes::new(&x);
        let mean = channel_means(&p, &p, |_, a, _| a);
        let mean32 = to_f32(&mean);
        let variance = channel_means(&p, &p, |c, a, _| (a - mean32[c]) * (a - mean32[c]));
        let (gamma, beta) = (read(&gamma), read(&beta));
        let scale: Vec<f32> = (0..p.channels)
            .map(|c| (gamma[c] as f64 / (variance[c] + epsilon).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..p.channels)
            .map(|c| beta[c] - mean32[c] * scale[c])
            .collect();
        let output = map_planes(&p, &p, shape, |c, a, _, o| {
            for (o, &a) in o.iter_mut().zip(a) {
                o.write(a * scale[c] + shift[c]);
            }
        });
        BatchNormOutput {
            output,
            mean: vector(mean32),
            variance: vector(to_f32(&variance)),
        }
    }

    fn fused_batch_norm_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        output_grad: FlexTensor,
    ) -> BatchNormGrads<Self> {
        let grad_fits =
            output_grad.dtype() == DType::F32 && output_grad.layout().shape() == x.layout().shape();
        if !native(&x) || !grad_fits || !per_channel(&x, &[&gamma, &mean, &variance]) {
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
        let shape = x.layout().shape().to_vec();
        let (px, pg) = (Planes::new(&x), Planes::new(&dy));
        let (gamma, mean, variance) = (read(&gamma), read(&mean), read(&variance));
        let inv_std: Vec<f32> = variance
            .iter()
            .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
            .collect();
        // mean(g) and mean(g · x̂) per channel; x̂ = (x − μ) / σ.
        let g_mean = channel_means(&pg, &pg, |_, g, _| g);
        let gx_mean = channel_means(&px, &pg, |c, a, g| g * (a - mean[c]) * inv_std[c]);
        let count = px.count() as f64;
        let (g_mean32, gx_mean32) = (to_f32(&g_mean), to_f32(&gx_mean));
        let x_grad = map_planes(&px, &pg, shape, |c, a, g, o| {
            let (k, m, s) = (gamma[c] * inv_std[c], mean[c], inv_std[c]);
            for ((o, &a), &g) in o.iter_mut().zip(a).zip(g) {
                o.write(k * (g - g_mean32[c] - (a - m) * s * gx_mean32[c]));
            }
        });
        let sums = |means: &[f64]| vector(means.iter().map(|&m| (m * count) as f32).collect());
        BatchNormGrads {
            x: x_grad,
            gamma: sums(&gx_mean),
            beta: sums(&g_mean),
        }
    }
}
