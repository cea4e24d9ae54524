//! The commands of the `qc` binary.

pub(crate) mod args;
pub(crate) mod compile;
pub(crate) mod files;
pub(crate) mod measure;

use qc::QcError;

/// Prints a line to stdout; a closed pipe (`qc ... | head`) ends the output quietly instead of
/// panicking.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// A usage error (exit code 2).
pub(crate) fn usage(e: impl std::fmt::Display) -> QcError {
    QcError::Usage(format!("{e}"))
}

/// The codegen options of `--isa LEVEL` (`host`: this CPU's best) and `--threads N`.
pub(crate) fn codegen_options(isa: &str, threads: usize) -> Result<qc_codegen::CodegenOptions, QcError> {
    let isa: qc_codegen::Isa = isa.parse().map_err(|e| usage(format!("--isa: {e}")))?;
    if threads == 0 {
        return Err(usage("--threads: a model runs on at least one thread"));
    }
    Ok(qc_codegen::CodegenOptions { isa, threads })
}
