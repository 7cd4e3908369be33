//! Receiver operating characteristic of a detection score and the area under it (Fig. 4).
//!
//! Positives (adversarial examples) are expected to score higher than negatives (clean ones). A
//! threshold is placed between every pair of distinct scores; examples whose scores tie move
//! together, so a tie contributes a diagonal segment and the area counts it as half a correctly
//! ordered pair: the AUC equals the Mann–Whitney statistic P(s⁺ > s⁻) + ½·P(s⁺ = s⁻).

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// An ROC curve from (0, 0) to (1, 1) and its area.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roc {
    /// False-positive rate at each threshold, non-decreasing.
    pub fpr: Vec<f64>,
    /// True-positive rate at each threshold, non-decreasing.
    pub tpr: Vec<f64>,
    /// Area under the curve (trapezoidal, exact for a step curve with tied groups).
    pub auc: f64,
}

/// The ROC curve of `positives` against `negatives` with "score above the threshold" meaning
/// "detected". Both lists must be non-empty and finite.
pub fn roc(negatives: &[f64], positives: &[f64]) -> Result<Roc> {
    ensure!(
        !negatives.is_empty() && !positives.is_empty(),
        "an ROC curve needs at least one negative and one positive example"
    );
    ensure!(
        negatives.iter().chain(positives).all(|s| s.is_finite()),
        "detection scores must be finite"
    );
    let mut scored: Vec<(f64, bool)> = negatives
        .iter()
        .map(|&s| (s, false))
        .chain(positives.iter().map(|&s| (s, true)))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (n, p) = (negatives.len() as f64, positives.len() as f64);
    let (mut fp, mut tp) = (0usize, 0usize);
    let mut curve = Roc {
        fpr: vec![0.0],
        tpr: vec![0.0],
        auc: 0.0,
    };
    for (i, &(score, positive)) in scored.iter().enumerate() {
        if positive {
            tp += 1;
        } else {
            fp += 1;
        }
        // Close a threshold only after the last example of a group of equal scores.
        if scored.get(i + 1).is_none_or(|next| next.0 != score) {
            let (x, y) = (fp as f64 / n, tp as f64 / p);
            let (x0, y0) = (
                curve.fpr[curve.fpr.len() - 1],
                curve.tpr[curve.tpr.len() - 1],
            );
            curve.auc += (x - x0) * (y + y0) / 2.0;
            curve.fpr.push(x);
            curve.tpr.push(y);
        }
    }
    Ok(curve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auc(neg: &[f64], pos: &[f64]) -> f64 {
        roc(neg, pos).unwrap().auc
    }

    #[test]
    fn perfect_separation_gives_one_and_reversed_gives_zero() {
        assert_eq!(auc(&[0.1, 0.2, 0.3], &[0.5, 0.9]), 1.0);
        assert_eq!(auc(&[0.5, 0.9], &[0.1, 0.2, 0.3]), 0.0);
    }

    #[test]
    fn all_tied_gives_one_half_on_the_diagonal() {
        let r = roc(&[1.0, 1.0, 1.0], &[1.0, 1.0]).unwrap();
        assert_eq!(r.auc, 0.5);
        assert_eq!(r.fpr, vec![0.0, 1.0]);
        assert_eq!(r.tpr, vec![0.0, 1.0]);
    }

    #[test]
    fn hand_computed_cases_with_and_without_ties() {
        // scikit-learn's roc_auc_score example: y = [0, 0, 1, 1], s = [0.1, 0.4, 0.35, 0.8].
        let r = roc(&[0.1, 0.4], &[0.35, 0.8]).unwrap();
        assert_eq!(r.auc, 0.75);
        assert_eq!(r.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(r.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        // Pairs (pos, neg): (0.5, 0.5) ties = ½, the other three are ordered: 3.5 / 4.
        let r = roc(&[0.5, 0.2], &[0.5, 0.9]).unwrap();
        assert_eq!(r.auc, 0.875);
        assert_eq!(r.fpr, vec![0.0, 0.0, 0.5, 1.0]);
        assert_eq!(r.tpr, vec![0.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn empty_or_non_finite_scores_are_errors() {
        assert!(roc(&[], &[1.0]).is_err());
        assert!(roc(&[1.0], &[]).is_err());
        assert!(roc(&[f64::NAN], &[1.0]).is_err());
    }
}
