//! Batch normalisation for ResNet-20 as one fused operation per backend.
//!
//! burn 0.22 records `batch_norm_train` as a single autodiff operation, but burn-flex and burn-tch
//! run its forward and backward as burn's generic composite: swap-dims and reshape copies, then a
//! dozen full-size elementwise passes (replacing it made a ResNet-20 training step on flex about
//! 6% faster; docs/performance.md). This module computes the same function,
//!
//! ```text
//! y = γ · (x − μ_B) / sqrt(σ²_B + ε) + β,   μ_B, σ²_B: per-channel mean and biased variance
//! ∂L/∂x = γ / sqrt(σ²_B + ε) · (g − mean(g) − x̂ · mean(g · x̂)),   g = ∂L/∂y,  x̂ = normalised x
//! ∂L/∂γ = Σ g · x̂,   ∂L/∂β = Σ g
//! ```
//!
//! as a burn backend extension ([`FusedBatchNorm`]): a native kernel on `flex` (two passes over
//! the activation forward, two backward), libtorch's own `native_batch_norm` on `tch`, burn's
//! composite elsewhere, and a hand-written backward on the autodiff backend. In evaluation mode the
//! running statistics are folded into one per-channel scale and shift, `x · scale + shift`, one
//! pass on `flex` ([`FusedBatchNorm::fused_affine`]), with its own autodiff node (attacks
//! differentiate the members in evaluation mode).
//!
//! The ReLU that follows a batch norm, and the shortcut addition before it at the end of a
//! residual block, fuse into the same kernels ([`forward_relu`], [`forward_add_relu`]).
//!
//! The layer's parameters stay burn's [`BatchNorm`] module, so checkpoints and the PyTorch interop
//! mapping are unchanged.

#![cfg_attr(feature = "tch", allow(deprecated))]
// (burn 0.22 deprecates its LibTorch backend, which the `tch` feature uses.)

mod autodiff;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "tch")]
mod tch;

