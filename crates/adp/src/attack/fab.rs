//! FAB-T under L∞: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020,
//! "Minimally distorted adversarial examples with a fast adaptive boundary attack", Algorithm 1,
//! targeted as in "Reliable evaluation of adversarial robustness with an ensemble of diverse
//! parameter-free attacks", §4), with AutoAttack's standard settings: 9 target classes (the 2nd
//! to 10th ranked by the clean input), 100 iterations, one restart, α_max = 0.1, η = 1.05,
//! β = 0.9.
//!
//! With z = log F and the target t, each iteration linearises f(x) = z_t − z_y at the iterate
//! x⁽ⁱ⁾ and computes the minimal-L∞ steps onto the hyperplane {x : f(x⁽ⁱ⁾) + ∇f·(x − x⁽ⁱ⁾) = 0}
//! within [0, 1] ([`project_linf`]), from the iterate (δ⁽ⁱ⁾) and from the original x (δ_orig),
//! then moves to
//!
//! x⁽ⁱ⁺¹⁾ = clip((1 − α)(x⁽ⁱ⁾ + η δ⁽ⁱ⁾) + α(x + η δ_orig)),
//! α = min(‖δ⁽ⁱ⁾‖∞ / (‖δ⁽ⁱ⁾‖∞ + ‖δ_orig‖∞), α_max)   (Eq. 9),
//!
//! and when x⁽ⁱ⁺¹⁾ is adversarial, keeps it if it is the closest so far and steps back to
//! x + β(x⁽ⁱ⁺¹⁾ − x) (the backward step). The first restart starts at x, later ones at a random
//! point of radius min(‖best‖∞, ε)/2, as the reference code (fra31/auto-attack, `fab_pt.py`).
//! FAB minimises the perturbation instead of working inside the ball: an example's closest
//! adversarial point is returned projected onto B∞(x, ε) ∩ [0, 1] (where AutoAttack counts one
//! beyond ε as a failure, the projection is judged on the model like every attack's output), and
//! the clean image where none was found.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::{AttackOutput, Classifier, Goal, LinfBudget, gradient_of};
use crate::attack::Attack;
use crate::attack::apgd_t::over_top_classes;

/// FAB-T, L∞.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FabT {
    /// L∞ budget ε: what counts as success, and the radius bound of the random restarts.
    pub eps: f64,
    /// Iterations per target and restart.
    pub iterations: usize,
    /// Restarts per target class (the first from x itself).
    pub restarts: usize,
    /// How many of the classes ranked highest after the clean prediction are targeted.
    pub target_classes: usize,
    /// Largest weight α of the step from the original point.
    pub alpha_max: f64,
    /// Overshoot η of each projection.
    pub eta: f64,
    /// Backward step β after an adversarial iterate.
    pub beta: f64,
}

impl FabT {
    /// FAB-T with AutoAttack's standard settings.
    pub fn new(eps: f64) -> Self {
        Self {
            eps,
            iterations: super::apgd::DEFAULT_ITERATIONS,
            restarts: 1,
            target_classes: super::apgd_t::DEFAULT_TARGET_CLASSES,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
        }
    }

