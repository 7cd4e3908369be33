//! The CPU layer kernels of `adp`'s members: 2-D convolution ([`conv`]), batch
//! normalisation ([`batch_norm`]) and max pooling with its ReLU ([`pool`]), each a burn 0.22
//! backend extension with a native kernel on `flex`, libtorch's or burn's own operations
//! elsewhere, and a hand-written backward on the autodiff backend. The layers stay burn's
//! `Conv2d` and `BatchNorm` modules; only their forward passes (and gradients) go through this
//! crate.
//!
//! On burn's CubeCL backends (`cuda`, `wgpu`) all keep burn's own operations ([`is_cube`]).
//! Every kernel is checked against burn's own operation and against the f64 definition (finite
//! differences where it is smooth), in values and in every gradient (`cargo test -p
//! adp-kernels`). [`denormals`] flushes subnormal floats to zero in the CPU threads, which
//! saturated softmaxes otherwise fill backward passes with at 50 to 100 times the cost;
//! [`malloc`] keeps freed memory in the process for the next step; [`threads`] makes a program's
//! main thread one of rayon's, where the kernels' parallel loops start at once.

pub mod batch_norm;
#[cfg(feature = "flex")]
mod buffer;
pub mod conv;
pub mod denormals;
#[cfg(feature = "flex")]
mod lanes;
pub mod malloc;
pub mod pool;
pub mod testing;
pub mod threads;

use burn::prelude::Device;

/// Whether `device` runs on one of burn's CubeCL backends (`cuda`, `wgpu`). Those keep burn's
/// own convolution and batch norm; this crate's kernels are for the CPU backends.
pub fn is_cube(device: &Device) -> bool {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        matches!(
            device.clone().inner().as_dispatch(),
            burn::backend::DispatchDevice::Cube(_)
        )
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = device;
        false
    }
}
