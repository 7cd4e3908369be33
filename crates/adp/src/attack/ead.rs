//! EAD, the elastic-net attack (Chen et al., 2018), as in Section 2.2 of the paper: minimise per
//! example
//!
//! c · max(m(x'), −κ) + ‖x' − x‖²₂ + β‖x' − x‖₁  over x' ∈ [0, 1]ⁿ
//!
//! with m the margin of [`Goal::margin`] on Z = log F (as for C&W), by FISTA: a gradient step of
//! the smooth part at the slack point y (learning rate decayed as lr·(1 − k/N)^½), the projected
//! shrinkage-thresholding S_β onto [0, 1] (their Eq. 6),
//!
//! [S_β(z)]_i = min(z_i − β, 1) if z_i − x_i > β;  x_i if |z_i − x_i| ≤ β;  max(z_i + β, 0) if z_i − x_i < −β,
//!
//! and the momentum y ← x'ᵏ⁺¹ + k/(k+3)·(x'ᵏ⁺¹ − x'ᵏ). The defaults follow the paper and the
//! official code: β = 0.01, 1000 iterations, learning rate 0.01, κ = 0.1, c fixed (Table 2: 5 and
//! 10 on MNIST; default 5) or binary-searched. Each example returns its successful iterate of
//! smallest elastic-net (EN: ‖δ‖²₂ + β‖δ‖₁) or L1 distance, by the decision rule, or the clean
//! image where none succeeded.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::margin::{
    BestExamples, ConstantSearch, EarlyAbort, OptimSettings, margin_loss, succeeds,
};
use super::{Attack, AttackOutput, Classifier, Goal, Norms};

/// How EAD ranks the successful iterates of an example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DecisionRule {
    /// Smallest elastic-net distance ‖δ‖²₂ + β‖δ‖₁.
    #[default]
    En,
    /// Smallest ‖δ‖₁.
    L1,
}

/// The elastic-net attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ead {
    /// c, κ, learning rate, iterations and binary search.
    pub optim: OptimSettings,
    /// Weight β of the L1 term (and the shrinkage threshold).
    pub beta: f64,
    /// How the best example is chosen.
    pub decision_rule: DecisionRule,
}

impl Ead {
    /// The default c: the first MNIST row of Table 2.
    pub const PAPER_C: f64 = 5.0;
    /// β of Table 2's caption.
    pub const PAPER_BETA: f64 = 0.01;

    /// The paper's settings at constant `c`.
    pub fn paper(c: f64) -> Self {
        Self {
            optim: OptimSettings::paper(c),
            beta: Self::PAPER_BETA,
            decision_rule: DecisionRule::En,
        }
    }

    /// S_β(z) projected onto [0, 1], around the clean images `x0`.
    fn shrink(&self, z: Tensor<4>, x0: &Tensor<4>) -> Tensor<4> {
        let d = z.clone() - x0.clone();
        let up = z.clone().sub_scalar(self.beta).clamp_max(1.0);
        let down = z.add_scalar(self.beta).clamp_min(0.0);
        x0.clone()
            .mask_where(d.clone().greater_elem(self.beta), up)
            .mask_where(d.lower_elem(-self.beta), down)
    }
}

impl Attack for Ead {
    fn name(&self) -> String {
        let o = &self.optim;
        format!(
            "EAD(c={}, beta={}, rule={:?}, kappa={}, lr={}, iterations={}, binary_search_steps={})",
            o.c, self.beta, self.decision_rule, o.kappa, o.lr, o.iterations, o.binary_search_steps
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let o = &self.optim;
        let x0 = images.detach().without_autodiff();
        let n = x0.dims()[0];
        let mut search = ConstantSearch::new(n, o.c);
        let mut best = BestExamples::new(&x0);
        for _ in 0..o.binary_search_steps {
            let c = search.tensor(&x0.device());
            let c_values = crate::tensor::floats::<f64, _>(c.clone());
            let (mut x, mut y) = (x0.clone(), x0.clone());
            let mut abort = EarlyAbort::new(o.iterations);
            let mut succeeded = vec![false; n];
            for it in 0..o.iterations {
                let lr = o.lr * (1.0 - it as f64 / o.iterations as f64).sqrt();
                let step = margin_loss(model, goal, &y, &x0, &c, o.kappa);
                let next = self.shrink(y - step.grad.mul_scalar(lr), &x0);
                let momentum = it as f64 / (it as f64 + 3.0);
                y = next.clone() + (next.clone() - x).mul_scalar(momentum);
                x = next;

                let margin =
                    crate::tensor::floats::<f64, _>(goal.margin(model.log_probs(x.clone())));
                let norms = Norms::of(&x, &x0);
                let success: Vec<bool> = margin.iter().map(|&m| succeeds(m, o.kappa)).collect();
                let en: Vec<f64> = norms
                    .iter()
                    .map(|d| d.l2 * d.l2 + self.beta * d.l1)
                    .collect();
                let score: Vec<f64> = match self.decision_rule {
                    DecisionRule::En => en.clone(),
                    DecisionRule::L1 => norms.iter().map(|d| d.l1).collect(),
                };
                best.offer(&x, &success, &score);
                for (s, now) in succeeded.iter_mut().zip(&success) {
                    *s |= now;
                }
                let loss: f64 = (0..n)
                    .map(|i| en[i] + c_values[i] * margin[i].max(-o.kappa))
                    .sum();
                if o.abort_early && abort.stop(it, loss) {
                    break;
                }
            }
            search.update(&succeeded);
        }
        AttackOutput::judge(model, goal, &x0, best.adversarial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::cw::tests::toy;
    use crate::tensor::floats;
    use burn::tensor::TensorData;

    #[test]
    fn shrinkage_thresholds_around_the_clean_image_and_clips_to_0_1() {
        let d = crate::device::cpu();
        let x0 = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32, 0.5, 0.5, 0.98, 0.02], [1, 1, 1, 5]),
            &d,
        );
        let z = Tensor::<4>::from_data(
            TensorData::new(vec![0.7f32, 0.45, 0.2, 1.5, -0.5], [1, 1, 1, 5]),
            &d,
        );
        let ead = Ead {
            beta: 0.1,
            ..Ead::paper(1.0)
        };
        let s = floats::<f32, _>(ead.shrink(z, &x0));
        let expected = [0.6f32, 0.5, 0.3, 1.0, 0.0];
        for (a, e) in s.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
    }

    #[test]
    fn on_a_linear_model_it_succeeds_inside_0_1_with_both_decision_rules() {
        let (model, x, y) = toy();
        for rule in [DecisionRule::En, DecisionRule::L1] {
            let ead = Ead {
                optim: OptimSettings {
                    iterations: 300,
                    lr: 0.05,
                    ..OptimSettings::paper(10.0)
                },
                decision_rule: rule,
                ..Ead::paper(10.0)
            };
            let out = ead.attack(&model, x.clone(), y.clone());
            assert!(out.success[0], "{rule:?}");
            assert!(
                floats::<f32, _>(out.adversarial)
                    .iter()
                    .all(|a| (0.0..=1.0).contains(a))
            );
            // No perturbation reaching margin −κ is smaller in L1 than (1.25 + κ)/‖w‖∞ = 0.675.
            assert!(
                out.norms[0].l1 >= 0.675 - 1e-4,
                "{rule:?}: {:?}",
                out.norms[0]
            );
        }
    }
}
