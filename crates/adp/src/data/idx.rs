//! Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al., 1998).
//!
//! An IDX file is a big-endian header — two zero bytes, a type code (0x08 = unsigned byte), the
//! number of dimensions — followed by one `u32` per dimension and the raw data. Files may be
//! plain or gzip-compressed; compression is detected from the gzip magic bytes, not the name.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::GzDecoder;

/// The decoded content of an IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Size of each dimension, outermost first.
    pub dims: Vec<usize>,
    /// Row-major data, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// The most bytes deflate can inflate one compressed byte to (its best ratio is about 1032:1):
/// a gzip file of n bytes cannot hold more than this many times n.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// The most decompressed bytes [`read_maybe_gz`] callers need: the largest MNIST file is 47 MB.
pub const MAX_IDX_FILE: u64 = 1 << 30;

/// A regular file, transparently decompressed when it starts with the gzip magic bytes, and the
/// most bytes it can yield (its length, or [`MAX_DEFLATE_RATIO`] times it when compressed).
fn open_maybe_gz(path: &Path) -> Result<(Box<dyn Read>, u64, bool)> {
    let (file, len) = crate::io::open_regular(path)?;
    let mut reader = BufReader::new(file);
    let head = reader
        .fill_buf()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let gz = head.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        (
            Box::new(GzDecoder::new(reader)),
            len.saturating_mul(MAX_DEFLATE_RATIO),
            true,
        )
    } else {
        (Box::new(reader), len, false)
    })
}

fn corrupt_gz(path: &Path) -> String {
    format!(
        "{} is a truncated or corrupt gzip file; delete it and run `adp data fetch` again",
        path.display()
    )
}

/// Reads a regular file, decompressing it when it starts with the gzip magic bytes; refuses a
/// file that holds (or inflates to) more than `max` bytes, without reading past `max`.
pub fn read_maybe_gz(path: &Path, max: u64) -> Result<Vec<u8>> {
    let (reader, _, gz) = open_maybe_gz(path)?;
    let mut out = Vec::new();
    let read = reader.take(max.saturating_add(1)).read_to_end(&mut out);
    if gz {
        read.with_context(|| corrupt_gz(path))?;
    } else {
        read.with_context(|| format!("cannot read {}", path.display()))?;
    }
    ensure!(
        out.len() as u64 <= max,
        "{} holds more than {max} bytes{}; it is not a data file adp reads",
        path.display(),
        if gz { " once decompressed" } else { "" }
    );
    Ok(out)
}

/// Checks the fixed part of an IDX header (magic, type code, number of dimensions).
fn check_prefix(bytes: &[u8; 4], expected_ndim: usize) -> Result<()> {
    ensure!(
        bytes[0] == 0 && bytes[1] == 0,
        "bad magic number {:02x}{:02x}{:02x}{:02x}: not an IDX file",
        bytes[0],
        bytes[1],
        bytes[2],
        bytes[3]
    );
    if bytes[2] != 0x08 {
        bail!(
            "IDX type code 0x{:02x} is not 0x08 (unsigned byte)",
            bytes[2]
        );
    }
    let ndim = bytes[3] as usize;
    ensure!(
        ndim == expected_ndim,
        "IDX file has {ndim} dimensions, expected {expected_ndim}"
    );
    Ok(())
}

