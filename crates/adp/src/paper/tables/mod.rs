//! `adp reproduce table1|table2|table3|table4|table5`: the paper's Tables 1-5 from one command,
//! with the paper's published numbers beside ours.
//!
//! - `table1` (Table 1): clean test error of each member and of the ensemble, ECE / ADP_{2,0} /
//!   ADP_{2,0.5};
//! - `table2` (Table 2): accuracy under FGSM, BIM, PGD, MIM, JSMA, C&W and EAD at the paper's
//!   parameters, MNIST or CIFAR-10 (the parameters follow the data set);
//! - `table3` (Table 3): CIFAR-100, BIM / PGD / MIM at ε = 0.005 and 0.01, ECE and ADP_{2,0.5};
//! - `table4` (Table 4): adversarial training (FGSM, PGD) with and without ADP_{2,0.5}, FGSM at
//!   ε = 0.04 and BIM / PGD / MIM at ε = 0.02 on CIFAR-10;
//! - `table5` (Table 5): K = 5 members, ECE and ADP_{2,0.5}, clean accuracy and one parameter of
//!   each attack on CIFAR-10.
//!
//! Tables 4 and 5 exist in the paper for CIFAR-10 only. On an MNIST-layout data set (`--dataset
//! mnist`, for CPU runs) their budgets are mapped to the MNIST column of Table 2 by the ratio of
//! the two columns there (CIFAR-10 ε = 0.01 / 0.02 / 0.04 ↔ MNIST ε = 0.1 / 0.15 / 0.2, C&W
//! c = 0.01 ↔ 1, EAD c = 1 ↔ 5) and adversarial training draws ε from [0.05, 0.25] instead of
//! [0.01, 0.05] (×5, the ratio of Table 2's FGSM budgets); the paper's column then reads `–`.
//! The `cpu` preset trains Table 4's adversarially trained runs on half the images for 2 epochs
//! (no learning-rate drop), as each AdvT-PGD step costs about 12 clean ones.
//!
//! Every method trains (or is reused) through [`crate::paper::reproduce::train_or_reuse`], so tables sharing an output
//! directory share runs (`table1` and `table2` with the same `--out` train once, and reuse the
//! runs of `adp reproduce mnist`). As in `adp reproduce mnist`, the `tiny` and `cpu` presets leave
//! out JSMA, C&W and EAD (up to 1000 iterations per example); `paper` runs every row. Results go
//! to `OUT/tableN.json` with `tableN.md`, `tableN.csv` and the settings `tableN.toml`;
//! [`rebuild`] rewrites the Markdown and CSV from the JSON.
//!
//! The paper's published numbers are in `published.rs`, the Markdown and CSV layout in
//! `render.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, AttackSpec};
use crate::data::DatasetKind;
use crate::device::DeviceKind;
use crate::eval::EvalReport;
use crate::paper::reproduce::{Preset, ReproduceConfig, evaluate_method, load_or_fetch_test};
use crate::train::TrainConfig;
use crate::train::adversarial::{AdvAttack, AdvTrainConfig};
use AttackKind::{Bim, Fgsm, Mim, Pgd};

mod published;
mod render;
#[cfg(test)]
mod tests;

pub use published::paper_rows;
pub use render::{TableResults, TableRow};

/// The table experiments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Table {
    /// Table 1: clean test error of members and ensemble.
    Table1,
    /// Table 2: accuracy under the white-box attacks, MNIST or CIFAR-10.
    Table2,
    /// Table 3: accuracy under BIM, PGD and MIM on CIFAR-100.
    Table3,
    /// Table 4: adversarial training with and without ADP.
    Table4,
    /// Table 5: ensembles of K = 5 members.
    Table5,
}

impl Table {
    /// All of them.
    pub const ALL: [Table; 5] = [
        Table::Table1,
        Table::Table2,
        Table::Table3,
        Table::Table4,
        Table::Table5,
    ];

    /// Name on the command line and stem of the output files.
    pub fn name(self) -> &'static str {
        match self {
            Table::Table1 => "table1",
            Table::Table2 => "table2",
            Table::Table3 => "table3",
            Table::Table4 => "table4",
            Table::Table5 => "table5",
        }
    }

    /// The paper's title of the table, e.g. `Table 2`.
    pub fn title(self) -> String {
        format!("Table {}", &self.name()[5..])
    }

    /// The data set of the paper's table (Tables 1-2: MNIST is the first of their columns).
    pub fn default_dataset(self) -> DatasetKind {
        match self {
            Table::Table1 | Table::Table2 => DatasetKind::Mnist,
            Table::Table3 => DatasetKind::Cifar100,
            Table::Table4 | Table::Table5 => DatasetKind::Cifar10,
        }
    }
}

