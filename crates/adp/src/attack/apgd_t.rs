//! APGD-T under L∞ (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness
//! with an ensemble of diverse parameter-free attacks", §4 and the standard version of
//! AutoAttack): [`Apgd`] ascending the targeted DLR loss
//!
//! −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2),
//!
//! with z = log F, once for each of the 9 classes t the clean input ranks highest after the top
//! one (2nd, 3rd, …, 10th), 100 iterations and one restart per target, as the reference code
//! (fra31/auto-attack, `APGDAttack_targeted`, `n_target_classes = 9`) runs it. Any
//! misclassification counts as success: the targets only diversify the search. Every target and
//! restart runs only on the examples that the earlier ones did not break.
//!
//! Given a [`Goal::Targeted`], it is the targeted APGD-DLR towards that one class.

use burn::prelude::*;

use super::{Apgd, Attack, AttackOutput, Classifier, Criterion, Goal, Objective, with_restarts};

/// Target classes of AutoAttack's standard version.
pub const DEFAULT_TARGET_CLASSES: usize = 9;

/// APGD on the targeted DLR loss over the top classes, L∞.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApgdT {
    /// L∞ budget ε.
    pub eps: f64,
    /// Iterations N per target and restart.
    pub iterations: usize,
    /// Restarts per target class.
    pub restarts: usize,
    /// How many of the classes ranked highest after the clean prediction are targeted (at most
    /// L − 1 are).
    pub target_classes: usize,
}

impl ApgdT {
    /// APGD-T with the authors' defaults: 9 target classes, 100 iterations, one restart each.
    pub fn new(eps: f64) -> Self {
        Self {
            eps,
            iterations: super::apgd::DEFAULT_ITERATIONS,
            restarts: 1,
            target_classes: DEFAULT_TARGET_CLASSES,
        }
    }

    fn apgd(&self) -> Apgd {
        Apgd {
            iterations: self.iterations,
            restarts: self.restarts,
            ..Apgd::new(self.eps, Objective::Dlr)
        }
    }
}

impl Attack for ApgdT {
    fn name(&self) -> String {
        format!(
            "APGD-T(eps={}, iterations={}, restarts={}, targets={})",
            self.eps, self.iterations, self.restarts, self.target_classes
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let Goal::Untargeted(_) = goal else {
            return self.apgd().run(model, images, goal);
        };
        let apgd = self.apgd();
        over_top_classes(
            model,
            images,
            goal,
            self.target_classes,
            self.restarts,
            |x, y, t, _| apgd.run_once(model, x, &Criterion::targeted_dlr(y, t)),
        )
    }
}

/// Runs a targeted `attempt` towards each of the `target_classes` classes the clean input
/// ranks highest after its top one (2nd, 3rd, …; at most L − 1 of them), `restarts` times each,
/// every attempt only on the examples no earlier one broke; success is any misclassification of
/// the untargeted `goal`'s labels. `attempt` gets the clean images, their labels y, their targets
/// t and the restart's index, and returns adversarial images: the shared body of APGD-T and
/// FAB-T, as AutoAttack loops over targets and restarts.
pub(crate) fn over_top_classes(
    model: &dyn Classifier,
    images: Tensor<4>,
    goal: &Goal,
    target_classes: usize,
    restarts: usize,
    mut attempt: impl FnMut(&Tensor<4>, Tensor<1, Int>, Tensor<1, Int>, usize) -> Tensor<4>,
) -> AttackOutput {
    let x0 = images.detach().without_autodiff();
    let log_f = model.log_probs(x0.clone()).detach().without_autodiff();
    let classes = log_f.dims()[1];
    // Classes by decreasing clean score; column k is the (k+1)-th ranked class.
    let ranked = log_f.argsort_descending(1);
    let targets = target_classes.min(classes.saturating_sub(1));
    let restarts = restarts.max(1);
    let mut round = 0;
    with_restarts(model, goal, &x0, targets * restarts, |x, goal, rows| {
        let (k, restart) = (1 + round / restarts, round % restarts);
        round += 1;
        let Goal::Untargeted(y) = goal else {
            unreachable!("the goal is untargeted")
        };
        let m = rows.dims()[0];
        let t = ranked
            .clone()
            .select(0, rows.clone())
            .slice([0..m, k..k + 1])
            .reshape([m]);
        attempt(x, y.clone(), t, restart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::tests::{assert_finds_exactly_the_closed_form_answer, linear_four_class};

    #[test]
    fn finds_the_minimal_perturbation_of_a_linear_model_and_nothing_below_it() {
        let (model, x, y, eps_star) = linear_four_class(6);
        assert_finds_exactly_the_closed_form_answer(&model, &x, &y, eps_star, |eps| {
            Box::new(ApgdT {
                iterations: 20,
                ..ApgdT::new(eps)
            })
        });
    }
}
