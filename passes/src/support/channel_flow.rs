//! How output channels flow through a graph, for structured pruning.
//!
//! Every f32 conv2d (groups 1), gemm and 2-D matmul with a constant weight is a *layer*: it
//! defines a channel space (its output channels) and may read channels of other spaces on its
//! input. Each op says, through [`rule`], what it does with the channel axis of its operands:
//!
//! - a layer consumes the channels of its input (the weight loses the matching input rows) and
//!   makes a new space;
//! - `through` ops (activations, pooling, resize, batch norm, depthwise conv, stats, per-tensor
//!   Q/DQ, ...) keep the channel axis, shrinking their per-channel constants with it;
//! - elementwise ops merge their operands: two carriers of channels form one group pruned together
//!   (a residual add); a constant broadcast over channels shrinks with them;
//! - concat along the channel axis places each operand's channels at an offset;
//! - flatten (or a reshape to `[N, C·H·W]`) turns each channel into a block of `H·W` columns,
//!   which the next gemm loses as rows;
//! - anything else, and every model output, *protects* the spaces it reads: they are not pruned.
//!
//! [`analyze`] runs these rules over the graph; [`apply`] removes the chosen channels, rewriting
//! every constant and every type on the way, so that the graph verifies.

use crate::rewrite::{add_const, const_value};
use ndarray::Axis;
use qc_ir::{Attr, ConstValue, Dim, Graph, NodeId, OpKind, Tensor, ValueId};
use std::collections::{BTreeSet, HashMap};

/// Where a space's channels sit on axis 1 of a value: channel `c` covers positions
/// `offset + c·block .. offset + (c+1)·block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The space (index into [`Flow::spaces`]).
    pub space: usize,
    /// The first position.
    pub offset: usize,
    /// Positions per channel.
    pub block: usize,
}

/// One layer's output channels.
#[derive(Clone, Debug)]
pub struct Space {
    /// The layer defining them.
    pub layer: NodeId,
    /// How many.
    pub channels: usize,
}

/// What an op does with the channel axis (axis 1) of its operands.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// A layer: reads channels on operand 0 (weight axis `in_axis` of operand 1 loses them), makes
    /// new ones (weight axis `out_axis`, the bias's last axis).
    Layer {
        /// The weight's input-channel axis.
        in_axis: usize,
        /// The weight's output-channel axis.
        out_axis: usize,
    },
    /// The result carries operand 0's channels; `(operand, axis)` constants shrink with them.
    Through(Vec<(usize, usize)>),
    /// Elementwise with broadcasting: carriers merge, constants shrink on their channel axis.
    Elementwise,
    /// Concatenation along the channel axis.
    Concat,
    /// `[N, C, ...]` to `[N, C·...]`: channels become blocks of columns.
    Flatten,
    /// Channels cannot pass (or the op is not understood): whatever it reads is protected.
    Opaque(String),
}

fn dims(g: &Graph, v: ValueId) -> Vec<Dim> {
    g.ty(v).dims.clone()
}

fn fixed(d: Dim) -> Option<usize> {
    d.fixed().map(|n| n as usize)
}

fn is_f32_const(g: &Graph, v: ValueId) -> bool {
    g.producer_of_kind(v, OpKind::Const).is_some() && const_value(g, v).is_some_and(|t| t.as_f32().is_some())
}

/// The names a layer answers to: its location, its result's name, its weight's name.
pub fn layer_names(g: &Graph, n: NodeId) -> Vec<String> {
    let node = g.node(n);
    let mut names = vec![node.loc.name.clone()];
    names.extend(g.value(node.results[0]).name.clone());
    if let Some(ConstValue::Weight(w)) = g.producer(node.operands[1]).and_then(|p| g.node(p).value.clone()) {
        names.push(w);
    }
    names.retain(|s| !s.is_empty());
    names
}

