//! The compressed weights file (`model.qcw` beside `model.qir`): every tensor coded the smallest
//! way among raw bytes, Huffman-coded bytes ([`crate::huffman`]), and — for f32 tensors of at most
//! 256 distinct values (shared weights from `cluster-weights`) — a codebook plus Huffman-coded
//! indices. Decoded at load time into the same tensors; checksummed.
//!
//! ```text
//! "QCW1" | u32 version (1) | u32 tensor count
//! per tensor: u32 name length | name (UTF-8) | u8 dtype | u8 rank | u64 dims… | u8 coding
//!             | coding 2: u16 codebook size | f32 values…
//!             | u64 payload length | payload | u32 CRC-32 of the decoded little-endian bytes
//! u32 CRC-32 of everything before it
//! ```
//!
//! A file whose final checksum does not match is rejected before anything is parsed (corrupt or
//! truncated); every length is checked against what is left; a tensor's size is checked before
//! anything is allocated.

use crate::huffman;
use anyhow::{Result, anyhow, bail};
use ndarray::{ArrayD, IxDyn};
use qc_ir::{Tensor, Weights};
use std::path::Path;

const MAGIC: &[u8; 4] = b"QCW1";
const VERSION: u32 = 1;
/// The largest tensor a file may declare (bytes once decoded).
const MAX_TENSOR_BYTES: u64 = 1 << 32;

/// How a tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// Little-endian bytes as they are.
    Raw,
    /// Huffman-coded little-endian bytes.
    Huffman,
    /// A codebook of f32 values and Huffman-coded byte indices into it.
    Codebook,
}

/// What packing did to one tensor.
#[derive(Clone, Debug)]
pub struct Packed {
    /// The tensor's name.
    pub name: String,
    /// Its little-endian size.
    pub raw_bytes: usize,
    /// Its size in the file (header included).
    pub packed_bytes: usize,
    /// The coding chosen.
    pub coding: Coding,
}

fn dtype_code(t: &Tensor) -> u8 {
    match t {
        Tensor::F32(_) => 0,
        Tensor::F16(_) => 1,
        Tensor::I64(_) => 2,
        Tensor::I32(_) => 3,
        Tensor::I8(_) => 4,
        Tensor::U8(_) => 5,
        Tensor::Bool(_) => 6,
    }
}

fn element_size(code: u8) -> Option<u64> {
    Some(match code {
        0 | 3 => 4,
        1 => 2,
        2 => 8,
        4..=6 => 1,
        _ => return None,
    })
}

/// The codebook and indices of an f32 tensor with at most 256 distinct values (0.0 first, so that
/// zeros are index 0 and code as runs).
fn codebook(t: &Tensor) -> Option<(Vec<f32>, Vec<u8>)> {
    let a = t.as_f32()?;
    let mut values: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
    values.sort_unstable();
    values.dedup();
    if values.len() > 256 {
        return None;
    }
    if let Some(z) = values.iter().position(|&b| b == 0) {
        values.remove(z);
        values.insert(0, 0);
    }
    let index = |b: u32| values.iter().position(|&v| v == b).expect("a value of the tensor") as u8;
    let lookup: std::collections::HashMap<u32, u8> = values.iter().map(|&b| (b, index(b))).collect();
    Some((values.iter().map(|&b| f32::from_bits(b)).collect(), a.iter().map(|v| lookup[&v.to_bits()]).collect()))
}

/// Serializes `w` compressed; also says what each tensor became.
pub fn pack(w: &Weights) -> (Vec<u8>, Vec<Packed>) {
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((w.len() as u32).to_le_bytes());
    let mut report = Vec::new();
    for (name, t) in w.iter() {
        let start = out.len();
        let raw = crate::io::le_bytes(t);
        out.extend((name.len() as u32).to_le_bytes());
        out.extend(name.as_bytes());
        out.push(dtype_code(t));
        out.push(t.shape().len() as u8);
        for &d in t.shape() {
            out.extend((d as u64).to_le_bytes());
        }
        let huff = huffman::encode(&raw);
        let book = codebook(t).map(|(values, idx)| (values, huffman::encode(&idx)));
        let book_size = book.as_ref().map_or(usize::MAX, |(v, p)| 2 + 4 * v.len() + p.len());
        let (coding, body): (Coding, Vec<u8>) = if book_size < huff.len().min(raw.len()) {
            let (values, payload) = book.expect("measured");
            let mut b = (values.len() as u16).to_le_bytes().to_vec();
            b.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            b.extend((payload.len() as u64).to_le_bytes());
            b.extend(payload);
            (Coding::Codebook, b)
        } else if huff.len() < raw.len() {
            let mut b = (huff.len() as u64).to_le_bytes().to_vec();
            b.extend(huff);
            (Coding::Huffman, b)
        } else {
            let mut b = (raw.len() as u64).to_le_bytes().to_vec();
            b.extend(&raw);
            (Coding::Raw, b)
        };
        out.push(coding as u8);
        out.extend(body);
        out.extend(crc32fast::hash(&raw).to_le_bytes());
        report.push(Packed { name: name.to_string(), raw_bytes: raw.len(), packed_bytes: out.len() - start, coding });
    }
    let crc = crc32fast::hash(&out);
    out.extend(crc.to_le_bytes());
    (out, report)
}

/// Whether `bytes` start like a compressed weights file.
pub fn is_packed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

