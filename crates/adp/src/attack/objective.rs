//! What a gradient attack ascends on an ensemble, built from the members' logits `[B, K, L]`.
//!
//! ADP's prediction is F = (1/K) Σ_k softmax(z^k) (Eq. 1 of Pang et al., 2019); the official
//! code attacks log F. Tramer, Carlini, Brendel and Madry (2020, "On Adaptive Attacks to
//! Adversarial Example Defenses", §7) show that other surrogates of the same ensemble can be
//! easier to optimise, so the objective is a choice:
//!
//! * [`Objective::LogMeanSoftmax`]: cross-entropy on log F (the default, what the paper attacks);
//! * [`Objective::MeanLogits`]: cross-entropy on log_softmax((1/K) Σ_k z^k);
//! * [`Objective::JointMembers`]: Σ_k cross-entropy of member k, attacking all members jointly;
//! * [`Objective::Dlr`]: the Difference of Logits Ratio of Croce & Hein (2020, Eq. 6 and its
//!   targeted form), with log F as the "logits". DLR is invariant to shifting the logits, so for
//!   K = 1 this equals DLR on the network's own logits.
//! * [`Objective::Official`]: what the official code's FGSM/BIM/PGD/MIM (cleverhans 2.1.0)
//!   ascend: its ensemble output is a Keras `Average` of the members' softmax, which cleverhans'
//!   `model_loss` takes for logits, so the loss is the cross-entropy of softmax(F), not of F;
//!   and with no labels given the attacks push away from the clean *predicted* class.
//!
//! Whatever the objective, success is judged on the real ensemble, by the argmax of log F.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use super::{Classifier, Goal, gradient_with};
use crate::model::EnsembleOutput;

/// The stabiliser added to DLR's denominator, as in the reference implementation.
const DLR_EPS: f64 = 1e-12;

/// The surrogate loss an attack ascends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Cross-entropy on log F, F the mean of the members' softmax (Eq. 1).
    #[default]
    LogMeanSoftmax,
    /// Cross-entropy on the softmax of the members' averaged logits.
    MeanLogits,
    /// The sum of the members' cross-entropies.
    #[cfg_attr(feature = "cli", value(name = "joint"))]
    #[serde(rename = "joint")]
    JointMembers,
    /// Difference of Logits Ratio on z = log F (Croce & Hein, 2020).
    Dlr,
    /// The official code's loss: cross-entropy of softmax(F), F taken for logits, away from the
    /// clean predicted class (untargeted) or towards the target.
    Official,
}

impl Objective {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Objective::LogMeanSoftmax => "log-mean-softmax",
            Objective::MeanLogits => "mean-logits",
            Objective::JointMembers => "joint",
            Objective::Dlr => "dlr",
            Objective::Official => "official",
        }
    }
}

/// Untargeted DLR (Croce & Hein, 2020, Eq. 6), to ascend:
/// −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12), with π sorting z in decreasing order.
/// `z` is `[batch, L]` with L ≥ 3.
pub fn dlr(z: Tensor<2>, y: Tensor<1, Int>) -> Tensor<1> {
    let [n, l] = z.dims();
    assert!(l >= 3, "DLR needs at least 3 classes, got {l}");
    let top = sorted_columns(z.clone(), 3);
    let z_y = pick(z.clone(), y.clone());
    let is_y = y.one_hot::<2>(l).equal_elem(1);
    let best_other = z.mask_fill(is_y, f32::NEG_INFINITY).max_dim(1).reshape([n]);
    let denom = (top[0].clone() - top[2].clone()).add_scalar(DLR_EPS);
    (z_y - best_other).div(denom).neg()
}

/// Targeted DLR (Croce & Hein, 2020, §3.2), to ascend:
/// −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12). `z` is `[batch, L]` with L ≥ 4.
pub fn dlr_targeted(z: Tensor<2>, y: Tensor<1, Int>, t: Tensor<1, Int>) -> Tensor<1> {
    let l = z.dims()[1];
    assert!(l >= 4, "targeted DLR needs at least 4 classes, got {l}");
    let top = sorted_columns(z.clone(), 4);
    let diff = pick(z.clone(), y) - pick(z, t);
    let denom =
        (top[0].clone() - (top[2].clone() + top[3].clone()).mul_scalar(0.5)).add_scalar(DLR_EPS);
    diff.div(denom).neg()
}

