//! MORA, the model-reweighing attack of Yu, Gao and Xu (NeurIPS 2022, "MORA: Improving Ensemble
//! Robustness Evaluation with Model-Reweighing Attack"), ported from the official code
//! (`lafeat/mora`, commit `41e0ecc`; paths and lines below are of that commit).
//!
//! An averaged ensemble hides its members: the gradient of log F = log (1/K) Σ_k softmax(z^k)
//! weighs each member by its softmax Jacobian, which vanishes for a member that is very
//! confident, so a sign-gradient attack never moves the pixels only that member looks at. MORA
//! ascends instead, every iteration and per example, the cross-entropy of a surrogate that mixes
//! the ensemble's normalised log F with a reweighted average of the members' *scaled logits*:
//!
//! * **the members' scale** s = max_k (z^k_π1 − z^k_π2) / 10 where that maximum exceeds 10, else
//!   1, and every member's logits become z^k / s (`get_sub_max_scale`, `mora_attack.py:62-79`;
//!   used at lines 206-207);
//! * **a reference ensemble** P̄ = (1/K) Σ softmax(z^k / s), detached. The official sum runs over
//!   `range(sub_output - 1)`, every member but the last, while dividing by K (lines 209-212);
//!   we keep that, and for K = 1, where that sum is empty and every weight would divide by zero,
//!   the single member is used;
//! * **the members' weights** from p^k = softmax(`float_dis` · z^k) (raw logits, line 223) and
//!   P̄, with j₁, j₂ the classes P̄ ranks first and second and ι = [j₁ = y]
//!   (`get_probablity_weight`, lines 108-127):
//!   p̂ = p^k_{j₁}(1 − ι) − p^k_{j₂} ι, ẑ = P̄_{j₁}(1 − ι) − P̄_{j₂} ι, and
//!   w_k = p̂ (p^k_y / P̄_y + (1 − p̂) / ẑ), signs as in the official code (line 122). A weight
//!   that is not a finite number (a probability that underflowed to 0 in float32) is set to 0,
//!   where the official code would carry a NaN;
//! * **a mask** m_k = [argmax z^k = y]: only members still right count (line 216);
//! * **the surrogate** (`ensemble_pattern='softmax'`, lines 228-237, the pattern of ADP's
//!   averaged softmax): ℓ = (1 − λ) log F / (log F_π1 − log F_π2) + λ Σ_k w_k m_k z^k/s /
//!   (10⁻⁸ + Σ_k w_k m_k), where the divisor of log F is its detached top-1 − top-2 gap
//!   (`get_output_scale`, lines 51-60, floored here at 10⁻¹² where the official code would
//!   divide by 0), and λ is `scale_value`. The loss is the cross-entropy of ℓ at y (line 248).
//!   The `logits` pattern (lines 239-246) attacks ensembles that average logits and the `voting`
//!   one hard votes; our ensembles average softmax (Eq. 1), so only `softmax` is ported.
//!
//! The ascent (`attack_single_run`, lines 129-312): a random start x + ε t / ‖t‖∞ with t uniform
//! in [−1, 1] (lines 133-143), clipped to [0, 1]; ε lowered by 1.9·10⁻⁸ (line 17); step
//! η_i = 2ε (1 − i/N) (`decay_step='linear'`, lines 168 and 173-174; `cosine` is line 175-176);
//! x₁ = Π(x + η_i sign ∇ℓ), then x ← Π(x + 0.75 (x₁ − x) + 0.25 (x − x_prev)), with 1 in place
//! of 0.75 at the first iteration (lines 255-269); an example stops as soon as the ensemble
//! (argmax log F) is fooled, keeping that point (lines 286-310). N = 100 (`n_iter`, `mora.py:18`).
//!
//! The standard evaluation (`set_version('standard-pre')`, `mora.py:246-249`) runs that ascent
//! once for each λ in (0.5, 0, 0.25, 0.75, 1) — attack names `mora-ce-5`, `mora-ce-0.0`, …, λ the
//! number over 10 (`mora.py:153-157`) — each on the examples the earlier ones left standing;
//! that is what [`Mora::new`] runs. `float_dis` defaults to 0.2, the evaluation script's
//! (`eval_mora.py:24`, and `scripts/evaluation.sh` for ADP with the softmax pattern; the `MORA`
//! class's own default is 1.0, `mora.py:18`); the step schedule to `linear` (`eval_mora.py:29`,
//! `mora.py:17`; the ADP script passes `cosine`, see [`DecaySchedule`]). `n_restarts=5` is passed
//! (`mora.py:38`) but `perturb` runs one attempt (`mora_attack.py:314-347`), so one by default.
//!
//! `standard-t-pre` adds a targeted run (`mora_ce_t-5`), whose reweighted surrogate is computed
//! and then overwritten by log F (`logits_prev = out_adv_old`, in `MORAAttack_targeted`), so it is
//! the targeted cross-entropy of log F with the same schedule and momentum; for a
//! [`Goal::Targeted`] this attack does exactly that, and it is not part of the untargeted sweep.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

