//! One watcher per replica follows every action that an open `RunScan`/`WatchScan` stream
//! waits on, with as few upstream calls as the API allows, and fans each change out.
//!
//! Every interval it refreshes the watched, unfinished actions: a few by one list call
//! filtered on their ids (`(id eq 'a' or id eq 'b' ...)`), many by listing the antivirus-scan
//! actions created since the oldest of them, page by page. An action the list did not return
//! is looked up by id, and so is one whose list entry is malformed (skipped and logged): a bad
//! action fails only its own subscribers, never the refresh. The interval grows when a refresh needs several calls, so polling never
//! takes more than its share of the list API's quota; with nothing watched, nothing is polled.
//!
//! Each action has a `tokio::sync::watch` channel: a subscriber that reads slowly skips
//! intermediate statuses but always sees the latest, and so the final one; memory per
//! subscriber is one slot.
//!
//! A refresh serves many streams, so it is a trace of its own (`watch refresh`), linked to the
//! spans of the streams it serves.
//!
//! The loop is supervised: a panic in it is logged, counted (`watch_panics`) and the loop
//! restarted; subscribers keep their channels and see the next refresh.
//!
//! An upstream outage (the API or its token endpoint unreachable, failing, throttling, or the
//! quota spent) is ridden out: the watcher publishes an [`Outage`], keeps refreshing with a
//! growing pause, and clears it at the first refresh that succeeds. Each stream decides how
//! long it waits (`scans::follow`). Other failures (a refusal, an unreadable answer) fail the
//! subscribers after `max_failures` refreshes in a row, as before.

mod metrics;
mod reads;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use opentelemetry::trace::{SpanContext, TraceContextExt};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    clock::Clock,
    credentials::TokenError,
    domain::{ActionId, MachineAction},
    supervisor::supervise,
    upstream::{self, ActionQuery, CallContext, DefenderClient, SCAN_ACTION_TYPE, SkippedAction},
};

pub use metrics::WatchMetrics;

/// Longest pause between two refreshes during an outage.
const OUTAGE_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Most ids in one `$filter` (keeps the URL well under common 8 KiB limits).
const MAX_IDS_PER_FILTER: usize = 40;
/// Page size of a list by creation time.
const PAGE_SIZE: u32 = 1000;
/// Most pages one refresh reads; actions beyond are looked up by id next time round.
const MAX_PAGES: u32 = 10;
/// Streams remembered per action for span links, and links per refresh span.
const LINKS_PER_ACTION: usize = 8;
const LINKS_PER_REFRESH: usize = 128;

/// Settings of the watcher.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// Time between two refreshes (the freshness of streamed statuses).
    pub interval: Duration,
    /// The list API's sustainable spacing between calls (its tightest `window / calls`): a
    /// refresh of `n` calls waits at least `n` times this before the next.
    pub list_call_spacing: Duration,
    /// Consecutive failed refreshes tolerated before subscribers are told.
    pub max_failures: u32,
}

/// What subscribers of one action see.
#[derive(Debug, Clone)]
pub enum Update {
    /// The latest known state of the action.
    Action(Box<MachineAction>),
    /// The action can no longer be followed (it disappeared, or refreshing keeps failing).
    Failed { not_found: bool, detail: String },
}

/// The upstream cannot be read for now: every followed action's updates are delayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// When the first refresh failed.
    pub since: tokio::time::Instant,
    pub since_utc: OffsetDateTime,
    /// What fails, in words.
    pub reason: String,
}

struct Entry {
    tx: watch::Sender<Update>,
    created: Option<OffsetDateTime>,
    /// The spans of (some of) the streams following the action, for span links.
    links: Vec<SpanContext>,
    /// Consecutive refreshes in which this action alone could not be read.
    lookup_failures: u32,
    /// When Defender last confirmed the state in the channel (a refresh, or the read that
    /// began following it).
    confirmed: tokio::time::Instant,
    /// Followed for `GetScan` readers until then, with or without streams (`reads.rs`).
    read_until: Option<tokio::time::Instant>,
}

struct Inner {
    client: DefenderClient,
    clock: Clock,
    config: WatcherConfig,
    metrics: WatchMetrics,
    entries: Mutex<HashMap<ActionId, Entry>>,
    wake: Notify,
    /// The outage under way, if any.
    outage: watch::Sender<Option<Outage>>,
    /// Set at shutdown: every subscription ends (its sender is dropped) and new ones end at once.
    closed: std::sync::atomic::AtomicBool,
}

