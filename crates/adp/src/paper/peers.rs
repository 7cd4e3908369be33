//! `adp reproduce peers`: the ensemble-diversity defences side by side — ECE, ADP_{2,0.5}
//! (Pang et al., 2019), GAL (Kariyappa & Qureshi, 2019), DVERGE (Yang et al., 2020) and TRS
//! (Yang et al., 2021) — trained with the same members, data, seed and epochs, and attacked by
//! the same attacks: clean accuracy, PGD and APGD-CE at two ε, AutoAttack, the member-to-member
//! transfer matrix of PGD (Fig. 3 of Pang et al.) and the training time per epoch relative to ECE.
//!
//! DVERGE starts from the trained ECE run, as its paper does (`--start-from baseline`), and then
//! trains for the same number of epochs; its time per epoch counts its own epochs only.
//!
//! Runs are trained (or reused, or resumed) in `OUT/<method>` as by `adp reproduce mnist`;
//! results go to `OUT/peers.{md,csv,json}` and the transfer matrices to `OUT/peers-transfer.*`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, AttackSpec};
use crate::data::DatasetKind;
use crate::device::DeviceKind;
use crate::eval::EvalReport;
use crate::eval::transfer::{TransferMatrix, TransferReport, transfer_matrix};
use crate::paper::reproduce::{
    Preset, ReproduceConfig, evaluate_method, load_or_fetch_test, run_name, training_summary,
};
use crate::train::checkpoint::load_run;
use crate::train::dverge::DvergeConfig;
use crate::train::{Method, TrainConfig};

/// Everything that defines the comparison; saved as `OUT/peers.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeersConfig {
    /// The shared training settings, test-set sizes and batch size (its `methods` and `attacks`
    /// are not used).
    pub reproduce: ReproduceConfig,
    /// The attacks of the table.
    pub attacks: Vec<AttackSpec>,
    /// The attack of the transfer matrices.
    pub transfer: AttackSpec,
    /// Test images of each transfer matrix.
    pub transfer_examples: usize,
}

impl PeersConfig {
    /// The comparison at `preset` on `dataset`: PGD and APGD-CE at ε 0.1 and 0.15 (MNIST, the
    /// ε of Pang et al.'s Table 2) or 0.01 and 0.02 (CIFAR, the ε of Pang et al. and of DVERGE's
    /// white-box table), AutoAttack at the first ε, on the first 500 test images at the `cpu`
    /// preset; the `tiny` preset keeps PGD and APGD-CE at the first ε only.
    pub fn preset(
        preset: Preset,
        dataset: DatasetKind,
        data_dir: PathBuf,
        device: DeviceKind,
    ) -> Self {
        let mut reproduce = ReproduceConfig::preset(preset, dataset, data_dir, device);
        if preset == Preset::Cpu {
            // AutoAttack costs 5.5-14 core-seconds per image on these members
            // (docs/autoattack-cpu.md), APGD-CE a tenth of that at each ε.
            reproduce.attack_examples = reproduce.attack_examples.min(500);
        }
        let eps = if dataset.cifar().is_some() {
            [0.01, 0.02]
        } else {
            [0.1, 0.15]
        };
        let mut attacks = Vec::new();
        for kind in [AttackKind::Pgd, AttackKind::ApgdCe] {
            for &e in if preset == Preset::Tiny {
                &eps[..1]
            } else {
                &eps[..]
            } {
                attacks.push(AttackSpec::new(kind, e));
            }
        }
        if preset != Preset::Tiny {
            attacks.push(AttackSpec::new(AttackKind::Autoattack, eps[0]));
        }
        let transfer_examples = reproduce.attack_examples.min(500);
        Self {
            reproduce,
            attacks,
            transfer: AttackSpec::new(AttackKind::Pgd, eps[0]),
            transfer_examples,
        }
    }

