//! ONNX import of arbitrary bytes: an error naming the problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = qc::onnx::import_bytes(data, "fuzz.onnx", &Default::default()) {
        let _ = qc_ir::text::print(&g);
    }
});