/// The replica's watcher. Cheap to clone.
#[derive(Clone)]
pub struct Watcher(Arc<Inner>);

impl Watcher {
    /// Starts the polling task; it ends when `shutdown` turns true.
    pub fn start(
        client: DefenderClient,
        clock: Clock,
        config: WatcherConfig,
        metrics: WatchMetrics,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let watcher = Self(Arc::new(Inner {
            client,
            clock,
            config,
            metrics,
            entries: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            outage: watch::Sender::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        }));
        let task = watcher.clone();
        tokio::spawn(async move {
            // A panic in one refresh (a bug, or an answer no one foresaw) must not leave every
            // stream of the replica waiting forever: the loop is restarted, and the followed
            // actions and their channels, which live in `Inner`, are kept.
            let looping = &task;
            let supervised = supervise(
                "watcher",
                looping.0.config.interval,
                move || looping.0.metrics.record_watch_panic(),
                move || looping.run(),
            );
            let stopping = tokio::select! {
                () = supervised => false,
                stopping = shutdown.wait_for(|stopping| *stopping) => stopping.is_ok(),
            };
            if stopping {
                // Dropping every sender ends every follower's wait with "shutting down": the
                // streams need no shutdown signal of their own.
                task.0
                    .closed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                task.lock().clear();
            }
        });
        watcher
    }

