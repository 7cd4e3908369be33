//! The attacks of the paper's Table 2 beyond FGSM/BIM/PGD (MIM, JSMA, C&W-L2, EAD) on a small
//! ensemble trained by the library on synthetic MNIST-layout data: bound invariants, C&W and EAD
//! find smaller L2 and L1 perturbations than PGD, targeted JSMA and C&W beat chance, and a bad
//! parameter gives one clear error.

use crate::common;

use std::path::PathBuf;
use std::sync::OnceLock;

use adp::attack::{
    Attack, AttackKind, AttackOutput, AttackSpec, Classifier, Goal, Victim, random_targets,
};
use adp::data::synthetic::write_synthetic_mnist;
use adp::data::{Batch, Batcher, DatasetKind, Split, load_idx_dataset};
use adp::model::{Ensemble, ModelKind};
use adp::tensor::floats;
use adp::train::{Method, TrainConfig, train};
use burn::module::Module;
use common::{adp, assert_one_error};

/// A 2-member CNN ensemble trained for one epoch on 600 synthetic images, and 200 test images.
fn fixture() -> &'static (tempfile::TempDir, PathBuf) {
    static FIXTURE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        write_synthetic_mnist(&data, 600, 200, 11).unwrap();
        let mut config = TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5);
        config.data_dir = data.clone();
        config.model = ModelKind::Cnn;
        config.members = 2;
        config.epochs = 1;
        config.lr_drops = vec![];
        train(&config, &dir.path().join("run"), false).unwrap();
        (dir, data)
    })
}

fn model_and_batch(n: usize) -> (Ensemble, Batch) {
    let (dir, data) = fixture();
    let device = adp::device::cpu();
    let (_, model) = adp::train::checkpoint::load_run(&dir.path().join("run"), &device).unwrap();
    let test = load_idx_dataset(data, DatasetKind::Mnist, Split::Test)
        .unwrap()
        .take(n);
    let batch = Batcher::sequential(&test, n).batch(0, &device);
    (model.valid(), batch)
}

fn assert_in_unit_box(out: &AttackOutput, name: &str) {
    let adv = floats::<f32, _>(out.adversarial.clone());
    assert!(
        adv.iter().all(|a| (0.0..=1.0).contains(a)),
        "{name}: a pixel left [0, 1]"
    );
}

fn spec(kind: AttackKind, value: f64, tune: impl FnOnce(&mut AttackSpec)) -> Box<dyn Attack> {
    let mut s = AttackSpec::main(kind, value);
    tune(&mut s);
    s.validate().unwrap();
    s.build()
}

/// Mean of `norm` over the examples, correctly classified before the attack, that both attacks
/// broke, and how many there are.
fn mean_on_both(
    clean: &[bool],
    a: &AttackOutput,
    b: &AttackOutput,
    norm: impl Fn(&adp::attack::Norms) -> f64,
) -> (f64, f64, usize) {
    let both: Vec<usize> = (0..a.success.len())
        .filter(|&i| clean[i] && a.success[i] && b.success[i])
        .collect();
    let mean = |o: &AttackOutput| {
        both.iter().map(|&i| norm(&o.norms[i])).sum::<f64>() / both.len().max(1) as f64
    };
    (mean(a), mean(b), both.len())
}

#[test]
fn mim_and_jsma_stay_in_their_budgets_untargeted_and_targeted() {
    let (model, batch) = model_and_batch(20);
    let victim = Victim::ensemble(&model);
    let x = floats::<f32, _>(batch.images.clone());
    let targets = random_targets(&batch.labels, 10, 1);
    let eps = 0.2;
    let mim = spec(AttackKind::Mim, eps, |_| {});
    let jsma = spec(AttackKind::Jsma, 0.05, |_| {});
    for goal in [
        Goal::Untargeted(batch.labels.clone()),
        Goal::Targeted(targets),
    ] {
        let out = mim.run(&victim, batch.images.clone(), &goal);
        assert_in_unit_box(&out, "MIM");
        for (a, x) in floats::<f32, _>(out.adversarial).iter().zip(&x) {
            assert!(
                (a - x).abs() <= eps as f32 + 1e-6,
                "MIM: |{a} - {x}| > {eps}"
            );
        }
        let out = jsma.run(&victim, batch.images.clone(), &goal);
        assert_in_unit_box(&out, "JSMA");
        let most = (0.05f64 * 784.0).ceil();
        assert!(
            out.norms.iter().all(|n| n.l0 <= most),
            "JSMA changed more than ⌈γ·P⌉ = {most} pixels"
        );
    }
}

