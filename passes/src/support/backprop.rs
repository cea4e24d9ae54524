//! Reverse-mode gradients of an f32 graph with respect to its layers' constant weights and
//! biases, for [`crate::distill`].
//!
//! [`Net::new`] reads the graph into a list of steps over value slots; the layers' weight and
//! bias constants become [`Param`]s. [`Net::forward`] keeps what the backward pass needs (each
//! step's output, the im2col patches of every conv, the max-pool winners), and [`Net::backward`]
//! turns the gradient of the loss with respect to the output into one gradient per parameter.
//! Convolutions are im2col + matrix products per group.
//!
//! The ops: conv2d (any groups, strides, pads, dilations), gemm (`trans_b`, alpha and beta 1),
//! 2-D matmul by a constant, batch norm (inference: a fixed per-channel affine map), relu and a
//! fused relu, add (of two values of one shape, or of a value and a constant), max pooling,
//! mean over the spatial dims (`reduce_mean` over H and W, `global_avg_pool`), reshape and
//! flatten that keep the batch axis. Anything else is an error naming the op.

use crate::rewrite::const_value;
use ndarray::{Array2, ArrayD, Axis, IxDyn};
use qc_ir::{Graph, NodeId, OpKind, ValueId};
use std::collections::HashMap;

/// A trainable constant: a layer's weight or bias.
pub(crate) struct Param {
    /// The constant's value in the graph.
    pub value: ValueId,
    pub data: ArrayD<f32>,
}

/// Conv geometry: kernel, strides, pads `[t, l, b, r]`, dilations.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    k: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 4],
    dil: [usize; 2],
}

impl Window {
    /// The geometry of conv `n` of `g` with a `k` kernel.
    pub(crate) fn of(g: &Graph, n: NodeId, k: [usize; 2]) -> Window {
        let a = &g.node(n).attrs;
        let ints = |key: &str, len: usize, d: usize| -> Vec<usize> {
            a.ints(key).map(|v| v.iter().map(|&x| x.max(0) as usize).collect()).unwrap_or_else(|| vec![d; len])
        };
        let (s, p, d) = (ints("strides", 2, 1), ints("pads", 4, 0), ints("dilations", 2, 1));
        Window { k, stride: [s[0], s[1]], pad: [p[0], p[1], p[2], p[3]], dil: [d[0], d[1]] }
    }

    /// Output height and width for an `h × w` input.
    pub(crate) fn out(&self, h: usize, w: usize) -> [usize; 2] {
        let o =
            |i: usize, len: usize| (len + self.pad[i] + self.pad[i + 2] - self.dil[i] * (self.k[i] - 1) - 1) / self.stride[i] + 1;
        [o(0, h), o(1, w)]
    }

    /// Taps per channel.
    pub(crate) fn taps(&self) -> usize {
        self.k[0] * self.k[1]
    }

    /// The input coordinate of tap `k` for output `o` along dim `i`, if inside.
    fn at(&self, i: usize, o: usize, k: usize, len: usize) -> Option<usize> {
        let pos = (o * self.stride[i] + k * self.dil[i]) as isize - self.pad[i] as isize;
        (pos >= 0 && (pos as usize) < len).then_some(pos as usize)
    }
}

enum Op {
    Conv {
        w: usize,
        b: Option<usize>,
        groups: usize,
        win: Window,
        relu: bool,
    },
    /// `y = x·wᵀ` (`trans_b`) or `x·w`, plus the bias.
    Gemm {
        w: usize,
        b: Option<usize>,
        trans_b: bool,
        relu: bool,
    },
    Affine {
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    Relu,
    /// `a + b`, or `a + constant`.
    Add {
        constant: Option<ArrayD<f32>>,
        relu: bool,
    },
    MaxPool {
        win: Window,
    },
    SpatialMean {
        keep: bool,
    },
    Reshape {
        dims: Vec<usize>,
    },
}

struct Step {
    op: Op,
    inputs: Vec<usize>,
    out: usize,
}

/// A graph read for training its layers' weights and biases.
pub(crate) struct Net {
    steps: Vec<Step>,
    pub params: Vec<Param>,
    slots: usize,
    input: usize,
    /// The output's slot.
    pub output: usize,
}

/// What a forward pass leaves for the backward pass.
pub(crate) struct Tape {
    values: Vec<Option<ArrayD<f32>>>,
    /// Per step: conv patches (per group), or max-pool winners.
    patches: Vec<Vec<Array2<f32>>>,
    winners: Vec<Vec<usize>>,
}

impl Tape {
    /// The model's output.
    pub fn output<'a>(&'a self, net: &Net) -> &'a ArrayD<f32> {
        self.values[net.output].as_ref().expect("computed")
    }
}