/// The rule of node `n` (the hook every op kind answers).
pub fn rule(g: &Graph, n: NodeId) -> Rule {
    let node = g.node(n);
    let f32_in = node.operands.first().is_some_and(|&x| g.ty(x).elem.is_f32());
    let f32_out = node.results.iter().all(|&r| g.ty(r).elem.is_f32());
    let opaque = |why: &str| Rule::Opaque(format!("{} ({why})", node.kind));
    if !f32_in || !f32_out {
        if matches!(node.kind, OpKind::Quantize | OpKind::Dequantize) {
            let q = if node.kind == OpKind::Quantize { g.ty(node.results[0]) } else { g.ty(node.operands[0]) };
            if q.elem.quant().is_some_and(|p| p.axis.is_none()) {
                return Rule::Through(Vec::new());
            }
        }
        return opaque("not f32");
    }
    let rank = g.ty(node.operands[0]).rank();
    match node.kind {
        OpKind::Conv2d => {
            let w = node.operands[1];
            let consts = is_f32_const(g, w) && node.operands.get(2).is_none_or(|&b| is_f32_const(g, b));
            if !consts {
                return opaque("weights are not constants");
            }
            let groups = node.attrs.int("groups", 1);
            let wd = dims(g, w);
            let c_in = fixed(g.ty(node.operands[0]).dims[1]);
            if groups == 1 {
                Rule::Layer { in_axis: 1, out_axis: 0 }
            } else if c_in == Some(groups as usize) && wd[1] == Dim::Fixed(1) && wd[0] == Dim::Fixed(groups as u64) {
                let mut shrink = vec![(1, 0)];
                if node.operands.len() > 2 {
                    shrink.push((2, 0));
                }
                Rule::Through(shrink)
            } else {
                opaque("grouped, not depthwise")
            }
        }
        OpKind::Gemm | OpKind::MatMul => {
            let w = node.operands[1];
            let consts = is_f32_const(g, w) && node.operands.get(2).is_none_or(|&b| is_f32_const(g, b));
            if rank != 2 || g.ty(w).rank() != 2 || !consts || node.attrs.bool("trans_a", false) {
                return opaque("not a 2-D product by a constant weight");
            }
            if node.kind == OpKind::Gemm && node.attrs.bool("trans_b", false) {
                Rule::Layer { in_axis: 1, out_axis: 0 }
            } else {
                Rule::Layer { in_axis: 0, out_axis: 1 }
            }
        }
        OpKind::Relu | OpKind::Clip | OpKind::Sigmoid | OpKind::HardSigmoid | OpKind::HardSwish => Rule::Through(Vec::new()),
        OpKind::MaxPool | OpKind::AvgPool | OpKind::GlobalAvgPool | OpKind::Resize | OpKind::Stats => Rule::Through(Vec::new()),
        OpKind::Quantize | OpKind::Dequantize => Rule::Through(Vec::new()),
        OpKind::BatchNorm => {
            if (1..5).all(|i| is_f32_const(g, node.operands[i])) {
                Rule::Through((1..5).map(|i| (i, 0)).collect())
            } else {
                opaque("parameters are not constants")
            }
        }
        OpKind::ReduceMean => {
            let axes: Vec<i64> = node.attrs.ints("axes").map(|a| a.to_vec()).unwrap_or_else(|| (0..rank as i64).collect());
            let spatial = axes.iter().all(|&a| {
                let a = if a < 0 { a + rank as i64 } else { a };
                a >= 2
            });
            if spatial { Rule::Through(Vec::new()) } else { opaque("reduces the channel axis") }
        }
        OpKind::Softmax => {
            let a = node.attrs.int("axis", -1);
            if a != 1 && a != 1 - rank as i64 && rank > 2 {
                Rule::Through(Vec::new())
            } else {
                opaque("normalizes over channels")
            }
        }
        OpKind::Add | OpKind::Sub | OpKind::Mul | OpKind::Div => Rule::Elementwise,
        OpKind::Concat => {
            let a = node.attrs.int("axis", 0);
            if a == 1 || a == 1 - rank as i64 { Rule::Concat } else { opaque("not along the channel axis") }
        }
        OpKind::Flatten => {
            if node.attrs.int("axis", 1) == 1 {
                Rule::Flatten
            } else {
                opaque("not at axis 1")
            }
        }
        OpKind::Reshape => {
            let (i, o) = (dims(g, node.operands[0]), dims(g, node.results[0]));
            let rest: Option<usize> = i.iter().skip(1).map(|&d| fixed(d)).product();
            // The target shape must be an attribute (fold-constants makes it one), so it can shrink.
            if node.operands.len() == 1 && o.len() == 2 && i.len() >= 2 && o[0] == i[0] && rest.is_some() && fixed(o[1]) == rest {
                Rule::Flatten
            } else {
                opaque("does not flatten [N, C, ...] to [N, C·...]")
            }
        }
        _ => opaque("moves values across channels"),
    }
}

