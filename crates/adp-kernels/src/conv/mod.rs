//! 2-D convolution through whole-image matrix products on the CPU backend.
//!
//! burn-flex 0.22 convolves in small tiles: it copies the input to NHWC, builds an im2col tile of
//! a few output positions, multiplies it with the (re-packed) weights, and scatters the result
//! back to NCHW one value at a time; its input gradient is a transposed convolution with a
//! scatter of its own, and its weight gradient a convolution of batch-swapped copies. Profiled on
//! ResNet-20 training, that bookkeeping took more time than the matrix products themselves
//! (docs/performance.md). This module computes the same convolution as a backend extension
//! ([`FastConv2d`]) with, per image `b` and `W` flattened to `[C_out, C_in·k_h·k_w]`:
//!
//! ```text
//! y_b  = W · im2col(x_b) + bias                      (one matrix product, written in place)
//! ∂x_b = col2im(Wᵀ · ∂y_b)                           (input gradient)
//!      = conv(∂y_b, W rotated 180°, channels swapped)  (stride 1, output as large as input)
//! ∂W   = Σ_b ∂y_b · im2col(x_b)ᵀ                     (weight gradient, im2col recomputed)
//! ```
//!
//! on `flex`, in parallel over images, and burn's own convolution on every other backend. On
//! x86-64 CPUs with AVX2 or AVX-512, the convolutions and weight gradients of ResNet-20's 3×3
//! layers (stride 1 and 2) and the input gradients of the stride-1 ones skip the im2col matrix:
//! a direct kernel reads shifted views of one zero-padded copy of each image (`flex/direct.rs`).
//! The layer stays burn's [`Conv2d`] module, so checkpoints and the PyTorch interop are
//! unchanged.

#![cfg_attr(feature = "tch", allow(deprecated))]
// (burn 0.22 deprecates its LibTorch backend, which the `tch` feature uses.)

mod autodiff;
#[cfg(feature = "flex")]
mod flex;

use burn::backend::ops::ConvOptions;
use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// 2-D convolution with its two gradients, per backend. The default bodies are burn's own
/// (`ModuleOps::conv2d` and its backward functions).
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Autodiff
)]
pub trait FastConv2d: Backend {
    /// `x` `[N, C_in, H, W]` convolved with `weight` `[C_out, C_in / groups, k_h, k_w]`, plus
    /// `bias` `[C_out]` (zeros for a layer without one: burn 0.22's extension routing does not
    /// take an `Option` of a tensor).
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options)
    }

    /// `∂L/∂x` given `∂L/∂y`.
    fn fast_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// `∂L/∂bias` given `∂L/∂y`: its sum over images and positions, per output channel.
    fn fast_conv2d_bias_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv2d_bias_backward(x, bias, output_grad)
    }

    /// `∂L/∂W` given `∂L/∂y`.
    fn fast_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }
}

#[cfg(feature = "ndarray")]
impl FastConv2d for burn::backend::NdArray {}

#[cfg(feature = "tch")]
impl FastConv2d for burn::backend::LibTorch {}

/// Applies `conv` to `x` exactly as `Conv2d::forward` does, through [`FastConv2d`]; `Same`
/// padding and the CubeCL backends (`cuda`, `wgpu`) keep burn's own.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => return conv.forward(x),
    };
    if crate::is_cube(&x.device()) {
        return conv.forward(x);
    }
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    let bias = match &conv.bias {
        Some(bias) => bias.val(),
        None => Tensor::zeros([conv.weight.dims()[0]], &x.device()),
    };
    Tensor::from_dispatch(<Dispatch as FastConv2d>::fast_conv2d(
        x.into_dispatch(),
        conv.weight.val().into_dispatch(),
        bias.into_dispatch(),
        options,
    ))
}

#[cfg(test)]
mod tests;
