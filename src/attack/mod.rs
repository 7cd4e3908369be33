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
pub mod ead;
pub mod fab;
pub mod fgsm;
pub mod jsma;
pub mod margin;
pub mod mim;
pub mod mora;
pub mod objective;
pub mod pgd;
pub mod square;

use burn::prelude::*;
use burn::tensor::{Distribution, IndexingUpdateOp, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::{Ensemble, EnsembleOutput};
pub use adaptive::Adaptive;
pub use apgd::Apgd;
pub use apgd_t::ApgdT;
pub use cascade::{Cascade, CascadeReport, Verdict};
pub use cw::CwL2;
pub use ead::{DecisionRule, Ead};
pub use fab::FabT;
pub use fgsm::Fgsm;
pub use jsma::Jsma;
pub use margin::OptimSettings;
pub use mim::Mim;
pub use mora::Mora;
pub use objective::{Criterion, Objective, Probe, restarted_ascent};
pub use pgd::Pgd;
pub use square::Square;

/// The attacks selectable by name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Fast gradient sign method, one step of ε.
    Fgsm,
    /// Basic iterative method: PGD from the clean image.
    Bim,
    /// Projected gradient descent from a random start.
    Pgd,
    /// Momentum iterative method (Dong et al., 2018).
    Mim,
    /// Jacobian-based saliency map attack (Papernot et al., 2016).
    Jsma,
    /// Carlini & Wagner's L2 attack (2017).
    Cw,
    /// Elastic-net attack (Chen et al., 2018).
    Ead,
    /// APGD (Croce & Hein, 2020) on the cross-entropy of log F.
    ApgdCe,
    /// APGD (Croce & Hein, 2020) on the DLR loss of log F.
    ApgdDlr,
    /// APGD-T (Croce & Hein, 2020): targeted DLR over the 9 classes ranked highest after the
    /// prediction.
    ApgdT,
    /// FAB-T (Croce & Hein, 2020): the targeted fast adaptive boundary attack over the 9
    /// classes ranked highest after the prediction.
    FabT,
    /// Square Attack (Andriushchenko et al., 2020): score-based, gradient-free, 5,000 queries.
    Square,
    /// AutoAttack's standard cascade (Croce & Hein, 2020): APGD-CE, APGD-T, FAB-T and Square,
    /// each on the examples still standing.
    Autoattack,
    /// The two-stage cascade: APGD-CE, then APGD-DLR on the examples still standing.
    ApgdCascade,
    /// Adaptive attack on ADP (Tramer et al., 2020, §7): restarted PGD-20 then PGD-200.
    Adaptive,
    /// MORA (Yu, Gao & Xu, 2022): the model-reweighing attack, its standard sweep of 5 ascents
    /// of 100 iterations.
    Mora,
}

impl AttackKind {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Fgsm => "fgsm",
            AttackKind::Bim => "bim",
            AttackKind::Pgd => "pgd",
            AttackKind::Mim => "mim",
            AttackKind::Jsma => "jsma",
            AttackKind::Cw => "cw",
            AttackKind::Ead => "ead",
            AttackKind::ApgdCe => "apgd-ce",
            AttackKind::ApgdDlr => "apgd-dlr",
            AttackKind::ApgdT => "apgd-t",
            AttackKind::FabT => "fab-t",
            AttackKind::Square => "square",
            AttackKind::Autoattack => "autoattack",
            AttackKind::ApgdCascade => "apgd-cascade",
            AttackKind::Adaptive => "adaptive",
            AttackKind::Mora => "mora",
        }
    }

    /// Whether every part of the attack follows gradients: false for Square and for autoattack,
    /// whose last stage is Square. The indicators compare Square with these attacks.
    pub fn gradient_only(self) -> bool {
        !matches!(self, AttackKind::Square | AttackKind::Autoattack)
    }

    /// The parameter that Table 2 varies for this attack ("Para."): ε for the L∞ attacks, γ for
    /// JSMA, c for C&W and EAD.
    pub fn main_parameter(self) -> MainParameter {
        match self {
            AttackKind::Fgsm
            | AttackKind::Bim
            | AttackKind::Pgd
            | AttackKind::Mim
            | AttackKind::ApgdCe
            | AttackKind::ApgdDlr
            | AttackKind::ApgdT
            | AttackKind::FabT
            | AttackKind::Square
            | AttackKind::Autoattack
            | AttackKind::ApgdCascade
            | AttackKind::Adaptive
            | AttackKind::Mora => MainParameter::Eps,
            AttackKind::Jsma => MainParameter::Gamma,
            AttackKind::Cw | AttackKind::Ead => MainParameter::C,
        }
    }
}

