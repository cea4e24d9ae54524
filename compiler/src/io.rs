//! File I/O: `.npy` tensors, safetensors weights, and atomic writes.

use anyhow::{Context, Result, anyhow, bail};
use ndarray::ArrayD;
use ndarray_npy::{ReadNpyError, ReadNpyExt, write_npy};
use qc_ir::{Tensor, Weights};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::Path;

/// Reads a `.npy` file of f32, f64 (converted to f32), i64, i32, i8, u8 or bool.
pub fn read_tensor(path: &Path) -> Result<Tensor> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    tensor_from_npy(&bytes, path)
}

/// The header dictionary of `.npy` bytes, checked to be the plain form qc reads: one dict, no
/// nested brackets (structured dtypes are not supported, and nesting is what makes the header
/// parser of the `.npy` crate slow on hostile input).
fn npy_header(bytes: &[u8], file: &Path) -> Result<()> {
    let bad = |why: &str| anyhow!("{}: not a readable .npy file: {why}", file.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no .npy magic"));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(bad(&format!("format version {v}"))),
    };
    let header = bytes.get(start..start.saturating_add(len)).ok_or_else(|| bad("the header runs past the end"))?;
    let count = |c: u8| header.iter().filter(|&&b| b == c).count();
    if count(b'{') != 1 || count(b'}') != 1 || count(b'[') > 0 || count(b'(') > 1 || header.len() > 4096 {
        return Err(bad("the header is not a plain {'descr': ..., 'fortran_order': ..., 'shape': (...)} dictionary"));
    }
    Ok(())
}

/// Parses `.npy` bytes (see [`read_tensor`]); `file` names the source in errors.
pub fn tensor_from_npy(bytes: &[u8], file: &Path) -> Result<Tensor> {
    npy_header(bytes, file)?;
    fn attempt<T: ndarray_npy::ReadableElement>(bytes: &[u8], file: &Path) -> Result<Option<ArrayD<T>>> {
        match ArrayD::<T>::read_npy(std::io::Cursor::new(bytes)) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
            Err(e) => Err(anyhow!("{}: not a readable .npy file: {e}", file.display())),
        }
    }
    if let Some(a) = attempt::<f32>(bytes, file)? {
        return Ok(Tensor::F32(a));
    }
    if let Some(a) = attempt::<f64>(bytes, file)? {
        return Ok(Tensor::F32(a.mapv(|v| v as f32)));
    }
    if let Some(a) = attempt::<i64>(bytes, file)? {
        return Ok(Tensor::I64(a));
    }
    if let Some(a) = attempt::<i32>(bytes, file)? {
        return Ok(Tensor::I32(a));
    }
    if let Some(a) = attempt::<i8>(bytes, file)? {
        return Ok(Tensor::I8(a));
    }
    if let Some(a) = attempt::<u8>(bytes, file)? {
        return Ok(Tensor::U8(a));
    }
    if let Some(a) = attempt::<bool>(bytes, file)? {
        return Ok(Tensor::Bool(a));
    }
    bail!(
        "{}: unsupported .npy element type (expected little-endian float32, float64, int64, int32, int8, uint8 or bool)",
        file.display()
    )
}

