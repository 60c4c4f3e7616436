//! The cost of one gateway hop, against nginx as the reference proxy hop, in one run.
//!
//! Three paths reach the same in-process Defender simulator (quota off, 1 ms scans):
//! - `direct`: `POST /api/machines/{id}/runAntiVirusScan` with a bearer token, straight to it;
//! - `nginx`: the same REST call through nginx (generated config, one worker, upstream
//!   keep-alive, access log off);
//! - `gateway`: gRPC `StartScan` through the release `scan-gateway serve` binary, which makes
//!   that same REST call (quota set so high it never waits).
//!
//! Each path gets a fixed offered rate (open loop: a send never waits for earlier answers) and then a closed loop with concurrent clients for its maximum
//! throughput. Every answer is checked; any error fails the run. The gateway's RSS (idle and
//! peak under load) and its start-up time to SERVING come from the child process.
//!
//! Cores: when `taskset` exists, the proxies (nginx, the gateway) run on core 0 and this
//! process (load generator and simulator) on core 1, the same for every path.
//!
//! Run: `cargo bench --bench hop` (installs the Debian `nginx` package if it is missing).
//! `cargo test --all-targets` runs this main without `--bench`; it then exits at once.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use defender_simulator::{Simulator, SimulatorConfig};
use scan_gateway::{
    clock::Clock,
    grpc::pb::{self, scan_service_client::ScanServiceClient},
};
use tokio::{
    sync::{Semaphore, oneshot},
    time::Instant,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Offered rate and duration of the fixed-rate phase, per path.
const RATE_PER_SEC: u64 = 200;
const RATE_DURATION: Duration = Duration::from_secs(5);
/// Closed-loop clients and duration of the throughput phase, per path.
const CLIENTS: usize = 32;
const THROUGHPUT_DURATION: Duration = Duration::from_secs(4);
/// Requests in flight at most in the fixed-rate phase (bounds memory if a path stalls).
const MAX_IN_FLIGHT: usize = 512;
/// Warm-up requests per path before anything is measured (connections, token, caches).
const WARM_UP: usize = 200;
const MACHINES: usize = 4000;
const SCAN_SERVICE: &str = "defender.scan.v1.ScanService";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("hop: load benchmark skipped (run it with `cargo bench --bench hop`)");
        return Ok(());
    }
    let pinning = pin_self();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(pinning))
}

/// Moves this process to core 1 so the proxies can have core 0; says what was done.
fn pin_self() -> Option<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || !has_command("taskset") {
        return None;
    }
    let pid = std::process::id().to_string();
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| {
        "taskset: nginx and the gateway on core 0; load generator and simulator on core 1"
            .to_owned()
    })
}