fn fused_relu(g: &Graph, n: NodeId) -> Result<bool, String> {
    match g.node(n).attrs.str("activation") {
        None => Ok(false),
        Some("relu") => Ok(true),
        Some(other) => Err(format!("a fused {other} activation")),
    }
}

fn f32_const(g: &Graph, v: ValueId) -> Option<ArrayD<f32>> {
    const_value(g, v).and_then(|t| t.as_f32().cloned())
}

impl Net {
    /// Reads `g` (one input, one f32 output).
    pub fn new(g: &Graph) -> Result<Net, String> {
        if g.params().len() != 1 || g.outputs().len() != 1 {
            return Err("distillation needs a model with one input and one output".into());
        }
        let mut slot: HashMap<ValueId, usize> = HashMap::new();
        slot.insert(g.params()[0], 0);
        let mut params: Vec<Param> = Vec::new();
        let mut param_of: HashMap<ValueId, usize> = HashMap::new();
        let mut steps = Vec::new();
        let order = g.topo_order().map_err(|_| "the graph has a cycle")?;
        for n in order {
            let node = g.node(n);
            if node.kind == OpKind::Const {
                continue;
            }
            let what = || format!("{} = {}", g.display_value(node.results[0]), node.kind);
            let mut param = |v: ValueId| -> Result<usize, String> {
                if let Some(&i) = param_of.get(&v) {
                    return Ok(i);
                }
                let data = f32_const(g, v).ok_or_else(|| format!("{}: a weight that is not an f32 constant", what()))?;
                params.push(Param { value: v, data });
                param_of.insert(v, params.len() - 1);
                Ok(params.len() - 1)
            };
            let op = match node.kind {
                OpKind::Conv2d => {
                    let w = param(node.operands[1])?;
                    let b = node.operands.get(2).map(|&b| param(b)).transpose()?;
                    let s = g.ty(node.operands[1]).fixed_dims().unwrap_or_default();
                    if s.len() != 4 {
                        return Err(format!("{}: a weight of rank {}", what(), s.len()));
                    }
                    let groups = node.attrs.int("groups", 1).max(1) as usize;
                    Op::Conv { w, b, groups, win: Window::of(g, n, [s[2], s[3]]), relu: fused_relu(g, n)? }
                }
                OpKind::Gemm | OpKind::MatMul => {
                    let a = &node.attrs;
                    if a.bool("trans_a", false) || a.float("alpha", 1.0) != 1.0 || a.float("beta", 1.0) != 1.0 {
                        return Err(format!("{}: trans_a, alpha or beta", what()));
                    }
                    let w = param(node.operands[1])?;
                    if g.ty(node.operands[1]).rank() != 2 || g.ty(node.operands[0]).rank() != 2 {
                        return Err(format!("{}: only 2-D products", what()));
                    }
                    let b = node.operands.get(2).map(|&b| param(b)).transpose()?;
                    Op::Gemm { w, b, trans_b: a.bool("trans_b", false), relu: fused_relu(g, n)? }
                }
                OpKind::BatchNorm => {
                    let get = |i: usize| {
                        f32_const(g, node.operands[i])
                            .map(|a| a.iter().copied().collect::<Vec<f32>>())
                            .ok_or_else(|| format!("{}: a parameter that is not an f32 constant", what()))
                    };
                    let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
                    let eps = node.attrs.float("epsilon", 1e-5);
                    let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
                    let shift = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
                    Op::Affine { scale, shift }
                }
                OpKind::Relu => Op::Relu,
                OpKind::Add => {
                    let relu = fused_relu(g, n)?;
                    let consts: Vec<Option<ArrayD<f32>>> = node.operands.iter().map(|&v| f32_const(g, v)).collect();
                    match (&consts[0], &consts[1]) {
                        (None, None) => {
                            if g.ty(node.operands[0]).dims != g.ty(node.operands[1]).dims {
                                return Err(format!("{}: operands of different shapes", what()));
                            }
                            Op::Add { constant: None, relu }
                        }
                        (None, Some(c)) | (Some(c), None) => Op::Add { constant: Some(c.clone()), relu },
                        (Some(_), Some(_)) => return Err(format!("{}: constant operands", what())),
                    }
                }
                OpKind::MaxPool => {
                    let k = node.attrs.ints("kernel_shape").unwrap_or(&[1, 1]);
                    if node.attrs.bool("ceil_mode", false) || k.len() != 2 {
                        return Err(format!("{}: ceil_mode or a kernel that is not 2-D", what()));
                    }
                    Op::MaxPool { win: Window::of(g, n, [k[0] as usize, k[1] as usize]) }
                }
                OpKind::ReduceMean | OpKind::GlobalAvgPool => {
                    let rank = g.ty(node.operands[0]).rank() as i64;
                    let mut axes: Vec<i64> = node
                        .attrs
                        .ints("axes")
                        .map(|a| a.iter().map(|&x| if x < 0 { x + rank } else { x }).collect())
                        .unwrap_or_default();
                    axes.sort_unstable();
                    if node.kind == OpKind::ReduceMean && (rank != 4 || axes != [2, 3]) {
                        return Err(format!("{}: a mean over other than the spatial axes", what()));
                    }
                    Op::SpatialMean { keep: node.kind == OpKind::GlobalAvgPool || node.attrs.bool("keepdims", true) }
                }
                OpKind::Reshape | OpKind::Flatten => {
                    let dims = g
                        .ty(node.results[0])
                        .dims
                        .iter()
                        .skip(1)
                        .map(|d| d.fixed().map(|d| d as usize))
                        .collect::<Option<Vec<_>>>();
                    Op::Reshape { dims: dims.ok_or_else(|| format!("{}: a dynamic dim after the batch", what()))? }
                }
                _ => return Err(format!("{}: an op distillation cannot differentiate", what())),
            };
            let mut inputs = Vec::new();
            for &v in &node.operands {
                if let Some(&s) = slot.get(&v) {
                    inputs.push(s);
                }
            }
            let needed = match &op {
                Op::Add { constant: None, .. } => 2,
                _ => 1,
            };
            if inputs.len() != needed {
                return Err(format!("{}: an operand that is neither computed nor a known constant", what()));
            }
            let out = slot.len();
            slot.insert(node.results[0], out);
            steps.push(Step { op, inputs, out });
        }
        // A trained constant must not be read by anything but the layers that train it.
        for p in &params {
            for (user, i) in g.uses(p.value) {
                let k = g.node(user).kind;
                if !(matches!(k, OpKind::Conv2d | OpKind::Gemm | OpKind::MatMul) && i >= 1) {
                    return Err(format!("{} also feeds {k}", g.display_value(p.value)));
                }
            }
        }
        let output = *slot.get(&g.outputs()[0]).ok_or("the output is not computed")?;
        Ok(Net { steps, params, slots: slot.len(), input: 0, output })
    }

