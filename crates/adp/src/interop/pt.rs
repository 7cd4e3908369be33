//! A writer of PyTorch's `torch.save` format for a state dict (an `OrderedDict` of tensors), which
//! `torch.load(path, weights_only=True)` accepts; burn-store 0.22 reads this format but does not
//! write it.
//!
//! The file is a ZIP archive (entries stored uncompressed, data aligned to 64 bytes as
//! `torch.save` does) holding
//!
//! ```text
//! archive/data.pkl    pickle (protocol 2) of the OrderedDict; each tensor is
//!                     torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())
//!                     with storage a persistent id ('storage', torch.FloatStorage, 'N', 'cpu', numel)
//! archive/byteorder   "little"
//! archive/data/N      the raw little-endian bytes of storage N
//! archive/version     "3"
//! ```
//!
//! Only the opcodes and globals of `torch.load`'s `weights_only` unpickler are used.

use std::io::{Cursor, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::layout::{TorchDtype, TorchTensor};

/// Opcodes of the pickle protocol (Python's `pickletools`).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

/// A pickle under construction.
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, code: u8) {
        self.0.push(code);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(op::GLOBAL);
        self.0
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn string(&mut self, s: &str) {
        self.op(op::BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: usize) {
        if v < 1 << 8 {
            self.op(op::BININT1);
            self.0.push(v as u8);
        } else if v < 1 << 16 {
            self.op(op::BININT2);
            self.0.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as usize {
            self.op(op::BININT);
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // Two's complement, little-endian; a ninth byte keeps the sign bit clear.
            self.op(op::LONG1);
            self.0.push(9);
            self.0.extend_from_slice(&(v as u64).to_le_bytes());
            self.0.push(0);
        }
    }

    fn int_tuple(&mut self, values: &[usize]) {
        if values.is_empty() {
            self.op(op::EMPTY_TUPLE);
            return;
        }
        self.op(op::MARK);
        for &v in values {
            self.int(v);
        }
        self.op(op::TUPLE);
    }

    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
    }

    /// A contiguous tensor over the whole storage `key`.
    fn tensor(&mut self, t: &TorchTensor, key: usize) -> Result<()> {
        let storage = match t.dtype {
            TorchDtype::F32 => "FloatStorage",
            TorchDtype::I64 => "LongStorage",
            TorchDtype::Other(ref name) => bail!("cannot write {} of type {name}", t.name),
        };
        let mut stride = vec![1usize; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * t.shape[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(op::MARK);
        self.op(op::MARK);
        self.string("storage");
        self.global("torch", storage);
        self.string(&key.to_string());
        self.string("cpu");
        self.int(t.numel());
        self.op(op::TUPLE);
        self.op(op::BINPERSID);
        self.int(0);
        self.int_tuple(&t.shape);
        self.int_tuple(&stride);
        self.op(op::NEWFALSE);
        self.empty_ordered_dict();
        self.op(op::TUPLE);
        self.op(op::REDUCE);
        Ok(())
    }
}

/// The pickle of an `OrderedDict` mapping each tensor's name to it, tensor `i` in storage `i`.
fn state_dict_pickle(tensors: &[TorchTensor]) -> Result<Vec<u8>> {
    let mut p = Pickle::default();
    p.op(op::PROTO);
    p.op(2);
    p.empty_ordered_dict();
    p.op(op::MARK);
    for (key, t) in tensors.iter().enumerate() {
        p.string(&t.name);
        p.tensor(t, key)?;
    }
    p.op(op::SETITEMS);
    p.op(op::STOP);
    Ok(p.0)
}

/// The bytes of a `.pt` file holding `tensors` as a state dict.
pub fn to_bytes(tensors: &[TorchTensor]) -> Result<Vec<u8>> {
    for t in tensors {
        let expected = t.dtype.size().map(|s| s * t.numel());
        anyhow::ensure!(
            expected == Some(t.data.len()),
            "tensor {} holds {} bytes, not {expected:?} for shape {:?}",
            t.name,
            t.data.len(),
            t.shape
        );
    }
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let aligned = stored.with_alignment(64);
    let mut entry = |name: &str, bytes: &[u8], options| -> Result<()> {
        zip.start_file(format!("archive/{name}"), options)?;
        zip.write_all(bytes)?;
        Ok(())
    };
    entry("data.pkl", &state_dict_pickle(tensors)?, stored)?;
    entry("byteorder", b"little", stored)?;
    for (key, t) in tensors.iter().enumerate() {
        entry(&format!("data/{key}"), &t.data, aligned)?;
    }
    entry("version", b"3\n", stored)?;
    Ok(zip.finish()?.into_inner())
}

/// Writes `tensors` as a `.pt` state dict to `path` (atomically).
pub fn write(path: &Path, tensors: &[TorchTensor]) -> Result<()> {
    let bytes = to_bytes(tensors).context("cannot build the PyTorch archive")?;
    crate::io::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_use_the_shortest_opcode() {
        let mut p = Pickle::default();
        for v in [5usize, 300, 70_000, 1 << 40] {
            p.int(v);
        }
        let mut expected = vec![op::BININT1, 5, op::BININT2, 44, 1, op::BININT];
        expected.extend(70_000i32.to_le_bytes());
        expected.extend([op::LONG1, 9]);
        expected.extend((1u64 << 40).to_le_bytes());
        expected.push(0);
        assert_eq!(p.0, expected);
    }

    #[test]
    fn a_scalar_has_empty_shape_and_stride_tuples() {
        let t = TorchTensor::i64("n", Vec::new(), &[0]);
        let mut p = Pickle::default();
        p.tensor(&t, 7).unwrap();
        let text = String::from_utf8_lossy(&p.0);
        assert!(text.contains("torch\nLongStorage\n"), "{text}");
        // storage offset 0, then shape () and stride (), then requires_grad False.
        let tail = [
            op::BININT1,
            0,
            op::EMPTY_TUPLE,
            op::EMPTY_TUPLE,
            op::NEWFALSE,
        ];
        assert!(p.0.windows(tail.len()).any(|w| w == tail));
    }

    #[test]
    fn mismatched_byte_counts_are_refused() {
        let mut t = TorchTensor::f32("w", vec![2, 2], &[1.0; 4]);
        t.data.pop();
        let err = to_bytes(&[t]).unwrap_err().to_string();
        assert!(err.contains("tensor w holds 15 bytes"), "{err}");
    }
}
