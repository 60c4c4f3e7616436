//! The `scan-gateway` command: parses the command line and dispatches.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// Only with the `mimalloc` feature (a measured alternative, not the default; see Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Only with the `jemalloc` feature (a measured alternative; see Cargo.toml).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = scan_gateway::cli::Cli::parse();
    scan_gateway::cli::run(cli)
}
