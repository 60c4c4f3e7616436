//! `request_id` keys: a key is bound to its machine and scan type only once it names an
//! action, so a start that created nothing leaves it free.

use scan_gateway::grpc::pb;
use tonic::Code;

use crate::helpers::*;

/// Well formed, but no machine the simulator knows: Defender answers 404 and creates nothing.
const UNKNOWN_MACHINE: &str = "0000000000000000000000000000000000000000";

fn keyed(machine: &str) -> pb::StartScanRequest {
    pb::StartScanRequest {
        request_id: "ticket-404".into(),
        ..start_request(machine)
    }
}

#[tokio::test]
async fn a_key_first_used_on_an_unknown_machine_then_starts_a_scan_of_a_valid_one() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .start_scan(keyed(UNKNOWN_MACHINE))
        .await
        .expect_err("an unknown machine");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let machine = app.sim.machine(0);
    let action = app
        .client
        .start_scan(keyed(&machine))
        .await
        .expect("the failed first use left no trace of the key")
        .into_inner()
        .action
        .expect("a started scan carries its action");
    assert_eq!(action.machine_id, machine);
    let stats = app.sim.handle.stats();
    assert_eq!((stats.run_scan, stats.actions_created), (2, 1));

    // Now the key names an action: the same again is that action, another machine is refused.
    let again = app
        .client
        .start_scan(keyed(&machine))
        .await
        .expect("the same scan again")
        .into_inner()
        .action
        .expect("a started scan carries its action");
    assert_eq!(again.id, action.id);
    let status = app
        .client
        .start_scan(keyed(&app.sim.machine(1)))
        .await
        .expect_err("the key is bound to the first machine now");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        app.sim.handle.stats().run_scan,
        2,
        "no POST for a bound key"
    );
}
