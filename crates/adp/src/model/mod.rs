//! Classifiers and the ensemble built from them.
//!
//! Every member takes images with pixels in `[0, 1]` and normalises them itself
//! ([`Normalize`]), so attack budgets stay in pixel space.

pub mod cnn;
pub mod ensemble;
pub mod input_grad;
pub mod resnet;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use cnn::Cnn;
pub use ensemble::{Ensemble, EnsembleOutput};
pub use resnet::ResNet;

/// The most members an ensemble may have. Training memory grows linearly with K (weights, Adam
/// state and activations of every member at once); 100 ResNet-20 members need several GB at the
/// paper's batch size, while the paper uses 2 to 5.
pub const MAX_MEMBERS: usize = 100;

/// Architecture of each ensemble member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Two conv layers and two dense layers: fast on a CPU.
    Cnn,
    /// ResNet-20 v1 as in the paper's official code (Keras `resnet_v1`, depth 20).
    Resnet20,
}

/// Everything needed to rebuild one member before loading its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberConfig {
    /// Architecture.
    pub kind: ModelKind,
    /// Input `[channels, height, width]`.
    pub input_shape: [usize; 3],
    /// Number of classes L.
    pub num_classes: usize,
    /// Mean subtracted inside the model: one per channel `[c]`, or a per-pixel mean image
    /// `[c·h·w]` (the official code's normalisation).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided out inside the model.
    pub std: Vec<f32>,
}

/// `(x - mean) / std` per channel, with the mean per channel or per pixel; the constants are
/// part of the model's configuration.
#[derive(Module, Debug)]
pub struct Normalize {
    #[module(skip)]
    mean: Vec<f32>,
    #[module(skip)]
    std: Vec<f32>,
}

impl Normalize {
    /// A normalisation with the given per-channel statistics.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Self {
        Self { mean, std }
    }

    /// Applies the normalisation to `[batch, channels, height, width]` pixels.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let device = x.device();
        let [_, c, h, w] = x.dims();
        // Cast to the pixels' float type (f32 unless a test runs the member in f64).
        let mean = Tensor::<1>::from_floats(self.mean.as_slice(), &device).cast(x.dtype());
        let mean = if self.mean.len() == c {
            mean.reshape([1, c, 1, 1])
        } else {
            mean.reshape([1, c, h, w])
        };
        let inv: Vec<f32> = self.std.iter().map(|s| 1.0 / s).collect();
        let inv = Tensor::<1>::from_floats(inv.as_slice(), &device)
            .cast(x.dtype())
            .reshape([1, c, 1, 1]);
        (x - mean) * inv
    }
}

/// One member of the ensemble.
#[derive(Module, Debug)]
pub enum Member {
    /// The small CNN.
    Cnn(Cnn),
    /// ResNet-20 v1.
    ResNet(ResNet),
}

impl Member {
    /// Builds a freshly initialised member on `device`.
    pub fn new(config: &MemberConfig, device: &Device) -> Self {
        match config.kind {
            ModelKind::Cnn => Member::Cnn(Cnn::new(config, device)),
            ModelKind::Resnet20 => Member::ResNet(ResNet::new(config, 3, device)),
        }
    }

    /// Logits `[batch, classes]` for pixels `[batch, c, h, w]` in `[0, 1]`, on the device of
    /// `x` whichever device the member is placed on ([`Ensemble::place`]).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let home = x.device();
        moved(self.forward_local(moved(x, &self.device())), &home)
    }

    /// The final hidden features `[batch, D]`, the input of the last linear layer (D = 128 for
    /// the CNN, 64 for ResNet-20): what the paper's Fig. 2 visualises with t-SNE. On the device
    /// of `x`, as [`Self::forward`].
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let home = x.device();
        moved(self.features_local(moved(x, &self.device())), &home)
    }

    /// [`Self::forward`] for an `x` already on the member's device; the logits stay there.
    pub(crate) fn forward_local(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Member::Cnn(m) => m.forward(x),
            Member::ResNet(m) => m.forward(x),
        }
    }

    /// [`Self::features`] for an `x` already on the member's device; the features stay there.
    pub(crate) fn features_local(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Member::Cnn(m) => m.features(x),
            Member::ResNet(m) => m.features(x),
        }
    }

    /// The device the member's parameters live on.
    pub fn device(&self) -> Device {
        self.devices()
            .into_iter()
            .next()
            .expect("a member has parameters")
    }

    /// Sum of squared convolution kernels, the Keras `l2` kernel regulariser of the official
    /// code, on the member's own device.
    pub fn conv_l2(&self) -> Tensor<1> {
        match self {
            Member::Cnn(m) => m.conv_l2(),
            Member::ResNet(m) => m.conv_l2(),
        }
    }
}

/// `t` on `device`: a differentiable move (burn's autodiff sends the gradient back), or `t`
/// itself where it is already there, so that an ensemble on one device makes no move and adds no
/// node to the graph.
pub(crate) fn moved<const D: usize>(t: Tensor<D>, device: &Device) -> Tensor<D> {
    if t.device() == *device {
        t
    } else {
        t.to_device(device)
    }
}

/// A member of `kind` for one-channel 8×8 images and `num_classes` classes: small models for
/// unit tests.
#[cfg(test)]
pub(crate) fn tiny_config(kind: ModelKind, num_classes: usize) -> MemberConfig {
    MemberConfig {
        kind,
        input_shape: [1, 8, 8],
        num_classes,
        mean: vec![0.5],
        std: vec![0.25],
    }
}

/// Sum of squares of a convolution's kernel (bias excluded), as a `[1]` tensor.
pub(crate) fn kernel_sq(conv: &burn::nn::conv::Conv2d) -> Tensor<1> {
    conv.weight.val().powi_scalar(2).sum()
}

/// He-normal initialisation (Keras `he_normal`, std = sqrt(2 / fan_in)).
pub(crate) fn he_normal() -> burn::nn::Initializer {
    burn::nn::Initializer::KaimingNormal {
        gain: std::f64::consts::SQRT_2,
        fan_out_only: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A per-pixel mean is subtracted pixel by pixel, a per-channel one from the whole plane.
    #[test]
    fn normalize_takes_a_per_channel_or_a_per_pixel_mean() {
        let d = crate::device::cpu();
        let x =
            Tensor::<1>::from_floats([0.5f32, 0.5, 0.5, 0.5].as_slice(), &d).reshape([1, 1, 2, 2]);
        let values = |n: Normalize| -> Vec<f32> {
            n.forward(x.clone()).into_data().try_into_vec_as().unwrap()
        };
        let per_pixel = values(Normalize::new(vec![0.1, 0.2, 0.3, 0.4], vec![1.0]));
        let expected = [0.4f32, 0.3, 0.2, 0.1];
        assert!(
            per_pixel
                .iter()
                .zip(expected)
                .all(|(a, e)| (a - e).abs() < 1e-6),
            "{per_pixel:?}"
        );
        let per_channel = values(Normalize::new(vec![0.1], vec![0.5]));
        assert!(
            per_channel.iter().all(|v| (v - 0.8).abs() < 1e-6),
            "{per_channel:?}"
        );
    }
}
