//! The shared store's estimate of when a queued call starts, which decides whether a call
//! waits or is refused at once.

use std::time::Duration;

use scan_gateway::{
    quota::{Limit, Limits, SharedConfig, SharedMetrics, SharedStore},
    upstream::Api,
};
use tokio::time::Instant;

use super::RedisServer;
use crate::helpers::secret;

#[tokio::test]
async fn queued_calls_are_paced_by_the_tightest_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 5 per 2 s and 10 per minute: over a minute, the second limit sets the pace.
    let limits = vec![
        Limit {
            calls: 5,
            window: Duration::from_secs(2),
        },
        Limit {
            calls: 10,
            window: Duration::from_secs(60),
        },
    ];
    let store = SharedStore::new(
        SharedConfig {
            url: secret(&redis.url()),
            replicas: 1,
            prefix: "test-estimate".into(),
            timeout: Duration::from_millis(500),
        },
        Limits::uniform(limits),
        SharedMetrics::default(),
    )
    .unwrap();
    let now = Instant::now();
    // Join the shared quota first (an estimate never probes Redis on its own).
    store.try_admit(Api::GetAction, now).await;
    // With 20 calls ahead, the minute's 10 run out twice: not before two minutes.
    let start = store.estimate(Api::GetAction, now, 20).await;
    assert!(
        start >= now + Duration::from_secs(110),
        "estimated {:?} ahead",
        start - now
    );
}
