//! Clean and robust accuracy of a trained ensemble: the numbers of the paper's Table 1 (clean
//! error of each member and of the ensemble) and Table 2 (accuracy under attack).
//!
//! Robust accuracy is measured on every evaluated test example, as in the paper: an example the
//! ensemble already misclassifies counts as wrong under attack too.

use std::path::Path;

use anyhow::{Result, ensure};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

mod attacked;
pub mod detect;
pub mod diversity;
pub mod ed_histogram;
pub mod feature_tsne;
pub mod indicators;
pub mod neighbours;
pub mod resume;
pub mod roc;
pub mod shard;
pub mod store;
pub mod transfer;
pub mod tsne;

use crate::attack::{AttackSpec, Verdict, Victim};
use crate::data::{Batcher, Dataset};
use crate::metrics::count_correct;
use crate::model::Ensemble;
use crate::tensor::floats;
pub use attacked::{AttackedSet, attack_batches, attack_dataset, batch_seed, robust};
use diversity::{Removed, batch_log_ed};

/// Clean error rates (Table 1) and the mean log ensemble diversity on the test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanResult {
    /// Number of test examples.
    pub examples: usize,
    /// Error rate of each member, in `[0, 1]`.
    pub member_error: Vec<f64>,
    /// Error rate of the ensemble (argmax of the mean softmax, Eq. 1).
    pub ensemble_error: f64,
    /// Mean log ED over the test set (App. B.3).
    pub mean_log_det: f64,
    /// Fraction of examples on which the input gradient of −log F_y (the loss FGSM, BIM and
    /// PGD ascend) is exactly zero in floating point: a saturated softmax masks the gradient,
    /// and these examples cannot be moved by those attacks whatever the model's real robustness.
    #[serde(default)]
    pub zero_gradient: f64,
}

/// Accuracy under one attack at one budget (Table 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustResult {
    /// Attack name on the command line (`fgsm`, `pgd`, …).
    pub attack: String,
    /// Full description with every parameter.
    pub description: String,
    /// Perturbation budget ε (0 for JSMA, C&W and EAD, which have none).
    pub eps: f64,
    /// Table 2's "Para." cell of the attack, e.g. `ε = 0.1`, `γ = 0.3`, `c = 1`.
    #[serde(default)]
    pub parameter: String,
    /// Whether the attack aimed at random target classes.
    pub targeted: bool,
    /// Number of attacked examples.
    pub examples: usize,
    /// Fraction classified correctly after the attack (untargeted) or not moved to the target
    /// (targeted), in `[0, 1]`.
    pub accuracy: f64,
    /// Fraction on which the attack met its goal.
    pub success_rate: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Binomial standard error of `accuracy`, √(a(1 − a)/n).
    #[serde(default)]
    pub std_error: f64,
    /// Accuracies of the repeats with the next seeds (`adp eval --seeds N`), after this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats: Vec<f64>,
    /// For a cascade (`autoattack`, `apgd-cascade`), the accuracy after each stage, every stage
    /// run only on the examples the earlier ones left standing; the last one is `accuracy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageResult>,
}

/// The accuracy of a cascade after one of its stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// The stage's description with every parameter.
    pub attack: String,
    /// Examples this stage was the first to break.
    pub broken: usize,
    /// Fraction of all examples that neither the clean input nor this or an earlier stage
    /// broke.
    pub accuracy: f64,
}

impl RobustResult {
    /// Mean and sample standard deviation of the accuracy over this run and its repeats.
    pub fn spread(&self) -> (f64, f64) {
        let all: Vec<f64> = std::iter::once(self.accuracy)
            .chain(self.repeats.iter().copied())
            .collect();
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let var = all.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        (mean, var.sqrt())
    }
}

/// Error rates of the members and the ensemble on `data`, in batches.
pub fn clean(model: &Ensemble, data: &Dataset, batch_size: usize, device: &Device) -> CleanResult {
    clean_counts(model, data, batch_size, device).result()
}

/// The raw counts behind a [`CleanResult`], kept per batch where a sum of floats is involved, so
/// that the counts of consecutive slices of a test set ([`shard`]) combine into exactly the
/// result of the whole set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanCounts {
    /// Number of examples.
    pub examples: usize,
    /// Misclassified examples of each member.
    pub member_wrong: Vec<usize>,
    /// Examples the ensemble misclassifies.
    pub ensemble_wrong: usize,
    /// Examples whose input gradient is exactly zero.
    pub zero_gradient: usize,
    /// Sum of log ED over each batch, in batch order, as the bits of the `f64` (JSON keeps
    /// integers exactly).
    pub log_det_bits: Vec<u64>,
}

