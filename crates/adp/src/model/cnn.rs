//! A small CNN for fast CPU experiments: conv(32)-pool-conv(64)-pool-dense(128)-dense(L).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::{MemberConfig, Normalize, he_normal, kernel_sq};
use adp_kernels::{conv, pool};

/// The small CNN.
#[derive(Module, Debug)]
pub struct Cnn {
    pub(super) norm: Normalize,
    pub(super) conv1: Conv2d,
    pub(super) conv2: Conv2d,
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
}

impl Cnn {
    /// Builds a freshly initialised CNN on `device`.
    pub fn new(config: &MemberConfig, device: &Device) -> Self {
        let [c, h, w] = config.input_shape;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(he_normal())
                .init(device)
        };
        let flat = 64 * (h / 4) * (w / 4);
        Self {
            norm: Normalize::new(config.mean.clone(), config.std.clone()),
            conv1: conv(c, 32),
            conv2: conv(32, 64),
            fc1: LinearConfig::new(flat, 128)
                .with_initializer(he_normal())
                .init(device),
            fc2: LinearConfig::new(128, config.num_classes)
                .with_initializer(he_normal())
                .init(device),
        }
    }

    /// The final hidden features, the input of the last linear layer, `[batch, 128]`: what the
    /// paper's Fig. 2 embeds with t-SNE for each member.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.norm.forward(x);
        // max_pool(relu(·)), computed as the equal relu(max_pool(·)) in one kernel.
        let x = pool::max_pool2d_relu(conv::forward(&self.conv1, x), [2, 2]);
        let x = pool::max_pool2d_relu(conv::forward(&self.conv2, x), [2, 2]);
        relu(self.fc1.forward(x.flatten::<2>(1, 3)))
    }

    /// Logits for pixels in `[0, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }

    /// Sum of squared conv kernels.
    pub fn conv_l2(&self) -> Tensor<1> {
        kernel_sq(&self.conv1) + kernel_sq(&self.conv2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelKind, tiny_config};

    #[test]
    fn logits_are_the_last_layer_applied_to_the_features() {
        let device = crate::device::cpu();
        let config = tiny_config(ModelKind::Cnn, 4);
        let cnn = Cnn::new(&config, &device);
        let x = Tensor::<4>::random([3, 1, 8, 8], burn::tensor::Distribution::Default, &device);
        let features = cnn.features(x.clone());
        assert_eq!(features.dims(), [3, 128]);
        let by_hand = cnn.fc2.forward(features);
        let diff = (cnn.forward(x) - by_hand).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");
    }
}
