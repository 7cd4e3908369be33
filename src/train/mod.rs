//! Algorithm 1: all members trained together on one objective (ECE or ADP), each with its own
//! optimizer and learning rate, converged members frozen.
//!
//! The loop is our own rather than burn-train's `Learner`: Algorithm 1 steps each member with
//! its own learning rate and removes converged members from the update set mid-run, and resuming
//! must reproduce an uninterrupted run bit for bit, which needs the batch order, the frozen set
//! and every member's optimizer state in the checkpoint.
//!
//! **Convergence (freezing) criterion.** After each epoch, member k's mean training
//! cross-entropy is compared with its best so far; if it has not improved by more than
//! `freeze.min_delta` (relative) for `freeze.patience` consecutive epochs, member k is frozen
//! (parameters and BatchNorm statistics fixed) and no longer updated. `patience = 0` disables
//! freezing, which is what the paper's experiments do. Training ends when every epoch has run or
//! every member is frozen. The test set is never looked at: the model of the last epoch is kept.

pub mod adversarial;
pub mod checkpoint;
pub mod dverge;
pub mod gal;
pub mod peers;
pub mod trs;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use serde::{Deserialize, Serialize};

use crate::data::{Batcher, Dataset, DatasetKind, Normalization, Split, load_dataset};
use crate::device::DeviceKind;
use crate::loss::{AdpConfig, Diversity, adp_loss};
use crate::model::{Ensemble, MAX_MEMBERS, MemberConfig, ModelKind};
use adversarial::{AdvTrainConfig, adversarial_batch};
pub use checkpoint::Manifest;
use checkpoint::{
    Latest, ModelSpec, checkpoint_dir, checkpoints, latest, save_checkpoint, save_model,
};
use peers::Objective;

/// The burn release `adp` is built against (kept in step with Cargo.toml).
pub const BURN_VERSION: &str = "0.22.1";

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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
    /// Device to train on.
    pub device: DeviceKind,
    /// The PyTorch file the weights came from, for a run written by `adp import` (such a run is
    /// evaluated and attacked but never trained: its other fields only say which data set it
    /// belongs to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<PathBuf>,
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
            imported_from: None,
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

    /// Checks every option, with one message naming the option and the fix.
    pub fn validate(&self) -> Result<()> {
        self.validate_in(None)
    }

    /// [`Self::validate`] for a configuration read from `file` (a run's `config.toml`): the
    /// messages name the file's fields rather than the command-line options.
    pub fn validate_in(&self, file: Option<&Path>) -> Result<()> {
        let opt = |flag: &str, field: &str| match file {
            None => format!("--{flag}"),
            Some(f) => format!("`{field}` in {}", f.display()),
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
            opt("members", "members"),
            self.members
        );
        ensure!(
            self.epochs >= 1,
            "{} must be at least 1",
            opt("epochs", "epochs")
        );
        ensure!(
            self.batch_size >= 1,
            "{} must be at least 1",
            opt("batch-size", "batch_size")
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "{} must be > 0, got {}",
            opt("lr", "lr"),
            self.lr
        );
        ensure!(
            self.lr_drop_factor.is_finite() && self.lr_drop_factor > 0.0,
            "the learning-rate drop factor{} must be > 0",
            file.map_or(String::new(), |f| format!(
                " (`lr_drop_factor` in {})",
                f.display()
            ))
        );
        ensure!(
            self.l2.is_finite() && self.l2 >= 0.0,
            "{} must be >= 0, got {}",
            opt("l2", "l2"),
            self.l2
        );
        ensure!(
            self.member_lr.is_empty() || self.member_lr.len() == self.members,
            "{} needs one multiplier per member ({}), got {}",
            opt("member-lr", "member_lr"),
            self.members,
            self.member_lr.len()
        );
        ensure!(
            self.member_lr.iter().all(|m| m.is_finite() && *m > 0.0),
            "{} multipliers must be > 0",
            opt("member-lr", "member_lr")
        );
        ensure!(
            self.train_limit != Some(0),
            "{} must be at least 1",
            opt("train-limit", "train_limit")
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
            "{} combines adversarial training only with ECE and ADP; the peer methods train on their own examples",
            opt("adv-train", "adv_train")
        );
        match self.training_objective() {
            peers::Objective::Gal(g) => section(g.validate(), "gal")?,
            peers::Objective::Dverge(d) => section(d.validate(), "dverge")?,
            peers::Objective::Trs(t) => section(t.validate(), "trs")?,
            _ => {}
        }
        section(self.adp.validate(), "adp")
    }

    /// This configuration with the training schedule of `other`: `epochs`, `batch_size`, the
    /// learning rates (`lr`, `lr_drops`, `lr_drop_factor`, `member_lr`), `freeze`, `l2`,
    /// `device` and `data_dir`. A resume may change these (to train longer, say); everything else
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
            data_dir: other.data_dir.clone(),
            ..self.clone()
        }
    }

    /// Learning rate of member `k` during `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize, k: usize) -> f64 {
        let drops = self.lr_drops.iter().filter(|&&d| epoch >= d).count() as i32;
        self.lr * self.lr_drop_factor.powi(drops) * self.member_lr.get(k).copied().unwrap_or(1.0)
    }
}

