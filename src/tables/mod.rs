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
//! Every method trains (or is reused) through [`train_or_reuse`], so tables sharing an output
//! directory share runs (`table1` and `table2` with the same `--out` train once, and reuse the
//! runs of `adp reproduce mnist`). As in `adp reproduce mnist`, the `tiny` and `cpu` presets leave
//! out JSMA, C&W and EAD (up to 1000 iterations per example); `paper` runs every row. Results go
//! to `OUT/tableN.json` with `tableN.md`, `tableN.csv` and the settings `tableN.toml`;
//! [`rebuild`] rewrites the Markdown and CSV from the JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, AttackSpec};
use crate::data::DatasetKind;
use crate::device::DeviceKind;
use crate::eval::EvalReport;
use crate::reproduce::{
    Preset, ReproduceConfig, evaluate_method, load_or_fetch_test, training_summary,
};
use crate::train::TrainConfig;
use crate::train::adversarial::{AdvAttack, AdvTrainConfig};

/// The table experiments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
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

/// An attack row of the paper: the attack, its main parameter on CIFAR and on MNIST, and the
/// paper's accuracies for the data set it was published on.
struct Published {
    kind: AttackKind,
    cifar: f64,
    mnist: f64,
    paper: &'static [f64],
}

const fn row(kind: AttackKind, cifar: f64, mnist: f64, paper: &'static [f64]) -> Published {
    Published {
        kind,
        cifar,
        mnist,
        paper,
    }
}

use AttackKind::{Bim, Cw, Ead, Fgsm, Jsma, Mim, Pgd};

/// Table 1, clean error (%) of Net 1-3 and the ensemble for Baseline / ADP_{2,0} / ADP_{2,0.5}
/// (NaN: the paper's `-`).
const TABLE1_MNIST: [[f64; 3]; 4] = [
    [0.44, 0.43, 0.36],
    [0.39, 0.45, 0.47],
    [0.43, 0.37, 0.47],
    [0.32, 0.32, 0.28],
];
const TABLE1_CIFAR10: [[f64; 3]; 4] = [
    [8.30, 9.01, 9.34],
    [8.52, 9.15, 9.34],
    [8.67, 9.14, 9.92],
    [6.78, 6.74, 6.56],
];
const TABLE1_CIFAR100: [[f64; 3]; 4] = [
    [35.25, f64::NAN, 39.04],
    [35.91, f64::NAN, 40.86],
    [36.03, f64::NAN, 39.00],
    [30.35, f64::NAN, 29.80],
];

/// Table 2, MNIST columns: accuracy (%) of Baseline / ADP_{2,0} / ADP_{2,0.5}.
const TABLE2_MNIST: [Published; 15] = [
    row(Fgsm, 0.02, 0.1, &[78.3, 95.5, 96.3]),
    row(Fgsm, 0.04, 0.2, &[21.5, 50.6, 52.8]),
    row(Bim, 0.01, 0.1, &[52.3, 86.4, 88.5]),
    row(Bim, 0.02, 0.15, &[12.2, 69.5, 73.6]),
    row(Pgd, 0.01, 0.1, &[50.7, 73.4, 82.8]),
    row(Pgd, 0.02, 0.15, &[6.3, 36.2, 41.0]),
    row(Mim, 0.01, 0.1, &[58.3, 89.7, 92.0]),
    row(Mim, 0.02, 0.15, &[16.1, 73.3, 77.5]),
    row(Jsma, 0.05, 0.3, &[84.0, 88.0, 95.0]),
    row(Jsma, 0.1, 0.6, &[74.0, 85.0, 91.0]),
    row(Cw, 0.001, 0.1, &[91.6, 95.9, 97.3]),
    row(Cw, 0.01, 1.0, &[30.6, 75.0, 78.1]),
    row(Cw, 0.1, 10.0, &[5.9, 20.2, 23.8]),
    row(Ead, 1.0, 5.0, &[29.8, 91.3, 93.4]),
    row(Ead, 5.0, 10.0, &[7.3, 87.4, 89.5]),
];

