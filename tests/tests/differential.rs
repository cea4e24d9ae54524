//! Differential testing of the whole compiler on random graphs: chains and DAGs of conv2d
//! (plain, strided, padded, depthwise, with or without bias and fused relu), batch norm, relu,
//! max/avg/global pooling, residual add, concat, flatten and gemm, with random shapes. For each:
//!
//! - the QIR text round-trips (`parse(print(g))` is the same graph, printed the same);
//! - the fp32 evaluator gives the same outputs before and after the `default` pipeline (within
//!   1e-4 relative: folding batch norms reassociates);
//! - the int8 pipeline (calibrated on seeded random samples) runs, and the JIT's outputs equal the
//!   evaluator's bit for bit.
//!
//! Random transformer blocks too: layer_norm (pre- or post-norm), Q/K/V projections, heads split
//! by reshape and transpose, scaled scores with or without a constant attention mask, softmax,
//! the output projection, residual adds and an MLP whose GELU is `gelu` or spelled out with
//! `erf`; the same three checks.
//!
//! Proptest shrinks a failure to a minimal program, reported as its QIR text. 200 graphs in CI
//! (50 blocks); `QC_SLOW=1` runs 10 000.

use proptest::prelude::*;
use qc_ir::eval::evaluate;
use qc_ir::text::{parse, print};
use qc_passes::{PassOptions, PipelineOptions, pipeline, run_pipeline};
use qc_tests::{Rng, compare, fill_random_weights, random_inputs, random_tensor};

/// One step of a random program; the numbers pick among what the current values allow.
#[derive(Clone, Debug)]
enum Step {
    Conv { out: usize, k: usize, stride: usize, pad: bool, bias: bool, relu: bool, depthwise: bool },
    BatchNorm,
    Relu,
    MaxPool,
    AvgPool,
    Add(usize),
    Concat(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..9, prop::sample::select(vec![1usize, 3]), 1usize..3, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(out, k, stride, pad, bias, relu, depthwise)| Step::Conv { out, k, stride, pad, bias, relu, depthwise }),
        1 => Just(Step::BatchNorm),
        1 => Just(Step::Relu),
        1 => Just(Step::MaxPool),
        1 => Just(Step::AvgPool),
        1 => (0usize..8).prop_map(Step::Add),
        1 => (0usize..8).prop_map(Step::Concat),
    ]
}

#[derive(Clone, Debug)]
struct Program {
    c: usize,
    h: usize,
    w: usize,
    steps: Vec<Step>,
    head: Option<usize>,
    global_pool: bool,
}

fn program() -> impl Strategy<Value = Program> {
    (1usize..5, 2usize..9, 2usize..9, prop::collection::vec(step(), 1..7), prop::option::of(1usize..12), any::<bool>())
        .prop_map(|(c, h, w, steps, head, global_pool)| Program { c, h, w, steps, head, global_pool })
}

