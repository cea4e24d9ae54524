//! The f32 kernels other than the convolution (`kernels/f32/`) through `CompiledModel` against
//! the reference evaluator, bit for bit, on every ISA level of this CPU: activations,
//! broadcasting arithmetic with fused activations, batch norm, means, softmax, max and average
//! pooling (every attribute), gemm and matmul by constants, reshapes; the transformer
//! functions (gelu, erf, tanh, sqrt, exp, neg, pow), layer_norm, matmuls of two computed
//! operands, transpose and expand. Inputs include zeros,
//! negative zeros, large values and the ends of `exp`'s range (the evaluator refuses inputs
//! that are not finite); batches of 0 to 3. `QC_SLOW=1` runs 1000
//! cases.

mod support;

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use qc_codegen::{CodegenOptions, CompiledModel, Isa};
use qc_ir::Tensor;
use qc_ir::eval::evaluate;
use support::{Window, cases, list, window};

/// Compiles `text` on every level, checks that no op runs on the evaluator and that the
/// outputs equal the evaluator's bit for bit (NaN equal to NaN).
fn check(text: &str, inputs: &[Tensor]) -> Result<(), TestCaseError> {
    let g = qc_ir::text::parse(text).map_err(|d| TestCaseError::fail(format!("{d:?}\n{text}")))?;
    let want = evaluate(&g, inputs).map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
    for isa in Isa::host_levels() {
        let model =
            CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(model.fallback_ops().is_empty(), "on the evaluator: {:?}\n{text}", model.fallback_ops());
        let got = model.run(inputs).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        for (a, b) in got.iter().zip(&want) {
            let (Tensor::F32(a), Tensor::F32(b)) = (a, b) else { panic!("f32 outputs") };
            let same = a.shape() == b.shape()
                && a.iter().zip(b.iter()).all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()));
            prop_assert!(same, "{text}\non {isa}:\n{a:?}\n{b:?}");
        }
    }
    Ok(())
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -8.0f32..8.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => -1e30f32..1e30,
        1 => prop::sample::select(vec![100.0f32, -100.0, 88.5, -87.5, 3.0, -3.0, 6.0]),
    ]
}

fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap())
}

/// `?x…` for a QIR type of these dims after the batch.
fn ty(dims: &[usize]) -> String {
    dims.iter().map(|d| format!("x{d}")).collect::<String>()
}

/// A batch of 0 to 3 and 1 to 3 more dims of 1 to 9, with values.
fn batch_of(max_rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    (0usize..4, prop::collection::vec(1usize..10, 1..max_rank)).prop_flat_map(|(n, dims)| {
        let len = n * dims.iter().product::<usize>();
        (Just(std::iter::once(n).chain(dims).collect::<Vec<_>>()), prop::collection::vec(value(), len))
    })
}