/// The `m` largest entries of each row, largest first, as `m` columns `[batch]`.
fn sorted_columns(z: Tensor<2>, m: usize) -> Vec<Tensor<1>> {
    let n = z.dims()[0];
    let sorted = z.sort_descending(1);
    (0..m)
        .map(|i| sorted.clone().slice([0..n, i..i + 1]).reshape([n]))
        .collect()
}

/// z[i, labels[i]] for every row, `[batch]`.
fn pick(z: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let n = labels.dims()[0];
    z.gather(1, labels.reshape([n, 1])).reshape([n])
}

/// An objective bound to one batch's goal: the per-example loss to ascend.
#[derive(Debug, Clone)]
pub struct Criterion {
    objective: Objective,
    goal: Goal,
    /// The clean prediction: the class the targeted DLR and the untargeted official loss push
    /// away from.
    source: Option<Tensor<1, Int>>,
    /// What counts as success at a point: `goal` itself, except for APGD-T, which ascends a
    /// targeted loss to meet an untargeted goal.
    success: Goal,
}

/// Binds `objective` to `goal` on the clean batch `images` and runs `attempt` (one restart of an
/// ascent from the clean images) `restarts` times, keeping each example's first success: the
/// shared body of the objective-driven attacks (PGD, BIM, APGD).
pub fn restarted_ascent(
    model: &dyn Classifier,
    images: Tensor<4>,
    goal: &Goal,
    objective: Objective,
    restarts: usize,
    attempt: impl Fn(&Tensor<4>, &Criterion) -> Tensor<4>,
) -> super::AttackOutput {
    let x0 = images.detach().without_autodiff();
    let loss = Criterion::new(objective, model, &x0, goal);
    super::with_restarts(model, goal, &x0, restarts, |x, _, rows| {
        attempt(x, &loss.select(rows.clone()))
    })
}

/// One evaluation of a [`Criterion`] at a point.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Gradient of the summed objective with respect to the input.
    pub grad: Tensor<4>,
    /// Objective of each example, `[batch]`.
    pub value: Tensor<1>,
    /// Whether the ensemble's prediction (argmax log F) meets the goal at the point.
    pub met: Vec<bool>,
}

impl Criterion {
    /// Binds `objective` to `goal` for the clean batch `x0`. The targeted DLR needs a class
    /// y to push away from; the goal holds only the target, so y is the ensemble's clean
    /// prediction (the true label wherever the ensemble is right, as AutoAttack does when given
    /// no labels). The untargeted official loss uses the clean prediction too, as cleverhans
    /// does when called without labels.
    pub fn new(objective: Objective, model: &dyn Classifier, x0: &Tensor<4>, goal: &Goal) -> Self {
        let source = match (objective, goal) {
            (Objective::Dlr, Goal::Targeted(_)) | (Objective::Official, Goal::Untargeted(_)) => {
                Some(
                    model
                        .log_probs(x0.clone().detach().without_autodiff())
                        .argmax(1)
                        .flatten::<1>(0, 1),
                )
            }
            _ => None,
        };
        Self {
            objective,
            goal: goal.clone(),
            source,
            success: goal.clone(),
        }
    }

    /// APGD-T's loss (Croce & Hein, 2020, §4): the targeted DLR from the labels `y` towards the
    /// targets `t`, where any misclassification of `y` counts as success.
    pub fn targeted_dlr(y: Tensor<1, Int>, t: Tensor<1, Int>) -> Self {
        Self {
            objective: Objective::Dlr,
            goal: Goal::Targeted(t),
            source: Some(y.clone()),
            success: Goal::Untargeted(y),
        }
    }

    /// The criterion of the examples at `rows` only.
    pub fn select(&self, rows: Tensor<1, Int>) -> Self {
        Self {
            objective: self.objective,
            goal: self.goal.select(rows.clone()),
            source: self.source.clone().map(|s| {
                let rows = rows.clone().to_device(&s.device());
                s.select(0, rows)
            }),
            success: self.success.select(rows),
        }
    }

