//! A cascade of attacks, as AutoAttack's orchestrator runs its parts (Croce & Hein, 2020, §5):
//! the examples that already meet the goal on the clean input are left alone, then each attack
//! in turn runs only on the examples that no earlier attack broke. The result is the worst case
//! per example: the first adversarial example found for it, and which attack found it.
//!
//! [`Cascade::autoattack`] is AutoAttack's standard L∞ version: APGD-CE, then APGD-T
//! ([`ApgdT`], targeted DLR over the top 9 classes), FAB-T ([`FabT`], 9 targets) and Square
//! ([`Square`], 5,000 queries).
//! [`Cascade::apgd`] is the earlier two-stage cascade of APGD-CE then APGD-DLR (the attacks of
//! AutoAttack's "rand"/custom versions).

use anyhow::{Result, ensure};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::draws::{self, Draw};
use super::{
    Apgd, ApgdT, Attack, AttackOutput, Classifier, FabT, Goal, Objective, Square, place_rows,
    row_indices,
};
use crate::tensor::floats;

/// Attacks run one after another on the examples still standing.
pub struct Cascade {
    /// Name of the whole, e.g. `AutoAttack`.
    pub label: String,
    /// The attacks, in order.
    pub stages: Vec<Box<dyn Attack>>,
}

/// How an example fared in a cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The clean input already met the goal (e.g. misclassified); no attack ran on it.
    Clean,
    /// Stage `i` (0-based) was the first to meet the goal.
    BrokenBy(usize),
    /// No stage met the goal.
    Robust,
}

/// A cascade's result with the per-example verdicts.
#[derive(Debug, Clone)]
pub struct CascadeReport {
    /// The adversarial batch, judged on the whole batch.
    pub output: AttackOutput,
    /// The verdict of each example.
    pub verdicts: Vec<Verdict>,
}

impl Cascade {
    /// The two-stage L∞ cascade: APGD-CE then APGD-DLR, both with `apgd`'s budget,
    /// iterations, restarts and start.
    pub fn apgd(apgd: Apgd) -> Self {
        let stage = |objective| Box::new(Apgd { objective, ..apgd }) as Box<dyn Attack>;
        Self {
            label: "APGD-cascade".into(),
            stages: vec![stage(Objective::LogMeanSoftmax), stage(Objective::Dlr)],
        }
    }

    /// AutoAttack's standard L∞ cascade: APGD-CE (`apgd`), APGD-T (`apgd_t`), FAB-T (`fab_t`)
    /// and Square (`square`), each on the examples the earlier stages left standing.
    pub fn autoattack(apgd: Apgd, apgd_t: ApgdT, fab_t: FabT, square: Square) -> Self {
        Self {
            label: "AutoAttack".into(),
            stages: vec![
                Box::new(Apgd {
                    objective: Objective::LogMeanSoftmax,
                    ..apgd
                }),
                Box::new(apgd_t),
                Box::new(fab_t),
                Box::new(square),
            ],
        }
    }

    /// Runs the cascade on `images` and tells which stage broke each example. Robust examples
    /// end at the last stage's output for them.
    pub fn run_report(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        goal: &Goal,
    ) -> CascadeReport {
        match self.resume(model, images, goal, None) {
            Ok(report) => report,
            Err(_) => unreachable!("only a stage store fails, and none is given"),
        }
    }

