//! `adp train` options of the peer methods (`--method gal|dverge|trs`); each defaults to its
//! paper's value (`adp::train::{gal, dverge, trs}`).

use std::path::PathBuf;

use adp::data::DatasetKind;
use adp::train::Method;
use adp::train::dverge::DvergeConfig;
use adp::train::gal::GalConfig;
use adp::train::trs::TrsConfig;

#[derive(clap::Args, Debug)]
pub struct PeerArgs {
    /// GAL: weight λ of the gradient-alignment (coherence) term.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    gal_lambda: f64,
    /// DVERGE: the trained run (e.g. an ECE run of the same members) to start from.
    #[arg(long)]
    dverge_from: Option<PathBuf>,
    /// DVERGE: distillation budget ε (default 0.35 on MNIST, 0.07 on CIFAR; step ε/10).
    #[arg(long, allow_negative_numbers = true)]
    dverge_eps: Option<f64>,
    /// DVERGE: a fixed distillation layer (default: one drawn per epoch).
    #[arg(long)]
    dverge_layer: Option<usize>,
    /// TRS: steps of the smoothness attack (6).
    #[arg(long, default_value_t = 6)]
    trs_steps: usize,
}

/// The `[gal]`, `[dverge]` and `[trs]` sections for `method`.
pub type Sections = (Option<GalConfig>, Option<DvergeConfig>, Option<TrsConfig>);

impl PeerArgs {
    /// The section of `method` (the others `None`).
    pub fn sections(&self, method: Method, dataset: DatasetKind) -> Sections {
        match method {
            Method::Gal => (
                Some(GalConfig {
                    lambda: self.gal_lambda,
                }),
                None,
                None,
            ),
            Method::Dverge => {
                let mut d = DvergeConfig::for_dataset(dataset);
                if let Some(eps) = self.dverge_eps {
                    d.eps = eps;
                    d.alpha = eps / 10.0;
                }
                d.layer = self.dverge_layer;
                d.start_from = self.dverge_from.clone();
                (None, Some(d), None)
            }
            Method::Trs => (
                None,
                None,
                Some(TrsConfig {
                    steps: self.trs_steps,
                    ..TrsConfig::default()
                }),
            ),
            Method::Ece | Method::Adp => (None, None, None),
        }
    }
}

/// `adp reproduce peers`: into `out` (default `runs/peers-<dataset>-<preset>`).
pub fn reproduce(
    preset: adp::paper::reproduce::Preset,
    dataset: DatasetKind,
    out: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    device: adp::device::DeviceKind,
) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("peers-{}-{:?}", dataset.name(), preset).to_lowercase())
    });
    let data_dir = data_dir.unwrap_or_else(|| dataset.default_dir());
    let config = adp::paper::peers::PeersConfig::preset(preset, dataset, data_dir, device);
    let start = std::time::Instant::now();
    let results = adp::paper::peers::run_peers(&config, &out)?;
    let md = adp::paper::peers::write_peers(&config, &results, &out)?;
    println!("{md}");
    println!(
        "written to {} in {:.0} s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
