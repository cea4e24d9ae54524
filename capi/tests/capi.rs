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

/// Several named inputs of their own element types in, several outputs out with their shapes;
/// wrong counts, sizes and NULLs are errors.
#[test]
fn several_inputs_and_outputs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = CString::new(root.join("examples/two_inputs.qir").to_str().unwrap()).unwrap();
    // SAFETY: every pointer below is valid for what the function reads or writes.
    unsafe {
        let m = qc_load(path.as_ptr());
        assert!(!m.is_null(), "{}", last_error());
        assert_eq!((qc_input_count(m), qc_output_count(m)), (2, 2));
        let name = |p: *const std::ffi::c_char| CStr::from_ptr(p).to_str().unwrap().to_string();
        assert_eq!((name(qc_input_name(m, 0)), name(qc_input_name(m, 1))), ("ids".into(), "x".into()));
        assert_eq!((name(qc_output_name(m, 0)), name(qc_output_name(m, 1))), ("sum".into(), "g".into()));
        assert!(qc_input_name(m, 2).is_null());
        assert_eq!((qc_input_type(m, 0), qc_input_type(m, 1), qc_input_type(m, 2)), (QC_I64, QC_F32, -1));
        let mut dims = [9usize; 2];
        assert_eq!(qc_input_dims_at(m, 1, dims.as_mut_ptr(), 2), 2);
        assert_eq!(dims, [0, 3]);
        assert_eq!(qc_compile(m), 0);
        let (ids, x, shape) = ([0i64, 1, 2, 2, 1, 0], [1.0f32, 0.0, -1.0, 0.0, 0.0, 0.0], [2usize, 3]);
        let (mut sum, mut g) = ([0f32; 6], [0f32; 6]);
        let inputs = [
            QcInput { data: ids.as_ptr().cast(), shape: shape.as_ptr(), rank: 2 },
            QcInput { data: x.as_ptr().cast(), shape: shape.as_ptr(), rank: 2 },
        ];
        let mut outputs = [
            QcOutput { data: sum.as_mut_ptr(), len: 6, shape: [0; 8], rank: 0 },
            QcOutput { data: g.as_mut_ptr(), len: 6, shape: [0; 8], rank: 0 },
        ];
        assert_eq!(qc_run_many(m, inputs.as_ptr(), 2, outputs.as_mut_ptr(), 2), 0, "{}", last_error());
        assert_eq!((outputs[0].rank, &outputs[0].shape[..2]), (2, &[2usize, 3][..]));
        assert_eq!(sum, [1.5, 1.5, 1.5, 2.5, 1.5, 0.5]);
        assert!(g.iter().zip(&sum).all(|(g, s)| g <= s && *g > 0.0));
        assert_eq!(qc_run_many(m, inputs.as_ptr(), 1, outputs.as_mut_ptr(), 2), -1);
        assert!(last_error().contains("takes 2 inputs"), "{}", last_error());
        outputs[1].len = 5;
        assert_eq!(qc_run_many(m, inputs.as_ptr(), 2, outputs.as_mut_ptr(), 2), -1);
        assert!(last_error().contains("output 1 has 6 values"), "{}", last_error());
        let null_data = [QcInput { data: std::ptr::null(), shape: shape.as_ptr(), rank: 2 }, QcInput { ..inputs[1] }];
        assert_eq!(qc_run_many(m, null_data.as_ptr(), 2, outputs.as_mut_ptr(), 2), -1);
        assert!(last_error().contains("data is NULL"), "{}", last_error());
        assert_eq!(qc_run_many(m, std::ptr::null(), 2, outputs.as_mut_ptr(), 2), -1);
        qc_free(m);
    }
}
