//! GAL, the gradient alignment loss of Kariyappa & Qureshi, *Improving Adversarial Robustness of
//! Ensembles with Diversity Training* (2019), as the DVERGE repository (zjysteven/DVERGE,
//! `train/train_gal.py`) ports it:
//!
//! L = (1/K) Σ_k CE_k + λ · mean_n log( Σ_{i<j} exp(cos(g_i,n, g_j,n)) + 1e-20 ),
//!
//! with `g_k = ∂ mean CE(F_k(x), y) / ∂x` flattened per example and λ = 0.5 (its `--lambda`
//! default, the GAL paper's coherence weight). The gradient of the penalty with respect to the
//! parameters is the double backpropagation of [`crate::model::input_grad`].

use anyhow::{Result, ensure};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use burn::optim::ModuleOptimizer;

use super::peers::{cosine, cross_entropy, logits_and_grads, update};
use super::{NonFinite, StepMetrics};
use crate::data::Batch;
use crate::model::Ensemble;

/// GAL settings: `[gal]` in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GalConfig {
    /// λ, the weight of the coherence (log-sum-exp of cosines) term (DVERGE repo: 0.5).
    pub lambda: f64,
}

impl Default for GalConfig {
    fn default() -> Self {
        Self { lambda: 0.5 }
    }
}

impl GalConfig {
    /// λ must be finite and >= 0.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.lambda.is_finite() && self.lambda >= 0.0,
            "`lambda` must be a finite number >= 0, got {}",
            self.lambda
        );
        Ok(())
    }
}

/// The coherence term `mean_n log(Σ_{i<j} exp(cos(g_i,n, g_j,n)) + 1e-20)` of the members' input
/// gradients `grads[k]` (`[N, D]`).
pub fn coherence(grads: &[Tensor<2>]) -> Tensor<1> {
    let mut pairs = Vec::new();
    for i in 0..grads.len() {
        for j in i + 1..grads.len() {
            pairs.push(cosine(grads[i].clone(), grads[j].clone()));
        }
    }
    let cos = Tensor::stack::<2>(pairs, 1);
    cos.exp().sum_dim(1).add_scalar(1e-20).log().mean()
}

/// The GAL objective from each member's logits `[N, L]` and input gradient `[N, D]`.
pub fn gal_loss(
    logits: &[Tensor<2>],
    grads: &[Tensor<2>],
    labels: Tensor<1, Int>,
    config: &GalConfig,
) -> Tensor<1> {
    let k = logits.len() as f64;
    let ce = logits
        .iter()
        .map(|z| cross_entropy(z.clone(), labels.clone()))
        .reduce(|a, b| a + b)
        .expect("at least two members");
    ce.div_scalar(k) + coherence(grads).mul_scalar(config.lambda)
}

/// One GAL step: the objective on `batch`, back-propagated through the input gradients, and an
/// Adam step of each active member.
pub fn gal_step(
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
    batch: Batch,
    config: &GalConfig,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> std::result::Result<(Ensemble, StepMetrics), NonFinite> {
    let (logits, grads) = logits_and_grads(&model, batch.images, batch.labels.clone());
    let loss = gal_loss(&logits, &grads, batch.labels.clone(), config);
    let logits = Tensor::stack::<3>(logits, 1);
    update(model, optims, loss, logits, batch.labels, l2, lrs, frozen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::peers::check_f64_gradient;

    fn labels(device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(vec![0i64, 2, 1, 2], [4]), device)
    }

    /// The whole GAL objective as a function of three members' logits `[4, 3]` and input
    /// gradients `[4, 3]` (the parts 0-2 logits, 3-5 gradients).
    #[test]
    fn gal_loss_gradient_matches_finite_differences() {
        check_f64_gradient(
            |p| {
                gal_loss(
                    &p[..3],
                    &p[3..],
                    labels(&p[0].device()),
                    &GalConfig::default(),
                )
            },
            6,
            [4, 3],
            21,
        );
    }

    /// A few GAL steps with a large λ lower the coherence of the members' input gradients on the
    /// batch they train on: the penalty's gradient points the right way through the double
    /// backward.
    #[test]
    fn gal_steps_lower_the_coherence_of_the_input_gradients() {
        use crate::model::{Ensemble, ModelKind, tiny_config};
        let ad = crate::device::cpu().autodiff();
        ad.seed(9);
        let mut model = Ensemble::new(&tiny_config(ModelKind::Cnn, 3), 3, &ad);
        let x = Tensor::<1>::from_data(
            TensorData::new(
                adp_kernels::testing::values(8 * 64, 4)
                    .iter()
                    .map(|v| ((v + 2.0) / 4.0) as f32)
                    .collect::<Vec<_>>(),
                [8 * 64],
            ),
            &ad,
        )
        .reshape([8, 1, 8, 8]);
        let y = Tensor::from_data(TensorData::new(vec![0i64, 1, 2, 0, 1, 2, 0, 1], [8]), &ad);
        let coherence_now = |m: &Ensemble| {
            let (_, g) = logits_and_grads(&m.valid(), x.clone().inner(), y.clone().inner());
            coherence(&g).into_scalar::<f32>()
        };
        let before = coherence_now(&model);
        let mut optims: Vec<ModuleOptimizer> = (0..3)
            .map(|_| burn::optim::AdamConfig::new().init())
            .collect();
        let config = GalConfig { lambda: 100.0 };
        for _ in 0..10 {
            let batch = Batch {
                images: x.clone(),
                labels: y.clone(),
            };
            model = gal_step(
                model,
                &mut optims,
                batch,
                &config,
                0.0,
                &[1e-3; 3],
                &[false; 3],
            )
            .unwrap()
            .0;
        }
        let after = coherence_now(&model);
        assert!(after < before - 0.05, "coherence {before} -> {after}");
    }

    #[test]
    fn coherence_of_identical_gradients_is_log_of_the_pair_count_times_e() {
        let d = crate::device::cpu();
        let g = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &d);
        let c = coherence(&[g.clone(), g.clone(), g]).into_scalar::<f32>();
        // Three pairs, each cosine 1: log(3e).
        assert!((c - (3f32.ln() + 1.0)).abs() < 1e-5, "{c}");
    }
}
