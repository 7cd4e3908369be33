//! FGSM (Goodfellow et al., 2015): x' = clip(x + ε·sign(∇ₓ J), 0, 1), one step of size ε
//! (towards the target when targeted).

use burn::prelude::*;

use super::{Attack, AttackOutput, Classifier, Goal, LinfBudget, input_gradient};

/// The fast gradient sign method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fgsm {
    /// L∞ budget ε.
    pub eps: f64,
}

impl Attack for Fgsm {
    fn name(&self) -> String {
        format!("FGSM(eps={})", self.eps)
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let x0 = images.detach().without_autodiff();
        let g = input_gradient(model, &x0, goal);
        let adv =
            LinfBudget { eps: self.eps }.project(x0.clone() + g.sign().mul_scalar(self.eps), &x0);
        AttackOutput::judge(model, goal, &x0, adv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{Linear, assert_in_budget, floats};
    use burn::tensor::TensorData;

    #[test]
    fn matches_the_closed_form_on_a_linear_model() {
        // Two classes, four pixels: ∇ₓ(−log p_y) = (p − onehot(y))ᵀ W, so for y = 0 the sign is
        // sign(W_1 − W_0) wherever p_1 > 0.
        let d = Device::default();
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -1.0, 0.5, 0.0, -1.0, 1.0, 0.0, 2.0], [2, 4]),
            &d,
        );
        let b = Tensor::<1>::zeros([2], &d);
        let model = Linear { w, b };
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32, 0.5, 0.5, 0.95], [1, 1, 2, 2]),
            &d,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), &d);
        let out = Fgsm { eps: 0.1 }.attack(&model, x.clone(), y);
        // W_1 − W_0 = (−2, 2, −0.5, 2) → signs (−, +, −, +); the last pixel is clipped at 1.
        let expected = [0.4f32, 0.6, 0.4, 1.0];
        for (a, e) in floats(out.adversarial.clone()).iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
        assert_in_budget(out.adversarial, x, 0.1);
    }
}
