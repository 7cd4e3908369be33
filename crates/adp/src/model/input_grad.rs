//! Input gradients that can themselves be differentiated: the double backpropagation GAL and TRS
//! need, and the intermediate layers DVERGE distils.
//!
//! GAL (Kariyappa & Qureshi, 2019) and TRS (Yang et al., NeurIPS 2021) penalise a function of
//! each member's input gradient `g_k = ∂ CE(F_k(x), y) / ∂x`, so their training step needs
//! `∂ R(g_1..g_K) / ∂θ`, a derivative of a derivative. burn 0.22's `Tensor` API has one autodiff
//! level (the dispatch device refuses to wrap an autodiff device twice, and `x.grad(..)` returns a
//! tensor without autodiff: `examples/double_backward.rs`). So this module writes each member's
//! backward pass as an explicit graph of ordinary forward operations — the transposed
//! convolution for a convolution, `Wᵀ` for a dense layer, the training-mode batch-norm backward
//! formula, the max-pool's scatter to its argmax, a ReLU's 0/1 mask — whose first-order autodiff
//! then gives `∂ R(g) / ∂θ` exactly (ReLU's second derivative is zero wherever it exists, as in
//! PyTorch's `create_graph=True`). `g_k` is the gradient of the batch *mean* cross-entropy, as
//! the official code's `autograd.grad(criterion(logits, y), x)`; with batch statistics in batch
//! norm it includes the coupling between the examples of the batch, as PyTorch's does.
//!
//! The forward pass here is the members' own (`conv::forward`, `batch_norm::forward`), so the
//! logits returned are bit for bit those of [`Member::forward`], and each batch norm updates its
//! running statistics once.

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::{conv_transpose2d, max_pool2d_with_indices};
use burn::tensor::ops::{ConvTransposeOptions, MaxPoolOptions};

use super::cnn::Cnn;
use super::resnet::{ConvBn, ResNet};
use super::{Member, Normalize};
use adp_kernels::pool::max_pool2d_relu;
use adp_kernels::{batch_norm, conv};

/// One member's logits `[N, L]` and the input gradient `[N, C, H, W]` of its batch-mean
/// cross-entropy, the latter a graph that autodiff can differentiate again (module docs).
pub fn logits_and_input_grad(
    member: &Member,
    x: Tensor<4>,
    labels: Tensor<1, Int>,
) -> (Tensor<2>, Tensor<4>) {
    match member {
        Member::Cnn(m) => cnn(m, x, labels),
        Member::ResNet(m) => resnet(m, x, labels),
    }
}

/// `∂ mean_n CE(z_n, y_n) / ∂z = (softmax(z) − onehot(y)) / N`.
fn logit_grad(z: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<2> {
    let [n, l] = z.dims();
    let onehot = labels.one_hot::<2>(l).float().cast(z.dtype());
    (softmax(z, 1) - onehot).div_scalar(n as f64)
}

/// `dy · Wᵀ` for `y = x·W + b`.
fn linear_input_grad(layer: &Linear, dy: Tensor<2>) -> Tensor<2> {
    dy.matmul(layer.weight.val().transpose())
}

/// A ReLU's backward: `dy` where the pre-activation is positive, 0 elsewhere.
fn relu_grad<const D: usize>(pre: &Tensor<D>, dy: Tensor<D>) -> Tensor<D> {
    let mask = pre
        .clone()
        .detach()
        .greater_elem(0.0)
        .float()
        .cast(dy.dtype());
    dy * mask
}

/// The input gradient of a convolution: the transposed convolution with the same kernel,
/// `padding_out` restoring the input's size.
fn conv_input_grad(layer: &Conv2d, input: [usize; 4], dy: Tensor<4>) -> Tensor<4> {
    let [pt, pl] = match layer.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            assert!(top == bottom && left == right, "asymmetric padding");
            [top, left]
        }
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Same => unreachable!("the members use explicit padding"),
    };
    let [_, _, ho, wo] = dy.dims();
    let (s, d, k) = (layer.stride, layer.dilation, layer.kernel_size);
    let out =
        |i: usize, o: usize, p: usize, a: usize| i + 2 * p - (o - 1) * s[a] - d[a] * (k[a] - 1) - 1;
    let options = ConvTransposeOptions::new(
        s,
        [pt, pl],
        [out(input[2], ho, pt, 0), out(input[3], wo, pl, 1)],
        d,
        layer.groups,
    );
    conv_transpose2d(dy, layer.weight.val(), None, options)
}

