//! Sharded evaluation: shard i of n evaluates a fixed slice of the test set and saves a partial
//! result; [`merge`] puts the n partial results together into the [`EvalReport`] an unsharded
//! evaluation gives, equal to it in every count and every accuracy.
//!
//! **Slices.** The test set (after any limit) is cut into batches of the evaluation's batch size;
//! shard i of n takes batches `⌊i·B/n⌋ .. ⌊(i+1)·B/n⌋` of the B batches, so every shard but
//! possibly the last holds whole batches and each batch holds the same images as in an unsharded
//! run.
//!
//! **Randomness.** The attacks draw their random starts, Square's squares and random targets
//! from a generator reseeded at every batch with [`super::batch_seed`] of the seed and the
//! batch's index in the whole test set ([`super::attack_batches`]), so a batch gives the same
//! adversarial examples whichever shard runs it. Results still depend on the batch size.
//!
//! **What is saved.** A partial result keeps what the merge needs to recompute every number
//! exactly: the clean counts with the log ED summed per batch, and each attack's per-example
//! outcomes (goal met, ensemble still correct) for each seed, and the indicators' counts at each
//! budget. It also records what was evaluated (model weights, test set, attacks, seeds, batch
//! size, the indicators' settings and surrogate): shards of different evaluations are refused.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::indicators::{
    IndicatorCounts, IndicatorSettings, count_indicators, indicator_budgets, reported_accuracy,
};
use super::resume::Resume;
use super::{CleanCounts, EvalReport, RobustResult, attack_batches, clean_counts};
use crate::attack::{AttackSpec, Classifier, Verdict, Victim};
use crate::data::Dataset;
use crate::model::Ensemble;

/// The directory of a run that holds its shards' partial results.
pub const SHARD_DIR: &str = "eval-shards";

/// Shard `index` of `count` (0-based): written `i/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which shard, `0 ≤ index < count`.
    pub index: usize,
    /// How many shards the test set is cut into.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || anyhow::anyhow!("shard `{s}` is not of the form i/n (e.g. 0/4, 3/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        ensure!(count >= 1, "shard `{s}`: the count n must be at least 1");
        ensure!(
            index < count,
            "shard `{s}`: the index i must be below the count n (shards 0/{count} … {}/{count})",
            count - 1
        );
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The whole test set as one shard.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The batches of this shard among `batches` batches; fails when there are fewer batches
    /// than shards (some shard would be empty).
    pub fn batches(&self, batches: usize) -> Result<Range<usize>> {
        ensure!(
            self.count <= batches,
            "{} shards need at least {} batches, but the test set makes {batches}; use fewer \
             shards or a smaller batch size",
            self.count,
            self.count
        );
        Ok(self.index * batches / self.count..(self.index + 1) * batches / self.count)
    }

    /// Where this shard's partial result lies in `run`: `eval-shards/I-of-N/partial.json`.
    pub fn path(&self, run: &Path) -> PathBuf {
        self.dir(run).join("partial.json")
    }

    /// The directory of this shard's partial result (and its lock).
    pub fn dir(&self, run: &Path) -> PathBuf {
        run.join(SHARD_DIR)
            .join(format!("{}-of-{}", self.index, self.count))
    }
}

/// What an evaluation measures, besides the model and the test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// The attacks, in order.
    pub attacks: Vec<AttackSpec>,
    /// Whether they aim at random targets.
    pub targeted: bool,
    /// Each attack runs with seeds `seed`, `seed + 1`, … (`seeds` in all).
    pub seeds: usize,
    /// Seed of the first run of every attack.
    pub seed: u64,
    /// Batch size (the shards' slices are whole batches).
    pub batch_size: usize,
    /// The indicators' attacks, where the indicators are measured (at each ε of
    /// [`indicator_budgets`], with the first seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicators: Option<IndicatorSettings>,
    /// SHA-256 of the weights of the indicators' surrogate, where one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate_sha256: Option<String>,
}

