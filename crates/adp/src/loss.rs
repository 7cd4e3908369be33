//! The training objectives of the paper, on `[batch, K, L]` tensors of member outputs.
//!
//! - [`ensemble_cross_entropy`]: L_ECE = Σ_k −log F^k_y (Eq. 2);
//! - [`ensemble_entropy`]: H(F) of the mean prediction F = (1/K) Σ_k F^k (Eq. 1, 5);
//! - [`log_ensemble_diversity`]: log ED = log det(M̃ᵀ M̃ + ridge·I), where the columns of M̃ are
//!   the members' predictions without the true label, L2-normalised (Eq. 3-4);
//! - [`adp_loss`]: L_ECE − α·H(F) − β·log ED (Eq. 5, Algorithm 1), averaged over the batch;
//! - [`jensen_shannon_diversity`]: JSD(F) = H(F) − (1/K) Σ_k H(F^k) (App. B.1, Eq. 9), the
//!   alternative diversity that [`Diversity::Jsd`] puts in place of log ED for the ablation.
//!
//! The constants default to the official code's: 1e-20 inside the entropy's log and a 1e-6
//! ridge on the Gram matrix. With a temperature T ≠ 1 (App. B.2) every prediction in the
//! training objective is softmax(z / T).

use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

/// Hyper-parameters of the ADP regulariser ADP_{α,β} (Eq. 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdpConfig {
    /// Weight α of the ensemble entropy.
    pub alpha: f64,
    /// Weight β of the log ensemble diversity.
    pub beta: f64,
    /// Training temperature T (App. B.2); 1 = plain softmax.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Offset inside the entropy's logarithm (official code: 1e-20).
    #[serde(default = "log_offset")]
    pub log_offset: f64,
    /// Ridge added to the Gram matrix before the log-determinant (official code: 1e-6).
    #[serde(default = "det_offset")]
    pub det_offset: f64,
    /// The diversity term β multiplies: log ED (Eq. 3-5, the paper's method) or the
    /// Jensen-Shannon divergence of the members (App. B.1, the ablation).
    #[serde(default)]
    pub diversity: Diversity,
}

/// Which ensemble diversity the regulariser promotes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Diversity {
    /// log ED = log det(M̃ᵀM̃ + ridge·I) of the non-true-label predictions (Eq. 3-4).
    #[default]
    LogDet,
    /// JSD(F) = H(F) − (1/K) Σ_k H(F^k) over the full predictions (App. B.1, Eq. 9). The
    /// paper shows (Theorem* 1) that L_ECE − λ·JSD has no minimiser in (0, 1)^{L×K}, which is
    /// why it uses log ED instead; this option reproduces that ablation.
    Jsd,
}

fn one() -> f64 {
    1.0
}
fn log_offset() -> f64 {
    1e-20
}
fn det_offset() -> f64 {
    1e-6
}

impl AdpConfig {
    /// ADP_{α,β} with the official constants.
    pub fn new(alpha: f64, beta: f64) -> Self {
        Self {
            alpha,
            beta,
            temperature: 1.0,
            log_offset: log_offset(),
            det_offset: det_offset(),
            diversity: Diversity::LogDet,
        }
    }

    /// The ECE baseline: α = β = 0.
    pub fn ece() -> Self {
        Self::new(0.0, 0.0)
    }

    /// Checks that the settings are usable, with one message per problem.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        anyhow::ensure!(
            ok(self.alpha),
            "`alpha` must be a finite number >= 0, got {}",
            self.alpha
        );
        anyhow::ensure!(
            ok(self.beta),
            "`beta` must be a finite number >= 0, got {}",
            self.beta
        );
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "`temperature` must be > 0, got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.det_offset.is_finite() && self.det_offset > 0.0,
            "the log-det ridge must be > 0, got {}",
            self.det_offset
        );
        Ok(())
    }
}

/// Per-example L_ECE = Σ_k −log F^k_y (Eq. 2) from logits `[B, K, L]`, labels `[B]`; returns `[B]`.
pub fn ensemble_cross_entropy(
    logits: Tensor<3>,
    labels: Tensor<1, Int>,
    temperature: f64,
) -> Tensor<1> {
    let [b, k, _] = logits.dims();
    let log_p = log_softmax(logits.div_scalar(temperature), 2);
    let idx = labels.reshape([b, 1, 1]).expand([b, k, 1]);
    log_p.gather(2, idx).sum_dims_squeeze::<1, _>(&[1, 2]).neg()
}