/// The parameter an attack's row of Table 2 is labelled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainParameter {
    /// The L∞ budget ε.
    Eps,
    /// JSMA's maximum fraction γ of changed pixels.
    Gamma,
    /// The constant c of the C&W / EAD objective.
    C,
}

impl MainParameter {
    /// The command-line flag that sets it, without dashes.
    pub fn flag(self) -> &'static str {
        match self {
            MainParameter::Eps => "eps",
            MainParameter::Gamma => "gamma",
            MainParameter::C => "c",
        }
    }

    /// Its symbol in the paper.
    pub fn symbol(self) -> &'static str {
        match self {
            MainParameter::Eps => "ε",
            MainParameter::Gamma => "γ",
            MainParameter::C => "c",
        }
    }
}

/// An attack and its parameters, as chosen on the command line or in a preset; unset
/// parameters take each attack's defaults: the paper's (Section 4.3 and Table 2) for its attacks —
/// 10 steps of ε/10 for BIM, PGD and MIM with one restart and MIM's decay μ = 1; JSMA with θ = 0.2
/// and γ = 0.3; 1000 iterations of learning rate 0.01 with κ = 0.1 and one binary-search step for
/// C&W (c = 1) and EAD (c = 5, β = 0.01, decision rule EN) — Croce & Hein's for APGD, APGD-T
/// and AutoAttack (100 iterations, one restart, no step size: APGD adapts its own; 9 target
/// classes), Croce & Hein's for FAB-T (100 iterations, 9 targets, α_max = 0.1, η = 1.05, β = 0.9), Andriushchenko et al.'s for Square (5,000 queries, p_init = 0.8), and
/// [`Adaptive::new`]'s for the adaptive attack (PGD-20 then PGD-200 with steps of ε/20, 5
/// restarts, log F). Parameters an attack has no use for are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackSpec {
    /// Which attack.
    pub kind: AttackKind,
    /// L∞ budget ε, in pixel units (pixels lie in `[0, 1]`), of FGSM, BIM, PGD and MIM. JSMA,
    /// C&W and EAD have no ε-ball and ignore it ([`AttackSpec::main`] sets it to 0 for them).
    pub eps: f64,
    /// Iterations of the iterative attacks: BIM, PGD and MIM 10, APGD 100, C&W and EAD 1000 per
    /// binary-search step; for the adaptive attack the length of its last stage, see
    /// [`Adaptive::with_last_stage`].
    pub steps: Option<usize>,
    /// Step size of BIM, PGD and MIM (default ε/10).
    pub step_size: Option<f64>,
    /// Random restarts of every iterative attack (default 1; adaptive 5).
    pub restarts: Option<usize>,
    /// MIM's momentum decay μ (default 1.0).
    #[serde(default)]
    pub decay: Option<f64>,
    /// JSMA's maximum fraction γ of changed pixels (default 0.3).
    #[serde(default)]
    pub gamma: Option<f64>,
    /// JSMA's change θ of one selected pixel (default 0.2, the paper's "ε" for JSMA on MNIST).
    #[serde(default)]
    pub theta: Option<f64>,
    /// Constant c of C&W (default 1) and EAD (default 5); the initial c when binary searching.
    #[serde(default)]
    pub c: Option<f64>,
    /// Confidence κ of C&W and EAD (default 0.1, as in the official code).
    #[serde(default)]
    pub kappa: Option<f64>,
    /// Learning rate of C&W (Adam) and EAD (FISTA) (default 0.01).
    #[serde(default)]
    pub lr: Option<f64>,
    /// Binary-search steps over c of C&W and EAD (default 1: c stays fixed, as in Table 2).
    #[serde(default)]
    pub binary_search_steps: Option<usize>,
    /// EAD's L1 weight β (default 0.01).
    #[serde(default)]
    pub beta: Option<f64>,
    /// EAD's rule for choosing the best example (default EN).
    #[serde(default)]
    pub decision_rule: Option<DecisionRule>,
    /// What BIM, PGD and the adaptive attack ascend (default: cross-entropy on log F).
    #[serde(default)]
    pub objective: Option<Objective>,
    /// Queries of Square, alone or as AutoAttack's last stage (default 5,000).
    #[serde(default)]
    pub queries: Option<usize>,
}

