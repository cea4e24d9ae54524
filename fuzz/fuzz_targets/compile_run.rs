//! Small parsed graphs, compiled and run: what verifies goes through the default pipeline, the
//! JIT and the evaluator without a panic, and the JIT computes the evaluator's outputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Graphs with bigger tensors are skipped: the point is bad structure, not big data.
const MAX_ELEMENTS: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(mut g) = qc_ir::text::parse(&text) else { return };
    if qc_ir::verify::verify(&g, Default::default()).is_err() {
        return;
    }
    let small = g.value_ids().all(|v| {
        let t = g.ty(v);
        let dims: Vec<u64> = t.dims.iter().map(|d| d.fixed().unwrap_or(2)).collect();
        dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_some_and(|n| n <= MAX_ELEMENTS)
    });
    if !small || g.params().is_empty() {
        return;
    }
    qc_tests::fill_random_weights(&mut g);
    if qc_ir::verify::verify(&g, qc_ir::verify::VerifyOptions { check_weights: true }).is_err() {
        return;
    }
    let inputs = qc_tests::random_inputs(&g, 1);
    let opts = qc_passes::PipelineOptions { check_weights: true, ..Default::default() };
    let mut cleaned = g.clone();
    let _ = qc_passes::run_pipeline(&mut cleaned, &qc_passes::pipeline("default").unwrap(), &opts, &mut std::io::sink());
    let want = qc_ir::eval::evaluate(&g, &inputs);
    if let Ok(m) = qc_codegen::CompiledModel::compile(&g) {
        let got = m.run(&inputs);
        if let (Ok(a), Ok(b)) = (&want, &got) {
            let bits = |ts: &Vec<qc_ir::Tensor>| ts.iter().map(qc::io::le_bytes).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "the JIT and the evaluator disagree:\n{text}");
        }
    }
});