/// What a partial result belongs to; all shards of one evaluation share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalKey {
    /// Run label.
    pub label: String,
    /// SHA-256 of the weights file evaluated.
    pub weights_sha256: String,
    /// Number of test examples of the whole evaluation.
    pub examples: usize,
    /// SHA-256 of the whole test set (pixels as little-endian `f32`, then labels).
    pub test_sha256: String,
    /// The measurements.
    pub settings: EvalSettings,
}

/// One attack run (one seed) on a shard's slice, per example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialRun {
    /// Whether the attack met its goal, one `0`/`1` per example.
    pub success: String,
    /// Whether the ensemble still classifies the example correctly, one `0`/`1` per example.
    pub correct: String,
    /// For a cascade, the verdict of each example: `c` broken on the clean input, `0`, `1`, …
    /// broken first by that stage, `r` robust. Empty for a single attack.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verdicts: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// One attack on a shard's slice: its description and a run per seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialAttack {
    /// Description of the attack with every parameter.
    pub description: String,
    /// The stages of a cascade, in order; empty for a single attack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<String>,
    /// One run per seed, in seed order.
    pub runs: Vec<PartialRun>,
}

/// What one shard measured: saved as `RUN/eval-shards/I-of-N/partial.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialEval {
    /// Which shard.
    pub shard: Shard,
    /// What was evaluated.
    pub key: EvalKey,
    /// The test examples of this shard, `[start, end)`.
    pub examples: Range<usize>,
    /// Clean counts on the slice.
    pub clean: CleanCounts,
    /// One entry per attack of `key.settings.attacks`.
    pub attacks: Vec<PartialAttack>,
    /// The indicators' counts on the slice, one per budget of [`indicator_budgets`], where
    /// `key.settings.indicators` asks for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indicators: Vec<IndicatorCounts>,
}

fn flags(b: &[bool]) -> String {
    b.iter().map(|&x| if x { '1' } else { '0' }).collect()
}

/// One character per example: `c` (misclassified clean), `r` (robust) or the decimal digit of
/// the cascade stage that broke it; a cascade of more than 10 stages is refused, since its
/// verdicts would not fit one digit.
fn verdict_chars(v: &[Verdict]) -> Result<String> {
    v.iter()
        .map(|v| match v {
            Verdict::Clean => Ok('c'),
            Verdict::Robust => Ok('r'),
            Verdict::BrokenBy(s) => char::from_digit(*s as u32, 10).ok_or_else(|| {
                anyhow::anyhow!(
                    "a sharded evaluation records at most 10 cascade stages, found stage {s}; \
                     evaluate this cascade without --shard"
                )
            }),
        })
        .collect()
}

fn unverdict_chars(s: &str, stages: usize, file: &Path) -> Result<Vec<Verdict>> {
    s.chars()
        .map(|c| match c {
            'c' => Ok(Verdict::Clean),
            'r' => Ok(Verdict::Robust),
            d => match d.to_digit(10) {
                Some(i) if (i as usize) < stages => Ok(Verdict::BrokenBy(i as usize)),
                _ => bail!(
                    "{}: a verdict must be c, r or a stage below {stages}, found {d:?}; the file \
                     is corrupt",
                    file.display()
                ),
            },
        })
        .collect()
}

fn unflags(s: &str, file: &Path) -> Result<Vec<bool>> {
    s.chars()
        .map(|c| match c {
            '0' => Ok(false),
            '1' => Ok(true),
            other => bail!(
                "{}: per-example outcomes must be 0 or 1, found {other:?}; the file is corrupt",
                file.display()
            ),
        })
        .collect()
}

/// SHA-256 of a data set: pixels as little-endian `f32`, then the labels.
pub fn dataset_sha256(data: &Dataset) -> String {
    let mut bytes: Vec<u8> = data.images.iter().flat_map(|p| p.to_le_bytes()).collect();
    bytes.extend_from_slice(&data.labels);
    crate::io::sha256_hex(&bytes)
}

