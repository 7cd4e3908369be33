//! Option groups that several subcommands share: the attack list of `adp eval` (each `--attack`
//! with the `--eps`, `--gamma` or `--c` list after it), the attack parameters, and the test set
//! and device a trained run is loaded onto.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};
use burn::module::Module;
use clap::ArgMatches;

use adp::attack::{AttackKind, AttackSpec, DecisionRule, Objective};
use adp::data::{Split, load_dataset};
use adp::device::{DeviceKind, DeviceSpec};
use adp::train::TrainConfig;
use adp::train::checkpoint::load_run;

/// The attacks of `adp eval`, each `--attack` followed by its list of main parameters.
#[derive(clap::Args, Debug)]
pub struct AttackList {
    /// An attack; follow each by its list of main parameters (Table 2's "Para."):
    /// `--attack fgsm --eps 0.1,0.2 --attack jsma --gamma 0.3 --attack cw --c 0.1,1,10`.
    #[arg(long, value_enum, action = clap::ArgAction::Append)]
    pub attack: Vec<AttackKind>,
    /// The preceding --attack's main parameters, comma-separated: budgets ε (pixel units) for
    /// fgsm, bim, pgd and mim; for the others the list stands for --gamma (jsma) or --c (cw, ead).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub eps: Vec<f64>,
    /// Fractions γ of changed pixels for the preceding --attack jsma (paper: 0.3, 0.6), comma-separated.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub gamma: Vec<f64>,
    /// Constants c for the preceding --attack cw or ead (paper: 0.1, 1, 10 and 5, 10), comma-separated.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub c: Vec<f64>,
}

impl AttackList {
    /// Pairs every parameter list (`--eps`, `--gamma`, `--c`) with the `--attack` that precedes it on
    /// the command line; `--eps` stands for any attack's main parameter, `--gamma` and `--c` only for
    /// the attacks they belong to.
    pub fn specs(&self, params: &AttackParams, m: &ArgMatches) -> Result<Vec<AttackSpec>> {
        let attack_at: Vec<usize> = m
            .indices_of("attack")
            .map(|i| i.collect())
            .unwrap_or_default();
        let mut lists: Vec<(usize, f64, &str)> = Vec::new();
        for (flag, values) in [("eps", &self.eps), ("gamma", &self.gamma), ("c", &self.c)] {
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
            let kind = self.attack[owner];
            let main = kind.main_parameter().flag();
            ensure!(
                flag == "eps" || flag == main,
                "--{flag} does not apply to --attack {}; write `--attack {} --{main} LIST`",
                kind.name(),
                kind.name()
            );
            specs.push(params.spec(kind, value));
        }
        for (j, (&at, kind)) in attack_at.iter().zip(&self.attack).enumerate() {
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
}

/// Parameters shared by every attack; unset ones take the paper's defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct AttackParams {
    /// Iterations of the iterative attacks (BIM, PGD, MIM: 10 as in the paper; APGD and
    /// autoattack: 100; C&W and EAD: 1000 per binary-search step; adaptive: length of the last
    /// stage, 200). Also the APGD-CE iterations of `adp eval`'s indicators (default 100).
    #[arg(long, visible_alias = "iterations")]
    pub steps: Option<usize>,
    /// Step size of BIM, PGD, MIM (paper: ε/10) and adaptive (ε/20); APGD sets its own.
    #[arg(long, allow_negative_numbers = true)]
    pub step_size: Option<f64>,
    /// Random restarts of every iterative attack (adaptive: 5, others: 1).
    #[arg(long)]
    pub restarts: Option<usize>,
    /// Queries of Square, alone, in autoattack and in the indicators (default 5000).
    #[arg(long)]
    pub queries: Option<usize>,
    /// Loss ascended by BIM, PGD and adaptive (default: cross-entropy on the log of the mean
    /// softmax; mean-logits: on the averaged logits; joint: sum of the members' losses; dlr).
    #[arg(long, value_enum)]
    pub objective: Option<Objective>,
    /// Momentum decay μ of MIM (paper: 1.0).
    #[arg(long, allow_negative_numbers = true)]
    pub decay: Option<f64>,
    /// Change θ of each pixel JSMA selects (paper: 0.2 on MNIST).
    #[arg(long, allow_negative_numbers = true)]
    pub theta: Option<f64>,
    /// Confidence κ of C&W and EAD (official code: 0.1).
    #[arg(long, allow_negative_numbers = true)]
    pub kappa: Option<f64>,
    /// Learning rate of C&W and EAD (paper: 0.01).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Binary-search steps over c of C&W and EAD (default 1: c fixed, as in Table 2).
    #[arg(long)]
    pub binary_search_steps: Option<usize>,
    /// Weight β of EAD's L1 term (paper: 0.01).
    #[arg(long, allow_negative_numbers = true)]
    pub beta: Option<f64>,
    /// How EAD picks its best example: en (elastic net) or l1.
    #[arg(long, value_enum)]
    pub decision_rule: Option<DecisionRule>,
}

impl AttackParams {
    /// The attack `kind` with main parameter `value` (ε, γ or c) and these parameters.
    pub fn spec(&self, kind: AttackKind, value: f64) -> AttackSpec {
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

/// Which test images of a run, on which device, in what batches.
#[derive(clap::Args, Debug)]
pub struct TestSet {
    /// Use the first N test images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Batch size.
    #[arg(long, default_value_t = 250)]
    pub batch_size: usize,
    /// Seed of random starts and targets.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the data set (default: the one the run was trained on).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Device (backend).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    /// Member-parallel placement D1,D2,… (cpu, wgpu, tch, cuda:I, tch-cuda:I): member k runs on
    /// device k mod n; the data, the ensemble's output and the attacks' steps are on D1
    /// (instead of --device).
    #[arg(long, value_delimiter = ',', num_args = 1, conflicts_with = "device")]
    pub devices: Vec<DeviceSpec>,
}

/// A trained run in evaluation mode and (the first `limit` of) its test set.
pub struct Loaded {
    pub model: adp::model::Ensemble,
    pub config: TrainConfig,
    pub test: adp::data::Dataset,
}

pub fn load_for_eval(run: &Path, on: &TestSet) -> Result<(Loaded, burn::prelude::Device)> {
    ensure!(on.batch_size >= 1, "--batch-size must be at least 1");
    let placement = adp::device::placement(on.device, &on.devices)?;
    let device = placement[0].clone();
    let (_, model) = load_run(run, &device)?;
    let model = model.place(&placement);
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
