//! Indicators of a failed robustness evaluation, in the spirit of Pintor et al. (NeurIPS 2022,
//! "Indicators of Attack Failure") and of the checks Carlini et al. (2019, "On Evaluating
//! Adversarial Robustness", §5) and Tramer et al. (2020) ask for. Each compares what the gradient
//! attacks achieved with what they must achieve if they work:
//!
//! * [`Failure::GradientFreeWins`]: Square ([`Square`], gradient-free) leaves fewer examples
//!   correct than the gradient attacks, by more than the binomial standard error: the gradients
//!   mislead the attacks (masking, obfuscation).
//! * [`Failure::AccuracyDoesNotVanish`]: APGD-CE at ε = 1, where any image can be reached, leaves
//!   an example correct: the attack cannot move the model even without a budget.
//! * [`Failure::NoiseAsStrong`]: random noise (a random corner of the ε-ball) leaves no more
//!   examples correct than the gradient attacks: their gradient steps are worth nothing.
//! * [`Failure::ZeroGradients`]: more than 1% of the examples have an exactly zero input
//!   gradient of −log F_y.
//! * [`Failure::TransferWins`]: APGD-CE run on a surrogate (for example an undefended model
//!   trained on the same data) and transferred leaves fewer examples correct than the white-box
//!   gradient attacks, by more than the binomial standard error: attacking the defence's own
//!   gradients is worse than attacking another model's, so those gradients mislead.
//!
//! The gradient attacks' accuracy is the lower of APGD-CE run here and any gradient attack
//! evaluated at the same ε.

use anyhow::{Result, ensure};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use super::{RobustResult, batch_seed};
use crate::attack::{
    Apgd, Attack, AttackOutput, AttackSpec, Classifier, Goal, LinfBudget, MainParameter, Objective,
    Square, input_gradient,
};
use crate::data::{Batch, Batcher, Dataset};

/// Fraction of the examples above which zero gradients fire [`Failure::ZeroGradients`].
pub const ZERO_GRADIENT_LIMIT: f64 = 0.01;

/// An indicator that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// Square beat the gradient attacks.
    GradientFreeWins,
    /// Accuracy under APGD-CE at ε = 1 is not 0.
    AccuracyDoesNotVanish,
    /// Random noise of size ε is as strong as the gradient attacks.
    NoiseAsStrong,
    /// More than 1% of the input gradients are exactly zero.
    ZeroGradients,
    /// Examples crafted on a surrogate beat the white-box gradient attacks.
    TransferWins,
}

/// The attacks the indicators run: APGD-CE's iterations (at ε and along the sweep) and Square's
/// queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IndicatorSettings {
    /// Iterations of APGD-CE (authors' default 100).
    pub apgd_iterations: usize,
    /// Queries of Square (authors' default 5,000).
    pub square_queries: usize,
}

impl Default for IndicatorSettings {
    fn default() -> Self {
        Self {
            apgd_iterations: crate::attack::apgd::DEFAULT_ITERATIONS,
            square_queries: crate::attack::square::DEFAULT_QUERIES,
        }
    }
}

/// Accuracy under APGD-CE at one budget of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Budget ε.
    pub eps: f64,
    /// Accuracy under APGD-CE.
    pub accuracy: f64,
}

/// What the indicators measured at one ε, and which fired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Indicators {
    /// Budget ε.
    pub eps: f64,
    /// Examples evaluated.
    pub examples: usize,
    /// Clean accuracy.
    pub clean_accuracy: f64,
    /// Lowest accuracy of the gradient attacks at ε (APGD-CE here and those evaluated).
    pub gradient_accuracy: f64,
    /// Its binomial standard error √(a(1 − a)/n).
    pub gradient_std_error: f64,
    /// Accuracy under Square.
    pub square_accuracy: f64,
    /// Accuracy under a random corner of the ε-ball.
    pub noise_accuracy: f64,
    /// Accuracy under APGD-CE at 2ε, 4ε, … and 1.
    pub sweep: Vec<SweepPoint>,
    /// Fraction of examples whose input gradient of −log F_y is exactly zero.
    pub zero_gradient: f64,
    /// Accuracy under APGD-CE crafted on the surrogate and transferred, where one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_accuracy: Option<f64>,
    /// The indicators that fired.
    pub fired: Vec<Failure>,
}

/// The binomial standard error √(a(1 − a)/n) of an accuracy `a` measured on `n` examples.
pub fn std_error(accuracy: f64, n: usize) -> f64 {
    (accuracy * (1.0 - accuracy) / n.max(1) as f64).sqrt()
}

