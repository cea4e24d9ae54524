//! The `qc` command line: the arguments are parsed (`cli/args.rs`), each command builds what the
//! library takes, calls it and prints what it returns (`cli/compile.rs`, `cli/measure.rs`,
//! `cli/files.rs`). Errors become one line (or a rendered diagnostic) on stderr and the exit
//! code of [`qc::QcError::exit_code`].
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;
use cli::args::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    cli::set_verbosity(cli.quiet, cli.verbose);
    let result = match cli.command {
        Command::Import { model, output, input_shape } => cli::files::import(&model, &output, &input_shape),
        Command::Fmt { model, check } => cli::files::fmt(&model, check),
        Command::Passes => {
            cli::files::list_passes();
            Ok(())
        }
        Command::Compile { args, json } => cli::compile::compile(args, json),
        Command::Analyze { args, quantized, plots, json } => {
            cli::compile::analyze(args, quantized.as_deref(), plots.as_deref(), json)
        }
        Command::Pack { model, output, weights } => cli::files::pack(&model, &output, weights.as_deref()),
        Command::Size { args, test, labels, json } => cli::compile::size(args, test.as_deref().zip(labels.as_deref()), json),
        Command::Eval { args, json } => cli::measure::eval(args, json),
        Command::Bench { args, json } => cli::measure::bench(args, json),
        Command::Export { model, output, weights } => cli::files::export(&model, &output, weights.as_deref()),
        Command::Run { model, input, output, weights, engine, isa, threads, json } => {
            cli::measure::run(&model, &input, &output, weights.as_deref(), engine, &isa, threads, json)
        }
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(e.exit_code());
    }
}
