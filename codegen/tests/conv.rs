//! Integer conv2d through `CompiledModel` (channels-last patch gather + JIT GEMM, the GEMM
//! reading taps in place, or the depthwise row kernel when `groups = C`) against the
//! reference evaluator, bit for bit, over random shapes, strides, pads, dilations, zero points
//! (weights' too), u8 and i8 inputs and scales — image borders included, where the `−zp·Σw` bias fold meets the padding.
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
    c: usize,
    o: usize,
    win: Window,
    zp_x: i32,
    zp_y: i32,
    s_y: f32,
    relu: bool,
    depthwise: bool,
    /// The input stored as i8 (else u8).
    x_i8: bool,
    zp_w: i32,
    x: Vec<i32>,
    w: Vec<i32>,
    bias: Vec<i32>,
}

/// Sets to the zero point the weights of the (16 columns × 4 k) blocks of the `[O][kh·kw·C]` GEMM
/// that `mask` selects (as `sparsify --block` leaves them), so that the kernels' skipping of zero
/// groups is exercised; `w` is `[O, C, kh, kw]`.
fn zero_blocks(w: &mut [i32], [o, c, taps]: [usize; 3], zp_w: i32, mask: &[bool]) {
    let groups = (taps * c).div_ceil(4);
    for oc in 0..o {
        for ic in 0..c {
            for t in 0..taps {
                if mask[((oc / 16) * groups + (t * c + ic) / 4) % mask.len()] {
                    w[(oc * c + ic) * taps + t] = zp_w;
                }
            }
        }
    }
}

impl Case {
    fn out(&self) -> Option<[usize; 2]> {
        self.win.out()
    }

    fn qir(&self) -> String {
        let [oh, ow] = self.out().unwrap();
        let (c, o, [h, w], [kh, kw]) = (self.c, self.o, self.win.hw, self.win.k);
        let (wc, groups) = if self.depthwise { (1, c) } else { (c, 1) };
        let act = if self.relu { "activation = \"relu\", " } else { "" };
        format!(
            "func @conv(%x: tensor<?x{c}x{h}x{w}x!q<{xs}, 0.02, {zx}>>) -> tensor<?x{o}x{oh}x{ow}x!q<u8, {sy:?}, {zy}>> {{
  %w = const dense<[{wv}]> : tensor<{o}x{wc}x{kh}x{kw}x!q<i8, 0.01, {zw}>>
  %b = const dense<[{bv}]> : tensor<{o}x!q<i32, 0.0002, 0>>
  %y = conv2d(%x, %w, %b) {{{act}groups = {groups}, {attrs}}} : tensor<?x{o}x{oh}x{ow}x!q<u8, {sy:?}, {zy}>>
  return %y
}}",
            xs = if self.x_i8 { "i8" } else { "u8" },
            zx = self.zp_x - if self.x_i8 { 128 } else { 0 },
            zw = self.zp_w,
            zy = self.zp_y,
            sy = self.s_y,
            wv = list(&self.w),
            bv = list(&self.bias),
            attrs = self.win.attrs(),
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    // Few channels gather bytes, eight and more gather runs, multiples of 16 are read in place
    // from a copy with a border (k×k kernels, an even number of output positions).
    case_of(prop_oneof![1usize..8, 8usize..20, prop::sample::select(vec![16usize, 32, 48])], any::<bool>(), window(10, false))
}

/// Depthwise layers with stride 1 and channel counts that fill the `std::arch` kernel's
/// groups of 16 and 32 channels (several of them: 64, 96) or part of one.
fn rows_case() -> impl Strategy<Value = Case> {
    let stride_one = window(10, false).prop_map(|w| Window { strides: [1, 1], ..w });
    case_of(prop::sample::select(vec![2usize, 4, 8, 16, 32, 48, 64, 96]), Just(true), stride_one)
}

fn case_of(
    channels: impl Strategy<Value = usize>,
    depthwise: impl Strategy<Value = bool>,
    window: impl Strategy<Value = Window>,
) -> impl Strategy<Value = Case> {
    (
        channels,
        1usize..7,
        window,
        any::<bool>(),
        depthwise,
        any::<bool>(),
        prop_oneof![3 => Just(0i32), 1 => -8i32..8],
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(any::<bool>(), 1..6)],
    )
        .prop_flat_map(|(c, o, win, relu, depthwise, x_i8, zp_w, mask)| {
            let (o, wc) = if depthwise { (c, 1) } else { (o, c) };
            let (pixels, taps) = (win.hw[0] * win.hw[1], win.k[0] * win.k[1]);
            (
                Just((c, o, win, relu, depthwise, x_i8, zp_w, mask)),
                0i32..=255,
                0i32..=255,
                // Output scales giving requantization multipliers below 1/2 (clamped by the
                // narrowing's saturation) and above it (clamped in f32).
                prop_oneof![1e-3f32..0.5, 1e-5f32..4e-4],
                prop::collection::vec(0i32..=255, 2 * c * pixels),
                prop::collection::vec(-128i32..=127, o * wc * taps),
                prop::collection::vec(-5000i32..5000, o),
            )
        })
        .prop_map(|((c, o, win, relu, depthwise, x_i8, zp_w, mask), zp_x, zp_y, s_y, x, mut w, bias)| {
            if !depthwise && !mask.is_empty() {
                zero_blocks(&mut w, [o, c, win.k[0] * win.k[1]], zp_w, &mask);
            }
            Case { c, o, win, zp_x, zp_y, s_y, relu, depthwise, x_i8, zp_w, x, w, bias }
        })
}

