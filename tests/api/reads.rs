//! Reads through the real gateway: a scan a stream saw end is read without a call however
//! many callers ask; `fresh` pays one; every answer says when Defender confirmed it.

use crate::helpers::*;
use scan_gateway::grpc::pb;

#[tokio::test]
async fn reads_of_a_scan_seen_to_end_make_no_call_and_a_fresh_read_makes_one() {
    let app = spawn_app().await;
    let machine = app.sim.machine(0);
    let stream = app
        .client
        .clone()
        .run_scan(run_request(&machine))
        .await
        .unwrap()
        .into_inner();
    let (updates, end) = collect(stream).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        statuses(&updates).last(),
        Some(&pb::ActionStatus::Succeeded)
    );
    let id = action_of(updates.last().and_then(|u| u.update.as_ref()))
        .unwrap()
        .id;

    let before = app.sim.handle.stats().get_action;
    let reads: Vec<_> = (0..50)
        .map(|_| {
            let mut client = app.client.clone();
            let action_id = id.clone();
            tokio::spawn(async move {
                client
                    .get_scan(pb::GetScanRequest {
                        action_id,
                        fresh: false,
                    })
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    for read in reads {
        let answer = read.await.unwrap().unwrap();
        let action = answer.action.unwrap();
        assert_eq!(action.status(), pb::ActionStatus::Succeeded);
        assert!(answer.observed_at.is_some(), "every answer says its age");
    }
    assert_eq!(
        app.sim.handle.stats().get_action,
        before,
        "no call for a final state"
    );

    let fresh = app
        .client
        .clone()
        .get_scan(pb::GetScanRequest {
            action_id: id,
            fresh: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        app.sim.handle.stats().get_action,
        before + 1,
        "fresh pays one"
    );
    let observed = fresh.observed_at.unwrap();
    let age = time::OffsetDateTime::now_utc().unix_timestamp() - observed.seconds;
    assert!((0..=2).contains(&age), "confirmed just now: {age} s ago");

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("scan_gateway_reads_total{rpc=\"GetScan\",source=\"recent\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("scan_gateway_reads_total{rpc=\"GetScan\",source=\"upstream\"} 1"),
        "{metrics}"
    );
}
