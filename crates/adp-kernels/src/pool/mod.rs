//! `relu(max_pool2d(x))` over non-overlapping windows, the CNN's pooling layers, as one fused
//! operation per backend.
//!
//! burn-flex 0.22 max-pools one output at a time through its general 3-D kernel: for every
//! output it recomputes the valid window range with integer divisions, and under autodiff it
//! writes an `i64` argmax tensor beside the output. Profiled on PGD against the CNN ensemble,
//! that loop took 45% of the time (docs/performance.md). Max and ReLU commute,
//! `max_pool(relu(x)) = relu(max_pool(x))`, exactly, in value and in gradient: each window's
//! gradient goes to its first maximum, or nowhere where that maximum is `≤ 0`. So this module
//! computes, for windows of `k_h × k_w` with stride `k` (no padding, rounding down),
//!
//! ```text
//! y = max(0, max_{window} x)
//! ∂L/∂x = ∂L/∂y at the window's first maximum (row-major) where y > 0, 0 elsewhere
//! ```
//!
//! as a burn backend extension ([`FastMaxPool`]): a native kernel on `flex` that writes only
//! `y` and finds the argmax again in the backward pass (so nothing but `x` is kept for it), and
//! burn's own `max_pool2d_with_indices` and `relu` elsewhere. The ties and NaNs resolve as in
//! burn's kernel: the first maximum wins, and a NaN wins over every number.

#![cfg_attr(feature = "tch", allow(deprecated))]
// (burn 0.22 deprecates its LibTorch backend, which the `tch` feature uses.)

mod autodiff;
#[cfg(feature = "flex")]
mod flex;

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::prelude::*;
use burn::tensor::IntDType;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;

/// `relu(max_pool2d(x))` over non-overlapping windows, and its gradient, per backend. The
/// default bodies are burn's own operations.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    LibTorch: cfg(feature = "tch"),
    Autodiff
)]
pub trait FastMaxPool: Backend {
    /// `x` `[N, C, H, W]` max-pooled over `kernel` windows with stride `kernel`, then ReLU'd:
    /// `[N, C, H / k_h, W / k_w]`.
    fn fast_max_pool2d_relu(x: FloatTensor<Self>, kernel: [usize; 2]) -> FloatTensor<Self> {
        burn_forward::<Self>(x, kernel)
    }

    /// `∂L/∂x` given `∂L/∂y`.
    fn fast_max_pool2d_relu_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        kernel: [usize; 2],
    ) -> FloatTensor<Self> {
        burn_backward::<Self>(x, output_grad, kernel)
    }
}

/// burn's own `relu(max_pool2d(x))`.
fn burn_forward<B: Backend>(x: FloatTensor<B>, kernel: [usize; 2]) -> FloatTensor<B> {
    B::relu(B::max_pool2d(x, kernel, kernel, [0, 0], [1, 1], false))
}

/// Its gradient through burn's own operations: the argmax indices of the forward recomputed,
/// the ReLU's mask, and burn's scatter to the argmax.
fn burn_backward<B: Backend>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    kernel: [usize; 2],
) -> FloatTensor<B> {
    let (stride, padding, dilation) = (kernel, [0, 0], [1, 1]);
    let pooled = B::max_pool2d_with_indices(
        x.clone(),
        kernel,
        stride,
        padding,
        dilation,
        false,
        IntDType::I64,
    );
    let grad = B::relu_backward(B::relu(pooled.output), output_grad);
    B::max_pool2d_with_indices_backward(
        x,
        kernel,
        stride,
        padding,
        dilation,
        false,
        grad,
        pooled.indices,
    )
    .x_grad
}

#[cfg(feature = "ndarray")]
impl FastMaxPool for burn::backend::NdArray {}

#[cfg(feature = "tch")]
impl FastMaxPool for burn::backend::LibTorch {}

/// `relu(max_pool2d(x))` over non-overlapping `kernel` windows, equal to `max_pool2d(relu(x))`
/// in value and gradient, through [`FastMaxPool`]; the CubeCL backends (`cuda`, `wgpu`) keep
/// burn's own.
pub fn max_pool2d_relu(x: Tensor<4>, kernel: [usize; 2]) -> Tensor<4> {
    if crate::is_cube(&x.device()) {
        return relu(max_pool2d(x, MaxPoolOptions::new(kernel)));
    }
    Tensor::from_dispatch(<Dispatch as FastMaxPool>::fast_max_pool2d_relu(
        x.into_dispatch(),
        kernel,
    ))
}

#[cfg(test)]
mod tests;
