//! `adp reproduce transfer|detect|ed-histogram`: the paper's figures from one command.
//!
//! - `transfer` (Section 4.4, Fig. 3): K×K transferability matrices of PGD and MIM, untargeted
//!   and targeted, for the ECE baseline and ADP_{2,0.5};
//! - `detect` (Section 4.5, Fig. 4): ROC curves and AUC of −log ED (predicted class removed) as a
//!   detector of FGSM, BIM, PGD and MIM examples, for ECE and ADP_{2,0.5};
//! - `ed-histogram` (App. B.3, Fig. 5): histograms and medians of the test set's log ED for ECE,
//!   ADP_{2,0} and ADP_{2,0.5};
//! - `tsne` (Section 4.2, Fig. 2): t-SNE of each member's final hidden features on test images,
//!   for ECE and ADP_{2,0.5}, with kNN statistics.
//!
//! The methods train (or are reused) through [`train_or_reuse`] with a [`Preset`]'s budget, so
//! experiments sharing an output directory share their runs. Results go to `OUT/<name>.json` with
//! Markdown, CSV, PNG and SVG next to it; [`rebuild`] redraws those from the JSON alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::attack::{AttackKind, AttackSpec};
use crate::data::DatasetKind;
use crate::device::DeviceKind;
use crate::eval::detect::{DetectionReport, detect};
use crate::eval::ed_histogram::{EdHistogram, ed_histogram};
use crate::eval::feature_tsne::{TsneReport, feature_tsne};
use crate::eval::transfer::{TransferReport, transfer_matrix};
use crate::eval::tsne::TsneConfig;
use crate::paper::reproduce::{
    Preset, ReproduceConfig, load_or_fetch_test, train_or_reuse, training_summary, write_report,
};
use crate::report::plots::{
    ED_BINS, EdHistogramFigure, RocFigure, TransferFigure, TsneFigure, save,
};
use crate::train::checkpoint::load_run;

/// The figure experiments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PaperFigure {
    /// Fig. 3: adversarial transferability among the members.
    Transfer,
    /// Fig. 4: ensemble diversity as a detector of adversarial examples.
    Detect,
    /// Fig. 5 (App. B.3): histogram of the test set's log ensemble diversity.
    EdHistogram,
    /// Fig. 2 (Section 4.2): t-SNE of each member's final hidden features.
    Tsne,
}

impl PaperFigure {
    /// All of them.
    pub const ALL: [PaperFigure; 4] = [
        PaperFigure::Transfer,
        PaperFigure::Detect,
        PaperFigure::EdHistogram,
        PaperFigure::Tsne,
    ];

    /// Name on the command line and stem of the output files.
    pub fn name(self) -> &'static str {
        match self {
            PaperFigure::Transfer => "transfer",
            PaperFigure::Detect => "detect",
            PaperFigure::EdHistogram => "ed-histogram",
            PaperFigure::Tsne => "tsne",
        }
    }
}

/// Everything that defines a figure experiment; saved as `OUT/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureConfig {
    /// Which figure.
    pub figure: PaperFigure,
    /// Training budget, data and methods (as (α, β)) shared with `adp reproduce mnist`.
    pub reproduce: ReproduceConfig,
    /// Test examples used (the first N of the test set).
    pub examples: usize,
    /// The attacks (none for `ed-histogram` and `tsne`).
    pub attacks: Vec<AttackSpec>,
    /// The t-SNE settings (`tsne` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsne: Option<TsneConfig>,
}

impl FigureConfig {
    /// The settings of `preset`: the paper's methods and attacks with the MNIST budgets
    /// (ε = 0.1; the paper's Fig. 3 uses 0.05 on CIFAR-10).
    pub fn preset(
        figure: PaperFigure,
        preset: Preset,
        dataset: DatasetKind,
        data_dir: PathBuf,
        device: DeviceKind,
    ) -> Self {
        let mut reproduce = ReproduceConfig::preset(preset, dataset, data_dir, device);
        let eps = |kinds: &[AttackKind]| kinds.iter().map(|&k| AttackSpec::new(k, 0.1)).collect();
        let pick = |tiny: usize, cpu: usize, paper: usize| match preset {
            Preset::Tiny => tiny,
            Preset::Cpu => cpu,
            Preset::Paper => paper,
        };
        let (examples, attacks) = match figure {
            PaperFigure::Transfer => (pick(8, 500, 1000), eps(&[AttackKind::Pgd, AttackKind::Mim])),
            PaperFigure::Detect => (
                pick(16, 1000, 1000),
                eps(&[
                    AttackKind::Fgsm,
                    AttackKind::Bim,
                    AttackKind::Pgd,
                    AttackKind::Mim,
                ]),
            ),
            PaperFigure::EdHistogram => (pick(64, 10_000, 10_000), Vec::new()),
            // Fig. 2 embeds the whole test set.
            PaperFigure::Tsne => (pick(64, 1000, 10_000), Vec::new()),
        };
        // 64 points leave too few neighbours for perplexity 30.
        let tsne = (figure == PaperFigure::Tsne).then(|| match preset {
            Preset::Tiny => TsneConfig {
                perplexity: 10.0,
                epochs: 300,
                exaggeration_epochs: 100,
                ..TsneConfig::default()
            },
            Preset::Cpu | Preset::Paper => TsneConfig::default(),
        });
        if figure != PaperFigure::EdHistogram {
            reproduce.methods = vec![(0.0, 0.0), (2.0, 0.5)];
        }
        Self {
            figure,
            reproduce,
            examples,
            attacks,
            tsne,
        }
    }
}

