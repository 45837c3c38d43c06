use std::process::ExitCode;

use clap::Parser;
use dna_mamba::cli;
use dna_mamba::io::output::is_broken_pipe;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
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
