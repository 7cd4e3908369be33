//! Transferability of adversarial examples among the members of an ensemble (Section 4.4,
//! Fig. 3).
//!
//! Entry (i, j) of a matrix uses member i alone as the substitute model that crafts the
//! adversarial examples (a white-box attack on `Victim::member(model, i)`) and member j as the
//! model they are fed to. Untargeted: the classification accuracy of member j on them; targeted
//! (one random wrong target per example, the same for every i): the fraction member j classifies
//! as the target. The diagonal is therefore the white-box result on each member.

use anyhow::Result;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attack::AttackSpec;
use crate::data::{Batcher, Dataset};
use crate::eval::attack_dataset;
use crate::metrics::count_correct;
use crate::model::Ensemble;

/// One K×K transfer matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferMatrix {
    /// Attack name on the command line (`pgd`, `mim`).
    pub attack: String,
    /// Full description with every parameter.
    pub description: String,
    /// The "Para." cell, e.g. `ε = 0.1`.
    pub parameter: String,
    /// Random targets instead of any wrong class.
    pub targeted: bool,
    /// Number of attacked test examples.
    pub examples: usize,
    /// `values[i][j]`: crafted on member i, evaluated on member j; in `[0, 1]`.
    pub values: Vec<Vec<f64>>,
}

impl TransferMatrix {
    /// What the entries measure.
    pub fn metric(&self) -> &'static str {
        if self.targeted {
            "target success rate"
        } else {
            "accuracy"
        }
    }

    /// A short title such as `PGD (targeted)`.
    pub fn title(&self) -> String {
        let mode = if self.targeted {
            "targeted"
        } else {
            "untargeted"
        };
        format!("{} {} ({mode})", self.attack.to_uppercase(), self.parameter)
    }
}

/// The transfer matrices of one trained run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferReport {
    /// Run label (e.g. `ADP_{2,0.5}`).
    pub label: String,
    /// One matrix per attack and mode.
    pub matrices: Vec<TransferMatrix>,
}

/// Fraction of `data` each member classifies as the data set's label, one entry per member.
pub fn member_agreement(
    model: &Ensemble,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Vec<f64> {
    let mut hits = vec![0usize; model.len()];
    for batch in Batcher::sequential(data, batch_size).iter(device) {
        for (member, h) in model.members.iter().zip(hits.iter_mut()) {
            *h += count_correct(member.forward(batch.images.clone()), batch.labels.clone());
        }
    }
    hits.iter().map(|&h| h as f64 / data.len() as f64).collect()
}

/// The K×K matrix of `spec` on the first examples `data` (see the module documentation).
pub fn transfer_matrix(
    model: &Ensemble,
    data: &Dataset,
    spec: &AttackSpec,
    targeted: bool,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<TransferMatrix> {
    let mut values = Vec::with_capacity(model.len());
    let mut description = String::new();
    for i in 0..model.len() {
        let set = attack_dataset(
            model,
            data,
            spec,
            targeted,
            Some(i),
            batch_size,
            seed,
            device,
        )?;
        description = set.description.clone();
        // Labelled by the target (targeted) or the true class (untargeted), agreement with the
        // label is exactly the entry's metric.
        let adversarial = set.into_goal_dataset(data.num_classes)?;
        values.push(member_agreement(model, &adversarial, batch_size, device));
    }
    Ok(TransferMatrix {
        attack: spec.kind.name().into(),
        description,
        parameter: spec.parameter_label(),
        targeted,
        examples: data.len(),
        values,
    })
}

impl TransferReport {
    /// One CSV row per matrix entry.
    pub fn to_csv(reports: &[TransferReport]) -> String {
        let mut s = String::from(
            "label,attack,parameter,targeted,examples,metric,source_member,target_member,value\n",
        );
        for r in reports {
            for m in &r.matrices {
                for (i, row) in m.values.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        s.push_str(&format!(
                            "{},{},{},{},{},{},{i},{j},{v:.6}\n",
                            r.label,
                            m.attack,
                            m.parameter,
                            m.targeted,
                            m.examples,
                            m.metric()
                        ));
                    }
                }
            }
        }
        s
    }

    /// Every matrix as a Markdown table (percent), grouped by run.
    pub fn markdown(reports: &[TransferReport]) -> String {
        let mut s = String::from(
            "Transferability among members (Fig. 3): row i crafts the adversarial examples on member i alone, column j is the member they are fed to. Untargeted: accuracy (%) of member j; targeted: success rate (%) of reaching the target on member j.\n",
        );
        for r in reports {
            for m in &r.matrices {
                let k = m.values.len();
                s.push_str(&format!(
                    "\n{} — {}, {} examples, {} (%)\n\n| crafted on \\ fed to |",
                    r.label,
                    m.title(),
                    m.examples,
                    m.metric()
                ));
                for j in 0..k {
                    s.push_str(&format!(" member {} |", j + 1));
                }
                s.push_str(&format!("\n|---|{}\n", "---:|".repeat(k)));
                for (i, row) in m.values.iter().enumerate() {
                    s.push_str(&format!("| member {} |", i + 1));
                    for v in row {
                        s.push_str(&format!(" {:.1} |", 100.0 * v));
                    }
                    s.push('\n');
                }
            }
        }
        s
    }
}
