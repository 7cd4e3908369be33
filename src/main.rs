//! The `adp` command line: a thin layer over the library.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use adp::attack::{AttackKind, AttackSpec, DecisionRule, Objective};
use adp::data::{DatasetKind, Normalization, Split, fetch, load_dataset};
use adp::device::DeviceKind;
use adp::eval::indicators::{Failure, IndicatorSettings, Indicators, indicators};
use adp::eval::{AttackedSet, EvalReport, attack_dataset, clean, robust};
use adp::experiments::{Figure, FigureConfig, rebuild, run_figure};
use adp::fidelity::{FidelityConfig, run_fidelity};
use adp::loss::{AdpConfig, Diversity, alpha_for_confidence};
use adp::model::ModelKind;
use adp::progress::{Progress, Task};
use adp::reproduce::{Preset, ReproduceConfig, reproduce};
use adp::tables::{Table, TableConfig, run_table};
use adp::train::adversarial::{AdvAttack, AdvTrainConfig};
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
    /// Write the synthetic MNIST-layout data set of the tests (smoke runs, the Slurm check).
    Synthetic(cli::SyntheticArgs),
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Objective: ece (Eq. 2), adp (Eq. 5), or the peer defences gal, dverge, trs.
    #[arg(long, value_enum, default_value = "adp")]
    method: Method,
    #[command(flatten)]
    peers: cli::peers::PeerArgs,
    /// Weight α of the ensemble entropy.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    alpha: f64,
    /// Weight β of the log ensemble diversity.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    beta: f64,
    /// Training temperature T (App. B.2).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Diversity term weighted by β: log-det (log ED, Eq. 3-5) or jsd (Jensen-Shannon
    /// divergence of the members, the App. B.1 ablation).
    #[arg(long, value_enum, default_value = "log-det")]
    diversity: Diversity,
    /// Number of members K (2 to 100, `adp::model::MAX_MEMBERS`).
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
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f64,
    /// Epochs (0-based) from which the learning rate is multiplied by 0.1 (the official
    /// `epoch > 15`, `epoch > 30` is 16,31).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 31])]
    lr_drops: Vec<usize>,
    /// Per-member learning-rate multipliers (Algorithm 1), one per member.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    member_lr: Vec<f64>,
    /// Freeze a member after this many epochs without progress (0: never).
    #[arg(long, default_value_t = 0)]
    freeze_patience: usize,
    /// L2 penalty on convolution kernels.
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
    l2: f64,
    /// Seed of initialisation and batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training images only.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Random shifts (up to a tenth of the side) and horizontal flips of the training images,
    /// as the official code does on CIFAR and MNIST.
    #[arg(long)]
    augment: bool,
    /// Input normalisation: mean-std (per-channel mean and std) or mean (the official code's
    /// per-pixel mean image, no std).
    #[arg(long, value_enum, default_value = "mean-std")]
    normalize: Normalization,
    /// Adversarial training (Table 4): mix every mini-batch 1:1 with FGSM or PGD examples
    /// crafted against the current ensemble.
    #[arg(long, value_enum)]
    adv_train: Option<AdvAttack>,
    /// Range MIN,MAX of the budget ε drawn uniformly per mini-batch for --adv-train
    /// (paper, CIFAR-10: 0.01,0.05).
    #[arg(long, value_delimiter = ',', num_args = 1, default_values_t = [0.01, 0.05], allow_hyphen_values = true)]
    adv_eps: Vec<f64>,
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
    /// An attack; follow each by its list of main parameters (Table 2's "Para."):
    /// `--attack fgsm --eps 0.1,0.2 --attack jsma --gamma 0.3 --attack cw --c 0.1,1,10`.
    #[arg(long, value_enum, action = clap::ArgAction::Append)]
    attack: Vec<AttackKind>,
    /// The preceding --attack's main parameters, comma-separated: budgets ε (pixel units) for
    /// fgsm, bim, pgd and mim; for the others the list stands for --gamma (jsma) or --c (cw, ead).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_hyphen_values = true)]
    eps: Vec<f64>,
    /// Fractions γ of changed pixels for the preceding --attack jsma (paper: 0.3, 0.6), comma-separated.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_hyphen_values = true)]
    gamma: Vec<f64>,
    /// Constants c for the preceding --attack cw or ead (paper: 0.1, 1, 10 and 5, 10), comma-separated.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_hyphen_values = true)]
    c: Vec<f64>,
    #[command(flatten)]
    params: AttackParams,
    /// Attack random target classes instead of any wrong class.
    #[arg(long)]
    targeted: bool,
    /// Repeat every attack with seeds --seed, --seed + 1, … (N in all) and report the spread of
    /// its accuracy.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Skip the indicators of a failed evaluation (Square, an ε sweep to 1 and random noise at
    /// each ε, with APGD-CE of --steps iterations and Square of --queries queries).
    #[arg(long)]
    no_indicators: bool,
    /// Evaluate only shard i of n of the test set (`0/4` … `3/4`), saved to
    /// RUN/eval-shards/I-of-N/partial.json; `adp merge RUN` combines the n shards.
    #[arg(long, value_name = "i/n")]
    shard: Option<adp::eval::shard::Shard>,
    #[command(flatten)]
    on: TestSet,
}