    /// The per-example objective, `[batch]`, from the members' logits `[batch, K, L]` and
    /// log F `[batch, L]` of the same forward pass.
    fn value(&self, logits: Tensor<3>, log_f: Tensor<2>) -> Tensor<1> {
        let device = log_f.device();
        let on = |t: &Tensor<1, Int>| t.clone().to_device(&device);
        match self.objective {
            Objective::LogMeanSoftmax => self.goal.objective(log_f),
            Objective::MeanLogits => {
                let mean = EnsembleOutput { logits }.mean_logits();
                self.goal.objective(log_softmax(mean, 1))
            }
            Objective::JointMembers => {
                let [b, k, l] = logits.dims();
                let per_member = log_softmax(logits, 2).reshape([b * k, l]);
                let labels = match &self.goal {
                    Goal::Untargeted(y) => Goal::Untargeted(repeat_each(on(y), k)),
                    Goal::Targeted(t) => Goal::Targeted(repeat_each(on(t), k)),
                };
                labels
                    .objective(per_member)
                    .reshape([b, k])
                    .sum_dim(1)
                    .reshape([b])
            }
            Objective::Dlr => match (&self.goal, &self.source) {
                (Goal::Untargeted(y), _) => dlr(log_f, on(y)),
                (Goal::Targeted(t), Some(y)) => dlr_targeted(log_f, on(y), on(t)),
                (Goal::Targeted(_), None) => unreachable!("bound with its source class"),
            },
            Objective::Official => {
                let as_logits = log_softmax(log_f.exp(), 1);
                match (&self.goal, &self.source) {
                    (Goal::Untargeted(_), Some(pred)) => {
                        Goal::Untargeted(on(pred)).objective(as_logits)
                    }
                    (Goal::Untargeted(_), None) => unreachable!("bound with its source class"),
                    (Goal::Targeted(_), _) => self.goal.objective(as_logits),
                }
            }
        }
    }

    /// The objective's gradient and value at `x`, and whether the goal is met there.
    pub fn probe(&self, model: &dyn Classifier, x: &Tensor<4>) -> Probe {
        let (grad, value, log_f) = gradient_with(model, x, |m, x| {
            let logits = m.member_logits(x);
            let log_f = EnsembleOutput {
                logits: logits.clone(),
            }
            .log_mean_probs();
            (self.value(logits, log_f.clone()), log_f)
        });
        let met = self.success.achieved(log_f.detach().without_autodiff());
        Probe { grad, value, met }
    }
}

