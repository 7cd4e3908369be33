//! Times the `flex` max-pool + ReLU kernels on the pooling shapes of one CNN member on MNIST
//! (batch 64), forward and input gradient, against burn-flex's own `relu` + `max_pool2d`.
//!
//!     cargo run --release --features wgpu --example pool_timing

use std::time::Instant;

use adp_kernels::pool::FastMaxPool;
use burn::backend::Flex;
use burn::backend::ops::{ActivationOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{IntDType, TensorData};

/// The CNN's pooled activations on 28×28 images: `[N, C, H, W]`.
const SHAPES: [[usize; 4]; 2] = [[64, 32, 28, 28], [64, 64, 14, 14]];
const REPEATS: usize = 20;

/// Deterministic values in [−0.5, 0.5).
fn tensor(shape: &[usize]) -> FloatTensor<Flex> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    FloatTensor::<Flex>::from_data(TensorData::new(v, shape.to_vec()))
}

/// Mean milliseconds of `f` over [`REPEATS`] runs, after one.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..REPEATS {
        f();
    }
    start.elapsed().as_secs_f64() * 1e3 / REPEATS as f64
}

fn main() {
    println!(
        "| shape | kernel forward ms | kernel backward ms | burn forward ms | burn backward ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    let k = [2, 2];
    for shape in SHAPES {
        let x = tensor(&shape);
        let out = [shape[0], shape[1], shape[2] / 2, shape[3] / 2];
        let g = tensor(&out);
        let fast = time(|| {
            Flex::fast_max_pool2d_relu(x.clone(), k);
        });
        let fast_back = time(|| {
            Flex::fast_max_pool2d_relu_backward(x.clone(), g.clone(), k);
        });
        let burn = time(|| {
            let p = Flex::max_pool2d_with_indices(
                x.clone(),
                k,
                k,
                [0, 0],
                [1, 1],
                false,
                IntDType::I64,
            );
            Flex::relu(p.output);
        });
        let p =
            Flex::max_pool2d_with_indices(x.clone(), k, k, [0, 0], [1, 1], false, IntDType::I64);
        let y = Flex::relu(p.output.clone());
        let burn_back = time(|| {
            let g = Flex::relu_backward(y.clone(), g.clone());
            Flex::max_pool2d_with_indices_backward(
                x.clone(),
                k,
                k,
                [0, 0],
                [1, 1],
                false,
                g,
                p.indices.clone(),
            );
        });
        println!("| {shape:?} | {fast:.2} | {fast_back:.2} | {burn:.2} | {burn_back:.2} |");
    }
}