/// SHA-256 of the weights [`crate::train::checkpoint::load_run`] loads from `run`: the final
/// model, or the newest complete checkpoint's.
pub fn weights_sha256(run: &Path) -> Result<String> {
    let done = run.join("model.safetensors");
    let file = if done.exists() {
        done
    } else {
        match crate::train::checkpoint::latest(run)? {
            Some(l) => run.join(l.dir).join("model.safetensors"),
            None => bail!(
                "{} has no finished model and no complete checkpoint yet",
                run.display()
            ),
        }
    };
    crate::io::sha256_file(&file)
}

/// Evaluates `shard` of `test` (the whole test set of the evaluation): the clean counts, every
/// attack of `key.settings` with every seed and, where the settings ask for them, the
/// indicators' counts (with `surrogate`'s transferred examples, if given), on the shard's
/// batches only. With `resume`, cascades resume after the stages kept there.
pub fn evaluate_shard(
    model: &Ensemble,
    surrogate: Option<&Ensemble>,
    test: &Dataset,
    key: EvalKey,
    shard: Shard,
    resume: Option<&Resume>,
    device: &Device,
) -> Result<PartialEval> {
    let s = &key.settings;
    ensure!(s.batch_size >= 1, "the batch size must be at least 1");
    ensure!(s.seeds >= 1, "an evaluation needs at least one seed");
    ensure!(
        key.examples == test.len(),
        "the key counts {} examples, the test set has {}",
        key.examples,
        test.len()
    );
    let batches = shard.batches(test.len().div_ceil(s.batch_size))?;
    let examples = batches.start * s.batch_size..(batches.end * s.batch_size).min(test.len());
    let data = test.slice(examples.clone());
    let clean = clean_counts(model, &data, s.batch_size, device);
    let mut attacks = Vec::with_capacity(s.attacks.len());
    for spec in &s.attacks {
        let mut runs = Vec::with_capacity(s.seeds);
        let mut description = String::new();
        let mut stages = Vec::new();
        for r in 0..s.seeds as u64 {
            let set = attack_batches(
                model,
                &data,
                spec,
                s.targeted,
                None,
                s.batch_size,
                s.seed + r,
                batches.start,
                resume,
                device,
            )?;
            description = set.description;
            stages = set.stages;
            runs.push(PartialRun {
                success: flags(&set.success),
                correct: flags(&set.ensemble_correct),
                verdicts: verdict_chars(&set.verdicts)?,
                seconds: set.seconds,
            });
        }
        attacks.push(PartialAttack {
            description,
            stages,
            runs,
        });
    }
    let indicators = match &s.indicators {
        None => Vec::new(),
        Some(settings) => {
            let victim = Victim::ensemble(model);
            let surrogate = surrogate.map(Victim::ensemble);
            indicator_budgets(&s.attacks)
                .into_iter()
                .map(|eps| {
                    count_indicators(
                        &victim,
                        surrogate.as_ref().map(|v| v as &dyn Classifier),
                        &data,
                        batches.start,
                        eps,
                        settings,
                        s.batch_size,
                        s.seed,
                        device,
                    )
                })
                .collect::<Result<_>>()?
        }
    };
    Ok(PartialEval {
        shard,
        key,
        examples,
        clean,
        attacks,
        indicators,
    })
}

/// Saves a shard's partial result into `run`, atomically, holding the shard's own lock (two
/// shards of one run may run at once; the same shard twice may not).
pub fn save_partial(run: &Path, part: &PartialEval) -> Result<PathBuf> {
    let dir = part.shard.dir(run);
    let _lock = crate::lock::RunLock::acquire(&dir, "eval --shard")?;
    let path = part.shard.path(run);
    crate::io::write_json(&path, part)?;
    Ok(path)
}

