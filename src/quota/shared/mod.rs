//! The quota shared by all replicas in Redis.
//!
//! Each admission is decided by one Lua script, atomically, on Redis's clock (`TIME`), so the
//! replicas' own clocks never matter: the script counts the bucket's admissions in every
//! sliding window and either records the call or answers how long until one fits. Waits come
//! back as durations and are applied to the local monotonic clock.
//!
//! Each replica keeps a log of its own admissions over the longest window, each under a
//! member id of its own, so it can write them into Redis again idempotently. It does so when
//! Redis comes back after an outage, and when Redis has lost its data (a restart without
//! persistence), which the replicas notice through an *epoch* key that a fresh Redis lacks.
//!
//! If Redis cannot be reached (or answers slower than the configured timeout), this replica
//! falls back to its share of the quota (each limit divided by the replica count), logs and
//! counts the fallback, and probes Redis again every second. It never admits without a
//! decision: there is no fail-open path. The share starts from what this replica already used
//! and from what the other replicas may have used beyond their shares: what Redis last counted
//! (answering an admission or a heartbeat), plus what they can have admitted since, which is
//! at most the limit less the calls Redis counted in the window's latest part; an answer too
//! old to bound that counts as a full window. So together the replicas stay within the quota
//! while Redis is away, at the price of a fallback that may start with little or nothing left.
//!
//! *Liveness.* Redis may be lost by one replica only (a partial partition) while the others
//! still reach it. Those others must then hold back the lost replica's share, since it is
//! spending that share on its own. So each replica keeps a key `<prefix>:alive:<replica id>`
//! that lives [`ALIVE_TTL`]; every admission script refreshes it, and so does a heartbeat task
//! (every third of the TTL, only while this replica is in shared mode) so an idle replica
//! stays alive. The heartbeat also keeps the replica in the epoch's member set, asks (dry
//! runs) how full every API is, so a fallback knows the others' recent use of every API, and
//! mirrors the shared log (see [`replay`]). The admission script holds back the share of every
//! member that is not alive, and, during the epoch's first longest window, of every expected
//! member (one of the epoch before) that is not alive; a replica that never joined has made no
//! call through Redis and is not counted (see `admit.lua`).
//!
//! *Quarantine.* A replica that loses Redis admits nothing on its own until its alive key
//! has surely expired (one TTL after the last refresh it sent could have reached Redis): until
//! then the others may still count it present and use its share. Callers wait meanwhile, within
//! their deadlines, as they do for the quota. Coming back, it starts a new epoch (so every
//! replica writes its calls in again), which also sets its alive key; the heartbeat resumes
//! with shared mode.
//!
//! The parts: [`admitter`] asks Redis for one admission (the `admit.lua` script); [`replay`]
//! keeps this replica's own admissions and its mirror of everyone's, and writes them into Redis
//! again when joining an epoch (after a fallback, or when Redis has lost its data);
//! [`fallback`] decides alone while Redis is unreachable (quarantine, the others' excess);
//! [`heartbeat`] keeps this replica present (alive key, heartbeat, clean leave).

mod admitter;
mod fallback;
mod heartbeat;
mod metrics;
mod replay;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, MutexGuard, atomic::AtomicBool},
    time::Duration,
};

use redis::Script;
use tokio::{task::AbortHandle, time::Instant};

use self::{
    admitter::{ADMIT, Admitter, Reply},
    fallback::{QUIET_SLACK, Seen, note_seen},
    heartbeat::{HEARTBEAT, Heartbeat, LEAVE, Liveness, alive_key},
    replay::Replay,
};
use super::limits::{Admission, Limits, LocalStore};
use crate::{
    call::Api,
    redis_link::{LinkError, RedisLink},
};

pub use admitter::GATHERING;
pub use heartbeat::ALIVE_TTL;
pub use metrics::SharedMetrics;

/// Extends the API's pause to at least `ms` milliseconds from now.
const PAUSE: &str = include_str!("pause.lua");

/// Settings of the shared quota.
#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// `redis://host:port/db` (or `rediss://` with TLS); may hold a password.
    pub url: secrecy::SecretString,
    /// Replicas sharing the quota: the fallback share is each limit divided by this.
    pub replicas: u32,
    /// Key prefix, so several gateways (tenants) can share one Redis.
    pub prefix: String,
    /// Longest wait for Redis per decision before falling back.
    pub timeout: Duration,
}

/// Where this replica's decisions are made now.
enum Mode {
    Shared,
    Fallback {
        next_probe: Instant,
        /// No admissions before: the other replicas may still count this one present.
        quiet_until: Instant,
    },
    /// Back from a fallback, writing the calls it made into Redis: no local decisions now,
    /// or a call could be admitted here and missing from the log just written.
    Returning,
}

