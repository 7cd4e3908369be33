//! Small helpers on burn tensors that every part of the library shares.

use burn::prelude::*;
use burn::tensor::Element;

/// The values of a float tensor in row-major order, converted to `E` (`f32` or `f64`).
pub fn floats<E: Element, const D: usize>(t: Tensor<D>) -> Vec<E> {
    t.into_data()
        .try_into_vec_as::<E>()
        .expect("a float tensor")
}

/// `t` with the strides of a fresh row-major tensor of its shape: a view where `t` is already
/// contiguous (as a reshape of a contiguous tensor is), a copy where it is not.
///
/// Gradients need this before they meet other tensors in element-wise ops on burn-cubecl
/// (wgpu, CUDA). A convolution's backward may hand back an input gradient of shape
/// `[N, 1, H, W]` in NHWC memory order, strides `[HW, 1, W, 1]`. The size-one channel makes
/// that layout contiguous, but burn-cubecl-fusion 0.22.1 orders it as a permutation
/// `[0, 2, 1, 3]` (the tie between the two unit strides) and then reads the tensors fused with
/// it at the wrong positions: `x + ε·sign(∇ₓ)` came out up to 1 away from `x` instead of ε.
pub fn standard_layout<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    let dims = t.dims();
    t.reshape([dims.iter().product::<usize>()]).reshape(dims)
}
