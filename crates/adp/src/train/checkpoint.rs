//! The run directory: configuration, per-epoch checkpoints and the finished model.
//!
//! ```text
//! RUN_DIR/config.toml             the TrainConfig (reproduces the run)
//! RUN_DIR/model.toml              what rebuilds the members before loading weights
//! RUN_DIR/checkpoint/epoch-NNNN/  model.safetensors, model.bpk (the same weights with the
//!                                 parameter ids the optimizer states refer to), optim-K.bpk,
//!                                 state.json, manifest.json (epoch, seed, backend,
//!                                 versions and the full configuration)
//! RUN_DIR/checkpoint/epoch-NNNN-step-SSSSSS/
//!                                 a checkpoint within epoch N+1, after S of its steps: the
//!                                 same files and progress.json (the epoch's sums so far)
//! RUN_DIR/latest.json             the newest complete checkpoint (written last, atomically)
//! RUN_DIR/history.csv             one row of training metrics per epoch
//! RUN_DIR/model.safetensors       the final weights
//! RUN_DIR/manifest.json           the final model's manifest
//! RUN_DIR/lock                    the lock of the process writing the run ([`crate::lock`])
//! ```
//! A checkpoint directory is filled under a temporary name and renamed when complete, and
//! `latest.json` is replaced only after that, so a run killed at any instant resumes from the last
//! complete epoch, or from the newest checkpoint within the epoch after it (taken every
//! `checkpoint_minutes`; each replaces the one before, and the epoch's own checkpoint replaces
//! them). `latest.json` is a pointer for people and tools: the newest complete
//! `checkpoint/epoch-*` is what a resume continues from, so losing `latest.json`, or one pointing
//! at a removed epoch, loses nothing. Every manifest records the SHA-256 of each weight file
//! beside it, and loading verifies it; the weights are written byte-for-byte deterministically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::device::DeviceKind;
use crate::model::{Ensemble, MAX_MEMBERS, MemberConfig};
use crate::train::{TrainConfig, TrainState};

