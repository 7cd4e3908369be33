//! `adp reproduce mnist`: the paper's MNIST comparison from one command — fetch the data, train
//! ECE, ADP_{2,0} and ADP_{2,0.5} with the same seed and budget, attack all three with the
//! Table 2 attacks, and write one comparison table.
//!
//! Each method trains into its own run directory under the output directory. A finished run
//! (its `model.safetensors` exists and its configuration matches) is reused instead of retrained,
//! and an interrupted one is resumed from its last checkpoint, so running the command again never
//! loses finished work.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, AttackSpec};
use crate::data::{Dataset, DatasetKind, Normalization, Split, fetch, load_dataset};
use crate::device::DeviceKind;
use crate::eval::resume::{RESUME_DIR, Resume};
use crate::eval::shard::weights_sha256;
use crate::eval::store::{self, ResultKey};
use crate::eval::{EvalReport, clean, robust};
use crate::loss::Diversity;
use crate::model::ModelKind;
use crate::train::checkpoint::load_run;
use crate::train::{Method, TrainConfig, train};

/// How much compute a reproduction spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Seconds: a smoke test of the whole pipeline (used by the test suite).
    Tiny,
    /// About 26 minutes on 2 CPU cores: the paper's members (3 ResNet-20) for 3 epochs on
    /// 10,000 images, attacks on 1000 test images.
    Cpu,
    /// The paper's setting as the official code trains it: 3 ResNet-20, 40 epochs (×0.1 after
    /// epochs 15 and 30), shifts and flips, per-pixel mean; the full test set.
    Paper,
}

/// Everything that defines a reproduction; saved as `OUT/reproduce.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReproduceConfig {
    /// Preset the settings came from.
    pub preset: Preset,
    /// Data set (MNIST or Fashion-MNIST, same attacks).
    pub dataset: DatasetKind,
    /// Directory of the data set's files.
    pub data_dir: PathBuf,
    /// The training configuration shared by all methods (method, α and β are overridden).
    pub train: TrainConfig,
    /// The methods as (α, β); (0, 0) is the ECE baseline.
    pub methods: Vec<(f64, f64)>,
    /// Test images used for the clean error (Table 1).
    pub clean_examples: usize,
    /// Test images attacked (the first N of the test set).
    pub attack_examples: usize,
    /// The attacks, Table 2's rows.
    pub attacks: Vec<AttackSpec>,
    /// Batch size for evaluation and attacks.
    pub eval_batch_size: usize,
}

impl ReproduceConfig {
    /// The settings of `preset` for `dataset`.
    pub fn preset(
        preset: Preset,
        dataset: DatasetKind,
        data_dir: PathBuf,
        device: DeviceKind,
    ) -> Self {
        let mut train = TrainConfig::paper_mnist(Method::Ece, 0.0, 0.0);
        train.dataset = dataset;
        train.data_dir = data_dir.clone();
        train.device = device;
        let table2 =
            |eps: &[(AttackKind, f64)]| eps.iter().map(|&(k, e)| AttackSpec::new(k, e)).collect();
        let (clean_examples, attack_examples, attacks) = match preset {
            Preset::Tiny => {
                train.model = ModelKind::Cnn;
                train.epochs = 1;
                train.lr_drops = vec![];
                train.train_limit = Some(256);
                (
                    64,
                    32,
                    table2(&[(AttackKind::Fgsm, 0.1), (AttackKind::Pgd, 0.1)]),
                )
            }
            Preset::Cpu => {
                // The setting closest to the paper's ECE and ADP numbers within half an hour
                // (docs/fidelity.md): its members, shown 1/80 of the images of its 40 epochs.
                train.model = ModelKind::Resnet20;
                train.epochs = 3;
                train.lr_drops = vec![2];
                train.train_limit = Some(10_000);
                (10_000, 1000, paper_attacks(false))
            }
            Preset::Paper => {
                // The official code's `--augmentation=True` and per-pixel mean, on every data set.
                train.augment = true;
                train.normalize = Normalization::Mean;
                (10_000, 10_000, paper_attacks(true))
            }
        };
        if preset == Preset::Paper && dataset.cifar().is_some() {
            // Section 4.2: 180 epochs on CIFAR-10/100; the official code's `lr_schedule`
            // multiplies the rate by 0.1 once the epoch exceeds 80, 120 and 160.
            train.epochs = 180;
            train.lr_drops = vec![81, 121, 161];
        }
        Self {
            preset,
            dataset,
            data_dir,
            train,
            methods: vec![(0.0, 0.0), (2.0, 0.0), (2.0, 0.5)],
            clean_examples,
            attack_examples,
            attacks,
            eval_batch_size: 250,
        }
    }