impl CleanCounts {
    /// Appends the counts of the slice that follows this one.
    pub fn extend(&mut self, next: &CleanCounts) -> Result<()> {
        ensure!(
            self.member_wrong.len() == next.member_wrong.len(),
            "the counts are of ensembles of {} and {} members",
            self.member_wrong.len(),
            next.member_wrong.len()
        );
        self.examples += next.examples;
        for (a, b) in self.member_wrong.iter_mut().zip(&next.member_wrong) {
            *a += b;
        }
        self.ensemble_wrong += next.ensemble_wrong;
        self.zero_gradient += next.zero_gradient;
        self.log_det_bits.extend(&next.log_det_bits);
        Ok(())
    }

    /// The error rates, summing the log ED of the batches in order as [`clean`] does.
    pub fn result(&self) -> CleanResult {
        let total = self.examples as f64;
        let log_det = self
            .log_det_bits
            .iter()
            .fold(0f64, |sum, &b| sum + f64::from_bits(b));
        CleanResult {
            examples: self.examples,
            member_error: self
                .member_wrong
                .iter()
                .map(|&w| w as f64 / total)
                .collect(),
            ensemble_error: self.ensemble_wrong as f64 / total,
            mean_log_det: log_det / total,
            zero_gradient: self.zero_gradient as f64 / total,
        }
    }
}

/// The counts of [`clean`] on `data`, in batches of `batch_size`.
pub fn clean_counts(
    model: &Ensemble,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> CleanCounts {
    let k = model.len();
    let mut counts = CleanCounts {
        examples: data.len(),
        member_wrong: vec![0; k],
        ensemble_wrong: 0,
        zero_gradient: 0,
        log_det_bits: Vec::new(),
    };
    let victim = Victim::ensemble(model);
    for batch in Batcher::sequential(data, batch_size).iter(device) {
        let n = batch.labels.dims()[0];
        counts.zero_gradient +=
            indicators::zero_gradients(&victim, &batch.images, batch.labels.clone());
        let out = model.forward(batch.images);
        for (j, w) in counts.member_wrong.iter_mut().enumerate() {
            let z = out
                .logits
                .clone()
                .slice([0..n, j..j + 1])
                .squeeze_dim::<2>(1);
            *w += n - count_correct(z, batch.labels.clone());
        }
        counts.ensemble_wrong += n - count_correct(out.mean_probs(), batch.labels.clone());
        let sum = floats::<f64, _>(batch_log_ed(&out, batch.labels, Removed::TrueLabel).sum())[0];
        counts.log_det_bits.push(sum.to_bits());
    }
    counts
}

impl RobustResult {
    /// The result of attack `spec` from its per-example outcomes: whether it met its goal
    /// (`success`) and whether the ensemble still classifies the example correctly (`correct`).
    pub fn from_flags(
        spec: &AttackSpec,
        targeted: bool,
        description: String,
        success: &[bool],
        correct: &[bool],
        seconds: f64,
    ) -> RobustResult {
        let success_rate = AttackedSet::rate(success);
        let accuracy = if targeted {
            1.0 - success_rate
        } else {
            AttackedSet::rate(correct)
        };
        RobustResult {
            attack: spec.kind.name().into(),
            description,
            eps: spec.eps,
            parameter: spec.parameter_label(),
            targeted,
            examples: success.len(),
            accuracy,
            success_rate,
            seconds,
            std_error: indicators::std_error(accuracy, success.len()),
            repeats: Vec::new(),
            stages: Vec::new(),
        }
    }

    /// This result with the accuracy after each stage of a cascade named `stages`, from the
    /// per-example `verdicts` (of the same examples as the result); unchanged when `stages` is
    /// empty (a single attack).
    pub fn with_stages(mut self, stages: &[String], verdicts: &[Verdict]) -> Self {
        let n = verdicts.len().max(1) as f64;
        let mut standing = verdicts.iter().filter(|&&v| v != Verdict::Clean).count();
        self.stages = stages
            .iter()
            .enumerate()
            .map(|(s, attack)| {
                let broken = verdicts
                    .iter()
                    .filter(|&&v| v == Verdict::BrokenBy(s))
                    .count();
                standing -= broken;
                StageResult {
                    attack: attack.clone(),
                    broken,
                    accuracy: standing as f64 / n,
                }
            })
            .collect();
        self
    }
}

/// What `adp eval` measured on one run; saved as `RUN_DIR/eval.json` and `eval.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Run label (e.g. `ADP_{2,0.5}`).
    pub label: String,
    /// Clean error rates.
    pub clean: CleanResult,
    /// Robust accuracy per attack and budget.
    pub robust: Vec<RobustResult>,
    /// The indicators of a failed evaluation, one per budget ε of the L∞ attacks evaluated.
    #[serde(default)]
    pub indicators: Vec<indicators::Indicators>,
}

