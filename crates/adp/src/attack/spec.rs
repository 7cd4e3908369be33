//! Which attack, with which parameters: [`AttackKind`] (the attacks by name), the
//! [`MainParameter`] that labels an attack's row of Table 2, and [`AttackSpec`], which builds the
//! attack with its defaults and checks its parameters.

use serde::{Deserialize, Serialize};

use super::{
    Adaptive, Apgd, ApgdT, Attack, Cascade, CwL2, DecisionRule, Ead, FabT, Fgsm, Jsma, Mim, Mora,
    Objective, OptimSettings, Pgd, Square, apgd, mora, square,
};

/// The attacks selectable by name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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

/// An attack and its parameters, as chosen on the command line, in a config or in a preset, and
/// as saved with every result. A parameter left unset takes the default of the attack's own
/// constructor, which holds it in one place: [`Pgd::paper`], [`Pgd::bim`] and [`Mim::paper`]
/// (Section 4.3 and Table 2 of the paper), [`Jsma::PAPER_GAMMA`] and [`Jsma::PAPER_THETA`],
/// [`OptimSettings::paper`] for C&W and EAD, [`Apgd::new`], [`ApgdT::new`], [`FabT::new`] and
/// [`Square::new`] (Croce & Hein; Andriushchenko et al.), [`Adaptive::new`] and [`Mora::new`].
/// [`AttackSpec::build`] applies the set parameters over those defaults; parameters an attack has
/// no use for are ignored.
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
