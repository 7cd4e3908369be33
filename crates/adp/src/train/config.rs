//! The configuration of a training run (`RUN_DIR/config.toml`): the objective, the schedule,
//! the freezing criterion and their validation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::adversarial::AdvTrainConfig;
use super::{dverge, gal, peers, trs};
use crate::data::{DatasetKind, Normalization};
use crate::device::{DeviceKind, DeviceSpec};
use crate::loss::{AdpConfig, Diversity};
use crate::model::{MAX_MEMBERS, ModelKind};

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Ensemble cross-entropy, Eq. 2 (the baseline).
    Ece,
    /// ECE minus the ADP regulariser, Eq. 5.
    Adp,
    /// GAL: the gradient alignment loss (Kariyappa & Qureshi, 2019), [`gal`].
    Gal,
    /// DVERGE: round-robin feature distillation (Yang et al., NeurIPS 2020), [`dverge`].
    Dverge,
    /// TRS: gradient similarity and smoothness losses (Yang et al., NeurIPS 2021), [`trs`].
    Trs,
}

/// When a member counts as converged (Algorithm 1); see the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FreezeConfig {
    /// Epochs without improvement before freezing; 0 never freezes.
    pub patience: usize,
    /// Relative improvement of the member's training cross-entropy that counts as progress.
    pub min_delta: f64,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        Self {
            patience: 0,
            min_delta: 1e-3,
        }
    }
}

/// Everything that defines a training run; saved as `RUN_DIR/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Data set.
    pub dataset: DatasetKind,
    /// Directory holding the data set's files.
    pub data_dir: PathBuf,
    /// Member architecture.
    pub model: ModelKind,
    /// Number of members K (>= 2).
    pub members: usize,
    /// Objective.
    pub method: Method,
    /// ADP hyper-parameters (ignored, i.e. zero, for ECE).
    pub adp: AdpConfig,
    /// GAL settings (`None`: the defaults of [`gal::GalConfig`]); only read for `method = "gal"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gal: Option<gal::GalConfig>,
    /// DVERGE settings (`None`: [`dverge::DvergeConfig::for_dataset`]); for `method = "dverge"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dverge: Option<dverge::DvergeConfig>,
    /// TRS settings (`None`: the defaults of [`trs::TrsConfig`]); for `method = "trs"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trs: Option<trs::TrsConfig>,
    /// Number of epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Initial Adam learning rate.
    pub lr: f64,
    /// Epochs (0-based) from which the learning rate is multiplied by `lr_drop_factor`.
    pub lr_drops: Vec<usize>,
    /// Learning-rate multiplier at each drop.
    pub lr_drop_factor: f64,
    /// Per-member learning-rate multipliers ε_k / ε (Algorithm 1); empty means all 1.
    #[serde(default)]
    pub member_lr: Vec<f64>,
    /// Freezing of converged members.
    #[serde(default)]
    pub freeze: FreezeConfig,
    /// L2 penalty on convolution kernels (official code: 1e-4).
    pub l2: f64,
    /// Seed of weight initialisation and batch order.
    pub seed: u64,
    /// Train on the first N training examples only (quick runs); `None` uses all.
    pub train_limit: Option<usize>,
    /// Random shifts of up to a tenth of the image side and horizontal flips of the training
    /// images, as the official code's `--augmentation=True` (CIFAR and MNIST alike).
    #[serde(default)]
    pub augment: bool,
    /// How each member normalises its input (official code: per-pixel mean, no std).
    #[serde(default)]
    pub normalize: Normalization,
    /// Adversarial training (Section 4.3, Table 4): each mini-batch is mixed 1:1 with
    /// adversarial examples of its images crafted against the current ensemble; `None` trains on
    /// clean images only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adv_train: Option<AdvTrainConfig>,
    /// Device to train on: with `devices`, the device of the loss, the data and the ensemble's
    /// output, which must then be the first of `devices`.
    pub device: DeviceKind,
    /// Member-parallel placement: member k trains on `devices[k mod n]`, where its forward pass,
    /// its gradients and its optimizer state live (`["tch-cuda:0", "tch-cuda:1"]`); empty places
    /// every member on `device`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// The PyTorch file the weights came from, for a run written by `adp import` (such a run is
    /// evaluated and attacked but never trained: its other fields only say which data set it
    /// belongs to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<PathBuf>,
    /// Minutes between the checkpoints taken within an epoch, which a resume continues from at
    /// the step they record; 0 checkpoints at the end of each epoch only. Part of the schedule:
    /// it changes no weight.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
}

