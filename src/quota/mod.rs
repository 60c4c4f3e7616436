//! The Defender API quota (100 calls a minute and 1,500 an hour, per API), kept by the gateway
//! so Defender never has to answer 429, and used to the full.
//!
//! - Every (calls, window) limit holds over *sliding* windows: no window of that length,
//!   wherever it starts, holds more calls ([`window`]).
//! - Each API has its own limits; an optional overall cap applies across all APIs.
//! - A call that must wait queues, callers taking turns ([`lanes`]; in arrival order within
//!   a caller), optionally kept to the caller's share of the quota; it is told its position
//!   and estimated start, and is refused at once when that estimate is
//!   past its deadline or the maximum wait, or when the queue is full. A cancelled caller
//!   leaves the queue (its future is dropped) and frees its place.
//! - A 429 from upstream pauses the API until its `Retry-After`.
//! - With Redis ([`shared`]), all replicas share one quota; each admission is decided by one
//!   atomic script on Redis's clock. When Redis is unreachable each replica falls back to its
//!   share of the quota (after a short quarantine, so replicas that still reach Redis stop
//!   counting on that share first) and returns to shared mode when Redis is back.

mod lanes;
mod limits;
mod metrics;
pub mod shared;
mod turns;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::time::Instant;
use tracing::Instrument;

use crate::{
    call::{Api, Priority, QueueObserver, QuotaCaller},
    clock::Clock,
};

/// Why the quota refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No free call within the caller's deadline, the longest wait, or the queue's bound.
    #[error("the {api} quota has no free call within the allowed wait; next free call in {}s", retry_after.as_secs_f64().ceil())]
    QuotaExhausted { api: Api, retry_after: Duration },
}

pub use limits::{Admission, Limit, Limits, LocalStore, window};
pub use metrics::QuotaMetrics;
pub use shared::{SharedConfig, SharedMetrics, SharedStore};

/// Quota settings.
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    pub limits: Limits,
    /// Longest a call may wait for a slot, whatever its deadline.
    pub max_wait: Duration,
    /// Most calls waiting per API; beyond, calls are refused at once.
    pub max_queue: usize,
    /// The part of each window (already in `limits`) that covers a call's way from admission to
    /// Defender. A call answered later than this after its admission (a token that expired in
    /// the queue, a new connection, a slow network) may have arrived as late as its answer: it
    /// is counted again from then, so the windows still hold it.
    pub margin: Duration,
    /// The least share (0, 1] of admissions that background calls get while they wait behind
    /// more urgent ones (see [`turns`]).
    pub background_floor: f64,
}

/// One admission in ten for background calls while they wait.
pub const DEFAULT_BACKGROUND_FLOOR: f64 = 0.1;

/// Where admissions are decided: in this process, or in Redis for all replicas.
pub enum Store {
    Local(LocalStore),
    Shared(Box<SharedStore>),
}

impl Store {
    async fn try_admit(&self, api: Api, now: Instant) -> Admission {
        match self {
            Store::Local(store) => store.try_admit(api, now),
            Store::Shared(store) => store.try_admit(api, now).await,
        }
    }

    async fn estimate(&self, api: Api, now: Instant, ahead: usize) -> Instant {
        match self {
            Store::Local(store) => store.estimate(api, now, ahead),
            Store::Shared(store) => store.estimate(api, now, ahead).await,
        }
    }

    async fn pause(&self, api: Api, until: Instant) {
        match self {
            Store::Local(store) => store.pause(api, until),
            Store::Shared(store) => store.pause(api, until).await,
        }
    }

    /// Counts the call admitted at `admitted` from `by` instead.
    fn restamp(&self, api: Api, admitted: Instant, by: Instant) {
        match self {
            Store::Local(store) => store.restamp(api, admitted, by),
            Store::Shared(store) => store.restamp(api, admitted, by),
        }
    }

    fn remaining(&self, api: Api, now: Instant) -> Vec<(Duration, u32)> {
        match self {
            Store::Local(store) => store.remaining(api, now),
            Store::Shared(store) => store.remaining(api, now),
        }
    }
}

struct Queue {
    /// Holding it means "my turn": the most urgent class first, arrival order within one.
    turns: turns::Turns,
    waiting: AtomicUsize,
    /// Per class (indexed by [`Priority::index`]).
    class_waiting: [AtomicUsize; 3],
}

/// The quota front: queues, deadlines and metrics over a [`Store`].
pub struct Quota {
    clock: Clock,
    limits: Limits,
    lanes: lanes::Lanes,
    max_wait: Duration,
    margin: Duration,
    max_queue: usize,
    queues: HashMap<Api, Queue>,
    store: Store,
    metrics: QuotaMetrics,
}