    /// Follows `action` (as the caller last saw it); the receiver starts at the newest known
    /// state, which may be newer than `action`.
    pub fn subscribe(&self, id: ActionId, action: &MachineAction) -> watch::Receiver<Update> {
        if self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            // Stopping: a receiver whose sender is gone, so the follower ends at once.
            return watch::channel(Update::Action(Box::new(action.clone()))).1;
        }
        let stream_span = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .clone();
        let mut entries = self.lock();
        let receiver = match entries.get(&id) {
            Some(entry) => {
                // A fresher first-hand read (the caller's GET) wins over an older poll.
                entry.tx.send_if_modified(|current| match current {
                    Update::Action(known) if newer(action, known) => {
                        *current = Update::Action(Box::new(action.clone()));
                        true
                    }
                    _ => false,
                });
                let receiver = entry.tx.subscribe();
                if let Some(entry) = entries.get_mut(&id)
                    && stream_span.is_valid()
                    && entry.links.len() < LINKS_PER_ACTION
                {
                    entry.links.push(stream_span);
                }
                receiver
            }
            None => {
                let (tx, rx) = watch::channel(Update::Action(Box::new(action.clone())));
                entries.insert(
                    id,
                    Entry {
                        tx,
                        created: action.creation_time,
                        links: if stream_span.is_valid() {
                            vec![stream_span]
                        } else {
                            Vec::new()
                        },
                        lookup_failures: 0,
                        confirmed: self.0.clock.now(),
                        read_until: None,
                    },
                );
                rx
            }
        };
        self.0
            .metrics
            .set_watched(entries.len(), subscribers(&entries));
        drop(entries);
        self.0.wake.notify_one();
        receiver
    }

    /// The latest state of an action already followed, if any: a new stream on it needs no
    /// upstream call.
    pub fn current(&self, id: &ActionId) -> Option<MachineAction> {
        match &*self.lock().get(id)?.tx.borrow() {
            Update::Action(action) => Some((**action).clone()),
            Update::Failed { .. } => None,
        }
    }

    /// The outage under way (`None` while the upstream answers).
    pub fn outage(&self) -> watch::Receiver<Option<Outage>> {
        self.0.outage.subscribe()
    }

    async fn run(&self) {
        let mut failures = 0u32;
        loop {
            let targets = self.targets();
            if targets.is_empty() {
                // No subscriber, no polling.
                self.0.wake.notified().await;
                continue;
            }
            self.0.clock.sleep(self.0.config.interval).await;
            let targets = self.targets();
            if targets.is_empty() {
                continue;
            }
            // A trace of its own, linked to the streams it serves.
            let span =
                tracing::info_span!(parent: None, "watch refresh", watch.actions = targets.len());
            for link in self.links() {
                span.add_link(link);
            }
            let calls = match self.refresh(&targets).instrument(span).await {
                Ok(calls) => {
                    failures = 0;
                    self.outage_over();
                    calls
                }
                Err((calls, err)) if rides_out(&err) => {
                    failures += 1;
                    tracing::warn!(error = %err, failures, "refreshing watched actions failed; riding the outage out");
                    self.outage_began(&err);
                    // A growing pause: an API that is down gains nothing from more calls.
                    let pause = self
                        .0
                        .config
                        .interval
                        .saturating_mul(1 << failures.min(6))
                        .min(OUTAGE_BACKOFF_MAX);
                    self.0.clock.sleep(pause).await;
                    calls
                }
                Err((calls, err)) => {
                    failures += 1;
                    tracing::warn!(error = %err, failures, "refreshing watched actions failed");
                    if failures >= self.0.config.max_failures {
                        self.fail_all(&err);
                        failures = 0;
                    }
                    calls
                }
            };
            // Keep to the list API's sustainable rate: a refresh of n calls buys n spacings.
            let budget = self.0.config.list_call_spacing * calls.saturating_sub(1);
            if !budget.is_zero() {
                self.0.clock.sleep(budget).await;
            }
        }
    }

    fn links(&self) -> Vec<SpanContext> {
        self.lock()
            .values()
            .flat_map(|entry| entry.links.iter().cloned())
            .take(LINKS_PER_REFRESH)
            .collect()
    }

    /// Watched, unfinished actions that still have subscribers or readers; forgets the rest.
    fn targets(&self) -> Vec<(ActionId, Option<OffsetDateTime>)> {
        let now = self.0.clock.now();
        let mut entries = self.lock();
        // A final state stays while readers want it (it never needs a call again), unpolled.
        entries.retain(|_, entry| match &*entry.tx.borrow() {
            Update::Failed { .. } => false,
            Update::Action(action) => {
                let read = entry.read_until.is_some_and(|until| until > now);
                read || (entry.tx.receiver_count() > 0 && !action.status.is_final())
            }
        });
        self.0
            .metrics
            .set_watched(entries.len(), subscribers(&entries));
        entries
            .iter()
            .filter(|(_, entry)| {
                matches!(&*entry.tx.borrow(), Update::Action(a) if !a.status.is_final())
            })
            .map(|(id, entry)| (id.clone(), entry.created))
            .collect()
    }

    /// Refreshes `targets`; returns the number of upstream calls made.
    async fn refresh(
        &self,
        targets: &[(ActionId, Option<OffsetDateTime>)],
    ) -> Result<u32, (u32, upstream::Error)> {
        let ctx = CallContext::default();
        let mut calls = 0;
        let mut seen = std::collections::HashSet::new();
        // A malformed entry is logged and left unseen, so the by-id path below looks it up:
        // one bad action never fails the refresh of the others.
        let publish = |entries: Vec<Result<MachineAction, SkippedAction>>,
                       seen: &mut std::collections::HashSet<ActionId>| {
            for entry in entries {
                match entry {
                    Ok(action) => {
                        if let Ok(id) = ActionId::parse("id", &action.id) {
                            self.publish(&id, action);
                            seen.insert(id);
                        }
                    }
                    Err(skipped) => tracing::warn!(
                        action_id = skipped.id.as_deref().unwrap_or("(none)"),
                        reason = %skipped.reason,
                        "skipped a malformed action of a list page; it is looked up by id"
                    ),
                }
            }
        };
        if targets.len() > MAX_IDS_PER_FILTER {
            // Many actions: list the scans created since the oldest, page by page.
            let since = targets.iter().filter_map(|(_, created)| *created).min();
            for page in 0..MAX_PAGES {
                let query = ActionQuery {
                    action_type: Some(SCAN_ACTION_TYPE),
                    created_at_or_after: since,
                    top: Some(PAGE_SIZE),
                    skip: Some(page * PAGE_SIZE),
                    ..ActionQuery::default()
                };
                calls += 1;
                let actions = self
                    .0
                    .client
                    .list_actions_each(&query, &ctx)
                    .await
                    .map_err(|err| (calls, err))?;
                let full = actions.len() == PAGE_SIZE as usize;
                publish(actions, &mut seen);
                if !full || targets.iter().all(|(id, _)| seen.contains(id)) {
                    break;
                }
            }
        }
        // Few actions, or those the listing did not return: by id, a filter at a time.
        let missing: Vec<ActionId> = targets
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| !seen.contains(id))
            .collect();
        for chunk in missing.chunks(MAX_IDS_PER_FILTER) {
            let query = ActionQuery {
                ids: chunk.to_vec(),
                top: Some(u32::try_from(chunk.len()).unwrap_or(u32::MAX)),
                ..ActionQuery::default()
            };
            calls += 1;
            let actions = self
                .0
                .client
                .list_actions_each(&query, &ctx)
                .await
                .map_err(|err| (calls, err))?;
            publish(actions, &mut seen);
        }
        // Still missing: gone upstream (or never listed); one GET each says which.
        for id in missing.iter().filter(|id| !seen.contains(*id)) {
            calls += 1;
            match self.0.client.get_action(id, &ctx).await {
                Ok(action) => self.publish(id, action),
                Err(upstream::Error::Api(api)) if api.status == 404 => self.fail(
                    id,
                    true,
                    format!("machine action {id} no longer exists in Defender"),
                ),
                // This action's own answer is unreadable: its subscribers alone are told, once
                // it stays so for as many refreshes as the whole watcher would tolerate.
                Err(err @ upstream::Error::Malformed { .. }) => self.lookup_failed(id, &err),
                Err(err) => return Err((calls, err)),
            }
        }
        self.0.metrics.record_watch_refresh(calls, targets.len());
        Ok(calls)
    }

    /// Hands a fresh state to the subscribers when its status or update time changed.
    fn publish(&self, id: &ActionId, action: MachineAction) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        entry.lookup_failures = 0;
        entry.confirmed = self.0.clock.now();
        let mut status_changed = false;
        entry.tx.send_if_modified(|current| match current {
            Update::Action(known) if known.status != action.status || newer(&action, known) => {
                status_changed = known.status != action.status;
                *current = Update::Action(Box::new(action.clone()));
                true
            }
            _ => false,
        });
        if status_changed && let Some(changed_at) = action.last_update_time {
            let delay = (self.0.clock.utc() - changed_at).as_seconds_f64().max(0.0);
            self.0.metrics.record_watch_delay(delay);
        }
    }

    /// Counts a failed lookup of one action; at `max_failures` in a row it is failed alone.
    fn lookup_failed(&self, id: &ActionId, err: &upstream::Error) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        entry.lookup_failures += 1;
        tracing::warn!(action_id = %id, error = %err, failures = entry.lookup_failures, "looking up a watched action by id failed");
        if entry.lookup_failures >= self.0.config.max_failures {
            entry.tx.send_replace(Update::Failed {
                not_found: false,
                detail: format!(
                    "following the action failed repeatedly: {}",
                    err.caller_message()
                ),
            });
        }
    }

    fn fail(&self, id: &ActionId, not_found: bool, detail: String) {
        if let Some(entry) = self.lock().get(id) {
            entry.tx.send_replace(Update::Failed { not_found, detail });
        }
    }

    fn outage_began(&self, err: &upstream::Error) {
        let began = self.0.outage.send_if_modified(|outage| {
            if outage.is_some() {
                return false;
            }
            *outage = Some(Outage {
                since: self.0.clock.now(),
                since_utc: self.0.clock.utc(),
                reason: format!("the Defender API cannot be read: {}", err.kind()),
            });
            true
        });
        if began {
            self.0.metrics.record_outage(true);
        }
    }

    fn outage_over(&self) {
        let over = self
            .0
            .outage
            .send_if_modified(|outage| outage.take().is_some());
        if over {
            self.0.metrics.record_outage(false);
            tracing::info!("the Defender API answers again; delayed updates flow");
        }
    }

    fn fail_all(&self, err: &upstream::Error) {
        for entry in self.lock().values() {
            entry.tx.send_replace(Update::Failed {
                not_found: false,
                detail: format!(
                    "following the action failed repeatedly: {}",
                    err.caller_message()
                ),
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ActionId, Entry>> {
        self.0.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a failed refresh is an outage to ride out: the API or the token endpoint down,
/// failing or throttling, or the quota spent; not a refusal or an answer no one can read.
fn rides_out(err: &upstream::Error) -> bool {
    use upstream::Error as E;
    match err {
        E::Api(api) => api.status == 429 || api.status >= 500,
        E::Transport { .. } | E::Quota(_) | E::DeadlineExceeded { .. } => true,
        E::Token(token) => matches!(token, TokenError::Unavailable { .. }),
        E::Malformed { .. } => false,
    }
}

/// True when `a` is a later reading than `b`.
fn newer(a: &MachineAction, b: &MachineAction) -> bool {
    match (a.last_update_time, b.last_update_time) {
        (Some(a), Some(b)) => a > b,
        _ => a.status != b.status && !b.status.is_final(),
    }
}

fn subscribers(entries: &HashMap<ActionId, Entry>) -> usize {
    entries.values().map(|e| e.tx.receiver_count()).sum()
}