/// Admissions decided in Redis for all replicas.
pub struct SharedStore {
    redis: Arc<RedisLink>,
    config: SharedConfig,
    limits: Limits,
    /// This replica's share, counting every call it made: the fallback's decisions.
    fallback: LocalStore,
    live: Arc<Liveness>,
    heartbeat: Option<AbortHandle>,
    /// This replica's own calls and its mirror of everyone's, written back when joining.
    replay: Arc<Replay>,
    remaining: Mutex<HashMap<Api, Vec<(Duration, u32)>>>,
    /// Per API: what Redis last said (from an admission or a heartbeat).
    last_seen: Arc<Mutex<HashMap<Api, Seen>>>,
    /// The most time between Redis's last answer and the end of a quarantine for which the
    /// calls the others made in between are bounded by the `recent` counts (see [`Seen`]).
    gap: Duration,
    admitter: Arc<Admitter>,
    pause: Script,
    leave: Script,
    metrics: SharedMetrics,
}

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
enum SharedError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("unexpected reply from the quota script")]
    Reply,
}

// === impl SharedStore ===

impl SharedStore {
    /// Validates the URL; the connection is made on first use (and re-made after failures),
    /// so a gateway starts even while Redis is down, in fallback.
    pub fn new(
        config: SharedConfig,
        limits: Limits,
        metrics: SharedMetrics,
    ) -> redis::RedisResult<Self> {
        let redis = Arc::new(RedisLink::new(&config.url, config.timeout)?);
        let live = Arc::new(Liveness {
            mode: Mutex::new(Mode::Shared),
            epoch: Mutex::new(None),
            alive_sent: Mutex::new(None),
            excess_pending: AtomicBool::new(false),
            timeout: config.timeout,
        });
        let replica_id = format!("{:016x}", RandomState::new().hash_one(std::process::id()));
        metrics.set_quota_fallback(false);
        // From Redis's last answer to the quarantine's end: a timeout for the call that got
        // no answer, then the quarantine (a timeout, the TTL and the slack), with a heartbeat
        // period to spare for calls that are not back to back. A replica idle for longer
        // knows nothing recent and assumes the worst.
        let gap = HEARTBEAT + config.timeout * 2 + ALIVE_TTL + QUIET_SLACK;
        let horizon = limits
            .per_api
            .values()
            .chain(limits.total.iter())
            .flatten()
            .map(|l| l.window)
            .max()
            .unwrap_or_default();
        let admitter = Arc::new(Admitter {
            prefix: config.prefix.clone(),
            replica_id: replica_id.clone(),
            replicas: config.replicas,
            limits: limits.clone(),
            horizon,
            gap,
            script: Script::new(ADMIT),
        });
        let last_seen = Arc::new(Mutex::new(HashMap::new()));
        let replay = Arc::new(Replay::new(admitter.clone(), live.clone(), horizon));
        let heartbeat = Heartbeat {
            // Its own connection, so a heartbeat never queues behind admissions (or they behind it).
            redis: RedisLink::new(&config.url, config.timeout)?,
            key: alive_key(&config.prefix, &replica_id),
            admitter: admitter.clone(),
            last_seen: last_seen.clone(),
            live: live.clone(),
            replay: replay.clone(),
            metrics: metrics.clone(),
        }
        .spawn();
        let share = limits.share(config.replicas);
        if let Some((api, limit)) = share.first_empty() {
            tracing::warn!(
                api = api.map_or("all", |api| api.as_str()),
                window_ms = u64::try_from(limit.window.as_millis()).unwrap_or(u64::MAX),
                replicas = config.replicas,
                "a limit split over the replicas leaves each no call of its own: while Redis \
                 is unreachable this API admits nothing"
            );
        }
        Ok(Self {
            redis,
            fallback: LocalStore::new(&share),
            limits,
            config,
            live,
            heartbeat,
            replay,
            remaining: Mutex::new(HashMap::new()),
            last_seen,
            gap,
            admitter,
            pause: Script::new(PAUSE),
            leave: Script::new(LEAVE),
            metrics,
        })
    }

