//! Attacks run over a whole data set in batches: the adversarial examples, their outcomes and
//! the robust accuracy (Table 2).

use std::path::Path;

use anyhow::{Result, ensure};
use burn::prelude::*;

use super::RobustResult;
use crate::attack::{
    AttackSpec, Classifier, Goal, MainParameter, Norms, Verdict, Victim, random_targets,
};
use crate::data::{Batcher, Dataset};
use crate::model::Ensemble;
use crate::tensor::floats;

use super::resume::{BatchKey, Resume};
use super::shard::dataset_sha256;

/// The seed of the random draws (random starts, Square's squares, …) of batch `batch` (0-based,
/// counted from the first test image) of an evaluation seeded with `seed`. Each batch reseeds the
/// device's generator with it, so a batch's adversarial examples depend on the seed and the
/// batch's place in the test set only, never on which batches ran before it in the same process:
/// an evaluation split into shards at batch boundaries ([`super::shard`]) gives the same examples.
pub fn batch_seed(seed: u64, batch: usize) -> u64 {
    seed ^ (batch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Everything one attack produced over a data set: what `adp attack` saves.
#[derive(Debug, Clone)]
pub struct AttackedSet {
    /// Description of the attack with every parameter.
    pub description: String,
    /// Adversarial images, `len × C × H × W` pixels in `[0, 1]`.
    pub adversarial: Vec<f32>,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// True labels.
    pub labels: Vec<i64>,
    /// Target classes of a targeted attack.
    pub targets: Option<Vec<i64>>,
    /// Whether the attack met its goal on the attacked model (the ensemble or one member).
    pub success: Vec<bool>,
    /// Whether the whole ensemble still classifies each adversarial example correctly.
    pub ensemble_correct: Vec<bool>,
    /// Size of each perturbation.
    pub norms: Vec<Norms>,
    /// The stages of a cascade (`autoattack`, `apgd-cascade`), in order; empty otherwise.
    pub stages: Vec<String>,
    /// For a cascade, which stage first met the goal on each example; empty otherwise.
    pub verdicts: Vec<Verdict>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl AttackedSet {
    /// Fraction of `flags` that are set.
    pub fn rate(flags: &[bool]) -> f64 {
        flags.iter().filter(|f| **f).count() as f64 / flags.len().max(1) as f64
    }

    /// The adversarial images as a data set labelled with each attack's goal class: the target
    /// of a targeted attack, the true label otherwise.
    pub fn into_goal_dataset(self, num_classes: usize) -> Result<Dataset> {
        let goal = self.targets.unwrap_or(self.labels);
        let labels = goal.iter().map(|&l| l as u8).collect();
        Dataset::new(self.adversarial, labels, self.shape, num_classes)
    }

    /// Saves the examples as safetensors: `adversarial` `[N, C, H, W]` f32, `labels` `[N]` i64,
    /// `targets` `[N]` i64 (targeted only), `success` and `ensemble_correct` `[N]` u8, and
    /// `norms` `[N, 4]` f32 (L0, L1, L2, L∞); the attack's description is in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        use safetensors::tensor::{Dtype, TensorView};
        let n = self.labels.len();
        let [c, h, w] = self.shape;
        let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let li = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let flags = |v: &[bool]| v.iter().map(|&b| b as u8).collect::<Vec<u8>>();
        let norms: Vec<f32> = self
            .norms
            .iter()
            .flat_map(|m| [m.l0, m.l1, m.l2, m.linf])
            .map(|x| x as f32)
            .collect();
        let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            (
                "adversarial",
                Dtype::F32,
                vec![n, c, h, w],
                le(&self.adversarial),
            ),
            ("labels", Dtype::I64, vec![n], li(&self.labels)),
            ("success", Dtype::U8, vec![n], flags(&self.success)),
            (
                "ensemble_correct",
                Dtype::U8,
                vec![n],
                flags(&self.ensemble_correct),
            ),
            ("norms", Dtype::F32, vec![n, 4], le(&norms)),
        ];
        if let Some(t) = &self.targets {
            tensors.push(("targets", Dtype::I64, vec![n], li(t)));
        }
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                Ok((*name, TensorView::new(*dtype, shape.clone(), bytes)?))
            })
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        let meta =
            std::collections::HashMap::from([("attack".to_string(), self.description.clone())]);
        let bytes = crate::io::canonical_safetensors(safetensors::serialize(views, Some(meta))?)?;
        crate::io::atomic_write(path, &bytes)
    }
}

