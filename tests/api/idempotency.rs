//! `request_id` keys: a key is bound to its machine and scan type only once it names an
//! action, so a start that created nothing leaves it free; and a start cut by its caller's
//! deadline is resolved before its key is let go, so a retry never starts a second scan.

use std::time::Duration;

use defender_simulator::{EndpointFaults, Faults, SimulatorConfig};
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

#[tokio::test]
async fn a_scan_answered_after_the_callers_deadline_is_what_a_retry_with_its_key_returns() {
    let sim = spawn_simulator(SimulatorConfig {
        // Long enough that a second POST would meet a running scan and show up.
        pending_duration: Duration::from_secs(60),
        ..fast_simulator()
    })
    .await;
    let mut app = spawn_gateway(sim).await;
    // Defender creates the scan at once but answers 2 s late.
    app.sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            answer_latency: Duration::from_secs(2),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let machine = app.sim.machine(0);
    let request = |timeout| {
        let mut request = tonic::Request::new(pb::StartScanRequest {
            request_id: "ticket-late".into(),
            ..start_request(&machine)
        });
        request.set_timeout(timeout);
        request
    };
    let status = app
        .client
        .start_scan(request(Duration::from_millis(500)))
        .await
        .expect_err("the answer comes after the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(app.sim.handle.stats().actions_created, 1);

    app.sim.handle.set_faults(Faults::default());
    let retried = app
        .client
        .start_scan(request(Duration::from_secs(5)))
        .await
        .expect("the retry finds the scan the first call created")
        .into_inner()
        .action
        .expect("a started scan carries its action");
    assert_eq!(retried.machine_id, machine);
    let stats = app.sim.handle.stats();
    assert_eq!(
        (stats.run_scan, stats.actions_created),
        (1, 1),
        "one POST, one scan"
    );
}

/// Keys are per caller: a key one caller used names nothing for another, so guessing it
/// reads no one else's action.
#[tokio::test]
async fn two_callers_using_the_same_key_get_two_scans() {
    use crate::{
        pki::{Signer, claims, temp_dir},
        security::{jwt_args, with_token},
    };
    let dir = temp_dir();
    let signer = Signer::new("k1");
    let sim = spawn_simulator(fast_simulator()).await;
    let args = jwt_args(&sim, &dir, &signer, "");
    let app = spawn_gateway_with(sim, args).await;
    let alice = signer.token(claims("system:serviceaccount:soc:alice"));
    let bob = signer.token(claims("system:serviceaccount:soc:bob"));
    let (first, second) = (app.sim.machine(0), app.sim.machine(1));
    let start = |machine: String, token: String| {
        let mut client = app.client.clone();
        async move {
            client
                .start_scan(with_token(keyed(&machine), &token))
                .await
                .map(|answer| answer.into_inner().action.expect("an action").id)
        }
    };

    let of_alice = start(first.clone(), alice.clone())
        .await
        .expect("alice's scan");
    let of_bob = start(second.clone(), bob.clone())
        .await
        .expect("bob's key is his own, not bound to alice's machine");
    assert_ne!(of_alice, of_bob);
    // Each caller's retry returns its own scan; bob's key never names alice's.
    assert_eq!(start(first.clone(), alice).await.unwrap(), of_alice);
    assert_eq!(start(second, bob.clone()).await.unwrap(), of_bob);
    let refused = start(first, bob).await.expect_err("bound to bob's machine");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        app.sim.handle.stats().run_scan,
        2,
        "two POSTs, one per caller"
    );
}
