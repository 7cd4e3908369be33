//! An adaptive attack on ADP ensembles in the spirit of Tramer, Carlini, Brendel and Madry
//! (NeurIPS 2020, "On Adaptive Attacks to Adversarial Example Defenses", §7, ADP): the paper's
//! PGD-10 underestimates the attacker, so run PGD much longer, with a smaller step (ε/20) and
//! several random restarts: PGD-20, then PGD-200 on the examples PGD-20 did not break
//! (a [`Cascade`]). The loss can be changed from the cross-entropy of log F to the surrogates
//! they discuss ([`Objective::MeanLogits`]: average the logits, then softmax;
//! [`Objective::JointMembers`]: attack every member at once) or DLR. Success is always judged on
//! the real ensemble, by the argmax of log F.

use burn::prelude::*;

use super::{Attack, AttackOutput, Cascade, Classifier, Goal, Objective, Pgd};

/// The stage lengths by default: PGD-20 then PGD-200.
const DEFAULT_STAGES: [usize; 2] = [20, 200];

/// Restarted, lengthening PGD on a chosen objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    /// L∞ budget ε.
    pub eps: f64,
    /// Step size of every stage.
    pub step_size: f64,
    /// Iterations of each PGD stage, run in order on the examples still standing.
    pub stages: Vec<usize>,
    /// Random restarts of each stage.
    pub restarts: usize,
    /// What PGD ascends.
    pub objective: Objective,
}

impl Adaptive {
    /// PGD-20 then PGD-200, steps of ε/20, 5 restarts each, on log F.
    pub fn new(eps: f64) -> Self {
        Self {
            eps,
            step_size: eps / 20.0,
            stages: DEFAULT_STAGES.to_vec(),
            restarts: 5,
            objective: Objective::LogMeanSoftmax,
        }
    }

    /// Makes the last stage `n` iterations long, keeping the default stages shorter than `n`
    /// before it: 200 gives PGD-20 → PGD-200, 50 gives PGD-20 → PGD-50, 10 gives PGD-10.
    pub fn with_last_stage(self, n: usize) -> Self {
        let mut stages: Vec<usize> = DEFAULT_STAGES.into_iter().filter(|&s| s < n).collect();
        stages.push(n);
        Self { stages, ..self }
    }

    /// The attack as a cascade of PGD stages.
    fn cascade(&self) -> Cascade {
        let stages = self
            .stages
            .iter()
            .map(|&steps| {
                Box::new(Pgd {
                    eps: self.eps,
                    step_size: self.step_size,
                    steps,
                    random_start: true,
                    restarts: self.restarts,
                    objective: self.objective,
                }) as Box<dyn Attack>
            })
            .collect();
        Cascade {
            label: "Adaptive".into(),
            stages,
        }
    }
}

impl Attack for Adaptive {
    fn name(&self) -> String {
        self.cascade().name()
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        self.cascade().run(model, images, goal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{Linear, assert_in_budget};
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn the_last_stage_length_keeps_shorter_default_stages() {
        let a = Adaptive::new(0.1);
        assert_eq!(a.stages, [20, 200]);
        assert!((a.step_size - 0.005).abs() < 1e-12);
        assert_eq!(a.clone().with_last_stage(200).stages, [20, 200]);
        assert_eq!(a.clone().with_last_stage(50).stages, [20, 50]);
        assert_eq!(a.with_last_stage(10).stages, [10]);
    }

    #[test]
    fn every_objective_stays_in_budget() {
        let d = crate::device::cpu();
        let w = Tensor::<2>::random([4, 4], Distribution::Normal(0.0, 2.0), &d);
        let model = Linear {
            w,
            b: Tensor::zeros([4], &d),
        };
        let x = Tensor::<4>::random([6, 1, 2, 2], Distribution::Uniform(0.0, 1.0), &d);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new((0..6i64).map(|i| i % 4).collect(), [6]),
            &d,
        );
        for objective in [
            Objective::LogMeanSoftmax,
            Objective::MeanLogits,
            Objective::JointMembers,
            Objective::Dlr,
        ] {
            let attack = Adaptive {
                stages: vec![2, 4],
                restarts: 2,
                objective,
                ..Adaptive::new(0.04)
            };
            let out = attack.attack(&model, x.clone(), y.clone());
            assert_in_budget(out.adversarial, x.clone(), 0.04);
        }
    }
}
