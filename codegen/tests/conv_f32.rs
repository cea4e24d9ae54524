//! The f32 convolution kernel through `CompiledModel` against the reference evaluator, bit for
//! bit, on every ISA level of this CPU: random shapes, windows (kernel, strides, pads,
//! dilations), groups (depthwise on its own too), with and without bias, fused relu or clip, inputs
//! with zeros, negative zeros and large values, batches of 0 to 2 images. `QC_SLOW=1` runs 1000
//! cases.

mod support;

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::{CodegenOptions, CompiledModel, Isa};
use qc_ir::Tensor;
use qc_ir::eval::evaluate;
use support::{Window, cases, window};

#[derive(Debug, Clone)]
struct Case {
    groups: usize,
    ci: usize,
    og: usize,
    win: Window,
    bias: bool,
    activation: usize,
    batch: usize,
    x: Vec<f32>,
    w: Vec<f32>,
}

impl Case {
    fn qir(&self) -> String {
        let [oh, ow] = self.win.out().unwrap();
        let (c, o, [h, w], [kh, kw]) = (self.ci * self.groups, self.og * self.groups, self.win.hw, self.win.k);
        let bias = if self.bias {
            format!(", %b) {{{}}} : tensor<?x{o}x{oh}x{ow}xf32>\n", self.attrs())
        } else {
            format!(") {{{}}} : tensor<?x{o}x{oh}x{ow}xf32>\n", self.attrs())
        };
        let b = (0..o).map(|i| format!("{:?}", i as f32 * 0.25 - 1.0)).collect::<Vec<_>>();
        format!(
            "func @conv(%x: tensor<?x{c}x{h}x{w}xf32>) -> tensor<?x{o}x{oh}x{ow}xf32> {{
  %w = const dense<[{wv}]> : tensor<{o}x{ci}x{kh}x{kw}xf32>
  %b = const dense<[{bv}]> : tensor<{o}xf32>
  %y = conv2d(%x, %w{bias}  return %y
}}",
            ci = self.ci,
            wv = self.w.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", "),
            bv = b.join(", "),
        )
    }

    fn attrs(&self) -> String {
        let act = ["", ", activation = \"relu\"", ", activation = \"clip\", clip_max = 6.0, clip_min = -1.0"][self.activation];
        format!("groups = {}, {}{act}", self.groups, self.win.attrs())
    }
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(-0.0f32), -4.0f32..4.0, -1e30f32..1e30]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..4, 1usize..5, 1usize..11, window(12, false), any::<bool>(), 0usize..3, 0usize..3)
        .prop_flat_map(|(groups, ci, og, win, bias, activation, batch)| {
            let (c, o) = (ci * groups, og * groups);
            (
                Just((groups, ci, og, win.clone(), bias, activation, batch)),
                prop::collection::vec(value(), batch * c * win.hw[0] * win.hw[1]),
                prop::collection::vec(-2.0f32..2.0, o * ci * win.k[0] * win.k[1]),
            )
        })
        .prop_map(|((groups, ci, og, win, bias, activation, batch), x, w)| Case {
            groups,
            ci,
            og,
            win,
            bias,
            activation,
            batch,
            x,
            w,
        })
}

/// Depthwise: one input and one output channel per group, 1 to 80 groups (the kernel sums 32
/// channels at a time, then the rest).
fn depthwise() -> impl Strategy<Value = Case> {
    (1usize..80, window(12, false), any::<bool>(), 0usize..3, 0usize..3)
        .prop_flat_map(|(groups, win, bias, activation, batch)| {
            (
                Just((groups, win.clone(), bias, activation, batch)),
                prop::collection::vec(value(), batch * groups * win.hw[0] * win.hw[1]),
                prop::collection::vec(-2.0f32..2.0, groups * win.k[0] * win.k[1]),
            )
        })
        .prop_map(|((groups, win, bias, activation, batch), x, w)| Case {
            groups,
            ci: 1,
            og: 1,
            win,
            bias,
            activation,
            batch,
            x,
            w,
        })
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    prop_assume!(case.win.out().is_some());
    let text = case.qir();
    let g = qc_ir::text::parse(&text).map_err(|d| TestCaseError::fail(format!("{d:?}\n{text}")))?;
    let shape = [case.batch, case.ci * case.groups, case.win.hw[0], case.win.hw[1]];
    let x = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), case.x.clone()).unwrap());
    let want = evaluate(&g, std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    for isa in Isa::host_levels() {
        let model =
            CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(model.fallback_ops().is_empty(), "the conv runs on the evaluator: {text}");
        let got = model.run(std::slice::from_ref(&x)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (Tensor::F32(a), Tensor::F32(b)) = (&got[0], &want[0]) else { panic!("f32 outputs") };
        let same = a.shape() == b.shape() && a.iter().zip(b.iter()).all(|(p, q)| p.to_bits() == q.to_bits());
        prop_assert!(same, "{text}\non {isa}:\n{a:?}\n{b:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_f32_conv_equals_the_evaluator(c in case()) {
        check(&c)?;
    }

    #[test]
    fn the_f32_depthwise_conv_equals_the_evaluator(c in depthwise()) {
        check(&c)?;
    }
}

/// A layer of real size (ResNet's 3×3, 64 channels, 56×56): several pixel panels and tap blocks.
#[test]
fn a_real_sized_layer_equals_the_evaluator() {
    let (c, o, hw) = (64usize, 64usize, 56usize);
    let case = Case {
        groups: 1,
        ci: c,
        og: o,
        win: Window { hw: [hw, hw], k: [3, 3], strides: [1, 1], dilations: [1, 1], pads: [1, 1, 1, 1] },
        bias: true,
        activation: 1,
        batch: 1,
        x: (0..c * hw * hw).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect(),
        w: (0..o * c * 9).map(|i| ((i * 104729 % 997) as f32 - 498.0) / 2000.0).collect(),
    };
    check(&case).unwrap();
}