/// Training metrics of one epoch (means over its batches).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Objective value.
    pub loss: f64,
    /// L_ECE.
    pub ece: f64,
    /// Ensemble entropy H(F).
    pub entropy: f64,
    /// log ED.
    pub log_det: f64,
    /// Ensemble training accuracy.
    pub accuracy: f64,
    /// Each member's training cross-entropy.
    pub member_ce: Vec<f64>,
    /// Learning rate of member 0.
    pub lr: f64,
    /// Members frozen after this epoch.
    pub frozen: Vec<bool>,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
}

/// What a checkpoint records besides weights and optimizer states.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Finished epochs.
    pub epoch: usize,
    /// Members removed from the update set I.
    pub frozen: Vec<bool>,
    /// Best epoch-mean cross-entropy of each member.
    pub best_ce: Vec<f64>,
    /// Epochs since each member last improved.
    pub stale: Vec<usize>,
    /// Metrics of every finished epoch.
    pub history: Vec<EpochMetrics>,
}

impl TrainState {
    /// Checks a state read from `file` against the run: `epoch` finished epochs, one entry per
    /// member (`members`) in `frozen`, `best_ce` and `stale`, one `history` row per epoch.
    pub fn check(&self, members: usize, epoch: usize, file: &Path) -> Result<()> {
        let f = file.display();
        ensure!(
            self.epoch == epoch,
            "{f}: `epoch` is {}, but the checkpoint is the one after epoch {epoch}; the \
             checkpoint is corrupt",
            self.epoch
        );
        for (field, len) in [
            ("frozen", self.frozen.len()),
            ("best_ce", self.best_ce.len()),
            ("stale", self.stale.len()),
        ] {
            ensure!(
                len == members,
                "{f}: `{field}` has {len} entries, but the run has {members} members; the \
                 checkpoint is corrupt"
            );
        }
        ensure!(
            self.best_ce.iter().all(|c| !c.is_nan()),
            "{f}: `best_ce` holds NaN; the checkpoint is corrupt"
        );
        ensure!(
            self.history.len() == epoch,
            "{f}: `history` has {} rows, but {epoch} epochs finished; the checkpoint is corrupt",
            self.history.len()
        );
        Ok(())
    }
}

/// Loads the training split of the configured data set.
pub fn load_train_data(config: &TrainConfig) -> Result<Dataset> {
    let data = load_dataset(&config.data_dir, config.dataset, Split::Train)?;
    Ok(match config.train_limit {
        Some(n) => data.take(n),
        None => data,
    })
}

