//! Two-dimensional t-SNE embeddings (van der Maaten & Hinton, 2008), the visualisation of the
//! paper's Fig. 2 (Section 4.2: "we use the t-SNE method to visualize the final hidden features
//! of each network").
//!
//! The embedding is computed by the `bhtsne` crate with the Barnes-Hut approximation of the
//! repulsive forces (van der Maaten, 2014): perplexity-calibrated Gaussian affinities on the
//! 3·perplexity nearest neighbours, symmetrised, a Student-t kernel in 2-D, early exaggeration
//! (×12 for the first epochs), momentum 0.5 then 0.8 and per-coordinate gains. It runs on
//! one thread with a seeded N(0, 10⁻⁴) initialisation, so one seed gives bit-identical
//! coordinates (with several threads the crate's parallel sums change with the scheduling).

use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::{Context, Result, anyhow, ensure};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::eval::neighbours::point_count;

/// Settings of one t-SNE run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TsneConfig {
    /// Perplexity of each point's Gaussian neighbourhood (the effective number of neighbours).
    pub perplexity: f64,
    /// Barnes-Hut accuracy θ (> 0; smaller is closer to exact t-SNE).
    pub theta: f64,
    /// Gradient-descent iterations.
    pub epochs: usize,
    /// Iterations with early exaggeration (and momentum 0.5) before the normal phase.
    pub exaggeration_epochs: usize,
    /// Seed of the initial coordinates.
    pub seed: u64,
}

impl Default for TsneConfig {
    /// The usual settings of van der Maaten's reference implementation: perplexity 30,
    /// θ = 0.5, 1000 iterations of which 250 exaggerated.
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            theta: 0.5,
            epochs: 1000,
            exaggeration_epochs: 250,
            seed: 0,
        }
    }
}

/// Embeds `points` (`n` rows of `dim` values, row-major) in 2-D; returns one `[x, y]` per row.
///
/// Errors on a ragged or non-finite input, on a perplexity too large for `n` (t-SNE needs
/// `n − 1 ≥ 3·perplexity` neighbours per point), and on a result that is not finite.
pub fn embed(points: &[f32], dim: usize, config: &TsneConfig) -> Result<Vec<[f32; 2]>> {
    let n = point_count(points, dim).context("t-SNE input")?;
    let p = config.perplexity;
    ensure!(
        p.is_finite() && p >= 1.0,
        "t-SNE perplexity must be at least 1, got {p}"
    );
    let neighbours = (3.0 * p).floor() as usize;
    ensure!(
        n > neighbours,
        "t-SNE with perplexity {p} needs more than {neighbours} points (3 × perplexity), got {n}; \
         lower the perplexity or embed more points"
    );
    ensure!(
        config.theta.is_finite() && config.theta > 0.0,
        "Barnes-Hut θ must be positive, got {}",
        config.theta
    );
    ensure!(
        config.epochs > config.exaggeration_epochs,
        "t-SNE needs more epochs ({}) than early-exaggeration epochs ({})",
        config.epochs,
        config.exaggeration_epochs
    );
    if let Some(i) = points.iter().position(|v| !v.is_finite()) {
        anyhow::bail!(
            "t-SNE input value {} of point {} is not finite ({})",
            i % dim,
            i / dim,
            points[i]
        );
    }

    let mut rng = StdRng::seed_from_u64(config.seed);
    let normal = Normal::new(0.0f32, 1e-4).context("the N(0, 1e-4) initialisation")?;
    let init: Vec<f32> = (0..2 * n).map(|_| normal.sample(&mut rng)).collect();
    let rows: Vec<&[f32]> = points.chunks(dim).collect();
    let euclidean = |a: &&[f32], b: &&[f32]| {
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .context("cannot start the t-SNE thread")?;
    let run = || {
        let mut tsne = bhtsne::tSNE::<f32, &[f32], 2>::new(&rows);
        tsne.perplexity(p as f32)
            .epochs(config.epochs)
            .stop_lying_epoch(config.exaggeration_epochs)
            .momentum_switch_epoch(config.exaggeration_epochs)
            .initial_embedding(init)
            .barnes_hut(config.theta as f32, euclidean);
        tsne.embedding()
    };
    let flat = catch_unwind(AssertUnwindSafe(|| pool.install(run)))
        .map_err(|_| anyhow!("the t-SNE of {n} points of dimension {dim} failed"))?;
    ensure!(
        flat.len() == 2 * n && flat.iter().all(|v| v.is_finite()),
        "the t-SNE of {n} points diverged (non-finite coordinates)"
    );
    Ok(flat.chunks(2).map(|c| [c[0], c[1]]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::neighbours::{class_agreement, nearest};

    /// `per` points around each of `clusters` centres 10 apart along distinct axes of R^dim,
    /// with N(0, 1) noise; labels are the cluster indices.
    fn clusters(clusters: usize, per: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let noise = Normal::new(0.0f32, 1.0).unwrap();
        let mut points = Vec::new();
        let mut labels = Vec::new();
        for i in 0..clusters * per {
            let c = i % clusters;
            for j in 0..dim {
                let centre = if j == c { 10.0 } else { 0.0 };
                points.push(centre + noise.sample(&mut rng));
            }
            labels.push(c as u8);
        }
        (points, labels)
    }

    fn quick() -> TsneConfig {
        TsneConfig {
            perplexity: 15.0,
            epochs: 400,
            exaggeration_epochs: 100,
            ..TsneConfig::default()
        }
    }

    #[test]
    fn separated_gaussian_clusters_stay_separated_in_two_dimensions() {
        let (points, labels) = clusters(5, 60, 20, 1);
        let y = embed(&points, 20, &quick()).unwrap();
        assert_eq!(y.len(), 300);
        let flat: Vec<f32> = y.iter().flatten().copied().collect();
        let agreement = class_agreement(&nearest(&flat, 2, 10).unwrap(), &labels);
        assert!(agreement > 0.95, "kNN label agreement {agreement}");
        // Not collapsed: the embedding spreads over more than a point.
        let spread = flat.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1.0, "{spread}");
    }

    #[test]
    fn one_seed_gives_identical_coordinates_and_another_seed_different_ones() {
        let (points, _) = clusters(3, 40, 8, 2);
        let a = embed(&points, 8, &quick()).unwrap();
        let b = embed(&points, 8, &quick()).unwrap();
        assert_eq!(a, b);
        let other = TsneConfig { seed: 1, ..quick() };
        assert_ne!(a, embed(&points, 8, &other).unwrap());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let (points, _) = clusters(2, 10, 4, 3);
        let too_few = embed(&points, 4, &TsneConfig::default()).unwrap_err();
        assert!(too_few.to_string().contains("perplexity"), "{too_few}");
        assert!(embed(&points[..7], 4, &quick()).is_err());
        let mut nan = points.clone();
        nan[5] = f32::NAN;
        let small = TsneConfig {
            perplexity: 3.0,
            ..quick()
        };
        assert!(embed(&points, 4, &small).is_ok());
        assert!(
            embed(&nan, 4, &small)
                .unwrap_err()
                .to_string()
                .contains("point 1")
        );
        let no_theta = TsneConfig {
            theta: 0.0,
            ..small
        };
        assert!(embed(&points, 4, &no_theta).is_err());
    }
}