impl Quota {
    pub fn new(config: &QuotaConfig, store: Store, clock: Clock, metrics: QuotaMetrics) -> Self {
        Self {
            clock,
            limits: config.limits.clone(),
            lanes: lanes::Lanes::default(),
            max_wait: config.max_wait,
            margin: config.margin,
            max_queue: config.max_queue,
            queues: Api::ALL
                .into_iter()
                .map(|api| {
                    let queue = Queue {
                        turns: turns::Turns::new(config.background_floor),
                        waiting: AtomicUsize::new(0),
                        class_waiting: Default::default(),
                    };
                    (api, queue)
                })
                .collect(),
            store,
            metrics,
        }
    }

    /// An in-process quota.
    pub fn local(config: &QuotaConfig, clock: Clock, metrics: QuotaMetrics) -> Self {
        let store = Store::Local(LocalStore::new(&config.limits));
        Self::new(config, store, clock, metrics)
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Waits for a slot in `api`'s quota and takes it for `caller` (the gateway itself when
    /// `None`), or refuses with the time after which a call would fit. Returns when the slot
    /// was taken, for [`Self::answered`].
    pub async fn acquire(
        &self,
        api: Api,
        caller: Option<&QuotaCaller>,
        deadline: Option<Instant>,
        observer: Option<&QueueObserver>,
    ) -> Result<Instant, Error> {
        let queue = &self.queues[&api];
        let arrived = self.clock.now();
        let latest = deadline.map_or(arrived + self.max_wait, |d| d.min(arrived + self.max_wait));

        let gateway;
        let caller = match caller {
            Some(caller) => caller,
            None => {
                gateway = QuotaCaller::gateway();
                &gateway
            }
        };
        let waiting = Waiting::enter(&queue.waiting, &self.metrics, api);
        let _in_class = InClass::enter(queue, &self.metrics, api, caller.priority);
        let in_lane = self
            .lanes
            .enter(api, caller, |share| self.share_of(api, share), arrived);
        // A caller with a share may fill only that share of the queue, so the others still
        // find room.
        let own_room = caller.share.map_or(self.max_queue, |s| {
            (self.max_queue as f64 * s).ceil() as usize
        });
        let ahead = in_lane.own_ahead + in_lane.others_ahead;
        if waiting.ahead >= self.max_queue || in_lane.own_ahead >= own_room {
            let at = self.store.estimate(api, arrived, ahead).await;
            return Err(self.refuse(api, "queue_full", at, arrived));
        }
        let estimate = self
            .store
            .estimate(api, arrived, ahead)
            .await
            .max(in_lane.lane.share_free_at(arrived));
        if estimate > latest {
            return Err(self.refuse(api, "deadline", estimate, arrived));
        }
        if estimate > arrived
            && let Some(QueueObserver(notify)) = observer
        {
            notify(ahead + 1, estimate);
        }

        // Only a call that has to wait gets a span: the common case costs nothing.
        let span = if estimate > arrived {
            tracing::info_span!(
                "quota wait",
                api = %api,
                quota.queue_position = ahead + 1,
                quota.estimated_wait_ms = (estimate - arrived).as_millis() as u64,
            )
        } else {
            tracing::Span::none()
        };
        self.wait_turn(api, queue, &in_lane.lane, caller.priority, arrived, latest)
            .instrument(span)
            .await
    }

    /// `api`'s limits scaled by a caller's share (at least one call per window).
    fn share_of(&self, api: Api, share: f64) -> Vec<Limit> {
        self.limits
            .per_api
            .get(&api)
            .map(|limits| {
                limits
                    .iter()
                    .map(|l| Limit {
                        calls: ((f64::from(l.calls) * share) as u32).max(1),
                        window: l.window,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_turn(
        &self,
        api: Api,
        queue: &Queue,
        lane: &lanes::Lane,
        class: Priority,
        arrived: Instant,
        latest: Instant,
    ) -> Result<Instant, Error> {
        // First the caller's own turn, then its share, then the API's turn: the API's queue
        // holds one call per caller, so callers alternate.
        let Ok(_own_turn) = tokio::time::timeout_at(latest, lane.turn.lock()).await else {
            let now = self.clock.now();
            let at = self.store.estimate(api, now, 0).await;
            return Err(self.refuse(api, "deadline", at.max(latest), now));
        };
        loop {
            let now = self.clock.now();
            let at = lane.share_free_at(now);
            if at <= now {
                break;
            }
            if at > latest {
                return Err(self.refuse(api, "caller_share", at, now));
            }
            self.clock.sleep_until(at).await;
        }
        let Ok(mut turn) = tokio::time::timeout_at(latest, queue.turns.take(class)).await else {
            return Err(self.refuse_at_deadline(api, latest).await);
        };
        loop {
            let now = self.clock.now();
            match self.store.try_admit(api, now).await {
                Admission::Admitted => {
                    lane.record(now);
                    self.metrics
                        .record_quota_admitted(api.as_str(), (now - arrived).as_secs_f64());
                    self.metrics
                        .record_class_wait(class.as_str(), (now - arrived).as_secs_f64());
                    self.record_remaining(api, now);
                    return Ok(now);
                }
                // A pause (429) or another replica took the slot while we waited.
                Admission::NotBefore(at) if at > latest => {
                    return Err(self.refuse(api, "deadline", at, now));
                }
                Admission::NotBefore(at) => {
                    // A more urgent call that arrives meanwhile takes the next free slot.
                    let preempted = tokio::select! {
                        () = self.clock.sleep_until(at) => false,
                        () = turn.preempted() => true,
                    };
                    if preempted {
                        let Ok(again) = tokio::time::timeout_at(latest, turn.step_aside()).await
                        else {
                            return Err(self.refuse_at_deadline(api, latest).await);
                        };
                        turn = again;
                    }
                }
            }
        }
    }

    /// The call admitted at `admitted` was answered (or given up) at `at`: measured, and, if
    /// later than the margin, counted again from `at`, the latest it can have reached Defender.
    pub fn answered(&self, api: Api, admitted: Instant, at: Instant) {
        let took = at.saturating_duration_since(admitted);
        let late = took > self.margin;
        self.metrics
            .record_quota_answered(api.as_str(), took.as_secs_f64(), late);
        if late {
            tracing::debug!(%api, took_ms = took.as_millis() as u64, "a call was answered after the quota margin; counted again from its answer");
            self.store.restamp(api, admitted, at);
        }
    }

    /// The gateway stops cleanly: a shared store leaves, so the other replicas get this
    /// one's share back at once.
    pub async fn leave(&self) {
        if let Store::Shared(store) = &self.store {
            store.leave().await;
        }
    }

    /// Upstream said 429: admit nothing on `api` before `until`.
    pub async fn pause(&self, api: Api, until: Instant) {
        self.store.pause(api, until).await;
    }

    /// The deadline passed while waiting for the turn.
    async fn refuse_at_deadline(&self, api: Api, latest: Instant) -> Error {
        let now = self.clock.now();
        let at = self.store.estimate(api, now, 0).await;
        self.refuse(api, "deadline", at.max(latest), now)
    }

    fn refuse(&self, api: Api, reason: &'static str, at: Instant, now: Instant) -> Error {
        self.metrics.record_quota_refused(api.as_str(), reason);
        Error::QuotaExhausted {
            api,
            retry_after: at.saturating_duration_since(now),
        }
    }

    /// Callers with a lane now (for tests).
    #[cfg(test)]
    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn record_remaining(&self, api: Api, now: Instant) {
        for (window, remaining) in self.store.remaining(api, now) {
            self.metrics
                .set_quota_remaining(api.as_str(), window, remaining);
        }
    }
}

/// Counts a caller as waiting until it is admitted, refused or cancelled (dropped).
struct Waiting<'a> {
    counter: &'a AtomicUsize,
    metrics: &'a QuotaMetrics,
    api: Api,
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize, metrics: &'a QuotaMetrics, api: Api) -> Self {
        let ahead = counter.fetch_add(1, Ordering::SeqCst);
        metrics.set_quota_queue_length(api.as_str(), ahead + 1);
        Self {
            counter,
            metrics,
            api,
            ahead,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let left = self.counter.fetch_sub(1, Ordering::SeqCst) - 1;
        self.metrics.set_quota_queue_length(self.api.as_str(), left);
    }
}

/// Counts a call in its class's queue until it leaves it.
struct InClass<'a> {
    counter: &'a AtomicUsize,
    metrics: &'a QuotaMetrics,
    api: Api,
    class: Priority,
}

impl<'a> InClass<'a> {
    fn enter(queue: &'a Queue, metrics: &'a QuotaMetrics, api: Api, class: Priority) -> Self {
        let counter = &queue.class_waiting[class.index()];
        let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
        metrics.set_class_queue_length(api.as_str(), class.as_str(), now);
        Self {
            counter,
            metrics,
            api,
            class,
        }
    }
}

impl Drop for InClass<'_> {
    fn drop(&mut self) {
        let left = self.counter.fetch_sub(1, Ordering::SeqCst) - 1;
        self.metrics
            .set_class_queue_length(self.api.as_str(), self.class.as_str(), left);
    }
}

#[cfg(test)]
mod priority_tests;
#[cfg(test)]
mod tests;
