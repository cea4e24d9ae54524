//! Writes the catalogue of malformed inputs (`tests/malformed/`, committed): each file is one way
//! a downloaded model, weights file or input can be wrong. `compiler/tests/malformed.rs` runs `qc`
//! on every file and snapshots the exit code and the diagnostic.
//!
//! `cargo run --release -p qc --example malformed_catalogue -- tests/malformed`

use ndarray::{ArrayD, IxDyn};
use prost::Message;
use qc::onnx::proto::*;
use qc::onnx::tensor::encode;
use qc_ir::Tensor;
use std::path::Path;

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

fn input(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims.iter().map(|&d| Dimension { dim_value: Some(d), ..Default::default() }).collect();
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

fn weight(name: &str, shape: &[usize], fill: f32) -> TensorProto {
    let n = shape.iter().product();
    encode(name, &Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), vec![fill; n]).expect("sized")))
}

/// A small valid model: x [1, 4] → gemm → relu.
fn good() -> Vec<u8> {
    let attr = AttributeProto { name: "transB".into(), r#type: attribute_type::INT, i: 1, ..Default::default() };
    model(
        13,
        vec![node("Gemm", &["x", "w", "b"], &["h"], vec![attr]), node("Relu", &["h"], &["y"], vec![])],
        vec![weight("w", &[3, 4], 0.5), weight("b", &[3], 0.1)],
        vec![input("x", &[1, 4])],
        &["y"],
    )
}

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "tests/malformed".into());
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("the catalogue directory");
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("writable");
    let g = good();

    // ONNX
    write("onnx_truncated.onnx", &g[..g.len() / 2]);
    let mut flipped = g.clone();
    flipped[g.len() / 3] ^= 0xff;
    flipped[g.len() / 3 + 1] ^= 0x80;
    write("onnx_bit_flipped.onnx", &flipped);
    write(
        "onnx_cycle.onnx",
        &model(
            13,
            vec![node("Relu", &["b"], &["a"], vec![]), node("Relu", &["a"], &["b"], vec![])],
            vec![],
            vec![input("x", &[1, 4])],
            &["b"],
        ),
    );
    write(
        "onnx_missing_input.onnx",
        &model(13, vec![node("Relu", &["nowhere"], &["y"], vec![])], vec![], vec![input("x", &[1, 4])], &["y"]),
    );
    let bad_attr = AttributeProto { name: "transB".into(), r#type: attribute_type::FLOAT, f: 1.0, ..Default::default() };
    write(
        "onnx_wrong_attribute_type.onnx",
        &model(
            13,
            vec![node("Gemm", &["x", "w"], &["y"], vec![bad_attr])],
            vec![weight("w", &[3, 4], 0.5)],
            vec![input("x", &[1, 4])],
            &["y"],
        ),
    );
    write(
        "onnx_opset_too_old.onnx",
        &model(6, vec![node("Relu", &["x"], &["y"], vec![])], vec![], vec![input("x", &[1, 4])], &["y"]),
    );
    write(
        "onnx_opset_too_new.onnx",
        &model(30, vec![node("Relu", &["x"], &["y"], vec![])], vec![], vec![input("x", &[1, 4])], &["y"]),
    );
    let mut short = weight("w", &[3, 4], 0.5);
    short.raw_data.truncate(20);
    write(
        "onnx_size_disagrees_with_data.onnx",
        &model(13, vec![node("MatMul", &["x", "w"], &["y"], vec![])], vec![short], vec![input("x", &[1, 3])], &["y"]),
    );
    write(
        "onnx_nan_weight.onnx",
        &model(
            13,
            vec![node("Add", &["x", "w"], &["y"], vec![])],
            vec![weight("w", &[4], f32::NAN)],
            vec![input("x", &[1, 4])],
            &["y"],
        ),
    );
    let mut huge = weight("w", &[1], 0.0);
    huge.dims = vec![1 << 40, 1 << 40];
    write(
        "onnx_shape_overflow.onnx",
        &model(13, vec![node("Add", &["x", "w"], &["y"], vec![])], vec![huge], vec![input("x", &[1, 4])], &["y"]),
    );
    // Found by the onnx fuzz target: an empty tensor (a zero dim) whose other dims overflow.
    let mut empty = weight("w", &[1], 0.0);
    empty.dims = vec![i64::MAX, 0];
    empty.raw_data.clear();
    write(
        "onnx_empty_tensor_overflowing_dims.onnx",
        &model(13, vec![node("Add", &["x", "w"], &["y"], vec![])], vec![empty], vec![input("x", &[1, 4])], &["y"]),
    );
    // Found by the onnx fuzz target: a node with fewer inputs than its op takes.
    write(
        "onnx_node_without_inputs.onnx",
        &model(13, vec![node("MatMulInteger", &[], &["y"], vec![])], vec![], vec![input("x", &[1, 4])], &["y"]),
    );
    write(
        "onnx_too_large_for_memory.onnx",
        &model(13, vec![node("Relu", &["x"], &["y"], vec![])], vec![], vec![input("x", &[1, 1 << 20, 1 << 20])], &["y"]),
    );

    // safetensors (for examples/mlp.qir)
    write("st_header_length_past_end.safetensors", &(u64::MAX / 2).to_le_bytes());
    write(
        "st_offsets_past_end.safetensors",
        &safetensors(r#"{"fc1.weight":{"dtype":"F32","shape":[32,64],"data_offsets":[0,8192]}}"#, &[0u8; 16]),
    );
    let mut nan = Vec::new();
    for _ in 0..4 {
        nan.extend(f32::NAN.to_le_bytes());
    }
    write("st_nan_weight.safetensors", &safetensors(r#"{"fc1.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &nan));
    write("st_garbage.safetensors", b"this is not a safetensors file at all");

    // compressed weights
    write("qcw_truncated.qcw", b"QCW1\x01\x00\x00\x00\x05\x00\x00\x00abc");

    // npy inputs (for examples/mlp.qir, which takes [?, 64] f32)
    write("npy_wrong_dtype.npy", &npy("<i8", "(1, 64)", &[0u8; 512]));
    write("npy_wrong_shape.npy", &npy("<f4", "(1, 63)", &[0u8; 252]));
    write("npy_truncated_data.npy", &npy("<f4", "(100, 64)", &[0u8; 1000]));
    write("npy_huge_shape.npy", &npy("<f4", "(4294967296, 4294967296)", &[0u8; 16]));
    let inf: Vec<u8> = (0..64).flat_map(|i| if i == 5 { f32::INFINITY } else { 0.5 }.to_le_bytes()).collect();
    write("npy_inf_input.npy", &npy("<f4", "(1, 64)", &inf));

    // QIR
    write(
        "qir_shape_overflow.qir",
        b"func @m(%x: tensor<1099511627776x1099511627776xf32>) -> tensor<1099511627776x1099511627776xf32> {\n  %y = relu(%x) : tensor<1099511627776x1099511627776xf32>\n  return %y\n}\n",
    );
    write(
        "qir_too_large_for_memory.qir",
        b"func @m(%x: tensor<1x1x65536x65536xf32>) -> tensor<1x1x65536x65536xf32> {\n  %y = relu(%x) : tensor<1x1x65536x65536xf32>\n  return %y\n}\n",
    );
    write(
        "qir_unknown_op.qir",
        b"func @m(%x: tensor<1x4xf32>) -> tensor<1x4xf32> {\n  %y = frobnicate(%x) : tensor<1x4xf32>\n  return %y\n}\n",
    );
    println!("wrote the catalogue to {}", dir.display());
}