/// Table 2, CIFAR-10 columns (same rows as [`TABLE2_MNIST`]).
const TABLE2_CIFAR10: [[f64; 3]; 15] = [
    [36.5, 57.4, 61.7],
    [19.4, 41.9, 46.2],
    [18.5, 44.0, 46.6],
    [6.1, 28.2, 31.0],
    [23.4, 43.2, 48.4],
    [6.6, 26.8, 30.4],
    [23.8, 49.6, 52.1],
    [7.4, 32.3, 35.9],
    [29.5, 33.0, 43.5],
    [27.5, 32.0, 37.0],
    [71.3, 76.3, 80.6],
    [45.2, 50.3, 54.9],
    [18.8, 19.2, 25.6],
    [17.5, 64.5, 67.3],
    [2.4, 23.4, 29.6],
];

/// Table 3, CIFAR-100: Baseline / ADP_{2,0.5} (the MNIST values are unused: CIFAR-100 only).
const TABLE3: [Published; 6] = [
    row(Bim, 0.005, 0.005, &[21.6, 26.1]),
    row(Bim, 0.01, 0.01, &[10.1, 14.8]),
    row(Pgd, 0.005, 0.005, &[26.6, 32.1]),
    row(Pgd, 0.01, 0.01, &[11.7, 18.3]),
    row(Mim, 0.005, 0.005, &[24.2, 29.4]),
    row(Mim, 0.01, 0.01, &[11.2, 17.1]),
];

/// Table 4, CIFAR-10: AdvT_FGSM / AdvT_FGSM + ADP_{2,0.5} / AdvT_PGD / AdvT_PGD + ADP_{2,0.5}.
const TABLE4: [Published; 4] = [
    row(Fgsm, 0.04, 0.2, &[39.3, 56.1, 43.2, 52.8]),
    row(Bim, 0.02, 0.15, &[19.9, 25.7, 27.8, 34.0]),
    row(Pgd, 0.02, 0.15, &[24.2, 26.7, 32.8, 36.2]),
    row(Mim, 0.02, 0.15, &[24.5, 30.6, 32.7, 38.8]),
];

/// Table 5, CIFAR-10, K = 5: "Normal" accuracy (%) of Baseline / ADP_{2,0.5}.
const TABLE5_NORMAL: [f64; 2] = [93.6, 93.8];

/// Table 5's attack rows.
const TABLE5: [Published; 6] = [
    row(Fgsm, 0.02, 0.1, &[42.0, 58.4]),
    row(Bim, 0.01, 0.1, &[31.6, 41.8]),
    row(Pgd, 0.01, 0.1, &[37.4, 44.2]),
    row(Mim, 0.01, 0.1, &[37.1, 47.5]),
    row(Cw, 0.01, 1.0, &[52.3, 56.5]),
    row(Ead, 1.0, 5.0, &[20.4, 65.3]),
];

/// JSMA's per-pixel change θ: 0.2 on MNIST (the default), 0.1 on CIFAR-10 (Table 2's caption).
const JSMA_THETA_CIFAR: f64 = 0.1;

fn some(v: &[f64]) -> Vec<Option<f64>> {
    v.iter().map(|&x| (!x.is_nan()).then_some(x)).collect()
}

/// The attack rows of `rows` for `dataset`; `published` says whether the paper's numbers
/// (`paper_for(i)`) belong to this data set.
fn attack_rows(
    rows: &[Published],
    dataset: DatasetKind,
    published: bool,
    paper_for: impl Fn(usize) -> Vec<f64>,
) -> Vec<PaperRow> {
    let cifar = cifar_like(dataset);
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut spec = AttackSpec::main(r.kind, if cifar { r.cifar } else { r.mnist });
            if cifar && r.kind == Jsma {
                spec.theta = Some(JSMA_THETA_CIFAR);
            }
            let paper = paper_for(i);
            PaperRow {
                key: RowKey::Attack { spec },
                paper: if published {
                    some(&paper)
                } else {
                    vec![None; paper.len()]
                },
            }
        })
        .collect()
}