/// Trains the ensemble described by `config` into `run`, resuming from the newest complete
/// checkpoint when `resume` is set. Returns the final (inference-mode) ensemble and the training
/// state.
///
/// The run directory is locked for the whole call ([`crate::lock::RunLock`]). A new run refuses a
/// directory that already holds any part of a run. A resume checks `config.toml`, `model.toml`
/// (against the model the data gives now), the checkpoint's manifest, SHA-256 hashes and
/// `state.json` against each other before it writes anything, and names the file and field of
/// any mismatch. No checkpoint or final model is written unless every weight and metric of the
/// epoch is finite.
pub fn train(config: &TrainConfig, run: &Path, resume: bool) -> Result<(Ensemble, TrainState)> {
    let config_path = run.join("config.toml");
    if resume {
        config.validate_in(Some(&config_path))?;
    } else {
        config.validate()?;
    }
    let device = config.device.device()?;
    let data = load_train_data(config)?;
    let spec = ModelSpec {
        members: config.members,
        member: member_config(config, &data),
    };
    let _lock =
        crate::lock::RunLock::acquire(run, if resume { "train --resume" } else { "train" })?;
    let spec_path = run.join("model.toml");
    let prior = if resume {
        check_resume(config, &spec, run)?
    } else {
        refuse_existing(run)?;
        None
    };
    // Every check has passed: only now is anything written.
    std::fs::create_dir_all(run.join("checkpoint"))
        .with_context(|| format!("cannot create {}", run.join("checkpoint").display()))?;
    if !resume {
        crate::io::write_toml(&config_path, config)?;
    }
    if !spec_path.exists() {
        crate::io::write_toml(&spec_path, &spec)?;
    }

    let ad = device.clone().autodiff();
    ad.seed(config.seed);
    let mut model = initial_ensemble(&spec, config.seed, &ad)?;
    let mut optims: Vec<ModuleOptimizer> = (0..config.members)
        .map(|_| AdamConfig::new().with_epsilon(1e-7).init())
        .collect();
    let mut state = TrainState {
        frozen: vec![false; config.members],
        best_ce: vec![f64::INFINITY; config.members],
        stale: vec![0; config.members],
        ..Default::default()
    };
    if let Some(l) = &prior {
        let dir = run.join(&l.dir);
        let advice = resume_advice(run, l.epoch)?;
        let advise = |e: anyhow::Error| anyhow::anyhow!("{e:#}; {advice}");
        let state_path = dir.join("state.json");
        state = read_state(&state_path).map_err(advise)?;
        state
            .check(config.members, l.epoch, &state_path)
            .map_err(advise)?;
        // burn's own format keeps the parameter ids that the optimizer states are keyed by.
        let weights = dir.join("model.bpk");
        checkpoint::verify_file(&weights).map_err(advise)?;
        model = model
            .try_load_file(&weights)
            .with_context(|| format!("cannot load {}", weights.display()))
            .map_err(advise)?;
        for (k, o) in optims.iter_mut().enumerate() {
            let path = dir.join(format!("optim-{k}.bpk"));
            checkpoint::verify_file(&path).map_err(advise)?;
            *o = o
                .clone()
                .load(&path)
                .with_context(|| format!("cannot load {}", path.display()))
                .map_err(advise)?;
        }
        crate::progress::note(&format!(
            "resuming {} after epoch {}",
            run.display(),
            state.epoch
        ));
    }
    if prior.is_none()
        && let Objective::Dverge(dverge::DvergeConfig {
            start_from: Some(from),
            ..
        }) = config.training_objective()
    {
        model = dverge::start_from(&from, &spec, &ad)?;
    }
    model = apply_frozen(model, &state.frozen);

    let objective = config.objective();
    while state.epoch < config.epochs && state.frozen.iter().any(|f| !f) {
        let start = Instant::now();
        let epoch = state.epoch;
        let (next, metrics) = run_epoch(
            config,
            &objective,
            &data,
            model,
            &mut optims,
            &state,
            &ad,
            run,
        )?;
        model = next;
        state.epoch += 1;
        update_freezing(config, &mut state, &metrics.member_ce);
        model = apply_frozen(model, &state.frozen);
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            frozen: state.frozen.clone(),
            seconds: start.elapsed().as_secs_f64(),
            ..metrics
        };
        crate::progress::note(&format!(
            "epoch {}/{}: loss {:.4}  ECE {:.4}  H {:.3}  logED {:.2}  acc {:.2}%  lr {:.0e}  {:.0}s",
            metrics.epoch,
            config.epochs,
            metrics.loss,
            metrics.ece,
            metrics.entropy,
            metrics.log_det,
            100.0 * metrics.accuracy,
            metrics.lr,
            metrics.seconds
        ));
        check_finite(&model, &metrics, &data, config, &device).map_err(|what| {
            let last = last_good(run);
            anyhow::anyhow!(
                "epoch {} left the model non-finite ({what}); nothing was saved from it. Last \
                 good checkpoint: {last}. Lower --lr or check the data",
                metrics.epoch
            )
        })?;
        state.history.push(metrics);
        save_checkpoint(run, config, &model, &optims, &state)?;
        write_history(run, &state.history)?;
    }
    if let Some(what) = non_finite_weights(&model) {
        bail!(
            "the model is not finite ({what}); {} was not written",
            run.join("model.safetensors").display()
        );
    }
    let sha = save_model(&model, &run.join("model.safetensors"))?;
    let manifest = Manifest::new(config, state.epoch, [("model.safetensors", sha)]);
    crate::io::write_json(&run.join("manifest.json"), &manifest)?;
    Ok((model.valid(), state))
}

