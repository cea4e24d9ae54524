//! The products of dynamically quantized layers — `matmul_integer` and `conv_integer` with a
//! constant weight, run as i32-output GEMM kernels — through `CompiledModel` against the reference
//! evaluator, bit for bit, over random shapes, windows (strides, pads, dilations), u8 and i8
//! inputs, input zero points given at run time and constant weight zero points (one, or one per
//! output channel). `QC_SLOW=1` runs 1000 cases.

mod support;

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::CompiledModel;
use qc_ir::eval::evaluate;
use qc_ir::{ScalarType, Tensor};
use support::{Window, cases, list, window};

#[derive(Debug, Clone)]
struct Case {
    /// `None`: a matmul_integer of `[batch, c] × [c, o]`.
    win: Option<Window>,
    c: usize,
    o: usize,
    batch: usize,
    signed: bool,
    zp: i32,
    /// One weight zero point, or one per output channel; none when empty.
    w_zp: Vec<i32>,
    x: Vec<i32>,
    w: Vec<i32>,
}

impl Case {
    fn x_shape(&self) -> Vec<usize> {
        match &self.win {
            Some(win) => vec![self.batch, self.c, win.hw[0], win.hw[1]],
            None => vec![self.batch, self.c],
        }
    }

    fn qir(&self) -> Option<String> {
        let st = if self.signed { "i8" } else { "u8" };
        let (c, o) = (self.c, self.o);
        let wz = match self.w_zp.len() {
            0 => String::new(),
            1 => format!("  %wz = const dense<[{}]> : tensor<i8>\n", self.w_zp[0]),
            n => format!("  %wz = const dense<[{}]> : tensor<{n}xi8>\n", list(&self.w_zp)),
        };
        let wz_arg = if self.w_zp.is_empty() { "" } else { ", %wz" };
        Some(match &self.win {
            Some(win) => {
                let [oh, ow] = win.out()?;
                let (h, w, kh, kw) = (win.hw[0], win.hw[1], win.k[0], win.k[1]);
                format!(
                    "func @conv(%x: tensor<?x{c}x{h}x{w}x{st}>, %zp: tensor<{st}>) -> tensor<?x{o}x{oh}x{ow}xi32> {{
  %w = const dense<[{wv}]> : tensor<{o}x{c}x{kh}x{kw}xi8>
{wz}  %y = conv_integer(%x, %w, %zp{wz_arg}) {{{attrs}}} : tensor<?x{o}x{oh}x{ow}xi32>
  return %y
}}",
                    wv = list(&self.w),
                    attrs = win.attrs(),
                )
            }
            None => format!(
                "func @mm(%x: tensor<?x{c}x{st}>, %zp: tensor<{st}>) -> tensor<?x{o}xi32> {{
  %w = const dense<[{wv}]> : tensor<{c}x{o}xi8>
{wz}  %y = matmul_integer(%x, %w, %zp{wz_arg}) : tensor<?x{o}xi32>
  return %y
}}",
                wv = list(&self.w),
            ),
        })
    }
}

fn case() -> impl Strategy<Value = Case> {
    (prop::option::of(window(9, false)), prop_oneof![1usize..8, 8usize..40], 1usize..24, 0usize..4, any::<bool>(), 0usize..3)
        .prop_flat_map(|(win, c, o, batch, signed, zps)| {
            let pixels = win.as_ref().map_or(1, |w| w.hw[0] * w.hw[1]);
            let taps = win.as_ref().map_or(1, |w| w.k[0] * w.k[1]);
            let range = if signed { -128i32..=127 } else { 0i32..=255 };
            (
                Just((win, c, o, batch, signed)),
                range.clone(),
                prop::collection::vec(-8i32..8, [0, 1, o][zps]),
                prop::collection::vec(range, batch * c * pixels),
                prop::collection::vec(-128i32..=127, o * c * taps),
            )
        })
        .prop_map(|((win, c, o, batch, signed), zp, w_zp, x, w)| Case { win, c, o, batch, signed, zp, w_zp, x, w })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let Some(text) = case.qir() else {
        return Ok(());
    };
    let g = qc_ir::text::parse(&text).map_err(|d| TestCaseError::fail(format!("{d:?}\n{text}")))?;
    let st = if case.signed { ScalarType::I8 } else { ScalarType::U8 };
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&case.x_shape()), case.x.clone()).unwrap()).cast(st);
    let zp = Tensor::I32(ArrayD::from_elem(IxDyn(&[]), case.zp)).cast(st);
    let inputs = [x, zp];
    let model = CompiledModel::compile(&g).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(model.kernel_count(), 1, "{}", text);
    let got = model.run(&inputs).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = evaluate(&g, &inputs).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(got, want, "{}", text);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn integer_products_equal_the_evaluator(c in case()) {
        check(&c)?;
    }
}
