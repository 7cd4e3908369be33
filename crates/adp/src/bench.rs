//! `adp bench`: throughput of the hot paths, measured on the device the user picks.
//!
//! Each row times whole steps after a warm-up: a training step of Algorithm 1 (forward of all
//! K members, the ECE or ADP objective, one backward, K Adam updates), inference of the
//! ensemble, and the input gradient that every iterative attack takes per step. Peak resident
//! memory is read from `/proc/self/status` (VmHWM), reset before each row where Linux allows it.

use std::time::Instant;

use anyhow::Result;
use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use std::cell::Cell;

use crate::attack::{AttackKind, AttackSpec, Classifier, Goal, Victim, input_gradient};
use crate::data::Batch;
use crate::device::{DeviceKind, DeviceSpec};
use crate::loss::AdpConfig;
use crate::model::{Ensemble, MemberConfig, ModelKind};
use crate::train::train_step;

/// What to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Architectures.
    pub models: Vec<ModelKind>,
    /// Ensemble sizes K.
    pub members: Vec<usize>,
    /// Batch size.
    pub batch_size: usize,
    /// Untimed steps before measuring.
    pub warmup: usize,
    /// Timed steps per row.
    pub steps: usize,
    /// Device.
    pub device: DeviceKind,
    /// Member-parallel placement (member k on `devices[k mod n]`, the batch and the loss on the
    /// first); empty measures on `device` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// Attacks whose throughput to measure (on the first K of `members` only).
    #[serde(default)]
    pub attacks: Vec<AttackKind>,
    /// Iterations of every iterative attack in the attack rows (throughput per gradient
    /// evaluation does not depend on it; the defaults, up to 1000, would take minutes).
    #[serde(default = "default_attack_steps")]
    pub attack_steps: usize,
}

fn default_attack_steps() -> usize {
    20
}

/// A classifier that counts the images whose input gradient is taken, so that attacks (which may shrink their batch to the examples still standing) can be
/// compared per gradient evaluation of one image.
struct Counting<'a> {
    inner: &'a dyn Classifier,
    gradients: Cell<usize>,
}

impl Classifier for Counting<'_> {
    fn member_logits(&self, x: Tensor<4>) -> Tensor<3> {
        if x.is_autodiff() {
            self.gradients.set(self.gradients.get() + x.dims()[0]);
        }
        self.inner.member_logits(x)
    }
}

/// One measured row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// `train ECE`, `train ADP`, `inference` or `attack gradient`.
    pub task: String,
    /// Architecture.
    pub model: ModelKind,
    /// Ensemble size K.
    pub members: usize,
    /// Images per second (for `attack gradient`: input gradients of single images per second).
    pub images_per_s: f64,
    /// Milliseconds per batch.
    pub ms_per_batch: f64,
    /// Peak resident memory during the row, MiB (process-wide peak where it cannot be reset).
    pub peak_rss_mib: f64,
    /// For attack rows: input-gradient evaluations of single images per second.
    #[serde(default)]
    pub gradients_per_s: Option<f64>,
}

/// The whole measurement, with the conditions it ran under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Backend / device.
    pub device: String,
    /// Hardware threads available to the process.
    pub threads: usize,
    /// Resident memory when the measurements started (device created, nothing built), MiB:
    /// subtract it from a row's peak for the memory the row itself needed.
    #[serde(default)]
    pub baseline_rss_mib: f64,
    /// Whether the CPU threads flushed subnormal floats to zero ([`crate::denormals`]).
    #[serde(default)]
    pub flush_to_zero: bool,
    /// Whether malloc kept freed memory for reuse ([`crate::malloc`]).
    #[serde(default)]
    pub malloc_keeps_freed: bool,
    /// Settings.
    pub config: BenchConfig,
    /// Rows.
    pub rows: Vec<BenchRow>,
}

/// Peak resident set size of this process in MiB, and whether it could be reset first.
fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory field of `/proc/self/status` (`VmHWM:`, `VmRSS:`) in MiB, NaN where unavailable.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn reset_peak_rss() {
    // "5" resets the peak RSS counter (Linux >= 4.0); elsewhere the peak stays process-wide.
    std::fs::write("/proc/self/clear_refs", "5").ok();
}

