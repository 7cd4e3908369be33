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
mod config;
pub mod dverge;
mod epoch;
pub mod gal;
pub mod peers;
mod resume;
pub mod trs;

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, ModuleOptimizer};

use crate::data::{Dataset, Split, load_dataset};
use crate::model::{Ensemble, MemberConfig};
pub use checkpoint::Manifest;
use checkpoint::{ModelSpec, save_checkpoint, save_model};
pub use config::{FreezeConfig, Method, TrainConfig, default_checkpoint_minutes};
pub use epoch::{EpochMetrics, NonFinite, StepMetrics, initial_ensemble, train_step};
use epoch::{check_finite, non_finite_weights, run_epoch, write_history};
use peers::Objective;
pub use resume::TrainState;
use resume::{check_resume, find_within, last_good, refuse_existing, restore_within};

/// The burn release `adp` is built against (kept in step with Cargo.toml).
pub const BURN_VERSION: &str = "0.22.1";

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
/// epoch is finite. A resume in a build with a GPU backend needs that GPU, or `BURN_DEVICE` set
/// to [`crate::device::CPU_BURN_DEVICE`]: burn loads optimizer states on its default device.
pub fn train(config: &TrainConfig, run: &Path, resume: bool) -> Result<(Ensemble, TrainState)> {
    let config_path = run.join("config.toml");
    if resume {
        config.validate_in(Some(&config_path))?;
    } else {
        config.validate()?;
    }
    // Member k's device (all of them `device` without a placement), created before anything is
    // written so that a missing one fails the run at once; the first is the loss's.
    let placement: Vec<_> = crate::device::placement(config.device, &config.devices)?
        .into_iter()
        .map(|d| d.autodiff())
        .collect();
    let device = placement[0].clone().without_autodiff();
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
    // DVERGE's start must hold these members; its weights are loaded below.
    if prior.is_none()
        && let Objective::Dverge(dverge::DvergeConfig {
            start_from: Some(from),
            ..
        }) = config.training_objective()
    {
        dverge::check_start(&from, &spec)?;
    }
    // Every check has passed: only now is anything written.
    std::fs::create_dir_all(run.join("checkpoint"))
        .with_context(|| format!("cannot create {}", run.join("checkpoint").display()))?;
    if !resume {
        crate::io::write_toml(&config_path, config)?;
    }
    if !spec_path.exists() {
        crate::io::write_toml(&spec_path, &spec)?;
    }
    // On the autotuning backends, the kernels this run chose before a resume are the ones it
    // runs after it.
    let kinds = std::iter::once(config.device).chain(config.devices.iter().map(|d| d.kind));
    let _kernels = crate::autotune::KernelChoices::keep_in(run, kinds);

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
        (model, state) = resume::restore(run, l, config.members, model, &mut optims)?;
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
        model = dverge::start_from(&from, &ad)?;
    }
    let mut within = None;
    if resume && let Some(w) = find_within(config, run, state.epoch)? {
        let (m, progress) = restore_within(&w, &state, model, &mut optims)?;
        crate::progress::note(&format!(
            "resuming {} at step {} of epoch {}",
            run.display(),
            progress.steps,
            progress.epoch + 1
        ));
        (model, within) = (m, Some(progress));
    }
    model = apply_frozen(model.place(&placement), &state.frozen);

    let objective = config.objective();
    while state.epoch < config.epochs && state.frozen.iter().any(|f| !f) {
        let epoch = state.epoch;
        let (next, metrics) = run_epoch(
            config,
            &objective,
            &data,
            model,
            &mut optims,
            &state,
            within.take(),
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
                 good checkpoint: {last}. Lower `lr` or check the data",
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
        let lock = include_str!("../../../../Cargo.lock");
        let entry = format!("name = \"burn\"\nversion = \"{}\"", super::BURN_VERSION);
        assert!(
            lock.contains(&entry),
            "update BURN_VERSION to the burn version in Cargo.lock"
        );
    }
}