/// Reads every partial result of `run` (`eval-shards/*-of-*/partial.json`), checked to be the n
/// shards of one evaluation, in order.
pub fn load_partials(run: &Path) -> Result<Vec<PartialEval>> {
    let dir = run.join(SHARD_DIR);
    let entries =
        std::fs::read_dir(&dir).with_context(|| format!("{} holds no shards", dir.display()))?;
    let mut found: Vec<(Shard, PathBuf)> = Vec::new();
    for entry in entries {
        let name = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        let Some(shard) = name
            .split_once("-of-")
            .and_then(|(i, n)| format!("{i}/{n}").parse::<Shard>().ok())
        else {
            continue;
        };
        let path = shard.path(run);
        if path.exists() {
            found.push((shard, path));
        }
    }
    found.sort_by_key(|(s, _)| (s.count, s.index));
    let Some((first, first_path)) = found.first().cloned() else {
        bail!(
            "{} holds no shard results (I-of-N/partial.json)",
            dir.display()
        );
    };
    if let Some((other, path)) = found.iter().find(|(s, _)| s.count != first.count) {
        bail!(
            "{} is shard {first} but {} is shard {other}: shards of {} and of {} overlap; remove \
             the stale ones",
            first_path.display(),
            path.display(),
            first.count,
            other.count
        );
    }
    if let Some(i) = (0..first.count).find(|&i| found.iter().all(|(s, _)| s.index != i)) {
        bail!(
            "shard {i}/{} is missing: {} does not exist",
            first.count,
            Shard {
                index: i,
                count: first.count
            }
            .path(run)
            .display()
        );
    }
    let mut parts: Vec<PartialEval> = Vec::with_capacity(found.len());
    for (shard, path) in &found {
        let part: PartialEval = crate::io::read_json(path)?;
        ensure!(
            part.shard == *shard,
            "{} holds shard {}, not {shard}; the file was moved",
            path.display(),
            part.shard
        );
        if let Some(p0) = parts.first()
            && let Some((field, was, now)) = crate::io::first_difference(&p0.key, &part.key)?
        {
            bail!(
                "{}: `key.{field}` is {now}, but {} has {was}; the shards are of different \
                 evaluations",
                path.display(),
                first_path.display()
            );
        }
        parts.push(part);
    }
    Ok(parts)
}