/// The budgets of the ε sweep: 2ε, 4ε, … while below 1, then 1.
pub fn sweep_budgets(eps: f64) -> Vec<f64> {
    let mut budgets = Vec::new();
    let mut e = 2.0 * eps;
    while e < 1.0 {
        budgets.push(e);
        e *= 2.0;
    }
    budgets.push(1.0);
    budgets
}

/// A random corner of the ε-ball, x + ε·s with s uniform in {−1, 1}ⁿ, clipped to [0, 1]: the
/// random-noise baseline of the indicators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomNoise {
    /// L∞ size ε.
    pub eps: f64,
}

impl Attack for RandomNoise {
    fn name(&self) -> String {
        format!("RandomNoise(eps={})", self.eps)
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let x0 = images.detach().without_autodiff();
        let s = Tensor::<4>::random(x0.shape(), Distribution::Uniform(-1.0, 1.0), &x0.device());
        let x =
            LinfBudget { eps: self.eps }.project(x0.clone() + s.sign().mul_scalar(self.eps), &x0);
        AttackOutput::judge(model, goal, &x0, x)
    }
}

/// Number of examples of a batch whose input gradient of −log F_y is exactly zero.
pub fn zero_gradients(model: &dyn Classifier, images: &Tensor<4>, labels: Tensor<1, Int>) -> usize {
    let g = input_gradient(model, images, &Goal::Untargeted(labels));
    let g_abs = g.abs().flatten::<2>(1, 3).sum_dim(1).flatten::<1>(0, 1);
    crate::attack::bools(g_abs.equal_elem(0.0))
        .iter()
        .filter(|z| **z)
        .count()
}

/// What the indicators count on whole batches of the test set, at one ε: the shards of an
/// evaluation each count their batches, and [`IndicatorCounts::add`] sums them into the counts
/// of the whole test set, from which [`IndicatorCounts::judge`] gives the [`Indicators`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndicatorCounts {
    /// Budget ε.
    pub eps: f64,
    /// Examples counted.
    pub examples: usize,
    /// Examples classified correctly.
    pub clean: usize,
    /// Examples whose input gradient of −log F_y is exactly zero.
    pub zero_gradient: usize,
    /// Examples still correct under APGD-CE at ε.
    pub apgd: usize,
    /// Under Square.
    pub square: usize,
    /// Under a random corner of the ε-ball.
    pub noise: usize,
    /// Under APGD-CE at each budget of [`sweep_budgets`], in order.
    pub sweep: Vec<usize>,
    /// Under APGD-CE crafted on the surrogate and transferred, where one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<usize>,
}

impl IndicatorCounts {
    /// Adds the counts of the next batches (another shard's) to these.
    pub fn add(&mut self, other: &Self) -> Result<()> {
        ensure!(
            other.eps == self.eps
                && other.sweep.len() == self.sweep.len()
                && other.transfer.is_some() == self.transfer.is_some(),
            "indicator counts at ε = {} (sweep of {}, transfer {}) cannot be added to those at \
             ε = {} (sweep of {}, transfer {})",
            other.eps,
            other.sweep.len(),
            other.transfer.is_some(),
            self.eps,
            self.sweep.len(),
            self.transfer.is_some()
        );
        self.examples += other.examples;
        self.clean += other.clean;
        self.zero_gradient += other.zero_gradient;
        self.apgd += other.apgd;
        self.square += other.square;
        self.noise += other.noise;
        for (a, b) in self.sweep.iter_mut().zip(&other.sweep) {
            *a += b;
        }
        if let (Some(a), Some(b)) = (&mut self.transfer, other.transfer) {
            *a += b;
        }
        Ok(())
    }

    /// The accuracies and the indicators that fire. `reported` is the lowest accuracy of the
    /// gradient attacks already evaluated at this ε, if any.
    pub fn judge(&self, reported: Option<f64>) -> Indicators {
        let n = self.examples.max(1) as f64;
        let own = self.apgd as f64 / n;
        let gradient_accuracy = reported.map_or(own, |r| r.min(own));
        let gradient_std_error = std_error(gradient_accuracy, self.examples);
        let square_accuracy = self.square as f64 / n;
        let noise_accuracy = self.noise as f64 / n;
        let sweep: Vec<SweepPoint> = (sweep_budgets(self.eps).into_iter().zip(&self.sweep))
            .map(|(eps, &c)| SweepPoint {
                eps,
                accuracy: c as f64 / n,
            })
            .collect();
        let transfer_accuracy = self.transfer.map(|c| c as f64 / n);
        let zero_gradient = self.zero_gradient as f64 / n;
        // "Beats the gradient attacks": lower by more than their standard error (and by at least
        // one example).
        let beats = |accuracy: f64| accuracy < gradient_accuracy - gradient_std_error.max(0.5 / n);
        let mut fired = Vec::new();
        if beats(square_accuracy) {
            fired.push(Failure::GradientFreeWins);
        }
        if sweep.last().is_some_and(|p| p.accuracy > 0.0) {
            fired.push(Failure::AccuracyDoesNotVanish);
        }
        if gradient_accuracy > 0.0 && noise_accuracy <= gradient_accuracy {
            fired.push(Failure::NoiseAsStrong);
        }
        if zero_gradient > ZERO_GRADIENT_LIMIT {
            fired.push(Failure::ZeroGradients);
        }
        if transfer_accuracy.is_some_and(beats) {
            fired.push(Failure::TransferWins);
        }
        Indicators {
            eps: self.eps,
            examples: self.examples,
            clean_accuracy: self.clean as f64 / n,
            gradient_accuracy,
            gradient_std_error,
            square_accuracy,
            noise_accuracy,
            sweep,
            zero_gradient,
            transfer_accuracy,
            fired,
        }
    }
}

