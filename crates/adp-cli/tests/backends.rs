//! The GPU paths. Built with `--features wgpu` (on a CPU machine through lavapipe, the software
//! Vulkan of Debian's `mesa-vulkan-drivers`): burn's own layers on CubeCL train, evaluate and
//! attack as this crate's CPU kernels do. Built with `--features tch`: `--device tch-cuda` runs on
//! an NVIDIA GPU, or fails with one line that says what is missing. Without the features: each
//! device names the build that has it.

mod common;

use std::path::{Path, PathBuf};

use adp::data::synthetic::write_synthetic_mnist;
use common::{adp, adp_ok, scratch, train_args};

fn data() -> &'static Path {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let dir = scratch().join("data");
        write_synthetic_mnist(&dir, 256, 100, 11).unwrap();
        dir
    })
}

/// The wgpu device, or `None` (with a note on stderr) where wgpu finds no adapter: the whole
/// suite runs on machines without a GPU or a software Vulkan. `ADP_REQUIRE_WGPU=1`, which
/// `.ci/run` sets once `.ci/vulkan` has found or installed a Vulkan device, makes a missing
/// adapter a failure.
#[cfg(feature = "wgpu")]
fn wgpu() -> Option<burn::prelude::Device> {
    match adp::device::DeviceKind::Wgpu.device() {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("ADP_REQUIRE_WGPU").is_none() => {
            eprintln!("skipped (set ADP_REQUIRE_WGPU=1 to fail instead): {e}");
            None
        }
        Err(e) => panic!("ADP_REQUIRE_WGPU is set: {e}"),
    }
}

/// Trains 2 CNN members for one epoch on `device` into `name`.
fn train_on(device: &str, name: &str) -> PathBuf {
    let out = scratch().join(name);
    let mut args = train_args(data().to_str().unwrap(), out.to_str().unwrap(), "1");
    args.extend(["--device", device]);
    adp_ok(&args);
    out
}

