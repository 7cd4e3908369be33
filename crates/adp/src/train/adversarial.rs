//! Adversarial training (AdvT) of the ensemble, Section 4.3 and Table 4 of the paper.
//!
//! Each mini-batch of B training images is paired with B adversarial examples crafted from the
//! same images against the current ensemble, so that clean and adversarial examples are mixed
//! 1:1 ("the ratio of adversarial examples and normal ones in each mini-batch is 1:1, with the
//! batch size of 128": B = 64 clean + 64 adversarial, the paper's and the official code's batch
//! of 64). The training objective (ECE or ADP) is applied to the mixed batch of 2B.
//!
//! - **Attacks.** The crafting reuses [`crate::attack`]: FGSM (one step of ε) or PGD (10 steps
//!   of ε/10 from a random start, [`crate::attack::Pgd::paper`]; the official
//!   `advtrain_cifar10.py` uses cleverhans' `MadryEtAl` with `eps_iter = eps/10, nb_iter = 10`),
//!   untargeted, on the whole ensemble's log mean softmax, as the evaluation attacks are. The
//!   ensemble is attacked in evaluation mode (BatchNorm on its running statistics), a frozen copy
//!   of the current parameters; no gradient flows through the crafting.
//! - **ε.** Drawn uniformly from `[eps_min, eps_max]` (paper: [0.01, 0.05], "as in Kurakin et
//!   al.") **once per mini-batch**, as the official code does (`eps = tf.random_uniform((), 0.01,
//!   0.05)`, a scalar re-drawn at every training step). The draw and PGD's random start are seeded
//!   by (seed, epoch, batch), so a resumed run crafts the same examples as an uninterrupted one.

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, AttackSpec, Victim};
use crate::data::Batch;
use crate::model::Ensemble;

/// The attack adversarial training crafts its examples with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum AdvAttack {
    /// AdvT_FGSM: one step of ε.
    Fgsm,
    /// AdvT_PGD: 10 steps of ε/10 from a random start.
    Pgd,
}

impl AdvAttack {
    /// The attack's name in labels, e.g. `FGSM`.
    pub fn label(self) -> &'static str {
        match self {
            AdvAttack::Fgsm => "FGSM",
            AdvAttack::Pgd => "PGD",
        }
    }
}

/// Adversarial training settings; part of [`super::TrainConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvTrainConfig {
    /// The crafting attack.
    pub attack: AdvAttack,
    /// Smallest budget ε of the uniform draw (paper: 0.01).
    pub eps_min: f64,
    /// Largest budget ε of the uniform draw (paper: 0.05).
    pub eps_max: f64,
}

impl AdvTrainConfig {
    /// The paper's setting: ε ~ U[0.01, 0.05] per mini-batch (Section 4.3, CIFAR-10).
    pub fn paper(attack: AdvAttack) -> Self {
        Self {
            attack,
            eps_min: 0.01,
            eps_max: 0.05,
        }
    }

    /// Checks the budgets, with one message naming the fields.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.eps_min.is_finite()
                && self.eps_max.is_finite()
                && 0.0 <= self.eps_min
                && self.eps_min <= self.eps_max
                && self.eps_max <= 1.0,
            "`eps_min`, `eps_max` must satisfy 0 <= eps_min <= eps_max <= 1 (pixels are in [0, 1]), got {},{}",
            self.eps_min,
            self.eps_max
        );
        Ok(())
    }

    /// The attack at budget `eps`, with the paper's other parameters.
    pub fn spec(&self, eps: f64) -> AttackSpec {
        let kind = match self.attack {
            AdvAttack::Fgsm => AttackKind::Fgsm,
            AdvAttack::Pgd => AttackKind::Pgd,
        };
        AttackSpec::new(kind, eps)
    }

    /// The seed of batch `step` of `epoch`: it draws ε and PGD's random start.
    fn batch_seed(seed: u64, epoch: usize, step: usize) -> u64 {
        seed ^ 0x5EED_AD7E_0000_0000
            ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
    }

    /// ε of batch `step` of `epoch`, uniform in `[eps_min, eps_max]`.
    pub fn eps_for(&self, seed: u64, epoch: usize, step: usize) -> f64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(Self::batch_seed(seed, epoch, step));
        if self.eps_max > self.eps_min {
            rng.random_range(self.eps_min..=self.eps_max)
        } else {
            self.eps_min
        }
    }
}

/// The mixed mini-batch of adversarial training: the B clean images of `batch` followed by B
/// adversarial examples crafted from them against `model` (the current ensemble, training or
/// evaluation mode, any device) at the budget drawn for (seed, epoch, step), with the labels
/// repeated. Returns the batch of 2B on the device of `batch` and the ε used.
pub fn adversarial_batch(
    model: &Ensemble,
    batch: Batch,
    config: &AdvTrainConfig,
    seed: u64,
    epoch: usize,
    step: usize,
) -> (Batch, f64) {
    let eps = config.eps_for(seed, epoch, step);
    let frozen = model.clone().valid();
    let x = batch.images.clone().detach().without_autodiff();
    let labels = batch.labels.clone().to_device(&x.device());
    x.device()
        .seed(AdvTrainConfig::batch_seed(seed, epoch, step));
    let adversarial = config
        .spec(eps)
        .build()
        .attack(&Victim::ensemble(&frozen), x, labels)
        .adversarial;
    let adversarial = if batch.images.is_autodiff() {
        adversarial.autodiff()
    } else {
        adversarial
    };
    let mixed = Batch {
        images: Tensor::cat(vec![batch.images, adversarial], 0),
        labels: Tensor::cat(vec![batch.labels.clone(), batch.labels], 0),
    };
    (mixed, eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_is_drawn_per_batch_inside_the_range_and_reproducibly() {
        let c = AdvTrainConfig::paper(AdvAttack::Pgd);
        let draws: Vec<f64> = (0..200).map(|i| c.eps_for(3, i / 20, i % 20)).collect();
        assert!(draws.iter().all(|e| (0.01..=0.05).contains(e)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.03).abs() < 0.004, "mean {mean}");
        assert_eq!(c.eps_for(3, 1, 7), c.eps_for(3, 1, 7));
        assert_ne!(c.eps_for(3, 1, 7), c.eps_for(3, 1, 8));
        assert_ne!(c.eps_for(3, 1, 7), c.eps_for(4, 1, 7));
    }

    #[test]
    fn bad_ranges_are_rejected_with_the_option_name() {
        for (lo, hi) in [(0.05, 0.01), (-0.1, 0.1), (0.1, 1.5), (f64::NAN, 0.1)] {
            let c = AdvTrainConfig {
                eps_min: lo,
                eps_max: hi,
                ..AdvTrainConfig::paper(AdvAttack::Fgsm)
            };
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains("`eps_min`, `eps_max`"), "{msg}");
        }
        assert!(AdvTrainConfig::paper(AdvAttack::Fgsm).validate().is_ok());
    }
}
