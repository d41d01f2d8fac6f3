//! Thin binary: parse the command line, run, map errors to exit code 2.
use std::process::ExitCode;

fn main() -> ExitCode {
    oomdoc::cli::main()
}
