//! Crash-safe file output: every result is written to a temporary file in the same directory,
//! flushed to disk and renamed over the target, so a killed run never leaves a half-written file.
//! Bounded file input: readers refuse anything but regular files (a FIFO would block, a device
//! such as `/dev/zero` never ends) and never read more than a file's length.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The largest configuration or result file (TOML, JSON) the readers accept.
pub const MAX_TEXT_FILE: u64 = 256 << 20;

/// Opens `path` for reading after checking that it is a regular file (not a FIFO, a device or a
/// directory); returns the file and its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        meta.is_file(),
        "{} is not a regular file (a directory, FIFO or device); replace it with the real file",
        path.display()
    );
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // Checked again on the open file: the path may have been replaced in between.
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        meta.is_file(),
        "{} is not a regular file; replace it with the real file",
        path.display()
    );
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max` bytes; the allocation is sized from the file's
/// length and nothing beyond it is read.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    ensure!(
        len <= max,
        "{} is {len} bytes, more than the {max} bytes such a file can hold; it is not the \
         expected file",
        path.display()
    );
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        bytes.len() as u64 == len,
        "{} changed while it was read",
        path.display()
    );
    Ok(bytes)
}

/// Reads a text file (configuration, results) of at most [`MAX_TEXT_FILE`] bytes.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_regular(path, MAX_TEXT_FILE)?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of a regular file in lower-case hex, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let (mut file, _) = open_regular(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Writes `bytes` to `path` atomically (temp file + fsync + rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cannot = || format!("cannot write {}", path.display());
    // The errors name the target: the temporary file's name means nothing to anyone.
    let plain = |e: std::io::Error| match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::from(e.kind()),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(plain)
        .with_context(cannot)?;
    tmp.write_all(bytes).map_err(plain).with_context(cannot)?;
    tmp.as_file()
        .sync_all()
        .map_err(plain)
        .with_context(cannot)?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Rewrites the JSON header of safetensors `bytes` in a canonical order: the `__metadata__`
/// entries sorted by key, then the tensors in the order of their data. The safetensors writers
/// take the metadata as a `HashMap`, whose order changes from run to run; after this, equal
/// tensors and metadata always give equal bytes (and so equal SHA-256 hashes).
pub fn canonical_safetensors(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = || anyhow::anyhow!("not a valid safetensors buffer");
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(bad)?.try_into()?) as usize;
    let end = 8usize
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(bad)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).context("not a valid safetensors header")?;
    let mut entries: Vec<(&String, &serde_json::Value)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .collect();
    let offset = |v: &serde_json::Value| v["data_offsets"][0].as_u64().unwrap_or(u64::MAX);
    entries.sort_by(|a, b| offset(a.1).cmp(&offset(b.1)).then(a.0.cmp(b.0)));
    let mut parts = Vec::new();
    if let Some(meta) = header.get("__metadata__") {
        let sorted: std::collections::BTreeMap<&String, &serde_json::Value> =
            meta.as_object().ok_or_else(bad)?.iter().collect();
        parts.push(format!(
            "\"__metadata__\":{}",
            serde_json::to_string(&sorted)?
        ));
    }
    for (name, info) in entries {
        parts.push(format!(
            "{}:{}",
            serde_json::to_string(name)?,
            serde_json::to_string(info)?
        ));
    }
    let mut head = format!("{{{}}}", parts.join(",")).into_bytes();
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + bytes.len() - end);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// The first field in which two values differ, as `(path, left, right)`: `path` is the dotted
/// field name (`adp.alpha`, `member.mean[3]`), `left` and `right` the two values, shortened.
/// `None` when they are equal.
pub fn first_difference<T: Serialize>(a: &T, b: &T) -> Result<Option<(String, String, String)>> {
    Ok(difference(
        "",
        &serde_json::to_value(a)?,
        &serde_json::to_value(b)?,
    ))
}

fn difference(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    let show = |v: Option<&Value>| match v {
        None => "absent".to_string(),
        Some(Value::Array(items)) if items.len() > 8 => format!("a list of {} values", items.len()),
        Some(v) => {
            let s = v.to_string();
            if s.chars().count() > 80 {
                format!("{}…", s.chars().take(80).collect::<String>())
            } else {
                s
            }
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = difference(&p, u, v) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some((p, show(u), show(v))),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| difference(&format!("{path}[{i}]"), u, v)),
        _ if a == b => None,
        _ => Some((path.to_string(), show(Some(a)), show(Some(b)))),
    }
}

/// Moves an existing `path` aside to the first free `stem.N.ext` (N = 1, 2, …), so that writing
/// a new result there never destroys an earlier one. Returns where the old file went.
pub fn keep_previous(path: &Path) -> Result<Option<std::path::PathBuf>> {
    if !path.exists() {
        return Ok(None);
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let aside = (1..)
        .map(|n| path.with_file_name(format!("{stem}.{n}{ext}")))
        .find(|p| !p.exists())
        .expect("an unused name");
    std::fs::rename(path, &aside)
        .with_context(|| format!("cannot move {} aside", path.display()))?;
    Ok(Some(aside))
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic_write(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// Writes a value as TOML, atomically.
pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    atomic_write(path, toml::to_string_pretty(value)?.as_bytes())
}

/// Reads a TOML file, naming the file in any error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid configuration", path.display()))
}

/// Reads a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} does not hold the expected results", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_json(&p, &vec![1, 2]).unwrap();
        write_json(&p, &vec![3]).unwrap();
        let back: Vec<i32> = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back, vec![3]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn first_difference_names_the_nested_field() {
        let a = serde_json::json!({"adp": {"alpha": 2.0, "beta": 0.5}, "mean": [0.1, 0.2]});
        let b = serde_json::json!({"adp": {"alpha": 2.0, "beta": 0.0}, "mean": [0.1, 0.2]});
        let (field, x, y) = first_difference(&a, &b).unwrap().unwrap();
        assert_eq!(
            (field.as_str(), x.as_str(), y.as_str()),
            ("adp.beta", "0.5", "0.0")
        );
        let c = serde_json::json!({"adp": {"alpha": 2.0, "beta": 0.5}, "mean": [0.1, 0.3]});
        assert_eq!(first_difference(&a, &c).unwrap().unwrap().0, "mean[1]");
        assert_eq!(first_difference(&a, &a).unwrap(), None);
    }

    #[test]
    fn regular_files_only_and_never_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_regular(&p, 5).unwrap(), b"12345");
        assert!(read_regular(&p, 4).is_err());
        let err = read_regular(dir.path(), 100).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn keep_previous_moves_old_results_to_numbered_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eval.json");
        assert_eq!(keep_previous(&p).unwrap(), None);
        for round in 0..3 {
            keep_previous(&p).unwrap();
            write_json(&p, &round).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(
            (read("eval.1.json"), read("eval.2.json"), read("eval.json")),
            ("0".into(), "1".into(), "2".into())
        );
    }
}