    /// Runs the net on `x`, keeping what [`Net::backward`] needs.
    pub fn forward(&self, x: ArrayD<f32>) -> Tape {
        let mut t = Tape {
            values: vec![None; self.slots],
            patches: (0..self.steps.len()).map(|_| Vec::new()).collect(),
            winners: vec![Vec::new(); self.steps.len()],
        };
        t.values[self.input] = Some(x.as_standard_layout().into_owned());
        for (i, s) in self.steps.iter().enumerate() {
            let x = t.values[s.inputs[0]].as_ref().expect("computed before use");
            let y = match &s.op {
                Op::Conv { w, b, groups, win, relu } => {
                    let (y, p) = conv(x, &self.params[*w].data, b.map(|b| &self.params[b].data), *groups, win, *relu);
                    t.patches[i] = p;
                    y
                }
                Op::Gemm { w, b, trans_b, relu } => {
                    let x2 = x.view().into_dimensionality::<ndarray::Ix2>().expect("2-D");
                    let w = self.params[*w].data.view().into_dimensionality::<ndarray::Ix2>().expect("2-D");
                    let mut y = if *trans_b { x2.dot(&w.t()) } else { x2.dot(&w) };
                    if let Some(b) = b {
                        let b = &self.params[*b].data;
                        let bv: Vec<f32> = b.iter().copied().collect();
                        for mut row in y.rows_mut() {
                            for (v, &bb) in row.iter_mut().zip(bv.iter().cycle()) {
                                *v += bb;
                            }
                        }
                    }
                    if *relu {
                        y.mapv_inplace(|v| v.max(0.0));
                    }
                    y.into_dyn()
                }
                Op::Affine { scale, shift } => {
                    let mut y = x.clone();
                    for (c, mut lane) in y.axis_iter_mut(Axis(1)).enumerate() {
                        lane.mapv_inplace(|v| v * scale[c] + shift[c]);
                    }
                    y
                }
                Op::Relu => x.mapv(|v| v.max(0.0)),
                Op::Add { constant, relu } => {
                    let mut y = match constant {
                        Some(c) => x + c,
                        None => x + t.values[s.inputs[1]].as_ref().expect("computed before use"),
                    };
                    if *relu {
                        y.mapv_inplace(|v| v.max(0.0));
                    }
                    y
                }
                Op::MaxPool { win } => {
                    let (y, w) = max_pool(x, win);
                    t.winners[i] = w;
                    y
                }
                Op::SpatialMean { keep } => {
                    let s = x.shape();
                    let m = x.mean_axis(Axis(3)).expect("nonempty").mean_axis(Axis(2)).expect("nonempty");
                    if *keep { m.into_shape_with_order(IxDyn(&[s[0], s[1], 1, 1])).expect("sized") } else { m }
                }
                Op::Reshape { dims } => {
                    let mut shape = vec![x.shape()[0]];
                    shape.extend(dims);
                    x.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&shape)).expect("same size")
                }
            };
            t.values[s.out] = Some(y);
        }
        t
    }

    /// The gradient of the loss with respect to every parameter, given its gradients with
    /// respect to some values: `seeds` of (slot, gradient), the output's among them.
    pub fn backward(&self, t: &Tape, seeds: Vec<(usize, ArrayD<f32>)>) -> Vec<ArrayD<f32>> {
        let mut grads: Vec<ArrayD<f32>> = self.params.iter().map(|p| ArrayD::zeros(p.data.raw_dim())).collect();
        let mut d: Vec<Option<ArrayD<f32>>> = vec![None; self.slots];
        let add = |d: &mut Vec<Option<ArrayD<f32>>>, s: usize, g: ArrayD<f32>| match &mut d[s] {
            Some(a) => *a += &g,
            slot => *slot = Some(g),
        };
        for (s, g) in seeds {
            add(&mut d, s, g);
        }
        for (i, s) in self.steps.iter().enumerate().rev() {
            let Some(mut dy) = d[s.out].take() else { continue };
            let y = t.values[s.out].as_ref().expect("computed");
            let x = t.values[s.inputs[0]].as_ref().expect("computed");
            let needs_dx = s.inputs[0] != self.input;
            match &s.op {
                Op::Conv { w, b, groups, win, relu } => {
                    if *relu {
                        mask(&mut dy, y);
                    }
                    let (dx, dw, db) =
                        conv_backward(x.shape(), &self.params[*w].data, &t.patches[i], &dy, *groups, win, needs_dx);
                    grads[*w] += &dw;
                    if let Some(b) = b {
                        let shape = grads[*b].raw_dim();
                        grads[*b] += &ArrayD::from_shape_vec(shape, db).expect("one per channel");
                    }
                    if let Some(dx) = dx {
                        add(&mut d, s.inputs[0], dx);
                    }
                }
                Op::Gemm { w, b, trans_b, relu } => {
                    if *relu {
                        mask(&mut dy, y);
                    }
                    let dy2 = dy.view().into_dimensionality::<ndarray::Ix2>().expect("2-D");
                    let x2 = x.view().into_dimensionality::<ndarray::Ix2>().expect("2-D");
                    let wv = self.params[*w].data.view().into_dimensionality::<ndarray::Ix2>().expect("2-D");
                    let dw = if *trans_b { dy2.t().dot(&x2) } else { x2.t().dot(&dy2) };
                    grads[*w] += &dw.into_dyn();
                    if let Some(b) = b {
                        let sums = dy2.sum_axis(Axis(0));
                        let gb = &mut grads[*b];
                        let n = gb.len();
                        for (j, v) in gb.iter_mut().enumerate() {
                            // A bias of one value broadcasts over every output.
                            *v += if n == 1 { sums.sum() } else { sums[j] };
                        }
                    }
                    if needs_dx {
                        let dx = if *trans_b { dy2.dot(&wv) } else { dy2.dot(&wv.t()) };
                        add(&mut d, s.inputs[0], dx.into_dyn());
                    }
                }
                Op::Affine { scale, .. } => {
                    for (c, mut lane) in dy.axis_iter_mut(Axis(1)).enumerate() {
                        lane.mapv_inplace(|v| v * scale[c]);
                    }
                    add(&mut d, s.inputs[0], dy);
                }
                Op::Relu => {
                    mask(&mut dy, y);
                    add(&mut d, s.inputs[0], dy);
                }
                Op::Add { constant, relu } => {
                    if *relu {
                        mask(&mut dy, y);
                    }
                    if constant.is_none() {
                        add(&mut d, s.inputs[1], dy.clone());
                    }
                    add(&mut d, s.inputs[0], dy);
                }
                Op::MaxPool { .. } => {
                    let mut dx = ArrayD::<f32>::zeros(x.raw_dim());
                    let dxs = dx.as_slice_mut().expect("standard");
                    for (&w, &g) in t.winners[i].iter().zip(dy.as_standard_layout().iter()) {
                        dxs[w] += g;
                    }
                    add(&mut d, s.inputs[0], dx);
                }
                Op::SpatialMean { .. } => {
                    let sh = x.shape();
                    let area = (sh[2] * sh[3]) as f32;
                    let mut dx = ArrayD::<f32>::zeros(x.raw_dim());
                    let planes = dx.as_slice_mut().expect("standard").chunks_mut(sh[2] * sh[3]);
                    for (plane, &g) in planes.zip(dy.as_standard_layout().iter()) {
                        plane.fill(g / area);
                    }
                    add(&mut d, s.inputs[0], dx);
                }
                Op::Reshape { .. } => {
                    let dx = dy.as_standard_layout().into_owned().into_shape_with_order(x.raw_dim()).expect("same size");
                    add(&mut d, s.inputs[0], dx);
                }
            }
        }
        grads
    }
}

