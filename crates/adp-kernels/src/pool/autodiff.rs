//! The autodiff side of [`FastMaxPool`]: one graph node whose backward calls the inner
//! backend's gradient kernel with the checkpointed input.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;

use super::FastMaxPool;

/// The recorded pooling: parent `x`.
#[derive(Debug)]
struct MaxPoolReluOp;

impl<B: FastMaxPool> Backward<B, 1> for MaxPoolReluOp {
    /// Checkpointed `x` and the window size.
    type State = (NodeId, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, kernel) = ops.state;
        let x = ckpt.retrieve_node_output::<FloatTensor<B>>(x_id);
        if let Some(node) = node_x {
            let dx = B::fast_max_pool2d_relu_backward(x, grad, kernel);
            grads.register::<B>(node.id, dx);
        }
    }
}

impl<B: FastMaxPool, C: CheckpointStrategy> FastMaxPool for Autodiff<B, C> {
    fn fast_max_pool2d_relu(x: FloatTensor<Self>, kernel: [usize; 2]) -> FloatTensor<Self> {
        match MaxPoolReluOp
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), kernel);
                prep.finish(state, B::fast_max_pool2d_relu(x.into_primitive(), kernel))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fast_max_pool2d_relu(x.into_primitive(), kernel))
            }
        }
    }

    /// First-order values only (no second derivative through the pooling's gradient).
    fn fast_max_pool2d_relu_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        kernel: [usize; 2],
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fast_max_pool2d_relu_backward(
            x.into_primitive(),
            output_grad.into_primitive(),
            kernel,
        ))
    }
}
