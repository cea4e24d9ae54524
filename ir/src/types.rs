//! Tensor types, including quantized element types.
//!
//! Quantization lives in the type: `real = scale * (q - zero_point)`, per tensor
//! (`!q<i8, 0.0472, -3>`) or per axis (`!q<i8:axis0, [0.011, 0.009], 0>`).

use std::fmt;

/// A scalar element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 64-bit signed integer (shapes, indices, axes).
    I64,
    /// 32-bit signed integer (accumulators, biases).
    I32,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// Boolean.
    Bool,
    /// 4-bit signed integer, stored one per byte in memory.
    I4,
}

impl ScalarType {
    /// Every scalar type, in the order the syntax reference lists them.
    pub const ALL: [ScalarType; 8] = [
        ScalarType::F32,
        ScalarType::F16,
        ScalarType::I64,
        ScalarType::I32,
        ScalarType::I8,
        ScalarType::U8,
        ScalarType::Bool,
        ScalarType::I4,
    ];

    /// The QIR spelling.
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::F32 => "f32",
            ScalarType::F16 => "f16",
            ScalarType::I64 => "i64",
            ScalarType::I32 => "i32",
            ScalarType::I8 => "i8",
            ScalarType::U8 => "u8",
            ScalarType::Bool => "bool",
            ScalarType::I4 => "i4",
        }
    }

    /// Parses the QIR spelling.
    pub fn from_name(s: &str) -> Option<ScalarType> {
        ScalarType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, ScalarType::F32 | ScalarType::F16)
    }

    /// The representable range of an integer type that can hold quantized values.
    pub fn quant_range(self) -> Option<(i32, i32)> {
        match self {
            ScalarType::I8 => Some((-128, 127)),
            ScalarType::U8 => Some((0, 255)),
            ScalarType::I4 => Some((-8, 7)),
            ScalarType::I32 => Some((i32::MIN, i32::MAX)),
            _ => None,
        }
    }
}

impl fmt::Display for ScalarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Quantization parameters of a quantized element type: `real = scale * (q - zero_point)`.
#[derive(Clone, Debug)]
pub struct QuantParams {
    /// The integer type that stores `q` (i8, u8, i4 or i32).
    pub storage: ScalarType,
    /// `None` for per-tensor parameters, else the axis the parameters vary along.
    pub axis: Option<usize>,
    /// One scale per tensor, or one per index along `axis`.
    pub scales: Vec<f32>,
    /// As many zero points as scales.
    pub zero_points: Vec<i32>,
}

impl PartialEq for QuantParams {
    fn eq(&self, other: &Self) -> bool {
        self.storage == other.storage
            && self.axis == other.axis
            && self.zero_points == other.zero_points
            && self.scales.len() == other.scales.len()
            && self.scales.iter().zip(&other.scales).all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl QuantParams {
    /// Per-tensor parameters.
    pub fn per_tensor(storage: ScalarType, scale: f32, zero_point: i32) -> QuantParams {
        QuantParams { storage, axis: None, scales: vec![scale], zero_points: vec![zero_point] }
    }

    /// Scale and zero point at `index` along the quantization axis (any index when per tensor).
    pub fn at(&self, index: usize) -> (f32, i32) {
        match self.axis {
            None => (self.scales[0], self.zero_points[0]),
            Some(_) => (self.scales[index], self.zero_points[index]),
        }
    }
}

/// An element type: a plain scalar or a quantized integer.
#[derive(Clone, Debug, PartialEq)]
pub enum ElemType {
    /// A plain scalar.
    Scalar(ScalarType),
    /// A quantized integer with its parameters.
    Quant(QuantParams),
}

impl ElemType {
    /// The scalar type that stores elements of this type.
    pub fn storage(&self) -> ScalarType {
        match self {
            ElemType::Scalar(s) => *s,
            ElemType::Quant(q) => q.storage,
        }
    }

    /// Whether this is plain `f32`.
    pub fn is_f32(&self) -> bool {
        *self == ElemType::Scalar(ScalarType::F32)
    }

    /// The quantization parameters, if quantized.
    pub fn quant(&self) -> Option<&QuantParams> {
        match self {
            ElemType::Quant(q) => Some(q),
            ElemType::Scalar(_) => None,
        }
    }
}

impl From<ScalarType> for ElemType {
    fn from(s: ScalarType) -> Self {
        ElemType::Scalar(s)
    }
}

/// One dimension of a tensor shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size known at compile time.
    Fixed(u64),
    /// A size known only at run time (the batch dimension), printed `?`.
    Dynamic,
}

impl Dim {
    /// The size, if fixed.
    pub fn fixed(self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Dynamic => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Dynamic => f.write_str("?"),
        }
    }
}

/// The type of a tensor value: its shape and element type.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    /// The shape, outermost first (NCHW for activations, OIHW for conv weights).
    pub dims: Vec<Dim>,
    /// The element type.
    pub elem: ElemType,
}

/// The largest element count a tensor type may declare (2^40), so that byte sizes never overflow.
pub const MAX_ELEMENTS: u64 = 1 << 40;

impl TensorType {
    /// A tensor type with fixed dims.
    pub fn new(dims: &[u64], elem: impl Into<ElemType>) -> TensorType {
        TensorType { dims: dims.iter().map(|&d| Dim::Fixed(d)).collect(), elem: elem.into() }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The fixed dims, or `None` when any dim is dynamic.
    pub fn fixed_dims(&self) -> Option<Vec<usize>> {
        self.dims.iter().map(|d| d.fixed().map(|n| n as usize)).collect()
    }

    /// The number of elements, or `None` when a dim is dynamic or the count exceeds [`MAX_ELEMENTS`].
    pub fn num_elements(&self) -> Option<u64> {
        let mut n: u64 = 1;
        for d in &self.dims {
            n = n.checked_mul(d.fixed()?)?;
        }
        (n <= MAX_ELEMENTS).then_some(n)
    }

    /// The same shape with another element type.
    pub fn with_elem(&self, elem: impl Into<ElemType>) -> TensorType {
        TensorType { dims: self.dims.clone(), elem: elem.into() }
    }
}

/// Formats an f32 so that it reads back bit-exact (Rust's shortest round-trip form).
pub fn format_f32(x: f32) -> String {
    if x.is_nan() { "nan".to_string() } else { format!("{x:?}") }
}

impl fmt::Display for QuantParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "!q<{}", self.storage)?;
        match self.axis {
            None => write!(f, ", {}, {}>", format_f32(self.scales[0]), self.zero_points[0]),
            Some(axis) => {
                write!(f, ":axis{axis}, [")?;
                for (i, s) in self.scales.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(&format_f32(*s))?;
                }
                f.write_str("], ")?;
                let first = self.zero_points.first().copied().unwrap_or(0);
                if self.zero_points.iter().all(|&z| z == first) {
                    write!(f, "{first}>")
                } else {
                    f.write_str("[")?;
                    for (i, z) in self.zero_points.iter().enumerate() {
                        if i > 0 {
                            f.write_str(", ")?;
                        }
                        write!(f, "{z}")?;
                    }
                    f.write_str("]>")
                }
            }
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemType::Scalar(s) => write!(f, "{s}"),
            ElemType::Quant(q) => write!(f, "{q}"),
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.elem)
    }
}