/// Puts the partial results of shards 0..n (in order) together into the report an unsharded
/// evaluation gives; `seconds` are the shards' sums. Files named in errors are those of `run`.
pub fn merge(run: &Path, parts: &[PartialEval]) -> Result<EvalReport> {
    let Some(first) = parts.first() else {
        bail!("no shards to merge");
    };
    let key = &first.key;
    let s = &key.settings;
    let batches = key.examples.div_ceil(s.batch_size.max(1));
    let mut clean: Option<CleanCounts> = None;
    let mut success = vec![Vec::<Vec<bool>>::new(); s.attacks.len()];
    let mut correct = vec![Vec::<Vec<bool>>::new(); s.attacks.len()];
    let mut verdicts = vec![Vec::<Verdict>::new(); s.attacks.len()];
    let mut seconds = vec![vec![0f64; s.seeds]; s.attacks.len()];
    let budgets = match s.indicators {
        Some(_) => indicator_budgets(&s.attacks),
        None => Vec::new(),
    };
    let mut indicators: Option<Vec<IndicatorCounts>> = None;
    for (i, part) in parts.iter().enumerate() {
        let file = part.shard.path(run);
        let bad = |what: String| anyhow::anyhow!("{}: {what}; the file is corrupt", file.display());
        if part.shard.index != i || part.shard.count != parts.len() {
            return Err(bad(format!(
                "shard {} stands at place {i} of {}",
                part.shard,
                parts.len()
            )));
        }
        let b = part.shard.batches(batches)?;
        let want = b.start * s.batch_size..(b.end * s.batch_size).min(key.examples);
        if part.examples != want || part.clean.examples != want.len() {
            return Err(bad(format!(
                "`examples` is {:?}, but shard {} of {} examples is {want:?}",
                part.examples, part.shard, key.examples
            )));
        }
        if part.attacks.len() != s.attacks.len() {
            return Err(bad(format!(
                "{} attacks, but the key lists {}",
                part.attacks.len(),
                s.attacks.len()
            )));
        }
        match &mut clean {
            None => clean = Some(part.clean.clone()),
            Some(c) => c.extend(&part.clean).map_err(|e| bad(e.to_string()))?,
        }
        let at: Vec<f64> = part.indicators.iter().map(|c| c.eps).collect();
        if at != budgets || part.indicators.iter().any(|c| c.examples != want.len()) {
            return Err(bad(format!(
                "`indicators` are counted at ε {at:?}, but the key asks for {budgets:?} on {} examples",
                want.len()
            )));
        }
        match &mut indicators {
            None => indicators = Some(part.indicators.clone()),
            Some(sum) => {
                for (total, c) in sum.iter_mut().zip(&part.indicators) {
                    total.add(c).map_err(|e| bad(e.to_string()))?;
                }
            }
        }
        for (a, attack) in part.attacks.iter().enumerate() {
            if attack.runs.len() != s.seeds {
                return Err(bad(format!(
                    "`attacks[{a}]` has {} runs for {} seeds",
                    attack.runs.len(),
                    s.seeds
                )));
            }
            if attack.stages != first.attacks[a].stages {
                return Err(bad(format!(
                    "`attacks[{a}].stages` differ from those of shard 0 of {}",
                    parts.len()
                )));
            }
            for (r, run_) in attack.runs.iter().enumerate() {
                let ok = unflags(&run_.success, &file)?;
                let still = unflags(&run_.correct, &file)?;
                if ok.len() != want.len() || still.len() != want.len() {
                    return Err(bad(format!(
                        "`attacks[{a}].runs[{r}]` has outcomes of {} examples, not {}",
                        ok.len().min(still.len()),
                        want.len()
                    )));
                }
                if r == 0 {
                    let v = unverdict_chars(&run_.verdicts, attack.stages.len(), &file)?;
                    let expected = if attack.stages.is_empty() {
                        0
                    } else {
                        want.len()
                    };
                    if v.len() != expected {
                        return Err(bad(format!(
                            "`attacks[{a}].runs[0]` has verdicts of {} examples for {} stages",
                            v.len(),
                            attack.stages.len()
                        )));
                    }
                    verdicts[a].extend(v);
                }
                if i == 0 {
                    success[a].push(ok);
                    correct[a].push(still);
                } else {
                    success[a][r].extend(ok);
                    correct[a][r].extend(still);
                }
                seconds[a][r] += run_.seconds;
            }
        }
    }
    let clean = clean.expect("at least one shard");
    let robust = s
        .attacks
        .iter()
        .enumerate()
        .map(|(a, spec)| {
            let description = first.attacks[a].description.clone();
            let result = |r: usize| {
                RobustResult::from_flags(
                    spec,
                    s.targeted,
                    description.clone(),
                    &success[a][r],
                    &correct[a][r],
                    seconds[a][r],
                )
            };
            let mut main = result(0).with_stages(&first.attacks[a].stages, &verdicts[a]);
            main.repeats = (1..s.seeds).map(|r| result(r).accuracy).collect();
            main
        })
        .collect::<Vec<_>>();
    let indicators = (indicators.unwrap_or_default().iter())
        .map(|c| c.judge(reported_accuracy(&s.attacks, &robust, c.eps)))
        .collect();
    Ok(EvalReport {
        label: key.label.clone(),
        clean: clean.result(),
        robust,
        indicators,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip_and_a_stage_out_of_range_is_refused() {
        let v = [
            Verdict::Clean,
            Verdict::BrokenBy(0),
            Verdict::Robust,
            Verdict::BrokenBy(3),
        ];
        let file = Path::new("partial.json");
        assert_eq!(verdict_chars(&v).unwrap(), "c0r3");
        assert_eq!(unverdict_chars("c0r3", 4, file).unwrap(), v);
        let err = unverdict_chars("c0r3", 3, file).unwrap_err().to_string();
        assert!(err.starts_with("partial.json: a verdict must be"), "{err}");
        assert!(unverdict_chars("c?", 4, file).is_err());
        // Stages 12 and 27 would be `c` and `r` in base 36: more than 10 stages are refused.
        let err = verdict_chars(&[Verdict::BrokenBy(12)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 10 cascade stages"), "{err}");
        assert_eq!(verdict_chars(&[Verdict::BrokenBy(9)]).unwrap(), "9");
    }
}
