use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

use super::forward;
use crate::testing::{devices, flat, values};

fn tensor<const D: usize>(v: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// One convolution layer to test.
struct Case {
    x: [usize; 4],
    c_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// top, left, bottom, right
    padding: [usize; 4],
    bias: bool,
}

impl Case {
    fn layer(&self, device: &Device) -> Conv2d {
        let [t, l, b, r] = self.padding;
        Conv2dConfig::new([self.x[1], self.c_out], self.kernel)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_padding(PaddingConfig2d::Explicit(t, l, b, r))
            .with_bias(self.bias)
            .init(device)
    }

    /// `Σ w · conv(x)` on plain f64 numbers, straight from the definition.
    fn loss(&self, x: &[f64], weight: &[f64], bias: &[f64], w: &[f64]) -> f64 {
        let [n, ci, h, wd] = self.x;
        let [kh, kw] = self.kernel;
        let [oh, ow] = self.out();
        let mut loss = 0.0;
        for b in 0..n {
            for co in 0..self.c_out {
                for y in 0..oh {
                    for z in 0..ow {
                        let mut v = if self.bias { bias[co] } else { 0.0 };
                        for c in 0..ci {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let ih = (y * self.stride[0] + i * self.dilation[0]) as i64
                                        - self.padding[0] as i64;
                                    let iw = (z * self.stride[1] + j * self.dilation[1]) as i64
                                        - self.padding[1] as i64;
                                    if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd
                                    {
                                        let xi =
                                            ((b * ci + c) * h + ih as usize) * wd + iw as usize;
                                        v += weight[((co * ci + c) * kh + i) * kw + j] * x[xi];
                                    }
                                }
                            }
                        }
                        loss += w[((b * self.c_out + co) * oh + y) * ow + z] * v;
                    }
                }
            }
        }
        loss
    }

    fn out(&self) -> [usize; 2] {
        let span = |d: usize| {
            let size = self.x[2 + d] + self.padding[d] + self.padding[d + 2];
            (size - self.dilation[d] * (self.kernel[d] - 1) - 1) / self.stride[d] + 1
        };
        [span(0), span(1)]
    }
}

fn cases() -> Vec<Case> {
    let case = |x, c_out, kernel, stride, dilation, padding, bias| Case {
        x,
        c_out,
        kernel,
        stride,
        dilation,
        padding,
        bias,
    };
    vec![
        // ResNet-20: 3x3 stride 1 and 2, padding 1; the 1x1 stride-2 projection.
        case([2, 3, 6, 6], 4, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], true),
        case([2, 4, 7, 7], 3, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], false),
        case([3, 4, 6, 6], 5, [1, 1], [2, 2], [1, 1], [0, 0, 0, 0], true),
        // Non-square kernel and image, dilation, asymmetric padding; one image.
        case([1, 2, 5, 8], 3, [2, 3], [1, 2], [2, 1], [0, 2, 1, 0], true),
        // Padding wider than the image: whole kernel rows and columns fall outside.
        case([2, 1, 2, 3], 2, [3, 3], [2, 1], [1, 1], [3, 4, 3, 4], false),
        // Stride 1 with as many output as input columns (im2col rows are shifted copies): 1x1;
        // dilation with padding 2; padding on one side only; a kernel wider than the image.
        case([2, 4, 5, 5], 3, [1, 1], [1, 1], [1, 1], [0, 0, 0, 0], true),
        case([1, 3, 7, 5], 2, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2], true),
        case([2, 2, 4, 6], 3, [3, 3], [1, 1], [1, 1], [2, 2, 0, 0], false),
        case([2, 2, 2, 3], 2, [5, 5], [1, 1], [1, 1], [2, 2, 2, 2], true),
    ]
}

/// Forward and gradients of the fast convolution against burn's own `Conv2d` on the same
/// parameters, for every case, every backend compiled in.
#[test]
fn fast_conv_matches_burn_conv2d() {
    for device in devices() {
        for (n, case) in cases().iter().enumerate() {
            let conv = case.layer(&device);
            let numel = case.x.iter().product();
            let x = tensor(&values(numel, n as u64 + 1), case.x, &device);
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let (ya, yb) = (forward(&conv, xa.clone()), conv.forward(xb.clone()));
            assert_eq!(ya.dims(), yb.dims(), "case {n}");
            let w = tensor(&values(ya.dims().iter().product(), 99), ya.dims(), &device);
            let close = |what: &str, a: Vec<f64>, b: Vec<f64>| {
                assert_eq!(a.len(), b.len(), "case {n} {what}");
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                        "case {n} {what}[{i}]: {p} vs {q}"
                    );
                }
            };
            close("y", flat(ya.clone()), flat(yb.clone()));
            let ga = (ya * w.clone()).sum().backward();
            let gb = (yb * w).sum().backward();
            close(
                "dx",
                flat(xa.grad(&ga).unwrap()),
                flat(xb.grad(&gb).unwrap()),
            );
            let weight = conv.weight.val();
            close(
                "dW",
                flat(weight.grad(&ga).unwrap()),
                flat(weight.grad(&gb).unwrap()),
            );
            if let Some(bias) = &conv.bias {
                let b = bias.val();
                close("db", flat(b.grad(&ga).unwrap()), flat(b.grad(&gb).unwrap()));
            }
        }
    }
}

/// Every gradient of the fast convolution against central differences of the f64 definition.
#[test]
fn fast_conv_gradients_match_finite_differences() {
    for device in devices() {
        for (n, case) in cases().iter().enumerate() {
            let conv = case.layer(&device);
            let x0 = values(case.x.iter().product(), 10 + n as u64);
            let weight = flat(conv.weight.val());
            let bias = conv
                .bias
                .as_ref()
                .map(|b| flat(b.val()))
                .unwrap_or_default();
            let [oh, ow] = case.out();
            let wshape = [case.x[0], case.c_out, oh, ow];
            let w = values(wshape.iter().product(), 20 + n as u64);
            let x = tensor(&x0, case.x, &device).require_grad();
            let grads = (forward(&conv, x.clone()) * tensor(&w, wshape, &device))
                .sum()
                .backward();
            let h = 1e-4;
            let check =
                |what: &str, analytic: Vec<f64>, base: &[f64], loss: &dyn Fn(&[f64]) -> f64| {
                    for (i, a) in analytic.iter().enumerate() {
                        let (mut plus, mut minus) = (base.to_vec(), base.to_vec());
                        plus[i] += h;
                        minus[i] -= h;
                        let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h);
                        assert!(
                            (a - numeric).abs() <= 1e-3 * (1.0 + numeric.abs()),
                            "case {n} d/d{what}[{i}]: fast {a} vs finite difference {numeric}"
                        );
                    }
                };
            check("x", flat(x.grad(&grads).unwrap()), &x0, &|v| {
                case.loss(v, &weight, &bias, &w)
            });
            let dw = flat(conv.weight.val().grad(&grads).unwrap());
            check("W", dw, &weight, &|v| case.loss(&x0, v, &bias, &w));
            if let Some(b) = &conv.bias {
                let db = flat(b.val().grad(&grads).unwrap());
                check("bias", db, &bias, &|v| case.loss(&x0, &weight, v, &w));
            }
        }
    }
}
