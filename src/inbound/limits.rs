//! Per-caller limits on the gRPC server: a request rate (token bucket) and a number of open
//! streams (`RunScan`, `WatchScan`), checked after authentication so they count per caller
//! identity. A caller that authenticated is counted by its identity; without authentication,
//! by its IP address. Each refusal is RESOURCE_EXHAUSTED with `ErrorInfo` (and `RetryInfo`
//! for the rate), counted in `scan_gateway_grpc_server_refused_total{reason}`.
//!
//! The identity (and the caller's quota share) goes into the request's extensions as a
//! [`QuotaCaller`], so the upstream calls made for it queue fairly against other callers'.
//!
//! Streams per *connection* are limited by HTTP/2 itself (`SETTINGS_MAX_CONCURRENT_STREAMS`,
//! set by `startup`), so a well-behaved client waits for a free stream instead of failing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::{Either, Ready, ready as ready_ok};
use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::{InboundMetrics, authenticate::CallerShare, guarded::GuardedFuture};
use crate::{
    call::QuotaCaller,
    clock::Clock,
    error::Error,
    grpc::status::{code_of, refusal_reason},
    metrics::code_name,
    security::{Caller, CallerLimits, LimitKind},
};

const SCAN_SERVICE: &str = "/defender.scan.v1.ScanService/";
/// Above this many tracked callers, idle entries are dropped (bounds memory under churn).
const SWEEP_ABOVE: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<Arc<str>, Bucket>,
    streams: HashMap<Arc<str>, usize>,
}

/// The counters behind the layer; shared by every clone and every stream guard.
#[derive(Debug)]
pub struct Limiter {
    limits: CallerLimits,
    clock: Clock,
    state: Mutex<State>,
}

