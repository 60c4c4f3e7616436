//! Priority classes through the real gateway: the policy caps the class a caller may ask
//! for, an urgent scan overtakes background scans already waiting for the quota, and a class
//! the proto does not know is INVALID_ARGUMENT.

use std::time::Duration;

use scan_gateway::grpc::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    helpers::*,
    pki::*,
    security::{jwt_args, with_token},
};

fn start(machine: &str, priority: pb::Priority) -> pb::StartScanRequest {
    pb::StartScanRequest {
        priority: priority as i32,
        ..start_request(machine)
    }
}

#[tokio::test]
async fn a_caller_capped_at_normal_may_not_ask_for_urgent() {
    let dir = temp_dir();
    let signer = Signer::new("k1");
    let sim = spawn_simulator(fast_simulator()).await;
    let args = jwt_args(
        &sim,
        &dir,
        &signer,
        "\"system:serviceaccount:fleet:bulk\" = \"scan\"\n\"system:serviceaccount:soc:*\" = { role = \"scan\", max_priority = \"urgent\" }",
    );
    let gw = spawn_gateway_with(sim, args).await;
    let mut client = gw.client.clone();
    let bulk = signer.token(claims("system:serviceaccount:fleet:bulk"));
    let soc = signer.token(claims("system:serviceaccount:soc:responder"));

    let refused = client
        .start_scan(with_token(
            start(&gw.sim.machine(0), pb::Priority::Urgent),
            &bulk,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "PRIORITY_NOT_ALLOWED");
    assert_eq!(info.metadata["requested"], "urgent");
    assert_eq!(info.metadata["allowed"], "normal");
    assert_eq!(
        gw.sim.api_requests(),
        0,
        "refused before anything went upstream"
    );

    // Less urgent than allowed is fine, and so is urgent for a rule that grants it.
    client
        .start_scan(with_token(
            start(&gw.sim.machine(1), pb::Priority::Background),
            &bulk,
        ))
        .await
        .expect("background is within the cap");
    let mut run = with_token(
        pb::RunScanRequest {
            priority: pb::Priority::Urgent as i32,
            ..run_request(&gw.sim.machine(2))
        },
        &soc,
    );
    run.set_timeout(Duration::from_secs(20));
    let (_, end) = collect(client.run_scan(run).await.unwrap().into_inner()).await;
    assert!(end.is_ok(), "{end:?}");
}

#[tokio::test]
async fn an_urgent_scan_overtakes_background_scans_waiting_for_the_quota() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    // One scan a second: every start after the first waits for its slot.
    args.quota_run_antivirus_scan = Some("1/1s".into());
    let gw = spawn_gateway_with(sim, args).await;
    gw.client
        .clone()
        .start_scan(start(&gw.sim.machine(0), pb::Priority::Normal))
        .await
        .unwrap();
    let sweep: Vec<_> = (1..5)
        .map(|n| {
            let (mut client, machine) = (gw.client.clone(), gw.sim.machine(n));
            tokio::spawn(async move {
                client
                    .start_scan(start(&machine, pb::Priority::Background))
                    .await
                    .map(|r| r.into_inner().action.unwrap())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let urgent = gw
        .client
        .clone()
        .start_scan(start(&gw.sim.machine(9), pb::Priority::Urgent))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let urgent_at = urgent.creation_time.unwrap();
    for scan in sweep {
        let background = scan.await.unwrap().unwrap();
        let at = background.creation_time.unwrap();
        assert!(
            (urgent_at.seconds, urgent_at.nanos) < (at.seconds, at.nanos),
            "the urgent scan was created first: {urgent_at:?} against {at:?}"
        );
    }
}

#[tokio::test]
async fn a_priority_the_proto_does_not_know_is_invalid_argument() {
    let app = spawn_app().await;
    let refused = app
        .client
        .clone()
        .start_scan(pb::StartScanRequest {
            priority: 7,
            ..start_request(&app.sim.machine(0))
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let bad = refused.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "priority");
    assert_eq!(app.sim.api_requests(), 0);
}