/// The input gradient of `batch_norm::forward(bn, x)`: with batch statistics (the mode that
/// function picks when the device records gradients and the layer trains)
/// `∂x = γ/σ · (dy − mean(dy) − x̂·mean(dy·x̂))`, means over N, H, W per channel, `x̂ = (x − μ)/σ`,
/// `σ = sqrt(var + ε)` (biased variance); with running statistics `dy · γ / sqrt(var_run + ε)`.
fn bn_input_grad(bn: &BatchNorm, x: Tensor<4>, dy: Tensor<4>) -> Tensor<4> {
    let c = bn.gamma.dims()[0];
    let gamma = bn.gamma.val().reshape([1, c, 1, 1]);
    if x.device().is_autodiff() && bn.training.is_enabled() {
        let axes = [0usize, 2, 3];
        let centred = x.clone() - x.mean_dims(&axes);
        let inv = centred
            .clone()
            .powi_scalar(2)
            .mean_dims(&axes)
            .add_scalar(bn.epsilon)
            .sqrt()
            .recip();
        let xhat = centred * inv.clone();
        let mean_dy = dy.clone().mean_dims(&axes);
        let mean_dy_xhat = (dy.clone() * xhat.clone()).mean_dims(&axes);
        gamma * inv * (dy - mean_dy - xhat * mean_dy_xhat)
    } else {
        let var = bn.running_var.value().to_device(&x.device());
        let scale = bn.gamma.val() / var.add_scalar(bn.epsilon).sqrt();
        dy * scale.reshape([1, c, 1, 1])
    }
}

/// The input gradient of `Normalize`: `dy / std` per channel.
fn normalize_input_grad(norm: &Normalize, dy: Tensor<4>) -> Tensor<4> {
    let c = dy.dims()[1];
    let inv: Vec<f32> = norm.std.iter().map(|s| 1.0 / s).collect();
    let inv = Tensor::<1>::from_floats(inv.as_slice(), &dy.device()).cast(dy.dtype());
    dy * inv.reshape([1, c, 1, 1])
}

/// A 2×2 max pool's backward: each output's gradient goes to the input position its maximum came
/// from (burn's own argmax, so ties resolve as its backward resolves them).
fn max_pool_input_grad(input: [usize; 4], indices: Tensor<4, Int>, dy: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = input;
    let [_, _, ho, wo] = dy.dims();
    let zeros = Tensor::<3>::zeros([n, c, h * w], &dy.device()).cast(dy.dtype());
    zeros
        .scatter(
            2,
            indices.reshape([n, c, ho * wo]),
            dy.reshape([n, c, ho * wo]),
            IndexingUpdateOp::Add,
        )
        .reshape([n, c, h, w])
}

fn pool(x: Tensor<4>) -> (Tensor<4>, Tensor<4, Int>) {
    max_pool2d_with_indices(x, MaxPoolOptions::new([2, 2]))
}

fn cnn(m: &Cnn, x: Tensor<4>, labels: Tensor<1, Int>) -> (Tensor<2>, Tensor<4>) {
    let x0 = m.norm.forward(x);
    let a1 = conv::forward(&m.conv1, x0.clone());
    let r1 = relu(a1.clone());
    let (p1, i1) = pool(r1.clone());
    let a2 = conv::forward(&m.conv2, p1.clone());
    let r2 = relu(a2.clone());
    let (p2, i2) = pool(r2.clone());
    let flat = p2.clone().flatten::<2>(1, 3);
    let a3 = m.fc1.forward(flat);
    let z = m.fc2.forward(relu(a3.clone()));

    let dz = logit_grad(z.clone(), labels);
    let da3 = relu_grad(&a3, linear_input_grad(&m.fc2, dz));
    let dp2 = linear_input_grad(&m.fc1, da3).reshape(p2.dims());
    let da2 = relu_grad(&a2, max_pool_input_grad(r2.dims(), i2, dp2));
    let dp1 = conv_input_grad(&m.conv2, p1.dims(), da2);
    let da1 = relu_grad(&a1, max_pool_input_grad(r1.dims(), i1, dp1));
    let dx0 = conv_input_grad(&m.conv1, x0.dims(), da1);
    (z, normalize_input_grad(&m.norm, dx0))
}

/// What the backward of one conv-BN layer needs from its forward.
struct ConvBnTape {
    input: [usize; 4],
    conv_out: Tensor<4>,
}

fn conv_bn(layer: &ConvBn, x: Tensor<4>) -> (Tensor<4>, ConvBnTape) {
    let input = x.dims();
    let conv_out = conv::forward(&layer.conv, x);
    let out = batch_norm::forward(&layer.bn, conv_out.clone());
    (out, ConvBnTape { input, conv_out })
}

