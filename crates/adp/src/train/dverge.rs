//! DVERGE, Yang et al., *DVERGE: Diversifying Vulnerabilities for Enhanced Robust Generation of
//! Ensembles* (NeurIPS 2020), as its official code trains it (zjysteven/DVERGE,
//! `train/train_dverge.py`, `distillation.py`), without `--plus-adv`:
//!
//! 1. **Feature distillation** (Eq. 2): for each member k, a source batch x_s is moved towards a
//!    target batch x_t (another shuffle of the training set, the code's `DistillationLoader`) so
//!    that member k's layer-l features match: x'_k = argmin_{‖x' − x_s‖∞ ≤ ε} ‖f_k^l(x') −
//!    f_k^l(x_t)‖², by `steps` steps of −α·sign(g) where g accumulates (momentum 1) the L1-normalised
//!    gradient of the MSE, projected on the ε-ball and `[0, 1]`, from x_s (no random start).
//!    f^l is the layer's output before its ReLU (`before_relu=True`).
//! 2. **Cross-adversarial training** (Eq. 4, round-robin): member i minimises
//!    Σ_{j≠i} CE(F_i(x'_j), y_s), the source labels, each member with its own optimizer.
//!
//! The layer l is drawn uniformly from 1..=depth at the start of every epoch (the code's default,
//! no `--distill-fixed-layer`; [`crate::model::input_grad::num_layers`]: 20 for ResNet-20, 4 for
//! the CNN), unless `layer` fixes it. Training starts from a trained ensemble (`start_from`, the
//! code's `--start-from baseline`: an ECE run).
//!
//! **ε, α, steps.** The paper's CIFAR-10 values are ε = 0.07, α = 0.007, 10 steps. For MNIST we
//! use ε = 0.35, α = 0.035, 10 steps: the values the TRS authors' `script_train.py`
//! (AI-secure/Transferability-Reduced-Smooth-Ensemble) trains their MNIST DVERGE baseline with,
//! i.e. the CIFAR-10 values scaled by 5 with α = ε/10 kept. [`DvergeConfig::for_dataset`] picks
//! them.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::peers::{StepAt, cross_entropy, update};
use super::{NonFinite, StepMetrics};
use crate::attack::LinfBudget;
use crate::data::{Batch, DatasetKind};
use crate::model::input_grad::{layer_features, num_layers};
use crate::model::{Ensemble, Member};

/// DVERGE settings: `[dverge]` in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DvergeConfig {
    /// L∞ budget ε of the distillation.
    pub eps: f64,
    /// Step size α.
    pub alpha: f64,
    /// Steps of the distillation.
    pub steps: usize,
    /// A fixed layer (1-based); `None` draws one per epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// The run whose final ensemble training starts from (the code's `--start-from baseline`);
    /// `None` starts from fresh weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_from: Option<PathBuf>,
}

impl Default for DvergeConfig {
    fn default() -> Self {
        Self::for_dataset(DatasetKind::Mnist)
    }
}

impl DvergeConfig {
    /// The paper's CIFAR values (ε 0.07, α 0.007, 10 steps), or for the MNIST-like data sets the
    /// TRS authors' MNIST values (ε 0.35, α 0.035, 10 steps); module docs.
    pub fn for_dataset(dataset: DatasetKind) -> Self {
        let eps = if dataset.cifar().is_some() {
            0.07
        } else {
            0.35
        };
        Self {
            eps,
            alpha: eps / 10.0,
            steps: 10,
            layer: None,
            start_from: None,
        }
    }

    /// ε and α finite and > 0.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("eps", self.eps), ("alpha", self.alpha)] {
            ensure!(
                v.is_finite() && v > 0.0,
                "`{name}` must be a finite number > 0, got {v}"
            );
        }
        ensure!(self.layer != Some(0), "`layer` counts from 1");
        Ok(())
    }

    /// The distillation layer of `epoch` for members like `member`; the error names a fixed
    /// layer the member does not have.
    pub fn layer_at(&self, member: &Member, seed: u64, epoch: usize) -> Result<usize> {
        let depth = num_layers(member);
        if let Some(l) = self.layer {
            ensure!(
                l <= depth,
                "`layer` {l} is beyond the member's {depth} layers"
            );
            return Ok(l);
        }
        let at = StepAt {
            seed,
            epoch,
            epochs: 0,
            step: usize::MAX,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(at.rng_seed(1));
        Ok(rng.random_range(1..=depth))
    }
}

