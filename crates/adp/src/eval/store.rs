//! Finished attack results of a run, one file per measurement in `RUN/results/`: an
//! `adp reproduce` that is stopped after some attacks reuses them when it is run again, and an
//! attack measured by `adp eval` (whole, or sharded over processes or machines and merged by
//! `adp merge`) counts for a reproduction that asks for the same measurement.
//!
//! A result is reused only for the same [`ResultKey`]: the same weights, the same attacked
//! images, the same attack with every parameter, the same seed and the same batch size (the
//! attacks reseed their random starts per batch, so the batch size changes the draws).

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use super::EvalReport;
use super::RobustResult;
use super::shard::{EvalKey, dataset_sha256, weights_sha256};
use crate::attack::AttackSpec;
use crate::data::Dataset;

/// The directory of a run that holds its finished attack results.
pub const RESULTS_DIR: &str = "results";

/// What one attack result measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultKey {
    /// SHA-256 of the weights attacked ([`super::shard::weights_sha256`]).
    pub weights_sha256: String,
    /// SHA-256 of the attacked images and labels ([`super::shard::dataset_sha256`]).
    pub test_sha256: String,
    /// Number of attacked images.
    pub examples: usize,
    /// The attack with every parameter it was given.
    pub attack: AttackSpec,
    /// Whether it aimed at random targets.
    pub targeted: bool,
    /// Seed of its random starts and targets.
    pub seed: u64,
    /// Batch size of the evaluation.
    pub batch_size: usize,
}

impl ResultKey {
    /// The key of each of `attacks` on `data` against the weights of `run`, in order (the
    /// weights and the images are hashed once).
    pub fn for_attacks(
        run: &Path,
        data: &Dataset,
        attacks: &[AttackSpec],
        targeted: bool,
        seed: u64,
        batch_size: usize,
    ) -> Result<Vec<Self>> {
        let (weights, images) = (weights_sha256(run)?, dataset_sha256(data));
        Ok(attacks
            .iter()
            .map(|attack| ResultKey {
                weights_sha256: weights.clone(),
                test_sha256: images.clone(),
                examples: data.len(),
                attack: attack.clone(),
                targeted,
                seed,
                batch_size,
            })
            .collect())
    }

    /// The key of each attack of an evaluation, in order; none where the evaluation repeats
    /// its attacks over several seeds (its results then hold the repeats too).
    pub fn of_eval(key: &EvalKey) -> Vec<ResultKey> {
        let s = &key.settings;
        if s.seeds != 1 {
            return Vec::new();
        }
        s.attacks
            .iter()
            .map(|attack| ResultKey {
                weights_sha256: key.weights_sha256.clone(),
                test_sha256: key.test_sha256.clone(),
                examples: key.examples,
                attack: attack.clone(),
                targeted: s.targeted,
                seed: s.seed,
                batch_size: s.batch_size,
            })
            .collect()
    }

    /// `RUN/results/<attack>-<first 16 hex digits of the key's SHA-256>.json`.
    pub fn path(&self, run: &Path) -> Result<PathBuf> {
        let json = serde_json::to_vec(self)?;
        let hash = crate::io::sha256_hex(&json);
        Ok(run
            .join(RESULTS_DIR)
            .join(format!("{}-{}.json", self.attack.kind.name(), &hash[..16])))
    }
}

/// A result as saved: the key with the measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stored {
    key: ResultKey,
    result: RobustResult,
}

/// The saved result of `key` in `run`, if there is one.
pub fn find(run: &Path, key: &ResultKey) -> Result<Option<RobustResult>> {
    let path = key.path(run)?;
    if !path.exists() {
        return Ok(None);
    }
    let stored: Stored = crate::io::read_json(&path)?;
    ensure!(
        stored.key == *key,
        "{} holds the result of another measurement than its name says; remove it",
        path.display()
    );
    Ok(Some(stored.result))
}

/// Saves `result`, the measurement of `key`, into `run` (atomically; a result of the same key
/// is replaced, since it measured the same thing).
pub fn keep(run: &Path, key: &ResultKey, result: &RobustResult) -> Result<()> {
    let path = key.path(run)?;
    let stored = Stored {
        key: key.clone(),
        result: result.clone(),
    };
    crate::io::write_json(&path, &stored)
}

/// Saves every attack result of `report`, an evaluation of `key` (nothing where it repeats
/// its attacks over several seeds).
pub fn keep_report(run: &Path, key: &EvalKey, report: &EvalReport) -> Result<()> {
    for (k, result) in ResultKey::of_eval(key).iter().zip(&report.robust) {
        keep(run, k, result)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::AttackKind;
    use crate::eval::shard::EvalSettings;

    fn key(eps: f64, seed: u64) -> ResultKey {
        ResultKey {
            weights_sha256: "w".into(),
            test_sha256: "t".into(),
            examples: 4,
            attack: AttackSpec::new(AttackKind::Pgd, eps),
            targeted: false,
            seed,
            batch_size: 2,
        }
    }

    fn result(accuracy: f64) -> RobustResult {
        RobustResult {
            attack: "pgd".into(),
            description: "PGD".into(),
            eps: 0.1,
            parameter: "ε = 0.1".into(),
            targeted: false,
            examples: 4,
            accuracy,
            success_rate: 1.0 - accuracy,
            seconds: 1.0,
            std_error: 0.0,
            repeats: Vec::new(),
            stages: Vec::new(),
        }
    }

    #[test]
    fn a_result_is_found_under_its_own_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        assert_eq!(find(run, &key(0.1, 0)).unwrap(), None);
        keep(run, &key(0.1, 0), &result(0.25)).unwrap();
        assert_eq!(find(run, &key(0.1, 0)).unwrap(), Some(result(0.25)));
        assert_eq!(find(run, &key(0.1, 1)).unwrap(), None);
        assert_eq!(find(run, &key(0.15, 0)).unwrap(), None);
        keep(run, &key(0.1, 0), &result(0.5)).unwrap();
        assert_eq!(find(run, &key(0.1, 0)).unwrap(), Some(result(0.5)));
    }

    #[test]
    fn a_file_whose_key_differs_from_its_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        keep(run, &key(0.1, 0), &result(0.25)).unwrap();
        std::fs::rename(
            key(0.1, 0).path(run).unwrap(),
            key(0.1, 1).path(run).unwrap(),
        )
        .unwrap();
        let err = find(run, &key(0.1, 1)).unwrap_err().to_string();
        assert!(err.contains("remove it"), "{err}");
    }

    #[test]
    fn an_evaluation_gives_one_key_per_attack_unless_it_repeats_seeds() {
        let settings = |seeds| EvalSettings {
            attacks: vec![
                AttackSpec::new(AttackKind::Pgd, 0.1),
                AttackSpec::new(AttackKind::Fgsm, 0.2),
            ],
            targeted: false,
            seeds,
            seed: 3,
            batch_size: 2,
            indicators: None,
            surrogate_sha256: None,
        };
        let eval = |seeds| EvalKey {
            label: "ECE".into(),
            weights_sha256: "w".into(),
            examples: 4,
            test_sha256: "t".into(),
            settings: settings(seeds),
        };
        let keys = ResultKey::of_eval(&eval(1));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], key(0.1, 3));
        assert_eq!(keys[1].attack, AttackSpec::new(AttackKind::Fgsm, 0.2));
        assert!(ResultKey::of_eval(&eval(2)).is_empty());
    }
}
