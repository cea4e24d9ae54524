//! Sliding windows (convolution, depthwise convolution, pooling) as tables built when the model
//! is compiled: for every output position and tap, the input pixel it reads or a marker for the
//! padding. Kernels index only through these tables, so their bounds are settled here: every
//! entry is `< h·w` or exactly `h·w` (the marker), which `taps` checks as it builds.

pub(crate) mod halo;
pub(crate) mod jit;

use qc_ir::Attrs;

/// A window's output positions × taps over one `h × w` plane.
pub struct Window {
    /// `h · w`, also the padding marker.
    pub plane: usize,
    /// `oh · ow`.
    pub positions: usize,
    /// `kh · kw`.
    pub taps: usize,
    /// `[position][tap]`: the input pixel, or `plane` where the tap falls in the padding.
    pub pixels: Vec<u32>,
    /// The attributes the table was built from.
    pub geometry: Geometry,
}

/// A window's shape: plane, kernel, output, strides, leading pads and dilations, `[y, x]` each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    /// The input plane `[h, w]`.
    pub hw: [usize; 2],
    /// The kernel `[kh, kw]`.
    pub k: [usize; 2],
    /// The output plane `[oh, ow]`.
    pub out: [usize; 2],
    /// Strides.
    pub strides: [usize; 2],
    /// The top and left pads.
    pub pads: [usize; 2],
    /// Dilations.
    pub dilations: [usize; 2],
}

impl Geometry {
    /// The geometry of `attrs` (strides, pads, dilations, ONNX defaults) with kernel `k` from an
    /// `hw` plane to `out`; `None` for attributes that do not describe a 2-D window.
    pub fn new(attrs: &Attrs, hw: [usize; 2], k: [usize; 2], out: [usize; 2]) -> Option<Geometry> {
        let ints = |key: &str, n: usize, d: u64| -> Option<Vec<usize>> {
            qc_ir::infer::ints_or(attrs, key, n, d).ok()?.into_iter().map(|v| usize::try_from(v).ok()).collect()
        };
        let (s, p, d) = (ints("strides", 2, 1)?, ints("pads", 4, 0)?, ints("dilations", 2, 1)?);
        Some(Geometry { hw, k, out, strides: [s[0], s[1]], pads: [p[0], p[1]], dilations: [d[0], d[1]] })
    }
}

impl Window {
    /// The window of `attrs` (strides, pads, dilations, ONNX defaults) with kernel `kh × kw` from an
    /// `h × w` plane to `oh × ow`; `None` for attributes that do not describe a 2-D window.
    pub fn new(attrs: &Attrs, (h, w): (usize, usize), (kh, kw): (usize, usize), (oh, ow): (usize, usize)) -> Option<Window> {
        let geometry = Geometry::new(attrs, [h, w], [kh, kw], [oh, ow])?;
        let (s, p, d) = (geometry.strides, geometry.pads, geometry.dilations);
        let plane = h.checked_mul(w)?;
        u32::try_from(plane).ok()?;
        let taps = kh * kw;
        let mut pixels = vec![plane as u32; oh.checked_mul(ow)?.checked_mul(taps)?];
        for oy in 0..oh {
            let y0 = oy as i64 * s[0] as i64 - p[0] as i64;
            for ox in 0..ow {
                let x0 = ox as i64 * s[1] as i64 - p[1] as i64;
                let row = &mut pixels[(oy * ow + ox) * taps..][..taps];
                for ky in 0..kh {
                    let iy = y0 + ky as i64 * d[0] as i64;
                    for kx in 0..kw {
                        let ix = x0 + kx as i64 * d[1] as i64;
                        if (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix) {
                            row[ky * kw + kx] = (iy as usize * w + ix as usize) as u32;
                        }
                    }
                }
            }
        }
        Some(Window { plane, positions: oh * ow, taps, pixels, geometry })
    }

    /// The table as byte offsets into an NHWC image of `c` channels followed by its padding pixel
    /// (`pixel · c`; the marker gives `plane · c`, that pixel).
    pub fn byte_offsets(&self, c: usize) -> Result<Box<[u32]>, String> {
        self.pixels
            .iter()
            .map(|&p| {
                if p as usize > self.plane {
                    return Err("a window entry lies outside the plane".to_string());
                }
                u32::try_from(p as usize * c).map_err(|_| "the image is too large for a window kernel".to_string())
            })
            .collect()
    }

    /// The taps of output position `pos` (`pos < positions`).
    pub fn at(&self, pos: usize) -> &[u32] {
        &self.pixels[pos * self.taps..(pos + 1) * self.taps]
    }
}
