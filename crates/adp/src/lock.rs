//! Exclusive locks on run directories.
//!
//! Every command that writes to a run directory (training, resuming, `adp eval` saving its
//! results, `adp import`, an export into the run) first takes an exclusive OS lock on
//! `RUN_DIR/lock` ([`std::fs::File::try_lock`], `flock(2)` on Linux). A second process that
//! wants the same directory fails at once with one line naming the process that holds it. The
//! OS releases the lock when its holder exits, however it exits (a `kill -9` included), so a lock
//! is never left stale. The holder writes its process id and command into the file, for the
//! message of whoever is refused.
//!
//! Within one process the lock is re-entrant: the library's `train` can take the lock of a run
//! whose caller (say `adp reproduce`) already holds it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = "lock";

/// Locks this process holds: the open lock file and how many guards share it.
fn held() -> &'static Mutex<HashMap<PathBuf, (File, usize)>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, (File, usize)>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

/// An exclusive lock on a run directory, held until the guard is dropped (or the process ends).
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct RunLock {
    key: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and takes its exclusive lock for `command` (e.g. `train`, recorded
    /// for the message of a refused process). Fails at once, naming the holder's process id and
    /// command, when another process holds it; fails naming `dir` when `dir` is not a directory.
    pub fn acquire(dir: &Path, command: &str) -> Result<RunLock> {
        if dir.exists() && !dir.is_dir() {
            bail!(
                "{} is a file, not a run directory; choose another path",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let mut map = held().lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, count)) = map.get_mut(&key) {
            *count += 1;
            return Ok(RunLock { key });
        }
        let path = key.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                file.read_to_string(&mut text).ok();
                let holder = text.trim();
                let who = match holder.split_once(' ') {
                    Some((pid, cmd)) => format!("process {pid} (`adp {cmd}`)"),
                    None if !holder.is_empty() => format!("process {holder}"),
                    None => "another process".to_string(),
                };
                bail!(
                    "{} is in use by {who}; wait for it to finish or stop it, then try again",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|_| file.write_all(format!("{} {command}\n", std::process::id()).as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        map.insert(key.clone(), (file, 1));
        Ok(RunLock { key })
    }
}

/// Takes the lock of `run` for `command` when `out` (a file to be written) lies inside the run
/// directory; `None` when it lies elsewhere.
pub fn lock_if_inside(run: &Path, out: &Path, command: &str) -> Result<Option<RunLock>> {
    let Ok(run_abs) = std::fs::canonicalize(run) else {
        return Ok(None);
    };
    let out_abs = std::path::absolute(out).unwrap_or(out.to_path_buf());
    // The nearest existing ancestor of `out`, resolved (its file may not exist yet).
    let mut base = out_abs.parent().map(Path::to_path_buf);
    while let Some(b) = &base {
        if let Ok(real) = std::fs::canonicalize(b) {
            return Ok(if real.starts_with(&run_abs) {
                Some(RunLock::acquire(run, command)?)
            } else {
                None
            });
        }
        base = b.parent().map(Path::to_path_buf);
    }
    Ok(None)
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let mut map = held().lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, count)) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Closing the file releases the lock; the file stays (removing it would let a
                // third process lock a fresh file while a second still waits on the old one).
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_reentrant_in_one_process_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let a = RunLock::acquire(&run, "train").unwrap();
        let b = RunLock::acquire(&run, "eval").unwrap();
        let text = std::fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{} train\n", std::process::id()));
        // A second open file description is what another process would hold.
        let other = File::open(run.join(LOCK_FILE)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(a);
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(b);
        other.try_lock().unwrap();
    }

    #[test]
    fn a_file_is_not_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = RunLock::acquire(&file, "train").unwrap_err().to_string();
        assert!(err.contains("is a file, not a run directory"), "{err}");
    }
}
