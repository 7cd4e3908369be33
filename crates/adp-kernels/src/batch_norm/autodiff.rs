//! The autodiff side of [`FusedBatchNorm`]: one graph node whose backward calls the inner
//! backend's fused backward kernel.

use burn::backend::Autodiff;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;

use super::{AffineGrads, BatchNormGrads, BatchNormOutput, FusedBatchNorm};

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
        let (x, gamma, mean, variance, epsilon, output) = ops.state;
        let output = output.expect("the fused ReLU's output");
        // The output gradient through the ReLU, masked once: the shortcut's gradient, and the
        // batch norm's own output gradient.
        let masked = B::fused_relu_backward(output, output_grad);
        let state = (x, gamma, mean, variance, epsilon, None);
        let g = batch_norm_grads::<B>(state, masked.clone(), ckpt);
        for (node, grad) in ops.parents.into_iter().zip([g.x, g.gamma, g.beta, masked]) {
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

/// What the evaluation-mode backward needs: checkpointed `x`, the values of `scale`, and the
/// output if a ReLU was fused.
type AffineState<B> = (NodeId, FloatTensor<B>, Option<FloatTensor<B>>);

/// The recorded evaluation-mode forward: parents `x`, `scale`, `shift` (`N = 3`: `x · scale +
/// shift`, then the ReLU if fused), and `residual` (`N = 4`: `relu(x · scale + shift +
/// residual)`).
#[derive(Debug)]
struct AffineOp<const N: usize>;

impl<B: FusedBatchNorm, const N: usize> Backward<B, N> for AffineOp<N> {
    type State = AffineState<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let output_grad = grads.consume::<B>(&ops.node);
        let params = ops.parents[1].is_some() || ops.parents[2].is_some();
        let g = affine_grads::<B>(ops.state, output_grad, params, ckpt);
        for (node, grad) in ops.parents.into_iter().zip(g) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// The gradients of `x`, `scale`, `shift` (these two if `params`) and of a residual (the output
/// gradient through the ReLU): `∂x = g · scale`, `∂scale = Σ g · x`, `∂shift = Σ g`.
fn affine_grads<B: FusedBatchNorm>(
    state: AffineState<B>,
    output_grad: FloatTensor<B>,
    params: bool,
    ckpt: &mut Checkpointer,
) -> [Option<FloatTensor<B>>; 4] {
    let (x_id, scale, output) = state;
    let grads = match output {
        Some(y) => B::fused_affine_relu_backward(y, output_grad, scale),
        None => AffineGrads::of(output_grad, scale),
    };
    let (dx, g) = (grads.x, grads.masked);
    if !params {
        return [Some(dx), None, None, Some(g)];
    }
    let x = ckpt.retrieve_node_output::<FloatTensor<B>>(x_id);
    let channels = g.shape()[1];
    let dims: Vec<usize> = (0..g.shape().num_dims()).filter(|&d| d != 1).collect();
    let sum = |t| B::float_reshape(B::float_sum_dims(t, &dims), Shape::from(vec![channels]));
    let (dscale, dshift) = (sum(B::float_mul(g.clone(), x)), sum(g.clone()));
    [Some(dx), Some(dscale), Some(dshift), Some(g)]
}

/// Runs the inner backend's evaluation-mode forward `run(x, scale)` and records it as `prep`'s
/// node, keeping the output for the backward if a ReLU was fused (`relu`).
fn record_affine<B, C, O, const N: usize>(
    prep: OpsKind<O, B, AffineState<B>, C, N>,
    x: FloatTensor<Autodiff<B, C>>,
    scale: FloatTensor<Autodiff<B, C>>,
    relu: bool,
    run: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: FusedBatchNorm,
    C: CheckpointStrategy,
    O: Backward<B, N, State = AffineState<B>>,
{
    match prep {
        OpsKind::Tracked(mut prep) => {
            let x_id = prep.checkpoint(&x);
            let scale = scale.into_primitive();
            let y = run(x.into_primitive(), scale.clone());
            prep.finish((x_id, scale, relu.then(|| y.clone())), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(x.into_primitive(), scale.into_primitive())),
    }
}

impl<B: FusedBatchNorm, C: CheckpointStrategy> FusedBatchNorm for Autodiff<B, C> {
    fn fused_affine(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let prep = AffineOp::<3>
            .prepare::<C>([x.node(), scale.node(), shift.node()])
            .compute_bound()
            .stateful();
        record_affine(prep, x, scale, relu, |x, scale| {
            B::fused_affine(x, scale, shift.into_primitive(), relu)
        })
    }

    fn fused_affine_add_relu(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = AffineOp::<4>
            .prepare::<C>([x.node(), scale.node(), shift.node(), residual.node()])
            .compute_bound()
            .stateful();
        record_affine(prep, x, scale, true, |x, scale| {
            let (shift, residual) = (shift.into_primitive(), residual.into_primitive());
            B::fused_affine_add_relu(x, scale, shift, residual)
        })
    }

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
