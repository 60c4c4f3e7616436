//! The soak's mixed load, shared by `soak` (the gateway as a process, its RSS) and `heap` (the
//! gateway in this process under a heap profiler): per worker, a RunScan renewed to its final
//! status, Start/Get/List/Cancel every 2 s, and a WatchScan opened every second and abandoned
//! after its first event. No `request_id`: the keys are state that grows by design (bounded).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use scan_gateway::grpc::pb::{self, scan_service_client::ScanServiceClient};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// `workers` workers of each kind, each on machines of its own (a RunScan never meets another's
/// scan), until `stop`; `calls` counts the calls made.
pub fn spawn(
    client: &ScanServiceClient<Channel>,
    machines: &[String],
    workers: usize,
    stop: &Arc<AtomicBool>,
    calls: &Arc<AtomicU64>,
) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    for worker in 0..workers {
        let own = |kind: usize| machines[(kind * workers + worker) % machines.len()].clone();
        handles.push(tokio::spawn(run_scans(
            client.clone(),
            own(0),
            stop.clone(),
            calls.clone(),
        )));
        handles.push(tokio::spawn(unary_calls(
            client.clone(),
            own(1),
            stop.clone(),
            calls.clone(),
        )));
        handles.push(tokio::spawn(abandoned_watches(
            client.clone(),
            own(2),
            stop.clone(),
            calls.clone(),
        )));
    }
    handles
}

/// RunScan on `machine`, followed to its final status, again and again.
async fn run_scans(
    mut client: ScanServiceClient<Channel>,
    machine: String,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let request = pb::RunScanRequest {
            machine_id: machine.clone(),
            scan_type: pb::ScanType::Quick as i32,
            comment: "soak".into(),
            request_id: String::new(),
            priority: 0,
        };
        calls.fetch_add(1, Ordering::Relaxed);
        if let Ok(stream) = client.run_scan(request).await {
            let mut stream = stream.into_inner();
            while let Ok(Some(_)) = stream.message().await {}
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// StartScan, GetScan, ListScans and CancelScan on `machine`, with keys that change.
async fn unary_calls(
    mut client: ScanServiceClient<Channel>,
    machine: String,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let started = client
            .start_scan(pb::StartScanRequest {
                machine_id: machine.clone(),
                scan_type: pb::ScanType::Quick as i32,
                comment: format!("soak {round}"),
                request_id: String::new(),
                priority: 0,
            })
            .await;
        calls.fetch_add(1, Ordering::Relaxed);
        if let Ok(started) = started
            && let Some(action) = started.into_inner().action
        {
            let _ = client
                .get_scan(pb::GetScanRequest {
                    fresh: true,
                    action_id: action.id.clone(),
                })
                .await;
            let _ = client
                .list_scans(pb::ListScansRequest {
                    machine_id: machine.clone(),
                    page_size: 20,
                    ..Default::default()
                })
                .await;
            let _ = client
                .cancel_scan(pb::CancelScanRequest {
                    action_id: action.id,
                    comment: "soak".into(),
                })
                .await;
            calls.fetch_add(3, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// WatchScan on a scan of `machine`, abandoned after the first event or two.
async fn abandoned_watches(
    mut client: ScanServiceClient<Channel>,
    machine: String,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) {
    let mut current: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let id = match current.clone() {
            Some(id) => id,
            None => {
                let started = client
                    .start_scan(pb::StartScanRequest {
                        machine_id: machine.clone(),
                        scan_type: pb::ScanType::Quick as i32,
                        comment: "soak watch".into(),
                        request_id: String::new(),
                        priority: 0,
                    })
                    .await;
                calls.fetch_add(1, Ordering::Relaxed);
                match started.ok().and_then(|s| s.into_inner().action) {
                    Some(action) => {
                        current = Some(action.id.clone());
                        action.id
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        calls.fetch_add(1, Ordering::Relaxed);
        match client
            .watch_scan(pb::WatchScanRequest { action_id: id })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                match stream.message().await {
                    Ok(Some(update)) => {
                        let ended = update
                            .update
                            .and_then(|u| u.event)
                            .is_some_and(|event| matches!(event, pb::scan_update::Event::Action(a) if a.status() != pb::ActionStatus::Pending && a.status() != pb::ActionStatus::InProgress));
                        if ended {
                            current = None;
                        }
                    }
                    _ => current = None,
                }
                // Abandoned: the stream is dropped mid-way.
            }
            Err(_) => current = None,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
