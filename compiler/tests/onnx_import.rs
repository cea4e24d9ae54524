//! ONNX import of small models built here with qc's own protobuf structs: one per opset
//! difference and per import rule, each with a snapshot of the QIR it becomes, and the errors
//! bad models get.

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use qc::onnx::proto::*;
use qc::onnx::tensor::encode;
use qc::onnx::{ImportOptions, import_bytes};
use qc_ir::eval::evaluate;
use qc_ir::text::print;
use qc_ir::{Dim, Tensor};

fn node(op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{}_{}", op.to_lowercase(), outputs[0]),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

fn f32s(name: &str, shape: &[usize], v: Vec<f32>) -> TensorProto {
    encode(name, &Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()))
}

fn i64s(name: &str, v: &[i64]) -> TensorProto {
    encode(name, &Tensor::from_i64s(v.to_vec()))
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7) % 11) as f32 / 10.0 - 0.5).collect()
}

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| {
            if d < 0 {
                Dimension { dim_param: Some("batch".into()), ..Default::default() }
            } else {
                Dimension { dim_value: Some(d), ..Default::default() }
            }
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: data_type::FLOAT, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

fn model(opset: i64, nodes: Vec<NodeProto>, inits: Vec<TensorProto>, inputs: Vec<ValueInfoProto>, outputs: &[&str]) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: inputs,
            output: outputs.iter().map(|o| ValueInfoProto { name: o.to_string(), r#type: None }).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn import_ok(bytes: &[u8]) -> qc_ir::Graph {
    import_bytes(bytes, "m", &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn import_err(bytes: &[u8], opts: &ImportOptions) -> String {
    match import_bytes(bytes, "m", opts) {
        Ok(g) => panic!("expected an error, got\n{}", print(&g)),
        Err(e) => e,
    }
}

/// Imports, snapshots the QIR, and evaluates it on a ramp input to show it runs.
fn check(name: &str, bytes: Vec<u8>) -> qc_ir::Graph {
    let g = import_ok(&bytes);
    insta::assert_snapshot!(name, print(&g));
    let inputs: Vec<Tensor> = g
        .params()
        .iter()
        .map(|&p| {
            let dims: Vec<usize> = g.ty(p).dims.iter().map(|d| d.fixed().unwrap_or(2) as usize).collect();
            Tensor::F32(ArrayD::from_shape_vec(IxDyn(&dims), ramp(dims.iter().product())).unwrap())
        })
        .collect();
    evaluate(&g, &inputs).unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

#[test]
fn clip_bounds_are_inputs_from_opset_11() {
    let nodes = vec![node("Clip", &["x", "lo", "hi"], &["y"], vec![]), node("Clip", &["y", "", "hi"], &["z"], vec![])];
    let inits = vec![f32s("lo", &[], vec![0.0]), f32s("hi", &[], vec![6.0])];
    check("clip_opset11", model(11, nodes, inits, vec![vi("x", &[-1, 4])], &["z"]));
}

#[test]
fn reduce_mean_axes_attribute_then_input() {
    let n13 =
        vec![node("ReduceMean", &["x"], &["y"], vec![AttributeProto::ints("axes", &[2, 3]), AttributeProto::int("keepdims", 0)])];
    check("reduce_mean_opset13", model(13, n13, vec![], vec![vi("x", &[1, 3, 4, 4])], &["y"]));
    let n18 = vec![node("ReduceMean", &["x", "axes"], &["y"], vec![])];
    check("reduce_mean_opset18", model(18, n18, vec![i64s("axes", &[-1])], vec![vi("x", &[1, 3, 4, 4])], &["y"]));
}

#[test]
fn resize_scales_or_sizes() {
    let n = vec![node(
        "Resize",
        &["x", "", "scales"],
        &["y"],
        vec![
            AttributeProto::string("mode", "nearest"),
            AttributeProto::string("coordinate_transformation_mode", "asymmetric"),
            AttributeProto::string("nearest_mode", "floor"),
        ],
    )];
    let scales = f32s("scales", &[4], vec![1.0, 1.0, 2.0, 2.0]);
    check("resize_scales_opset13", model(13, n, vec![scales], vec![vi("x", &[1, 2, 3, 3])], &["y"]));
    let n = vec![node("Resize", &["x", "roi", "scales", "sizes"], &["y"], vec![AttributeProto::string("mode", "linear")])];
    let inits = vec![f32s("roi", &[0], vec![]), f32s("scales", &[0], vec![]), i64s("sizes", &[1, 2, 5, 4])];
    check("resize_sizes_opset11", model(11, n, inits, vec![vi("x", &[1, 2, 3, 3])], &["y"]));
}

#[test]
fn squeeze_unsqueeze_axes_attribute_then_input() {
    let n = vec![
        node("Unsqueeze", &["x"], &["u"], vec![AttributeProto::ints("axes", &[0])]),
        node("Squeeze", &["u"], &["y"], vec![AttributeProto::ints("axes", &[0])]),
    ];
    check("squeeze_opset11", model(11, n, vec![], vec![vi("x", &[3, 4])], &["y"]));
    let n = vec![node("Unsqueeze", &["x", "a"], &["u"], vec![]), node("Squeeze", &["u", "a"], &["y"], vec![])];
    check("squeeze_opset13", model(13, n, vec![i64s("a", &[-1])], vec![vi("x", &[3, 4])], &["y"]));
}

#[test]
fn reshape_zero_copies_unless_allowzero() {
    let n = vec![node("Reshape", &["x", "s"], &["y"], vec![])];
    check("reshape_copy_zero", model(13, n, vec![i64s("s", &[0, -1])], vec![vi("x", &[-1, 2, 3])], &["y"]));
    let n = vec![node("Reshape", &["x", "s"], &["y"], vec![AttributeProto::int("allowzero", 1)])];
    check("reshape_allowzero", model(14, n, vec![i64s("s", &[-1, 6])], vec![vi("x", &[-1, 2, 3])], &["y"]));
}

#[test]
fn batch_norm_and_conv_with_constant_node_weights() {
    // Weights in Constant nodes (typed float_data), as many exporters write them.
    let w = TensorProto { dims: vec![2, 1, 3, 3], data_type: data_type::FLOAT, float_data: ramp(18), ..Default::default() };
    let cw = NodeProto {
        attribute: vec![AttributeProto {
            name: "value".into(),
            r#type: attribute_type::TENSOR,
            t: Some(w),
            ..Default::default()
        }],
        ..node("Constant", &[], &["w"], vec![])
    };
    let conv = node(
        "Conv",
        &["x", "w"],
        &["c"],
        vec![
            AttributeProto::ints("kernel_shape", &[3, 3]),
            AttributeProto::string("auto_pad", "SAME_UPPER"),
            AttributeProto::ints("strides", &[2, 2]),
        ],
    );
    let bn = node(
        "BatchNormalization",
        &["c", "s", "b", "m", "v"],
        &["y"],
        vec![AttributeProto::float("epsilon", 1e-3), AttributeProto::int("training_mode", 0)],
    );
    let inits = vec![
        f32s("s", &[2], vec![1.0, 2.0]),
        f32s("b", &[2], vec![0.0, 0.5]),
        f32s("m", &[2], vec![0.1, 0.2]),
        f32s("v", &[2], vec![1.0, 0.5]),
    ];
    check("conv_bn_opset15", model(15, vec![cw, conv, bn], inits, vec![vi("x", &[1, 1, 5, 5])], &["y"]));
}

#[test]
fn split_sizes_attribute_input_or_even() {
    let n =
        vec![node("Split", &["x"], &["a", "b"], vec![AttributeProto::int("axis", 1), AttributeProto::ints("split", &[1, 3])])];
    check("split_opset11", model(11, n, vec![], vec![vi("x", &[2, 4])], &["a", "b"]));
    let n = vec![node("Split", &["x", "s"], &["a", "b"], vec![AttributeProto::int("axis", -1)])];
    check("split_opset13", model(13, n, vec![i64s("s", &[2, 2])], vec![vi("x", &[2, 4])], &["a", "b"]));
    let n = vec![node(
        "Split",
        &["x"],
        &["a", "b", "c"],
        vec![AttributeProto::int("axis", 1), AttributeProto::int("num_outputs", 3)],
    )];
    check("split_opset18", model(18, n, vec![], vec![vi("x", &[2, 5])], &["a", "b", "c"]));
}

#[test]
fn slice_inputs_and_pad_inputs() {
    let n = vec![
        node("Slice", &["x", "st", "en", "ax", "sp"], &["s"], vec![]),
        node("Pad", &["s", "p", "cv"], &["y"], vec![AttributeProto::string("mode", "constant")]),
    ];
    let inits = vec![
        i64s("st", &[-1]),
        i64s("en", &[-100]),
        i64s("ax", &[1]),
        i64s("sp", &[-2]),
        i64s("p", &[0, 1, 0, 2]),
        f32s("cv", &[], vec![0.5]),
    ];
    check("slice_pad_opset13", model(13, n, inits, vec![vi("x", &[2, 5])], &["y"]));
}

#[test]
fn shape_subgraph_folds_once_dims_are_fixed() {
    let n = vec![
        node("Shape", &["x"], &["sh"], vec![]),
        node("Gather", &["sh", "zero"], &["n"], vec![AttributeProto::int("axis", 0)]),
        node("Unsqueeze", &["n", "ax"], &["n1"], vec![]),
        node("Concat", &["n1", "k"], &["shape"], vec![AttributeProto::int("axis", 0)]),
        node("Reshape", &["x", "shape"], &["y"], vec![]),
    ];
    let inits = vec![i64s("ax", &[0]), i64s("k", &[-1]), encode("zero", &Tensor::I64(ArrayD::from_elem(IxDyn(&[]), 0)))];
    let bytes = model(13, n, inits, vec![vi("x", &[-1, 2, 3])], &["y"]);
    // With a dynamic batch the shape is known only at run time.
    let e = import_err(&bytes, &ImportOptions::default());
    assert!(e.contains("fix the input dims with --input-shape"), "{e}");
    let opts = ImportOptions { input_shapes: vec![("x".into(), vec![Dim::Fixed(4), Dim::Fixed(2), Dim::Fixed(3)])] };
    let g = import_bytes(&bytes, "m", &opts).unwrap();
    insta::assert_snapshot!("shape_subgraph_fixed", print(&g));
}

#[test]
fn qdq_per_axis_and_qlinear() {
    let wq = encode("wq", &Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1]), vec![-127, 64]).unwrap()));
    let n = vec![
        node("QuantizeLinear", &["x", "xs", "xz"], &["xq"], vec![]),
        node("DequantizeLinear", &["xq", "xs", "xz"], &["xd"], vec![]),
        node("DequantizeLinear", &["wq", "ws", "wz"], &["wd"], vec![AttributeProto::int("axis", 0)]),
        node("Conv", &["xd", "wd"], &["y"], vec![]),
    ];
    let inits = vec![
        f32s("xs", &[], vec![0.02]),
        encode("xz", &Tensor::U8(ArrayD::from_elem(IxDyn(&[]), 128))),
        wq.clone(),
        f32s("ws", &[2], vec![0.01, 0.005]),
        encode("wz", &Tensor::I8(ArrayD::zeros(IxDyn(&[2])))),
    ];
    check("qdq_per_axis", model(13, n, inits, vec![vi("x", &[1, 1, 2, 2])], &["y"]));
    let n = vec![
        node("QuantizeLinear", &["x", "xs", "xz"], &["xq"], vec![]),
        node("QLinearConv", &["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], &["yq"], vec![]),
        node("DequantizeLinear", &["yq", "ys", "yz"], &["y"], vec![]),
    ];
    let inits = vec![
        f32s("xs", &[], vec![0.02]),
        encode("xz", &Tensor::U8(ArrayD::from_elem(IxDyn(&[]), 128))),
        wq,
        f32s("ws", &[2], vec![0.01, 0.005]),
        encode("wz", &Tensor::I8(ArrayD::zeros(IxDyn(&[2])))),
        f32s("ys", &[], vec![0.05]),
        encode("yz", &Tensor::U8(ArrayD::from_elem(IxDyn(&[]), 100))),
    ];
    check("qlinear_conv", model(13, n, inits, vec![vi("x", &[1, 1, 2, 2])], &["y"]));
}

#[test]
fn unsupported_ops_are_listed_with_counts() {
    let n = vec![
        node("Hardmax", &["x"], &["a"], vec![]),
        node("Relu", &["a"], &["b"], vec![]),
        node("Hardmax", &["b"], &["c"], vec![]),
        node("LpNormalization", &["c"], &["d"], vec![]),
    ];
    let e = import_err(&model(13, n, vec![], vec![vi("x", &[2, 3])], &["d"]), &ImportOptions::default());
    insta::assert_snapshot!("unsupported_ops", e);
}

#[test]
fn malformed_models_get_clear_errors() {
    let good = model(13, vec![node("Relu", &["x"], &["y"], vec![])], vec![], vec![vi("x", &[2, 3])], &["y"]);
    let o = ImportOptions::default();
    assert!(import_err(&good[..good.len() - 3], &o).contains("not a valid ONNX protobuf"));
    assert!(import_err(b"\xff\xff\xff\xff", &o).contains("not a valid ONNX protobuf"));
    let e = import_err(&model(23, vec![node("Relu", &["x"], &["y"], vec![])], vec![], vec![vi("x", &[2])], &["y"]), &o);
    assert!(e.contains("opset 23 is not supported (qc reads opsets 11 to 21)"), "{e}");
    let e = import_err(&model(13, vec![node("Relu", &["nope"], &["y"], vec![])], vec![], vec![vi("x", &[2])], &["y"]), &o);
    assert!(e.contains("reads \"nope\", which no node, input or initializer defines"), "{e}");
    let cyc = vec![node("Relu", &["x", "b"], &["a"], vec![]), node("Relu", &["a"], &["b"], vec![])];
    assert!(import_err(&model(13, cyc, vec![], vec![vi("x", &[2])], &["b"]), &o).contains("cycle"));
    let mut short = f32s("w", &[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
    short.raw_data.truncate(12);
    let e =
        import_err(&model(13, vec![node("Add", &["x", "w"], &["y"], vec![])], vec![short], vec![vi("x", &[2, 2])], &["y"]), &o);
    assert!(e.contains("tensor \"w\" declares 4 elements (dims [2, 2]) but holds 3"), "{e}");
    let mut ext = f32s("w", &[2], vec![1.0, 2.0]);
    ext.data_location = 1;
    let e = import_err(&model(13, vec![node("Add", &["x", "w"], &["y"], vec![])], vec![ext], vec![vi("x", &[2])], &["y"]), &o);
    assert!(e.contains("keeps its data in an external file"), "{e}");
    let mut sym = vi("x", &[1, 3]);
    sym.r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim[1] =
        Dimension { dim_param: Some("w".into()), ..Default::default() };
    let e = import_err(&model(13, vec![node("Relu", &["x"], &["y"], vec![])], vec![], vec![sym], &["y"]), &o);
    assert!(e.contains("dim 1 of input \"x\" is symbolic (w); fix it with --input-shape x=DIMS"), "{e}");
    let e = import_err(
        &model(13, vec![node("Add", &["x", "x"], &["y"], vec![])], vec![], vec![vi("x", &[2, 3])], &["y"]),
        &ImportOptions { input_shapes: vec![("z".into(), vec![Dim::Fixed(1)])] },
    );
    assert!(e.contains("--input-shape names \"z\", but the model's inputs are x"), "{e}");
    let e = import_err(
        &model(
            13,
            vec![
                node("MaxPool", &["x"], &["y", "idx"], vec![AttributeProto::ints("kernel_shape", &[2, 2])]),
                node("Relu", &["idx"], &["z"], vec![]),
            ],
            vec![],
            vec![vi("x", &[1, 1, 2, 2])],
            &["z"],
        ),
        &o,
    );
    assert!(e.contains("MaxPool's indices output is not supported"), "{e}");
    let e = import_err(
        &model(
            13,
            vec![node("Conv", &["x", "w"], &["y"], vec![])],
            vec![f32s("w", &[2, 3, 3, 3], ramp(54))],
            vec![vi("x", &[1, 2, 5, 5])],
            &["y"],
        ),
        &o,
    );
    assert!(e.contains("input has 2 channels but weight expects 3"), "{e}");
}

#[test]
fn hard_swish_pattern_becomes_one_op() {
    let n = vec![
        node("Add", &["x", "three"], &["a"], vec![]),
        node("Clip", &["a", "zero", "six"], &["c"], vec![]),
        node("Mul", &["x", "c"], &["m"], vec![]),
        node("Div", &["m", "six"], &["y"], vec![]),
    ];
    let inits = vec![f32s("three", &[], vec![3.0]), f32s("zero", &[], vec![0.0]), f32s("six", &[], vec![6.0])];
    check("hard_swish_pattern", model(13, n, inits, vec![vi("x", &[-1, 8])], &["y"]));
}

#[test]
fn conv_integer_is_exact() {
    let n = vec![node("ConvInteger", &["x", "w", "xz", "wz"], &["y"], vec![AttributeProto::ints("pads", &[1, 1, 1, 1])])];
    let inits = vec![
        encode("w", &Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1]), vec![3, -2]).unwrap())),
        encode("xz", &Tensor::U8(ArrayD::from_elem(IxDyn(&[]), 10))),
        encode("wz", &Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1, 0]).unwrap())),
    ];
    let mut x = vi("x", &[1, 1, 1, 2]);
    x.r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().elem_type = data_type::UINT8;
    let g = import_ok(&model(13, n, inits, vec![x], &["y"]));
    insta::assert_snapshot!("conv_integer", print(&g));
    let xin = Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 2]), vec![12, 255]).unwrap());
    let y = evaluate(&g, &[xin]).unwrap().remove(0);
    // Channel 0: (x - 10) * (3 - 1) = [4, 490]; channel 1: (x - 10) * -2 = [-4, -490]; padding
    // reads the zero point and contributes 0.
    let want = [0, 0, 0, 0, 0, 4, 490, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -4, -490, 0, 0, 0, 0, 0];
    assert_eq!(y.to_i64_vec().unwrap(), want);
}