/// Parameters shared by every attack; unset ones take the paper's defaults.
#[derive(clap::Args, Debug, Clone)]
struct AttackParams {
    /// Iterations of the iterative attacks (BIM, PGD, MIM: 10 as in the paper; APGD and
    /// autoattack: 100; C&W and EAD: 1000 per binary-search step; adaptive: length of the last
    /// stage, 200).
    #[arg(long, visible_alias = "iterations")]
    steps: Option<usize>,
    /// Step size of BIM, PGD, MIM (paper: ε/10) and adaptive (ε/20); APGD sets its own.
    #[arg(long, allow_negative_numbers = true)]
    step_size: Option<f64>,
    /// Random restarts of every iterative attack (adaptive: 5, others: 1).
    #[arg(long)]
    restarts: Option<usize>,
    /// Queries of Square, alone, in autoattack and in the indicators (default 5000).
    #[arg(long)]
    queries: Option<usize>,
    /// Loss ascended by BIM, PGD and adaptive (default: cross-entropy on the log of the mean
    /// softmax; mean-logits: on the averaged logits; joint: sum of the members' losses; dlr).
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// Momentum decay μ of MIM (paper: 1.0).
    #[arg(long, allow_negative_numbers = true)]
    decay: Option<f64>,
    /// Change θ of each pixel JSMA selects (paper: 0.2 on MNIST).
    #[arg(long, allow_negative_numbers = true)]
    theta: Option<f64>,
    /// Confidence κ of C&W and EAD (official code: 0.1).
    #[arg(long, allow_negative_numbers = true)]
    kappa: Option<f64>,
    /// Learning rate of C&W and EAD (paper: 0.01).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Binary-search steps over c of C&W and EAD (default 1: c fixed, as in Table 2).
    #[arg(long)]
    binary_search_steps: Option<usize>,
    /// Weight β of EAD's L1 term (paper: 0.01).
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f64>,
    /// How EAD picks its best example: en (elastic net) or l1.
    #[arg(long, value_enum)]
    decision_rule: Option<DecisionRule>,
}

impl AttackParams {
    /// The attack `kind` with main parameter `value` (ε, γ or c) and these parameters.
    fn spec(&self, kind: AttackKind, value: f64) -> AttackSpec {
        AttackSpec {
            steps: self.steps,
            step_size: self.step_size,
            restarts: self.restarts,
            decay: self.decay,
            theta: self.theta,
            kappa: self.kappa,
            lr: self.lr,
            objective: self.objective,
            queries: self.queries,
            binary_search_steps: self.binary_search_steps,
            beta: self.beta,
            decision_rule: self.decision_rule,
            ..AttackSpec::main(kind, value)
        }
    }
}

#[derive(clap::Args, Debug)]
struct AttackArgs {
    /// The run directory written by `adp train`.
    run: PathBuf,
    /// The attack.
    #[arg(long, value_enum)]
    attack: AttackKind,
    /// The attack's main parameter: budget ε in pixel units (fgsm, bim, pgd, mim), the fraction γ
    /// of changed pixels (jsma) or the constant c (cw, ead).
    #[arg(long, allow_negative_numbers = true)]
    eps: f64,
    #[command(flatten)]
    params: AttackParams,
    /// Attack random target classes instead of any wrong class.
    #[arg(long)]
    targeted: bool,
    /// Attack member i alone (0-based) instead of the whole ensemble.
    #[arg(long)]
    member: Option<usize>,
    /// Where to save the adversarial examples (safetensors).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    on: TestSet,
}

