//! One epoch of Algorithm 1: the training step of ECE and ADP, the epoch loop over the batches
//! (dispatching to the peer methods' steps), the initial ensemble, the finiteness checks after an
//! epoch and `history.csv`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use serde::{Deserialize, Serialize};

use super::adversarial::adversarial_batch;
use super::checkpoint::{EpochProgress, ModelSpec, save_within};
use super::peers::{self, Objective};
use super::resume::last_good;
use super::{TrainConfig, TrainState, dverge, gal, trs};
use crate::data::{Batcher, Dataset};
use crate::device::DeviceKind;
use crate::loss::{AdpConfig, adp_loss};
use crate::model::Ensemble;

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

/// Adds the L2 penalty of the members still training to `loss`, back-propagates it, and steps
/// each such member's optimizer; frozen members are returned unchanged. Returns the updated
/// ensemble and the penalised loss, or [`NonFinite`] before any update.
pub(crate) fn descend(
    mut model: Ensemble,
    optims: &mut [ModuleOptimizer],
    loss: Tensor<1>,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> std::result::Result<(Ensemble, f64), NonFinite> {
    let mut total = loss;
    if l2 > 0.0 {
        for (m, _) in model.members.iter().zip(frozen).filter(|(_, f)| !**f) {
            let penalty = crate::model::moved(m.conv_l2(), &total.device());
            total = total + penalty.mul_scalar(l2);
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
            row_major(optims[j].step(lrs[j], m, g))
        })
        .collect();
    Ok((model, value))
}

/// `member` with each parameter stored in its logical, row-major order.
///
/// An optimizer step leaves a parameter in the memory layout of its gradient, which on the
/// cubecl backends (wgpu, CUDA) is channels-last for a convolution's weights, while a checkpoint
/// loads every parameter row-major. cubecl autotunes its convolutions per operand layout (the
/// key of burn-cubecl's input-gradient kernel holds the weights' stride alignment) and may pick
/// a kernel for one layout that sums in another order than its pick for the other. With the
/// parameters row-major after every step, the first step after a resume runs the kernels of the
/// uninterrupted run's step, not the other layout's. A parameter that is row-major already is not
/// copied ([`crate::tensor::standard_layout`]).
fn row_major(member: crate::model::Member) -> crate::model::Member {
    member.map(&mut RowMajor)
}

/// The [`row_major`] mapper.
struct RowMajor;

impl ModuleMapper for RowMajor {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let tracked = t.is_require_grad();
            // The reshapes make a tensor of the graph; detached again, it is a leaf once more.
            crate::tensor::standard_layout(t.detach())
                .detach()
                .set_require_grad(tracked)
        })
    }
}

/// One step of Algorithm 1 on `batch`: the objective (ECE or ADP, Eq. 5, plus the L2 penalty on
/// the active members' conv kernels) is back-propagated once and each active member k takes an
/// Adam step with learning rate `lrs[k]`; frozen members are left untouched. A non-finite
/// objective is reported before any update.
pub fn train_step(
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
    batch: crate::data::Batch,
    objective: &AdpConfig,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> std::result::Result<(Ensemble, StepMetrics), NonFinite> {
    let out = model.forward(batch.images);
    let loss = adp_loss(out.logits.clone(), batch.labels.clone(), objective);
    let (model, value) = descend(model, optims, loss.total.clone(), l2, lrs, frozen)?;
    let logits = out.logits.detach();
    let metrics = StepMetrics {
        loss: value,
        ece: loss.ece.into_scalar::<f32>() as f64,
        entropy: loss.entropy.into_scalar::<f32>() as f64,
        log_det: loss.log_det.into_scalar::<f32>() as f64,
        member_ce: crate::metrics::member_cross_entropy(logits.clone(), batch.labels.clone()),
        correct: crate::metrics::count_correct(
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

/// Runs the epoch after `state.epoch` finished ones, from its start or from `from`, the
/// progress of a checkpoint within it; takes a checkpoint within the epoch every
/// `config.checkpoint_minutes`. The metrics' `seconds` count the epoch's time before `from`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_epoch(
    config: &TrainConfig,
    objective: &AdpConfig,
    data: &Dataset,
    mut model: Ensemble,
    optims: &mut [ModuleOptimizer],
    state: &TrainState,
    from: Option<EpochProgress>,
    device: &Device,
    run: &Path,
) -> Result<(Ensemble, EpochMetrics)> {
    let epoch = state.epoch;
    let started = Instant::now();
    let mut last_checkpoint = Instant::now();
    let interval = Duration::from_secs_f64(60.0 * config.checkpoint_minutes);
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
    let mut p = from.unwrap_or(EpochProgress {
        epoch,
        steps: 0,
        sums: [0.0; 5],
        member_ce: vec![0.0; k],
        seen: 0,
        seconds: 0.0,
    });
    let before = p.seconds;
    bar.inc(p.steps as u64);
    for i in p.steps..batcher.num_batches() {
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
                    "the loss became {value} at epoch {}, step {}; nothing was saved from this epoch. Last good checkpoint: {last}. Lower `lr` or check the data",
                    epoch + 1,
                    i + 1
                );
            }
        };
        model = next;
        for (acc, ce) in p.member_ce.iter_mut().zip(&m.member_ce) {
            *acc += ce * n as f64;
        }
        for (s, v) in p.sums.iter_mut().zip([m.loss, m.ece, m.entropy, m.log_det]) {
            *s += v * n as f64;
        }
        p.sums[4] += m.correct as f64;
        p.seen += n;
        p.steps = i + 1;
        bar.inc(1);
        if i % 10 == 0 {
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% logED {:.2}",
                p.sums[0] / p.seen as f64,
                100.0 * p.sums[4] / p.seen as f64,
                p.sums[3] / p.seen as f64
            ));
        }
        // The epoch's own checkpoint follows its last step.
        if config.checkpoint_minutes > 0.0
            && last_checkpoint.elapsed() >= interval
            && p.steps < batcher.num_batches()
        {
            p.seconds = before + started.elapsed().as_secs_f64();
            save_within(run, config, &model, optims, state, &p)?;
            last_checkpoint = Instant::now();
        }
    }
    bar.finish();
    let s = p.seen as f64;
    Ok((
        model,
        EpochMetrics {
            epoch: epoch + 1,
            loss: p.sums[0] / s,
            ece: p.sums[1] / s,
            entropy: p.sums[2] / s,
            log_det: p.sums[3] / s,
            accuracy: p.sums[4] / s,
            member_ce: p.member_ce.iter().map(|c| c / s).collect(),
            lr: config.lr_at(epoch, 0),
            frozen: Vec::new(),
            seconds: before + started.elapsed().as_secs_f64(),
        },
    ))
}

/// The first parameter or buffer of `model` holding a NaN or an infinity, named.
pub(super) fn non_finite_weights(model: &Ensemble) -> Option<String> {
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
pub(super) fn check_finite(
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

pub(super) fn write_history(run: &Path, history: &[EpochMetrics]) -> Result<()> {
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
