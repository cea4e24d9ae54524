//! Activation layouts between kernels. Convolutions, depthwise convolutions, pooling and adds
//! read and write 4-D activations channels-last (`[n][h][w][c]`): a conv's GEMM produces that
//! order directly and the next layer's patches are runs of `c` contiguous bytes. The model's
//! boundary (quantize, dequantize, reshapes, ops left to the evaluator) sees the logical NCHW
//! order, so a value changes layout at most once on each side of a run of kernels.

/// How a 4-D value's bytes are ordered. The shape is always the logical `[n, c, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[n][c][h][w]`, the IR's order.
    Nchw,
    /// `[n][h][w][c]`.
    Nhwc,
}

/// `bytes` (of logical `shape`) reordered from `from` to `to`; `None` when the two orders are
/// the same bytes (the layouts agree, the value is not 4-D, or it has one channel or one pixel).
pub fn convert(bytes: &[u8], shape: &[usize], from: Layout, to: Layout) -> Option<Vec<u8>> {
    if from == to || shape.len() != 4 || shape[1] == 1 || shape[2] * shape[3] == 1 {
        return None;
    }
    let (c, plane) = (shape[1], shape[2] * shape[3]);
    let image = c * plane;
    let mut out = vec![0u8; bytes.len()];
    for (src, dst) in bytes.chunks_exact(image).zip(out.chunks_exact_mut(image)) {
        match to {
            Layout::Nhwc => transpose(src, c, plane, dst),
            Layout::Nchw => transpose(src, plane, c, dst),
        }
    }
    Some(out)
}

/// `dst[c][r] = src[r][c]` for a `rows × cols` byte matrix, in tiles that stay in cache.
pub fn transpose(src: &[u8], rows: usize, cols: usize, dst: &mut [u8]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let row = &src[r * cols..(r + 1) * cols];
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let shape = [2, 3, 2, 5];
        let x: Vec<u8> = (0..60).collect();
        let y = convert(&x, &shape, Layout::Nchw, Layout::Nhwc).unwrap();
        // Image 0, pixel (0, 1), channel 2: NCHW index 2·10 + 1.
        assert_eq!(y[3 + 2], 21);
        assert_eq!(convert(&y, &shape, Layout::Nhwc, Layout::Nchw).unwrap(), x);
        assert!(convert(&x, &[2, 1, 2, 15], Layout::Nchw, Layout::Nhwc).is_none());
    }
}
