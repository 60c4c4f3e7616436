//! What a scan request means on a machine that is already scanning: a running scan answers
//! a request only when it is at least as thorough, and the answer says it was reused.

use std::time::Duration;

use defender_simulator::DuplicateMode;
use scan_gateway::grpc::pb::{self, ActionStatus};

use crate::helpers::*;

fn full(mut request: pb::StartScanRequest) -> pb::StartScanRequest {
    request.scan_type = pb::ScanType::Full as i32;
    request.comment = "someone else's full scan".into();
    request
}

#[tokio::test]
async fn a_quick_request_while_a_full_scan_runs_follows_the_full_one_marked_reused() {
    // Defender answers a busy machine either way; both must come to the same.
    for mode in [DuplicateMode::Error, DuplicateMode::ReturnExisting] {
        let mut config = fast_simulator();
        config.pending_duration = Duration::from_millis(500);
        config.duplicate_mode = mode;
        let mut app = spawn_gateway(spawn_simulator(config).await).await;
        let machine = app.sim.machine(0);
        let running = app
            .client
            .start_scan(full(start_request(&machine)))
            .await
            .unwrap()
            .into_inner();
        assert!(!running.reused, "{mode:?}: the caller's own scan");
        let running = running.action.unwrap();

        let quick = app
            .client
            .start_scan(start_request(&machine))
            .await
            .unwrap()
            .into_inner();
        assert!(quick.reused, "{mode:?}");
        assert_eq!(quick.action.unwrap().id, running.id, "{mode:?}");

        let (updates, end) = run_to_end(&mut app.client, &machine).await;
        assert!(end.is_ok(), "{mode:?}: {end:?}");
        let first = action_of(updates[0].update.as_ref()).unwrap();
        assert_eq!(
            (first.id.as_str(), first.scope.as_str()),
            (running.id.as_str(), "Full")
        );
        assert!(updates[0].reused, "{mode:?}: the first event says so");
        assert!(
            updates[1..].iter().all(|u| !u.reused),
            "{mode:?}: only the first"
        );
        assert_eq!(statuses(&updates).last(), Some(&ActionStatus::Succeeded));
        assert_eq!(app.sim.handle.stats().actions_created, 1, "{mode:?}");
    }
}
