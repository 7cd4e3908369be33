//! `adp train`: the training options, and the run they start or resume.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};

use adp::data::{DatasetKind, Normalization};
use adp::device::{DeviceKind, DeviceSpec};
use adp::loss::{AdpConfig, Diversity};
use adp::model::ModelKind;
use adp::train::adversarial::{AdvAttack, AdvTrainConfig};
use adp::train::{FreezeConfig, Method, TrainConfig, train};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Objective: ece (Eq. 2), adp (Eq. 5), or the peer defences gal, dverge, trs.
    #[arg(long, value_enum, default_value = "adp")]
    pub method: Method,
    #[command(flatten)]
    pub peers: super::peers::PeerArgs,
    /// Weight α of the ensemble entropy.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub alpha: f64,
    /// Weight β of the log ensemble diversity.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub beta: f64,
    /// Training temperature T (App. B.2).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Diversity term weighted by β: log-det (log ED, Eq. 3-5) or jsd (Jensen-Shannon
    /// divergence of the members, the App. B.1 ablation).
    #[arg(long, value_enum, default_value = "log-det")]
    pub diversity: Diversity,
    /// Number of members K (2 to 100, `adp::model::MAX_MEMBERS`).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Member architecture.
    #[arg(long, value_enum, default_value = "resnet20")]
    pub model: ModelKind,
    /// Data set.
    #[arg(long, value_enum, default_value = "mnist")]
    pub dataset: DatasetKind,
    /// Directory of the data set (default: data/DATASET).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub lr: f64,
    /// Epochs (0-based) from which the learning rate is multiplied by 0.1 (the official
    /// `epoch > 15`, `epoch > 30` is 16,31).
    #[arg(long, value_delimiter = ',', default_values_t = [16, 31])]
    pub lr_drops: Vec<usize>,
    /// Per-member learning-rate multipliers (Algorithm 1), one per member.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub member_lr: Vec<f64>,
    /// Freeze a member after this many epochs without progress (0: never).
    #[arg(long, default_value_t = 0)]
    pub freeze_patience: usize,
    /// L2 penalty on convolution kernels.
    #[arg(long, default_value_t = 1e-4, allow_negative_numbers = true)]
    pub l2: f64,
    /// Seed of initialisation and batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Random shifts (up to a tenth of the side) and horizontal flips of the training images,
    /// as the official code does on CIFAR and MNIST.
    #[arg(long)]
    pub augment: bool,
    /// Input normalisation: mean-std (per-channel mean and std) or mean (the official code's
    /// per-pixel mean image, no std).
    #[arg(long, value_enum, default_value = "mean-std")]
    pub normalize: Normalization,
    /// Adversarial training (Table 4): mix every mini-batch 1:1 with FGSM or PGD examples
    /// crafted against the current ensemble.
    #[arg(long, value_enum)]
    pub adv_train: Option<AdvAttack>,
    /// Range MIN,MAX of the budget ε drawn uniformly per mini-batch for --adv-train
    /// (paper, CIFAR-10: 0.01,0.05).
    #[arg(long, value_delimiter = ',', num_args = 1, default_values_t = [0.01, 0.05], allow_hyphen_values = true)]
    pub adv_eps: Vec<f64>,
    /// Device (backend) to train on.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Member-parallel training on D1,D2,… (cpu, wgpu, tch, cuda:I, tch-cuda:I): member k, its
    /// gradients and its Adam state on device k mod n; the batches, the loss and the ensemble's
    /// output on D1 (instead of --device). ECE and ADP only.
    #[arg(long, value_delimiter = ',', num_args = 1, conflicts_with = "device")]
    pub devices: Vec<DeviceSpec>,
    /// Minutes between the checkpoints taken within an epoch (a killed run resumes at the step
    /// of the newest one); 0: at the end of each epoch only.
    #[arg(long, default_value_t = adp::train::default_checkpoint_minutes())]
    pub checkpoint_minutes: f64,
    /// Run directory to create.
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the interrupted run in this directory with its saved configuration.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

pub fn run_train(a: TrainArgs) -> Result<()> {
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
        device: a.devices.first().map_or(a.device, |d| d.kind),
        devices: a.devices,
        imported_from: None,
        checkpoint_minutes: a.checkpoint_minutes,
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
