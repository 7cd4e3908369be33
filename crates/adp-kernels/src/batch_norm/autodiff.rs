//! The autodiff side of [`FusedBatchNorm`]: one graph node whose backward calls the inner
//! backend's fused backward kernel.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::{BatchNormGrads, BatchNormOutput, FusedBatchNorm};

/// The recorded operation; its state is what the backward kernel needs.
#[derive(Debug)]
struct BatchNormTrainOp;

impl<B: FusedBatchNorm> Backward<B, 3> for BatchNormTrainOp {
    /// Checkpointed `x` and `γ`, the batch mean and variance, ε, and the output if a ReLU was
    /// fused (its zeros mask the gradient).
    type State = (
        NodeId,
        NodeId,
        FloatTensor<B>,
        FloatTensor<B>,
        f64,
        Option<FloatTensor<B>>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let output_grad = grads.consume::<B>(&ops.node);
        let (x_id, gamma_id, mean, variance, epsilon, output) = ops.state;
        let x = ckpt.retrieve_node_output::<FloatTensor<B>>(x_id);
        let gamma = ckpt.retrieve_node_output::<FloatTensor<B>>(gamma_id);
        let g = match output {
            Some(y) => B::fused_batch_norm_relu_train_backward(
                x,
                gamma,
                mean,
                variance,
                epsilon,
                y,
                output_grad,
            ),
            None => {
                B::fused_batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad)
            }
        };
        for (node, grad) in [(node_x, g.x), (node_gamma, g.gamma), (node_beta, g.beta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedBatchNorm, C: CheckpointStrategy> FusedBatchNorm for Autodiff<B, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> BatchNormOutput<Self> {
        let prep = BatchNormTrainOp
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        // Checkpoint (tracked case) before the kernel consumes the tensors: Ok = tracked.
        let prep = match prep {
            OpsKind::Tracked(mut prep) => {
                let ids = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                Ok((prep, ids))
            }
            OpsKind::UnTracked(prep) => Err(prep),
        };
        let out = B::fused_batch_norm_train(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            epsilon,
            relu,
        );
        let mean = FloatTensor::<Self>::new(out.mean.clone());
        let variance = FloatTensor::<Self>::new(out.variance.clone());
        let output = match prep {
            Ok((prep, (x_id, gamma_id))) => {
                let output = relu.then(|| out.output.clone());
                prep.finish(
                    (x_id, gamma_id, out.mean, out.variance, epsilon, output),
                    out.output,
                )
            }
            Err(prep) => prep.finish(out.output),
        };
        BatchNormOutput {
            output,
            mean,
            variance,
        }
    }

    /// First-order gradients only: the values are computed by the inner backend's kernel and
    /// enter the graph as constants (no second derivative through batch norm).
    fn fused_batch_norm_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        constant(B::fused_batch_norm_train_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            epsilon,
            output_grad.into_primitive(),
        ))
    }

    /// First-order gradients only, as above.
    fn fused_batch_norm_relu_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> BatchNormGrads<Self> {
        constant(B::fused_batch_norm_relu_train_backward(
            x.into_primitive(),
            gamma.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            epsilon,
            output.into_primitive(),
            output_grad.into_primitive(),
        ))
    }
}

/// Gradients of the inner backend as constants of the autodiff graph.
fn constant<B: FusedBatchNorm, C: CheckpointStrategy>(
    g: BatchNormGrads<B>,
) -> BatchNormGrads<Autodiff<B, C>> {
    BatchNormGrads {
        x: FloatTensor::<Autodiff<B, C>>::new(g.x),
        gamma: FloatTensor::<Autodiff<B, C>>::new(g.gamma),
        beta: FloatTensor::<Autodiff<B, C>>::new(g.beta),
    }
}
