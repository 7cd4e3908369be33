//! ResNet v1 (He et al., 2016) exactly as the official ADP code builds it with Keras'
//! `resnet_v1`: a conv-BN-ReLU stem, 3 stages of `n` basic blocks with 16/32/64 channels, stride 2
//! and a 1x1 projection shortcut (no BN) at the start of stages 2 and 3, ReLU after the addition,
//! global average pooling and a dense layer. He-normal init; depth = 6n + 2 (n = 3: ResNet-20).
//! BatchNorm uses Keras' constants (momentum 0.99, i.e. 0.01 in burn's convention; ε = 1e-3).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::{MemberConfig, Normalize, he_normal, kernel_sq};
use adp_kernels::{batch_norm, conv};

fn conv(i: usize, o: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([i, o], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_initializer(he_normal())
        .init(device)
}

/// Convolution followed by batch normalisation.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub(super) conv: Conv2d,
    pub(super) bn: BatchNorm,
}

impl ConvBn {
    fn new(i: usize, o: usize, stride: usize, device: &Device) -> Self {
        Self {
            conv: conv(i, o, 3, stride, device),
            bn: BatchNormConfig::new(o)
                .with_momentum(0.01)
                .with_epsilon(1e-3)
                .init(device),
        }
    }

    pub(super) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        batch_norm::forward(&self.bn, conv::forward(&self.conv, x))
    }

    /// `relu(forward(x))`, the ReLU fused into the batch norm.
    fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        batch_norm::forward_relu(&self.bn, conv::forward(&self.conv, x))
    }

    /// `relu(forward(x) + residual)`, the addition and the ReLU fused into the batch norm.
    fn forward_add_relu(&self, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        batch_norm::forward_add_relu(&self.bn, conv::forward(&self.conv, x), residual)
    }
}

/// Two 3x3 conv-BN layers with an identity or 1x1-projection shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock {
    pub(super) a: ConvBn,
    pub(super) b: ConvBn,
    pub(super) shortcut: Option<Conv2d>,
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.shortcut {
            Some(proj) => conv::forward(proj, x.clone()),
            None => x.clone(),
        };
        self.b.forward_add_relu(self.a.forward_relu(x), shortcut)
    }
}

/// ResNet v1 of depth `6n + 2`.
#[derive(Module, Debug)]
pub struct ResNet {
    pub(super) norm: Normalize,
    pub(super) stem: ConvBn,
    pub(super) blocks: Vec<BasicBlock>,
    pub(super) head: Linear,
}

impl ResNet {
    /// Builds a ResNet with `n` blocks per stage (n = 3 gives ResNet-20).
    pub fn new(config: &MemberConfig, n: usize, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut channels = 16;
        for stage in 0..3 {
            let out = 16 << stage;
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(BasicBlock {
                    a: ConvBn::new(channels, out, stride, device),
                    b: ConvBn::new(out, out, 1, device),
                    shortcut: (stride != 1).then(|| conv(channels, out, 1, stride, device)),
                });
                channels = out;
            }
        }
        Self {
            norm: Normalize::new(config.mean.clone(), config.std.clone()),
            stem: ConvBn::new(config.input_shape[0], 16, 1, device),
            blocks,
            head: LinearConfig::new(64, config.num_classes)
                .with_initializer(he_normal())
                .init(device),
        }
    }

    /// The final hidden features (after global average pooling), `[batch, 64]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.stem.forward_relu(self.norm.forward(x));
        for block in &self.blocks {
            x = block.forward(x);
        }
        x.mean_dims(&[2, 3]).flatten::<2>(1, 3)
    }

    /// Logits for pixels in `[0, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }

    /// Sum of squared conv kernels (stem, blocks and projections).
    pub fn conv_l2(&self) -> Tensor<1> {
        let mut total = kernel_sq(&self.stem.conv);
        for b in &self.blocks {
            total = total + kernel_sq(&b.a.conv) + kernel_sq(&b.b.conv);
            if let Some(p) = &b.shortcut {
                total = total + kernel_sq(p);
            }
        }
        total
    }
}
