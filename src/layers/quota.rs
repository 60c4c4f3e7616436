//! Keeps every upstream API inside its quota (Defender: 100 calls a minute and 1,500 an hour,
//! per API), counted over sliding windows, so the gateway is never answered 429.
//!
//! A call that has to wait queues in arrival order (a fair tokio mutex is the queue) and is
//! told its position and estimated start; a call whose estimated start is past its deadline or
//! the configured maximum wait is refused at once, with the time after which a call would fit.
//! A 429 from upstream pauses that API's quota for its `Retry-After`.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::StatusCode;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::{
    clock::Clock,
    upstream::{Api, Deadline, Error, QueueObserver, Request, Response},
};

/// At most `calls` calls in any window of length `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub calls: u32,
    pub window: Duration,
}

/// Quota settings, the same for every API.
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    pub limits: Vec<Limit>,
    /// Longest a call may wait for a slot, whatever its deadline.
    pub max_wait: Duration,
    /// Most calls waiting per API; beyond, calls are refused at once.
    pub max_queue: usize,
}

/// The admissions of one API and the limits they must respect.
#[derive(Debug)]
struct Window {
    limits: Vec<Limit>,
    /// Admission times, oldest first; only as many as the largest limit needs.
    admitted: VecDeque<Instant>,
    /// Set by an upstream 429: no admission before this.
    paused_until: Option<Instant>,
}

impl Window {
    /// The earliest instant, not before `now`, at which one more call fits every limit.
    fn next_free(&self, now: Instant) -> Instant {
        let mut at = now.max(self.paused_until.unwrap_or(now));
        for limit in &self.limits {
            let calls = limit.calls as usize;
            if calls == 0 {
                continue;
            }
            if self.admitted.len() >= calls {
                at = at.max(self.admitted[self.admitted.len() - calls] + limit.window);
            }
        }
        at
    }

    /// When a call that has `ahead` calls queued before it would start, if each of those is
    /// admitted as early as allowed.
    fn estimate(&self, now: Instant, ahead: usize) -> Instant {
        let mut future = Window {
            limits: self.limits.clone(),
            admitted: self.admitted.clone(),
            paused_until: self.paused_until,
        };
        let mut at = future.next_free(now);
        for _ in 0..ahead {
            future.admit(at);
            at = future.next_free(at);
        }
        at
    }

    fn admit(&mut self, at: Instant) {
        self.admitted.push_back(at);
        let keep = self
            .limits
            .iter()
            .map(|l| l.calls as usize)
            .max()
            .unwrap_or(0);
        while self.admitted.len() > keep {
            self.admitted.pop_front();
        }
    }
}

struct ApiQuota {
    window: Mutex<Window>,
    /// Holding it means "my turn": tokio's mutex wakes waiters in arrival order.
    turn: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// The quotas of all APIs. Share it with `Arc`; every clone of the layer uses the same state.
pub struct Quota {
    clock: Clock,
    max_wait: Duration,
    max_queue: usize,
    apis: HashMap<Api, ApiQuota>,
}

impl Quota {
    pub fn new(config: &QuotaConfig, clock: Clock) -> Self {
        let apis = Api::ALL
            .into_iter()
            .map(|api| {
                let quota = ApiQuota {
                    window: Mutex::new(Window {
                        limits: config.limits.clone(),
                        admitted: VecDeque::new(),
                        paused_until: None,
                    }),
                    turn: tokio::sync::Mutex::new(()),
                    waiting: AtomicUsize::new(0),
                };
                (api, quota)
            })
            .collect();
        Self {
            clock,
            max_wait: config.max_wait,
            max_queue: config.max_queue,
            apis,
        }
    }

    /// Waits for a slot in `api`'s quota and takes it, or refuses.
    pub async fn acquire(
        &self,
        api: Api,
        deadline: Option<Instant>,
        observer: Option<&QueueObserver>,
    ) -> Result<(), Error> {
        let quota = &self.apis[&api];
        let now = self.clock.now();
        let latest = deadline.map_or(now + self.max_wait, |d| d.min(now + self.max_wait));

        let waiting = Waiting::enter(&quota.waiting);
        let ahead = waiting.ahead;
        if ahead >= self.max_queue {
            let at = lock(&quota.window).estimate(now, ahead);
            return Err(refusal(api, at, now));
        }
        let estimate = lock(&quota.window).estimate(now, ahead);
        if estimate > latest {
            return Err(refusal(api, estimate, now));
        }
        if estimate > now
            && let Some(QueueObserver(notify)) = observer
        {
            notify(ahead + 1, estimate);
        }

        let Ok(_turn) = tokio::time::timeout_at(latest, quota.turn.lock()).await else {
            let now = self.clock.now();
            return Err(refusal(api, lock(&quota.window).estimate(now, ahead), now));
        };
        loop {
            let now = self.clock.now();
            let at = lock(&quota.window).next_free(now);
            if at <= now {
                lock(&quota.window).admit(now);
                return Ok(());
            }
            if at > latest {
                // A 429 pause arrived while we waited.
                return Err(refusal(api, at, now));
            }
            self.clock.sleep_until(at).await;
        }
    }