/// Per-example Shannon entropy of the ensemble prediction, H(F) = −Σ_l F_l log(F_l + offset),
/// from member probabilities `[B, K, L]`; returns `[B]`.
pub fn ensemble_entropy(probs: Tensor<3>, log_offset: f64) -> Tensor<1> {
    let mean = probs.mean_dim(1); // [B, 1, L]
    (mean.clone() * mean.add_scalar(log_offset).log())
        .sum_dims_squeeze::<1, _>(&[1, 2])
        .neg()
}

/// The Gram matrix M̃ᵀ M̃ `[B, K, K]` of the members' L2-normalised non-true-label predictions
/// (Eq. 3). Removing label y is done by zeroing it, which leaves norms and inner products
/// unchanged; a 1e-20 inside the norm keeps an exactly one-hot member finite (its column is 0).
pub fn diversity_gram(probs: Tensor<3>, labels: Tensor<1, Int>) -> Tensor<3> {
    let [b, _, l] = probs.dims();
    let keep = labels
        .one_hot::<2>(l)
        .float()
        .cast(FloatDType::from(probs.dtype()))
        .neg()
        .add_scalar(1.0)
        .reshape([b, 1, l]);
    let non_y = probs * keep;
    let norm = non_y
        .clone()
        .powi_scalar(2)
        .sum_dim(2)
        .add_scalar(1e-20)
        .sqrt();
    let m = non_y / norm; // rows are the columns of M̃
    m.clone().matmul(m.swap_dims(1, 2))
}

/// log det of a batch of symmetric positive-definite matrices `[B, K, K]`, by a Cholesky
/// factorisation written in differentiable tensor ops: log det G = Σ_j log d_j with d_j the
/// squared diagonal of the factor. Works for any K without the under/overflow of det itself.
pub fn log_det_spd(g: Tensor<3>) -> Tensor<1> {
    let [b, k, _] = g.dims();
    let (device, dtype) = (g.device(), FloatDType::from(g.dtype()));
    let mut cols: Vec<Tensor<3>> = Vec::with_capacity(k);
    let mut log_pivots: Vec<Tensor<2>> = Vec::with_capacity(k);
    for j in 0..k {
        let g_j = g.clone().slice([0..b, 0..k, j..j + 1]); // [B, K, 1]
        let v = if j == 0 {
            g_j
        } else {
            let l_prev = Tensor::cat(cols.clone(), 2); // [B, K, j]
            let row_j = l_prev.clone().slice([0..b, j..j + 1, 0..j]); // [B, 1, j]
            g_j - l_prev.matmul(row_j.swap_dims(1, 2))
        };
        // Exact pivots are >= the ridge; the clamp only guards against rounding to <= 0.
        let pivot = v.clone().slice([0..b, j..j + 1, 0..1]).clamp_min(1e-12);
        log_pivots.push(pivot.clone().log().reshape([b, 1]));
        let below: Vec<f32> = (0..k).map(|i| if i >= j { 1.0 } else { 0.0 }).collect();
        let below = Tensor::<1>::from_floats(below.as_slice(), &device)
            .cast(dtype)
            .reshape([1, k, 1]);
        cols.push(v / pivot.sqrt() * below);
    }
    Tensor::cat(log_pivots, 1).sum_dim(1).reshape([b])
}

/// Per-example log ED = log det(M̃ᵀ M̃ + ridge·I) (Eq. 3-4) from probabilities `[B, K, L]`.
pub fn log_ensemble_diversity(probs: Tensor<3>, labels: Tensor<1, Int>, ridge: f64) -> Tensor<1> {
    let [b, k, _] = probs.dims();
    let eye = Tensor::<2>::eye(k, &probs.device())
        .cast(FloatDType::from(probs.dtype()))
        .reshape([1, k, k])
        .mul_scalar(ridge);
    log_det_spd(diversity_gram(probs, labels) + eye.expand([b, k, k]))
}

/// Per-example Jensen-Shannon divergence of the members' predictions, JSD(F) = H(F) −
/// (1/K) Σ_k H(F^k) (App. B.1, Eq. 9), from probabilities `[B, K, L]`, with `log_offset` inside
/// every logarithm as in [`ensemble_entropy`]; returns `[B]`. It is 0 when all members agree
/// and at most log K.
pub fn jensen_shannon_diversity(probs: Tensor<3>, log_offset: f64) -> Tensor<1> {
    let [b, k, _] = probs.dims();
    let member_entropy = (probs.clone() * probs.clone().add_scalar(log_offset).log())
        .sum_dim(2)
        .neg()
        .reshape([b, k]);
    ensemble_entropy(probs, log_offset) - member_entropy.mean_dim(1).reshape([b])
}

