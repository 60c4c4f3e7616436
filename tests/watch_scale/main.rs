//! The watcher at scale: 1,000 actions followed by 3,000 streams. Every stream sees its final
//! status, and the watcher needs one list call (plus pages) per interval, not one call per
//! action. A test binary of its own: its thousands of streams should not share the cores with
//! the rest of the suite.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

use std::time::Duration;

use scan_gateway::grpc::pb::{self, ActionStatus, scan_service_client::ScanServiceClient};
use tokio::time::Instant;
use tonic::transport::Channel;

use helpers::*;

const ACTIONS: usize = 1000;
const STREAMS_PER_ACTION: usize = 3;
const CONNECTIONS: usize = 8;

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_actions_followed_by_three_thousand_streams_cost_one_list_call_per_interval() {
    let mut config = fast_simulator();
    config.machine_count = ACTIONS * 5 / 4;
    config.pending_duration = Duration::from_secs(5);
    config.quick_scan_duration = Duration::from_secs(3);
    config.quota = vec![];
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.quota = Some("1000000/1m".into());
    args.poll_interval = Some(Duration::from_millis(250));
    args.max_queue = Some(10_000);
    // 3,000 calls at once from one address: lift the per-caller rate.
    args.caller_rate = Some(0.0);
    // 3,000 streams start with up to 3,000 reads at once; on a loaded 2-core runner those
    // can take longer than the suite's 5 s exchange bound, which this test is not about.
    args.upstream_timeout = Some(Duration::from_secs(30));
    let app = spawn_gateway_with(sim, args).await;

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        clients.push(ScanServiceClient::new(channel));
    }
    let machines: Vec<String> = app
        .sim
        .handle
        .machines()
        .into_iter()
        .filter(|m| m.online && m.supports_scan)
        .map(|m| m.id)
        .take(ACTIONS)
        .collect();
    assert_eq!(machines.len(), ACTIONS, "enough scannable machines");

    let started = Instant::now();
    let mut creates = Vec::new();
    for (i, machine) in machines.iter().enumerate() {
        let mut client = clients[i % CONNECTIONS].clone();
        let request = start_request(machine);
        creates.push(tokio::spawn(async move {
            client
                .start_scan(request)
                .await
                .unwrap()
                .into_inner()
                .action
                .unwrap()
                .id
        }));
    }
    let mut ids = Vec::new();
    for create in creates {
        ids.push(create.await.unwrap());
    }

    eprintln!("{ACTIONS} scans started after {:?}", started.elapsed());
    let mut streams = Vec::new();
    for (i, id) in ids
        .iter()
        .cycle()
        .take(ACTIONS * STREAMS_PER_ACTION)
        .enumerate()
    {
        let mut client = clients[i % CONNECTIONS].clone();
        let request = pb::WatchScanRequest {
            action_id: id.clone(),
        };
        streams.push(tokio::spawn(async move {
            let stream = client.watch_scan(request).await.unwrap().into_inner();
            collect(stream).await
        }));
    }
    let mut saw_change = 0;
    for stream in streams {
        let (updates, end) = stream.await.unwrap();
        if updates.len() > 1 {
            saw_change += 1;
        }
        assert!(end.is_ok(), "{end:?}");
        let last = updates
            .last()
            .and_then(|u| u.update.as_ref()?.event.clone())
            .expect("at least one event");
        let pb::scan_update::Event::Action(last) = last else {
            panic!("the last event is an action");
        };
        assert_eq!(last.status(), ActionStatus::Succeeded);
    }
    let elapsed = started.elapsed();
    // The streams were open while the statuses changed: they saw them through the watcher.
    assert!(
        saw_change > ACTIONS * STREAMS_PER_ACTION / 2,
        "only {saw_change} streams saw a status change"
    );

    let metrics = app.metrics().await;
    let refreshes = counter(&metrics, "scan_gateway_watch_refreshes_total");
    let calls = counter(&metrics, "scan_gateway_watch_upstream_calls_total");
    let stats = app.sim.handle.stats();
    let list_calls = stats.list_actions as f64;
    // A new stream on an action already followed starts from the watcher, not a GET.
    assert!(
        stats.get_action < (ACTIONS * STREAMS_PER_ACTION) as u64,
        "{} GETs for {} streams",
        stats.get_action,
        ACTIONS * STREAMS_PER_ACTION
    );
    eprintln!(
        "{ACTIONS} actions, {} streams, {elapsed:?}: {refreshes} refreshes, {calls} watcher calls, {list_calls} list calls upstream",
        ACTIONS * STREAMS_PER_ACTION
    );
    assert!(refreshes >= 2.0, "the watcher refreshed: {refreshes}");
    // One list call per refresh, plus at most one more page.
    assert!(
        list_calls <= 2.0 * refreshes,
        "{list_calls} list calls for {refreshes} refreshes"
    );
    // And never more refreshes than intervals elapsed.
    let intervals = elapsed.as_secs_f64() / 0.25 + 1.0;
    assert!(
        refreshes <= intervals,
        "{refreshes} refreshes in {intervals} intervals"
    );
}