/// Refuses to start a new run in a directory that holds any part of one.
fn refuse_existing(run: &Path) -> Result<()> {
    let part = [
        "config.toml",
        "model.toml",
        "model.safetensors",
        "latest.json",
    ]
    .into_iter()
    .map(|f| run.join(f))
    .find(|p| p.exists())
    .or(checkpoints(run)?.into_iter().next().map(|f| f.dir));
    if let Some(part) = part {
        bail!(
            "{} already holds a run ({} exists); pass --resume to continue it or choose another --out",
            run.display(),
            part.display()
        );
    }
    Ok(())
}

/// Checks a run before it is resumed, writing nothing: `config.toml` against `config`,
/// `model.toml` against the model the configuration and data give now, and the newest complete
/// checkpoint's manifest against `config`. Returns that checkpoint.
fn check_resume(config: &TrainConfig, spec: &ModelSpec, run: &Path) -> Result<Option<Latest>> {
    let config_path = run.join("config.toml");
    ensure!(
        config_path.exists(),
        "{} has no config.toml to resume from",
        run.display()
    );
    let saved: TrainConfig = crate::io::read_toml(&config_path)?;
    if let Some((field, was, now)) = crate::io::first_difference(&saved, config)? {
        bail!(
            "{}: `{field}` is {was}, but the resumed run asks for {now}; resume with the saved \
             configuration, or train a new run with --out",
            config_path.display()
        );
    }
    let spec_path = run.join("model.toml");
    if spec_path.exists() {
        let saved: ModelSpec = crate::io::read_toml(&spec_path)?;
        saved.validate(&spec_path)?;
        if let Some((field, was, now)) = crate::io::first_difference(&saved, spec)? {
            bail!(
                "{}: `{field}` is {was}, but config.toml and the training data in {} now give \
                 {now}; the configuration or the data changed since the run started. Restore \
                 them, or train a new run with --out",
                spec_path.display(),
                config.data_dir.display()
            );
        }
    }
    let found = checkpoints(run)?;
    let newest = found.iter().rev().find(|f| f.lacks.is_none());
    if let Some(f) = found
        .iter()
        .rev()
        .find(|f| f.lacks.is_some() && newest.is_none_or(|n| f.epoch > n.epoch))
    {
        bail!(
            "{} is incomplete (it has no {}) and resuming would overwrite it; move it out of {} \
             to resume from {}",
            f.dir.display(),
            f.lacks.unwrap_or_default(),
            run.join("checkpoint").display(),
            newest.map_or("the start".to_string(), |n| n.dir.display().to_string())
        );
    }
    let Some(newest) = newest else {
        let done = run.join("model.safetensors");
        ensure!(
            !done.exists(),
            "{} holds a finished model ({}) but no complete checkpoint to resume from; nothing \
             is left to train",
            run.display(),
            done.display()
        );
        return Ok(None);
    };
    let manifest_path = newest.dir.join("manifest.json");
    let manifest: Manifest = crate::io::read_json(&manifest_path)?;
    let trained = manifest.config.with_schedule_of(config);
    if let Some((field, was, now)) = crate::io::first_difference(&trained, config)? {
        bail!(
            "{}: `{field}` is {now}, but the checkpoint was trained with {was} ({}); only the \
             schedule (epochs, learning rates, freezing, l2, batch size, device, data_dir) may \
             change on a resume. Restore config.toml, or train a new run with --out",
            config_path.display(),
            manifest_path.display()
        );
    }
    ensure!(
        manifest.epoch == newest.epoch,
        "{}: `epoch` is {}, but it lies in {}; the checkpoint is corrupt",
        manifest_path.display(),
        manifest.epoch,
        newest.dir.display()
    );
    Ok(Some(Latest {
        epoch: newest.epoch,
        dir: newest
            .dir
            .strip_prefix(run)
            .unwrap_or(&newest.dir)
            .to_path_buf(),
    }))
}