/// The largest weights file the loaders read (far above any ensemble `adp` builds).
pub const MAX_WEIGHTS_FILE: u64 = 64 << 30;

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

    /// Checks that the description can be built and evaluated: 1 to [`MAX_MEMBERS`] members, a
    /// non-empty input, at least 2 classes, a mean per channel or per pixel and a finite,
    /// positive std per channel. `file` (the `model.toml` it came from) names the errors.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let f = file.display();
        ensure!(
            (1..=MAX_MEMBERS).contains(&self.members),
            "{f}: `members` is {}; it must be between 1 and {MAX_MEMBERS}",
            self.members
        );
        let m = &self.member;
        let [c, h, w] = m.input_shape;
        ensure!(
            c > 0 && h > 0 && w > 0 && c <= 4 && h <= 4096 && w <= 4096,
            "{f}: `member.input_shape` {:?} is not an image shape [channels, height, width]",
            m.input_shape
        );
        ensure!(
            (2..=100_000).contains(&m.num_classes),
            "{f}: `member.num_classes` is {}; it must be at least 2",
            m.num_classes
        );
        ensure!(
            m.mean.len() == c || m.mean.len() == c * h * w,
            "{f}: `member.mean` has {} entries; it needs {c} (one per channel) or {} (one per pixel)",
            m.mean.len(),
            c * h * w
        );
        ensure!(
            m.std.len() == c,
            "{f}: `member.std` has {} entries; it needs {c} (one per channel)",
            m.std.len()
        );
        ensure!(
            m.mean.iter().all(|v| v.is_finite()),
            "{f}: `member.mean` holds a value that is not finite"
        );
        ensure!(
            m.std.iter().all(|s| s.is_finite() && *s > 0.0),
            "{f}: `member.std` must be finite and > 0, got {:?}",
            m.std
        );
        Ok(())
    }

    /// Checks that a run's `config.toml` describes this ensemble (members, architecture, the data
    /// set's image shape and classes); `run` names the files in the error.
    pub fn check_config(&self, config: &TrainConfig, run: &Path) -> Result<()> {
        let (cfg, spec) = (
            run.join("config.toml").display().to_string(),
            run.join("model.toml").display().to_string(),
        );
        ensure!(
            config.members == self.members,
            "{cfg}: `members` is {} but {spec} says {}; the files belong to different runs",
            config.members,
            self.members
        );
        ensure!(
            config.model == self.member.kind,
            "{cfg}: `model` is {:?} but {spec} says {:?}; the files belong to different runs",
            config.model,
            self.member.kind
        );
        let d = config.dataset;
        ensure!(
            d.input_shape() == self.member.input_shape
                && d.num_classes() == self.member.num_classes,
            "{cfg}: `dataset` is {} ({:?} images, {} classes) but {spec} describes {:?} images \
             and {} classes; the files belong to different runs",
            d.name(),
            d.input_shape(),
            d.num_classes(),
            self.member.input_shape,
            self.member.num_classes
        );
        Ok(())
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

/// The SHA-256 of the weight files of a directory, as its `manifest.json` records them.
#[derive(Debug, Default, Deserialize)]
struct Hashes {
    #[serde(default)]
    sha256: BTreeMap<String, String>,
}

/// What produced a checkpoint (or a run's final model): saved beside it as `manifest.json`, so
/// that a checkpoint found on its own still says how to reproduce it, with the SHA-256 of every
/// weight file beside it, which loading verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Finished epochs.
    pub epoch: usize,
    /// Seed of initialisation and batch order.
    pub seed: u64,
    /// The device (backend) the run trained on.
    pub backend: DeviceKind,
    /// Version of `adp`.
    pub adp_version: String,
    /// Version of burn it was built against.
    pub burn_version: String,
    /// The full training configuration.
    pub config: TrainConfig,
    /// SHA-256 (lower-case hex) of each weight file in the manifest's directory, by file name.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    /// The manifest of weights trained with `config` for `epoch` epochs, with the hashes of the
    /// files `sha256` (name, hash).
    pub fn new(
        config: &TrainConfig,
        epoch: usize,
        sha256: impl IntoIterator<Item = (impl Into<String>, String)>,
    ) -> Self {
        Self {
            epoch,
            seed: config.seed,
            backend: config.device,
            adp_version: env!("CARGO_PKG_VERSION").into(),
            burn_version: super::BURN_VERSION.into(),
            config: config.clone(),
            sha256: sha256.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }
}

/// Writes the complete checkpoint of `state.epoch` (weights, optimizer states, training state
/// and manifest) under a temporary name and publishes it with [`commit_checkpoint`].
pub(crate) fn save_checkpoint(
    run: &Path,
    config: &TrainConfig,
    model: &Ensemble,
    optims: &[ModuleOptimizer],
    state: &TrainState,
) -> Result<()> {
    let tmp = checkpoint_dir(run, state.epoch).with_extension("tmp");
    write_checkpoint(&tmp, config, model, optims, state)?;
    commit_checkpoint(run, &tmp, state.epoch)
}

/// Writes a checkpoint within the epoch after `state.epoch`, `progress.steps` steps into it:
/// the files of a complete checkpoint and `progress.json`, under a temporary name renamed when
/// complete; then removes the older checkpoints within that epoch, which it replaces.
pub(crate) fn save_within(
    run: &Path,
    config: &TrainConfig,
    model: &Ensemble,
    optims: &[ModuleOptimizer],
    state: &TrainState,
    progress: &EpochProgress,
) -> Result<()> {
    let dir = within_dir(run, state.epoch, progress.steps);
    let tmp = dir.with_extension("tmp");
    write_checkpoint(&tmp, config, model, optims, state)?;
    crate::io::write_json(&tmp.join(PROGRESS_FILE), progress)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot create {}", dir.display()))?;
    remove_within_before(run, state.epoch, progress.steps)
}

/// Fills `tmp` (emptied first) with a checkpoint's files.
fn write_checkpoint(
    tmp: &Path,
    config: &TrainConfig,
    model: &Ensemble,
    optims: &[ModuleOptimizer],
    state: &TrainState,
) -> Result<()> {
    if tmp.exists() {
        std::fs::remove_dir_all(tmp)?;
    }
    std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    // burn's batch norm keeps its last running-statistics update pending until the next step
    // reads it (`RunningState::value_sync`), and saving reads the value without it; `valid`
    // merges it (the next step would have merged the same one, so training is unchanged).
    drop(model.valid());
    let mut hashes = vec![(
        "model.safetensors".to_string(),
        save_model(model, &tmp.join("model.safetensors"))?,
    )];
    model
        .clone()
        .save_file(tmp.join("model.bpk"))
        .context("cannot save the checkpoint's weights")?;
    hashes.push((
        "model.bpk".into(),
        crate::io::sha256_file(&tmp.join("model.bpk"))?,
    ));
    for (k, o) in optims.iter().enumerate() {
        let name = format!("optim-{k}.bpk");
        o.save(tmp.join(&name))
            .with_context(|| format!("cannot save the optimizer state of member {k}"))?;
        hashes.push((name.clone(), crate::io::sha256_file(&tmp.join(&name))?));
    }
    crate::io::write_json(&tmp.join("state.json"), state)?;
    let manifest = Manifest::new(config, state.epoch, hashes);
    crate::io::write_json(&tmp.join("manifest.json"), &manifest)
}

/// Checks `bytes`, read from `path`, against the SHA-256 that the `manifest.json` beside it
/// records (runs written before hashes were recorded have none, and pass).
pub fn verify_sha256(path: &Path, bytes: &[u8]) -> Result<()> {
    verify_with(path, || Ok(crate::io::sha256_hex(bytes)))
}

/// Checks the file `path` against the SHA-256 its directory's `manifest.json` records.
pub fn verify_file(path: &Path) -> Result<()> {
    verify_with(path, || crate::io::sha256_file(path))
}

fn verify_with(path: &Path, hash: impl FnOnce() -> Result<String>) -> Result<()> {
    let manifest = path.with_file_name("manifest.json");
    if !manifest.exists() {
        return Ok(());
    }
    let hashes: Hashes = crate::io::read_json(&manifest)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let Some(expected) = hashes.sha256.get(name.as_ref()) else {
        return Ok(());
    };
    let got = hash()?;
    ensure!(
        &got == expected,
        "{} is corrupt: its SHA-256 is {got}, but {} records {expected}; restore the file \
         or resume from an earlier checkpoint",
        path.display(),
        manifest.display()
    );
    Ok(())
}

/// The bytes of the ensemble's weights as safetensors, in a canonical order (equal weights give
/// equal bytes).
pub fn model_bytes(model: &Ensemble) -> Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None).metadata("format", "adp-ensemble");
    model
        .save_into(&mut store)
        .context("cannot serialise the weights")?;
    let bytes = store.get_bytes().context("cannot serialise the weights")?;
    crate::io::canonical_safetensors(bytes)
}

