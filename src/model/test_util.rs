//! Helpers shared by the tests of the layer kernels ([`super::batch_norm`], [`super::conv`]).

use burn::prelude::*;

/// Every CPU backend compiled in, with autodiff: the default one, and LibTorch with `tch`.
pub fn devices() -> Vec<Device> {
    use crate::device::DeviceKind;
    let mut kinds = vec![DeviceKind::Cpu];
    if cfg!(feature = "tch") {
        kinds.push(DeviceKind::Tch);
    }
    kinds
        .into_iter()
        .map(|k| {
            k.device()
                .expect("a backend compiled into this build")
                .autodiff()
        })
        .collect()
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