    /// The five methods' training configurations, DVERGE starting from the ECE run in `out`.
    pub fn methods(&self, out: &Path) -> Vec<TrainConfig> {
        let base = &self.reproduce.train;
        let ece = base.with_method(0.0, 0.0);
        let peer = |method: Method| TrainConfig {
            method,
            ..ece.clone()
        };
        let mut dverge = peer(Method::Dverge);
        dverge.dverge = Some(DvergeConfig {
            start_from: Some(out.join(run_name(&ece))),
            ..DvergeConfig::for_dataset(base.dataset)
        });
        vec![
            ece.clone(),
            base.with_method(2.0, 0.5),
            TrainConfig {
                gal: Some(Default::default()),
                ..peer(Method::Gal)
            },
            dverge,
            TrainConfig {
                trs: Some(Default::default()),
                ..peer(Method::Trs)
            },
        ]
    }
}

/// One method's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerResult {
    /// Clean and robust accuracy.
    pub report: EvalReport,
    /// Member-to-member transfer of the transfer attack.
    pub transfer: TransferMatrix,
    /// Mean wall-clock seconds of the run's training epochs (`history.csv`).
    pub seconds_per_epoch: f64,
}

/// Mean of the `seconds` column of `run/history.csv`.
pub fn seconds_per_epoch(run: &Path) -> Result<f64> {
    let path = run.join("history.csv");
    let text = crate::io::read_text(&path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "seconds")
        .with_context(|| format!("{} has no `seconds` column", path.display()))?;
    let secs: Vec<f64> = lines
        .map(|l| {
            l.split(',')
                .nth(col)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{}: a row without seconds: {l}", path.display()))
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(!secs.is_empty(), "{} holds no epoch", path.display());
    Ok(secs.iter().sum::<f64>() / secs.len() as f64)
}

/// Trains (or reuses) and evaluates every method into `out`, writes the report files and
/// returns the results in the order of [`PeersConfig::methods`].
pub fn run_peers(config: &PeersConfig, out: &Path) -> Result<Vec<PeerResult>> {
    let rc = &config.reproduce;
    let device = rc.train.device.device()?;
    let test = load_or_fetch_test(rc)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::io::write_toml(&out.join("peers.toml"), config)?;
    let clean_set = test.take(rc.clean_examples);
    let attack_set = test.take(rc.attack_examples);
    let transfer_set = test.take(config.transfer_examples);
    let mut results = Vec::new();
    for tc in config.methods(out) {
        let report = evaluate_method(
            &tc,
            out,
            &clean_set,
            &attack_set,
            &config.attacks,
            rc.eval_batch_size,
            &device,
        )?;
        let run = out.join(run_name(&tc));
        let model = load_run(&run, &device)?.1.valid();
        let transfer = transfer_matrix(
            &model,
            &transfer_set,
            &config.transfer,
            false,
            rc.eval_batch_size,
            tc.seed,
            &device,
        )?;
        results.push(PeerResult {
            report,
            transfer,
            seconds_per_epoch: seconds_per_epoch(&run)?,
        });
    }
    write_peers(config, &results, out)?;
    Ok(results)
}

/// The mean off-diagonal entry of a transfer matrix: the accuracy of member j on examples
/// crafted against member i ≠ j (higher: less transfer).
pub fn off_diagonal_mean(m: &TransferMatrix) -> f64 {
    let k = m.values.len();
    let mut sum = 0.0;
    for (i, row) in m.values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            if i != j {
                sum += v;
            }
        }
    }
    sum / (k * (k - 1)).max(1) as f64
}

