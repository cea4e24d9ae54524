//! The data-driven test harness. One `check` serves every `.qir` case file:
//!
//! ```text
//! //@ passes: fold-bn, dead-code      passes to run (none: parse and verify only)
//! // -----                            splits the file into cases
//! // error: value %x is defined twice an expected error (a substring of the rendered diagnostic)
//! //@ calib: 16                       calibration samples (seeded random)
//! //@ approximate                     outputs may change (pruning): evaluate, do not compare
//! //@ tolerance: 1                   absolute tolerance of the before/after comparison
//! //@ prune-ratio: 0.5                any option of the passes, by its command-line name
//! //@ reconstruct                     (a flag: no value)
//! ```
//!
//! Options are read by [`qc_passes::PassOptions::set`], the parser behind the command line's
//! flags, so a directive means what the flag means and a misspelt one is an error.
//!
//! Directives before the first `func` hold for the whole file; a later case may add its own.
//!
//! Named weights that a case refers to are generated (seeded by the name; names ending in `var`
//! get positive values, as batch-norm variances must be). When passes run and the case has no
//! expected error, the reference evaluator runs the graph before and after the pipeline on seeded
//! random inputs and the outputs must agree within `1e-5 * max(1, |b|)`.

use ndarray::{ArrayD, IxDyn};
use qc_ir::eval::evaluate;
use qc_ir::text::{parse, print};
use qc_ir::verify::{VerifyOptions, verify};
use qc_ir::{ConstValue, Dim, Graph, ScalarType, Tensor, TensorType};
use qc_passes::{PipelineOptions, run_pipeline};
use std::path::Path;

mod codegen;
pub use codegen::check_codegen_file;

/// A small deterministic random generator (xorshift64*), so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A generator seeded from a string.
    pub fn from_str(s: &str) -> Rng {
        Rng::new(s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

/// A random tensor of type `ty`, dynamic dims taken as `dynamic`.
pub fn random_tensor(ty: &TensorType, rng: &mut Rng, dynamic: usize, positive: bool) -> Tensor {
    let shape: Vec<usize> = ty.dims.iter().map(|d| d.fixed().map_or(dynamic, |n| n as usize)).collect();
    let n: usize = shape.iter().product();
    let f: Vec<f32> = (0..n).map(|_| if positive { rng.uniform(0.5, 1.5) } else { rng.uniform(-1.0, 1.0) }).collect();
    let t = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&shape), f).expect("sized"));
    match ty.elem.storage() {
        ScalarType::F32 => t,
        ScalarType::I64 | ScalarType::I32 => t.cast(ScalarType::F32),
        s => {
            // Biases stay small so that accumulators cannot overflow.
            let (lo, hi) = if s == ScalarType::I32 { (-1000, 1000) } else { s.quant_range().unwrap_or((0, 1)) };
            let ints: Vec<i64> =
                (0..n).map(|_| lo as i64 + (rng.next_u64() % (hi as i64 - lo as i64 + 1) as u64) as i64).collect();
            Tensor::I64(ArrayD::from_shape_vec(IxDyn(&shape), ints).expect("sized")).cast(if s == ScalarType::I4 {
                ScalarType::I8
            } else {
                s
            })
        }
    }
}

/// Generates every named weight the graph refers to that it does not have yet.
pub fn fill_random_weights(g: &mut Graph) {
    let wanted: Vec<(String, TensorType)> = g
        .node_ids()
        .filter_map(|id| match &g.node(id).value {
            Some(ConstValue::Weight(w)) if !g.weights.contains(w) => Some((w.clone(), g.ty(g.node(id).results[0]).clone())),
            _ => None,
        })
        .collect();
    for (name, ty) in wanted {
        if ty.dims.iter().any(|d| *d == Dim::Dynamic) || ty.num_elements().is_none_or(|n| n > 1 << 20) {
            continue;
        }
        let mut rng = Rng::from_str(&name);
        let t = random_tensor(&ty, &mut rng, 1, name.ends_with("var"));
        g.weights.insert(name, t);
    }
}

/// Seeded random inputs for every parameter (dynamic dims become 2).
pub fn random_inputs(g: &Graph, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    g.params().iter().map(|&p| random_tensor(g.ty(p), &mut rng, 2, false)).collect()
}

/// `|a - b| <= tol * max(1, |b|)` elementwise; returns the worst violation as a message.
pub fn compare(a: &Tensor, b: &Tensor, tol: f64) -> Result<(), String> {
    if a.shape() != b.shape() || a.scalar_type() != b.scalar_type() {
        return Err(format!("{} {:?} vs {} {:?}", a.scalar_type(), a.shape(), b.scalar_type(), b.shape()));
    }
    for (i, (x, y)) in a.to_f64_vec().into_iter().zip(b.to_f64_vec()).enumerate() {
        if (x - y).abs() > tol * y.abs().max(1.0) {
            return Err(format!("element {i}: {x} vs {y}"));
        }
    }
    Ok(())
}

