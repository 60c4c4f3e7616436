//! Reads that spend the quota only where they must (issue 15). A `GetScan` is answered, in
//! this order, from:
//!
//! 1. the watcher's state, when it follows the action and Defender confirmed that state
//!    within the freshness bound (or the state is final: a final action never changes);
//! 2. the recently read actions, for the freshness bound (final ones until they are evicted);
//! 3. Defender, in one GET per action however many callers ask at once (single flight); an
//!    unfinished action read a second time is then followed for readers for [`READ_INTEREST`],
//!    so that reads again and again are served by the watcher's batched refresh, not a GET
//!    each (a one-off read costs no refreshes).
//!
//! A caller who asks for a fresh read skips 1 and 2 and pays a call (joining one in flight,
//! which is answered after its request arrived). Identical `ListScans` queries in flight share
//! one upstream call. Every answer says when Defender confirmed it.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::Instrument;

use crate::{
    clock::Clock,
    domain::{ActionId, ListQuery, MachineAction},
    upstream::{self, CallContext, SkippedAction},
    watcher::Watcher,
};

/// How long an action read from Defender stays followed for readers (each read renews it).
pub const READ_INTEREST: Duration = Duration::from_secs(120);
/// Most recently read actions kept: about 0.5 KB each with its strings (heap bench), 0.5 MB
/// at most. They serve the freshness bound (seconds) and spare final states a second read.
const RECENT_CAPACITY: usize = 1024;

/// Where a read was answered from (the `source` label of `scan_gateway_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// The watcher's followed state.
    Watcher,
    /// A recent read of this replica.
    Recent,
    /// An upstream call made for this read.
    Upstream,
    /// An upstream call already in flight for another read.
    Joined,
}

impl ReadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSource::Watcher => "watcher",
            ReadSource::Recent => "recent",
            ReadSource::Upstream => "upstream",
            ReadSource::Joined => "joined",
        }
    }
}

/// An action and when Defender confirmed that state.
pub type Confirmed = (MachineAction, Instant);

pub(super) struct Reads {
    clock: Clock,
    freshness: Duration,
    recent: Mutex<Recent>,
    gets: Flights<ActionId, MachineAction>,
    lists: Flights<ListQuery, Vec<Result<MachineAction, SkippedAction>>>,
}

impl Reads {
    pub(super) fn new(clock: Clock, freshness: Duration) -> Self {
        Self {
            clock,
            freshness,
            recent: Mutex::new(Recent::default()),
            gets: Flights::default(),
            lists: Flights::default(),
        }
    }

    /// What this replica knows of `id` without a call, when fresh enough (or final).
    pub(super) fn known(
        &self,
        watcher: &Watcher,
        id: &ActionId,
    ) -> Option<(Confirmed, ReadSource)> {
        let now = self.clock.now();
        let usable = |(action, at): &Confirmed| {
            action.status.is_final() || now.saturating_duration_since(*at) <= self.freshness
        };
        if let Some(followed) = watcher.confirmed(id).filter(usable) {
            return Some((followed, ReadSource::Watcher));
        }
        lock(&self.recent)
            .get(id)
            .filter(usable)
            .map(|recent| (recent, ReadSource::Recent))
    }

    /// Reads `id` from Defender with `read`, sharing a call in flight; keeps the answer.
    pub(super) async fn upstream<F>(
        &self,
        id: &ActionId,
        ctx: &CallContext,
        read: F,
    ) -> Result<(Confirmed, ReadSource), upstream::Error>
    where
        F: Future<Output = Result<MachineAction, upstream::Error>> + Send + 'static,
    {
        let ((action, at), source) = self
            .gets
            .run(id, upstream::Api::GetAction, ctx, &self.clock, read)
            .await?;
        lock(&self.recent).insert(id.clone(), (action.clone(), at));
        Ok(((action, at), source))
    }

    /// Whether this replica has read `id` before (and still remembers it).
    pub(super) fn read_before(&self, id: &ActionId) -> bool {
        lock(&self.recent).map.contains_key(id)
    }

    /// Keeps a state the replica learned otherwise (a stream's final status).
    pub(super) fn remember(&self, id: &ActionId, action: &MachineAction, at: Instant) {
        lock(&self.recent).insert(id.clone(), (action.clone(), at));
    }

