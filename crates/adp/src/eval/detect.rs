//! Ensemble diversity as a detector of adversarial examples (Section 4.5, Fig. 4).
//!
//! Score: for each input x the ensemble predicts ŷ = argmax_l F_l(x) (Eq. 1); the true label is
//! unknown at test time, so ŷ is the class removed from every member's prediction, and the
//! diversity of what remains is log ED_ŷ(x) = log det(M̃ᵀM̃ + 1e-6·I) with M̃'s columns the
//! members' L2-normalised predictions without class ŷ (Eq. 3-4). ADP makes these non-maximal
//! predictions diverse on natural inputs; an input that makes the members agree on their
//! non-maximal predictions is suspicious. The detection score is therefore **−log ED_ŷ**: the
//! higher, the more likely adversarial, and the ROC curve treats adversarial examples as
//! positives. The direction is fixed in advance, never chosen after seeing the data, so an AUC
//! below 0.5 means the assumption fails for that attack.
//!
//! The clean set is the first N test examples; each attack crafts N adversarial examples from
//! those same images against the whole ensemble (white-box), all of them kept whether or not the
//! attack succeeded, as in the paper's 1,000 + 1,000 setting.

use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attack::AttackSpec;
use crate::data::Dataset;
use crate::eval::diversity::{Removed, median, per_example_log_ed};
use crate::eval::roc::{Roc, roc};
use crate::eval::{AttackedSet, attack_dataset};
use crate::model::Ensemble;

/// The detection score of an input from its log ED_ŷ: higher means "adversarial".
pub fn detection_score(log_ed: f64) -> f64 {
    -log_ed
}

/// One attack's adversarial examples against the clean examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackDetection {
    /// Attack name on the command line.
    pub attack: String,
    /// Full description with every parameter.
    pub description: String,
    /// The "Para." cell, e.g. `ε = 0.1`.
    pub parameter: String,
    /// Fraction of the adversarial examples that fool the ensemble.
    pub success_rate: f64,
    /// log ED_ŷ of each adversarial example.
    pub log_ed: Vec<f64>,
    /// Its median.
    pub median_log_ed: f64,
    /// Area under the ROC curve of the detection score (adversarial = positive).
    pub auc: f64,
}

/// The detection experiment on one trained run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionReport {
    /// Run label.
    pub label: String,
    /// log ED_ŷ of each clean example.
    pub clean_log_ed: Vec<f64>,
    /// Its median.
    pub clean_median_log_ed: f64,
    /// One entry per attack.
    pub attacks: Vec<AttackDetection>,
}

impl DetectionReport {
    /// The ROC curve of attack `a` against the clean examples.
    pub fn roc(&self, a: &AttackDetection) -> Result<Roc> {
        let score = |v: &[f64]| v.iter().map(|&x| detection_score(x)).collect::<Vec<_>>();
        roc(&score(&self.clean_log_ed), &score(&a.log_ed))
    }

    /// One CSV row per run and attack.
    pub fn to_csv(reports: &[DetectionReport]) -> String {
        let mut s = String::from(
            "label,attack,parameter,clean_examples,adversarial_examples,success_rate,clean_median_log_ed,adversarial_median_log_ed,auc\n",
        );
        for r in reports {
            for a in &r.attacks {
                s.push_str(&format!(
                    "{},{},{},{},{},{:.6},{:.6},{:.6},{:.6}\n",
                    r.label,
                    a.attack,
                    a.parameter,
                    r.clean_log_ed.len(),
                    a.log_ed.len(),
                    a.success_rate,
                    r.clean_median_log_ed,
                    a.median_log_ed,
                    a.auc
                ));
            }
        }
        s
    }

    /// The ROC points, one CSV row per threshold.
    pub fn roc_csv(reports: &[DetectionReport]) -> Result<String> {
        let mut s = String::from("label,attack,parameter,fpr,tpr\n");
        for r in reports {
            for a in &r.attacks {
                let curve = r.roc(a)?;
                for (x, y) in curve.fpr.iter().zip(&curve.tpr) {
                    s.push_str(&format!(
                        "{},{},{},{x:.6},{y:.6}\n",
                        r.label, a.attack, a.parameter
                    ));
                }
            }
        }
        Ok(s)
    }

    /// AUC and medians in one Markdown table, one column per run.
    pub fn markdown(reports: &[DetectionReport]) -> String {
        let mut s = String::from(
            "Detection of adversarial examples by ensemble diversity (Fig. 4). Score: −log ED with the ensemble's predicted class removed (higher = adversarial); AUC of the ROC curve, clean examples negative, adversarial positive.\n\n| Attack | Para. |",
        );
        let mut rule = String::from("|---|---|");
        for r in reports {
            s.push_str(&format!(" {} AUC | {} fooled (%) |", r.label, r.label));
            rule.push_str("---:|---:|");
        }
        s.push_str(&format!("\n{rule}\n"));
        // One row per attack of the first run; `cell` renders a run's entry (or its absence).
        let attack_rows = |s: &mut String, cell: &dyn Fn(Option<&AttackDetection>) -> String| {
            let Some(first) = reports.first() else { return };
            for (i, a) in first.attacks.iter().enumerate() {
                s.push_str(&format!(
                    "| {} | {} |",
                    a.attack.to_uppercase(),
                    a.parameter
                ));
                for r in reports {
                    s.push_str(&cell(r.attacks.get(i)));
                }
                s.push('\n');
            }
        };
        attack_rows(&mut s, &|x| match x {
            Some(x) => format!(" {:.3} | {:.1} |", x.auc, 100.0 * x.success_rate),
            None => " – | – |".into(),
        });
        s.push_str("\nMedian log ED (predicted class removed)\n\n| Examples | |");
        for r in reports {
            s.push_str(&format!(" {} |", r.label));
        }
        s.push_str(&format!(
            "\n|---|---|{}\n| clean | |",
            "---:|".repeat(reports.len())
        ));
        for r in reports {
            s.push_str(&format!(" {:.2} |", r.clean_median_log_ed));
        }
        s.push('\n');
        attack_rows(&mut s, &|x| {
            let cell = x.map_or("–".into(), |x| format!("{:.2}", x.median_log_ed));
            format!(" {cell} |")
        });
        s
    }
}

/// Runs the detection experiment of Fig. 4 on `data` (the clean examples) with `attacks`.
pub fn detect(
    model: &Ensemble,
    label: &str,
    data: &Dataset,
    attacks: &[AttackSpec],
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<DetectionReport> {
    let clean_log_ed = per_example_log_ed(model, data, Removed::Predicted, batch_size, device);
    let mut report = DetectionReport {
        label: label.into(),
        clean_median_log_ed: median(&clean_log_ed),
        clean_log_ed,
        attacks: Vec::with_capacity(attacks.len()),
    };
    for spec in attacks {
        let set = attack_dataset(model, data, spec, false, None, batch_size, seed, device)?;
        let description = set.description.clone();
        let success_rate = AttackedSet::rate(&set.success);
        let adversarial = set.into_goal_dataset(data.num_classes)?;
        let log_ed =
            per_example_log_ed(model, &adversarial, Removed::Predicted, batch_size, device);
        let mut a = AttackDetection {
            attack: spec.kind.name().into(),
            description,
            parameter: spec.parameter_label(),
            success_rate,
            median_log_ed: median(&log_ed),
            log_ed,
            auc: f64::NAN,
        };
        a.auc = report.roc(&a)?.auc;
        report.attacks.push(a);
    }
    Ok(report)
}
