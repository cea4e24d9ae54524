//! QIR → ONNX (opset 17), so that a model qc quantized runs in ONNX Runtime. f32 ops map to their
//! ONNX ops; an op on quantized values is written in QDQ form — each quantized operand
//! dequantized, the f32 op, its fused activation, and a quantize to the result's parameters —
//! which is how ONNX Runtime and quantization-aware training express integer ops.

use super::proto::*;
use super::tensor::encode;
use qc_ir::{ConstValue, Dim, ElemType, Graph, OpKind, QuantParams, ScalarType, Tensor, TensorType, ValueId};
use std::collections::HashMap;

/// The opset the exported model declares.
pub const EXPORT_OPSET: i64 = 17;

struct Exporter<'g> {
    g: &'g Graph,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    names: HashMap<ValueId, String>,
    counter: usize,
}

fn elem_type(st: ScalarType) -> i32 {
    match st {
        ScalarType::F32 => data_type::FLOAT,
        ScalarType::F16 => data_type::FLOAT16,
        ScalarType::I64 => data_type::INT64,
        ScalarType::I32 => data_type::INT32,
        ScalarType::I8 | ScalarType::I4 => data_type::INT8,
        ScalarType::U8 => data_type::UINT8,
        ScalarType::Bool => data_type::BOOL,
    }
}

