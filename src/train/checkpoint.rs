//! The run directory: configuration, per-epoch checkpoints and the finished model.
//!
//! ```text
//! RUN_DIR/config.toml             the TrainConfig (reproduces the run)
//! RUN_DIR/model.toml              what rebuilds the members before loading weights
//! RUN_DIR/checkpoint/epoch-NNNN/  model.safetensors, model.bpk (the same weights with the
//!                                 parameter ids the optimizer states refer to), optim-K.bpk,
//!                                 state.json, manifest.json (epoch, seed, backend,
//!                                 versions and the full configuration)
//! RUN_DIR/latest.json             the newest complete checkpoint (written last, atomically)
//! RUN_DIR/history.csv             one row of training metrics per epoch
//! RUN_DIR/model.safetensors       the final weights
//! ```
//! A checkpoint directory is filled under a temporary name and renamed when complete, and
//! `latest.json` is replaced only after that, so a run killed at any instant resumes from the last
//! complete epoch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::model::{Ensemble, MemberConfig};

/// How to rebuild the ensemble's structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Number of members K.
    pub members: usize,
    /// Each member's configuration.
    pub member: MemberConfig,
}

impl ModelSpec {
    /// A freshly initialised ensemble of this shape.
    pub fn init(&self, device: &Device) -> Ensemble {
        Ensemble::new(&self.member, self.members, device)
    }
}

/// Pointer to the newest complete checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    /// Number of finished epochs.
    pub epoch: usize,
    /// Checkpoint directory relative to the run directory.
    pub dir: PathBuf,
}

/// Saves the ensemble's weights as safetensors.
pub fn save_model(model: &Ensemble, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp).metadata("format", "adp-ensemble");
    model
        .save_into(&mut store)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Loads weights saved by [`save_model`] into an ensemble of the right shape.
pub fn load_model(mut model: Ensemble, path: &Path) -> Result<Ensemble> {
    let mut store = SafetensorsStore::from_file(path);
    let result = model.load_from(&mut store).with_context(|| {
        format!(
            "cannot read weights from {}: the file is missing or corrupt",
            path.display()
        )
    })?;
    anyhow::ensure!(
        result.errors.is_empty() && result.missing.is_empty(),
        "{} does not match the ensemble described by model.toml ({} missing tensors, {} errors{})",
        path.display(),
        result.missing.len(),
        result.errors.len(),
        result
            .errors
            .first()
            .map(|e| format!(", first: {e:?}"))
            .unwrap_or_default()
    );
    Ok(model)
}

/// Directory name of the checkpoint after `epoch` finished epochs.
pub fn checkpoint_dir(run: &Path, epoch: usize) -> PathBuf {
    run.join("checkpoint").join(format!("epoch-{epoch:04}"))
}

/// Moves a fully written temporary checkpoint into place and points `latest.json` at it;
/// keeps the two newest checkpoints.
pub fn commit_checkpoint(run: &Path, tmp: &Path, epoch: usize) -> Result<()> {
    let dir = checkpoint_dir(run, epoch);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(tmp, &dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rel = dir.strip_prefix(run).unwrap_or(&dir).to_path_buf();
    crate::io::write_json(&run.join("latest.json"), &Latest { epoch, dir: rel })?;
    let mut old: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoint"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p != &dir
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("epoch-"))
        })
        .collect();
    old.sort();
    let keep_from = old.len().saturating_sub(1);
    for p in &old[..keep_from] {
        std::fs::remove_dir_all(p).ok();
    }
    Ok(())
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run: &Path) -> Result<Option<Latest>> {
    let path = run.join("latest.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)?;
    let latest: Latest = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is corrupt; delete it to restart from scratch",
            path.display()
        )
    })?;
    Ok(Some(latest))
}

/// Rebuilds a trained ensemble from a run directory: the final model if training finished,
/// otherwise the newest checkpoint.
pub fn load_run(run: &Path, device: &Device) -> Result<(ModelSpec, Ensemble)> {
    let spec_path = run.join("model.toml");
    anyhow::ensure!(
        spec_path.exists(),
        "{} is not a run directory (no model.toml); train one with `adp train --out {}`",
        run.display(),
        run.display()
    );
    let spec: ModelSpec = crate::io::read_toml(&spec_path)?;
    let final_path = run.join("model.safetensors");
    let weights = if final_path.exists() {
        final_path
    } else {
        let latest = latest(run)?.with_context(|| {
            format!(
                "{} has no finished model and no checkpoint yet",
                run.display()
            )
        })?;
        run.join(latest.dir).join("model.safetensors")
    };
    let model = load_model(spec.init(device), &weights)?;
    Ok((spec, model))
}
