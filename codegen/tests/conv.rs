//! Integer conv2d through `CompiledModel` (channels-last patch gather + JIT GEMM, or the
//! depthwise row kernel when `groups = C`) against the
//! reference evaluator, bit for bit, over random shapes, strides, pads, dilations, zero points
//! and scales — image borders included, where the `−zp·Σw` bias fold meets the padding.
//! `QC_SLOW=1` runs 1000 cases.

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::CompiledModel;
use qc_ir::eval::evaluate;
use qc_ir::{ScalarType, Tensor};

#[derive(Debug, Clone)]
struct Case {
    c: usize,
    o: usize,
    hw: [usize; 2],
    k: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 4],
    zp_x: i32,
    zp_y: i32,
    s_y: f32,
    relu: bool,
    depthwise: bool,
    x: Vec<i32>,
    w: Vec<i32>,
    bias: Vec<i32>,
}

impl Case {
    fn out(&self) -> Option<[usize; 2]> {
        let dim = |i: usize| {
            let padded = self.hw[i] + self.pads[i] + self.pads[i + 2];
            let span = self.dilations[i] * (self.k[i] - 1) + 1;
            (padded >= span).then(|| (padded - span) / self.strides[i] + 1)
        };
        Some([dim(0)?, dim(1)?])
    }

    fn qir(&self) -> String {
        let [oh, ow] = self.out().unwrap();
        let (c, o, [h, w], [kh, kw]) = (self.c, self.o, self.hw, self.k);
        let (wc, groups) = if self.depthwise { (1, c) } else { (c, 1) };
        let list = |v: &[i32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let ints = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
        let act = if self.relu { "activation = \"relu\", " } else { "" };
        format!(
            "func @conv(%x: tensor<?x{c}x{h}x{w}x!q<u8, 0.02, {zx}>>) -> tensor<?x{o}x{oh}x{ow}x!q<u8, {sy:?}, {zy}>> {{
  %w = const dense<[{wv}]> : tensor<{o}x{wc}x{kh}x{kw}x!q<i8, 0.01, 0>>
  %b = const dense<[{bv}]> : tensor<{o}x!q<i32, 0.0002, 0>>
  %y = conv2d(%x, %w, %b) {{{act}dilations = [{d}], groups = {groups}, pads = [{p}], strides = [{s}]}} : tensor<?x{o}x{oh}x{ow}x!q<u8, {sy:?}, {zy}>>
  return %y
}}",
            zx = self.zp_x,
            zy = self.zp_y,
            sy = self.s_y,
            wv = list(&self.w),
            bv = list(&self.bias),
            d = ints(&self.dilations),
            p = ints(&self.pads),
            s = ints(&self.strides),
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    let pair = |lo: usize, hi: usize| [lo..hi, lo..hi];
    (
        1usize..7,
        1usize..7,
        pair(1, 10),
        pair(1, 4),
        pair(1, 3),
        pair(1, 3),
        [0usize..3, 0..3, 0..3, 0..3],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(c, o, hw, k, strides, dilations, pads, relu, depthwise)| {
            let (o, wc) = if depthwise { (c, 1) } else { (o, c) };
            (
                Just((c, o, hw, k, strides, dilations, pads, relu, depthwise)),
                0i32..=255,
                0i32..=255,
                1e-3f32..0.5,
                prop::collection::vec(0i32..=255, 2 * c * hw[0] * hw[1]),
                prop::collection::vec(-128i32..=127, o * wc * k[0] * k[1]),
                prop::collection::vec(-5000i32..5000, o),
            )
        })
        .prop_map(|((c, o, hw, k, strides, dilations, pads, relu, depthwise), zp_x, zp_y, s_y, x, w, bias)| Case {
            c,
            o,
            hw,
            k,
            strides,
            dilations,
            pads,
            zp_x,
            zp_y,
            s_y,
            relu,
            depthwise,
            x,
            w,
            bias,
        })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    prop_assume!(case.out().is_some());
    let g = qc_ir::text::parse(&case.qir()).map_err(|d| TestCaseError::fail(format!("{d:?}\n{}", case.qir())))?;
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2, case.c, case.hw[0], case.hw[1]]), case.x.clone()).unwrap())
        .cast(ScalarType::U8);
    let model = CompiledModel::compile(&g).map_err(|e| TestCaseError::fail(e.0))?;
    // A depthwise conv with one channel is an ordinary one: it goes to the GEMM kernel.
    let jit = !case.depthwise || case.c == 1;
    prop_assert_eq!(model.kernel_count(), usize::from(jit), "not the expected conv path");
    let got = model.run(std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(e.0))?;
    let want = evaluate(&g, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(got, want);
    Ok(())
}

fn cases() -> u32 {
    if std::env::var_os("QC_SLOW").is_some() { 1000 } else { 64 }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn jit_conv_equals_the_evaluator(c in case()) {
        check(&c)?;
    }
}
