//! The `scan-gateway` command: parses the command line and dispatches.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = scan_gateway::cli::Cli::parse();
    scan_gateway::cli::run(cli)
}
