//! 200,000 distinct `request_id` keys, each on a call the quota refuses at once (its window is
//! spent): the gateway's memory and per-call latency must stay flat, since keys of calls that
//! created nothing are not kept. The gateway binary runs as its own process (its RSS is read
//! from /proc), in front of the simulator in this process; 8 callers on one connection.
//!
//! Run: `cargo bench --bench keys` (`KEYS=N` for another count). `cargo test --all-targets`
//! runs this main without `--bench`; it then exits at once.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use defender_simulator::{Clock, Simulator, SimulatorConfig};
use scan_gateway::grpc::pb::{self, scan_service_client::ScanServiceClient};
use tokio::{sync::oneshot, time::Instant};
use tonic::{Code, transport::Channel};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CALLERS: usize = 8;
const BLOCKS: usize = 10;

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn connect(port: u16) -> Result<Channel, BoxError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await
        {
            Ok(channel) => return Ok(channel),
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

fn main() -> Result<(), BoxError> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("keys: benchmark skipped (run it with `cargo bench --bench keys`)");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let keys: usize = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(200_000);
    let config = SimulatorConfig {
        token_lifetime: Duration::from_secs(24 * 3600),
        quota: vec![],
        ..SimulatorConfig::demo()
    };
    let simulator =
        Simulator::bind("127.0.0.1:0".parse()?, config.clone(), Clock::system()).await?;
    let base_url = simulator.base_url();
    let machine = simulator.handle().demo_machine_ids(1)[0].clone();
    let (stop_sim, sim_stopped) = oneshot::channel::<()>();
    let sim_task = tokio::spawn(simulator.run_until_stopped(async {
        let _ = sim_stopped.await;
    }));

    let port = free_port()?;
    let gateway = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_scan-gateway"))
            .arg("serve")
            .env("AZURE_TENANT_ID", &config.tenant_id)
            .env("AZURE_CLIENT_ID", &config.client_id)
            .env(
                "AZURE_CLIENT_SECRET",
                secrecy::ExposeSecret::expose_secret(&config.client_secret),
            )
            .env("AZURE_AUTHORITY_HOST", &base_url)
            .env("MDE_API_BASE_URL", &base_url)
            .env("SCAN_GATEWAY_ALLOW_UNAUTHENTICATED", "true")
            .env("SCAN_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "SCAN_GATEWAY_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()?),
            )
            // One scan an hour: the first call spends it, every later one is refused at once.
            .env("SCAN_GATEWAY_QUOTA_RUN_ANTIVIRUS_SCAN", "1/1h")
            .env("SCAN_GATEWAY_CALLER_RATE", "0")
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("SCAN_GATEWAY_REDIS_URL")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = gateway.0.id();
    let client = ScanServiceClient::new(connect(port).await?);
    let start = move |key: String| pb::StartScanRequest {
        machine_id: machine.clone(),
        scan_type: pb::ScanType::Quick as i32,
        comment: "keys bench".into(),
        request_id: key,
        priority: 0,
    };
    // The one scan the quota allows.
    client.clone().start_scan(start("first".into())).await?;
    let rss_start = rss_mib(pid);

    let per_block = keys / BLOCKS;
    println!(
        "{keys} distinct request_id keys, each refused at once by the quota ({CALLERS} callers)"
    );
    println!(
        "{:>8} {:>12} {:>14} {:>10}",
        "keys", "calls/s", "mean latency", "RSS MiB"
    );
    println!("{:>8} {:>12} {:>14} {:>10.1}", 0, "-", "-", rss_start);
    let next = Arc::new(AtomicUsize::new(0));
    let mut rows = Vec::new();
    for block in 1..=BLOCKS {
        let began = Instant::now();
        let end = block * per_block;
        let mut tasks = Vec::new();
        for _ in 0..CALLERS {
            let (mut client, next, start) = (client.clone(), next.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let mut spent = Duration::ZERO;
                let mut calls = 0u32;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= end {
                        next.fetch_sub(1, Ordering::Relaxed);
                        return Ok::<_, String>((spent, calls));
                    }
                    let asked = Instant::now();
                    match client.start_scan(start(format!("key-{n}"))).await {
                        Err(status) if status.code() == Code::ResourceExhausted => {}
                        other => {
                            return Err(format!(
                                "key {n}: expected RESOURCE_EXHAUSTED, got {other:?}"
                            ));
                        }
                    }
                    spent += asked.elapsed();
                    calls += 1;
                }
            }));
        }
        let (mut spent, mut calls) = (Duration::ZERO, 0u32);
        for task in tasks {
            let (s, c) = task.await??;
            spent += s;
            calls += c;
        }
        let rate = f64::from(calls) / began.elapsed().as_secs_f64();
        let mean = spent / calls.max(1);
        let rss = rss_mib(pid);
        println!(
            "{:>8} {:>12.0} {:>11.2} ms {:>10.1}",
            end,
            rate,
            mean.as_secs_f64() * 1e3,
            rss
        );
        rows.push((rate, mean, rss));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "last block / first block: calls/s {:.2}, mean latency {:.2}; RSS {:.1} -> {:.1} MiB",
            last.0 / first.0,
            last.1.as_secs_f64() / first.1.as_secs_f64(),
            rss_start,
            last.2
        );
    }
    drop(gateway);
    let _ = stop_sim.send(());
    let _ = sim_task.await;
    Ok(())
}