/// What to do when the checkpoint after `epoch` epochs cannot be loaded.
fn resume_advice(run: &Path, epoch: usize) -> Result<String> {
    let this = checkpoint_dir(run, epoch);
    let earlier = checkpoints(run)?
        .into_iter()
        .rev()
        .find(|f| f.epoch < epoch && f.lacks.is_none());
    Ok(match earlier {
        Some(e) => format!(
            "move {} out of the run to resume from {}",
            this.display(),
            e.dir.display()
        ),
        None => format!(
            "{} is the only checkpoint; train a new run with --out",
            this.display()
        ),
    })
}

/// Reads a checkpoint's `state.json`, naming the file in any error.
fn read_state(path: &Path) -> Result<TrainState> {
    let text = crate::io::read_text(path)?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid training state (the checkpoint is corrupt)",
            path.display()
        )
    })
}

/// The newest complete checkpoint, for error messages.
fn last_good(run: &Path) -> String {
    match latest(run) {
        Ok(Some(l)) => run.join(l.dir).display().to_string(),
        _ => "none (no epoch finished yet)".into(),
    }
}

/// The first parameter or buffer of `model` holding a NaN or an infinity, named.
fn non_finite_weights(model: &Ensemble) -> Option<String> {
    for t in model.collect(None, None, false) {
        if t.dtype != burn::store::burn_pack::DType::F32 {
            continue;
        }
        let Ok(bytes) = t.to_bytes() else {
            return Some(format!("{} cannot be read", t.name));
        };
        if bytes
            .chunks_exact(4)
            .any(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
        {
            return Some(format!("{} holds NaN or infinite values", t.name));
        }
    }
    None
}

/// Checks, after an epoch, that every weight, every metric of the epoch and the outputs of the
/// updated model on the first training batch are finite; the error names what is not.
fn check_finite(
    model: &Ensemble,
    metrics: &EpochMetrics,
    data: &Dataset,
    config: &TrainConfig,
    device: &Device,
) -> std::result::Result<(), String> {
    let named = [
        ("loss", metrics.loss),
        ("ECE", metrics.ece),
        ("entropy", metrics.entropy),
        ("log ED", metrics.log_det),
        ("accuracy", metrics.accuracy),
    ];
    if let Some((name, v)) = named.iter().find(|(_, v)| !v.is_finite()) {
        return Err(format!("mean {name} {v}"));
    }
    if let Some((k, v)) = metrics
        .member_ce
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        return Err(format!("cross-entropy of member {k} {v}"));
    }
    if let Some(what) = non_finite_weights(model) {
        return Err(what);
    }
    // The metrics were measured before each update; the last update shows in the outputs.
    let batch = Batcher::sequential(data, config.batch_size.min(data.len())).batch(0, device);
    let logits = model.valid().forward(batch.images).logits;
    if !crate::tensor::floats::<f64, _>(logits)
        .iter()
        .all(|v| v.is_finite())
    {
        return Err("its outputs on the first training batch".into());
    }
    Ok(())
}

