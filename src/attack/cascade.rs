//! A cascade of attacks, as AutoAttack's orchestrator runs its parts (Croce & Hein, 2020, §5):
//! the examples that already meet the goal on the clean input are left alone, then each attack
//! in turn runs only on the examples that no earlier attack broke. The result is the worst case
//! per example: the first adversarial example found for it, and which attack found it.
//!
//! [`Cascade::autoattack`] is the cascade of APGD-CE then APGD-DLR (the attacks of AutoAttack's
//! "rand"/custom versions; the standard version's APGD-T, FAB-T and Square are not included).

use burn::prelude::*;
use burn::tensor::{IndexingUpdateOp, TensorData};

use super::{Apgd, Attack, AttackOutput, Classifier, Goal, Objective};

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
    /// AutoAttack-style L∞ cascade: APGD-CE then APGD-DLR, both with `apgd`'s budget,
    /// iterations, restarts and start.
    pub fn autoattack(apgd: Apgd) -> Self {
        let stage = |objective| Box::new(Apgd { objective, ..apgd }) as Box<dyn Attack>;
        Self {
            label: "AutoAttack".into(),
            stages: vec![stage(Objective::LogMeanSoftmax), stage(Objective::Dlr)],
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
        let x0 = images.detach().without_autodiff();
        let n = x0.dims()[0];
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
            let m = open.len();
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(open.iter().map(|&i| i as i64).collect(), [m]),
                &device,
            );
            let out = attack.run(
                model,
                x0.clone().select(0, idx.clone()),
                &goal.select(idx.clone()),
            );
            // Rows `open` take the stage's output: scatter it into zeros, then pick those rows.
            let placed =
                x0.zeros_like()
                    .select_assign(0, idx, out.adversarial, IndexingUpdateOp::Add);
            let mut chosen = vec![false; n];
            for (j, &i) in open.iter().enumerate() {
                chosen[i] = true;
                if out.success[j] {
                    verdicts[i] = Verdict::BrokenBy(s);
                }
            }
            let rows = Tensor::<1, Bool>::from_data(TensorData::new(chosen, [n]), &device)
                .reshape([n, 1, 1, 1])
                .expand(x0.shape());
            adversarial = adversarial.mask_where(rows, placed);
        }
        CascadeReport {
            output: AttackOutput::judge(model, goal, &x0, adversarial),
            verdicts,
        }
    }
}

impl Attack for Cascade {
    fn name(&self) -> String {
        let stages: Vec<String> = self.stages.iter().map(|a| a.name()).collect();
        format!("{}[{}]", self.label, stages.join(" → "))
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        self.run_report(model, images, goal).output
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
        let d = Device::default();
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