/// The training losses of every epoch of a run.
#[cfg(feature = "wgpu")]
fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("history.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// Evaluates `run` on `device` with FGSM and PGD at ε = 0.1; returns the ensemble's clean error
/// and the two accuracies.
#[cfg(feature = "wgpu")]
fn evaluate(run: &Path, device: &str) -> Vec<f64> {
    adp_ok(&[
        "eval",
        run.to_str().unwrap(),
        "--device",
        device,
        "--data-dir",
        data().to_str().unwrap(),
        "--no-indicators",
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let mut v = vec![report["clean"]["ensemble_error"].as_f64().unwrap()];
    for r in report["robust"].as_array().unwrap() {
        v.push(r["accuracy"].as_f64().unwrap());
    }
    v
}

/// Tolerances, as fractions of the 100 test images. The clean error and the deterministic FGSM
/// may differ by 2 images whose sign of a gradient entry or top class flips with f32 rounding;
/// PGD draws its random start from each backend's own generator, so its accuracies are two
/// independent samples and may differ by about three binomial standard errors.
#[cfg(feature = "wgpu")]
const TOLERANCE: [f64; 3] = [0.02, 0.02, 0.15];

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_trains_evaluates_and_attacks_as_flex_does() {
    if wgpu().is_none() {
        return;
    }
    let flex = train_on("cpu", "flex");
    let wgpu = train_on("wgpu", "wgpu");
    // The same seed gives the same initial weights on both (drawn on the CPU), and the same
    // batches; after one epoch of Adam the losses agree to f32 reduction-order rounding.
    for (a, b) in losses(&flex).iter().zip(losses(&wgpu)) {
        let history = |r: &Path| std::fs::read_to_string(r.join("history.csv")).unwrap();
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "loss {a} vs {b}; flex:\n{}wgpu:\n{}",
            history(&flex),
            history(&wgpu)
        );
    }
    // The same weights evaluated and attacked on both backends.
    let on_flex = evaluate(&flex, "cpu");
    let flex_on_wgpu = evaluate(&flex, "wgpu");
    for ((a, b), tol) in on_flex.iter().zip(&flex_on_wgpu).zip(TOLERANCE) {
        assert!((a - b).abs() <= tol, "{on_flex:?} vs {flex_on_wgpu:?}");
    }
}

#[cfg(feature = "tch")]
#[test]
fn tch_cuda_trains_on_a_gpu_or_says_in_one_line_what_is_missing() {
    let out = scratch().join("tch-cuda");
    let mut args = train_args(data().to_str().unwrap(), out.to_str().unwrap(), "1");
    args.extend(["--device", "tch-cuda"]);
    let o = adp(&args);
    if o.status.success() {
        assert!(out.join("model.safetensors").exists());
    } else {
        common::assert_one_error(
            &o,
            "device tch-cuda: libtorch finds no CUDA GPU",
            "tch-cuda",
        );
    }
}

#[test]
fn a_device_not_built_in_names_the_build_that_has_it() {
    let cases = [
        (cfg!(feature = "wgpu"), "wgpu", "--features wgpu"),
        (cfg!(feature = "tch"), "tch-cuda", "--features tch"),
        (cfg!(feature = "cuda"), "cuda", "--features cuda"),
    ];
    let run = train_on("cpu", "for-missing-devices");
    for (built, device, feature) in cases {
        if built {
            continue;
        }
        let o = adp(&[
            "eval",
            run.to_str().unwrap(),
            "--device",
            device,
            "--data-dir",
            data().to_str().unwrap(),
        ]);
        common::assert_one_error(&o, feature, device);
    }
}

#[test]
fn the_gpu_benchmark_stops_at_once_without_a_gpu() {
    if Path::new("/usr/bin/nvidia-smi").exists() {
        return; // a GPU machine: there bench/gpu runs for real
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/gpu");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no NVIDIA GPU"), "{err}");
}

/// One forward and backward pass of the same ensemble, from the same weights and batch, on flex
/// and on wgpu: the ADP loss and every parameter's gradient agree to f32 rounding.
#[cfg(feature = "wgpu")]
#[test]
fn one_step_on_wgpu_equals_flex_in_loss_and_every_gradient() {
    let Some(wgpu) = wgpu() else { return };
    use adp::loss::{AdpConfig, adp_loss};
    use adp::model::{MemberConfig, ModelKind};
    use adp::train::checkpoint::ModelSpec;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;

    struct Grads<'a> {
        grads: &'a burn::optim::GradientsParams,
        out: Vec<Option<Vec<f32>>>,
    }
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self.grads.get::<D>(param.id);
            self.out
                .push(g.map(|g| g.into_data().try_to_vec::<f32>().unwrap()));
        }
    }
    for kind in [ModelKind::Cnn, ModelKind::Resnet20] {
        let spec = ModelSpec {
            members: 2,
            member: MemberConfig {
                kind,
                input_shape: [1, 12, 12],
                num_classes: 10,
                mean: vec![0.13],
                std: vec![0.31],
            },
        };
        let flex = Device::flex().autodiff();
        flex.seed(3);
        let model = spec.init(&flex);
        let x = Tensor::<4>::random([4, 1, 12, 12], burn::tensor::Distribution::Default, &flex);
        let y = Tensor::<1, Int>::from_ints([0, 1, 2, 3], &flex);
        let wgpu = wgpu.clone().autodiff();
        let mut per_device = Vec::new();
        for device in [&flex, &wgpu] {
            let m = model.clone().to_device(device);
            let logits = m.forward(x.clone().to_device(device)).logits;
            let loss = adp_loss(
                logits,
                y.clone().to_device(device),
                &AdpConfig::new(2.0, 0.5),
            );
            let value = loss.total.clone().into_scalar::<f32>();
            let grads = burn::optim::GradientsParams::from_grads(loss.total.backward(), &m);
            let mut v = Grads {
                grads: &grads,
                out: Vec::new(),
            };
            m.visit(&mut v);
            per_device.push((value, v.out));
        }
        let (lf, gf) = &per_device[0];
        let (lw, gw) = &per_device[1];
        assert!(
            (lf - lw).abs() < 1e-4 * lf.abs().max(1.0),
            "{kind:?}: loss {lf} vs {lw}"
        );
        assert_eq!(gf.len(), gw.len());
        for (i, (a, b)) in gf.iter().zip(gw).enumerate() {
            // Batch norm's running statistics are parameters without a gradient.
            let (Some(a), Some(b)) = (a, b) else {
                assert_eq!(a.is_some(), b.is_some(), "{kind:?}: parameter {i}");
                continue;
            };
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                diff <= 1e-3 * scale,
                "{kind:?}: parameter {i} of {}: gradient differs by {diff} (max |g| {scale})",
                gf.len()
            );
        }
    }
}