/// `peers.md` (returned), `peers.csv`, `peers.json` and the transfer figure.
pub fn write_peers(config: &PeersConfig, results: &[PeerResult], out: &Path) -> Result<String> {
    let ece_time = results.first().map_or(f64::NAN, |r| r.seconds_per_epoch);
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    let mut head = vec!["method".to_string(), "clean".to_string()];
    head.extend(
        config
            .attacks
            .iter()
            .map(|a| format!("{} {}", a.kind.name().to_uppercase(), a.parameter_label())),
    );
    head.extend([
        format!(
            "transfer ({} {})",
            config.transfer.kind.name().to_uppercase(),
            config.transfer.parameter_label()
        ),
        "s/epoch".into(),
        "time vs ECE".into(),
    ]);
    let mut md = format!(
        "# Ensemble-diversity defences side by side ({}, {:?} preset)\n\n{}; clean accuracy on {} test images, attacks on the first {}, transfer matrices on the first {}. Accuracies in %; transfer is the mean accuracy of member j on examples crafted on member i ≠ j (higher: less transfer). DVERGE starts from the ECE run; its time counts its own epochs.\n\n",
        config.reproduce.dataset.name(),
        config.reproduce.preset,
        training_summary(&config.reproduce.train),
        config.reproduce.clean_examples,
        config.reproduce.attack_examples,
        config.transfer_examples,
    );
    md.push_str(&format!(
        "| {} |\n|{}\n",
        head.join(" | "),
        "---|".repeat(head.len())
    ));
    let mut csv = head
        .iter()
        .map(|h| h.replace(',', ";"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for r in results {
        let mut row = vec![
            r.report.label.clone(),
            pct(1.0 - r.report.clean.ensemble_error),
        ];
        row.extend(r.report.robust.iter().map(|x| pct(x.accuracy)));
        row.extend([
            pct(off_diagonal_mean(&r.transfer)),
            format!("{:.1}", r.seconds_per_epoch),
            format!("{:.2}×", r.seconds_per_epoch / ece_time),
        ]);
        md.push_str(&format!("| {} |\n", row.join(" | ")));
        csv.push_str(&(row.join(",") + "\n"));
    }
    let transfers: Vec<TransferReport> = results
        .iter()
        .map(|r| TransferReport {
            label: r.report.label.clone(),
            matrices: vec![r.transfer.clone()],
        })
        .collect();
    md.push_str("\n## Member-to-member transfer (Fig. 3 style)\n\n");
    md.push_str(&TransferReport::markdown(&transfers));
    crate::io::atomic_write(&out.join("peers.md"), md.as_bytes())?;
    crate::io::atomic_write(&out.join("peers.csv"), csv.as_bytes())?;
    crate::io::write_json(&out.join("peers.json"), &results)?;
    crate::report::plots::save(
        &crate::report::plots::TransferFigure(&transfers),
        &out.join("peers-transfer"),
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_methods_share_one_budget_and_dverge_starts_from_the_ece_run() {
        let c = PeersConfig::preset(Preset::Cpu, DatasetKind::Mnist, "d".into(), DeviceKind::Cpu);
        let methods = c.methods(Path::new("out"));
        let labels: Vec<String> = methods.iter().map(|m| m.label()).collect();
        assert_eq!(labels, ["ECE", "ADP_{2,0.5}", "GAL", "DVERGE", "TRS"]);
        for m in &methods {
            assert_eq!(
                (m.epochs, m.members, m.train_limit, m.model),
                (
                    c.reproduce.train.epochs,
                    3,
                    Some(10_000),
                    crate::model::ModelKind::Resnet20
                )
            );
        }
        let start = methods[3].dverge.as_ref().unwrap().start_from.clone();
        assert_eq!(start, Some(PathBuf::from("out/ece")));
        let names: Vec<String> = c.attacks.iter().map(|a| a.kind.name().into()).collect();
        assert_eq!(names, ["pgd", "pgd", "apgd-ce", "apgd-ce", "autoattack"]);
        assert_eq!(
            (c.reproduce.attack_examples, c.transfer_examples),
            (500, 500)
        );
    }

    #[test]
    fn transfer_is_the_mean_off_the_diagonal() {
        let m = TransferMatrix {
            attack: "pgd".into(),
            description: String::new(),
            parameter: String::new(),
            targeted: false,
            examples: 1,
            values: vec![vec![0.0, 0.5], vec![0.25, 0.0]],
        };
        assert!((off_diagonal_mean(&m) - 0.375).abs() < 1e-12);
    }

    #[test]
    fn seconds_per_epoch_is_the_mean_of_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let csv = "epoch,loss,ece,entropy,log_det,accuracy,lr,seconds,member_ce,frozen\n\
                   1,1,1,1,1,0.5,1e-3,10.0,1;1,0;0\n2,1,1,1,1,0.5,1e-3,20.0,1;1,0;0\n";
        std::fs::write(dir.path().join("history.csv"), csv).unwrap();
        assert!((seconds_per_epoch(dir.path()).unwrap() - 15.0).abs() < 1e-12);
        std::fs::write(dir.path().join("history.csv"), "epoch,loss\n1,2\n").unwrap();
        let err = seconds_per_epoch(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("history.csv") && err.contains("seconds"),
            "{err}"
        );
    }
}