/// Which test images of a run, on which device, in what batches.
#[derive(clap::Args, Debug)]
struct TestSet {
    /// Use the first N test images only.
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
struct BenchArgs {
    /// Architectures to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ModelKind::Cnn, ModelKind::Resnet20])]
    models: Vec<ModelKind>,
    /// Ensemble sizes K.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 5, 20])]
    members: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Untimed warm-up steps per row.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps per row.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Attacks whose throughput to measure (on the first --members value).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [AttackKind::Fgsm, AttackKind::Pgd, AttackKind::Mim, AttackKind::Jsma, AttackKind::Cw, AttackKind::Ead, AttackKind::ApgdCe, AttackKind::ApgdDlr])]
    attacks: Vec<AttackKind>,
    /// Iterations of each iterative attack in the attack rows.
    #[arg(long, default_value_t = 20)]
    attack_steps: usize,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Also write the measurements as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ExportArgs {
    /// The run directory.
    run: PathBuf,
    /// File format.
    #[arg(long, value_enum, default_value = "pytorch")]
    format: adp::interop::ExportFormat,
    /// Weights file to write (`.pt` or `.safetensors`).
    #[arg(long)]
    out: PathBuf,
    /// Also write the first N test images with every member's logits on them to
    /// `<out>.reference.safetensors`, to check a loaded copy.
    #[arg(long)]
    reference: Option<usize>,
    /// Directory of the data set for --reference (default: the run's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// The `.pt` or `.safetensors` state dict (torch names, see interop/README.md).
    file: PathBuf,
    /// Architecture of the members (default: read from the tensor names; checked if given).
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
    /// Number of members K (default: read from the tensor names; checked if given).
    #[arg(long)]
    members: Option<usize>,
    /// Data set the weights belong to (default: from the file's description).
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Directory of that data set (default: data/<dataset>).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run directory to create.
    #[arg(long)]
    out: PathBuf,
}

/// The experiments `adp reproduce` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Experiment {
    /// Tables 1-2: clean error and accuracy under attack of ECE, ADP_{2,0} and ADP_{2,0.5} on
    /// `--dataset` (default MNIST).
    Mnist,
    /// Tables 1-2 on Fashion-MNIST (`mnist --dataset fashion-mnist`).
    FashionMnist,
    /// Fig. 3: transferability of PGD and MIM among the members (ECE vs ADP_{2,0.5}).
    Transfer,
    /// Fig. 4: ROC and AUC of ensemble diversity as an adversarial-example detector.
    Detect,
    /// Fig. 5 (App. B.3): histogram of the test set's log ensemble diversity per method.
    EdHistogram,
    /// Table 1: clean error of each member and the ensemble, ECE / ADP_{2,0} / ADP_{2,0.5}.
    Table1,
    /// Table 2: accuracy under the paper's attacks (MNIST, or --dataset cifar10).
    Table2,
    /// Table 3: BIM, PGD and MIM on CIFAR-100.
    Table3,
    /// Table 4: adversarial training (FGSM, PGD) with and without ADP_{2,0.5} (CIFAR-10).
    Table4,
    /// Table 5: ensembles of K = 5 members (CIFAR-10).
    Table5,
    /// Fig. 2: t-SNE of each member's final hidden features (ECE vs ADP_{2,0.5}).
    Tsne,
    /// The ablation grid of the official code's details (architecture, augmentation,
    /// normalisation, budget, attack objective) for ECE and ADP_{2,0.5}: `fidelity.md`.
    Fidelity,
    /// ECE, ADP_{2,0.5}, GAL, DVERGE and TRS side by side (`adp::peers`): `peers.md`.
    Peers,
}

