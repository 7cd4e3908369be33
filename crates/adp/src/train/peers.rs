//! The training objective as one value ([`Objective`]), and what the steps of the peer defences
//! (GAL, DVERGE, TRS: [`super::gal`], [`super::dverge`], [`super::trs`]) share: the update of
//! the active members from one scalar loss, and the step's metrics.

use burn::optim::ModuleOptimizer;
use burn::prelude::*;

use super::dverge::DvergeConfig;
use super::gal::GalConfig;
use super::trs::TrsConfig;
use super::{NonFinite, StepMetrics};
use crate::loss::{AdpConfig, adp_loss};
use crate::model::input_grad::logits_and_input_grad;
use crate::model::{Ensemble, EnsembleOutput};

/// What a run minimises, with the settings of that method; built by
/// [`super::TrainConfig::training_objective`] from `method` and its section of `config.toml`
/// (`[adp]`, `[gal]`, `[dverge]`, `[trs]`), which keeps the files of earlier versions loading.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// L_ECE, Eq. 2 of Pang et al.
    Ece,
    /// L_ECE − α·H(F) − β·log ED, Eq. 5 of Pang et al.
    Adp(AdpConfig),
    /// Gradient alignment loss (Kariyappa & Qureshi, 2019).
    Gal(GalConfig),
    /// Round-robin distillation of non-robust features (Yang et al., NeurIPS 2020).
    Dverge(DvergeConfig),
    /// Transferability-reduced smooth ensemble (Yang et al., NeurIPS 2021).
    Trs(TrsConfig),
}

/// Where in training a step is: what the schedules of DVERGE (layer per epoch) and TRS (ε growing
/// with the epoch) and the seeded random draws depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepAt {
    /// Seed of the run.
    pub seed: u64,
    /// 0-based epoch.
    pub epoch: usize,
    /// Epochs of the run.
    pub epochs: usize,
    /// 0-based step within the epoch.
    pub step: usize,
}

impl StepAt {
    /// A seed for this step's draws, distinct per (seed, epoch, step, stream).
    pub fn rng_seed(&self, stream: u64) -> u64 {
        let mut h = self.seed ^ 0x9e37_79b9_7f4a_7c15;
        for v in [self.epoch as u64, self.step as u64, stream] {
            h = (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(29);
        }
        h
    }
}

/// Mean cross-entropy of logits `[N, L]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [_, l] = logits.dims();
    let target = labels.one_hot::<2>(l).float().cast(logits.dtype());
    burn::tensor::loss::cross_entropy_with_logits(logits, target)
}

/// Cosine similarity of the rows of `a` and `b` (`[N, D]` → `[N]`), as PyTorch's
/// `F.cosine_similarity(a, b, dim=-1, eps=1e-8)`: each norm clamped below at 1e-8.
pub fn cosine(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let norm = |t: Tensor<2>| t.powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
    let dot = (a.clone() * b.clone()).sum_dim(1);
    (dot / (norm(a) * norm(b))).squeeze_dim(1)
}

/// Each member's logits `[N, L]` and input gradient of its mean cross-entropy, flattened to
/// `[N, D]`, the latter differentiable again ([`crate::model::input_grad`]).
pub fn logits_and_grads(
    model: &Ensemble,
    x: Tensor<4>,
    labels: Tensor<1, Int>,
) -> (Vec<Tensor<2>>, Vec<Tensor<2>>) {
    model
        .members
        .iter()
        .map(|m| {
            let (z, g) = logits_and_input_grad(m, x.clone(), labels.clone());
            (z, g.flatten::<2>(1, 3))
        })
        .unzip()
}