impl AttackSpec {
    /// The attack with the paper's default parameters at budget `eps`.
    pub fn new(kind: AttackKind, eps: f64) -> Self {
        Self {
            kind,
            eps,
            steps: None,
            step_size: None,
            restarts: None,
            decay: None,
            gamma: None,
            theta: None,
            c: None,
            kappa: None,
            lr: None,
            binary_search_steps: None,
            beta: None,
            decision_rule: None,
            objective: None,
            queries: None,
        }
    }

    /// The attack with its main parameter (ε, γ or c, see [`AttackKind::main_parameter`]) set to
    /// `value` and every other at the paper's default.
    pub fn main(kind: AttackKind, value: f64) -> Self {
        match kind.main_parameter() {
            MainParameter::Eps => Self::new(kind, value),
            MainParameter::Gamma => Self {
                gamma: Some(value),
                ..Self::new(kind, 0.0)
            },
            MainParameter::C => Self {
                c: Some(value),
                ..Self::new(kind, 0.0)
            },
        }
    }

    /// The value of the main parameter, defaults applied.
    pub fn main_value(&self) -> f64 {
        match self.kind.main_parameter() {
            MainParameter::Eps => self.eps,
            MainParameter::Gamma => self.gamma.unwrap_or(Jsma::PAPER_GAMMA),
            MainParameter::C => self.c_or_default(),
        }
    }

    /// Table 2's "Para." cell, e.g. `ε = 0.1`, `γ = 0.3` or `c = 1`.
    pub fn parameter_label(&self) -> String {
        format!(
            "{} = {}",
            self.kind.main_parameter().symbol(),
            self.main_value()
        )
    }

    fn c_or_default(&self) -> f64 {
        self.c.unwrap_or(match self.kind {
            AttackKind::Ead => Ead::PAPER_C,
            _ => CwL2::PAPER_C,
        })
    }

