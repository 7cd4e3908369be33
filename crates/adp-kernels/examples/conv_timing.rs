//! Times the `flex` convolution kernels on the layer shapes of one ResNet-20 member on MNIST
//! (batch 64): forward, input gradient and weight gradient, per layer and per member.
//!
//!     cargo run --release --features wgpu --example conv_timing -- [--gradient-scale S] [--flush]
//!
//! `--gradient-scale 1e-39` multiplies the output gradient into the subnormal range, as a
//! saturated softmax does; `--flush` flushes subnormals to zero first ([`denormals`]).

use std::time::Instant;

use adp_kernels::conv::FastConv2d;
use adp_kernels::denormals;
use burn::backend::Flex;
use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;
use burn::tensor::TensorData;

/// `[N, C_in, H, W]` inputs of ResNet-20's convolutions on 28×28 images: (C_in, C_out, size,
/// kernel, stride, layers of that shape in one member).
const LAYERS: [(usize, usize, usize, usize, usize, usize); 8] = [
    (1, 16, 28, 3, 1, 1),
    (16, 16, 28, 3, 1, 6),
    (16, 32, 28, 3, 2, 1),
    (32, 32, 14, 3, 1, 5),
    (16, 32, 28, 1, 2, 1),
    (32, 64, 14, 3, 2, 1),
    (64, 64, 7, 3, 1, 5),
    (32, 64, 14, 1, 2, 1),
];
const BATCH: usize = 64;
const REPEATS: usize = 3;

/// Deterministic values in [−0.5, 0.5), times `scale`.
fn tensor(shape: &[usize], scale: f32) -> FloatTensor<Flex> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5) * scale)
        .collect();
    FloatTensor::<Flex>::from_data(TensorData::new(v, shape.to_vec()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale = match args.iter().position(|a| a == "--gradient-scale") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse::<f32>().ok())
            .expect("--gradient-scale takes a number"),
        None => 1.0,
    };
    let flush = args.iter().any(|a| a == "--flush") && denormals::flush_to_zero();
    println!("output gradient scale {scale:e}, subnormals flushed: {flush}");
    let mut total = [0f64; 3];
    for (c_in, c_out, size, k, stride, count) in LAYERS {
        let options = ConvOptions::new([stride, stride], [k / 2, k / 2], [1, 1], 1);
        let (x, w, b) = (
            tensor(&[BATCH, c_in, size, size], 1.0),
            tensor(&[c_out, c_in, k, k], 1.0),
            tensor(&[c_out], 1.0),
        );
        let out = (size + 2 * (k / 2) - k) / stride + 1;
        let dy = tensor(&[BATCH, c_out, out, out], scale);
        let mut ms = [0f64; 3];
        for _ in 0..REPEATS {
            let t = Instant::now();
            let _ = Flex::fast_conv2d(x.clone(), w.clone(), b.clone(), options.clone());
            ms[0] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _ = Flex::fast_conv2d_x_backward(x.clone(), w.clone(), dy.clone(), options.clone());
            ms[1] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let _ = Flex::fast_conv2d_weight_backward(
                x.clone(),
                w.clone(),
                dy.clone(),
                options.clone(),
            );
            ms[2] += t.elapsed().as_secs_f64();
        }
        let ms = ms.map(|s| 1e3 * s / REPEATS as f64);
        for (t, m) in total.iter_mut().zip(ms) {
            *t += m * count as f64;
        }
        println!(
            "{c_in:>2} -> {c_out:>2}, {size}x{size}, {k}x{k} stride {stride} (x{count}): forward {:8.2} ms, input gradient {:8.2} ms, weight gradient {:8.2} ms",
            ms[0], ms[1], ms[2]
        );
    }
    println!(
        "one member: forward {:.1} ms, input gradient {:.1} ms, weight gradient {:.1} ms",
        total[0], total[1], total[2]
    );
}
