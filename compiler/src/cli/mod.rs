//! The commands of the `qc` binary.

pub(crate) mod args;
pub(crate) mod compile;
pub(crate) mod files;
pub(crate) mod measure;

use qc::QcError;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// How much `qc` says on stderr beyond errors: 0 with `--quiet`, 1 by default, 2 with `--verbose`.
static VERBOSITY: AtomicU8 = AtomicU8::new(1);

/// Sets what [`quiet`] and [`verbose`] answer (from `--quiet`, `--verbose`).
pub(crate) fn set_verbosity(quiet: bool, verbose: bool) {
    VERBOSITY.store(
        if quiet {
            0
        } else if verbose {
            2
        } else {
            1
        },
        Ordering::Relaxed,
    );
}

/// `--quiet`: no notes, no progress bars.
pub(crate) fn quiet() -> bool {
    VERBOSITY.load(Ordering::Relaxed) == 0
}

/// `--verbose`: timings as well.
pub(crate) fn verbose() -> bool {
    VERBOSITY.load(Ordering::Relaxed) == 2
}

/// Prints a note to stderr, unless `--quiet`.
#[macro_export]
macro_rules! note {
    ($($t:tt)*) => {{
        if !$crate::cli::quiet() {
            eprintln!($($t)*);
        }
    }};
}

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

/// Prints JSON to stdout, pretty, ending the line.
pub(crate) fn say_json(v: &serde_json::Value) {
    say!("{}", serde_json::to_string_pretty(v).expect("JSON values serialize"));
}