fn value_info(name: &str, ty: &TensorType) -> ValueInfoProto {
    let dim = ty
        .dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => Dimension { dim_value: Some(*n as i64), dim_param: None },
            Dim::Dynamic => Dimension { dim_value: None, dim_param: Some("batch".into()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: elem_type(ty.elem.storage()), shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

impl Exporter<'_> {
    fn fresh(&mut self, base: &str) -> String {
        self.counter += 1;
        format!("{base}__{}", self.counter)
    }

    fn name(&self, v: ValueId) -> String {
        self.names[&v].clone()
    }

    fn init(&mut self, base: &str, t: &Tensor) -> String {
        let name = self.fresh(base);
        self.inits.push(encode(&name, t));
        name
    }

    fn i64s(&mut self, base: &str, v: &[i64]) -> String {
        self.init(base, &Tensor::from_i64s(v.to_vec()))
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, outputs: Vec<String>, attrs: Vec<AttributeProto>, name: &str) {
        let name = self.fresh(name);
        self.nodes.push(NodeProto {
            input: inputs,
            output: outputs,
            name,
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
    }

    /// Scale and zero-point initializers of quantization parameters.
    fn qparams(&mut self, base: &str, q: &QuantParams) -> (String, String, Vec<AttributeProto>) {
        let shape: Vec<usize> = if q.axis.is_some() { vec![q.scales.len()] } else { vec![] };
        let sh = ndarray::IxDyn(&shape);
        let s = self.init(
            &format!("{base}_scale"),
            &Tensor::F32(ndarray::ArrayD::from_shape_vec(sh.clone(), q.scales.clone()).expect("sized")),
        );
        let zps: Vec<i64> = q.zero_points.iter().map(|&z| z as i64).collect();
        let zt = Tensor::I64(ndarray::ArrayD::from_shape_vec(sh, zps).expect("sized")).cast(match q.storage {
            ScalarType::I4 => ScalarType::I8,
            s => s,
        });
        let z = self.init(&format!("{base}_zero_point"), &zt);
        let attrs = q.axis.map(|a| vec![AttributeProto::int("axis", a as i64)]).unwrap_or_default();
        (s, z, attrs)
    }

    /// `v` as f32: itself, or a DequantizeLinear of it.
    fn as_f32(&mut self, v: ValueId, loc: &str) -> String {
        let name = self.name(v);
        match &self.g.ty(v).elem {
            ElemType::Quant(q) => {
                let q = q.clone();
                let (s, z, attrs) = self.qparams(&name, &q);
                let out = self.fresh(&format!("{name}_dq"));
                self.node("DequantizeLinear", vec![name, s, z], vec![out.clone()], attrs, loc);
                out
            }
            _ => name,
        }
    }

    /// Writes `out` as the result `r`: quantized (QuantizeLinear to its type) or as is.
    fn finish(&mut self, f32_out: String, r: ValueId, loc: &str) {
        let target = self.name(r);
        match &self.g.ty(r).elem {
            ElemType::Quant(q) => {
                let q = q.clone();
                let (s, z, attrs) = self.qparams(&target, &q);
                self.node("QuantizeLinear", vec![f32_out, s, z], vec![target], attrs, loc);
            }
            _ => self.node("Identity", vec![f32_out], vec![target], vec![], loc),
        }
    }

    fn export_node(&mut self, id: qc_ir::NodeId) -> Result<(), String> {
        let node = self.g.node(id);
        let loc = if node.loc.name.is_empty() { node.kind.name().to_string() } else { node.loc.name.clone() };
        let r = node.results[0];
        let a = &node.attrs;
        if node.kind == OpKind::Const {
            let t = match node.value.as_ref().expect("const value") {
                ConstValue::Dense(t) => t.clone(),
                ConstValue::Weight(w) => {
                    self.g.weights.get(w).ok_or_else(|| format!("weight \"{w}\" is not loaded"))?.as_ref().clone()
                }
            };
            let name = self.name(r);
            self.inits.push(encode(&name, &t));
            return Ok(());
        }
        match node.kind {
            OpKind::Quantize | OpKind::Dequantize | OpKind::Requantize | OpKind::Stats => {
                let x = self.as_f32(node.operands[0], &loc);
                self.finish(x, r, &loc);
                return Ok(());
            }
            OpKind::DynamicQuantize => {
                let x = self.name(node.operands[0]);
                let outs = node.results.iter().map(|&v| self.name(v)).collect();
                self.node("DynamicQuantizeLinear", vec![x], outs, vec![], &loc);
                return Ok(());
            }
            OpKind::ConvInteger => {
                let ins: Vec<String> = node.operands.iter().map(|&o| self.name(o)).collect();
                let mut attrs = vec![AttributeProto::int("group", a.int("groups", 1))];
                for k in ["strides", "pads", "dilations"] {
                    if let Some(x) = a.ints(k) {
                        attrs.push(AttributeProto::ints(k, x));
                    }
                }
                self.node("ConvInteger", ins, vec![self.name(r)], attrs, &loc);
                return Ok(());
            }
            OpKind::MatMulInteger | OpKind::Cast | OpKind::Shape | OpKind::Gather => {
                let ins: Vec<String> = node.operands.iter().map(|&o| self.name(o)).collect();
                let (op, attrs) = match node.kind {
                    OpKind::MatMulInteger => ("MatMulInteger", vec![]),
                    OpKind::Cast => ("Cast", vec![AttributeProto::int("to", elem_type(self.g.ty(r).elem.storage()) as i64)]),
                    OpKind::Shape => ("Shape", vec![]),
                    _ => ("Gather", vec![AttributeProto::int("axis", a.int("axis", 0))]),
                };
                self.node(op, ins, vec![self.name(r)], attrs, &loc);
                return Ok(());
            }
            _ => {}
        }
        let mut ins: Vec<String> = node.operands.iter().map(|&o| self.as_f32(o, &loc)).collect();
        let ints = |k: &str| a.ints(k).map(<[i64]>::to_vec);
        let (op, attrs): (&str, Vec<AttributeProto>) = match node.kind {
            OpKind::Conv2d | OpKind::ConvTranspose2d => {
                let mut v = vec![AttributeProto::int("group", a.int("groups", 1))];
                for (k, o) in
                    [("strides", "strides"), ("pads", "pads"), ("dilations", "dilations"), ("output_padding", "output_padding")]
                {
                    if let Some(x) = ints(k) {
                        v.push(AttributeProto::ints(o, &x));
                    }
                }
                (if node.kind == OpKind::Conv2d { "Conv" } else { "ConvTranspose" }, v)
            }
            OpKind::MatMul => ("MatMul", vec![]),
            OpKind::Gemm => (
                "Gemm",
                vec![
                    AttributeProto::int("transA", a.bool("trans_a", false) as i64),
                    AttributeProto::int("transB", a.bool("trans_b", false) as i64),
                    AttributeProto::float("alpha", a.float("alpha", 1.0)),
                    AttributeProto::float("beta", a.float("beta", 1.0)),
                ],
            ),
            OpKind::Add => ("Add", vec![]),
            OpKind::Sub => ("Sub", vec![]),
            OpKind::Mul => ("Mul", vec![]),
            OpKind::Div => ("Div", vec![]),
            OpKind::Relu => ("Relu", vec![]),
            OpKind::Sigmoid => ("Sigmoid", vec![]),
            OpKind::HardSwish => ("HardSwish", vec![]),
            OpKind::HardSigmoid => (
                "HardSigmoid",
                vec![AttributeProto::float("alpha", a.float("alpha", 0.2)), AttributeProto::float("beta", a.float("beta", 0.5))],
            ),
            OpKind::Clip => {
                let lo = self
                    .init("clip_min", &Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.float("min", f32::MIN))));
                let hi = self
                    .init("clip_max", &Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.float("max", f32::MAX))));
                ins.extend([lo, hi]);
                ("Clip", vec![])
            }
            OpKind::BatchNorm => ("BatchNormalization", vec![AttributeProto::float("epsilon", a.float("epsilon", 1e-5))]),
            OpKind::MaxPool | OpKind::AvgPool => {
                let mut v = vec![
                    AttributeProto::ints("kernel_shape", &ints("kernel_shape").unwrap_or_default()),
                    AttributeProto::int("ceil_mode", a.bool("ceil_mode", false) as i64),
                ];
                for k in ["strides", "pads", "dilations"] {
                    if let Some(x) = ints(k) {
                        v.push(AttributeProto::ints(k, &x));
                    }
                }
                if node.kind == OpKind::AvgPool {
                    v.push(AttributeProto::int("count_include_pad", a.bool("count_include_pad", false) as i64));
                    ("AveragePool", v)
                } else {
                    ("MaxPool", v)
                }
            }
            OpKind::GlobalAvgPool => ("GlobalAveragePool", vec![]),
            OpKind::ReduceMean => {
                let mut v = vec![AttributeProto::int("keepdims", a.bool("keepdims", true) as i64)];
                if let Some(x) = ints("axes") {
                    v.push(AttributeProto::ints("axes", &x));
                }
                ("ReduceMean", v)
            }
            OpKind::Flatten => ("Flatten", vec![AttributeProto::int("axis", a.int("axis", 1))]),
            OpKind::Reshape => {
                let shape = ints("shape").ok_or("a reshape with a computed shape cannot be exported; run fold-constants")?;
                ins.truncate(1);
                let s = self.i64s("shape", &shape);
                ins.push(s);
                ("Reshape", vec![AttributeProto::int("allowzero", a.bool("allowzero", false) as i64)])
            }
            OpKind::Transpose => ("Transpose", ints("perm").map(|p| vec![AttributeProto::ints("perm", &p)]).unwrap_or_default()),
            OpKind::Concat => ("Concat", vec![AttributeProto::int("axis", a.int("axis", 0))]),
            OpKind::Slice => {
                for k in ["starts", "ends", "axes", "steps"] {
                    if let Some(x) = ints(k) {
                        let s = self.i64s(k, &x);
                        ins.push(s);
                    } else if k == "axes" {
                        let n = ints("starts").map_or(0, |s| s.len()) as i64;
                        let s = self.i64s(k, &(0..n).collect::<Vec<_>>());
                        ins.push(s);
                    }
                }
                ("Slice", vec![])
            }
            OpKind::Pad => {
                let p = self.i64s("pads", &ints("pads").unwrap_or_default());
                let v =
                    self.init("pad_value", &Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.float("value", 0.0))));
                ins.extend([p, v]);
                ("Pad", vec![AttributeProto::string("mode", a.str("mode").unwrap_or("constant"))])
            }
            OpKind::Resize => {
                let roi = self.init("roi", &Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[0]))));
                ins.push(roi);
                match (a.floats("scales"), ints("sizes")) {
                    (Some(s), _) => {
                        let t = self.init(
                            "scales",
                            &Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[s.len()]), s.to_vec()).expect("sized")),
                        );
                        ins.push(t);
                    }
                    (None, Some(s)) => {
                        let e = self.init("scales", &Tensor::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[0]))));
                        let t = self.i64s("sizes", &s);
                        ins.extend([e, t]);
                    }
                    _ => return Err("resize without scales or sizes".into()),
                }
                let mut v = vec![AttributeProto::string("mode", a.str("mode").unwrap_or("nearest"))];
                v.push(AttributeProto::string(
                    "coordinate_transformation_mode",
                    a.str("coordinate_transformation_mode").unwrap_or("half_pixel"),
                ));
                v.push(AttributeProto::string("nearest_mode", a.str("nearest_mode").unwrap_or("round_prefer_floor")));
                ("Resize", v)
            }
            OpKind::Softmax => ("Softmax", vec![AttributeProto::int("axis", a.int("axis", -1))]),
            OpKind::Squeeze | OpKind::Unsqueeze => {
                if let Some(x) = ints("axes") {
                    let s = self.i64s("axes", &x);
                    ins.push(s);
                }
                (if node.kind == OpKind::Squeeze { "Squeeze" } else { "Unsqueeze" }, vec![])
            }
            k => return Err(format!("{k} cannot be exported yet")),
        };
        let mut out = self.fresh(&format!("{}_f32", self.name(r)));
        self.node(op, ins, vec![out.clone()], attrs, &loc);
        match a.str("activation") {
            Some("relu") => {
                let next = self.fresh(&out);
                self.node("Relu", vec![out], vec![next.clone()], vec![], &loc);
                out = next;
            }
            Some("clip") => {
                let lo = self.init(
                    "clip_min",
                    &Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.float("clip_min", f32::MIN))),
                );
                let hi = self.init(
                    "clip_max",
                    &Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.float("clip_max", f32::MAX))),
                );
                let next = self.fresh(&out);
                self.node("Clip", vec![out, lo, hi], vec![next.clone()], vec![], &loc);
                out = next;
            }
            _ => {}
        }
        self.finish(out, r, &loc);
        Ok(())
    }
}

