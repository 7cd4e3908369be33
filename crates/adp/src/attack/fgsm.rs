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
    use crate::attack::tests::{assert_in_budget, two_class_toy};
    use crate::tensor::floats;

    #[test]
    fn matches_the_closed_form_on_a_linear_model() {
        // Two classes, four pixels: ∇ₓ(−log p_y) = (p − onehot(y))ᵀ W, so for y = 0 the sign is
        // sign(W_1 − W_0) wherever p_1 > 0.
        let (model, x, y) = two_class_toy(1);
        let out = Fgsm { eps: 0.1 }.attack(&model, x.clone(), y);
        // W_1 − W_0 = (−2, 2, −0.5, 2) → signs (−, +, −, +); the last pixel is clipped at 1.
        let expected = [0.4f32, 0.6, 0.4, 1.0];
        for (a, e) in floats::<f32, _>(out.adversarial.clone())
            .iter()
            .zip(expected)
        {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
        assert_in_budget(out.adversarial, x, 0.1);
    }
}