/// Saves the ensemble's weights as safetensors (atomically); returns the file's SHA-256.
pub fn save_model(model: &Ensemble, path: &Path) -> Result<String> {
    let bytes = model_bytes(model)?;
    crate::io::atomic_write(path, &bytes)?;
    Ok(crate::io::sha256_hex(&bytes))
}

/// Loads weights saved by [`save_model`] into an ensemble of the right shape, after checking
/// the file's SHA-256 against the manifest beside it.
pub fn load_model(mut model: Ensemble, path: &Path) -> Result<Ensemble> {
    let bytes = crate::io::read_regular(path, MAX_WEIGHTS_FILE)?;
    verify_sha256(path, &bytes)?;
    safetensors::SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "{} is not a valid safetensors file (truncated or corrupt)",
            path.display()
        )
    })?;
    let mismatch = || {
        format!(
            "{} does not hold the ensemble that model.toml describes (members, architecture, \
             classes or input shape differ)",
            path.display()
        )
    };
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = model.load_from(&mut store).with_context(mismatch)?;
    ensure!(
        result.errors.is_empty() && result.missing.is_empty() && result.unused.is_empty(),
        "{}: {} missing tensors, {} unexpected, {} errors{}",
        mismatch(),
        result.missing.len(),
        result.unused.len(),
        result.errors.len(),
        result
            .errors
            .first()
            .map(|e| format!(", first: {e:?}"))
            .or(result
                .missing
                .first()
                .map(|m| format!(", first missing: {}", m.0)))
            .or(result
                .unused
                .first()
                .map(|u| format!(", first unexpected: {u}")))
            .unwrap_or_default()
    );
    Ok(model)
}