/// [`TrainConfig::checkpoint_minutes`] unless set: 10.
pub fn default_checkpoint_minutes() -> f64 {
    10.0
}

impl TrainConfig {
    /// The paper's MNIST setting: 3 ResNet-20, Adam 1e-3, batch 64, 40 epochs, the rate ×0.1
    /// once the 0-based epoch exceeds 15 and ×0.01 once it exceeds 30 (the official `lr_schedule`).
    pub fn paper_mnist(method: Method, alpha: f64, beta: f64) -> Self {
        Self {
            dataset: DatasetKind::Mnist,
            data_dir: DatasetKind::Mnist.default_dir(),
            model: ModelKind::Resnet20,
            members: 3,
            method,
            adp: AdpConfig::new(alpha, beta),
            gal: None,
            dverge: None,
            trs: None,
            epochs: 40,
            batch_size: 64,
            lr: 1e-3,
            lr_drops: vec![16, 31],
            lr_drop_factor: 0.1,
            member_lr: Vec::new(),
            freeze: FreezeConfig::default(),
            l2: 1e-4,
            seed: 0,
            train_limit: None,
            augment: false,
            normalize: Normalization::MeanStd,
            adv_train: None,
            device: DeviceKind::Cpu,
            devices: Vec::new(),
            imported_from: None,
            checkpoint_minutes: default_checkpoint_minutes(),
        }
    }

    /// This configuration for the method (α, β): ECE for (0, 0), ADP otherwise.
    pub fn with_method(&self, alpha: f64, beta: f64) -> Self {
        let mut c = self.clone();
        c.method = if alpha == 0.0 && beta == 0.0 {
            Method::Ece
        } else {
            Method::Adp
        };
        c.adp.alpha = alpha;
        c.adp.beta = beta;
        c
    }

    /// The objective of this run, with its method's settings.
    pub fn training_objective(&self) -> peers::Objective {
        use peers::Objective;
        match self.method {
            Method::Ece => Objective::Ece,
            Method::Adp => Objective::Adp(self.adp.clone()),
            Method::Gal => Objective::Gal(self.gal.clone().unwrap_or_default()),
            Method::Dverge => Objective::Dverge(
                self.dverge
                    .clone()
                    .unwrap_or_else(|| dverge::DvergeConfig::for_dataset(self.dataset)),
            ),
            Method::Trs => Objective::Trs(self.trs.clone().unwrap_or_default()),
        }
    }

    /// The ECE/ADP objective (Eq. 5): zero regulariser for ECE and for the peer methods, whose
    /// own objectives [`Self::training_objective`] gives.
    pub fn objective(&self) -> AdpConfig {
        match self.method {
            Method::Ece | Method::Gal | Method::Dverge | Method::Trs => AdpConfig {
                alpha: 0.0,
                beta: 0.0,
                ..self.adp.clone()
            },
            Method::Adp => self.adp.clone(),
        }
    }

    /// A short label such as `ECE`, `ADP_{2,0.5}`, `ADP-JSD_{0,0.5}` (App. B.1's diversity) or,
    /// with adversarial training, Table 4's `AdvT_PGD` and `AdvT_PGD + ADP_{2,0.5}`.
    pub fn label(&self) -> String {
        if let Some(file) = &self.imported_from {
            let name = file.file_name().unwrap_or(file.as_os_str());
            return format!("imported {}", name.to_string_lossy());
        }
        let objective = match (self.method, self.adp.diversity) {
            (Method::Ece, _) => "ECE".to_string(),
            (Method::Gal, _) => "GAL".to_string(),
            (Method::Dverge, _) => "DVERGE".to_string(),
            (Method::Trs, _) => "TRS".to_string(),
            (Method::Adp, Diversity::LogDet) => {
                format!("ADP_{{{},{}}}", self.adp.alpha, self.adp.beta)
            }
            (Method::Adp, Diversity::Jsd) => {
                format!("ADP-JSD_{{{},{}}}", self.adp.alpha, self.adp.beta)
            }
        };
        match (&self.adv_train, self.method) {
            (None, _) => objective,
            (Some(a), Method::Ece) => format!("AdvT_{}", a.attack.label()),
            (Some(a), _) => format!("AdvT_{} + {objective}", a.attack.label()),
        }
    }

