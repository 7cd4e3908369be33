//! Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al., 1998).
//!
//! An IDX file is a big-endian header — two zero bytes, a type code (0x08 = unsigned byte), the
//! number of dimensions — followed by one `u32` per dimension and the raw data. Files may be
//! plain or gzip-compressed; compression is detected from the gzip magic bytes, not the name.

use std::io::Read;
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

/// Reads a file and decompresses it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| {
                format!(
                    "{} is a truncated or corrupt gzip file; delete it and run `adp data fetch` again",
                    path.display()
                )
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes, checking the magic number, the number of dimensions and the data length.
pub fn parse_idx(bytes: &[u8], expected_ndim: usize) -> Result<Idx> {
    ensure!(bytes.len() >= 4, "file is too short to hold an IDX header");
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
    let bytes = read_maybe_gz(path)?;
    parse_idx(&bytes, expected_ndim).with_context(|| {
        format!(
            "{} is not a valid IDX file; delete it and run `adp data fetch` again",
            path.display()
        )
    })
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