/// Writes a tensor as `.npy`, atomically.
pub fn write_tensor(path: &Path, t: &Tensor) -> Result<()> {
    let tmp = temp_path(path);
    let r = match t {
        Tensor::F32(a) => write_npy(&tmp, a),
        Tensor::I64(a) => write_npy(&tmp, a),
        Tensor::I32(a) => write_npy(&tmp, a),
        Tensor::I8(a) => write_npy(&tmp, a),
        Tensor::U8(a) => write_npy(&tmp, a),
        Tensor::Bool(a) => write_npy(&tmp, a),
        Tensor::F16(a) => write_npy(&tmp, &a.mapv(|v| v.to_f32())),
    };
    r.with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn temp_path(path: &Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a failure never leaves
/// half a file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn dtype_of(t: &Tensor) -> Dtype {
    match t {
        Tensor::F32(_) => Dtype::F32,
        Tensor::F16(_) => Dtype::F16,
        Tensor::I64(_) => Dtype::I64,
        Tensor::I32(_) => Dtype::I32,
        Tensor::I8(_) => Dtype::I8,
        Tensor::U8(_) => Dtype::U8,
        Tensor::Bool(_) => Dtype::BOOL,
    }
}

/// A tensor's elements as little-endian bytes (what safetensors and the compressed file store).
pub fn le_bytes(t: &Tensor) -> Vec<u8> {
    match t {
        Tensor::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::F16(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::I64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::I32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Tensor::I8(a) => a.iter().map(|v| *v as u8).collect(),
        Tensor::U8(a) => a.iter().copied().collect(),
        Tensor::Bool(a) => a.iter().map(|v| *v as u8).collect(),
    }
}

/// Metadata key marking a tensor stored as packed 4-bit values: `qc.i4:NAME` → its shape.
const I4_KEY: &str = "qc.i4:";

/// Two signed 4-bit values per byte, the first in the low nibble.
fn pack_i4(t: &Tensor) -> Result<Vec<u8>> {
    let v = t.to_i64_vec().ok_or_else(|| anyhow!("an i4 tensor must hold integers"))?;
    if let Some(bad) = v.iter().find(|x| !(-8..=7).contains(*x)) {
        bail!("{bad} does not fit in 4 bits");
    }
    Ok(v.chunks(2).map(|p| (p[0] as u8 & 15) | ((p.get(1).copied().unwrap_or(0) as u8 & 15) << 4)).collect())
}

/// Serializes weights to safetensors bytes; the tensors named in `i4` (integers in [-8, 7]) are
/// packed two per byte.
pub fn weights_to_bytes(w: &Weights, i4: &std::collections::BTreeSet<String>) -> Result<Vec<u8>> {
    let mut meta = std::collections::HashMap::new();
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (n, t) in w.iter() {
        if i4.contains(n) {
            let packed = pack_i4(t).with_context(|| format!("weight \"{n}\""))?;
            let shape: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
            meta.insert(format!("{I4_KEY}{n}"), shape.join(","));
            data.push((n.to_string(), Dtype::U8, vec![packed.len()], packed));
        } else {
            data.push((n.to_string(), dtype_of(t), t.shape().to_vec(), le_bytes(t)));
        }
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, (!meta.is_empty()).then_some(meta))?)
}

/// Unpacks a tensor written by [`pack_i4`] to i8 values of `shape`.
fn unpack_i4(packed: &[u8], shape: &[usize], name: &str, file: &Path) -> Result<Tensor> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| anyhow!("{}: i4 tensor \"{name}\" is too large", file.display()))?;
    if packed.len() != n.div_ceil(2) {
        bail!("{}: i4 tensor \"{name}\" has {} bytes, its shape {shape:?} needs {}", file.display(), packed.len(), n.div_ceil(2));
    }
    let nibble = |b: u8| ((b << 4) as i8) >> 4;
    let v: Vec<i8> = (0..n).map(|i| nibble(if i % 2 == 0 { packed[i / 2] } else { packed[i / 2] >> 4 })).collect();
    Ok(Tensor::I8(ArrayD::from_shape_vec(ndarray::IxDyn(shape), v)?))
}

/// Parses safetensors bytes; `file` names the source in errors.
pub fn weights_from_bytes(bytes: &[u8], file: &Path) -> Result<Weights> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", file.display()))?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", file.display()))?;
    let i4: std::collections::HashMap<String, String> = meta
        .metadata()
        .iter()
        .flatten()
        .filter_map(|(k, v)| k.strip_prefix(I4_KEY).map(|n| (n.to_string(), v.clone())))
        .collect();
    let mut w = Weights::default();
    for (name, view) in st.iter() {
        if let Some(shape) = i4.get(name) {
            if view.dtype() != Dtype::U8 {
                bail!("{}: i4 tensor \"{name}\" must be stored as packed u8", file.display());
            }
            let shape: Vec<usize> = shape
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().map_err(|_| anyhow!("{}: i4 tensor \"{name}\" has a bad shape `{shape}`", file.display())))
                .collect::<Result<_>>()?;
            w.insert(name, unpack_i4(view.data(), &shape, name, file)?);
            continue;
        }
        let shape = view.shape().to_vec();
        let raw = view.data();
        let arr = |n: usize| -> Result<Vec<&[u8]>> {
            let bytes = shape.iter().try_fold(n, |a, &d| a.checked_mul(d));
            if bytes != Some(raw.len()) {
                bail!("{}: tensor \"{name}\" has {} bytes, its shape {shape:?} needs {bytes:?}", file.display(), raw.len());
            }
            Ok(raw.chunks_exact(n).collect())
        };
        let sh = ndarray::IxDyn(&shape);
        let t = match view.dtype() {
            Dtype::F32 => Tensor::F32(ArrayD::from_shape_vec(
                sh,
                arr(4)?.iter().map(|c| f32::from_le_bytes((*c).try_into().unwrap())).collect(),
            )?),
            Dtype::F16 => Tensor::F16(ArrayD::from_shape_vec(
                sh,
                arr(2)?.iter().map(|c| half::f16::from_le_bytes((*c).try_into().unwrap())).collect(),
            )?),
            Dtype::I64 => Tensor::I64(ArrayD::from_shape_vec(
                sh,
                arr(8)?.iter().map(|c| i64::from_le_bytes((*c).try_into().unwrap())).collect(),
            )?),
            Dtype::I32 => Tensor::I32(ArrayD::from_shape_vec(
                sh,
                arr(4)?.iter().map(|c| i32::from_le_bytes((*c).try_into().unwrap())).collect(),
            )?),
            Dtype::I8 => Tensor::I8(ArrayD::from_shape_vec(sh, arr(1)?.iter().map(|c| c[0] as i8).collect())?),
            Dtype::U8 => Tensor::U8(ArrayD::from_shape_vec(sh, arr(1)?.iter().map(|c| c[0]).collect())?),
            Dtype::BOOL => Tensor::Bool(ArrayD::from_shape_vec(sh, arr(1)?.iter().map(|c| c[0] != 0).collect())?),
            d => bail!("{}: tensor \"{name}\" has unsupported dtype {d:?}", file.display()),
        };
        if let Tensor::F32(a) = &t
            && let Some(bad) = a.iter().find(|v| !v.is_finite())
        {
            bail!("{}: tensor \"{name}\" contains {bad}; weights must be finite", file.display());
        }
        w.insert(name, t);
    }
    Ok(w)
}