/// The budgets at which an evaluation of `attacks` measures the indicators: each distinct ε of
/// its L∞ attacks, in increasing order.
pub fn indicator_budgets(attacks: &[AttackSpec]) -> Vec<f64> {
    let mut budgets: Vec<f64> = attacks
        .iter()
        .filter(|s| s.kind.main_parameter() == MainParameter::Eps && s.eps > 0.0)
        .map(|s| s.eps)
        .collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    budgets
}

/// The lowest accuracy of the untargeted gradient attacks among `attacks` (with their results
/// `robust`, in the same order) evaluated at `eps`: what the indicators compare with.
pub fn reported_accuracy(attacks: &[AttackSpec], robust: &[RobustResult], eps: f64) -> Option<f64> {
    attacks
        .iter()
        .zip(robust)
        .filter(|(s, r)| s.eps == eps && s.kind.gradient_only() && !r.targeted)
        .map(|(_, r)| r.accuracy)
        .reduce(f64::min)
}

/// Counts the indicators at budget `eps` on `data`, whole batches of `batch_size` whose first
/// is batch `first_batch` of the test set (untargeted). `surrogate`, if given, is the model
/// whose APGD-CE examples are transferred. Before each attack on a batch the device's
/// generator is reseeded with [`batch_seed`]`(seed, batch)`, so that a batch's counts do not
/// depend on the batches before it and shards add up to the unsharded counts.
#[allow(clippy::too_many_arguments)]
pub fn count_indicators(
    model: &dyn Classifier,
    surrogate: Option<&dyn Classifier>,
    data: &Dataset,
    first_batch: usize,
    eps: f64,
    settings: &IndicatorSettings,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<IndicatorCounts> {
    ensure!(
        eps.is_finite() && eps > 0.0 && eps <= 1.0,
        "the indicators need an `eps` in (0, 1], got {eps}"
    );
    ensure!(!data.is_empty(), "the indicators need at least one example");
    ensure!(
        settings.apgd_iterations >= 1 && settings.square_queries >= 1,
        "the indicators need at least one APGD iteration and one Square query"
    );
    let apgd = |eps| Apgd {
        iterations: settings.apgd_iterations,
        ..Apgd::new(eps, Objective::LogMeanSoftmax)
    };
    let square = Square {
        queries: settings.square_queries,
        ..Square::new(eps)
    };
    let budgets = sweep_budgets(eps);
    let mut c = IndicatorCounts {
        eps,
        examples: data.len(),
        clean: 0,
        zero_gradient: 0,
        apgd: 0,
        square: 0,
        noise: 0,
        sweep: vec![0; budgets.len()],
        transfer: surrogate.map(|_| 0),
    };
    for (b, batch) in Batcher::sequential(data, batch_size)
        .iter(device)
        .enumerate()
    {
        let reseed = || device.seed(batch_seed(seed, first_batch + b));
        let Batch { images, labels } = batch;
        let correct_under = |attack: &dyn Attack| {
            reseed();
            let out = attack.attack(model, images.clone(), labels.clone());
            out.success.iter().filter(|s| !**s).count()
        };
        c.zero_gradient += zero_gradients(model, &images, labels.clone());
        c.clean += crate::metrics::count_correct(model.log_probs(images.clone()), labels.clone());
        c.apgd += correct_under(&apgd(eps));
        c.square += correct_under(&square);
        c.noise += correct_under(&RandomNoise { eps });
        for (count, &e) in c.sweep.iter_mut().zip(&budgets) {
            *count += correct_under(&apgd(e));
        }
        if let (Some(count), Some(s)) = (&mut c.transfer, surrogate) {
            reseed();
            let out = apgd(eps).attack(s, images.clone(), labels.clone());
            *count += crate::metrics::count_correct(model.log_probs(out.adversarial), labels);
        }
    }
    Ok(c)
}

/// Measures the indicators at budget `eps` on `data` (untargeted): [`count_indicators`] on the
/// whole of `data`, judged against `reported`, the lowest accuracy of the gradient attacks
/// already evaluated at `eps`, if any.
#[allow(clippy::too_many_arguments)]
pub fn indicators(
    model: &dyn Classifier,
    surrogate: Option<&dyn Classifier>,
    data: &Dataset,
    eps: f64,
    reported: Option<f64>,
    settings: &IndicatorSettings,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<Indicators> {
    let counts = count_indicators(
        model, surrogate, data, 0, eps, settings, batch_size, seed, device,
    )?;
    Ok(counts.judge(reported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::Linear;
    use burn::tensor::TensorData;

    /// `inner` seen through a layer that quantises its input to `levels` steps: the gradient is
    /// zero everywhere (a masked gradient), the decision is nearly the same.
    struct Quantised {
        inner: Linear,
        levels: f64,
    }

    impl Classifier for Quantised {
        fn member_logits(&self, x: Tensor<4>) -> Tensor<3> {
            let q = x.mul_scalar(self.levels).round().div_scalar(self.levels);
            self.inner.member_logits(q)
        }
    }

    /// Two classes on 4×4 images: z_1 − z_0 = v·(x − 0.5) − m with v = ±1 by pixel, and 40
    /// images of class 0 whose margins to the boundary are spread so that ε = 0.1 breaks about
    /// half of them (the minimal L∞ perturbation of example i is m_i / 16).
    fn linear_and_data() -> (Linear, Dataset) {
        let d = crate::device::cpu();
        let p = 16;
        let v: Vec<f32> = (0..p)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut w = vec![0f32; p];
        w.extend(v.iter().copied());
        let vx: f32 = v.iter().map(|v| v * 0.5).sum();
        let model = Linear {
            w: Tensor::from_data(TensorData::new(w, [2, p]), &d),
            b: Tensor::from_data(TensorData::new(vec![0.0, -vx], [2]), &d),
        };
        let n = 40;
        let mut images = Vec::new();
        for i in 0..n {
            // Each pixel moves away from class 1 by s_i: z_1 − z_0 = −16 s_i, so the minimal
            // perturbation is s_i, from 0.02 to 0.2.
            let s = 0.02 + 0.18 * i as f32 / (n - 1) as f32;
            images.extend(v.iter().map(|v| 0.5 - v * s));
        }
        let data = Dataset::new(images, vec![0; n], [1, 4, 4], 2).unwrap();
        (model, data)
    }

    fn measure(
        model: &dyn Classifier,
        surrogate: Option<&dyn Classifier>,
        data: &Dataset,
    ) -> Indicators {
        let settings = IndicatorSettings {
            apgd_iterations: 20,
            square_queries: 1000,
        };
        let device = crate::device::cpu();
        indicators(model, surrogate, data, 0.1, None, &settings, 40, 3, &device).unwrap()
    }

    #[test]
    fn no_indicator_fires_on_a_linear_model() {
        let (model, data) = linear_and_data();
        // The model is its own surrogate: the transferred examples are the white-box ones.
        let r = measure(&model, Some(&model), &data);
        assert!(r.fired.is_empty(), "{r:?}");
        assert_eq!(r.transfer_accuracy, Some(r.gradient_accuracy), "{r:?}");
        // Examples 0..=17 have minimal perturbations below 0.1 (s_i = 0.02 + 0.18 i / 39).
        assert!((r.gradient_accuracy - 22.0 / 40.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn a_quantising_layer_fires_the_indicators() {
        let (inner, data) = linear_and_data();
        let model = Quantised {
            inner: inner.clone(),
            levels: 64.0,
        };
        // The surrogate is the same linear model without the quantising layer: an undefended
        // model whose examples transfer.
        let r = measure(&model, Some(&inner), &data);
        assert_eq!(r.zero_gradient, 1.0, "{r:?}");
        for failure in [
            Failure::ZeroGradients,
            Failure::GradientFreeWins,
            Failure::AccuracyDoesNotVanish,
            Failure::TransferWins,
        ] {
            assert!(
                r.fired.contains(&failure),
                "{failure:?} did not fire: {r:?}"
            );
        }
    }

    #[test]
    fn sweep_budgets_double_up_to_one() {
        assert_eq!(sweep_budgets(0.1), [0.2, 0.4, 0.8, 1.0]);
        assert_eq!(sweep_budgets(0.6), [1.0]);
    }
}