use super::{
    Attack, AttackOutput, Classifier, Goal, LinfBudget, gradient_with, place_rows, row_indices,
};
use crate::model::EnsembleOutput;

/// Iterations of one ascent (`n_iter=100`, `mora.py:18`).
pub const DEFAULT_ITERATIONS: usize = 100;
/// The weights λ of the standard sweep, in order (`mora.py:248`).
pub const STANDARD_SCALES: [f64; 5] = [0.5, 0.0, 0.25, 0.75, 1.0];
/// `float_dis` of the evaluation script (`eval_mora.py:24`).
pub const DEFAULT_FLOAT_DIS: f64 = 0.2;
/// The reduction of ε (`mora_attack.py:17`).
const EPS_SHRINK: f64 = 1.9e-8;

/// How the step size decays from 2ε over the iterations (`mora_attack.py:173-180`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecaySchedule {
    /// η_i = 2ε (1 − i/N).
    #[default]
    Linear,
    /// η_i = 2ε (1 + cos(π i/N)) / 2.
    Cosine,
}

impl DecaySchedule {
    fn step(self, eps: f64, i: usize, n: usize) -> f64 {
        let r = i as f64 / n as f64;
        let begin = 2.0 * eps;
        match self {
            DecaySchedule::Linear => begin * (1.0 - r),
            DecaySchedule::Cosine => begin * (1.0 + (r * std::f64::consts::PI).cos()) * 0.5,
        }
    }
}

/// MORA on ensembles that average their members' softmax (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Mora {
    /// L∞ budget ε.
    pub eps: f64,
    /// Iterations N of each ascent.
    pub iterations: usize,
    /// The weights λ of the members' term, one ascent each, in order, on the examples still
    /// standing.
    pub scales: Vec<f64>,
    /// Temperature of the members' probabilities in their weights (`float_dis`).
    pub float_dis: f64,
    /// Step-size decay.
    pub decay: DecaySchedule,
    /// How many times the whole sweep runs, each on the examples still standing.
    pub restarts: usize,
}

impl Mora {
    /// The official standard sweep: λ ∈ (0.5, 0, 0.25, 0.75, 1), 100 iterations each, linear
    /// decay from 2ε, `float_dis` 0.2, one attempt.
    pub fn new(eps: f64) -> Self {
        Self {
            eps,
            iterations: DEFAULT_ITERATIONS,
            scales: STANDARD_SCALES.to_vec(),
            float_dis: DEFAULT_FLOAT_DIS,
            decay: DecaySchedule::Linear,
            restarts: 1,
        }
    }