fn has_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command for a proxy: on core 0 when pinning, unpinned otherwise.
fn proxy_command(program: &Path, pinned: bool) -> Command {
    if pinned {
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg("0").arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

async fn run(pinning: Option<String>) -> Result<(), BoxError> {
    let pinned = pinning.is_some();
    let dir = TempDir::new()?;
    let nginx_bin = find_nginx()?;

    // The simulator, in this process: quota off, scans over 2 ms after they start, so
    // machines can be scanned again and again; round robin over many of them anyway.
    let config = SimulatorConfig {
        machine_count: MACHINES,
        token_lifetime: Duration::from_secs(24 * 3600),
        pending_duration: Duration::from_millis(1),
        quick_scan_duration: Duration::from_millis(1),
        full_scan_duration: Duration::from_millis(1),
        failed_share: 0.0,
        timed_out_share: 0.0,
        quota: vec![],
        ..SimulatorConfig::demo()
    };
    let simulator =
        Simulator::bind("127.0.0.1:0".parse()?, config.clone(), Clock::system()).await?;
    let sim_addr = simulator.local_addr();
    let base_url = simulator.base_url();
    let machines: Arc<[String]> = simulator.handle().demo_machine_ids(MACHINES).into();
    let (stop_sim, sim_stopped) = oneshot::channel::<()>();
    let sim_task = tokio::spawn(simulator.run_until_stopped(async {
        let _ = sim_stopped.await;
    }));

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS * 4)
        .build()?;
    let token = fetch_token(&http, &base_url, &config).await?;

    // nginx in front of the same simulator.
    let nginx_port = free_port()?;
    let nginx_conf = dir.path().join("nginx.conf");
    std::fs::write(&nginx_conf, nginx_config(dir.path(), nginx_port, sim_addr))?;
    let nginx = ChildGuard(
        proxy_command(&nginx_bin, pinned)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&nginx_conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let nginx_url = format!("http://127.0.0.1:{nginx_port}");
    wait_for_http(&http, &nginx_url).await?;

    // The gateway binary, timed from spawn to SERVING.
    let grpc_port = free_port()?;
    let admin_port = free_port()?;
    let gateway_log = dir.path().join("gateway.log");
    let started = Instant::now();
    let gateway = ChildGuard(
        proxy_command(Path::new(env!("CARGO_BIN_EXE_scan-gateway")), pinned)
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
            .env("SCAN_GATEWAY_LISTEN", format!("127.0.0.1:{grpc_port}"))
            .env(
                "SCAN_GATEWAY_ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .env("SCAN_GATEWAY_QUOTA", "1000000/1m")
            // The load generator is one caller at thousands of calls a second.
            .env("SCAN_GATEWAY_CALLER_RATE", "0")
            // As the container image sets it (see the Dockerfile).
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env_remove("SCAN_GATEWAY_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&gateway_log)?)
            .spawn()?,
    );
    // `taskset -c` execs the program, so the child's pid is the gateway's own.
    let gateway_pid = gateway.0.id();
    let channel = wait_for_serving(grpc_port, &gateway_log).await?;
    let startup = started.elapsed();
    let rss_idle = rss_kib(gateway_pid)?;

    let next_machine = Arc::new(AtomicUsize::new(0));
    let paths = [
        Target::Direct {
            http: http.clone(),
            base: base_url.clone(),
            token: token.clone(),
        },
        Target::Nginx {
            http: http.clone(),
            base: nginx_url,
            token,
        },
        Target::Gateway {
            client: ScanServiceClient::new(channel),
        },
    ];
    let caller = |target: &Target| Caller {
        target: target.clone(),
        machines: machines.clone(),
        next: next_machine.clone(),
    };

    // `HOP_PATHS=gateway` (comma-separated) runs only some paths, e.g. while profiling one.
    let only = std::env::var("HOP_PATHS").ok();
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == name))
    };
    let mut rows = Vec::new();
    let mut rss_load = rss_idle;
    for target in paths.iter().filter(|t| selected(t.name())) {
        let caller = caller(target);
        warm_up(&caller).await?;
        let fixed = fixed_rate(&caller).await;
        check(target.name(), "fixed rate", &fixed)?;
        let proxy = match target {
            Target::Gateway { .. } => Some(gateway_pid),
            Target::Nginx { .. } => Some(nginx.0.id()),
            Target::Direct { .. } => None,
        };
        let sampler = RssSampler::start(proxy.filter(|&pid| pid == gateway_pid));
        let cpu_before = proxy.map(cpu_seconds);
        let closed = closed_loop(&caller).await;
        let cpu = proxy
            .map(cpu_seconds)
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        rss_load = rss_load.max(sampler.stop().await);
        check(target.name(), "throughput", &closed)?;
        rows.push(Row {
            name: target.name(),
            fixed,
            cpu_us_per_call: cpu.map(|s| s * 1e6 / closed.latencies.len() as f64),
            closed,
        });
    }

    print_report(&rows, pinning.as_deref(), startup, rss_idle, rss_load);

    drop(gateway);
    drop(nginx);
    let _ = stop_sim.send(());
    sim_task.await??;
    Ok(())
}

// === the three paths ===

#[derive(Clone)]
enum Target {
    Direct {
        http: reqwest::Client,
        base: String,
        token: String,
    },
    Nginx {
        http: reqwest::Client,
        base: String,
        token: String,
    },
    Gateway {
        client: ScanServiceClient<Channel>,
    },
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Direct { .. } => "direct",
            Target::Nginx { .. } => "nginx",
            Target::Gateway { .. } => "gateway",
        }
    }
}

