//! The dataflow graph: SSA values and the ops that define them, on a petgraph `StableGraph`
//! so that node ids survive removals.

use crate::attr::Attrs;
use crate::ops::OpKind;
use crate::tensor::Tensor;
use crate::types::TensorType;
use crate::weights::Weights;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;

/// A byte range in the source text.
pub type Span = Range<usize>;

/// An SSA value. Prints as `%7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// An op in the graph. Prints as `@7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NodeIndex<u32>);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0.index())
    }
}

/// Where an op came from: the source node's name, and the ops a fusion absorbed.
/// Prints as `loc("conv1", fused = ["relu1"])`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    /// The name of the op in the source model (the ONNX node name), or empty.
    pub name: String,
    /// Names of ops that were fused into this one, in order.
    pub fused: Vec<String>,
}

impl Loc {
    /// A location naming one source op.
    pub fn named(name: impl Into<String>) -> Loc {
        Loc { name: name.into(), fused: Vec::new() }
    }

    /// Whether the location carries nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_empty() && self.fused.is_empty()
    }

    /// Records that `other` (and everything it absorbed) was fused into this op.
    pub fn absorb(&mut self, other: &Loc) {
        if !other.name.is_empty() {
            self.fused.push(other.name.clone());
        }
        self.fused.extend(other.fused.iter().cloned());
    }
}

/// What a `const` op holds.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstValue {
    /// A tensor in the weights file, by name: `const @"conv1.weight"`.
    Weight(String),
    /// A small tensor written in the text: `const dense<[1, 2]>`.
    Dense(Tensor),
}

/// One op: its kind, operands, results, attributes and source location.
#[derive(Clone, Debug)]
pub struct Node {
    /// The op.
    pub kind: OpKind,
    /// Operand values, in order.
    pub operands: Vec<ValueId>,
    /// Result values, in order.
    pub results: Vec<ValueId>,
    /// Attributes.
    pub attrs: Attrs,
    /// The constant, for `const` ops.
    pub value: Option<ConstValue>,
    /// Where the op came from.
    pub loc: Loc,
    /// The op's text in the parsed source, for diagnostics.
    pub span: Option<Span>,
}

impl Node {
    /// A node with no results yet (they are created by [`Graph::add_node`]).
    pub fn new(kind: OpKind, operands: Vec<ValueId>, attrs: Attrs, loc: Loc) -> Node {
        Node { kind, operands, results: Vec::new(), attrs, value: None, loc, span: None }
    }
}

/// How a value is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueDef {
    /// The n-th function parameter.
    Param(usize),
    /// The n-th result of a node.
    Result(NodeId, usize),
    /// Not (or no longer) defined by anything.
    Detached,
}

/// An SSA value: its name, type and definition.
#[derive(Clone, Debug)]
pub struct Value {
    /// The name from the source (`%conv1`), or `None` to print a number.
    pub name: Option<String>,
    /// The type.
    pub ty: TensorType,
    /// What defines it.
    pub def: ValueDef,
    /// Where the source names it, for diagnostics.
    pub span: Option<Span>,
}

/// A function: parameters, ops and returned values, plus the weights its constants name.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The function's name (`@digits_cnn`).
    pub name: String,
    /// The weights that `const @"name"` ops refer to.
    pub weights: Weights,
    /// The span of the `return`, for diagnostics.
    pub return_span: Option<Span>,
    params: Vec<ValueId>,
    outputs: Vec<ValueId>,
    values: Vec<Value>,
    nodes: StableGraph<Node, u32>,
}