/// `|a - b| <= tol` elementwise.
pub fn compare_abs(a: &Tensor, b: &Tensor, tol: f64) -> Result<(), String> {
    if a.shape() != b.shape() || a.scalar_type() != b.scalar_type() {
        return Err(format!("{} {:?} vs {} {:?}", a.scalar_type(), a.shape(), b.scalar_type(), b.shape()));
    }
    match a.to_f64_vec().into_iter().zip(b.to_f64_vec()).enumerate().find(|(_, (x, y))| (x - y).abs() > tol) {
        Some((i, (x, y))) => Err(format!("element {i}: {x} vs {y}")),
        None => Ok(()),
    }
}

/// Header directives of a case file.
#[derive(Default, Debug)]
pub(crate) struct Header {
    passes: Vec<String>,
    /// `//@ isa: scalar, avx2`: the ISA levels a codegen case file compiles for.
    isa: Vec<String>,
    options: qc_passes::PassOptions,
    /// Absolute tolerance of the before/after comparison, when the passes approximate by more
    /// than f32 rounding (`//@ tolerance: 1` allows one quantization step on integer outputs).
    tolerance: Option<f64>,
    /// `//@ calib: N`: calibrate on N seeded random samples of the first input.
    calib_samples: usize,
    /// `//@ approximate`: the passes change outputs by design (pruning); the result must still
    /// evaluate, and is not compared.
    approximate: bool,
}

/// The directives of `text`: the harness's own (`passes`, `calib`, `tolerance`, `approximate`),
/// every other one an option of the passes by its command-line name, read by the same parser as
/// the command line's flags ([`qc_passes::PassOptions::set`]).
pub(crate) fn header(text: &str) -> Result<Header, String> {
    let mut h = Header::default();
    for line in text.lines() {
        let Some(directive) = line.strip_prefix("//@ ") else { continue };
        let (key, value) = match directive.split_once(':') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (directive.trim(), None),
        };
        let bad = |what: &str| format!("`{line}`: {key} takes {what}");
        match (key, value) {
            ("passes", Some(v)) => h.passes = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            ("isa", Some(v)) => h.isa = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            ("calib", Some(v)) => h.calib_samples = v.parse().map_err(|_| bad("a sample count"))?,
            ("tolerance", Some(v)) => h.tolerance = Some(v.parse().map_err(|_| bad("a number"))?),
            ("approximate", None) => h.approximate = true,
            (key, value) => h.options.set(key, value).map_err(|e| format!("`{line}`: {e}"))?,
        }
    }
    Ok(h)
}

/// Splits a case file at `// -----` lines. Each case keeps its position in the file (earlier
/// lines are blanked) so that diagnostics show the file's own line numbers.
pub fn split_cases(text: &str) -> Vec<String> {
    let mut cases = Vec::new();
    let mut current = String::new();
    let mut lines_before = 0;
    for line in text.split_inclusive('\n') {
        lines_before += 1;
        if line.trim_end() == "// -----" {
            cases.push(std::mem::replace(&mut current, "\n".repeat(lines_before)));
        } else {
            current.push_str(line);
        }
    }
    cases.push(current);
    cases.into_iter().filter(|c| c.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))).collect()
}

fn expected_error(case: &str) -> Option<String> {
    case.lines().find_map(|l| l.trim_start().strip_prefix("// error:").map(|s| s.trim().to_string()))
}

/// Runs one case: parse, verify, the header's passes, and the evaluator check. Returns the
/// printed IR or the rendered error.
fn check_case(file: &str, case: &str, h: &Header) -> String {
    let expected = expected_error(case);
    let outcome = run_case(file, case, h);
    match (&expected, &outcome) {
        (Some(want), Err(got)) => {
            assert!(got.contains(want.as_str()), "{file}: expected an error containing `{want}`, got:\n{got}")
        }
        (Some(want), Ok(ir)) => panic!("{file}: expected an error containing `{want}`, but the case passed:\n{ir}"),
        (None, Err(got)) => panic!("{file}: unexpected error:\n{got}"),
        (None, Ok(_)) => {}
    }
    match outcome {
        Ok(s) | Err(s) => s,
    }
}

