//! `adp eval`: clean error and accuracy under attack of a trained run, with the indicators of a
//! failed evaluation.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::ArgMatches;

use adp::attack::AttackSpec;
use adp::eval::indicators::{
    Failure, IndicatorSettings, Indicators, indicator_budgets, indicators, reported_accuracy,
};
use adp::eval::resume::{RESUME_DIR, Resume};
use adp::eval::shard::weights_sha256;
use adp::eval::store::{self, ResultKey};
use adp::eval::{EvalReport, clean, robust};

use super::common::{AttackList, AttackParams, Loaded, TestSet, load_for_eval};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The run directory written by `adp train`.
    pub run: PathBuf,
    #[command(flatten)]
    pub attacks: AttackList,
    #[command(flatten)]
    pub params: AttackParams,
    /// Attack random target classes instead of any wrong class.
    #[arg(long)]
    pub targeted: bool,
    /// Repeat every attack with seeds --seed, --seed + 1, … (N in all) and report the spread of
    /// its accuracy.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Skip the indicators of a failed evaluation (Square, an ε sweep to 1 and random noise at
    /// each ε, with APGD-CE of --steps iterations and Square of --queries queries).
    #[arg(long)]
    pub no_indicators: bool,
    /// A run trained on the same data set (an undefended one, say) whose APGD-CE examples the
    /// indicators transfer to this run: they flag an evaluation whose white-box attacks do worse.
    #[arg(long, value_name = "RUN")]
    pub surrogate: Option<PathBuf>,
    /// Evaluate only shard i of n of the test set (`0/4` … `3/4`), saved to
    /// RUN/eval-shards/I-of-N/partial.json; `adp merge RUN` combines the n shards.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<adp::eval::shard::Shard>,
    #[command(flatten)]
    pub on: TestSet,
}

