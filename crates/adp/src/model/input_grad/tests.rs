//! The explicit input-gradient graphs against burn's own first-order autodiff, and their
//! parameter gradients (the double backward) against central finite differences in f64.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::loss::cross_entropy_with_logits;

use super::*;
use crate::model::{Member, ModelKind, tiny_config};
use adp_kernels::testing::values;

/// A batch of 4 one-channel 8×8 images whose top half is a flat 0 (ties in every max pool of
/// that region), the rest in `[0, 1)`.
fn images(device: &Device, dtype: DType) -> Tensor<4> {
    let v: Vec<f32> = values(4 * 64, 7)
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if i % 64 < 32 {
                0.0
            } else {
                (v as f32 + 2.0) / 4.0
            }
        })
        .collect();
    Tensor::<1>::from_floats(v.as_slice(), device)
        .reshape([4, 1, 8, 8])
        .cast(dtype)
}

fn labels(device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(vec![0i64, 2, 1, 2], [4]), device)
}

fn flat<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.flatten::<1>(0, D - 1)
        .into_data()
        .try_into_vec_as::<f64>()
        .unwrap()
}

/// burn's own `∂ mean CE / ∂x` for a fresh copy of the member.
fn autodiff_input_grad(member: &Member, x: Tensor<4>, y: Tensor<1, Int>) -> Vec<f64> {
    let x = x.require_grad();
    let z = member.forward(x.clone());
    let [_, l] = z.dims();
    let target = y.one_hot::<2>(l).float().cast(z.dtype());
    let loss = cross_entropy_with_logits(z, target);
    flat(x.grad(&loss.backward()).unwrap())
}

#[test]
fn the_explicit_input_gradient_is_autodiffs_for_both_architectures() {
    let ad = crate::device::cpu().autodiff();
    for kind in [ModelKind::Cnn, ModelKind::Resnet20] {
        ad.seed(3);
        let member = Member::new(&tiny_config(kind, 3), &ad);
        let (x, y) = (images(&ad, DType::F32), labels(&ad));
        let reference = autodiff_input_grad(&member, x.clone(), y.clone());
        let (z, g) = logits_and_input_grad(&member, x.clone().require_grad(), y);
        let same_logits = flat(member.forward(x)) == flat(z);
        assert!(
            same_logits,
            "{kind:?}: the logits differ from Member::forward"
        );
        let g = flat(g);
        let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{kind:?}: a zero input gradient tests nothing");
        for (i, (a, b)) in g.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{kind:?} ∂x[{i}]: explicit {a} vs autodiff {b} (scale {scale})"
            );
        }
    }
}

/// Casts every parameter to f64, or adds `h` to element `index` of parameter number `param`.
struct Params {
    param: usize,
    index: usize,
    h: f64,
    seen: usize,
}

impl ModuleMapper for Params {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let this = self.seen;
        self.seen += 1;
        let (param, index, h) = (self.param, self.index, self.h);
        p.map(move |t| {
            let t = t.cast(DType::F64).detach();
            if this != param {
                return t.require_grad();
            }
            let shape = t.shape();
            let mut v = flat(t.clone());
            v[index] += h;
            Tensor::<1>::from_data(TensorData::new(v, [shape.num_elements()]), &t.device())
                .cast(DType::F64)
                .reshape(shape)
                .require_grad()
        })
    }
}

/// Replaces every parameter by fixed values in `[-2, 2)/√fan-in` (weights) or `[-0.2, 0.2)`
/// (biases), so that a test does not depend on the device's random generator, which the tests
/// running beside it in the process draw from too.
struct Fixed(u64);

impl ModuleMapper for Fixed {
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.0 += 1;
        let seed = self.0;
        p.map(move |t| {
            let dims = t.dims();
            let n: usize = dims.iter().product();
            // Convolutions are [out, in, kh, kw], linear layers [in, out].
            let scale = match D {
                1 => 0.1,
                2 => 1.0 / (dims[0] as f64).sqrt(),
                _ => 1.0 / ((n / dims[0]) as f64).sqrt(),
            };
            let v: Vec<f32> = values(n, seed).iter().map(|v| (v * scale) as f32).collect();
            Tensor::<1>::from_floats(v.as_slice(), &t.device())
                .reshape(dims)
                .require_grad()
        })
    }
}

#[test]
fn the_double_backward_matches_finite_differences_in_f64() {
    let ad = crate::device::cpu().autodiff();
    let base = Member::new(&tiny_config(ModelKind::Cnn, 3), &ad).map(&mut Fixed(5));
    let cast = |param, index, h| {
        base.clone().map(&mut Params {
            param,
            index,
            h,
            seen: 0,
        })
    };
    let member = cast(usize::MAX, 0, 0.0);
    let x = images(&ad, DType::F64);
    let v = Tensor::<1>::from_data(TensorData::new(values(4 * 64, 11), [4 * 64]), &ad)
        .cast(DType::F64)
        .reshape([4, 1, 8, 8]);
    // A function of the input gradient only, as GAL's and TRS's regularisers are.
    let r = |m: &Member| {
        let (_, g) = logits_and_input_grad(m, x.clone(), labels(&ad));
        (g.clone() * v.clone()).sum() + g.powi_scalar(2).sum().mul_scalar(100.0)
    };
    let value = |m: &Member| flat(r(m))[0];

    let grads = r(&member).backward();
    let params: Vec<Vec<f64>> = {
        let Member::Cnn(c) = &member else {
            unreachable!()
        };
        [c.conv1.weight.val(), c.conv2.weight.val()]
            .into_iter()
            .map(|w| flat(w.grad(&grads).unwrap()))
            .chain([flat(c.fc1.weight.val().grad(&grads).unwrap())])
            .chain([flat(
                c.fc2.bias.as_ref().unwrap().val().grad(&grads).unwrap(),
            )])
            .collect()
    };
    // The mapper's order of parameters: conv1 (weight, bias), conv2 (weight, bias), fc1, fc2.
    let ids = [0usize, 2, 4, 7];
    // R is ~1e3 and its f64 evaluation carries ~1e-7 of cancellation error (softmax − onehot
    // through the transposed layers), so h = 1e-4 balances that against the ReLU and max-pool
    // kinks; a wrong double backward (a dropped dependence) is off by far more than 1e-3.
    let h = 1e-4;
    let mut checked = 0;
    for (analytic, &id) in params.iter().zip(&ids) {
        for index in [0, analytic.len() / 2, analytic.len() - 1] {
            let numeric = (value(&cast(id, index, h)) - value(&cast(id, index, -h))) / (2.0 * h);
            let a = analytic[index];
            assert!(
                (a - numeric).abs() <= 1e-3 * (1.0 + numeric.abs()),
                "parameter {id}[{index}]: double backward {a} vs finite difference {numeric}"
            );
            checked += usize::from(a != 0.0);
        }
    }
    assert!(
        checked >= 6,
        "only {checked} non-zero derivatives were checked"
    );
}

#[test]
fn dverge_layers_end_with_the_logits() {
    let device = crate::device::cpu();
    for kind in [ModelKind::Cnn, ModelKind::Resnet20] {
        let member = Member::new(&tiny_config(kind, 3), &device);
        let x = images(&device, DType::F32);
        let n = num_layers(&member);
        assert_eq!(n, if kind == ModelKind::Cnn { 4 } else { 20 });
        assert_eq!(
            flat(layer_features(&member, x.clone(), n)),
            flat(member.forward(x.clone()))
        );
        let first = layer_features(&member, x, 1);
        assert_eq!(first.dims()[0], 4);
    }
}
