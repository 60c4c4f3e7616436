//! Reads under polling callers (issue 15): 1,000 callers each call `GetScan` once a second on
//! 100 running actions for a minute (`READS_BENCH_SECONDS`), through one gateway with its
//! default settings (10 s poll interval, so a 20 s freshness bound; the documented quota) in
//! front of the simulator with Defender's documented quota (the per-caller rate limit off: the
//! callers share one address, so they would be one caller). Printed: the upstream GETs and
//! lists the reads cost, next to the calls a pass-through gateway would make (one GET per read)
//! and what the get-action quota allows in that time; the upstream 429s (must be 0); the
//! callers' errors; and the staleness they saw (answer time minus `observed_at`), p50 and p99.
//!
//! Everything runs in this process on 127.0.0.1. Run: `cargo bench --bench reads`.
//! `cargo test --all-targets` runs this main without `--bench`; it exits at once.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use defender_simulator::{Simulator, SimulatorConfig};
use scan_gateway::{
    clock::Clock,
    config::{ConfigArgs, Settings},
    grpc::pb::{self, scan_service_client::ScanServiceClient},
    startup::Gateway,
};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tonic::transport::Channel;

const CALLERS: usize = 1000;
const ACTIONS: usize = 100;
/// HTTP/2 connections the callers share (each carries up to 1,000 streams).
const CHANNELS: usize = 8;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn seconds() -> u64 {
    std::env::var("READS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reads: benchmark skipped (run it with `cargo bench --bench reads`)");
        return Ok(());
    }
    let seconds = seconds();
    let mut config = SimulatorConfig::demo();
    config.machine_count = ACTIONS * 2;
    // The actions stay InProgress for the whole run.
    config.pending_duration = Duration::from_secs(1);
    config.quick_scan_duration = Duration::from_secs(3600);
    config.failed_share = 0.0;
    config.timed_out_share = 0.0;
    let simulator =
        Simulator::bind("127.0.0.1:0".parse()?, config.clone(), Clock::system()).await?;
    let handle = simulator.handle();
    let (base, authority) = (simulator.base_url(), simulator.authority_url());
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(simulator.run_until_stopped(async {
        let _ = sim_stopped.await;
    }));

    let args = ConfigArgs {
        tenant_id: Some(config.tenant_id.clone()),
        client_id: Some(config.client_id.clone()),
        client_secret: Some(config.client_secret.expose_secret().to_owned().into()),
        authority_host: Some(authority),
        api_base_url: Some(base),
        listen: Some("127.0.0.1:0".parse()?),
        admin_listen: Some("127.0.0.1:0".parse()?),
        // 1,000 callers from one address are one caller to the per-caller rate limit.
        caller_rate: Some(0.0),
        ..ConfigArgs::default()
    };
    let settings = Settings::load(&args)?;
    let gateway = Gateway::build(&settings, Clock::system()).await?;
    let addr = gateway.local_addr();
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.run_until_stopped(async {
        let _ = gateway_stopped.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }

    // 100 running scans, one per machine (the run-scan quota allows 100 a minute).
    let mut client = ScanServiceClient::new(channels[0].clone());
    let mut actions = Vec::new();
    for machine in handle.demo_machine_ids(ACTIONS) {
        let started = client
            .start_scan(pb::StartScanRequest {
                machine_id: machine,
                scan_type: pb::ScanType::Quick as i32,
                comment: "reads benchmark".into(),
                request_id: String::new(),
                priority: 0,
            })
            .await?
            .into_inner();
        actions.push(started.action.ok_or("no action")?.id);
    }
    let before = handle.stats();
    println!(
        "reads: {CALLERS} callers, one GetScan a second each on {ACTIONS} running actions, {seconds} s"
    );

    let staleness = Arc::new(Mutex::new(Vec::with_capacity(CALLERS * seconds as usize)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let began = Instant::now();
    let until = began + Duration::from_secs(seconds);
    let mut callers = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let mut client = ScanServiceClient::new(channels[caller % CHANNELS].clone());
        let action_id = actions[caller % ACTIONS].clone();
        let (staleness, errors) = (staleness.clone(), errors.clone());
        // Spread over the second, as independent pollers are.
        let mut next = began + Duration::from_micros((caller as u64 * 1_000_000) / CALLERS as u64);
        callers.push(tokio::spawn(async move {
            while next < until {
                tokio::time::sleep_until(next).await;
                next += Duration::from_secs(1);
                match client
                    .get_scan(pb::GetScanRequest {
                        action_id: action_id.clone(),
                        fresh: false,
                    })
                    .await
                {
                    Ok(response) => {
                        let observed = response.into_inner().observed_at.unwrap_or_default();
                        let now = time::OffsetDateTime::now_utc();
                        let at = time::OffsetDateTime::from_unix_timestamp(observed.seconds)
                            .unwrap_or(now)
                            + Duration::from_nanos(u64::try_from(observed.nanos).unwrap_or(0));
                        let age = (now - at).as_seconds_f64().max(0.0);
                        staleness
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(age);
                    }
                    Err(status) => errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{:?}: {}", status.code(), status.message())),
                }
            }
        }));
    }
    for caller in callers {
        caller.await?;
    }
    let after = handle.stats();

    let mut ages = staleness.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ages.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        ages.get(((ages.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let reads = ages.len() + errors.len();
    let gets = after.get_action - before.get_action;
    let lists = after.list_actions - before.list_actions;
    let minutes = seconds as f64 / 60.0;
    println!("\n| | calls |");
    println!("|---|---|");
    println!("| GetScan calls answered | {} |", ages.len());
    println!("| GetScan calls failed | {} |", errors.len());
    println!("| upstream GETs | {gets} |");
    println!("| upstream lists (the watcher's batched refreshes) | {lists} |");
    println!("| upstream 429s | {} |", after.throttled - before.throttled);
    println!("| a pass-through gateway: GETs | {reads} |");
    println!(
        "| the get-action quota in that time (100/min) | {:.0} |",
        100.0 * minutes
    );
    println!(
        "\nupstream calls per read: {:.5} (pass-through: 1); staleness p50 {:.2} s, p99 {:.2} s",
        (gets + lists) as f64 / reads.max(1) as f64,
        pct(0.5),
        pct(0.99)
    );
    if let Some(first) = errors.first() {
        println!("first error: {first}");
    }
    let _ = stop_gateway.send(());
    let _ = served.await;
    let _ = stop_sim.send(());
    Ok(())
}
