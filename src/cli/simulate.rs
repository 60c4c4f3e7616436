//! `scan-gateway simulate`: the Defender API and token endpoint simulator on its own, for
//! testing other services (or a gateway in real mode) against it.

use std::process::ExitCode;

use defender_simulator::{Simulator, SimulatorArgs};

use crate::{
    clock::Clock,
    telemetry::{self, LogFormat},
};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    simulator: SimulatorArgs,
}

pub async fn run(args: SimulateArgs) -> ExitCode {
    let shutdown = super::shutdown_signal();
    // The simulator exports no spans: it plays Microsoft's side.
    let _logs = telemetry::init(LogFormat::from_env(LogFormat::for_stderr()), "info", None);
    let config = match args.simulator.to_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let simulator =
        match Simulator::bind(args.simulator.listen, config.clone(), Clock::system()).await {
            Ok(simulator) => simulator,
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.simulator.listen);
                return ExitCode::from(2);
            }
        };
    println!(
        "Defender API simulator listening on {}",
        simulator.base_url()
    );
    println!("  MDE_API_BASE_URL={}", simulator.base_url());
    println!("  AZURE_AUTHORITY_HOST={}", simulator.authority_url());
    println!("  AZURE_TENANT_ID={}", config.tenant_id);
    println!("  AZURE_CLIENT_ID={}", config.client_id);
    println!(
        "  AZURE_CLIENT_SECRET=<the --client-secret value; simulator default: simulator-secret>"
    );
    println!("Machines:");
    for id in simulator.handle().demo_machine_ids(5) {
        println!("  {id}");
    }
    match simulator.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
