//! Projected gradient descent under L∞ (Madry et al., 2018), and BIM (Kurakin et al., 2017) as
//! its special case without random start:
//!
//! x⁰ = x + U(−ε, ε)ⁿ (random start) or x,  xᵗ⁺¹ = Π_{B∞(x, ε) ∩ \[0, 1\]}(xᵗ + η·sign(∇ₓ J(xᵗ))).
//!
//! The paper's default is 10 steps of η = ε/10 on J = cross-entropy of log F; J can be any
//! [`Objective`] (the surrogates of Tramer et al., 2020, §7, or DLR). With `restarts > 1` every
//! restart begins from a fresh random point and an example keeps the first adversarial example
//! that meets the goal (or the last iterate of the last restart when none does).

use burn::prelude::*;

use super::{
    Attack, AttackOutput, Classifier, Criterion, Goal, LinfBudget, Objective, restarted_ascent,
};

/// Projected gradient descent (sign steps, L∞ ball).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pgd {
    /// L∞ budget ε.
    pub eps: f64,
    /// Step size η.
    pub step_size: f64,
    /// Iterations per restart.
    pub steps: usize,
    /// Start from a uniform random point of the ε-ball (PGD) or from x itself (BIM).
    pub random_start: bool,
    /// Number of restarts (>= 1); only useful with a random start.
    pub restarts: usize,
    /// The loss J that the steps ascend.
    pub objective: Objective,
}

impl Pgd {
    /// The paper's PGD: 10 steps of ε/10 from a random start, one restart.
    pub fn paper(eps: f64) -> Self {
        Self {
            eps,
            step_size: eps / 10.0,
            steps: 10,
            random_start: true,
            restarts: 1,
            objective: Objective::LogMeanSoftmax,
        }
    }

    /// The paper's BIM: 10 steps of ε/10 from the clean image.
    pub fn bim(eps: f64) -> Self {
        Self {
            random_start: false,
            ..Self::paper(eps)
        }
    }

    /// One restart: the final iterate.
    fn run_once(&self, model: &dyn Classifier, x0: &Tensor<4>, loss: &Criterion) -> Tensor<4> {
        let budget = LinfBudget { eps: self.eps };
        let mut x = if self.random_start {
            budget.random_point(x0)
        } else {
            x0.clone()
        };
        for _ in 0..self.steps {
            let g = loss.probe(model, &x).grad;
            x = budget.project(x + g.sign().mul_scalar(self.step_size), x0);
        }
        x
    }
}

impl Attack for Pgd {
    fn name(&self) -> String {
        let kind = if self.random_start { "PGD" } else { "BIM" };
        format!(
            "{kind}(eps={}, step={}, steps={}, restarts={}, objective={})",
            self.eps,
            self.step_size,
            self.steps,
            self.restarts,
            self.objective.name()
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        restarted_ascent(
            model,
            images,
            goal,
            self.objective,
            self.restarts,
            |x0, loss| self.run_once(model, x0, loss),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{assert_in_budget, two_class_toy};
    use crate::tensor::floats;

    #[test]
    fn bim_on_a_linear_model_walks_to_the_corner_of_the_ball() {
        // The gradient sign of a linear model never changes, so BIM ends at x + ε·sign(W_1 − W_0),
        // clipped to [0, 1]: the same point as FGSM.
        let (model, x, y) = two_class_toy(1);
        let out = Pgd::bim(0.2).attack(&model, x.clone(), y);
        let expected = [0.3f32, 0.7, 0.3, 1.0];
        for (a, e) in floats::<f32, _>(out.adversarial.clone())
            .iter()
            .zip(expected)
        {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        assert_in_budget(out.adversarial, x, 0.2);
    }

    #[test]
    fn random_start_with_restarts_stays_in_budget() {
        let (model, x, y) = two_class_toy(1);
        let x = x.repeat_dim(0, 16);
        let y = y.repeat_dim(0, 16);
        let pgd = Pgd {
            restarts: 3,
            steps: 3,
            ..Pgd::paper(0.05)
        };
        let out = pgd.attack(&model, x.clone(), y);
        assert_eq!(out.success.len(), 16);
        assert_in_budget(out.adversarial, x, 0.05);
    }

    #[test]
    fn the_official_objective_stays_in_budget() {
        let (model, x, y) = two_class_toy(1);
        let pgd = Pgd {
            objective: Objective::Official,
            ..Pgd::paper(0.1)
        };
        let out = pgd.attack(&model, x.clone(), y);
        assert_in_budget(out.adversarial, x, 0.1);
    }
}