fn member_config(model: ModelKind) -> MemberConfig {
    let (c, hw) = match model {
        ModelKind::Cnn => (1, 28),
        ModelKind::Resnet20 => (3, 32),
    };
    MemberConfig {
        kind: model,
        input_shape: [c, hw, hw],
        num_classes: 10,
        mean: vec![0.5; c],
        std: vec![0.25; c],
    }
}

fn random_batch(config: &MemberConfig, n: usize, device: &Device) -> Batch {
    let [c, h, w] = config.input_shape;
    Batch {
        images: Tensor::random([n, c, h, w], Distribution::Uniform(0.0, 1.0), device),
        labels: Tensor::from_data(
            burn::tensor::TensorData::new((0..n as i64).map(|i| i % 10).collect::<Vec<_>>(), [n]),
            device,
        ),
    }
}

/// Times `step` after `warmup` calls; returns seconds per call.
fn time(warmup: usize, steps: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        step();
    }
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    start.elapsed().as_secs_f64() / steps.max(1) as f64
}

/// Runs every measurement of `config`, calling `report_row` as each row finishes.
pub fn run(config: &BenchConfig, mut report_row: impl FnMut(&BenchRow)) -> Result<BenchReport> {
    anyhow::ensure!(config.steps >= 1, "`steps` must be at least 1");
    anyhow::ensure!(config.batch_size >= 1, "`batch_size` must be at least 1");
    anyhow::ensure!(
        config.members.iter().all(|&k| k >= 2),
        "`members` must all be at least 2"
    );
    let placement = crate::device::placement(config.device, &config.devices)?;
    let placed_ad: Vec<Device> = placement.iter().map(|d| d.clone().autodiff()).collect();
    let device = placement[0].clone();
    let ad = device.clone().autodiff();
    // One tiny op so that a backend that loads its libraries lazily has done so.
    let _ = Tensor::<1>::zeros([1], &device).into_data();
    let baseline_rss_mib = status_mib("VmRSS:");
    let n = config.batch_size;
    let mut rows = Vec::new();
    for &model in &config.models {
        let mc = member_config(model);
        for &k in &config.members {
            let mut push = |task: &str, seconds: f64, per_step: usize| {
                let row = BenchRow {
                    task: task.into(),
                    model,
                    members: k,
                    images_per_s: per_step as f64 / seconds,
                    ms_per_batch: 1e3 * seconds,
                    peak_rss_mib: peak_rss_mib(),
                    gradients_per_s: None,
                };
                report_row(&row);
                rows.push(row);
            };
            for (task, objective) in [
                ("train ECE", AdpConfig::ece()),
                ("train ADP", AdpConfig::new(2.0, 0.5)),
            ] {
                reset_peak_rss();
                let mut ensemble = Some(Ensemble::new(&mc, k, &ad).place(&placed_ad));
                let mut optims: Vec<ModuleOptimizer> =
                    (0..k).map(|_| AdamConfig::new().init()).collect();
                let (lrs, frozen) = (vec![1e-3; k], vec![false; k]);
                let seconds = time(config.warmup, config.steps, || {
                    let batch = random_batch(&mc, n, &ad);
                    let m = ensemble
                        .take()
                        .expect("the model is put back after each step");
                    let (m, _) = train_step(m, &mut optims, batch, &objective, 1e-4, &lrs, &frozen)
                        .expect("a finite loss on random data");
                    ensemble = Some(m);
                });
                push(task, seconds, n);
            }
            reset_peak_rss();
            let ensemble = Ensemble::new(&mc, k, &device).valid().place(&placement);
            let batch = random_batch(&mc, n, &device);
            let seconds = time(config.warmup, config.steps, || {
                let _ = ensemble
                    .forward(batch.images.clone())
                    .mean_probs()
                    .into_data();
            });
            push("inference", seconds, n);
            reset_peak_rss();
            let victim = Victim::ensemble(&ensemble);
            let goal = Goal::Untargeted(batch.labels.clone());
            let seconds = time(config.warmup, config.steps, || {
                let _ = input_gradient(&victim, &batch.images, &goal).into_data();
            });
            push("attack gradient", seconds, n);
            if k != config.members[0] {
                continue;
            }
            for &kind in &config.attacks {
                reset_peak_rss();
                let counting = Counting {
                    inner: &victim,
                    gradients: Cell::new(0),
                };
                let attack = AttackSpec {
                    steps: Some(config.attack_steps),
                    restarts: Some(1),
                    ..AttackSpec::main(kind, 0.1)
                }
                .build();
                let start = Instant::now();
                attack.run(&counting, batch.images.clone(), &goal);
                let seconds = start.elapsed().as_secs_f64();
                let row = BenchRow {
                    task: format!("attack {}", kind.name()),
                    model,
                    members: k,
                    images_per_s: n as f64 / seconds,
                    ms_per_batch: 1e3 * seconds,
                    peak_rss_mib: peak_rss_mib(),
                    gradients_per_s: Some(counting.gradients.get() as f64 / seconds),
                };
                report_row(&row);
                rows.push(row);
            }
        }
    }
    Ok(BenchReport {
        device: match config.devices.as_slice() {
            [] => format!("{:?} ({:?})", config.device, device),
            specs => {
                let names: Vec<String> = specs.iter().map(ToString::to_string).collect();
                format!("member-parallel on {}", names.join(","))
            }
        },
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        baseline_rss_mib,
        flush_to_zero: crate::denormals::flushed_everywhere(),
        malloc_keeps_freed: crate::malloc::keeps_freed_memory(),
        config: config.clone(),
        rows,
    })
}