/// The code's `Linf_distillation`: `source` moved so that `member`'s layer-`layer` features
/// approach those of `target` (module docs, step 1); detached.
pub fn distill(
    member: &Member,
    source: Tensor<4>,
    target: Tensor<4>,
    layer: usize,
    config: &DvergeConfig,
) -> Tensor<4> {
    let x = source.detach();
    let goal = layer_features(member, target, layer).detach();
    let ball = LinfBudget { eps: config.eps };
    let mut adv = x.clone();
    let mut momentum = x.zeros_like();
    for _ in 0..config.steps {
        let a = adv.clone().detach().require_grad();
        let mse = (layer_features(member, a.clone(), layer) - goal.clone())
            .powi_scalar(2)
            .mean();
        let g = a
            .grad(&mse.backward())
            .map(crate::tensor::standard_layout)
            .expect("the features depend on the input");
        let l1 = g.clone().abs().sum_dims(&[1, 2, 3]).clamp_min(1e-12);
        momentum = momentum + g / l1;
        let next = adv.detach() - momentum.clone().sign().mul_scalar(config.alpha);
        adv = ball.project(next, &x);
    }
    adv.detach()
}

/// One DVERGE step: every member's distilled batch of `source` towards `target` at `layer`, then
/// each active member trained on the others' (module docs, step 2). The metrics are those of the
/// clean source batch, measured without recording gradients.
#[allow(clippy::too_many_arguments)]
pub fn dverge_step(
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
    source: Batch,
    target: Tensor<4>,
    layer: usize,
    config: &DvergeConfig,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> std::result::Result<(Ensemble, StepMetrics), NonFinite> {
    let (x, y) = (source.images, source.labels);
    // The distillation needs gradients with respect to the images only: members whose
    // parameters are not tracked (batch norm still in training mode, as before) spare the
    // backward pass its weight gradients.
    let distilled: Vec<Tensor<4>> = model
        .members
        .iter()
        .map(|m| {
            distill(
                &m.clone().no_grad(),
                x.clone(),
                target.clone(),
                layer,
                config,
            )
        })
        .collect();
    let mut loss: Option<Tensor<1>> = None;
    for (i, m) in model.members.iter().enumerate() {
        for (j, d) in distilled.iter().enumerate() {
            if i == j {
                continue;
            }
            let ce = cross_entropy(m.forward(d.clone()), y.clone());
            loss = Some(match loss {
                None => ce,
                Some(l) => l + ce,
            });
        }
    }
    let logits = model.valid().forward(x.inner()).logits;
    let loss = loss.expect("at least two members");
    update(model, optims, loss, logits, y, l2, lrs, frozen)
}

/// The trained ensemble of run `from` (its final model, or its newest checkpoint), whose members
/// [`check_start`] has checked against the run that starts from it.
pub fn start_from(from: &std::path::Path, device: &Device) -> Result<Ensemble> {
    use anyhow::Context;
    let (_, model) = super::checkpoint::load_run(from, device)
        .with_context(|| format!("`start_from` in [dverge]: cannot load {}", from.display()))?;
    Ok(model)
}

/// Checks that run `from` holds the members `spec` describes, without loading its weights.
pub fn check_start(from: &std::path::Path, spec: &super::checkpoint::ModelSpec) -> Result<()> {
    use anyhow::Context;
    let theirs = super::checkpoint::read_spec(from)
        .with_context(|| format!("`start_from` in [dverge]: cannot load {}", from.display()))?;
    ensure!(
        &theirs == spec,
        "`start_from` in [dverge]: {} describes other members than this run trains ({} of {:?} on {:?} images, normalised with {} mean values); train the start with the same `members`, `model`, `dataset` and `normalize`",
        from.join("model.toml").display(),
        spec.members,
        spec.member.kind,
        spec.member.input_shape,
        spec.member.mean.len()
    );
    Ok(())
}