struct Reader<'a> {
    rest: &'a [u8],
    file: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.rest.len() as u64 {
            bail!("{}: {what} runs past the end of the file", self.file.display());
        }
        let (a, b) = self.rest.split_at(n as usize);
        self.rest = b;
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into()?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into()?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into()?))
    }
}

fn tensor_from_le(code: u8, shape: &[usize], raw: &[u8]) -> Result<Tensor> {
    let sh = IxDyn(shape);
    Ok(match code {
        0 => Tensor::F32(ArrayD::from_shape_vec(
            sh,
            raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        )?),
        1 => Tensor::F16(ArrayD::from_shape_vec(
            sh,
            raw.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap())).collect(),
        )?),
        2 => Tensor::I64(ArrayD::from_shape_vec(
            sh,
            raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        )?),
        3 => Tensor::I32(ArrayD::from_shape_vec(
            sh,
            raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect(),
        )?),
        4 => Tensor::I8(ArrayD::from_shape_vec(sh, raw.iter().map(|&b| b as i8).collect())?),
        5 => Tensor::U8(ArrayD::from_shape_vec(sh, raw.to_vec())?),
        _ => Tensor::Bool(ArrayD::from_shape_vec(sh, raw.iter().map(|&b| b != 0).collect())?),
    })
}

/// Parses a compressed weights file; `file` names it in errors.
pub fn unpack(bytes: &[u8], file: &Path) -> Result<Weights> {
    if !is_packed(bytes) {
        bail!("{}: not a qc compressed weights file (no QCW1 header)", file.display());
    }
    if bytes.len() < 16 {
        bail!("{}: truncated compressed weights file ({} bytes)", file.display(), bytes.len());
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(tail.try_into()?) {
        bail!("{}: the compressed weights file is corrupt or truncated (checksum mismatch)", file.display());
    }
    let mut r = Reader { rest: &body[4..], file };
    let version = r.u32("the version")?;
    if version != VERSION {
        bail!("{}: compressed weights version {version}; this qc reads version {VERSION}", file.display());
    }
    let count = r.u32("the tensor count")?;
    let mut w = Weights::default();
    for i in 0..count {
        let len = r.u32("a name length")?;
        let name = std::str::from_utf8(r.take(len as u64, "a name")?)
            .map_err(|_| anyhow!("{}: tensor {i} has a name that is not UTF-8", file.display()))?
            .to_string();
        let code = r.u8("a dtype")?;
        let size =
            element_size(code).ok_or_else(|| anyhow!("{}: tensor \"{name}\" has unknown dtype code {code}", file.display()))?;
        let rank = r.u8("a rank")?;
        let mut shape = Vec::with_capacity(rank as usize);
        let mut elements: u64 = 1;
        for _ in 0..rank {
            let d = r.u64("a dim")?;
            elements = elements
                .checked_mul(d)
                .filter(|&n| n.saturating_mul(size) <= MAX_TENSOR_BYTES)
                .ok_or_else(|| anyhow!("{}: tensor \"{name}\" declares more than {MAX_TENSOR_BYTES} bytes", file.display()))?;
            shape.push(d as usize);
        }
        let expected = (elements * size) as usize;
        let coding = r.u8("a coding")?;
        let corrupt = |e: huffman::DecodeError| anyhow!("{}: tensor \"{name}\": {e}", file.display());
        let raw = match coding {
            0 => {
                let n = r.u64("a payload length")?;
                if n != expected as u64 {
                    bail!("{}: tensor \"{name}\" holds {n} bytes, its shape {shape:?} needs {expected}", file.display());
                }
                r.take(n, "a payload")?.to_vec()
            }
            1 => {
                let n = r.u64("a payload length")?;
                huffman::decode(r.take(n, "a payload")?, expected).map_err(corrupt)?
            }
            2 => {
                if code != 0 {
                    bail!("{}: tensor \"{name}\": a codebook for a tensor that is not f32", file.display());
                }
                let k = r.u16("a codebook size")? as u64;
                let values: Vec<[u8; 4]> =
                    r.take(4 * k, "a codebook")?.chunks_exact(4).map(|c| c.try_into().expect("4")).collect();
                let n = r.u64("a payload length")?;
                let idx = huffman::decode(r.take(n, "a payload")?, expected / 4).map_err(corrupt)?;
                let mut raw = Vec::with_capacity(expected);
                for &i in &idx {
                    raw.extend(values.get(i as usize).ok_or_else(|| {
                        anyhow!("{}: tensor \"{name}\" indexes entry {i} of a codebook of {k}", file.display())
                    })?);
                }
                raw
            }
            c => bail!("{}: tensor \"{name}\" has unknown coding {c}", file.display()),
        };
        let crc = r.u32("a checksum")?;
        if crc32fast::hash(&raw) != crc {
            bail!("{}: tensor \"{name}\" decodes to data whose checksum does not match", file.display());
        }
        let t = tensor_from_le(code, &shape, &raw)?;
        if let Tensor::F32(a) = &t
            && let Some(bad) = a.iter().find(|v| !v.is_finite())
        {
            bail!("{}: tensor \"{name}\" contains {bad}; weights must be finite", file.display());
        }
        if w.contains(&name) {
            bail!("{}: tensor \"{name}\" appears twice", file.display());
        }
        w.insert(name, t);
    }
    if !r.rest.is_empty() {
        bail!("{}: {} bytes after the last tensor", file.display(), r.rest.len());
    }
    Ok(w)
}