/// Five Adam steps of the library's training step on flex and on wgpu, from the same weights
/// and batches: the losses agree step by step.
#[cfg(feature = "wgpu")]
#[test]
fn five_training_steps_on_wgpu_equal_flex() {
    let Some(wgpu) = wgpu() else { return };
    use adp::data::Batch;
    use adp::loss::AdpConfig;
    use adp::model::{MemberConfig, ModelKind};
    use adp::train::checkpoint::ModelSpec;
    use burn::module::Module;
    use burn::optim::{AdamConfig, ModuleOptimizer};
    use burn::prelude::*;

    let spec = ModelSpec {
        members: 2,
        member: MemberConfig {
            kind: ModelKind::Cnn,
            input_shape: [1, 28, 28],
            num_classes: 10,
            mean: vec![0.13],
            std: vec![0.31],
        },
    };
    let flex = Device::flex().autodiff();
    flex.seed(3);
    let model = spec.init(&flex);
    let xs: Vec<Tensor<4>> = (0..5)
        .map(|_| Tensor::random([16, 1, 28, 28], burn::tensor::Distribution::Default, &flex))
        .collect();
    let y = Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5], &flex);
    let wgpu = wgpu.autodiff();
    let mut losses = Vec::new();
    for device in [&flex, &wgpu] {
        let mut m = model.clone().fork(device);
        let mut optims: Vec<ModuleOptimizer> = (0..2)
            .map(|_| AdamConfig::new().with_epsilon(1e-7).init())
            .collect();
        let mut l = Vec::new();
        for x in &xs {
            let batch = Batch {
                images: x.clone().to_device(device),
                labels: y.clone().to_device(device),
            };
            let (next, metrics) = adp::train::train_step(
                m,
                &mut optims,
                batch,
                &AdpConfig::new(2.0, 0.5),
                1e-4,
                &[1e-3, 1e-3],
                &[false, false],
            )
            .unwrap();
            m = next;
            l.push(metrics.loss);
        }
        losses.push(l);
    }
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "flex {:?} vs wgpu {:?}",
            losses[0],
            losses[1]
        );
    }
}

/// A seed gives the same initial ensemble on wgpu as on flex: the weights are drawn on the CPU.
#[cfg(feature = "wgpu")]
#[test]
fn a_seed_gives_the_same_initial_weights_on_wgpu_as_on_flex() {
    let Some(wgpu) = wgpu() else { return };
    use adp::model::{MemberConfig, ModelKind};
    use adp::train::checkpoint::ModelSpec;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;

    struct Values(Vec<Vec<f32>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let spec = ModelSpec {
        members: 2,
        member: MemberConfig {
            kind: ModelKind::Cnn,
            input_shape: [1, 28, 28],
            num_classes: 10,
            mean: vec![0.13],
            std: vec![0.31],
        },
    };
    let mut values = Vec::new();
    for device in [Device::flex(), wgpu] {
        let model = adp::train::initial_ensemble(&spec, 5, &device.autodiff()).unwrap();
        let mut v = Values(Vec::new());
        model.visit(&mut v);
        values.push(v.0);
    }
    assert_eq!(values[0].len(), values[1].len());
    for (i, (a, b)) in values[0].iter().zip(&values[1]).enumerate() {
        assert_eq!(a, b, "parameter {i}");
    }
}
