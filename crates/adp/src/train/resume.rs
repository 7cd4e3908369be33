//! Resuming a run: the training state a checkpoint records, the checks of a run directory
//! before a new run starts or an old one resumes, and the advice when a checkpoint cannot be
//! loaded.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    self, EpochProgress, FoundWithin, Latest, Manifest, ModelSpec, checkpoint_dir, checkpoints,
    latest,
};
use super::{EpochMetrics, TrainConfig};
use crate::model::Ensemble;

/// What a checkpoint records besides weights and optimizer states.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Finished epochs.
    pub epoch: usize,
    /// Members removed from the update set I.
    pub frozen: Vec<bool>,
    /// Best epoch-mean cross-entropy of each member (+∞ before its first epoch, which JSON
    /// writes as `null`).
    #[serde(deserialize_with = "infinite_when_null")]
    pub best_ce: Vec<f64>,
    /// Epochs since each member last improved.
    pub stale: Vec<usize>,
    /// Metrics of every finished epoch.
    pub history: Vec<EpochMetrics>,
}

/// Reads a list of numbers in which `null` stands for +∞ (serde_json writes non-finite numbers
/// as `null`).
fn infinite_when_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v: Vec<Option<f64>> = Vec::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::INFINITY)).collect())
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

/// Refuses to start a new run in a directory that holds any part of one.
pub(super) fn refuse_existing(run: &Path) -> Result<()> {
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
            "{} already holds a run ({} exists); resume it, or choose another output directory",
            run.display(),
            part.display()
        );
    }
    Ok(())
}

/// Checks a run before it is resumed, writing nothing: `config.toml` against `config`,
/// `model.toml` against the model the configuration and data give now, and the newest complete
/// checkpoint's manifest against `config`. Returns that checkpoint.
pub(super) fn check_resume(
    config: &TrainConfig,
    spec: &ModelSpec,
    run: &Path,
) -> Result<Option<Latest>> {
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
             configuration, or train a new run in another directory",
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
                 them, or train a new run in another directory",
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
             schedule (epochs, learning rates, freezing, l2, batch size, device, data_dir, \
             checkpoint_minutes) may \
             change on a resume. Restore config.toml, or train a new run in another directory",
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

/// Loads the checkpoint `l` of `run` into `model` and `optims`, after checking its state and
/// hashes, and returns the model with the training state it records; every error ends with what
/// to do about it.
pub(super) fn restore(
    run: &Path,
    l: &Latest,
    members: usize,
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
) -> Result<(Ensemble, TrainState)> {
    let advice = resume_advice(run, l.epoch)?;
    load_checkpoint(&run.join(&l.dir), l.epoch, members, model, optims, &advice)
}

/// The checkpoint within the epoch after `epoch` finished epochs to resume from: the newest
/// one taken in that epoch, when it was trained with the settings of `config` (its device and
/// checkpoint interval may differ). Refuses checkpoints within later epochs (which resuming
/// would remove) and one of this epoch trained with other settings, naming what to move aside.
pub(super) fn find_within(
    config: &TrainConfig,
    run: &Path,
    epoch: usize,
) -> Result<Option<FoundWithin>> {
    let found = checkpoint::within_checkpoints(run)?;
    let from = || match epoch {
        0 => "the start".to_string(),
        e => checkpoint_dir(run, e).display().to_string(),
    };
    if let Some(later) = found.iter().find(|f| f.epoch > epoch) {
        bail!(
            "{} lies in epoch {}, after the newest complete checkpoint, and resuming would remove \
             it; restore that epoch's checkpoint, or move it out of {} to resume from {}",
            later.dir.display(),
            later.epoch + 1,
            run.join("checkpoint").display(),
            from()
        );
    }
    let Some(newest) = found.into_iter().rev().find(|f| f.epoch == epoch) else {
        return Ok(None);
    };
    let manifest_path = newest.dir.join("manifest.json");
    let manifest: Manifest = crate::io::read_json(&manifest_path)?;
    // Where the epoch runs and how often it is checkpointed may change; nothing that changes
    // its remaining steps may.
    let continued = TrainConfig {
        device: config.device,
        devices: config.devices.clone(),
        data_dir: config.data_dir.clone(),
        checkpoint_minutes: config.checkpoint_minutes,
        ..manifest.config
    };
    if let Some((field, was, now)) = crate::io::first_difference(&continued, config)? {
        bail!(
            "{}: `{field}` was {was}, but the run now asks for {now}; a checkpoint within an \
             epoch continues that epoch only with its own settings. Restore them, or move {} out \
             of {} to resume from {}",
            manifest_path.display(),
            newest.dir.display(),
            run.join("checkpoint").display(),
            from()
        );
    }
    Ok(Some(newest))
}

/// Loads the checkpoint within an epoch `w` into `model` and `optims` and returns the model
/// with the epoch's progress; `state` is the training state the run resumed with, which the
/// checkpoint must record too.
pub(super) fn restore_within(
    w: &FoundWithin,
    state: &TrainState,
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
) -> Result<(Ensemble, EpochProgress)> {
    let advice = format!(
        "move {} out of the run to resume from the start of epoch {}",
        w.dir.display(),
        w.epoch + 1
    );
    let (model, saved) =
        load_checkpoint(&w.dir, w.epoch, state.frozen.len(), model, optims, &advice)?;
    let path = w.dir.join(checkpoint::PROGRESS_FILE);
    let progress: EpochProgress = crate::io::read_json(&path)
        .map_err(|e| anyhow::anyhow!("{e:#}; the checkpoint is corrupt: {advice}"))?;
    ensure!(
        progress.epoch == w.epoch && progress.steps == w.steps,
        "{}: the progress of epoch {}, step {}, lies in {}; the checkpoint is corrupt: {advice}",
        path.display(),
        progress.epoch + 1,
        progress.steps,
        w.dir.display()
    );
    ensure!(
        progress.member_ce.len() == state.frozen.len(),
        "{}: `member_ce` has {} entries for {} members; the checkpoint is corrupt: {advice}",
        path.display(),
        progress.member_ce.len(),
        state.frozen.len()
    );
    ensure!(
        serde_json::to_value(&saved)? == serde_json::to_value(state)?,
        "{} records another training state than the checkpoint of epoch {} it continues: {advice}",
        w.dir.join("state.json").display(),
        w.epoch
    );
    Ok((model, progress))
}

/// Loads the weights and optimizer states of the checkpoint in `dir` after `epoch` finished
/// epochs, checked against their hashes, with the training state it records; errors end with
/// `advice`.
fn load_checkpoint(
    dir: &Path,
    epoch: usize,
    members: usize,
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
    advice: &str,
) -> Result<(Ensemble, TrainState)> {
    let advise = |e: anyhow::Error| anyhow::anyhow!("{e:#}; {advice}");
    let state_path = dir.join("state.json");
    let state = read_state(&state_path).map_err(advise)?;
    state.check(members, epoch, &state_path).map_err(advise)?;
    // burn's own format keeps the parameter ids that the optimizer states are keyed by.
    let weights = dir.join("model.bpk");
    checkpoint::verify_file(&weights).map_err(advise)?;
    let model = model
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
    Ok((model, state))
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
            "{} is the only checkpoint; train a new run in another directory",
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
pub(super) fn last_good(run: &Path) -> String {
    match latest(run) {
        Ok(Some(l)) => run.join(l.dir).display().to_string(),
        _ => "none (no epoch finished yet)".into(),
    }
}