impl Case {
    /// The model and its input of two images.
    fn model_and_input(&self) -> Result<(qc_ir::Graph, Tensor), TestCaseError> {
        let g = qc_ir::text::parse(&self.qir()).map_err(|d| TestCaseError::fail(format!("{d:?}\n{}", self.qir())))?;
        // `x` holds u8 values; an i8 input is the same values shifted by 128 (as is its zero point).
        let shift = if self.x_i8 { 128 } else { 0 };
        let xs: Vec<i32> = self.x.iter().map(|v| v - shift).collect();
        let x = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2, self.c, self.win.hw[0], self.win.hw[1]]), xs).unwrap())
            .cast(if self.x_i8 { ScalarType::I8 } else { ScalarType::U8 });
        Ok((g, x))
    }
}

/// The first image of a batch.
fn first(x: &Tensor) -> Tensor {
    match x {
        Tensor::U8(v) => Tensor::U8(v.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..1)).to_owned()),
        Tensor::I8(v) => Tensor::I8(v.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..1)).to_owned()),
        _ => unreachable!("8-bit inputs"),
    }
}

/// The layer's JIT run equals the evaluator's on two images, and on one (where the kernels are
/// called directly).
fn check(case: &Case) -> Result<(), TestCaseError> {
    prop_assume!(case.out().is_some());
    let (g, x) = case.model_and_input()?;
    for isa in Isa::host_levels() {
        let model =
            CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // A depthwise conv with one channel is an ordinary one: it goes to the GEMM kernel;
        // others get the depthwise kernel, except on `scalar`, where the Rust loop runs them.
        let jit = !case.depthwise || case.c == 1 || isa != Isa::Scalar;
        prop_assert_eq!(model.kernel_count(), usize::from(jit), "not the expected conv path on {}", isa);
        for x in [first(&x), x.clone()] {
            let got = model.run(std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want = evaluate(&g, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(got, want, "on {}", isa);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn jit_conv_equals_the_evaluator(c in case()) {
        check(&c)?;
    }

    #[test]
    fn jit_depthwise_rows_equal_the_evaluator(c in rows_case()) {
        check(&c)?;
    }

    /// The windowed kernels keep their images' borders in the thread's arena from run to run:
    /// runs of two models and of two batches in turn on one thread (each one's border written
    /// over by the other's activations and buffers) still equal the evaluator.
    #[test]
    fn kernels_buffers_kept_across_runs_stay_right_as_models_and_batches_alternate(
        a in prop_oneof![case(), rows_case()],
        b in prop_oneof![case(), rows_case()],
    ) {
        prop_assume!(a.out().is_some() && b.out().is_some());
        let (ga, xa) = a.model_and_input()?;
        let (gb, xb) = b.model_and_input()?;
        let (ma, mb) = (CompiledModel::compile(&ga).unwrap(), CompiledModel::compile(&gb).unwrap());
        let (xa1, xb1) = (first(&xa), first(&xb));
        for (m, g, x) in [
            (&ma, &ga, &xa), (&ma, &ga, &xa), (&mb, &gb, &xb), (&ma, &ga, &xa), (&ma, &ga, &xa1),
            (&mb, &gb, &xb1), (&ma, &ga, &xa1), (&ma, &ga, &xa), (&mb, &gb, &xb), (&mb, &gb, &xb),
        ] {
            let got = m.run(std::slice::from_ref(x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want = evaluate(g, std::slice::from_ref(x)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(got, want);
        }
    }
}

/// A layer whose accumulators could leave i32 for some input (a bias near 2^31) gets no kernel:
/// the evaluator runs it, so the JIT's result is the evaluator's (here: both refuse the input
/// that overflows, and agree on one that does not).
#[test]
fn layers_whose_accumulators_may_overflow_run_on_the_evaluator() {
    for depthwise in [false, true] {
        let case = Case {
            c: 2,
            o: 2,
            win: Window { hw: [3, 3], k: [3, 3], strides: [1, 1], dilations: [1, 1], pads: [1, 1, 1, 1] },
            zp_x: 0,
            zp_y: 0,
            s_y: 0.1,
            relu: false,
            depthwise,
            x_i8: false,
            zp_w: 0,
            x: vec![0; 2 * 2 * 9],
            w: vec![127; if depthwise { 2 * 9 } else { 2 * 2 * 9 }],
            bias: vec![2_147_483_000, -5],
        };
        let g = qc_ir::text::parse(&case.qir()).unwrap();
        let model = CompiledModel::compile(&g).unwrap();
        assert_eq!(model.kernel_count(), 0);
        assert!(model.fallback_ops().iter().any(|op| op.contains("conv2d")), "{:?}", model.fallback_ops());
        for v in [0, 255] {
            let x = Tensor::I32(ArrayD::from_elem(IxDyn(&[2, 2, 3, 3]), v)).cast(ScalarType::U8);
            let got = model.run(std::slice::from_ref(&x)).map_err(|e| e.to_string());
            let want = evaluate(&g, std::slice::from_ref(&x)).map_err(|e| e.to_string());
            assert_eq!(got.is_ok(), want.is_ok(), "{got:?} {want:?}");
            if let (Ok(a), Ok(b)) = (got, want) {
                assert_eq!(a, b);
            }
        }
    }
}
