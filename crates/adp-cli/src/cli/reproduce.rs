//! `adp reproduce`: an experiment or a table of the paper, regenerated from scratch.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::ValueEnum;

use adp::data::DatasetKind;
use adp::device::DeviceKind;
use adp::paper::fidelity::{FidelityConfig, Selection, run_fidelity};
use adp::paper::figures::{FigureConfig, PaperFigure, run_figure};
use adp::paper::reproduce::{Preset, ReproduceConfig, reproduce};
use adp::paper::tables::{Table, TableConfig, run_table};

/// The experiments `adp reproduce` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Experiment {
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
    /// ECE, ADP_{2,0.5}, GAL, DVERGE and TRS side by side (`adp::paper::peers`): `peers.md`.
    Peers,
}

impl Experiment {
    /// The figure experiment, for those that are one.
    pub fn figure(self) -> Option<PaperFigure> {
        match self {
            Experiment::Mnist | Experiment::FashionMnist | Experiment::Fidelity => None,
            Experiment::Peers => None,
            Experiment::Transfer => Some(PaperFigure::Transfer),
            Experiment::Detect => Some(PaperFigure::Detect),
            Experiment::EdHistogram => Some(PaperFigure::EdHistogram),
            Experiment::Tsne => Some(PaperFigure::Tsne),
            Experiment::Table1
            | Experiment::Table2
            | Experiment::Table3
            | Experiment::Table4
            | Experiment::Table5 => None,
        }
    }

    /// The table experiment, for those that are one.
    pub fn table(self) -> Option<Table> {
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
pub struct ReproduceArgs {
    /// The experiment.
    #[arg(value_enum)]
    pub experiment: Experiment,
    /// Data set the models are trained and tested on: mnist or fashion-mnist (default mnist); the
    /// tables also take cifar10 and cifar100 (default: the paper's data set of the table).
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    /// Compute budget.
    #[arg(long, value_enum, default_value = "cpu")]
    pub preset: Preset,
    /// Output directory (default: runs/EXPERIMENT-PRESET; tables: runs/DATASET-PRESET,
    /// sharing the runs of `adp reproduce mnist`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Directory of the data set (default: data/DATASET); fetched when absent.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// `fidelity` only: train and evaluate just these rows (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// `fidelity` only: train and evaluate just these seeds of the selected rows (comma-separated;
    /// default every seed: 0 and 1 for the headline rows, 0 for the others).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
}

pub fn run_reproduce(args: ReproduceArgs) -> Result<()> {
    let table = args.experiment.table();
    let dataset = match (args.experiment, table) {
        (Experiment::FashionMnist, _) => DatasetKind::FashionMnist,
        (_, Some(t)) => args.dataset.unwrap_or(t.default_dataset()),
        _ => args.dataset.unwrap_or(DatasetKind::Mnist),
    };
    if args.experiment == Experiment::Peers {
        return super::peers::reproduce(args.preset, dataset, args.out, args.data_dir, args.device);
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
        (args.rows.is_empty() && args.seeds.is_empty()) || args.experiment == Experiment::Fidelity,
        "--rows and --seeds select runs of `adp reproduce fidelity` only"
    );
    match args.experiment.figure() {
        None if args.experiment == Experiment::Fidelity => {
            let base = ReproduceConfig::preset(args.preset, dataset, data_dir, args.device);
            let config = FidelityConfig::new(base);
            let only = Selection {
                rows: args.rows,
                seeds: args.seeds,
            };
            let results = run_fidelity(&config, &only, &out)?;
            println!("{}", adp::paper::fidelity::markdown(&config, &results));
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
