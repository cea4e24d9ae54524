//! The catalogue of malformed inputs (`tests/malformed/`: inputs the fuzz targets found, plus those written by
//! `cargo run -p qc --example malformed_catalogue`): `qc` reads each with the command that takes
//! that kind of file and must exit with 1 (bad input) or 2 (bad usage) and a diagnostic naming
//! the problem — never a panic (101) or an abort. The diagnostics are snapshotted.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The command that reads `file`.
fn command(file: &str, scratch: &Path) -> Vec<String> {
    let out = |name: &str| scratch.join(name).to_string_lossy().into_owned();
    let f = format!("tests/malformed/{file}");
    let args: Vec<String> = if file.contains("too_large_for_memory") {
        vec!["bench".into(), f, "--runs".into(), "1".into()]
    } else if file.ends_with(".onnx") {
        vec!["import".into(), f, "-o".into(), out("m.qir")]
    } else if file.ends_with(".safetensors") || file.ends_with(".qcw") {
        vec!["compile".into(), "examples/mlp.qir".into(), "--weights".into(), f]
    } else if file.ends_with(".npy") {
        vec!["run".into(), "examples/mlp.qir".into(), "--input".into(), f, "-o".into(), out("y.npy")]
    } else {
        vec!["compile".into(), f]
    };
    args
}

#[test]
fn every_malformed_input_gets_a_diagnostic() {
    let scratch = std::env::temp_dir().join(format!("qc-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(root().join("tests/malformed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "{} catalogue entries", files.len());
    let mut report = String::new();
    for f in &files {
        let o = Command::new(env!("CARGO_BIN_EXE_qc"))
            .args(command(f, &scratch))
            .current_dir(root())
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let code = o.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(code == 1 || code == 2, "{f}: exit {code}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{f}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default().replace(&scratch.to_string_lossy().into_owned(), "<scratch>");
        report += &format!("{f}: exit {code}\n    {first}\n");
    }
    insta::assert_snapshot!("malformed_inputs", report);
}

#[test]
fn big_endian_npy_is_read_not_rejected() {
    // Not malformed: numpy writes '>f4' on request; qc converts it.
    let scratch = std::env::temp_dir().join(format!("qc-be-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut header = "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 64), }".to_string();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend((0..64).flat_map(|i| (i as f32 / 64.0).to_be_bytes()));
    let path = scratch.join("be.npy");
    std::fs::write(&path, &bytes).unwrap();
    let t = qc::io::read_tensor(&path).unwrap();
    let a = t.as_f32().unwrap();
    assert_eq!(a.shape(), &[1, 64]);
    assert_eq!(a[[0, 63]], 63.0 / 64.0);
}
