//! The `adp` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use adp::attack::{AttackKind, AttackSpec, Objective};
use adp::data::{DatasetKind, Split, fetch, load_idx_dataset};
use adp::device::DeviceKind;
use adp::eval::{EvalReport, clean, robust};
use adp::loss::{AdpConfig, alpha_for_confidence};
use adp::model::ModelKind;
use adp::reproduce::{Preset, ReproduceConfig, reproduce};
use adp::train::checkpoint::load_run;
use adp::train::{FreezeConfig, Method, TrainConfig, train};

/// Ensembles trained with the Adaptive Diversity Promoting regulariser (Pang et al., ICML 2019),
/// and the attacks that measure their robustness.
#[derive(Parser, Debug)]
#[command(name = "adp", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Regenerate an experiment of the paper from scratch: `adp reproduce mnist`.
    Reproduce(ReproduceArgs),
    /// Solve Eq. 7 (Theorem 2) for α given K, L and the target confidence F_y.
    Alpha {
        /// Number of members K.
        #[arg(long)]
        members: usize,
        /// Number of classes L.
        #[arg(long)]
        classes: usize,
        /// Target confidence F_y on the true label, in (1/L, 1).
        #[arg(long)]
        confidence: f64,
    },
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Download and verify a data set (SHA-256 of every file).
    Fetch {
        /// Which data set.
        dataset: DatasetKind,
        /// Target directory (default: data/<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Objective: ece (Eq. 2) or adp (Eq. 5).
    #[arg(long, value_enum, default_value = "adp")]
    method: Method,
    /// Weight α of the ensemble entropy.
    #[arg(long, default_value_t = 2.0)]
    alpha: f64,
    /// Weight β of the log ensemble diversity.
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    /// Training temperature T (App. B.2).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Number of members K (>= 2).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Member architecture.
    #[arg(long, value_enum, default_value = "resnet20")]
    model: ModelKind,
    /// Data set.
    #[arg(long, value_enum, default_value = "mnist")]
    dataset: DatasetKind,
    /// Directory of the data set (default: data/<dataset>).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Epochs (0-based) at which the learning rate is multiplied by 0.1.
    #[arg(long, value_delimiter = ',', default_values_t = [15, 30])]
    lr_drops: Vec<usize>,
    /// Per-member learning-rate multipliers (Algorithm 1), one per member.
    #[arg(long, value_delimiter = ',')]
    member_lr: Vec<f64>,
    /// Freeze a member after this many epochs without progress (0: never).
    #[arg(long, default_value_t = 0)]
    freeze_patience: usize,
    /// L2 penalty on convolution kernels.
    #[arg(long, default_value_t = 1e-4)]
    l2: f64,
    /// Seed of initialisation and batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Device (backend) to train on.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Run directory to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the interrupted run in this directory with its saved configuration.
    #[arg(long)]
    resume: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct EvalArgs {
    /// The run directory written by `adp train`.
    run: PathBuf,
    /// An attack; follow each by its --eps list: `--attack fgsm --eps 0.1,0.2 --attack pgd --eps 0.1`.
    #[arg(long, value_enum, action = clap::ArgAction::Append)]
    attack: Vec<AttackKind>,
    /// Budgets ε (pixel units) for the preceding --attack, comma-separated.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_negative_numbers = true)]
    eps: Vec<f64>,
    /// Iterations of the iterative attacks (BIM/PGD: 10 as in the paper; APGD and autoattack:
    /// 100; adaptive: length of the last stage, 200).
    #[arg(long, visible_alias = "iterations")]
    steps: Option<usize>,
    /// Step size of BIM/PGD (paper: ε/10) and adaptive (ε/20); APGD sets its own.
    #[arg(long)]
    step_size: Option<f64>,
    /// Random restarts of every iterative attack (adaptive: 5, others: 1).
    #[arg(long)]
    restarts: Option<usize>,
    /// Loss ascended by BIM, PGD and adaptive (default: cross-entropy on the log of the mean
    /// softmax; mean-logits: on the averaged logits; joint: sum of the members' losses).
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// Attack random target classes instead of any wrong class.
    #[arg(long)]
    targeted: bool,
    /// Evaluate the first N test images only.
    #[arg(long)]
    limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    batch_size: usize,
    /// Seed of random starts and targets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory of the data set (default: the one the run was trained on).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

#[derive(clap::Args, Debug)]
struct ReproduceArgs {
    /// The experiment: `mnist` (Table 1-2 on MNIST) or `fashion-mnist`.
    experiment: DatasetKind,
    /// Compute budget.
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    /// Output directory (default: runs/<experiment>-<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the data set (default: data/<experiment>); fetched when absent.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
}

fn main() -> ExitCode {
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
    match cli.command {
        Command::Data {
            command: DataCommand::Fetch { dataset, dir },
        } => fetch::fetch(dataset, &dir.unwrap_or_else(|| dataset.default_dir())),
        Command::Train(args) => run_train(args),
        Command::Eval(args) => {
            let sub = matches
                .subcommand_matches("eval")
                .expect("the eval subcommand");
            run_eval(args, sub)
        }
        Command::Reproduce(args) => {
            let out = args.out.unwrap_or_else(|| {
                PathBuf::from("runs")
                    .join(format!("{}-{:?}", args.experiment.name(), args.preset).to_lowercase())
            });
            let data_dir = args
                .data_dir
                .unwrap_or_else(|| args.experiment.default_dir());
            let config =
                ReproduceConfig::preset(args.preset, args.experiment, data_dir, args.device);
            reproduce(&config, &out).map(|_| ())
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

fn run_train(a: TrainArgs) -> Result<()> {
    if let Some(run) = a.resume {
        let config: TrainConfig = adp::io::read_toml(&run.join("config.toml"))
            .with_context(|| format!("{} cannot be resumed", run.display()))?;
        return train(&config, &run, true).map(|_| ());
    }
    let config = TrainConfig {
        dataset: a.dataset,
        data_dir: a.data_dir.unwrap_or_else(|| a.dataset.default_dir()),
        model: a.model,
        members: a.members,
        method: a.method,
        adp: AdpConfig {
            temperature: a.temperature,
            ..AdpConfig::new(a.alpha, a.beta)
        },
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        lr_drops: a.lr_drops,
        lr_drop_factor: 0.1,
        member_lr: a.member_lr,
        freeze: FreezeConfig {
            patience: a.freeze_patience,
            ..FreezeConfig::default()
        },
        l2: a.l2,
        seed: a.seed,
        train_limit: a.train_limit,
        device: a.device,
    };
    let out = a.out.expect("clap requires --out without --resume");
    let (_, state) = train(&config, &out, false)?;
    if let Some(last) = state.history.last() {
        println!(
            "trained {} into {}: training accuracy {:.2}%, mean log ED {:.2}",
            config.label(),
            out.display(),
            100.0 * last.accuracy,
            last.log_det
        );
    }
    Ok(())
}

/// Pairs every `--eps` list with the `--attack` that precedes it on the command line.
fn attack_specs(a: &EvalArgs, m: &ArgMatches) -> Result<Vec<AttackSpec>> {
    let attack_at: Vec<usize> = m
        .indices_of("attack")
        .map(|i| i.collect())
        .unwrap_or_default();
    let eps_at: Vec<usize> = m.indices_of("eps").map(|i| i.collect()).unwrap_or_default();
    let mut specs = Vec::new();
    for (&eps, &at) in a.eps.iter().zip(&eps_at) {
        let Some(owner) = attack_at.iter().rposition(|&i| i < at) else {
            bail!("--eps {eps} comes before any --attack; write `--attack NAME --eps LIST`");
        };
        specs.push(AttackSpec {
            steps: a.steps,
            step_size: a.step_size,
            restarts: a.restarts,
            objective: a.objective,
            ..AttackSpec::new(a.attack[owner], eps)
        });
    }
    for (j, (&at, kind)) in attack_at.iter().zip(&a.attack).enumerate() {
        let next = attack_at.get(j + 1).copied().unwrap_or(usize::MAX);
        ensure!(
            eps_at.iter().any(|&e| e > at && e < next),
            "--attack {} has no --eps list; write `--attack {} --eps 0.1,0.2`",
            kind.name(),
            kind.name()
        );
    }
    for s in &specs {
        s.validate()?;
    }
    Ok(specs)
}

fn run_eval(a: EvalArgs, m: &ArgMatches) -> Result<()> {
    let specs = attack_specs(&a, m)?;
    ensure!(a.batch_size >= 1, "--batch-size must be at least 1");
    let device = a.device.device()?;
    let (_, model) = load_run(&a.run, &device)?;
    let model = model.valid();
    let config: TrainConfig = adp::io::read_toml(&a.run.join("config.toml"))?;
    let data_dir = a.data_dir.unwrap_or(config.data_dir.clone());
    let mut test = load_idx_dataset(&data_dir, config.dataset, Split::Test)?;
    if let Some(n) = a.limit {
        ensure!(n >= 1, "--limit must be at least 1");
        test = test.take(n);
    }
    let mut report = EvalReport {
        label: config.label(),
        clean: clean(&model, &test, a.batch_size, &device),
        robust: Vec::new(),
    };
    for spec in &specs {
        report.robust.push(robust(
            &model,
            &test,
            spec,
            a.targeted,
            a.batch_size,
            a.seed,
            &device,
        )?);
    }
    report.save(&a.run)?;
    println!(
        "{}",
        adp::report::comparison_markdown(std::slice::from_ref(&report))
    );
    println!("written to {}/eval.json and eval.csv", a.run.display());
    Ok(())
}
