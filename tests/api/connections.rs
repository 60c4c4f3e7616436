//! Client connections before and between calls: silent and half-open peers are closed at
//! their handshake deadline, a shutdown does not wait for them, the caps refuse connections
//! beyond them, and a connection with no call in flight is closed once idle (a stream in
//! flight keeps it).

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};

use crate::helpers::*;

/// Half of the HTTP/2 client preface.
const HALF_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Opens `n` connections that send nothing, and `n` that send half a preface.
async fn silent_connections(app: &TestGateway, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for i in 0..2 * n {
        let mut tcp = TcpStream::connect(app.addr).await.expect("connects");
        if i % 2 == 1 {
            tcp.write_all(HALF_PREFACE).await.unwrap();
        }
        open.push(tcp);
    }
    open
}

/// Reads until the gateway closes `tcp` (EOF or reset), at most `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let until = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // The server's SETTINGS frame: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_open_connections_are_closed_at_their_handshake_deadline() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.handshake_timeout = Some(Duration::from_millis(500));
    let app = spawn_gateway_with(sim, args).await;
    let began = Instant::now();
    let mut open = silent_connections(&app, 50).await;
    for tcp in &mut open {
        assert!(
            closed_within(tcp, Duration::from_secs(3)).await,
            "closed within the deadline"
        );
    }
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "scan_gateway_grpc_server_connections_closed_total{reason=\"handshake_timeout\"}"
        ),
        100.0
    );
    // The gateway still serves.
    app.client
        .clone()
        .list_scans(scan_gateway::grpc::pb::ListScansRequest::default())
        .await
        .expect("a real client is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_does_not_wait_for_silent_connections() {
    // The default deadline (5 s) would hold them well past the stop.
    let app = spawn_gateway(spawn_simulator(fast_simulator()).await).await;
    let mut open = silent_connections(&app, 50).await;
    // A real client, connected and idle.
    app.client
        .clone()
        .list_scans(scan_gateway::grpc::pb::ListScansRequest::default())
        .await
        .unwrap();
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), app.shutdown())
        .await
        .expect("stopped within 1 s")
        .expect("a clean stop");
    assert!(began.elapsed() < Duration::from_secs(1));
    for tcp in &mut open {
        assert!(closed_within(tcp, Duration::from_secs(1)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_caps_are_refused_at_accept() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.max_connections_per_peer = Some(4);
    let app = spawn_gateway_with(sim, args).await;
    // The test's client holds one connection from 127.0.0.1 already: three more fit.
    app.client
        .clone()
        .list_scans(scan_gateway::grpc::pb::ListScansRequest::default())
        .await
        .unwrap();
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut refused = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        closed_within(&mut refused, Duration::from_secs(2)).await,
        "the fifth connection from one address is closed at once"
    );
    for tcp in &mut kept {
        assert!(
            !closed_within(tcp, Duration::from_millis(200)).await,
            "within the cap"
        );
    }
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "scan_gateway_grpc_server_refused_total{reason=\"peer_connection_limit\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, "scan_gateway_grpc_server_connections "),
        4.0
    );
    // (No mutual TLS, no JWTs: /metrics says the port is open to anyone.)
    assert_eq!(
        sample(&metrics, "scan_gateway_unauthenticated_callers_allowed "),
        1.0
    );

    // The total cap, below the per-peer one (the test's client holds one of the three).
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.max_connections = Some(3);
    let app = spawn_gateway_with(sim, args).await;
    let _first = TcpStream::connect(app.addr).await.unwrap();
    let _second = TcpStream::connect(app.addr).await.unwrap();
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    let metrics = app.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "scan_gateway_grpc_server_refused_total{reason=\"connection_limit\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_stream_in_flight_keeps_its_own() {
    let mut config = fast_simulator();
    // A scan that takes about 1.5 s: its stream outlives the idle time several times.
    config.pending_duration = Duration::from_millis(700);
    config.quick_scan_duration = Duration::from_millis(800);
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.idle_timeout = Some(Duration::from_millis(300));
    let mut app = spawn_gateway_with(sim, args).await;
    let machine = app.sim.machine(0);
    let (updates, end) = run_to_end(&mut app.client, &machine).await;
    assert!(end.is_ok(), "the stream in flight is never idle: {end:?}");
    assert_eq!(
        statuses(&updates).last(),
        Some(&scan_gateway::grpc::pb::ActionStatus::Succeeded)
    );

    // With no call in flight, the connection goes after 300 ms; the client reconnects.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics = app.metrics().await;
    assert!(
        sample(
            &metrics,
            "scan_gateway_grpc_server_connections_closed_total{reason=\"idle\"}"
        ) >= 1.0,
        "{metrics}"
    );
    app.client
        .list_scans(scan_gateway::grpc::pb::ListScansRequest::default())
        .await
        .expect("the client connects again");
}