/// Zeroes `dy` where the relu output `y` is not positive.
fn mask(dy: &mut ArrayD<f32>, y: &ArrayD<f32>) {
    ndarray::Zip::from(dy).and(y).for_each(|d, &y| {
        if y <= 0.0 {
            *d = 0.0;
        }
    });
}

/// Conv forward: NCHW `x`, OIHW `w`; the output and each group's patches
/// (`[n·oh·ow, ci·kh·kw]`).
fn conv(
    x: &ArrayD<f32>,
    w: &ArrayD<f32>,
    b: Option<&ArrayD<f32>>,
    groups: usize,
    win: &Window,
    relu: bool,
) -> (ArrayD<f32>, Vec<Array2<f32>>) {
    let s = x.shape();
    let (n, c, h, wd) = (s[0], s[1], s[2], s[3]);
    let ws = w.shape();
    let (o, ci) = (ws[0], ws[1]);
    let [oh, ow] = win.out(h, wd);
    let (og, k) = (o / groups, ci * win.k[0] * win.k[1]);
    let xs = x.as_slice().expect("standard");
    let mut y = vec![0f32; n * o * oh * ow];
    let mut all = Vec::with_capacity(groups);
    for grp in 0..groups {
        let mut p = Array2::<f32>::zeros((n * oh * ow, k));
        let ps = p.as_slice_mut().expect("standard");
        each_tap([n, c, h, wd], grp, ci, win, |row, col, at| ps[row * k + col] = xs[at]);
        let wg = w.slice_axis(Axis(0), ndarray::Slice::from(grp * og..(grp + 1) * og));
        let wg = wg.as_standard_layout();
        let wg = wg.view().into_shape_with_order((og, k)).expect("sized");
        let yg = p.dot(&wg.t());
        for ni in 0..n {
            for j in 0..og {
                let oc = grp * og + j;
                let bias = b.map_or(0.0, |b| b.as_slice().map_or(0.0, |b| b[oc]));
                for q in 0..oh * ow {
                    let v = yg[[ni * oh * ow + q, j]] + bias;
                    y[(ni * o + oc) * oh * ow + q] = if relu { v.max(0.0) } else { v };
                }
            }
        }
        all.push(p);
    }
    (ArrayD::from_shape_vec(IxDyn(&[n, o, oh, ow]), y).expect("sized"), all)
}