/// The batch means of each part of the objective.
#[derive(Debug, Clone)]
pub struct AdpLoss {
    /// L_ECE − α·H − β·D, averaged over the batch (what is minimised), with D = log ED or, for
    /// [`Diversity::Jsd`], JSD(F).
    pub total: Tensor<1>,
    /// Mean L_ECE.
    pub ece: Tensor<1>,
    /// Mean ensemble entropy H(F).
    pub entropy: Tensor<1>,
    /// Mean log ED.
    pub log_det: Tensor<1>,
}

/// The ADP objective of Algorithm 1, L_ECE − ADP_{α,β} averaged over the batch.
/// With α = β = 0 this is the ECE baseline; entropy and log ED are still reported.
/// With [`Diversity::Jsd`] the β term is JSD(F) instead of log ED (App. B.1: with α = 0 this is
/// Eq. 10, L_ECE − λ·JSD with λ = β); log ED is still reported.
pub fn adp_loss(logits: Tensor<3>, labels: Tensor<1, Int>, config: &AdpConfig) -> AdpLoss {
    let ece = ensemble_cross_entropy(logits.clone(), labels.clone(), config.temperature).mean();
    let probs = burn::tensor::activation::softmax(logits.div_scalar(config.temperature), 2);
    let entropy = ensemble_entropy(probs.clone(), config.log_offset).mean();
    let log_det = log_ensemble_diversity(probs.clone(), labels, config.det_offset).mean();
    let mut total = ece.clone();
    if config.alpha != 0.0 {
        total = total - entropy.clone().mul_scalar(config.alpha);
    }
    if config.beta != 0.0 {
        let diversity = match config.diversity {
            Diversity::LogDet => log_det.clone(),
            Diversity::Jsd => jensen_shannon_diversity(probs, config.log_offset).mean(),
        };
        total = total - diversity.mul_scalar(config.beta);
    }
    AdpLoss {
        total,
        ece,
        entropy: entropy.detach(),
        log_det: log_det.detach(),
    }
}

