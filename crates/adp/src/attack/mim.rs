//! MIM, the momentum iterative method (Dong et al., 2018, Algorithm 1), an L∞ variant of BIM:
//!
//! g⁰ = 0,  gᵗ⁺¹ = μ·gᵗ + ∇ₓJ(xᵗ) / ‖∇ₓJ(xᵗ)‖₁,  xᵗ⁺¹ = Π_{B∞(x, ε) ∩ \[0, 1\]}(xᵗ + η·sign(gᵗ⁺¹)),
//!
//! with the L1 norm taken per example. The paper (Section 2.2 and 4.3) uses μ = 1 and 10 steps of
//! η = ε/10 from x⁰ = x. With `restarts > 1` the later attempts start from uniform random points
//! of the ε-ball (every attempt does with `random_start`), and an example keeps the first
//! adversarial example that meets the goal.

use burn::prelude::*;

use super::{Attack, AttackOutput, Classifier, Goal, LinfBudget, input_gradient, with_restarts};

/// The momentum iterative method.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mim {
    /// L∞ budget ε.
    pub eps: f64,
    /// Step size η.
    pub step_size: f64,
    /// Iterations per attempt.
    pub steps: usize,
    /// Momentum decay μ.
    pub decay: f64,
    /// Start the first attempt from a random point of the ε-ball instead of x.
    pub random_start: bool,
    /// Number of attempts (>= 1).
    pub restarts: usize,
}

impl Mim {
    /// The paper's MIM: 10 steps of ε/10, μ = 1, from the clean image, one attempt.
    pub fn paper(eps: f64) -> Self {
        Self {
            eps,
            step_size: eps / 10.0,
            steps: 10,
            decay: 1.0,
            random_start: false,
            restarts: 1,
        }
    }

    /// One attempt from a random start or from x: the final iterate.
    fn run_once(
        &self,
        model: &dyn Classifier,
        x0: &Tensor<4>,
        goal: &Goal,
        random: bool,
    ) -> Tensor<4> {
        let budget = LinfBudget { eps: self.eps };
        let n = x0.dims()[0];
        let mut x = if random {
            budget.random_point(x0)
        } else {
            x0.clone()
        };
        let mut momentum = x0.zeros_like();
        for _ in 0..self.steps {
            let g = input_gradient(model, &x, goal);
            let l1 = g
                .clone()
                .abs()
                .flatten::<2>(1, 3)
                .sum_dim(1)
                .clamp_min(1e-12)
                .reshape([n, 1, 1, 1]);
            momentum = momentum.mul_scalar(self.decay) + g / l1;
            x = budget.project(x + momentum.clone().sign().mul_scalar(self.step_size), x0);
        }
        x
    }
}

impl Attack for Mim {
    fn name(&self) -> String {
        format!(
            "MIM(eps={}, step={}, steps={}, decay={}, restarts={})",
            self.eps, self.step_size, self.steps, self.decay, self.restarts
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let x0 = images.detach().without_autodiff();
        let mut attempt = 0;
        with_restarts(model, goal, &x0, self.restarts, |x, goal, _| {
            let random = self.random_start || attempt > 0;
            attempt += 1;
            self.run_once(model, x, goal, random)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{assert_in_budget, two_class_toy};
    use crate::attack::{Fgsm, Pgd};
    use crate::tensor::floats;

    fn assert_close(a: Tensor<4>, b: Tensor<4>) {
        for (a, b) in floats::<f32, _>(a).iter().zip(floats::<f32, _>(b)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn on_a_linear_model_mim_steps_like_fgsm_and_ends_where_bim_ends() {
        // The gradient of a linear model has a constant sign, so the momentum has it too: one
        // MIM step is FGSM with ε = η, and ten steps end where BIM ends.
        let (model, x, y) = two_class_toy(1);
        let one = Mim {
            steps: 1,
            ..Mim::paper(0.2)
        };
        let first = one.attack(&model, x.clone(), y.clone());
        let fgsm = Fgsm { eps: 0.02 }.attack(&model, x.clone(), y.clone());
        assert_close(first.adversarial, fgsm.adversarial);

        let mim = Mim::paper(0.2).attack(&model, x.clone(), y.clone());
        let bim = Pgd::bim(0.2).attack(&model, x.clone(), y);
        assert_close(mim.adversarial.clone(), bim.adversarial);
        assert_in_budget(mim.adversarial, x, 0.2);
    }

    #[test]
    fn random_restarts_stay_in_budget_untargeted_and_targeted() {
        let (model, x, y) = two_class_toy(8);
        let mim = Mim {
            restarts: 3,
            steps: 3,
            random_start: true,
            ..Mim::paper(0.05)
        };
        let out = mim.attack(&model, x.clone(), y.clone());
        assert_eq!(out.success.len(), 8);
        assert_in_budget(out.adversarial, x.clone(), 0.05);
        let t = y.ones_like();
        let out = mim.run(&model, x.clone(), &Goal::Targeted(t));
        assert_in_budget(out.adversarial, x, 0.05);
    }
}
