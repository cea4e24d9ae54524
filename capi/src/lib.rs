//! The C ABI declared in `capi/include/qc.h`. Every entry point checks its pointers and sizes and
//! reports failures through `qc_last_error`; no Rust panic crosses the boundary.

use qc_codegen::CompiledModel;
use qc_ir::Tensor;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::Path;

/// A loaded (and, after `qc_compile`, compiled) model.
pub struct QcModel {
    graph: qc_ir::Graph,
    compiled: Option<CompiledModel>,
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_error(msg: impl Into<String>) {
    let msg = msg.into().replace('\0', " ");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(msg).ok());
}

fn guard<T>(fail: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(e);
            fail
        }
        Err(_) => {
            set_error("internal error: qc panicked (a bug; please report it)");
            fail
        }
    }
}

/// Loads and verifies a model; NULL on error.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_load(path: *const c_char) -> *mut QcModel {
    guard(std::ptr::null_mut(), || {
        if path.is_null() {
            return Err("qc_load: path is NULL".into());
        }
        // SAFETY: the caller passes a NUL-terminated string.
        let p = unsafe { CStr::from_ptr(path) }.to_str().map_err(|_| "qc_load: path is not UTF-8".to_string())?;
        let model = qc::load_model(Path::new(p), None).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(QcModel { graph: model.graph, compiled: None })))
    })
}

/// JIT-compiles a loaded model; 0 or -1.
///
/// # Safety
/// `model` must be NULL or a pointer returned by `qc_load` and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_compile(model: *mut QcModel) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_mut() }.ok_or("qc_compile: model is NULL")?;
        m.compiled = Some(CompiledModel::compile(&m.graph).map_err(|e| e.to_string())?);
        Ok(0)
    })
}

/// JIT-compiles a loaded model for `threads` threads, over which each run splits its batch; 0 or
/// -1 (0 threads, or more than one for a model whose images are not independent, with the
/// reason in `qc_last_error`).
///
/// # Safety
/// `model` as for `qc_compile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_compile_threads(model: *mut QcModel, threads: usize) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_mut() }.ok_or("qc_compile_threads: model is NULL")?;
        let options = qc_codegen::CodegenOptions { threads, ..qc_codegen::CodegenOptions::host() };
        m.compiled = Some(CompiledModel::compile_with(&m.graph, &options).map_err(|e| e.to_string())?);
        Ok(0)
    })
}

/// The input's rank and dims (0 for a dynamic dim); -1 on error.
///
/// # Safety
/// `model` as for `qc_compile`; `dims` must point to `max_dims` writable `size_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_input_dims(model: *const QcModel, dims: *mut usize, max_dims: usize) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_ref() }.ok_or("qc_input_dims: model is NULL")?;
        let p = *m.graph.params().first().ok_or("the model has no input")?;
        let ty = m.graph.ty(p);
        if dims.is_null() && max_dims > 0 {
            return Err("qc_input_dims: dims is NULL".into());
        }
        for (i, d) in ty.dims.iter().take(max_dims).enumerate() {
            // SAFETY: i < max_dims, and the caller provides that many.
            unsafe { *dims.add(i) = d.fixed().unwrap_or(0) as usize };
        }
        Ok(ty.rank() as c_int)
    })
}

/// Runs a compiled model on one f32 input; 0 or -1.
///
/// # Safety
/// `model` as for `qc_compile`; `input` must point to the product of `shape[..rank]` floats,
/// `shape` to `rank` sizes, and `output` to `output_len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_run(
    model: *const QcModel,
    input: *const f32,
    shape: *const usize,
    rank: usize,
    output: *mut f32,
    output_len: usize,
) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_ref() }.ok_or("qc_run: model is NULL")?;
        let compiled = m.compiled.as_ref().ok_or("qc_run: call qc_compile first")?;
        if input.is_null() || shape.is_null() || output.is_null() {
            return Err("qc_run: a pointer is NULL".into());
        }
        if rank > 8 {
            return Err(format!("qc_run: rank {rank} is too large"));
        }
        // SAFETY: `shape` holds `rank` sizes.
        let dims = unsafe { std::slice::from_raw_parts(shape, rank) }.to_vec();
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= 1 << 32)
            .ok_or("qc_run: the shape is too large")?;
        // SAFETY: `input` holds the product of the dims, n floats.
        let data = unsafe { std::slice::from_raw_parts(input, n) }.to_vec();
        let x = Tensor::F32(ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), data).map_err(|e| e.to_string())?);
        let y = compiled.run(&[x]).map_err(|e| e.to_string())?.remove(0);
        let a = y.as_f32().ok_or("qc_run: the model's output is not f32")?;
        if a.len() != output_len {
            return Err(format!("qc_run: the output has {} values, the buffer {output_len}", a.len()));
        }
        // SAFETY: `output` holds `output_len` floats, which is a.len().
        let out = unsafe { std::slice::from_raw_parts_mut(output, output_len) };
        for (o, v) in out.iter_mut().zip(a.iter()) {
            *o = *v;
        }
        Ok(0)
    })
}

/// Frees a model.
///
/// # Safety
/// `model` must be NULL or a pointer returned by `qc_load`, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_free(model: *mut QcModel) {
    if !model.is_null() {
        // SAFETY: the pointer came from Box::into_raw in qc_load and is freed once.
        drop(unsafe { Box::from_raw(model) });
    }
}

/// The last error of this thread, or NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qc_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |s| s.as_ptr()))
}