/// Channels as they flow through a graph.
#[derive(Clone, Debug, Default)]
pub struct Flow {
    /// Every layer's output channels.
    pub spaces: Vec<Space>,
    /// The values that carry channels of some space on axis 1, and where.
    pub carriers: HashMap<ValueId, Vec<Placement>>,
    /// Union-find parent: spaces joined by an elementwise op are pruned together.
    parent: Vec<usize>,
    /// Why a space may not be pruned (set on group roots after [`Flow::finish`]).
    protected: Vec<Option<String>>,
}

impl Flow {
    /// The representative of `s`'s group.
    pub fn root(&self, mut s: usize) -> usize {
        while self.parent[s] != s {
            s = self.parent[s];
        }
        s
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.root(a), self.root(b));
        if a != b {
            self.parent[b.max(a)] = a.min(b);
        }
    }

    fn protect(&mut self, g: &Graph, v: ValueId, why: impl Fn() -> String) {
        if let Some(ps) = self.carriers.get(&v).cloned() {
            for p in ps {
                if self.protected[p.space].is_none() {
                    self.protected[p.space] = Some(format!("{} {}", g.display_value(v), why()));
                }
            }
        }
    }

    /// Why the group of `s` is protected, if it is.
    pub fn protected(&self, s: usize) -> Option<&str> {
        self.protected[self.root(s)].as_deref()
    }

    /// The groups: root → member spaces, in order.
    pub fn groups(&self) -> Vec<(usize, Vec<usize>)> {
        let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
        for s in 0..self.spaces.len() {
            let r = self.root(s);
            match out.iter_mut().find(|(root, _)| *root == r) {
                Some((_, m)) => m.push(s),
                None => out.push((r, vec![s])),
            }
        }
        out
    }

    /// The space a layer defines.
    pub fn space_of(&self, layer: NodeId) -> Option<usize> {
        self.spaces.iter().position(|s| s.layer == layer)
    }

    fn finish(&mut self) {
        for s in 0..self.spaces.len() {
            if let Some(why) = self.protected[s].clone() {
                let r = self.root(s);
                self.protected[r].get_or_insert(why);
            }
        }
    }
}

/// The channel axis of constant operand `c` broadcast against a result of rank `rank`, if it has
/// one of size > 1.
fn const_channel_axis(g: &Graph, c: ValueId, rank: usize) -> Option<usize> {
    let k = g.ty(c).rank();
    (k + 1 >= rank).then(|| k + 1 - rank).filter(|&a| g.ty(c).dims[a] != Dim::Fixed(1))
}

