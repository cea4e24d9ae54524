//! The compressed weights file: packing and loading gives back exactly the same weights (every
//! dtype and coding), and corrupt or truncated files are rejected with an error, never a panic.

use ndarray::{ArrayD, IxDyn};
use qc::packed_weights::{Coding, pack, unpack};
use qc_ir::{Tensor, Weights};
use std::path::Path;

fn sample_weights() -> Weights {
    let mut w = Weights::default();
    let sh = |d: &[usize]| IxDyn(d);
    // Sparse int8 (Huffman with zero runs), shared f32 values (codebook), and the rest raw.
    w.insert(
        "sparse.q",
        Tensor::I8(ArrayD::from_shape_fn(sh(&[32, 64]), |i| if (i[0] * 7 + i[1]) % 5 == 0 { (i[1] as i8) - 30 } else { 0 })),
    );
    let shared = [0.0f32, -0.5, 0.25, 0.125, 1.5];
    w.insert("shared", Tensor::F32(ArrayD::from_shape_fn(sh(&[16, 40]), |i| shared[(i[0] * 3 + i[1]) % 5])));
    w.insert("dense", Tensor::F32(ArrayD::from_shape_fn(sh(&[7, 5]), |i| (i[0] as f32 * 0.37 - i[1] as f32).sin())));
    w.insert("bias.q", Tensor::I32(ArrayD::from_shape_fn(sh(&[9]), |i| i[0] as i32 * 1000 - 4000)));
    w.insert("u8", Tensor::U8(ArrayD::from_shape_fn(sh(&[3, 3]), |i| (i[0] * 3 + i[1]) as u8)));
    w.insert("shape", Tensor::I64(ArrayD::from_shape_vec(sh(&[2]), vec![-1, 128]).unwrap()));
    w.insert("half", Tensor::F16(ArrayD::from_shape_fn(sh(&[4]), |i| half::f16::from_f32(i[0] as f32 / 3.0))));
    w.insert("mask", Tensor::Bool(ArrayD::from_shape_fn(sh(&[5]), |i| i[0] % 2 == 0)));
    w.insert("empty", Tensor::F32(ArrayD::zeros(sh(&[0, 4]))));
    w
}

fn same(a: &Weights, b: &Weights) {
    assert_eq!(a.len(), b.len());
    for (name, t) in a.iter() {
        let u = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.as_ref(), u.as_ref(), "{name}");
    }
}

#[test]
fn pack_then_load_gives_the_same_weights() {
    let w = sample_weights();
    let (bytes, report) = pack(&w);
    same(&w, &unpack(&bytes, Path::new("t.qcw")).unwrap());
    let coding = |n: &str| report.iter().find(|p| p.name == n).unwrap().coding;
    assert_eq!(coding("sparse.q"), Coding::Huffman);
    assert_eq!(coding("shared"), Coding::Codebook);
    assert_eq!(coding("dense"), Coding::Raw);
    let sparse = report.iter().find(|p| p.name == "sparse.q").unwrap();
    assert!(sparse.packed_bytes * 3 < sparse.raw_bytes, "{sparse:?}");
}

#[test]
fn corrupt_and_truncated_files_are_rejected() {
    let (bytes, _) = pack(&sample_weights());
    let file = Path::new("t.qcw");
    for len in 0..bytes.len() {
        assert!(unpack(&bytes[..len], file).is_err(), "truncated to {len} bytes");
    }
    for i in 0..bytes.len() {
        for bit in [0, 3, 7] {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let e = unpack(&b, file).expect_err("a flipped bit");
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn damage_behind_a_valid_checksum_is_an_error_not_a_panic() {
    // Mutate the body and fix the trailing checksum, so the parser itself meets the damage.
    let (bytes, _) = pack(&sample_weights());
    let mut seed = 12345u64;
    for _ in 0..3000 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut b = bytes.clone();
        let body = b.len() - 4;
        let i = 4 + (seed >> 33) as usize % (body - 4);
        b[i] = (seed >> 13) as u8;
        let crc = crc32fast::hash(&b[..body]);
        b[body..].copy_from_slice(&crc.to_le_bytes());
        // Either an error, or (a harmless change such as a name byte) weights that still load.
        let _ = unpack(&b, Path::new("t.qcw"));
    }
}

#[test]
fn corpus_models_round_trip_through_the_compressed_file() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/models");
    for m in ["digits_cnn_fp32.onnx", "digits_resdw_qdq_pre_u8s8_minmax.onnx"] {
        let path = corpus.join(m);
        let g = qc::onnx::import_file(&path, &Default::default()).unwrap();
        let (bytes, _) = pack(&g.weights);
        same(&g.weights, &unpack(&bytes, Path::new("m.qcw")).unwrap());
    }
}
