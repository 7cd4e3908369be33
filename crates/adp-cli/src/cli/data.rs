//! `adp data`: fetching a data set, or writing the synthetic one of the tests.

use std::path::PathBuf;

use anyhow::Result;

use adp::data::{DatasetKind, fetch};

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Download and verify a data set (SHA-256 of every file).
    Fetch {
        /// Which data set.
        dataset: DatasetKind,
        /// Target directory (default: data/NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the synthetic MNIST-layout data set of the tests (smoke runs, the Slurm check).
    Synthetic(SyntheticArgs),
}

/// `adp data synthetic`: the synthetic MNIST-layout data set of the tests.
#[derive(clap::Args, Debug)]
pub struct SyntheticArgs {
    /// Target directory (four IDX files, as `adp data fetch mnist` writes them).
    #[arg(long)]
    pub dir: PathBuf,
    /// Training images.
    #[arg(long, default_value_t = 1200)]
    pub train: usize,
    /// Test images.
    #[arg(long, default_value_t = 300)]
    pub test: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs `adp data fetch` or `adp data synthetic`.
pub fn run_data(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Fetch { dataset, dir } => {
            fetch::fetch(dataset, &dir.unwrap_or_else(|| dataset.default_dir()))
        }
        DataCommand::Synthetic(a) => run_synthetic(a),
    }
}

/// Writes the synthetic data set.
fn run_synthetic(a: SyntheticArgs) -> Result<()> {
    anyhow::ensure!(
        a.train >= 1 && a.test >= 1,
        "--train and --test must be at least 1"
    );
    adp::data::synthetic::write_synthetic_mnist(&a.dir, a.train, a.test, a.seed)?;
    println!(
        "wrote {} training and {} test images to {}",
        a.train,
        a.test,
        a.dir.display()
    );
    Ok(())
}