use burn::backend::ops::{BatchNormTrain, BatchNormTrainBackward};
use burn::backend::{
    Backend, Dispatch, ExtensionType, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation;

/// Output of the training-mode forward: the normalised tensor and the batch statistics
/// (per-channel mean and biased variance) that update the running statistics.
#[derive(ExtensionType)]
pub struct BatchNormOutput<B: Backend> {
    /// `γ · x̂ + β`, shaped like the input.
    pub output: FloatTensor<B>,
    /// Per-channel batch mean `[C]`.
    pub mean: FloatTensor<B>,
    /// Per-channel biased batch variance `[C]`.
    pub variance: FloatTensor<B>,
}

/// Gradients of the training-mode forward with respect to its three inputs.
#[derive(ExtensionType)]
pub struct BatchNormGrads<B: Backend> {
    /// `∂L/∂x`, shaped like the input.
    pub x: FloatTensor<B>,
    /// `∂L/∂γ`, `[C]`.
    pub gamma: FloatTensor<B>,
    /// `∂L/∂β`, `[C]`.
    pub beta: FloatTensor<B>,
}

/// Gradients of the evaluation-mode forward with its ReLU,
/// [`fused_affine`](FusedBatchNorm::fused_affine) with `relu`.
#[derive(ExtensionType)]
pub struct AffineGrads<B: Backend> {
    /// `∂L/∂x = g · scale`, per channel.
    pub x: FloatTensor<B>,
    /// `g`, the output gradient through the ReLU: the gradient of `x · scale + shift`.
    pub masked: FloatTensor<B>,
}

impl<B: Backend> AffineGrads<B> {
    /// The gradients of `x · scale + shift` given `masked`, its output's gradient: `masked`
    /// itself, and `masked · scale` per channel for `x`.
    pub(crate) fn of(masked: FloatTensor<B>, scale: FloatTensor<B>) -> Self {
        let scale = per_channel::<B>(scale, &masked);
        Self {
            x: B::float_mul(masked.clone(), scale),
            masked,
        }
    }
}

impl<B: Backend> From<BatchNormTrain<B>> for BatchNormOutput<B> {
    fn from(out: BatchNormTrain<B>) -> Self {
        Self {
            output: out.output,
            mean: out.mean,
            variance: out.variance,
        }
    }
}

impl<B: Backend> From<BatchNormTrainBackward<B>> for BatchNormGrads<B> {
    fn from(grads: BatchNormTrainBackward<B>) -> Self {
        Self {
            x: grads.x_grad,
            gamma: grads.gamma_grad,
            beta: grads.beta_grad,
        }
    }
}

/// Training-mode batch normalisation over `[N, C, ...]` inputs, fused per backend.
///
/// The default bodies are burn's own composite (`ModuleOps::batch_norm_train` and its backward),
/// so a backend without a kernel of its own computes exactly what `burn::nn::BatchNorm` does.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Autodiff
)]
pub trait FusedBatchNorm: Backend {
    /// Normalises `x` with its own batch statistics, then applies a ReLU if `relu` (burn's:
    /// values `≤ 0` become 0).
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        let mut out: BatchNormOutput<Self> = Self::batch_norm_train(x, gamma, beta, epsilon).into();
        out.output = add_relu::<Self>(out.output, None, relu);
        out
    }

    /// Gradients of [`fused_batch_norm_train`](Self::fused_batch_norm_train) without a ReLU,
    /// given the batch statistics it returned and the gradient of its output.
    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        Self::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad).into()
    }

    /// `relu(bn(x) + residual)`, a residual block's batch norm, shortcut addition and ReLU
    /// (`residual` shaped like `x`). Its gradients are
    /// [`fused_batch_norm_relu_train_backward`](Self::fused_batch_norm_relu_train_backward)'s,
    /// and for `residual` the output gradient masked by the ReLU.
    fn fused_batch_norm_add_relu_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOutput<Self> {
        let mut out = Self::fused_batch_norm_train(x, gamma, beta, epsilon, false);
        out.output = add_relu::<Self>(out.output, Some(residual), true);
        out
    }

    /// Evaluation mode: `x · scale + shift` per channel (`scale` and `shift` `[C]`: the running
    /// statistics folded into γ and β), then the ReLU if `relu`.
    fn fused_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        add_relu::<Self>(affine::<Self>(x, scale, shift), None, relu)
    }

    /// Evaluation mode at the end of a residual block: `relu(x · scale + shift + residual)`.
    fn fused_affine_add_relu(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        add_relu::<Self>(affine::<Self>(x, scale, shift), Some(residual), true)
    }

    /// The same with the ReLU: `output` is the forward's output, and the gradient is zero where
    /// it is `≤ 0` (burn's `relu_backward`).
    fn fused_batch_norm_relu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        let output_grad = Self::relu_backward(output, output_grad);
        Self::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad).into()
    }

    /// The gradient through the ReLU of [`fused_batch_norm_add_relu_train`](
    /// Self::fused_batch_norm_add_relu_train), given its `output`: `output_grad` where the output
    /// is `> 0`, zero elsewhere (burn's `relu_backward`). It is the shortcut's gradient and the
    /// batch norm's output gradient.
    fn fused_relu_backward(
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::relu_backward(output, output_grad)
    }

    /// The gradients of [`fused_affine`](Self::fused_affine) with its ReLU (or of
    /// [`fused_affine_add_relu`](Self::fused_affine_add_relu)), given its `output` and the
    /// gradient of that output: the gradient masked by the ReLU (burn's `relu_backward`), and
    /// that times `scale` per channel, the input's gradient.
    fn fused_affine_relu_backward(
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
    ) -> AffineGrads<Self> {
        AffineGrads::of(Self::relu_backward(output, output_grad), scale)
    }
}

/// `[C]` shaped to broadcast against the `[N, C, ...]` tensor `x`: `[1, C, 1, ...]`.
fn per_channel<B: Backend>(v: FloatTensor<B>, x: &FloatTensor<B>) -> FloatTensor<B> {
    let mut dims = vec![1; x.shape().num_dims()];
    dims[1] = x.shape()[1];
    B::float_reshape(v, Shape::from(dims))
}

/// `y + residual` if given, then burn's ReLU if `relu`: what follows the batch norm, with burn's
/// operations.
fn add_relu<B: Backend>(
    y: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    relu: bool,
) -> FloatTensor<B> {
    let y = match residual {
        Some(r) => B::float_add(y, r),
        None => y,
    };
    if relu { B::relu(y) } else { y }
}

