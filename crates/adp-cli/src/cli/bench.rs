//! `adp bench`: training, inference and attack throughput and peak memory.

use std::path::PathBuf;

use anyhow::Result;

use adp::attack::AttackKind;
use adp::device::{DeviceKind, DeviceSpec};
use adp::model::ModelKind;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Architectures to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ModelKind::Cnn, ModelKind::Resnet20])]
    pub models: Vec<ModelKind>,
    /// Ensemble sizes K.
    #[arg(long, value_delimiter = ',', default_values_t = [3, 5, 20])]
    pub members: Vec<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Untimed warm-up steps per row.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed steps per row.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Attacks whose throughput to measure (on the first --members value).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [AttackKind::Fgsm, AttackKind::Pgd, AttackKind::Mim, AttackKind::Jsma, AttackKind::Cw, AttackKind::Ead, AttackKind::ApgdCe, AttackKind::ApgdDlr])]
    pub attacks: Vec<AttackKind>,
    /// Iterations of each iterative attack in the attack rows.
    #[arg(long, default_value_t = 20)]
    pub attack_steps: usize,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Member-parallel placement D1,D2,… (member k on device k mod n; instead of --device), as
    /// `adp train --devices`.
    #[arg(long, value_delimiter = ',', num_args = 1, conflicts_with = "device")]
    pub devices: Vec<DeviceSpec>,
    /// Also write the measurements as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Measures every row, printing each as it comes, then the table.
pub fn run_bench(a: BenchArgs) -> Result<()> {
    let config = adp::bench::BenchConfig {
        models: a.models,
        members: a.members,
        batch_size: a.batch_size,
        warmup: a.warmup,
        steps: a.steps,
        device: a.devices.first().map_or(a.device, |d| d.kind),
        devices: a.devices,
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
