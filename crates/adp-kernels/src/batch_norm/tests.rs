use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;

use super::{forward, forward_add_relu, forward_relu};
use crate::testing::{devices, flat, values};

/// A layer with non-trivial γ, β and running statistics.
fn layer(channels: usize, device: &Device) -> BatchNorm {
    let mut bn = BatchNormConfig::new(channels)
        .with_momentum(0.01)
        .with_epsilon(1e-3)
        .init(device);
    let v = |seed, shift: f64| {
        let data: Vec<f32> = values(channels, seed)
            .iter()
            .map(|x| (x + shift) as f32)
            .collect();
        Tensor::<1>::from_data(TensorData::new(data, [channels]), device)
    };
    bn.gamma = bn.gamma.map(|_| v(1, 0.0).require_grad());
    bn.beta = bn.beta.map(|_| v(2, 0.0).require_grad());
    bn.running_mean = burn::module::RunningState::new(v(3, 0.0));
    bn.running_var = burn::module::RunningState::new(v(4, 2.5));
    bn
}

/// What follows the batch norm in a test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum After {
    Nothing,
    Relu,
    /// `relu(bn(x) + r)` with `r` the residual input.
    AddRelu,
}

const AFTER: [After; 3] = [After::Nothing, After::Relu, After::AddRelu];

/// The fused batch norm, followed by what `after` says (`residual` for [`After::AddRelu`]).
fn normalise(bn: &BatchNorm, x: Tensor<4>, after: After, residual: Tensor<4>) -> Tensor<4> {
    match after {
        After::Nothing => forward(bn, x),
        After::Relu => forward_relu(bn, x),
        After::AddRelu => forward_add_relu(bn, x, residual),
    }
}

/// `Σ w · y` of the f64 formula of the training-mode forward (then `+ r` and `max(·, 0)`, as
/// `after` says), on plain numbers.
#[allow(clippy::too_many_arguments)]
fn reference_loss(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    r: &[f64],
    w: &[f64],
    shape: [usize; 4],
    after: After,
) -> f64 {
    let [n, c, h, wd] = shape;
    let plane = h * wd;
    let idx = |i: usize, ch: usize, k: usize| (i * c + ch) * plane + k;
    let mut loss = 0.0;
    for ch in 0..c {
        let vals: Vec<f64> = (0..n)
            .flat_map(|i| (0..plane).map(move |k| (i, k)))
            .map(|(i, k)| x[idx(i, ch, k)])
            .collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
        for i in 0..n {
            for k in 0..plane {
                let y = gamma[ch] * (x[idx(i, ch, k)] - m) / (var + 1e-3).sqrt() + beta[ch];
                loss += w[idx(i, ch, k)]
                    * match after {
                        After::Nothing => y,
                        After::Relu => y.max(0.0),
                        After::AddRelu => (y + r[idx(i, ch, k)]).max(0.0),
                    };
            }
        }
    }
    loss
}

/// Forward and every gradient of the fused training-mode batch norm against finite differences
/// of the f64 formula, on a shape whose planes are not a multiple of the 8 summation lanes.
#[test]
fn fused_train_gradients_match_finite_differences() {
    for device in devices() {
        for after in AFTER {
            check_against_finite_differences(device.clone(), after);
        }
    }
}

