//! f32 data movement: concat, transpose, slice, expand, gather. Copies, so any order gives the evaluator's
//! values; the axes, permutation and ranges are resolved once, at compile time.

use super::{F32Kernel, slice, tensor};
use qc_ir::infer::{normalize_axes, normalize_axis, slice_range};
use qc_ir::{Attrs, Tensor, TensorType};

/// Concatenation along one axis.
pub struct Concat {
    axis: usize,
}

impl Concat {
    /// concat of operands of rank `tys[0].rank()` (at least 1) along `axis`.
    pub fn new(attrs: &Attrs, tys: &[&TensorType]) -> Option<Concat> {
        let rank = tys.first()?.rank();
        (rank > 0 && tys.iter().all(|t| t.rank() == rank))
            .then(|| normalize_axis(attrs.int("axis", 0), rank).ok().map(|axis| Concat { axis }))?
    }
}

impl F32Kernel for Concat {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let first = args.first().ok_or("concat has operands")?.shape();
        let mut shape = first.to_vec();
        shape[self.axis] = 0;
        for a in args {
            let s = a.shape();
            let same = s.len() == first.len() && (0..s.len()).all(|i| i == self.axis || s[i] == first[i]);
            if !same {
                return Err(format!("concat along axis {} of shapes {first:?} and {s:?}", self.axis));
            }
            shape[self.axis] += s[self.axis];
        }
        let outer: usize = first[..self.axis].iter().product();
        let inner: usize = first[self.axis + 1..].iter().product();
        let parts: Vec<std::borrow::Cow<'_, [f32]>> = args.iter().map(|a| slice(a)).collect::<Result<_, _>>()?;
        let mut y = Vec::with_capacity(shape.iter().product());
        for o in 0..outer {
            for (a, part) in args.iter().zip(&parts) {
                let block = a.shape()[self.axis] * inner;
                y.extend_from_slice(&part[o * block..][..block]);
            }
        }
        tensor(&shape, y)
    }

    fn describe(&self) -> &'static str {
        "f32 concat"
    }
}

/// A permutation of the dims.
pub struct Transpose {
    perm: Vec<usize>,
}

impl Transpose {
    /// transpose of `x` by `perm` (reversed when absent).
    pub fn new(attrs: &Attrs, x: &TensorType) -> Option<Transpose> {
        let rank = x.rank();
        let perm = match attrs.ints("perm") {
            Some(p) => normalize_axes(p, rank).ok()?,
            None => (0..rank).rev().collect(),
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        (sorted == (0..rank).collect::<Vec<_>>()).then_some(Transpose { perm })
    }
}

impl F32Kernel for Transpose {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let a = args.first().and_then(|t| t.as_f32()).ok_or("transpose reads f32")?;
        if a.ndim() != self.perm.len() {
            return Err(format!("a transpose of rank {} got shape {:?}", self.perm.len(), a.shape()));
        }
        let shape = a.shape().to_vec();
        let (out, y) = permute(&slice(args[0])?, &shape, &self.perm);
        tensor(&out, y)
    }

    fn describe(&self) -> &'static str {
        "f32 transpose"
    }
}

/// `src` (row-major, of `shape`) with its dims permuted by `perm`: the result's shape and
/// elements.
fn permute(src: &[f32], shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let strides = row_major_strides(shape);
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let step: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    let y = strided(src, &out, &step);
    (out, y)
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// The elements of a tensor of shape `out` whose element at index `i` is `src[Σ i_d · step_d]`,
/// written in order, a row of the last dim at a time (copied whole when its step is 1).
fn strided(src: &[f32], out: &[usize], step: &[usize]) -> Vec<f32> {
    let mut y = Vec::with_capacity(out.iter().product());
    let Some((&inner, outer)) = out.split_last() else {
        y.extend_from_slice(&src[..1.min(src.len())]);
        return y;
    };
    if out.contains(&0) {
        return y;
    }
    let inner_step = step[out.len() - 1];
    let mut idx = vec![0usize; outer.len()];
    let mut base = 0usize;
    loop {
        match inner_step {
            1 => y.extend_from_slice(&src[base..base + inner]),
            0 => y.extend(std::iter::repeat_n(src[base], inner)),
            _ => y.extend((0..inner).map(|j| src[base + j * inner_step])),
        }
        let mut d = outer.len();
        loop {
            if d == 0 {
                return y;
            }
            d -= 1;
            idx[d] += 1;
            base += step[d];
            if idx[d] < outer[d] {
                break;
            }
            base -= step[d] * outer[d];
            idx[d] = 0;
        }
    }
}

/// `expand`: the operand broadcast to its result's shape.
pub struct Expand {
    shape: Vec<i64>,
}

impl Expand {
    /// expand by the `shape` attribute.
    pub fn new(attrs: &Attrs) -> Option<Expand> {
        Some(Expand { shape: attrs.ints("shape")?.to_vec() })
    }
}

impl F32Kernel for Expand {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("expand has an operand")?;
        let dims: Vec<usize> = self.shape.iter().map(|&d| d.max(0) as usize).collect();
        let out = qc_ir::eval::broadcast_shape(x.shape(), &dims)?;
        let strides = row_major_strides(x.shape());
        // Each result dim's step in `x`: 0 where `x` is broadcast (or absent).
        let lead = out.len() - x.shape().len();
        let step: Vec<usize> = (0..out.len())
            .map(|i| match i.checked_sub(lead) {
                Some(j) if x.shape()[j] != 1 => strides[j],
                _ => 0,
            })
            .collect();
        tensor(&out, strided(&slice(x)?, &out, &step))
    }

    fn describe(&self) -> &'static str {
        "f32 expand"
    }
}

