//! Shared by the kernel property tests: a random sliding window and QIR list literals.

use proptest::prelude::*;

/// A 2-D sliding window over an `hw` plane.
#[derive(Debug, Clone)]
pub struct Window {
    pub hw: [usize; 2],
    pub k: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
}

impl Window {
    /// The output `[oh, ow]` (ONNX's floor rule), or `None` when the kernel does not fit the
    /// padded input.
    pub fn out(&self) -> Option<[usize; 2]> {
        let dim = |i: usize| {
            let padded = self.hw[i] + self.pads[i] + self.pads[i + 2];
            let span = self.dilations[i] * (self.k[i] - 1) + 1;
            (padded >= span).then(|| (padded - span) / self.strides[i] + 1)
        };
        Some([dim(0)?, dim(1)?])
    }

    /// `dilations = [..], pads = [..], strides = [..]`.
    pub fn attrs(&self) -> String {
        format!("dilations = [{}], pads = [{}], strides = [{}]", list(&self.dilations), list(&self.pads), list(&self.strides))
    }
}

/// Planes of 1 to `max_hw − 1` pixels a side, kernels of 1 to 3, strides and dilations of 1 or
/// 2, pads of 0 to 2 (below the kernel size when `pads_below_kernel`, as pooling requires).
pub fn window(max_hw: usize, pads_below_kernel: bool) -> impl Strategy<Value = Window> {
    let pair = |lo: usize, hi: usize| [lo..hi, lo..hi];
    (pair(1, max_hw), pair(1, 4), pair(1, 3), pair(1, 3), [0usize..3, 0..3, 0..3, 0..3]).prop_map(
        move |(hw, k, strides, dilations, p)| {
            let pads = if pads_below_kernel { [p[0] % k[0], p[1] % k[1], p[2] % k[0], p[3] % k[1]] } else { p };
            Window { hw, k, strides, dilations, pads }
        },
    )
}

/// `a, b, c` for a QIR list.
pub fn list<T: ToString>(v: &[T]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

/// Property cases per test: 64, or 1000 with `QC_SLOW` set.
pub fn cases() -> u32 {
    if std::env::var_os("QC_SLOW").is_some() { 1000 } else { 64 }
}
