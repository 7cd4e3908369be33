//! The attacks beyond the paper (APGD, APGD-T, FAB-T, Square, the cascades, the adaptive attack,
//! MORA) on a small ADP ensemble trained here through the library on synthetic MNIST-shaped data:
//! bounds, strength relative to PGD, targeted success, and the command line's errors. Iterations
//! are kept small so that the file runs in seconds.

use crate::common;

use std::path::PathBuf;
use std::sync::OnceLock;

use adp::attack::{AttackKind, AttackSpec, Goal, Objective, Victim};
use adp::data::synthetic::write_synthetic_mnist;
use adp::data::{Batcher, Dataset, DatasetKind, Split, load_idx_dataset};
use adp::eval::{RobustResult, robust};
use adp::model::{Ensemble, ModelKind};
use adp::train::{Method, TrainConfig, train};
use burn::module::Module;
use common::{adp, adp_ok, assert_one_error, scratch_dir, stdout};

/// Test examples attacked by every comparison.
const EXAMPLES: usize = 50;
/// Budget of the comparisons.
const EPS: f64 = 0.15;

/// An ADP_{2,0.5} ensemble of 2 CNNs trained for 2 epochs on 600 synthetic images, once.
fn trained() -> &'static (PathBuf, Ensemble, Dataset) {
    static RUN: OnceLock<(PathBuf, Ensemble, Dataset)> = OnceLock::new();
    RUN.get_or_init(|| {
        let data = scratch_dir!().join("data");
        write_synthetic_mnist(&data, 600, 200, 11).unwrap();
        let config = TrainConfig {
            data_dir: data.clone(),
            model: ModelKind::Cnn,
            members: 2,
            epochs: 2,
            lr_drops: Vec::new(),
            seed: 1,
            ..TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5)
        };
        let run = scratch_dir!().join("run");
        let (model, _) = train(&config, &run, false).unwrap();
        let test = load_idx_dataset(&data, DatasetKind::Mnist, Split::Test)
            .unwrap()
            .take(EXAMPLES);
        (run, model.valid(), test)
    })
}

/// Serialises the tests that start `adp eval` on the shared run: each holds the run's lock, so a
/// second one at the same time would be refused.
fn shared_run_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Robust accuracy (or targeted success) of `spec` on the shared test examples, one batch.
fn evaluate(spec: &AttackSpec, targeted: bool) -> RobustResult {
    let (_, model, test) = trained();
    robust(
        model,
        test,
        spec,
        targeted,
        EXAMPLES,
        0,
        None,
        &adp::device::cpu(),
    )
    .unwrap()
}

/// The paper's PGD-10 at [`EPS`], the baseline of two comparisons, run once.
fn pgd_10() -> f64 {
    static ACC: OnceLock<f64> = OnceLock::new();
    *ACC.get_or_init(|| evaluate(&AttackSpec::new(AttackKind::Pgd, EPS), false).accuracy)
}

/// `kind` with `steps` iterations, and Square (alone or in autoattack) with 20 queries per step.
fn spec(kind: AttackKind, eps: f64, steps: usize) -> AttackSpec {
    AttackSpec {
        steps: Some(steps),
        queries: Some(20 * steps),
        ..AttackSpec::new(kind, eps)
    }
}

#[test]
fn every_new_attack_and_objective_stays_in_budget() {
    let (_, model, test) = trained();
    let device = adp::device::cpu();
    let victim = Victim::ensemble(model);
    let batch = Batcher::sequential(test, 10).batch(0, &device);
    let eps = 0.2;
    let mut specs: Vec<AttackSpec> = [
        AttackKind::ApgdCe,
        AttackKind::ApgdDlr,
        AttackKind::ApgdT,
        AttackKind::FabT,
        AttackKind::Square,
        AttackKind::ApgdCascade,
        AttackKind::Autoattack,
        AttackKind::Mora,
    ]
    .into_iter()
    .map(|k| spec(k, eps, 3))
    .collect();
    for objective in [
        Objective::LogMeanSoftmax,
        Objective::MeanLogits,
        Objective::JointMembers,
        Objective::Dlr,
    ] {
        specs.push(AttackSpec {
            objective: Some(objective),
            restarts: Some(1),
            ..spec(AttackKind::Adaptive, eps, 3)
        });
    }
    let x: Vec<f32> = batch
        .images
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    for s in specs {
        s.validate().unwrap();
        let attack = s.build();
        for goal in [
            Goal::Untargeted(batch.labels.clone()),
            Goal::Targeted(adp::attack::random_targets(&batch.labels, 10, 1)),
        ] {
            let out = attack.run(&victim, batch.images.clone(), &goal);
            assert_eq!(out.success.len(), 10);
            let adv: Vec<f32> = out.adversarial.into_data().try_to_vec::<f32>().unwrap();
            for (a, x) in adv.iter().zip(&x) {
                assert!((0.0..=1.0).contains(a), "{}: pixel {a}", attack.name());
                assert!(
                    ((a - x).abs() as f64) <= eps + 1e-6,
                    "{}: |{a} - {x}| > {eps}",
                    attack.name()
                );
            }
            assert!(out.norms.iter().all(|n| n.linf <= eps + 1e-6));
        }
    }
}