/// The QIR text of a program. Shapes are tracked so that every op is valid; a step that does not
/// fit the current value is skipped.
fn qir(p: &Program) -> String {
    let mut lines = Vec::new();
    // (name, c, h, w) of every 4-D value so far.
    let mut vals: Vec<(String, usize, usize, usize)> = vec![("x".into(), p.c, p.h, p.w)];
    let ty = |c: usize, h: usize, w: usize| format!("tensor<?x{c}x{h}x{w}xf32>");
    for (i, s) in p.steps.iter().enumerate() {
        let (cur, c, h, w) = vals.last().cloned().expect("a value");
        let name = format!("v{i}");
        match *s {
            Step::Conv { out, k, stride, pad, bias, relu, depthwise } => {
                let pad = if k == 3 && pad { 1 } else { 0 };
                if h + 2 * pad < k || w + 2 * pad < k {
                    continue;
                }
                let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
                let (o, groups, ic) = if depthwise { (c, c, 1) } else { (out, 1, c) };
                lines.push(format!("  %{name}.w = const @\"{name}.w\" : tensor<{o}x{ic}x{k}x{k}xf32>"));
                let mut operands = format!("%{cur}, %{name}.w");
                if bias {
                    lines.push(format!("  %{name}.b = const @\"{name}.b\" : tensor<{o}xf32>"));
                    operands += &format!(", %{name}.b");
                }
                let mut attrs = vec![format!("pads = [{pad}, {pad}, {pad}, {pad}]"), format!("strides = [{stride}, {stride}]")];
                if groups > 1 {
                    attrs.push(format!("groups = {groups}"));
                }
                if relu {
                    attrs.push("activation = \"relu\"".into());
                }
                attrs.sort();
                lines.push(format!(
                    "  %{name} = conv2d({operands}) {{{}}} : {} loc(\"{name}\")",
                    attrs.join(", "),
                    ty(o, oh, ow)
                ));
                vals.push((name, o, oh, ow));
            }
            Step::BatchNorm => {
                for (j, role) in ["scale", "bias", "mean", "var"].iter().enumerate() {
                    lines.push(format!("  %{name}.{j} = const @\"{name}.{role}.var\" : tensor<{c}xf32>"));
                }
                lines.push(format!(
                    "  %{name} = batch_norm(%{cur}, %{name}.0, %{name}.1, %{name}.2, %{name}.3) : {} loc(\"{name}\")",
                    ty(c, h, w)
                ));
                vals.push((name, c, h, w));
            }
            Step::Relu => {
                lines.push(format!("  %{name} = relu(%{cur}) : {} loc(\"{name}\")", ty(c, h, w)));
                vals.push((name, c, h, w));
            }
            Step::MaxPool | Step::AvgPool => {
                if h < 2 || w < 2 {
                    continue;
                }
                let op = if matches!(s, Step::MaxPool) { "max_pool" } else { "avg_pool" };
                lines.push(format!(
                    "  %{name} = {op}(%{cur}) {{kernel_shape = [2, 2], strides = [2, 2]}} : {} loc(\"{name}\")",
                    ty(c, h / 2, w / 2)
                ));
                vals.push((name, c, h / 2, w / 2));
            }
            Step::Add(k) => {
                let same: Vec<_> = vals.iter().filter(|v| (v.1, v.2, v.3) == (c, h, w) && v.0 != cur).cloned().collect();
                let Some(other) = same.get(k % same.len().max(1)) else { continue };
                lines.push(format!("  %{name} = add(%{cur}, %{}) : {} loc(\"{name}\")", other.0, ty(c, h, w)));
                vals.push((name, c, h, w));
            }
            Step::Concat(k) => {
                let same: Vec<_> = vals.iter().filter(|v| (v.2, v.3) == (h, w)).cloned().collect();
                let other = &same[k % same.len()];
                lines.push(format!(
                    "  %{name} = concat(%{cur}, %{}) {{axis = 1}} : {} loc(\"{name}\")",
                    other.0,
                    ty(c + other.1, h, w)
                ));
                vals.push((name, c + other.1, h, w));
            }
        }
    }
    let (mut cur, c, h, w) = vals.last().cloned().expect("a value");
    let mut out_ty = ty(c, h, w);
    if let Some(n) = p.head {
        let f = if p.global_pool {
            lines.push(format!("  %gap = global_avg_pool(%{cur}) : {} loc(\"gap\")", ty(c, 1, 1)));
            cur = "gap".into();
            c
        } else {
            c * h * w
        };
        let shape = if p.global_pool { ty(c, 1, 1) } else { ty(c, h, w) };
        let _ = shape;
        lines.push(format!("  %flat = flatten(%{cur}) : tensor<?x{f}xf32> loc(\"flatten\")"));
        lines.push(format!("  %fc.w = const @\"fc.w\" : tensor<{n}x{f}xf32>"));
        lines.push(format!("  %fc.b = const @\"fc.b\" : tensor<{n}xf32>"));
        lines.push(format!("  %fc = gemm(%flat, %fc.w, %fc.b) {{trans_b = true}} : tensor<?x{n}xf32> loc(\"fc\")"));
        cur = "fc".into();
        out_ty = format!("tensor<?x{n}xf32>");
    }
    format!("func @random(%x: {}) -> {out_ty} {{\n{}\n  return %{cur}\n}}\n", ty(p.c, p.h, p.w), lines.join("\n"))
}

/// A random transformer block on `t` tokens of width `h · dh`.
#[derive(Clone, Debug)]
struct Block {
    t: usize,
    heads: usize,
    dh: usize,
    ff: usize,
    post_norm: bool,
    masked: Option<usize>,
    erf_gelu: bool,
}

fn block() -> impl Strategy<Value = Block> {
    (1usize..7, 1usize..4, 1usize..6, 1usize..17, any::<bool>(), prop::option::of(0usize..6), any::<bool>())
        .prop_map(|(t, heads, dh, ff, post_norm, masked, erf_gelu)| Block { t, heads, dh, ff, post_norm, masked, erf_gelu })
}

