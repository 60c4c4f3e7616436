//! `request_id` keys shared through Redis: a claim alone binds nothing, so a key whose first
//! start creates nothing is free for another machine on any gateway; a key survives Redis
//! losing its data (the replicas write theirs back) and Redis being unreachable (a key no
//! replica knows is refused, never started twice).

use std::{sync::Arc, time::Duration};

use defender_simulator::{EndpointFaults, Faults};
use scan_gateway::grpc::pb;
use tonic::Code;

use super::{Proxy, RedisServer};
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
        false,
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
    // A new Redis begins an epoch that lets no claim in while replicas write keys back.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
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

/// Past the new epoch's gathering (keys) and the fresh quota epoch's: the first keyed start
/// would otherwise wait for them.
async fn past_gathering() {
    tokio::time::sleep(Duration::from_millis(2200)).await;
}

/// Starts `request` on `gateway` and returns its action's id.
async fn started(gateway: &TestGateway, request: pb::StartScanRequest) -> String {
    gateway
        .client
        .clone()
        .start_scan(request)
        .await
        .expect("the scan starts")
        .into_inner()
        .action
        .expect("an action")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_survives_redis_losing_its_data() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (sim, a, b) = two_gateways(&redis, EndpointFaults::default()).await;
    past_gathering().await;
    let keyed = pb::StartScanRequest {
        request_id: "ticket-lost".into(),
        ..start_request(&sim.machine(0))
    };
    let first = started(&a, keyed.clone()).await;

    // Redis loses every key; the retry reaches the other replica at once. It waits while the
    // new epoch gathers, finds the key that replica A wrote back, and answers A's scan.
    redis.flush_all();
    let retried = started(&b, keyed.clone()).await;
    assert_eq!(retried, first);
    let stats = sim.handle.stats();
    assert_eq!((stats.run_scan, stats.actions_created), (1, 1));
    let metrics = a.metrics().await;
    let restored = metrics
        .lines()
        .find(|l| l.starts_with("scan_gateway_idempotency_keys_restored_total "))
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(restored, Some("1"), "replica A wrote its one key back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_a_key_no_replica_knows_is_refused_and_a_known_one_answered() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let sim = Arc::new(spawn_simulator(fast_simulator()).await);
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let mut args = settings_for(&sim);
        args.redis_url = Some(secret(&proxy.url()));
        args.replicas = Some(2);
        gateways.push(spawn_gateway_sharing(sim.clone(), args).await);
    }
    let (a, b) = (&gateways[0], &gateways[1]);
    past_gathering().await;
    let keyed = |key: &str, machine: usize| pb::StartScanRequest {
        request_id: key.into(),
        ..start_request(&sim.machine(machine))
    };
    let first = started(a, keyed("ticket-known", 0)).await;

    proxy.set_cut(true);
    // The other replica cannot tell whether the key was used: it refuses, with RetryInfo.
    for (gateway, key, machine) in [(b, "ticket-known", 0), (a, "ticket-new", 1)] {
        let status = gateway
            .client
            .clone()
            .start_scan(keyed(key, machine))
            .await
            .expect_err("unchecked keys are refused");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let details = tonic_types::StatusExt::get_error_details(&status);
        assert_eq!(
            details.error_info().map(|info| info.reason.as_str()),
            Some("REQUEST_ID_UNCHECKED")
        );
        assert!(details.retry_info().is_some(), "{status:?}");
    }
    assert_eq!(sim.handle.stats().run_scan, 1, "no POST while unchecked");
    // The replica that started it knows the key without Redis.
    let mut known = tonic::Request::new(keyed("ticket-known", 0));
    known.set_timeout(Duration::from_secs(10));
    let again = a.client.clone().start_scan(known).await;
    // Its answer reads the action upstream, and the quota may hold calls while Redis is cut.
    match again {
        Ok(answer) => assert_eq!(
            answer.into_inner().action.map(|a| a.id),
            Some(first.clone())
        ),
        Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
    }

    proxy.set_cut(false);
    let retried = started(b, keyed("ticket-known", 0)).await;
    assert_eq!(retried, first);
    assert_eq!(sim.handle.stats().run_scan, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sole_replica_keeps_its_own_keys_while_redis_is_unreachable() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    proxy.set_cut(true);
    let sim = Arc::new(spawn_simulator(fast_simulator()).await);
    let mut args = settings_for(&sim);
    args.redis_url = Some(secret(&proxy.url()));
    args.replicas = Some(1);
    let gateway = spawn_gateway_sharing(sim.clone(), args).await;
    let keyed = pb::StartScanRequest {
        request_id: "ticket-alone".into(),
        ..start_request(&sim.machine(0))
    };
    // Alone, its own keys are all the keys: it starts (once its quota admits the call).
    let first = started(&gateway, keyed.clone()).await;
    let again = started(&gateway, keyed).await;
    assert_eq!(again, first);
    assert_eq!(sim.handle.stats().run_scan, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_recorded_while_redis_is_cut_is_recorded_when_it_returns() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let proxy = Proxy::start(([127, 0, 0, 1], redis.port).into()).await;
    let sim = Arc::new(spawn_simulator(fast_simulator()).await);
    // The scan exists at once; its answer leaves 1 s later, while Redis is cut.
    sim.handle.set_faults(Faults {
        run_scan: EndpointFaults {
            answer_latency: Duration::from_secs(1),
            ..EndpointFaults::default()
        },
        ..Faults::default()
    });
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let mut args = settings_for(&sim);
        args.redis_url = Some(secret(&proxy.url()));
        args.replicas = Some(2);
        gateways.push(spawn_gateway_sharing(sim.clone(), args).await);
    }
    past_gathering().await;
    let keyed = pb::StartScanRequest {
        request_id: "ticket-unrecorded".into(),
        ..start_request(&sim.machine(0))
    };
    let mut first_client = gateways[0].client.clone();
    let first_request = keyed.clone();
    let first = tokio::spawn(async move { first_client.start_scan(first_request).await });
    first_post_left(&sim).await;
    proxy.set_cut(true);
    let first = first
        .await
        .unwrap()
        .expect("the start succeeds; its key is not recorded yet")
        .into_inner()
        .action
        .expect("an action")
        .id;
    // Redis returns after the claim it holds would have been renewed by no one else; the
    // record, retried in the background, lands; the other replica answers the same scan.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set_cut(false);
    let retried = started(&gateways[1], keyed).await;
    assert_eq!(retried, first);
    assert_eq!(sim.handle.stats().run_scan, 1);
}