    pub async fn try_admit(&self, api: Api, now: Instant) -> Admission {
        let Some(_returning) = self.redis_due(now) else {
            return self.fallback_admit(api, now);
        };
        let member = self.replay.next_member();
        // At most two resyncs per decision: two replicas returning at once each start an
        // epoch, and the second reset joins the other's; a third means something is wrong.
        for _ in 0..3 {
            match self.run_admit(api, false, &member).await {
                Ok(Reply::Admitted(left, recent)) => {
                    self.remember(api, now, member);
                    let limits = self.limits.per_api.get(&api).cloned().unwrap_or_default();
                    let used = limits
                        .iter()
                        .zip(&left)
                        .map(|(l, r)| l.calls.saturating_sub(*r))
                        .collect();
                    note_seen(
                        &self.last_seen,
                        api,
                        Seen {
                            at: now,
                            used,
                            recent,
                        },
                    );
                    let windows = limits.iter().map(|l| l.window);
                    lock(&self.remaining).insert(api, windows.zip(left).collect());
                    self.back_to_shared();
                    return Admission::Admitted;
                }
                Ok(Reply::Wait(wait, _, recent)) => {
                    // Nothing fits: as far as this replica knows, every window is full.
                    let limits = self.limits.per_api.get(&api).cloned().unwrap_or_default();
                    let used = limits.iter().map(|l| l.calls).collect();
                    note_seen(
                        &self.last_seen,
                        api,
                        Seen {
                            at: now,
                            used,
                            recent,
                        },
                    );
                    self.back_to_shared();
                    return Admission::NotBefore(now + wait);
                }
                Ok(Reply::Reset) => match self.replay.sync(&self.redis, now).await {
                    // Joined: a second reset (another replica returning) joins its epoch.
                    Ok(()) => self.back_to_shared(),
                    Err(err) => {
                        self.enter_fallback(now, &err);
                        return self.fallback_admit(api, now);
                    }
                },
                Err(err) => {
                    self.enter_fallback(now, &err);
                    return self.fallback_admit(api, now);
                }
            }
        }
        self.enter_fallback(now, &SharedError::Reply);
        self.fallback_admit(api, now)
    }

    /// The start of the `ahead + 1`-th waiting call: Redis's wait for the next slot, then one
    /// slot per `window / calls` of the API's tightest limit (an estimate: other replicas'
    /// calls are not known in advance).
    pub async fn estimate(&self, api: Api, now: Instant, ahead: usize) -> Instant {
        // Probing Redis is the admission's job: an estimate never ends a fallback.
        if !matches!(*lock(&self.live.mode), Mode::Shared) || lock(&self.live.epoch).is_none() {
            return self.fallback_estimate(api, now, ahead);
        }
        let wait = match self.run_admit(api, true, "").await {
            Ok(Reply::Wait(wait, ..)) => wait,
            Ok(_) => Duration::ZERO,
            Err(err) => {
                self.enter_fallback(now, &err);
                return self.fallback_estimate(api, now, ahead);
            }
        };
        // Calls queued behind go at the pace of the tightest limit (10/1m paces them every
        // 6 s even when 5/2 s would allow more at once).
        let spacing = self
            .limits
            .per_api
            .get(&api)
            .map_or(Duration::ZERO, |limits| {
                limits
                    .iter()
                    .map(|l| l.window / l.calls.max(1))
                    .max()
                    .unwrap_or_default()
            });
        now + wait + spacing * u32::try_from(ahead).unwrap_or(u32::MAX)
    }

    /// Pauses `api` for every replica (and locally, so the fallback honours it too).
    pub async fn pause(&self, api: Api, until: Instant) {
        self.fallback.pause(api, until);
        let ms = until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        let Ok(mut connection) = self.redis.connect().await else {
            return;
        };
        let mut invocation = self.pause.key(self.pause_key(api));
        invocation.arg(u64::try_from(ms).unwrap_or(u64::MAX));
        if let Err(err) = self
            .redis
            .bounded(invocation.invoke_async::<i64>(&mut connection))
            .await
        {
            tracing::warn!(error = %err, "could not share the upstream pause through Redis");
        }
    }

    /// Counts the call admitted at `admitted` from `by` instead: in the own log (a replay writes
    /// the later time) and the fallback's windows now, and in Redis (while shared) from a task
    /// of its own, so the caller never waits for Redis.
    pub fn restamp(&self, api: Api, admitted: Instant, by: Instant) {
        self.fallback.restamp(api, admitted, by);
        let Some(member) = self.replay.restamp_own(api, admitted, by) else {
            return;
        };
        if !matches!(*lock(&self.live.mode), Mode::Shared) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (replay, redis) = (self.replay.clone(), self.redis.clone());
        runtime.spawn(async move {
            if let Err(err) = replay.rewrite(&redis, api, member, by).await {
                tracing::warn!(error = %err, "could not count a late call again in Redis");
            }
        });
    }

    /// True while this replica decides on its own (or is writing its calls back into Redis).
    pub fn in_fallback(&self) -> bool {
        !matches!(*lock(&self.live.mode), Mode::Shared)
    }

    pub fn remaining(&self, api: Api, now: Instant) -> Vec<(Duration, u32)> {
        if !matches!(*lock(&self.live.mode), Mode::Shared) {
            return self.fallback.remaining(api, now);
        }
        lock(&self.remaining).get(&api).cloned().unwrap_or_default()
    }

    fn pause_key(&self, api: Api) -> String {
        self.admitter.pause_key(api)
    }

    /// Records a shared admission in the own log and in the fallback's windows.
    fn remember(&self, api: Api, at: Instant, member: String) {
        self.fallback.record(api, at);
        self.replay.remember_own(api, at, member);
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