    /// Checks the parameters, with one message naming the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.eps.is_finite() && (0.0..=1.0).contains(&self.eps),
            "`eps` must lie in [0, 1] (pixels are in [0, 1]), got {}",
            self.eps
        );
        let positive = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                anyhow::bail!("`{name}` must be a finite number > 0, got {v}")
            }
            _ => Ok(()),
        };
        let non_negative = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v.is_finite() && v >= 0.0) => {
                anyhow::bail!("`{name}` must be a finite number >= 0, got {v}")
            }
            _ => Ok(()),
        };
        let fraction = |name: &str, v: Option<f64>| match v {
            Some(v) if !(v > 0.0 && v <= 1.0) => {
                anyhow::bail!("`{name}` must lie in (0, 1], got {v}")
            }
            _ => Ok(()),
        };
        positive("step_size", self.step_size)?;
        anyhow::ensure!(self.steps != Some(0), "`steps` must be at least 1");
        anyhow::ensure!(self.restarts != Some(0), "`restarts` must be at least 1");
        anyhow::ensure!(self.queries != Some(0), "`queries` must be at least 1");
        non_negative("decay", self.decay)?;
        fraction("gamma", self.gamma)?;
        fraction("theta", self.theta)?;
        positive("c", self.c)?;
        non_negative("kappa", self.kappa)?;
        positive("lr", self.lr)?;
        anyhow::ensure!(
            self.binary_search_steps != Some(0),
            "`binary_search_steps` must be at least 1"
        );
        non_negative("beta", self.beta)?;
        Ok(())
    }

    /// Builds the attack, filling unset parameters with the attack's defaults.
    pub fn build(&self) -> Box<dyn Attack> {
        let tuned = |base: Pgd| Pgd {
            step_size: self.step_size.unwrap_or(base.step_size),
            steps: self.steps.unwrap_or(base.steps),
            restarts: self.restarts.unwrap_or(base.restarts),
            objective: self.objective.unwrap_or(base.objective),
            ..base
        };
        let optim = || {
            let base = OptimSettings::paper(self.c_or_default());
            OptimSettings {
                kappa: self.kappa.unwrap_or(base.kappa),
                lr: self.lr.unwrap_or(base.lr),
                iterations: self.steps.unwrap_or(base.iterations),
                binary_search_steps: self.binary_search_steps.unwrap_or(base.binary_search_steps),
                ..base
            }
        };
        let apgd = |objective| Apgd {
            iterations: self.steps.unwrap_or(apgd::DEFAULT_ITERATIONS),
            restarts: self.restarts.unwrap_or(1),
            ..Apgd::new(self.eps, objective)
        };
        let apgd_t = ApgdT {
            iterations: self.steps.unwrap_or(apgd::DEFAULT_ITERATIONS),
            restarts: self.restarts.unwrap_or(1),
            ..ApgdT::new(self.eps)
        };
        let fab_t = FabT {
            iterations: self.steps.unwrap_or(apgd::DEFAULT_ITERATIONS),
            restarts: self.restarts.unwrap_or(1),
            ..FabT::new(self.eps)
        };
        let square = Square {
            queries: self.queries.unwrap_or(square::DEFAULT_QUERIES),
            restarts: self.restarts.unwrap_or(1),
            ..Square::new(self.eps)
        };
        match self.kind {
            AttackKind::Fgsm => Box::new(Fgsm { eps: self.eps }),
            AttackKind::Bim => Box::new(tuned(Pgd::bim(self.eps))),
            AttackKind::Pgd => Box::new(tuned(Pgd::paper(self.eps))),
            AttackKind::Mim => {
                let base = Mim::paper(self.eps);
                Box::new(Mim {
                    step_size: self.step_size.unwrap_or(base.step_size),
                    steps: self.steps.unwrap_or(base.steps),
                    restarts: self.restarts.unwrap_or(base.restarts),
                    decay: self.decay.unwrap_or(base.decay),
                    ..base
                })
            }
            AttackKind::Jsma => Box::new(Jsma {
                gamma: self.gamma.unwrap_or(Jsma::PAPER_GAMMA),
                theta: self.theta.unwrap_or(Jsma::PAPER_THETA),
            }),
            AttackKind::Cw => Box::new(CwL2 { optim: optim() }),
            AttackKind::Ead => Box::new(Ead {
                optim: optim(),
                beta: self.beta.unwrap_or(Ead::PAPER_BETA),
                decision_rule: self.decision_rule.unwrap_or_default(),
            }),
            AttackKind::ApgdCe => Box::new(apgd(Objective::LogMeanSoftmax)),
            AttackKind::ApgdDlr => Box::new(apgd(Objective::Dlr)),
            AttackKind::ApgdT => Box::new(apgd_t),
            AttackKind::FabT => Box::new(fab_t),
            AttackKind::Square => Box::new(square),
            AttackKind::Autoattack => Box::new(Cascade::autoattack(
                apgd(Objective::LogMeanSoftmax),
                apgd_t,
                fab_t,
                square,
            )),
            AttackKind::ApgdCascade => Box::new(Cascade::apgd(apgd(Objective::LogMeanSoftmax))),
            AttackKind::Adaptive => {
                let base = Adaptive::new(self.eps);
                let adaptive = Adaptive {
                    step_size: self.step_size.unwrap_or(base.step_size),
                    restarts: self.restarts.unwrap_or(base.restarts),
                    objective: self.objective.unwrap_or(base.objective),
                    ..base
                };
                Box::new(match self.steps {
                    Some(n) => adaptive.with_last_stage(n),
                    None => adaptive,
                })
            }
            AttackKind::Mora => Box::new(Mora {
                iterations: self.steps.unwrap_or(mora::DEFAULT_ITERATIONS),
                restarts: self.restarts.unwrap_or(1),
                ..Mora::new(self.eps)
            }),
        }
    }
}

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
        let noise = Tensor::<4>::random(
            x0.shape(),
            Distribution::Uniform(-self.eps, self.eps),
            &x0.device(),
        );
        self.project(x0.clone() + noise, x0)
    }
}

/// The gradient with respect to the input of `objective` summed over the batch, and the
/// objective's per-example value. `x` may live on a plain device: it is lifted to autodiff for
/// the backward pass, while the model's parameters stay constants.
pub fn gradient_of(
    model: &dyn Classifier,
    x: &Tensor<4>,
    objective: impl Fn(&dyn Classifier, Tensor<4>) -> Tensor<1>,
) -> (Tensor<4>, Tensor<1>) {
    let (g, value, ()) = gradient_with(model, x, |m, x| (objective(m, x), ()));
    (g, value)
}

/// [`gradient_of`] for an objective that also returns a by-product of the same forward pass
/// (e.g. the log-probabilities that judge success), handed back as computed, still on the
/// autodiff device.
pub fn gradient_with<T>(
    model: &dyn Classifier,
    x: &Tensor<4>,
    objective: impl Fn(&dyn Classifier, Tensor<4>) -> (Tensor<1>, T),
) -> (Tensor<4>, Tensor<1>, T) {
    let xg = x
        .clone()
        .detach()
        .without_autodiff()
        .autodiff()
        .require_grad();
    let (value, extra) = objective(model, xg.clone());
    let grads = value.clone().sum().backward();
    let g = xg.grad(&grads).expect("the input takes part in the graph");
    (g, value.detach().without_autodiff(), extra)
}

