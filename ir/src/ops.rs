//! The op set. Each op declares here, in one place, its QIR name, arity, attributes and a one
//! line doc; its shape and type rule is in [`crate::infer`], its meaning in [`crate::eval`].

use crate::attr::AttrKind;
use std::fmt;

/// One attribute an op accepts.
#[derive(Clone, Copy, Debug)]
pub struct AttrSpec {
    /// The attribute's name.
    pub name: &'static str,
    /// Its kind.
    pub kind: AttrKind,
    /// Whether it must be present.
    pub required: bool,
}

const fn opt(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec { name, kind, required: false }
}

const fn req(name: &'static str, kind: AttrKind) -> AttrSpec {
    AttrSpec { name, kind, required: true }
}

use AttrKind::{Bool, Float, Floats, Int, Ints, Str};

/// Attributes of an activation fused into conv/gemm/matmul by `fuse-activation`:
/// `activation = "relu"` or `activation = "clip", clip_min = 0.0, clip_max = 6.0`.
const FUSED: [AttrSpec; 4] = [opt("activation", Str), opt("clip_min", Float), opt("clip_max", Float), opt("requant", Str)];

const CONV_ATTRS: [AttrSpec; 8] =
    [opt("strides", Ints), opt("pads", Ints), opt("dilations", Ints), opt("groups", Int), FUSED[0], FUSED[1], FUSED[2], FUSED[3]];

const CONV_T_ATTRS: [AttrSpec; 5] =
    [opt("strides", Ints), opt("pads", Ints), opt("dilations", Ints), opt("groups", Int), opt("output_padding", Ints)];

const GEMM_ATTRS: [AttrSpec; 8] =
    [opt("trans_a", Bool), opt("trans_b", Bool), opt("alpha", Float), opt("beta", Float), FUSED[0], FUSED[1], FUSED[2], FUSED[3]];

macro_rules! ops {
    ($( $variant:ident = $name:literal, operands $min:literal ..= $max:expr, attrs $attrs:expr, $doc:literal; )*) => {
        /// An op kind.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OpKind {
            $( #[doc = $doc] $variant, )*
        }

        impl OpKind {
            /// Every op kind.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$variant),*];

            /// The QIR name.
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$variant => $name,)* }
            }

            /// The number of operands: (min, max).
            pub fn arity(self) -> (usize, usize) {
                match self { $(OpKind::$variant => ($min, $max),)* }
            }

            /// The attributes this op accepts.
            pub fn attrs(self) -> &'static [AttrSpec] {
                match self { $(OpKind::$variant => { const A: &[AttrSpec] = &$attrs; A },)* }
            }

            /// One line of documentation.
            pub fn doc(self) -> &'static str {
                match self { $(OpKind::$variant => $doc,)* }
            }
        }
    };
}