/// A case's graph (weights generated, verified) before the header's passes, and the records of
/// the passes run over it (none without `//@ passes:`) with the graph after them.
pub(crate) fn prepare(file: &str, case: &str, h: &Header) -> Result<(Graph, Vec<qc_passes::PassRecord>, Graph), String> {
    let mut g = parse(case).map_err(|d| qc_ir::diag::render_all(&d, file, case))?;
    fill_random_weights(&mut g);
    verify(&g, VerifyOptions { check_weights: true }).map_err(|d| qc_ir::diag::render_all(&d, file, case))?;
    if h.passes.is_empty() {
        return Ok((g.clone(), Vec::new(), g));
    }
    let before = g.clone();
    let mut pass_options = h.options.clone();
    if h.calib_samples > 0
        && let Some(&p) = g.params().first()
    {
        let mut ty = g.ty(p).clone();
        ty.dims[0] = qc_ir::Dim::Fixed(h.calib_samples as u64);
        pass_options.calibration = Some(std::sync::Arc::new(random_tensor(&ty, &mut Rng::new(7), 1, false)));
    }
    let opts = PipelineOptions { check_weights: true, pass_options, ..Default::default() };
    let records = run_pipeline(&mut g, &h.passes, &opts, &mut std::io::sink()).map_err(|e| {
        let mut s = format!("error: pass {}: {}\n", e.pass, e.message);
        s.push_str(&qc_ir::diag::render_all(&e.diagnostics, file, case));
        s
    })?;
    Ok((before, records, g))
}

fn run_case(file: &str, case: &str, h: &Header) -> Result<String, String> {
    let (before, records, g) = prepare(file, case, h)?;
    if h.passes.is_empty() {
        return Ok(print(&g));
    }
    let mut out = String::new();
    for r in &records {
        out.push_str(&format!("// {}: {}\n", r.name, if r.changed == qc_passes::Changed::Yes { "changed" } else { "no change" }));
        for n in &r.notes {
            out.push_str(&format!("// note: {n}\n"));
        }
    }
    out.push_str(&print(&g));
    let inputs = random_inputs(&before, 42);
    match (evaluate(&before, &inputs), evaluate(&g, &inputs)) {
        (Ok(_), Ok(_)) if h.approximate => out.push_str("// eval: runs (the passes approximate; outputs not compared)\n"),
        (Ok(a), Ok(b)) => {
            for (i, (x, y)) in b.iter().zip(&a).enumerate() {
                let r = match h.tolerance {
                    None => compare(x, y, 1e-5),
                    Some(t) => compare_abs(x, y, t),
                };
                if let Err(e) = r {
                    panic!("{file}: output {i} changed by the passes beyond the tolerance: {e}\n{out}");
                }
            }
            match h.tolerance {
                None => out.push_str("// eval: outputs agree on random inputs\n"),
                Some(t) => out.push_str(&format!("// eval: outputs agree on random inputs within {t}\n")),
            }
        }
        (Err(e), _) => out.push_str(&format!("// eval: not run ({e})\n")),
        (Ok(_), Err(e)) => panic!("{file}: the graph evaluated before the passes but not after: {e}\n{out}"),
    }
    Ok(out)
}

/// Checks a whole case file and returns the text for its snapshot.
pub fn check_file(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("case file is readable");
    let file = path.file_name().expect("a file").to_string_lossy().into_owned();
    // Directives before the first case hold for every case; a case may add its own.
    let head: String = text.lines().take_while(|l| !l.starts_with("func")).map(|l| format!("{l}\n")).collect();
    split_cases(&text)
        .iter()
        .map(|c| match header(&format!("{head}{c}")) {
            Ok(h) => check_case(&file, c, &h),
            Err(e) => panic!("{file}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("// -----\n")
}

/// Every `.qir` file under `dir`, sorted.
pub fn qir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "qir") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Snapshots `check(file)` for every `.qir` file under `dir` (named `prefix` + its path, folders
/// joined by `__`), checking every file even when one fails, then fails listing those that did.
pub fn snapshot_files(dir: &Path, prefix: &str, check: fn(&Path) -> String) {
    let files = qir_files(dir);
    assert!(!files.is_empty(), "expected case files under {}", dir.display());
    let mut failed = Vec::new();
    for path in files {
        let rel = path.strip_prefix(dir).expect("under dir").with_extension("");
        let name = format!("{prefix}{}", rel.to_string_lossy().replace(['/', '\\'], "__"));
        let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
        let checked = std::panic::catch_unwind(|| {
            let output = check(&path);
            insta::with_settings!({ snapshot_path => snapshots, prepend_module_to_snapshot => false, input_file => &path }, {
                insta::assert_snapshot!(name, output);
            });
        });
        if checked.is_err() {
            failed.push(rel.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{} case files failed (each one's panic is printed above): {}", failed.len(), failed.join(", "));
}