fn check_against_finite_differences(device: Device, after: After) {
    let relu = after != After::Nothing;
    let shape = [3usize, 2, 3, 5];
    let n: usize = shape.iter().product();
    let (x0, w, r0) = (values(n, 7), values(n, 8), values(n, 9));
    let mut bn = layer(2, &device);
    if relu {
        // β = 0: about half of the outputs fall below zero.
        bn.beta = bn.beta.map(|b| b.zeros_like().require_grad());
    }
    let gamma: Vec<f64> = flat(bn.gamma.val());
    let beta: Vec<f64> = flat(bn.beta.val());
    let x32: Vec<f32> = x0.iter().map(|&v| v as f32).collect();
    let x = Tensor::<4>::from_data(TensorData::new(x32, shape), &device).require_grad();
    let r32: Vec<f32> = r0.iter().map(|&v| v as f32).collect();
    let r = Tensor::<4>::from_data(TensorData::new(r32, shape), &device).require_grad();
    let wt = Tensor::<4>::from_data(
        TensorData::new(w.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape),
        &device,
    );
    let y = normalise(&bn, x.clone(), after, r.clone());
    if relu {
        let zeros = flat(y.clone()).iter().filter(|&&v| v == 0.0).count();
        assert!(
            zeros > 0 && zeros < n,
            "the ReLU must clip some values: {zeros} of {n}"
        );
    }
    let loss = (y * wt).sum();
    let got = flat(loss.clone().inner());
    let want = reference_loss(&x0, &gamma, &beta, &r0, &w, shape, after);
    assert!(
        (got[0] - want).abs() < 1e-4 * (1.0 + want.abs()),
        "{after:?}: {got:?} vs {want}"
    );

    let grads = loss.backward();
    let h = 1e-4;
    let central = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
    let check = |name: &str, analytic: Vec<f64>, numeric: Vec<f64>| {
        for (i, (a, b)) in analytic.iter().zip(&numeric).enumerate() {
            assert!(
                (a - b).abs() <= 2e-4 * (1.0 + b.abs()),
                "{after:?}: d/d{name}[{i}]: fused {a} vs finite difference {b}"
            );
        }
    };
    let dx: Vec<f64> = (0..n)
        .map(|i| {
            central(&|d| {
                let mut x = x0.clone();
                x[i] += d;
                reference_loss(&x, &gamma, &beta, &r0, &w, shape, after)
            })
        })
        .collect();
    check("x", flat(x.grad(&grads).unwrap()), dx);
    let dgamma: Vec<f64> = (0..2)
        .map(|c| {
            central(&|d| {
                let mut g = gamma.clone();
                g[c] += d;
                reference_loss(&x0, &g, &beta, &r0, &w, shape, after)
            })
        })
        .collect();
    check("γ", flat(bn.gamma.val().grad(&grads).unwrap()), dgamma);
    let dbeta: Vec<f64> = (0..2)
        .map(|c| {
            central(&|d| {
                let mut b = beta.clone();
                b[c] += d;
                reference_loss(&x0, &gamma, &b, &r0, &w, shape, after)
            })
        })
        .collect();
    check("β", flat(bn.beta.val().grad(&grads).unwrap()), dbeta);
    if after == After::AddRelu {
        let dr: Vec<f64> = (0..n)
            .map(|i| {
                central(&|d| {
                    let mut r = r0.clone();
                    r[i] += d;
                    reference_loss(&x0, &gamma, &beta, &r, &w, shape, after)
                })
            })
            .collect();
        check("r", flat(r.grad(&grads).unwrap()), dr);
    }
}

/// The fused path computes what `burn::nn::BatchNorm::forward` computes on a ResNet-20 shape:
/// training output, input and parameter gradients, the running-statistics update, and the
/// evaluation-mode output.
#[test]
fn fused_matches_burn_batch_norm() {
    for device in devices() {
        for after in AFTER {
            compare_with_burn(device.clone(), after);
        }
    }
}

