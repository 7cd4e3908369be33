//! Per-example log ensemble diversity, log ED = log det(M̃ᵀM̃ + ridge·I) (Eq. 3-4), of a trained
//! ensemble: the quantity behind Table 1's mean log ED, the histograms of App. B.3 (Fig. 5) and
//! the detection score of Section 4.5 (Fig. 4).
//!
//! M̃ holds each member's L2-normalised prediction with one class removed. Training removes the
//! true label y; at test time the true label is unknown, so detection removes the class the
//! ensemble predicts instead ([`Removed`]).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Batcher, Dataset};
use crate::loss::log_ensemble_diversity;
use crate::model::{Ensemble, EnsembleOutput};
use crate::tensor::floats;

/// Ridge added to the Gram matrix when measuring (not training) log ED; it bounds log ED below
/// by K·log(1e-6) for fully collapsed members.
pub const EVAL_RIDGE: f64 = 1e-6;

/// Which class is removed from every member's prediction before measuring the diversity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Removed {
    /// The true label y, as in the ADP regulariser (Eq. 3) and App. B.3.
    TrueLabel,
    /// The ensemble's predicted class argmax_l F_l (Eq. 1): what a detector can use, since it
    /// never sees the true label (Section 4.5).
    Predicted,
}

/// log ED of each example of one batch of outputs, `[batch]`; `labels` are the true labels,
/// used only with [`Removed::TrueLabel`].
pub fn batch_log_ed(out: &EnsembleOutput, labels: Tensor<1, Int>, removed: Removed) -> Tensor<1> {
    let removed_class = match removed {
        Removed::TrueLabel => labels,
        Removed::Predicted => out.mean_probs().argmax(1).flatten::<1>(0, 1),
    };
    log_ensemble_diversity(out.member_probs(1.0), removed_class, EVAL_RIDGE)
}

/// log ED of every example of `data`, in order, computed in batches.
pub fn per_example_log_ed(
    model: &Ensemble,
    data: &Dataset,
    removed: Removed,
    batch_size: usize,
    device: &Device,
) -> Vec<f64> {
    Batcher::sequential(data, batch_size)
        .iter(device)
        .flat_map(|b| floats(batch_log_ed(&model.forward(b.images), b.labels, removed)))
        .collect()
}

/// The median of `values` (mean of the two middle values for an even count; NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn median_of_odd_even_and_unsorted_lists() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn predicted_removal_drops_the_ensembles_argmax_not_the_label() {
        let d = crate::device::cpu();
        // B = 1, K = 2, L = 3. Both members put most mass on class 0; their non-class-0 parts
        // are orthogonal ((1, 0) and (0, 1)) while their non-class-2 parts are nearly parallel.
        let z = Tensor::<3>::from_data(
            TensorData::new(vec![8.0f32, 4.0, -9.0, 8.0, -9.0, 4.0], [1, 2, 3]),
            &d,
        );
        let out = EnsembleOutput { logits: z };
        let label = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64], [1]), &d);
        let predicted = floats::<f64, _>(batch_log_ed(&out, label.clone(), Removed::Predicted))[0];
        let true_label = floats::<f64, _>(batch_log_ed(&out, label, Removed::TrueLabel))[0];
        // Orthogonal unit columns: det = (1 + ridge)² ≈ 1, log ED ≈ 0.
        assert!(predicted.abs() < 1e-3, "{predicted}");
        assert!(true_label < -3.0, "{true_label}");
    }
}
