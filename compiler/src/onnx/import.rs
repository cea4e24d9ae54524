//! ONNX → QIR. Nodes are translated in topological order; values whose operands are all
//! constants are computed at import time with the reference evaluator (this folds the shape
//! subgraphs of real exports once input dims are known), and constants become QIR `const` ops only
//! where a computed op reads them: small ones inline, the others as named weights under their ONNX
//! names. QIR values are named after ONNX tensors (sanitized, unique) and ops carry the ONNX node
//! name in `loc`.

use super::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, attribute_type};
use super::tensor::{decode, scalar_type};
use qc_ir::eval::eval_op;
use qc_ir::infer::{Operand, infer_type};
use qc_ir::{
    Attr, Attrs, ConstValue, Dim, ElemType, Graph, Loc, Node, OpKind, QuantParams, ScalarType, Tensor, TensorType, ValueId,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Import settings.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Fixed dims for named inputs (`--input-shape NAME=1x3x48x192`).
    pub input_shapes: Vec<(String, Vec<Dim>)>,
}

/// The opsets of the default domain qc reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=21;

/// The ONNX op types qc imports (default domain).
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "And",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "DequantizeLinear",
    "Div",
    "DynamicQuantizeLinear",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "Less",
    "LessOrEqual",
    "MatMul",
    "MatMulInteger",
    "MaxPool",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "QLinearConv",
    "QLinearMatMul",
    "QuantizeLinear",
    "Range",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Resize",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Tile",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Constants up to this many elements, and all i64 constants, are written inline.
const INLINE_LIMIT: usize = 16;

#[derive(Clone)]
enum Val {
    Value(ValueId),
    Const(Arc<Tensor>),
    /// Produced by an op that failed or that qc cannot import; the reason is reported once.
    Missing,
    /// An output qc does not model (e.g. MaxPool indices); using it is an error.
    Unavailable(String),
}

enum Fail {
    Unsupported(String),
    Error(String),
}

type R<T> = Result<T, Fail>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(Fail::Error(msg.into()))
}

/// A QIR value name for an ONNX tensor name: characters outside `[A-Za-z0-9_.$]` become `_`.
pub fn sanitize(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.$".contains(c) { c } else { '_' }).collect();
    if s.is_empty() {
        "v".into()
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        format!("t{s}")
    } else {
        s
    }
}

struct Importer {
    g: Graph,
    opset: i64,
    vals: HashMap<String, Val>,
    /// QIR values already made for constants, by ONNX name and QIR type.
    consts: HashMap<(String, String), ValueId>,
    unsupported: BTreeMap<String, Vec<String>>,
    errors: Vec<String>,
}

struct Ctx<'n> {
    node: &'n NodeProto,
    loc: Loc,
    inputs: Vec<Option<Val>>,
    /// Attributes read with the wrong type (reported as the node's error).
    bad_attrs: std::cell::RefCell<Vec<String>>,
}

fn attr_type_name(t: i32) -> &'static str {
    match t {
        attribute_type::FLOAT => "a float",
        attribute_type::INT => "an int",
        attribute_type::STRING => "a string",
        attribute_type::TENSOR => "a tensor",
        attribute_type::GRAPH => "a graph",
        attribute_type::FLOATS => "floats",
        attribute_type::INTS => "ints",
        attribute_type::STRINGS => "strings",
        _ => "of another type",
    }
}

impl Ctx<'_> {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// The attribute, if present with type `want` (or untyped); a wrong type is recorded.
    fn typed(&self, name: &str, want: i32) -> Option<&AttributeProto> {
        let a = self.attr(name)?;
        if a.r#type != 0 && a.r#type != want {
            self.bad_attrs.borrow_mut().push(format!(
                "attribute `{name}` must be {}, got {}",
                attr_type_name(want),
                attr_type_name(a.r#type)
            ));
            return None;
        }
        Some(a)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.typed(name, attribute_type::INT).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.typed(name, attribute_type::FLOAT).map_or(default, |a| a.f)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.typed(name, attribute_type::INTS).map(|a| a.ints.clone())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.typed(name, attribute_type::STRING).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    fn input(&self, i: usize) -> Option<&Val> {
        self.inputs.get(i).and_then(|v| v.as_ref())
    }

    fn req(&self, i: usize) -> R<&Val> {
        self.input(i).ok_or_else(|| Fail::Error(format!("input {i} is required")))
    }

    /// A constant input as a tensor (absent: `None`).
    fn const_input(&self, i: usize, what: &str) -> R<Option<Arc<Tensor>>> {
        match self.input(i) {
            None => Ok(None),
            Some(Val::Const(t)) => Ok(Some(t.clone())),
            Some(_) => Err(Fail::Unsupported(format!("{} with a non-constant {what}", self.node.op_type))),
        }
    }

    fn const_ints(&self, i: usize, what: &str) -> R<Option<Vec<i64>>> {
        match self.const_input(i, what)? {
            None => Ok(None),
            Some(t) => t.to_i64_vec().map(Some).ok_or_else(|| Fail::Error(format!("{what} must be integers"))),
        }
    }

    fn const_f32(&self, i: usize, what: &str) -> R<Option<f32>> {
        match self.const_input(i, what)? {
            None => Ok(None),
            Some(t) => match t.to_f64_vec().as_slice() {
                [v] => Ok(Some(*v as f32)),
                _ => err(format!("{what} must be a scalar")),
            },
        }
    }
}

fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

