//! `adp eval RUN --shard i/n` and `adp merge RUN` (library: [`adp::eval::shard`]).

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::ArgMatches;

use adp::eval::resume::Resume;
use adp::eval::shard::{
    EvalKey, EvalSettings, Shard, dataset_sha256, evaluate_shard, load_partials, merge,
    save_partial, weights_sha256,
};
use adp::lock::RunLock;

/// Combine the partial results of `adp eval RUN --shard i/n` (all n of them) into RUN/eval.json
/// and eval.csv, equal to an unsharded `adp eval` with the same options.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Run directories whose shards to merge.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

/// `adp eval` of one shard: the clean counts, every attack and the indicators' counts on the
/// shard's slice, saved to RUN/eval-shards/I-of-N/partial.json.
pub fn run_eval_shard(a: super::eval::EvalArgs, m: &ArgMatches, shard: Shard) -> Result<()> {
    let specs = a.attacks.specs(&a.params, m)?;
    ensure!(a.seeds >= 1, "--seeds must be at least 1");
    let (loaded, device) = super::common::load_for_eval(&a.run, &a.on)?;
    let surrogate = match (&a.surrogate, a.no_indicators) {
        (Some(dir), false) => Some((
            super::eval::load_surrogate(dir, &a.run, &loaded.test, &device)?,
            weights_sha256(dir)?,
        )),
        _ => None,
    };
    let key = EvalKey {
        label: loaded.config.label(),
        weights_sha256: weights_sha256(&a.run)?,
        examples: loaded.test.len(),
        test_sha256: dataset_sha256(&loaded.test),
        settings: EvalSettings {
            attacks: specs,
            targeted: a.targeted,
            seeds: a.seeds,
            seed: a.on.seed,
            batch_size: a.on.batch_size,
            indicators: (!a.no_indicators).then(|| super::eval::indicator_settings(&a)),
            surrogate_sha256: surrogate.as_ref().map(|(_, sha)| sha.clone()),
        },
    };
    let surrogate = surrogate.as_ref().map(|(model, _)| model);
    // The shard is this process's while it runs: its cascades keep their finished stages in
    // the shard's directory, so that a killed shard run again resumes where it was.
    let _lock = RunLock::acquire(&shard.dir(&a.run), "eval --shard")?;
    let resume = Resume {
        dir: shard.dir(&a.run).join("progress"),
        weights_sha256: key.weights_sha256.clone(),
    };
    let part = evaluate_shard(
        &loaded.model,
        surrogate,
        &loaded.test,
        key,
        shard,
        Some(&resume),
        &device,
    )
    .with_context(|| format!("shard {shard} of {}", a.run.display()))?;
    let path = save_partial(&a.run, &part)?;
    resume.clear()?;
    println!(
        "shard {shard}: test examples {}..{} ({}), clean errors of the ensemble {}; written to {}",
        part.examples.start,
        part.examples.end,
        part.examples.len(),
        part.clean.ensemble_wrong,
        path.display()
    );
    Ok(())
}

/// `adp merge`.
pub fn run_merge(a: MergeArgs) -> Result<()> {
    for run in &a.runs {
        let parts = load_partials(run)?;
        let report = merge(run, &parts)?;
        let _lock = adp::lock::RunLock::acquire(run, "merge")?;
        println!(
            "{}",
            adp::report::comparison_markdown(std::slice::from_ref(&report))
        );
        for ind in &report.indicators {
            for line in super::eval::indicator_lines(run, ind) {
                println!("{line}");
            }
        }
        report.save(run).with_context(|| {
            format!(
                "the merged results were not saved to {}",
                run.join("eval.json").display()
            )
        })?;
        adp::eval::store::keep_report(run, &parts[0].key, &report).with_context(|| {
            format!(
                "the merged results were saved to {}, but not kept for `adp reproduce`",
                run.join("eval.json").display()
            )
        })?;
        println!(
            "merged {} shards into {}/eval.json and eval.csv",
            parts.len(),
            run.display()
        );
    }
    Ok(())
}