/// One path plus the machine round robin shared by all paths.
#[derive(Clone)]
struct Caller {
    target: Target,
    machines: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Caller {
    /// One quick scan on the next machine; any answer but a created action is an error.
    async fn call(&self) -> Result<(), String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let machine = &self.machines[n % self.machines.len()];
        match &self.target {
            Target::Direct { http, base, token } | Target::Nginx { http, base, token } => {
                let response = http
                    .post(format!("{base}/api/machines/{machine}/runAntiVirusScan"))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(r#"{"Comment":"hop benchmark","ScanType":"Quick"}"#)
                    .send()
                    .await
                    .map_err(|e| format!("request: {e}"))?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
                if !status.is_success() {
                    return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                }
                if !body.windows(5).any(|w| w == b"\"id\":") {
                    return Err(format!(
                        "no action id in {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                Ok(())
            }
            Target::Gateway { client } => {
                let response = client
                    .clone()
                    .start_scan(pb::StartScanRequest {
                        machine_id: machine.clone(),
                        scan_type: pb::ScanType::Quick.into(),
                        comment: "hop benchmark".to_owned(),
                        request_id: String::new(),
                        priority: 0,
                    })
                    .await
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?;
                let has_id = response
                    .into_inner()
                    .action
                    .is_some_and(|action| !action.id.is_empty());
                if has_id {
                    Ok(())
                } else {
                    Err("StartScan answered without an action id".to_owned())
                }
            }
        }
    }
}

// === load ===

#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

impl Outcome {
    fn record(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => self.latencies.push(latency),
            Err(err) => {
                self.errors += 1;
                self.first_error.get_or_insert(err);
            }
        }
    }

    fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

fn check(path: &str, phase: &str, outcome: &Outcome) -> Result<(), BoxError> {
    if outcome.errors == 0 && !outcome.latencies.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{path} {phase}: {} errors, {} successes; first error: {}",
        outcome.errors,
        outcome.latencies.len(),
        outcome.first_error.as_deref().unwrap_or("none"),
    )
    .into())
}

async fn warm_up(caller: &Caller) -> Result<(), BoxError> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..WARM_UP / 8 {
                caller.call().await?;
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await?
            .map_err(|e| format!("{} warm-up: {e}", caller.target.name()))?;
    }
    Ok(())
}

/// Open loop: request i is sent at start + i/rate, whether or not earlier ones answered.
async fn fixed_rate(caller: &Caller) -> Outcome {
    let total = RATE_PER_SEC * RATE_DURATION.as_secs();
    let interval = Duration::from_secs(1) / RATE_PER_SEC as u32;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            // Timed from the actual send: tokio's timer fires up to 1 ms late, which would
            // swamp a sub-millisecond hop. Sends never wait for answers, so stalls still show.
            let sent = Instant::now();
            let result = caller.call().await;
            drop(permit);
            (sent.elapsed(), result)
        }));
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        match task.await {
            Ok((latency, result)) => outcome.record(latency, result),
            Err(err) => outcome.record(Duration::ZERO, Err(format!("task: {err}"))),
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// Closed loop: `CLIENTS` callers back to back for `THROUGHPUT_DURATION`.
async fn closed_loop(caller: &Caller) -> Outcome {
    let start = Instant::now();
    let deadline = start + THROUGHPUT_DURATION;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let result = caller.call().await;
                outcome.record(sent.elapsed(), result);
            }
            outcome
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(mut part) => {
                total.latencies.append(&mut part.latencies);
                total.errors += part.errors;
                if total.first_error.is_none() {
                    total.first_error = part.first_error;
                }
            }
            Err(err) => total.record(Duration::ZERO, Err(format!("task: {err}"))),
        }
    }
    total.elapsed = start.elapsed();
    total
}

// === report ===

