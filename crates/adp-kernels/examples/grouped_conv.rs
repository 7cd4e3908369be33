//! Measures one op alone, to decide whether fusing the K members of an ensemble into one
//! grouped convolution would speed up training and attacks on burn's `flex` backend (README,
//! Performance): K separate 3x3 convolutions (the second conv of the small CNN, 32 → 64 channels
//! on 14x14 maps, batch 64) against one convolution with `groups = K` over the concatenated
//! channels, forward and backward (input and weight gradients), interleaved.
//!
//! `cargo run --release --example grouped_conv [K] [REPS]`

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let k = args.next().and_then(Result::ok).unwrap_or(3).max(1);
    let reps = args.next().and_then(Result::ok).unwrap_or(10).max(1);
    let (batch, c_in, c_out, side) = (64, 32, 64, 14);
    let device = Device::flex().autodiff();
    let random = |shape: [usize; 4]| {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, 0.1), &device).require_grad()
    };
    let xs: Vec<_> = (0..k).map(|_| random([batch, c_in, side, side])).collect();
    let ws: Vec<_> = (0..k).map(|_| random([c_out, c_in, 3, 3])).collect();
    let x_fused = Tensor::cat(xs.clone(), 1).detach().require_grad();
    let w_fused = Tensor::cat(ws.clone(), 0).detach().require_grad();
    let options = |groups| ConvOptions::new([1, 1], [1, 1], [1, 1], groups);

    let separate = || {
        let total = (0..k)
            .map(|i| conv2d(xs[i].clone(), ws[i].clone(), None, options(1)).sum())
            .reduce(|a, b| a + b)
            .unwrap();
        let grads = total.backward();
        (
            xs[0].grad(&grads).unwrap().into_data(),
            ws[0].grad(&grads).unwrap().into_data(),
        )
    };
    let grouped = || {
        let grads = conv2d(x_fused.clone(), w_fused.clone(), None, options(k))
            .sum()
            .backward();
        (
            x_fused.grad(&grads).unwrap().into_data(),
            w_fused.grad(&grads).unwrap().into_data(),
        )
    };
    separate();
    grouped();
    let (mut t_separate, mut t_grouped) = (0.0, 0.0);
    for _ in 0..reps {
        let t = Instant::now();
        separate();
        t_separate += t.elapsed().as_secs_f64();
        let t = Instant::now();
        grouped();
        t_grouped += t.elapsed().as_secs_f64();
    }
    let ms = |t: f64| 1e3 * t / reps as f64;
    println!(
        "K = {k}, conv 3x3 {c_in}->{c_out} on {side}x{side}, batch {batch}, forward + backward, mean of {reps}: \
         {k} separate convs {:.1} ms, one grouped conv {:.1} ms, separate / grouped {:.2}",
        ms(t_separate),
        ms(t_grouped),
        t_separate / t_grouped
    );
}