#[test]
fn apgd_ce_is_at_least_as_strong_as_pgd() {
    let apgd = evaluate(&spec(AttackKind::ApgdCe, EPS, 10), false);
    eprintln!("PGD-10 {} vs APGD-CE-10 {}", pgd_10(), apgd.accuracy);
    assert!(
        apgd.accuracy <= pgd_10(),
        "APGD-CE {} vs PGD {}",
        apgd.accuracy,
        pgd_10()
    );
}

#[test]
fn autoattack_is_at_least_as_strong_as_its_first_stage_and_the_apgd_cascade_as_its_parts() {
    let ce = evaluate(&spec(AttackKind::ApgdCe, EPS, 5), false);
    let standard = evaluate(&spec(AttackKind::Autoattack, EPS, 5), false);
    eprintln!("APGD-CE {} autoattack {}", ce.accuracy, standard.accuracy);
    // The accuracy after each stage: four stages, never rising, the last one the final number,
    // and the examples each stage broke add up to what the cascade broke.
    let after: Vec<f64> = standard.stages.iter().map(|s| s.accuracy).collect();
    assert_eq!(after.len(), 4, "{:?}", standard.stages);
    assert!(after.windows(2).all(|w| w[1] <= w[0]), "{after:?}");
    assert_eq!(after[3], standard.accuracy);
    let broken: usize = standard.stages.iter().map(|s| s.broken).sum();
    let n = standard.examples as f64;
    assert_eq!(
        broken,
        ((after[0] - after[3]) * n).round() as usize + standard.stages[0].broken
    );
    assert!(
        standard.stages[0].attack.starts_with("APGD"),
        "{:?}",
        standard.stages
    );
    assert!(
        standard.stages[3].attack.starts_with("Square"),
        "{:?}",
        standard.stages
    );
    assert!(
        standard.accuracy <= ce.accuracy,
        "autoattack {} vs APGD-CE {}",
        standard.accuracy,
        ce.accuracy
    );
    let dlr = evaluate(&spec(AttackKind::ApgdDlr, EPS, 5), false);
    let both = evaluate(&spec(AttackKind::ApgdCascade, EPS, 5), false);
    eprintln!(
        "APGD-CE {} APGD-DLR {} cascade {}",
        ce.accuracy, dlr.accuracy, both.accuracy
    );
    assert!(
        both.accuracy <= ce.accuracy.min(dlr.accuracy),
        "cascade {} vs APGD-CE {} and APGD-DLR {}",
        both.accuracy,
        ce.accuracy,
        dlr.accuracy
    );
}

#[test]
fn the_adaptive_attack_is_at_least_as_strong_as_pgd_10() {
    // PGD-20 then PGD-30 on the survivors, one restart each, steps of ε/20.
    let adaptive = evaluate(
        &AttackSpec {
            restarts: Some(1),
            ..spec(AttackKind::Adaptive, EPS, 30)
        },
        false,
    );
    eprintln!("PGD-10 {} vs adaptive {}", pgd_10(), adaptive.accuracy);
    assert!(
        adaptive.accuracy <= pgd_10(),
        "adaptive {} vs PGD-10 {}",
        adaptive.accuracy,
        pgd_10()
    );
}

#[test]
fn mora_is_at_least_as_strong_as_pgd_10_and_selectable_by_name() {
    // Its standard sweep of 5 ascents, 10 iterations each.
    let mora = evaluate(&spec(AttackKind::Mora, EPS, 10), false);
    eprintln!("PGD-10 {} vs MORA {}", pgd_10(), mora.accuracy);
    assert!(
        mora.accuracy <= pgd_10(),
        "MORA {} vs PGD-10 {}",
        mora.accuracy,
        pgd_10()
    );
    let (run, _, _) = trained();
    let _turn = shared_run_turn();
    let o = adp_ok(&[
        "eval",
        run.to_str().unwrap(),
        "--attack",
        "mora",
        "--eps",
        "0.1",
        "--steps",
        "2",
        "--no-indicators",
        "--limit",
        "10",
    ]);
    let stdout = stdout(&o);
    assert!(stdout.contains("| MORA | ε = 0.1 |"), "{stdout}");
}