    /// The training configuration of method (α, β).
    pub fn train_config(&self, alpha: f64, beta: f64) -> TrainConfig {
        self.train.with_method(alpha, beta)
    }
}

/// The MNIST rows of Table 2: the gradient attacks at their ε, and with `full` also JSMA (γ),
/// C&W (c) and EAD (c), which take up to 1000 iterations per example and so are left to the
/// `paper` preset.
fn paper_attacks(full: bool) -> Vec<AttackSpec> {
    let mut rows = vec![
        (AttackKind::Fgsm, 0.1),
        (AttackKind::Fgsm, 0.2),
        (AttackKind::Bim, 0.1),
        (AttackKind::Bim, 0.15),
        (AttackKind::Pgd, 0.1),
        (AttackKind::Pgd, 0.15),
        (AttackKind::Mim, 0.1),
        (AttackKind::Mim, 0.15),
    ];
    if full {
        rows.extend([
            (AttackKind::Jsma, 0.3),
            (AttackKind::Jsma, 0.6),
            (AttackKind::Cw, 0.1),
            (AttackKind::Cw, 1.0),
            (AttackKind::Cw, 10.0),
            (AttackKind::Ead, 5.0),
            (AttackKind::Ead, 10.0),
        ]);
    }
    rows.iter().map(|&(k, v)| AttackSpec::main(k, v)).collect()
}

/// Directory name of a method's run, e.g. `adp-2-0.5`; the JSD diversity (App. B.1) makes it
/// `adp-jsd-2-0.5`, adversarial training prefixes `advt-pgd-`, and an ensemble of other than the
/// paper's K = 3 members gets a `-k5` suffix, so that every method of every table has its own.
pub fn run_name(config: &TrainConfig) -> String {
    let mut name = match (config.method, config.adp.diversity) {
        (Method::Ece, _) => "ece".to_string(),
        (Method::Gal, _) => "gal".to_string(),
        (Method::Dverge, _) => "dverge".to_string(),
        (Method::Trs, _) => "trs".to_string(),
        (Method::Adp, Diversity::LogDet) => format!("adp-{}-{}", config.adp.alpha, config.adp.beta),
        (Method::Adp, Diversity::Jsd) => {
            format!("adp-jsd-{}-{}", config.adp.alpha, config.adp.beta)
        }
    };
    if let Some(a) = &config.adv_train {
        name = format!("advt-{}-{name}", a.attack.label().to_lowercase());
    }
    if config.members != 3 {
        name.push_str(&format!("-k{}", config.members));
    }
    name
}

/// Trains a method (or reuses / resumes its run) and returns its run directory.
pub fn train_or_reuse(config: &TrainConfig, out: &Path) -> Result<PathBuf> {
    let run = out.join(run_name(config));
    let config_path = run.join("config.toml");
    if config_path.exists() {
        let saved: TrainConfig = crate::io::read_toml(&config_path)?;
        ensure!(
            &saved == config,
            "{} holds a run with other settings; remove it or choose another output directory",
            run.display()
        );
        if run.join("model.safetensors").exists() {
            crate::progress::note(&format!(
                "{}: finished run found in {}, reusing it",
                config.label(),
                run.display()
            ));
            return Ok(run);
        }
        train(config, &run, true)?;
    } else {
        train(config, &run, false)?;
    }
    Ok(run)
}

/// The test set of `config`'s data set. Data already in place (the real set, or the user's own
/// files in its layout) is used as it is; otherwise MNIST and Fashion-MNIST are fetched and
/// verified, while for CIFAR (a 160 MB archive) the error says which `adp data fetch` to run.
pub fn load_or_fetch_test(config: &ReproduceConfig) -> Result<Dataset> {
    match load_dataset(&config.data_dir, config.dataset, Split::Test) {
        Ok(test) => Ok(test),
        Err(e) if config.dataset.cifar().is_some() => Err(e),
        Err(_) => {
            fetch::fetch(config.dataset, &config.data_dir)?;
            load_dataset(&config.data_dir, config.dataset, Split::Test)
        }
    }
}

/// Runs the whole reproduction into `out` and returns one report per method, with the
/// comparison table in Markdown (also written to `out/report.md`).
pub fn reproduce(config: &ReproduceConfig, out: &Path) -> Result<(Vec<EvalReport>, String)> {
    let device = config.train.device.device()?;
    let test = load_or_fetch_test(config)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::io::write_toml(&out.join("reproduce.toml"), config)?;
    let clean_set = test.take(config.clean_examples);
    let attack_set = test.take(config.attack_examples);

    let mut reports = Vec::new();
    for &(alpha, beta) in &config.methods {
        let tc = config.train_config(alpha, beta);
        reports.push(evaluate_method(
            &tc,
            out,
            &clean_set,
            &attack_set,
            &config.attacks,
            config.eval_batch_size,
            &device,
        )?);
    }
    crate::io::write_json(&out.join("report.json"), &reports)?;
    let md = write_report(config, &reports, out)?;
    Ok((reports, md))
}

