//! f32 gemm and matmul by a constant matrix: `y = α · (a · b) + β · c`, then the fused
//! activation. The product is the evaluator's (`qc_ir::eval::product`): each element's sum starts
//! at 0 and takes its products in `k` order, a multiply and then an add. Here `b` is stored
//! `[k][n]`; a tile of [`TR`] rows × [`TC`] columns keeps its partial sums in registers (twelve
//! 256-bit accumulators) while the `k` loop reads a row of `b`'s tile and one value of each row
//! of `a` per step; the rows and columns past the last whole tile go a row at a time.

use super::{F32Kernel, activate, fused, slice, tensor, twin};
use qc_ir::{Attrs, OpKind, Tensor, TensorType};

/// Rows per register tile.
const TR: usize = 6;
/// Columns per register tile (two 256-bit vectors).
const TC: usize = 16;

/// `y` (`[m][n]`, zeros) `= a · b` for `a` `[m][k]` and `b` `[k][n]`: each element's products
/// added in `k` order from 0, as the evaluator's product does, by register tiles (see the
/// module's documentation).
#[inline(always)]
fn tiled_product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, y: &mut [f32]) {
    let (a, b, y) = (&a[..m * k], &b[..k * n], &mut y[..m * n]);
    let (tiled_rows, tiled_cols) = (m / TR * TR, n / TC * TC);
    for r0 in (0..tiled_rows).step_by(TR) {
        let a_rows: [&[f32]; TR] = std::array::from_fn(|r| &a[(r0 + r) * k..][..k]);
        for c0 in (0..tiled_cols).step_by(TC) {
            let mut acc = [[0.0f32; TC]; TR];
            for kk in 0..k {
                let bv: &[f32; TC] = b[kk * n + c0..][..TC].try_into().expect("a tile's columns");
                for (acc, a_row) in acc.iter_mut().zip(&a_rows) {
                    let av = a_row[kk];
                    for (o, &bv) in acc.iter_mut().zip(bv) {
                        *o += av * bv;
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                y[(r0 + r) * n + c0..][..TC].copy_from_slice(acc);
            }
        }
    }
    // What the tiles left: the last columns of the tiled rows, then the last rows.
    let rest = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, y: &mut [f32]| {
        for r in rows {
            let row = &mut y[r * n..][..n];
            for (kk, &av) in a[r * k..][..k].iter().enumerate() {
                for (o, &bv) in row[cols.clone()].iter_mut().zip(&b[kk * n + cols.start..kk * n + cols.end]) {
                    *o += av * bv;
                }
            }
        }
    };
    if tiled_cols < n {
        rest(0..tiled_rows, tiled_cols..n, y);
    }
    rest(tiled_rows..m, 0..n, y);
}

/// A compiled f32 gemm or matmul by a constant matrix.
pub struct GemmF32 {
    /// `[k][n]`.
    b: Vec<f32>,
    k: usize,
    n: usize,
    /// gemm's `trans_a`: `a` is `[k][m]`.
    trans_a: bool,
    /// `a` has rank 2 (gemm) or at least 2 (matmul: its leading dims are rows).
    gemm: bool,
    alpha: f32,
    /// `β · c` per column.
    bias: Option<Vec<f32>>,
    act: Option<(f32, f32)>,
    avx2: bool,
}

impl GemmF32 {
    /// gemm or matmul of `tys[0]` by the constant `b` (rank 2), with gemm's constant `c` of one
    /// value per column (or a scalar).
    pub fn new(kind: OpKind, attrs: &Attrs, tys: &[&TensorType], b: &Tensor, c: Option<&Tensor>, avx2: bool) -> Option<GemmF32> {
        let bm = b.as_f32()?;
        let (a_rank, gemm) = (tys[0].rank(), kind == OpKind::Gemm);
        if bm.ndim() != 2 || a_rank < 2 || (gemm && a_rank != 2) || (!gemm && tys.len() != 2) {
            return None;
        }
        let trans_b = gemm && attrs.bool("trans_b", false);
        let b = if trans_b { bm.view().reversed_axes().to_owned() } else { bm.to_owned() };
        let (k, n) = (b.shape()[0], b.shape()[1]);
        let beta = if gemm { attrs.float("beta", 1.0) } else { 1.0 };
        let bias = match c {
            None => None,
            Some(c) => {
                let c = c.as_f32()?;
                // A value per column, or one for all: `[n]`, `[1, n]`, `[1]`, `[]`, `[1, 1]`.
                let per_column = c.len() == n && c.shape().last() == Some(&n) && c.shape().iter().rev().skip(1).all(|&d| d == 1);
                let single = c.len() == 1 && c.ndim() <= 2;
                if !(per_column || single) {
                    return None;
                }
                let v: Vec<f32> = c.iter().copied().collect();
                Some((0..n).map(|j| beta * v[if single { 0 } else { j }]).collect())
            }
        };
        Some(GemmF32 {
            b: b.as_standard_layout().iter().copied().collect(),
            k,
            n,
            trans_a: gemm && attrs.bool("trans_a", false),
            gemm,
            alpha: if gemm { attrs.float("alpha", 1.0) } else { 1.0 },
            bias,
            act: fused(attrs)?,
            avx2,
        })
    }

    /// `y` (`[m][n]`, zeros) from `a` (`[m][k]`).
    #[inline(always)]
    fn rows(&self, a: &[f32], m: usize, y: &mut [f32]) {
        let n = self.n;
        tiled_product(a, &self.b, m, self.k, n, y);
        for row in y[..m * n].chunks_exact_mut(n.max(1)) {
            if self.alpha != 1.0 {
                row.iter_mut().for_each(|v| *v *= self.alpha);
            }
            if let Some(bias) = &self.bias {
                row.iter_mut().zip(bias).for_each(|(v, &c)| *v += c);
            }
            activate(row, self.act);
        }
    }
}

impl F32Kernel for GemmF32 {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let x = args.first().ok_or("a product has operands")?;
        let shape = x.shape();
        let what = if self.gemm { "gemm" } else { "matmul" };
        if shape.len() < 2 || (self.gemm && shape.len() != 2) {
            return Err(format!("an f32 {what} got shape {shape:?}"));
        }
        let (rows, inner) = match self.trans_a {
            true => (shape[1], shape[0]),
            false => (shape[..shape.len() - 1].iter().product(), shape[shape.len() - 1]),
        };
        if inner != self.k {
            return Err(format!("an f32 {what} by a [{}, {}] matrix got shape {shape:?}", self.k, self.n));
        }
        let a = match self.trans_a {
            true => std::borrow::Cow::Owned(x.as_f32().ok_or("gemm reads f32")?.t().iter().copied().collect()),
            false => slice(x)?,
        };
        let mut y = vec![0.0f32; rows * self.n];
        twin! {
            fn product(g: &GemmF32, a: &[f32], rows: usize, y: &mut [f32]) {
                g.rows(a, rows, y)
            }
        }
        product(self.avx2, self, &a, rows, &mut y);
        let mut out: Vec<usize> = if self.trans_a { vec![rows] } else { shape[..shape.len() - 1].to_vec() };
        out.push(self.n);
        tensor(&out, y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 product, avx2" } else { "f32 product, rust loop" }
    }

    fn ops(&self, len: usize) -> u64 {
        2 * (len / self.k.max(1) * self.k * self.n) as u64
    }
}

/// A matmul of two computed operands (attention's `q · kᵀ` and `p · v`): the evaluator's
/// product per batch (`[m][k]` by `[k][n]`), its batch dims broadcast.
pub struct BatchedMatMul {
    act: Option<(f32, f32)>,
    avx2: bool,
}

impl BatchedMatMul {
    /// matmul of operands of rank 2 or more.
    pub fn new(attrs: &Attrs, tys: &[&TensorType], avx2: bool) -> Option<BatchedMatMul> {
        (tys.len() == 2 && tys.iter().all(|t| t.rank() >= 2)).then_some(())?;
        Some(BatchedMatMul { act: fused(attrs)?, avx2 })
    }
}

/// The offset of batch `i` of `out` (row-major) in an operand of batch dims `dims` (broadcast).
fn batch_offset(mut i: usize, out: &[usize], dims: &[usize], matrix: usize) -> usize {
    let (mut offset, mut stride) = (0, matrix);
    for (d, &n) in out.iter().enumerate().rev() {
        let at = i % n;
        i /= n;
        let k = d + dims.len();
        if k >= out.len() {
            let own = dims[k - out.len()];
            offset += if own == 1 { 0 } else { at * stride };
            stride *= own;
        }
    }
    offset
}

impl F32Kernel for BatchedMatMul {
    fn run(&self, args: &[&Tensor]) -> Result<Tensor, String> {
        let [a, b] = args else { return Err("matmul has two operands".into()) };
        let (sa, sb) = (a.shape(), b.shape());
        let (ra, rb) = (sa.len(), sb.len());
        if ra < 2 || rb < 2 || sa[ra - 1] != sb[rb - 2] {
            return Err(format!("a matmul of shapes {sa:?} and {sb:?}"));
        }
        let (m, k, n) = (sa[ra - 2], sa[ra - 1], sb[rb - 1]);
        let batch = qc_ir::eval::broadcast_shape(&sa[..ra - 2], &sb[..rb - 2])?;
        let (xa, xb) = (slice(a)?, slice(b)?);
        let count: usize = batch.iter().product();
        let mut y = vec![0.0f32; count * m * n];
        twin! {
            fn product(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, y: &mut [f32]) {
                tiled_product(a, b, m, k, n, y)
            }
        }
        if m * n > 0 {
            for (i, out) in y.chunks_exact_mut(m * n).enumerate() {
                let oa = batch_offset(i, &batch, &sa[..ra - 2], m * k);
                let ob = batch_offset(i, &batch, &sb[..rb - 2], k * n);
                product(self.avx2, &xa[oa..oa + m * k], &xb[ob..ob + k * n], m, k, n, out);
                activate(out, self.act);
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        tensor(&shape, y)
    }

    fn describe(&self) -> &'static str {
        if self.avx2 { "f32 batched product, avx2" } else { "f32 batched product, rust loop" }
    }
}