/// The rows of `table` on `dataset` with `members` members, and the paper's numbers where it
/// published them for this data set.
pub fn paper_rows(table: Table, dataset: DatasetKind, members: usize) -> Vec<PaperRow> {
    match table {
        Table::Table1 => {
            let published = match dataset {
                DatasetKind::Mnist => Some(TABLE1_MNIST),
                DatasetKind::Cifar10 => Some(TABLE1_CIFAR10),
                DatasetKind::Cifar100 => Some(TABLE1_CIFAR100),
                _ => None,
            };
            let value = |r: usize| {
                published
                    .filter(|_| members == 3)
                    .map_or(vec![None; 3], |t| some(&t[r]))
            };
            let mut rows: Vec<PaperRow> = (0..members)
                .map(|m| PaperRow {
                    key: RowKey::MemberError { member: m },
                    paper: if m < 3 { value(m) } else { vec![None; 3] },
                })
                .collect();
            rows.push(PaperRow {
                key: RowKey::EnsembleError,
                paper: value(3),
            });
            rows
        }
        Table::Table2 => match dataset {
            DatasetKind::Cifar10 => {
                attack_rows(&TABLE2_MNIST, dataset, true, |i| TABLE2_CIFAR10[i].to_vec())
            }
            _ => attack_rows(&TABLE2_MNIST, dataset, dataset == DatasetKind::Mnist, |i| {
                TABLE2_MNIST[i].paper.to_vec()
            }),
        },
        Table::Table3 => attack_rows(&TABLE3, dataset, dataset == DatasetKind::Cifar100, |i| {
            TABLE3[i].paper.to_vec()
        }),
        Table::Table4 => attack_rows(&TABLE4, dataset, dataset == DatasetKind::Cifar10, |i| {
            TABLE4[i].paper.to_vec()
        }),
        Table::Table5 => {
            let published = dataset == DatasetKind::Cifar10 && members == 5;
            let mut rows = vec![PaperRow {
                key: RowKey::CleanAccuracy,
                paper: if published {
                    some(&TABLE5_NORMAL)
                } else {
                    vec![None; 2]
                },
            }];
            rows.extend(attack_rows(&TABLE5, dataset, published, |i| {
                TABLE5[i].paper.to_vec()
            }));
            rows
        }
    }
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
            "table3 is the paper's CIFAR-100 table; run it with --dataset cifar100 (after `adp data fetch cifar100`)"
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

/// One row of a finished table: ours and the paper's number per method, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRow {
    /// Row name, e.g. `Net 1`, `Ensemble`, `Normal`, `PGD`.
    pub name: String,
    /// The "Para." cell, e.g. `ε = 0.1`.
    pub parameter: String,
    /// Our value per method.
    pub ours: Vec<Option<f64>>,
    /// The paper's value per method.
    pub paper: Vec<Option<f64>>,
}

/// The results of one table experiment; saved as `OUT/tableN.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableResults {
    /// Which table.
    pub table: Table,
    /// The data set.
    pub dataset: DatasetKind,
    /// Method labels, one per column.
    pub methods: Vec<String>,
    /// The table, ours beside the paper's (derived from `runs`).
    pub rows: Vec<TableRow>,
    /// Every number measured on each method (clean error, log ED, accuracy per attack).
    pub runs: Vec<EvalReport>,
}

impl TableResults {
    /// Lays out `runs` (one per method of `config`, in order) as the table.
    pub fn new(config: &TableConfig, runs: Vec<EvalReport>) -> Self {
        let rows = config
            .rows()
            .into_iter()
            .map(|r| {
                let (name, parameter) = r.key.cells();
                TableRow {
                    name,
                    parameter,
                    ours: runs.iter().map(|run| r.key.measure(run)).collect(),
                    paper: r.paper,
                }
            })
            .collect();
        Self {
            table: config.table,
            dataset: config.reproduce.dataset,
            methods: runs.iter().map(|r| r.label.clone()).collect(),
            rows,
            runs,
        }
    }