#[test]
fn corrupted_onnx_files_never_panic() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/models");
    let seeds: Vec<Vec<u8>> = ["digits_cnn_fp32.onnx", "digits_resdw_qdq_pre_u8s8_minmax.onnx", "digits_mlp_dyn_s8_pc.onnx"]
        .iter()
        .map(|m| std::fs::read(corpus.join(m)).unwrap())
        .collect();
    let n = if std::env::var("QC_SLOW").is_ok() { 5_000 } else { 300 };
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut imported, mut failed) = (0, 0);
    for i in 0..n {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % b.len() as u64) as usize;
            match next() % 3 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b[at] = next() as u8,
                _ => b.truncate(at.max(1)),
            }
        }
        let r = std::panic::catch_unwind(|| match import_bytes(&b, "m", &ImportOptions::default()) {
            Ok(g) => {
                let x = Tensor::F32(ArrayD::from_elem(IxDyn(&[1, 1, 8, 8]), 0.5));
                let _ = evaluate(&g, &[x]);
                true
            }
            Err(_) => false,
        });
        match r {
            Ok(true) => imported += 1,
            Ok(false) => failed += 1,
            Err(_) => panic!("mutant {i} of the corpus panicked the importer"),
        }
    }
    println!("{n} corrupted files: {imported} imported, {failed} rejected with an error");
}

