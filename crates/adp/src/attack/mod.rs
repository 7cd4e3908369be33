//! Adversarial attacks, one file each behind the [`Attack`] trait, called like torchattacks:
//! `attack.attack(&model, images, labels)`.
//!
//! Every attack runs on a [`Classifier`]'s log-probabilities in evaluation mode (BatchNorm on
//! running statistics, no parameter gradients) and returns adversarial images that stay inside
//! `[0, 1]`, and inside the ε-ball around the input for the L∞ attacks (FGSM, BIM, PGD, MIM,
//! APGD, APGD-T, FAB-T, Square and the cascades; FAB-T returns its closest adversarial point
//! projected onto the ball).
//! JSMA (L0), C&W-L2 and EAD (elastic net) have no fixed ball: they return their best successful
//! example, or the clean image where they fail.

pub mod adaptive;
pub mod apgd;
pub mod apgd_t;
pub mod cascade;
pub mod cw;
pub mod draws;
pub mod ead;
pub mod fab;
pub mod fgsm;
mod helpers;
pub mod jsma;
pub mod margin;
pub mod mim;
pub mod mora;
pub mod objective;
pub mod pgd;
mod spec;
pub mod square;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::{Ensemble, EnsembleOutput};
pub use adaptive::Adaptive;
pub use apgd::Apgd;
pub use apgd_t::ApgdT;
pub use cascade::{Cascade, CascadeReport, StageRecord, StageStore, Verdict};
pub use cw::CwL2;
pub use ead::{DecisionRule, Ead};
pub use fab::FabT;
pub use fgsm::Fgsm;
pub use helpers::{
    bools, example_mask, gradient_of, gradient_with, input_gradient, place_rows, random_targets,
    row_indices, with_restarts,
};
pub use jsma::Jsma;
pub use margin::OptimSettings;
pub use mim::Mim;
pub use mora::Mora;
pub use objective::{Criterion, Objective, Probe, restarted_ascent};
pub use pgd::Pgd;
pub use spec::{AttackKind, AttackSpec, MainParameter};
pub use square::Square;

/// A differentiable classifier as attacks see it: one network (K = 1) or an ensemble.
pub trait Classifier {
    /// Logits of every member, `[batch, K, classes]`, for pixels in `[0, 1]`.
    fn member_logits(&self, x: Tensor<4>) -> Tensor<3>;

    /// log F with F the mean of the members' softmax (Eq. 1), `[batch, classes]`: what attacks
    /// differentiate by default and what decides success (for K = 1, the log-softmax).
    fn log_probs(&self, x: Tensor<4>) -> Tensor<2> {
        EnsembleOutput {
            logits: self.member_logits(x),
        }
        .log_mean_probs()
    }
}

/// What an attack differentiates: the whole ensemble or one of its members.
/// The ensemble must be in evaluation mode (`Module::valid`), so BatchNorm uses its running
/// statistics.
#[derive(Debug)]
pub struct Victim<'a> {
    model: &'a Ensemble,
    member: Option<usize>,
}

impl<'a> Victim<'a> {
    /// The whole ensemble.
    pub fn ensemble(model: &'a Ensemble) -> Self {
        Self {
            model,
            member: None,
        }
    }

    /// Member `k` alone.
    pub fn member(model: &'a Ensemble, k: usize) -> Self {
        Self {
            model,
            member: Some(k),
        }
    }
}

impl Classifier for Victim<'_> {
    fn member_logits(&self, x: Tensor<4>) -> Tensor<3> {
        match self.member {
            None => self.model.forward(x).logits,
            Some(k) => self.model.members[k].forward(x).unsqueeze_dim(1),
        }
    }
}

/// What the adversary wants.
#[derive(Debug, Clone)]
pub enum Goal {
    /// Any wrong class; holds the true labels.
    Untargeted(Tensor<1, Int>),
    /// A given class; holds the target labels.
    Targeted(Tensor<1, Int>),
}

impl Goal {
    /// Per-example objective to *ascend*: −log p_y (untargeted) or log p_t (targeted), `[batch]`.
    pub fn objective(&self, log_probs: Tensor<2>) -> Tensor<1> {
        let (labels, sign) = match self {
            Goal::Untargeted(y) => (y, -1.0),
            Goal::Targeted(t) => (t, 1.0),
        };
        let n = labels.dims()[0];
        log_probs
            .gather(1, labels.clone().reshape([n, 1]))
            .reshape([n])
            .mul_scalar(sign)
    }