    /// The official random start: x + ε t / ‖t‖∞, t uniform in [−1, 1], clipped to [0, 1].
    fn random_start(&self, x0: &Tensor<4>, eps: f64) -> Tensor<4> {
        let n = x0.dims()[0];
        let t = super::draws::uniform(x0.dims(), -1.0, 1.0, &x0.device());
        let top = t
            .clone()
            .abs()
            .flatten::<2>(1, 3)
            .max_dim(1)
            .clamp_min(1e-12)
            .reshape([n, 1, 1, 1]);
        (x0.clone() + t.div(top).mul_scalar(eps)).clamp(0.0, 1.0)
    }

    /// One ascent with weight `lambda` on all of `x0`: each example's first point that meets
    /// the goal, or its last iterate.
    fn ascent(
        &self,
        model: &dyn Classifier,
        x0: &Tensor<4>,
        goal: &Goal,
        lambda: f64,
    ) -> Tensor<4> {
        let eps = (self.eps - EPS_SHRINK).max(0.0);
        let budget = LinfBudget { eps };
        let start = if eps > 0.0 {
            self.random_start(x0, eps)
        } else {
            x0.clone()
        };
        let mut best = start.clone();
        let met = goal.achieved(model.log_probs(start.clone()).detach().without_autodiff());
        let mut open: Vec<usize> = (0..met.len()).filter(|&i| !met[i]).collect();
        if open.is_empty() || eps <= 0.0 {
            return best;
        }
        let device = x0.device();
        let idx = row_indices(&open, &device);
        let mut clean = x0.clone().select(0, idx.clone());
        let mut x = start.select(0, idx.clone());
        let mut x_prev = x.clone();
        let mut sub_goal = goal.select(idx);
        for i in 0..self.iterations {
            let eta = self.decay.step(eps, i, self.iterations);
            let (grad, _, ()) = gradient_with(model, &x, |m, x| {
                let logits = m.member_logits(x);
                (self.surrogate(logits, &sub_goal, lambda), ())
            });
            let a = if i > 0 { 0.75 } else { 1.0 };
            let x1 = budget.project(x.clone() + grad.sign().mul_scalar(eta), &clean);
            let next = budget.project(
                x.clone()
                    + (x1 - x.clone()).mul_scalar(a)
                    + (x.clone() - x_prev).mul_scalar(1.0 - a),
                &clean,
            );
            x_prev = x;
            x = next;
            let met = sub_goal.achieved(model.log_probs(x.clone()).detach().without_autodiff());
            let done: Vec<usize> = (0..open.len()).filter(|&j| met[j]).collect();
            let keep: Vec<usize> = (0..open.len()).filter(|&j| !met[j]).collect();
            if !done.is_empty() {
                let rows: Vec<usize> = done.iter().map(|&j| open[j]).collect();
                best = place_rows(
                    best,
                    &rows,
                    x.clone().select(0, row_indices(&done, &device)),
                );
            }
            if keep.is_empty() {
                return best;
            }
            if !done.is_empty() {
                let k = row_indices(&keep, &device);
                x = x.select(0, k.clone());
                x_prev = x_prev.select(0, k.clone());
                clean = clean.select(0, k.clone());
                sub_goal = sub_goal.select(k);
                open = keep.iter().map(|&j| open[j]).collect();
            }
        }
        place_rows(best, &open, x)
    }

    /// The per-example loss to ascend from the members' logits `[b, K, L]`: the cross-entropy
    /// of MORA's surrogate (untargeted), or the targeted cross-entropy of log F.
    fn surrogate(&self, logits: Tensor<3>, goal: &Goal, lambda: f64) -> Tensor<1> {
        let log_f = EnsembleOutput {
            logits: logits.clone(),
        }
        .log_mean_probs();
        let y = match goal {
            Goal::Targeted(_) => return goal.objective(log_f),
            Goal::Untargeted(y) => y.clone().to_device(&log_f.device()),
        };
        let mixed = mora_logits(logits, log_f, &y, lambda, self.float_dis);
        Goal::Untargeted(y).objective(log_softmax(mixed, 1))
    }
}