    /// The table in Markdown, each cell `ours (paper)`.
    pub fn markdown(&self, config: &TableConfig) -> String {
        let rc = &config.reproduce;
        let what = match self.table {
            Table::Table1 => "Clean test error (%)",
            Table::Table5 => "Clean accuracy and accuracy on adversarial examples (%)",
            _ => "Accuracy (%) on adversarial examples",
        };
        let attacked = self
            .runs
            .first()
            .and_then(|r| r.robust.first())
            .map(|r| format!(", attacks on the first {} test images", r.examples))
            .unwrap_or_default();
        let clean = self.runs.first().map_or(0, |r| r.clean.examples);
        let mut s = format!(
            "# {} on {} ({:?} preset)\n\n{}; clean error on the first {clean} test images{attacked}.\n\n{what}; each cell is ours (the paper's {}, `–` where it has none).\n\n| | Para. |",
            self.table.title(),
            self.dataset.name(),
            rc.preset,
            training_summary(&rc.train),
            self.table.title(),
        );
        let mut rule = String::from("\n|---|---|");
        for m in &self.methods {
            s.push_str(&format!(" {m} |"));
            rule.push_str("---:|");
        }
        s.push_str(&rule);
        s.push('\n');
        let cell = |v: Option<f64>, digits: usize| {
            v.map_or("–".to_string(), |x| format!("{x:.digits$}"))
        };
        let digits = if self.table == Table::Table1 { 2 } else { 1 };
        for r in &self.rows {
            s.push_str(&format!("| {} | {} |", r.name, r.parameter));
            for (o, p) in r.ours.iter().zip(&r.paper) {
                s.push_str(&format!(" {} ({}) |", cell(*o, digits), cell(*p, digits)));
            }
            s.push('\n');
        }
        if let Some(adv) = config.methods.iter().find_map(|m| m.adv_train.as_ref()) {
            s.push_str(&format!(
                "\nAdversarial training: every mini-batch of {} mixed 1:1 with as many adversarial examples, ε ~ U[{}, {}] per mini-batch.\n",
                rc.train.batch_size, adv.eps_min, adv.eps_max
            ));
        }
        s
    }

