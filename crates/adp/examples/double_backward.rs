//! Does burn 0.22 differentiate a gradient? The experiment of issue 18 (GAL and TRS need it):
//! f(x, w) = Σ (w·x)², g = ∂f/∂x = 2w²x, L = Σ g² = Σ 4w⁴x², so ∂L/∂w = 16w³x².
//!
//! 1. The public `Tensor` API (one autodiff level on the dispatch backend): `x.grad(&grads)`
//!    returns a tensor "without an autodiff association", so L is not tracked and `backward`
//!    panics; a dispatch device cannot wrap an autodiff device twice.
//! 2. The raw backend types, `Autodiff<Autodiff<Flex>>`, with the backend's own primitive ops.
//!
//! `cargo run --release --example double_backward`

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Flex};
use burn::prelude::*;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn values<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    block_on(B::float_into_data(t))
        .unwrap()
        .try_to_vec()
        .unwrap()
}

type Inner = Autodiff<Flex>;
type Outer = Autodiff<Inner>;

fn main() {
    let (x0, w0) = ([0.5f32, -1.0, 2.0], [1.5f32, 0.7, -0.3]);
    let analytic: Vec<f32> = x0
        .iter()
        .zip(&w0)
        .map(|(x, w)| 16.0 * w * w * w * x * x)
        .collect();
    println!("analytic dL/dw = {analytic:?}");

    // 1. The public API.
    let public = std::panic::catch_unwind(|| {
        let device = Device::flex().autodiff();
        let x = Tensor::<1>::from_data(x0, &device).require_grad();
        let w = Tensor::<1>::from_data(w0, &device).require_grad();
        let f = (w.clone() * x.clone()).powi_scalar(2).sum();
        let g = x.grad(&f.backward()).unwrap();
        println!(
            "public API: g is_autodiff={} is_tracked={}",
            g.is_autodiff(),
            g.is_tracked()
        );
        let loss = g.powi_scalar(2).sum();
        let grads = loss.backward();
        w.grad(&grads)
            .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
    });
    match public {
        Ok(v) => println!("public API: dL/dw = {v:?}"),
        Err(e) => println!(
            "public API: panicked: {}",
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ),
    }

    // 2. The nested backend types.
    let device = Default::default();
    let leaf = |v: [f32; 3]| {
        let t = <Flex as FloatTensorOps<Flex>>::float_from_data(TensorData::from(v), &device);
        let t = Inner::float_set_require_grad(Inner::from_inner(t), true);
        Outer::float_set_require_grad(Outer::from_inner(t), true)
    };
    let (x, w) = (leaf(x0), leaf(w0));
    let wx = Outer::float_mul(w.clone(), x.clone());
    let f = Outer::float_sum(Outer::float_mul(wx.clone(), wx));
    let grads = Outer::backward(f);
    let g: FloatTensor<Inner> = Outer::grad(&x, &grads).expect("dx");
    println!(
        "nested: g = {:?} (expected 2w²x)",
        values::<Inner>(g.clone())
    );
    let loss = Inner::float_sum(Inner::float_mul(g.clone(), g));
    let grads2 = Inner::backward(loss);
    let w_inner = Outer::inner(w);
    match Inner::grad(&w_inner, &grads2) {
        Some(dw) => {
            let dw = values::<Flex>(dw);
            println!("nested: dL/dw = {dw:?}");
            let exact = dw
                .iter()
                .zip(&analytic)
                .all(|(a, b)| (a - b).abs() <= 1e-4 * (1.0 + b.abs()));
            assert!(exact, "the nested backend's second derivative is wrong");
        }
        None => panic!("nested: dL/dw = None (w not reached)"),
    }
}
