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

/// Evaluates `run` on `device` with FGSM, BIM and PGD at ε = 0.1; returns the ensemble's clean
/// error and the three accuracies.
#[cfg(feature = "wgpu")]
fn evaluate(run: &Path, device: &str) -> Vec<f64> {
    adp_ok(&[
        "eval",
        run.to_str().unwrap(),
        "--device",
        device,
        "--data-dir",
        data().to_str().unwrap(),
        "--attack",
        "fgsm",
        "--eps",
        "0.1",
        "--attack",
        "bim",
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
/// and BIM may differ by 2 images whose sign of a gradient entry or top class flips with f32
/// rounding; PGD draws its random start from each backend's own generator, so its accuracies
/// are two independent samples and may differ by about three binomial standard errors.
#[cfg(feature = "wgpu")]
const TOLERANCE: [f64; 4] = [0.02, 0.02, 0.02, 0.15];

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_trains_evaluates_and_attacks_as_flex_does() {
    let flex = train_on("cpu", "flex");
    let wgpu = train_on("wgpu", "wgpu");
    // The same seed gives the same initial weights on both (drawn on the CPU), and the same
    // batches; after one epoch of Adam the losses agree to f32 reduction-order rounding.
    for (a, b) in losses(&flex).iter().zip(losses(&wgpu)) {
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "loss {a} vs {b}");
    }
    // The same weights evaluated and attacked on both backends.
    let on_flex = evaluate(&flex, "cpu");
    let flex_on_wgpu = evaluate(&flex, "wgpu");
    for ((a, b), tol) in on_flex.iter().zip(&flex_on_wgpu).zip(TOLERANCE) {
        assert!((a - b).abs() <= tol, "{on_flex:?} vs {flex_on_wgpu:?}");
    }
    // And the run trained on wgpu, evaluated there, against the flex run on flex.
    let on_wgpu = evaluate(&wgpu, "wgpu");
    for ((a, b), tol) in on_flex.iter().zip(&on_wgpu).zip(TOLERANCE) {
        assert!((a - b).abs() <= 2.0 * tol, "{on_flex:?} vs {on_wgpu:?}");
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gpu");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no NVIDIA GPU"), "{err}");
}