fn member_config(config: &TrainConfig, data: &Dataset) -> MemberConfig {
    let (mean, std) = data.normalization(config.normalize);
    MemberConfig {
        kind: config.model,
        input_shape: data.shape,
        num_classes: data.num_classes,
        mean,
        std,
    }
}

/// Freezes the members marked in `frozen` (idempotent).
fn apply_frozen(mut model: Ensemble, frozen: &[bool]) -> Ensemble {
    model.members = model
        .members
        .into_iter()
        .zip(frozen)
        .map(|(m, &f)| if f { m.freeze() } else { m })
        .collect();
    model
}

/// Applies the convergence criterion to each still-active member.
fn update_freezing(config: &TrainConfig, state: &mut TrainState, member_ce: &[f64]) {
    for (k, &ce) in member_ce.iter().enumerate() {
        if ce < state.best_ce[k] * (1.0 - config.freeze.min_delta) {
            state.best_ce[k] = ce;
            state.stale[k] = 0;
        } else {
            state.best_ce[k] = state.best_ce[k].min(ce);
            state.stale[k] += 1;
        }
        if config.freeze.patience > 0
            && state.stale[k] >= config.freeze.patience
            && !state.frozen[k]
        {
            crate::progress::note(&format!(
                "member {k} converged (no progress for {} epochs): frozen",
                state.stale[k]
            ));
            state.frozen[k] = true;
        }
    }
}

/// The numbers of one training step (means over its batch).
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// The objective, including the L2 penalty.
    pub loss: f64,
    /// L_ECE.
    pub ece: f64,
    /// Ensemble entropy H(F).
    pub entropy: f64,
    /// log ED.
    pub log_det: f64,
    /// Examples the ensemble classified correctly (before the update).
    pub correct: usize,
    /// Each member's cross-entropy.
    pub member_ce: Vec<f64>,
}

/// The objective became NaN or infinite; holds its value. No parameter was updated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFinite(pub f64);

