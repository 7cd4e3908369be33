//! The peer defences end to end on the tiny setting: `adp train --method gal|dverge|trs` writes
//! the same run directory as ECE and ADP, resumes to the weights of an uninterrupted run, and
//! DVERGE starts from a trained ECE ensemble; old `config.toml` files still load.

use crate::common;

use std::path::Path;

use adp::train::peers::Objective;
use adp::train::{Method, TrainConfig};
use common::{adp, adp_ok, assert_fails_with, scratch_dir, synthetic_data, train_args};

fn train(method: &str, out: &Path, epochs: &str, extra: &[&str]) -> std::process::Output {
    let data = synthetic_data();
    let mut args = train_args(data.to_str().unwrap(), out.to_str().unwrap(), epochs);
    args.extend([
        "--method",
        method,
        "--train-limit",
        "96",
        "--batch-size",
        "32",
    ]);
    args.extend(extra);
    adp(&args)
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("model.safetensors")).unwrap()
}

/// 2 epochs at once, and 1 epoch resumed to 2, give the same weights: every random draw of the
/// method (TRS's attack start, DVERGE's targets and layer) is seeded by the step.
fn resumes_to_the_same_weights(method: &str, extra: &[&str]) {
    let whole = scratch_dir!().join(format!("{method}-whole"));
    let part = scratch_dir!().join(format!("{method}-part"));
    let o = train(method, &whole, "2", extra);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = train(method, &part, "1", extra);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let config = part.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&format!("method = \"{method}\"")), "{text}");
    assert!(text.contains(&format!("[{method}]")), "{text}");
    common::resume_to_two_epochs(&part);
    assert!(
        weights(&whole) == weights(&part),
        "{method}: the resumed run's weights differ from the uninterrupted run's"
    );
    for file in ["manifest.json", "history.csv", "latest.json", "model.toml"] {
        assert!(whole.join(file).exists(), "{method}: no {file}");
    }
    let data = synthetic_data();
    let eval = adp_ok(&[
        "eval",
        whole.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-indicators",
        "--attack",
        "pgd",
        "--eps",
        "0.1",
        "--limit",
        "32",
    ]);
    assert!(
        common::stdout(&eval).contains(&method.to_uppercase()),
        "{}",
        common::stdout(&eval)
    );
}

#[test]
fn gal_trains_resumes_and_evaluates() {
    resumes_to_the_same_weights("gal", &[]);
}

#[test]
fn trs_trains_resumes_and_evaluates() {
    resumes_to_the_same_weights("trs", &["--trs-steps", "2"]);
}

#[test]
fn dverge_starts_from_a_trained_ece_ensemble() {
    let ece = scratch_dir!().join("dverge-base-ece");
    let o = train("ece", &ece, "1", &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let from = ece.to_str().unwrap().to_string();
    resumes_to_the_same_weights("dverge", &["--dverge-from", &from]);
    let run = scratch_dir!().join("dverge-whole");
    assert_ne!(
        weights(&run),
        weights(&ece),
        "DVERGE left the ECE weights as they were"
    );
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(text.contains("start_from"), "{text}");
    // A start whose members differ (here their input normalisation) is refused, naming its
    // model.toml, before the run writes its configuration.
    let mismatch = scratch_dir!().join("dverge-mismatch");
    let o = train(
        "dverge",
        &mismatch,
        "1",
        &["--dverge-from", &from, "--normalize", "mean"],
    );
    assert_fails_with(&o, "model.toml", "a start from another ensemble");
    assert!(!mismatch.join("config.toml").exists());
}

#[test]
fn the_peer_methods_refuse_adversarial_training() {
    let o = train(
        "gal",
        &scratch_dir!().join("gal-advt"),
        "1",
        &["--adv-train", "pgd"],
    );
    assert_fails_with(&o, "`adv_train`", "GAL with adversarial training");
}

/// A config.toml of an ECE/ADP run from before the peer methods has no [gal], [dverge] or
/// [trs] section and still loads; ECE/ADP runs still write none, and each peer run reads back
/// its own objective.
#[test]
fn configs_without_peer_sections_load_and_peer_sections_round_trip() {
    let adp_config = TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5);
    let text = toml::to_string(&adp_config).unwrap();
    for section in ["[gal]", "[dverge]", "[trs]"] {
        assert!(!text.contains(section), "{text}");
    }
    let back: TrainConfig = toml::from_str(&text).unwrap();
    assert_eq!(
        back.training_objective(),
        Objective::Adp(adp_config.adp.clone())
    );
    let mut trs = TrainConfig::paper_mnist(Method::Trs, 0.0, 0.0);
    trs.trs = Some(adp::train::trs::TrsConfig {
        lambda: 1.5,
        ..Default::default()
    });
    let back: TrainConfig = toml::from_str(&toml::to_string(&trs).unwrap()).unwrap();
    match back.training_objective() {
        Objective::Trs(t) => assert_eq!(t.lambda, 1.5),
        other => panic!("{other:?}"),
    }
    // A DVERGE run without its section gets the data set's defaults (MNIST: ε 0.35).
    let dverge = TrainConfig::paper_mnist(Method::Dverge, 0.0, 0.0);
    match dverge.training_objective() {
        Objective::Dverge(d) => assert!((d.eps - 0.35).abs() < 1e-12 && d.steps == 10),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reproduce_peers_tiny_writes_the_table_the_transfer_matrices_and_the_plot() {
    let out = scratch_dir!().join("peers-tiny");
    let data = synthetic_data();
    let o = adp_ok(&common::reproduce_tiny_args("peers", &data, &out));
    let md = std::fs::read_to_string(out.join("peers.md")).unwrap();
    for label in [
        "| ECE |",
        "| ADP_{2,0.5} |",
        "| GAL |",
        "| DVERGE |",
        "| TRS |",
    ] {
        assert!(md.contains(label), "{label} missing from\n{md}");
    }
    assert!(md.contains("| 1.00× |"), "ECE's time is the unit:\n{md}");
    assert_eq!(md.matches("crafted on \\ fed to").count(), 5, "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("peers.json")).unwrap()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 5);
    assert_eq!(
        std::fs::read_to_string(out.join("peers.csv"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    assert!(out.join("peers-transfer.png").exists());
    assert!(common::stdout(&o).contains("written to"));
}
