//! The optimisation machinery that C&W-L2 ([`super::cw`]) and EAD ([`super::ead`]) share: the
//! margin loss c·max(m(x), −κ) on Z = log F (the ensemble's log mean softmax, which the official
//! ADP code attacks), the per-example modified binary search over c, the keeping of each
//! example's best successful iterate, and the early abort of a stalled optimisation
//! (Carlini & Wagner, 2017, Section V; Chen et al., 2018, Section 3).

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::{Classifier, Goal, example_mask, gradient_with};

/// Settings common to C&W and EAD; the defaults are those of the paper's Table 2 experiments and
/// the official code (1000 iterations, learning rate 0.01, κ = 0.1, one binary-search step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimSettings {
    /// The constant c weighting the margin loss (the initial c when binary searching).
    pub c: f64,
    /// Confidence κ: an iterate counts as successful once its margin is below −κ.
    pub kappa: f64,
    /// Learning rate.
    pub lr: f64,
    /// Iterations per binary-search step.
    pub iterations: usize,
    /// Binary-search steps over c (1: c stays fixed).
    pub binary_search_steps: usize,
    /// Stop a binary-search step when the batch loss has not fallen by 0.01% over the last
    /// tenth of the iterations.
    pub abort_early: bool,
}

impl OptimSettings {
    /// The paper's settings at constant `c`.
    pub fn paper(c: f64) -> Self {
        Self {
            c,
            kappa: 0.1,
            lr: 0.01,
            iterations: 1000,
            binary_search_steps: 1,
            abort_early: true,
        }
    }
}

/// One evaluation of the smooth part of the C&W / EAD objective at images `x`.
#[derive(Debug, Clone)]
pub struct MarginStep {
    /// ∇ₓ Σ_b [‖x_b − x0_b‖²₂ + c_b · max(m(x_b), −κ)].
    pub grad: Tensor<4>,
    /// The margin m(x_b) of [`Goal::margin`] on log F, per example.
    pub margin: Vec<f64>,
    /// ‖x_b − x0_b‖²₂ per example.
    pub l2_squared: Vec<f64>,
    /// The objective summed over the batch.
    pub loss: f64,
}

/// Evaluates ‖x − x0‖²₂ + c · max(m(x), −κ) (the C&W objective of Section 2.2 with f on
/// Z = log F) and its gradient with respect to `x`, in one forward and one backward pass.
pub fn margin_loss(
    model: &dyn Classifier,
    goal: &Goal,
    x: &Tensor<4>,
    x0: &Tensor<4>,
    c: &Tensor<1>,
    kappa: f64,
) -> MarginStep {
    let (grad, value, (margin, dist)) = gradient_with(model, x, |m, x| {
        let device = x.device();
        let dist = (x.clone() - x0.clone().to_device(&device))
            .powi_scalar(2)
            .flatten::<2>(1, 3)
            .sum_dim(1)
            .flatten::<1>(0, 1);
        let margin = goal.margin(m.log_probs(x));
        let loss = margin.clone().clamp_min(-kappa) * c.clone().to_device(&device);
        (dist.clone() + loss, (margin, dist))
    });
    let read = |t: Tensor<1>| crate::tensor::floats::<f64, _>(t.detach().without_autodiff());
    MarginStep {
        grad,
        margin: read(margin),
        l2_squared: read(dist),
        loss: read(value).iter().sum(),
    }
}

/// Whether an iterate with margin `m` counts as successful at confidence κ.
pub fn succeeds(m: f64, kappa: f64) -> bool {
    m < -kappa
}

/// The per-example constant c and its modified binary search (Carlini & Wagner, 2017): after a
/// search step an example that succeeded lowers its upper bound and bisects; one that failed
/// raises its lower bound and bisects, or multiplies c by 10 while no upper bound is known.
#[derive(Debug, Clone)]
pub struct ConstantSearch {
    c: Vec<f64>,
    lower: Vec<f64>,
    upper: Vec<f64>,
}

impl ConstantSearch {
    const NO_UPPER: f64 = 1e10;

    /// Every example starts at `c`.
    pub fn new(n: usize, c: f64) -> Self {
        Self {
            c: vec![c; n],
            lower: vec![0.0; n],
            upper: vec![Self::NO_UPPER; n],
        }
    }