fn conv_bn_grad(layer: &ConvBn, tape: ConvBnTape, dy: Tensor<4>) -> Tensor<4> {
    let dconv = bn_input_grad(&layer.bn, tape.conv_out, dy);
    conv_input_grad(&layer.conv, tape.input, dconv)
}

fn resnet(m: &ResNet, x: Tensor<4>, labels: Tensor<1, Int>) -> (Tensor<2>, Tensor<4>) {
    let x0 = m.norm.forward(x);
    let (s, stem_tape) = conv_bn(&m.stem, x0);
    let mut h = relu(s.clone());
    // Per block: its input, the conv-BN tapes, the first BN's output and the pre-ReLU sum.
    let mut tapes = Vec::with_capacity(m.blocks.len());
    for block in &m.blocks {
        let input = h.dims();
        let (a, ta) = conv_bn(&block.a, h.clone());
        let (b, tb) = conv_bn(&block.b, relu(a.clone()));
        let shortcut = match &block.shortcut {
            Some(proj) => conv::forward(proj, h),
            None => h,
        };
        let sum = shortcut + b;
        h = relu(sum.clone());
        tapes.push((input, ta, a, tb, sum));
    }
    let [n, c, hh, ww] = h.dims();
    let z = m.head.forward(h.mean_dims(&[2, 3]).flatten::<2>(1, 3));

    let dz = logit_grad(z.clone(), labels);
    let mut dh = linear_input_grad(&m.head, dz)
        .reshape([n, c, 1, 1])
        .expand([n, c, hh, ww])
        .div_scalar((hh * ww) as f64);
    for (block, (input, ta, a, tb, sum)) in m.blocks.iter().zip(tapes).rev() {
        let dsum = relu_grad(&sum, dh);
        let da = relu_grad(&a, conv_bn_grad(&block.b, tb, dsum.clone()));
        let through = conv_bn_grad(&block.a, ta, da);
        let shortcut = match &block.shortcut {
            Some(proj) => conv_input_grad(proj, input, dsum),
            None => dsum,
        };
        dh = through + shortcut;
    }
    let dx0 = conv_bn_grad(&m.stem, stem_tape, relu_grad(&s, dh));
    (z, normalize_input_grad(&m.norm, dx0))
}

/// DVERGE's layers of a member (its `get_features(layer, before_relu=True)`), numbered from 1:
/// ResNet-20 has 20 (1 the stem's batch norm, 2b and 2b + 1 the first batch norm and the pre-ReLU
/// sum of block b = 1..9, 20 the logits); the CNN has 4 (its two convolutions, its hidden dense
/// layer, all before their ReLU, and the logits).
pub fn num_layers(member: &Member) -> usize {
    match member {
        Member::Cnn(_) => 4,
        Member::ResNet(m) => 2 * m.blocks.len() + 2,
    }
}

/// The output of DVERGE layer `layer` (1-based, [`num_layers`]) before its ReLU, flattened to
/// `[N, D]`.
pub fn layer_features(member: &Member, x: Tensor<4>, layer: usize) -> Tensor<2> {
    assert!(
        (1..=num_layers(member)).contains(&layer),
        "layer {layer} of {}",
        num_layers(member)
    );
    match member {
        Member::Cnn(m) => {
            let a1 = conv::forward(&m.conv1, m.norm.forward(x));
            if layer == 1 {
                return a1.flatten(1, 3);
            }
            let p1 = max_pool2d_relu(a1, [2, 2]);
            let a2 = conv::forward(&m.conv2, p1);
            if layer == 2 {
                return a2.flatten(1, 3);
            }
            let a3 = m
                .fc1
                .forward(max_pool2d_relu(a2, [2, 2]).flatten::<2>(1, 3));
            if layer == 3 {
                return a3;
            }
            m.fc2.forward(relu(a3))
        }
        Member::ResNet(m) => {
            let s = m.stem.forward(m.norm.forward(x));
            if layer == 1 {
                return s.flatten(1, 3);
            }
            let mut h = relu(s);
            for (b, block) in m.blocks.iter().enumerate() {
                let a = block.a.forward(h.clone());
                if layer == 2 * b + 2 {
                    return a.flatten(1, 3);
                }
                let y = block.b.forward(relu(a));
                let shortcut = match &block.shortcut {
                    Some(proj) => conv::forward(proj, h),
                    None => h,
                };
                let sum = shortcut + y;
                if layer == 2 * b + 3 {
                    return sum.flatten(1, 3);
                }
                h = relu(sum);
            }
            m.head.forward(h.mean_dims(&[2, 3]).flatten::<2>(1, 3))
        }
    }
}

#[cfg(test)]
mod tests;