    /// [`run_report`](Self::run_report), keeping each finished stage in `store` and taking the
    /// stages already kept there from it instead of running them. A kept stage's random draws
    /// are replayed ([`draws::replay`]), so the stages after it draw what they would have drawn
    /// in one uninterrupted run, and the report is the same example for example.
    pub fn resume(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        goal: &Goal,
        store: Option<&dyn StageStore>,
    ) -> Result<CascadeReport> {
        let x0 = images.detach().without_autodiff();
        let [n, c, h, w] = x0.dims();
        let device = x0.device();
        let clean = goal.achieved(model.log_probs(x0.clone()).detach().without_autodiff());
        let mut verdicts: Vec<Verdict> = clean
            .iter()
            .map(|&c| if c { Verdict::Clean } else { Verdict::Robust })
            .collect();
        let mut adversarial = x0.clone();
        for (s, attack) in self.stages.iter().enumerate() {
            let open: Vec<usize> = (0..n).filter(|&i| verdicts[i] == Verdict::Robust).collect();
            if open.is_empty() {
                break;
            }
            let idx = row_indices(&open, &device);
            let record = match store.map(|st| st.load(s)).transpose()?.flatten() {
                Some(kept) => {
                    ensure!(
                        kept.success.len() == open.len()
                            && kept.adversarial.len() == open.len() * c * h * w,
                        "the kept stage {s} ({}) attacked {} examples, but {} are left for it: \
                         the kept stages are of another evaluation; remove them",
                        attack.name(),
                        kept.success.len(),
                        open.len()
                    );
                    draws::replay(&kept.draws, &device)?;
                    kept
                }
                None => {
                    let (out, draws) = draws::recorded(|| {
                        attack.run(model, x0.clone().select(0, idx.clone()), &goal.select(idx))
                    });
                    let record = StageRecord {
                        success: out.success,
                        adversarial: floats(out.adversarial),
                        draws,
                    };
                    if let Some(st) = store {
                        st.save(s, &record)?;
                    }
                    record
                }
            };
            for (j, &i) in open.iter().enumerate() {
                if record.success[j] {
                    verdicts[i] = Verdict::BrokenBy(s);
                }
            }
            let rows = TensorData::new(record.adversarial, [open.len(), c, h, w]);
            adversarial = place_rows(adversarial, &open, Tensor::from_data(rows, &device));
        }
        Ok(CascadeReport {
            output: AttackOutput::judge(model, goal, &x0, adversarial),
            verdicts,
        })
    }
}

/// What one stage of a cascade produced on the examples it attacked (those no earlier stage
/// broke): enough to skip the stage when the cascade runs again on the same batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRecord {
    /// Whether the stage met the goal, per attacked example.
    pub success: Vec<bool>,
    /// The stage's adversarial examples for the attacked examples, `[n, C, H, W]` flattened.
    pub adversarial: Vec<f32>,
    /// The random draws the stage made, in order.
    pub draws: Vec<Draw>,
}

/// Where a cascade running on one batch keeps its finished stages ([`Cascade::resume`]).
pub trait StageStore {
    /// The record of stage `stage` (0-based), if one was kept.
    fn load(&self, stage: usize) -> Result<Option<StageRecord>>;
    /// Keeps the record of stage `stage`.
    fn save(&self, stage: usize, record: &StageRecord) -> Result<()>;
}

impl Attack for Cascade {
    fn name(&self) -> String {
        format!("{}[{}]", self.label, self.stage_names().join(" → "))
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        self.run_report(model, images, goal).output
    }

    fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|a| a.name()).collect()
    }

    fn run_verdicts(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        goal: &Goal,
    ) -> (AttackOutput, Option<Vec<Verdict>>) {
        let report = self.run_report(model, images, goal);
        (report.output, Some(report.verdicts))
    }

    fn run_resumable(
        &self,
        model: &dyn Classifier,
        images: Tensor<4>,
        goal: &Goal,
        stages: &dyn StageStore,
    ) -> Result<(AttackOutput, Option<Vec<Verdict>>)> {
        let report = self.resume(model, images, goal, Some(stages))?;
        Ok((report.output, Some(report.verdicts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{Linear, assert_in_budget};
    use crate::attack::{Fgsm, Pgd};
    use burn::tensor::Distribution;

    #[test]
    fn later_stages_only_see_the_examples_still_standing() {
        let d = crate::device::cpu();
        let w = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &d);
        let model = Linear {
            w,
            b: Tensor::zeros([3], &d),
        };
        let x = Tensor::<4>::random([16, 1, 2, 2], Distribution::Uniform(0.0, 1.0), &d);
        // The labels are the clean predictions, so no example starts out broken.
        let y = model.log_probs(x.clone()).argmax(1).flatten::<1>(0, 1);
        let cascade = Cascade {
            label: "test".into(),
            stages: vec![
                Box::new(Fgsm { eps: 0.05 }),
                Box::new(Pgd {
                    steps: 5,
                    ..Pgd::paper(0.1)
                }),
            ],
        };
        let report = cascade.run_report(&model, x.clone(), &Goal::Untargeted(y.clone()));
        assert_in_budget(report.output.adversarial.clone(), x.clone(), 0.1);
        let fgsm = Fgsm { eps: 0.05 }.attack(&model, x.clone(), y);
        for (i, v) in report.verdicts.iter().enumerate() {
            assert_ne!(*v, Verdict::Clean);
            // FGSM is deterministic: it breaks exactly the examples stage 0 is credited with.
            assert_eq!(*v == Verdict::BrokenBy(0), fgsm.success[i], "example {i}");
            assert_eq!(
                *v != Verdict::Robust,
                report.output.success[i],
                "example {i}"
            );
        }
    }
}