    /// Carlini & Wagner's margin on scores `z` `[batch, classes]` (their f₆, the paper's f in
    /// Section 2.2), `[batch]`: Z_y − max_{i≠y} Z_i (untargeted) or max_{i≠t} Z_i − Z_t
    /// (targeted). It is negative exactly where the goal is met.
    pub fn margin(&self, z: Tensor<2>) -> Tensor<1> {
        let [n, l] = z.dims();
        let (labels, sign) = match self {
            Goal::Untargeted(y) => (y, 1.0),
            Goal::Targeted(t) => (t, -1.0),
        };
        let labels = labels.clone().to_device(&z.device());
        let own = z
            .clone()
            .gather(1, labels.clone().reshape([n, 1]))
            .reshape([n]);
        let is_label = labels.one_hot::<2>(l).equal_elem(1);
        let other = z.mask_fill(is_label, -1e9).max_dim(1).reshape([n]);
        (own - other).mul_scalar(sign)
    }

    /// The goal of the examples at `indices` only.
    pub fn select(&self, indices: Tensor<1, Int>) -> Goal {
        match self {
            Goal::Untargeted(y) => Goal::Untargeted(y.clone().select(0, indices)),
            Goal::Targeted(t) => Goal::Targeted(t.clone().select(0, indices)),
        }
    }

    /// Whether each prediction meets the goal.
    pub fn achieved(&self, log_probs: Tensor<2>) -> Vec<bool> {
        let pred = log_probs.argmax(1).flatten::<1>(0, 1);
        let (labels, want_equal) = match self {
            Goal::Untargeted(y) => (y, false),
            Goal::Targeted(t) => (t, true),
        };
        let device = pred.device();
        let hits = pred.equal(labels.clone().to_device(&device));
        bools(hits).into_iter().map(|eq| eq == want_equal).collect()
    }
}

/// Sizes of one perturbation δ = x_adv − x.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Norms {
    /// Number of changed pixels (|δ_i| > 1e-6).
    pub l0: f64,
    /// Σ |δ_i|.
    pub l1: f64,
    /// sqrt(Σ δ_i²).
    pub l2: f64,
    /// max |δ_i|.
    pub linf: f64,
}

impl Norms {
    /// The norms of `adversarial − original`, one per example.
    pub fn of(adversarial: &Tensor<4>, original: &Tensor<4>) -> Vec<Norms> {
        let delta = (adversarial.clone() - original.clone()).flatten::<2>(1, 3);
        let abs = delta.abs();
        let col = |t: Tensor<2>| crate::tensor::floats::<f64, _>(t.flatten::<1>(0, 1));
        let l0 = col(abs.clone().greater_elem(1e-6).float().sum_dim(1));
        let l1 = col(abs.clone().sum_dim(1));
        let l2 = col(abs.clone().powi_scalar(2).sum_dim(1).sqrt());
        let linf = col(abs.max_dim(1));
        (0..l0.len())
            .map(|i| Norms {
                l0: l0[i],
                l1: l1[i],
                l2: l2[i],
                linf: linf[i],
            })
            .collect()
    }
}

/// The result of an attack on a batch.
#[derive(Debug, Clone)]
pub struct AttackOutput {
    /// Adversarial images, same shape as the input, in `[0, 1]`.
    pub adversarial: Tensor<4>,
    /// Whether the attack met its goal on each example.
    pub success: Vec<bool>,
    /// Size of each example's perturbation.
    pub norms: Vec<Norms>,
}

impl AttackOutput {
    /// Judges `adversarial` against `goal` on `model` and measures the perturbations from
    /// `original`: the one way every attack builds its output.
    pub fn judge(
        model: &dyn Classifier,
        goal: &Goal,
        original: &Tensor<4>,
        adversarial: Tensor<4>,
    ) -> Self {
        let adversarial = adversarial.detach().without_autodiff();
        let success = goal.achieved(
            model
                .log_probs(adversarial.clone())
                .detach()
                .without_autodiff(),
        );
        let norms = Norms::of(&adversarial, original);
        Self {
            adversarial,
            success,
            norms,
        }
    }
}

/// An adversarial attack.
pub trait Attack {
    /// A short description with parameters, e.g. `PGD(eps=0.1, steps=10)`.
    fn name(&self) -> String;

    /// Crafts adversarial examples for `goal`.
    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput;

    /// The names of the stages of a [`Cascade`], in order; empty for a single attack.
    fn stage_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// [`run`](Self::run), and for a [`Cascade`] the verdict of each example: which stage
    /// first met the goal on it. `None` for a single attack.
    fn run_verdicts(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        goal: &Goal,
    ) -> (AttackOutput, Option<Vec<Verdict>>) {
        (self.run(model, images, goal), None)
    }

