use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;

use super::max_pool2d_relu;
use crate::testing::{devices, flat, values};

/// One pooling to test: input shape, window, and whether the values are rounded to multiples of
/// 0.5 (so windows hold ties).
struct Case {
    x: [usize; 4],
    kernel: [usize; 2],
    ties: bool,
}

fn cases() -> Vec<Case> {
    let case = |x, kernel, ties| Case { x, kernel, ties };
    vec![
        // The CNN's 2×2 pooling; the same with ties.
        case([2, 3, 6, 8], [2, 2], false),
        case([2, 3, 6, 8], [2, 2], true),
        // Odd sizes: the last row and column belong to no window.
        case([1, 2, 5, 7], [2, 2], false),
        // A non-square window; 1×1 (the identity and a ReLU); a window as large as the image.
        case([2, 1, 7, 6], [3, 2], true),
        case([1, 2, 3, 4], [1, 1], false),
        case([3, 2, 4, 5], [4, 5], false),
    ]
}

impl Case {
    /// Values in `[-2, 2)`, each an f32 number, lowered by 2.5 in every odd plane, so that the
    /// ReLU clips all of its windows.
    fn input(&self, seed: u64) -> Vec<f64> {
        let v = values(self.x.iter().product(), seed);
        let plane = self.x[2] * self.x[3];
        let round = |x: f64| {
            if self.ties {
                (x * 2.0).round() / 2.0
            } else {
                x
            }
        };
        let lower = |i: usize| if i / plane % 2 == 1 { 2.5 } else { 0.0 };
        v.iter()
            .enumerate()
            .map(|(i, &x)| (round(x) - lower(i)) as f32 as f64)
            .collect()
    }

    fn out(&self) -> [usize; 4] {
        let [n, c, h, w] = self.x;
        [n, c, h / self.kernel[0], w / self.kernel[1]]
    }

    /// The f64 definition: `y = max(0, max over the window)` and the gradient of `Σ w · y`,
    /// `w` at the window's first maximum where `y > 0`.
    fn reference(&self, x: &[f64], w: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let [n, c, h, wd] = self.x;
        let [_, _, oh, ow] = self.out();
        let [kh, kw] = self.kernel;
        let (mut y, mut dx) = (Vec::new(), vec![0.0; x.len()]);
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let mut best = (f64::NEG_INFINITY, 0);
                    for a in 0..kh {
                        for b in 0..kw {
                            let at = p * h * wd + (i * kh + a) * wd + j * kw + b;
                            if x[at] > best.0 {
                                best = (x[at], at);
                            }
                        }
                    }
                    if best.0 > 0.0 {
                        dx[best.1] = w[y.len()];
                    }
                    y.push(best.0.max(0.0));
                }
            }
        }
        (y, dx)
    }
}

fn tensor<const D: usize>(v: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Value and input gradient against the f64 definition and against burn's `relu` then
/// `max_pool2d`, exactly (the inputs are f32 numbers, the maximum picks one of them), for every
/// case and every backend compiled in; the data let the ReLU clip some windows and not others.
#[test]
fn fused_max_pool_relu_matches_the_definition_and_burn() {
    for device in devices() {
        for (n, case) in cases().iter().enumerate() {
            let x0 = case.input(n as u64 + 1);
            let w = values(case.out().iter().product(), 50 + n as u64);
            let (y_ref, dx_ref) = case.reference(&x0, &w);
            assert!(y_ref.contains(&0.0), "case {n}: no window clipped");
            assert!(
                y_ref.iter().any(|&v| v > 0.0),
                "case {n}: every window clipped"
            );
            let (xa, xb) = (
                tensor(&x0, case.x, &device).require_grad(),
                tensor(&x0, case.x, &device).require_grad(),
            );
            let ya = max_pool2d_relu(xa.clone(), case.kernel);
            let yb = max_pool2d(relu(xb.clone()), MaxPoolOptions::new(case.kernel));
            assert_eq!(ya.dims(), case.out(), "case {n}");
            let wt = tensor(&w, case.out(), &device);
            let ga = (ya.clone() * wt.clone()).sum().backward();
            let gb = (yb.clone() * wt).sum().backward();
            let (dxa, dxb) = (flat(xa.grad(&ga).unwrap()), flat(xb.grad(&gb).unwrap()));
            let ya = flat(ya);
            // The f32 product w·1 is the f32 w, the f64 reference's value rounded.
            let f32s = |v: &[f64]| v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>();
            assert_eq!(ya, y_ref, "case {n}: y against the definition");
            assert_eq!(ya, flat(yb), "case {n}: y against burn");
            assert_eq!(dxa, f32s(&dx_ref), "case {n}: dx against the definition");
            assert_eq!(dxa, dxb, "case {n}: dx against burn");
        }
    }
}

/// Without autodiff (evaluation), the same values.
#[cfg(feature = "flex")]
#[test]
fn fused_max_pool_relu_without_autodiff() {
    let device = Device::flex();
    let case = &cases()[0];
    let x0 = case.input(7);
    let y = flat(max_pool2d_relu(tensor(&x0, case.x, &device), case.kernel));
    assert_eq!(y, case.reference(&x0, &vec![0.0; y.len()]).0);
}

/// Windows holding a NaN: its output is NaN and its gradient goes to the window's last NaN, as
/// with burn's `relu` then `max_pool2d`.
#[test]
fn fused_max_pool_relu_propagates_nan_as_burn_does() {
    for device in devices() {
        let shape = [1, 2, 4, 6];
        let mut x0 = values(48, 3);
        for at in [0, 7, 8, 30] {
            x0[at] = f64::NAN;
        }
        let w = values(12, 4);
        let (xa, xb) = (
            tensor(&x0, shape, &device).require_grad(),
            tensor(&x0, shape, &device).require_grad(),
        );
        let ya = max_pool2d_relu(xa.clone(), [2, 2]);
        let yb = max_pool2d(relu(xb.clone()), MaxPoolOptions::new([2, 2]));
        let bits = |t: Tensor<4>| flat(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(ya.clone()), bits(yb.clone()));
        assert_eq!(flat(ya.clone()).iter().filter(|v| v.is_nan()).count(), 3);
        let wt = tensor(&w, [1, 2, 2, 3], &device);
        let ga = (ya * wt.clone()).sum().backward();
        let gb = (yb * wt).sum().backward();
        assert_eq!(flat(xa.grad(&ga).unwrap()), flat(xb.grad(&gb).unwrap()));
    }
}