/// A YOLO-style anchor grid: `Range` over the feature map's width and height (from `Shape`),
/// `Expand` to the grid, `ConstantOfShape` strides, `Tile`, `Equal`/`Where` — constant once the
/// input shape is fixed, so it folds at import — and an `Expand` of a computed value, which
/// stays an `expand`.
#[test]
fn anchor_grid_subgraph_folds_at_import() {
    let scalar = |name: &str, v: i64| encode(name, &Tensor::I64(ArrayD::from_elem(IxDyn(&[]), v)));
    let n = vec![
        node("Shape", &["x"], &["sh"], vec![]),
        node("Gather", &["sh", "three"], &["w"], vec![AttributeProto::int("axis", 0)]),
        node("Gather", &["sh", "two"], &["h"], vec![AttributeProto::int("axis", 0)]),
        node("Range", &["zero", "w", "one"], &["xs"], vec![]),
        node("Range", &["zero", "h", "one"], &["ys"], vec![]),
        node("Unsqueeze", &["ys", "ax1"], &["ys1"], vec![]),
        node("Concat", &["h1", "w1"], &["hw"], vec![AttributeProto::int("axis", 0)]),
        node("Unsqueeze", &["h", "ax0"], &["h1"], vec![]),
        node("Unsqueeze", &["w", "ax0"], &["w1"], vec![]),
        node("Expand", &["xs", "hw"], &["gx"], vec![]),
        node("Expand", &["ys1", "hw"], &["gy"], vec![]),
        node("ConstantOfShape", &["hw"], &["stride"], vec![AttributeProto::tensor("value", i64s("v", &[8]))]),
        node("Mul", &["gx", "stride"], &["sx"], vec![]),
        node("Tile", &["gy", "reps"], &["gy2"], vec![]),
        node("Equal", &["sx", "zero"], &["at0"], vec![]),
        node("Where", &["at0", "gy2", "sx"], &["grid"], vec![]),
        node("Cast", &["grid"], &["gridf"], vec![AttributeProto::int("to", 1)]),
        node("Add", &["x", "gridf"], &["y0"], vec![]),
        node("Expand", &["y0", "big"], &["y"], vec![]),
    ];
    let inits = vec![
        scalar("zero", 0),
        scalar("one", 1),
        scalar("two", 2),
        scalar("three", 3),
        i64s("ax0", &[0]),
        i64s("ax1", &[1]),
        i64s("reps", &[1, 1]),
        i64s("big", &[2, 1, 1, 1]),
    ];
    let bytes = model(17, n, inits, vec![vi("x", &[1, 2, 3, 4])], &["y"]);
    let g = check("anchor_grid", bytes);
    let x = Tensor::F32(ArrayD::zeros(IxDyn(&[1, 2, 3, 4])));
    let y = evaluate(&g, &[x]).unwrap().remove(0);
    let y = y.as_f32().unwrap();
    assert_eq!(y.shape(), [2, 2, 3, 4]);
    // Column 0 has x·8 = 0, so Where takes the row index there; elsewhere x·8.
    let row: Vec<f32> = (0..4).map(|c| y[[1, 1, 2, c]]).collect();
    assert_eq!(row, [2.0, 8.0, 16.0, 24.0]);
}
