//! The client crate (`crates/client`) against real gateways: a stream survives the gateway
//! serving it, stopped cleanly (SIGTERM's path: `UNAVAILABLE`, "shutting down") or dropped with
//! its connections (a crash), when another gateway takes its address, and ends with the final
//! status without the caller doing anything; typed errors come from the rich details.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use scan_gateway_client::{CallOptions, ErrorKind, ResumePolicy, ScanClient, Update, pb};

use crate::helpers::*;

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// `shutdown` (SIGTERM's path): streams end `UNAVAILABLE` and the server exits.
    Clean,
    /// The binary, killed with SIGKILL: its connections drop with no status.
    Crash,
}

/// A gateway on `addr` in front of `sim`: in this process, or as the binary (which a test can
/// kill as a crash would).
enum Gateway {
    InProcess(TestGateway),
    Process(crate::process::Running),
}

impl Gateway {
    async fn start(sim: &Arc<TestSimulator>, addr: SocketAddr, stop: Stop) -> Self {
        match stop {
            Stop::Clean => {
                let mut args = settings_for(sim);
                args.listen = Some(addr);
                Gateway::InProcess(spawn_gateway_sharing(sim.clone(), args).await)
            }
            Stop::Crash => {
                let mut command = crate::process::real_mode(sim);
                command.env("SCAN_GATEWAY_LISTEN", addr.to_string());
                let mut running = crate::process::Running::spawn(command);
                running.stderr_line("\"serving\"");
                Gateway::Process(running)
            }
        }
    }

    async fn stop(self) {
        match self {
            Gateway::InProcess(gateway) => gateway.shutdown().await.unwrap(),
            // Dropped, the child is killed (SIGKILL) and reaped.
            Gateway::Process(running) => drop(running),
        }
    }
}

#[tokio::test]
async fn a_stream_survives_a_clean_stop_of_its_gateway() {
    survives(Stop::Clean).await;
}

#[tokio::test]
async fn a_stream_survives_a_crash_of_its_gateway() {
    survives(Stop::Crash).await;
}

async fn survives(stop: Stop) {
    let sim = Arc::new(
        spawn_simulator(defender_simulator::SimulatorConfig {
            pending_duration: Duration::from_millis(300),
            quick_scan_duration: Duration::from_millis(1500),
            ..fast_simulator()
        })
        .await,
    );
    let addr = free_loopback_addr();
    let first = Gateway::start(&sim, addr, stop).await;

    let client = ScanClient::connect_lazy(format!("http://{addr}"))
        .unwrap()
        .with_resume_policy(ResumePolicy {
            max_resumes: 100,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        });
    let mut scan = client.run_scan(
        pb::RunScanRequest {
            machine_id: sim.machine(0),
            scan_type: pb::ScanType::Quick as i32,
            comment: "client crate resume test".into(),
            request_id: format!("resume-{stop:?}"),
            priority: 0,
        },
        CallOptions::timeout(Duration::from_secs(30)),
    );
    let created = loop {
        match next(&mut scan).await {
            Some(Ok(Update::Action { action, .. })) => break action,
            Some(Ok(_)) => continue,
            other => panic!("no first action: {other:?}"),
        }
    };
    assert_eq!(created.status(), pb::ActionStatus::Pending);

    first.stop().await;
    let _second = Gateway::start(&sim, addr, stop).await;

    let mut statuses = vec![created.status()];
    let mut resumes = 0;
    while let Some(update) = next(&mut scan).await {
        match update.expect("the stream resumes rather than fails") {
            Update::Action { action, .. } => {
                assert_eq!(action.id, created.id, "the same scan, followed");
                statuses.push(action.status());
            }
            Update::Resumed { .. } => resumes += 1,
            _ => {}
        }
    }
    assert!(resumes >= 1, "the stream was resumed");
    assert_eq!(
        statuses.last(),
        Some(&pb::ActionStatus::Succeeded),
        "{statuses:?}"
    );
    assert!(
        statuses.windows(2).all(|w| w[0] != w[1]),
        "no update delivered twice: {statuses:?}"
    );
    assert_eq!(sim.handle.stats().run_scan, 1, "one scan, never a second");
}

#[tokio::test]
async fn errors_are_typed_from_the_rich_details() {
    let app = spawn_app().await;
    let client = ScanClient::connect_lazy(format!("http://{}", app.addr)).unwrap();
    let error = client
        .start_scan(
            pb::StartScanRequest {
                machine_id: "not a machine".into(),
                scan_type: pb::ScanType::Quick as i32,
                comment: "x".into(),
                request_id: String::new(),
                priority: 0,
            },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    let ErrorKind::InvalidArgument { violations } = error.kind() else {
        panic!("{error:?}");
    };
    assert_eq!(violations[0].field, "machine_id");

    let error = client
        .get_scan(
            pb::GetScanRequest {
                action_id: "7f5e3c1a-0b2d-4e6f-8a9b-1c2d3e4f5a6b".into(),
                fresh: false,
            },
            CallOptions::timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error.kind(), ErrorKind::NotFound { resource_name, .. }
            if resource_name == "7f5e3c1a-0b2d-4e6f-8a9b-1c2d3e4f5a6b"),
        "{error:?}"
    );

    // A stream whose action does not exist ends with the error, not with resumes.
    let mut watch = client.watch_scan(
        "7f5e3c1a-0b2d-4e6f-8a9b-1c2d3e4f5a6b",
        CallOptions::default(),
    );
    let end = next(&mut watch).await;
    assert!(
        matches!(&end, Some(Err(e)) if matches!(e.kind(), ErrorKind::NotFound { .. })),
        "{end:?}"
    );
    assert!(next(&mut watch).await.is_none());
}

async fn next(
    scan: &mut scan_gateway_client::ScanStream,
) -> Option<Result<Update, scan_gateway_client::Error>> {
    tokio::time::timeout(Duration::from_secs(30), scan.next())
        .await
        .expect("an update within 30 s")
}

/// A loopback address no one listens on now, for two gateways to take in turn.
fn free_loopback_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
