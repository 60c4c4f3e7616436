//! The watcher against a Defender that serves one action malformed in its list pages: that
//! action alone is looked up by id, and every other stream is served as usual.

use std::time::Duration;

use defender_simulator::Faults;
use scan_gateway::grpc::pb::{self, ActionStatus};

use crate::helpers::*;

/// Enough actions that a refresh lists by creation time (more than 40 ids fit one filter).
const ACTIONS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_malformed_action_in_a_list_page_fails_no_other_stream() {
    let mut config = fast_simulator();
    config.machine_count = ACTIONS * 2;
    // Long enough for many refreshes to meet the malformed entry before the scans end.
    config.pending_duration = Duration::from_millis(800);
    config.quick_scan_duration = Duration::from_millis(800);
    config.quota = vec![];
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.quota = Some("1000000/1m".into());
    args.caller_rate = Some(0.0);
    let app = spawn_gateway_with(sim, args).await;

    let machines = app.sim.handle.demo_machine_ids(ACTIONS);
    assert_eq!(machines.len(), ACTIONS, "enough scannable machines");
    let mut ids = Vec::new();
    for machine in &machines {
        let started = app.client.clone().start_scan(start_request(machine)).await;
        ids.push(started.unwrap().into_inner().action.unwrap().id);
    }
    let bad = ids[0].clone();
    app.sim.handle.set_faults(Faults {
        malformed_list_entries: vec![bad.clone()],
        ..Faults::default()
    });

    let streams: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut client = app.client.clone();
            let request = pb::WatchScanRequest {
                action_id: id.clone(),
            };
            tokio::spawn(async move {
                let stream = client.watch_scan(request).await.unwrap().into_inner();
                collect(stream).await
            })
        })
        .collect();
    let mut succeeded = 0;
    for (id, stream) in ids.iter().zip(streams) {
        let (updates, end) = stream.await.unwrap();
        let last = updates
            .iter()
            .rev()
            .find_map(|u| action_of(u.update.as_ref()))
            .expect("an action event");
        if *id == bad && end.is_err() {
            // Unreadable by id too: it ends with an error of its own, no one else's.
            continue;
        }
        assert!(end.is_ok(), "{id}: {end:?}");
        assert_eq!(last.status(), ActionStatus::Succeeded, "{id}");
        succeeded += 1;
    }
    assert_eq!(succeeded, ACTIONS, "the malformed one was read by id");
    let stats = app.sim.handle.stats();
    assert!(stats.list_actions > 0 && stats.get_action > 0, "{stats:?}");

    // ListScans leaves the malformed action out of its page and lists the others.
    let listed = app
        .client
        .clone()
        .list_scans(pb::ListScansRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<_> = listed.actions.into_iter().map(|a| a.id).collect();
    assert!(!listed.contains(&bad));
    assert!(ids[1..].iter().all(|id| listed.contains(id)));
}
