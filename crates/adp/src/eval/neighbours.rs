//! k-nearest-neighbour statistics that put numbers on the t-SNE pictures of Fig. 2 (Section 4.2):
//! how often a point's neighbours share its class (class structure of a feature space or of its
//! embedding), and how many neighbours two members' feature spaces have in common (how similar
//! their learned feature distributions are, which the paper reads off the pictures: "the three
//! individual networks have learned similar feature distributions" under the baseline).

use anyhow::{Result, ensure};

/// The indices of each point's `k` nearest other points by Euclidean distance, nearest first
/// (ties by index). `points` holds `n` rows of `dim` values; needs `1 ≤ k < n`. Exact, O(n²·dim).
pub fn nearest(points: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<usize>>> {
    let n = point_count(points, dim)?;
    ensure!(
        k >= 1 && k < n,
        "{k} nearest neighbours need more than {k} points, got {n}"
    );
    let rows: Vec<&[f32]> = points.chunks(dim).collect();
    Ok(rows
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d: Vec<(f32, usize)> = rows
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, b)| {
                    let s = a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y));
                    (s.sum::<f32>(), j)
                })
                .collect();
            let order =
                |x: &(f32, usize), y: &(f32, usize)| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1));
            d.select_nth_unstable_by(k - 1, order);
            d.truncate(k);
            d.sort_unstable_by(order);
            d.into_iter().map(|(_, j)| j).collect()
        })
        .collect())
}

/// The number of `dim`-dimensional rows in `points`; an error when they do not divide evenly.
pub fn point_count(points: &[f32], dim: usize) -> Result<usize> {
    ensure!(
        dim > 0 && points.len().is_multiple_of(dim),
        "{} values are not a whole number of {dim}-dimensional points",
        points.len()
    );
    Ok(points.len() / dim)
}

/// Mean over points of the fraction of their neighbours with the same label (1 = every
/// neighbourhood is pure, about Σ_c (n_c/n)² for features unrelated to the class).
pub fn class_agreement(neighbours: &[Vec<usize>], labels: &[u8]) -> f64 {
    let per_point = neighbours.iter().zip(labels).map(|(nb, &l)| {
        let same = nb.iter().filter(|&&j| labels[j] == l).count();
        same as f64 / nb.len().max(1) as f64
    });
    per_point.sum::<f64>() / neighbours.len().max(1) as f64
}

/// The class agreement of a labelling with no structure: the probability that another point
/// drawn at random shares a point's label, Σ_c n_c (n_c − 1) / (n (n − 1)).
pub fn chance_agreement(labels: &[u8]) -> f64 {
    let n = labels.len();
    if n < 2 {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    labels.iter().for_each(|&l| counts[l as usize] += 1);
    let pairs: usize = counts.iter().map(|&c| c * c.saturating_sub(1)).sum();
    pairs as f64 / (n * (n - 1)) as f64
}

/// Mean over points of |N_a(i) ∩ N_b(i)| / k: the fraction of a point's neighbours in one
/// space that are also its neighbours in the other (1 = identical neighbourhoods; about
/// k / (n − 1) for unrelated spaces). `a` and `b` list the same points with the same k.
pub fn overlap(a: &[Vec<usize>], b: &[Vec<usize>]) -> f64 {
    let per_point = a.iter().zip(b).map(|(x, y)| {
        let shared = x.iter().filter(|j| y.contains(j)).count();
        shared as f64 / x.len().max(1) as f64
    });
    per_point.sum::<f64>() / a.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_neighbours_on_a_line() {
        // Points 0, 1, 3, 7 on a line.
        let nb = nearest(&[0.0, 1.0, 3.0, 7.0], 1, 2).unwrap();
        assert_eq!(nb, vec![vec![1, 2], vec![0, 2], vec![1, 0], vec![2, 1]]);
        assert!(nearest(&[0.0, 1.0], 1, 2).is_err());
        assert!(nearest(&[0.0, 1.0, 2.0], 2, 1).is_err());
    }

    #[test]
    fn agreement_and_overlap_by_hand() {
        let nb = vec![vec![1, 2], vec![0, 2], vec![1, 0], vec![2, 1]];
        // Labels a a b b: point 0 has 1 of 2 same, 1: 1/2, 2: 0/2, 3: 1/2.
        let labels = [0, 0, 1, 1];
        assert!((class_agreement(&nb, &labels) - 1.5 / 4.0).abs() < 1e-12);
        // Two classes of two: each point shares its label with 1 of the 3 others.
        assert!((chance_agreement(&labels) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(overlap(&nb, &nb), 1.0);
        let other = vec![vec![3, 2], vec![3, 2], vec![3, 0], vec![0, 1]];
        // Every point shares exactly one of its two neighbours: {2}, {2}, {0}, {1}.
        assert!((overlap(&nb, &other) - 0.5).abs() < 1e-12);
    }
}
