//! `adp sweep SWEEP.toml`: set up, list or run the runs of a sweep (library: [`adp::sweep`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use adp::sweep::{Outcome, load, prepare, run_one, state};

/// Expand a sweep file (a grid of training configurations) into run directories; print its jobs;
/// or run one of them.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (TOML: `out`, `[train]`, `[grid]`; see docs/scale.md).
    pub file: PathBuf,
    /// Print one self-contained shell command per run (absolute paths), for a Slurm job array,
    /// GNU parallel or Ray; line i+1 is `--run-index i`. Writes nothing.
    #[arg(long, conflicts_with_all = ["run_index", "dirs"])]
    pub jobs: bool,
    /// Print the absolute run directories, one per line, in index order. Writes nothing.
    #[arg(long, conflicts_with = "run_index")]
    pub dirs: bool,
    /// Run job I (0-based, e.g. `$SLURM_ARRAY_TASK_ID`): write its config.toml if absent, train
    /// it to the end resuming from its newest checkpoint; a finished run is left alone.
    #[arg(long, value_name = "I")]
    pub run_index: Option<usize>,
}

/// `s` quoted for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn path_arg(p: &Path) -> String {
    shell_quote(&p.to_string_lossy())
}

/// Runs `adp sweep`.
pub fn run_sweep(a: SweepArgs) -> Result<()> {
    let sweep = load(&a.file)?;
    if a.jobs {
        let exe = std::env::current_exe().context("cannot find the adp binary's own path")?;
        for r in &sweep.runs {
            println!(
                "{} sweep {} --run-index {}",
                path_arg(&exe),
                path_arg(&sweep.file),
                r.index
            );
        }
        return Ok(());
    }
    if a.dirs {
        for r in &sweep.runs {
            println!("{}", r.dir.display());
        }
        return Ok(());
    }
    if let Some(i) = a.run_index {
        let n = sweep.runs.len();
        ensure!(
            i < n,
            "--run-index {i} is out of range: {} expands to {n} runs (0 to {})",
            sweep.file.display(),
            n - 1
        );
        let run = &sweep.runs[i];
        eprintln!(
            "sweep run {i}: {} in {}",
            run.config.label(),
            run.dir.display()
        );
        match run_one(run, &sweep.file)? {
            Outcome::AlreadyFinished => {
                println!("{} had finished; left as it is", run.dir.display())
            }
            Outcome::Trained(st) => println!(
                "trained {} into {}: {} epochs, training accuracy {:.2}%",
                run.config.label(),
                run.dir.display(),
                st.epoch,
                100.0 * st.history.last().map_or(0.0, |m| m.accuracy)
            ),
        }
        return Ok(());
    }
    std::fs::create_dir_all(&sweep.out)
        .with_context(|| format!("cannot create {}", sweep.out.display()))?;
    for r in &sweep.runs {
        let before = state(r)?;
        let now = prepare(r, &sweep.file)?;
        let note = if before == adp::sweep::RunState::New {
            "config.toml written"
        } else {
            "kept"
        };
        println!(
            "{:>3}  {:<18} {:<22} {}  ({note})",
            r.index,
            now.to_string(),
            r.config.label(),
            r.dir.display()
        );
    }
    println!(
        "{} runs in {}; `adp sweep {} --jobs` prints their commands",
        sweep.runs.len(),
        sweep.out.display(),
        path_arg(&sweep.file)
    );
    Ok(())
}