    /// Checks every field, with one message naming the field and the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(None)
    }

    /// [`Self::validate`] for a configuration read from `file` (a run's `config.toml`): the
    /// messages name the file as well as the field.
    pub fn validate_in(&self, file: Option<&Path>) -> Result<()> {
        let field = |name: &str| match file {
            None => format!("`{name}`"),
            Some(f) => format!("`{name}` in {}", f.display()),
        };
        if let Some(from) = &self.imported_from {
            bail!(
                "this run holds weights imported from {} by `adp import`; it can be evaluated and attacked, not trained or resumed",
                from.display()
            );
        }
        ensure!(
            (2..=MAX_MEMBERS).contains(&self.members),
            "{} must be at least 2 (an ensemble) and at most {MAX_MEMBERS}, got {}",
            field("members"),
            self.members
        );
        ensure!(self.epochs >= 1, "{} must be at least 1", field("epochs"));
        ensure!(
            self.batch_size >= 1,
            "{} must be at least 1",
            field("batch_size")
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "{} must be > 0, got {}",
            field("lr"),
            self.lr
        );
        ensure!(
            self.lr_drop_factor.is_finite() && self.lr_drop_factor > 0.0,
            "{} must be > 0, got {}",
            field("lr_drop_factor"),
            self.lr_drop_factor
        );
        ensure!(
            self.l2.is_finite() && self.l2 >= 0.0,
            "{} must be >= 0, got {}",
            field("l2"),
            self.l2
        );
        ensure!(
            self.member_lr.is_empty() || self.member_lr.len() == self.members,
            "{} needs one multiplier per member ({}), got {}",
            field("member_lr"),
            self.members,
            self.member_lr.len()
        );
        ensure!(
            self.member_lr.iter().all(|m| m.is_finite() && *m > 0.0),
            "{} multipliers must be > 0",
            field("member_lr")
        );
        ensure!(
            self.train_limit != Some(0),
            "{} must be at least 1",
            field("train_limit")
        );
        ensure!(
            self.checkpoint_minutes.is_finite() && self.checkpoint_minutes >= 0.0,
            "{} must be >= 0 (0: at the end of each epoch only), got {}",
            field("checkpoint_minutes"),
            self.checkpoint_minutes
        );
        let section = |r: Result<()>, name: &str| match file {
            None => r,
            Some(f) => {
                r.with_context(|| format!("{} holds an invalid `{name}` section", f.display()))
            }
        };
        if let Some(a) = &self.adv_train {
            section(a.validate(), "adv_train")?;
        }
        let peer = matches!(self.method, Method::Gal | Method::Dverge | Method::Trs);
        ensure!(
            !peer || self.adv_train.is_none(),
            "{} (adversarial training) combines only with ECE and ADP; the peer methods train on their own examples",
            field("adv_train")
        );
        match self.training_objective() {
            peers::Objective::Gal(g) => section(g.validate(), "gal")?,
            peers::Objective::Dverge(d) => section(d.validate(), "dverge")?,
            peers::Objective::Trs(t) => section(t.validate(), "trs")?,
            _ => {}
        }
        if let Some(first) = self.devices.first() {
            ensure!(
                first.kind == self.device,
                "{} must start with a device of `device` ({}), the backend the loss runs on; got {first}",
                field("devices"),
                self.device.name(),
            );
            ensure!(
                !peer || self.devices.len() == 1,
                "{} (member-parallel placement) combines only with ECE and ADP: GAL, DVERGE and TRS \
                 differentiate through the members' input gradients on one device; train them with `device`",
                field("devices")
            );
        }
        section(self.adp.validate(), "adp")
    }

    /// This configuration with the training schedule of `other`: `epochs`, `batch_size`, the
    /// learning rates (`lr`, `lr_drops`, `lr_drop_factor`, `member_lr`), `freeze`, `l2`,
    /// `device`, `devices`, `data_dir` and `checkpoint_minutes`. A resume may change these (to train longer, say); everything else
    /// defines the model, its data or its objective and must match the checkpoint.
    pub fn with_schedule_of(&self, other: &TrainConfig) -> TrainConfig {
        TrainConfig {
            epochs: other.epochs,
            batch_size: other.batch_size,
            lr: other.lr,
            lr_drops: other.lr_drops.clone(),
            lr_drop_factor: other.lr_drop_factor,
            member_lr: other.member_lr.clone(),
            freeze: other.freeze.clone(),
            l2: other.l2,
            device: other.device,
            devices: other.devices.clone(),
            data_dir: other.data_dir.clone(),
            checkpoint_minutes: other.checkpoint_minutes,
            ..self.clone()
        }
    }

    /// Learning rate of member `k` during `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize, k: usize) -> f64 {
        let drops = self.lr_drops.iter().filter(|&&d| epoch >= d).count() as i32;
        self.lr * self.lr_drop_factor.powi(drops) * self.member_lr.get(k).copied().unwrap_or(1.0)
    }
}
