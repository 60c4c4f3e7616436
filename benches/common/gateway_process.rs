//! The release gateway as a process of its own in front of an in-process simulator, for the
//! benches that measure its memory (`watch`, `soak`): its RSS is then its own.

use std::process::Stdio;

use defender_simulator::SimulatorConfig;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The gateway's command in real mode against the simulator at `base`: open callers, the
/// quota lifted (the simulator's own is off), JSON logs on stderr. `wrapper` (a profiler's
/// command line, may be empty) runs it.
pub fn gateway_command(config: &SimulatorConfig, base: &str, wrapper: &str) -> Command {
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(env!("CARGO_BIN_EXE_scan-gateway"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_scan-gateway")),
    };
    command
        .arg("serve")
        .env_clear()
        .env("AZURE_TENANT_ID", &config.tenant_id)
        .env("AZURE_CLIENT_ID", &config.client_id)
        .env("AZURE_CLIENT_SECRET", "simulator-secret")
        .env("AZURE_AUTHORITY_HOST", base)
        .env("MDE_API_BASE_URL", base)
        .env("SCAN_GATEWAY_ALLOW_UNAUTHENTICATED", "true")
        .env("SCAN_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("SCAN_GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("SCAN_GATEWAY_QUOTA", "1000000/1m")
        .env("SCAN_GATEWAY_CALLER_RATE", "0")
        .env("RUST_LOG", "warn,scan_gateway::startup=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Starts `command` and waits for its "serving" line: the child, its pid and its gRPC address.
/// Its later logs are drained.
pub async fn start(mut command: Command) -> (Child, u32, String) {
    let mut gateway = command.spawn().expect("the gateway starts");
    let pid = gateway.id().expect("a pid");
    let mut lines = BufReader::new(gateway.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("logs")
            .expect("a serving line");
        if line.contains("\"serving\"") {
            let log: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            break log["fields"]["grpc"]
                .as_str()
                .expect("the address")
                .to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (gateway, pid, addr)
}

/// A process's resident memory in MB (`VmRSS`), NaN when it cannot be read.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