/// The QIR text of a block.
fn block_qir(b: &Block) -> String {
    let Block { t, heads: h, dh, ff, post_norm, masked, erf_gelu } = b.clone();
    let d = h * dh;
    let ty = |dims: &[usize]| format!("tensor<{}xf32>", dims.iter().map(|n| n.to_string()).collect::<Vec<_>>().join("x"));
    let x3 = ty(&[1, t, d]);
    let mut l: Vec<String> = Vec::new();
    let ln = |l: &mut Vec<String>, name: &str, x: &str| {
        l.push(format!("  %{name}.g = const @\"{name}.g\" : {}", ty(&[d])));
        l.push(format!("  %{name}.b = const @\"{name}.b\" : {}", ty(&[d])));
        l.push(format!("  %{name} = layer_norm(%{x}, %{name}.g, %{name}.b) : {x3} loc(\"{name}\")"));
    };
    let linear = |l: &mut Vec<String>, name: &str, x: &str, k: usize, n: usize| {
        l.push(format!("  %{name}.w = const @\"{name}.w\" : {}", ty(&[k, n])));
        l.push(format!("  %{name} = matmul(%{x}, %{name}.w) : {} loc(\"{name}\")", ty(&[1, t, n])));
    };
    let input = if post_norm {
        "x".to_string()
    } else {
        ln(&mut l, "ln1", "x");
        "ln1".to_string()
    };
    for (name, perm, dims) in
        [("q", "0, 2, 1, 3", [1, h, t, dh]), ("k", "0, 2, 3, 1", [1, h, dh, t]), ("v", "0, 2, 1, 3", [1, h, t, dh])]
    {
        linear(&mut l, name, &input, d, d);
        l.push(format!(
            "  %{name}.r = reshape(%{name}) {{shape = [1, {t}, {h}, {dh}]}} : {} loc(\"{name}.r\")",
            ty(&[1, t, h, dh])
        ));
        l.push(format!("  %{name}.h = transpose(%{name}.r) {{perm = [{perm}]}} : {} loc(\"{name}.h\")", ty(&dims)));
    }
    let scores = ty(&[1, h, t, t]);
    l.push(format!("  %s = matmul(%q.h, %k.h) : {scores} loc(\"scores\")"));
    l.push(format!("  %scale = const dense<[{:?}]> : tensor<f32>", 1.0 / (dh as f32).sqrt()));
    l.push(format!("  %s2 = mul(%s, %scale) : {scores} loc(\"scaled\")"));
    let mut logits = "s2".to_string();
    if let Some(m) = masked {
        let keep: Vec<&str> = (0..t).map(|j| if j == m % t && t > 1 { "false" } else { "true" }).collect();
        l.push(format!("  %keep = const dense<[{}]> : tensor<1x1x1x{t}xbool>", keep.join(", ")));
        l.push("  %zero = const dense<[0.0]> : tensor<f32>".into());
        l.push("  %low = const dense<[-3.4028235e38]> : tensor<f32>".into());
        l.push(format!("  %mask = where(%keep, %zero, %low) : {} loc(\"mask\")", ty(&[1, 1, 1, t])));
        l.push(format!("  %s3 = add(%s2, %mask) : {scores} loc(\"masked\")"));
        logits = "s3".into();
    }
    l.push(format!("  %p = softmax(%{logits}) {{axis = -1}} : {scores} loc(\"softmax\")"));
    l.push(format!("  %o = matmul(%p, %v.h) : {} loc(\"context\")", ty(&[1, h, t, dh])));
    l.push(format!("  %o.t = transpose(%o) {{perm = [0, 2, 1, 3]}} : {} loc(\"context.t\")", ty(&[1, t, h, dh])));
    l.push(format!("  %o.r = reshape(%o.t) {{shape = [1, {t}, {d}]}} : {x3} loc(\"context.r\")"));
    linear(&mut l, "out", "o.r", d, d);
    l.push(format!("  %r1 = add(%out, %x) : {x3} loc(\"residual1\")"));
    let mlp_in = if post_norm {
        ln(&mut l, "ln1", "r1");
        "ln1"
    } else {
        ln(&mut l, "ln2", "r1");
        "ln2"
    };
    linear(&mut l, "fc1", mlp_in, d, ff);
    let hidden = ty(&[1, t, ff]);
    if erf_gelu {
        l.push("  %r2 = const dense<[1.4142135]> : tensor<f32>".into());
        l.push(format!("  %gd = div(%fc1, %r2) : {hidden} loc(\"gelu.div\")"));
        l.push(format!("  %ge = erf(%gd) : {hidden} loc(\"gelu.erf\")"));
        l.push("  %one = const dense<[1.0]> : tensor<f32>".into());
        l.push(format!("  %ga = add(%ge, %one) : {hidden} loc(\"gelu.add\")"));
        l.push(format!("  %gm = mul(%fc1, %ga) : {hidden} loc(\"gelu.mul\")"));
        l.push("  %half = const dense<[0.5]> : tensor<f32>".into());
        l.push(format!("  %gelu = mul(%gm, %half) : {hidden} loc(\"gelu\")"));
    } else {
        l.push(format!("  %gelu = gelu(%fc1) : {hidden} loc(\"gelu\")"));
    }
    linear(&mut l, "fc2", "gelu", ff, d);
    let residual = if post_norm { "ln1" } else { "r1" };
    l.push(format!("  %y = add(%fc2, %{residual}) : {x3} loc(\"residual2\")"));
    let out = if post_norm {
        ln(&mut l, "ln2", "y");
        "ln2"
    } else {
        "y"
    };
    format!("func @block(%x: {x3}) -> {x3} {{\n{}\n  return %{out}\n}}\n", l.join("\n"))
}