/// Conv backward: `(dx, dw, db)` from the output gradient and the forward patches.
fn conv_backward(
    xshape: &[usize],
    w: &ArrayD<f32>,
    patches: &[Array2<f32>],
    dy: &ArrayD<f32>,
    groups: usize,
    win: &Window,
    needs_dx: bool,
) -> (Option<ArrayD<f32>>, ArrayD<f32>, Vec<f32>) {
    let (n, c, h, wd) = (xshape[0], xshape[1], xshape[2], xshape[3]);
    let ws = w.shape();
    let (o, ci) = (ws[0], ws[1]);
    let (oh, ow) = (dy.shape()[2], dy.shape()[3]);
    let (og, k) = (o / groups, ci * win.k[0] * win.k[1]);
    let dys = dy.as_standard_layout();
    let dys = dys.as_slice().expect("standard");
    let mut dw = vec![0f32; o * k];
    let mut db = vec![0f32; o];
    let mut dx = needs_dx.then(|| vec![0f32; n * c * h * wd]);
    for grp in 0..groups {
        let mut dyg = Array2::<f32>::zeros((n * oh * ow, og));
        for ni in 0..n {
            for j in 0..og {
                let oc = grp * og + j;
                for q in 0..oh * ow {
                    let v = dys[(ni * o + oc) * oh * ow + q];
                    dyg[[ni * oh * ow + q, j]] = v;
                    db[oc] += v;
                }
            }
        }
        let dwg = dyg.t().dot(&patches[grp]);
        dw[grp * og * k..(grp + 1) * og * k].copy_from_slice(dwg.as_standard_layout().as_slice().expect("standard"));
        let Some(dx) = dx.as_mut() else { continue };
        let wg = w.slice_axis(Axis(0), ndarray::Slice::from(grp * og..(grp + 1) * og));
        let wg = wg.as_standard_layout();
        let wg = wg.view().into_shape_with_order((og, k)).expect("sized");
        let dp = dyg.dot(&wg);
        let dps = dp.as_slice().expect("standard");
        each_tap([n, c, h, wd], grp, ci, win, |row, col, at| dx[at] += dps[row * k + col]);
    }
    (
        dx.map(|v| ArrayD::from_shape_vec(IxDyn(xshape), v).expect("sized")),
        ArrayD::from_shape_vec(w.raw_dim(), dw).expect("sized"),
        db,
    )
}