/// `x · scale + shift` per channel, with burn's operations.
fn affine<B: Backend>(
    x: FloatTensor<B>,
    scale: FloatTensor<B>,
    shift: FloatTensor<B>,
) -> FloatTensor<B> {
    let (scale, shift) = (per_channel::<B>(scale, &x), per_channel::<B>(shift, &x));
    B::float_add(B::float_mul(x, scale), shift)
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)]
impl FusedBatchNorm for burn::backend::NdArray {}

/// Applies `bn` to `x` (`[N, C, H, W]`) exactly as `BatchNorm::forward` does, through the fused
/// operation: batch statistics (and a running-statistics update) when the device records
/// gradients and the layer is training, the running statistics otherwise. The CubeCL backends
/// (`cuda`, `wgpu`) keep burn's own batch norm.
pub fn forward(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    normalise(bn, x, After::Nothing)
}

/// `relu(bn(x))`, the ReLU fused into the training-mode kernel: no separate pass over the
/// activation forward, none backward on `flex`.
pub fn forward_relu(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    normalise(bn, x, After::Relu)
}

/// `relu(bn(x) + residual)`, the end of a residual block, the addition and the ReLU fused into
/// the training-mode kernel: no separate passes forward, one (the shortcut's masked gradient)
/// backward on `flex`.
pub fn forward_add_relu(bn: &BatchNorm, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
    normalise(bn, x, After::AddRelu(Box::new(residual)))
}

/// What follows the batch norm.
enum After {
    Nothing,
    Relu,
    AddRelu(Box<Tensor<4>>),
}

fn normalise(bn: &BatchNorm, x: Tensor<4>, after: After) -> Tensor<4> {
    let device = x.device();
    let y = if crate::is_cube(&device) {
        bn.forward(x)
    } else if device.is_autodiff() && bn.training.is_enabled() {
        return forward_train(bn, x, after);
    } else {
        return forward_inference(bn, x, after);
    };
    match after {
        After::Nothing => y,
        After::Relu => activation::relu(y),
        After::AddRelu(residual) => activation::relu(y + *residual),
    }
}

fn forward_train(bn: &BatchNorm, x: Tensor<4>, after: After) -> Tensor<4> {
    let device = x.device();
    let (x, gamma, beta) = (
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
    );
    let out = match after {
        After::AddRelu(residual) => <Dispatch as FusedBatchNorm>::fused_batch_norm_add_relu_train(
            x,
            gamma,
            beta,
            residual.into_dispatch(),
            bn.epsilon,
        ),
        relu => <Dispatch as FusedBatchNorm>::fused_batch_norm_train(
            x,
            gamma,
            beta,
            bn.epsilon,
            matches!(relu, After::Relu),
        ),
    };
    let mean = Tensor::<1>::from_dispatch(out.mean).detach();
    let variance = Tensor::<1>::from_dispatch(out.variance).detach();
    let momentum = bn.momentum;
    let running = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
        let old = state.value_sync().to_device(&device);
        state.update(
            old.mul_scalar(1.0 - momentum)
                .add(batch.mul_scalar(momentum))
                .detach(),
        );
    };
    running(&bn.running_mean, mean);
    running(&bn.running_var, variance);
    Tensor::from_dispatch(out.output)
}

/// Evaluation mode: `y = x · s + t` with `s = γ / sqrt(var + ε)` and `t = β − mean · s`, computed
/// on `[C]` tensors first, then one fused pass over the activation (with what follows).
fn forward_inference(bn: &BatchNorm, x: Tensor<4>, after: After) -> Tensor<4> {
    let device = x.device();
    let mean = bn.running_mean.value().to_device(&device);
    let var = bn.running_var.value().to_device(&device);
    let scale = bn.gamma.val() / var.add_scalar(bn.epsilon).sqrt();
    let shift = bn.beta.val() - mean * scale.clone();
    let (x, scale, shift) = (
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
    );
    Tensor::from_dispatch(match after {
        After::AddRelu(residual) => <Dispatch as FusedBatchNorm>::fused_affine_add_relu(
            x,
            scale,
            shift,
            residual.into_dispatch(),
        ),
        relu => {
            <Dispatch as FusedBatchNorm>::fused_affine(x, scale, shift, matches!(relu, After::Relu))
        }
    })
}

#[cfg(test)]
mod tests;
