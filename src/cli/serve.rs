//! `scan-gateway serve [--simulate]`

use std::{net::SocketAddr, process::ExitCode};

use crate::{
    clock::Clock,
    config::{ConfigArgs, Settings},
    startup::Gateway,
    telemetry::{self, LogFormat, TraceSettings},
};
// Only `--simulate` uses these, and only a build with the simulator has it.
#[cfg(feature = "simulator")]
use {
    crate::{config::Credentials, credentials::ClientAuth},
    defender_simulator::{Simulator, SimulatorConfig},
    std::time::Duration,
};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Start the Defender simulator in-process on a loopback port and use it (no tenant needed).
    #[arg(long)]
    simulate: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn run(args: ServeArgs) -> ExitCode {
    let shutdown = super::shutdown_signal();
    let traces = match TraceSettings::from_env() {
        Ok(traces) => traces,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(
        LogFormat::from_env(LogFormat::for_stderr()),
        "info",
        traces.as_ref(),
    ) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(traces) = &traces {
        tracing::info!(endpoint = %traces.endpoint, "exporting spans over OTLP/gRPC");
    }
    let code = serve(args, shutdown).await;
    // After the drain, so the spans of the last calls are in the flush.
    telemetry.shutdown().await;
    code
}

async fn serve(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> ExitCode {
    let clock = Clock::system();
    let mut settings = match Settings::load(&args.config) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };

    let (shutdown_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut simulator = None;
    if args.simulate {
        let mut stop = shutdown_tx.subscribe();
        let stop = async move {
            let _ = stop.recv().await;
        };
        match Embedded::start(&mut settings, &args.config, clock, stop).await {
            Ok(started) => simulator = Some(started),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        }
    }

    let gateway = match Gateway::build(&settings, clock).await {
        Ok(gateway) => gateway,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    // The gateway holds a credential that can scan every device of the tenant: in real mode
    // an open door must be chosen on purpose.
    if !args.simulate && !settings.security.authenticates() {
        if !settings.allow_unauthenticated {
            eprintln!("error: {UNAUTHENTICATED}");
            return ExitCode::from(2);
        }
        tracing::warn!(
            "serving without caller authentication (SCAN_GATEWAY_ALLOW_UNAUTHENTICATED=true): every caller may scan and cancel on every device of the tenant"
        );
    }
    if let Some(simulator) = &simulator {
        print_banner(
            gateway.local_addr(),
            gateway.admin_addr(),
            simulator.url(),
            simulator.machines(),
        );
    }
    let result = gateway.run_until_stopped(shutdown).await;
    let _ = shutdown_tx.send(());
    if let Some(simulator) = simulator {
        simulator.stopped().await;
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = %err, "the gateway failed");
            ExitCode::FAILURE
        }
    }
}

/// The simulator `--simulate` runs in-process, serving until the gateway has stopped.
#[cfg(feature = "simulator")]
struct Embedded {
    url: String,
    machines: Vec<String>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[cfg(feature = "simulator")]
impl Embedded {
    /// Binds a demo simulator on a loopback port and points `settings` at it.
    async fn start(
        settings: &mut Settings,
        args: &ConfigArgs,
        clock: Clock,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, String> {
        // Action ids of this run's own: one saved from an earlier run must not name another
        // action (the machines stay the same, so their ids can be reused).
        let config = SimulatorConfig::demo().with_fresh_action_ids();
        let simulator =
            Simulator::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config.clone(), clock)
                .await
                .map_err(|err| format!("cannot start the embedded simulator: {err}"))?;
        use_simulator(settings, args, &simulator, &config);
        Ok(Self {
            url: simulator.base_url(),
            machines: simulator.handle().demo_machine_ids(3),
            task: tokio::spawn(simulator.run_until_stopped(stop)),
        })
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn machines(&self) -> &[String] {
        &self.machines
    }

    async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Built without the `simulator` feature there is no simulator to embed: `--simulate` is
/// refused with a message that says so, and no value of this type can exist.
#[cfg(not(feature = "simulator"))]
enum Embedded {}

#[cfg(not(feature = "simulator"))]
impl Embedded {
    async fn start(
        _settings: &mut Settings,
        _args: &ConfigArgs,
        _clock: Clock,
        _stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self, String> {
        Err("--simulate: this scan-gateway was built without the embedded Defender simulator (cargo feature `simulator`); configure a Defender tenant instead".into())
    }

    fn url(&self) -> &str {
        match *self {}
    }

    fn machines(&self) -> &[String] {
        match *self {}
    }

    async fn stopped(self) {
        match self {}
    }
}

/// Points the gateway at the embedded simulator. Listeners default to loopback here: a demo
/// is not meant to be reachable from the network.
#[cfg(feature = "simulator")]
fn use_simulator(
    settings: &mut Settings,
    args: &ConfigArgs,
    simulator: &Simulator,
    config: &SimulatorConfig,
) {
    settings.credentials = Some(Credentials {
        tenant_id: config.tenant_id.clone(),
        client_id: config.client_id.clone(),
        auth: ClientAuth::Secret(config.client_secret.clone()),
    });
    // The simulator's own URLs are loopback http://, which the URL check accepts.
    if let Ok(url) = crate::upstream::parse_base_url(&simulator.base_url()) {
        settings.api_base_url = url;
    }
    if let Ok(url) = crate::upstream::parse_base_url(&simulator.authority_url()) {
        settings.authority_host = url;
    }
    if args.listen.is_none() {
        settings.listen = SocketAddr::from(([127, 0, 0, 1], 50051));
    }
    if args.admin_listen.is_none() {
        settings.admin_listen = SocketAddr::from(([127, 0, 0, 1], 9464));
    }
    if args.poll_interval.is_none() {
        // Demo scans last seconds; poll often enough to show every step.
        settings.poll_interval = Duration::from_millis(500);
    }
}

fn print_banner(grpc: SocketAddr, admin: SocketAddr, simulator: &str, machines: &[String]) {
    let machine = machines
        .first()
        .map(String::as_str)
        .unwrap_or("<machine id>");
    println!("scan-gateway is serving against the embedded Defender simulator");
    println!("  gRPC       {grpc}   (defender.scan.v1.ScanService, health, reflection)");
    println!("  admin      http://{admin}/metrics  /healthz  /readyz");
    println!("  simulator  {simulator}");
    println!();
    println!("Machines you can scan:");
    for id in machines {
        println!("  {id}");
    }
    println!();
    println!("Try, in another terminal:");
    println!(
        "  cargo run -- scan --gateway http://{grpc} --machine {machine} --comment \"my first scan\""
    );
    println!(
        "  grpcurl -plaintext -d '{{\"machine_id\":\"{machine}\",\"scan_type\":\"SCAN_TYPE_QUICK\",\"comment\":\"hello\"}}' {grpc} defender.scan.v1.ScanService/RunScan"
    );
    println!();
}

const UNAUTHENTICATED: &str = "callers are not authenticated: anyone who reaches the port could scan and cancel on every device of the tenant. \
Turn on mutual TLS (SCAN_GATEWAY_TLS_CERT, SCAN_GATEWAY_TLS_KEY, SCAN_GATEWAY_TLS_CLIENT_CA) or bearer JWTs (SCAN_GATEWAY_JWKS, SCAN_GATEWAY_JWT_ISSUER, SCAN_GATEWAY_JWT_AUDIENCE), \
or accept an open port on purpose with SCAN_GATEWAY_ALLOW_UNAUTHENTICATED=true (serve --simulate needs neither)";