/// Runs the rules over `g` in topological order.
pub fn analyze(g: &Graph) -> Flow {
    let mut f = Flow::default();
    for n in g.topo_order().unwrap_or_default() {
        let node = g.node(n);
        if node.kind == OpKind::Const {
            continue;
        }
        let reads: Vec<usize> = (0..node.operands.len()).filter(|&i| f.carriers.contains_key(&node.operands[i])).collect();
        let r = rule(g, n);
        let result = node.results[0];
        let what = || format!("feeds {} {}", node.kind, g.display_value(result));
        match r {
            Rule::Layer { .. } => {
                for &i in &reads {
                    if i != 0 {
                        f.protect(g, node.operands[i], what);
                    }
                }
                let channels = fixed(g.ty(result).dims[1]).unwrap_or(0);
                if channels > 0 {
                    f.spaces.push(Space { layer: n, channels });
                    f.parent.push(f.spaces.len() - 1);
                    f.protected.push(None);
                    f.carriers.insert(result, vec![Placement { space: f.spaces.len() - 1, offset: 0, block: 1 }]);
                }
            }
            Rule::Through(_) => {
                for &i in &reads {
                    if i != 0 {
                        f.protect(g, node.operands[i], what);
                    }
                }
                if let Some(ps) = f.carriers.get(&node.operands[0]).cloned() {
                    if ps.iter().all(|p| p.block == 1) {
                        f.carriers.insert(result, ps);
                    } else {
                        f.protect(g, node.operands[0], what);
                    }
                }
            }
            Rule::Elementwise => {
                let rank = g.ty(result).rank();
                let mut carried: Option<Vec<Placement>> = None;
                let mut ok = rank >= 2;
                for &o in &node.operands {
                    if let Some(ps) = f.carriers.get(&o) {
                        match &carried {
                            None => carried = Some(ps.clone()),
                            Some(c)
                                if c.len() == ps.len()
                                    && c.iter().zip(ps).all(|(a, b)| (a.offset, a.block) == (b.offset, b.block)) =>
                            {
                                let pairs: Vec<(usize, usize)> = c.iter().zip(ps).map(|(a, b)| (a.space, b.space)).collect();
                                for (a, b) in pairs {
                                    f.union(a, b);
                                }
                            }
                            Some(_) => ok = false,
                        }
                    } else if g.producer_of_kind(o, OpKind::Const).is_some() {
                        // A constant either broadcasts over the channels or holds one value per channel.
                        if let Some(a) = const_channel_axis(g, o, rank) {
                            ok &= is_f32_const(g, o) && g.ty(o).dims[a] == g.ty(result).dims[1];
                        }
                    } else if g.ty(o).rank() + 1 >= rank && g.ty(o).dims[g.ty(o).rank() + 1 - rank] != Dim::Fixed(1) {
                        // Another tensor with channels no layer here defines (e.g. a model input).
                        ok = false;
                    }
                }
                if let Some(ps) = carried {
                    if ok {
                        f.carriers.insert(result, ps);
                    } else {
                        for &i in &reads {
                            f.protect(g, node.operands[i], what);
                        }
                    }
                }
            }
            Rule::Concat => {
                let mut out = Vec::new();
                let mut base = 0usize;
                let mut ok = true;
                for &o in &node.operands {
                    if let Some(ps) = f.carriers.get(&o) {
                        out.extend(ps.iter().map(|p| Placement { offset: p.offset + base, ..*p }));
                    }
                    match fixed(g.ty(o).dims[1]) {
                        Some(d) => base += d,
                        None => ok = false,
                    }
                }
                if ok {
                    if !out.is_empty() {
                        f.carriers.insert(result, out);
                    }
                } else {
                    for &i in &reads {
                        f.protect(g, node.operands[i], what);
                    }
                }
            }
            Rule::Flatten => {
                let x = node.operands[0];
                let inner: Option<usize> = g.ty(x).dims.iter().skip(2).map(|&d| fixed(d)).product();
                if let Some(ps) = f.carriers.get(&x).cloned() {
                    match inner {
                        Some(inner) => {
                            let ps =
                                ps.iter().map(|p| Placement { offset: p.offset * inner, block: p.block * inner, ..*p }).collect();
                            f.carriers.insert(result, ps);
                        }
                        None => f.protect(g, x, what),
                    }
                }
            }
            Rule::Opaque(why) => {
                for &i in &reads {
                    f.protect(g, node.operands[i], || format!("feeds {why}"));
                }
            }
        }
    }
    for &o in g.outputs() {
        f.protect(g, o, || "is a model output".to_string());
    }
    f.finish();
    f
}

/// Positions on axis 1 of a carrier that lose their channels, given the removed channels of
/// each group root.
fn removed_positions(ps: &[Placement], f: &Flow, removed: &HashMap<usize, Vec<usize>>) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for p in ps {
        if let Some(r) = removed.get(&f.root(p.space)) {
            for &c in r {
                out.extend(p.offset + c * p.block..p.offset + (c + 1) * p.block);
            }
        }
    }
    out
}

/// `t` without the positions `gone` along `axis`.
fn drop_positions(t: &Tensor, axis: usize, gone: &BTreeSet<usize>) -> Tensor {
    let a = t.as_f32().expect("checked f32 by the rule");
    let keep: Vec<usize> = (0..a.shape()[axis]).filter(|i| !gone.contains(i)).collect();
    Tensor::F32(a.select(Axis(axis), &keep))
}

