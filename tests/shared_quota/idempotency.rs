//! `request_id` keys shared through Redis: a claim alone binds nothing, so a key whose first
//! start creates nothing is free for another machine on any gateway.

use std::{sync::Arc, time::Duration};

use defender_simulator::{EndpointFaults, Faults};
use scan_gateway::grpc::pb;
use tonic::Code;

use super::RedisServer;
use crate::helpers::*;

/// Well formed, but no machine the simulator knows: Defender answers 404 and creates nothing.
const UNKNOWN_MACHINE: &str = "0000000000000000000000000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_claimed_by_a_start_that_creates_nothing_then_starts_another_machine_elsewhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = Arc::new(spawn_simulator(fast_simulator()).await);
    // Slow POSTs: the first start still holds its claim when the second asks.
    sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            latency: Duration::from_millis(500),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let url = redis.url();
    let gateway = |sim: Arc<TestSimulator>| {
        let mut args = settings_for(&sim);
        args.redis_url = Some(secret(&url));
        args.replicas = Some(2);
        spawn_gateway_sharing(sim, args)
    };
    let a = gateway(sim.clone()).await;
    let b = gateway(sim.clone()).await;
    let keyed = |machine: &str| pb::StartScanRequest {
        request_id: "ticket-claimed".into(),
        ..start_request(machine)
    };

    let mut first_client = a.client.clone();
    let first = tokio::spawn(async move { first_client.start_scan(keyed(UNKNOWN_MACHINE)).await });
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while sim.handle.stats().run_scan == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the first POST never left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The key is claimed in Redis for the unknown machine; the valid one waits, then starts.
    let machine = sim.machine(0);
    let second = b.client.clone().start_scan(keyed(&machine)).await;

    let status = first.await.unwrap().expect_err("an unknown machine");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let action = second
        .expect("the claim of a start that created nothing binds nothing")
        .into_inner()
        .action
        .expect("a started scan carries its action");
    assert_eq!(action.machine_id, machine);
    let stats = sim.handle.stats();
    assert_eq!((stats.run_scan, stats.actions_created), (2, 1));
}
