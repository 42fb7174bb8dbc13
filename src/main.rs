//! The `keygate` binary: parse, dispatch, print errors once, exit.

use std::process::ExitCode;

use clap::Parser as _;

mod cli;

// glibc's malloc serialises the runtime's threads on its arena locks under
// load; mimalloc keeps per-thread heaps (bench/RESULTS.md has the figures).
// Built without transparent huge pages (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let is_doctor = args.is_doctor();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            cli::output::print_error(&error);
            // `doctor` promises 2 when it cannot run; other commands exit 1.
            ExitCode::from(if is_doctor { 2 } else { 1 })
        }
    }
}
