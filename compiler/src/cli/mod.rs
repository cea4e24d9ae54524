//! The commands of the `qc` binary.

pub(crate) mod args;
pub(crate) mod compile;
pub(crate) mod files;
pub(crate) mod measure;

use qc::QcError;
use std::io::Write;

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

/// Standard output for what the passes print (`--print-after-all`): a reader that went away
/// (`| head`) ends the program quietly, as `say!` does, instead of failing the pass that printed.
pub(crate) struct QuietPipe<W: Write>(pub(crate) W);

impl<W: Write> Write for QuietPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            r => r,
        }
    }
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
