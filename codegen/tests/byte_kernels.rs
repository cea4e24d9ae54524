//! The byte kernels (max pooling and global mean, JIT-compiled; residual add, mul — same-shape
//! and by a per-channel gate, either operand first — and lookup-table activations) through
//! `CompiledModel` against the reference evaluator — and a mul of a value by an activation of
//! itself (SiLU), which runs as one table — bit for bit, over random shapes, windows (kernel, strides, pads,
//! dilations), zero points, scales, signedness and requantization modes. Each case's graph puts a
//! 1×1 convolution first, so the kernels read channels-last values, and adds that value to the
//! NCHW input, so an add of operands in different layouts is covered too. Batches of 0 to 3
//! images. `QC_SLOW=1` runs 1000 cases.

mod support;

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::{CodegenOptions, CompiledModel, Isa};
use qc_ir::eval::evaluate;
use qc_ir::{ScalarType, Tensor};
use support::{Window, cases, list, window};

#[derive(Debug, Clone)]
struct Case {
    c: usize,
    win: Window,
    signed: bool,
    zp: [i32; 3],
    scale: [f32; 3],
    relu: bool,
    q31: bool,
    global_pool: bool,
    batch: usize,
    x: Vec<i32>,
    w: Vec<i32>,
}

impl Case {
    fn pooled(&self) -> Option<[usize; 2]> {
        self.win.out()
    }

    fn qir(&self) -> String {
        let [ph, pw] = self.pooled().unwrap();
        let (c, [h, w]) = (self.c, self.win.hw);
        let st = if self.signed { "i8" } else { "u8" };
        let q = |i: usize| format!("!q<{st}, {:?}, {}>", self.scale[i], self.zp[i]);
        let act = if self.relu { "activation = \"relu\", " } else { "" };
        let mode = if self.q31 { "requant = \"q31\"" } else { "requant = \"f32\"" };
        let mean = if self.global_pool {
            format!("global_avg_pool(%s) {{{mode}}}")
        } else {
            format!("reduce_mean(%s) {{axes = [-1, 2], keepdims = true, {mode}}}")
        };
        format!(
            "func @kernels(%x: tensor<?x{c}x{h}x{w}x{qx}>) -> (tensor<?x{c}x{ph}x{pw}x{qa}>, tensor<?x{c}x{h}x{w}x{qs}>, tensor<?x{c}x1x1x{qs}>, tensor<?x{c}x{h}x{w}x{qs}>, tensor<?x{c}x{h}x{w}x{qa}>, tensor<?x{c}x{h}x{w}x{qx}>, tensor<?x{c}x{h}x{w}x{qx}>) {{
  %w = const dense<[{wv}]> : tensor<{c}x{c}x1x1x!q<i8, 0.01, 0>>
  %a = conv2d(%x, %w) {{{mode}}} : tensor<?x{c}x{h}x{w}x{qa}>
  %m = max_pool(%a) {{kernel_shape = [{kh}, {kw}], {attrs}}} : tensor<?x{c}x{ph}x{pw}x{qa}>
  %s = add(%a, %x) {{{act}}} : tensor<?x{c}x{h}x{w}x{qs}>
  %g = {mean} : tensor<?x{c}x1x1x{qs}>
  %l = {lut}(%a) : tensor<?x{c}x{h}x{w}x{qs}>
  %p = mul(%a, %x) : tensor<?x{c}x{h}x{w}x{qa}>
  %e = {gated} : tensor<?x{c}x{h}x{w}x{qx}>
  %f = {lut}(%a) : tensor<?x{c}x{h}x{w}x{qs}>
  %silu = {silu} : tensor<?x{c}x{h}x{w}x{qx}>
  return %m, %s, %g, %l, %p, %e, %silu
}}",
            silu = if self.signed { "mul(%f, %a)" } else { "mul(%a, %f)" },
            gated = if self.c % 2 == 0 { "mul(%a, %g)" } else { "mul(%g, %a)" },
            lut = ["sigmoid", "hard_swish", "hard_sigmoid"][self.c % 3],
            qx = q(0),
            qa = q(1),
            qs = q(2),
            wv = list(&self.w),
            kh = self.win.k[0],
            kw = self.win.k[1],
            attrs = self.win.attrs(),
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![1usize..4, 4usize..20, 20usize..40],
        window(9, true),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        0usize..4,
    )
        .prop_flat_map(|(c, win, signed, flags, batch)| {
            let zp = if signed { -128i32..=127 } else { 0i32..=255 };
            let pixels = win.hw[0] * win.hw[1];
            (
                Just((c, win, signed, flags, batch)),
                [zp.clone(), zp.clone(), zp],
                [1e-3f32..0.1, 1e-3f32..0.1, 1e-3f32..0.1],
                prop::collection::vec(if signed { -128i32..=127 } else { 0i32..=255 }, batch * c * pixels),
                prop::collection::vec(-128i32..=127, c * c),
            )
        })
        .prop_map(|((c, win, signed, (relu, q31, global_pool), batch), zp, scale, x, w)| Case {
            c,
            win,
            signed,
            zp,
            scale,
            relu,
            q31,
            global_pool,
            batch,
            x,
            w,
        })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    prop_assume!(case.pooled().is_some());
    let g = qc_ir::text::parse(&case.qir()).map_err(|d| TestCaseError::fail(format!("{d:?}\n{}", case.qir())))?;
    let shape = [case.batch, case.c, case.win.hw[0], case.win.hw[1]];
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&shape), case.x.clone()).unwrap()).cast(if case.signed {
        ScalarType::I8
    } else {
        ScalarType::U8
    });
    let want = evaluate(&g, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    for isa in Isa::host_levels() {
        let model =
            CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got = model.run(std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, &want, "{} on {}", case.qir(), isa);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn byte_kernels_equal_the_evaluator(c in case()) {
        check(&c)?;
    }
}

/// Each op of the case graph runs on its byte kernel, not on the evaluator's fallback.
#[test]
fn the_byte_kernels_are_used() {
    let case = Case {
        c: 16,
        win: Window { hw: [6, 5], k: [3, 2], strides: [2, 1], dilations: [1, 2], pads: [1, 0, 1, 1] },
        signed: false,
        zp: [3, 100, 7],
        scale: [0.02, 0.03, 0.05],
        relu: true,
        q31: false,
        global_pool: false,
        batch: 2,
        x: (0..2 * 16 * 30).map(|i| (i * 37 % 256) as i32).collect(),
        w: (0..256).map(|i| (i * 11 % 255) as i32 - 127).collect(),
    };
    let g = qc_ir::text::parse(&case.qir()).unwrap();
    let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2, 16, 6, 5]), case.x.clone()).unwrap()).cast(ScalarType::U8);
    for isa in Isa::host_levels() {
        let model = CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa)).unwrap();
        let profile = model.profile(std::slice::from_ref(&x), 1).unwrap();
        let labels: Vec<&str> = profile.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(model.fallback_ops(), Vec::<String>::new(), "{labels:?}");
        // Max pooling and the mean are JIT-compiled on every level but `scalar`.
        assert!(model.kernels().iter().any(|(_, k)| k.contains("per-channel gate")), "{:?}", model.kernels());
        assert!(model.kernels().iter().any(|(_, k)| k.contains("(x), one lookup table")), "{:?}", model.kernels());
        for op in ["max_pool", "reduce_mean"] {
            let step = profile.iter().find(|p| p.label.contains(op)).expect("the op's step");
            assert_eq!(step.jit, isa != Isa::Scalar, "{op} on {isa}");
        }
    }
    check(&case).unwrap();
}