/// The report as a Markdown table, with the ADP/ECE cost ratio of each training pair.
pub fn markdown(report: &BenchReport) -> String {
    let mut s = format!(
        "Device: {}, {} hardware threads, subnormals {}, freed memory {}, batch {}, {} timed steps after {} warm-up\n\n| task | model | K | img/s | ms/batch | peak RSS MiB | ADP/ECE time | grad evals/s |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
        report.device,
        report.threads,
        if report.flush_to_zero {
            "flushed to zero"
        } else {
            "kept"
        },
        if report.malloc_keeps_freed {
            "kept by malloc"
        } else {
            "returned by malloc"
        },
        report.config.batch_size,
        report.config.steps,
        report.config.warmup
    );
    for r in &report.rows {
        let ratio = (r.task == "train ADP")
            .then(|| {
                report
                    .rows
                    .iter()
                    .find(|e| e.task == "train ECE" && e.model == r.model && e.members == r.members)
                    .map(|e| format!("{:.3}", r.ms_per_batch / e.ms_per_batch))
            })
            .flatten()
            .unwrap_or_default();
        let grads = r
            .gradients_per_s
            .map(|g| format!("{g:.1}"))
            .unwrap_or_default();
        s.push_str(&format!(
            "| {} | {:?} | {} | {:.1} | {:.1} | {:.0} | {} | {} |\n",
            r.task,
            r.model,
            r.members,
            r.images_per_s,
            r.ms_per_batch,
            r.peak_rss_mib,
            ratio,
            grads
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_bench_measures_every_task() {
        let config = BenchConfig {
            models: vec![ModelKind::Cnn],
            members: vec![2],
            batch_size: 4,
            warmup: 0,
            steps: 1,
            device: DeviceKind::Cpu,
            devices: Vec::new(),
            attacks: vec![AttackKind::Fgsm, AttackKind::Pgd],
            attack_steps: 3,
        };
        let mut seen = 0;
        let report = run(&config, |_| seen += 1).unwrap();
        assert_eq!(report.rows.len(), 6);
        assert_eq!(seen, 6);
        let pgd = report.rows.iter().find(|r| r.task == "attack pgd").unwrap();
        let fgsm = report
            .rows
            .iter()
            .find(|r| r.task == "attack fgsm")
            .unwrap();
        // FGSM takes one gradient, PGD three: gradient throughput is comparable, image throughput not.
        assert!(pgd.gradients_per_s.unwrap() > 0.0 && fgsm.gradients_per_s.unwrap() > 0.0);
        assert!(
            report
                .rows
                .iter()
                .all(|r| r.images_per_s > 0.0 && r.images_per_s.is_finite())
        );
        // Read from /proc/self/status: a process always has some resident memory.
        assert!(report.baseline_rss_mib > 0.0, "{}", report.baseline_rss_mib);
        let md = markdown(&report);
        assert!(md.contains("| train ADP | Cnn | 2 |"), "{md}");
    }
}