impl Graph {
    /// An empty function.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            weights: Weights::default(),
            return_span: None,
            params: Vec::new(),
            outputs: Vec::new(),
            values: Vec::new(),
            nodes: StableGraph::new(),
        }
    }

    /// Creates a detached value (defined later by [`Graph::insert_node`] or a parameter).
    pub fn add_value(&mut self, name: Option<String>, ty: TensorType, span: Option<Span>) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        self.values.push(Value { name, ty, def: ValueDef::Detached, span });
        id
    }

    /// Adds a function parameter.
    pub fn add_param(&mut self, name: Option<String>, ty: TensorType) -> ValueId {
        let v = self.add_value(name, ty, None);
        self.push_param(v);
        v
    }

    /// Makes an existing detached value the next parameter.
    pub fn push_param(&mut self, v: ValueId) {
        self.values[v.0 as usize].def = ValueDef::Param(self.params.len());
        self.params.push(v);
    }

    /// Adds `node` with one new result per type in `result_types`; returns the node.
    pub fn add_node(&mut self, mut node: Node, result_types: Vec<TensorType>) -> NodeId {
        node.results = result_types.into_iter().map(|t| self.add_value(None, t, None)).collect();
        self.insert_node(node)
    }

    /// Inserts a node whose results already exist as values; wires defs and edges.
    pub fn insert_node(&mut self, node: Node) -> NodeId {
        let operands = node.operands.clone();
        let results = node.results.clone();
        let id = NodeId(self.nodes.add_node(node));
        for (i, r) in results.iter().enumerate() {
            self.values[r.0 as usize].def = ValueDef::Result(id, i);
        }
        for (i, v) in operands.iter().enumerate() {
            if let Some(p) = self.producer(*v) {
                self.nodes.add_edge(p.0, id.0, i as u32);
            }
        }
        id
    }

    /// Recomputes every edge from operand lists (after inserting nodes with forward references).
    pub fn rebuild_edges(&mut self) {
        self.nodes.clear_edges();
        let ids: Vec<NodeId> = self.node_ids().collect();
        for id in ids {
            for (i, v) in self.nodes[id.0].operands.clone().into_iter().enumerate() {
                if let Some(p) = self.producer(v) {
                    self.nodes.add_edge(p.0, id.0, i as u32);
                }
            }
        }
    }

    /// Sets the returned values.
    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) {
        self.outputs = outputs;
    }

    /// The parameters.
    pub fn params(&self) -> &[ValueId] {
        &self.params
    }

    /// The returned values.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    /// A value.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.0 as usize]
    }

    /// A value, mutably.
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.0 as usize]
    }

    /// A value's type.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.0 as usize].ty
    }

    /// Every value ever created (including detached ones).
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.values.len() as u32).map(ValueId)
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    /// A node, mutably. Changing `operands` here must be followed by [`Graph::rebuild_edges`];
    /// prefer [`Graph::set_operand`].
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0]
    }

    /// Whether `id` is still in the graph.
    pub fn contains(&self, id: NodeId) -> bool {
        self.nodes.contains_node(id.0)
    }

    /// Node ids in insertion order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.node_indices().map(NodeId)
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.node_count()
    }

    /// The node that defines `v`, if any.
    pub fn producer(&self, v: ValueId) -> Option<NodeId> {
        match self.values[v.0 as usize].def {
            ValueDef::Result(n, _) => Some(n),
            _ => None,
        }
    }

    /// The node that defines `v` if it is a `kind` op.
    pub fn producer_of_kind(&self, v: ValueId, kind: OpKind) -> Option<NodeId> {
        self.producer(v).filter(|&n| self.node(n).kind == kind)
    }

    /// Every use of `v` as an operand: (node, operand index), in node order.
    pub fn uses(&self, v: ValueId) -> Vec<(NodeId, usize)> {
        let mut out = Vec::new();
        for id in self.node_ids() {
            for (i, &o) in self.nodes[id.0].operands.iter().enumerate() {
                if o == v {
                    out.push((id, i));
                }
            }
        }
        out
    }

    /// The number of uses of `v`, counting each appearance among the outputs.
    pub fn use_count(&self, v: ValueId) -> usize {
        self.uses(v).len() + self.outputs.iter().filter(|&&o| o == v).count()
    }

    /// Whether `v` is returned.
    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    /// Replaces operand `index` of `node` with `v`, keeping edges in step.
    pub fn set_operand(&mut self, node: NodeId, index: usize, v: ValueId) {
        let stale: Vec<_> = self
            .nodes
            .edges_directed(node.0, petgraph::Direction::Incoming)
            .filter(|e| *e.weight() == index as u32)
            .map(|e| e.id())
            .collect();
        for e in stale {
            self.nodes.remove_edge(e);
        }
        self.nodes[node.0].operands[index] = v;
        if let Some(p) = self.producer(v) {
            self.nodes.add_edge(p.0, node.0, index as u32);
        }
    }

    /// Replaces every use of `old` (operands and outputs) with `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for (n, i) in self.uses(old) {
            self.set_operand(n, i, new);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node; its results become detached.
    pub fn remove_node(&mut self, id: NodeId) -> Node {
        let node = self.nodes.remove_node(id.0).expect("node is in the graph");
        for r in &node.results {
            self.values[r.0 as usize].def = ValueDef::Detached;
        }
        node
    }

    /// Nodes in a topological order that keeps insertion order where dependencies allow, or
    /// `Err(node)` naming a node on a cycle.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, NodeId> {
        let mut indegree: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        for n in self.nodes.node_indices() {
            indegree.insert(n, self.nodes.edges_directed(n, petgraph::Direction::Incoming).count());
        }
        let mut ready: BinaryHeap<Reverse<NodeIndex<u32>>> =
            indegree.iter().filter(|(_, d)| **d == 0).map(|(n, _)| Reverse(*n)).collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(NodeId(n));
            for e in self.nodes.edges_directed(n, petgraph::Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("target is a node");
                *d -= 1;
                if *d == 0 {
                    ready.push(Reverse(e.target()));
                }
            }
        }
        if order.len() == indegree.len() {
            Ok(order)
        } else {
            let done: HashSet<_> = order.iter().map(|n| n.0).collect();
            let stuck = self.nodes.node_indices().find(|n| !done.contains(n)).expect("a node is left");
            Err(NodeId(stuck))
        }
    }

    /// The order ops are printed in: topological, insertion order where dependencies allow, and
    /// each `const` placed just before its first user. Printing and re-parsing keeps it.
    pub fn canonical_order(&self) -> Result<Vec<NodeId>, NodeId> {
        let topo = self.topo_order()?;
        let is_used_const = |id: NodeId| {
            let n = self.node(id);
            n.kind == OpKind::Const && n.results.iter().any(|&r| !self.uses(r).is_empty())
        };
        let mut placed: HashSet<NodeId> = HashSet::new();
        let mut order = Vec::with_capacity(topo.len());
        for id in topo {
            if is_used_const(id) {
                continue;
            }
            for &o in &self.node(id).operands {
                if let Some(p) = self.producer(o)
                    && is_used_const(p)
                    && placed.insert(p)
                {
                    order.push(p);
                }
            }
            order.push(id);
        }
        Ok(order)
    }

    /// A value name not yet used in this graph, derived from `base` (`base`, `base.1`, ...).
    pub fn unique_name(&self, base: &str) -> String {
        let taken: HashSet<&str> = self.values.iter().filter_map(|v| v.name.as_deref()).collect();
        if !taken.contains(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !taken.contains(n.as_str())).expect("unbounded")
    }

    /// A weight name not yet in the weights file, derived from `base`.
    pub fn unique_weight_name(&self, base: &str) -> String {
        if !self.weights.contains(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !self.weights.contains(n)).expect("unbounded")
    }

    /// Structural equality: the same params, ops (in topological order), attributes, types,
    /// names, locations and outputs. Node and value ids may differ; weights are not compared.
    pub fn same_as(&self, other: &Graph) -> bool {
        let (Ok(a), Ok(b)) = (self.canonical_order(), other.canonical_order()) else {
            return false;
        };
        if self.name != other.name || a.len() != b.len() || self.params.len() != other.params.len() {
            return false;
        }
        let mut map: HashMap<ValueId, ValueId> = HashMap::new();
        let same_value = |x: &Value, y: &Value| x.name == y.name && x.ty == y.ty;
        for (&p, &q) in self.params.iter().zip(&other.params) {
            if !same_value(self.value(p), other.value(q)) {
                return false;
            }
            map.insert(p, q);
        }
        for (&na, &nb) in a.iter().zip(&b) {
            let (x, y) = (self.node(na), other.node(nb));
            if x.kind != y.kind
                || x.attrs != y.attrs
                || x.value != y.value
                || x.loc != y.loc
                || x.operands.len() != y.operands.len()
                || x.results.len() != y.results.len()
            {
                return false;
            }
            if x.operands.iter().zip(&y.operands).any(|(o, p)| map.get(o) != Some(p)) {
                return false;
            }
            for (&r, &s) in x.results.iter().zip(&y.results) {
                if !same_value(self.value(r), other.value(s)) {
                    return false;
                }
                map.insert(r, s);
            }
        }
        self.outputs.len() == other.outputs.len() && self.outputs.iter().zip(&other.outputs).all(|(o, p)| map.get(o) == Some(p))
    }

    /// A name for `v` in messages: `%name` or `%N`.
    pub fn display_value(&self, v: ValueId) -> String {
        match &self.value(v).name {
            Some(n) => format!("%{n}"),
            None => format!("{v}"),
        }
    }
}
