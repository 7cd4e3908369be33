//! C&W-L2 (Carlini & Wagner, 2017), as in Section 2.2 of the paper: with the change of variables
//! x*(w) = (tanh(w) + 1)/2, which keeps pixels in [0, 1], minimise per example
//!
//! ‖x*(w) − x‖²₂ + c · max(m(x*(w)), −κ)
//!
//! by Adam (learning rate 0.01, 1000 iterations), where m is the margin of [`Goal::margin`] on
//! Z = log F, the ensemble's log mean softmax (what the official ADP code attacks). The constant
//! c is fixed (Table 2: c = 0.1, 1, 10 on MNIST; the default is 1) or, with
//! `binary_search_steps > 1`, tuned per example by the modified binary search starting from c.
//! Each example returns its successful iterate (margin below −κ) of smallest L2 distance, or the
//! clean image where none succeeded.

use burn::prelude::*;

use super::margin::{
    BestExamples, ConstantSearch, EarlyAbort, OptimSettings, margin_loss, succeeds,
};
use super::{Attack, AttackOutput, Classifier, Goal};

/// Carlini & Wagner's L2 attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CwL2 {
    /// c, κ, learning rate, iterations and binary search.
    pub optim: OptimSettings,
}

impl CwL2 {
    /// The default c: the middle MNIST row of Table 2.
    pub const PAPER_C: f64 = 1.0;

    /// The paper's settings at constant `c`.
    pub fn paper(c: f64) -> Self {
        Self {
            optim: OptimSettings::paper(c),
        }
    }
}

/// Adam (Kingma & Ba, 2015) with β₁ = 0.9, β₂ = 0.999, ε = 1e-8 on one tensor.
struct Adam {
    lr: f64,
    m: Tensor<4>,
    v: Tensor<4>,
    t: i32,
}

impl Adam {
    fn new(lr: f64, like: &Tensor<4>) -> Self {
        Self {
            lr,
            m: like.zeros_like(),
            v: like.zeros_like(),
            t: 0,
        }
    }

    /// `w` after one descent step along gradient `g`.
    fn step(&mut self, w: Tensor<4>, g: Tensor<4>) -> Tensor<4> {
        let (b1, b2) = (0.9f64, 0.999f64);
        self.t += 1;
        self.m = self.m.clone().mul_scalar(b1) + g.clone().mul_scalar(1.0 - b1);
        self.v = self.v.clone().mul_scalar(b2) + g.powi_scalar(2).mul_scalar(1.0 - b2);
        let m_hat = self.m.clone().div_scalar(1.0 - b1.powi(self.t));
        let v_hat = self.v.clone().div_scalar(1.0 - b2.powi(self.t));
        w - (m_hat / v_hat.sqrt().add_scalar(1e-8)).mul_scalar(self.lr)
    }
}

/// x*(w) = (tanh(w) + 1)/2.
fn to_image(w: &Tensor<4>) -> Tensor<4> {
    w.clone().tanh().add_scalar(1.0).mul_scalar(0.5)
}

impl Attack for CwL2 {
    fn name(&self) -> String {
        let o = &self.optim;
        format!(
            "CW-L2(c={}, kappa={}, lr={}, iterations={}, binary_search_steps={})",
            o.c, o.kappa, o.lr, o.iterations, o.binary_search_steps
        )
    }

    fn run(&self, model: &dyn Classifier, images: Tensor<4>, goal: &Goal) -> AttackOutput {
        let o = &self.optim;
        let x0 = images.detach().without_autodiff();
        let n = x0.dims()[0];
        // w₀ = atanh(2x − 1), shrunk slightly so that pixels at 0 or 1 stay finite.
        let w0 = x0
            .clone()
            .mul_scalar(2.0)
            .sub_scalar(1.0)
            .mul_scalar(0.999999)
            .atanh();
        let mut search = ConstantSearch::new(n, o.c);
        let mut best = BestExamples::new(&x0);
        for _ in 0..o.binary_search_steps {
            let c = search.tensor(&x0.device());
            let mut w = w0.clone();
            let mut adam = Adam::new(o.lr, &w);
            let mut abort = EarlyAbort::new(o.iterations);
            let mut succeeded = vec![false; n];
            for it in 0..o.iterations {
                let img = to_image(&w);
                let step = margin_loss(model, goal, &img, &x0, &c, o.kappa);
                let success: Vec<bool> =
                    step.margin.iter().map(|&m| succeeds(m, o.kappa)).collect();
                best.offer(&img, &success, &step.l2_squared);
                for (s, now) in succeeded.iter_mut().zip(&success) {
                    *s |= now;
                }
                if o.abort_early && abort.stop(it, step.loss) {
                    break;
                }
                // Chain rule through x* = (tanh w + 1)/2: dx*/dw = 2·x*·(1 − x*).
                let dimg_dw = img.clone().mul(img.neg().add_scalar(1.0)).mul_scalar(2.0);
                w = adam.step(w, step.grad * dimg_dw);
            }
            search.update(&succeeded);
        }
        AttackOutput::judge(model, goal, &x0, best.adversarial)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attack::tests::Linear;
    use burn::tensor::TensorData;

    /// Two classes, four pixels at 0.5; class 0 wins by a logit margin of 1.25.
    pub(crate) fn toy() -> (Linear, Tensor<4>, Tensor<1, Int>) {
        let d = crate::device::cpu();
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -1.0, 0.5, 0.0, -1.0, 1.0, 0.0, 2.0], [2, 4]),
            &d,
        );
        let model = Linear {
            w,
            b: Tensor::from_data(TensorData::new(vec![2.0f32, 0.0], [2]), &d),
        };
        let x = Tensor::<4>::full([1, 1, 2, 2], 0.5, &d);
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64], [1]), &d);
        (model, x, y)
    }

    #[test]
    fn on_a_linear_model_it_finds_the_closest_point_past_the_kappa_margin() {
        // With two classes log F₀ − log F₁ = z₀ − z₁ = 1.25 − w·δ, w = W₀ − W₁, so the smallest
        // δ reaching margin −κ has ‖δ‖₂ = (1.25 + κ)/‖w‖₂ = 1.35/3.5 (inside the box).
        let (model, x, y) = toy();
        let cw = CwL2 {
            optim: OptimSettings {
                iterations: 300,
                abort_early: false,
                ..OptimSettings::paper(10.0)
            },
        };
        let out = cw.attack(&model, x, y);
        assert!(out.success[0]);
        let l2 = out.norms[0].l2;
        let optimum = 1.35 / 3.5;
        assert!(
            l2 >= optimum - 1e-4 && l2 < optimum * 1.05,
            "‖δ‖₂ = {l2}, optimum {optimum}"
        );
    }

    #[test]
    fn a_tiny_constant_fails_and_returns_the_clean_image_while_binary_search_recovers() {
        let (model, x, y) = toy();
        let tiny = OptimSettings {
            iterations: 100,
            ..OptimSettings::paper(1e-4)
        };
        let out = CwL2 { optim: tiny }.attack(&model, x.clone(), y.clone());
        assert!(!out.success[0]);
        assert_eq!(out.norms[0].l2, 0.0);
        let searched = OptimSettings {
            binary_search_steps: 6,
            ..tiny
        };
        let out = CwL2 { optim: searched }.attack(&model, x, y);
        assert!(out.success[0], "c grows tenfold until the attack succeeds");
    }
}
