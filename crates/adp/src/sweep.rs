//! Sweeps: a grid of training configurations expanded into run directories.
//!
//! A sweep file is TOML with three parts:
//!
//! ```toml
//! out = "runs/sweep"            # where the run directories go
//!
//! [train]                       # fields of config.toml shared by every run
//! model = "cnn"
//! epochs = 2
//!
//! [grid]                        # fields that vary: every combination is one run
//! method = ["ece", "adp"]
//! alpha = [2.0]                 # alpha, beta, temperature, diversity stand for adp.*
//! seed = [0, 1]
//! members = [3, 5]
//! ```
//!
//! Fields are those of [`TrainConfig`] (a run's `config.toml`), dotted for nested ones
//! (`adp.beta`, `freeze.patience`); unset fields take `adp train`'s defaults, and `data_dir`,
//! when unset, is `data/<dataset>`. Relative paths (`out`, `data_dir`) are taken from the sweep
//! file's directory, so the configurations hold absolute paths and the runs can start anywhere.
//!
//! The runs are the combinations of the grid's fields in the fields' alphabetical order, the
//! last varying fastest; run i keeps its index while the file is unchanged. A run's directory is
//! named after the fields with more than one value (`members-3_method-adp_seed-1`).
//!
//! [`run_one`] is what a job of the sweep does: it writes the run's `config.toml` if it is not
//! there yet (and refuses one that differs), skips a finished run, and otherwise trains, resuming
//! from the newest checkpoint, under the run's lock.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use toml::{Table, Value};

use crate::train::{Method, TrainConfig};

/// Short names of nested fields accepted in `[train]` and `[grid]`.
const ALIASES: [(&str, &str); 4] = [
    ("alpha", "adp.alpha"),
    ("beta", "adp.beta"),
    ("temperature", "adp.temperature"),
    ("diversity", "adp.diversity"),
];

/// Fields a sweep fixes itself.
const RESERVED: [&str; 1] = ["imported_from"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    out: PathBuf,
    #[serde(default)]
    train: Table,
    #[serde(default)]
    grid: Table,
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    /// Index in the sweep (0-based).
    pub index: usize,
    /// Directory name, from the grid values of this run.
    pub name: String,
    /// Absolute run directory.
    pub dir: PathBuf,
    /// The run's configuration, as `config.toml` holds it.
    pub config: TrainConfig,
}

/// An expanded sweep file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The sweep file, absolute.
    pub file: PathBuf,
    /// Directory holding the run directories, absolute.
    pub out: PathBuf,
    /// The runs, in index order.
    pub runs: Vec<SweepRun>,
}

/// How far a run of a sweep has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No `config.toml` yet.
    New,
    /// `config.toml` written, no checkpoint.
    Configured,
    /// Checkpoints up to this many finished epochs.
    Started(usize),
    /// The final model is saved.
    Finished,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunState::New => write!(f, "new"),
            RunState::Configured => write!(f, "configured"),
            RunState::Started(e) => write!(f, "started (epoch {e})"),
            RunState::Finished => write!(f, "finished"),
        }
    }
}

/// Dotted field paths with their values: tables are walked into, anything else is a leaf.
fn leaves(table: &Table, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            ALIASES
                .iter()
                .find(|(a, _)| a == k)
                .map_or(k.clone(), |(_, full)| full.to_string())
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) if !t.is_empty() => leaves(t, &path, out),
            other => out.push((path, other.clone())),
        }
    }
}

fn set_path(table: &mut Table, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("a field name");
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("a table");
    }
    t.insert(last.to_string(), value);
}

fn get_path<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// `adp train`'s defaults, as a table.
fn defaults() -> Table {
    let config = TrainConfig::paper_mnist(Method::Adp, 2.0, 0.5);
    Table::try_from(config).expect("a configuration serialises to TOML")
}

/// `table` as a configuration, naming `what` (the field being set) in errors; a field the
/// configuration does not have is refused.
fn to_config(table: &Table, what: &str, path: Option<&str>, file: &Path) -> Result<TrainConfig> {
    let config: TrainConfig = Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message().trim().replace('\n', "; ")))
        .with_context(|| format!("{}: `{what}` is invalid", file.display()))?;
    let Some(path) = path else {
        return Ok(config);
    };
    let back = Table::try_from(&config)?;
    ensure!(
        get_path(&back, path).is_some(),
        "{}: `{what}` is not a field of a training configuration (config.toml); known fields: {}",
        file.display(),
        back.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(config)
}

