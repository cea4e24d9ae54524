//! `.npy` parsing of arbitrary bytes: an error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qc::io::tensor_from_npy(data, std::path::Path::new("fuzz.npy"));
});
