//! The products of dynamically quantized layers — `matmul_integer` and `conv_integer` with a
//! constant weight, run as i32-output GEMM kernels — through `CompiledModel` against the reference
//! evaluator, bit for bit, over random shapes, windows (strides, pads, dilations), u8 and i8
//! inputs, input zero points given at run time and constant weight zero points (one, or one per
//! output channel), with and without the f32 tail that `quantize-dynamic` emits after them (cast,
//! multiply by a run-time scale, add a bias with relu), which the compiler fuses into the
//! product together with the scale's own multiply when that comes after the product.
//! `QC_SLOW=1` runs 1000 cases.

mod support;

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::{CodegenOptions, CompiledModel, Isa};
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
    /// Append the f32 tail `quantize-dynamic` emits (cast, multiply by a run-time scale, add a
    /// constant bias with relu), which the compiler fuses into the product; `Some(true)` puts the
    /// scale's own multiply (run-time scale × constant) before the product, where it is left to
    /// the evaluator, `Some(false)` after it, where the fused step absorbs it.
    tail: Option<bool>,
}

impl Case {
    fn scale_param(&self) -> &'static str {
        if self.tail.is_some() { ", %sx: tensor<f32>" } else { "" }
    }

    fn out_elem(&self) -> &'static str {
        if self.tail.is_some() { "f32" } else { "i32" }
    }

    /// The rest of the body: the return of `%y`, or the f32 tail (per-channel weight scales and
    /// bias of shape `per`) and its return.
    fn tail(&self, out: &str, per: &str) -> String {
        let Some(scale_first) = self.tail else {
            return "  return %y\n".into();
        };
        let o = self.o;
        let bs: Vec<String> = (0..o).map(|i| format!("{:?}", (i as f32 - 2.5) * 0.37)).collect();
        format!(
            "  %c = cast(%y) {{to = \"f32\"}} : tensor<{out}xf32>
{s}  %m = mul(%c, %s) : tensor<{out}xf32>
  %b = const dense<[{bs}]> : tensor<{per}xf32>
  %z = add(%m, %b) {{activation = \"relu\"}} : tensor<{out}xf32>
  return %z
",
            s = if scale_first { String::new() } else { self.scale(per) },
            bs = bs.join(", "),
        )
    }

    /// The per-channel scale `%s`: the run-time scale times constant weight scales of shape `per`.
    fn scale(&self, per: &str) -> String {
        let ws: Vec<String> = (0..self.o).map(|i| format!("{:?}", 0.001 * (i + 1) as f32)).collect();
        format!("  %ws = const dense<[{}]> : tensor<{per}xf32>\n  %s = mul(%sx, %ws) : tensor<{per}xf32>\n", ws.join(", "))
    }

    /// What comes before the product: the scale when the case puts it first.
    fn head(&self, per: &str) -> String {
        if self.tail == Some(true) { self.scale(per) } else { String::new() }
    }

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
                let out = format!("?x{o}x{oh}x{ow}");
                format!(
                    "func @conv(%x: tensor<?x{c}x{h}x{w}x{st}>, %zp: tensor<{st}>{sx}) -> tensor<{out}x{ot}> {{
  %w = const dense<[{wv}]> : tensor<{o}x{c}x{kh}x{kw}xi8>
{head}{wz}  %y = conv_integer(%x, %w, %zp{wz_arg}) {{{attrs}}} : tensor<{out}xi32>
{tail}}}",
                    wv = list(&self.w),
                    attrs = win.attrs(),
                    sx = self.scale_param(),
                    ot = self.out_elem(),
                    tail = self.tail(&out, &format!("{o}x1x1")),
                    head = self.head(&format!("{o}x1x1")),
                )
            }
            None => format!(
                "func @mm(%x: tensor<?x{c}x{st}>, %zp: tensor<{st}>{sx}) -> tensor<?x{o}x{ot}> {{
  %w = const dense<[{wv}]> : tensor<{c}x{o}xi8>
{head}{wz}  %y = matmul_integer(%x, %w, %zp{wz_arg}) : tensor<?x{o}xi32>
{tail}}}",
                wv = list(&self.w),
                sx = self.scale_param(),
                ot = self.out_elem(),
                tail = self.tail(&format!("?x{o}"), &format!("{o}")),
                head = self.head(&format!("{o}")),
            ),
        })
    }
}

fn case() -> impl Strategy<Value = Case> {
    let shape = (prop::option::of(window(9, false)), prop_oneof![1usize..8, 8usize..40], 1usize..24, 0usize..4);
    (shape, any::<bool>(), 0usize..3, prop::option::of(any::<bool>()))
        .prop_flat_map(|((win, c, o, batch), signed, zps, tail)| {
            let pixels = win.as_ref().map_or(1, |w| w.hw[0] * w.hw[1]);
            let taps = win.as_ref().map_or(1, |w| w.k[0] * w.k[1]);
            let range = if signed { -128i32..=127 } else { 0i32..=255 };
            (
                Just((win, c, o, batch, signed, tail)),
                range.clone(),
                prop::collection::vec(-8i32..8, [0, 1, o][zps]),
                prop::collection::vec(range, batch * c * pixels),
                prop::collection::vec(-128i32..=127, o * c * taps),
            )
        })
        .prop_map(|((win, c, o, batch, signed, tail), zp, w_zp, x, w)| Case { win, c, o, batch, signed, zp, w_zp, x, w, tail })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let Some(text) = case.qir() else {
        return Ok(());
    };
    let g = qc_ir::text::parse(&text).map_err(|d| TestCaseError::fail(format!("{d:?}\n{text}")))?;
    let st = if case.signed { ScalarType::I8 } else { ScalarType::U8 };
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&case.x_shape()), case.x.clone()).unwrap()).cast(st);
    let zp = Tensor::I32(ArrayD::from_elem(IxDyn(&[]), case.zp)).cast(st);
    let mut inputs = vec![x, zp];
    if case.tail.is_some() {
        inputs.push(Tensor::F32(ArrayD::from_elem(IxDyn(&[]), 0.0123f32)));
    }
    let want = evaluate(&g, &inputs).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    for isa in Isa::host_levels() {
        let model =
            CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The tail is fused, and so is the scales' product when it comes after the integer
        // product; before it, that product is an f32 kernel of its own.
        prop_assert_eq!(model.kernel_count(), 1 + usize::from(case.tail == Some(true)), "{}", text);
        prop_assert_eq!(model.fallback_ops().len(), 0, "{:?}", model.fallback_ops());
        let got = model.run(&inputs).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, &want, "{} on {}", text, isa);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn integer_products_equal_the_evaluator(c in case()) {
        check(&c)?;
    }
}