/// A directory-name fragment for a value.
fn value_name(v: &Value) -> String {
    let raw = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(value_name).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads and expands the sweep file `file`. Every error names the file and the field.
pub fn load(file: &Path) -> Result<Sweep> {
    let text = crate::io::read_text(file)?;
    let sweep: SweepFile = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid sweep file: {}",
            file.display(),
            e.message().trim().replace('\n', "; ")
        )
    })?;
    let file =
        std::path::absolute(file).with_context(|| format!("cannot resolve {}", file.display()))?;
    let base_dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let absolute = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let mut fixed = Vec::new();
    leaves(&sweep.train, "", &mut fixed);
    let mut grid = Vec::new();
    leaves(&sweep.grid, "", &mut grid);
    let mut base = defaults();
    for (path, value) in &fixed {
        let what = format!("train.{path}");
        ensure!(
            !RESERVED.contains(&path.as_str()),
            "{}: `{what}` cannot be set by a sweep",
            file.display()
        );
        set_path(&mut base, path, value.clone());
        to_config(&base, &what, Some(path), &file)?;
    }
    let mut axes: Vec<(String, Vec<Value>)> = Vec::new();
    for (path, value) in grid {
        let what = format!("grid.{path}");
        ensure!(
            !RESERVED.contains(&path.as_str()),
            "{}: `{what}` cannot be set by a sweep",
            file.display()
        );
        ensure!(
            !fixed.iter().any(|(p, _)| *p == path),
            "{}: `{path}` is set both in [train] and in [grid]; keep one",
            file.display()
        );
        let values = match value {
            Value::Array(v) if !v.is_empty() => v,
            _ => bail!(
                "{}: `{what}` must be a non-empty list of values, e.g. `{path} = [0, 1]`",
                file.display()
            ),
        };
        for v in &values {
            let mut t = base.clone();
            set_path(&mut t, &path, v.clone());
            to_config(&t, &what, Some(&path), &file).with_context(|| format!("value {v}"))?;
        }
        axes.push((path, values));
    }
    let data_dir_set =
        get_path(&sweep.train, "data_dir").is_some() || axes.iter().any(|(p, _)| p == "data_dir");
    let out = absolute(&sweep.out);
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    let mut runs = Vec::with_capacity(total);
    for index in 0..total {
        let mut t = base.clone();
        let mut rest = index;
        let mut picks = vec![0usize; axes.len()];
        for (a, (_, values)) in axes.iter().enumerate().rev() {
            picks[a] = rest % values.len();
            rest /= values.len();
        }
        let mut name_parts = Vec::new();
        for ((path, values), &p) in axes.iter().zip(&picks) {
            set_path(&mut t, path, values[p].clone());
            if values.len() > 1 {
                let field = path.rsplit('.').next().unwrap_or(path);
                name_parts.push(format!("{field}-{}", value_name(&values[p])));
            }
        }
        let mut config = to_config(&t, "grid", None, &file)?;
        if !data_dir_set {
            config.data_dir = config.dataset.default_dir();
        }
        config.data_dir = absolute(&config.data_dir);
        let name = if name_parts.is_empty() {
            "run".to_string()
        } else {
            name_parts.join("_")
        };
        config.validate_in(Some(&file)).with_context(|| {
            format!("run {index} ({name}) of the sweep has an invalid configuration")
        })?;
        runs.push(SweepRun {
            index,
            dir: out.join(&name),
            name,
            config,
        });
    }
    for (i, r) in runs.iter().enumerate() {
        if let Some(other) = runs[..i].iter().find(|o| o.name == r.name) {
            bail!(
                "{}: runs {} and {} would share the directory {}; give the grid values that \
                 differ only in characters other than letters, digits, `+`, `.` and `-` \
                 distinct names",
                file.display(),
                other.index,
                r.index,
                r.dir.display()
            );
        }
    }
    Ok(Sweep { file, out, runs })
}

/// How far `run` has got, from the files in its directory.
pub fn state(run: &SweepRun) -> Result<RunState> {
    if run.dir.join("model.safetensors").exists() && run.dir.join("manifest.json").exists() {
        return Ok(RunState::Finished);
    }
    if let Some(l) = crate::train::checkpoint::latest(&run.dir)? {
        return Ok(RunState::Started(l.epoch));
    }
    Ok(if run.dir.join("config.toml").exists() {
        RunState::Configured
    } else {
        RunState::New
    })
}

/// Writes `run`'s `config.toml` (as `adp train` writes it) unless it is there; refuses a
/// `config.toml` that differs from the sweep's, and a directory holding parts of a run but no
/// `config.toml`. Returns the run's state.
pub fn prepare(run: &SweepRun, sweep_file: &Path) -> Result<RunState> {
    let path = run.dir.join("config.toml");
    if path.exists() {
        let saved: TrainConfig = crate::io::read_toml(&path)?;
        if let Some((field, was, now)) = crate::io::first_difference(&saved, &run.config)? {
            bail!(
                "{}: `{field}` is {was}, but {} now gives {now} for this run; the sweep changed \
                 since the run was set up. Restore the sweep file, or move {} away",
                path.display(),
                sweep_file.display(),
                run.dir.display()
            );
        }
        return state(run);
    }
    let _lock = crate::lock::RunLock::acquire(&run.dir, "sweep")?;
    for part in [
        "model.toml",
        "model.safetensors",
        "latest.json",
        "checkpoint",
    ] {
        let p = run.dir.join(part);
        ensure!(
            !p.exists(),
            "{} holds part of a run ({} exists) but no config.toml; move it away or out of the \
             sweep's directory",
            run.dir.display(),
            p.display()
        );
    }
    crate::io::write_toml(&path, &run.config)?;
    Ok(RunState::Configured)
}

/// What [`run_one`] did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run had finished before; nothing was done.
    AlreadyFinished,
    /// The run was trained (from the start or from a checkpoint) to the end.
    Trained(crate::train::TrainState),
}

/// Runs job `run` of the sweep in `sweep_file`: [`prepare`], then train to the end under the
/// run's lock, resuming from the newest checkpoint; a finished run is left alone.
pub fn run_one(run: &SweepRun, sweep_file: &Path) -> Result<Outcome> {
    let _lock = crate::lock::RunLock::acquire(&run.dir, "sweep --run-index")?;
    if prepare(run, sweep_file)? == RunState::Finished {
        return Ok(Outcome::AlreadyFinished);
    }
    let (_, state) = crate::train::train(&run.config, &run.dir, true)?;
    Ok(Outcome::Trained(state))
}
