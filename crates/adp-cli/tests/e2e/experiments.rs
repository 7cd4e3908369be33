//! The figure experiments (Fig. 2, Fig. 3, Fig. 4, App. B.3): the transfer matrix's shape and diagonal on
//! a small random ensemble, and `adp reproduce transfer|detect|ed-histogram|tsne --preset tiny` plus
//! `adp report` end to end on the synthetic MNIST-layout data set.

use crate::common;

use std::path::Path;

use adp::attack::{AttackKind, AttackSpec};
use adp::data::Dataset;
use adp::data::synthetic::write_synthetic_mnist;
use adp::eval::transfer::transfer_matrix;
use adp::eval::{AttackedSet, attack_dataset};
use burn::module::Module;
use common::{adp_ok, cnn_spec, reproduce_tiny_args, stdout};

#[test]
fn transfer_matrix_is_k_by_k_with_the_white_box_results_on_its_diagonal() {
    let device = adp::device::cpu();
    device.seed(5);
    let model = cnn_spec(3, [1, 8, 8], 3, 0.5, 0.25).init(&device).valid();
    let n = 12;
    let images = (0..n * 64)
        .map(|i| ((i * 37) % 101) as f32 / 100.0)
        .collect();
    let labels = (0..n).map(|i| (i % 3) as u8).collect();
    let data = Dataset::new(images, labels, [1, 8, 8], 3).unwrap();
    let pgd = AttackSpec::new(AttackKind::Pgd, 0.3);
    for targeted in [false, true] {
        let m = transfer_matrix(&model, &data, &pgd, targeted, 5, 9, &device).unwrap();
        assert_eq!(m.values.len(), 3);
        assert!(m.values.iter().all(|row| row.len() == 3));
        assert!(m.values.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
        for i in 0..3 {
            let white_box =
                attack_dataset(&model, &data, &pgd, targeted, Some(i), 5, 9, &device).unwrap();
            let success = AttackedSet::rate(&white_box.success);
            let expected = if targeted { success } else { 1.0 - success };
            assert!(
                (m.values[i][i] - expected).abs() < 1e-12,
                "member {i}, targeted {targeted}: {} vs white-box {expected}",
                m.values[i][i]
            );
        }
    }
}

/// Checks `path` is a PNG (magic bytes) of non-trivial size.
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(bytes.len() > 10_000, "{} is nearly empty", path.display());
}

/// Runs one figure experiment with the tiny preset, checks its files and numbers, then deletes
/// the tables and figures and has `adp report` rebuild them from the JSON.
fn reproduce_tiny(figure: &str, extra_files: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_mnist(&data, 300, 100, 7).unwrap();
    let out = dir.path().join("out");
    adp_ok(&reproduce_tiny_args(figure, &data, &out));
    let drawn = ["md", "csv", "png", "svg"].map(|ext| out.join(format!("{figure}.{ext}")));
    for path in drawn.iter().chain(&[out.join(format!("{figure}.json"))]) {
        assert!(path.exists(), "{} missing", path.display());
    }
    for f in extra_files {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_png(&drawn[2]);
    let svg = std::fs::read_to_string(&drawn[3]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(format!("{figure}.json"))).unwrap())
            .unwrap();

    for path in &drawn {
        std::fs::remove_file(path).unwrap();
    }
    let o = adp_ok(&["report", out.to_str().unwrap()]);
    assert!(stdout(&o).contains(figure));
    assert_png(&drawn[2]);
    assert!(drawn.iter().all(|p| p.exists()));
    json
}

fn finite(v: &serde_json::Value) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!(x.is_finite(), "{x}");
    x
}

#[test]
fn reproduce_transfer_tiny_writes_two_runs_of_four_matrices() {
    let json = reproduce_tiny("transfer", &[]);
    let runs = json.as_array().unwrap();
    assert_eq!(runs.len(), 2, "ECE and ADP_{{2,0.5}}");
    for run in runs {
        let matrices = run["matrices"].as_array().unwrap();
        assert_eq!(matrices.len(), 4, "PGD and MIM, untargeted and targeted");
        for m in matrices {
            let rows = m["values"].as_array().unwrap();
            assert_eq!(rows.len(), 3);
            for row in rows {
                assert_eq!(row.as_array().unwrap().len(), 3);
                row.as_array().unwrap().iter().for_each(|v| {
                    finite(v);
                });
            }
        }
    }
}

#[test]
fn reproduce_detect_tiny_writes_roc_and_finite_auc_per_attack() {
    let json = reproduce_tiny("detect", &["detect-roc.csv"]);
    for run in json.as_array().unwrap() {
        assert_eq!(run["clean_log_ed"].as_array().unwrap().len(), 16);
        let attacks = run["attacks"].as_array().unwrap();
        assert_eq!(attacks.len(), 4, "FGSM, BIM, PGD, MIM");
        for a in attacks {
            assert!((0.0..=1.0).contains(&finite(&a["auc"])));
            a["log_ed"].as_array().unwrap().iter().for_each(|v| {
                finite(v);
            });
        }
    }
}

