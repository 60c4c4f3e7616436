//! The command line: `serve`, `simulate`, the `scan` client and `wait`, one function each.

mod scan;
mod serve;
#[cfg(feature = "simulator")]
mod simulate;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// scan-gateway: run Microsoft Defender for Endpoint antivirus scans over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up, so the variants' sizes do not matter (without the simulator's
// variant, clippy sees `Serve` as much larger than the rest).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start; `serve` carries every setting of the gateway"
)]
pub enum Command {
    /// Serve ScanService (add --simulate to run against the embedded Defender simulator).
    Serve(serve::ServeArgs),
    /// Run the Defender API and token endpoint simulator alone.
    #[cfg(feature = "simulator")]
    Simulate(simulate::SimulateArgs),
    /// Start a scan through a gateway and follow it live; exits 0 only when it succeeds.
    Scan(scan::ScanArgs),
    /// Wait for a duration, then exit 0 (the chart's preStop hook: the image has no `sleep`).
    Wait(wait::WaitArgs),
}

/// Runs the chosen command on a multi-threaded runtime.
pub fn run(cli: Cli) -> ExitCode {
    // The only TLS provider in the tree; installing it explicitly avoids a runtime choice.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            #[cfg(feature = "simulator")]
            Command::Simulate(args) => simulate::run(args).await,
            Command::Scan(args) => scan::run(args).await,
            Command::Wait(args) => wait::run(args).await,
        }
    })
}

/// Completes on SIGTERM (Kubernetes) or Ctrl-C. The handlers are registered when this is
/// called, so call it before anything slow.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match terminate.as_mut() {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