    /// Upstream said 429: admit nothing on `api` before `until`.
    pub fn pause(&self, api: Api, until: Instant) {
        let mut window = lock(&self.apis[&api].window);
        if window.paused_until.is_none_or(|p| p < until) {
            window.paused_until = Some(until);
        }
    }
}

fn lock(window: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    window.lock().unwrap_or_else(|e| e.into_inner())
}

fn refusal(api: Api, at: Instant, now: Instant) -> Error {
    Error::QuotaExhausted {
        api,
        retry_after: at.saturating_duration_since(now),
    }
}

/// Counts a caller as waiting until it is admitted, refused or cancelled (dropped).
struct Waiting<'a> {
    counter: &'a AtomicUsize,
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let ahead = counter.fetch_add(1, Ordering::SeqCst);
        Self { counter, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps a service in [`QuotaService`].
#[derive(Clone)]
pub struct QuotaLayer {
    quota: Arc<Quota>,
}

impl QuotaLayer {
    pub fn new(quota: Arc<Quota>) -> Self {
        Self { quota }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = QuotaService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        QuotaService {
            inner,
            quota: self.quota.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct QuotaService<S> {
    inner: S,
    quota: Arc<Quota>,
}

impl<S> Service<Request> for QuotaService<S>
where
    S: Service<Request, Response = Response, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The decision needs the request (its API and deadline), so it is made in `call`.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let quota = self.quota.clone();
        Box::pin(async move {
            let api = *request
                .extensions()
                .get::<Api>()
                .expect("DefenderClient tags every request with its Api");
            let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
            let observer = request.extensions().get::<QueueObserver>().cloned();
            quota.acquire(api, deadline, observer.as_ref()).await?;
            let response = inner.oneshot(request).await?;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                let wait = crate::upstream::retry_after(response.headers())
                    .unwrap_or(Duration::from_secs(1));
                tracing::warn!(%api, wait_s = wait.as_secs(), "upstream quota exceeded; pausing this API");
                quota.pause(api, quota.clock.now() + wait);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn quota(limits: &[(u32, u64)]) -> Arc<Quota> {
        let config = QuotaConfig {
            limits: limits
                .iter()
                .map(|&(calls, secs)| Limit {
                    calls,
                    window: Duration::from_secs(secs),
                })
                .collect(),
            max_wait: Duration::from_secs(7200),
            max_queue: 10_000,
        };
        Arc::new(Quota::new(&config, Clock::system()))
    }

    #[tokio::test(start_paused = true)]
    async fn admits_the_limit_at_once_then_waits_for_the_window_to_slide() {
        let quota = quota(&[(100, 60), (1500, 3600)]);
        let start = Instant::now();
        for _ in 0..100 {
            quota.acquire(Api::GetAction, None, None).await.unwrap();
        }
        assert_eq!(Instant::now(), start);
        quota.acquire(Api::GetAction, None, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
        // Another API has its own quota.
        quota.acquire(Api::RunScan, None, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn the_hourly_limit_holds_under_saturation() {
        let quota = quota(&[(100, 60), (1500, 3600)]);
        let start = Instant::now();
        for _ in 0..1500 {
            quota.acquire(Api::ListActions, None, None).await.unwrap();
        }
        // 15 minutes of 100 calls each: the 1,500th call is admitted at minute 14.
        assert_eq!(Instant::now() - start, Duration::from_secs(14 * 60));
        quota.acquire(Api::ListActions, None, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_at_once_when_the_deadline_cannot_be_met() {
        let quota = quota(&[(2, 60)]);
        quota.acquire(Api::RunScan, None, None).await.unwrap();
        quota.acquire(Api::RunScan, None, None).await.unwrap();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let err = quota
            .acquire(Api::RunScan, Some(deadline), None)
            .await
            .unwrap_err();
        assert_eq!(Instant::now(), start, "refused without waiting");
        match err {
            Error::QuotaExhausted { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(60))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_callers_are_told_their_position_and_start() {
        let quota = quota(&[(1, 60)]);
        quota.acquire(Api::RunScan, None, None).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let observer = QueueObserver(Arc::new(move |position, at| {
            log.lock().unwrap().push((position, at));
        }));
        let start = Instant::now();
        quota
            .acquire(Api::RunScan, None, Some(&observer))
            .await
            .unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [(1, start + Duration::from_secs(60))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_frees_its_place() {
        let quota = quota(&[(1, 60)]);
        quota.acquire(Api::RunScan, None, None).await.unwrap();
        let waiter = {
            let quota = quota.clone();
            tokio::spawn(async move { quota.acquire(Api::RunScan, None, None).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(quota.apis[&Api::RunScan].waiting.load(Ordering::SeqCst), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(quota.apis[&Api::RunScan].waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_sliding_window_ever_holds_more_than_its_limit() {
        // Bursty concurrent demand; every admission time is recorded and checked afterwards.
        let quota = quota(&[(5, 10), (12, 60)]);
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let quota = quota.clone();
            let admitted = admitted.clone();
            let counter = counter.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs((i * 7) % 45)).await;
                quota.acquire(Api::GetAction, None, None).await.unwrap();
                admitted.lock().unwrap().push(Instant::now());
                counter.fetch_add(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let mut times = admitted.lock().unwrap().clone();
        times.sort();
        assert_eq!(times.len(), 40);
        for (calls, window) in [(5usize, 10u64), (12, 60)] {
            for (i, &t) in times.iter().enumerate() {
                let in_window = times[i..]
                    .iter()
                    .take_while(|&&u| u < t + Duration::from_secs(window))
                    .count();
                assert!(in_window <= calls, "{in_window} calls in {window}s");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_429_pauses_the_api() {
        let quota = quota(&[(100, 60)]);
        let start = Instant::now();
        quota.pause(Api::GetAction, start + Duration::from_secs(37));
        quota.acquire(Api::GetAction, None, None).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(37));
    }
}