    /// [`run_verdicts`](Self::run_verdicts), where a [`Cascade`] keeps each finished stage in
    /// the store and resumes after the stages kept there ([`Cascade::resume`]); a single attack
    /// keeps nothing.
    fn run_resumable(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        goal: &Goal,
        _stages: &dyn StageStore,
    ) -> anyhow::Result<(AttackOutput, Option<Vec<Verdict>>)> {
        Ok(self.run_verdicts(model, images, goal))
    }

    /// Untargeted attack on the true `labels` (the torchattacks-style call).
    fn attack(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
    ) -> AttackOutput {
        self.run(model, images, &Goal::Untargeted(labels))
    }
}

/// The L∞ attack budget and its checks, shared by the gradient-sign attacks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinfBudget {
    /// Maximum per-pixel change ε.
    pub eps: f64,
}

impl LinfBudget {
    /// Projects `x` onto the ε-ball around `x0` intersected with `[0, 1]`.
    pub fn project(&self, x: Tensor<4>, x0: &Tensor<4>) -> Tensor<4> {
        let lo = x0.clone().sub_scalar(self.eps).clamp_min(0.0);
        let hi = x0.clone().add_scalar(self.eps).clamp_max(1.0);
        x.max_pair(lo).min_pair(hi)
    }

    /// A uniform random point of the ε-ball around `x0`, projected onto `[0, 1]` (the random
    /// start of PGD, Madry et al., 2018). For ε = 0 the ball is the point `x0` itself, and no
    /// random number is drawn: every L∞ attack at ε = 0 returns its input, so its accuracy is the
    /// clean accuracy.
    pub fn random_point(&self, x0: &Tensor<4>) -> Tensor<4> {
        if self.eps <= 0.0 {
            return x0.clone();
        }
        let noise = draws::uniform(x0.dims(), -self.eps, self.eps, &x0.device());
        self.project(x0.clone() + noise, x0)
    }
}
#[cfg(test)]
pub(crate) mod tests {
    use burn::tensor::TensorData;

    use super::*;
    use crate::tensor::floats;

    /// A linear softmax classifier z = W·flatten(x) + b, whose input gradient is known in closed form.
    #[derive(Clone)]
    pub(crate) struct Linear {
        pub w: Tensor<2>, // [L, P]
        pub b: Tensor<1>, // [L]
    }

    impl Classifier for Linear {
        fn member_logits(&self, x: Tensor<4>) -> Tensor<3> {
            let device = x.device();
            let flat = x.flatten::<2>(1, 3);
            let w = self.w.clone().to_device(&device);
            let b = self.b.clone().to_device(&device).unsqueeze::<2>();
            (flat.matmul(w.transpose()) + b).unsqueeze_dim(1)
        }
    }

