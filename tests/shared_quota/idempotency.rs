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

/// One simulator whose scan POSTs have `run_scan` faults, and two gateways sharing `redis`.
async fn two_gateways(
    redis: &RedisServer,
    run_scan: EndpointFaults,
) -> (Arc<TestSimulator>, TestGateway, TestGateway) {
    let sim = Arc::new(spawn_simulator(fast_simulator()).await);
    sim.handle.set_faults(Faults {
        run_scan,
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
    (sim, a, b)
}

/// Waits (at most 5 s) until the simulator has seen the first scan POST.
async fn first_post_left(sim: &TestSimulator) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while sim.handle.stats().run_scan == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the first POST never left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_claimed_by_a_start_that_creates_nothing_then_starts_another_machine_elsewhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Slow POSTs: the first start still holds its claim when the second asks.
    let (sim, a, b) = two_gateways(
        &redis,
        EndpointFaults {
            latency: Duration::from_millis(500),
            ..EndpointFaults::default()
        },
    )
    .await;
    let keyed = |machine: &str| pb::StartScanRequest {
        request_id: "ticket-claimed".into(),
        ..start_request(machine)
    };

    let mut first_client = a.client.clone();
    let first = tokio::spawn(async move { first_client.start_scan(keyed(UNKNOWN_MACHINE)).await });
    first_post_left(&sim).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_finds_its_key_busy_is_aborted_and_never_starts_a_scan() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Defender creates the scan at once but answers 3 s later: the first start holds its
    // claim that long.
    let (sim, a, b) = two_gateways(
        &redis,
        EndpointFaults {
            answer_latency: Duration::from_secs(3),
            ..EndpointFaults::default()
        },
    )
    .await;
    let machine = sim.machine(0);
    let keyed = pb::StartScanRequest {
        request_id: "ticket-busy".into(),
        ..start_request(&machine)
    };

    let mut first_client = a.client.clone();
    let first_request = keyed.clone();
    let first = tokio::spawn(async move { first_client.start_scan(first_request).await });
    first_post_left(&sim).await;
    // Another replica, the same key, a 1 s deadline: it waits, then is told the key is busy.
    let mut busy = tonic::Request::new(keyed.clone());
    busy.set_timeout(Duration::from_secs(1));
    let status = b.client.clone().start_scan(busy).await.unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(
        sim.handle.stats().run_scan,
        1,
        "the busy request sent no POST"
    );

    let first = first
        .await
        .unwrap()
        .expect("the first start succeeds")
        .into_inner()
        .action
        .expect("an action");
    // A retry after the first start finished gets that scan.
    let retried = b
        .client
        .clone()
        .start_scan(keyed)
        .await
        .expect("the key names the first scan now")
        .into_inner()
        .action
        .expect("an action");
    assert_eq!(retried.id, first.id);
    let stats = sim.handle.stats();
    assert_eq!((stats.run_scan, stats.actions_created), (1, 1));
}

#[tokio::test]
async fn a_claim_is_renewed_and_released_only_by_its_owner() {
    use redis::AsyncCommands;
    use scan_gateway::{
        domain::{Comment, MachineId, RequestId, ScanRequest, ScanType},
        idempotency::{Claim, SharedKeys},
    };

    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = SharedKeys::new(
        &secret(&redis.url()),
        "test-owned".into(),
        Duration::from_millis(500),
    )
    .unwrap();
    let key = RequestId::parse_optional("request_id", "ticket-owned")
        .unwrap()
        .unwrap();
    let request = ScanRequest {
        machine_id: MachineId::parse("machine_id", "1e5bc9d7e413ddd7902c2932e418702b84d0cc07")
            .unwrap(),
        scan_type: ScanType::Quick,
        comment: Comment::parse("comment", "owned").unwrap(),
        request_id: Some(key.clone()),
    };
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    let Claim::Mine(token) = keys.claim(None, &key, &request, until).await.unwrap() else {
        panic!("a fresh key is ours");
    };
    let name = "test-owned:gateway:ticket-owned";
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();

    // Ours: renewing brings the claim back to its full minute.
    let _: () = connection.pexpire(name, 5_000).await.unwrap();
    assert!(keys.renew(None, &key, &token).await);
    let ttl: i64 = connection.pttl(name).await.unwrap();
    assert!(ttl > 55_000, "{ttl} ms left");

    // The claim expired and another request claimed the key: neither renewing nor releasing
    // touches the other's claim.
    let _: () = connection
        .set(name, "pending|other|Quick|someone-else")
        .await
        .unwrap();
    assert!(!keys.renew(None, &key, &token).await);
    keys.release(None, &key, &token).await;
    let value: Option<String> = connection.get(name).await.unwrap();
    assert_eq!(value.as_deref(), Some("pending|other|Quick|someone-else"));
}