impl Importer {
    fn ty_of(&self, v: &Val) -> Option<TensorType> {
        match v {
            Val::Value(id) => Some(self.g.ty(*id).clone()),
            Val::Const(t) => Some(TensorType::new(&t.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), t.scalar_type())),
            _ => None,
        }
    }

    /// The QIR value for a constant, typed `ty` (its own type when `None`), made once.
    fn materialize(&mut self, name: &str, t: &Tensor, ty: Option<TensorType>) -> ValueId {
        let ty = ty.unwrap_or_else(|| TensorType::new(&t.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), t.scalar_type()));
        let key = (name.to_string(), ty.to_string());
        if let Some(&v) = self.consts.get(&key) {
            return v;
        }
        let value = if t.len() <= INLINE_LIMIT || t.scalar_type() == ScalarType::I64 {
            ConstValue::Dense(t.clone())
        } else {
            let wname = self.g.unique_weight_name(name);
            self.g.weights.insert(wname.clone(), t.clone());
            ConstValue::Weight(wname)
        };
        let mut node = Node::new(OpKind::Const, vec![], Attrs::new(), Loc::default());
        node.value = Some(value);
        let id = self.g.add_node(node, vec![ty]);
        let v = self.g.node(id).results[0];
        self.g.value_mut(v).name = Some(self.g.unique_name(&sanitize(name)));
        self.consts.insert(key, v);
        v
    }

    fn operand(&mut self, c: &Ctx, i: usize) -> R<ValueId> {
        match c.req(i)?.clone() {
            Val::Value(v) => Ok(v),
            Val::Const(t) => Ok(self.materialize(&c.node.input[i], &t, None)),
            Val::Missing => err("its input is missing"),
            Val::Unavailable(why) => err(why),
        }
    }

    /// Emits `kind` over the given inputs; computes it now when every input is constant.
    /// `ty` overrides the inferred result type (quantize).
    fn emit(&mut self, c: &Ctx, kind: OpKind, inputs: &[usize], attrs: Attrs, ty: Option<TensorType>) -> R<Val> {
        let vals: Vec<Val> = inputs.iter().map(|&i| c.req(i).cloned()).collect::<R<_>>()?;
        let all_const = vals.iter().all(|v| matches!(v, Val::Const(_)));
        if all_const && !matches!(kind, OpKind::Quantize | OpKind::Dequantize) {
            let tensors: Vec<Arc<Tensor>> =
                vals.iter().map(|v| if let Val::Const(t) = v { t.clone() } else { unreachable!() }).collect();
            let tys: Vec<TensorType> = vals.iter().map(|v| self.ty_of(v).expect("const")).collect();
            let ops: Vec<Operand> = tys.iter().zip(&tensors).map(|(ty, t)| Operand { ty, value: Some(t.as_ref()) }).collect();
            let out = match ty {
                Some(t) => t,
                None => infer_type(kind, &attrs, &ops).map_err(Fail::Error)?,
            };
            let refs: Vec<&Tensor> = tensors.iter().map(|t| t.as_ref()).collect();
            let tyrefs: Vec<&TensorType> = tys.iter().collect();
            let t = eval_op(kind, &attrs, &refs, &tyrefs, &out).map_err(Fail::Error)?;
            return Ok(Val::Const(Arc::new(t)));
        }
        let operands: Vec<ValueId> = inputs.iter().map(|&i| self.operand(c, i)).collect::<R<_>>()?;
        self.emit_values(kind, operands, attrs, ty, &c.loc)
    }

    /// Adds a `kind` op over QIR values; its result type is inferred unless `ty` is given.
    fn emit_values(&mut self, kind: OpKind, operands: Vec<ValueId>, attrs: Attrs, ty: Option<TensorType>, loc: &Loc) -> R<Val> {
        let out = match ty {
            Some(t) => t,
            None => {
                let ops: Vec<Operand> = operands
                    .iter()
                    .map(|&o| Operand {
                        ty: self.g.ty(o),
                        value: self.g.producer(o).and_then(|p| match &self.g.node(p).value {
                            Some(ConstValue::Dense(t)) => Some(t),
                            _ => None,
                        }),
                    })
                    .collect();
                infer_type(kind, &attrs, &ops).map_err(Fail::Error)?
            }
        };
        let id = self.g.add_node(Node::new(kind, operands, attrs, loc.clone()), vec![out]);
        Ok(Val::Value(self.g.node(id).results[0]))
    }

    /// The ops exporters build constants from shapes with ([`super::fold`]): computed now when
    /// their inputs are constant.
    fn shape_op(&mut self, c: &Ctx) -> R<Vec<Val>> {
        use super::fold;
        let op = c.node.op_type.as_str();
        let all_const = (0..c.inputs.len()).all(|i| matches!(c.input(i), Some(Val::Const(_)) | None));
        if !all_const {
            return Err(Fail::Unsupported(format!(
                "{op} of computed values (qc folds it when its inputs are constant, as they are once the input shape is fixed: --input-shape)"
            )));
        }
        let t = |i: usize| -> R<Arc<Tensor>> {
            c.const_input(i, "input")?.ok_or_else(|| Fail::Error(format!("input {i} is required")))
        };
        let ints = |i: usize, what: &str| -> R<Vec<i64>> {
            c.const_ints(i, what)?.ok_or_else(|| Fail::Error(format!("{what} is required")))
        };
        let out = match op {
            "ConstantOfShape" => {
                let value = match c.attr("value").and_then(|a| a.t.as_ref()) {
                    Some(v) => Some(super::tensor::decode(v).map_err(Fail::Error)?),
                    None => None,
                };
                fold::constant_of_shape(&ints(0, "shape")?, value.as_ref())
            }
            "Range" => fold::range(&*t(0)?, &*t(1)?, &*t(2)?),
            "Tile" => fold::tile(&*t(0)?, &ints(1, "repeats")?),
            _ => unreachable!("dispatched by name"),
        };
        Ok(vec![Val::Const(Arc::new(out.map_err(Fail::Error)?))])
    }

    fn translate(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let op = c.node.op_type.as_str();
        let one = |v: R<Val>| v.map(|v| vec![v]);
        let unary = |kind| (kind, Attrs::new());
        match op {
            "Identity" => Ok(vec![c.req(0)?.clone()]),
            "Constant" => one(Ok(Val::Const(Arc::new(constant_value(c)?)))),
            "Relu" | "Sigmoid" | "HardSwish" | "Add" | "Sub" | "Mul" | "Div" | "MatMul" | "GlobalAveragePool" => {
                let (kind, attrs) = match op {
                    "Relu" => unary(OpKind::Relu),
                    "Sigmoid" => unary(OpKind::Sigmoid),
                    "HardSwish" => unary(OpKind::HardSwish),
                    "Add" => unary(OpKind::Add),
                    "Sub" => unary(OpKind::Sub),
                    "Mul" => unary(OpKind::Mul),
                    "Div" => unary(OpKind::Div),
                    "MatMul" => unary(OpKind::MatMul),
                    _ => unary(OpKind::GlobalAvgPool),
                };
                let n = kind.arity().0;
                one(self.emit(c, kind, &(0..n).collect::<Vec<_>>(), attrs, None))
            }
            "HardSigmoid" => {
                let mut a = Attrs::new();
                if let Some(x) = c.attr("alpha") {
                    a.set("alpha", Attr::Float(x.f));
                }
                if let Some(x) = c.attr("beta") {
                    a.set("beta", Attr::Float(x.f));
                }
                one(self.emit(c, OpKind::HardSigmoid, &[0], a, None))
            }
            "Clip" => {
                let mut a = Attrs::new();
                let (lo, hi) = (c.const_f32(1, "min")?, c.const_f32(2, "max")?);
                if let Some(v) = lo {
                    a.set("min", Attr::Float(v));
                }
                if let Some(v) = hi {
                    a.set("max", Attr::Float(v));
                }
                one(self.emit(c, OpKind::Clip, &[0], a, None))
            }
            "Conv" | "ConvTranspose" => self.conv(c),
            "Gemm" => {
                let mut a = Attrs::new();
                if c.int("transA", 0) != 0 {
                    a.set("trans_a", Attr::Bool(true));
                }
                if c.int("transB", 0) != 0 {
                    a.set("trans_b", Attr::Bool(true));
                }
                for k in ["alpha", "beta"] {
                    let v = c.float(k, 1.0);
                    if v != 1.0 {
                        a.set(k, Attr::Float(v));
                    }
                }
                let inputs: Vec<usize> = if c.input(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] };
                one(self.emit(c, OpKind::Gemm, &inputs, a, None))
            }
            "BatchNormalization" => {
                if c.int("training_mode", 0) != 0 {
                    return Err(Fail::Unsupported("BatchNormalization in training mode".into()));
                }
                let a = Attrs::new().with("epsilon", Attr::Float(c.float("epsilon", 1e-5)));
                let y = self.emit(c, OpKind::BatchNorm, &[0, 1, 2, 3, 4], a, None)?;
                let mut outs = vec![y];
                outs.extend(
                    (1..c.node.output.len()).map(|_| {
                        Val::Unavailable("BatchNormalization's running statistics are not computed at inference".into())
                    }),
                );
                Ok(outs)
            }
            "MaxPool" | "AveragePool" => self.pool(c),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
                // Axes became an input in opset 13 for ReduceSum, in 18 for the others.
                let axes_input = self.opset >= if op == "ReduceSum" { 13 } else { 18 };
                let axes = if axes_input { c.const_ints(1, "axes")? } else { c.ints("axes") };
                let axes = axes.unwrap_or_default();
                if axes.is_empty() && c.int("noop_with_empty_axes", 0) != 0 {
                    return Ok(vec![c.req(0)?.clone()]);
                }
                let mut a = Attrs::new().with("keepdims", Attr::Bool(c.int("keepdims", 1) != 0));
                if !axes.is_empty() {
                    a.set("axes", ints(&axes));
                }
                let kind = match op {
                    "ReduceMean" => OpKind::ReduceMean,
                    "ReduceSum" => OpKind::ReduceSum,
                    "ReduceMax" => OpKind::ReduceMax,
                    _ => OpKind::ReduceMin,
                };
                one(self.emit(c, kind, &[0], a, None))
            }
            "LayerNormalization" => {
                if c.node.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(Fail::Unsupported("LayerNormalization with its Mean or InvStdDev output used".into()));
                }
                if c.int("stash_type", 1) != 1 {
                    return Err(Fail::Unsupported("LayerNormalization with a stash_type other than float".into()));
                }
                let a = Attrs::new()
                    .with("axis", Attr::Int(c.int("axis", -1)))
                    .with("epsilon", Attr::Float(c.float("epsilon", 1e-5)));
                let inputs: Vec<usize> = (0..c.inputs.len()).filter(|&i| c.input(i).is_some()).collect();
                one(self.emit(c, OpKind::LayerNorm, &inputs, a, None))
            }
            "Gelu" => {
                let approximate = c.string("approximate").unwrap_or_else(|| "none".into());
                one(self.emit(c, OpKind::Gelu, &[0], Attrs::new().with("approximate", Attr::Str(approximate)), None))
            }
            "Erf" | "Tanh" | "Sqrt" | "Exp" | "Neg" | "Not" => {
                let kind = match op {
                    "Erf" => OpKind::Erf,
                    "Tanh" => OpKind::Tanh,
                    "Sqrt" => OpKind::Sqrt,
                    "Exp" => OpKind::Exp,
                    "Neg" => OpKind::Neg,
                    _ => OpKind::Not,
                };
                one(self.emit(c, kind, &[0], Attrs::new(), None))
            }
            "Pow" => {
                // The exponent may be of another type than the base; a constant one becomes f32.
                if let Some(Val::Const(e)) = c.input(1)
                    && e.scalar_type() != ScalarType::F32
                {
                    let base = self.operand(c, 0)?;
                    let e = self.materialize(&c.node.input[1], &e.cast(ScalarType::F32), None);
                    return one(self.emit_values(OpKind::Pow, vec![base, e], Attrs::new(), None, &c.loc));
                }
                one(self.emit(c, OpKind::Pow, &[0, 1], Attrs::new(), None))
            }
            "Where" => one(self.emit(c, OpKind::Where, &[0, 1, 2], Attrs::new(), None)),
            "Equal" | "Less" | "LessOrEqual" | "Greater" | "GreaterOrEqual" | "And" | "Or" => {
                let kind = match op {
                    "Equal" => OpKind::Equal,
                    "Less" => OpKind::Less,
                    "LessOrEqual" => OpKind::LessOrEqual,
                    "Greater" => OpKind::Greater,
                    "GreaterOrEqual" => OpKind::GreaterOrEqual,
                    "And" => OpKind::And,
                    _ => OpKind::Or,
                };
                one(self.emit(c, kind, &[0, 1], Attrs::new(), None))
            }
            "Expand" => {
                let shape = c.const_ints(1, "shape")?.ok_or_else(|| {
                    Fail::Error("its shape is computed at run time; fix the input dims with --input-shape".into())
                })?;
                one(self.emit(c, OpKind::Expand, &[0], Attrs::new().with("shape", ints(&shape)), None))
            }
            "Flatten" => one(self.emit(c, OpKind::Flatten, &[0], Attrs::new().with("axis", Attr::Int(c.int("axis", 1))), None)),
            "Reshape" => {
                let Some(shape) = c.const_ints(1, "shape").map_err(|_| {
                    Fail::Error(
                        "its shape is computed at run time (from the dynamic batch size?); fix the input dims with --input-shape"
                            .into(),
                    )
                })?
                else {
                    return err("Reshape needs a shape input");
                };
                let mut a = Attrs::new().with("shape", ints(&shape));
                if c.int("allowzero", 0) != 0 {
                    a.set("allowzero", Attr::Bool(true));
                }
                one(self.emit(c, OpKind::Reshape, &[0], a, None))
            }
            "Transpose" => {
                let mut a = Attrs::new();
                if let Some(p) = c.ints("perm") {
                    a.set("perm", ints(&p));
                }
                one(self.emit(c, OpKind::Transpose, &[0], a, None))
            }
            "Concat" => {
                let n = c.inputs.len();
                one(self.emit(
                    c,
                    OpKind::Concat,
                    &(0..n).collect::<Vec<_>>(),
                    Attrs::new().with("axis", Attr::Int(c.int("axis", 0))),
                    None,
                ))
            }
            "Squeeze" | "Unsqueeze" => {
                let axes = if self.opset >= 13 { c.const_ints(1, "axes")? } else { c.ints("axes") };
                let mut a = Attrs::new();
                if let Some(ax) = axes {
                    a.set("axes", ints(&ax));
                } else if op == "Unsqueeze" {
                    return err("Unsqueeze needs axes");
                }
                let kind = if op == "Squeeze" { OpKind::Squeeze } else { OpKind::Unsqueeze };
                one(self.emit(c, kind, &[0], a, None))
            }
            "Slice" => {
                let (starts, ends, axes, steps) =
                    (c.const_ints(1, "starts")?, c.const_ints(2, "ends")?, c.const_ints(3, "axes")?, c.const_ints(4, "steps")?);
                let (Some(starts), Some(ends)) = (starts, ends) else { return err("Slice needs starts and ends") };
                let mut a = Attrs::new().with("starts", ints(&starts)).with("ends", ints(&ends));
                if let Some(ax) = axes {
                    a.set("axes", ints(&ax));
                }
                if let Some(st) = steps {
                    a.set("steps", ints(&st));
                }
                one(self.emit(c, OpKind::Slice, &[0], a, None))
            }
            "ConstantOfShape" | "Range" | "Tile" => self.shape_op(c),
            "Split" => self.split(c),
            "Pad" => self.pad(c),
            "Resize" => self.resize(c),
            "Softmax" => {
                let rank = self.ty_of(c.req(0)?).map_or(0, |t| t.rank()) as i64;
                let default = if self.opset >= 13 { -1 } else { 1 };
                let axis = c.int("axis", default);
                let axis = if axis < 0 { axis + rank } else { axis };
                if self.opset < 13 && axis != rank - 1 {
                    return Err(Fail::Unsupported("Softmax before opset 13 over more than the last axis".into()));
                }
                one(self.emit(c, OpKind::Softmax, &[0], Attrs::new().with("axis", Attr::Int(axis)), None))
            }
            "Gather" => one(self.emit(c, OpKind::Gather, &[0, 1], Attrs::new().with("axis", Attr::Int(c.int("axis", 0))), None)),
            "Shape" => {
                let ty = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?;
                let rank = ty.rank() as i64;
                let norm = |i: i64| if i < 0 { (i + rank).clamp(0, rank) } else { i.clamp(0, rank) };
                let (start, end) = (norm(c.int("start", 0)), norm(c.int("end", rank)));
                let dims = &ty.dims[start as usize..end.max(start) as usize];
                match dims.iter().map(|d| d.fixed().map(|n| n as i64)).collect::<Option<Vec<_>>>() {
                    Some(v) => one(Ok(Val::Const(Arc::new(Tensor::from_i64s(v))))),
                    None if start == 0 && end == rank => one(self.emit(c, OpKind::Shape, &[0], Attrs::new(), None)),
                    None => Err(Fail::Unsupported("Shape with start/end over a dynamic dim".into())),
                }
            }
            "Cast" => {
                let to = c.int("to", 0) as i32;
                let st = scalar_type(to).ok_or_else(|| Fail::Unsupported(format!("Cast to ONNX data type {to}")))?;
                // A cast to its input's own type is the identity.
                if self.ty_of(c.req(0)?).is_some_and(|t| t.elem == st.into()) {
                    return Ok(vec![c.req(0)?.clone()]);
                }
                one(self.emit(c, OpKind::Cast, &[0], Attrs::new().with("to", Attr::Str(st.name().into())), None))
            }
            "QuantizeLinear" => {
                let x_ty = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?;
                let q = self.quant_params(c, &x_ty)?;
                one(self.emit(c, OpKind::Quantize, &[0], Attrs::new(), Some(x_ty.with_elem(ElemType::Quant(q)))))
            }
            "DequantizeLinear" => self.dequantize(c),
            "QLinearConv" | "QLinearMatMul" => self.qlinear(c),
            "DynamicQuantizeLinear" => {
                let x = self.operand(c, 0)?;
                let ops = [Operand { ty: self.g.ty(x), value: None }];
                let tys: Vec<TensorType> = qc_ir::infer::infer(OpKind::DynamicQuantize, &Attrs::new(), &ops)
                    .map_err(Fail::Error)?
                    .iter()
                    .map(|f| f.complete().expect("complete"))
                    .collect();
                let id = self.g.add_node(Node::new(OpKind::DynamicQuantize, vec![x], Attrs::new(), c.loc.clone()), tys);
                Ok(self.g.node(id).results.iter().map(|&r| Val::Value(r)).collect())
            }
            "ConvInteger" => {
                let x_ty = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?;
                let w_ty = self.ty_of(c.req(1)?).ok_or_else(|| Fail::Error("weight is missing".into()))?;
                let a = self.conv_attrs(c, &x_ty, &w_ty)?;
                let inputs: Vec<usize> = (0..c.inputs.len()).filter(|&i| c.input(i).is_some()).collect();
                if inputs.len() == 3 && inputs[2] == 3 {
                    return Err(Fail::Unsupported("ConvInteger with only w's zero point".into()));
                }
                one(self.emit(c, OpKind::ConvInteger, &inputs, a, None))
            }
            "MatMulInteger" => {
                let inputs: Vec<usize> = (0..c.inputs.len()).filter(|&i| c.input(i).is_some()).collect();
                if inputs.len() == 3 && inputs[2] == 3 {
                    return Err(Fail::Unsupported("MatMulInteger with only b's zero point".into()));
                }
                one(self.emit(c, OpKind::MatMulInteger, &inputs, Attrs::new(), None))
            }
            _ => Err(Fail::Unsupported(op.to_string())),
        }
    }

    fn conv(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let x_ty = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?;
        let w_ty = self.ty_of(c.req(1)?).ok_or_else(|| Fail::Error("weight is missing".into()))?;
        let a = self.conv_attrs(c, &x_ty, &w_ty)?;
        let inputs: Vec<usize> = if c.input(2).is_some() { vec![0, 1, 2] } else { vec![0, 1] };
        let kind = if c.node.op_type == "ConvTranspose" { OpKind::ConvTranspose2d } else { OpKind::Conv2d };
        Ok(vec![self.emit(c, kind, &inputs, a, None)?])
    }

    /// The attributes of a Conv, ConvTranspose or QLinearConv node.
    fn conv_attrs(&self, c: &Ctx, x_ty: &TensorType, w_ty: &TensorType) -> R<Attrs> {
        if x_ty.rank() != 4 || w_ty.rank() != 4 {
            return Err(Fail::Unsupported(format!(
                "{} with {} spatial dims (qc has 2-D convolution)",
                c.node.op_type,
                x_ty.rank().saturating_sub(2)
            )));
        }
        let k: Vec<u64> = w_ty.dims[2..].iter().map(|d| d.fixed().unwrap_or(1)).collect();
        let strides = c.ints("strides").unwrap_or(vec![1, 1]);
        let dil = c.ints("dilations").unwrap_or(vec![1, 1]);
        let pads = self.resolve_pads(c, x_ty, &k, &strides, &dil)?;
        let mut a = Attrs::new();
        if strides != [1, 1] {
            a.set("strides", ints(&strides));
        }
        if pads.iter().any(|&p| p != 0) {
            a.set("pads", ints(&pads));
        }
        if dil != [1, 1] {
            a.set("dilations", ints(&dil));
        }
        let group = c.int("group", 1);
        if group != 1 {
            a.set("groups", Attr::Int(group));
        }
        if c.node.op_type == "ConvTranspose" {
            if c.attr("output_shape").is_some() {
                return Err(Fail::Unsupported("ConvTranspose with output_shape".into()));
            }
            if let Some(op) = c.ints("output_padding").filter(|v| v.iter().any(|&p| p != 0)) {
                a.set("output_padding", ints(&op));
            }
        }
        Ok(a)
    }

    /// QLinearConv and QLinearMatMul, written as what they compute: dequantize the operands,
    /// the f32 op, quantize the result. `fold-qdq` and `fuse-requant` turn this back into one
    /// integer op; the parameters live in the types.
    fn qlinear(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let conv = c.node.op_type == "QLinearConv";
        let x = c.req(0)?.clone();
        let w = c.req(3)?.clone();
        let x_ty = self.ty_of(&x).ok_or_else(|| Fail::Error("input is missing".into()))?;
        let w_ty = self.ty_of(&w).ok_or_else(|| Fail::Error("weight is missing".into()))?;
        let xq = self.quant_params_at(c, (1, 2), None, &x_ty)?;
        let wq = self.quant_params_at(c, (4, 5), if conv { Some(0) } else { Some(w_ty.rank() as i64 - 1) }, &w_ty)?;
        let yq = self.quant_params_at(c, (6, 7), None, &x_ty)?;
        let xf = self.dequantize_val(&c.node.input[0], x, xq.clone(), &c.loc)?;
        let wf = self.dequantize_val(&c.node.input[3], w, wq.clone(), &c.loc)?;
        let mut operands = vec![xf, wf];
        if conv && let Some(b) = c.input(8).cloned() {
            let scales: Vec<f32> = wq.scales.iter().map(|&sw| xq.scales[0] * sw).collect();
            let n = scales.len();
            let bq = QuantParams { storage: ScalarType::I32, axis: (n > 1).then_some(0), scales, zero_points: vec![0; n] };
            operands.push(self.dequantize_val(&c.node.input[8], b, bq, &c.loc)?);
        }
        let (kind, attrs) = if conv {
            let a = self.conv_attrs(c, &x_ty, &w_ty)?;
            (OpKind::Conv2d, a)
        } else {
            (OpKind::MatMul, Attrs::new())
        };
        let y = match self.emit_values(kind, operands, attrs, None, &c.loc)? {
            Val::Value(v) => v,
            _ => unreachable!("emit_values makes a value"),
        };
        let ty = self.g.ty(y).with_elem(ElemType::Quant(yq));
        Ok(vec![self.emit_values(OpKind::Quantize, vec![y], Attrs::new(), Some(ty), &c.loc)?])
    }

    /// Explicit pads [top, left, bottom, right] from `pads` or `auto_pad`.
    fn resolve_pads(&self, c: &Ctx, x: &TensorType, k: &[u64], strides: &[i64], dil: &[i64]) -> R<Vec<i64>> {
        let auto = c.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" => Ok(c.ints("pads").unwrap_or(vec![0; 4])),
            "VALID" => Ok(vec![0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut p = vec![0; 4];
                for i in 0..2 {
                    let n =
                        x.dims[2 + i].fixed().ok_or_else(|| Fail::Error("auto_pad SAME needs fixed spatial dims".into()))? as i64;
                    let s = strides.get(i).copied().unwrap_or(1);
                    let out = (n + s - 1) / s;
                    let total = ((out - 1) * s + (k[i] as i64 - 1) * dil.get(i).copied().unwrap_or(1) + 1 - n).max(0);
                    let small = total / 2;
                    (p[i], p[i + 2]) = if auto == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                }
                Ok(p)
            }
            other => err(format!("unknown auto_pad \"{other}\"")),
        }
    }

    fn pool(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let x_ty = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?;
        if x_ty.rank() != 4 {
            return Err(Fail::Unsupported(format!("{} over {} spatial dims", c.node.op_type, x_ty.rank().saturating_sub(2))));
        }
        let k = c.ints("kernel_shape").ok_or_else(|| Fail::Error("kernel_shape is required".into()))?;
        let strides = c.ints("strides").unwrap_or(vec![1, 1]);
        let dil = c.ints("dilations").unwrap_or(vec![1, 1]);
        let ku: Vec<u64> = k.iter().map(|&v| v.max(0) as u64).collect();
        let pads = self.resolve_pads(c, &x_ty, &ku, &strides, &dil)?;
        let mut a = Attrs::new().with("kernel_shape", ints(&k));
        if strides != [1, 1] {
            a.set("strides", ints(&strides));
        }
        if pads.iter().any(|&p| p != 0) {
            a.set("pads", ints(&pads));
        }
        if c.int("ceil_mode", 0) != 0 {
            a.set("ceil_mode", Attr::Bool(true));
        }
        let kind = if c.node.op_type == "MaxPool" {
            if dil != [1, 1] {
                a.set("dilations", ints(&dil));
            }
            OpKind::MaxPool
        } else {
            if dil != [1, 1] {
                return Err(Fail::Unsupported("AveragePool with dilations".into()));
            }
            if c.int("count_include_pad", 0) != 0 {
                a.set("count_include_pad", Attr::Bool(true));
            }
            OpKind::AvgPool
        };
        let y = self.emit(c, kind, &[0], a, None)?;
        let mut outs = vec![y];
        outs.extend((1..c.node.output.len()).map(|_| Val::Unavailable("MaxPool's indices output is not supported".into())));
        Ok(outs)
    }

    fn split(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let x_ty = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?;
        let rank = x_ty.rank() as i64;
        let axis = c.int("axis", 0);
        let axis = if axis < 0 { axis + rank } else { axis };
        let len = x_ty
            .dims
            .get(axis as usize)
            .and_then(|d| d.fixed())
            .ok_or_else(|| Fail::Error("Split needs a fixed dim along its axis".into()))? as i64;
        let n = c.node.output.len() as i64;
        let sizes = match if self.opset >= 13 { c.const_ints(1, "split")? } else { c.ints("split") } {
            Some(s) => s,
            None => {
                let chunk = (len + n - 1) / n;
                (0..n).map(|i| chunk.min(len - i * chunk).max(0)).collect()
            }
        };
        if sizes.len() as i64 != n || sizes.iter().sum::<i64>() != len {
            return err(format!("split sizes {sizes:?} do not cover {len} in {n} outputs"));
        }
        let mut start = 0;
        let mut outs = Vec::new();
        for s in sizes {
            let a = Attrs::new().with("axes", ints(&[axis])).with("starts", ints(&[start])).with("ends", ints(&[start + s]));
            outs.push(self.emit(c, OpKind::Slice, &[0], a, None)?);
            start += s;
        }
        Ok(outs)
    }

    fn pad(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let rank = self.ty_of(c.req(0)?).ok_or_else(|| Fail::Error("input is missing".into()))?.rank();
        let (pads, value, axes) = (c.const_ints(1, "pads")?, c.const_f32(2, "constant_value")?, c.const_ints(3, "axes")?);
        let pads = pads.ok_or_else(|| Fail::Error("Pad needs pads".into()))?;
        let full = match axes {
            None => pads,
            Some(axes) => {
                let mut full = vec![0; 2 * rank];
                for (i, &a) in axes.iter().enumerate() {
                    let a = if a < 0 { a + rank as i64 } else { a } as usize;
                    if a >= rank || pads.len() != 2 * axes.len() {
                        return err("Pad axes do not match its pads");
                    }
                    full[a] = pads[i];
                    full[a + rank] = pads[i + axes.len()];
                }
                full
            }
        };
        let mode = c.string("mode").unwrap_or_else(|| "constant".into());
        let mut a = Attrs::new().with("pads", ints(&full));
        if mode != "constant" {
            a.set("mode", Attr::Str(mode));
        }
        if let Some(v) = value.filter(|&v| v != 0.0) {
            a.set("value", Attr::Float(v));
        }
        Ok(vec![self.emit(c, OpKind::Pad, &[0], a, None)?])
    }

    fn resize(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let mode = c.string("mode").unwrap_or_else(|| "nearest".into());
        if mode != "nearest" && mode != "linear" {
            return Err(Fail::Unsupported(format!("Resize with mode {mode}")));
        }
        if c.attr("axes").is_some() || c.string("keep_aspect_ratio_policy").is_some_and(|p| p != "stretch") {
            return Err(Fail::Unsupported("Resize with axes or keep_aspect_ratio_policy".into()));
        }
        let (scales, sizes) = (c.const_input(2, "scales")?, c.const_ints(3, "sizes")?);
        let mut a = Attrs::new().with("mode", Attr::Str(mode.clone()));
        let ctm = c.string("coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
        if ctm == "tf_crop_and_resize" || ctm == "half_pixel_symmetric" {
            return Err(Fail::Unsupported(format!("Resize with coordinate_transformation_mode {ctm}")));
        }
        if ctm != "half_pixel" {
            a.set("coordinate_transformation_mode", Attr::Str(ctm));
        }
        if mode == "nearest"
            && let Some(nm) = c.string("nearest_mode").filter(|m| m != "round_prefer_floor")
        {
            a.set("nearest_mode", Attr::Str(nm));
        }
        match (scales.filter(|s| !s.is_empty()), sizes) {
            (Some(s), _) => a.set("scales", Attr::Floats(s.to_f64_vec().iter().map(|&v| v as f32).collect())),
            (None, Some(s)) => a.set("sizes", ints(&s)),
            (None, None) => return err("Resize needs scales or sizes"),
        }
        Ok(vec![self.emit(c, OpKind::Resize, &[0], a, None)?])
    }

    /// Quantization parameters of QuantizeLinear / DequantizeLinear: inputs 1 (scale) and 2
    /// (zero point) and the `axis` attribute.
    fn quant_params(&self, c: &Ctx, x_ty: &TensorType) -> R<QuantParams> {
        self.quant_params_at(c, (1, 2), Some(c.int("axis", 1)), x_ty)
    }

    /// Quantization parameters from the scale and zero-point inputs at `at`, for a tensor of type
    /// `x_ty`; a scale vector runs along `axis`.
    fn quant_params_at(&self, c: &Ctx, at: (usize, usize), axis: Option<i64>, x_ty: &TensorType) -> R<QuantParams> {
        let rank = x_ty.rank();
        let scale = c.const_input(at.0, "scale")?.ok_or_else(|| Fail::Error("a scale is required".into()))?;
        let zp = c.const_input(at.1, "zero point")?;
        let storage = match zp.as_deref().map(Tensor::scalar_type) {
            None | Some(ScalarType::U8) => ScalarType::U8,
            Some(ScalarType::I8) => ScalarType::I8,
            Some(ScalarType::I32) => ScalarType::I32,
            Some(t) => return Err(Fail::Unsupported(format!("quantization to {t}"))),
        };
        let scales: Vec<f32> = scale.to_f64_vec().iter().map(|&v| v as f32).collect();
        let zps: Vec<i32> = match &zp {
            Some(z) => z.to_i64_vec().expect("integer").iter().map(|&v| v as i32).collect(),
            None => vec![0; scales.len()],
        };
        if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return err(format!("scales must be positive and finite, got {scales:?}"));
        }
        if scales.is_empty() || scales.len() != zps.len() {
            return err("scale and zero point differ in length");
        }
        // One scale is per tensor (ONNX Runtime reads a one-element vector so, too).
        let axis = match axis {
            _ if scales.len() == 1 => None,
            Some(a) => {
                let a = if a < 0 { a + rank as i64 } else { a };
                if a < 0 || a as usize >= rank {
                    return err(format!("quantization axis {a} is out of range for rank {rank}"));
                }
                Some(a as usize)
            }
            None => return err("a scale vector needs an axis"),
        };
        Ok(QuantParams { storage, axis, scales, zero_points: zps })
    }

    fn dequantize(&mut self, c: &Ctx) -> R<Vec<Val>> {
        let x = c.req(0)?.clone();
        let x_ty = self.ty_of(&x).ok_or_else(|| Fail::Error("input is missing".into()))?;
        let q = self.quant_params(c, &x_ty)?;
        Ok(vec![Val::Value(self.dequantize_val(&c.node.input[0], x, q, &c.loc)?)])
    }

    /// Dequantizes `x` (ONNX name `name`) with parameters `q`: a constant becomes a const of the
    /// quantized type; a value must already carry exactly these parameters.
    fn dequantize_val(&mut self, name: &str, x: Val, q: QuantParams, loc: &Loc) -> R<ValueId> {
        let operand = match x {
            Val::Const(t) => {
                if t.scalar_type() != q.storage {
                    return err(format!("the quantized tensor is {} but its zero point is {}", t.scalar_type(), q.storage));
                }
                let ty = TensorType::new(&t.shape().iter().map(|&d| d as u64).collect::<Vec<_>>(), ElemType::Quant(q));
                self.materialize(name, &t, Some(ty))
            }
            Val::Value(v) => {
                match self.g.ty(v).elem.quant() {
                    Some(have) if *have == q => {}
                    Some(have) => {
                        return Err(Fail::Unsupported(format!(
                            "dequantizing with parameters {q} other than its producer's {have}"
                        )));
                    }
                    None => return Err(Fail::Unsupported("dequantizing a plain integer tensor".into())),
                }
                v
            }
            Val::Missing => return err("its input is missing"),
            Val::Unavailable(why) => return err(why),
        };
        let ty = self.g.ty(operand).with_elem(ScalarType::F32);
        let id = self.g.add_node(Node::new(OpKind::Dequantize, vec![operand], Attrs::new(), loc.clone()), vec![ty]);
        Ok(self.g.node(id).results[0])
    }
}

