//! The fusion report: after compiling, every op left in f32 and every quantize/dequantize left in
//! the graph, each with the reason no fusion applied (from the matcher of `fuse-requant` itself).

use qc_ir::{Graph, NodeId, OpKind};
use std::fmt::Write;

/// One op the report lists.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    /// `f32`, `quantize`, `dequantize` or `requantize`.
    #[serde(rename = "kind")]
    pub what: &'static str,
    /// The value it defines (`%conv1`).
    pub value: String,
    /// The op.
    pub op: String,
    /// Its source location.
    pub loc: String,
    /// Why it is there.
    pub reason: String,
}

/// What compiling left in the graph (its JSON: `integer_ops`, `findings` with `kind`, `value`,
/// `op`, `loc` and `reason`, and `notes`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FusionReport {
    /// Ops computing on integers.
    pub integer_ops: usize,
    /// Everything else worth a look.
    pub findings: Vec<Finding>,
    /// What the passes reported (e.g. a weight scale raised to keep a bias in range).
    pub notes: Vec<String>,
}

fn is_integer(g: &Graph, n: NodeId) -> bool {
    let node = g.node(n);
    node.results.iter().chain(&node.operands).all(|&v| g.ty(v).elem.quant().is_some() || !g.ty(v).elem.is_f32())
}

/// Builds the report. A graph with no quantized value gets an empty one.
pub fn fusion_report(g: &Graph) -> FusionReport {
    let mut r = FusionReport::default();
    let quantized = g.value_ids().any(|v| g.ty(v).elem.quant().is_some() && g.producer(v).is_some_and(|p| g.contains(p)));
    if !quantized {
        return r;
    }
    for n in g.canonical_order().unwrap_or_default() {
        let node = g.node(n);
        let result = node.results[0];
        let finding = |what: &'static str, reason: String| Finding {
            what,
            value: g.display_value(result),
            op: node.kind.to_string(),
            loc: node.loc.name.clone(),
            reason,
        };
        match node.kind {
            OpKind::Const | OpKind::Shape => {}
            OpKind::Quantize => {
                let x = node.operands[0];
                let reason = match g.producer(x) {
                    None => "quantizes a model input: the integer graph starts here".to_string(),
                    Some(p) => format!("its operand comes from the f32 op {} ({})", g.display_value(x), g.node(p).kind),
                };
                r.findings.push(finding("quantize", reason));
            }
            OpKind::Dequantize => {
                let users: Vec<String> = g
                    .uses(result)
                    .iter()
                    .map(|&(u, _)| format!("{} ({})", g.display_value(g.node(u).results[0]), g.node(u).kind))
                    .collect();
                let reason = if users.is_empty() && g.is_output(result) {
                    "dequantizes a model output: the integer graph ends here".to_string()
                } else {
                    format!("feeds f32 ops: {}", users.join(", "))
                };
                r.findings.push(finding("dequantize", reason));
            }
            OpKind::Requantize => r.findings.push(finding("requantize", "two quantization parameter sets meet here".into())),
            _ if is_integer(g, n) => r.integer_ops += 1,
            _ => r.findings.push(finding("f32", qc_passes::explain_unfused(g, n))),
        }
    }
    r
}

impl FusionReport {
    /// Whether anything is worth printing: f32 ops, or Q/DQ inside the graph.
    pub fn has_findings(&self) -> bool {
        self.findings.iter().any(|f| f.what == "f32" || !f.reason.contains("the integer graph"))
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let count = |w: &str| self.findings.iter().filter(|f| f.what == w).count();
        let mut s = format!(
            "fusion report: {} integer ops, {} f32 ops, {} quantize, {} dequantize, {} requantize\n",
            self.integer_ops,
            count("f32"),
            count("quantize"),
            count("dequantize"),
            count("requantize")
        );
        for f in &self.findings {
            let loc = if f.loc.is_empty() { String::new() } else { format!(" loc(\"{}\")", f.loc) };
            writeln!(s, "  {:<10} {} = {}{loc}: {}", f.what, f.value, f.op, f.reason).expect("String");
        }
        s
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the fusion report serializes")
    }
}