/// Exports a verified graph (weights loaded) as an ONNX model.
pub fn export(g: &Graph) -> Result<ModelProto, String> {
    let order = g.canonical_order().map_err(|n| format!("the graph has a cycle through {n}"))?;
    let mut names = HashMap::new();
    let mut used = std::collections::HashSet::new();
    for v in g.params().iter().copied().chain(order.iter().flat_map(|&n| g.node(n).results.clone())) {
        let base = g.value(v).name.clone().unwrap_or_else(|| format!("v{}", v.0));
        let mut name = base.clone();
        let mut i = 1;
        while !used.insert(name.clone()) {
            name = format!("{base}_{i}");
            i += 1;
        }
        names.insert(v, name);
    }
    let mut ex = Exporter { g, nodes: Vec::new(), inits: Vec::new(), names, counter: 0 };
    for n in order {
        ex.export_node(n)?;
    }
    let inputs = g.params().iter().map(|&p| value_info(&ex.name(p), g.ty(p))).collect();
    // Outputs are written under their own names; an output that is a parameter gets an Identity.
    let mut outputs = Vec::new();
    for (i, &o) in g.outputs().iter().enumerate() {
        let mut name = ex.name(o);
        if g.params().contains(&o) {
            let out = format!("output_{i}");
            ex.node("Identity", vec![name], vec![out.clone()], vec![], "output");
            name = out;
        }
        outputs.push(value_info(&name, g.ty(o)));
    }
    Ok(ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: EXPORT_OPSET }],
        producer_name: "qc".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(GraphProto {
            node: ex.nodes,
            name: g.name.clone(),
            initializer: ex.inits,
            input: inputs,
            output: outputs,
            value_info: vec![],
        }),
    })
}