struct Row {
    name: &'static str,
    fixed: Outcome,
    closed: Outcome,
    /// The proxy's own CPU time (user + system, all its processes) per call at max throughput.
    cpu_us_per_call: Option<f64>,
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// One path's row of the table.
struct Line {
    name: &'static str,
    /// p50, p99 and p999 at the fixed rate.
    fixed: [Duration; 3],
    max_per_sec: f64,
    p50_at_max_ms: f64,
    cpu_us_per_call: Option<f64>,
}

impl Line {
    fn of(row: &Row) -> Self {
        // Percentiles sort in place; work on copies so the rows stay shared.
        let mut f = Outcome {
            latencies: row.fixed.latencies.clone(),
            elapsed: row.fixed.elapsed,
            ..Outcome::default()
        };
        let mut c = Outcome {
            latencies: row.closed.latencies.clone(),
            elapsed: row.closed.elapsed,
            ..Outcome::default()
        };
        Self {
            name: row.name,
            fixed: [f.percentile(50.0), f.percentile(99.0), f.percentile(99.9)],
            max_per_sec: c.per_sec(),
            p50_at_max_ms: c.percentile(50.0).as_secs_f64() * 1000.0,
            cpu_us_per_call: row.cpu_us_per_call,
        }
    }
}

fn print_report(
    rows: &[Row],
    pinning: Option<&str>,
    startup: Duration,
    rss_idle: u64,
    rss_load: u64,
) {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|row| match row.name {
        "gateway" => 0,
        "direct" => 1,
        _ => 2,
    });
    let fixed: Vec<Line> = rows.into_iter().map(Line::of).collect();
    let direct = fixed.iter().find(|l| l.name == "direct").map(|l| l.fixed);
    let ratio = |a: Duration, i: usize| {
        direct.map_or_else(
            || "n/a".to_owned(),
            |d| {
                format!(
                    "{:.2}",
                    a.as_secs_f64() / d[i].as_secs_f64().max(f64::MIN_POSITIVE)
                )
            },
        )
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nREST call: POST /api/machines/{{id}}/runAntiVirusScan (gateway: gRPC StartScan, which makes it)"
    );
    let _ = writeln!(
        out,
        "fixed rate: {RATE_PER_SEC} req/s for {}s per path (open loop); throughput: {CLIENTS} closed-loop clients for {}s",
        RATE_DURATION.as_secs(),
        THROUGHPUT_DURATION.as_secs()
    );
    let _ = writeln!(
        out,
        "cores: {}",
        pinning.unwrap_or("unpinned, all processes share every core")
    );
    let _ = writeln!(
        out,
        "\n| path | p50 ms | p99 ms | p999 ms | p50 / direct | p99 / direct | p999 / direct | max req/s | p50 ms at max | proxy CPU µs/call |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for line in &fixed {
        let (name, [p50, p99, p999], rps, p50_max) =
            (line.name, &line.fixed, line.max_per_sec, line.p50_at_max_ms);
        let cpu = line
            .cpu_us_per_call
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"));
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {rps:.0} | {p50_max:.3} | {cpu} |",
            ms(*p50),
            ms(*p99),
            ms(*p999),
            ratio(*p50, 0),
            ratio(*p99, 1),
            ratio(*p999, 2),
        );
    }
    let _ = writeln!(
        out,
        "\ngateway (release binary, child process): start-up to SERVING {} ms; RSS idle {:.1} MiB, peak under load {:.1} MiB",
        startup.as_millis(),
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0
    );
    let _ = writeln!(out, "every response checked: 0 errors");
    println!("{out}");
}

// === processes and plumbing ===

/// Kills and reaps its child when dropped, so no proxy outlives the run.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers too.
        let terminated = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !terminated {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// User + system CPU seconds of a process and its direct children (nginx's workers).
fn cpu_seconds(pid: u32) -> f64 {
    // Clock ticks; 100 per second on Linux (`getconf CLK_TCK`).
    let ticks = |pid: &str| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        rest.split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let total: u64 = ticks(&pid.to_string()) + children.split_whitespace().map(ticks).sum::<u64>();
    total as f64 / 100.0
}

fn rss_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// Samples a process's RSS every 50 ms until stopped; returns the peak.
struct RssSampler {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return 0 };
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::select! {
                    _ = &mut stopped => return peak,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> u64 {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap_or(0)
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find_nginx() -> Result<PathBuf, BoxError> {
    let find = || {
        ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    eprintln!("hop: nginx not found; installing the Debian package (apt-get install -y nginx)");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "nginx"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    match find() {
        Some(path) if installed => Ok(path),
        _ => Err(
            "nginx is missing and `apt-get install -y nginx` failed; install it and rerun".into(),
        ),
    }
}

fn nginx_config(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream simulator {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://simulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    )
}

async fn fetch_token(
    http: &reqwest::Client,
    base: &str,
    config: &SimulatorConfig,
) -> Result<String, BoxError> {
    let secret = secrecy::ExposeSecret::expose_secret(&config.client_secret).to_owned();
    let response = http
        .post(format!("{base}/{}/oauth2/v2.0/token", config.tenant_id))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", config.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ])
        .send()
        .await?
        .error_for_status()?;
    let body: serde_json::Value = response.json().await?;
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "token endpoint answered without access_token".into())
}

/// Polls until nginx answers at all (any status), for at most 5 s.
async fn wait_for_http(http: &reqwest::Client, url: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if http
            .get(format!("{url}/simulator/stats"))
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nginx did not answer on {url} within 5 s").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls the gRPC health check every millisecond until the scan service is SERVING (10 s max).
async fn wait_for_serving(port: u16, log: &Path) -> Result<Channel, BoxError> {
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(channel) = endpoint.connect().await {
            let answer = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: SCAN_SERVICE.to_owned(),
                })
                .await;
            if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                return Ok(channel);
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("the gateway was not SERVING within 10 s; its log:\n{log}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A private temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "scan-gateway-hop-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