#[test]
fn targeted_apgd_reaches_its_target_more_often_than_chance() {
    for kind in [AttackKind::ApgdCe, AttackKind::ApgdDlr] {
        let r = evaluate(&spec(kind, 0.3, 10), true);
        eprintln!("targeted {}: success {}", kind.name(), r.success_rate);
        assert!(
            r.success_rate > 1.0 / 9.0,
            "targeted {}: success {}",
            kind.name(),
            r.success_rate
        );
    }
}

#[test]
fn new_attacks_are_selectable_by_name_and_bad_values_give_one_error() {
    let (run, _, _) = trained();
    let _turn = shared_run_turn();
    let run = run.to_str().unwrap();
    let o = adp_ok(&[
        "eval",
        run,
        "--attack",
        "autoattack",
        "--eps",
        "0.1",
        "--attack",
        "adaptive",
        "--eps",
        "0.1",
        "--iterations",
        "2",
        "--restarts",
        "1",
        "--objective",
        "joint",
        "--queries",
        "30",
        "--seeds",
        "2",
        "--limit",
        "10",
        // Any run of the same data set serves as a surrogate; here the run itself.
        "--surrogate",
        run,
    ]);
    let stdout = stdout(&o);
    assert!(
        stdout.contains("| AUTOATTACK | ε = 0.1 |") && stdout.contains("| ADAPTIVE | ε = 0.1 |"),
        "{stdout}"
    );
    // The cascade's accuracy after each of its four stages, printed and saved.
    assert_eq!(stdout.matches("  after ").count(), 4, "{stdout}");
    assert!(stdout.contains("  after Square("), "{stdout}");
    // The indicators at ε = 0.1: one summary line, then a line per indicator that fired.
    assert!(
        stdout.contains("indicators at ε = 0.1 (10 examples): clean"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{run}/eval.json")).unwrap())
            .unwrap();
    // Two seeds: each attack's accuracy, its binomial error and the spread over the seeds.
    assert_eq!(
        report["robust"][0]["repeats"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert_eq!(stdout.matches("over 2 seeds mean").count(), 2, "{stdout}");
    assert_eq!(
        report["robust"][0]["stages"].as_array().map(Vec::len),
        Some(4),
        "{report}"
    );
    let indicators = &report["indicators"][0];
    assert_eq!(indicators["eps"].as_f64(), Some(0.1), "{report}");
    assert!(
        indicators["transfer_accuracy"].as_f64().is_some(),
        "{report}"
    );
    assert!(
        stdout.contains("transferred from the surrogate"),
        "{stdout}"
    );
    let fired = indicators["fired"].as_array().unwrap().len();
    let warnings = stdout.matches("FAILED EVALUATION?").count();
    assert_eq!(fired, warnings, "{stdout}");
    assert_eq!(
        stdout.contains("no indicator of a failed evaluation fired"),
        fired == 0,
        "{stdout}"
    );

    for (args, expected) in [
        (
            vec!["--attack", "apgd-ce", "--eps", "0.1", "--iterations", "0"],
            "`steps` must be at least 1",
        ),
        (
            vec!["--attack", "adaptive", "--eps", "0.1", "--restarts", "0"],
            "`restarts` must be at least 1",
        ),
        (
            vec![
                "--attack",
                "adaptive",
                "--eps",
                "0.1",
                "--objective",
                "nope",
            ],
            "invalid value 'nope' for '--objective",
        ),
        (
            vec!["--attack", "apgd-dlr", "--eps", "1.5"],
            "`eps` must lie in [0, 1]",
        ),
        (
            vec!["--attack", "square", "--eps", "0.1", "--queries", "0"],
            "`queries` must be at least 1",
        ),
        (
            vec!["--attack", "fgsm", "--eps", "0.1", "--seeds", "0"],
            "--seeds must be at least 1",
        ),
        (
            vec![
                "--attack",
                "fgsm",
                "--eps",
                "0.1",
                "--surrogate",
                "/nonexistent",
            ],
            "--surrogate /nonexistent",
        ),
    ] {
        let mut full = vec!["eval", run];
        full.extend(&args);
        assert_one_error(&adp(&full), expected, &format!("{args:?}"));
    }
}
