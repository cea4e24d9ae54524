//! A small wrapper over Cranelift's JIT: the host ISA (from `cranelift-native`), functions built
//! with a closure, and finalized code that stays alive as long as the [`JitCode`] that owns it.

use cranelift_codegen::ir::{AbiParam, Function, Type, UserFuncName, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, isa::OwnedTargetIsa};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};

/// The host ISA with the settings qc's kernels want, detected once per process.
pub fn host_isa() -> Result<OwnedTargetIsa, String> {
    static ISA: std::sync::OnceLock<Result<OwnedTargetIsa, String>> = std::sync::OnceLock::new();
    ISA.get_or_init(detect_isa).clone()
}

/// Whether Cranelift's host ISA has the boolean flag `name` set (`has_avx512vnni`): the
/// instructions its lowering rules may use on this CPU.
pub fn host_flag(name: &str) -> bool {
    host_isa().is_ok_and(|isa| isa.isa_flags().iter().any(|f| f.name == name && f.as_bool() == Some(true)))
}

/// The signatures qc's kernels are defined with, as Rust function pointer types: the only
/// types [`JitCode::function`] turns code into.
pub trait KernelFn: Copy + sealed::Sealed {
    /// The Cranelift parameters of the signature, given the pointer type.
    fn params(pointer: Type) -> Vec<Type>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::RowsFn {}
    impl Sealed for super::BufferFn {}
}

/// `f(input, output, rows)`: a kernel over `rows` rows (or groups, or images) of its input.
pub type RowsFn = unsafe extern "C" fn(*const u8, *mut u8, i64);
/// `f(input, output, buffer)`: a kernel over one image that uses a buffer of its own.
pub type BufferFn = unsafe extern "C" fn(*const u8, *mut u8, *mut u8);

impl KernelFn for RowsFn {
    fn params(pointer: Type) -> Vec<Type> {
        vec![pointer, pointer, cranelift_codegen::ir::types::I64]
    }
}

impl KernelFn for BufferFn {
    fn params(pointer: Type) -> Vec<Type> {
        vec![pointer, pointer, pointer]
    }
}

/// `opt_level = "none"`: on kernel code it ran faster than `"speed"` (measured; see
/// docs/decisions.md) and compiles 2–3× faster. The IR verifier (about half of the
/// compile time of a kernel) runs in debug builds only: release builds rely on the kernels'
/// bit-exact property tests, which run the same IR builders.
fn detect_isa() -> Result<OwnedTargetIsa, String> {
    let mut flags = settings::builder();
    flags.set("opt_level", "none").map_err(|e| e.to_string())?;
    flags.set("use_colocated_libcalls", "false").map_err(|e| e.to_string())?;
    flags.set("is_pic", "false").map_err(|e| e.to_string())?;
    flags.set("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }).map_err(|e| e.to_string())?;
    let isa = cranelift_native::builder().map_err(|e| format!("this host is not supported by Cranelift: {e}"))?;
    isa.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())
}

/// Functions being built into one JIT module.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    count: usize,
    /// Each defined function's parameters, by id.
    signatures: Vec<(FuncId, Vec<Type>)>,
}

impl Jit {
    /// A new module for the host.
    pub fn new() -> Result<Jit, String> {
        let module = JITModule::new(JITBuilder::with_isa(host_isa()?, default_libcall_names()));
        Ok(Jit { ctx: module.make_context(), module, fctx: FunctionBuilderContext::new(), count: 0, signatures: Vec::new() })
    }

    /// The pointer type.
    pub fn pointer_type(&self) -> Type {
        self.module.target_config().pointer_type()
    }

    /// Defines a function taking `params` and returning nothing; `build` emits its body from the
    /// entry block (whose parameters it receives) and must end it with a return.
    pub fn define(&mut self, params: &[Type], build: impl FnOnce(&mut FunctionBuilder, &[Value])) -> Result<FuncId, String> {
        self.module.clear_context(&mut self.ctx);
        for &p in params {
            self.ctx.func.signature.params.push(AbiParam::new(p));
        }
        let name = format!("qc_kernel_{}", self.count);
        self.count += 1;
        let id = self.module.declare_function(&name, Linkage::Local, &self.ctx.func.signature).map_err(|e| e.to_string())?;
        self.ctx.func = Function::with_name_signature(UserFuncName::user(0, id.as_u32()), self.ctx.func.signature.clone());
        let config = self.module.target_config();
        let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let args = b.block_params(entry).to_vec();
        build(&mut b, &args);
        b.finalize(config);
        self.module.define_function(id, &mut self.ctx).map_err(|e| format!("Cranelift rejected a kernel: {e:?}"))?;
        self.signatures.push((id, params.to_vec()));
        Ok(id)
    }

    /// Finalizes every function; the code lives as long as the returned [`JitCode`].
    pub fn finish(mut self) -> Result<JitCode, String> {
        self.module.finalize_definitions().map_err(|e| e.to_string())?;
        let pointer = self.pointer_type();
        Ok(JitCode { module: Some(self.module), signatures: self.signatures, pointer })
    }
}

/// Finalized machine code.
pub struct JitCode {
    module: Option<JITModule>,
    signatures: Vec<(FuncId, Vec<Type>)>,
    pointer: Type,
}

// SAFETY: after `finalize_definitions` the module's code and data are immutable; `JitCode` only
// hands out function addresses, and the memory is freed once, when it is dropped.
unsafe impl Send for JitCode {}
// SAFETY: as above; no method takes `&self` mutably or changes the code.
unsafe impl Sync for JitCode {}

impl JitCode {
    /// The finalized function `id` as the Rust function type `F`, or an error when it was not
    /// defined with `F`'s parameters. The pointer is valid while this `JitCode` lives: whoever
    /// keeps it keeps the code too (kernels hold their `Arc<JitCode>` next to the pointer).
    pub fn function<F: KernelFn>(&self, id: FuncId) -> Result<F, String> {
        let params = self.signatures.iter().find(|(f, _)| *f == id).map(|(_, p)| p);
        if params != Some(&F::params(self.pointer)) {
            return Err(format!("JIT function {} was not defined as a {}", id.as_u32(), std::any::type_name::<F>()));
        }
        let code = self.module.as_ref().expect("alive until dropped").get_finalized_function(id);
        const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*const u8>()) };
        // SAFETY: `code` is the entry of a finalized function whose Cranelift signature is the
        // one `F` declares (checked just above; `KernelFn` is implemented only for `extern "C"`
        // pointer types of those parameters, returning nothing), in the host's default calling
        // convention, which is System V's on x86-64 as `extern "C"` is; both are one pointer wide.
        Ok(unsafe { std::mem::transmute_copy::<*const u8, F>(&code) })
    }
}

impl Drop for JitCode {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: no function pointer obtained from this module outlives `JitCode`: kernels
            // keep their `JitCode` in an `Arc` next to the pointers.
            unsafe { m.free_memory() };
        }
    }
}