    /// The current constants as a tensor `[batch]`.
    pub fn tensor(&self, device: &Device) -> Tensor<1> {
        let c: Vec<f32> = self.c.iter().map(|&c| c as f32).collect();
        Tensor::from_data(TensorData::new(c, [self.c.len()]), device)
    }

    /// Moves each constant after a search step in which example `i` did or did not succeed.
    pub fn update(&mut self, succeeded: &[bool]) {
        for (i, &ok) in succeeded.iter().enumerate() {
            if ok {
                self.upper[i] = self.upper[i].min(self.c[i]);
            } else {
                self.lower[i] = self.lower[i].max(self.c[i]);
            }
            self.c[i] = if self.upper[i] < Self::NO_UPPER {
                (self.lower[i] + self.upper[i]) / 2.0
            } else {
                self.c[i] * 10.0
            };
        }
    }
}

/// Each example's successful iterate of smallest score so far (the clean image until one is
/// found).
#[derive(Debug, Clone)]
pub struct BestExamples {
    /// The kept images.
    pub adversarial: Tensor<4>,
    score: Vec<f64>,
}

impl BestExamples {
    /// Nothing found yet: the clean images `x0`.
    pub fn new(x0: &Tensor<4>) -> Self {
        Self {
            adversarial: x0.clone(),
            score: vec![f64::INFINITY; x0.dims()[0]],
        }
    }

    /// Keeps `candidate`'s example `i` where it succeeded with a smaller score than the best.
    pub fn offer(&mut self, candidate: &Tensor<4>, success: &[bool], score: &[f64]) {
        let better: Vec<bool> = (0..success.len())
            .map(|i| success[i] && score[i] < self.score[i])
            .collect();
        if !better.iter().any(|b| *b) {
            return;
        }
        for (i, &b) in better.iter().enumerate() {
            if b {
                self.score[i] = score[i];
            }
        }
        self.adversarial = self
            .adversarial
            .clone()
            .mask_where(example_mask(&better, candidate), candidate.clone());
    }
}

/// Stops an optimisation whose loss has not fallen by 0.01% over the last tenth of its
/// iterations (the `abort_early` of Carlini & Wagner's code).
#[derive(Debug, Clone)]
pub struct EarlyAbort {
    every: usize,
    previous: f64,
}

impl EarlyAbort {
    /// For a run of `iterations` iterations.
    pub fn new(iterations: usize) -> Self {
        Self {
            every: (iterations / 10).max(1),
            previous: f64::INFINITY,
        }
    }

    /// Whether to stop at iteration `it` with batch loss `loss`.
    pub fn stop(&mut self, it: usize, loss: f64) -> bool {
        if !it.is_multiple_of(self.every) {
            return false;
        }
        let stalled = loss > self.previous * 0.9999;
        self.previous = loss;
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_search_bisects_after_success_and_grows_tenfold_before() {
        let mut s = ConstantSearch::new(2, 1.0);
        s.update(&[true, false]);
        assert_eq!(s.c, vec![0.5, 10.0]);
        s.update(&[false, true]);
        assert_eq!(s.c, vec![0.75, 5.5]);
    }

    #[test]
    fn best_examples_keep_the_smallest_successful_score() {
        let d = crate::device::cpu();
        let x0 = Tensor::<4>::zeros([2, 1, 1, 1], &d);
        let mut best = BestExamples::new(&x0);
        best.offer(&x0.clone().add_scalar(1.0), &[true, false], &[3.0, 1.0]);
        best.offer(&x0.clone().add_scalar(2.0), &[true, true], &[4.0, 2.0]);
        best.offer(&x0.clone().add_scalar(3.0), &[true, false], &[1.0, 0.0]);
        let v: Vec<f32> = best.adversarial.into_data().try_into_vec_as().unwrap();
        assert_eq!(v, vec![3.0, 2.0]);
    }

    #[test]
    fn margin_is_negative_exactly_where_the_goal_is_met() {
        let d = crate::device::cpu();
        let z = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 1.0, 0.0], [1, 3]), &d);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), &d);
        let t = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64], [1]), &d);
        let m = |g: Goal| crate::tensor::floats::<f64, _>(g.margin(z.clone()))[0];
        assert!((m(Goal::Untargeted(y)) - 2.0).abs() < 1e-6);
        assert!((m(Goal::Targeted(t)) - 3.0).abs() < 1e-6);
    }
}