/// One method (column) of a table: ADP_{α,β} ((0, 0) is the ECE baseline), with or without
/// adversarial training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableMethod {
    /// Weight α of the ensemble entropy.
    pub alpha: f64,
    /// Weight β of log ED.
    pub beta: f64,
    /// Adversarial training (Table 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adv_train: Option<AdvTrainConfig>,
}

impl TableMethod {
    fn plain(alpha: f64, beta: f64) -> Self {
        Self {
            alpha,
            beta,
            adv_train: None,
        }
    }

    /// The full training configuration of this method under `budget`.
    pub fn train_config(&self, budget: &ReproduceConfig) -> TrainConfig {
        TrainConfig {
            adv_train: self.adv_train.clone(),
            ..budget.train_config(self.alpha, self.beta)
        }
    }
}

/// What a row of a table measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RowKey {
    /// Clean test error (%) of member `member` (0-based), Table 1's "Net i".
    MemberError {
        /// Member index.
        member: usize,
    },
    /// Clean test error (%) of the ensemble.
    EnsembleError,
    /// Clean test accuracy (%) of the ensemble, Table 5's "Normal".
    CleanAccuracy,
    /// Accuracy (%) under an untargeted attack.
    Attack {
        /// The attack and its parameters.
        spec: AttackSpec,
    },
}

impl RowKey {
    /// The row's first two cells: its name and Table 2's "Para." column.
    pub fn cells(&self) -> (String, String) {
        match self {
            RowKey::MemberError { member } => (format!("Net {}", member + 1), String::new()),
            RowKey::EnsembleError => ("Ensemble".into(), String::new()),
            RowKey::CleanAccuracy => ("Normal".into(), "-".into()),
            RowKey::Attack { spec } => (spec.kind.name().to_uppercase(), spec.parameter_label()),
        }
    }

    /// Our number for this row from one method's evaluation, in percent.
    pub fn measure(&self, report: &EvalReport) -> Option<f64> {
        match self {
            RowKey::MemberError { member } => {
                report.clean.member_error.get(*member).map(|e| 100.0 * e)
            }
            RowKey::EnsembleError => Some(100.0 * report.clean.ensemble_error),
            RowKey::CleanAccuracy => Some(100.0 * (1.0 - report.clean.ensemble_error)),
            RowKey::Attack { spec } => report
                .robust
                .iter()
                .find(|r| {
                    r.attack == spec.kind.name()
                        && r.parameter == spec.parameter_label()
                        && !r.targeted
                })
                .map(|r| 100.0 * r.accuracy),
        }
    }
}

/// A row of a table: what it measures and the paper's number for each method (`None` where the
/// paper has none: another data set, or Table 1's `-`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaperRow {
    /// What the row measures.
    pub key: RowKey,
    /// The paper's value per method, in percent.
    pub paper: Vec<Option<f64>>,
}

/// Everything that defines a table experiment; saved as `OUT/tableN.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableConfig {
    /// Which table.
    pub table: Table,
    /// Training budget, data, test-set sizes and the attacks (the table's rows), shared with
    /// `adp reproduce mnist`; its `methods` lists the (α, β) of [`TableConfig::methods`].
    pub reproduce: ReproduceConfig,
    /// The table's columns.
    pub methods: Vec<TableMethod>,
}

/// Whether `dataset` takes the paper's CIFAR parameters (else its MNIST ones).
fn cifar_like(dataset: DatasetKind) -> bool {
    dataset.cifar().is_some()
}

/// Whether an attack belongs to the `tiny` and `cpu` presets: the gradient attacks. JSMA, C&W
/// and EAD take up to 1000 iterations per example and are left to `paper`, as in
/// `adp reproduce mnist`.
fn cheap(kind: AttackKind) -> bool {
    matches!(kind, Fgsm | Bim | Pgd | Mim)
}

