//! A soak: mixed load on the release gateway for `SOAK_MINUTES` (10) per allocator setup,
//! printing its RSS at the end of every minute and the growth from minute 1 to the last.
//! Load, about 15 calls a second (the pace of the soak that found the growth): 4 workers each
//! renewing a RunScan to its final status, 4 making Start/Get/List/Cancel calls every 2 s, 4
//! opening WatchScans every second and abandoning them after the first event. No `request_id`:
//! the keys are state that grows by design (bounded; `cargo bench --bench keys`), and would
//! hide what the allocator does.
//!
//! Setups, one after the other in one run: the binary started plainly (glibc's malloc) and with
//! `MALLOC_MMAP_THRESHOLD_=131072` (what the container image sets); `--features mimalloc`
//! builds it with mimalloc instead, `--features jemalloc` with jemalloc (one setup each: the glibc
//! setting changes nothing there).
//!
//! The gateway runs as its own process so its RSS is its own; the simulator and the clients
//! run here, all on 127.0.0.1.
//!
//! Run: `cargo bench --bench soak` (20 minutes; with mimalloc 10; `SOAK_MINUTES=2` for a
//! quick look, `SOAK_SETUPS=1` for the first setup only). `cargo test --all-targets` runs this main without `--bench`; it exits at once.

#[path = "common/gateway_process.rs"]
mod gateway_process;
#[path = "common/mixed_load.rs"]
mod mixed_load;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use defender_simulator::{Simulator, SimulatorConfig};
use gateway_process::rss_mb;
use scan_gateway::{clock::Clock, grpc::pb::scan_service_client::ScanServiceClient};
use tokio::time::Instant;
use tonic::transport::Channel;

const WORKERS: usize = 4;

fn minutes() -> u32 {
    std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

struct Setup {
    name: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "started plainly",
        env: &[],
    },
    Setup {
        name: "MALLOC_MMAP_THRESHOLD_=131072",
        env: &[("MALLOC_MMAP_THRESHOLD_", "131072")],
    },
];

fn allocator() -> &'static str {
    if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "glibc malloc"
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --all-targets` runs this main without `--bench`: not a test, skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: benchmark skipped (run it with `cargo bench --bench soak`)");
        return;
    }
    let minutes = minutes();
    println!(
        "soak: {minutes} min per setup, gateway built with {}, {} workers per kind",
        allocator(),
        WORKERS
    );
    let mut results = Vec::new();
    // The glibc setting changes nothing under another allocator: one setup is enough there.
    let setups = if cfg!(any(feature = "mimalloc", feature = "jemalloc")) {
        &SETUPS[..1]
    } else {
        SETUPS
    };
    // `SOAK_SETUPS=1` runs the first setup only (a quick comparison of one change).
    let count = std::env::var("SOAK_SETUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(setups.len());
    for setup in setups.iter().take(count) {
        let samples = soak(setup, minutes).await;
        let growth = match (samples.first(), samples.last()) {
            (Some((_, first)), Some((_, last))) => (last / first - 1.0) * 100.0,
            _ => f64::NAN,
        };
        results.push((setup.name, samples, growth));
    }
    println!(
        "\n| setup ({}) | RSS per minute (MB) | growth minute 1 to {minutes} |",
        allocator()
    );
    println!("|---|---|---|");
    for (name, samples, growth) in &results {
        let per_minute: Vec<String> = samples.iter().map(|(_, rss)| format!("{rss:.1}")).collect();
        println!("| {name} | {} | {growth:+.1} % |", per_minute.join(", "));
    }
}

/// One setup's soak: (calls so far, RSS in MB) at the end of each minute.
async fn soak(setup: &Setup, minutes: u32) -> Vec<(u64, f64)> {
    let mut config = SimulatorConfig::demo();
    config.machine_count = 400;
    config.quota = vec![];
    config.pending_duration = Duration::from_millis(500);
    config.quick_scan_duration = Duration::from_secs(2);
    config.full_scan_duration = Duration::from_secs(3);
    let simulator = Simulator::bind(
        "127.0.0.1:0".parse().expect("an address"),
        config.clone(),
        Clock::system(),
    )
    .await
    .expect("the simulator binds");
    let base = simulator.base_url();
    let machines: Vec<String> = simulator
        .handle()
        .machines()
        .into_iter()
        .filter(|m| m.online && m.supports_scan)
        .map(|m| m.id)
        .collect();
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim_task = tokio::spawn(simulator.run_until_stopped(async {
        let _ = sim_stopped.await;
    }));

    let mut command = gateway_process::gateway_command(&config, &base, "");
    command
        .env("SCAN_GATEWAY_POLL_INTERVAL", "500ms")
        .envs(setup.env.iter().copied());
    let (mut gateway, pid, addr) = gateway_process::start(command).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URL")
        .connect()
        .await
        .expect("the gateway accepts");
    let client = ScanServiceClient::new(channel);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers = mixed_load::spawn(&client, &machines, WORKERS, &stop, &calls);
    let began = Instant::now();
    let mut samples = Vec::new();
    for minute in 1..=minutes {
        tokio::time::sleep_until(began + Duration::from_secs(60 * u64::from(minute))).await;
        let rss = rss_mb(pid);
        let made = calls.load(Ordering::Relaxed);
        println!(
            "  {}: minute {minute}: RSS {rss:.1} MB after {made} calls",
            setup.name
        );
        samples.push((made, rss));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let _ = gateway.kill().await;
    let _ = stop_sim.send(());
    let _ = sim_task.await;
    samples
}
