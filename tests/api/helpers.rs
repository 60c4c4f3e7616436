//! Starts simulators and gateways on ephemeral loopback ports and hands out typed handles.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use defender_simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use scan_gateway::{
    clock::Clock,
    config::{ConfigArgs, Settings},
    grpc::pb::{self, scan_service_client::ScanServiceClient},
    startup::Gateway,
};
use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// Loopback, any free port.
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A simulator whose lifecycle fits in a test: a quick scan ends in well under a second.
pub fn fast_simulator() -> SimulatorConfig {
    SimulatorConfig {
        pending_duration: Duration::from_millis(150),
        quick_scan_duration: Duration::from_millis(200),
        full_scan_duration: Duration::from_millis(300),
        failed_share: 0.0,
        timed_out_share: 0.0,
        ..SimulatorConfig::demo()
    }
}

pub struct TestSimulator {
    pub handle: SimulatorHandle,
    pub config: SimulatorConfig,
    pub base_url: String,
    pub authority_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestSimulator {
    /// A machine that can be scanned; `n` picks different ones for independent tests.
    pub fn machine(&self, n: usize) -> String {
        self.handle.demo_machine_ids(n + 1)[n].clone()
    }

    /// Total requests the simulator received on the Defender API (not the token endpoint).
    pub fn api_requests(&self) -> u64 {
        let stats = self.handle.stats();
        stats.run_scan + stats.get_action + stats.list_actions + stats.cancel
    }
}

impl Drop for TestSimulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// With `SCAN_GATEWAY_TEST_LOG_DIR` set (`scripts/test.sh` sets it), everything the gateways
/// and simulators of this test binary log (the gateway's own events at trace level, the rest
/// at debug), with every span's fields, goes to a
/// file there: `scripts/check-secrets.py` then searches the output of the whole run for
/// secrets, tokens and keys.
fn log_to_test_dir() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(dir) = std::env::var_os("SCAN_GATEWAY_TEST_LOG_DIR") else {
            return;
        };
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".into());
        let path = std::path::Path::new(&dir).join(format!("{binary}-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("the test log directory is writable");
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_span_list(true)
            .with_current_span(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("SCAN_GATEWAY_TEST_LOG")
                    .unwrap_or_else(|_| "debug,scan_gateway=trace".into()),
            ))
            .with_writer(std::sync::Mutex::new(file))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

pub async fn spawn_simulator(config: SimulatorConfig) -> TestSimulator {
    log_to_test_dir();
    let simulator = Simulator::bind(ANY_PORT.parse().unwrap(), config.clone(), Clock::system())
        .await
        .expect("simulator binds a loopback port");
    let (stop, stopped) = oneshot::channel();
    let handle = simulator.handle();
    let base_url = simulator.base_url();
    let authority_url = simulator.authority_url();
    let task = tokio::spawn(simulator.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestSimulator {
        handle,
        config,
        base_url,
        authority_url,
        stop: Some(stop),
        task,
    }
}

/// Settings pointing a gateway at `sim`, with test-sized intervals.
pub fn settings_for(sim: &TestSimulator) -> ConfigArgs {
    ConfigArgs {
        tenant_id: Some(sim.config.tenant_id.clone()),
        client_id: Some(sim.config.client_id.clone()),
        client_secret: Some(sim.config.client_secret.clone()),
        authority_host: Some(sim.authority_url.clone()),
        api_base_url: Some(sim.base_url.clone()),
        listen: Some(ANY_PORT.parse().unwrap()),
        admin_listen: Some(ANY_PORT.parse().unwrap()),
        poll_interval: Some(Duration::from_millis(40)),
        upstream_timeout: Some(Duration::from_secs(5)),
        ..ConfigArgs::default()
    }
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub client: ScanServiceClient<Channel>,
    pub sim: Arc<TestSimulator>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// Stops the gateway (as SIGTERM would) and waits for it, re-raising a panic.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self
            .task
            .take()
            .expect("gateway task present until shutdown");
        match task.await {
            Ok(result) => result,
            Err(err) => std::panic::resume_unwind(err.into_panic()),
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin_addr, "/metrics").await.1
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub async fn spawn_gateway(sim: TestSimulator) -> TestGateway {
    let args = settings_for(&sim);
    spawn_gateway_with(sim, args).await
}

pub async fn spawn_gateway_with(sim: TestSimulator, args: ConfigArgs) -> TestGateway {
    spawn_gateway_sharing(Arc::new(sim), args).await
}

/// A gateway in front of a simulator that other gateways may share.
pub async fn spawn_gateway_sharing(sim: Arc<TestSimulator>, args: ConfigArgs) -> TestGateway {
    log_to_test_dir();
    let settings = Settings::load(&args).expect("test settings are valid");
    let gateway = Gateway::build(&settings, Clock::system())
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    let admin_addr = gateway.admin_addr();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(gateway.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = ScanServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gateway accepts connections");
    TestGateway {
        addr,
        admin_addr,
        client,
        sim,
        stop: Some(stop),
        task: Some(task),
    }
}

/// The usual pair: a fast simulator and a gateway in front of it.
pub async fn spawn_app() -> TestGateway {
    spawn_gateway(spawn_simulator(fast_simulator()).await).await
}

pub fn run_request(machine_id: &str) -> pb::RunScanRequest {
    pb::RunScanRequest {
        machine_id: machine_id.to_owned(),
        scan_type: pb::ScanType::Quick as i32,
        comment: "integration test".to_owned(),
        request_id: String::new(),
        priority: 0,
    }
}

pub fn start_request(machine_id: &str) -> pb::StartScanRequest {
    pb::StartScanRequest {
        machine_id: machine_id.to_owned(),
        scan_type: pb::ScanType::Quick as i32,
        comment: "integration test".to_owned(),
        request_id: String::new(),
        priority: 0,
    }
}

/// Reads a whole server stream: the updates, and the status it ended with.
pub async fn collect<T>(mut stream: tonic::Streaming<T>) -> (Vec<T>, Result<(), tonic::Status>) {
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("stream did not end within 30 s"),
            Ok(Ok(Some(item))) => items.push(item),
            Ok(Ok(None)) => return (items, Ok(())),
            Ok(Err(status)) => return (items, Err(status)),
        }
    }
}

/// The statuses carried by a stream's action events, in order.
pub fn statuses(updates: &[pb::RunScanResponse]) -> Vec<pb::ActionStatus> {
    updates
        .iter()
        .filter_map(|u| action_of(u.update.as_ref()))
        .map(|a| a.status())
        .collect()
}

/// A minimal HTTP/1.1 GET (status, body) so admin tests need no HTTP client crate.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin port accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A secret for tests that must not appear anywhere.
pub fn secret(value: &str) -> SecretString {
    SecretString::from(value.to_owned())
}

/// Runs a quick scan of `machine` through `client` to the end of its stream.
pub async fn run_to_end(
    client: &mut ScanServiceClient<Channel>,
    machine: &str,
) -> (Vec<pb::RunScanResponse>, Result<(), tonic::Status>) {
    let stream = client
        .run_scan(run_request(machine))
        .await
        .expect("RunScan is accepted")
        .into_inner();
    collect(stream).await
}

/// The action an update carries, if it carries one (not a `queued`, `waiting` or `delayed`
/// event).
pub fn action_of(update: Option<&pb::ScanUpdate>) -> Option<pb::MachineAction> {
    match update?.event.as_ref()? {
        pb::scan_update::Event::Action(action) => Some(action.clone()),
        pb::scan_update::Event::Queued(_)
        | pb::scan_update::Event::Waiting(_)
        | pb::scan_update::Event::Delayed(_) => None,
    }
}
