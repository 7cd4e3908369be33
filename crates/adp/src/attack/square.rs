//! Square Attack under L∞ (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square
//! Attack: a query-efficient black-box adversarial attack via random search", Algorithm 1 with
//! the L∞ sampling of Algorithm 2), as AutoAttack's standard version runs it: score-based and
//! gradient-free, so a gradient masked by the defence cannot stop it.
//!
//! It starts from vertical stripes x + ε·s, one random sign s per column and channel, then for
//! each query i proposes x_best + δ, δ a square of side h_i = max(round(√(p_i·H·W)), 1) at a
//! random position, holding 2ε times one random sign per channel, projected onto
//! B∞(x, ε) ∩ [0, 1], and keeps it where it lowers the loss or misclassifies. The loss is the
//! margin z_y − max_{i≠y} z_i (untargeted) or the cross-entropy of the target (targeted), on
//! z = log F. The fraction p_i of the pixels a square covers follows the reference code's
//! schedule ([`p_schedule`]): p_init = 0.8, halved after queries 10, 50, 200, 500, 1000, 2000,
//! 4000, 6000 and 8000. As in fra31/auto-attack, one square is drawn per query for the whole
//! batch; its position is uniform over {0, …, H − h_i} × {0, …, W − h_i} as in the paper (the
//! reference code's exclusive upper bound never places a square at the last row or column).
//! Examples already misclassified stop being queried; no gradient is ever computed.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::{Attack, AttackOutput, Classifier, Goal, LinfBudget, place_rows, with_restarts};

/// Queries per restart in AutoAttack's standard version.
pub const DEFAULT_QUERIES: usize = 5000;
/// The initial fraction p of pixels a square covers (AutoAttack's standard version).
pub const P_INIT: f64 = 0.8;

/// Square Attack, L∞.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Square {
    /// L∞ budget ε.
    pub eps: f64,
    /// Queries (proposals) per restart, after the initial one.
    pub queries: usize,
    /// Initial fraction of the pixels a square covers.
    pub p_init: f64,
    /// Restarts, each on the examples the earlier ones left standing.
    pub restarts: usize,
}

impl Square {
    /// Square with AutoAttack's defaults: 5,000 queries, p_init = 0.8, one restart.
    pub fn new(eps: f64) -> Self {
        Self {
            eps,
            queries: DEFAULT_QUERIES,
            p_init: P_INIT,
            restarts: 1,
        }
    }

    /// The margin (negative where the goal is met) and the loss to lower, per example.
    fn margin_and_loss(model: &dyn Classifier, goal: &Goal, x: &Tensor<4>) -> (Vec<f64>, Vec<f64>) {
        let log_f = model.log_probs(x.clone());
        let margin = crate::tensor::floats::<f64, _>(goal.margin(log_f.clone()));
        let loss = match goal {
            Goal::Untargeted(_) => margin.clone(),
            Goal::Targeted(_) => crate::tensor::floats::<f64, _>(goal.objective(log_f).neg()),
        };
        (margin, loss)
    }

    /// One run from the stripes: each example's best point.
    fn run_once(&self, model: &dyn Classifier, x0: &Tensor<4>, goal: &Goal) -> Tensor<4> {
        let [n, c, h, w] = x0.dims();
        let device = x0.device();
        let budget = LinfBudget { eps: self.eps };
        let signs = |shape: [usize; 4]| super::draws::uniform(shape, -1.0, 1.0, &device).sign();
        let stripes = signs([n, c, 1, w]).expand([n, c, h, w]);
        let mut x_best = budget.project(x0.clone() + stripes.mul_scalar(self.eps), x0);
        let (mut margin, mut loss) = Self::margin_and_loss(model, goal, &x_best);
        for i in 0..self.queries {
            let open: Vec<usize> = (0..n).filter(|&j| margin[j] > 0.0).collect();
            if open.is_empty() {
                break;
            }
            let idx = super::row_indices(&open, &device);
            let x = x0.clone().select(0, idx.clone());
            let best = x_best.clone().select(0, idx.clone());
            let sub_goal = goal.select(idx);

            let side = square_side(p_schedule(self.p_init, i), h, w);
            // Position (row, column) and one sign per channel, from the device's generator.
            let draw =
                crate::tensor::floats::<f64, _>(super::draws::uniform([2 + c], 0.0, 1.0, &device));
            let at = |u: f64, len: usize| ((u * (len - side + 1) as f64) as usize).min(len - side);
            let (row, col) = (at(draw[0], h), at(draw[1], w));
            let mut delta = vec![0f32; c * h * w];
            for ch in 0..c {
                let sign = if draw[2 + ch] < 0.5 { -1.0 } else { 1.0 };
                for r in row..row + side {
                    for q in col..col + side {
                        delta[(ch * h + r) * w + q] = (2.0 * self.eps * sign) as f32;
                    }
                }
            }
            let delta = Tensor::<4>::from_data(TensorData::new(delta, [1, c, h, w]), &device);
            let proposal = budget.project(best + delta, &x);
            let (m_new, l_new) = Self::margin_and_loss(model, &sub_goal, &proposal);

            let mut keep = Vec::new();
            let mut keep_rows = Vec::new();
            for (j, &e) in open.iter().enumerate() {
                let improved = l_new[j] < loss[e];
                if improved {
                    loss[e] = l_new[j];
                }
                if improved || m_new[j] <= 0.0 {
                    margin[e] = m_new[j];
                    keep.push(j);
                    keep_rows.push(e);
                }
            }
            if !keep.is_empty() {
                let kept = proposal.select(0, super::row_indices(&keep, &device));
                x_best = place_rows(x_best, &keep_rows, kept);
            }
        }
        x_best
    }
}

