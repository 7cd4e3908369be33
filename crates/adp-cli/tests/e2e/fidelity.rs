//! The official code's details as options (`--augment` on MNIST, `--normalize mean`) and
//! `adp reproduce fidelity --preset tiny` end to end on the synthetic MNIST-layout data set.

use crate::common;

use std::path::Path;

use adp::data::synthetic::write_synthetic_mnist;
use common::{adp, adp_ok, assert_one_error, reproduce_tiny_args, scratch_dir, stderr, train_args};

fn data() -> &'static Path {
    static DONE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let dir = scratch_dir!().join("data");
        write_synthetic_mnist(&dir, 300, 100, 7).unwrap();
        dir
    })
}

/// Trains 2 CNN members for one epoch with `extra` options and returns the run's training
/// history and its model description.
fn train_with(name: &str, extra: &[&str]) -> (String, String) {
    let out = scratch_dir!().join(name);
    let mut args = train_args(data().to_str().unwrap(), out.to_str().unwrap(), "1");
    args.extend(extra);
    adp_ok(&args);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    let history = read("history.csv");
    // The epoch's seconds differ between any two runs; compare the losses only.
    let losses = history
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(6).collect::<Vec<_>>().join(","))
        .collect();
    (losses, read("model.toml"))
}

#[test]
fn augmentation_and_the_per_pixel_mean_change_mnist_training() {
    let (plain, plain_model) = train_with("plain", &[]);
    let (again, _) = train_with("plain-again", &[]);
    assert_eq!(plain, again, "the same seed trains the same");

    let (augmented, _) = train_with("augmented", &["--augment"]);
    assert_ne!(plain, augmented, "--augment changed nothing on MNIST");

    let (centred, centred_model) = train_with("centred", &["--normalize", "mean"]);
    assert_ne!(plain, centred, "--normalize mean changed nothing");
    let mean_len = |toml: &str| -> usize {
        let v: toml::Value = toml::from_str(toml).unwrap();
        v["member"]["mean"].as_array().unwrap().len()
    };
    assert_eq!(mean_len(&plain_model), 1, "one channel mean");
    assert_eq!(mean_len(&centred_model), 28 * 28, "one mean per pixel");

    let out = scratch_dir!().join("bad-normalize");
    let o = adp(&[
        "train",
        "--normalize",
        "zscore",
        "--data-dir",
        data().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("--normalize"));
}

#[test]
fn a_per_pixel_mean_run_exports_and_imports_with_the_same_normalisation() {
    train_with("centred-export", &["--normalize", "mean"]);
    let out = scratch_dir!().join("centred-export");
    let file = scratch_dir!().join("centred.safetensors");
    adp_ok(&[
        "export",
        out.to_str().unwrap(),
        "--format",
        "safetensors",
        "--out",
        file.to_str().unwrap(),
    ]);
    let back = scratch_dir!().join("centred-import");
    adp_ok(&[
        "import",
        file.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--data-dir",
        data().to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
    ]);
    let member = |dir: &Path| -> toml::Value {
        let v: toml::Value =
            toml::from_str(&std::fs::read_to_string(dir.join("model.toml")).unwrap()).unwrap();
        v["member"].clone()
    };
    assert_eq!(member(&out)["mean"], member(&back)["mean"]);
    assert_eq!(member(&out)["std"], member(&back)["std"]);
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn reproduce_fidelity_tiny_measures_the_selected_rows_and_reuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = reproduce_tiny_args("fidelity", data(), &out);
    args.extend(["--rows", "augment,normalize-mean"]);
    adp_ok(&args);
    for ext in ["md", "csv", "json", "png", "svg", "toml"] {
        assert!(out.join(format!("fidelity.{ext}")).exists(), "{ext}");
    }
    let json = read_json(&out.join("fidelity.json"));
    let runs = json.as_array().unwrap();
    let names: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| {
            (
                r["row"].as_str().unwrap(),
                r["report"]["label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("augment", "ECE"),
            ("augment", "ADP_{2,0.5}"),
            ("normalize-mean", "ECE"),
            ("normalize-mean", "ADP_{2,0.5}")
        ]
    );
    for r in runs {
        let robust = r["report"]["robust"].as_array().unwrap();
        let described: Vec<&str> = robust
            .iter()
            .map(|a| a["description"].as_str().unwrap())
            .collect();
        assert_eq!(described.len(), 5, "{described:?}");
        assert_eq!(
            described
                .iter()
                .filter(|d| d.contains("objective=official"))
                .count(),
            2,
            "{described:?}"
        );
        assert!(described[4].starts_with("APGD"), "{described:?}");
        for a in robust {
            let acc = a["accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc));
        }
    }
    // Each row's runs carry its switch in their saved configuration.
    let config =
        |row: &str| std::fs::read_to_string(out.join(row).join("ece/config.toml")).unwrap();
    assert!(config("augment").contains("augment = true"));
    assert!(config("normalize-mean").contains("normalize = \"mean\""));
    let md = std::fs::read_to_string(out.join("fidelity.md")).unwrap();
    assert!(md.contains("| augment | ECE | 1 |"), "{md}");
    assert!(
        md.contains("PGD ε=0.15 official") && md.contains("APGD-CE ε=0.1"),
        "{md}"
    );

    // Again with one row: nothing is trained or attacked again, and the report keeps both rows.
    let csv_before = std::fs::read_to_string(out.join("fidelity.csv")).unwrap();
    let mut again = reproduce_tiny_args("fidelity", data(), &out);
    again.extend(["--rows", "augment"]);
    let o = adp_ok(&again);
    assert!(!stderr(&o).contains("epoch 1/"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("accuracy"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("fidelity.csv")).unwrap(),
        csv_before
    );

    // `adp report` redraws the grid's files from its JSON alone.
    for ext in ["md", "csv", "png", "svg"] {
        std::fs::remove_file(out.join(format!("fidelity.{ext}"))).unwrap();
    }
    let o = adp_ok(&["report", out.to_str().unwrap()]);
    assert!(
        common::stdout(&o).contains("fidelity"),
        "{}",
        common::stdout(&o)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("fidelity.csv")).unwrap(),
        csv_before
    );
    assert!(out.join("fidelity.png").exists());

    let mut bad = reproduce_tiny_args("fidelity", data(), &out);
    bad.extend(["--rows", "resnet"]);
    assert_one_error(&adp(&bad), "no row named 'resnet'", "--rows resnet");
    let mut elsewhere = reproduce_tiny_args("mnist", data(), &out);
    elsewhere.extend(["--rows", "augment"]);
    assert_one_error(&adp(&elsewhere), "--rows", "--rows on mnist");
    let mut seeds_elsewhere = reproduce_tiny_args("mnist", data(), &out);
    seeds_elsewhere.extend(["--seeds", "1"]);
    assert_one_error(&adp(&seeds_elsewhere), "--seeds", "--seeds on mnist");
}

#[test]
fn seeds_select_the_repeat_of_a_headline_row_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = reproduce_tiny_args("fidelity", data(), &out);
    args.extend(["--rows", "default", "--seeds", "1"]);
    adp_ok(&args);
    // Seed 1 of `default` is trained in its own directory; seed 0 is not trained.
    assert!(out.join("default-seed1/ece/config.toml").exists());
    assert!(!out.join("default").exists());
    let json = read_json(&out.join("fidelity.json"));
    let runs: Vec<(&str, u64)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["row"].as_str().unwrap(), r["seed"].as_u64().unwrap()))
        .collect();
    assert_eq!(runs, [("default", 1), ("default", 1)]);
    let config = std::fs::read_to_string(out.join("default-seed1/adp-2-0.5/config.toml")).unwrap();
    assert!(config.contains("seed = 1"), "{config}");

    let mut bad = reproduce_tiny_args("fidelity", data(), &out);
    bad.extend(["--rows", "augment", "--seeds", "1"]);
    assert_one_error(
        &adp(&bad),
        "no selected row is trained with seed 1",
        "--seeds 1 on a row of one seed",
    );
}

#[test]
fn a_grid_stopped_by_a_failing_row_still_reports_every_row_measured_before() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut args = reproduce_tiny_args("fidelity", data(), &out);
    args.extend(["--rows", "augment,budget"]);
    adp_ok(&args);
    // A row between the two fails: its run directory is a file.
    std::fs::write(out.join("normalize-mean"), b"not a directory").unwrap();
    let mut failing = reproduce_tiny_args("fidelity", data(), &out);
    failing.extend(["--rows", "normalize-mean"]);
    assert!(!adp(&failing).status.success());
    let json = read_json(&out.join("fidelity.json"));
    let rows: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["augment", "augment", "budget", "budget"]);
}
