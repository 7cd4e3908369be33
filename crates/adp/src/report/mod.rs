//! Human-readable output: Markdown tables laid out like the paper's Table 1 (clean error) and
//! Table 2 (accuracy under attack), and the figures of [`plots`].

pub mod plots;

use crate::eval::EvalReport;

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// Table 1 and Table 2 side by side for several runs (one column per run), in Markdown.
///
/// The attack rows are those of the first report; a run lacking one shows `–`.
pub fn comparison_markdown(reports: &[EvalReport]) -> String {
    let mut s = String::new();
    let header = |first: &str, second: &str| {
        let mut h = format!("| {first} | {second} |");
        let mut rule = String::from("|---|---|");
        for r in reports {
            h.push_str(&format!(" {} |", r.label));
            rule.push_str("---:|");
        }
        format!("{h}\n{rule}\n")
    };
    s.push_str("Clean test error (%), Table 1 layout\n\n");
    s.push_str(&header("Model", ""));
    let k = reports
        .iter()
        .map(|r| r.clean.member_error.len())
        .max()
        .unwrap_or(0);
    for j in 0..k {
        s.push_str(&format!("| Member {} | |", j + 1));
        for r in reports {
            let cell = r
                .clean
                .member_error
                .get(j)
                .map(|&e| pct(e))
                .unwrap_or("–".into());
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }
    s.push_str("| Ensemble | |");
    for r in reports {
        s.push_str(&format!(" {} |", pct(r.clean.ensemble_error)));
    }
    s.push_str("\n| mean log ED | |");
    for r in reports {
        s.push_str(&format!(" {:.2} |", r.clean.mean_log_det));
    }
    s.push_str("\n| zero input gradient (%) | |");
    for r in reports {
        s.push_str(&format!(" {} |", pct(r.clean.zero_gradient)));
    }
    s.push('\n');

    let Some(first) = reports.first() else {
        return s;
    };
    if first.robust.is_empty() {
        return s;
    }
    s.push_str("\nAccuracy (%) on adversarial examples, Table 2 layout\n\n");
    s.push_str(&header("Attack", "Para."));
    for row in &first.robust {
        let kind = if row.targeted { " (targeted)" } else { "" };
        s.push_str(&format!(
            "| {}{kind} | {} |",
            row.attack.to_uppercase(),
            row.parameter
        ));
        for r in reports {
            let cell = r
                .robust
                .iter()
                .find(|x| {
                    x.attack == row.attack
                        && x.parameter == row.parameter
                        && x.targeted == row.targeted
                })
                .map(|x| pct(x.accuracy))
                .unwrap_or("–".into());
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{CleanResult, RobustResult};

    fn report(label: &str, acc: f64) -> EvalReport {
        EvalReport {
            label: label.into(),
            clean: CleanResult {
                examples: 100,
                member_error: vec![0.01, 0.02],
                ensemble_error: 0.005,
                mean_log_det: -3.25,
                zero_gradient: 0.25,
            },
            robust: vec![
                RobustResult {
                    attack: "pgd".into(),
                    description: "PGD".into(),
                    eps: 0.1,
                    parameter: "ε = 0.1".into(),
                    targeted: false,
                    examples: 100,
                    accuracy: acc,
                    success_rate: 1.0 - acc,
                    seconds: 1.0,
                    std_error: 0.0,
                    repeats: Vec::new(),
                    stages: Vec::new(),
                },
                RobustResult {
                    attack: "cw".into(),
                    description: "CW-L2".into(),
                    eps: 0.0,
                    parameter: "c = 1".into(),
                    targeted: false,
                    examples: 100,
                    accuracy: acc / 2.0,
                    success_rate: 1.0 - acc / 2.0,
                    seconds: 1.0,
                    std_error: 0.0,
                    repeats: Vec::new(),
                    stages: Vec::new(),
                },
            ],
            indicators: Vec::new(),
        }
    }

    #[test]
    fn comparison_has_one_column_per_run_and_one_row_per_attack() {
        let md = comparison_markdown(&[report("ECE", 0.5), report("ADP_{2,0.5}", 0.8)]);
        assert!(md.contains("| Model |  | ECE | ADP_{2,0.5} |"), "{md}");
        assert!(md.contains("| Member 2 | | 2.0 | 2.0 |"), "{md}");
        assert!(md.contains("| Ensemble | | 0.5 | 0.5 |"), "{md}");
        assert!(md.contains("| PGD | ε = 0.1 | 50.0 | 80.0 |"), "{md}");
        assert!(md.contains("| CW | c = 1 | 25.0 | 40.0 |"), "{md}");
        assert!(md.contains("| mean log ED | | -3.25 | -3.25 |"), "{md}");
        assert!(
            md.contains("| zero input gradient (%) | | 25.0 | 25.0 |"),
            "{md}"
        );
    }
}