    /// One run towards the targets `t` away from the labels `y`; `success` judges an iterate.
    fn run_once(
        &self,
        model: &dyn Classifier,
        x0: &Tensor<4>,
        y: Tensor<1, Int>,
        t: Tensor<1, Int>,
        success: &Goal,
        random_start: bool,
    ) -> Tensor<4> {
        let dims = x0.dims();
        let (m, p) = (dims[0], dims[1] * dims[2] * dims[3]);
        let device = x0.device();
        let host = |x: Tensor<4>| -> Vec<f32> { x.into_data().try_into_vec_as::<f32>().unwrap() };
        let tensor = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), dims), &device);
        let origin = host(x0.clone());
        let mut x1 = origin.clone();
        if random_start {
            // x + min(‖best‖∞, ε)·u/‖u‖∞/2, u uniform; no best yet, so the radius is ε/2.
            let u = host(super::draws::uniform(dims, -1.0, 1.0, &device));
            for (row, u) in x1.chunks_mut(p).zip(u.chunks(p)) {
                let top = u.iter().fold(1e-12f32, |a, v| a.max(v.abs()));
                for (x, u) in row.iter_mut().zip(u) {
                    *x = (*x + self.eps as f32 * u / top * 0.5).clamp(0.0, 1.0);
                }
            }
        }
        let mut best = origin.clone();
        let mut best_norm = vec![f32::INFINITY; m];
        let (objective_y, objective_t) = (Goal::Untargeted(y), Goal::Targeted(t));
        for _ in 0..self.iterations {
            // f = z_t − z_y = log F_t − log F_y and its gradient.
            let (grad, f) = gradient_of(model, &tensor(&x1), |m, x| {
                let log_f = m.log_probs(x);
                objective_t.objective(log_f.clone()) + objective_y.objective(log_f)
            });
            let (grad, f) = (host(grad), crate::tensor::floats::<f64, _>(f));
            let rows = x1.chunks_mut(p).zip(origin.chunks(p)).zip(grad.chunks(p));
            for (((x, x_orig), w), f) in rows.zip(&f) {
                // The plane w·z = w·x⁽ⁱ⁾ − f: reached from x⁽ⁱ⁾ by w·δ = −f, from x by
                // w·δ = −f + w·(x⁽ⁱ⁾ − x).
                let shift: f64 = w
                    .iter()
                    .zip(x.iter().zip(x_orig))
                    .map(|(w, (a, b))| f64::from(*w) * f64::from(a - b))
                    .sum();
                let d1 = project_linf(x, w, -f as f32);
                let d2 = project_linf(x_orig, w, (-f + shift) as f32);
                let a1 = linf(&d1).max(1e-8);
                let a2 = linf(&d2).max(1e-8);
                let alpha = (a1 / (a1 + a2)).clamp(0.0, self.alpha_max as f32);
                let eta = self.eta as f32;
                for (j, x) in x.iter_mut().enumerate() {
                    let from_here = *x + eta * d1[j];
                    let from_origin = x_orig[j] + eta * d2[j];
                    *x = ((1.0 - alpha) * from_here + alpha * from_origin).clamp(0.0, 1.0);
                }
            }
            let met = success.achieved(model.log_probs(tensor(&x1)));
            for (i, _) in met.iter().enumerate().filter(|(_, met)| **met) {
                let r = i * p..(i + 1) * p;
                let norm = x1[r.clone()]
                    .iter()
                    .zip(&origin[r.clone()])
                    .fold(0f32, |a, (x, o)| a.max((x - o).abs()));
                if norm < best_norm[i] {
                    best_norm[i] = norm;
                    best[r.clone()].copy_from_slice(&x1[r.clone()]);
                }
                for (x, o) in x1[r.clone()].iter_mut().zip(&origin[r]) {
                    *x = o + (*x - o) * self.beta as f32;
                }
            }
        }
        LinfBudget { eps: self.eps }.project(tensor(&best), x0)
    }
}