/// The measured results of one figure experiment, one entry per method.
#[derive(Debug, Clone, PartialEq)]
pub enum FigureResults {
    /// Fig. 3.
    Transfer(Vec<TransferReport>),
    /// Fig. 4.
    Detect(Vec<DetectionReport>),
    /// Fig. 5.
    EdHistogram(Vec<EdHistogram>),
    /// Fig. 2.
    Tsne(Vec<TsneReport>),
}

/// Trains (or reuses) the methods of `config` into `out`, runs the experiment and writes its
/// files; returns the results and their Markdown report.
pub fn run_figure(config: &FigureConfig, out: &Path) -> Result<(FigureResults, String)> {
    let rc = &config.reproduce;
    let device = rc.train.device.device()?;
    let test = load_or_fetch_test(rc)?.take(config.examples);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    crate::io::write_toml(&out.join(format!("{}.toml", config.figure.name())), config)?;
    let (mut transfer, mut detection, mut hists) = (Vec::new(), Vec::new(), Vec::new());
    let mut embeddings = Vec::new();
    for &(alpha, beta) in &rc.methods {
        let tc = rc.train_config(alpha, beta);
        let run = train_or_reuse(&tc, out)?;
        let model = load_run(&run, &device)?.1.valid();
        let label = tc.label();
        let bs = rc.eval_batch_size;
        match config.figure {
            PaperFigure::Transfer => {
                let mut report = TransferReport {
                    label,
                    matrices: Vec::new(),
                };
                for spec in &config.attacks {
                    for targeted in [false, true] {
                        let m =
                            transfer_matrix(&model, &test, spec, targeted, bs, tc.seed, &device)?;
                        crate::progress::note(&format!(
                            "{}: transfer matrix of {}",
                            report.label,
                            m.title()
                        ));
                        report.matrices.push(m);
                    }
                }
                transfer.push(report);
            }
            PaperFigure::Detect => {
                let r = detect(&model, &label, &test, &config.attacks, bs, tc.seed, &device)?;
                for a in &r.attacks {
                    crate::progress::note(&format!(
                        "{label}: {} detection AUC {:.3}",
                        a.description, a.auc
                    ));
                }
                detection.push(r);
            }
            PaperFigure::EdHistogram => {
                let h = ed_histogram(&model, &label, &test, bs, &device);
                crate::progress::note(&format!("{label}: median log ED {:.3}", h.median));
                hists.push(h);
            }
            PaperFigure::Tsne => {
                let settings = config.tsne.clone().unwrap_or_default();
                embeddings.push(feature_tsne(&model, &label, &test, &settings, bs, &device)?);
            }
        }
    }
    let results = match config.figure {
        PaperFigure::Transfer => FigureResults::Transfer(transfer),
        PaperFigure::Detect => FigureResults::Detect(detection),
        PaperFigure::EdHistogram => FigureResults::EdHistogram(hists),
        PaperFigure::Tsne => FigureResults::Tsne(embeddings),
    };
    results.save_json(out)?;
    let md = results.write(config, out)?;
    Ok((results, md))
}

impl FigureResults {
    /// Which figure these results belong to.
    pub fn figure(&self) -> PaperFigure {
        match self {
            FigureResults::Transfer(_) => PaperFigure::Transfer,
            FigureResults::Detect(_) => PaperFigure::Detect,
            FigureResults::EdHistogram(_) => PaperFigure::EdHistogram,
            FigureResults::Tsne(_) => PaperFigure::Tsne,
        }
    }

    /// Saves the results as `out/<name>.json`.
    pub fn save_json(&self, out: &Path) -> Result<()> {
        let path = out.join(format!("{}.json", self.figure().name()));
        match self {
            FigureResults::Transfer(r) => crate::io::write_json(&path, r),
            FigureResults::Detect(r) => crate::io::write_json(&path, r),
            FigureResults::EdHistogram(r) => crate::io::write_json(&path, r),
            FigureResults::Tsne(r) => crate::io::write_json(&path, r),
        }
    }