/// Directory name of the checkpoint after `epoch` finished epochs.
pub fn checkpoint_dir(run: &Path, epoch: usize) -> PathBuf {
    run.join("checkpoint").join(format!("epoch-{epoch:04}"))
}

/// The files every complete checkpoint holds (besides one `optim-K.bpk` per member).
pub const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "model.bpk",
    "state.json",
    "manifest.json",
];

/// One `checkpoint/epoch-N` directory of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Finished epochs N.
    pub epoch: usize,
    /// The directory.
    pub dir: PathBuf,
    /// The first of [`CHECKPOINT_FILES`] it lacks, if any.
    pub lacks: Option<&'static str>,
}

/// Every `checkpoint/epoch-N` directory of `run` (temporary `.tmp` ones excluded), oldest first.
pub fn checkpoints(run: &Path) -> Result<Vec<Found>> {
    let root = run.join("checkpoint");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(epoch) = name
            .strip_prefix("epoch-")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let lacks = CHECKPOINT_FILES
            .into_iter()
            .find(|f| !dir.join(f).is_file());
        found.push(Found { epoch, dir, lacks });
    }
    found.sort_by_key(|f| f.epoch);
    Ok(found)
}

/// Directory name of the checkpoint within the epoch after `epoch` finished epochs, `steps`
/// steps into it.
pub fn within_dir(run: &Path, epoch: usize, steps: usize) -> PathBuf {
    run.join("checkpoint")
        .join(format!("epoch-{epoch:04}-step-{steps:06}"))
}

/// The file of a checkpoint within an epoch that holds the epoch's progress.
pub const PROGRESS_FILE: &str = "progress.json";

/// How far an epoch had gone when a checkpoint within it was taken: what the rest of the epoch
/// needs to give the metrics an uninterrupted epoch gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Finished epochs before this one.
    pub epoch: usize,
    /// Steps of this epoch done.
    pub steps: usize,
    /// Sums over the examples seen of the loss, L_ECE, the entropy, log ED and the correct
    /// predictions.
    pub sums: [f64; 5],
    /// Sums over the examples seen of each member's cross-entropy.
    pub member_ce: Vec<f64>,
    /// Examples seen.
    pub seen: usize,
    /// Wall-clock seconds of the epoch so far.
    pub seconds: f64,
}

/// One `checkpoint/epoch-N-step-S` directory of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundWithin {
    /// Finished epochs N before it.
    pub epoch: usize,
    /// Steps S of epoch N + 1 done.
    pub steps: usize,
    /// The directory.
    pub dir: PathBuf,
}

/// Every `checkpoint/epoch-N-step-S` directory of `run` (temporary `.tmp` ones excluded),
/// oldest first.
pub fn within_checkpoints(run: &Path) -> Result<Vec<FoundWithin>> {
    let root = run.join("checkpoint");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&root).with_context(|| format!("cannot read {}", root.display()))?
    {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((e, st)) = name
            .strip_prefix("epoch-")
            .and_then(|rest| rest.split_once("-step-"))
            .filter(|(e, st)| digits(e) && digits(st))
        else {
            continue;
        };
        let (Ok(epoch), Ok(steps)) = (e.parse(), st.parse()) else {
            continue;
        };
        found.push(FoundWithin {
            epoch,
            steps,
            dir: entry.path(),
        });
    }
    found.sort_by_key(|f| (f.epoch, f.steps));
    Ok(found)
}

/// Removes the checkpoints within epochs that a checkpoint `steps` steps after `epoch` finished
/// epochs replaces: those before it.
fn remove_within_before(run: &Path, epoch: usize, steps: usize) -> Result<()> {
    for f in within_checkpoints(run)? {
        if (f.epoch, f.steps) < (epoch, steps) {
            std::fs::remove_dir_all(&f.dir).ok();
        }
    }
    Ok(())
}

