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

/// `dst[c][r] = src[r][c]` for a `rows × cols` matrix, in tiles that stay in cache.
pub fn transpose<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
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
    fn transpose_round_trip() {
        // One NCHW image of 3 channels × 10 pixels to NHWC and back.
        let x: Vec<u8> = (0..30).collect();
        let mut y = vec![0; 30];
        transpose(&x, 3, 10, &mut y);
        // Pixel 1, channel 2: NCHW index 2·10 + 1.
        assert_eq!(y[3 + 2], 21);
        let mut z = vec![0; 30];
        transpose(&y, 10, 3, &mut z);
        assert_eq!(z, x);
    }
}