/// One step of Algorithm 1 on `batch`: the objective (ECE or ADP, Eq. 5, plus the L2 penalty on
/// the active members' conv kernels) is back-propagated once and each active member k takes an
/// Adam step with learning rate `lrs[k]`; frozen members are left untouched. A non-finite
/// objective is reported before any update.
pub fn train_step(
    mut model: Ensemble,
    optims: &mut [ModuleOptimizer],
    batch: crate::data::Batch,
    objective: &AdpConfig,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> std::result::Result<(Ensemble, StepMetrics), NonFinite> {
    let out = model.forward(batch.images);
    let loss = adp_loss(out.logits.clone(), batch.labels.clone(), objective);
    let mut total = loss.total.clone();
    if l2 > 0.0 {
        for (m, _) in model.members.iter().zip(frozen).filter(|(_, f)| !**f) {
            total = total + m.conv_l2().mul_scalar(l2);
        }
    }
    let value = total.clone().into_scalar::<f32>() as f64;
    if !value.is_finite() {
        return Err(NonFinite(value));
    }
    let mut grads = total.backward();
    let members = std::mem::take(&mut model.members);
    model.members = members
        .into_iter()
        .enumerate()
        .map(|(j, m)| {
            if frozen[j] {
                return m;
            }
            let g = GradientsParams::from_module(&mut grads, &m);
            optims[j].step(lrs[j], m, g)
        })
        .collect();
    let logits = out.logits.detach();
    let metrics = StepMetrics {
        loss: value,
        ece: loss.ece.into_scalar::<f32>() as f64,
        entropy: loss.entropy.into_scalar::<f32>() as f64,
        log_det: loss.log_det.into_scalar::<f32>() as f64,
        member_ce: crate::eval::member_cross_entropy(logits.clone(), batch.labels.clone()),
        correct: crate::eval::count_correct(
            crate::model::EnsembleOutput { logits }.mean_probs(),
            batch.labels,
        ),
    };
    Ok((model, metrics))
}

/// The initial ensemble of `spec` for seed `seed`, as trainable parameters on `device` (an
/// autodiff device). Other backends than the CPU draw the weights from the CPU's generator and
/// move them, so that a seed gives the same initial ensemble on every backend. burn initialises
/// a parameter lazily, on the device it is first used on, unless a clone shares it; so a clone
/// is kept alive across the move. `fork`, unlike `to_device`, makes the moved parameters leaves
/// of `device`'s own autodiff graph: parameters moved with `to_device` are intermediate tensors
/// that an optimizer step cannot train.
pub fn initial_ensemble(spec: &ModelSpec, seed: u64, device: &Device) -> Result<Ensemble> {
    let cpu = DeviceKind::Cpu.device()?.autodiff();
    cpu.seed(seed);
    let drawn = spec.init(&cpu);
    let moved = drawn.clone().fork(device);
    drop(drawn);
    Ok(moved)
}

#[allow(clippy::too_many_arguments)]
fn run_epoch(
    config: &TrainConfig,
    objective: &AdpConfig,
    data: &Dataset,
    mut model: Ensemble,
    optims: &mut [ModuleOptimizer],
    state: &TrainState,
    device: &Device,
    run: &Path,
) -> Result<(Ensemble, EpochMetrics)> {
    let epoch = state.epoch;
    let mut batcher = Batcher::shuffled(data, config.batch_size, config.seed, epoch);
    if config.augment {
        batcher = batcher.augmented(config.seed, epoch);
    }
    let bar = crate::progress::start(
        batcher.num_batches() as u64,
        &format!("{} epoch {}/{}", config.label(), epoch + 1, config.epochs),
    );
    let k = config.members;
    let method = config.training_objective();
    // DVERGE's targets: another shuffle of the training set (the code's `DistillationLoader`),
    // and the epoch's distillation layer.
    let targets = match &method {
        Objective::Dverge(d) => {
            let seed = config.seed ^ 0x7a4f_d1e5;
            let mut t = Batcher::shuffled(data, config.batch_size, seed, epoch);
            if config.augment {
                t = t.augmented(seed, epoch);
            }
            Some((t, d.layer_at(&model.members[0], config.seed, epoch)?))
        }
        _ => None,
    };
    let mut sums = [0f64; 5]; // loss, ece, entropy, log_det, correct
    let mut member_ce = vec![0f64; k];
    let mut seen = 0usize;
    for i in 0..batcher.num_batches() {
        let mut batch = batcher.batch(i, device);
        if let Some(adv) = &config.adv_train {
            batch = adversarial_batch(&model, batch, adv, config.seed, epoch, i).0;
        }
        let n = batch.labels.dims()[0];
        let lrs: Vec<f64> = (0..k).map(|j| config.lr_at(epoch, j)).collect();
        let (l2, frozen) = (config.l2, &state.frozen);
        let at = peers::StepAt {
            seed: config.seed,
            epoch,
            epochs: config.epochs,
            step: i,
        };
        let step = match (&method, &targets) {
            (Objective::Gal(g), _) => gal::gal_step(model, optims, batch, g, l2, &lrs, frozen),
            (Objective::Trs(t), _) => trs::trs_step(model, optims, batch, t, at, l2, &lrs, frozen),
            (Objective::Dverge(d), Some((targets, layer))) => {
                let target = targets.batch(i, device).images;
                dverge::dverge_step(model, optims, batch, target, *layer, d, l2, &lrs, frozen)
            }
            _ => train_step(model, optims, batch, objective, l2, &lrs, frozen),
        };
        let (next, m) = match step {
            Ok(done) => done,
            Err(NonFinite(value)) => {
                let last = last_good(run);
                bail!(
                    "the loss became {value} at epoch {}, step {}; nothing was saved from this epoch. Last good checkpoint: {last}. Lower --lr or check the data",
                    epoch + 1,
                    i + 1
                );
            }
        };
        model = next;
        for (acc, ce) in member_ce.iter_mut().zip(&m.member_ce) {
            *acc += ce * n as f64;
        }
        for (s, p) in sums.iter_mut().zip([m.loss, m.ece, m.entropy, m.log_det]) {
            *s += p * n as f64;
        }
        sums[4] += m.correct as f64;
        seen += n;
        bar.inc(1);
        if i % 10 == 0 {
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% logED {:.2}",
                sums[0] / seen as f64,
                100.0 * sums[4] / seen as f64,
                sums[3] / seen as f64
            ));
        }
    }
    bar.finish();
    let s = seen as f64;
    Ok((
        model,
        EpochMetrics {
            epoch: epoch + 1,
            loss: sums[0] / s,
            ece: sums[1] / s,
            entropy: sums[2] / s,
            log_det: sums[3] / s,
            accuracy: sums[4] / s,
            member_ce: member_ce.iter().map(|c| c / s).collect(),
            lr: config.lr_at(epoch, 0),
            frozen: Vec::new(),
            seconds: 0.0,
        },
    ))
}