/// Each label repeated `k` times in place: `[a, b] → [a, a, b, b]` for k = 2.
fn repeat_each(labels: Tensor<1, Int>, k: usize) -> Tensor<1, Int> {
    let n = labels.dims()[0];
    labels.reshape([n, 1]).repeat_dim(1, k).reshape([n * k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::floats;
    use burn::tensor::TensorData;

    fn labels(v: Vec<i64>) -> Tensor<1, Int> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &crate::device::cpu())
    }

    #[test]
    fn dlr_matches_a_hand_computed_case() {
        let d = crate::device::cpu();
        // Row 0: y = 0 is the top class: −(4 − 2)/(4 − 1) = −2/3.
        // Row 1: y = 2 is not the top: −(1 − 4)/(4 − 1) = 1.
        let z = Tensor::<2>::from_data(
            TensorData::new(vec![4.0f32, 2.0, 1.0, 0.0, 2.0, 4.0, 1.0, 0.0], [2, 4]),
            &d,
        );
        let v = floats::<f32, _>(dlr(z.clone(), labels(vec![0, 2])));
        assert!((v[0] + 2.0 / 3.0).abs() < 1e-6, "{v:?}");
        assert!((v[1] - 1.0).abs() < 1e-6, "{v:?}");
        // Targeted, row 0 with y = 0, t = 3: −(4 − 0)/(4 − (1 + 0)/2) = −8/7.
        let v = floats::<f32, _>(dlr_targeted(z, labels(vec![0, 2]), labels(vec![3, 1])));
        assert!((v[0] + 8.0 / 7.0).abs() < 1e-6, "{v:?}");
        // Row 1 with y = 2, t = 1: −(1 − 4)/(4 − 0.5) = 6/7.
        assert!((v[1] - 6.0 / 7.0).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn dlr_is_invariant_to_shifting_the_logits() {
        let d = crate::device::cpu();
        let z = Tensor::<2>::from_data(
            TensorData::new(vec![0.3f32, -1.0, 2.5, 0.7, 1.1], [1, 5]),
            &d,
        );
        let y = labels(vec![3]);
        let a = floats::<f32, _>(dlr(z.clone(), y.clone()));
        let b = floats::<f32, _>(dlr(z.sub_scalar(7.0), y));
        assert!((a[0] - b[0]).abs() < 1e-5);
    }

    /// Two members that disagree, L = 4: the objectives differ but all reduce to the member's
    /// cross-entropy when K = 1.
    #[test]
    fn objectives_reduce_to_cross_entropy_for_one_member() {
        let d = crate::device::cpu();
        let z =
            Tensor::<3>::from_data(TensorData::new(vec![2.0f32, 0.5, -1.0, 0.0], [1, 1, 4]), &d);
        let log_f = EnsembleOutput { logits: z.clone() }.log_mean_probs();
        let goal = Goal::Untargeted(labels(vec![0]));
        let ce = floats::<f32, _>(goal.objective(log_softmax(z.clone().reshape([1, 4]), 1)))[0];
        for objective in [
            Objective::LogMeanSoftmax,
            Objective::MeanLogits,
            Objective::JointMembers,
        ] {
            let c = Criterion {
                objective,
                goal: goal.clone(),
                source: None,
                success: goal.clone(),
            };
            let v = floats::<f32, _>(c.value(z.clone(), log_f.clone()))[0];
            assert!((v - ce).abs() < 1e-5, "{objective:?}: {v} vs {ce}");
        }
    }

    #[test]
    fn joint_objective_sums_the_members_cross_entropies() {
        let d = crate::device::cpu();
        // Member 0 uniform over 4 classes (CE ln 4), member 1 logits (ln 3, 0, 0, 0) → p_y = 1/2.
        let z = Tensor::<3>::from_data(
            TensorData::new(
                vec![0.0f32, 0.0, 0.0, 0.0, 3f32.ln(), 0.0, 0.0, 0.0],
                [1, 2, 4],
            ),
            &d,
        );
        let log_f = EnsembleOutput { logits: z.clone() }.log_mean_probs();
        let goal = Goal::Untargeted(labels(vec![0]));
        let c = Criterion {
            objective: Objective::JointMembers,
            goal: goal.clone(),
            source: None,
            success: goal,
        };
        let v = floats::<f32, _>(c.value(z, log_f))[0];
        let expected = 4f32.ln() + 2f32.ln();
        assert!((v - expected).abs() < 1e-5, "{v} vs {expected}");
    }

    /// The official loss takes the mean probabilities for logits and pushes away from the
    /// clean prediction, whatever the true label: −log softmax(F)_pred.
    #[test]
    fn official_objective_is_cross_entropy_of_softmax_of_f_at_the_predicted_class() {
        let d = crate::device::cpu();
        let z = Tensor::<3>::from_data(
            TensorData::new(vec![2.0f32, 0.5, -1.0, 0.0, 0.0, 1.0, 0.0, 0.0], [1, 2, 4]),
            &d,
        );
        let log_f = EnsembleOutput { logits: z.clone() }.log_mean_probs();
        let f: Vec<f32> = log_f.clone().exp().into_data().try_into_vec_as().unwrap();
        let pred = 0;
        let norm: f32 = f.iter().map(|p| p.exp()).sum();
        let expected = -(f[pred].exp() / norm).ln();
        let goal = Goal::Untargeted(labels(vec![2]));
        let c = Criterion {
            objective: Objective::Official,
            goal: goal.clone(),
            source: Some(labels(vec![pred as i64])),
            success: goal,
        };
        let v = floats::<f32, _>(c.value(z.clone(), log_f.clone()))[0];
        assert!((v - expected).abs() < 1e-5, "{v} vs {expected}");
        // It differs from the default objective, which uses log F and the true label.
        let ours = floats::<f32, _>(Goal::Untargeted(labels(vec![2])).objective(log_f))[0];
        assert!((v - ours).abs() > 0.1, "{v} vs {ours}");
    }
}
