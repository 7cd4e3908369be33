//! The grid's report: the cells over seeds with their standard errors, and the Markdown, CSV,
//! JSON and figure files written from them.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{FidelityConfig, FidelityResult, method_config};
use crate::attack::{AttackKind, Objective};
use crate::eval::EvalReport;
use crate::report::plots::GridBars;

/// Writes the grid's report files from `results`; `adp report` can redraw them.
pub fn write_outputs(
    config: &FidelityConfig,
    results: &[FidelityResult],
    out: &Path,
) -> Result<String> {
    crate::io::write_json(&out.join("fidelity.json"), &results)?;
    let md = markdown(config, results);
    crate::io::atomic_write(&out.join("fidelity.md"), md.as_bytes())?;
    crate::io::atomic_write(&out.join("fidelity.csv"), csv(results).as_bytes())?;
    let lines: Vec<GridBars> = summarise(config, results)
        .into_iter()
        .map(|l| GridBars {
            bars: l.cells.iter().skip(2).map(|c| (c.mean, c.se)).collect(),
            row: l.row,
            label: l.label,
        })
        .collect();
    let figure = crate::report::plots::FidelityFigure {
        lines: &lines,
        titles: &attack_titles(config),
    };
    crate::report::plots::save(&figure, &out.join("fidelity"))?;
    Ok(md)
}

/// Binomial standard error of an accuracy `p` measured on `n` examples.
pub fn standard_error(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

/// Mean and range over seeds of one measured fraction, with the binomial standard error of one
/// run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Mean over the seeds.
    pub mean: f64,
    /// Smallest and largest seed's value.
    pub range: (f64, f64),
    /// Binomial standard error of one run at the mean.
    pub se: f64,
    /// Number of seeds.
    pub seeds: usize,
}

impl Cell {
    fn of(values: &[f64], n: usize) -> Self {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            mean,
            range: (lo, hi),
            se: standard_error(mean, n),
            seeds: values.len(),
        }
    }

    /// `86.6 ± 1.1` in percent, with the seeds' range when there are several.
    fn percent(&self) -> String {
        let base = format!("{:.1} ± {:.1}", 100.0 * self.mean, 100.0 * self.se);
        if self.seeds > 1 {
            format!(
                "{base} ({:.1}–{:.1})",
                100.0 * self.range.0,
                100.0 * self.range.1
            )
        } else {
            base
        }
    }
}

/// One (row, method) line of the grid: its cells over the seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Row name.
    pub row: String,
    /// Method label.
    pub label: String,
    /// Mean member error, ensemble error, then one cell per attack.
    pub cells: Vec<Cell>,
}

/// Groups `results` by row and method, in the grid's order.
pub fn summarise(config: &FidelityConfig, results: &[FidelityResult]) -> Vec<Summary> {
    let mut lines = Vec::new();
    for row in &config.rows {
        for &(alpha, beta) in &config.methods {
            let label = method_config(&row.train, row.seeds[0], alpha, beta).label();
            let runs: Vec<&EvalReport> = results
                .iter()
                .filter(|r| r.row == row.name && r.report.label == label)
                .map(|r| &r.report)
                .collect();
            let Some(first) = runs.first() else { continue };
            let clean_n = first.clean.examples;
            let column = |f: &dyn Fn(&EvalReport) -> f64, n| {
                Cell::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>(), n)
            };
            let member = |r: &EvalReport| {
                r.clean.member_error.iter().sum::<f64>() / r.clean.member_error.len() as f64
            };
            let mut cells = vec![
                column(&member, clean_n),
                column(&|r| r.clean.ensemble_error, clean_n),
            ];
            for (i, a) in first.robust.iter().enumerate() {
                cells.push(column(&|r| r.robust[i].accuracy, a.examples));
            }
            lines.push(Summary {
                row: row.name.clone(),
                label,
                cells,
            });
        }
    }
    lines
}

/// Column titles of the attack cells.
fn attack_titles(config: &FidelityConfig) -> Vec<String> {
    config
        .attacks
        .iter()
        .map(|a| match (a.kind, a.objective) {
            (AttackKind::Pgd, Some(Objective::Official)) => {
                format!("PGD ε={} official", a.eps)
            }
            (AttackKind::Pgd, _) => format!("PGD ε={} ours", a.eps),
            (k, _) => format!("{} ε={}", k.name().to_uppercase(), a.eps),
        })
        .collect()
}

/// The grid as a Markdown table, with each row's change spelled out below it.
pub fn markdown(config: &FidelityConfig, results: &[FidelityResult]) -> String {
    let attacked = config.base.attack_examples.min(
        results
            .first()
            .and_then(|r| r.report.robust.first())
            .map_or(usize::MAX, |r| r.examples),
    );
    let mut s = format!(
        "# Fidelity grid ({:?} preset)\n\nDefault row: {}. Errors on {} test images, accuracies under attack on the first {attacked}; \
         each cell is the mean over seeds ± the binomial standard error of one run, with the seeds' range when there are several.\n\n",
        config.base.preset,
        crate::paper::reproduce::training_summary(&config.rows[0].train),
        config.base.clean_examples,
    );
    let titles = attack_titles(config);
    s.push_str("| row | method | seeds | member error % | ensemble error % |");
    for t in &titles {
        s.push_str(&format!(" {t} |"));
    }
    s.push_str("\n|---|---|---:|---:|---:|");
    s.push_str(&"---:|".repeat(titles.len()));
    s.push('\n');
    for line in summarise(config, results) {
        s.push_str(&format!(
            "| {} | {} | {} |",
            line.row, line.label, line.cells[0].seeds
        ));
        for c in &line.cells {
            s.push_str(&format!(" {} |", c.percent()));
        }
        s.push('\n');
    }
    s.push_str("\nRows:\n\n");
    for row in &config.rows {
        s.push_str(&format!("- `{}`: {}.\n", row.name, row.change));
    }
    s
}

/// One CSV line per run and number.
fn csv(results: &[FidelityResult]) -> String {
    let mut s =
        String::from("row,seed,label,metric,attack,eps,targeted,examples,value,parameter\n");
    for r in results {
        for line in r.report.to_csv().lines().skip(1) {
            s.push_str(&format!("{},{},{line}\n", r.row, r.seed));
        }
    }
    s
}