fn write_history(run: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut csv =
        String::from("epoch,loss,ece,entropy,log_det,accuracy,lr,seconds,member_ce,frozen\n");
    for m in history {
        let ce: Vec<String> = m.member_ce.iter().map(|c| format!("{c:.5}")).collect();
        let fr: Vec<&str> = m
            .frozen
            .iter()
            .map(|f| if *f { "1" } else { "0" })
            .collect();
        csv.push_str(&format!(
            "{},{:.5},{:.5},{:.5},{:.5},{:.5},{:e},{:.1},{},{}\n",
            m.epoch,
            m.loss,
            m.ece,
            m.entropy,
            m.log_det,
            m.accuracy,
            m.lr,
            m.seconds,
            ce.join(";"),
            fr.join(";")
        ));
    }
    crate::io::atomic_write(&run.join("history.csv"), csv.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official `lr_schedule` multiplies the rate by 0.1 once the 0-based epoch exceeds 15
    /// and by 0.01 once it exceeds 30.
    #[test]
    fn the_paper_schedule_drops_after_epochs_15_and_30_as_the_official_code() {
        let c = TrainConfig::paper_mnist(Method::Ece, 0.0, 0.0);
        let lr = |e| c.lr_at(e, 0);
        assert_eq!([lr(0), lr(15)], [1e-3, 1e-3]);
        assert!((lr(16) - 1e-4).abs() < 1e-12 && (lr(30) - 1e-4).abs() < 1e-12);
        assert!((lr(31) - 1e-5).abs() < 1e-12 && (lr(39) - 1e-5).abs() < 1e-12);
    }

    #[test]
    fn the_recorded_burn_version_is_the_one_in_cargo_lock() {
        let lock = include_str!("../../Cargo.lock");
        let entry = format!("name = \"burn\"\nversion = \"{}\"", super::BURN_VERSION);
        assert!(
            lock.contains(&entry),
            "update BURN_VERSION to the burn version in Cargo.lock"
        );
    }
}