fn compare_with_burn(device: Device, after: After) {
    use burn::tensor::activation::relu;
    let theirs_forward = |bn: &BatchNorm, x: Tensor<4>, r: Tensor<4>| {
        let y = bn.forward(x);
        match after {
            After::Nothing => y,
            After::Relu => relu(y),
            After::AddRelu => relu(y + r),
        }
    };
    let shape = [4usize, 16, 8, 8];
    let n: usize = shape.iter().product();
    let data = |seed| {
        let v: Vec<f32> = values(n, seed)
            .iter()
            .map(|&v| (v * 3.0 + 1.0) as f32)
            .collect();
        Tensor::<4>::from_data(TensorData::new(v, shape), &device)
    };
    let (x, w, r) = (data(11), data(12), data(13));
    let close = |what: &str, a: Vec<f64>, b: Vec<f64>| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                "{after:?}: {what}[{i}]: {p} vs {q}"
            );
        }
    };
    let (ours, theirs) = (layer(16, &device), layer(16, &device));
    let (xa, xb) = (x.clone().require_grad(), x.clone().require_grad());
    let (ra, rb) = (r.clone().require_grad(), r.clone().require_grad());
    let ya = normalise(&ours, xa.clone(), after, ra.clone());
    let yb = theirs_forward(&theirs, xb.clone(), rb.clone());
    close("output", flat(ya.clone()), flat(yb.clone()));
    let (ga, gb) = ((ya * w.clone()).sum().backward(), (yb * w).sum().backward());
    close(
        "dx",
        flat(xa.grad(&ga).unwrap()),
        flat(xb.grad(&gb).unwrap()),
    );
    for (what, p, q) in [
        ("dγ", ours.gamma.val(), theirs.gamma.val()),
        ("dβ", ours.beta.val(), theirs.beta.val()),
    ] {
        close(what, flat(p.grad(&ga).unwrap()), flat(q.grad(&gb).unwrap()));
    }
    if after == After::AddRelu {
        close(
            "dr",
            flat(ra.grad(&ga).unwrap()),
            flat(rb.grad(&gb).unwrap()),
        );
    }
    close(
        "running mean",
        flat(ours.running_mean.value()),
        flat(theirs.running_mean.value()),
    );
    close(
        "running var",
        flat(ours.running_var.value()),
        flat(theirs.running_var.value()),
    );
    let (ours, theirs) = (ours.valid(), theirs.valid());
    let (x, r) = (x.inner(), r.inner());
    close(
        "eval output",
        flat(normalise(&ours, x.clone(), after, r.clone())),
        flat(theirs_forward(&theirs, x, r)),
    );
}

/// Evaluation mode under autodiff (an attack's input gradient, or a frozen layer whose γ and β
/// still train): the fused affine map against `BatchNorm::forward` + add + `relu`, in the
/// output and the gradients of x, the shortcut, γ and β.
#[test]
fn fused_eval_mode_gradients_match_burn() {
    use burn::module::Param;
    use burn::tensor::activation::relu;
    for device in devices() {
        for after in AFTER {
            let shape = [3usize, 4, 5, 6];
            let n: usize = shape.iter().product();
            let data = |seed| {
                let v: Vec<f32> = values(n, seed).iter().map(|&v| v as f32).collect();
                Tensor::<4>::from_data(TensorData::new(v, shape), &device)
            };
            let (x, w, r) = (data(21), data(22), data(23));
            let eval = |mut bn: BatchNorm| {
                bn.training = Param::from_bool(false);
                bn
            };
            let (ours, theirs) = (eval(layer(4, &device)), eval(layer(4, &device)));
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let (ra, rb) = (r.clone().require_grad(), r.require_grad());
            let ya = normalise(&ours, xa.clone(), after, ra.clone());
            let yb = match after {
                After::Nothing => theirs.forward(xb.clone()),
                After::Relu => relu(theirs.forward(xb.clone())),
                After::AddRelu => relu(theirs.forward(xb.clone()) + rb.clone()),
            };
            if after != After::Nothing {
                assert!(
                    flat(ya.clone()).contains(&0.0),
                    "{after:?}: nothing clipped"
                );
            }
            let close = |what: &str, a: Vec<f64>, b: Vec<f64>| {
                assert_eq!(a.len(), b.len(), "{what}");
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{after:?}: {what}[{i}]: {p} vs {q}"
                    );
                }
            };
            close("y", flat(ya.clone()), flat(yb.clone()));
            let (ga, gb) = ((ya * w.clone()).sum().backward(), (yb * w).sum().backward());
            let grad = |t: &Tensor<4>, g| flat(t.grad(g).unwrap());
            close("dx", grad(&xa, &ga), grad(&xb, &gb));
            if after == After::AddRelu {
                close("dr", grad(&ra, &ga), grad(&rb, &gb));
            }
            for (what, p, q) in [
                ("dγ", ours.gamma.val(), theirs.gamma.val()),
                ("dβ", ours.beta.val(), theirs.beta.val()),
            ] {
                close(what, flat(p.grad(&ga).unwrap()), flat(q.grad(&gb).unwrap()));
            }
        }
    }
}
