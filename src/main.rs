//! The `keygate` binary: parse, dispatch, print errors once, exit.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            cli::output::print_error(&error);
            ExitCode::from(1)
        }
    }
}
