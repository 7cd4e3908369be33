//! TRS, Yang et al., *TRS: Transferability Reduced Ensemble via Promoting Gradient Diversity and
//! Model Smoothness* (NeurIPS 2021), as its official code trains it
//! (AI-secure/Transferability-Reduced-Smooth-Ensemble, `train/Empirical/trainer.py`,
//! `TRS_Trainer` with `--plus-adv`, the setting of its `script_train.py`):
//!
//! L = Σ_k CE_k + scale · (coeff · L_cos + λ · L_smooth),
//!
//! - `L_cos = mean_{i<j} mean_n |cos(g_i,n, g_j,n)|` (the paper's Eq. 4 gradient-similarity loss;
//!   the code's `Cosine`), `g_k = ∂ mean CE(F_k(x), y) / ∂x` on the clean batch;
//! - `L_smooth = (1/K) Σ_k 2 · mean_n ‖g̃_k,n‖²` (the model-smoothness loss; the code's
//!   `Magnitude`), `g̃_k` the same gradient on a batch whose first ⌊N/2⌋ images are clean and whose
//!   others are pushed by 6 steps of ε/3 of signed ascent on the members' mean smoothness loss,
//!   from a uniform start in the ε-ball, ε growing linearly from `init_eps` to `adv_eps` over the
//!   epochs (`cureps = (adv_eps − init_eps) · epoch / epochs + init_eps`);
//! - scale = 5, coeff = 2, λ = 2, init_eps = 0.1, adv_eps = 0.2: the defaults of `script_train.py`
//!   (whose data set is MNIST).
//!
//! Both terms are functions of input gradients, differentiated again through
//! [`crate::model::input_grad`].

use anyhow::{Result, ensure};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::peers::{StepAt, cosine, cross_entropy, logits_and_grads, update};
use super::{NonFinite, StepMetrics};
use crate::attack::LinfBudget;
use crate::data::Batch;
use crate::model::Ensemble;

/// TRS settings: `[trs]` in `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrsConfig {
    /// Overall weight of the two regularisers (`--scale`, 5).
    pub scale: f64,
    /// Weight of the gradient-similarity loss (`--coeff`, 2).
    pub coeff: f64,
    /// Weight of the smoothness loss (`--lamda`, 2).
    pub lambda: f64,
    /// ε of the smoothness examples at the first epoch (`--init-eps`, 0.1).
    pub init_eps: f64,
    /// ε they grow towards by the last epoch (`--adv-eps`, 0.2).
    pub adv_eps: f64,
    /// Steps of the smoothness attack (the code's `PGD`: 6, each of ε/3).
    pub steps: usize,
}

impl Default for TrsConfig {
    fn default() -> Self {
        Self {
            scale: 5.0,
            coeff: 2.0,
            lambda: 2.0,
            init_eps: 0.1,
            adv_eps: 0.2,
            steps: 6,
        }
    }
}

impl TrsConfig {
    /// Every weight and ε finite and >= 0.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("scale", self.scale),
            ("coeff", self.coeff),
            ("lambda", self.lambda),
            ("init_eps", self.init_eps),
            ("adv_eps", self.adv_eps),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "`{name}` must be a finite number >= 0, got {v}"
            );
        }
        Ok(())
    }

    /// ε of the smoothness examples during `epoch` of `epochs`.
    pub fn eps_at(&self, epoch: usize, epochs: usize) -> f64 {
        (self.adv_eps - self.init_eps) * epoch as f64 / epochs as f64 + self.init_eps
    }
}

/// `2 · mean_n ‖g_n‖²` of gradients `[N, D]`, the code's `Magnitude`.
pub fn magnitude(g: Tensor<2>) -> Tensor<1> {
    g.powi_scalar(2).sum_dim(1).mean().mul_scalar(2.0)
}

