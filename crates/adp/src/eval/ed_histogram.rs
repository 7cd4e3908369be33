//! Histogram of the per-example log ensemble diversity on the test set (App. B.3, Fig. 5): the
//! true label removed, as in training (Eq. 3), one histogram per training method, with medians.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::eval::diversity::{Removed, median, per_example_log_ed};
use crate::model::Ensemble;

/// log ED of every test example under one trained run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdHistogram {
    /// Run label.
    pub label: String,
    /// log ED (true label removed) of each example, in test-set order.
    pub log_ed: Vec<f64>,
    /// Its median (Fig. 5's inset table).
    pub median: f64,
}

/// Shared bins for several histograms: `edges` (`bins + 1` values) and one count per bin and
/// histogram. The range spans every value; a value on the last edge falls in the last bin.
#[derive(Debug, Clone, PartialEq)]
pub struct Bins {
    /// Bin edges, increasing.
    pub edges: Vec<f64>,
    /// `counts[h][b]`: examples of histogram h in bin b.
    pub counts: Vec<Vec<usize>>,
}

/// Measures log ED on `data` for one run.
pub fn ed_histogram(
    model: &Ensemble,
    label: &str,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> EdHistogram {
    let log_ed = per_example_log_ed(model, data, Removed::TrueLabel, batch_size, device);
    EdHistogram {
        label: label.into(),
        median: median(&log_ed),
        log_ed,
    }
}

impl EdHistogram {
    /// `bins` equal-width bins over the values of all `hists`.
    pub fn bins(hists: &[EdHistogram], bins: usize) -> Bins {
        let bins = bins.max(1);
        let all = || hists.iter().flat_map(|h| h.log_ed.iter().copied());
        let lo = all().fold(f64::INFINITY, f64::min);
        let hi = all().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else {
            let c = if lo.is_finite() { lo } else { 0.0 };
            (c - 0.5, c + 0.5)
        };
        let width = (hi - lo) / bins as f64;
        let edges = (0..=bins).map(|b| lo + width * b as f64).collect();
        let counts = hists
            .iter()
            .map(|h| {
                let mut c = vec![0usize; bins];
                for &v in &h.log_ed {
                    let b = (((v - lo) / width) as usize).min(bins - 1);
                    c[b] += 1;
                }
                c
            })
            .collect();
        Bins { edges, counts }
    }

    /// The binned counts as CSV: one row per bin, one count column per run.
    pub fn to_csv(hists: &[EdHistogram], bins: usize) -> String {
        let b = Self::bins(hists, bins);
        let mut s = String::from("bin_low,bin_high");
        for h in hists {
            s.push_str(&format!(",{}", h.label));
        }
        s.push('\n');
        for i in 0..bins.max(1) {
            s.push_str(&format!("{:.6},{:.6}", b.edges[i], b.edges[i + 1]));
            for c in &b.counts {
                s.push_str(&format!(",{}", c[i]));
            }
            s.push('\n');
        }
        s
    }

    /// The medians as a Markdown table (Fig. 5's inset).
    pub fn markdown(hists: &[EdHistogram]) -> String {
        let mut s = String::from(
            "log ensemble diversity on the test set, true label removed (App. B.3, Fig. 5)\n\n| Method | examples | median log ED | mean log ED |\n|---|---:|---:|---:|\n",
        );
        for h in hists {
            let mean = h.log_ed.iter().sum::<f64>() / h.log_ed.len().max(1) as f64;
            s.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} |\n",
                h.label,
                h.log_ed.len(),
                h.median,
                mean
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_share_one_range_and_count_every_value() {
        let h = |label: &str, v: Vec<f64>| EdHistogram {
            label: label.into(),
            median: median(&v),
            log_ed: v,
        };
        let hists = [h("a", vec![0.0, 1.0, 1.0, 4.0]), h("b", vec![2.0, 3.9])];
        let b = EdHistogram::bins(&hists, 4);
        assert_eq!(b.edges, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(b.counts, vec![vec![1, 2, 0, 1], vec![0, 0, 1, 1]]);
        let one_value = EdHistogram::bins(&[h("c", vec![-3.0, -3.0])], 2);
        assert_eq!(one_value.counts, vec![vec![0, 2]]);
    }
}
