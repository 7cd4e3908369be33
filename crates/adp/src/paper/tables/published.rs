//! The rows of the paper's Tables 1-5 and the numbers it published for them.

use crate::attack::{AttackKind, AttackSpec};
use crate::data::DatasetKind;
use AttackKind::{Bim, Cw, Ead, Fgsm, Jsma, Mim, Pgd};

use super::{PaperRow, RowKey, Table, cifar_like};

/// An attack row of the paper: the attack, its main parameter on CIFAR and on MNIST, and the
/// paper's accuracies for the data set it was published on.
struct Published {
    kind: AttackKind,
    cifar: f64,
    mnist: f64,
    paper: &'static [f64],
}

const fn row(kind: AttackKind, cifar: f64, mnist: f64, paper: &'static [f64]) -> Published {
    Published {
        kind,
        cifar,
        mnist,
        paper,
    }
}

/// Table 1, clean error (%) of Net 1-3 and the ensemble for Baseline / ADP_{2,0} / ADP_{2,0.5}
/// (NaN: the paper's `-`).
const TABLE1_MNIST: [[f64; 3]; 4] = [
    [0.44, 0.43, 0.36],
    [0.39, 0.45, 0.47],
    [0.43, 0.37, 0.47],
    [0.32, 0.32, 0.28],
];
const TABLE1_CIFAR10: [[f64; 3]; 4] = [
    [8.30, 9.01, 9.34],
    [8.52, 9.15, 9.34],
    [8.67, 9.14, 9.92],
    [6.78, 6.74, 6.56],
];
const TABLE1_CIFAR100: [[f64; 3]; 4] = [
    [35.25, f64::NAN, 39.04],
    [35.91, f64::NAN, 40.86],
    [36.03, f64::NAN, 39.00],
    [30.35, f64::NAN, 29.80],
];

/// Table 2, MNIST columns: accuracy (%) of Baseline / ADP_{2,0} / ADP_{2,0.5}.
const TABLE2_MNIST: [Published; 15] = [
    row(Fgsm, 0.02, 0.1, &[78.3, 95.5, 96.3]),
    row(Fgsm, 0.04, 0.2, &[21.5, 50.6, 52.8]),
    row(Bim, 0.01, 0.1, &[52.3, 86.4, 88.5]),
    row(Bim, 0.02, 0.15, &[12.2, 69.5, 73.6]),
    row(Pgd, 0.01, 0.1, &[50.7, 73.4, 82.8]),
    row(Pgd, 0.02, 0.15, &[6.3, 36.2, 41.0]),
    row(Mim, 0.01, 0.1, &[58.3, 89.7, 92.0]),
    row(Mim, 0.02, 0.15, &[16.1, 73.3, 77.5]),
    row(Jsma, 0.05, 0.3, &[84.0, 88.0, 95.0]),
    row(Jsma, 0.1, 0.6, &[74.0, 85.0, 91.0]),
    row(Cw, 0.001, 0.1, &[91.6, 95.9, 97.3]),
    row(Cw, 0.01, 1.0, &[30.6, 75.0, 78.1]),
    row(Cw, 0.1, 10.0, &[5.9, 20.2, 23.8]),
    row(Ead, 1.0, 5.0, &[29.8, 91.3, 93.4]),
    row(Ead, 5.0, 10.0, &[7.3, 87.4, 89.5]),
];

/// Table 2, CIFAR-10 columns (same rows as [`TABLE2_MNIST`]).
const TABLE2_CIFAR10: [[f64; 3]; 15] = [
    [36.5, 57.4, 61.7],
    [19.4, 41.9, 46.2],
    [18.5, 44.0, 46.6],
    [6.1, 28.2, 31.0],
    [23.4, 43.2, 48.4],
    [6.6, 26.8, 30.4],
    [23.8, 49.6, 52.1],
    [7.4, 32.3, 35.9],
    [29.5, 33.0, 43.5],
    [27.5, 32.0, 37.0],
    [71.3, 76.3, 80.6],
    [45.2, 50.3, 54.9],
    [18.8, 19.2, 25.6],
    [17.5, 64.5, 67.3],
    [2.4, 23.4, 29.6],
];

/// Table 3, CIFAR-100: Baseline / ADP_{2,0.5} (the MNIST values are unused: CIFAR-100 only).
const TABLE3: [Published; 6] = [
    row(Bim, 0.005, 0.005, &[21.6, 26.1]),
    row(Bim, 0.01, 0.01, &[10.1, 14.8]),
    row(Pgd, 0.005, 0.005, &[26.6, 32.1]),
    row(Pgd, 0.01, 0.01, &[11.7, 18.3]),
    row(Mim, 0.005, 0.005, &[24.2, 29.4]),
    row(Mim, 0.01, 0.01, &[11.2, 17.1]),
];

