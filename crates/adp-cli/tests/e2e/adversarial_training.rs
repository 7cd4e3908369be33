//! Adversarial training (Table 4) and the JSD diversity (App. B.1) as training options: the mixed
//! batches hold adversarial examples inside their budget, a tiny run trains and finishes through
//! the binary, and the options survive the run's `config.toml`.

use crate::common;

use adp::data::synthetic::write_synthetic_mnist;
use adp::data::{Batcher, DatasetKind, Split, load_idx_dataset};
use adp::loss::{Diversity, ensemble_cross_entropy};
use adp::tensor::floats;
use adp::train::adversarial::{AdvAttack, AdvTrainConfig, adversarial_batch};
use adp::train::{Method, TrainConfig};
use burn::module::Module;
use common::{adp, adp_ok, assert_fails_with, cnn_spec, stdout};

#[test]
fn advt_batches_mix_clean_and_adversarial_examples_within_eps_and_the_pixel_range() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_mnist(dir.path(), 48, 10, 3).unwrap();
    let data = load_idx_dataset(dir.path(), DatasetKind::Mnist, Split::Train).unwrap();
    // The training situation: model and batch on the autodiff device.
    let ad = adp::device::cpu().autodiff();
    ad.seed(2);
    let model = cnn_spec(3, [1, 28, 28], 10, 0.2, 0.3).init(&ad);
    for attack in [AdvAttack::Fgsm, AdvAttack::Pgd] {
        let config = AdvTrainConfig::paper(attack);
        for step in 0..3 {
            let batch = Batcher::sequential(&data, 16).batch(step, &ad);
            let clean = floats::<f32, _>(batch.images.clone());
            let (mixed, eps) = adversarial_batch(&model, batch.clone(), &config, 7, 0, step);
            assert!((0.01..=0.05).contains(&eps), "{eps}");
            assert_eq!(eps, config.eps_for(7, 0, step));
            assert_eq!(mixed.images.dims(), [32, 1, 28, 28]);
            let labels: Vec<i64> = mixed.labels.to_data().try_into_vec_as::<i64>().unwrap();
            let y: Vec<i64> = batch.labels.to_data().try_into_vec_as::<i64>().unwrap();
            assert_eq!(
                labels,
                [y.clone(), y].concat(),
                "labels repeat for the adversarial half"
            );
            let pixels = floats::<f32, _>(mixed.images.clone());
            let (first, second) = pixels.split_at(clean.len());
            assert_eq!(first, clean.as_slice(), "the first half is the clean batch");
            let mut moved = 0;
            for (a, x) in second.iter().zip(&clean) {
                assert!((0.0..=1.0).contains(a), "pixel {a} left [0, 1]");
                assert!(((a - x).abs() as f64) <= eps + 1e-6, "|{a} - {x}| > {eps}");
                moved += usize::from((a - x).abs() > 1e-7);
            }
            assert!(
                moved > clean.len() / 4,
                "{attack:?}: only {moved} pixels moved"
            );
            // The adversarial half costs the current ensemble more than the clean half.
            let logits = model
                .clone()
                .valid()
                .forward(mixed.images.without_autodiff());
            let ce = floats::<f32, _>(ensemble_cross_entropy(
                logits.logits,
                mixed.labels.without_autodiff(),
                1.0,
            ));
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
            let (c, a) = (mean(&ce[..16]), mean(&ce[16..]));
            assert!(a > c, "{attack:?}: adversarial ECE {a} <= clean ECE {c}");
        }
    }
}

#[test]
fn tiny_advt_and_jsd_runs_train_finish_and_round_trip_their_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_mnist(&data, 96, 20, 5).unwrap();
    let d = data.to_str().unwrap();
    for (extra, label) in [
        (
            vec!["--adv-train", "pgd", "--adv-eps", "0.05,0.1"],
            "AdvT_PGD + ADP_{2,0.5}",
        ),
        (
            vec!["--diversity", "jsd", "--alpha", "0"],
            "ADP-JSD_{0,0.5}",
        ),
    ] {
        let run = dir.path().join(extra[1]);
        let r = run.to_str().unwrap();
        let mut args = vec![
            "train",
            "--model",
            "cnn",
            "--members",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--lr-drops",
            "5",
            "--data-dir",
            d,
            "--out",
            r,
        ];
        args.extend(&extra);
        let o = adp_ok(&args);
        assert!(stdout(&o).contains(label));
        assert!(run.join("model.safetensors").exists());
        let history = std::fs::read_to_string(run.join("history.csv")).unwrap();
        assert_eq!(history.lines().count(), 2, "{history}");
        let saved: TrainConfig = adp::io::read_toml(&run.join("config.toml")).unwrap();
        assert_eq!(saved.label(), label);
        let again = dir.path().join("again.toml");
        adp::io::write_toml(&again, &saved).unwrap();
        assert_eq!(adp::io::read_toml::<TrainConfig>(&again).unwrap(), saved);
        adp_ok(&["train", "--resume", r]);
    }
    let advt: TrainConfig = adp::io::read_toml(&dir.path().join("pgd/config.toml")).unwrap();
    let adv = advt.adv_train.unwrap();
    assert_eq!(
        (adv.attack, adv.eps_min, adv.eps_max),
        (AdvAttack::Pgd, 0.05, 0.1)
    );
    let jsd: TrainConfig = adp::io::read_toml(&dir.path().join("jsd/config.toml")).unwrap();
    assert_eq!(jsd.adp.diversity, Diversity::Jsd);
    assert!(jsd.adv_train.is_none());
}

#[test]
fn configs_written_before_these_options_still_read_as_log_det_without_advt() {
    let old = TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5);
    let text = toml::to_string(&old).unwrap();
    assert!(!text.contains("adv_train"), "{text}");
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("diversity"))
        .map(|l| format!("{l}\n"))
        .collect();
    let read: TrainConfig = toml::from_str(&without).unwrap();
    assert_eq!(read, old);
    assert_eq!(read.adp.diversity, Diversity::LogDet);
}

#[test]
fn bad_advt_options_give_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_synthetic_mnist(&data, 20, 10, 5).unwrap();
    let out = dir.path().join("never");
    for (eps, expected) in [
        ("0.05,0.01", "`eps_min`, `eps_max` must satisfy"),
        ("0.1", "--adv-eps takes two numbers"),
    ] {
        let o = adp(&[
            "train",
            "--model",
            "cnn",
            "--adv-train",
            "fgsm",
            "--adv-eps",
            eps,
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_fails_with(&o, expected, eps);
    }
    assert!(!out.exists());
}
