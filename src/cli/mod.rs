//! Subcommands of the `adp` binary kept out of `main.rs`: `adp sweep`, `adp eval --shard`,
//! `adp merge`, `adp data synthetic` and the peer methods' options.

pub mod peers;
pub mod shard;
pub mod sweep;

use std::path::PathBuf;

use anyhow::Result;

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

/// Writes the synthetic data set.
pub fn run_synthetic(a: SyntheticArgs) -> Result<()> {
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
