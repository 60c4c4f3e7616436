//! Where the soak's memory goes: the gateway and the simulator in this process under dhat's
//! heap profiler, with the soak's mixed load (`common/mixed_load.rs`) for `HEAP_MINUTES` (3).
//! Prints the live heap each minute, and at the end the allocation sites (a frame of the
//! gateway's own code, as `scan_gateway::...`) holding the most bytes still live, with their
//! block counts: a site whose live bytes grow with the run's length is memory the gateway
//! keeps. The whole profile goes to `target/dhat-heap.json` (open it in dhat's viewer). The
//! simulator shares the process: its sites are shown too, as `defender_simulator::...`.
//!
//! Run: `cargo bench --bench heap` (compare `HEAP_MINUTES=2` with `HEAP_MINUTES=6`).
//! `cargo test --all-targets` runs this main without `--bench`; it exits at once.

#[path = "common/mixed_load.rs"]
mod mixed_load;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use defender_simulator::{Simulator, SimulatorConfig};
use scan_gateway::{
    clock::Clock,
    config::{ConfigArgs, Settings},
    grpc::pb::scan_service_client::ScanServiceClient,
    startup::Gateway,
};
use secrecy::ExposeSecret;
use tonic::transport::Channel;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

const WORKERS: usize = 4;
/// Sites printed at the end.
const TOP: usize = 25;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn minutes() -> u64 {
    std::env::var("HEAP_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn main() -> Result<(), BoxError> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("heap: benchmark skipped (run it with `cargo bench --bench heap`)");
        return Ok(());
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/dhat-heap.json");
    let profiler = dhat::Profiler::builder().file_name(path).build();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(minutes(), profiler))?;
    top_sites(path)
}

/// Runs the load; `profiler` is dropped (the profile written) with the gateway and the
/// simulator still up, so the profile's end holds their state.
async fn run(minutes: u64, profiler: dhat::Profiler) -> Result<(), BoxError> {
    let mut config = SimulatorConfig::demo();
    config.machine_count = 400;
    config.quota = vec![];
    config.pending_duration = Duration::from_millis(500);
    config.quick_scan_duration = Duration::from_secs(2);
    config.full_scan_duration = Duration::from_secs(3);
    let simulator =
        Simulator::bind("127.0.0.1:0".parse()?, config.clone(), Clock::system()).await?;
    let machines: Vec<String> = simulator
        .handle()
        .machines()
        .into_iter()
        .filter(|m| m.online && m.supports_scan)
        .map(|m| m.id)
        .collect();
    let args = ConfigArgs {
        tenant_id: Some(config.tenant_id.clone()),
        client_id: Some(config.client_id.clone()),
        client_secret: Some(config.client_secret.expose_secret().to_owned().into()),
        authority_host: Some(simulator.authority_url()),
        api_base_url: Some(simulator.base_url()),
        listen: Some("127.0.0.1:0".parse()?),
        admin_listen: Some("127.0.0.1:0".parse()?),
        poll_interval: Some(Duration::from_millis(500)),
        quota: Some("1000000/1m".into()),
        caller_rate: Some(0.0),
        ..ConfigArgs::default()
    };
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(simulator.run_until_stopped(async {
        let _ = sim_stopped.await;
    }));
    let gateway = Gateway::build(&Settings::load(&args)?, Clock::system()).await?;
    let addr = gateway.local_addr();
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.run_until_stopped(async {
        let _ = gateway_stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = ScanServiceClient::new(channel);

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let workers = mixed_load::spawn(&client, &machines, WORKERS, &stop, &calls);
    for minute in 1..=minutes {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let stats = dhat::HeapStats::get();
        println!(
            "minute {minute}: {} calls, live heap {:.2} MB in {} blocks",
            calls.load(Ordering::Relaxed),
            stats.curr_bytes as f64 / 1e6,
            stats.curr_blocks
        );
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    // Measured with the gateway and the simulator still up: their state is what counts.
    let stats = dhat::HeapStats::get();
    println!(
        "end: live heap {:.2} MB in {} blocks",
        stats.curr_bytes as f64 / 1e6,
        stats.curr_blocks
    );
    drop(profiler);
    let _ = stop_gateway.send(());
    let _ = served.await;
    let _ = stop_sim.send(());
    Ok(())
}

/// The gateway's allocation sites holding the most bytes at the profile's end (`eb`), by the
/// first frame of `scan_gateway` code in each stack.
fn top_sites(path: &str) -> Result<(), BoxError> {
    let profile: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let frames: Vec<&str> = profile["ftbl"]
        .as_array()
        .ok_or("no frame table")?
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let mut by_site: HashMap<String, (u64, u64)> = HashMap::new();
    for pp in profile["pps"].as_array().ok_or("no program points")? {
        let (bytes, blocks) = (
            pp["eb"].as_u64().unwrap_or(0),
            pp["ebk"].as_u64().unwrap_or(0),
        );
        if bytes == 0 {
            continue;
        }
        let owner = pp["fs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_u64().and_then(|i| frames.get(i as usize)))
            .find(|f| f.contains("scan_gateway::") || f.contains("defender_simulator::"))
            .map_or_else(|| "(no frame of ours)".to_owned(), |f| (*f).to_owned());
        let entry = by_site.entry(owner).or_default();
        entry.0 += bytes;
        entry.1 += blocks;
    }
    let mut sites: Vec<_> = by_site.into_iter().collect();
    sites.sort_by_key(|(_, (bytes, _))| std::cmp::Reverse(*bytes));
    println!("\n| live bytes at the end | blocks | first frame of ours |");
    println!("|---|---|---|");
    for (site, (bytes, blocks)) in sites.into_iter().take(TOP) {
        println!("| {bytes} | {blocks} | {} |", site.replace('|', "/"));
    }
    Ok(())
}
