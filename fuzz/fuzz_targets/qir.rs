//! QIR lexer, parser and verifier on arbitrary text: errors are diagnostics (rendered), never
//! panics; whatever parses and verifies prints and parses back to the same graph.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match qc_ir::text::parse(&text) {
        Err(d) => {
            let _ = qc_ir::diag::render_all(&d, "fuzz.qir", &text);
        }
        Ok(g) => match qc_ir::verify::verify(&g, Default::default()) {
            Err(d) => {
                let _ = qc_ir::diag::render_all(&d, "fuzz.qir", &text);
            }
            Ok(()) => {
                let printed = qc_ir::text::print(&g);
                let again = qc_ir::text::parse(&printed).expect("printed QIR parses");
                assert!(g.same_as(&again), "the printed graph differs:\n{printed}");
            }
        },
    }
});
