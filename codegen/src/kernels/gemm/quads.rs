//! What the precompiled paths that multiply bytes four k at a time share (`avx512.rs`, 512-bit
//! `vpdpbusd`; `avx2_maddubs.rs`, 256-bit `vpmaddubsw`): the weights packed in panels of k-quad
//! words, each panel's nonzero quads for block-sparse layers, and a thread's buffer of activation
//! words.
//!
//! A panel holds `2·lanes` columns (`lanes` for a last panel of at most `lanes`), as
//! `[quad][columns]` i32 words, each holding one column's four i8 weights of that quad (zero
//! past N and past K), so that one vector load reads a quad of `lanes` columns.

use crate::kernels::gemm::GemmSpec;

thread_local! {
    /// A thread's activation words of one tile of rows, reused across layers and runs.
    static ROWS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's activation-word buffer, `len` words long.
pub(crate) fn with_rows<R>(len: usize, f: impl FnOnce(&mut [i32]) -> R) -> R {
    ROWS.with_borrow_mut(|rows| {
        rows.resize(len, 0);
        f(&mut rows[..len])
    })
}

/// A layer's i8 weights in k-quad panels.
pub(crate) struct QuadPanels {
    /// Columns per vector.
    lanes: usize,
    /// K rounded up to 4, in quads.
    pub(crate) quads: usize,
    /// Per panel: `[quad][2·lanes or lanes columns]` words of four i8 weights.
    pub(crate) packed: Vec<i32>,
    /// Per panel of block-sparse weights: the quads with a nonzero weight in some column, which
    /// are all a kernel visits (`None` where at least 7 in 8 are nonzero).
    pub(crate) nonzero: Vec<Option<Vec<u32>>>,
}

impl QuadPanels {
    /// Packs `spec`'s weights for vectors of `lanes` i32 columns; `None` unless every weight is
    /// an i8 and the spec's tables agree with N and K.
    pub(crate) fn new(spec: &GemmSpec, lanes: usize) -> Option<QuadPanels> {
        let (n, k) = (spec.n, spec.k);
        if n == 0 || k == 0 || spec.weights.len() != n * k || spec.bias.len() != n || spec.requant.len() != n {
            return None;
        }
        if spec.weights.iter().any(|&w| i8::try_from(w).is_err()) {
            return None;
        }
        let quads = k.div_ceil(4);
        let mut p = QuadPanels { lanes, quads, packed: vec![0i32; quads * n.div_ceil(lanes) * lanes], nonzero: Vec::new() };
        for c in 0..n {
            let (base, width) = p.panel(c / (2 * lanes), n);
            let col = c % (2 * lanes);
            let w = &spec.weights[c * k..(c + 1) * k];
            for q in 0..quads {
                let mut word = [0u8; 4];
                for (i, b) in word.iter_mut().enumerate() {
                    if let Some(&v) = w.get(4 * q + i) {
                        *b = v as i8 as u8;
                    }
                }
                p.packed[base + q * width + col] = i32::from_le_bytes(word);
            }
        }
        p.nonzero = (0..n.div_ceil(2 * lanes))
            .map(|i| {
                let (base, width) = p.panel(i, n);
                let nz: Vec<u32> = (0..quads)
                    .filter(|q| p.packed[base + q * width..][..width].iter().any(|&w| w != 0))
                    .map(|q| q as u32)
                    .collect();
                (nz.len() * 8 < quads * 7).then_some(nz)
            })
            .collect();
        Some(p)
    }

    /// Panel `i`'s offset in [`QuadPanels::packed`] and its width: `2·lanes` columns, or `lanes`
    /// for a last panel holding at most `lanes`.
    fn panel(&self, i: usize, n: usize) -> (usize, usize) {
        let l = self.lanes;
        let width = if (i + 1) * 2 * l > n && n - i * 2 * l <= l { l } else { 2 * l };
        (i * 2 * l * self.quads, width)
    }

    /// Each panel of a layer of `n` columns: its first column, its `[quad][width]` weights, its
    /// nonzero quads (block-sparse layers) and whether it is a full panel of `2·lanes` columns.
    pub(crate) fn panels(&self, n: usize) -> impl Iterator<Item = (usize, &[i32], Option<&[u32]>, bool)> {
        (0..n.div_ceil(2 * self.lanes)).map(move |i| {
            let (base, width) = self.panel(i, n);
            (i * 2 * self.lanes, &self.packed[base..][..self.quads * width], self.nonzero[i].as_deref(), width == 2 * self.lanes)
        })
    }

    /// Copies `rows` activation rows of `a` (`stride` bytes each, from row `r0`) into `dst` as
    /// k-quad words made u8 by `flip`.
    pub(crate) fn load_rows(&self, a: &[u8], stride: usize, r0: usize, rows: usize, flip: u32, dst: &mut [i32]) {
        for (r, dst) in dst.chunks_exact_mut(self.quads).enumerate().take(rows) {
            let src = &a[(r0 + r) * stride..][..4 * self.quads];
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = (u32::from_le_bytes(s.try_into().expect("4 bytes")) ^ flip) as i32;
            }
        }
    }
}