/// ONNX Slice: per axis, a start, an end and a step (clamped at run time to the dim).
pub struct Slice {
    /// (axis, start, end, step).
    axes: Vec<(usize, i64, i64, i64)>,
}

impl Slice {
    /// slice of `x` by its attributes; `None` for a step of 0 or lists of different lengths.
    pub fn new(attrs: &Attrs, x: &TensorType) -> Option<Slice> {
        let starts = attrs.ints("starts")?;
        let ends = attrs.ints("ends")?;
        let axes = match attrs.ints("axes") {
            Some(a) => normalize_axes(a, x.rank()).ok()?,
            None => (0..starts.len()).collect(),
        };
        let steps = attrs.ints("steps").map(<[i64]>::to_vec).unwrap_or_else(|| vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() || steps.contains(&0) {
            return None;
        }
        Some(Slice { axes: (0..starts.len()).map(|k| (axes[k], starts[k], ends[k], steps[k])).collect() })
    }
}

impl F32Kernel for Slice {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let a = args.first().and_then(|t| t.as_f32()).ok_or("slice reads f32")?;
        let mut v = a.view();
        for &(axis, start, end, step) in &self.axes {
            let d = *v.shape().get(axis).ok_or("slice of a missing axis")? as i64;
            let (first, count) = slice_range(d, start, end, step);
            let sl = match count {
                0 => ndarray::Slice::new(0, Some(0), 1),
                _ if step > 0 => {
                    ndarray::Slice::new(first as isize, Some((first + (count - 1) * step + 1) as isize), step as isize)
                }
                _ => ndarray::Slice::new((first + (count - 1) * step) as isize, Some(first as isize + 1), step as isize),
            };
            v.slice_axis_inplace(ndarray::Axis(axis), sl);
        }
        let shape = v.shape().to_vec();
        tensor(&shape, v.iter().copied().collect())
    }

    fn describe(&self) -> &'static str {
        "f32 slice"
    }
}

/// `gather` of f32 data by integer indices along one axis (an embedding lookup): for each
/// index, a block of the data copied. An index out of range is an error, as in the evaluator.
pub struct Gather {
    axis: usize,
}

impl Gather {
    /// gather of `tys[0]` (rank ≥ 1) by integer indices `tys[1]`.
    pub fn new(attrs: &Attrs, tys: &[&TensorType]) -> Option<Gather> {
        let integer = matches!(tys.get(1)?.elem.storage(), qc_ir::ScalarType::I64 | qc_ir::ScalarType::I32);
        let axis = normalize_axis(attrs.int("axis", 0), tys[0].rank()).ok()?;
        integer.then_some(Gather { axis })
    }
}

impl F32Kernel for Gather {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let [x, idx] = args else { return Err("gather has two operands".into()) };
        let shape = x.shape();
        let d = *shape.get(self.axis).ok_or("gather along a missing axis")?;
        let indices = idx.to_i64_vec().ok_or("gather indices must be integers")?;
        let (outer, inner): (usize, usize) = (shape[..self.axis].iter().product(), shape[self.axis + 1..].iter().product());
        let data = slice(x)?;
        let mut y = Vec::with_capacity(outer * indices.len() * inner);
        for o in 0..outer {
            for &i in &indices {
                let j = if i < 0 { i + d as i64 } else { i };
                if j < 0 || j >= d as i64 {
                    return Err(format!("gather index {i} is out of range for size {d}"));
                }
                y.extend_from_slice(&data[(o * d + j as usize) * inner..][..inner]);
            }
        }
        let mut out = shape[..self.axis].to_vec();
        out.extend_from_slice(idx.shape());
        out.extend_from_slice(&shape[self.axis + 1..]);
        tensor(&out, y)
    }

    fn describe(&self) -> &'static str {
        "f32 gather"
    }
}
