//! The autodiff side of [`FastConv2d`]: one graph node whose backward calls the inner backend's
//! gradient kernels.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;

use super::FastConv2d;

/// The recorded convolution: parents `x`, `W`, `bias`.
#[derive(Debug)]
struct ConvOp;

impl<B: FastConv2d> Backward<B, 3> for ConvOp {
    /// Checkpointed `x`, `W` and `bias`, and the options.
    type State = (NodeId, NodeId, NodeId, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_w, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, w_id, bias_id, options) = ops.state;
        let x = ckpt.retrieve_node_output::<FloatTensor<B>>(x_id);
        let w = ckpt.retrieve_node_output::<FloatTensor<B>>(w_id);
        let bias = ckpt.retrieve_node_output::<FloatTensor<B>>(bias_id);
        if let Some(node) = node_x {
            let dx = B::fast_conv2d_x_backward(x.clone(), w.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_w {
            let dw = B::fast_conv2d_weight_backward(x.clone(), w, grad.clone(), options);
            grads.register::<B>(node.id, dw);
        }
        if let Some(node) = node_bias {
            grads.register::<B>(node.id, B::fast_conv2d_bias_backward(x, bias, grad));
        }
    }
}

impl<B: FastConv2d, C: CheckpointStrategy> FastConv2d for Autodiff<B, C> {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        match ConvOp
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (
                    prep.checkpoint(&x),
                    prep.checkpoint(&weight),
                    prep.checkpoint(&bias),
                    options.clone(),
                );
                let y = B::fast_conv2d(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    options,
                );
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_conv2d(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                options,
            )),
        }
    }

    /// First-order values only (no second derivative through the convolution's gradient).
    fn fast_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fast_conv2d_x_backward(
            x.into_primitive(),
            weight.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }

    /// First-order values only (no second derivative through the convolution's gradient).
    fn fast_conv2d_bias_backward(
        x: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fast_conv2d_bias_backward(
            x.into_primitive(),
            bias.into_primitive(),
            output_grad.into_primitive(),
        ))
    }

    /// First-order values only (no second derivative through the convolution's gradient).
    fn fast_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(B::fast_conv2d_weight_backward(
            x.into_primitive(),
            weight.into_primitive(),
            output_grad.into_primitive(),
            options,
        ))
    }
}