#[test]
fn reproduce_ed_histogram_tiny_measures_three_methods() {
    let json = reproduce_tiny("ed-histogram", &[]);
    let hists = json.as_array().unwrap();
    let labels: Vec<&str> = hists.iter().map(|h| h["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["ECE", "ADP_{2,0}", "ADP_{2,0.5}"]);
    for h in hists {
        finite(&h["median"]);
        assert_eq!(h["log_ed"].as_array().unwrap().len(), 64);
    }
}

#[test]
fn reproduce_tsne_tiny_embeds_every_member_of_two_methods() {
    let json = reproduce_tiny("tsne", &["tsne.toml"]);
    let runs = json.as_array().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["ECE", "ADP_{2,0.5}"]);
    for run in runs {
        assert_eq!(run["labels"].as_array().unwrap().len(), 64);
        assert_eq!(
            run["feature_dim"].as_u64(),
            Some(128),
            "the small CNN's fc1"
        );
        let members = run["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        for m in members {
            let coords = m["coords"].as_array().unwrap();
            assert_eq!(coords.len(), 64);
            for c in coords {
                assert_eq!(c.as_array().unwrap().len(), 2);
                c.as_array().unwrap().iter().for_each(|v| {
                    finite(v);
                });
            }
            for key in ["feature_agreement", "embedding_agreement"] {
                assert!((0.0..=1.0).contains(&finite(&m[key])), "{key}");
            }
        }
        let overlap = run["overlap"].as_array().unwrap();
        assert_eq!(overlap.len(), 3);
        for (i, row) in overlap.iter().enumerate() {
            assert_eq!(finite(&row[i]), 1.0, "a member overlaps itself fully");
        }
    }
}

#[test]
fn reproduce_keeps_each_attack_result_and_reuses_a_merged_sharded_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_mnist(&data, 300, 100, 7).unwrap();
    let out = dir.path().join("out");
    let first = adp_ok(&reproduce_tiny_args("mnist", &data, &out));
    let first_err = common::stderr(&first);
    assert_eq!(first_err.matches("(measured)").count(), 6, "{first_err}");
    let report = || std::fs::read_to_string(out.join("report.csv")).unwrap();
    let measured = report();

    // Run again: every attack of every method is reused, with the same numbers.
    let again = common::stderr(&adp_ok(&reproduce_tiny_args("mnist", &data, &out)));
    assert_eq!(
        again.matches("(kept from an earlier run)").count(),
        6,
        "{again}"
    );
    assert!(!again.contains("(measured)"), "{again}");
    assert_eq!(report(), measured);

    // With the kept results gone, PGD on the ECE run measured by `adp eval` as a shard and
    // merged, and FGSM on ADP_{2,0.5} measured by a whole `adp eval`, count for the
    // reproduction; the other two attacks of those runs are measured again.
    let (ece, adp) = (out.join("ece"), out.join("adp-2-0.5"));
    let eval = |run: &Path, attack: &str, shard: &[&str]| {
        let mut args = vec![
            "eval",
            run.to_str().unwrap(),
            "--attack",
            attack,
            "--eps",
            "0.1",
            "--limit",
            "32",
            "--batch-size",
            "250",
            "--no-indicators",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend(shard);
        adp_ok(&args);
    };
    for run in [&ece, &adp] {
        std::fs::remove_dir_all(run.join("results")).unwrap();
    }
    eval(&ece, "pgd", &["--shard", "0/1"]);
    adp_ok(&["merge", ece.to_str().unwrap()]);
    eval(&adp, "fgsm", &[]);
    let last = common::stderr(&adp_ok(&reproduce_tiny_args("mnist", &data, &out)));
    let ece_lines: Vec<&str> = last.lines().filter(|l| l.starts_with("ECE: ")).collect();
    assert!(
        ece_lines
            .iter()
            .any(|l| l.starts_with("ECE: FGSM") && l.ends_with("(measured)")),
        "{last}"
    );
    assert!(
        ece_lines
            .iter()
            .any(|l| l.starts_with("ECE: PGD") && l.ends_with("(kept from an earlier run)")),
        "{last}"
    );
    assert!(
        last.lines().any(
            |l| l.starts_with("ADP_{2,0.5}: FGSM") && l.ends_with("(kept from an earlier run)")
        ),
        "{last}"
    );
    // ADP_{2,0} kept both of its own.
    assert_eq!(
        last.matches("(kept from an earlier run)").count(),
        4,
        "{last}"
    );
    assert_eq!(report(), measured);
}
