//! Per-batch quantities that training and evaluation both report: each member's cross-entropy
//! (the terms of L_ECE, Eq. 2) and the number of correct predictions.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::tensor::floats;

/// Mean cross-entropy of each member on a batch of logits `[B, K, L]`.
pub fn member_cross_entropy(logits: Tensor<3>, labels: Tensor<1, Int>) -> Vec<f64> {
    let [b, k, _] = logits.dims();
    let idx = labels.reshape([b, 1, 1]).expand([b, k, 1]);
    let ce = log_softmax(logits, 2).gather(2, idx).mean_dim(0).neg(); // [1, K, 1]
    floats(ce.reshape([k]))
}

/// Number of rows of `scores` `[B, L]` whose argmax equals the label.
pub fn count_correct(scores: Tensor<2>, labels: Tensor<1, Int>) -> usize {
    let pred = scores.argmax(1).flatten::<1>(0, 1);
    pred.equal(labels).int().sum().into_scalar::<i64>() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn member_cross_entropy_and_accuracy_by_hand() {
        let d = crate::device::cpu();
        // B = 2, K = 2, L = 2; member 0 is uniform, member 1 is confident in class 0.
        let z = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 5.0, 0.0, 0.0, 0.0, 5.0, 0.0], [2, 2, 2]),
            &d,
        );
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &d);
        let ce = member_cross_entropy(z.clone(), y.clone());
        assert!((ce[0] - 2f64.ln()).abs() < 1e-5);
        let expected = 0.5 * ((1.0 + (-5f64).exp()).ln() + (5.0 + (1.0 + (-5f64).exp()).ln()));
        assert!((ce[1] - expected).abs() < 1e-4, "{} vs {expected}", ce[1]);
        let probs = crate::model::EnsembleOutput { logits: z }.mean_probs();
        assert_eq!(count_correct(probs, y), 1);
    }
}