/// Column `c` of `[b, L]` at per-row classes `idx` `[b]`, as `[b, 1]`.
fn at(t: Tensor<2>, idx: &Tensor<1, Int>) -> Tensor<2> {
    let b = idx.dims()[0];
    t.gather(1, idx.clone().reshape([b, 1]))
}

/// The members' `[b, K, L]` at per-row classes `idx` `[b]`, as `[b, K]`.
fn at_members(t: Tensor<3>, idx: &Tensor<1, Int>) -> Tensor<2> {
    let [b, k, _] = t.dims();
    let i = idx.clone().reshape([b, 1, 1]).repeat_dim(1, k);
    t.gather(2, i).reshape([b, k])
}

/// Top-1 minus top-2 of each row of `[b, L]`, `[b]`.
fn top_gap(t: Tensor<2>) -> Tensor<1> {
    let b = t.dims()[0];
    let sorted = t.sort_descending(1);
    (sorted.clone().slice([0..b, 0..1]) - sorted.slice([0..b, 1..2])).reshape([b])
}

/// MORA's surrogate logits `[b, L]` (`ensemble_pattern='softmax'`, `mora_attack.py:200-237`)
/// from the members' logits `[b, K, L]` and log F `[b, L]` of the same forward pass, for the
/// true labels `y`: gradients flow through `logits` and `log_f`, the weights are constants.
pub fn mora_logits(
    logits: Tensor<3>,
    log_f: Tensor<2>,
    y: &Tensor<1, Int>,
    lambda: f64,
    float_dis: f64,
) -> Tensor<2> {
    let [b, k, l] = logits.dims();
    let z = logits.clone().detach();
    // s: the largest member top-1 − top-2 gap over 10, where it exceeds 10 (lines 62-79).
    let gaps = top_gap(z.clone().reshape([b * k, l])).reshape([b, k]);
    let max_gap = gaps.max_dim(1); // [b, 1]
    let s = max_gap
        .clone()
        .div_scalar(10.0)
        .mask_where(
            max_gap.lower_equal_elem(10.0),
            Tensor::ones([b, 1], &z.device()),
        )
        .reshape([b, 1, 1]);
    let scaled = logits.div(s.clone()); // with gradient
    let scaled_d = z.clone().div(s);
    // P̄: every member but the last, over K (lines 209-212); the one member when K = 1.
    let summed = if k > 1 { k - 1 } else { 1 };
    let p_bar = softmax(scaled_d.clone().slice([0..b, 0..summed, 0..l]), 2)
        .sum_dim(1)
        .reshape([b, l])
        .div_scalar(k as f64);
    // The members still right (line 216).
    let y_col = y.clone().reshape([b, 1]).repeat_dim(1, k);
    let mask = scaled_d.argmax(2).reshape([b, k]).equal(y_col).float();
    // The weights (lines 108-127, 221-225).
    let p = softmax(z.mul_scalar(float_dis), 2);
    let j1 = p_bar.clone().argmax(1).reshape([b]);
    let second = p_bar
        .clone()
        .mask_fill(j1.clone().one_hot::<2>(l).equal_elem(1), f32::NEG_INFINITY)
        .argmax(1)
        .reshape([b]);
    let iota = j1.clone().equal(y.clone()).float().reshape([b, 1]);
    let not_iota = iota.clone().neg().add_scalar(1.0);
    let p_hat = at_members(p.clone(), &j1) * not_iota.clone()
        - at_members(p.clone(), &second) * iota.clone();
    let p_y = at_members(p, y);
    let z_y = at(p_bar.clone(), y);
    let z_hat = at(p_bar.clone(), &j1) * not_iota - at(p_bar, &second) * iota;
    let w = p_hat.clone() * (p_y.div(z_y) + p_hat.neg().add_scalar(1.0).div(z_hat));
    let finite = w
        .clone()
        .is_nan()
        .bool_not()
        .bool_and(w.clone().is_inf().bool_not());
    let w = w.clone().mask_where(finite.bool_not(), w.zeros_like()) * mask; // [b, K]
    let denom = w.clone().sum_dim(1).add_scalar(1e-8); // [b, 1]
    let members = (scaled * w.reshape([b, k, 1]))
        .sum_dim(1)
        .reshape([b, l])
        .div(denom);
    // log F over its own detached top-1 − top-2 gap (lines 51-60, 230).
    let f_gap = top_gap(log_f.clone().detach())
        .clamp_min(1e-12)
        .reshape([b, 1]);
    log_f.div(f_gap).mul_scalar(1.0 - lambda) + members.mul_scalar(lambda)
}

