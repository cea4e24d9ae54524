//! Weights files (safetensors, and qc's compressed container) from arbitrary bytes; what loads
//! packs and loads back to the same tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let file = Path::new("fuzz.weights");
    let loaded = if qc::packed_weights::is_packed(data) {
        qc::packed_weights::unpack(data, file)
    } else {
        qc::io::weights_from_bytes(data, file)
    };
    if let Ok(w) = loaded {
        let (bytes, _) = qc::packed_weights::pack(&w);
        let back = qc::packed_weights::unpack(&bytes, file).expect("packed weights load");
        for (name, t) in w.iter() {
            let u = back.get(name).expect("every tensor comes back");
            // NaN payloads compare unequal; compare bits.
            assert_eq!(qc::io::le_bytes(t), qc::io::le_bytes(u), "{name}");
        }
    }
});
