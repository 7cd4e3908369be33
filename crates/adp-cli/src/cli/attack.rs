//! `adp attack`: one attack on a trained run's test images, saved as adversarial examples.

use std::path::PathBuf;

use anyhow::Result;

use adp::attack::AttackKind;
use adp::eval::{AttackedSet, attack_dataset};

use super::common::{AttackParams, Loaded, TestSet, load_for_eval};

#[derive(clap::Args, Debug)]
pub struct AttackArgs {
    /// The run directory written by `adp train`.
    pub run: PathBuf,
    /// The attack.
    #[arg(long, value_enum)]
    pub attack: AttackKind,
    /// The attack's main parameter: budget ε in pixel units (fgsm, bim, pgd, mim), the fraction γ
    /// of changed pixels (jsma) or the constant c (cw, ead).
    #[arg(long, allow_negative_numbers = true)]
    pub eps: f64,
    #[command(flatten)]
    pub params: AttackParams,
    /// Attack random target classes instead of any wrong class.
    #[arg(long)]
    pub targeted: bool,
    /// Attack member i alone (0-based) instead of the whole ensemble.
    #[arg(long)]
    pub member: Option<usize>,
    /// Where to save the adversarial examples (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub on: TestSet,
}

pub fn run_attack(a: AttackArgs) -> Result<()> {
    let spec = a.params.spec(a.attack, a.eps);
    spec.validate()?;
    let (Loaded { model, test, .. }, device) = load_for_eval(&a.run, &a.on)?;
    let _lock = adp::lock::lock_if_inside(&a.run, &a.out, "attack")?;
    let on = &a.on;
    let set = attack_dataset(
        &model,
        &test,
        &spec,
        a.targeted,
        a.member,
        on.batch_size,
        on.seed,
        &device,
    )?;
    set.save(&a.out)?;
    let victim = a
        .member
        .map_or("the ensemble".to_string(), |k| format!("member {k}"));
    let mean = |f: fn(&adp::attack::Norms) -> f64| {
        set.norms.iter().map(f).sum::<f64>() / set.norms.len() as f64
    };
    println!(
        "{} on {victim}, {} test images, {:.1}s\nsuccess rate {:.2}%  ensemble accuracy {:.2}%\nmean perturbation: L0 {:.1}  L1 {:.3}  L2 {:.3}  Linf {:.4}\nsaved to {}",
        set.description,
        set.labels.len(),
        set.seconds,
        100.0 * AttackedSet::rate(&set.success),
        100.0 * AttackedSet::rate(&set.ensemble_correct),
        mean(|n| n.l0),
        mean(|n| n.l1),
        mean(|n| n.l2),
        mean(|n| n.linf),
        a.out.display()
    );
    Ok(())
}