    /// Reads `dir/<name>.json` of `figure`.
    pub fn load_json(dir: &Path, figure: PaperFigure) -> Result<Self> {
        let path = dir.join(format!("{}.json", figure.name()));
        Ok(match figure {
            PaperFigure::Transfer => FigureResults::Transfer(crate::io::read_json(&path)?),
            PaperFigure::Detect => FigureResults::Detect(crate::io::read_json(&path)?),
            PaperFigure::EdHistogram => FigureResults::EdHistogram(crate::io::read_json(&path)?),
            PaperFigure::Tsne => FigureResults::Tsne(crate::io::read_json(&path)?),
        })
    }

    /// Writes `<name>.md`, `<name>.csv` (detect: also `detect-roc.csv`), `<name>.png` and
    /// `<name>.svg` into `out`; returns the Markdown.
    pub fn write(&self, config: &FigureConfig, out: &Path) -> Result<String> {
        let name = self.figure().name();
        let stem = out.join(name);
        let (body, csv) = match self {
            FigureResults::Transfer(r) => {
                save(&TransferFigure(r), &stem)?;
                (TransferReport::markdown(r), TransferReport::to_csv(r))
            }
            FigureResults::Detect(r) => {
                save(&RocFigure(r), &stem)?;
                crate::io::atomic_write(
                    &out.join("detect-roc.csv"),
                    DetectionReport::roc_csv(r)?.as_bytes(),
                )?;
                (DetectionReport::markdown(r), DetectionReport::to_csv(r))
            }
            FigureResults::EdHistogram(r) => {
                save(&EdHistogramFigure(r), &stem)?;
                (EdHistogram::markdown(r), EdHistogram::to_csv(r, ED_BINS))
            }
            FigureResults::Tsne(r) => {
                save(&TsneFigure(r), &stem)?;
                (TsneReport::markdown(r), TsneReport::to_csv(r))
            }
        };
        let attacks: Vec<String> = config
            .attacks
            .iter()
            .map(|a| format!("{} {}", a.kind.name().to_uppercase(), a.parameter_label()))
            .collect();
        let md = format!(
            "# {name} on {} ({:?} preset)\n\n{}; the first {} test images{}.\n\n{body}\n![{name}]({name}.png)\n",
            config.reproduce.dataset.name(),
            config.reproduce.preset,
            training_summary(&config.reproduce.train),
            config.examples,
            if attacks.is_empty() {
                String::new()
            } else {
                format!("; attacks {}", attacks.join(", "))
            },
        );
        crate::io::atomic_write(&out.join(format!("{name}.md")), md.as_bytes())?;
        crate::io::atomic_write(&stem.with_extension("csv"), csv.as_bytes())?;
        Ok(md)
    }
}

/// `adp report DIR`: rewrites the tables and figures of every experiment whose results `dir`
/// holds (`transfer.json`, `detect.json`, `ed-histogram.json`, `tsne.json`, `table1.json` …
/// `table5.json`, and the Table 1-2 comparison's `report.json`), without training or attacking;
/// returns the names of the rebuilt experiments.
pub fn rebuild(dir: &Path) -> Result<Vec<&'static str>> {
    anyhow::ensure!(
        dir.is_dir(),
        "{} does not exist or is not a directory; pass an output directory of `adp reproduce`",
        dir.display()
    );
    let mut done = Vec::new();
    for figure in PaperFigure::ALL {
        let name = figure.name();
        if !dir.join(format!("{name}.json")).exists() {
            continue;
        }
        let config: FigureConfig = crate::io::read_toml(&dir.join(format!("{name}.toml")))?;
        FigureResults::load_json(dir, figure)?.write(&config, dir)?;
        done.push(name);
    }
    done.extend(crate::paper::tables::rebuild(dir)?);
    if dir.join("report.json").exists() {
        let config: ReproduceConfig = crate::io::read_toml(&dir.join("reproduce.toml"))?;
        let reports: Vec<crate::eval::EvalReport> = crate::io::read_json(&dir.join("report.json"))?;
        write_report(&config, &reports, dir)?;
        done.push("comparison");
    }
    if dir.join("fidelity.json").exists() {
        let config: crate::paper::fidelity::FidelityConfig =
            crate::io::read_toml(&dir.join("fidelity.toml"))?;
        let results: Vec<crate::paper::fidelity::FidelityResult> =
            crate::io::read_json(&dir.join("fidelity.json"))?;
        crate::paper::fidelity::write_outputs(&config, &results, dir)?;
        done.push("fidelity");
    }
    if done.is_empty() {
        bail!(
            "{} holds no results of `adp reproduce` (transfer.json, detect.json, ed-histogram.json, tsne.json, tableN.json, report.json or fidelity.json)",
            dir.display()
        );
    }
    Ok(done)
}