impl EvalReport {
    /// One CSV row per measured number; `parameter` is the attack's "Para." cell. A cascade's
    /// accuracy after stage i is the metric `stage_i_accuracy`.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("label,metric,attack,eps,targeted,examples,value,parameter\n");
        for (k, e) in self.clean.member_error.iter().enumerate() {
            s.push_str(&format!(
                "{},member_{k}_error,clean,0,false,{},{e:.6},\n",
                self.label, self.clean.examples
            ));
        }
        s.push_str(&format!(
            "{},ensemble_error,clean,0,false,{},{:.6},\n",
            self.label, self.clean.examples, self.clean.ensemble_error
        ));
        s.push_str(&format!(
            "{},mean_log_det,clean,0,false,{},{:.6},\n",
            self.label, self.clean.examples, self.clean.mean_log_det
        ));
        s.push_str(&format!(
            "{},zero_gradient,clean,0,false,{},{:.6}\n",
            self.label, self.clean.examples, self.clean.zero_gradient
        ));
        for r in &self.robust {
            let row = |metric: &str, value: f64| {
                format!(
                    "{},{metric},{},{},{},{},{value:.6},{}\n",
                    self.label, r.attack, r.eps, r.targeted, r.examples, r.parameter
                )
            };
            s.push_str(&row("accuracy", r.accuracy));
            for (i, stage) in r.stages.iter().enumerate() {
                s.push_str(&row(&format!("stage_{i}_accuracy"), stage.accuracy));
            }
        }
        s
    }

    /// Writes `eval.json` and `eval.csv` into `dir`, atomically; earlier results there are kept
    /// as `eval.N.json` / `eval.N.csv`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::io::keep_previous(&dir.join("eval.json"))?;
        crate::io::keep_previous(&dir.join("eval.csv"))?;
        crate::io::write_json(&dir.join("eval.json"), self)?;
        crate::io::atomic_write(&dir.join("eval.csv"), self.to_csv().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::AttackKind;

    #[test]
    fn stage_accuracies_count_down_from_the_examples_the_clean_input_left_standing() {
        use Verdict::{BrokenBy, Clean, Robust};
        let spec = AttackSpec::new(AttackKind::Autoattack, 0.1);
        // 8 examples: one misclassified clean; stages 0, 2 and 3 break three, one and one; two robust.
        let verdicts = [
            Clean,
            BrokenBy(0),
            BrokenBy(0),
            BrokenBy(2),
            Robust,
            BrokenBy(0),
        ];
        let verdicts = [&verdicts[..], &[Robust, BrokenBy(3)]].concat();
        let correct: Vec<bool> = verdicts.iter().map(|&v| v == Robust).collect();
        let success: Vec<bool> = correct.iter().map(|c| !c).collect();
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let r = RobustResult::from_flags(&spec, false, "x".into(), &success, &correct, 0.0)
            .with_stages(&names, &verdicts);
        let after: Vec<(usize, f64)> = r.stages.iter().map(|s| (s.broken, s.accuracy)).collect();
        assert_eq!(
            after,
            [
                (3, 4.0 / 8.0),
                (0, 4.0 / 8.0),
                (1, 3.0 / 8.0),
                (1, 2.0 / 8.0)
            ]
        );
        assert_eq!(r.stages[3].accuracy, r.accuracy);
        assert_eq!(r.stages[2].attack, "c");
        // A single attack has no stages.
        let single = RobustResult::from_flags(&spec, false, "x".into(), &success, &correct, 0.0)
            .with_stages(&[], &[]);
        assert!(single.stages.is_empty());
    }
}
