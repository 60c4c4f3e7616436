//! SIGTERM under load, on the real binary: with 1,000 open streams and unary calls in flight,
//! every unary call completes, every stream ends with UNAVAILABLE (none hangs), every action
//! created upstream was reported to its caller, and the process exits 0 within its grace.
//!
//! A test binary of its own, so its thousand streams do not share the cores with other tests.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../api/process.rs"]
mod process;

use std::{collections::HashSet, time::Duration};

use scan_gateway::grpc::pb::{self, scan_service_client::ScanServiceClient, scan_update::Event};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use helpers::*;

const STREAMS: usize = 1000;
const CONNECTIONS: usize = 8;
const RUN_SCANS: usize = 20;
const UNARY: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_stream_with_unavailable_and_finishes_unary_calls() {
    // Scans that stay Pending, no upstream quota, and slow list calls (the unary calls in flight).
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_secs(3600);
    config.quota = vec![(1_000_000, Duration::from_secs(60))];
    let sim = spawn_simulator(config).await;
    let mut faults = defender_simulator::Faults::default();
    faults.list_actions.latency = Duration::from_millis(1500);
    sim.handle.set_faults(faults);

    let mut command = process::real_mode(&sim);
    command
        .env("RUST_LOG", "info")
        .env("SCAN_GATEWAY_QUOTA", "1000000/1m")
        // 1,000 streams and their calls come from one address: lift the per-caller limits.
        .env("SCAN_GATEWAY_CALLER_RATE", "0")
        .env("SCAN_GATEWAY_POLL_INTERVAL", "5s")
        .env("SCAN_GATEWAY_SHUTDOWN_GRACE", "10s");
    let mut gateway = process::Running::spawn(command);
    let addr = process::serving_addr(&gateway.stderr_line("\"serving\""));
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(ScanServiceClient::new(channel));
    }

    // A few actions to watch, then 1,000 WatchScan streams on them.
    let mut actions = Vec::new();
    for n in 0..10 {
        let action = channels[0]
            .start_scan(start_request(&sim.machine(n)))
            .await
            .unwrap()
            .into_inner()
            .action
            .unwrap();
        actions.push(action.id);
    }
    let mut watchers = Vec::new();
    for i in 0..STREAMS {
        let mut client = channels[i % CONNECTIONS].clone();
        let action_id = actions[i % actions.len()].clone();
        let mut stream = client
            .watch_scan(pb::WatchScanRequest { action_id })
            .await
            .unwrap()
            .into_inner();
        // The first event arrives before we go on: the stream is really open.
        stream.message().await.unwrap().unwrap();
        watchers.push(tokio::spawn(async move { collect(stream).await }));
    }
    // RunScan streams whose actions are being created while SIGTERM arrives.
    let mut runs = Vec::new();
    for i in 0..RUN_SCANS {
        let mut client = channels[i % CONNECTIONS].clone();
        let machine = sim.machine(10 + i);
        runs.push(tokio::spawn(async move {
            match client.run_scan(run_request(&machine)).await {
                Ok(stream) => collect(stream.into_inner()).await,
                Err(status) => (Vec::new(), Err(status)),
            }
        }));
    }
    // Unary calls that will still be in flight (the simulator takes 1.5 s to list).
    let unary: Vec<_> = (0..UNARY)
        .map(|i| {
            let mut client = channels[i % CONNECTIONS].clone();
            tokio::spawn(async move { client.list_scans(pb::ListScansRequest::default()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    let status = gateway.terminate().await;
    let exit_after = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        exit_after < Duration::from_secs(10),
        "exited after {exit_after:?}"
    );

    for call in unary {
        call.await
            .unwrap()
            .expect("a unary call in flight completes");
    }
    for watcher in watchers {
        let (_, end) = watcher.await.unwrap();
        let status = end.expect_err("a stream cut by shutdown ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let mut reported = HashSet::new();
    for run in runs {
        let (updates, end) = run.await.unwrap();
        for update in &updates {
            if let Some(Event::Action(action)) =
                update.update.as_ref().and_then(|u| u.event.clone())
            {
                reported.insert(action.id);
            }
        }
        let status = end.expect_err("a RunScan cut by shutdown ends with a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    // Every action created upstream for a RunScan reached its caller.
    let created = sim.handle.stats().actions_created as usize - actions.len();
    assert_eq!(
        reported.len(),
        created,
        "actions created upstream vs reported to callers"
    );
    eprintln!(
        "SIGTERM with {STREAMS} streams, {RUN_SCANS} RunScans and {UNARY} unary calls: exit 0 after {exit_after:?}, {created} actions created and reported"
    );
}