fn constant_value(c: &Ctx) -> R<Tensor> {
    if let Some(a) = c.attr("value") {
        let t = a.t.as_ref().ok_or_else(|| Fail::Error("value is not a tensor".into()))?;
        return decode(t).map_err(Fail::Error);
    }
    if let Some(a) = c.attr("value_float") {
        return Ok(Tensor::F32(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.f)));
    }
    if let Some(a) = c.attr("value_floats") {
        return Ok(Tensor::F32(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[a.floats.len()]), a.floats.clone()).expect("1-d"),
        ));
    }
    if let Some(a) = c.attr("value_int") {
        return Ok(Tensor::I64(ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), a.i)));
    }
    if let Some(a) = c.attr("value_ints") {
        return Ok(Tensor::from_i64s(a.ints.clone()));
    }
    Err(Fail::Unsupported("Constant without value, value_float(s) or value_int(s)".into()))
}

/// Orders nodes so that every input is produced before it is read.
fn topo_nodes(g: &GraphProto) -> Result<Vec<&NodeProto>, String> {
    let producer: HashMap<&str, usize> = g
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().filter(|o| !o.is_empty()).map(move |o| (o.as_str(), i)))
        .collect();
    let mut state = vec![0u8; g.node.len()];
    let mut order = Vec::with_capacity(g.node.len());
    for start in 0..g.node.len() {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((n, i)) = stack.pop() {
            let inputs = &g.node[n].input;
            if i < inputs.len() {
                stack.push((n, i + 1));
                if let Some(&p) = producer.get(inputs[i].as_str()) {
                    match state[p] {
                        0 => {
                            state[p] = 1;
                            stack.push((p, 0));
                        }
                        1 => return Err(format!("the ONNX graph has a cycle through node \"{}\"", g.node[p].name)),
                        _ => {}
                    }
                }
            } else {
                state[n] = 2;
                order.push(&g.node[n]);
            }
        }
    }
    Ok(order)
}