impl Experiment {
    /// The figure experiment, for those that are one.
    fn figure(self) -> Option<Figure> {
        match self {
            Experiment::Mnist | Experiment::FashionMnist | Experiment::Fidelity => None,
            Experiment::Peers => None,
            Experiment::Transfer => Some(Figure::Transfer),
            Experiment::Detect => Some(Figure::Detect),
            Experiment::EdHistogram => Some(Figure::EdHistogram),
            Experiment::Tsne => Some(Figure::Tsne),
            Experiment::Table1
            | Experiment::Table2
            | Experiment::Table3
            | Experiment::Table4
            | Experiment::Table5 => None,
        }
    }

    /// The table experiment, for those that are one.
    fn table(self) -> Option<Table> {
        match self {
            Experiment::Table1 => Some(Table::Table1),
            Experiment::Table2 => Some(Table::Table2),
            Experiment::Table3 => Some(Table::Table3),
            Experiment::Table4 => Some(Table::Table4),
            Experiment::Table5 => Some(Table::Table5),
            _ => None,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ReproduceArgs {
    /// The experiment.
    #[arg(value_enum)]
    experiment: Experiment,
    /// Data set the models are trained and tested on: mnist or fashion-mnist (default mnist); the
    /// tables also take cifar10 and cifar100 (default: the paper's data set of the table).
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// Compute budget.
    #[arg(long, value_enum, default_value = "cpu")]
    preset: Preset,
    /// Output directory (default: runs/<experiment>-<preset>; tables: runs/<dataset>-<preset>,
    /// sharing the runs of `adp reproduce mnist`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory of the data set (default: data/<dataset>); fetched when absent.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// `fidelity` only: train and evaluate just these rows (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
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
    match cli.command {
        Command::Data {
            command: DataCommand::Fetch { dataset, dir },
        } => fetch::fetch(dataset, &dir.unwrap_or_else(|| dataset.default_dir())),
        Command::Data {
            command: DataCommand::Synthetic(a),
        } => cli::run_synthetic(a),
        Command::Sweep(a) => cli::sweep::run_sweep(a),
        Command::Merge(a) => cli::shard::run_merge(a),
        Command::Train(args) => run_train(args),
        Command::Eval(args) => {
            let sub = matches
                .subcommand_matches("eval")
                .expect("the eval subcommand");
            run_eval(args, sub)
        }
        Command::Attack(args) => run_attack(args),
        Command::Bench(a) => {
            let config = adp::bench::BenchConfig {
                models: a.models,
                members: a.members,
                batch_size: a.batch_size,
                warmup: a.warmup,
                steps: a.steps,
                device: a.device,
                attacks: a.attacks,
                attack_steps: a.attack_steps,
            };
            let report = adp::bench::run(&config, |r| {
                eprintln!(
                    "{} {:?} K={}: {:.1} img/s",
                    r.task, r.model, r.members, r.images_per_s
                )
            })?;
            println!("{}", adp::bench::markdown(&report));
            if let Some(path) = a.json {
                adp::io::write_json(&path, &report)?;
            }
            Ok(())
        }
        Command::Reproduce(args) => run_reproduce(args),
        Command::Export(a) => run_export(a),
        Command::Import(a) => run_import(a),
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

fn run_reproduce(args: ReproduceArgs) -> Result<()> {
    let table = args.experiment.table();
    let dataset = match (args.experiment, table) {
        (Experiment::FashionMnist, _) => DatasetKind::FashionMnist,
        (_, Some(t)) => args.dataset.unwrap_or(t.default_dataset()),
        _ => args.dataset.unwrap_or(DatasetKind::Mnist),
    };
    if args.experiment == Experiment::Peers {
        return cli::peers::reproduce(args.preset, dataset, args.out, args.data_dir, args.device);
    }
    ensure!(
        table.is_some() || dataset.cifar().is_none(),
        "`adp reproduce` trains with the MNIST presets; --dataset must be mnist or fashion-mnist (only table1 … table5 take CIFAR)"
    );
    let experiment = args
        .experiment
        .to_possible_value()
        .expect("no skipped variants")
        .get_name()
        .to_string();
    let stem = if table.is_some() {
        dataset.name()
    } else {
        &experiment
    };
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{stem}-{:?}", args.preset).to_lowercase())
    });
    let data_dir = args.data_dir.unwrap_or_else(|| dataset.default_dir());
    if let Some(table) = table {
        let config = TableConfig::preset(table, args.preset, dataset, data_dir, args.device)?;
        let (_, md) = run_table(&config, &out)?;
        println!("{md}");
        println!("written to {}", out.display());
        return Ok(());
    }
    ensure!(
        args.rows.is_empty() || args.experiment == Experiment::Fidelity,
        "--rows selects rows of `adp reproduce fidelity` only"
    );
    match args.experiment.figure() {
        None if args.experiment == Experiment::Fidelity => {
            let base = ReproduceConfig::preset(args.preset, dataset, data_dir, args.device);
            let config = FidelityConfig::new(base);
            let results = run_fidelity(&config, &args.rows, &out)?;
            println!("{}", adp::fidelity::markdown(&config, &results));
            println!("written to {}", out.display());
            Ok(())
        }
        None => {
            let config = ReproduceConfig::preset(args.preset, dataset, data_dir, args.device);
            let (_, md) = reproduce(&config, &out)?;
            println!("{md}");
            Ok(())
        }
        Some(figure) => {
            let config = FigureConfig::preset(figure, args.preset, dataset, data_dir, args.device);
            let (_, md) = run_figure(&config, &out)?;
            println!("{md}");
            println!("written to {}", out.display());
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
    ensure!(
        a.adv_eps.len() == 2,
        "--adv-eps takes two numbers MIN,MAX (paper: 0.01,0.05), got {}",
        a.adv_eps.len()
    );
    let (gal, dverge, trs) = a.peers.sections(a.method, a.dataset);
    let config = TrainConfig {
        gal,
        dverge,
        trs,
        dataset: a.dataset,
        data_dir: a.data_dir.unwrap_or_else(|| a.dataset.default_dir()),
        model: a.model,
        members: a.members,
        method: a.method,
        adp: AdpConfig {
            temperature: a.temperature,
            diversity: a.diversity,
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
        augment: a.augment,
        normalize: a.normalize,
        adv_train: a.adv_train.map(|attack| AdvTrainConfig {
            attack,
            eps_min: a.adv_eps[0],
            eps_max: a.adv_eps[1],
        }),
        device: a.device,
        imported_from: None,
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

/// Pairs every parameter list (`--eps`, `--gamma`, `--c`) with the `--attack` that precedes it on
/// the command line; `--eps` stands for any attack's main parameter, `--gamma` and `--c` only for
/// the attacks they belong to.
fn attack_specs(a: &EvalArgs, m: &ArgMatches) -> Result<Vec<AttackSpec>> {
    let attack_at: Vec<usize> = m
        .indices_of("attack")
        .map(|i| i.collect())
        .unwrap_or_default();
    let mut lists: Vec<(usize, f64, &str)> = Vec::new();
    for (flag, values) in [("eps", &a.eps), ("gamma", &a.gamma), ("c", &a.c)] {
        let at: Vec<usize> = m.indices_of(flag).map(|i| i.collect()).unwrap_or_default();
        lists.extend(
            at.into_iter()
                .zip(values.iter())
                .map(|(i, &v)| (i, v, flag)),
        );
    }
    lists.sort_by_key(|l| l.0);
    let mut specs = Vec::new();
    for &(at, value, flag) in &lists {
        let Some(owner) = attack_at.iter().rposition(|&i| i < at) else {
            bail!(
                "--{flag} {value} comes before any --attack; write `--attack NAME --{flag} LIST`"
            );
        };
        let kind = a.attack[owner];
        let main = kind.main_parameter().flag();
        ensure!(
            flag == "eps" || flag == main,
            "--{flag} does not apply to --attack {}; write `--attack {} --{main} LIST`",
            kind.name(),
            kind.name()
        );
        specs.push(a.params.spec(kind, value));
    }
    for (j, (&at, kind)) in attack_at.iter().zip(&a.attack).enumerate() {
        let next = attack_at.get(j + 1).copied().unwrap_or(usize::MAX);
        let main = kind.main_parameter().flag();
        ensure!(
            lists.iter().any(|&(e, _, _)| e > at && e < next),
            "--attack {} has no --{main} list; write `--attack {} --{main} {}`",
            kind.name(),
            kind.name(),
            match kind.main_parameter() {
                adp::attack::MainParameter::Eps => "0.1,0.2",
                adp::attack::MainParameter::Gamma => "0.3,0.6",
                adp::attack::MainParameter::C => "1,10",
            }
        );
    }
    for s in &specs {
        s.validate()?;
    }
    Ok(specs)
}

/// A trained run in evaluation mode and (the first `limit` of) its test set.
struct Loaded {
    model: adp::model::Ensemble,
    config: TrainConfig,
    test: adp::data::Dataset,
}

fn load_for_eval(run: &Path, on: &TestSet) -> Result<(Loaded, burn::prelude::Device)> {
    ensure!(on.batch_size >= 1, "--batch-size must be at least 1");
    let device = on.device.device()?;
    let (_, model) = load_run(run, &device)?;
    let config: TrainConfig = adp::io::read_toml(&run.join("config.toml"))?;
    let data_dir = on.data_dir.clone().unwrap_or(config.data_dir.clone());
    let mut test = load_dataset(&data_dir, config.dataset, Split::Test)?;
    if let Some(n) = on.limit {
        ensure!(n >= 1, "--limit must be at least 1");
        test = test.take(n);
    }
    let loaded = Loaded {
        model: model.valid(),
        config,
        test,
    };
    Ok((loaded, device))
}

fn run_eval(a: EvalArgs, m: &ArgMatches) -> Result<()> {
    if let Some(shard) = a.shard {
        return cli::shard::run_eval_shard(a, m, shard);
    }
    let specs = attack_specs(&a, m)?;
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
    let settings = IndicatorSettings {
        apgd_iterations: a
            .params
            .steps
            .unwrap_or(IndicatorSettings::default().apgd_iterations),
        square_queries: a
            .params
            .queries
            .unwrap_or(IndicatorSettings::default().square_queries),
    };
    let mut budgets: Vec<f64> = specs
        .iter()
        .filter(|s| s.kind.main_parameter() == adp::attack::MainParameter::Eps && s.eps > 0.0)
        .map(|s| s.eps)
        .collect();
    budgets.sort_by(f64::total_cmp);
    budgets.dedup();
    let victim = adp::attack::Victim::ensemble(model);
    budgets
        .into_iter()
        .map(|eps| {
            let reported = specs
                .iter()
                .zip(&report.robust)
                .filter(|(s, r)| s.eps == eps && s.kind.gradient_only() && !r.targeted)
                .map(|(_, r)| r.accuracy)
                .reduce(f64::min);
            indicators(
                &victim,
                test,
                eps,
                reported,
                &settings,
                a.on.batch_size,
                a.on.seed,
                device,
            )
        })
        .collect()
}

/// The indicators' summary line and one line per indicator that fired, with what to run next.
fn indicator_lines(run: &Path, ind: &Indicators) -> Vec<String> {
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
        });
    }
    if ind.fired.is_empty() {
        lines.push(format!(
            "no indicator of a failed evaluation fired at ε = {eps}"
        ));
    }
    lines
}

fn run_attack(a: AttackArgs) -> Result<()> {
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

fn run_export(a: ExportArgs) -> Result<()> {
    let opts = adp::interop::ExportOptions {
        format: a.format,
        out: a.out,
        reference: a.reference,
        data_dir: a.data_dir,
    };
    let meta = adp::interop::export_run(&a.run, &opts, &DeviceKind::Cpu.device()?)?;
    println!(
        "exported {} ({} x {:?}, {} classes) to {} (described in {})",
        meta.label,
        meta.members,
        meta.architecture,
        meta.num_classes,
        opts.out.display(),
        adp::interop::files::meta_path(&opts.out).display()
    );
    Ok(())
}

fn run_import(a: ImportArgs) -> Result<()> {
    let opts = adp::interop::ImportOptions {
        file: a.file,
        model: a.model,
        members: a.members,
        dataset: a.dataset,
        data_dir: a.data_dir,
        out: a.out,
    };
    let spec = adp::interop::import_file(&opts, &DeviceKind::Cpu.device()?)?;
    println!(
        "imported {} x {:?} into {}; evaluate with `adp eval {}`",
        spec.members,
        spec.member.kind,
        opts.out.display(),
        opts.out.display()
    );
    Ok(())
}
