//! Fig. 2 (Section 4.2): t-SNE of each member's final hidden features on test images, one
//! embedding per member, with kNN statistics that give the pictures numbers: the class agreement
//! of each member's features and of their embedding, and the neighbourhood overlap between the
//! members' feature spaces (the paper reads "similar feature distributions" for the baseline and
//! "much more different" ones for ADP off the pictures).

use std::time::Instant;

use anyhow::{Result, ensure};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Batcher, Dataset};
use crate::eval::neighbours::{chance_agreement, class_agreement, nearest, overlap};
use crate::eval::tsne::{TsneConfig, embed};
use crate::model::Ensemble;
use crate::tensor::floats;

/// Neighbours per point of the kNN statistics.
pub const NEIGHBOURS: usize = 10;

/// One member's embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberEmbedding {
    /// 2-D t-SNE coordinates, one per test image, in test-set order.
    pub coords: Vec<[f32; 2]>,
    /// kNN class agreement of the member's hidden features (before t-SNE).
    pub feature_agreement: f64,
    /// kNN class agreement of the 2-D embedding.
    pub embedding_agreement: f64,
    /// Wall time of the t-SNE, in seconds.
    pub seconds: f64,
}

/// The embeddings of one trained run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TsneReport {
    /// Run label.
    pub label: String,
    /// Class of each embedded test image.
    pub labels: Vec<u8>,
    /// Number of classes L.
    pub num_classes: usize,
    /// Dimension D of the hidden features.
    pub feature_dim: usize,
    /// k of the kNN statistics.
    pub neighbours: usize,
    /// One embedding per member.
    pub members: Vec<MemberEmbedding>,
    /// `overlap[i][j]`: mean fraction of a test image's k nearest neighbours in member i's
    /// feature space that are also among its k nearest in member j's (1 on the diagonal).
    pub overlap: Vec<Vec<f64>>,
}

/// Every member's hidden features on `data`: `K` row-major `[n, D]` matrices and `D`.
pub fn member_features(
    model: &Ensemble,
    data: &Dataset,
    batch_size: usize,
    device: &Device,
) -> (Vec<Vec<f32>>, usize) {
    let k = model.len();
    let mut per_member = vec![Vec::new(); k];
    let mut dim = 0;
    for batch in Batcher::sequential(data, batch_size).iter(device) {
        let f = model.features(batch.images); // [B, K, D]
        let [b, _, d] = f.dims();
        dim = d;
        let values = floats::<f32, _>(f);
        for i in 0..b {
            for (m, out) in per_member.iter_mut().enumerate() {
                out.extend_from_slice(&values[(i * k + m) * d..(i * k + m + 1) * d]);
            }
        }
    }
    (per_member, dim)
}

/// Embeds each member's hidden features on `data` with t-SNE and measures the kNN statistics.
pub fn feature_tsne(
    model: &Ensemble,
    label: &str,
    data: &Dataset,
    config: &TsneConfig,
    batch_size: usize,
    device: &Device,
) -> Result<TsneReport> {
    ensure!(
        data.len() > NEIGHBOURS,
        "the t-SNE figure needs more than {NEIGHBOURS} test images, got {}",
        data.len()
    );
    let (features, dim) = member_features(model, data, batch_size, device);
    let mut members = Vec::new();
    let mut neighbourhoods = Vec::new();
    for (m, f) in features.iter().enumerate() {
        let nb = nearest(f, dim, NEIGHBOURS)?;
        let start = Instant::now();
        let coords = embed(f, dim, config)?;
        let seconds = start.elapsed().as_secs_f64();
        let flat: Vec<f32> = coords.iter().flatten().copied().collect();
        let embedded = nearest(&flat, 2, NEIGHBOURS)?;
        crate::progress::note(&format!(
            "{label}: t-SNE of member {} ({} points, D = {dim}) in {seconds:.1} s",
            m + 1,
            data.len()
        ));
        members.push(MemberEmbedding {
            coords,
            feature_agreement: class_agreement(&nb, &data.labels),
            embedding_agreement: class_agreement(&embedded, &data.labels),
            seconds,
        });
        neighbourhoods.push(nb);
    }
    let overlap = neighbourhoods
        .iter()
        .map(|a| neighbourhoods.iter().map(|b| overlap(a, b)).collect())
        .collect();
    Ok(TsneReport {
        label: label.into(),
        labels: data.labels.clone(),
        num_classes: data.num_classes,
        feature_dim: dim,
        neighbours: NEIGHBOURS,
        members,
        overlap,
    })
}