/// Solves Eq. 7 of Theorem 2, 1/F_y = (α/K)·log(F_y (L−1) / (1−F_y)), for α given the target
/// confidence F_y ∈ (1/L, 1), K members and L classes.
pub fn alpha_for_confidence(k: usize, l: usize, fy: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(k >= 1 && l >= 2, "need K >= 1 and L >= 2");
    let lower = 1.0 / l as f64;
    anyhow::ensure!(
        fy > lower && fy < 1.0,
        "the confidence F_y must lie in (1/L, 1) = ({lower}, 1), got {fy}"
    );
    Ok(k as f64 / (fy * (fy * (l as f64 - 1.0) / (1.0 - fy)).ln()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn dev() -> Device {
        crate::device::cpu()
    }

    fn t3(v: Vec<f32>, shape: [usize; 3]) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v, shape), &dev())
    }

    fn labels(v: Vec<i64>) -> Tensor<1, Int> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &dev())
    }

    fn vec1(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn cross_entropy_matches_hand_computation() {
        // One example, K = 2, L = 3.
        let z = vec![1.0f32, 2.0, 0.5, 0.0, 0.0, 0.0];
        let ce = vec1(ensemble_cross_entropy(
            t3(z, [1, 2, 3]),
            labels(vec![1]),
            1.0,
        ))[0] as f64;
        let lse1 = (1f64.exp() + 2f64.exp() + 0.5f64.exp()).ln();
        let expected = (lse1 - 2.0) + 3f64.ln();
        assert!(close(ce, expected, 1e-5), "{ce} vs {expected}");
    }

    #[test]
    fn entropy_of_uniform_mean_is_log_l() {
        let p = t3(vec![1.0, 0.0, 0.0, 1.0], [1, 2, 2]);
        let h = vec1(ensemble_entropy(p, 1e-20))[0] as f64;
        assert!(close(h, 2f64.ln(), 1e-6));
    }

    #[test]
    fn two_members_give_one_minus_cos_squared_plus_ridge_terms() {
        // L = 3, y = 0: the non-y parts are (0.3, 0.1) and (0.1, 0.4).
        let p = t3(vec![0.6, 0.3, 0.1, 0.5, 0.1, 0.4], [1, 2, 3]);
        let r = 1e-6;
        let got = vec1(log_ensemble_diversity(p, labels(vec![0]), r))[0] as f64;
        let (a, b) = ([0.3f64, 0.1], [0.1f64, 0.4]);
        let cos = (a[0] * b[0] + a[1] * b[1])
            / ((a[0] * a[0] + a[1] * a[1]).sqrt() * (b[0] * b[0] + b[1] * b[1]).sqrt());
        // det [[1+r, c], [c, 1+r]] = (1+r)^2 - c^2 = 1 - cos^2 + 2r + r^2.
        let expected = (1.0 - cos * cos + 2.0 * r + r * r).ln();
        assert!(close(got, expected, 1e-4), "{got} vs {expected}");
    }

    #[test]
    fn cholesky_log_det_matches_linalg_det_for_larger_k() {
        // A well-conditioned SPD batch with K = 5: G = A Aᵀ + I.
        let k = 5;
        let a: Vec<f32> = (0..2 * k * k)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        let a = t3(a, [2, k, k]);
        let eye = Tensor::<2>::eye(k, &dev())
            .reshape([1, k, k])
            .expand([2, k, k]);
        let g = a.clone().matmul(a.swap_dims(1, 2)) + eye;
        let ours = vec1(log_det_spd(g.clone()));
        let theirs = vec1(burn::linalg::det::<3, 2, 1>(g).log());
        for (x, y) in ours.iter().zip(&theirs) {
            assert!(close(*x as f64, *y as f64, 1e-4), "{x} vs {y}");
        }
    }

    #[test]
    fn identical_and_one_hot_members_stay_finite() {
        for k in [2usize, 3, 5, 12] {
            let l = 10;
            // Identical members, one-hot on the label: the worst case for the Gram matrix.
            let mut v = vec![0f32; k * l];
            for m in 0..k {
                v[m * l + 3] = 1.0;
            }
            let logits = t3(v.iter().map(|x| x * 200.0).collect(), [1, k, l]);
            let loss = adp_loss(logits.clone(), labels(vec![3]), &AdpConfig::new(2.0, 0.5));
            for part in [loss.total, loss.ece, loss.entropy, loss.log_det] {
                let x = vec1(part)[0];
                assert!(x.is_finite(), "K={k}: {x}");
            }
            // Identical, non-degenerate members: log det of rank-one + ridge.
            let same = t3(
                (0..k * l).map(|i| (i % l) as f32 * 0.3).collect(),
                [1, k, l],
            );
            let ld = vec1(adp_loss(same, labels(vec![0]), &AdpConfig::new(2.0, 0.5)).log_det)[0];
            let exact = ((k as f64 + 1e-6).ln() + (k as f64 - 1.0) * 1e-6f64.ln()) as f32;
            assert!(
                ld.is_finite() && (ld - exact).abs() < 0.5 + 0.05 * exact.abs(),
                "K={k}: {ld} vs {exact}"
            );
        }
    }

    /// Central finite differences of a scalar function of logits against autodiff, both in f64
    /// so that the check stays exact where the Gram matrix is near-singular (K > L − 1).
    fn check_gradient(f: impl Fn(Tensor<3>) -> Tensor<1>, shape: [usize; 3], seed: u64) {
        let n = shape.iter().product::<usize>();
        let mut state = seed;
        let base: Vec<f64> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f64 / (1u64 << 31) as f64) * 4.0 - 2.0
            })
            .collect();
        let tensor = |v: Vec<f64>, device: &Device| {
            let options = burn::tensor::TensorCreationOptions::new(device.clone())
                .with_dtype(burn::tensor::DType::F64);
            Tensor::<3>::from_data(TensorData::new(v, shape), options)
        };
        let ad = dev().autodiff();
        let x = tensor(base.clone(), &ad).require_grad();
        assert_eq!(
            x.dtype(),
            burn::tensor::DType::F64,
            "the check needs f64 tensors"
        );
        let grads = f(x.clone()).backward();
        let analytic: Vec<f64> = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec_as::<f64>()
            .unwrap();
        let eval = |v: Vec<f64>| -> f64 {
            f(tensor(v, &dev()))
                .into_data()
                .try_into_vec_as::<f64>()
                .unwrap()[0]
        };
        let h = 1e-5;
        for i in 0..n {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let numeric = (eval(plus) - eval(minus)) / (2.0 * h);
            let a = analytic[i];
            assert!(
                (a - numeric).abs() <= 1e-5 * (1.0 + numeric.abs()),
                "shape {shape:?}, d/dz[{i}]: autodiff {a} vs finite difference {numeric}"
            );
        }
    }

    #[test]
    fn adp_loss_gradient_matches_finite_differences() {
        for (k, seed) in [(2usize, 1u64), (3, 2), (5, 3)] {
            let labels_v: Vec<i64> = (0..3).map(|i| (i * 2 % 4) as i64).collect();
            check_gradient(
                |z| {
                    let y = Tensor::from_data(TensorData::new(labels_v.clone(), [3]), &z.device());
                    adp_loss(z, y, &AdpConfig::new(2.0, 0.5)).total
                },
                [3, k, 4],
                seed,
            );
        }
    }

    #[test]
    fn log_det_and_entropy_gradients_match_finite_differences() {
        let y = vec![1i64, 0];
        check_gradient(
            |z| {
                let l = Tensor::from_data(TensorData::new(y.clone(), [2]), &z.device());
                log_ensemble_diversity(burn::tensor::activation::softmax(z, 2), l, 1e-6).sum()
            },
            [2, 3, 5],
            9,
        );
        check_gradient(
            |z| {
                ensemble_entropy(
                    burn::tensor::activation::softmax(z.div_scalar(2.0), 2),
                    1e-20,
                )
                .sum()
            },
            [2, 3, 5],
            11,
        );
    }

    #[test]
    fn jsd_matches_hand_computation_and_its_bounds() {
        // K = 2, L = 2: members (1, 0) and (0, 1) disagree completely: JSD = log 2.
        let p = t3(vec![1.0, 0.0, 0.0, 1.0, 0.3, 0.7, 0.3, 0.7], [2, 2, 2]);
        let j = vec1(jensen_shannon_diversity(p, 1e-20));
        assert!(close(j[0] as f64, 2f64.ln(), 1e-6), "{}", j[0]);
        // Identical members: JSD = 0.
        assert!(j[1].abs() < 1e-6, "{}", j[1]);
        // K = 2, L = 3, by hand: H(mean) − mean of H(member).
        let (a, b) = ([0.6f64, 0.3, 0.1], [0.2f64, 0.5, 0.3]);
        let h = |p: &[f64]| -p.iter().map(|x| x * x.ln()).sum::<f64>();
        let m: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
        let expected = h(&m) - (h(&a) + h(&b)) / 2.0;
        let p = t3(vec![0.6, 0.3, 0.1, 0.2, 0.5, 0.3], [1, 2, 3]);
        let got = vec1(jensen_shannon_diversity(p, 1e-20))[0] as f64;
        assert!(close(got, expected, 1e-5), "{got} vs {expected}");
    }

    #[test]
    fn jsd_objective_gradient_matches_finite_differences() {
        let config = AdpConfig {
            diversity: Diversity::Jsd,
            temperature: 1.5,
            ..AdpConfig::new(2.0, 0.5)
        };
        for (k, seed) in [(2usize, 21u64), (3, 22), (5, 23)] {
            check_gradient(
                |z| {
                    let y = Tensor::from_data(TensorData::new(vec![0i64, 3, 1], [3]), &z.device());
                    adp_loss(z, y, &config).total
                },
                [3, k, 4],
                seed,
            );
        }
        // The JSD term alone (α = 0: Eq. 10 of App. B.1 up to L_ECE).
        check_gradient(
            |z| jensen_shannon_diversity(burn::tensor::activation::softmax(z, 2), 1e-20).sum(),
            [2, 4, 6],
            24,
        );
    }

    #[test]
    fn jsd_and_log_det_objectives_differ_only_in_the_diversity_term() {
        let z = t3(
            (0..24).map(|i| ((i * 7) % 5) as f32 * 0.4).collect(),
            [2, 3, 4],
        );
        let y = labels(vec![1, 2]);
        let base = AdpConfig::new(2.0, 0.5);
        let jsd = AdpConfig {
            diversity: Diversity::Jsd,
            ..base.clone()
        };
        let a = adp_loss(z.clone(), y.clone(), &base);
        let b = adp_loss(z.clone(), y, &jsd);
        let probs = burn::tensor::activation::softmax(z, 2);
        let j = vec1(jensen_shannon_diversity(probs, 1e-20).mean())[0] as f64;
        let (ta, tb) = (vec1(a.total)[0] as f64, vec1(b.total)[0] as f64);
        let ld = vec1(a.log_det)[0] as f64;
        assert!(close(tb - ta, 0.5 * (ld - j), 1e-4), "{ta} {tb} {ld} {j}");
    }

    #[test]
    fn alpha_from_eq7_reproduces_the_papers_example() {
        // Section 3.3: K = 5, L = 1000, F_y = 0.9 gives α ≈ 0.61.
        let a = alpha_for_confidence(5, 1000, 0.9).unwrap();
        assert!((a - 0.61).abs() < 0.01, "{a}");
        assert!(alpha_for_confidence(3, 10, 0.05).is_err());
        assert!(alpha_for_confidence(3, 10, 1.0).is_err());
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(AdpConfig::new(-1.0, 0.0).validate().is_err());
        assert!(AdpConfig::new(f64::NAN, 0.0).validate().is_err());
        assert!(AdpConfig::new(2.0, 0.5).validate().is_ok());
    }
}