const ACTIVATIONS: [&str; 3] = ["", " {activation = \"relu\"}", " {activation = \"clip\", clip_max = 6.0, clip_min = -1.5}"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn activations(op in 0usize..6, (shape, x) in batch_of(4)) {
        let call = ["relu(%x)", "clip(%x) {max = 6.0, min = -1.0}", "sigmoid(%x)", "hard_sigmoid(%x)",
            "hard_sigmoid(%x) {alpha = 0.125, beta = 0.25}", "hard_swish(%x)"][op];
        let t = ty(&shape[1..]);
        let text = format!("func @f(%x: tensor<?{t}xf32>) -> tensor<?{t}xf32> {{\n  %y = {call} : tensor<?{t}xf32>\n  return %y\n}}");
        check(&text, &[tensor(&shape, x)])?;
    }

    /// The second operand broadcasts: each of its dims is the first's or 1, some leading dims
    /// dropped; either operand may be the broadcast one, and it may be a constant.
    #[test]
    fn arithmetic(op in 0usize..4, act in 0usize..3, swap: bool, constant: bool, (shape, x) in batch_of(5),
                  ones in prop::collection::vec(any::<bool>(), 5), drop in 0usize..3, seed in prop::collection::vec(value(), 400)) {
        let rest = &shape[1..];
        let small: Vec<usize> = rest.iter().zip(&ones).map(|(&d, &one)| if one { 1 } else { d }).collect();
        // An input keeps its batch dim, so only a constant drops leading dims.
        let small = &small[if constant { drop.min(small.len()) } else { 0 }..];
        let small_len: usize = small.iter().product::<usize>() * if constant { 1 } else { shape[0] };
        let b: Vec<f32> = (0..small_len).map(|i| seed[i % seed.len()]).collect();
        let name = ["add", "sub", "mul", "div"][op];
        let (t, ts) = (ty(rest), ty(small));
        let (b_decl, b_in) = if constant {
            let st = if small.is_empty() { "f32".to_string() } else { format!("{}xf32", list(small).replace(", ", "x")) };
            let values = b.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ");
            (format!("  %b = const dense<[{values}]> : tensor<{st}>\n"), String::new())
        } else {
            (String::new(), format!(", %b: tensor<?{ts}xf32>"))
        };
        let (p, q) = if swap { ("%b", "%x") } else { ("%x", "%b") };
        let text = format!(
            "func @f(%x: tensor<?{t}xf32>{b_in}) -> tensor<?{t}xf32> {{\n{b_decl}  %y = {name}({p}, {q}){} : tensor<?{t}xf32>\n  return %y\n}}",
            if op == 0 { ACTIVATIONS[act] } else { "" }
        );
        let mut inputs = vec![tensor(&shape, x)];
        if !constant {
            let mut bs = vec![shape[0]];
            bs.extend_from_slice(small);
            inputs.push(tensor(&bs, b));
        }
        check(&text, &inputs)?;
    }

    #[test]
    fn batch_norm((shape, x) in batch_of(4), seed in prop::collection::vec(-3.0f32..3.0, 40)) {
        let c = shape[1];
        let t = ty(&shape[1..]);
        let vals = |k: usize, pos: bool| (0..c).map(|i| { let v = seed[(i * 4 + k) % seed.len()]; format!("{:?}", if pos { v.abs() } else { v }) }).collect::<Vec<_>>().join(", ");
        let text = format!(
            "func @f(%x: tensor<?{t}xf32>) -> tensor<?{t}xf32> {{
  %s = const dense<[{}]> : tensor<{c}xf32>
  %b = const dense<[{}]> : tensor<{c}xf32>
  %m = const dense<[{}]> : tensor<{c}xf32>
  %v = const dense<[{}]> : tensor<{c}xf32>
  %y = batch_norm(%x, %s, %b, %m, %v) {{epsilon = 0.001}} : tensor<?{t}xf32>
  return %y
}}", vals(0, false), vals(1, false), vals(2, false), vals(3, true));
        check(&text, &[tensor(&shape, x)])?;
    }

    #[test]
    fn means(global: bool, keep: bool, k in 1usize..4, (shape, x) in batch_of(5)) {
        let rest = &shape[1..];
        let rank = shape.len();
        let (call, out): (String, Vec<usize>) = if global {
            prop_assume!(rank == 4);
            ("global_avg_pool(%x)".into(), vec![rest[0], 1, 1])
        } else {
            let k = k.min(rank - 1);
            let axes: Vec<i64> = (rank - k..rank).map(|a| a as i64 - if keep { 0 } else { rank as i64 }).collect();
            let out = rest.iter().enumerate().filter_map(|(i, &d)| if i + 1 >= rank - k { keep.then_some(1) } else { Some(d) }).collect();
            (format!("reduce_mean(%x) {{axes = [{}], keepdims = {keep}}}", list(&axes)), out)
        };
        let text = format!("func @f(%x: tensor<?{}xf32>) -> tensor<?{}xf32> {{\n  %y = {call} : tensor<?{}xf32>\n  return %y\n}}", ty(rest), ty(&out), ty(&out));
        check(&text, &[tensor(&shape, x)])?;
    }

    #[test]
    fn softmax((shape, x) in batch_of(4), negative: bool) {
        let t = ty(&shape[1..]);
        let axis = if negative { -1 } else { shape.len() as i64 - 1 };
        let text = format!("func @f(%x: tensor<?{t}xf32>) -> tensor<?{t}xf32> {{\n  %y = softmax(%x) {{axis = {axis}}} : tensor<?{t}xf32>\n  return %y\n}}");
        check(&text, &[tensor(&shape, x)])?;
    }

    #[test]
    fn pooling(max: bool, ceil: bool, include_pad: bool, c in 1usize..4, n in 0usize..3, win in window(10, true), seed in prop::collection::vec(value(), 300)) {
        let mut w = win.clone();
        if !max {
            w.dilations = [1, 1];
        }
        let out = pool_out(&w, ceil);
        prop_assume!(out.is_some());
        let [oh, ow] = out.unwrap();
        let [h, wd] = w.hw;
        let attrs = if max {
            format!("ceil_mode = {ceil}, dilations = [{}], kernel_shape = [{}], pads = [{}], strides = [{}]", list(&w.dilations), list(&w.k), list(&w.pads), list(&w.strides))
        } else {
            format!("ceil_mode = {ceil}, count_include_pad = {include_pad}, kernel_shape = [{}], pads = [{}], strides = [{}]", list(&w.k), list(&w.pads), list(&w.strides))
        };
        let op = if max { "max_pool" } else { "avg_pool" };
        let text = format!("func @f(%x: tensor<?x{c}x{h}x{wd}xf32>) -> tensor<?x{c}x{oh}x{ow}xf32> {{\n  %y = {op}(%x) {{{attrs}}} : tensor<?x{c}x{oh}x{ow}xf32>\n  return %y\n}}");
        let x = (0..n * c * h * wd).map(|i| seed[i % seed.len()]).collect();
        check(&text, &[tensor(&[n, c, h, wd], x)])?;
    }

    #[test]
    fn products(m in 0usize..14, k in 1usize..40, nn in 1usize..600, trans_a: bool, trans_b: bool, bias in 0usize..4, act in 0usize..3,
                alpha in prop::sample::select(vec![1.0f32, 0.5, -2.0]), beta in prop::sample::select(vec![1.0f32, 0.25]),
                matmul: bool, seed in prop::collection::vec(-2.0f32..2.0, 97)) {
        let w: Vec<String> = (0..k * nn).map(|i| format!("{:?}", seed[i % 97] * 0.5)).collect();
        let c_shape = ["", "[nn]", "[1, nn]", "[1]"][bias].replace("nn", &nn.to_string());
        let c_len = match bias { 1 | 2 => nn, _ => 1 };
        let c_vals: Vec<String> = (0..c_len).map(|i| format!("{:?}", seed[(i * 7) % 97])).collect();
        let x: Vec<f32> = (0..m * k).map(|i| seed[(i * 13 + 5) % 97]).collect();
        let text = if matmul {
            // Rank 3: the leading dims are rows.
            let text = format!("func @f(%x: tensor<?x2x{k}xf32>) -> tensor<?x2x{nn}xf32> {{
  %w = const dense<[{}]> : tensor<{k}x{nn}xf32>
  %y = matmul(%x, %w){} : tensor<?x2x{nn}xf32>
  return %y
}}", w.join(", "), ACTIVATIONS[act]);
            let x3: Vec<f32> = (0..m * 2 * k).map(|i| seed[(i * 13 + 5) % 97]).collect();
            check(&text, &[tensor(&[m, 2, k], x3)])?;
            return Ok(());
        } else {
            let (wt, xt) = (if trans_b { format!("{nn}x{k}") } else { format!("{k}x{nn}") }, if trans_a { format!("{k}x?") } else { format!("?x{k}") });
            let c_decl = if bias > 0 {
                let ct = c_shape.trim_matches(|ch| ch == '[' || ch == ']').replace(", ", "x");
                format!("  %c = const dense<[{}]> : tensor<{ct}xf32>\n", c_vals.join(", "))
            } else {
                String::new()
            };
            let act_attr = ACTIVATIONS[act].trim_start_matches(" {").trim_end_matches('}');
            let mut attrs = vec![format!("alpha = {alpha:?}"), format!("beta = {beta:?}"), format!("trans_a = {trans_a}"), format!("trans_b = {trans_b}")];
            if !act_attr.is_empty() {
                attrs.push(act_attr.to_string());
            }
            attrs.sort();
            let c_arg = if bias > 0 { ", %c" } else { "" };
            format!("func @f(%x: tensor<{xt}xf32>) -> tensor<?x{nn}xf32> {{
  %w = const dense<[{}]> : tensor<{wt}xf32>
{c_decl}  %y = gemm(%x, %w{c_arg}) {{{}}} : tensor<?x{nn}xf32>
  return %y
}}", w.join(", "), attrs.join(", "))
        };
        let shape = if trans_a { [k, m] } else { [m, k] };
        prop_assume!(!trans_a || m > 0);
        check(&text, &[tensor(&shape, x)])?;
    }
}