/// Table 4, CIFAR-10: AdvT_FGSM / AdvT_FGSM + ADP_{2,0.5} / AdvT_PGD / AdvT_PGD + ADP_{2,0.5}.
const TABLE4: [Published; 4] = [
    row(Fgsm, 0.04, 0.2, &[39.3, 56.1, 43.2, 52.8]),
    row(Bim, 0.02, 0.15, &[19.9, 25.7, 27.8, 34.0]),
    row(Pgd, 0.02, 0.15, &[24.2, 26.7, 32.8, 36.2]),
    row(Mim, 0.02, 0.15, &[24.5, 30.6, 32.7, 38.8]),
];

/// Table 5, CIFAR-10, K = 5: "Normal" accuracy (%) of Baseline / ADP_{2,0.5}.
const TABLE5_NORMAL: [f64; 2] = [93.6, 93.8];

/// Table 5's attack rows.
const TABLE5: [Published; 6] = [
    row(Fgsm, 0.02, 0.1, &[42.0, 58.4]),
    row(Bim, 0.01, 0.1, &[31.6, 41.8]),
    row(Pgd, 0.01, 0.1, &[37.4, 44.2]),
    row(Mim, 0.01, 0.1, &[37.1, 47.5]),
    row(Cw, 0.01, 1.0, &[52.3, 56.5]),
    row(Ead, 1.0, 5.0, &[20.4, 65.3]),
];

/// JSMA's per-pixel change θ: 0.2 on MNIST (the default), 0.1 on CIFAR-10 (Table 2's caption).
const JSMA_THETA_CIFAR: f64 = 0.1;

fn some(v: &[f64]) -> Vec<Option<f64>> {
    v.iter().map(|&x| (!x.is_nan()).then_some(x)).collect()
}

/// The attack rows of `rows` for `dataset`; `published` says whether the paper's numbers
/// (`paper_for(i)`) belong to this data set.
fn attack_rows(
    rows: &[Published],
    dataset: DatasetKind,
    published: bool,
    paper_for: impl Fn(usize) -> Vec<f64>,
) -> Vec<PaperRow> {
    let cifar = cifar_like(dataset);
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let mut spec = AttackSpec::main(r.kind, if cifar { r.cifar } else { r.mnist });
            if cifar && r.kind == Jsma {
                spec.theta = Some(JSMA_THETA_CIFAR);
            }
            let paper = paper_for(i);
            PaperRow {
                key: RowKey::Attack { spec },
                paper: if published {
                    some(&paper)
                } else {
                    vec![None; paper.len()]
                },
            }
        })
        .collect()
}

/// The rows of `table` on `dataset` with `members` members, and the paper's numbers where it
/// published them for this data set.
pub fn paper_rows(table: Table, dataset: DatasetKind, members: usize) -> Vec<PaperRow> {
    match table {
        Table::Table1 => {
            let published = match dataset {
                DatasetKind::Mnist => Some(TABLE1_MNIST),
                DatasetKind::Cifar10 => Some(TABLE1_CIFAR10),
                DatasetKind::Cifar100 => Some(TABLE1_CIFAR100),
                _ => None,
            };
            let value = |r: usize| {
                published
                    .filter(|_| members == 3)
                    .map_or(vec![None; 3], |t| some(&t[r]))
            };
            let mut rows: Vec<PaperRow> = (0..members)
                .map(|m| PaperRow {
                    key: RowKey::MemberError { member: m },
                    paper: if m < 3 { value(m) } else { vec![None; 3] },
                })
                .collect();
            rows.push(PaperRow {
                key: RowKey::EnsembleError,
                paper: value(3),
            });
            rows
        }
        Table::Table2 => match dataset {
            DatasetKind::Cifar10 => {
                attack_rows(&TABLE2_MNIST, dataset, true, |i| TABLE2_CIFAR10[i].to_vec())
            }
            _ => attack_rows(&TABLE2_MNIST, dataset, dataset == DatasetKind::Mnist, |i| {
                TABLE2_MNIST[i].paper.to_vec()
            }),
        },
        Table::Table3 => attack_rows(&TABLE3, dataset, dataset == DatasetKind::Cifar100, |i| {
            TABLE3[i].paper.to_vec()
        }),
        Table::Table4 => attack_rows(&TABLE4, dataset, dataset == DatasetKind::Cifar10, |i| {
            TABLE4[i].paper.to_vec()
        }),
        Table::Table5 => {
            let published = dataset == DatasetKind::Cifar10 && members == 5;
            let mut rows = vec![PaperRow {
                key: RowKey::CleanAccuracy,
                paper: if published {
                    some(&TABLE5_NORMAL)
                } else {
                    vec![None; 2]
                },
            }];
            rows.extend(attack_rows(&TABLE5, dataset, published, |i| {
                TABLE5[i].paper.to_vec()
            }));
            rows
        }
    }
}