pub fn run_eval(a: EvalArgs, m: &ArgMatches) -> Result<()> {
    if let Some(shard) = a.shard {
        return super::shard::run_eval_shard(a, m, shard);
    }
    let specs = a.attacks.specs(&a.params, m)?;
    ensure!(a.seeds >= 1, "--seeds must be at least 1");
    let (
        Loaded {
            model,
            config,
            test,
        },
        device,
    ) = load_for_eval(&a.run, &a.on)?;
    // eval.json and eval.csv are written into the run: hold it until they are.
    let _lock = adp::lock::RunLock::acquire(&a.run, "eval")?;
    let on = &a.on;
    // Finished cascade stages, kept until the report is saved: a killed `adp eval` run again
    // resumes in the middle of AutoAttack.
    let resume = Resume {
        dir: a.run.join(RESUME_DIR),
        weights_sha256: weights_sha256(&a.run)?,
    };
    let mut report = EvalReport {
        label: config.label(),
        clean: clean(&model, &test, on.batch_size, &device),
        robust: Vec::new(),
        indicators: Vec::new(),
    };
    eprintln!(
        "clean: ensemble error {:.2}%",
        100.0 * report.clean.ensemble_error
    );
    for spec in &specs {
        let run = |seed| {
            robust(
                &model,
                &test,
                spec,
                a.targeted,
                on.batch_size,
                seed,
                Some(&resume),
                &device,
            )
        };
        let mut result = run(on.seed)?;
        eprintln!(
            "{}: accuracy {:.2}%",
            result.description,
            100.0 * result.accuracy
        );
        for s in 1..a.seeds as u64 {
            result.repeats.push(run(on.seed + s)?.accuracy);
        }
        report.robust.push(result);
    }
    if !a.no_indicators {
        report.indicators = measure_indicators(&a, &specs, &report, &model, &test, &device)?;
    }
    // Printed before saving: a failed save (a full disk) loses no result.
    println!(
        "{}",
        adp::report::comparison_markdown(std::slice::from_ref(&report))
    );
    for r in &report.robust {
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let (mean, sd) = r.spread();
        let over_seeds = if r.repeats.is_empty() {
            String::new()
        } else {
            let all = std::iter::once(r.accuracy).chain(r.repeats.iter().copied());
            let (lo, hi) = all.fold((1f64, 0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
            format!(
                "; over {} seeds mean {} ± {} (s.d.), range {}-{}",
                r.repeats.len() + 1,
                pct(mean),
                pct(sd),
                pct(lo),
                pct(hi)
            )
        };
        println!(
            "{}: accuracy {} ± {} (binomial s.e., {} examples){over_seeds}",
            r.description,
            pct(r.accuracy),
            pct(r.std_error),
            r.examples
        );
        for stage in &r.stages {
            println!(
                "  after {}: accuracy {} ({} broken by it)",
                stage.attack,
                pct(stage.accuracy),
                stage.broken
            );
        }
    }
    for ind in &report.indicators {
        for line in indicator_lines(&a.run, ind) {
            println!("{line}");
        }
    }
    report.save(&a.run).with_context(|| {
        format!(
            "the results printed above were not saved to {}",
            a.run.join("eval.json").display()
        )
    })?;
    resume.clear()?;
    if a.seeds == 1 {
        // Kept for `adp reproduce`, which reuses a result where it asks for the same measurement.
        let keys =
            ResultKey::for_attacks(&a.run, &test, &specs, a.targeted, on.seed, on.batch_size)?;
        for (key, result) in keys.iter().zip(&report.robust) {
            store::keep(&a.run, key, result).with_context(|| {
                format!(
                    "the results printed above were saved to {}, but not kept for `adp reproduce`",
                    a.run.join("eval.json").display()
                )
            })?;
        }
    }
    println!("written to {}/eval.json and eval.csv", a.run.display());
    Ok(())
}

/// The indicators at each distinct ε of the L∞ attacks evaluated, compared with the best
/// untargeted gradient attack evaluated at that ε.
fn measure_indicators(
    a: &EvalArgs,
    specs: &[AttackSpec],
    report: &EvalReport,
    model: &adp::model::Ensemble,
    test: &adp::data::Dataset,
    device: &burn::prelude::Device,
) -> Result<Vec<Indicators>> {
    let settings = indicator_settings(a);
    let surrogate = match &a.surrogate {
        Some(dir) => Some(load_surrogate(dir, &a.run, test, device)?),
        None => None,
    };
    let surrogate = surrogate.as_ref().map(adp::attack::Victim::ensemble);
    let victim = adp::attack::Victim::ensemble(model);
    indicator_budgets(specs)
        .into_iter()
        .map(|eps| {
            indicators(
                &victim,
                surrogate
                    .as_ref()
                    .map(|s| s as &dyn adp::attack::Classifier),
                test,
                eps,
                reported_accuracy(specs, &report.robust, eps),
                &settings,
                a.on.batch_size,
                a.on.seed,
                device,
            )
        })
        .collect()
}

/// The indicators' APGD-CE iterations (`--steps`) and Square queries (`--queries`).
pub(super) fn indicator_settings(a: &EvalArgs) -> IndicatorSettings {
    let default = IndicatorSettings::default();
    IndicatorSettings {
        apgd_iterations: a.params.steps.unwrap_or(default.apgd_iterations),
        square_queries: a.params.queries.unwrap_or(default.square_queries),
    }
}

/// The surrogate run of `--surrogate`, in evaluation mode; it must classify the images of `run`.
pub(super) fn load_surrogate(
    dir: &Path,
    run: &Path,
    test: &adp::data::Dataset,
    device: &burn::prelude::Device,
) -> Result<adp::model::Ensemble> {
    let (spec, model) = adp::train::checkpoint::load_run(dir, device)
        .with_context(|| format!("--surrogate {}", dir.display()))?;
    let (shape, classes) = (spec.member.input_shape, spec.member.num_classes);
    ensure!(
        shape == test.shape && classes == test.num_classes,
        "--surrogate {}: its members take {shape:?} images in {classes} classes, but {} is tested on {:?} images in {} classes; give a run trained on the same data set",
        dir.display(),
        run.display(),
        test.shape,
        test.num_classes
    );
    Ok(burn::module::Module::valid(&model))
}

/// The indicators' summary line and one line per indicator that fired, with what to run next.
pub(super) fn indicator_lines(run: &Path, ind: &Indicators) -> Vec<String> {
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let eps = ind.eps;
    let run = run.display();
    let sweep: Vec<String> = ind
        .sweep
        .iter()
        .map(|p| format!("{} {}", p.eps, pct(p.accuracy)))
        .collect();
    let mut lines = vec![format!(
        "indicators at ε = {eps} ({} examples): clean {}, gradient attacks {} ± {}, Square {}, random noise {}, APGD-CE sweep ε {}, zero gradients {}",
        ind.examples,
        pct(ind.clean_accuracy),
        pct(ind.gradient_accuracy),
        pct(ind.gradient_std_error),
        pct(ind.square_accuracy),
        pct(ind.noise_accuracy),
        sweep.join(", "),
        pct(ind.zero_gradient),
    )];
    if let Some(t) = ind.transfer_accuracy {
        lines[0].push_str(&format!(", transferred from the surrogate {}", pct(t)));
    }
    for failure in &ind.fired {
        lines.push(match failure {
            Failure::GradientFreeWins => format!(
                "FAILED EVALUATION? gradient-free Square leaves {} correct, the gradient attacks {}: the gradients mislead them; trust `adp eval {run} --attack autoattack --eps {eps}` and try `--attack adaptive --objective joint --eps {eps}`",
                pct(ind.square_accuracy),
                pct(ind.gradient_accuracy)
            ),
            Failure::AccuracyDoesNotVanish => format!(
                "FAILED EVALUATION? APGD-CE at ε = 1 leaves {} correct where any image is reachable: the attack cannot move the model; run `adp eval {run} --attack square --eps 1`",
                pct(ind.sweep.last().map_or(0.0, |p| p.accuracy))
            ),
            Failure::NoiseAsStrong => format!(
                "FAILED EVALUATION? random noise of size ε leaves {} correct, no more than the gradient attacks ({}): their steps do nothing; run `adp eval {run} --attack square --eps {eps}`",
                pct(ind.noise_accuracy),
                pct(ind.gradient_accuracy)
            ),
            Failure::ZeroGradients => format!(
                "FAILED EVALUATION? {} of the input gradients are exactly zero: a saturated softmax masks them; run `adp eval {run} --attack apgd-dlr --eps {eps}` (DLR is scale-invariant) and `--attack square --eps {eps}`",
                pct(ind.zero_gradient)
            ),
            Failure::TransferWins => format!(
                "FAILED EVALUATION? APGD-CE examples crafted on the surrogate leave {} correct, the white-box gradient attacks {}: this run's own gradients mislead; run `adp eval {run} --attack autoattack --eps {eps}` and `--attack adaptive --objective joint --eps {eps}`",
                pct(ind.transfer_accuracy.unwrap_or(0.0)),
                pct(ind.gradient_accuracy)
            ),
        });
    }
    if ind.fired.is_empty() {
        lines.push(format!(
            "no indicator of a failed evaluation fired at ε = {eps}"
        ));
    }
    lines
}
