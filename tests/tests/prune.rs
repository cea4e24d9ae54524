//! `prune-channels` is exact on channels that contribute nothing: with half of every layer's
//! output channels zeroed (weights and bias), the l1 criterion removes exactly those, and the
//! pruned model computes what the unpruned one did. This checks every propagation rule's
//! bookkeeping (which input rows, which constants, which offsets and blocks) on the case files'
//! models; the case snapshots show the shapes.

use qc_ir::eval::evaluate;
use qc_ir::text::parse;
use qc_ir::{ConstValue, Graph, Tensor};
use qc_passes::channel_flow::{Rule, analyze, rule};
use qc_passes::{PipelineOptions, PruneCriterion, PruneOptions, run_pipeline};
use qc_tests::{compare, fill_random_weights, random_inputs, split_cases};

/// Zeroes output channels `c ≥ C/2` of every layer's weight and bias.
fn zero_upper_half(g: &mut Graph) {
    let flow = analyze(g);
    for s in &flow.spaces {
        let node = g.node(s.layer).clone();
        let Rule::Layer { out_axis, .. } = rule(g, s.layer) else { continue };
        for (i, axis) in [(1, out_axis), (2, 0)] {
            let Some(&v) = node.operands.get(i) else { continue };
            let p = g.producer(v).expect("a constant");
            let Some(ConstValue::Weight(name)) = g.node(p).value.clone() else { panic!("case weights are named") };
            let mut a = g.weights.get(&name).expect("filled").as_f32().expect("f32").clone();
            let axis = if i == 2 { a.ndim() - 1 } else { axis };
            let c = a.shape()[axis];
            for (k, mut lane) in a.axis_iter_mut(ndarray::Axis(axis)).enumerate() {
                if k >= c / 2 {
                    lane.fill(0.0);
                }
            }
            g.weights.insert(name, Tensor::F32(a));
        }
    }
}

#[test]
fn pruning_zero_channels_is_exact() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/passes/prune_channels.qir");
    let text = std::fs::read_to_string(path).expect("the case file");
    let mut checked = 0;
    for case in split_cases(&text) {
        // Batch norm and a depthwise bias turn a zero channel into a constant one: not exact.
        if case.contains("batch_norm") || case.contains("dw.bias") {
            continue;
        }
        let mut g = parse(&case).expect("the case parses");
        fill_random_weights(&mut g);
        zero_upper_half(&mut g);
        let before = g.clone();
        let mut opts = PipelineOptions { check_weights: true, ..Default::default() };
        opts.pass_options.prune =
            PruneOptions { ratio: Some(0.5), criterion: PruneCriterion::L1, multiple: 1, ..Default::default() };
        run_pipeline(&mut g, &["prune-channels".into(), "dead-code".into()], &opts, &mut std::io::sink()).expect("prunes");
        let inputs = random_inputs(&before, 3);
        let (a, b) = (evaluate(&before, &inputs).expect("runs"), evaluate(&g, &inputs).expect("runs"));
        compare(&b[0], &a[0], 1e-5).unwrap_or_else(|e| panic!("@{}: {e}", g.name));
        let kept: u64 = qc_ir::cost::layer_costs(&g).iter().map(|c| c.params).sum();
        let all: u64 = qc_ir::cost::layer_costs(&before).iter().map(|c| c.params).sum();
        assert!(g.name == "protected" || kept < all, "@{}: nothing was pruned", g.name);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} cases checked");
}

#[test]
fn block_sparsity_zeroes_whole_jit_blocks() {
    let text = r#"
func @conv(%x: tensor<?x8x4x4xf32>) -> tensor<?x16x4x4xf32> {
  %r = relu(%x) : tensor<?x8x4x4xf32> loc("relu")
  %w = const @"conv.weight" : tensor<16x8x3x3xf32>
  %c = conv2d(%r, %w) {pads = [1, 1, 1, 1]} : tensor<?x16x4x4xf32> loc("conv")
  return %c
}"#;
    let mut g = parse(text).unwrap();
    fill_random_weights(&mut g);
    let mut opts = PipelineOptions { check_weights: true, ..Default::default() };
    opts.pass_options.sparsify = qc_passes::SparsifyOptions { sparsity: Some(0.75), block: true, ..Default::default() };
    run_pipeline(&mut g, &["sparsify".into(), "dead-code".into()], &opts, &mut std::io::sink()).unwrap();
    let w = g.weights.get("conv.weight.sparse").expect("the sparse weight").as_f32().unwrap().clone();
    // A block: 16 output channels × 4 input channels at one tap; each is all zero or all kept.
    let (mut zero, mut kept) = (0, 0);
    for ob in [0] {
        for cb in [0, 4] {
            for t in 0..9 {
                let vals: Vec<f32> =
                    (ob..ob + 16).flat_map(|o| (cb..cb + 4).map(move |c| (o, c))).map(|(o, c)| w[[o, c, t / 3, t % 3]]).collect();
                if vals.iter().all(|v| *v == 0.0) {
                    zero += 1;
                } else {
                    assert!(vals.iter().all(|v| *v != 0.0), "a block is partly zero: {vals:?}");
                    kept += 1;
                }
            }
        }
    }
    assert_eq!((zero, kept), (14, 4));
}
