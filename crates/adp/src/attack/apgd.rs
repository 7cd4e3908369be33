//! Auto-PGD under L∞ (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness
//! with an ensemble of diverse parameter-free attacks", Algorithm 1), on the ensemble's log F.
//!
//! From x⁽⁰⁾ (a random point of the ε-ball, or x), with step η⁽⁰⁾ = 2ε and α = 0.75 (Eq. 2):
//!
//! z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾ sign(∇f(x⁽ᵏ⁾))),
//! x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))   (α = 1 at k = 0),
//!
//! with P the projection onto B∞(x, ε) ∩ [0, 1]. At the checkpoints w_j = ⌈p_j N⌉ of
//! [`checkpoints`] the step of an example is halved, and it restarts from its best point
//! x_max, when (condition 1) at most ρ = 0.75 of the steps since the last checkpoint increased f,
//! or (condition 2) its step was not halved at the last checkpoint and its best loss has not
//! improved since. The reference code (fra31/auto-attack) tests condition 1 with "≤ ρ·(w_j −
//! w_{j−1})" where the paper writes "<"; this follows the code. Every example keeps its own step
//! size and best point; all state stays in batched tensors.
//!
//! The loss f is an [`Objective`]: APGD-CE is the cross-entropy on log F, APGD-DLR the DLR loss
//! with z = log F as its logits (what the official ADP code exposes to attacks).
//! An example's result is its last iterate that met the goal, or its best-loss point x_max.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::{
    Attack, AttackOutput, Classifier, Criterion, Goal, LinfBudget, Objective, restarted_ascent,
};

/// Iterations N by default (Croce & Hein, 2020, §3).
pub const DEFAULT_ITERATIONS: usize = 100;
/// Momentum α (Eq. 2).
const MOMENTUM: f64 = 0.75;
/// Fraction ρ of increasing steps below which the step size is halved (condition 1).
const RHO: f64 = 0.75;

/// Auto-PGD, L∞.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Apgd {
    /// L∞ budget ε.
    pub eps: f64,
    /// Iterations N per restart.
    pub iterations: usize,
    /// Number of restarts (>= 1), each from a fresh random start.
    pub restarts: usize,
    /// Start from a random point of the ε-ball (as AutoAttack) or from x itself.
    pub random_start: bool,
    /// The loss f: [`Objective::LogMeanSoftmax`] (APGD-CE) or [`Objective::Dlr`] (APGD-DLR).
    pub objective: Objective,
}

impl Apgd {
    /// APGD with Croce & Hein's defaults: 100 iterations, one restart, random start.
    pub fn new(eps: f64, objective: Objective) -> Self {
        Self {
            eps,
            iterations: DEFAULT_ITERATIONS,
            restarts: 1,
            random_start: true,
            objective,
        }
    }

    /// One restart: each example's last successful iterate, or its best-loss point.
    pub(crate) fn run_once(
        &self,
        model: &dyn Classifier,
        x0: &Tensor<4>,
        loss: &Criterion,
    ) -> Tensor<4> {
        let budget = LinfBudget { eps: self.eps };
        let n = x0.dims()[0];
        let device = x0.device();
        let rows = |mask: Tensor<1, Bool>| mask.reshape([n, 1, 1, 1]).expand(x0.shape());
        let flags = |v: Vec<bool>| Tensor::<1, Bool>::from_data(TensorData::new(v, [n]), &device);

        let mut x = if self.random_start {
            // x + ε·t/‖t‖∞ with t uniform in [−1, 1]ⁿ, as the reference code draws it.
            let t = super::draws::uniform(x0.dims(), -1.0, 1.0, &device);
            let scale = t
                .clone()
                .abs()
                .flatten::<2>(1, 3)
                .max_dim(1)
                .add_scalar(1e-12);
            let t = t / scale.reshape([n, 1, 1, 1]);
            budget.project(x0.clone() + t.mul_scalar(self.eps), x0)
        } else {
            x0.clone()
        };
        let probe = loss.probe(model, &x);
        let mut grad = probe.grad;
        let mut met = flags(probe.met);
        let mut found = x.clone();
        let (mut x_best, mut grad_best) = (x.clone(), grad.clone());
        let mut loss_best = probe.value.clone();
        let mut loss_prev = probe.value;
        let mut step = Tensor::<1>::full([n], 2.0 * self.eps, &device);
        let mut x_prev = x.clone();

        // Checkpoint bookkeeping: increases of f since the last checkpoint, and the state there.
        let mut increases = Tensor::<1>::zeros([n], &device);
        let mut loss_best_at_check = loss_best.clone();
        let mut halved_at_check = flags(vec![true; n]);
        let mut checks = checkpoints(self.iterations).into_iter().peekable();
        let mut last_check = 0;

        for i in 0..self.iterations {
            let alpha = if i == 0 { 1.0 } else { MOMENTUM };
            let eta = step.clone().reshape([n, 1, 1, 1]);
            let z = budget.project(x.clone() + grad.sign() * eta, x0);
            let next = budget.project(
                x.clone()
                    + (z - x.clone()).mul_scalar(alpha)
                    + (x.clone() - x_prev).mul_scalar(1.0 - alpha),
                x0,
            );
            x_prev = x;
            x = next;

            let probe = loss.probe(model, &x);
            grad = probe.grad;
            let now = flags(probe.met);
            found = found.mask_where(rows(now.clone()), x.clone());
            met = met.bool_or(now);
            increases = increases + probe.value.clone().greater(loss_prev).float();
            let improved = probe.value.clone().greater(loss_best.clone());
            x_best = x_best.mask_where(rows(improved.clone()), x.clone());
            grad_best = grad_best.mask_where(rows(improved.clone()), grad.clone());
            loss_best = loss_best.mask_where(improved, probe.value.clone());
            loss_prev = probe.value;

            if checks.next_if_eq(&(i + 1)).is_some() {
                let window = (i + 1 - last_check) as f64;
                last_check = i + 1;
                let oscillating = increases.clone().lower_equal_elem(RHO * window);
                let stalled = halved_at_check
                    .bool_not()
                    .bool_and(loss_best_at_check.greater_equal(loss_best.clone()));
                let halve = oscillating.bool_or(stalled);
                step = step.clone().mask_where(halve.clone(), step.div_scalar(2.0));
                x = x.mask_where(rows(halve.clone()), x_best.clone());
                grad = grad.mask_where(rows(halve.clone()), grad_best.clone());
                halved_at_check = halve;
                loss_best_at_check = loss_best.clone();
                increases = increases.zeros_like();
            }
        }
        x_best.mask_where(rows(met), found)
    }
}