/// Reads a weights file: safetensors, or qc's compressed format (recognized by its header).
pub fn read_weights(path: &Path) -> Result<Weights> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read weights file {}", path.display()))?;
    if crate::packed_weights::is_packed(&bytes) {
        return crate::packed_weights::unpack(&bytes, path);
    }
    weights_from_bytes(&bytes, path)
}

/// A model input's or output's name as files are named after it: its value's name without `%`.
fn value_file_name(g: &qc_ir::Graph, v: qc_ir::ValueId, i: usize) -> String {
    g.value(v).name.clone().unwrap_or_else(|| i.to_string())
}

/// `path` with `.NAME` put before its extension: `x.npy` → `x.NAME.npy`.
fn beside(path: &Path, name: &str) -> std::path::PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}.{name}{ext}"))
}

/// The file of each of `g`'s inputs, in order, from `specs` (given with the option `flag`, which
/// errors name): `NAME=FILE` for each input; or, for a model of one input, `FILE`; or, for a
/// model of several, one `FILE` whose stem names them all (`x.npy` → `x.NAME.npy`, as the zoo
/// and `qc run` name such files).
pub fn input_files(g: &qc_ir::Graph, specs: &[String], flag: &str) -> std::result::Result<Vec<std::path::PathBuf>, String> {
    let names: Vec<String> = g.params().iter().enumerate().map(|(i, &p)| value_file_name(g, p, i)).collect();
    let named: Vec<Option<(&str, &str)>> = specs.iter().map(|s| s.split_once('=')).collect();
    match (&named[..], names.len()) {
        ([], _) => Err(format!("give the inputs with {flag}")),
        ([None], 1) => Ok(vec![specs[0].clone().into()]),
        ([None], _) => Ok(names.iter().map(|n| beside(Path::new(&specs[0]), n)).collect()),
        _ if named.iter().all(Option::is_some) => {
            let pairs: Vec<(&str, &str)> = named.into_iter().flatten().collect();
            if let Some((n, _)) = pairs.iter().find(|(n, _)| !names.iter().any(|m| m == n)) {
                return Err(format!("@{} has no input named {n}; its inputs are {}", g.name, names.join(", ")));
            }
            names
                .iter()
                .map(|n| match pairs.iter().filter(|(m, _)| m == n).collect::<Vec<_>>()[..] {
                    [(_, f)] => Ok(f.into()),
                    [] => Err(format!("input {n} is not given: add {flag} {n}=FILE")),
                    _ => Err(format!("input {n} is given more than once")),
                })
                .collect()
        }
        _ => Err(format!(
            "@{} takes {} inputs ({}): give each as {flag} NAME=FILE, or one {flag} FILE for FILE's stem.NAME files",
            g.name,
            names.len(),
            names.join(", ")
        )),
    }
}

/// Where each of `g`'s outputs is written for `-o out`: `out` for a model of one output, else
/// `out`'s stem with each output's name (`y.npy` → `y.NAME.npy`).
pub fn output_files(g: &qc_ir::Graph, out: &Path) -> Vec<std::path::PathBuf> {
    match g.outputs() {
        [_] => vec![out.to_path_buf()],
        outs => outs.iter().enumerate().map(|(i, &o)| beside(out, &value_file_name(g, o, i))).collect(),
    }
}