    /// Two classes, four pixels (0.5, 0.5, 0.5, 0.95) of class 0, repeated `n` times: the model
    /// on which FGSM, BIM, PGD and MIM have closed-form answers, since ∇ₓ(−log p_0) has the
    /// constant sign of W_1 − W_0 = (−2, 2, −0.5, 2).
    pub(crate) fn two_class_toy(n: usize) -> (Linear, Tensor<4>, Tensor<1, Int>) {
        let d = crate::device::cpu();
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -1.0, 0.5, 0.0, -1.0, 1.0, 0.0, 2.0], [2, 4]),
            &d,
        );
        let model = Linear {
            w,
            b: Tensor::zeros([2], &d),
        };
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32, 0.5, 0.5, 0.95], [1, 1, 2, 2]),
            &d,
        )
        .repeat_dim(0, n);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), &d).repeat_dim(0, n);
        (model, x, y)
    }

    /// Four classes, 16 pixels `[n, 1, 4, 4]` in [0.4, 0.6], all of class 0: z_0 = u·x + b_0,
    /// z_1 = −u·x, z_2 = z_3 = −50. Only class 1 is ever within reach, so the smallest L∞
    /// perturbation that misclassifies x is, in closed form (no pixel meets the box [0, 1]
    /// before ε = 0.4), ε* = (z_0 − z_1) / ‖w_0 − w_1‖₁, the `f64` returned (0.1 by the choice
    /// of b_0).
    pub(crate) fn linear_four_class(n: usize) -> (Linear, Tensor<4>, Tensor<1, Int>, f64) {
        let d = crate::device::cpu();
        let p = 16;
        let u: Vec<f32> = (0..p)
            .map(|i| ((i % 3) as f32 + 1.0) / 3.0 * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let x: Vec<f32> = (0..p)
            .map(|i| 0.5 + 0.05 * ((i * 7 % 5) as f32 - 2.0))
            .collect();
        let ux: f32 = u.iter().zip(&x).map(|(u, x)| u * x).sum();
        let l1: f32 = 2.0 * u.iter().map(|u| u.abs()).sum::<f32>();
        let b0 = 0.1 * l1 - 2.0 * ux;
        let mut w = u.clone();
        w.extend(u.iter().map(|u| -u));
        w.extend(vec![0.0; 2 * p]);
        let model = Linear {
            w: Tensor::from_data(TensorData::new(w, [4, p]), &d),
            b: Tensor::from_data(TensorData::new(vec![b0, 0.0, -50.0, -50.0], [4]), &d),
        };
        let z0 = ux + b0;
        let z1 = -ux;
        let eps_star = f64::from((z0 - z1) / l1);
        let images = Tensor::<4>::from_data(TensorData::new(x, [1, 1, 4, 4]), &d).repeat_dim(0, n);
        let labels = Tensor::<1, Int>::zeros([n], &d);
        (model, images, labels, eps_star)
    }

    /// Runs `attack(ε)` at ε = 1.25 ε* and 0.8 ε*: it must break every example in the first
    /// case and none in the second, staying inside its ball and [0, 1] in both.
    pub(crate) fn assert_finds_exactly_the_closed_form_answer(
        model: &dyn Classifier,
        x: &Tensor<4>,
        y: &Tensor<1, Int>,
        eps_star: f64,
        attack: impl Fn(f64) -> Box<dyn Attack>,
    ) {
        for (factor, expected) in [(1.25, true), (0.8, false)] {
            let eps = factor * eps_star;
            let a = attack(eps);
            let out = a.attack(model, x.clone(), y.clone());
            assert!(
                out.success.iter().all(|s| *s == expected),
                "{} at ε = {eps} (ε* = {eps_star}): success {:?}",
                a.name(),
                out.success
            );
            assert_in_budget(out.adversarial, x.clone(), eps);
        }
    }

    /// Asserts that `adv` lies in [0, 1] and within `eps` (L∞) of `x`.
    pub(crate) fn assert_in_budget(adv: Tensor<4>, x: Tensor<4>, eps: f64) {
        let (a, x) = (floats::<f32, _>(adv), floats::<f32, _>(x));
        for (a, x) in a.iter().zip(&x) {
            assert!((0.0..=1.0).contains(a), "pixel {a} left [0, 1]");
            assert!(((a - x).abs() as f64) <= eps + 1e-6, "|{a} - {x}| > {eps}");
        }
    }

    #[test]
    fn specs_label_their_main_parameter_and_reject_bad_values_one_by_one() {
        assert_eq!(
            AttackSpec::main(AttackKind::Mim, 0.1).parameter_label(),
            "ε = 0.1"
        );
        assert_eq!(
            AttackSpec::main(AttackKind::Jsma, 0.3).parameter_label(),
            "γ = 0.3"
        );
        assert_eq!(
            AttackSpec::main(AttackKind::Cw, 1.0).parameter_label(),
            "c = 1"
        );
        assert_eq!(
            AttackSpec::new(AttackKind::Ead, 0.0).parameter_label(),
            "c = 5"
        );
        let bad = |spec: AttackSpec| spec.validate().unwrap_err().to_string();
        let jsma = AttackSpec::main(AttackKind::Jsma, 0.0);
        assert_eq!(bad(jsma), "`gamma` must lie in (0, 1], got 0");
        let cw = AttackSpec {
            kappa: Some(-1.0),
            ..AttackSpec::main(AttackKind::Cw, 1.0)
        };
        assert_eq!(bad(cw), "`kappa` must be a finite number >= 0, got -1");
        let ead = AttackSpec {
            binary_search_steps: Some(0),
            ..AttackSpec::main(AttackKind::Ead, 5.0)
        };
        assert_eq!(bad(ead), "`binary_search_steps` must be at least 1");
    }

    #[test]
    fn random_targets_differ_from_labels() {
        let d = crate::device::cpu();
        let y = Tensor::<1, Int>::from_data(
            TensorData::new((0..50i64).map(|i| i % 10).collect(), [50]),
            &d,
        );
        let t = random_targets(&y, 10, 3);
        let (y, t): (Vec<i64>, Vec<i64>) = (
            y.into_data().try_into_vec_as::<i64>().unwrap(),
            t.into_data().try_into_vec_as::<i64>().unwrap(),
        );
        assert!(y.iter().zip(&t).all(|(a, b)| a != b && (0..10).contains(b)));
    }
}
