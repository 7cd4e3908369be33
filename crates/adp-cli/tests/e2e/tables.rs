//! `adp reproduce table1 … table5 --preset tiny` end to end: synthetic MNIST-layout data for
//! Tables 1, 2, 4 and 5, generated CIFAR-100 files for Table 3. Each writes Markdown, CSV and
//! JSON with one finite number per row and method, the paper's numbers beside ours, and
//! `adp report` rebuilds the Markdown and CSV from the JSON.

use crate::common;

use std::path::Path;

use adp::data::cifar::{CifarLabels, encode_records};
use adp::data::synthetic::write_synthetic_mnist;
use common::{adp, adp_ok, assert_one_error, reproduce_tiny_args, stderr, stdout};

/// Runs `adp reproduce TABLE --preset tiny` with `extra` arguments into `out`, checks the files,
/// the shape (rows × methods) and finiteness of the JSON, and the rebuild by `adp report`.
/// Returns the JSON and the stderr.
fn table_tiny(
    table: &str,
    data: &Path,
    out: &Path,
    extra: &[&str],
    methods: &[&str],
    rows: usize,
) -> (serde_json::Value, String) {
    let mut args = reproduce_tiny_args(table, data, out);
    args.extend(extra);
    let o = adp(&args);
    assert!(o.status.success(), "{table}: {}", stderr(&o));
    let files = ["md", "csv", "json", "toml"].map(|e| out.join(format!("{table}.{e}")));
    for f in &files {
        assert!(f.exists(), "{} missing", f.display());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[2]).unwrap()).unwrap();
    let labels: Vec<&str> = json["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(labels, methods, "{table}");
    let table_rows = json["rows"].as_array().unwrap();
    assert_eq!(table_rows.len(), rows, "{table}: {table_rows:?}");
    for r in table_rows {
        let ours = r["ours"].as_array().unwrap();
        assert_eq!(ours.len(), methods.len());
        for v in ours {
            let x = v
                .as_f64()
                .unwrap_or_else(|| panic!("{table}: {r} lacks a number"));
            assert!(x.is_finite() && (0.0..=100.0).contains(&x), "{table}: {x}");
        }
        assert_eq!(r["paper"].as_array().unwrap().len(), methods.len());
    }
    let md = std::fs::read_to_string(&files[0]).unwrap();
    let csv = std::fs::read_to_string(&files[1]).unwrap();
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        rows + 1,
        "{md}"
    );
    assert_eq!(csv.lines().count(), 1 + rows * methods.len(), "{csv}");
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let o = adp_ok(&["report", out.to_str().unwrap()]);
    assert!(stdout(&o).contains(table));
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), md);
    assert_eq!(std::fs::read_to_string(&files[1]).unwrap(), csv);
    (json, stderr(&o))
}

#[test]
fn tables_1_2_4_5_on_mnist_layout_data_share_runs_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_mnist(&data, 300, 100, 7).unwrap();
    let out = dir.path().join("out");
    let three = ["ECE", "ADP_{2,0}", "ADP_{2,0.5}"];
    // Table 1: Net 1-3 and the ensemble.
    let (t1, _) = table_tiny("table1", &data, &out, &[], &three, 4);
    assert_eq!(t1["rows"][3]["name"], "Ensemble");
    assert_eq!(
        t1["rows"][0]["paper"][0], 0.44,
        "Table 1, MNIST, Net 1, baseline"
    );
    // Table 2 in the same directory reuses Table 1's three runs; 8 gradient-attack rows.
    let o = adp_ok(&reproduce_tiny_args("table2", &data, &out));
    assert_eq!(
        stderr(&o).matches("reusing it").count(),
        3,
        "{}",
        stderr(&o)
    );
    let (t2, _) = table_tiny("table2", &data, &out, &[], &three, 8);
    assert_eq!(t2["rows"][5]["parameter"], "ε = 0.15");
    assert_eq!(
        t2["rows"][5]["paper"][2], 41.0,
        "Table 2, MNIST, PGD 0.15, ADP_{{2,0.5}}"
    );
    // Table 4: four adversarially trained ensembles, FGSM 0.2 and BIM/PGD/MIM 0.15 on MNIST.
    let (t4, _) = table_tiny(
        "table4",
        &data,
        &out,
        &["--dataset", "mnist"],
        &[
            "AdvT_FGSM",
            "AdvT_FGSM + ADP_{2,0.5}",
            "AdvT_PGD",
            "AdvT_PGD + ADP_{2,0.5}",
        ],
        4,
    );
    assert!(
        t4["rows"][0]["paper"][0].is_null(),
        "no MNIST Table 4 in the paper"
    );
    let advt: toml::Value = toml::from_str(
        &std::fs::read_to_string(out.join("advt-pgd-adp-2-0.5/config.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(advt["adv_train"]["attack"].as_str(), Some("pgd"));
    // Table 5: K = 5, the "Normal" row then FGSM, BIM, PGD, MIM.
    let (t5, _) = table_tiny(
        "table5",
        &data,
        &out,
        &["--dataset", "mnist"],
        &["ECE", "ADP_{2,0.5}"],
        5,
    );
    assert_eq!(t5["rows"][0]["name"], "Normal");
    assert_eq!(
        t5["runs"][0]["clean"]["member_error"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert!(out.join("ece-k5/model.safetensors").exists());
}

#[test]
fn table3_runs_on_generated_cifar100_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    let folder = data.join("cifar-100-binary");
    std::fs::create_dir_all(&folder).unwrap();
    for (name, n) in [("train.bin", 300), ("test.bin", 80)] {
        let bytes = encode_records(
            n,
            CifarLabels::Fine,
            |i| (i % 100) as u8,
            |i, p| (((i % 100) * 37 + p * 11) % 256) as u8,
        );
        std::fs::write(folder.join(name), bytes).unwrap();
    }
    let out = dir.path().join("out");
    let (t3, _) = table_tiny("table3", &data, &out, &[], &["ECE", "ADP_{2,0.5}"], 6);
    assert_eq!(t3["dataset"], "cifar100");
    assert_eq!(t3["rows"][0]["parameter"], "ε = 0.005");
    assert_eq!(
        t3["rows"][0]["paper"][1], 26.1,
        "Table 3, BIM 0.005, ADP_{{2,0.5}}"
    );
}

#[test]
fn tables_without_their_data_or_on_the_wrong_data_set_say_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let (dir, out) = (empty.path(), empty.path().join("out"));
    let (e, o_) = (dir.to_str().unwrap(), out.to_str().unwrap());
    let tiny = |table, extra: &[&'static str]| {
        [reproduce_tiny_args(table, dir, &out), extra.to_vec()].concat()
    };
    for (args, expected) in [
        (
            tiny("table2", &["--dataset", "cifar10"]),
            "adp data fetch cifar10",
        ),
        (tiny("table5", &[]), "adp data fetch cifar10"),
        (
            tiny("table3", &["--dataset", "mnist"]),
            "`dataset` must be cifar100",
        ),
        (
            vec![
                "reproduce",
                "transfer",
                "--dataset",
                "cifar10",
                "--data-dir",
                e,
                "--out",
                o_,
            ],
            "only table1 … table5 take CIFAR",
        ),
    ] {
        assert_one_error(&adp(&args), expected, &format!("{args:?}"));
    }
}
