//! The GPU paths. Built with `--features wgpu` (on a CPU machine through lavapipe, the software
//! Vulkan of Debian's `mesa-vulkan-drivers`): burn's own layers on CubeCL train, evaluate and
//! attack as this crate's CPU kernels do. Built with `--features tch`: `--device tch-cuda` runs on
//! an NVIDIA GPU, or fails with one line that says what is missing. Without the features: each
//! device names the build that has it.

use crate::common;

use std::path::{Path, PathBuf};

use adp::data::synthetic::write_synthetic_mnist;
use common::{adp, adp_ok, scratch_dir, train_args};

fn data() -> &'static Path {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let dir = scratch_dir!().join("data");
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

/// Trains 2 CNN members for one epoch into `name`, on the device that `flags` choose
/// (`--device D` or `--devices D1,D2`).
fn train_on(flags: &[&str], name: &str) -> PathBuf {
    let out = scratch_dir!().join(name);
    let mut args = train_args(data().to_str().unwrap(), out.to_str().unwrap(), "1");
    args.extend(flags);
    adp_ok(&args);
    out
}

/// The run [`train_on`] trains on flex, shared by the tests that compare other devices with it
/// (and never evaluated, so that they can read it at once).
#[cfg(feature = "wgpu")]
fn flex_run() -> &'static Path {
    static RUN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUN.get_or_init(|| train_on(&["--device", "cpu"], "flex"))
}