/// `mean_{i<j} mean_n |cos(g_i,n, g_j,n)|`.
pub fn similarity(grads: &[Tensor<2>]) -> Tensor<1> {
    let mut total = None;
    let mut pairs = 0;
    for i in 0..grads.len() {
        for j in i + 1..grads.len() {
            let c = cosine(grads[i].clone(), grads[j].clone()).abs().mean();
            total = Some(match total {
                None => c,
                Some(t) => t + c,
            });
            pairs += 1;
        }
    }
    total
        .expect("at least two members")
        .div_scalar(pairs as f64)
}

/// `(1/K) Σ_k magnitude(g_k)`.
pub fn smoothness(grads: &[Tensor<2>]) -> Tensor<1> {
    let k = grads.len() as f64;
    grads
        .iter()
        .map(|g| magnitude(g.clone()))
        .reduce(|a, b| a + b)
        .expect("at least two members")
        .div_scalar(k)
}

/// The TRS objective from the members' logits on the clean batch and their input gradients on
/// the clean (`grads`) and the smoothness (`smooth_grads`) batch.
pub fn trs_loss(
    logits: &[Tensor<2>],
    grads: &[Tensor<2>],
    smooth_grads: &[Tensor<2>],
    labels: Tensor<1, Int>,
    config: &TrsConfig,
) -> Tensor<1> {
    let ce = logits
        .iter()
        .map(|z| cross_entropy(z.clone(), labels.clone()))
        .reduce(|a, b| a + b)
        .expect("at least two members");
    let reg = similarity(grads).mul_scalar(config.coeff)
        + smoothness(smooth_grads).mul_scalar(config.lambda);
    ce + reg.mul_scalar(config.scale)
}

/// The code's `PGD`: `steps` signed steps of ε/3 that increase the members' mean smoothness loss,
/// from a uniform start in the ε-ball, projected on the ball and `[0, 1]`; detached.
pub fn smoothness_attack(
    model: &Ensemble,
    x: Tensor<4>,
    labels: Tensor<1, Int>,
    eps: f64,
    steps: usize,
    rng_seed: u64,
) -> Tensor<4> {
    let x = x.detach();
    let dims = x.dims();
    let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed);
    let noise: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| rng.random_range(-1.0f32..=1.0) * eps as f32)
        .collect();
    let noise = Tensor::<1>::from_floats(noise.as_slice(), &x.device()).reshape(dims);
    let ball = LinfBudget { eps };
    let mut adv = (x.clone() + noise).clamp(0.0, 1.0);
    for _ in 0..steps {
        let a = adv.clone().detach().require_grad();
        let (_, grads) = logits_and_grads(model, a.clone(), labels.clone());
        let g = a
            .grad(&smoothness(&grads).backward())
            .map(crate::tensor::standard_layout)
            .expect("the smoothness loss depends on the input");
        let next = adv.detach() + g.sign().mul_scalar(eps / 3.0);
        adv = ball.project(next, &x);
    }
    adv.detach()
}