impl Attack for Mora {
    fn name(&self) -> String {
        let scales: Vec<String> = self.scales.iter().map(|s| s.to_string()).collect();
        format!(
            "MORA(eps={}, steps={}, scales=[{}], float_dis={}, restarts={})",
            self.eps,
            self.iterations,
            scales.join(", "),
            self.float_dis,
            self.restarts
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let x0 = images.detach().without_autodiff();
        let n = x0.dims()[0];
        let mut adversarial = x0.clone();
        let mut success = vec![false; n];
        let sweep: Vec<f64> = (0..self.restarts.max(1))
            .flat_map(|_| self.scales.iter().copied())
            .collect();
        for lambda in sweep {
            let open: Vec<usize> = (0..n).filter(|&i| !success[i]).collect();
            if open.is_empty() {
                break;
            }
            let idx = row_indices(&open, &x0.device());
            let x = x0.clone().select(0, idx.clone());
            let sub_goal = goal.select(idx);
            let adv = self.ascent(model, &x, &sub_goal, lambda);
            let met = sub_goal.achieved(model.log_probs(adv.clone()).detach().without_autodiff());
            adversarial = place_rows(adversarial, &open, adv);
            for (j, &i) in open.iter().enumerate() {
                success[i] = met[j];
            }
        }
        AttackOutput::judge(model, goal, &x0, adversarial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{
        Linear, assert_finds_exactly_the_closed_form_answer, assert_in_budget, linear_four_class,
    };
    use crate::attack::{Apgd, Objective, Pgd, input_gradient};
    use crate::tensor::floats;
    use burn::tensor::Distribution;
    use burn::tensor::TensorData;

    fn short(eps: f64) -> Mora {
        Mora {
            iterations: 20,
            ..Mora::new(eps)
        }
    }

    #[test]
    fn stays_in_the_ball_and_the_box() {
        let d = crate::device::cpu();
        let w = Tensor::<2>::random([4, 16], Distribution::Normal(0.0, 2.0), &d);
        let model = Members(vec![
            Linear {
                w: w.clone(),
                b: Tensor::zeros([4], &d),
            },
            Linear {
                w: w.mul_scalar(-0.5),
                b: Tensor::zeros([4], &d),
            },
        ]);
        let x = Tensor::<4>::random([6, 1, 4, 4], Distribution::Uniform(0.0, 1.0), &d);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new((0..6i64).map(|i| i % 4).collect(), [6]),
            &d,
        );
        let out = short(0.05).attack(&model, x.clone(), y);
        assert_in_budget(out.adversarial, x, 0.05);
    }

    #[test]
    fn finds_exactly_the_closed_form_answer_on_a_linear_model() {
        let (model, x, y, eps_star) = linear_four_class(4);
        assert_finds_exactly_the_closed_form_answer(&model, &x, &y, eps_star, |eps| {
            Box::new(short(eps))
        });
    }

    #[test]
    fn the_schedules_start_at_two_eps_and_decay() {
        assert!((DecaySchedule::Linear.step(0.1, 0, 100) - 0.2).abs() < 1e-12);
        assert!((DecaySchedule::Linear.step(0.1, 50, 100) - 0.1).abs() < 1e-12);
        assert!((DecaySchedule::Cosine.step(0.1, 0, 100) - 0.2).abs() < 1e-12);
        assert!((DecaySchedule::Cosine.step(0.1, 50, 100) - 0.1).abs() < 1e-12);
    }

    /// An ensemble of linear members.
    struct Members(Vec<Linear>);

    impl Classifier for Members {
        fn member_logits(&self, x: Tensor<4>) -> Tensor<3> {
            Tensor::cat(
                self.0.iter().map(|m| m.member_logits(x.clone())).collect(),
                1,
            )
        }
    }

    /// Two classes, 784 pixels at 0.5, class 0. Member A looks at pixels 0..600 only and is
    /// overconfident: z_A0 − z_A1 = 200 (1 − Σδ/(600 ε*)), so that softmax(z_A) is exactly
    /// one-hot in float32 anywhere a random start lands; member B looks at the other 184:
    /// z_B0 − z_B1 = 2 (1 − Σδ/(184 ε*)); ε* = 0.1 for both. At ε = 1.5 ε* both flip with every
    /// pixel at its corner, and then the ensemble is fooled; with A right, F_0 ≥ 1/2 and it
    /// never is.
    fn hiding_member(n: usize) -> (Members, Tensor<4>, Tensor<1, Int>) {
        let d = crate::device::cpu();
        let p = 784;
        let member = |lo: usize, hi: usize, gap: f32| {
            let slope = gap / ((hi - lo) as f32 * 0.1);
            let mut w = vec![0.0f32; 2 * p];
            for wi in &mut w[lo..hi] {
                *wi = -slope;
            }
            let b0 = gap + slope * 0.5 * (hi - lo) as f32;
            Linear {
                w: Tensor::from_data(TensorData::new(w, [2, p]), &d),
                b: Tensor::from_data(TensorData::new(vec![b0, 0.0], [2]), &d),
            }
        };
        let model = Members(vec![member(0, 600, 200.0), member(600, p, 2.0)]);
        let x = Tensor::<4>::full([n, 1, 28, 28], 0.5, &d);
        (model, x, Tensor::zeros([n], &d))
    }

    /// Why MORA exists: log F's gradient is exactly 0 on the overconfident member's pixels, so
    /// PGD and APGD on log F never fool the ensemble, while MORA's reweighted member logits
    /// (weights ∝ e^(−0.2 gap), not e^(−gap)) move them and fool it every time. With
    /// `float_dis` 1 the weight underflows like log F's gradient and MORA fails too: the
    /// reweighting, not the step schedule, is what breaks it.
    #[test]
    fn breaks_an_ensemble_whose_averaged_softmax_hides_a_member() {
        let (model, x, y) = hiding_member(8);
        let eps = 0.15;
        let g = floats::<f32, _>(input_gradient(&model, &x, &Goal::Untargeted(y.clone())));
        assert!(
            g[..600].iter().all(|&v| v == 0.0),
            "log F's gradient should vanish on A"
        );
        assert!(g[600..784].iter().any(|&v| v != 0.0));
        let rate = |attack: &dyn Attack| {
            let out = attack.attack(&model, x.clone(), y.clone());
            assert_in_budget(out.adversarial.clone(), x.clone(), eps);
            out.success.iter().filter(|&&s| s).count()
        };
        let pgd = Pgd {
            eps,
            step_size: eps / 10.0,
            steps: 100,
            random_start: true,
            restarts: 2,
            objective: Objective::LogMeanSoftmax,
        };
        let apgd = Apgd::new(eps, Objective::LogMeanSoftmax);
        assert_eq!(rate(&pgd), 0, "PGD on log F");
        assert_eq!(rate(&apgd), 0, "APGD-CE on log F");
        assert_eq!(rate(&Mora::new(eps)), 8, "MORA");
        let cold = Mora {
            float_dis: 1.0,
            ..Mora::new(eps)
        };
        assert_eq!(rate(&cold), 0, "MORA with float_dis 1");
    }
}
