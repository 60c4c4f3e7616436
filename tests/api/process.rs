//! Runs the `scan-gateway` binary as a child process: output lines on channels, SIGTERM, and
//! the environment of a real deployment pointed at a simulator.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use secrecy::ExposeSecret;

use crate::helpers::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_scan-gateway");

/// A child process killed when dropped, with its output lines arriving on channels.
pub struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    seen_stderr: Vec<String>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Self {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("the binary starts");
        let stdout = lines(child.stdout.take().unwrap(), tee(child.id(), "stdout"));
        let stderr = lines(child.stderr.take().unwrap(), tee(child.id(), "stderr"));
        Self {
            child,
            stdout,
            stderr,
            seen_stderr: Vec::new(),
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    pub fn stdout_line(&self, needle: &str) -> String {
        wait_line(&self.stdout, needle, &mut Vec::new())
    }

    pub fn stderr_line(&mut self, needle: &str) -> String {
        wait_line(&self.stderr, needle, &mut self.seen_stderr)
    }

    /// Sends SIGTERM and waits (bounded) for the exit, without blocking the test's runtime:
    /// the test's own gRPC client must keep running to answer the server's GOAWAY.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway did not exit within 10 s of SIGTERM");
    }

    pub fn all_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.seen_stderr.push(line);
        }
        self.seen_stderr.join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With `SCAN_GATEWAY_TEST_LOG_DIR` set, a copy of the child's output goes there too, for the
/// secret-leak check over the whole run (`scripts/check-secrets.py`).
fn tee(pid: u32, stream: &str) -> Option<std::fs::File> {
    let dir = std::env::var_os("SCAN_GATEWAY_TEST_LOG_DIR")?;
    let path = std::path::Path::new(&dir).join(format!("child-{pid}.{stream}.log"));
    std::fs::File::create(path).ok()
}

fn lines(
    stream: impl std::io::Read + Send + 'static,
    mut copy: Option<std::fs::File>,
) -> mpsc::Receiver<String> {
    use std::io::Write;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(file) = &mut copy {
                let _ = writeln!(file, "{line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[allow(
    clippy::disallowed_methods,
    reason = "a child process's output arrives in real time"
)]
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("no line containing {needle:?}; saw:\n{}", seen.join("\n"));
}

/// The environment a real deployment sets, pointing at `sim`.
pub fn real_mode(sim: &TestSimulator) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AZURE_TENANT_ID", &sim.config.tenant_id)
        .env("AZURE_CLIENT_ID", &sim.config.client_id)
        .env(
            "AZURE_CLIENT_SECRET",
            sim.config.client_secret.expose_secret(),
        )
        .env("AZURE_AUTHORITY_HOST", &sim.authority_url)
        .env("MDE_API_BASE_URL", &sim.base_url)
        .env("SCAN_GATEWAY_LISTEN", ANY_PORT)
        .env("SCAN_GATEWAY_ADMIN_LISTEN", ANY_PORT)
        .env("SCAN_GATEWAY_POLL_INTERVAL", "50ms")
        // These tests are about the gateway, not its callers: an open port, on purpose.
        .env("SCAN_GATEWAY_ALLOW_UNAUTHENTICATED", "true")
        .env("RUST_LOG", "debug");
    command
}

/// The gRPC address from the gateway's JSON "serving" log line.
pub fn serving_addr(line: &str) -> String {
    let log: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    log["fields"]["grpc"]
        .as_str()
        .expect("the serving line names the gRPC address")
        .to_owned()
}