#[test]
fn cw_finds_smaller_l2_and_ead_smaller_l1_than_pgd_on_the_examples_all_break() {
    let (model, batch) = model_and_batch(16);
    let victim = Victim::ensemble(&model);
    let (x, y) = (batch.images, batch.labels);
    let clean: Vec<bool> = Goal::Untargeted(y.clone())
        .achieved(victim.log_probs(x.clone()))
        .iter()
        .map(|wrong| !wrong)
        .collect();
    let pgd = spec(AttackKind::Pgd, 0.3, |_| {}).attack(&victim, x.clone(), y.clone());
    let cw =
        spec(AttackKind::Cw, 10.0, |s| s.steps = Some(100)).attack(&victim, x.clone(), y.clone());
    let ead = spec(AttackKind::Ead, 10.0, |s| {
        s.steps = Some(100);
        s.lr = Some(0.1);
    })
    .attack(&victim, x.clone(), y.clone());
    assert_in_unit_box(&cw, "C&W");
    assert_in_unit_box(&ead, "EAD");
    let (l2_cw, l2_pgd, n) = mean_on_both(&clean, &cw, &pgd, |d| d.l2);
    assert!(n >= 4, "C&W and PGD both broke only {n} of 16");
    assert!(
        l2_cw < l2_pgd,
        "mean L2: C&W {l2_cw} vs PGD {l2_pgd} on {n}"
    );
    eprintln!("mean L2 on {n}: C&W {l2_cw:.3}, PGD {l2_pgd:.3}");
    let (l1_ead, l1_pgd, n) = mean_on_both(&clean, &ead, &pgd, |d| d.l1);
    eprintln!("mean L1 on {n}: EAD {l1_ead:.3}, PGD {l1_pgd:.3}");
    assert!(n >= 4, "EAD and PGD both broke only {n} of 16");
    assert!(
        l1_ead < l1_pgd,
        "mean L1: EAD {l1_ead} vs PGD {l1_pgd} on {n}"
    );
}

#[test]
fn targeted_jsma_and_cw_reach_random_targets_more_often_than_chance() {
    let (model, batch) = model_and_batch(18);
    let victim = Victim::ensemble(&model);
    let goal = Goal::Targeted(random_targets(&batch.labels, 10, 4));
    let rate = |out: &AttackOutput| out.success.iter().filter(|s| **s).count() as f64 / 18.0;
    let jsma = spec(AttackKind::Jsma, 0.1, |s| s.theta = Some(1.0)).run(
        &victim,
        batch.images.clone(),
        &goal,
    );
    let cw = spec(AttackKind::Cw, 10.0, |s| s.steps = Some(100)).run(&victim, batch.images, &goal);
    eprintln!(
        "targeted success: JSMA {:.2}, C&W {:.2}",
        rate(&jsma),
        rate(&cw)
    );
    assert!(
        rate(&jsma) > 1.0 / 9.0,
        "targeted JSMA success {}",
        rate(&jsma)
    );
    assert!(rate(&cw) > 1.0 / 9.0, "targeted C&W success {}", rate(&cw));
}

#[test]
fn a_bad_attack_parameter_gives_one_clear_error() {
    let run = std::env::temp_dir().join("adp-no-such-run");
    let run = run.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--attack", "jsma", "--gamma", "0"],
            "`gamma` must lie in (0, 1], got 0",
        ),
        (
            &["--attack", "jsma", "--eps", "0.3", "--theta", "2"],
            "`theta` must lie in (0, 1]",
        ),
        (
            &["--attack", "pgd", "--c", "1"],
            "--c does not apply to --attack pgd",
        ),
        (&["--attack", "cw"], "--attack cw has no --c list"),
    ];
    for (args, expected) in cases {
        let o = adp(&[&["eval", run], args].concat());
        assert_one_error(&o, expected, &format!("{args:?}"));
    }
}
