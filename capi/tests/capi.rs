//! The C ABI from Rust: the happy path and every error path returns an error, never crashes.

use qc_capi::*;
use std::ffi::{CStr, CString};

fn last_error() -> String {
    let p = qc_last_error();
    assert!(!p.is_null());
    // SAFETY: qc_last_error returns a NUL-terminated string owned by this thread.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn load_compile_run_and_errors() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = CString::new(root.join("examples/mlp.qir").to_str().unwrap()).unwrap();
    // SAFETY: every pointer below is valid for what the function reads or writes.
    unsafe {
        assert!(qc_load(std::ptr::null()).is_null());
        assert!(last_error().contains("path is NULL"));
        let missing = CString::new("no/such.qir").unwrap();
        assert!(qc_load(missing.as_ptr()).is_null());
        assert!(last_error().contains("cannot read no/such.qir"));
        let m = qc_load(path.as_ptr());
        assert!(!m.is_null());
        let (x, shape, mut y) = ([0.5f32; 64], [1usize, 64], [0f32; 10]);
        assert_eq!(qc_run(m, x.as_ptr(), shape.as_ptr(), 2, y.as_mut_ptr(), 10), -1);
        assert!(last_error().contains("call qc_compile first"));
        assert_eq!(qc_compile(m), 0);
        let mut dims = [0usize; 4];
        assert_eq!(qc_input_dims(m, dims.as_mut_ptr(), 4), 2);
        assert_eq!(dims[..2], [0, 64]);
        assert_eq!(qc_run(m, x.as_ptr(), shape.as_ptr(), 2, y.as_mut_ptr(), 10), 0);
        assert!(y.iter().any(|&v| v != 0.0));
        assert_eq!(qc_run(m, x.as_ptr(), shape.as_ptr(), 2, y.as_mut_ptr(), 9), -1);
        assert!(last_error().contains("the output has 10 values, the buffer 9"));
        let bad = [2usize, 32];
        assert_eq!(qc_run(m, x.as_ptr(), bad.as_ptr(), 2, y.as_mut_ptr(), 10), -1);
        assert!(last_error().contains("must be tensor<?x64xf32>"));
        assert_eq!(qc_run(m, std::ptr::null(), shape.as_ptr(), 2, y.as_mut_ptr(), 10), -1);
        assert_eq!(qc_compile(std::ptr::null_mut()), -1);
        // Two threads split a batch of 3 and give the one-thread outputs; 0 threads is refused.
        let (x3, shape3) = ((0..192).map(|i| (i % 7) as f32 / 7.0).collect::<Vec<f32>>(), [3usize, 64]);
        let (mut one, mut two) = ([0f32; 30], [0f32; 30]);
        assert_eq!(qc_run(m, x3.as_ptr(), shape3.as_ptr(), 2, one.as_mut_ptr(), 30), 0);
        assert_eq!(qc_compile_threads(m, 0), -1);
        assert!(last_error().contains("at least one thread"), "{}", last_error());
        assert_eq!(qc_compile_threads(m, 2), 0);
        assert_eq!(qc_run(m, x3.as_ptr(), shape3.as_ptr(), 2, two.as_mut_ptr(), 30), 0);
        assert_eq!(one, two);
        qc_free(m);
        qc_free(std::ptr::null_mut());
    }
}