impl Limiter {
    pub fn new(limits: CallerLimits, clock: Clock) -> Self {
        Self {
            limits,
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Takes one call from `caller`'s rate, or says when the next would fit.
    fn take_call(&self, caller: &Arc<str>) -> Result<(), Duration> {
        let Some(rate) = self.limits.rate else {
            return Ok(());
        };
        let burst = f64::from(self.limits.burst.max(1));
        let now = self.clock.now();
        let mut state = self.lock();
        if state.buckets.len() > SWEEP_ABOVE {
            // A full bucket is the same as no bucket: forget callers that have gone quiet.
            state.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let bucket = state.buckets.entry(caller.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Counts a stream as open for `caller` until the returned guard is dropped.
    fn open_stream(self: &Arc<Self>, caller: &Arc<str>) -> Option<StreamSlot> {
        let mut state = self.lock();
        let open = state.streams.entry(caller.clone()).or_insert(0);
        if *open >= self.limits.max_streams {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            limiter: self.clone(),
            caller: caller.clone(),
        })
    }

    fn close_stream(&self, caller: &str) {
        let mut state = self.lock();
        if let Some(open) = state.streams.get_mut(caller) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.streams.remove(caller);
            }
        }
    }

    /// Open streams of `caller` (for tests and debugging).
    pub fn open_streams(&self, caller: &str) -> usize {
        self.lock().streams.get(caller).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counters stay consistent even if a holder panicked; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks one call; on success, the stream slot to hold while the response streams.
    fn admit(
        self: &Arc<Self>,
        caller: &Arc<str>,
        streaming: bool,
    ) -> Result<Option<StreamSlot>, Error> {
        let refuse = |kind, retry_after| Error::CallerLimit {
            caller: caller.to_string(),
            kind,
            retry_after,
        };
        let slot = if streaming {
            Some(
                self.open_stream(caller)
                    .ok_or_else(|| refuse(LimitKind::Streams, None))?,
            )
        } else {
            None
        };
        // A refused stream gives its slot back as `slot` drops.
        self.take_call(caller)
            .map_err(|wait| refuse(LimitKind::Rate, Some(wait)))?;
        Ok(slot)
    }
}

/// An open stream of one caller; dropping it (when the response body ends or the caller goes
/// away) frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    limiter: Arc<Limiter>,
    caller: Arc<str>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limiter.close_stream(&self.caller);
    }
}

/// The identity limits are counted by: the authenticated caller, else the peer's IP address.
fn identity<B>(request: &http::Request<B>) -> Arc<str> {
    if let Some(Caller(caller)) = request.extensions().get::<Caller>() {
        return Arc::from(caller.as_str());
    }
    super::peer_of(request).map_or_else(
        || Arc::from("unknown"),
        |addr| Arc::from(format!("ip:{}", addr.ip())),
    )
}

/// Wraps the gRPC server's routes in [`Limits`].
#[derive(Debug, Clone)]
pub struct LimitsLayer {
    limiter: Arc<Limiter>,
    metrics: InboundMetrics,
}

impl LimitsLayer {
    pub fn new(limiter: Arc<Limiter>, metrics: InboundMetrics) -> Self {
        Self { limiter, metrics }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            inner,
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
    limiter: Arc<Limiter>,
    metrics: InboundMetrics,
}

impl<S, B> Service<http::Request<B>> for Limits<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Either<Ready<Result<Self::Response, Self::Error>>, GuardedFuture<S::Future, StreamSlot>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(method) = request.uri().path().strip_prefix(SCAN_SERVICE) else {
            return Either::Right(GuardedFuture::new(self.inner.call(request), None));
        };
        let streaming = matches!(method, "RunScan" | "WatchScan");
        let caller = identity(&request);
        match self.limiter.admit(&caller, streaming) {
            Ok(slot) => {
                let share = request.extensions().get::<CallerShare>().map(|s| s.0);
                request.extensions_mut().insert(QuotaCaller {
                    id: caller,
                    share,
                    // The handler sets the class the request asks for.
                    priority: Default::default(),
                });
                Either::Right(GuardedFuture::new(self.inner.call(request), slot))
            }
            Err(error) => {
                self.metrics.record_refused(refusal_reason(&error));
                tracing::info!(
                    target: crate::telemetry::AUDIT_TARGET,
                    rpc = method,
                    caller = &*caller,
                    outcome = code_name(code_of(&error)),
                    "call refused: {error}"
                );
                Either::Left(ready_ok(Ok(Status::from(error).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use tower::{ServiceExt, service_fn};

    use super::*;

    fn limiter(rate: Option<f64>, burst: u32, max_streams: usize) -> Arc<Limiter> {
        Arc::new(Limiter::new(
            CallerLimits {
                rate,
                burst,
                max_streams,
            },
            Clock::system(),
        ))
    }

    async fn call(limiter: &Arc<Limiter>, method: &str, caller: &str) -> http::Response<Body> {
        let inner = service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::new(String::from("frame"))))
        });
        let mut request = http::Request::builder()
            .uri(format!("{SCAN_SERVICE}{method}"))
            .body(())
            .unwrap();
        request.extensions_mut().insert(Caller(caller.to_owned()));
        LimitsLayer::new(limiter.clone(), InboundMetrics::default())
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap()
    }

    fn code(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refuses_past_the_burst_and_refills_with_time() {
        let limiter = limiter(Some(10.0), 3, 100);
        for _ in 0..3 {
            assert_eq!(code(&call(&limiter, "GetScan", "a").await), None);
        }
        let refused = call(&limiter, "GetScan", "a").await;
        // 8 = RESOURCE_EXHAUSTED
        assert_eq!(code(&refused), Some("8"));
        // Another caller has its own bucket.
        assert_eq!(code(&call(&limiter, "GetScan", "b").await), None);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(code(&call(&limiter, "GetScan", "a").await), None);
        assert_eq!(code(&call(&limiter, "GetScan", "a").await), Some("8"));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_are_counted_until_their_body_is_dropped() {
        let limiter = limiter(None, 1, 2);
        let first = call(&limiter, "WatchScan", "a").await;
        let second = call(&limiter, "RunScan", "a").await;
        assert_eq!((code(&first), code(&second)), (None, None));
        assert_eq!(limiter.open_streams("a"), 2);
        assert_eq!(code(&call(&limiter, "WatchScan", "a").await), Some("8"));
        // Unary calls are not streams.
        assert_eq!(code(&call(&limiter, "GetScan", "a").await), None);
        // The first stream ends: its body is read to the end and dropped.
        let mut body = first.into_body();
        while std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
            .await
            .is_some()
        {}
        drop(body);
        assert_eq!(limiter.open_streams("a"), 1);
        let third = call(&limiter, "WatchScan", "a").await;
        assert_eq!(code(&third), None);
        // The caller goes away: dropping the body frees the slot.
        drop(second);
        assert_eq!(limiter.open_streams("a"), 1);
        drop(third);
        assert_eq!(limiter.open_streams("a"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_refused_by_the_rate_gives_its_slot_back() {
        let limiter = limiter(Some(1.0), 1, 5);
        let open = call(&limiter, "WatchScan", "a").await;
        assert_eq!(code(&open), None);
        assert_eq!(code(&call(&limiter, "WatchScan", "a").await), Some("8"));
        assert_eq!(limiter.open_streams("a"), 1);
    }

    #[test]
    fn idle_callers_are_forgotten_when_many_are_tracked() {
        let limiter = limiter(Some(1000.0), 1, 5);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            for i in 0..=SWEEP_ABOVE {
                let _ = limiter.take_call(&Arc::from(format!("c{i}")));
            }
            tokio::time::advance(Duration::from_secs(1)).await;
            let _ = limiter.take_call(&Arc::from("new"));
            assert!(limiter.lock().buckets.len() < 10);
        });
    }
}