/// Adds the L2 penalty of the active members to `loss`, back-propagates it once and steps each
/// active member with its own optimizer; `logits` (`[N, K, L]`, the members on the clean batch)
/// and `labels` give the metrics. A non-finite loss is reported before any update.
#[allow(clippy::too_many_arguments)]
pub fn update(
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
    loss: Tensor<1>,
    logits: Tensor<3>,
    labels: Tensor<1, Int>,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> Result<(Ensemble, StepMetrics), NonFinite> {
    let (model, value) = super::epoch::descend(model, optims, loss, l2, lrs, frozen)?;
    let logits = logits.detach();
    let parts = adp_loss(logits.clone(), labels.clone(), &AdpConfig::new(0.0, 0.0));
    let metrics = StepMetrics {
        loss: value,
        ece: parts.ece.into_scalar::<f32>() as f64,
        entropy: parts.entropy.into_scalar::<f32>() as f64,
        log_det: parts.log_det.into_scalar::<f32>() as f64,
        member_ce: crate::metrics::member_cross_entropy(logits.clone(), labels.clone()),
        correct: crate::metrics::count_correct(EnsembleOutput { logits }.mean_probs(), labels),
    };
    Ok((model, metrics))
}

/// Central finite differences (f64) of `f` of `parts` tensors `[n, d]` against autodiff: the
/// check of every peer loss.
#[cfg(test)]
pub(crate) fn check_f64_gradient(
    f: impl Fn(&[Tensor<2>]) -> Tensor<1>,
    parts: usize,
    [n, d]: [usize; 2],
    seed: u64,
) {
    use burn::tensor::{DType, TensorCreationOptions};
    let base = adp_kernels::testing::values(parts * n * d, seed);
    let make = |v: &[f64], device: &Device| -> Vec<Tensor<2>> {
        v.chunks(n * d)
            .map(|c| {
                let options = TensorCreationOptions::new(device.clone()).with_dtype(DType::F64);
                Tensor::<2>::from_data(TensorData::new(c.to_vec(), [n, d]), options)
            })
            .collect()
    };
    let ad = crate::device::cpu().autodiff();
    let leaves: Vec<Tensor<2>> = make(&base, &ad)
        .into_iter()
        .map(|t| t.require_grad())
        .collect();
    assert_eq!(leaves[0].dtype(), DType::F64, "the check needs f64");
    let grads = f(&leaves).backward();
    let analytic: Vec<f64> = leaves
        .iter()
        .flat_map(|t| {
            t.grad(&grads)
                .map(|g| g.into_data().try_into_vec_as::<f64>().unwrap())
                .unwrap_or_else(|| vec![0.0; n * d])
        })
        .collect();
    let plain = crate::device::cpu();
    let eval = |v: Vec<f64>| -> f64 {
        f(&make(&v, &plain))
            .into_data()
            .try_into_vec_as::<f64>()
            .unwrap()[0]
    };
    let h = 1e-6;
    let mut nonzero = 0;
    for (i, a) in analytic.iter().enumerate() {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (eval(plus) - eval(minus)) / (2.0 * h);
        assert!(
            (a - numeric).abs() <= 1e-6 * (1.0 + numeric.abs()),
            "d/d[{i}]: autodiff {a} vs finite difference {numeric}"
        );
        nonzero += usize::from(a.abs() > 1e-9);
    }
    assert!(
        nonzero > analytic.len() / 2,
        "mostly zero gradients test little"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_is_one_for_parallel_rows_and_minus_one_for_opposite_ones() {
        let d = crate::device::cpu();
        let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, -1.0]], &d);
        let b = Tensor::<2>::from_floats([[2.0, 4.0], [-3.0, 1.0]], &d);
        let c: Vec<f32> = cosine(a, b).into_data().try_into_vec_as().unwrap();
        assert!(
            (c[0] - 1.0).abs() < 1e-6 && (c[1] + 1.0).abs() < 1e-6,
            "{c:?}"
        );
    }

    #[test]
    fn step_seeds_differ_per_step_and_stream() {
        let at = StepAt {
            seed: 1,
            epoch: 0,
            epochs: 2,
            step: 0,
        };
        let next = StepAt { step: 1, ..at };
        assert_ne!(at.rng_seed(0), next.rng_seed(0));
        assert_ne!(at.rng_seed(0), at.rng_seed(1));
        assert_eq!(at.rng_seed(3), at.rng_seed(3));
    }
}