impl TsneReport {
    /// Mean of the off-diagonal neighbourhood overlaps (NaN for one member).
    pub fn mean_cross_overlap(&self) -> f64 {
        let k = self.overlap.len();
        let cross = (0..k).flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)));
        let (sum, count) = cross.fold((0.0, 0), |(s, c), (i, j)| (s + self.overlap[i][j], c + 1));
        sum / count as f64
    }

    /// Per-member kNN statistics and the cross-member overlap as Markdown.
    pub fn markdown(reports: &[TsneReport]) -> String {
        let Some(first) = reports.first() else {
            return String::new();
        };
        let k = first.neighbours;
        let mut s = format!(
            "t-SNE of each member's final hidden features (Section 4.2, Fig. 2). kNN class \
             agreement: mean fraction of an image's {k} nearest neighbours with its class, in the \
             hidden features and in the 2-D embedding (chance: {:.3}).\n\n\
             | Method | member | D | kNN agreement, features | kNN agreement, t-SNE | t-SNE s |\n\
             |---|---:|---:|---:|---:|---:|\n",
            chance_agreement(&first.labels)
        );
        for r in reports {
            for (m, e) in r.members.iter().enumerate() {
                s.push_str(&format!(
                    "| {} | {} | {} | {:.3} | {:.3} | {:.1} |\n",
                    r.label,
                    m + 1,
                    r.feature_dim,
                    e.feature_agreement,
                    e.embedding_agreement,
                    e.seconds
                ));
            }
        }
        s.push_str(&format!(
            "\nNeighbourhood overlap between members: mean fraction of an image's {k} nearest \
             neighbours in member i's feature space that are also among its {k} nearest in \
             member j's (1 = the same neighbourhoods; about {:.3} for unrelated features). \
             Lower means more different feature distributions.\n\n\
             | Method | mean over pairs i ≠ j | pairs (i, j) |\n|---|---:|---|\n",
            k as f64 / (first.labels.len().max(2) - 1) as f64
        ));
        for r in reports {
            let k = r.overlap.len();
            let pairs: Vec<String> = (0..k)
                .flat_map(|i| (i + 1..k).map(move |j| (i, j)))
                .map(|(i, j)| format!("({}, {}) {:.3}", i + 1, j + 1, r.overlap[i][j]))
                .collect();
            s.push_str(&format!(
                "| {} | {:.3} | {} |\n",
                r.label,
                r.mean_cross_overlap(),
                pairs.join(", ")
            ));
        }
        s
    }

    /// All coordinates as CSV: `method,member,index,label,x,y`.
    pub fn to_csv(reports: &[TsneReport]) -> String {
        let mut s = String::from("method,member,index,label,x,y\n");
        for r in reports {
            for (m, e) in r.members.iter().enumerate() {
                for (i, (c, l)) in e.coords.iter().zip(&r.labels).enumerate() {
                    s.push_str(&format!(
                        "{},{},{i},{l},{},{}\n",
                        r.label,
                        m + 1,
                        c[0],
                        c[1]
                    ));
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_overlap_averages_the_off_diagonal() {
        let r = TsneReport {
            label: "x".into(),
            labels: vec![0, 1],
            num_classes: 2,
            feature_dim: 1,
            neighbours: 1,
            members: Vec::new(),
            overlap: vec![
                vec![1.0, 0.2, 0.4],
                vec![0.2, 1.0, 0.6],
                vec![0.4, 0.6, 1.0],
            ],
        };
        assert!((r.mean_cross_overlap() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn member_features_split_batches_into_one_matrix_per_member_in_test_order() {
        use crate::model::{ModelKind, tiny_config};
        let device = crate::device::cpu();
        device.seed(4);
        let config = tiny_config(ModelKind::Cnn, 3);
        let model = Ensemble::new(&config, 2, &device).valid();
        let images: Vec<f32> = (0..5 * 64)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let data = Dataset::new(images, vec![0, 1, 2, 0, 1], [1, 8, 8], 3).unwrap();
        let (features, dim) = member_features(&model, &data, 2, &device);
        assert_eq!((features.len(), dim), (2, 128));
        let all = Batcher::sequential(&data, 5).batch(0, &device).images;
        for (m, member) in model.members.iter().enumerate() {
            let direct: Vec<f64> = floats(member.features(all.clone()));
            assert_eq!(features[m].len(), 5 * 128);
            for (a, b) in features[m].iter().zip(&direct) {
                assert!((*a as f64 - b).abs() < 1e-5, "member {m}: {a} vs {b}");
            }
        }
    }
}