/// max |d_i|.
fn linf(d: &[f32]) -> f32 {
    d.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// The smallest L∞ step δ with w·δ = c that keeps `p + δ` in [0, 1]: every pixel moves by
/// min(τ, its room) in the direction of sign(c)·sign(w_i), with τ the smallest radius at which
/// the moves add up to c (found exactly by sorting the rooms). Where no radius suffices, every
/// pixel moves to the end of its room, the closest the box allows; where w = 0, δ = 0.
pub fn project_linf(p: &[f32], w: &[f32], c: f32) -> Vec<f32> {
    let sign = if c >= 0.0 { 1.0f32 } else { -1.0 };
    let c = f64::from(c.abs());
    // (room, |w_i|) for every pixel that moves the product.
    let direction = |w: f32| sign * w.signum();
    let room = |p: f32, w: f32| if direction(w) > 0.0 { 1.0 - p } else { p };
    let mut moves: Vec<(f64, f64)> = p
        .iter()
        .zip(w)
        .filter(|(_, w)| **w != 0.0)
        .map(|(p, w)| (f64::from(room(*p, *w)), f64::from(w.abs())))
        .collect();
    if moves.is_empty() || c == 0.0 {
        return vec![0.0; p.len()];
    }
    moves.sort_by(|a, b| a.0.total_cmp(&b.0));
    // On [room_{k−1}, room_k] the product reached at radius τ is saturated + free·τ.
    let mut free: f64 = moves.iter().map(|m| m.1).sum();
    let mut saturated = 0.0;
    let mut tau = f64::INFINITY;
    for &(room, weight) in &moves {
        if saturated + free * room >= c {
            tau = (c - saturated) / free;
            break;
        }
        saturated += weight * room;
        free -= weight;
    }
    p.iter()
        .zip(w)
        .map(|(p, w)| {
            if *w == 0.0 {
                0.0
            } else {
                direction(*w) * (f64::from(room(*p, *w)).min(tau)) as f32
            }
        })
        .collect()
}

impl Attack for FabT {
    fn name(&self) -> String {
        format!(
            "FAB-T(eps={}, iterations={}, restarts={}, targets={})",
            self.eps, self.iterations, self.restarts, self.target_classes
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        match goal {
            Goal::Untargeted(_) => over_top_classes(
                model,
                images,
                goal,
                self.target_classes,
                self.restarts,
                |x, y, t, restart| {
                    let success = Goal::Untargeted(y.clone());
                    self.run_once(model, x, y, t, &success, restart > 0)
                },
            ),
            Goal::Targeted(_) => {
                // Towards the given class, away from the clean prediction.
                let x0 = images.detach().without_autodiff();
                let y = model.log_probs(x0.clone()).argmax(1).flatten::<1>(0, 1);
                let mut restart = 0;
                super::with_restarts(model, goal, &x0, self.restarts, |x, goal, rows| {
                    restart += 1;
                    let Goal::Targeted(t) = goal else {
                        unreachable!("the goal is targeted")
                    };
                    let y = y.clone().select(0, rows.clone());
                    self.run_once(model, x, y, t.clone(), goal, restart > 1)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{assert_finds_exactly_the_closed_form_answer, linear_four_class};

    #[test]
    fn the_projection_is_the_smallest_linf_step_onto_the_plane_within_the_box() {
        // w = (1, −2, 0, 1), c = 1.5 from p = (0.9, 0.5, 0.5, 0.5): pixel 0 can move 0.1 up,
        // pixel 1 0.5 down, pixel 3 0.5 up; at τ ≥ 0.1, 0.1 + (2 + 1)τ = 1.5 gives τ = 1.4/3.
        let (p, w) = ([0.9f32, 0.5, 0.5, 0.5], [1.0f32, -2.0, 0.0, 1.0]);
        let d = project_linf(&p, &w, 1.5);
        let tau = 1.4 / 3.0;
        let expected = [0.1, -tau, 0.0, tau];
        for (d, e) in d.iter().zip(expected) {
            assert!((d - e).abs() < 1e-6, "{d:?} vs {expected:?}");
        }
        let reached: f32 = d.iter().zip(w).map(|(d, w)| d * w).sum();
        assert!((reached - 1.5).abs() < 1e-5);
        // A negative c moves the other way; an unreachable one saturates the box; w = 0 stays.
        let d = project_linf(&p, &w, -0.2);
        assert!(
            (d[0] + 0.05).abs() < 1e-6 && (d[1] - 0.05).abs() < 1e-6,
            "{d:?}"
        );
        let d = project_linf(&p, &w, 100.0);
        for (d, e) in d.iter().zip([0.1, -0.5, 0.0, 0.5]) {
            assert!((d - e).abs() < 1e-6, "{d:?}");
        }
        assert_eq!(project_linf(&p, &[0.0; 4], 1.0), [0.0; 4]);
    }

    #[test]
    fn finds_the_minimal_perturbation_of_a_linear_model_and_nothing_below_it() {
        let (model, x, y, eps_star) = linear_four_class(6);
        assert_finds_exactly_the_closed_form_answer(&model, &x, &y, eps_star, |eps| {
            Box::new(FabT {
                iterations: 10,
                ..FabT::new(eps)
            })
        });
    }
}