/// Asserts that two runs' training losses agree epoch by epoch to f32 reduction-order rounding.
#[cfg(feature = "wgpu")]
fn assert_same_losses(a: &Path, b: &Path) {
    let history = |r: &Path| std::fs::read_to_string(r.join("history.csv")).unwrap();
    for (x, y) in losses(a).iter().zip(losses(b)) {
        assert!(
            (x - y).abs() <= 1e-3 * x.abs().max(1.0),
            "loss {x} vs {y}; {}:\n{}{}:\n{}",
            a.display(),
            history(a),
            b.display(),
            history(b)
        );
    }
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

/// Evaluates `run` on the device that `flags` choose with FGSM and PGD at ε = 0.1; returns the
/// ensemble's clean error and the two accuracies.
#[cfg(feature = "wgpu")]
fn evaluate(run: &Path, flags: &[&str]) -> Vec<f64> {
    let mut args = vec!["eval", run.to_str().unwrap()];
    args.extend(flags);
    args.extend([
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
    adp_ok(&args);
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
    let flex = flex_run();
    let wgpu = train_on(&["--device", "wgpu"], "wgpu");
    // The same seed gives the same initial weights on both (drawn on the CPU), and the same
    // batches; after one epoch of Adam the losses agree to f32 reduction-order rounding.
    assert_same_losses(flex, &wgpu);
    // The same weights evaluated and attacked on both backends.
    let on_flex = evaluate(&wgpu, &["--device", "cpu"]);
    let on_wgpu = evaluate(&wgpu, &["--device", "wgpu"]);
    assert_close(&on_flex, &on_wgpu);
}

/// Asserts that two evaluations agree within [`TOLERANCE`].
#[cfg(feature = "wgpu")]
fn assert_close(a: &[f64], b: &[f64]) {
    for ((x, y), tol) in a.iter().zip(b).zip(TOLERANCE) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

/// Member-parallel training and attacks on two real devices: member 0 on flex, member 1 on
/// wgpu, the loss on flex. One epoch trains as it does with both members on flex, and the run
/// evaluates and attacks with that placement as it does on flex alone.
#[cfg(feature = "wgpu")]
#[test]
fn member_parallel_training_on_flex_and_wgpu_equals_flex() {
    if wgpu().is_none() {
        return;
    }
    let parallel = train_on(&["--devices", "cpu,wgpu"], "flex+wgpu");
    let config: adp::train::TrainConfig =
        adp::io::read_toml(&parallel.join("config.toml")).unwrap();
    use adp::device::{DeviceKind, DeviceSpec};
    let placed = [DeviceKind::Cpu, DeviceKind::Wgpu]
        .map(DeviceSpec::first)
        .to_vec();
    assert_eq!((config.device, config.devices), (DeviceKind::Cpu, placed));
    assert_same_losses(flex_run(), &parallel);
    let on_flex = evaluate(&parallel, &["--device", "cpu"]);
    let placed = evaluate(&parallel, &["--devices", "cpu,wgpu"]);
    assert_close(&on_flex, &placed);
}

#[cfg(feature = "tch")]
#[test]
fn tch_cuda_trains_on_a_gpu_or_says_in_one_line_what_is_missing() {
    let out = scratch_dir!().join("tch-cuda");
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
    let run = train_on(&["--device", "cpu"], "for-missing-devices");
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

/// A member-parallel run killed after its first epoch resumes to the weights of the
/// uninterrupted run, bit for bit: each member's Adam state is saved from its device and goes
/// back to it at the first step after the resume, and the resume runs the kernels that the run
/// chose before (its `kernels.db`), whatever the machine's cache holds by then.
///
/// wgpu picks kernels by timing them, and on a loaded machine two processes pick differently
/// and differ in the last bits. So the interrupted run starts from the uninterrupted run's
/// choices (both run where the machine's cache is a directory of their own, which the first
/// fills), and the resume runs where the machine's cache is an empty directory: it can find its
/// kernels only in the run. A `cubecl.toml` in each directory puts the cache there and keeps the
/// tests' own CubeCL settings (this crate's `cubecl.toml`). cubecl also tunes per layout of the
/// operands, so the parameters must be stored alike after an optimizer step and after a load: the
/// run must hold one choice for conv2's input gradient, whatever its timings picked.
#[cfg(feature = "wgpu")]
#[test]
fn a_member_parallel_run_resumes_to_the_same_weights() {
    if wgpu().is_none() {
        return;
    }
    let cache = |name: &str| {
        let dir = scratch_dir!().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tests = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/cubecl.toml"));
        let toml = tests.unwrap() + "\n[environment]\npath = \"local\"\n";
        std::fs::write(dir.join("cubecl.toml"), toml).unwrap();
        dir
    };
    // The two runs share a machine cache of their own: the second starts from the first's choices.
    let shared = cache("shared-kernel-cache");
    let run = |name: &str, epochs: &str| {
        let out = scratch_dir!().join(name);
        let mut args = train_args(data().to_str().unwrap(), out.to_str().unwrap(), epochs);
        args.extend(["--devices", "cpu,wgpu"]);
        common::adp_ok_with(&args, |c| {
            c.current_dir(&shared);
        });
        out
    };
    let whole = run("placed-whole", "2");
    let part = run("placed-part", "1");
    let empty_cache = cache("empty-kernel-cache");
    common::resume_to_two_epochs_with(&part, |c| {
        c.current_dir(&empty_cache);
    });
    let weights = |r: &Path, file: &str| std::fs::read(r.join(file)).unwrap();
    let first = "checkpoint/epoch-0001/model.safetensors";
    assert!(
        weights(&whole, "model.safetensors") == weights(&part, "model.safetensors"),
        "the resumed member-parallel run's weights differ from the uninterrupted run's (after \
         the first epoch they are {})",
        if weights(&whole, first) == weights(&part, first) {
            "the same"
        } else {
            "different already"
        }
    );
    // The kernel of a convolution's input gradient is tuned per layout of its weights: were the
    // weights after an optimizer step stored otherwise than those read from a checkpoint, the
    // run would hold a second choice for conv2 (the CNN's only input gradient), and a resume
    // would differ from the run wherever the two choices sum in other orders.
    let tuned = burn::cubecl::bundle::open(whole.join(adp::autotune::FILE)).unwrap();
    let mut layouts = 0;
    for namespace in tuned.namespaces() {
        if namespace.ends_with("conv-backward_data-tune") {
            tuned.scan(&namespace, &mut |_, _| layouts += 1);
        }
    }
    assert_eq!(
        layouts, 1,
        "conv2's input gradient was tuned for {layouts} weight layouts"
    );
}

/// `adp bench` of two CNN members on a batch of 4, one step and FGSM, with `extra` arguments:
/// its Markdown table and its JSON report.
fn tiny_bench(name: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let json = scratch_dir!().join(format!("{name}.json"));
    let mut args = vec![
        "bench",
        "--models",
        "cnn",
        "--members",
        "2",
        "--batch-size",
        "4",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--attacks",
        "fgsm",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(extra);
    let table = common::stdout(&adp_ok(&args));
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (table, report)
}

/// `adp bench --devices` measures with the placement and says so in its table and its JSON.
#[test]
fn a_member_parallel_benchmark_names_its_placement() {
    let (table, report) = tiny_bench("bench-placed", &["--devices", "cpu,cpu"]);
    assert!(
        table.contains("Device: member-parallel on cpu,cpu"),
        "{table}"
    );
    assert!(table.contains("| train ADP | Cnn | 2 |"), "{table}");
    assert_eq!(
        report["config"]["devices"],
        serde_json::json!(["cpu", "cpu"])
    );
}

/// A process-wide CPU setting that `adp bench` reports: on by default where `supported`, off with
/// `flag`; the table says `on` or `off`, the JSON's `field` is true or false.
fn bench_reports_setting(flag: &str, supported: bool, field: &str, [on, off]: [&str; 2]) {
    for (extra, table_says, set) in [(None, on, supported), (Some(flag), off, false)] {
        let (table, report) = tiny_bench(&format!("bench-{field}-{set}"), &Vec::from_iter(extra));
        if supported || extra.is_some() {
            assert!(table.contains(table_says), "{extra:?}: {table}");
        }
        assert_eq!(report[field], set, "{extra:?}");
    }
}

/// The CPU threads flush subnormal floats to zero unless `--keep-denormals` is given: `adp bench`
/// reads the control register of its own thread and of every thread of rayon's pool.
#[test]
fn the_cpu_threads_flush_subnormals_unless_told_to_keep_them() {
    bench_reports_setting(
        "--keep-denormals",
        cfg!(target_arch = "x86_64"),
        "flush_to_zero",
        ["subnormals flushed to zero", "subnormals kept"],
    );
}

/// malloc keeps freed memory for the next step unless `--malloc-defaults` is given: `adp bench`
/// says which in its table and its JSON.
#[test]
fn malloc_keeps_freed_memory_unless_told_to_keep_its_defaults() {
    bench_reports_setting(
        "--malloc-defaults",
        cfg!(all(target_os = "linux", target_env = "gnu")),
        "malloc_keeps_freed",
        [
            "freed memory kept by malloc",
            "freed memory returned by malloc",
        ],
    );
}

/// A placement that cannot work is refused in one line, before the run directory is written:
/// the peer methods (their input-gradient code runs on one device), and a `config.toml` whose
/// `devices` does not start with its `device`.
#[test]
fn a_member_parallel_placement_that_cannot_work_is_refused_in_one_line() {
    let out = scratch_dir!().join("gal-placed");
    let mut args = train_args(data().to_str().unwrap(), out.to_str().unwrap(), "1");
    args.extend(["--method", "gal", "--devices", "cpu,cpu"]);
    common::assert_one_error(
        &adp(&args),
        "combines only with ECE and ADP",
        "gal --devices",
    );
    assert!(!out.exists(), "a refused run wrote {}", out.display());

    let sweep = scratch_dir!().join("placed-sweep");
    std::fs::create_dir_all(&sweep).unwrap();
    let config = adp::train::TrainConfig {
        data_dir: data().to_path_buf(),
        devices: vec!["wgpu".parse().unwrap(), "cpu".parse().unwrap()],
        ..adp::train::TrainConfig::paper_mnist(adp::train::Method::Ece, 0.0, 0.0)
    };
    let file = sweep.join("config.toml");
    adp::io::write_toml(&file, &config).unwrap();
    let o = adp(&["train", "--resume", sweep.to_str().unwrap()]);
    common::assert_one_error(&o, "`devices` in", "devices not starting with device");
    assert!(common::stderr(&o).contains("must start with a device of `device` (cpu)"));
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

/// One forward and backward pass of the same ensemble, from the same weights and batch, on flex,
/// on wgpu, and member-parallel (member 0 on flex, member 1 on wgpu, the loss on flex): the ADP
/// loss, every parameter's gradient and the gradient with respect to the input (what the attacks
/// ascend) agree to f32 rounding.
#[cfg(feature = "wgpu")]
#[test]
fn one_step_on_wgpu_and_member_parallel_equals_flex_in_loss_and_every_gradient() {
    let Some(wgpu) = wgpu() else { return };
    use adp::loss::{AdpConfig, adp_loss};
    use adp::model::{MemberConfig, ModelKind};
    use adp::train::checkpoint::ModelSpec;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::prelude::*;

    struct Grads<'a> {
        grads: &'a burn::optim::GradientsParams,
        out: Vec<Option<(Vec<f32>, Device)>>,
    }
    impl ModuleVisitor for Grads<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let g = self.grads.get::<D>(param.id);
            self.out.push(g.map(|g| {
                let device = g.device();
                (g.into_data().try_to_vec::<f32>().unwrap(), device)
            }));
        }
    }
    /// The largest difference between `a` and `b`, relative to the largest |a| or to 1e-3,
    /// whichever is larger: gradients that vanish in exact arithmetic (ResNet-20's conv biases,
    /// which a batch norm follows, are about 1e-7 from f32 rounding) are compared absolutely.
    fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
    }
    let flex = Device::flex().autodiff();
    let wgpu = wgpu.autodiff();
    let placements = [
        vec![flex.clone()],
        vec![wgpu.clone()],
        vec![flex.clone(), wgpu],
    ];
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
        flex.seed(3);
        let model = spec.init(&flex);
        let x = Tensor::<4>::random([4, 1, 12, 12], burn::tensor::Distribution::Default, &flex);
        let y = Tensor::<1, Int>::from_ints([0, 1, 2, 3], &flex);
        let mut per_placement = Vec::new();
        for devices in &placements {
            let home = &devices[0];
            let m = model.clone().fork(home).place(devices);
            let x = x.clone().to_device(home).detach().require_grad();
            let logits = m.forward(x.clone()).logits;
            assert_eq!(
                logits.device(),
                *home,
                "the logits come back to the input's device"
            );
            let loss = adp_loss(logits, y.clone().to_device(home), &AdpConfig::new(2.0, 0.5));
            let value = loss.total.clone().into_scalar::<f32>();
            let mut grads = loss.total.backward();
            let input = x.grad(&grads).unwrap().into_data();
            let input = input.try_to_vec::<f32>().unwrap();
            let grads = burn::optim::GradientsParams::from_module(&mut grads, &m);
            let mut v = Grads {
                grads: &grads,
                out: Vec::new(),
            };
            for (k, member) in m.members.iter().enumerate() {
                let before = v.out.len();
                member.visit(&mut v);
                for g in v.out[before..].iter().flatten() {
                    assert_eq!(
                        g.1,
                        devices[k % devices.len()],
                        "member {k}'s gradient device"
                    );
                }
            }
            per_placement.push((value, input, v.out));
        }
        let (lf, xf, gf) = &per_placement[0];
        for (name, (l, xg, g)) in ["wgpu", "flex+wgpu"].iter().zip(&per_placement[1..]) {
            assert!(
                (lf - l).abs() < 1e-4 * lf.abs().max(1.0),
                "{kind:?} on {name}: loss {lf} vs {l}"
            );
            let gap = relative_gap(xf, xg);
            assert!(
                gap <= 1e-3,
                "{kind:?} on {name}: input gradient differs by {gap}"
            );
            assert_eq!(gf.len(), g.len());
            for (i, (a, b)) in gf.iter().zip(g).enumerate() {
                // Batch norm's running statistics are parameters without a gradient.
                let (Some((a, _)), Some((b, _))) = (a, b) else {
                    assert_eq!(a.is_some(), b.is_some(), "{kind:?}: parameter {i}");
                    continue;
                };
                let gap = relative_gap(a, b);
                assert!(
                    gap <= 1e-3,
                    "{kind:?} on {name}: parameter {i} of {}: gradient differs by {gap} of max |g|",
                    gf.len()
                );
            }
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
    use burn::module::Module;
    use burn::optim::{AdamConfig, ModuleOptimizer};
    use burn::prelude::*;

    let spec = common::cnn_spec(2, [1, 28, 28], 10, 0.13, 0.31);
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

/// In a build with wgpu, on a machine where wgpu finds no adapter, a CPU run still resumes: burn
/// loads the optimizer states on its default device, which `adp` makes the CPU. Vulkan and EGL
/// are hidden from the processes with their loaders' own variables.
#[cfg(feature = "wgpu")]
#[test]
fn a_cpu_run_resumes_in_a_wgpu_build_where_no_adapter_exists() {
    let hidden = [
        ("VK_ICD_FILENAMES", "/nonexistent"),
        ("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent"),
    ];
    let run = train_on(&["--device", "cpu"], "cpu-resume-without-adapter");
    let probe = common::adp_with(
        &[
            "eval",
            run.to_str().unwrap(),
            "--device",
            "wgpu",
            "--data-dir",
            data().to_str().unwrap(),
        ],
        |c| {
            c.envs(hidden);
        },
    );
    if probe.status.success() {
        eprintln!("skipped: wgpu finds an adapter even with Vulkan and EGL hidden");
        return;
    }
    common::assert_one_error(&probe, "no usable GPU adapter", "wgpu hidden");
    common::resume_to_two_epochs_with(&run, |c| {
        c.envs(hidden);
    });
    assert!(run.join("model.safetensors").exists());
}

/// A one-channel gradient in NHWC memory order (strides `[HW, 1, W, 1]`, as a convolution's
/// backward may hand it back on CubeCL) fuses into the gradient-sign step of FGSM as on flex
/// once `standard_layout` has laid it out afresh. burn-cubecl-fusion 0.22.1 takes that layout
/// for a permutation and reads the other operand at the wrong positions.
#[cfg(feature = "wgpu")]
#[test]
fn a_one_channel_gradient_in_nhwc_order_fuses_as_on_flex() {
    let Some(wgpu) = wgpu() else { return };
    use burn::prelude::*;
    use burn::tensor::TensorData;

    let [n, h, w] = [4, 28, 28];
    let pixels: Vec<f32> = (0..n * h * w).map(|i| (i % 251) as f32 / 250.0).collect();
    let step = |device: &Device| -> Vec<f32> {
        let x = Tensor::<4>::from_data(TensorData::new(pixels.clone(), [n, 1, h, w]), device);
        let grad = Tensor::<4>::from_data(TensorData::new(pixels.clone(), [n, h, w, 1]), device)
            .sub_scalar(0.5)
            .permute([0, 3, 1, 2]);
        let grad = adp::tensor::standard_layout(grad);
        (x + grad.sign().mul_scalar(0.1))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(step(&Device::flex()), step(&wgpu));
}