fn check(p: &Program) -> Result<(), TestCaseError> {
    check_text(qir(p))
}

fn check_text(text: String) -> Result<(), TestCaseError> {
    let fail = |what: String| TestCaseError::fail(format!("{what}\n--- the program ---\n{text}"));
    let mut g = parse(&text).map_err(|d| fail(format!("does not parse: {d:?}")))?;
    // Round trip.
    let again = parse(&print(&g)).map_err(|d| fail(format!("printed text does not parse: {d:?}")))?;
    prop_assert!(g.same_as(&again), "{}", fail("the printed graph differs".into()));
    fill_random_weights(&mut g);
    let inputs = random_inputs(&g, 5);
    let before = evaluate(&g, &inputs).map_err(|e| fail(format!("does not evaluate: {e}")))?;
    // fp32 clean-up.
    let mut cleaned = g.clone();
    let opts = PipelineOptions { check_weights: true, ..Default::default() };
    run_pipeline(&mut cleaned, &pipeline("default").unwrap(), &opts, &mut std::io::sink()).map_err(|e| fail(e.to_string()))?;
    let after = evaluate(&cleaned, &inputs).map_err(|e| fail(e.to_string()))?;
    compare(&after[0], &before[0], 1e-4).map_err(|e| fail(format!("the default pipeline changed the outputs: {e}")))?;
    // int8: the JIT computes the evaluator's bits.
    let mut ty = g.ty(g.params()[0]).clone();
    ty.dims[0] = qc_ir::Dim::Fixed(8);
    let calib = std::sync::Arc::new(random_tensor(&ty, &mut Rng::new(11), 1, false));
    let opts = PipelineOptions {
        check_weights: true,
        pass_options: PassOptions { calibration: Some(calib), ..Default::default() },
        ..Default::default()
    };
    let mut q = g.clone();
    run_pipeline(&mut q, &pipeline("int8").unwrap(), &opts, &mut std::io::sink()).map_err(|e| fail(e.to_string()))?;
    let want = evaluate(&q, &inputs).map_err(|e| fail(format!("the int8 model does not evaluate: {e}")))?;
    let jit = qc_codegen::CompiledModel::compile(&q).map_err(|e| fail(format!("the JIT refuses the int8 model: {e}")))?;
    let got = jit.run(&inputs).map_err(|e| fail(format!("the JIT fails: {e}")))?;
    prop_assert!(got == want, "{}", fail(format!("JIT {:?}\nevaluator {:?}\n--- int8 ---\n{}", got, want, print(&q))));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var("QC_SLOW").is_ok() { 10_000 } else { 200 }))]

    #[test]
    fn random_graphs_compile_consistently(p in program()) {
        check(&p)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var("QC_SLOW").is_ok() { 2_000 } else { 50 }))]

    #[test]
    fn random_attention_blocks_compile_consistently(b in block()) {
        check_text(block_qir(&b))?;
    }
}
