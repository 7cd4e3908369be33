//! Times the `flex` convolution kernels on the layer shapes of one ResNet-20 member on MNIST, or
//! on CIFAR with `--cifar` (batch 64): forward, input gradient and weight gradient, per layer and
//! per member.
//!
//!     cargo run --release --features wgpu --example conv_timing -- [--cifar] [--repeats N] [--gradient-scale S] [--flush]
//!
//! Each time is the fastest of `N` calls (default 5), each on a fresh output.
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

/// `[N, C_in, H, W]` inputs of ResNet-20's convolutions on `channels × size × size` images:
/// (C_in, C_out, size, kernel, stride, layers of that shape in one member).
fn layers(channels: usize, size: usize) -> [(usize, usize, usize, usize, usize, usize); 8] {
    let (half, quarter) = (size.div_ceil(2), size.div_ceil(4));
    [
        (channels, 16, size, 3, 1, 1),
        (16, 16, size, 3, 1, 6),
        (16, 32, size, 3, 2, 1),
        (32, 32, half, 3, 1, 5),
        (16, 32, size, 1, 2, 1),
        (32, 64, half, 3, 2, 1),
        (64, 64, quarter, 3, 1, 5),
        (32, 64, half, 1, 2, 1),
    ]
}
const BATCH: usize = 64;

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
    let number = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        Some(
            args.get(i + 1)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{flag} takes a number")),
        )
    };
    let repeats = number("--repeats").map_or(5, |n| n as usize);
    let scale = number("--gradient-scale").map_or(1.0, |s| s as f32);
    let flush = args.iter().any(|a| a == "--flush") && denormals::flush_to_zero();
    println!("output gradient scale {scale:e}, subnormals flushed: {flush}");
    let (channels, size) = match args.iter().any(|a| a == "--cifar") {
        true => (3, 32),
        false => (1, 28),
    };
    let mut total = [0f64; 3];
    for (c_in, c_out, size, k, stride, count) in layers(channels, size) {
        let options = ConvOptions::new([stride, stride], [k / 2, k / 2], [1, 1], 1);
        let (x, w, b) = (
            tensor(&[BATCH, c_in, size, size], 1.0),
            tensor(&[c_out, c_in, k, k], 1.0),
            tensor(&[c_out], 1.0),
        );
        let out = (size + 2 * (k / 2) - k) / stride + 1;
        let dy = tensor(&[BATCH, c_out, out, out], scale);
        let mut ms = [f64::INFINITY; 3];
        for _ in 0..repeats {
            let t = Instant::now();
            let _ = Flex::fast_conv2d(x.clone(), w.clone(), b.clone(), options.clone());
            ms[0] = ms[0].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = Flex::fast_conv2d_x_backward(x.clone(), w.clone(), dy.clone(), options.clone());
            ms[1] = ms[1].min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let _ = Flex::fast_conv2d_weight_backward(
                x.clone(),
                w.clone(),
                dy.clone(),
                options.clone(),
            );
            ms[2] = ms[2].min(t.elapsed().as_secs_f64());
        }
        let ms = ms.map(|s| 1e3 * s);
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
