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
    /// The inputs' and outputs' names, as C strings (`qc_input_name`, `qc_output_name`).
    input_names: Vec<CString>,
    output_names: Vec<CString>,
}

/// One input of `qc_run_many`: its data (of the input's element type, `qc_input_type`) and shape.
#[repr(C)]
pub struct QcInput {
    pub data: *const std::ffi::c_void,
    pub shape: *const usize,
    pub rank: usize,
}

/// One output of `qc_run_many`: the caller's buffer of `len` floats; qc writes the values and the
/// output's shape (at most 8 dims) and rank.
#[repr(C)]
pub struct QcOutput {
    pub data: *mut f32,
    pub len: usize,
    pub shape: [usize; 8],
    pub rank: usize,
}

/// `qc_input_type`'s answers.
pub const QC_F32: c_int = 0;
pub const QC_I64: c_int = 1;

/// The names of `values` as C strings (a value without a name gets its number).
fn c_names(g: &qc_ir::Graph, values: &[qc_ir::ValueId]) -> Vec<CString> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let name = g.value(v).name.clone().unwrap_or_else(|| i.to_string()).replace('\0', " ");
            CString::new(name).unwrap_or_default()
        })
        .collect()
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
        let (input_names, output_names) =
            (c_names(&model.graph, model.graph.params()), c_names(&model.graph, model.graph.outputs()));
        Ok(Box::into_raw(Box::new(QcModel { graph: model.graph, compiled: None, input_names, output_names })))
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
        // SAFETY: as the caller promised for `dims`.
        unsafe { write_dims(m.graph.ty(p), dims, max_dims) }.map_err(|e| format!("qc_input_dims: {e}"))
    })
}

/// The number of the model's inputs (0 for NULL).
///
/// # Safety
/// `model` as for `qc_compile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_input_count(model: *const QcModel) -> usize {
    // SAFETY: see above.
    unsafe { model.as_ref() }.map_or(0, |m| m.graph.params().len())
}

/// The number of the model's outputs (0 for NULL).
///
/// # Safety
/// `model` as for `qc_compile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_output_count(model: *const QcModel) -> usize {
    // SAFETY: see above.
    unsafe { model.as_ref() }.map_or(0, |m| m.graph.outputs().len())
}

/// Input `i`'s name, or NULL; valid while the model lives.
///
/// # Safety
/// `model` as for `qc_compile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_input_name(model: *const QcModel, i: usize) -> *const c_char {
    // SAFETY: see above.
    unsafe { model.as_ref() }.and_then(|m| m.input_names.get(i)).map_or(std::ptr::null(), |n| n.as_ptr())
}

/// Output `i`'s name, or NULL; valid while the model lives.
///
/// # Safety
/// `model` as for `qc_compile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_output_name(model: *const QcModel, i: usize) -> *const c_char {
    // SAFETY: see above.
    unsafe { model.as_ref() }.and_then(|m| m.output_names.get(i)).map_or(std::ptr::null(), |n| n.as_ptr())
}

/// Input `i`'s element type: `QC_F32`, `QC_I64`, or -1 (another type, or an error).
///
/// # Safety
/// `model` as for `qc_compile`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_input_type(model: *const QcModel, i: usize) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_ref() }.ok_or("qc_input_type: model is NULL")?;
        let &p = m.graph.params().get(i).ok_or(format!("qc_input_type: the model has no input {i}"))?;
        match m.graph.ty(p).elem.storage() {
            qc_ir::ScalarType::F32 => Ok(QC_F32),
            qc_ir::ScalarType::I64 => Ok(QC_I64),
            t => Err(format!("qc_input_type: input {i} holds {t}, which the C ABI does not pass")),
        }
    })
}

/// Input `i`'s rank and dims, as `qc_input_dims` gives input 0's.
///
/// # Safety
/// As `qc_input_dims`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_input_dims_at(model: *const QcModel, i: usize, dims: *mut usize, max_dims: usize) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_ref() }.ok_or("qc_input_dims_at: model is NULL")?;
        let &p = m.graph.params().get(i).ok_or(format!("qc_input_dims_at: the model has no input {i}"))?;
        // SAFETY: as the caller promised for `dims`.
        unsafe { write_dims(m.graph.ty(p), dims, max_dims) }
    })
}

/// Writes `ty`'s dims (0 for a dynamic one) to `dims`, at most `max_dims`; returns the rank.
///
/// # Safety
/// `dims` points to `max_dims` writable `size_t`s.
unsafe fn write_dims(ty: &qc_ir::TensorType, dims: *mut usize, max_dims: usize) -> Result<c_int, String> {
    if dims.is_null() && max_dims > 0 {
        return Err("dims is NULL".into());
    }
    for (i, d) in ty.dims.iter().take(max_dims).enumerate() {
        // SAFETY: i < max_dims, and the caller provides that many.
        unsafe { *dims.add(i) = d.fixed().unwrap_or(0) as usize };
    }
    Ok(ty.rank() as c_int)
}

