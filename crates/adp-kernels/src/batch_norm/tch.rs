//! Batch norm on burn's LibTorch backend: libtorch's own `native_batch_norm` forward, and the
//! backward as five libtorch reductions and elementwise ops on the `[N, C, ...]` layout (no
//! dimension-swap copies).

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;

use super::{BatchNormGrads, BatchNormOutput, FusedBatchNorm};

/// The dimensions a per-channel statistic reduces over: all but 1.
fn reduced_dims(x: &tch::Tensor) -> Vec<i64> {
    (0..x.dim() as i64).filter(|&d| d != 1).collect()
}

/// A `[C]` tensor shaped to broadcast against `x`: `[1, C, 1, ...]`.
fn per_channel(v: &tch::Tensor, x: &tch::Tensor) -> tch::Tensor {
    let mut shape = vec![1i64; x.dim()];
    shape[1] = -1;
    v.view(shape.as_slice())
}

impl FusedBatchNorm for LibTorch {
    fn fused_batch_norm_train(
        x: TchTensor,
        gamma: TchTensor,
        beta: TchTensor,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        let (output, mean, inv_std) = x.tensor.native_batch_norm(
            Some(&gamma.tensor),
            Some(&beta.tensor),
            None::<&tch::Tensor>,
            None::<&tch::Tensor>,
            true,
            0.0,
            epsilon,
        );
        // libtorch keeps 1 / sqrt(σ² + ε); the running statistics want the biased σ².
        let variance = inv_std.square().reciprocal() - epsilon;
        BatchNormOutput {
            output: TchTensor::new(if relu { output.relu() } else { output }),
            mean: TchTensor::new(mean),
            variance: TchTensor::new(variance),
        }
    }

    fn fused_batch_norm_train_backward(
        x: TchTensor,
        gamma: TchTensor,
        mean: TchTensor,
        variance: TchTensor,
        epsilon: f64,
        output_grad: TchTensor,
    ) -> BatchNormGrads<Self> {
        backward(
            &x.tensor,
            &gamma,
            &mean,
            &variance,
            epsilon,
            &output_grad.tensor,
        )
    }

    fn fused_batch_norm_relu_train_backward(
        x: TchTensor,
        gamma: TchTensor,
        mean: TchTensor,
        variance: TchTensor,
        epsilon: f64,
        output: TchTensor,
        output_grad: TchTensor,
    ) -> BatchNormGrads<Self> {
        // burn's relu_backward: zero where the output is ≤ 0.
        let g = &output_grad.tensor;
        let g = g.where_self(&output.tensor.gt(0.0), &g.zeros_like());
        backward(&x.tensor, &gamma, &mean, &variance, epsilon, &g)
    }
}

fn backward(
    x: &tch::Tensor,
    gamma: &TchTensor,
    mean: &TchTensor,
    variance: &TchTensor,
    epsilon: f64,
    g: &tch::Tensor,
) -> BatchNormGrads<LibTorch> {
    let dims = reduced_dims(x);
    let count = (x.numel() / x.size()[1] as usize) as f64;
    let inv_std = (&variance.tensor + epsilon).rsqrt();
    let x_hat = (x - per_channel(&mean.tensor, x)) * per_channel(&inv_std, x);
    let beta_grad = g.sum_dim_intlist(dims.as_slice(), false, None);
    let gamma_grad = (g * &x_hat).sum_dim_intlist(dims.as_slice(), false, None);
    let x_grad = per_channel(&(&gamma.tensor * &inv_std), x)
        * (g - per_channel(&(&beta_grad / count), x)
            - x_hat * per_channel(&(&gamma_grad / count), x));
    BatchNormGrads {
        x: TchTensor::new(x_grad),
        gamma: TchTensor::new(gamma_grad),
        beta: TchTensor::new(beta_grad),
    }
}