/// The iterations after which APGD checks its step size: w_j = ⌈p_j N⌉ for p₀ = 0, p₁ = 0.22,
/// p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (Croce & Hein, 2020, §3.2), in the reference
/// code's integer form: the first window has ⌊0.22 N⌋ iterations and each next window is
/// ⌊0.03 N⌋ shorter, but at least ⌊0.06 N⌋ (each at least 1).
pub fn checkpoints(n: usize) -> Vec<usize> {
    let fraction = |p: f64| ((p * n as f64) as usize).max(1);
    let (first, shortest, shrink) = (fraction(0.22), fraction(0.06), fraction(0.03));
    let mut w = Vec::new();
    let (mut at, mut window) = (first, first);
    while at <= n {
        w.push(at);
        window = window.saturating_sub(shrink).max(shortest);
        at += window;
    }
    w
}

impl Attack for Apgd {
    fn name(&self) -> String {
        let loss = match self.objective {
            Objective::Dlr => "DLR".to_string(),
            Objective::LogMeanSoftmax => "CE".to_string(),
            other => other.name().to_string(),
        };
        format!(
            "APGD-{loss}(eps={}, iterations={}, restarts={})",
            self.eps, self.iterations, self.restarts
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
    use crate::attack::tests::{Linear, assert_in_budget};
    use burn::tensor::Distribution;

    #[test]
    fn checkpoints_follow_the_papers_recursion() {
        // p_j from the paper's recursion, compared with the integer schedule for N = 100
        // (where ⌈p_j N⌉ is exact) and N = 1000.
        for n in [100usize, 1000] {
            let mut p = vec![0.0f64, 0.22];
            loop {
                let j = p.len() - 1;
                let next = p[j] + (p[j] - p[j - 1] - 0.03).max(0.06);
                if next > 1.0 + 1e-9 {
                    break;
                }
                p.push(next);
            }
            let expected: Vec<usize> = p[1..]
                .iter()
                .map(|p| (p * n as f64 - 1e-6).ceil() as usize)
                .collect();
            assert_eq!(checkpoints(n), expected, "N = {n}");
        }
        assert_eq!(checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99]);
        assert_eq!(checkpoints(3), [1, 2, 3]);
    }

    #[test]
    fn stays_in_budget_with_both_losses_and_goals() {
        let d = crate::device::cpu();
        // Four classes (DLR needs at least 4 for the targeted form), 4 pixels.
        let w = Tensor::<2>::random([4, 4], Distribution::Normal(0.0, 2.0), &d);
        let model = Linear {
            w,
            b: Tensor::zeros([4], &d),
        };
        let x = Tensor::<4>::random([8, 1, 2, 2], Distribution::Uniform(0.0, 1.0), &d);
        let labels = Tensor::<1, Int>::from_data(
            TensorData::new((0..8i64).map(|i| i % 4).collect(), [8]),
            &d,
        );
        let targets = labels.clone().add_scalar(1).remainder_scalar(4);
        for objective in [Objective::LogMeanSoftmax, Objective::Dlr] {
            for goal in [
                Goal::Untargeted(labels.clone()),
                Goal::Targeted(targets.clone()),
            ] {
                let apgd = Apgd {
                    iterations: 12,
                    restarts: 2,
                    ..Apgd::new(0.07, objective)
                };
                let out = apgd.run(&model, x.clone(), &goal);
                assert_eq!(out.success.len(), 8);
                assert_in_budget(out.adversarial, x.clone(), 0.07);
            }
        }
    }
}