/// The values of a shape of `rank` dims at `shape`, with their product (bounded).
///
/// # Safety
/// `shape` points to `rank` sizes.
unsafe fn dims_of(shape: *const usize, rank: usize, what: &str) -> Result<(Vec<usize>, usize), String> {
    if shape.is_null() {
        return Err(format!("{what}: shape is NULL"));
    }
    if rank > 8 {
        return Err(format!("{what}: rank {rank} is too large"));
    }
    // SAFETY: `shape` holds `rank` sizes.
    let dims = unsafe { std::slice::from_raw_parts(shape, rank) }.to_vec();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 32)
        .ok_or(format!("{what}: the shape is too large"))?;
    Ok((dims, n))
}

/// Runs a compiled model on its `n_inputs` inputs (in the model's order, each of its element
/// type: f32 or int64) into its `n_outputs` f32 outputs, writing each output's values, shape and
/// rank; 0 or -1.
///
/// # Safety
/// `model` as for `qc_compile`; `inputs` points to `n_inputs` `qc_input`s, each `data` to the
/// product of its `shape[..rank]` elements of the input's type; `outputs` to `n_outputs`
/// `qc_output`s, each `data` to `len` writable floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn qc_run_many(
    model: *const QcModel,
    inputs: *const QcInput,
    n_inputs: usize,
    outputs: *mut QcOutput,
    n_outputs: usize,
) -> c_int {
    guard(-1, || {
        // SAFETY: see above.
        let m = unsafe { model.as_ref() }.ok_or("qc_run_many: model is NULL")?;
        let compiled = m.compiled.as_ref().ok_or("qc_run_many: call qc_compile first")?;
        let params = m.graph.params();
        if n_inputs != params.len() || n_outputs != m.graph.outputs().len() {
            return Err(format!(
                "qc_run_many: the model takes {} inputs and gives {} outputs, not {n_inputs} and {n_outputs}",
                params.len(),
                m.graph.outputs().len()
            ));
        }
        if (n_inputs > 0 && inputs.is_null()) || (n_outputs > 0 && outputs.is_null()) {
            return Err("qc_run_many: inputs or outputs is NULL".into());
        }
        // SAFETY: `inputs` holds `n_inputs` descriptions.
        let descs = if n_inputs == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(inputs, n_inputs) } };
        let mut xs = Vec::with_capacity(n_inputs);
        for (i, (d, &p)) in descs.iter().zip(params).enumerate() {
            let what = format!("qc_run_many: input {i}");
            // SAFETY: `d.shape` holds `d.rank` sizes.
            let (dims, n) = unsafe { dims_of(d.shape, d.rank, &what) }?;
            if d.data.is_null() {
                return Err(format!("{what}: data is NULL"));
            }
            let shape = ndarray::IxDyn(&dims);
            let x = match m.graph.ty(p).elem.storage() {
                // SAFETY: `data` holds `n` elements of the input's type.
                qc_ir::ScalarType::F32 => Tensor::F32(
                    ndarray::ArrayD::from_shape_vec(
                        shape,
                        unsafe { std::slice::from_raw_parts(d.data.cast::<f32>(), n) }.to_vec(),
                    )
                    .map_err(|e| e.to_string())?,
                ),
                // SAFETY: as above.
                qc_ir::ScalarType::I64 => Tensor::I64(
                    ndarray::ArrayD::from_shape_vec(
                        shape,
                        unsafe { std::slice::from_raw_parts(d.data.cast::<i64>(), n) }.to_vec(),
                    )
                    .map_err(|e| e.to_string())?,
                ),
                t => return Err(format!("{what} holds {t}, which the C ABI does not pass")),
            };
            xs.push(x);
        }
        let ys = compiled.run(&xs).map_err(|e| e.to_string())?;
        // SAFETY: `outputs` holds `n_outputs` descriptions.
        let outs = if n_outputs == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(outputs, n_outputs) } };
        for (i, (o, y)) in outs.iter_mut().zip(&ys).enumerate() {
            let a = y.as_f32().ok_or(format!("qc_run_many: output {i} is not f32"))?;
            if a.len() != o.len || o.data.is_null() || a.ndim() > 8 {
                return Err(format!("qc_run_many: output {i} has {} values of rank {}, the buffer {}", a.len(), a.ndim(), o.len));
            }
            // SAFETY: `o.data` holds `o.len` floats, which is a.len().
            let out = unsafe { std::slice::from_raw_parts_mut(o.data, o.len) };
            for (d, v) in out.iter_mut().zip(a.iter()) {
                *d = *v;
            }
            o.rank = a.ndim();
            o.shape = [0; 8];
            o.shape[..a.ndim()].copy_from_slice(a.shape());
        }
        Ok(0)
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
        // SAFETY: `shape` holds `rank` sizes.
        let (dims, n) = unsafe { dims_of(shape, rank, "qc_run") }?;
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