/// Trains (or reuses) the run of `tc` inside `out`, measures its clean error on `clean_set`
/// (Table 1) and its accuracy under each of `attacks` on `attack_set` (Tables 2-5), saves them
/// as the run's `eval.json` / `eval.csv` and returns them. Every attack result is kept in the
/// run ([`crate::eval::store`]) as soon as it is measured, and one already kept for the same
/// weights, images, attack, seed and batch size is reused rather than measured again.
pub fn evaluate_method(
    tc: &TrainConfig,
    out: &Path,
    clean_set: &Dataset,
    attack_set: &Dataset,
    attacks: &[AttackSpec],
    batch_size: usize,
    device: &burn::prelude::Device,
) -> Result<EvalReport> {
    // Held through training, evaluation and saving: the run is this process's until its
    // results are saved (the lock is re-entrant, so `train` takes it again).
    let _lock = crate::lock::RunLock::acquire(&out.join(run_name(tc)), "reproduce")?;
    let run = train_or_reuse(tc, out)?;
    let (_, model) = load_run(&run, device)?;
    let model = model.valid();
    let mut report = EvalReport {
        label: tc.label(),
        clean: clean(&model, clean_set, batch_size, device),
        robust: Vec::new(),
        indicators: Vec::new(),
    };
    let keys = ResultKey::for_attacks(&run, attack_set, attacks, false, tc.seed, batch_size)?;
    // A cascade's finished stages, kept until its result is: a killed reproduction resumes in
    // the middle of AutoAttack.
    let resume = Resume {
        dir: run.join(RESUME_DIR),
        weights_sha256: weights_sha256(&run)?,
    };
    for (spec, key) in attacks.iter().zip(&keys) {
        let (r, measured) = match store::find(&run, key)? {
            Some(r) => (r, false),
            None => {
                let r = robust(
                    &model,
                    attack_set,
                    spec,
                    false,
                    batch_size,
                    tc.seed,
                    Some(&resume),
                    device,
                )?;
                (r, true)
            }
        };
        // Printed before it is kept: a failed write (a full disk) loses no result.
        crate::progress::note(&format!(
            "{}: {} accuracy {:.1}% on {} images ({})",
            report.label,
            r.description,
            100.0 * r.accuracy,
            r.examples,
            if measured {
                "measured"
            } else {
                "kept from an earlier run"
            }
        ));
        if measured {
            store::keep(&run, key, &r)?;
            resume.clear()?;
        }
        report.robust.push(r);
    }
    report.save(&run)?;
    Ok(report)
}

/// One line on the compute a reproduction spent: members, epochs and training images.
pub fn training_summary(train: &TrainConfig) -> String {
    format!(
        "{} members of {:?}, {} epochs, {} training images",
        train.members,
        train.model,
        train.epochs,
        train.train_limit.map_or("all".into(), |n| n.to_string()),
    )
}

/// Writes `report.md` and `report.csv` (Tables 1-2 of every method) into `out` from the
/// reproduction's results; `adp report` calls it again on the saved `report.json`.
pub fn write_report(
    config: &ReproduceConfig,
    reports: &[EvalReport],
    out: &Path,
) -> Result<String> {
    let attacked = reports
        .first()
        .and_then(|r| r.robust.first())
        .map_or(0, |r| r.examples);
    let md = format!(
        "# {} reproduction ({:?} preset)\n\n{}; attacks on the first {attacked} test images.\n\n{}",
        config.dataset.name(),
        config.preset,
        training_summary(&config.train),
        crate::report::comparison_markdown(reports)
    );
    crate::io::atomic_write(&out.join("report.md"), md.as_bytes())?;
    let csv: String = reports
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.to_csv()
                .lines()
                .skip(usize::from(i > 0))
                .map(|l| format!("{l}\n"))
                .collect::<Vec<_>>()
        })
        .collect();
    crate::io::atomic_write(&out.join("report.csv"), csv.as_bytes())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_preset_trains_as_the_official_code_and_the_cpu_preset_the_papers_members() {
        let preset =
            |p| ReproduceConfig::preset(p, DatasetKind::Mnist, "data".into(), DeviceKind::Cpu);
        let paper = preset(Preset::Paper).train;
        assert!(paper.augment);
        assert_eq!(paper.normalize, Normalization::Mean);
        assert_eq!(paper.lr_drops, [16, 31]);
        let cpu = preset(Preset::Cpu).train;
        assert_eq!(cpu.model, ModelKind::Resnet20);
        assert!(!cpu.augment);
        assert_eq!(cpu.normalize, Normalization::MeanStd);
    }
}