impl TableConfig {
    /// The settings of `table` under `preset` on `dataset`: the budget of `adp reproduce mnist`
    /// (for CIFAR's `paper` preset, the paper's CIFAR schedule), the paper's methods and rows.
    pub fn preset(
        table: Table,
        preset: Preset,
        dataset: DatasetKind,
        data_dir: PathBuf,
        device: DeviceKind,
    ) -> Result<Self> {
        ensure!(
            table != Table::Table3 || dataset == DatasetKind::Cifar100,
            "table3 is the paper's CIFAR-100 table; its `dataset` must be cifar100"
        );
        let mut reproduce = ReproduceConfig::preset(preset, dataset, data_dir, device);
        let members = if table == Table::Table5 { 5 } else { 3 };
        reproduce.train.members = members;
        if table == Table::Table4 && preset == Preset::Cpu {
            // A step of AdvT costs about 3 (FGSM) and 12 (PGD) clean steps: half the images and
            // half the epochs keep the four runs near half an hour on 2 cores.
            reproduce.train.train_limit = reproduce.train.train_limit.map(|n| n / 2);
            reproduce.train.epochs = 2;
            reproduce.train.lr_drops = vec![];
        }
        let adv = |attack| {
            let paper = AdvTrainConfig::paper(attack);
            if cifar_like(dataset) {
                paper
            } else {
                // ×5, the ratio of Table 2's MNIST and CIFAR-10 FGSM budgets (module docs).
                AdvTrainConfig {
                    eps_min: 5.0 * paper.eps_min,
                    eps_max: 5.0 * paper.eps_max,
                    ..paper
                }
            }
        };
        let methods = match table {
            Table::Table1 | Table::Table2 => vec![
                TableMethod::plain(0.0, 0.0),
                TableMethod::plain(2.0, 0.0),
                TableMethod::plain(2.0, 0.5),
            ],
            Table::Table3 | Table::Table5 => {
                vec![TableMethod::plain(0.0, 0.0), TableMethod::plain(2.0, 0.5)]
            }
            Table::Table4 => [AdvAttack::Fgsm, AdvAttack::Pgd]
                .into_iter()
                .flat_map(|a| {
                    [(0.0, 0.0), (2.0, 0.5)].map(|(alpha, beta)| TableMethod {
                        adv_train: Some(adv(a)),
                        ..TableMethod::plain(alpha, beta)
                    })
                })
                .collect(),
        };
        reproduce.methods = methods.iter().map(|m| (m.alpha, m.beta)).collect();
        reproduce.attacks = paper_rows(table, dataset, members)
            .into_iter()
            .filter_map(|r| match r.key {
                RowKey::Attack { spec } if preset == Preset::Paper || cheap(spec.kind) => {
                    Some(spec)
                }
                _ => None,
            })
            .collect();
        Ok(Self {
            table,
            reproduce,
            methods,
        })
    }

    /// The rows this configuration measures (the paper's rows whose attacks it runs).
    pub fn rows(&self) -> Vec<PaperRow> {
        paper_rows(
            self.table,
            self.reproduce.dataset,
            self.reproduce.train.members,
        )
        .into_iter()
        .filter(|r| match &r.key {
            RowKey::Attack { spec } => self.reproduce.attacks.contains(spec),
            _ => true,
        })
        .collect()
    }
}

/// Trains (or reuses) the methods of `config` into `out`, evaluates them and writes the table's
/// files; returns the results and the table in Markdown.
pub fn run_table(config: &TableConfig, out: &Path) -> Result<(TableResults, String)> {
    let rc = &config.reproduce;
    let device = rc.train.device.device()?;
    let test = load_or_fetch_test(rc)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let name = config.table.name();
    crate::io::write_toml(&out.join(format!("{name}.toml")), config)?;
    let clean_set = test.take(rc.clean_examples);
    let attack_set = test.take(rc.attack_examples);
    let mut runs = Vec::new();
    for method in &config.methods {
        let tc = method.train_config(rc);
        runs.push(evaluate_method(
            &tc,
            out,
            &clean_set,
            &attack_set,
            &rc.attacks,
            rc.eval_batch_size,
            &device,
        )?);
    }
    let results = TableResults::new(config, runs);
    crate::io::write_json(&out.join(format!("{name}.json")), &results)?;
    let md = results.write(config, out)?;
    Ok((results, md))
}

/// Rewrites `tableN.md` and `tableN.csv` of every table whose `tableN.json` `dir` holds, from
/// that JSON and `tableN.toml`; returns the names of the rebuilt tables.
pub fn rebuild(dir: &Path) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    for table in Table::ALL {
        let name = table.name();
        let json = dir.join(format!("{name}.json"));
        if !json.exists() {
            continue;
        }
        let config: TableConfig = crate::io::read_toml(&dir.join(format!("{name}.toml")))?;
        let saved: TableResults = crate::io::read_json(&json)?;
        TableResults::new(&config, saved.runs).write(&config, dir)?;
        done.push(name);
    }
    Ok(done)
}