/// Parses IDX bytes, checking the magic number, the number of dimensions and the data length.
pub fn parse_idx(bytes: &[u8], expected_ndim: usize) -> Result<Idx> {
    ensure!(bytes.len() >= 4, "file is too short to hold an IDX header");
    check_prefix(&[bytes[0], bytes[1], bytes[2], bytes[3]], expected_ndim)?;
    let ndim = expected_ndim;
    let header = 4 + 4 * ndim;
    ensure!(
        bytes.len() >= header,
        "file is too short for its {ndim}-dimension header"
    );
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("IDX dimensions overflow")?;
    let got = bytes.len() - header;
    ensure!(
        got == expected,
        "IDX header promises {expected} data bytes for dimensions {dims:?}, file holds {got} (truncated or corrupt)"
    );
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads and parses an IDX file, naming the file and the fix in any error.
pub fn read_idx(path: &Path, expected_ndim: usize) -> Result<Idx> {
    read_idx_inner(path, expected_ndim, None)
}

/// [`read_idx`] for a file whose dimensions after the first must be `inner` (e.g. `[28, 28]`
/// for MNIST images, `[]` for labels); checked from the header, before any data is read.
pub fn read_idx_expecting(path: &Path, inner: &[usize]) -> Result<Idx> {
    read_idx_inner(path, inner.len() + 1, Some(inner))
}

/// Reads the header first, checks it against `inner` and against the most data the file can
/// hold, then reads exactly the data it promises (and one byte more, to catch extra data): a
/// hostile header or a decompression bomb never makes it allocate beyond what was validated.
fn read_idx_inner(path: &Path, expected_ndim: usize, inner: Option<&[usize]>) -> Result<Idx> {
    let fix = || {
        format!(
            "{} is not a valid IDX file; delete it and run `adp data fetch` again",
            path.display()
        )
    };
    let (mut reader, capacity, gz) = open_maybe_gz(path)?;
    let read_err = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            anyhow::anyhow!("file is too short for its IDX header")
        } else if gz {
            anyhow::Error::new(e).context(corrupt_gz(path))
        } else {
            anyhow::Error::new(e).context(format!("cannot read {}", path.display()))
        }
    };
    let data_err = |e: std::io::Error| {
        let what = if gz {
            corrupt_gz(path)
        } else {
            format!("cannot read {}", path.display())
        };
        anyhow::Error::new(e).context(what)
    };
    let mut prefix = [0u8; 4];
    reader
        .read_exact(&mut prefix)
        .map_err(read_err)
        .with_context(fix)?;
    check_prefix(&prefix, expected_ndim).with_context(fix)?;
    let mut raw = vec![0u8; 4 * expected_ndim];
    reader
        .read_exact(&mut raw)
        .map_err(read_err)
        .with_context(fix)?;
    let dims: Vec<usize> = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if let Some(inner) = inner {
        ensure!(
            dims[1..] == *inner,
            "{} holds items of shape {:?}, expected {inner:?}; delete it and run `adp data fetch` \
             again",
            path.display(),
            &dims[1..]
        );
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("IDX dimensions overflow")
        .with_context(fix)?;
    let header = 4 + 4 * expected_ndim as u64;
    ensure!(
        header + expected as u64 <= capacity,
        "{}: the IDX header promises {expected} data bytes for dimensions {dims:?}, more than a \
         file of its size can hold (truncated or corrupt); delete it and run `adp data fetch` again",
        path.display()
    );
    let mut data = vec![0u8; expected];
    let mut got = 0;
    while got < expected {
        match reader.read(&mut data[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(data_err(e)).with_context(fix),
        }
    }
    ensure!(
        got == expected,
        "{}: the IDX header promises {expected} data bytes for dimensions {dims:?}, the file \
         holds {got} (truncated or corrupt); delete it and run `adp data fetch` again",
        path.display()
    );
    let mut extra = [0u8; 1];
    let more = loop {
        match reader.read(&mut extra) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(data_err(e)).with_context(fix),
        }
    };
    ensure!(
        more == 0,
        "{}: the file holds more data than its IDX header promises ({expected} bytes for \
         dimensions {dims:?}); delete it and run `adp data fetch` again",
        path.display()
    );
    Ok(Idx { dims, data })
}

/// Encodes unsigned bytes as an IDX file (the inverse of [`parse_idx`]).
pub fn encode_idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_file() {
        let bytes = encode_idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let idx = parse_idx(&bytes, 3).unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.data[11], 12);
    }

    #[test]
    fn rejects_bad_magic_type_ndim_and_length() {
        let good = encode_idx(&[3], &[0, 1, 2]);
        let mut bad_magic = good.clone();
        bad_magic[0] = 7;
        assert!(
            parse_idx(&bad_magic, 1)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let mut bad_type = good.clone();
        bad_type[2] = 0x0d;
        assert!(
            parse_idx(&bad_type, 1)
                .unwrap_err()
                .to_string()
                .contains("type code")
        );
        assert!(
            parse_idx(&good, 3)
                .unwrap_err()
                .to_string()
                .contains("dimensions")
        );
        let truncated = &good[..good.len() - 1];
        assert!(
            parse_idx(truncated, 1)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        assert!(parse_idx(&good[..2], 1).is_err());
    }

    #[test]
    fn reads_gzip_and_reports_corrupt_gzip() {
        use flate2::{Compression, write::GzEncoder};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = encode_idx(&[4], &[9, 8, 7, 6]);
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&bytes).unwrap();
        let gz = enc.finish().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &gz).unwrap();
        assert_eq!(read_idx(&path, 1).unwrap().data, vec![9, 8, 7, 6]);
        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        let err = format!("{:#}", read_idx(&path, 1).unwrap_err());
        assert!(
            err.contains("x.gz") && err.contains("adp data fetch"),
            "{err}"
        );
    }
}