/// Runs one attack over `data`, on the whole ensemble or on member `member` alone, and keeps
/// everything it produced. `targeted` draws a random wrong target per example from `seed`.
/// Batch i's random draws come from [`batch_seed`]`(seed, i)`.
#[allow(clippy::too_many_arguments)]
pub fn attack_dataset(
    model: &Ensemble,
    data: &Dataset,
    spec: &AttackSpec,
    targeted: bool,
    member: Option<usize>,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<AttackedSet> {
    attack_batches(
        model, data, spec, targeted, member, batch_size, seed, 0, None, device,
    )
}

/// [`attack_dataset`] on `data`, a slice of a test set that starts at its batch `first_batch`:
/// batch i of `data` draws its randomness (random starts, targets) as batch `first_batch + i` of
/// the whole set does, so the slices' results put together are those of the whole set.
/// With `resume`, a cascade keeps each finished stage of each batch there and takes the stages
/// already kept for the same batch instead of running them ([`super::resume`]).
#[allow(clippy::too_many_arguments)]
pub fn attack_batches(
    model: &Ensemble,
    data: &Dataset,
    spec: &AttackSpec,
    targeted: bool,
    member: Option<usize>,
    batch_size: usize,
    seed: u64,
    first_batch: usize,
    resume: Option<&Resume>,
    device: &Device,
) -> Result<AttackedSet> {
    spec.validate()?;
    if let Some(k) = member {
        ensure!(
            k < model.len(),
            "member {k} does not exist: the ensemble has members 0..{}",
            model.len() - 1
        );
    }
    let attack = spec.build();
    let ensemble = Victim::ensemble(model);
    let victim = member.map_or(Victim::ensemble(model), |k| Victim::member(model, k));
    let batcher = Batcher::sequential(data, batch_size);
    let bar = crate::progress::start(batcher.num_batches() as u64, &attack.name());
    let start = std::time::Instant::now();
    let mut set = AttackedSet {
        description: attack.name(),
        adversarial: Vec::with_capacity(data.images.len()),
        shape: data.shape,
        labels: Vec::with_capacity(data.len()),
        targets: targeted.then(Vec::new),
        success: Vec::with_capacity(data.len()),
        ensemble_correct: Vec::with_capacity(data.len()),
        norms: Vec::with_capacity(data.len()),
        stages: attack.stage_names(),
        verdicts: Vec::new(),
        seconds: 0.0,
    };
    for (i, batch) in batcher.iter(device).enumerate() {
        let global = first_batch + i;
        device.seed(batch_seed(seed, global));
        let goal = if targeted {
            Goal::Targeted(random_targets(
                &batch.labels,
                data.num_classes,
                seed + global as u64,
            ))
        } else {
            Goal::Untargeted(batch.labels.clone())
        };
        // Only a cascade has stages to keep.
        let (out, verdicts) = match resume.filter(|_| !set.stages.is_empty()) {
            None => attack.run_verdicts(&victim, batch.images, &goal),
            Some(resume) => {
                let first = i * batch_size;
                let key = BatchKey {
                    weights_sha256: resume.weights_sha256.clone(),
                    batch_sha256: dataset_sha256(
                        &data.slice(first..first + batch.labels.dims()[0]),
                    ),
                    batch: global,
                    batch_size,
                    attack: spec.clone(),
                    targeted,
                    seed,
                };
                let stages = resume.batch(key)?;
                let kept = stages.kept();
                if kept > 0 {
                    crate::progress::note(&format!(
                        "{}: batch {global}: resuming after the {kept} finished stages kept in {}",
                        set.description,
                        stages.dir().display()
                    ));
                }
                attack.run_resumable(&victim, batch.images, &goal, &stages)?
            }
        };
        ensure!(
            out.success.len() == batch.labels.dims()[0],
            "attack returned a wrong batch size"
        );
        let pred = ensemble
            .log_probs(out.adversarial.clone())
            .argmax(1)
            .flatten::<1>(0, 1);
        set.ensemble_correct
            .extend(crate::attack::bools(pred.equal(batch.labels.clone())));
        if let (Some(t), Goal::Targeted(goal_t)) = (set.targets.as_mut(), &goal) {
            t.extend(
                goal_t
                    .to_data()
                    .try_into_vec_as::<i64>()
                    .expect("int targets"),
            );
        }
        set.labels.extend(
            batch
                .labels
                .into_data()
                .try_into_vec_as::<i64>()
                .expect("int labels"),
        );
        let adversarial = floats::<f32, _>(out.adversarial);
        check_threat_model(
            spec,
            &set.description,
            &adversarial,
            &out.norms,
            set.success.len(),
        )?;
        set.adversarial.extend(adversarial);
        set.success.extend(out.success);
        set.norms.extend(out.norms);
        set.verdicts.extend(verdicts.into_iter().flatten());
        bar.inc(1);
    }
    bar.finish();
    set.seconds = start.elapsed().as_secs_f64();
    Ok(set)
}

/// Slack of the ε-ball check: f32 rounding of `x0 + ε − x0`.
const EPS_SLACK: f64 = 1e-5;

/// Checks that one batch of adversarial examples keeps to the threat model: every pixel in
/// `[0, 1]`, and for the L∞ attacks every perturbation within ε. An attack that leaves either has
/// computed something wrong, most likely on its backend, and its accuracy would overstate its
/// strength; so the evaluation stops instead of reporting it. `first` is the index of the batch's
/// first example in the data set.
fn check_threat_model(
    spec: &AttackSpec,
    name: &str,
    adversarial: &[f32],
    norms: &[Norms],
    first: usize,
) -> Result<()> {
    let per_example = adversarial.len() / norms.len().max(1);
    if let Some(i) = adversarial.iter().position(|p| !(0.0..=1.0).contains(p)) {
        anyhow::bail!(
            "{name} returned pixel {} outside [0, 1] in test example {}: the attack computed a \
             wrong result; rerun with --device cpu, and report it if that fails too",
            adversarial[i],
            first + i / per_example
        );
    }
    let outside = norms
        .iter()
        .enumerate()
        .find(|(_, n)| n.linf > spec.eps + EPS_SLACK);
    if let (MainParameter::Eps, Some((i, n))) = (spec.kind.main_parameter(), outside) {
        anyhow::bail!(
            "{name} moved test example {} by {} in L∞, outside its ε = {}: the attack computed \
             a wrong result; rerun with --device cpu, and report it if that fails too",
            first + i,
            n.linf,
            spec.eps
        );
    }
    Ok(())
}

/// Runs one attack over `data` against the ensemble and measures its accuracy on the result:
/// the fraction still classified correctly (untargeted) or not moved to the target (targeted),
/// and for a cascade the accuracy after each of its stages.
/// With `resume`, cascades resume after their kept stages ([`attack_batches`]).
#[allow(clippy::too_many_arguments)]
pub fn robust(
    model: &Ensemble,
    data: &Dataset,
    spec: &AttackSpec,
    targeted: bool,
    batch_size: usize,
    seed: u64,
    resume: Option<&Resume>,
    device: &Device,
) -> Result<RobustResult> {
    let set = attack_batches(
        model, data, spec, targeted, None, batch_size, seed, 0, resume, device,
    )?;
    Ok(RobustResult::from_flags(
        spec,
        targeted,
        set.description,
        &set.success,
        &set.ensemble_correct,
        set.seconds,
    )
    .with_stages(&set.stages, &set.verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::AttackKind;

    fn norms(linf: f64) -> Norms {
        Norms {
            l0: 1.0,
            l1: linf,
            l2: linf,
            linf,
        }
    }

    #[test]
    fn an_example_outside_the_eps_ball_or_the_pixel_range_stops_the_evaluation() {
        let pgd = AttackSpec::new(AttackKind::Pgd, 0.1);
        let ok = [norms(0.1 + 1e-7), norms(0.05)];
        assert!(check_threat_model(&pgd, "PGD", &[0.0, 1.0], &ok, 0).is_ok());
        let far = [norms(0.05), norms(0.6)];
        let e = check_threat_model(&pgd, "PGD", &[0.0, 1.0], &far, 64).unwrap_err();
        assert!(e.to_string().contains("test example 65 by 0.6"), "{e}");
        let e = check_threat_model(&pgd, "PGD", &[0.5, 1.5], &ok, 0).unwrap_err();
        assert!(
            e.to_string()
                .contains("pixel 1.5 outside [0, 1] in test example 1"),
            "{e}"
        );
        // C&W has no ε: only the pixel range is checked.
        let cw = AttackSpec::new(AttackKind::Cw, 0.1);
        assert!(check_threat_model(&cw, "CW", &[0.0, 1.0], &far, 0).is_ok());
    }
}