ops! {
    Const = "const", operands 0 ..= 0, attrs [], "a tensor from the weights file (`@\"name\"`) or inline (`dense<[...]>`)";
    Conv2d = "conv2d", operands 2 ..= 3, attrs CONV_ATTRS, "2-D convolution NCHW x OIHW (+ bias), with groups, strides, pads [t, l, b, r], dilations";
    ConvTranspose2d = "conv_transpose2d", operands 2 ..= 3, attrs CONV_T_ATTRS, "2-D transposed convolution, weight [C_in, C_out/groups, kH, kW]";
    MatMul = "matmul", operands 2 ..= 2, attrs FUSED, "matrix product with numpy broadcasting of batch dims";
    Gemm = "gemm", operands 2 ..= 3, attrs GEMM_ATTRS, "alpha * op(A) op(B) + beta * C on 2-D operands";
    Add = "add", operands 2 ..= 2, attrs [FUSED[0], FUSED[1], FUSED[2]], "elementwise a + b with numpy broadcasting (and a fused activation)";
    Sub = "sub", operands 2 ..= 2, attrs [], "elementwise a - b with numpy broadcasting";
    Mul = "mul", operands 2 ..= 2, attrs [], "elementwise a * b with numpy broadcasting";
    Div = "div", operands 2 ..= 2, attrs [], "elementwise a / b with numpy broadcasting";
    Relu = "relu", operands 1 ..= 1, attrs [], "max(x, 0)";
    Clip = "clip", operands 1 ..= 1, attrs [opt("min", Float), opt("max", Float)], "min(max(x, min), max); absent bounds are unbounded";
    Sigmoid = "sigmoid", operands 1 ..= 1, attrs [], "1 / (1 + exp(-x))";
    HardSigmoid = "hard_sigmoid", operands 1 ..= 1, attrs [opt("alpha", Float), opt("beta", Float)], "max(0, min(1, alpha * x + beta)), alpha 0.2 and beta 0.5 by default";
    HardSwish = "hard_swish", operands 1 ..= 1, attrs [], "x * max(0, min(1, x / 6 + 0.5))";
    BatchNorm = "batch_norm", operands 5 ..= 5, attrs [opt("epsilon", Float)], "inference batch norm (x, scale, bias, mean, var) over axis 1, epsilon 1e-5 by default";
    MaxPool = "max_pool", operands 1 ..= 1, attrs [req("kernel_shape", Ints), opt("strides", Ints), opt("pads", Ints), opt("dilations", Ints), opt("ceil_mode", Bool)], "2-D max pooling";
    AvgPool = "avg_pool", operands 1 ..= 1, attrs [req("kernel_shape", Ints), opt("strides", Ints), opt("pads", Ints), opt("ceil_mode", Bool), opt("count_include_pad", Bool), opt("requant", Str)], "2-D average pooling";
    GlobalAvgPool = "global_avg_pool", operands 1 ..= 1, attrs [opt("requant", Str)], "mean over the spatial dims, keeping them as 1";
    ReduceMean = "reduce_mean", operands 1 ..= 1, attrs [opt("axes", Ints), opt("keepdims", Bool), opt("requant", Str)], "mean over `axes` (all when absent), keepdims true by default";
    Flatten = "flatten", operands 1 ..= 1, attrs [opt("axis", Int)], "reshape to 2-D [prod(dims[..axis]), prod(dims[axis..])], axis 1 by default";
    Reshape = "reshape", operands 1 ..= 2, attrs [opt("shape", Ints), opt("allowzero", Bool)], "reshape to `shape` (attribute or i64 operand; 0 copies a dim unless allowzero, -1 is inferred)";
    Transpose = "transpose", operands 1 ..= 1, attrs [opt("perm", Ints)], "permute dims (reversed when perm is absent)";
    Concat = "concat", operands 1 ..= usize::MAX, attrs [req("axis", Int)], "concatenate along `axis`";
    Slice = "slice", operands 1 ..= 1, attrs [req("starts", Ints), req("ends", Ints), opt("axes", Ints), opt("steps", Ints)], "ONNX Slice with clamped starts and ends";
    Pad = "pad", operands 1 ..= 1, attrs [req("pads", Ints), opt("mode", Str), opt("value", Float)], "pad with [begin..., end...] per dim; mode constant, reflect or edge";
    Resize = "resize", operands 1 ..= 1, attrs [opt("mode", Str), opt("coordinate_transformation_mode", Str), opt("nearest_mode", Str), opt("scales", Floats), opt("sizes", Ints)], "resize NCHW spatially, mode nearest or linear";
    Softmax = "softmax", operands 1 ..= 1, attrs [opt("axis", Int)], "softmax along `axis`, -1 by default";
    Quantize = "quantize", operands 1 ..= 1, attrs [], "f32 to the quantized result type: clamp(round_half_even(x / scale) + zp)";
    Stats = "stats", operands 1 ..= 1, attrs [req("min", Float), req("max", Float)], "identity that records the calibrated range [min, max] of its operand (set by calibrate, read by insert-qdq)";
    Requantize = "requantize", operands 1 ..= 1, attrs [], "quantized operand to the result's quantization parameters: clamp(rne(f32(q - zp_in) * f32(s_in / s_out)) + zp_out)";
    Dequantize = "dequantize", operands 1 ..= 1, attrs [], "quantized operand to f32: scale * (q - zp)";
    Shape = "shape", operands 1 ..= 1, attrs [], "the operand's shape as an i64 vector";
    Gather = "gather", operands 2 ..= 2, attrs [opt("axis", Int)], "ONNX Gather: take `indices` (i64) along `axis`";
    DynamicQuantize = "dynamic_quantize", operands 1 ..= 1, attrs [], "f32 to (u8 data, f32 scale, u8 zero point), the parameters computed per call over the whole tensor (ONNX DynamicQuantizeLinear)";
    MatMulInteger = "matmul_integer", operands 2 ..= 4, attrs [], "(a - a_zp)(b - b_zp) on plain 8-bit integers, accumulated in i32 (ONNX MatMulInteger)";
    ConvInteger = "conv_integer", operands 2 ..= 4, attrs [opt("strides", Ints), opt("pads", Ints), opt("dilations", Ints), opt("groups", Int)], "2-D convolution (x - x_zp) * (w - w_zp) on plain 8-bit integers, accumulated in i32 (ONNX ConvInteger)";
    Cast = "cast", operands 1 ..= 1, attrs [req("to", Str)], "convert elements to the scalar type named by `to`";
    Squeeze = "squeeze", operands 1 ..= 1, attrs [opt("axes", Ints)], "remove size-1 dims (`axes`, or all)";
    Unsqueeze = "unsqueeze", operands 1 ..= 1, attrs [req("axes", Ints)], "insert size-1 dims at `axes` of the result";
    LayerNorm = "layer_norm", operands 2 ..= 3, attrs [opt("axis", Int), opt("epsilon", Float)], "(x − mean) / sqrt(var + epsilon) · scale + bias over the dims from `axis` (−1 by default) on; epsilon 1e-5 by default";
    Gelu = "gelu", operands 1 ..= 1, attrs [opt("approximate", Str)], "x · Φ(x): `x / 2 · (1 + erf(x / √2))`, or with `approximate = \"tanh\"` `x / 2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`";
    Erf = "erf", operands 1 ..= 1, attrs [], "the error function";
    Tanh = "tanh", operands 1 ..= 1, attrs [], "hyperbolic tangent";
    Sqrt = "sqrt", operands 1 ..= 1, attrs [], "square root";
    Exp = "exp", operands 1 ..= 1, attrs [], "e to the x";
    Neg = "neg", operands 1 ..= 1, attrs [], "−x";
    Pow = "pow", operands 2 ..= 2, attrs [], "elementwise a to the power b with numpy broadcasting";
    Where = "where", operands 3 ..= 3, attrs [], "elementwise `cond ? a : b` (cond bool) with numpy broadcasting of all three";
    Equal = "equal", operands 2 ..= 2, attrs [], "elementwise a == b, bool, with numpy broadcasting";
    Less = "less", operands 2 ..= 2, attrs [], "elementwise a < b, bool, with numpy broadcasting";
    LessOrEqual = "less_or_equal", operands 2 ..= 2, attrs [], "elementwise a <= b, bool, with numpy broadcasting";
    Greater = "greater", operands 2 ..= 2, attrs [], "elementwise a > b, bool, with numpy broadcasting";
    GreaterOrEqual = "greater_or_equal", operands 2 ..= 2, attrs [], "elementwise a >= b, bool, with numpy broadcasting";
    And = "and", operands 2 ..= 2, attrs [], "elementwise logical and of bools with numpy broadcasting";
    Or = "or", operands 2 ..= 2, attrs [], "elementwise logical or of bools with numpy broadcasting";
    Not = "not", operands 1 ..= 1, attrs [], "elementwise logical not of bools";
    Expand = "expand", operands 1 ..= 1, attrs [req("shape", Ints)], "broadcast to `shape` (numpy rules; either side may be the larger in a dim)";
    ReduceSum = "reduce_sum", operands 1 ..= 1, attrs [opt("axes", Ints), opt("keepdims", Bool)], "sum over `axes` (all when absent), keepdims true by default";
    ReduceMax = "reduce_max", operands 1 ..= 1, attrs [opt("axes", Ints), opt("keepdims", Bool)], "maximum over `axes` (all when absent), keepdims true by default";
    ReduceMin = "reduce_min", operands 1 ..= 1, attrs [opt("axes", Ints), opt("keepdims", Bool)], "minimum over `axes` (all when absent), keepdims true by default";
}

impl OpKind {
    /// The op called `name`.
    pub fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The spec of attribute `name`, if this op accepts it.
    pub fn attr_spec(self, name: &str) -> Option<&'static AttrSpec> {
        self.attrs().iter().find(|a| a.name == name)
    }

    /// How many results the op has.
    pub fn num_results(self) -> usize {
        match self {
            OpKind::DynamicQuantize => 3,
            _ => 1,
        }
    }

    /// Whether the op computes elementwise on one operand (so it commutes with layout changes).
    pub fn is_unary_elementwise(self) -> bool {
        matches!(self, OpKind::Relu | OpKind::Clip | OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish)
    }

    /// Whether the op accepts a fused activation (`activation = ...`).
    pub fn accepts_fused_activation(self) -> bool {
        matches!(self, OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul | OpKind::Add)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
