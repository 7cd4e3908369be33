//! The `adp` command line: a thin layer over the library. Each subcommand's options and handler
//! live in a file of [`cli`]; this file holds the command enum, the progress display and the
//! dispatch.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use adp::loss::alpha_for_confidence;
use adp::paper::figures::rebuild;
use adp::progress::{Progress, Task};

use cli::attack::AttackArgs;
use cli::bench::BenchArgs;
use cli::data::DataCommand;
use cli::eval::EvalArgs;
use cli::interop::{ExportArgs, ImportArgs};
use cli::reproduce::ReproduceArgs;
use cli::train::TrainArgs;

/// Ensembles trained with the Adaptive Diversity Promoting regulariser (Pang et al., ICML 2019),
/// and the attacks that measure their robustness.
#[derive(Parser, Debug)]
#[command(name = "adp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Keep subnormal floats in CPU arithmetic, as IEEE 754 prescribes, instead of flushing them
    /// to zero (the default; `adp::denormals`): much slower wherever a softmax saturates.
    #[arg(long, global = true)]
    keep_denormals: bool,
    /// Leave glibc malloc's thresholds as they are, so that freed memory goes back to the system
    /// at once, instead of keeping it for the next step (the default; `adp::malloc`).
    #[arg(long, global = true)]
    malloc_defaults: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Data sets: `adp data fetch mnist`.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Train an ECE or ADP ensemble (Algorithm 1) into a run directory.
    Train(TrainArgs),
    /// Clean error (Table 1) and accuracy under attack (Table 2) of a trained run.
    Eval(EvalArgs),
    /// Attack a trained run's test images and save the adversarial examples (safetensors).
    Attack(AttackArgs),
    /// Regenerate an experiment of the paper from scratch: `adp reproduce mnist|transfer|detect|ed-histogram|tsne`,
    /// or one of its tables: `adp reproduce table1|table2|table3|table4|table5`.
    Reproduce(ReproduceArgs),
    /// Rebuild the tables and figures of `adp reproduce` output directories from their saved
    /// JSON results, without training or attacking.
    Report {
        /// Output directories of `adp reproduce`.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Measure training, inference and attack throughput and peak memory; prints a table.
    Bench(BenchArgs),
    /// Write a run's weights as a PyTorch state dict for interop/adp_models.py (`.pt` or
    /// `.safetensors`, described by `<out>.json`).
    Export(ExportArgs),
    /// Turn a PyTorch state dict of interop/adp_models.py's Ensemble into a run directory that
    /// `adp eval` and `adp attack` accept.
    Import(ImportArgs),
    /// Expand a grid of training configurations into run directories; print or run its jobs.
    Sweep(cli::sweep::SweepArgs),
    /// Combine the shards of `adp eval RUN --shard i/n` into the run's eval.json.
    Merge(cli::shard::MergeArgs),
    /// Solve Eq. 7 (Theorem 2) for α given K, L and the target confidence F_y.
    Alpha {
        /// Number of members K.
        #[arg(long)]
        members: usize,
        /// Number of classes L.
        #[arg(long)]
        classes: usize,
        /// Target confidence F_y on the true label, in (1/L, 1).
        #[arg(long, allow_negative_numbers = true)]
        confidence: f64,
    },
}

/// The library's progress on stderr: an indicatif bar per task (hidden when stderr is not a
/// terminal) and one line per note.
struct StderrProgress;

impl Progress for StderrProgress {
    fn start(&self, len: u64, name: &str) -> Box<dyn Task> {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Box::new(Bar(bar))
    }

    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

struct Bar(ProgressBar);

impl Task for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn set_message(&self, message: String) {
        self.0.set_message(message);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn main() -> ExitCode {
    // Every device adp computes on is named; burn's default device, on which it loads optimizer
    // states, is the CPU unless the user says otherwise (see `adp::device::CPU_BURN_DEVICE`).
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: the first statement of `main`: no other thread exists that could read the
        // environment concurrently.
        unsafe { std::env::set_var("BURN_DEVICE", adp::device::CPU_BURN_DEVICE) };
    }
    // This thread is one of rayon's, where the kernels' parallel loops start without a round
    // trip through the scheduler (`adp::threads`).
    adp::threads::join_global_pool();
    adp::progress::install(StderrProgress);
    let matches = Cli::command().get_matches();
    let result = Cli::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|cli| run(cli, &matches));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<()> {
    if !cli.keep_denormals {
        adp::denormals::flush_to_zero();
    }
    if !cli.malloc_defaults {
        adp::malloc::keep_freed_memory();
    }
    match cli.command {
        Command::Data { command } => cli::data::run_data(command),
        Command::Sweep(a) => cli::sweep::run_sweep(a),
        Command::Merge(a) => cli::shard::run_merge(a),
        Command::Train(a) => cli::train::run_train(a),
        Command::Eval(a) => {
            let sub = matches
                .subcommand_matches("eval")
                .expect("the eval subcommand");
            cli::eval::run_eval(a, sub)
        }
        Command::Attack(a) => cli::attack::run_attack(a),
        Command::Bench(a) => cli::bench::run_bench(a),
        Command::Reproduce(a) => cli::reproduce::run_reproduce(a),
        Command::Export(a) => cli::interop::run_export(a),
        Command::Import(a) => cli::interop::run_import(a),
        Command::Report { dirs } => {
            for dir in dirs {
                let done = rebuild(&dir)?;
                println!("{}: rebuilt {}", dir.display(), done.join(", "));
            }
            Ok(())
        }
        Command::Alpha {
            members,
            classes,
            confidence,
        } => {
            println!("{:.6}", alpha_for_confidence(members, classes, confidence)?);
            Ok(())
        }
    }
}