/// The gradient of the goal's objective (−log F_y untargeted, log F_t targeted, on the
/// ensemble's log mean softmax) with respect to the input.
pub fn input_gradient(model: &dyn Classifier, x: &Tensor<4>, goal: &Goal) -> Tensor<4> {
    gradient_of(model, x, |m, x| goal.objective(m.log_probs(x))).0
}

/// Runs an attack `restarts` times (at least once), each time only on the examples that no
/// earlier attempt broke: `attempt` gets those examples' clean images, their goal and their
/// indices in the batch, and returns their adversarial images. Each example keeps the first
/// adversarial example that meets the goal, or the last attempt's where none does.
pub fn with_restarts(
    model: &dyn Classifier,
    goal: &Goal,
    original: &Tensor<4>,
    restarts: usize,
    mut attempt: impl FnMut(&Tensor<4>, &Goal, &Tensor<1, Int>) -> Tensor<4>,
) -> AttackOutput {
    let n = original.dims()[0];
    let mut adversarial = original.clone();
    let mut success = vec![false; n];
    for _ in 0..restarts.max(1) {
        let open: Vec<usize> = (0..n).filter(|&i| !success[i]).collect();
        if open.is_empty() {
            break;
        }
        let idx = row_indices(&open, &original.device());
        let x = original.clone().select(0, idx.clone());
        let sub_goal = goal.select(idx.clone());
        let adv = attempt(&x, &sub_goal, &idx).detach().without_autodiff();
        let met = sub_goal.achieved(model.log_probs(adv.clone()).detach().without_autodiff());
        adversarial = place_rows(adversarial, &open, adv);
        for (j, &i) in open.iter().enumerate() {
            success[i] = met[j];
        }
    }
    let norms = Norms::of(&adversarial, original);
    AttackOutput {
        adversarial,
        success,
        norms,
    }
}

/// The batch indices `rows` as an index tensor.
pub fn row_indices(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let m = rows.len();
    Tensor::from_data(
        TensorData::new(rows.iter().map(|&i| i as i64).collect(), [m]),
        device,
    )
}

/// `base` with its rows `rows` (in order) replaced by the rows of `values`.
pub fn place_rows(base: Tensor<4>, rows: &[usize], values: Tensor<4>) -> Tensor<4> {
    if rows.is_empty() {
        return base;
    }
    let n = base.dims()[0];
    let idx = row_indices(rows, &base.device());
    // Scatter into zeros, then take those rows.
    let placed = base
        .zeros_like()
        .select_assign(0, idx, values, IndexingUpdateOp::Add);
    let mut chosen = vec![false; n];
    for &i in rows {
        chosen[i] = true;
    }
    base.clone()
        .mask_where(example_mask(&chosen, &base), placed)
}

/// A per-example flag broadcast to the shape of `like` `[batch, C, H, W]`, for `mask_where`.
pub fn example_mask(flags: &[bool], like: &Tensor<4>) -> Tensor<4, Bool> {
    let n = flags.len();
    Tensor::<1, Bool>::from_data(TensorData::new(flags.to_vec(), [n]), &like.device())
        .reshape([n, 1, 1, 1])
        .expand(like.shape())
}

/// Reads a boolean tensor into a vector.
pub fn bools(t: Tensor<1, Bool>) -> Vec<bool> {
    t.into_data()
        .try_into_vec_as::<bool>()
        .expect("a boolean tensor")
}

/// Random target classes different from the true ones, drawn with `seed`.
pub fn random_targets(labels: &Tensor<1, Int>, num_classes: usize, seed: u64) -> Tensor<1, Int> {
    use rand::{Rng, SeedableRng};
    let y: Vec<i64> = labels
        .to_data()
        .try_into_vec_as::<i64>()
        .expect("int labels");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t: Vec<i64> = y
        .iter()
        .map(|&y| {
            let shift = rng.random_range(1..num_classes as i64);
            (y + shift) % num_classes as i64
        })
        .collect();
    let n = t.len();
    Tensor::from_data(TensorData::new(t, [n]), &labels.device())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tensor::floats;

    /// A linear softmax classifier z = W·flatten(x) + b, whose input gradient is known in closed form.
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
        let d = Device::default();
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
        let d = Device::default();
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
        let d = Device::default();
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