fn input_type(vi: &super::proto::ValueInfoProto, opts: &ImportOptions) -> Result<TensorType, String> {
    let tt = vi
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| format!("input \"{}\" is not a tensor", vi.name))?;
    let st = scalar_type(tt.elem_type)
        .ok_or_else(|| format!("input \"{}\" has ONNX data type {}, which qc does not support", vi.name, tt.elem_type))?;
    if let Some((_, dims)) = opts.input_shapes.iter().find(|(n, _)| *n == vi.name) {
        return Ok(TensorType { dims: dims.clone(), elem: st.into() });
    }
    let shape = tt
        .shape
        .as_ref()
        .ok_or_else(|| format!("input \"{}\" has no shape; give one with --input-shape {}=DIMS", vi.name, vi.name))?;
    let mut dims = Vec::new();
    for (i, d) in shape.dim.iter().enumerate() {
        dims.push(match (d.dim_value, &d.dim_param) {
            (Some(v), _) if v > 0 => Dim::Fixed(v as u64),
            _ if i == 0 => Dim::Dynamic,
            (_, p) => {
                return Err(format!(
                    "dim {i} of input \"{}\" is symbolic ({}); fix it with --input-shape {}=DIMS",
                    vi.name,
                    p.as_deref().unwrap_or("unnamed"),
                    vi.name
                ));
            }
        });
    }
    Ok(TensorType { dims, elem: st.into() })
}