/// The pooled size with `ceil_mode` (the last window must start inside the input or its left
/// padding), or `None` when the window does not fit.
fn pool_out(w: &Window, ceil: bool) -> Option<[usize; 2]> {
    let dim = |i: usize| {
        let padded = w.hw[i] + w.pads[i] + w.pads[i + 2];
        let span = w.dilations[i] * (w.k[i] - 1) + 1;
        let num = padded.checked_sub(span)?;
        let mut out = if ceil { num.div_ceil(w.strides[i]) + 1 } else { num / w.strides[i] + 1 };
        if ceil && (out - 1) * w.strides[i] >= w.hw[i] + w.pads[i] {
            out -= 1;
        }
        Some(out)
    };
    Some([dim(0)?, dim(1)?])
}

#[test]
fn reshapes_keep_the_values_in_order() {
    let text = "func @f(%x: tensor<?x3x2x2xf32>) -> tensor<?x12xf32> {
  %a = flatten(%x) {axis = 1} : tensor<?x12xf32>
  %b = reshape(%a) {shape = [-1, 3, 4]} : tensor<?x3x4xf32>
  %c = unsqueeze(%b) {axes = [1]} : tensor<?x1x3x4xf32>
  %d = squeeze(%c) {axes = [1]} : tensor<?x3x4xf32>
  %e = reshape(%d) {shape = [-1, 12]} : tensor<?x12xf32>
  return %e
}";
    let x = tensor(&[2, 3, 2, 2], (0..24).map(|i| i as f32 - 11.5).collect());
    check(text, &[x]).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// concat of 1 to 3 operands along any axis, transpose by any permutation, slice with any
    /// starts, ends (past the dims, negative) and steps (negative too).
    #[test]
    fn data_movement(op in 0usize..3, (shape, x) in batch_of(5), axis_seed: usize, parts in 1usize..4,
                     starts in prop::collection::vec(-12i64..12, 5), ends in prop::collection::vec(-12i64..12, 5),
                     steps in prop::collection::vec(prop::sample::select(vec![1i64, 2, 3, -1, -2]), 5), perm_seed in prop::collection::vec(any::<usize>(), 5)) {
        let rank = shape.len();
        let t = ty(&shape[1..]);
        let text = match op {
            0 => {
                let axis = axis_seed % rank;
                let mut out = shape.clone();
                out[axis] *= parts;
                let args: Vec<String> = (0..parts).map(|_| "%x".to_string()).collect();
                let ot = format!("?{}", ty(&out[1..]));
                format!("func @f(%x: tensor<?{t}xf32>) -> tensor<{ot}xf32> {{\n  %y = concat({}) {{axis = {axis}}} : tensor<{ot}xf32>\n  return %y\n}}", args.join(", "))
            }
            1 => {
                // A permutation that keeps the batch first, so the result type is written the same way.
                let mut rest: Vec<usize> = (1..rank).collect();
                for i in (1..rest.len()).rev() {
                    rest.swap(i, perm_seed[i] % (i + 1));
                }
                let perm: Vec<usize> = std::iter::once(0).chain(rest).collect();
                let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                format!("func @f(%x: tensor<?{t}xf32>) -> tensor<?{}xf32> {{\n  %y = transpose(%x) {{perm = [{}]}} : tensor<?{}xf32>\n  return %y\n}}", ty(&out[1..]), list(&perm), ty(&out[1..]))
            }
            _ => {
                // Slice the dims after the batch.
                let axes: Vec<usize> = (1..rank).collect();
                let k = axes.len();
                let out: Vec<usize> = axes.iter().enumerate().map(|(i, &a)| {
                    let (_, count) = qc_ir::infer::slice_range(shape[a] as i64, starts[i], ends[i], steps[i]);
                    count as usize
                }).collect();
                format!(
                    "func @f(%x: tensor<?{t}xf32>) -> tensor<?{}xf32> {{\n  %y = slice(%x) {{axes = [{}], ends = [{}], starts = [{}], steps = [{}]}} : tensor<?{}xf32>\n  return %y\n}}",
                    ty(&out), list(&axes), list(&ends[..k]), list(&starts[..k]), list(&steps[..k]), ty(&out)
                )
            }
        };
        check(&text, &[tensor(&shape, x)])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// The transformer functions: gelu in both forms, erf, tanh, sqrt (of |x|), exp, neg, and
    /// pow by a constant exponent.
    #[test]
    fn transformer_functions(op in 0usize..9, (shape, x) in batch_of(4)) {
        let call = ["gelu(%x)", "gelu(%x) {approximate = \"tanh\"}", "erf(%x)", "tanh(%x)", "sqrt(%a)", "exp(%x)", "neg(%x)",
            "pow(%a, %two)", "pow(%a, %half)"][op];
        let t = ty(&shape[1..]);
        let text = format!(
            "func @f(%x: tensor<?{t}xf32>) -> tensor<?{t}xf32> {{\n  %a = relu(%x) : tensor<?{t}xf32>\n  \
             %two = const dense<[2.0]> : tensor<f32>\n  %half = const dense<[0.5]> : tensor<f32>\n  \
             %y = {call} : tensor<?{t}xf32>\n  return %y\n}}"
        );
        check(&text, &[tensor(&shape, x)])?;
    }

    /// layer_norm over the last one or two dims, with and without a bias.
    #[test]
    fn layer_norm(two: bool, bias: bool, (shape, x) in batch_of(4), seed in prop::collection::vec(value(), 100)) {
        let rest = &shape[1..];
        let axis = if two && rest.len() >= 2 { -2 } else { -1 };
        let norm = &rest[rest.len() - (-axis) as usize..];
        let n: usize = norm.iter().product();
        let values = |k: usize| (0..n).map(|i| format!("{:?}", seed[(i + k) % seed.len()])).collect::<Vec<_>>().join(", ");
        let (t, tn) = (ty(rest), list(norm).replace(", ", "x"));
        let b = if bias { ", %b" } else { "" };
        let text = format!(
            "func @f(%x: tensor<?{t}xf32>) -> tensor<?{t}xf32> {{\n  %g = const dense<[{}]> : tensor<{tn}xf32>\n  \
             %b = const dense<[{}]> : tensor<{tn}xf32>\n  %y = layer_norm(%x, %g{b}) {{axis = {axis}, epsilon = 1e-5}} : tensor<?{t}xf32>\n  return %y\n}}",
            values(0), values(7)
        );
        check(&text, &[tensor(&shape, x)])?;
    }

    /// Attention's products of two computed operands, the second's batch dims broadcast, and a
    /// transpose and an expand around them (`m` past the products' 6 × 16 register tiles).
    #[test]
    fn batched_matmul_transpose_expand(n in 0usize..3, h in 1usize..4, m in 1usize..40, k in 1usize..9, shared: bool,
                                       seed in prop::collection::vec(value(), 600)) {
        let x: Vec<f32> = (0..n * h * m * k).map(|i| seed[i % seed.len()]).collect();
        let y: Vec<f32> = (0..n * (if shared { 1 } else { h }) * m * k).map(|i| seed[(i * 7 + 3) % seed.len()]).collect();
        let hb = if shared { 1 } else { h };
        let text = format!(
            "func @f(%x: tensor<?x{h}x{m}x{k}xf32>, %k: tensor<?x{hb}x{m}x{k}xf32>) -> (tensor<?x{h}x{m}x{m}xf32>, tensor<?x{h}x{k}x{m}xf32>) {{\n  \
             %kt = transpose(%k) {{perm = [0, 1, 3, 2]}} : tensor<?x{hb}x{k}x{m}xf32>\n  \
             %s = matmul(%x, %kt) : tensor<?x{h}x{m}x{m}xf32>\n  \
             %e = expand(%kt) {{shape = [1, {h}, 1, 1]}} : tensor<?x{h}x{k}x{m}xf32>\n  return %s, %e\n}}"
        );
        check(&text, &[tensor(&[n, h, m, k], x), tensor(&[n, hb, m, k], y)])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// An embedding lookup: a constant f32 table gathered by i64 ids given at run time (negative
    /// ones count from the end), and a computed value gathered by a constant scalar index.
    #[test]
    fn gather(rows in 1usize..9, width in 1usize..6, n in 0usize..3, t in 1usize..5, ids in prop::collection::vec(-8i64..8, 12),
              seed in prop::collection::vec(value(), 60)) {
        let table: Vec<String> = (0..rows * width).map(|i| format!("{:?}", seed[i % seed.len()])).collect();
        let ids: Vec<i64> = (0..n * t).map(|i| ids[i % ids.len()].rem_euclid(2 * rows as i64) - rows as i64).collect();
        let text = format!(
            "func @f(%ids: tensor<?x{t}xi64>) -> (tensor<?x{t}x{width}xf32>, tensor<?x{width}xf32>) {{\n  \
             %table = const dense<[{}]> : tensor<{rows}x{width}xf32>\n  \
             %e = gather(%table, %ids) {{axis = 0}} : tensor<?x{t}x{width}xf32>\n  \
             %first = const dense<[0]> : tensor<i64>\n  \
             %c = gather(%e, %first) {{axis = 1}} : tensor<?x{width}xf32>\n  return %e, %c\n}}",
            table.join(", ")
        );
        check(&text, &[Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n, t]), ids).unwrap())])?;
    }
}