    /// Lists with `list`, sharing an identical query in flight.
    pub(super) async fn list<F>(
        &self,
        query: &ListQuery,
        ctx: &CallContext,
        list: F,
    ) -> Result<
        (
            Vec<Result<MachineAction, SkippedAction>>,
            Instant,
            ReadSource,
        ),
        upstream::Error,
    >
    where
        F: Future<Output = Result<Vec<Result<MachineAction, SkippedAction>>, upstream::Error>>
            + Send
            + 'static,
    {
        let ((entries, at), source) = self
            .lists
            .run(query, upstream::Api::ListActions, ctx, &self.clock, list)
            .await?;
        Ok((entries, at, source))
    }
}

/// Recently read actions, oldest out first.
#[derive(Default)]
struct Recent {
    map: HashMap<ActionId, Confirmed>,
    order: VecDeque<ActionId>,
}

impl Recent {
    fn get(&self, id: &ActionId) -> Option<Confirmed> {
        self.map.get(id).cloned()
    }

    fn insert(&mut self, id: ActionId, read: Confirmed) {
        if let Some(known) = self.map.get_mut(&id) {
            // A late answer never replaces a newer one.
            if known.1 <= read.1 {
                *known = read;
            }
            return;
        }
        self.map.insert(id.clone(), read);
        self.order.push_back(id);
        while self.order.len() > RECENT_CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
    }
}

type Outcome<T> = Option<Result<(T, Instant), upstream::Error>>;

/// Upstream calls in flight, by what they read: a second reader waits for the first's answer.
/// The call runs in a task of its own, so a reader that leaves (its deadline, a cancel) never
/// cuts the others' answer; each reader waits within its own deadline. A call carries the
/// deadline of the reader that started it (the quota refuses a wait past it), so a reader only
/// joins a call that may wait at least as long as it may: a patient reader never inherits a
/// hasty one's refusal, and starts a call of its own instead.
struct Flights<K, T> {
    in_flight: Arc<Mutex<HashMap<K, Flight<T>>>>,
}

struct Flight<T> {
    id: u64,
    /// The deadline the call runs under (`None`: none).
    deadline: Option<Instant>,
    answer: watch::Receiver<Outcome<T>>,
}

/// Whether a call under `flight`'s deadline waits at least as long as a reader with `mine`.
fn covers(flight: Option<Instant>, mine: Option<Instant>) -> bool {
    match (flight, mine) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(flight), Some(mine)) => mine <= flight,
    }
}

static FLIGHT_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Self {
            in_flight: Arc::default(),
        }
    }
}

impl<K, T> Flights<K, T>
where
    K: Clone + Eq + Hash + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    async fn run<F>(
        &self,
        key: &K,
        api: upstream::Api,
        ctx: &CallContext,
        clock: &Clock,
        call: F,
    ) -> Result<((T, Instant), ReadSource), upstream::Error>
    where
        F: Future<Output = Result<T, upstream::Error>> + Send + 'static,
    {
        let (mut answer, source) = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.get(key) {
                Some(flight) if covers(flight.deadline, ctx.deadline) => {
                    (flight.answer.clone(), ReadSource::Joined)
                }
                // None, or one that may give up sooner: a call of this reader's own, which
                // later readers join.
                _ => {
                    let (tx, rx) = watch::channel(None);
                    let id = FLIGHT_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let flight = Flight {
                        id,
                        deadline: ctx.deadline,
                        answer: rx.clone(),
                    };
                    in_flight.insert(key.clone(), flight);
                    let flights = self.in_flight.clone();
                    let key = key.clone();
                    let clock = *clock;
                    tokio::spawn(
                        async move {
                            let result = call.await.map(|value| (value, clock.now()));
                            // Out of the map first (unless a later call replaced it): a reader
                            // that comes after the answer starts a call of its own.
                            let mut flights = lock(&flights);
                            if flights.get(&key).is_some_and(|f| f.id == id) {
                                flights.remove(&key);
                            }
                            drop(flights);
                            tx.send_replace(Some(result));
                        }
                        .in_current_span(),
                    );
                    (rx, ReadSource::Upstream)
                }
            }
        };
        let waited = answer.wait_for(Option::is_some);
        let outcome = match ctx.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, waited).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    return Err(upstream::Error::DeadlineExceeded { api, sent: true });
                }
            },
            None => waited.await,
        };
        match outcome.map(|answer| (*answer).clone()) {
            Ok(Some(result)) => result.map(|read| (read, source)),
            // The task ended without an answer (it panicked).
            Ok(None) | Err(_) => Err(upstream::Error::Malformed {
                api,
                detail: "the read in flight ended without an answer".into(),
            }),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
