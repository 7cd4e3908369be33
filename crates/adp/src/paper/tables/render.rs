//! A finished table: ours beside the paper's numbers, in Markdown and CSV.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::DatasetKind;
use crate::eval::EvalReport;
use crate::paper::reproduce::training_summary;

use super::{Table, TableConfig};

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