    /// One CSV line per (row, method): `table,dataset,row,parameter,method,ours,paper`.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("table,dataset,row,parameter,method,ours,paper\n");
        let num = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.4}"));
        for r in &self.rows {
            for (j, m) in self.methods.iter().enumerate() {
                s.push_str(&format!(
                    "{},{},{},{},{},{},{}\n",
                    self.table.name(),
                    self.dataset.name(),
                    r.name,
                    r.parameter,
                    m,
                    num(r.ours.get(j).copied().flatten()),
                    num(r.paper.get(j).copied().flatten())
                ));
            }
        }
        s
    }

    /// Writes `tableN.md` and `tableN.csv` into `out`; returns the Markdown.
    pub fn write(&self, config: &TableConfig, out: &Path) -> Result<String> {
        let md = self.markdown(config);
        let name = self.table.name();
        crate::io::atomic_write(&out.join(format!("{name}.md")), md.as_bytes())?;
        crate::io::atomic_write(&out.join(format!("{name}.csv")), self.to_csv().as_bytes())?;
        Ok(md)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(table: Table, preset: Preset, dataset: DatasetKind) -> TableConfig {
        TableConfig::preset(table, preset, dataset, "data".into(), DeviceKind::Cpu).unwrap()
    }

    #[test]
    fn every_paper_row_has_one_number_per_method() {
        for table in Table::ALL {
            for dataset in [
                DatasetKind::Mnist,
                DatasetKind::Cifar10,
                DatasetKind::Cifar100,
            ] {
                if table == Table::Table3 && dataset != DatasetKind::Cifar100 {
                    continue;
                }
                let c = config(table, Preset::Paper, dataset);
                let rows = c.rows();
                assert!(!rows.is_empty());
                for r in &rows {
                    assert_eq!(r.paper.len(), c.methods.len(), "{table:?} {dataset:?}");
                }
                assert_eq!(
                    rows.len(),
                    paper_rows(table, dataset, c.reproduce.train.members).len()
                );
            }
        }
    }

    #[test]
    fn paper_numbers_appear_only_for_the_data_set_they_were_published_on() {
        let t2 = paper_rows(Table::Table2, DatasetKind::Cifar10, 3);
        assert_eq!(t2[0].paper, vec![Some(36.5), Some(57.4), Some(61.7)]);
        assert_eq!(t2[0].key.cells(), ("FGSM".into(), "ε = 0.02".into()));
        let t2 = paper_rows(Table::Table2, DatasetKind::Mnist, 3);
        assert_eq!(t2[5].key.cells(), ("PGD".into(), "ε = 0.15".into()));
        assert_eq!(t2[5].paper, vec![Some(6.3), Some(36.2), Some(41.0)]);
        let fashion = paper_rows(Table::Table2, DatasetKind::FashionMnist, 3);
        assert!(fashion.iter().all(|r| r.paper.iter().all(Option::is_none)));
        let t1 = paper_rows(Table::Table1, DatasetKind::Cifar100, 3);
        assert_eq!(t1[3].paper, vec![Some(30.35), None, Some(29.80)]);
        let t4 = paper_rows(Table::Table4, DatasetKind::Mnist, 3);
        assert_eq!(t4[0].key.cells(), ("FGSM".into(), "ε = 0.2".into()));
        assert!(t4.iter().all(|r| r.paper.iter().all(Option::is_none)));
        let t5 = paper_rows(Table::Table5, DatasetKind::Cifar10, 5);
        assert_eq!(t5[0].key, RowKey::CleanAccuracy);
        assert_eq!(t5[6].key.cells(), ("EAD".into(), "c = 1".into()));
        assert_eq!(t5[6].paper, vec![Some(20.4), Some(65.3)]);
    }

    #[test]
    fn presets_pick_the_papers_methods_members_and_budgets() {
        let t4 = config(Table::Table4, Preset::Cpu, DatasetKind::Cifar10);
        let labels: Vec<String> = t4
            .methods
            .iter()
            .map(|m| m.train_config(&t4.reproduce).label())
            .collect();
        assert_eq!(
            labels,
            [
                "AdvT_FGSM",
                "AdvT_FGSM + ADP_{2,0.5}",
                "AdvT_PGD",
                "AdvT_PGD + ADP_{2,0.5}"
            ]
        );
        let adv = t4.methods[0].adv_train.as_ref().unwrap();
        assert_eq!((adv.eps_min, adv.eps_max), (0.01, 0.05));
        let t4m = config(Table::Table4, Preset::Cpu, DatasetKind::Mnist);
        let adv = t4m.methods[3].adv_train.as_ref().unwrap();
        assert!((adv.eps_min - 0.05).abs() < 1e-12 && (adv.eps_max - 0.25).abs() < 1e-12);
        let t2m = config(Table::Table2, Preset::Cpu, DatasetKind::Mnist);
        assert_eq!(t4m.reproduce.train.epochs, 2);
        assert_eq!(
            t4m.reproduce.train.train_limit.map(|n| 2 * n),
            t2m.reproduce.train.train_limit
        );
        let t5 = config(Table::Table5, Preset::Cpu, DatasetKind::Cifar10);
        assert_eq!(t5.reproduce.train.members, 5);
        assert_eq!(t5.reproduce.train.epochs, t2m.reproduce.train.epochs);
        // The cpu preset leaves out C&W and EAD, the paper preset keeps them.
        assert_eq!(t5.reproduce.attacks.len(), 4);
        let t5p = config(Table::Table5, Preset::Paper, DatasetKind::Cifar10);
        assert_eq!(t5p.reproduce.attacks.len(), 6);
        assert_eq!(t5p.reproduce.train.epochs, 180);
        // Table 2's CIFAR-10 JSMA uses θ = 0.1.
        let t2 = config(Table::Table2, Preset::Paper, DatasetKind::Cifar10);
        let jsma: Vec<&AttackSpec> = t2
            .reproduce
            .attacks
            .iter()
            .filter(|a| a.kind == Jsma)
            .collect();
        assert!(jsma.iter().all(|a| a.theta == Some(0.1)), "{jsma:?}");
        let msg = TableConfig::preset(
            Table::Table3,
            Preset::Cpu,
            DatasetKind::Mnist,
            "data".into(),
            DeviceKind::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("--dataset cifar100"), "{msg}");
    }

    #[test]
    fn table1_and_table2_cpu_runs_are_those_of_reproduce_mnist() {
        let rc = ReproduceConfig::preset(
            Preset::Cpu,
            DatasetKind::Mnist,
            "data".into(),
            DeviceKind::Cpu,
        );
        for table in [Table::Table1, Table::Table2] {
            let c = config(table, Preset::Cpu, DatasetKind::Mnist);
            assert_eq!(c.methods.len(), rc.methods.len());
            for (m, &(alpha, beta)) in c.methods.iter().zip(&rc.methods) {
                assert_eq!(m.train_config(&c.reproduce), rc.train_config(alpha, beta));
            }
        }
        let t2 = config(Table::Table2, Preset::Cpu, DatasetKind::Mnist);
        assert_eq!(t2.reproduce.attacks, rc.attacks);
    }
}