/// Moves a fully written temporary checkpoint into place and points `latest.json` at it;
/// keeps the two newest checkpoints and removes those taken within earlier epochs. Refuses to replace an existing checkpoint of that epoch.
pub fn commit_checkpoint(run: &Path, tmp: &Path, epoch: usize) -> Result<()> {
    let dir = checkpoint_dir(run, epoch);
    ensure!(
        !dir.exists(),
        "{} already exists; move it out of {} before resuming",
        dir.display(),
        run.display()
    );
    std::fs::rename(tmp, &dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let rel = dir.strip_prefix(run).unwrap_or(&dir).to_path_buf();
    crate::io::write_json(&run.join("latest.json"), &Latest { epoch, dir: rel })?;
    let old = checkpoints(run)?;
    let old: Vec<&Found> = old.iter().filter(|f| f.epoch < epoch).collect();
    let keep_from = old.len().saturating_sub(1);
    for f in &old[..keep_from] {
        std::fs::remove_dir_all(&f.dir).ok();
    }
    // The epoch's checkpoint replaces those taken within it.
    remove_within_before(run, epoch, 0)
}

/// The newest complete checkpoint of a run, if any: the newest `checkpoint/epoch-N` holding
/// every file of [`CHECKPOINT_FILES`], whatever `latest.json` says (it may be lost or stale).
pub fn latest(run: &Path) -> Result<Option<Latest>> {
    Ok(checkpoints(run)?
        .into_iter()
        .rev()
        .find(|f| f.lacks.is_none())
        .map(|f| Latest {
            epoch: f.epoch,
            dir: f.dir.strip_prefix(run).unwrap_or(&f.dir).to_path_buf(),
        }))
}

/// Reads a run's `model.toml` and checks it on its own and against `config.toml`, when there is
/// one.
pub fn read_spec(run: &Path) -> Result<ModelSpec> {
    ensure!(
        run.exists(),
        "{} does not exist; train a run there first",
        run.display()
    );
    let spec_path = run.join("model.toml");
    ensure!(
        spec_path.exists(),
        "{} is not a run directory (no model.toml); train a run there first",
        run.display()
    );
    let spec: ModelSpec = crate::io::read_toml(&spec_path)?;
    spec.validate(&spec_path)?;
    let config_path = run.join("config.toml");
    if config_path.exists() {
        let config: TrainConfig = crate::io::read_toml(&config_path)?;
        spec.check_config(&config, run)?;
    }
    Ok(spec)
}

/// Rebuilds a trained ensemble from a run directory: the final model if training finished,
/// otherwise the newest checkpoint. `model.toml`, `config.toml` and the weights are checked
/// against each other first.
pub fn load_run(run: &Path, device: &Device) -> Result<(ModelSpec, Ensemble)> {
    let spec = read_spec(run)?;
    let final_path = run.join("model.safetensors");
    let weights = if final_path.exists() {
        final_path
    } else {
        let Some(latest) = latest(run)? else {
            bail!(
                "{} has no finished model and no complete checkpoint yet",
                run.display()
            );
        };
        run.join(latest.dir).join("model.safetensors")
    };
    let model = load_model(spec.init(device), &weights)?;
    Ok((spec, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_within_epochs_are_listed_in_order_without_the_unfinished_ones() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        for name in [
            "epoch-0001-step-000010",
            "epoch-0001-step-000002",
            "epoch-0000-step-000005.tmp",
            "epoch-0002",
            "epoch-0002-step-",
        ] {
            std::fs::create_dir_all(run.join("checkpoint").join(name)).unwrap();
        }
        let found: Vec<(usize, usize)> = within_checkpoints(run)
            .unwrap()
            .iter()
            .map(|f| (f.epoch, f.steps))
            .collect();
        assert_eq!(found, [(1, 2), (1, 10)]);
        assert_eq!(
            within_dir(run, 1, 10),
            run.join("checkpoint/epoch-0001-step-000010")
        );
        assert_eq!(
            checkpoints(run).unwrap().len(),
            1,
            "only epoch-0002 is an epoch's own"
        );
        remove_within_before(run, 1, 10).unwrap();
        assert_eq!(within_checkpoints(run).unwrap().len(), 1);
        remove_within_before(run, 2, 0).unwrap();
        assert!(within_checkpoints(run).unwrap().is_empty());
    }
}