/// One TRS step on `batch` at `at` (its ε schedule and the attack's seeded start).
#[allow(clippy::too_many_arguments)]
pub fn trs_step(
    model: Ensemble,
    optims: &mut [ModuleOptimizer],
    batch: Batch,
    config: &TrsConfig,
    at: StepAt,
    l2: f64,
    lrs: &[f64],
    frozen: &[bool],
) -> std::result::Result<(Ensemble, StepMetrics), NonFinite> {
    let (x, y) = (batch.images, batch.labels);
    let [n, c, h, w] = x.dims();
    let (logits, grads) = logits_and_grads(&model, x.clone(), y.clone());
    let half = n / 2;
    let eps = config.eps_at(at.epoch, at.epochs);
    let clean = (half > 0).then(|| x.clone().slice([0..half, 0..c, 0..h, 0..w]).detach());
    // The attack needs gradients with respect to the images only: a copy whose parameters are
    // not tracked spares its backward passes the weight gradients.
    let attacked = smoothness_attack(
        &model.clone().no_grad(),
        x.slice([half..n, 0..c, 0..h, 0..w]),
        y.clone().slice(half..n),
        eps,
        config.steps,
        at.rng_seed(0),
    );
    let mixed = match clean {
        Some(clean) => Tensor::cat(vec![clean, attacked], 0),
        None => attacked,
    };
    let (_, smooth_grads) = logits_and_grads(&model, mixed, y.clone());
    let loss = trs_loss(&logits, &grads, &smooth_grads, y.clone(), config);
    let logits = Tensor::stack::<3>(logits, 1);
    update(model, optims, loss, logits, y, l2, lrs, frozen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::peers::check_f64_gradient;

    /// The TRS objective as a function of three members' logits, clean gradients and smoothness
    /// gradients (parts 0-2, 3-5, 6-8), all `[4, 3]`.
    #[test]
    fn trs_loss_gradient_matches_finite_differences() {
        check_f64_gradient(
            |p| {
                let y =
                    Tensor::from_data(TensorData::new(vec![1i64, 0, 2, 2], [4]), &p[0].device());
                trs_loss(&p[..3], &p[3..6], &p[6..], y, &TrsConfig::default())
            },
            9,
            [4, 3],
            33,
        );
    }

    /// A few TRS steps with a large scale lower both regularisers on the batch they train on.
    #[test]
    fn trs_steps_lower_the_gradient_similarity_and_magnitude() {
        use crate::model::{ModelKind, tiny_config};
        let ad = crate::device::cpu().autodiff();
        ad.seed(9);
        let mut model = Ensemble::new(&tiny_config(ModelKind::Cnn, 3), 3, &ad);
        let v: Vec<f32> = adp_kernels::testing::values(8 * 64, 4)
            .iter()
            .map(|v| ((v + 2.0) / 4.0) as f32)
            .collect();
        let x = Tensor::<1>::from_data(TensorData::new(v, [8 * 64]), &ad).reshape([8, 1, 8, 8]);
        let y = Tensor::from_data(TensorData::new(vec![0i64, 1, 2, 0, 1, 2, 0, 1], [8]), &ad);
        let regularisers = |m: &Ensemble| {
            let (_, g) = logits_and_grads(&m.valid(), x.clone().inner(), y.clone().inner());
            [
                similarity(&g).into_scalar::<f32>(),
                smoothness(&g).into_scalar::<f32>(),
            ]
        };
        let before = regularisers(&model);
        let mut optims: Vec<ModuleOptimizer> = (0..3)
            .map(|_| burn::optim::AdamConfig::new().init())
            .collect();
        let config = TrsConfig {
            scale: 100.0,
            steps: 1,
            ..TrsConfig::default()
        };
        for step in 0..10 {
            let batch = Batch {
                images: x.clone(),
                labels: y.clone(),
            };
            let at = StepAt {
                seed: 1,
                epoch: 0,
                epochs: 1,
                step,
            };
            model = trs_step(
                model,
                &mut optims,
                batch,
                &config,
                at,
                0.0,
                &[1e-3; 3],
                &[false; 3],
            )
            .unwrap()
            .0;
        }
        let after = regularisers(&model);
        assert!(
            after[0] < before[0] && after[1] < before[1],
            "similarity, smoothness {before:?} -> {after:?}"
        );
    }

    #[test]
    fn the_smoothness_budget_grows_linearly_from_init_eps() {
        let c = TrsConfig::default();
        assert!((c.eps_at(0, 10) - 0.1).abs() < 1e-12);
        assert!((c.eps_at(5, 10) - 0.15).abs() < 1e-12);
    }

    #[test]
    fn magnitude_is_twice_the_mean_squared_norm() {
        let d = crate::device::cpu();
        let g = Tensor::<2>::from_floats([[3.0, 4.0], [0.0, 1.0]], &d);
        assert!((magnitude(g).into_scalar::<f32>() - 26.0).abs() < 1e-5);
    }
}
