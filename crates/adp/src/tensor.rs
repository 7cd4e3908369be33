//! Small helpers on burn tensors that every part of the library shares.

use burn::prelude::*;
use burn::tensor::Element;

/// The values of a float tensor in row-major order, converted to `E` (`f32` or `f64`).
pub fn floats<E: Element, const D: usize>(t: Tensor<D>) -> Vec<E> {
    t.into_data()
        .try_into_vec_as::<E>()
        .expect("a float tensor")
}