/// Calls `f(row, col, at)` for every patch entry of group `grp` that lies inside the NCHW input
/// of shape `x`: patch row `row` (output position), column `col` (input channel of the group ×
/// tap), input element `at` (flat index).
pub(crate) fn each_tap(x: [usize; 4], grp: usize, ci: usize, win: &Window, mut f: impl FnMut(usize, usize, usize)) {
    let [n, c, h, wd] = x;
    let [oh, ow] = win.out(h, wd);
    for ni in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let row = (ni * oh + oy) * ow + ox;
                let mut col = 0;
                for ic in 0..ci {
                    let chan = grp * ci + ic;
                    for ky in 0..win.k[0] {
                        for kx in 0..win.k[1] {
                            if let (Some(iy), Some(ix)) = (win.at(0, oy, ky, h), win.at(1, ox, kx, wd)) {
                                f(row, col, ((ni * c + chan) * h + iy) * wd + ix);
                            }
                            col += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Max pooling with the flat input index of each output's winner.
fn max_pool(x: &ArrayD<f32>, win: &Window) -> (ArrayD<f32>, Vec<usize>) {
    let s = x.shape();
    let (n, c, h, wd) = (s[0], s[1], s[2], s[3]);
    let [oh, ow] = win.out(h, wd);
    let xs = x.as_slice().expect("standard");
    let mut y = Vec::with_capacity(n * c * oh * ow);
    let mut winners = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut at) = (f32::NEG_INFINITY, plane * h * wd);
                for ky in 0..win.k[0] {
                    for kx in 0..win.k[1] {
                        if let (Some(iy), Some(ix)) = (win.at(0, oy, ky, h), win.at(1, ox, kx, wd)) {
                            let i = (plane * h + iy) * wd + ix;
                            if xs[i] > best {
                                (best, at) = (xs[i], i);
                            }
                        }
                    }
                }
                y.push(best);
                winners.push(at);
            }
        }
    }
    (ArrayD::from_shape_vec(IxDyn(&[n, c, oh, ow]), y).expect("sized"), winners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qc_ir::Tensor;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Every parameter's gradient matches a central difference of `½‖y‖²`, and the forward pass
    /// matches the evaluator, on a graph with every op the net reads.
    #[test]
    fn gradients_match_finite_differences() {
        let text = r#"func @t(%x: tensor<?x2x6x6xf32>) -> tensor<?x3xf32> {
  %w1 = const @"w1" : tensor<4x2x3x3xf32>
  %b1 = const @"b1" : tensor<4xf32>
  %c1 = conv2d(%x, %w1, %b1) {pads = [1, 1, 1, 1], activation = "relu"} : tensor<?x4x6x6xf32>
  %wd = const @"wd" : tensor<4x1x3x3xf32>
  %c2 = conv2d(%c1, %wd) {groups = 4, pads = [1, 1, 1, 1], strides = [1, 1]} : tensor<?x4x6x6xf32>
  %g = const dense<[1.1, 0.9, 1.0, 1.2]> : tensor<4xf32>
  %be = const dense<[0.1, -0.1, 0.0, 0.2]> : tensor<4xf32>
  %m = const dense<[0.0, 0.1, -0.1, 0.0]> : tensor<4xf32>
  %v = const dense<[1.0, 0.5, 2.0, 1.5]> : tensor<4xf32>
  %bn = batch_norm(%c2, %g, %be, %m, %v) : tensor<?x4x6x6xf32>
  %r = relu(%bn) : tensor<?x4x6x6xf32>
  %a = add(%c1, %r) {activation = "relu"} : tensor<?x4x6x6xf32>
  %p = max_pool(%a) {kernel_shape = [2, 2], strides = [2, 2]} : tensor<?x4x3x3xf32>
  %wp = const @"wp" : tensor<5x4x1x1xf32>
  %c3 = conv2d(%p, %wp) : tensor<?x5x3x3xf32>
  %mean = reduce_mean(%c3) {axes = [-1, -2], keepdims = true} : tensor<?x5x1x1xf32>
  %f = reshape(%mean) {shape = [-1, 5]} : tensor<?x5xf32>
  %wf = const @"wf" : tensor<3x5xf32>
  %bf = const @"bf" : tensor<3xf32>
  %y = gemm(%f, %wf, %bf) {trans_b = true} : tensor<?x3xf32>
  return %y
}"#;
        let mut g = qc_ir::text::parse(text).expect("parses");
        let mut seed = 7;
        for (name, shape) in [
            ("w1", vec![4, 2, 3, 3]),
            ("b1", vec![4]),
            ("wd", vec![4, 1, 3, 3]),
            ("wp", vec![5, 4, 1, 1]),
            ("wf", vec![3, 5]),
            ("bf", vec![3]),
        ] {
            let n = shape.iter().product();
            let t = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|_| lcg(&mut seed)).collect()).expect("sized");
            g.weights.insert(name.to_string(), Tensor::F32(t));
        }
        let x = ArrayD::from_shape_vec(IxDyn(&[3, 2, 6, 6]), (0..216).map(|_| lcg(&mut seed)).collect()).expect("sized");
        let mut net = Net::new(&g).expect("reads");
        let reference = qc_ir::eval::evaluate(&g, &[Tensor::F32(x.clone())]).expect("runs");
        let t = net.forward(x.clone());
        let diff =
            reference[0].as_f32().expect("f32").iter().zip(t.output(&net)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "forward differs from the evaluator by {diff}");
        let loss = |net: &Net| -> f64 { net.forward(x.clone()).output(net).iter().map(|&v| 0.5 * (v as f64).powi(2)).sum() };
        let grads = net.backward(&t, vec![(net.output, t.output(&net).clone())]);
        assert_eq!(grads.len(), 6, "w1, b1, wd, wp, wf, bf");
        for (p, grad) in grads.iter().enumerate() {
            for i in 0..grad.len() {
                let h = 1e-3f32;
                let orig = net.params[p].data.as_slice().expect("standard")[i];
                net.params[p].data.as_slice_mut().expect("standard")[i] = orig + h;
                let up = loss(&net);
                net.params[p].data.as_slice_mut().expect("standard")[i] = orig - h;
                let down = loss(&net);
                net.params[p].data.as_slice_mut().expect("standard")[i] = orig;
                let numeric = (up - down) / (2.0 * h as f64);
                let analytic = grad.as_slice().expect("standard")[i] as f64;
                assert!(
                    (numeric - analytic).abs() <= 2e-2 * numeric.abs().max(analytic.abs()) + 2e-3,
                    "param {p} [{i}]: numeric {numeric}, analytic {analytic}"
                );
            }
        }
    }
}
