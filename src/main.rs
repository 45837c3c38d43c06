use std::process::ExitCode;

use clap::Parser;
use dna_mamba::cli;
use dna_mamba::output::{file::remove_partials_on_signal, is_broken_pipe};

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if let Err(e) = remove_partials_on_signal() {
        eprintln!("warning: {e:#}; an interrupted run may leave a .partial file behind");
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // `| head` closing the pipe is a normal end of a pipeline, not a failure
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
