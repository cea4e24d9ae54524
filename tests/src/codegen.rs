//! The codegen case files (`tests/codegen/*.qir`): each case is compiled for every ISA level its
//! `//@ isa:` header lists, and the snapshot shows which kernel and path each step got on each
//! level ([`qc_codegen::CompiledModel::kernels`]). Every level's outputs must equal the
//! evaluator's bit for bit, at batch 2 and batch 1. Other directives are those of the pass case
//! files (`//@ passes:` and `//@ calib:` quantize an f32 model first).

use crate::{Rng, header, prepare, random_tensor, split_cases};
use qc_codegen::{CodegenOptions, CompiledModel, Isa};
use qc_ir::Graph;
use qc_ir::eval::evaluate;
use std::path::Path;

/// Checks a codegen case file and returns the text for its snapshot.
pub fn check_codegen_file(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("case file is readable");
    let file = path.file_name().expect("a file").to_string_lossy().into_owned();
    let head: String = text.lines().take_while(|l| !l.starts_with("func")).map(|l| format!("{l}\n")).collect();
    split_cases(&text)
        .iter()
        .map(|case| {
            let h = header(&format!("{head}{case}")).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!h.isa.is_empty(), "{file}: a codegen case needs `//@ isa: LEVEL, ...`");
            let (_, _, g) = prepare(&file, case, &h).unwrap_or_else(|e| panic!("{file}: {e}"));
            let mut out = format!("// @{}\n", g.name);
            for level in &h.isa {
                let isa: Isa = level.parse().unwrap_or_else(|e| panic!("{file}: {e}"));
                let model = CompiledModel::compile_with(&g, &CodegenOptions::with_isa(isa))
                    .unwrap_or_else(|e| panic!("{file}: @{} does not compile for {isa}: {e}", g.name));
                out.push_str(&format!("// isa {isa}\n"));
                for (label, kernel) in model.kernels() {
                    out.push_str(&format!("//   {label}: {kernel}\n"));
                }
                for batch in [2, 1] {
                    if let Err(e) = same_as_evaluator(&g, &model, batch) {
                        panic!("{file}: @{} on {isa} at batch {batch}: {e}", g.name);
                    }
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("// -----\n")
}

/// Runs `model` and the evaluator on the same seeded inputs (dynamic dims `batch`).
fn same_as_evaluator(g: &Graph, model: &CompiledModel, batch: usize) -> Result<(), String> {
    let mut rng = Rng::new(42 + batch as u64);
    let inputs: Vec<_> = g.params().iter().map(|&p| random_tensor(g.ty(p), &mut rng, batch, false)).collect();
    let want = evaluate(g, &inputs).map_err(|e| format!("the evaluator refuses: {e}"))?;
    let got = model.run(&inputs).map_err(|e| format!("the JIT refuses: {e}"))?;
    if got != want {
        return Err("the JIT's outputs differ from the evaluator's".into());
    }
    Ok(())
}
