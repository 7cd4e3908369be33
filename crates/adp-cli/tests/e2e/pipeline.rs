//! End-to-end tests of the `adp` binary and library on a small synthetic data set in MNIST's
//! on-disk layout: training, resuming after a real kill, evaluation, attacks on a trained model,
//! the reproduction pipeline, and the error messages of bad input.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use adp::attack::{AttackKind, AttackSpec, Classifier, Goal, Victim};
use adp::data::idx::encode_idx;
use adp::data::synthetic::write_synthetic_mnist;
use adp::data::{Batcher, DatasetKind, Split, load_idx_dataset};
use adp::eval::robust;
use adp::train::checkpoint::load_run;
use burn::module::Module;
use common::{
    adp, adp_ok, assert_one_error, reproduce_tiny_args, scratch_dir, stderr, stdout,
    synthetic_data, train_args,
};

fn data_dir() -> PathBuf {
    synthetic_data()
}

/// A run trained once by the binary (2 CNN members, 2 epochs) and shared by the tests.
fn trained_run() -> PathBuf {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let data = data_dir();
        let run = scratch_dir!().join("run");
        adp_ok(&train_args(
            data.to_str().unwrap(),
            run.to_str().unwrap(),
            "2",
        ));
        run
    })
    .clone()
}

#[test]
fn training_writes_a_complete_run_directory() {
    let run = trained_run();
    for f in [
        "config.toml",
        "model.toml",
        "model.safetensors",
        "latest.json",
        "history.csv",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert!(run.join("checkpoint/epoch-0002/model.safetensors").exists());
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoint/epoch-0002/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["epoch"], 2);
    assert_eq!(manifest["seed"], 3);
    assert_eq!(manifest["backend"], "cpu");
    assert_eq!(manifest["burn_version"], "0.22.1");
    assert_eq!(manifest["config"]["members"], 2);
    let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
    assert_eq!(history.lines().count(), 3, "{history}");
    let o = adp(&["train", "--resume", run.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "resuming a finished run is a no-op: {}",
        stderr(&o)
    );
}

#[test]
fn eval_prints_tables_and_writes_json_and_csv() {
    let run = trained_run();
    let o = adp_ok(&[
        "eval",
        run.to_str().unwrap(),
        "--attack",
        "fgsm",
        "--eps",
        "0.05,0.3",
        "--attack",
        "pgd",
        "--eps",
        "0.3",
        "--limit",
        "100",
        "--no-indicators",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("| Ensemble |") && out.contains("| PGD | ε = 0.3 |"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval.json")).unwrap()).unwrap();
    let robust = report["robust"].as_array().unwrap();
    assert_eq!(robust.len(), 3);
    let clean_error = report["clean"]["ensemble_error"].as_f64().unwrap();
    assert!(
        clean_error < 0.1,
        "the synthetic task is easy: clean error {clean_error}"
    );
    let acc = |i: usize| robust[i]["accuracy"].as_f64().unwrap();
    assert!(
        acc(1) <= acc(0),
        "a larger ε cannot help: {} > {}",
        acc(1),
        acc(0)
    );
    let csv = std::fs::read_to_string(run.join("eval.csv")).unwrap();
    assert!(
        csv.lines().any(|l| l.contains(",accuracy,pgd,0.3,")),
        "{csv}"
    );
}

#[test]
fn attack_command_saves_adversarial_examples_within_budget() {
    let run = trained_run();
    let out = scratch_dir!().join("adv.safetensors");
    let o = adp_ok(&[
        "attack",
        run.to_str().unwrap(),
        "--attack",
        "pgd",
        "--eps",
        "0.2",
        "--targeted",
        "--member",
        "1",
        "--limit",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stdout(&o).contains("on member 1, 50 test images"));
    let t = tensors(&out);
    let (shape, adv) = &t["adversarial"];
    assert_eq!(shape, &serde_json::json!([50, 1, 28, 28]));
    assert_eq!(t["targets"].0, serde_json::json!([50]));
    assert_eq!(t["norms"].0, serde_json::json!([50, 4]));
    let test = load_idx_dataset(&data_dir(), DatasetKind::Mnist, Split::Test)
        .unwrap()
        .take(50);
    let adv: Vec<f32> = adv
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (a, x) in adv.iter().zip(&test.images) {
        assert!(
            (0.0..=1.0).contains(a) && (a - x).abs() <= 0.2 + 1e-6,
            "{a} vs {x}"
        );
    }
    let labels = &t["labels"].1;
    let targets = &t["targets"].1;
    assert!(
        labels.chunks(8).zip(targets.chunks(8)).all(|(l, t)| l != t),
        "a target equals its label"
    );
}

#[test]
fn attacks_on_a_trained_ensemble_stay_in_budget_and_pgd_beats_fgsm() {
    let run = trained_run();
    let device = adp::device::cpu();
    let (_, model) = load_run(&run, &device).unwrap();
    let model = model.valid();
    let test = load_idx_dataset(&data_dir(), DatasetKind::Mnist, Split::Test)
        .unwrap()
        .take(200);
    let eps = 0.25;
    let fgsm = robust(
        &model,
        &test,
        &AttackSpec::new(AttackKind::Fgsm, eps),
        false,
        100,
        0,
        None,
        &device,
    )
    .unwrap();
    let pgd = robust(
        &model,
        &test,
        &AttackSpec::new(AttackKind::Pgd, eps),
        false,
        100,
        0,
        None,
        &device,
    )
    .unwrap();
    assert!(
        pgd.accuracy <= fgsm.accuracy,
        "PGD {} vs FGSM {}",
        pgd.accuracy,
        fgsm.accuracy
    );

    let victim = Victim::ensemble(&model);
    let batch = Batcher::sequential(&test, 100).batch(0, &device);
    for kind in [AttackKind::Fgsm, AttackKind::Bim, AttackKind::Pgd] {
        let attack = AttackSpec::new(kind, eps).build();
        let out = attack.attack(&victim, batch.images.clone(), batch.labels.clone());
        let adv = out
            .adversarial
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let x = batch
            .images
            .clone()
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        for (a, x) in adv.iter().zip(&x) {
            assert!(
                (0.0..=1.0).contains(a),
                "{kind:?}: pixel {a} outside [0, 1]"
            );
            assert!(
                (a - x).abs() <= eps as f32 + 1e-6,
                "{kind:?}: |{a} - {x}| > {eps}"
            );
        }
    }

    // Targeted PGD reaches its random target far more often than chance (1 in 9).
    let targeted = robust(
        &model,
        &test,
        &AttackSpec::new(AttackKind::Pgd, 0.3),
        true,
        100,
        5,
        None,
        &device,
    )
    .unwrap();
    assert!(
        targeted.success_rate > 0.3,
        "targeted success {}",
        targeted.success_rate
    );
    let lp = victim.log_probs(batch.images.clone());
    assert_eq!(Goal::Untargeted(batch.labels).achieved(lp).len(), 100);
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let data = data_dir();
    let (a, b) = (
        scratch_dir!().join("uninterrupted"),
        scratch_dir!().join("killed"),
    );
    adp_ok(&train_args(
        data.to_str().unwrap(),
        a.to_str().unwrap(),
        "3",
    ));

    let mut child = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(train_args(data.to_str().unwrap(), b.to_str().unwrap(), "3"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !b.join("latest.json").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("model.safetensors").exists(),
        "the run finished before it was killed"
    );

    let o = adp_ok(&["train", "--resume", b.to_str().unwrap()]);
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    let (wa, wb) = (
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors")),
    );
    assert!(!wa.is_empty());
    assert!(
        wa == wb,
        "resumed weights differ from the uninterrupted run's"
    );
}

#[test]
fn a_run_killed_within_an_epoch_resumes_at_its_step_to_the_same_weights_and_metrics() {
    let data = data_dir();
    let (a, b) = (
        scratch_dir!().join("whole-epoch"),
        scratch_dir!().join("killed-within"),
    );
    // ResNet-20 members make a step long enough (tenths of a second) to kill the run between
    // two of them; a checkpoint is taken after every step.
    let args = |out: &Path| {
        let mut v = train_args(data.to_str().unwrap(), out.to_str().unwrap(), "1");
        v[2] = "resnet20";
        v.extend(["--checkpoint-minutes", "0.000001"]);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let strs = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    let o = adp_ok(&args(&a).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        std::fs::read_dir(a.join("checkpoint")).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("-step-")),
        "the epoch's checkpoint did not replace those within it"
    );
    drop(o);

    let mut child = Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(args(&b))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let within = |run: &Path| -> Vec<String> {
        std::fs::read_dir(run.join("checkpoint"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains("-step-") && !n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    };
    while !within(&b)
        .iter()
        .any(|n| n.as_str() >= "epoch-0000-step-000003")
    {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint within the epoch appeared ({})",
            strs(&args(&b))
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("latest.json").exists(),
        "the epoch ended before the run was killed"
    );

    // With another batch size the steps it recorded mean other images: the resume is refused.
    let config = b.join("config.toml");
    let saved = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, saved.replace("batch_size = 64", "batch_size = 32")).unwrap();
    assert_one_error(
        &adp(&["train", "--resume", b.to_str().unwrap()]),
        "`batch_size` was 64, but the run now asks for 32",
        "a checkpoint within an epoch resumed with another batch size",
    );
    std::fs::write(&config, saved).unwrap();

    let o = adp_ok(&["train", "--resume", b.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("at step") && stderr(&o).contains("of epoch 1"),
        "{}",
        stderr(&o)
    );
    assert!(
        tensors(&a.join("model.safetensors")) == tensors(&b.join("model.safetensors")),
        "resumed weights differ from the uninterrupted run's"
    );
    // The epoch's metrics (all but its seconds) are those of the uninterrupted epoch.
    let metrics = |run: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(run.join("history.csv")).unwrap();
        text.lines()
            .map(|l| {
                let mut cells: Vec<&str> = l.split(',').collect();
                cells.remove(7);
                cells.join(",")
            })
            .collect()
    };
    assert_eq!(metrics(&a), metrics(&b));
}

/// The tensors of a safetensors file by name, as raw bytes (the header's metadata map may list
/// its keys in any order, so files are compared tensor by tensor).
fn tensors(path: &Path) -> std::collections::BTreeMap<String, (serde_json::Value, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let off = v["data_offsets"].as_array().unwrap();
            let (s, e) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            (k, (v["shape"].clone(), data[s..e].to_vec()))
        })
        .collect()
}

#[test]
fn a_loss_that_goes_nan_stops_training_and_names_the_last_good_checkpoint() {
    let data = data_dir();
    let run = scratch_dir!().join("nan");
    adp_ok(&train_args(
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        "1",
    ));
    std::fs::remove_file(run.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let config = config
        .replace("epochs = 1\n", "epochs = 3\n")
        .replace("lr = 0.001\n", "lr = 1e30\n");
    std::fs::write(run.join("config.toml"), config).unwrap();
    let o = adp(&["train", "--resume", run.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("the loss became") && err.contains("epoch 2, step"),
        "{err}"
    );
    assert!(err.contains("epoch-0001"), "{err}");
    assert!(
        !run.join("model.safetensors").exists(),
        "a NaN model was saved"
    );
    assert!(
        !run.join("checkpoint/epoch-0002").exists(),
        "a NaN checkpoint was saved"
    );
}

#[test]
fn reproduce_tiny_compares_three_methods_and_reuses_finished_runs() {
    let out = scratch_dir!().join("reproduce");
    let data = data_dir();
    let args = reproduce_tiny_args("mnist", &data, &out);
    adp_ok(&args);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| ECE | ADP_{2,0} | ADP_{2,0.5} |"),
        "{report}"
    );
    assert!(report.contains("| FGSM | ε = 0.1 |"), "{report}");
    for run in ["ece", "adp-2-0", "adp-2-0.5"] {
        assert!(out.join(run).join("eval.json").exists(), "{run}");
    }
    let again = adp_ok(&args);
    assert_eq!(
        stderr(&again).matches("reusing it").count(),
        3,
        "{}",
        stderr(&again)
    );
}

#[test]
fn cifar_binary_layout_trains_resnet20_with_augmentation_and_evaluates() {
    use adp::data::cifar::{CifarLabels, encode_records};
    let dir = scratch_dir!().join("cifar");
    let folder = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).unwrap();
    for (i, name) in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ]
    .iter()
    .enumerate()
    {
        let bytes = encode_records(
            16,
            CifarLabels::Ten,
            |j| (j % 10) as u8,
            |j, p| ((j * 31 + p * 7 + i) % 256) as u8,
        );
        std::fs::write(folder.join(name), bytes).unwrap();
    }
    let run = scratch_dir!().join("cifar-run");
    let (d, r) = (dir.to_str().unwrap(), run.to_str().unwrap());
    adp_ok(&[
        "train",
        "--dataset",
        "cifar10",
        "--model",
        "resnet20",
        "--members",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--augment",
        "--data-dir",
        d,
        "--out",
        r,
    ]);
    let model: toml::Value =
        toml::from_str(&std::fs::read_to_string(run.join("model.toml")).unwrap()).unwrap();
    assert_eq!(model["member"]["input_shape"].as_array().unwrap().len(), 3);
    assert_eq!(model["member"]["input_shape"][0].as_integer(), Some(3));
    let o = adp_ok(&[
        "eval",
        r,
        "--attack",
        "fgsm",
        "--eps",
        "0.03",
        "--limit",
        "16",
        "--no-indicators",
    ]);
    assert!(stdout(&o).contains("| FGSM | ε = 0.03 |"));
}

#[test]
fn bad_input_gives_one_clear_error_and_no_panic() {
    let data = data_dir();
    let d = data.to_str().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let run = trained_run();
    let r = run.to_str().unwrap();
    let out = scratch_dir!().join("never").to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--members", "1", "--data-dir", d, "--out", &out],
            "`members` must be at least 2",
        ),
        (
            vec!["train", "--alpha", "NaN", "--data-dir", d, "--out", &out],
            "`alpha` must be a finite number",
        ),
        (
            vec!["train", "--alpha", "-1", "--data-dir", d, "--out", &out],
            "`alpha` must be a finite number >= 0",
        ),
        (
            vec!["train", "--lr", "0", "--data-dir", d, "--out", &out],
            "`lr` must be > 0",
        ),
        (
            vec!["train", "--data-dir", e, "--out", &out],
            "adp data fetch mnist",
        ),
        (
            vec!["eval", r, "--attack", "fgsm", "--eps", "-0.1"],
            "`eps` must lie in [0, 1]",
        ),
        (vec!["eval", r, "--attack", "pgd"], "has no --eps list"),
        (
            vec!["eval", e, "--attack", "fgsm", "--eps", "0.1"],
            "not a run directory",
        ),
        (vec!["train", "--resume", e], "cannot be resumed"),
        (
            vec![
                "alpha",
                "--members",
                "3",
                "--classes",
                "10",
                "--confidence",
                "0.05",
            ],
            "must lie in (1/L, 1)",
        ),
    ];
    for (args, expected) in cases {
        assert_one_error(&adp(&args), expected, &format!("{args:?}"));
    }
    assert!(
        !Path::new(&out).exists(),
        "a rejected command created its output directory"
    );

    // A truncated data file names itself and the fix.
    let broken = tempfile::tempdir().unwrap();
    write_synthetic_mnist(broken.path(), 20, 20, 0).unwrap();
    let images = broken.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&images).unwrap();
    std::fs::write(&images, &bytes[..bytes.len() - 100]).unwrap();
    let train_on_broken = || {
        adp(&[
            "train",
            "--model",
            "cnn",
            "--data-dir",
            broken.path().to_str().unwrap(),
            "--out",
            &out,
        ])
    };
    let err = stderr(&train_on_broken());
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );

    // A label beyond the data set's class count, and a data set without images, are one error
    // each that names the file and the fix.
    let labels = broken.path().join("train-labels-idx1-ubyte");
    for (images_bytes, labels_bytes, expected) in [
        (
            bytes,
            encode_idx(&[20], &[12; 20]),
            "out of range for 10 classes",
        ),
        (
            encode_idx(&[0, 28, 28], &[]),
            encode_idx(&[0], &[]),
            "the data set is empty",
        ),
    ] {
        std::fs::write(&images, &images_bytes).unwrap();
        std::fs::write(&labels, &labels_bytes).unwrap();
        let o = train_on_broken();
        assert_one_error(&o, expected, expected);
        let err = stderr(&o);
        assert!(
            err.contains("train-labels-idx1-ubyte") && err.contains("adp data fetch mnist"),
            "{err}"
        );
    }
}
