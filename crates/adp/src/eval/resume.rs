//! Cascades that survive a kill: each finished stage of each attacked batch is kept on disk, and
//! the same measurement run again takes the kept stages instead of running them again
//! ([`Cascade::resume`](crate::attack::Cascade::resume)). AutoAttack on a robust model costs
//! hours per batch on a CPU, most of it in its later stages; a killed evaluation loses at most the
//! stage it was in.
//!
//! The stages of a batch lie in `DIR/<attack>-<key hash>/stage-<i>.safetensors`, with the key
//! ([`BatchKey`]: weights, the batch's images, attack, seed, batch size, place in the test set)
//! beside them in `key.json`. `DIR` belongs to the caller, who holds the lock of the run or shard
//! it lies in and removes it ([`Resume::clear`]) once the measurement is saved.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::attack::draws::Draw;
use crate::attack::{AttackSpec, StageRecord, StageStore};

/// The directory of a run where `adp eval` and `adp reproduce` keep the stages of the
/// measurement in progress (each holds the run's lock while it measures).
pub const RESUME_DIR: &str = "attack-progress";

/// Where an evaluation keeps the finished stages of its cascades.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The directory, written by this evaluation alone.
    pub dir: PathBuf,
    /// SHA-256 of the weights attacked ([`super::shard::weights_sha256`]).
    pub weights_sha256: String,
}

/// What one attacked batch measures: a kept stage is taken only for the same key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchKey {
    /// SHA-256 of the weights attacked.
    pub weights_sha256: String,
    /// SHA-256 of the batch's images and labels ([`super::shard::dataset_sha256`]).
    pub batch_sha256: String,
    /// The batch's index in the whole test set.
    pub batch: usize,
    /// Batch size of the evaluation.
    pub batch_size: usize,
    /// The attack with every parameter.
    pub attack: AttackSpec,
    /// Whether it aims at random targets.
    pub targeted: bool,
    /// Seed of the evaluation.
    pub seed: u64,
}

impl Resume {
    /// The kept stages of the batch `key`.
    pub fn batch(&self, key: BatchKey) -> Result<BatchStages> {
        let json = serde_json::to_vec(&key)?;
        let hash = crate::io::sha256_hex(&json);
        let dir = self
            .dir
            .join(format!("{}-{}", key.attack.kind.name(), &hash[..16]));
        Ok(BatchStages { dir, key })
    }

    /// Removes every kept stage: the measurement they belong to is saved.
    pub fn clear(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.dir.display()))
            }
            _ => Ok(()),
        }
    }
}

/// The kept stages of one batch: a [`StageStore`] on disk.
#[derive(Debug, Clone)]
pub struct BatchStages {
    dir: PathBuf,
    key: BatchKey,
}

impl BatchStages {
    /// How many stages, from the first on, are kept.
    pub fn kept(&self) -> usize {
        (0..).take_while(|&s| self.path(s).exists()).count()
    }

    /// The directory of the batch's stages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, stage: usize) -> PathBuf {
        self.dir.join(format!("stage-{stage}.safetensors"))
    }

    /// Whether the directory holds this batch's stages; a directory of another key (a hash
    /// collision, or a file edited by hand) is an error rather than a silent wrong answer.
    fn check_key(&self) -> Result<bool> {
        let file = self.dir.join("key.json");
        if !file.exists() {
            return Ok(false);
        }
        let kept: BatchKey = crate::io::read_json(&file)?;
        ensure!(
            kept == self.key,
            "{} holds the stages of another measurement than its name says; remove {}",
            file.display(),
            self.dir.display()
        );
        Ok(true)
    }
}

impl StageStore for BatchStages {
    fn load(&self, stage: usize) -> Result<Option<StageRecord>> {
        let path = self.path(stage);
        if !path.exists() || !self.check_key()? {
            return Ok(None);
        }
        read_stage(&path)
            .with_context(|| {
                format!(
                    "{} is not a kept cascade stage; remove it to run the stage again",
                    path.display()
                )
            })
            .map(Some)
    }

    fn save(&self, stage: usize, record: &StageRecord) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        crate::io::write_json(&self.dir.join("key.json"), &self.key)?;
        write_stage(&self.path(stage), record)
    }
}

/// `success` `[n]` u8 and `adversarial` f32 (flattened), the draws as JSON in the metadata.
fn write_stage(path: &Path, record: &StageRecord) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let success: Vec<u8> = record.success.iter().map(|&b| b as u8).collect();
    let pixels: Vec<u8> = record
        .adversarial
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let views = [
        (
            "success",
            TensorView::new(Dtype::U8, vec![success.len()], &success)?,
        ),
        (
            "adversarial",
            TensorView::new(Dtype::F32, vec![record.adversarial.len()], &pixels)?,
        ),
    ];
    let meta = std::collections::HashMap::from([(
        "draws".to_string(),
        serde_json::to_string(&record.draws)?,
    )]);
    let bytes = crate::io::canonical_safetensors(safetensors::serialize(views, Some(meta))?)?;
    crate::io::atomic_write(path, &bytes)
}

fn read_stage(path: &Path) -> Result<StageRecord> {
    use safetensors::SafeTensors;
    use safetensors::tensor::Dtype;
    let bytes = std::fs::read(path)?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)?;
    let tensors = SafeTensors::deserialize(&bytes)?;
    let draws: Vec<Draw> = match meta.metadata().as_ref().and_then(|m| m.get("draws")) {
        Some(json) => serde_json::from_str(json)?,
        None => bail!("no `draws` in the metadata"),
    };
    let success = tensors.tensor("success")?;
    let adversarial = tensors.tensor("adversarial")?;
    ensure!(
        success.dtype() == Dtype::U8 && adversarial.dtype() == Dtype::F32,
        "`success` must be u8 and `adversarial` f32"
    );
    let success = success
        .data()
        .iter()
        .map(|&b| match b {
            0 => Ok(false),
            1 => Ok(true),
            other => bail!("`success` holds {other}, not 0 or 1"),
        })
        .collect::<Result<_>>()?;
    let adversarial = adversarial
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(StageRecord {
        success,
        adversarial,
        draws,
    })
}