/// The fraction of pixels a square covers at query `i` (0-based) of 10,000 or fewer: the
/// reference code's piecewise-constant schedule without rescaling (AutoAttack's standard
/// version, `resc_schedule=False`).
pub fn p_schedule(p_init: f64, i: usize) -> f64 {
    let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
        .iter()
        .filter(|&&bound| i > bound)
        .count();
    p_init / f64::from(1u32 << halvings)
}

/// The side of a square covering a fraction `p` of an `h × w` image: max(round(√(p·h·w)), 1),
/// at most min(h, w).
pub fn square_side(p: f64, h: usize, w: usize) -> usize {
    let side = (p * (h * w) as f64).sqrt().round() as usize;
    side.max(1).min(h.min(w))
}

impl Attack for Square {
    fn name(&self) -> String {
        format!(
            "Square(eps={}, queries={}, p_init={}, restarts={})",
            self.eps, self.queries, self.p_init, self.restarts
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let x0 = images.detach().without_autodiff();
        with_restarts(model, goal, &x0, self.restarts, |x, goal, _| {
            self.run_once(model, x, goal)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{
        Linear, assert_finds_exactly_the_closed_form_answer, assert_in_budget, linear_four_class,
    };
    use burn::tensor::Distribution;

    #[test]
    fn the_p_schedule_and_square_sides_follow_the_reference_code() {
        let p: Vec<f64> = [0, 10, 11, 50, 51, 200, 201, 4999, 8001]
            .iter()
            .map(|&i| p_schedule(0.8, i))
            .collect();
        assert_eq!(
            p,
            [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 128.0, 0.8 / 512.0]
        );
        // MNIST: 25 pixels wide at first, single pixels at the end of 5,000 queries.
        assert_eq!(square_side(0.8, 28, 28), 25);
        assert_eq!(square_side(p_schedule(0.8, 4999), 28, 28), 2);
        assert_eq!(square_side(1e-6, 28, 28), 1);
        assert_eq!(square_side(0.8, 2, 50), 2);
    }

    #[test]
    fn finds_the_minimal_perturbation_of_a_linear_model_and_nothing_below_it() {
        let (model, x, y, eps_star) = linear_four_class(6);
        assert_finds_exactly_the_closed_form_answer(&model, &x, &y, eps_star, |eps| {
            Box::new(Square {
                queries: 1000,
                ..Square::new(eps)
            })
        });
    }

    #[test]
    fn stays_in_budget_on_colour_images_with_both_goals() {
        let d = crate::device::cpu();
        let p = 3 * 5 * 5;
        let model = Linear {
            w: Tensor::random([4, p], Distribution::Normal(0.0, 1.0), &d),
            b: Tensor::zeros([4], &d),
        };
        let x = Tensor::<4>::random([6, 3, 5, 5], Distribution::Uniform(0.0, 1.0), &d);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new((0..6i64).map(|i| i % 4).collect(), [6]),
            &d,
        );
        let t = y.clone().add_scalar(1).remainder_scalar(4);
        for goal in [Goal::Untargeted(y), Goal::Targeted(t)] {
            let square = Square {
                queries: 50,
                restarts: 2,
                ..Square::new(0.05)
            };
            let out = square.run(&model, x.clone(), &goal);
            assert_eq!(out.success.len(), 6);
            assert_in_budget(out.adversarial, x.clone(), 0.05);
        }
    }
}
