//! Clean and robust accuracy of a trained ensemble: the numbers of the paper's Table 1 (clean
//! error of each member and of the ensemble) and Table 2 (accuracy under attack).
//!
//! Robust accuracy is measured on every evaluated test example, as in the paper: an example the
//! ensemble already misclassifies counts as wrong under attack too.

use std::path::Path;

use anyhow::{Result, ensure};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use crate::attack::{AttackSpec, Classifier, Goal, Victim, random_targets};
use crate::data::{Batcher, Dataset};
use crate::loss::log_ensemble_diversity;
use crate::model::Ensemble;

/// Mean cross-entropy of each member on a batch of logits `[B, K, L]`.
pub fn member_cross_entropy(logits: Tensor<3>, labels: Tensor<1, Int>) -> Vec<f64> {
    let [b, k, _] = logits.dims();
    let idx = labels.reshape([b, 1, 1]).expand([b, k, 1]);
    let ce = log_softmax(logits, 2).gather(2, idx).mean_dim(0).neg(); // [1, K, 1]
    floats(ce.reshape([k]))
}

/// Number of rows of `scores` `[B, L]` whose argmax equals the label.
pub fn count_correct(scores: Tensor<2>, labels: Tensor<1, Int>) -> usize {
    let pred = scores.argmax(1).flatten::<1>(0, 1);
    pred.equal(labels).int().sum().into_scalar::<i64>() as usize
}

/// Reads a float tensor into `f64`s.
pub fn floats<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .try_into_vec_as::<f64>()
        .expect("a float tensor")
}

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
}

/// Error rates of the members and the ensemble on `data`, in batches.
pub fn clean(model: &Ensemble, data: &Dataset, batch_size: usize, device: &Device) -> CleanResult {
    let k = model.len();
    let mut member_wrong = vec![0usize; k];
    let mut ens_wrong = 0usize;
    let mut log_det = 0f64;
    for batch in Batcher::sequential(data, batch_size).iter(device) {
        let n = batch.labels.dims()[0];
        let out = model.forward(batch.images);
        for (j, w) in member_wrong.iter_mut().enumerate() {
            let z = out
                .logits
                .clone()
                .slice([0..n, j..j + 1])
                .squeeze_dim::<2>(1);
            *w += n - count_correct(z, batch.labels.clone());
        }
        ens_wrong += n - count_correct(out.mean_probs(), batch.labels.clone());
        log_det +=
            floats(log_ensemble_diversity(out.member_probs(1.0), batch.labels, 1e-6).sum())[0];
    }
    let total = data.len() as f64;
    CleanResult {
        examples: data.len(),
        member_error: member_wrong.iter().map(|&w| w as f64 / total).collect(),
        ensemble_error: ens_wrong as f64 / total,
        mean_log_det: log_det / total,
    }
}

/// Runs one attack over `data` and measures the ensemble's accuracy on the result.
/// `targeted` draws a random wrong target per example from `seed`.
pub fn robust(
    model: &Ensemble,
    data: &Dataset,
    spec: &AttackSpec,
    targeted: bool,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<RobustResult> {
    spec.validate()?;
    let attack = spec.build();
    let victim = Victim::ensemble(model);
    let batcher = Batcher::sequential(data, batch_size);
    let bar = crate::report::progress_bar(batcher.num_batches() as u64, &attack.name());
    let start = std::time::Instant::now();
    let (mut correct, mut hits) = (0usize, 0usize);
    device.seed(seed);
    for (i, batch) in batcher.iter(device).enumerate() {
        let goal = if targeted {
            Goal::Targeted(random_targets(
                &batch.labels,
                data.num_classes,
                seed + i as u64,
            ))
        } else {
            Goal::Untargeted(batch.labels.clone())
        };
        let out = attack.run(&victim, batch.images, &goal);
        ensure!(
            out.success.len() == batch.labels.dims()[0],
            "attack returned a wrong batch size"
        );
        let log_probs = victim.log_probs(out.adversarial);
        correct += match &goal {
            Goal::Untargeted(_) => count_correct(log_probs, batch.labels),
            Goal::Targeted(_) => out.success.iter().filter(|s| !**s).count(),
        };
        hits += out.success.iter().filter(|s| **s).count();
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = data.len() as f64;
    Ok(RobustResult {
        attack: spec.kind.name().into(),
        description: attack.name(),
        eps: spec.eps,
        parameter: spec.parameter_label(),
        targeted,
        examples: data.len(),
        accuracy: correct as f64 / n,
        success_rate: hits as f64 / n,
        seconds: start.elapsed().as_secs_f64(),
    })
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
}

impl EvalReport {
    /// One CSV row per measured number; `parameter` is the attack's "Para." cell.
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
        for r in &self.robust {
            s.push_str(&format!(
                "{},accuracy,{},{},{},{},{:.6},{}\n",
                self.label, r.attack, r.eps, r.targeted, r.examples, r.accuracy, r.parameter
            ));
        }
        s
    }

    /// Writes `eval.json` and `eval.csv` into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::io::write_json(&dir.join("eval.json"), self)?;
        crate::io::atomic_write(&dir.join("eval.csv"), self.to_csv().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn member_cross_entropy_and_accuracy_by_hand() {
        let d = Device::default();
        // B = 2, K = 2, L = 2; member 0 is uniform, member 1 is confident in class 0.
        let z = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 5.0, 0.0, 0.0, 0.0, 5.0, 0.0], [2, 2, 2]),
            &d,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &d);
        let ce = member_cross_entropy(z.clone(), y.clone());
        assert!((ce[0] - 2f64.ln()).abs() < 1e-5);
        let expected = 0.5 * ((1.0 + (-5f64).exp()).ln() + (5.0 + (1.0 + (-5f64).exp()).ln()));
        assert!((ce[1] - expected).abs() < 1e-4, "{} vs {expected}", ce[1]);
        let probs = crate::model::EnsembleOutput { logits: z }.mean_probs();
        assert_eq!(count_correct(probs, y), 1);
    }
}
