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

/// What the backward kernels need: checkpointed `x` and `γ`, the batch mean and variance, ε,
/// and the output if a ReLU was fused (its zeros mask the gradient).
type State<B> = (
    NodeId,
    NodeId,
    FloatTensor<B>,
    FloatTensor<B>,
    f64,
    Option<FloatTensor<B>>,
);

/// The recorded `bn(x)` or `relu(bn(x))`: parents `x`, `γ`, `β`.
#[derive(Debug)]
struct BatchNormTrainOp;

/// The recorded `relu(bn(x) + residual)`: parents `x`, `γ`, `β`, `residual`.
#[derive(Debug)]
struct BatchNormAddReluOp;

impl<B: FusedBatchNorm> Backward<B, 3> for BatchNormTrainOp {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let g = batch_norm_grads::<B>(ops.state, output_grad, ckpt);
        for (node, grad) in ops.parents.into_iter().zip([g.x, g.gamma, g.beta]) {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl<B: FusedBatchNorm> Backward<B, 4> for BatchNormAddReluOp {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let output = ops.state.5.clone().expect("the fused ReLU's output");
        // The shortcut's gradient is the output gradient through the ReLU.
        let residual = B::relu_backward(output, output_grad.clone());
        let g = batch_norm_grads::<B>(ops.state, output_grad, ckpt);
        for (node, grad) in ops
            .parents
            .into_iter()
            .zip([g.x, g.gamma, g.beta, residual])
        {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The batch norm's gradients, through the fused ReLU where the state holds its output.
fn batch_norm_grads<B: FusedBatchNorm>(
    state: State<B>,
    output_grad: FloatTensor<B>,
    ckpt: &mut Checkpointer,
) -> BatchNormGrads<B> {
    let (x_id, gamma_id, mean, variance, epsilon, output) = state;
    let x = ckpt.retrieve_node_output::<FloatTensor<B>>(x_id);
    let gamma = ckpt.retrieve_node_output::<FloatTensor<B>>(gamma_id);
    match output {
        Some(y) => B::fused_batch_norm_relu_train_backward(
            x,
            gamma,
            mean,
            variance,
            epsilon,
            y,
            output_grad,
        ),
        None => B::fused_batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad),
    }
}

/// Runs the inner backend's forward `run(x, γ)` and records it as `prep`'s node, keeping the
/// output for the backward if a ReLU was fused (`relu`).
fn record<B, C, O, const N: usize>(
    prep: OpsKind<O, B, State<B>, C, N>,
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    epsilon: f64,
    relu: bool,
    run: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> BatchNormOutput<B>,
) -> BatchNormOutput<Autodiff<B, C>>
where
    B: FusedBatchNorm,
    C: CheckpointStrategy,
    O: Backward<B, N, State = State<B>>,
{
    // Checkpoint (tracked case) before the kernel consumes the tensors: Ok = tracked.
    let prep = match prep {
        OpsKind::Tracked(mut prep) => {
            let ids = (prep.checkpoint(&x), prep.checkpoint(&gamma));
            Ok((prep, ids))
        }
        OpsKind::UnTracked(prep) => Err(prep),
    };
    let out = run(x.into_primitive(), gamma.into_primitive());
    let mean = FloatTensor::<Autodiff<B, C>>::new(out.mean.clone());
    let variance = FloatTensor::<Autodiff<B, C>>::new(out.variance.clone());
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
        record(prep, x, gamma, epsilon, relu, |x, gamma| {
            B::fused_batch_norm_train(x, gamma, beta.into_primitive(), epsilon, relu)
        })
    }

    fn fused_batch_norm_add_relu_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> BatchNormOutput<Self> {
        let prep = BatchNormAddReluOp
            .prepare::<C>([x.node(), gamma.node(), beta.node(), residual.node()])
            .compute_bound()
            .stateful();
        record(prep, x, gamma, epsilon, true, |x, gamma| {
            let (beta, residual) = (beta.into_primitive(), residual.into_primitive());
            B::fused_batch_norm_add_relu_train(x, gamma, beta, residual, epsilon)
        })
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