/// Imports a decoded ONNX model as a graph called `name`.
pub fn import(model: &ModelProto, name: &str, opts: &ImportOptions) -> Result<Graph, String> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or("the model declares no opset for the default ONNX domain")?;
    if !OPSETS.contains(&opset) {
        return Err(format!("opset {opset} is not supported (qc reads opsets {} to {})", OPSETS.start(), OPSETS.end()));
    }
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let mut im = Importer {
        g: Graph::new(sanitize(name)),
        opset,
        vals: HashMap::new(),
        consts: HashMap::new(),
        unsupported: BTreeMap::new(),
        errors: Vec::new(),
    };
    for init in &graph.initializer {
        let t = decode(init)?;
        // Weights must be numbers (a constant node may still hold ±inf, e.g. a clip bound).
        if matches!(t, Tensor::F32(_) | Tensor::F16(_))
            && let Some(bad) = t.to_f64_vec().into_iter().find(|v| !v.is_finite())
        {
            return Err(format!("initializer \"{}\" contains {bad}; weights must be finite", init.name));
        }
        im.vals.insert(init.name.clone(), Val::Const(Arc::new(t)));
    }
    let inits: HashSet<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    for vi in graph.input.iter().filter(|vi| !inits.contains(vi.name.as_str())) {
        let ty = input_type(vi, opts)?;
        let v = im.g.add_param(Some(im.g.unique_name(&sanitize(&vi.name))), ty);
        im.vals.insert(vi.name.clone(), Val::Value(v));
    }
    for (n, _) in &opts.input_shapes {
        if !graph.input.iter().any(|vi| vi.name == *n) {
            let names: Vec<&str> =
                graph.input.iter().filter(|vi| !inits.contains(vi.name.as_str())).map(|vi| vi.name.as_str()).collect();
            return Err(format!("--input-shape names \"{n}\", but the model's inputs are {}", names.join(", ")));
        }
    }
    for (i, node) in topo_nodes(graph)?.into_iter().enumerate() {
        let label = if node.name.is_empty() { format!("{}_{i}", node.op_type) } else { node.name.clone() };
        let mut inputs = Vec::with_capacity(node.input.len());
        let mut skip = false;
        for inp in &node.input {
            if inp.is_empty() {
                inputs.push(None);
                continue;
            }
            match im.vals.get(inp) {
                None => {
                    im.errors.push(format!(
                        "node \"{label}\" ({}) reads \"{inp}\", which no node, input or initializer defines",
                        node.op_type
                    ));
                    skip = true;
                }
                Some(Val::Missing) => skip = true,
                Some(Val::Unavailable(why)) => {
                    im.errors.push(format!("node \"{label}\" ({}) reads \"{inp}\": {why}", node.op_type));
                    skip = true;
                }
                Some(v) => inputs.push(Some(v.clone())),
            }
        }
        let foreign = !node.domain.is_empty() && node.domain != "ai.onnx";
        let outputs: Vec<Val> = if skip {
            // Still report an op qc could not import even if its inputs failed.
            if foreign || !SUPPORTED_OPS.contains(&node.op_type.as_str()) {
                let op = if foreign { format!("{}::{}", node.domain, node.op_type) } else { node.op_type.clone() };
                im.unsupported.entry(op).or_default().push(label.clone());
            }
            vec![Val::Missing; node.output.len()]
        } else if !node.domain.is_empty() && node.domain != "ai.onnx" {
            im.unsupported.entry(format!("{}::{}", node.domain, node.op_type)).or_default().push(label.clone());
            vec![Val::Missing; node.output.len()]
        } else {
            let ctx = Ctx { node, loc: Loc::named(label.clone()), inputs, bad_attrs: Default::default() };
            let result = im.translate(&ctx);
            let bad = ctx.bad_attrs.borrow().clone();
            let result = if bad.is_empty() { result } else { Err(Fail::Error(bad.join("; "))) };
            match result {
                Ok(outs) => outs,
                Err(Fail::Unsupported(what)) => {
                    im.unsupported.entry(what).or_default().push(label.clone());
                    vec![Val::Missing; node.output.len()]
                }
                Err(Fail::Error(msg)) => {
                    im.errors.push(format!("node \"{label}\" ({}): {msg}", node.op_type));
                    vec![Val::Missing; node.output.len()]
                }
            }
        };
        for (name, val) in node.output.iter().zip(outputs) {
            if name.is_empty() {
                continue;
            }
            if let Val::Value(v) = val
                && im.g.value(v).name.is_none()
            {
                let n = im.g.unique_name(&sanitize(name));
                im.g.value_mut(v).name = Some(n);
            }
            im.vals.insert(name.clone(), val);
        }
    }
    if !im.unsupported.is_empty() {
        let list: Vec<String> = im
            .unsupported
            .iter()
            .map(|(op, nodes)| {
                let shown: Vec<&str> = nodes.iter().take(5).map(String::as_str).collect();
                let more = if nodes.len() > 5 { ", ..." } else { "" };
                format!("  {op} × {}: {}{more}", nodes.len(), shown.join(", "))
            })
            .collect();
        return Err(format!("the model uses ONNX ops qc cannot import:\n{}", list.join("\n")));
    }
    if !im.errors.is_empty() {
        return Err(im.errors.join("\n"));
    }
    let mut outs = Vec::new();
    for o in &graph.output {
        match im.vals.get(&o.name).cloned() {
            Some(Val::Value(v)) => {
                // An output renamed by an Identity (as `qc export` writes) takes its ONNX name,
                // when no other value has it.
                let name = sanitize(&o.name);
                if im.g.value(v).name.as_deref() != Some(name.as_str()) && im.g.unique_name(&name) == name {
                    im.g.value_mut(v).name = Some(name);
                }
                outs.push(v)
            }
            Some(Val::Const(t)) => outs.push(im.materialize(&o.name, &t, None)),
            _ => return Err(format!("graph output \"{}\" is not computed", o.name)),
        }
    }
    im.g.set_outputs(outs);
    qc_ir::verify::verify(&im.g, qc_ir::verify::VerifyOptions { check_weights: true }).map_err(|d| {
        let msgs: Vec<String> = d.iter().map(|d| d.message.clone()).collect();
        format!("the imported graph does not verify (a bug in qc's importer):\n{}", msgs.join("\n"))
    })?;
    Ok(im.g)
}