/// Replaces constant operand `i` of node `n` by a copy without the positions of each
/// `(axis, positions)` pair.
fn shrink_operand(g: &mut Graph, n: NodeId, i: usize, cuts: &[(usize, &BTreeSet<usize>)]) {
    if cuts.iter().all(|(_, gone)| gone.is_empty()) {
        return;
    }
    let c = g.node(n).operands[i];
    let mut t = (*const_value(g, c).expect("checked constant by the rule")).clone();
    let mut ty = g.ty(c).clone();
    for &(axis, gone) in cuts {
        t = drop_positions(&t, axis, gone);
        ty.dims[axis] = Dim::Fixed(t.shape()[axis] as u64);
    }
    let base = match g.producer(c).and_then(|p| g.node(p).value.clone()) {
        Some(ConstValue::Weight(w)) => format!("{w}.pruned"),
        _ => format!("{}.pruned", g.value(c).name.clone().unwrap_or_else(|| format!("{}.{i}", g.node(n).loc.name))),
    };
    let loc = g.node(n).loc.clone();
    let v = add_const(g, &base, t, ty, loc);
    g.set_operand(n, i, v);
}

/// Removes channels: `removed[root]` lists the channels (indices into the group's spaces) that
/// go, for each group root. The graph stays consistent: weights, biases, per-channel constants,
/// depthwise `groups`, and the type of every carrier shrink together.
pub fn apply(g: &mut Graph, f: &Flow, removed: &HashMap<usize, Vec<usize>>) {
    let order = g.topo_order().unwrap_or_default();
    let gone: HashMap<ValueId, BTreeSet<usize>> =
        f.carriers.iter().map(|(&v, ps)| (v, removed_positions(ps, f, removed))).filter(|(_, s)| !s.is_empty()).collect();
    let empty = BTreeSet::new();
    for n in order {
        if g.node(n).kind == OpKind::Const {
            continue;
        }
        let r = rule(g, n);
        let x = g.node(n).operands[0];
        let in_gone = gone.get(&x).unwrap_or(&empty).clone();
        match r {
            Rule::Layer { in_axis, out_axis } => {
                let out: BTreeSet<usize> =
                    f.space_of(n).and_then(|s| removed.get(&f.root(s))).map(|v| v.iter().copied().collect()).unwrap_or_default();
                shrink_operand(g, n, 1, &[(in_axis, &in_gone), (out_axis, &out)]);
                if g.node(n).operands.len() > 2 {
                    let b = g.node(n).operands[2];
                    let axis = g.ty(b).rank().saturating_sub(1);
                    if g.ty(b).dims.get(axis) != Some(&Dim::Fixed(1)) {
                        shrink_operand(g, n, 2, &[(axis, &out)]);
                    }
                }
            }
            Rule::Through(shrink) => {
                for (i, axis) in shrink {
                    shrink_operand(g, n, i, &[(axis, &in_gone)]);
                }
                if g.node(n).kind == OpKind::Conv2d && !in_gone.is_empty() {
                    let c = g.ty(g.node(n).operands[1]).dims[0].fixed().unwrap_or(0);
                    g.node_mut(n).attrs.set("groups", Attr::Int(c as i64));
                }
            }
            Rule::Elementwise => {
                let result = g.node(n).results[0];
                let rank = g.ty(result).rank();
                let out_gone = gone.get(&result).cloned().unwrap_or_default();
                for i in 0..g.node(n).operands.len() {
                    let o = g.node(n).operands[i];
                    if g.producer_of_kind(o, OpKind::Const).is_some()
                        && let Some(a) = const_channel_axis(g, o, rank)
                    {
                        shrink_operand(g, n, i, &[(a, &out_gone)]);
                    }
                }
            }
            Rule::Concat | Rule::Flatten | Rule::Opaque(_) => {}
        }
    }
    for (v, s) in &gone {
        let ty = &mut g.value_mut(*v).ty;
        if let Dim::Fixed(d) = ty.dims[1] {
            ty.dims[1] = Dim::Fixed(d - s.len() as u64);
        }
    }
    // Reshapes to [N, C·H·W] state their shape; it shrinks with the channels.
    for n in g.node_ids().collect::<Vec<_>>() {
        let node = g.node(n);
        if node.kind == OpKind::Reshape && node.operands.len() == 1 && gone.contains_key(&node.results[0]) {
            let d1 = g.ty(node.results[0]).dims[1].fixed().unwrap_or(0) as i64;
            if let Some(Attr::Ints(s)) = g.node(n).attrs.get("shape").cloned()
                && s.len() == 2
                && s[1] != -1
            {
                g.node_mut(n).attrs.set("shape", Attr::Ints(vec![s[0], d1]));
            }
        }
    }
    g.rebuild_edges();
}
