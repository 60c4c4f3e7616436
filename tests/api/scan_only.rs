//! The gateway serves antivirus scans only: an analyst's isolation on the same machine is not
//! found through any RPC, and is never cancelled.

use scan_gateway::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

#[tokio::test]
async fn another_action_type_is_not_found_by_any_rpc_and_never_cancelled() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    let isolation = app
        .sim
        .handle
        .start_other_action(&machine, "Isolate")
        .expect("a known machine");

    let get = app
        .client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: isolation.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound, "{get:?}");
    let info = get.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(info.resource_name, isolation);
    assert!(!get.message().contains("Isolate"), "{}", get.message());

    let watch = match app
        .client
        .watch_scan(pb::WatchScanRequest {
            action_id: isolation.clone(),
        })
        .await
    {
        Ok(stream) => {
            let (updates, end) = collect(stream.into_inner()).await;
            assert!(updates.is_empty(), "{updates:?}");
            end.unwrap_err()
        }
        Err(status) => status,
    };
    assert_eq!(watch.code(), Code::NotFound, "{watch:?}");

    let cancel = app
        .client
        .cancel_scan(pb::CancelScanRequest {
            action_id: isolation.clone(),
            comment: "not ours to cancel".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound, "{cancel:?}");
    assert_eq!(
        app.sim.handle.stats().cancel,
        0,
        "no cancel reached Defender"
    );
    assert_eq!(
        app.sim.handle.action_status(&isolation),
        Some(defender_simulator::ActionStatus::InProgress)
    );
}
