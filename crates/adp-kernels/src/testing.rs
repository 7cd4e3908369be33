//! Helpers for tests of the kernels and of the models built on them: deterministic inputs and
//! flattened outputs.

use burn::prelude::*;

/// Every CPU backend compiled in, with autodiff: `flex`, and LibTorch with `tch`.
pub fn devices() -> Vec<Device> {
    let devices = [
        #[cfg(feature = "flex")]
        Device::flex(),
        #[cfg(feature = "tch")]
        #[allow(deprecated)]
        Device::libtorch(),
    ];
    devices.into_iter().map(|d| d.autodiff()).collect()
}

/// Deterministic values in `[-2, 2)`.
pub fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) * 4.0 - 2.0
        })
        .collect()
}

/// All values of `t` as f64, in row-major order.
pub fn flat<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.flatten::<1>(0, D - 1)
        .into_data()
        .try_into_vec_as::<f64>()
        .unwrap()
}
