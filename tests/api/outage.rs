//! Streams through an outage of the Defender API: they are told that updates are delayed,
//! keep their place and deliver the final status once the API answers again; an outage longer
//! than the ride-out time ends them UNAVAILABLE with the last known status.

use std::time::Duration;

use defender_simulator::{EndpointFaults, Faults};
use scan_gateway::grpc::pb::{self, ActionStatus};
use tonic::Code;

use crate::helpers::*;

/// Every Defender endpoint answers 500 while it lasts.
fn down() -> Faults {
    Faults::defender_api(EndpointFaults {
        error_rate: 1.0,
        ..EndpointFaults::default()
    })
}

/// A gateway whose streams ride out outages for `ride_out`, over a simulator whose scans take
/// about 1.2 s.
async fn app(ride_out: Duration) -> TestGateway {
    let mut config = fast_simulator();
    config.pending_duration = Duration::from_millis(400);
    config.quick_scan_duration = Duration::from_millis(800);
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.stream_ride_out = Some(ride_out);
    spawn_gateway_with(sim, args).await
}

fn is_delayed(update: &pb::RunScanResponse) -> bool {
    matches!(
        update.update.as_ref().and_then(|u| u.event.as_ref()),
        Some(pb::scan_update::Event::Delayed(_))
    )
}

#[tokio::test]
async fn a_stream_rides_out_an_outage_and_delivers_the_final_status_after_it() {
    let mut app = app(Duration::from_secs(60)).await;
    let machine = app.sim.machine(0);
    let mut stream = app
        .client
        .run_scan(run_request(&machine))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("the first action");
    assert!(action_of(first.update.as_ref()).is_some());

    // The API goes down past the scan's end, and comes back 2 s later.
    app.sim.handle.set_faults(down());
    let delayed = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("told within 10 s")
        .unwrap()
        .expect("a delayed event, not the end");
    assert!(is_delayed(&delayed), "{delayed:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.sim.handle.set_faults(Faults::default());

    let (rest, end) = collect(stream).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(statuses(&rest).last(), Some(&ActionStatus::Succeeded));
    let metrics = app.metrics().await;
    for family in [
        "scan_gateway_stream_delays_total 1",
        "scan_gateway_watch_outages_total 1",
        "scan_gateway_watch_outage 0",
    ] {
        assert!(metrics.contains(family), "{family}");
    }
}

#[tokio::test]
async fn an_outage_longer_than_the_ride_out_ends_the_stream_unavailable_with_the_last_status() {
    let mut app = app(Duration::from_secs(1)).await;
    let machine = app.sim.machine(0);
    let mut stream = app
        .client
        .run_scan(run_request(&machine))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("the first action");
    let known = action_of(first.update.as_ref())
        .expect("an action")
        .status();
    app.sim.handle.set_faults(down());

    let (updates, end) = collect(stream).await;
    assert!(updates.iter().any(is_delayed), "told first: {updates:?}");
    let status = end.expect_err("ended by the outage");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("ErrorInfo");
    assert_eq!(info.reason, "UPSTREAM_OUTAGE");
    let upstream_name = match known {
        ActionStatus::Pending => "Pending",
        ActionStatus::InProgress => "InProgress",
        other => panic!("the scan ended before the outage: {other:?}"),
    };
    assert_eq!(info.metadata["last_status"], upstream_name);
}
