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
//! stays alive. The heartbeat also keeps the replica in the epoch's member set and asks (dry
//! runs) how full every API is, so a fallback knows the others' recent use of every API. The
//! admission script counts as present only the epoch's members whose alive key exists and holds
//! back the share of every replica that is not present: always for a member that is not alive, and,
//! for a replica that has not joined the epoch, during the epoch's first longest window (after that
//! it is taken to be gone, e.g. replaced).
//!
//! *Quarantine.* A replica that loses Redis admits nothing on its own until its alive key
//! has surely expired (one TTL after the last refresh it sent could have reached Redis): until
//! then the others may still count it present and use its share. Callers wait meanwhile, within
//! their deadlines, as they do for the quota. Coming back, it starts a new epoch (so every
//! replica writes its calls in again), which also sets its alive key; the heartbeat resumes
//! with shared mode.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use tokio::{task::AbortHandle, time::Instant};

use super::{Admission, Limit, Limits, LocalStore};
use crate::{
    call::Api,
    metrics::Metrics,
    redis_link::{LinkError, RedisLink},
};

/// Time between two attempts to reach Redis while in fallback.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a call retries while this replica writes its log back into Redis.
const RETURNING_RETRY: Duration = Duration::from_millis(20);
/// How long a replica counts as present without refreshing its alive key. It bounds how long
/// a replica that lost Redis waits before spending its share alone (the quarantine), so it is
/// short; it must still span a few heartbeats, so one slow Redis answer does not make a
/// healthy replica look gone (which only costs the others its share for a moment).
pub const ALIVE_TTL: Duration = Duration::from_secs(2);
/// Time between two heartbeats: three chances to refresh the alive key before it expires.
const HEARTBEAT: Duration = Duration::from_millis(ALIVE_TTL.as_millis() as u64 / 3);
/// Slack on the quarantine for Redis's and this host's clocks running at slightly different
/// rates over the TTL.
const QUIET_SLACK: Duration = Duration::from_millis(100);

/// Decides (or, with dry_run, only predicts) one admission, and refreshes this replica's alive
/// key.
/// KEYS: bucket zsets..., pause key, epoch key.
/// ARGV: known epoch, dry_run, member, replica count, longest window µs, bucket count, alive
/// key prefix, replica id, alive TTL ms, gap µs, member-set lifetime ms, then per bucket: pair
/// count, then (calls, window µs) pairs.
/// Returns {1, 0, then per pair of the first bucket: remaining, recent} when admitted, {0,
/// wait µs, the same pairs} when not (no pairs while paused), {-1} when the epoch differs
/// (Redis lost its data, a replica came back from a fallback, or this replica is new).
///
/// The share of each replica that is not present (a member of the epoch with a live alive
/// key) is held back: it may be deciding on its own. A member that is not alive is held back
/// for as long as it stays so (it may have lost Redis); a replica that never joined only
/// during the epoch's first longest window, and never more than the configured count allows.
const ADMIT: &str = r#"
local b = tonumber(ARGV[6])
local alive = ARGV[7]
redis.call('SET', alive .. ARGV[8], '1', 'PX', ARGV[9])
local epoch = redis.call('GET', KEYS[b + 2])
if not epoch or epoch ~= ARGV[1] then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = redis.call('PTTL', KEYS[b + 1])
if pause > 0 then return {0, pause * 1000} end
local replicas = tonumber(ARGV[4])
-- Deciding in this epoch means having joined it: stay a member, and keep the set.
local set = KEYS[b + 2] .. ':' .. epoch
redis.call('SADD', set, ARGV[8])
redis.call('PEXPIRE', set, ARGV[11])
local members = redis.call('SMEMBERS', set)
local present = 0
for _, m in ipairs(members) do
  if redis.call('EXISTS', alive .. m) == 1 then present = present + 1 end
end
local missing = math.max(0, replicas - present)
local since = tonumber(string.match(epoch, '@(%d+)$')) or 0
if now - since >= tonumber(ARGV[5]) then
  missing = math.min(missing, #members - present)
end
local gap = tonumber(ARGV[10])
local wait = 0
local idx = 12
local longest = {}
local remaining = {}
local recent = {}
for i = 1, b do
  local p = tonumber(ARGV[idx]); idx = idx + 1
  longest[i] = 0
  for j = 1, p do
    local limit = tonumber(ARGV[idx]); local window = tonumber(ARGV[idx + 1]); idx = idx + 2
    if window > longest[i] then longest[i] = window end
    local allowed = limit - missing * math.max(1, math.floor(limit / replicas))
    local since_w = string.format('(%d', now - window)
    local count = redis.call('ZCOUNT', KEYS[i], since_w, '+inf')
    if allowed < 1 then
      if wait < 200000 then wait = 200000 end
    elseif count >= allowed then
      local e = redis.call('ZRANGEBYSCORE', KEYS[i], since_w, '+inf', 'WITHSCORES', 'LIMIT', count - allowed, 1)
      local free = tonumber(e[2]) + window - now
      if free > wait then wait = free end
    end
    if i == 1 then
      remaining[j] = allowed - count - 1
      -- The calls of the window's latest (window - gap): what a fallback may rely on.
      recent[j] = 0
      if window > gap then
        recent[j] = redis.call('ZCOUNT', KEYS[i], string.format('(%d', now - window + gap), '+inf')
      end
    end
  end
end
local counts = {}
for j = 1, #remaining do
  counts[2 * j - 1] = remaining[j]
  counts[2 * j] = recent[j]
end
if wait > 0 or ARGV[2] == '1' then
  local reply = {0, wait}
  for k = 1, #counts do reply[k + 2] = counts[k] end
  return reply
end
for i = 1, b do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', now - longest[i]))
  redis.call('ZADD', KEYS[i], string.format('%d', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[i], math.floor(longest[i] / 1000) + 1000)
end
local reply = {1, 0}
for k = 1, #counts do reply[k + 2] = counts[k] end
return reply
"#;

/// Writes admissions made `age` µs ago under their members (idempotent).
/// KEYS: bucket zsets... ARGV: bucket count, longest window per bucket, then (age, member)...
const RECORD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local b = tonumber(ARGV[1])
for k = b + 2, #ARGV, 2 do
  local at = now - tonumber(ARGV[k])
  for i = 1, b do
    redis.call('ZADD', KEYS[i], string.format('%d', at), ARGV[k + 1])
    redis.call('PEXPIRE', KEYS[i], math.floor(tonumber(ARGV[i + 1]) / 1000) + 1000)
  end
end
return 1
"#;

/// Joins the current epoch, first creating a new one (stamped with Redis's time) when Redis
/// has none or when this replica comes back from a fallback: the new epoch makes every
/// replica write its recent calls in again before it decides more.
/// Also sets the alive key: joined, this replica is present again.
/// KEYS: epoch key, alive key. ARGV: candidate, replica id, new (1 or 0), member-set lifetime
/// ms, alive TTL ms.
const EPOCH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local e = redis.call('GET', KEYS[1])
if not e or ARGV[3] == '1' then
  e = ARGV[1] .. '@' .. string.format('%d', now)
  redis.call('SET', KEYS[1], e)
end
local members = KEYS[1] .. ':' .. e
redis.call('SADD', members, ARGV[2])
redis.call('PEXPIRE', members, ARGV[4])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
return e
"#;

/// Leaves the shared quota on a clean shutdown: drops the alive key and the epoch
/// membership, so the others stop holding this replica's share back at once.
/// KEYS: alive key, epoch key. ARGV: joined epoch (or ""), replica id.
const LEAVE: &str = r#"
redis.call('DEL', KEYS[1])
if ARGV[1] ~= '' then
  redis.call('SREM', KEYS[2] .. ':' .. ARGV[1], ARGV[2])
end
return 1
"#;

/// Keeps this replica present: sets its alive key and, when Redis still has the epoch it
/// joined, keeps it a member (an idle replica must not look gone).
/// KEYS: alive key, epoch key. ARGV: alive TTL ms, known epoch (or ""), replica id, member-set
/// lifetime ms.
const HEARTBEAT_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
local e = redis.call('GET', KEYS[2])
if e and e == ARGV[2] then
  local set = KEYS[2] .. ':' .. e
  redis.call('SADD', set, ARGV[3])
  redis.call('PEXPIRE', set, ARGV[4])
end
return 1
"#;

/// Extends the API's pause to at least `ms` milliseconds from now.
const PAUSE: &str = r#"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"#;

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

/// What Redis last said about an API, per limit.
#[derive(Clone)]
struct Seen {
    at: Instant,
    /// The calls in the window (all of it when the answer was "wait").
    used: Vec<u32>,
    /// The calls in the window's latest (window - gap): the calls the others made since are
    /// at most the limit less these, as long as less than `gap` has passed.
    recent: Vec<u32>,
}

/// One of this replica's admissions, kept for replay.
struct Own {
    api: Api,
    at: Instant,
    member: String,
}

/// What the admission script said.
enum Reply {
    /// With the remaining calls per limit of the API, and its recent calls.
    Admitted(Vec<u32>, Vec<u32>),
    /// With the remaining calls per limit of the API (were the wait over), and its recent calls.
    Wait(Duration, Vec<u32>, Vec<u32>),
    /// Redis has another epoch (or none): replay, then ask again.
    Reset,
}

/// The mode, shared with the heartbeat task.
struct Liveness {
    mode: Mutex<Mode>,
    /// The epoch this replica has written its log into; empty until the first sync.
    epoch: Mutex<Option<String>>,
    /// When the last request that refreshes the alive key was sent: the quarantine counts from
    /// it. Written only while holding `mode`, so a heartbeat cannot slip in after a fallback
    /// has computed its quarantine.
    alive_sent: Mutex<Option<Instant>>,
}

/// Admissions decided in Redis for all replicas.
pub struct SharedStore {
    redis: RedisLink,
    config: SharedConfig,
    limits: Limits,
    /// This replica's share, counting every call it made: the fallback's decisions.
    fallback: LocalStore,
    live: Arc<Liveness>,
    /// Set on entering a fallback from shared mode: the others' excess is counted once the
    /// quarantine ends (they may have spent more until then).
    excess_pending: AtomicBool,
    heartbeat: Option<AbortHandle>,
    own: Mutex<VecDeque<Own>>,
    /// The longest window of any limit: how long the own log is kept.
    horizon: Duration,
    replica_id: String,
    sequence: AtomicU64,
    remaining: Mutex<HashMap<Api, Vec<(Duration, u32)>>>,
    /// Per API: what Redis last said (from an admission or a heartbeat).
    last_seen: Arc<Mutex<HashMap<Api, Seen>>>,
    /// The most time between Redis's last answer and the end of a quarantine for which the
    /// calls the others made in between are bounded by the `recent` counts (see [`Seen`]).
    gap: Duration,
    admitter: Arc<Admitter>,
    record: Script,
    epoch_script: Script,
    pause: Script,
    leave: Script,
    metrics: Metrics,
}

/// Why Redis gave no decision.
#[derive(Debug, thiserror::Error)]
enum SharedError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("unexpected reply from the quota script")]
    Reply,
}

impl SharedStore {
    /// Validates the URL; the connection is made on first use (and re-made after failures),
    /// so a gateway starts even while Redis is down, in fallback.
    pub fn new(config: SharedConfig, limits: Limits, metrics: Metrics) -> redis::RedisResult<Self> {
        let redis = RedisLink::new(&config.url, config.timeout)?;
        let live = Arc::new(Liveness {
            mode: Mutex::new(Mode::Shared),
            epoch: Mutex::new(None),
            alive_sent: Mutex::new(None),
        });
        let replica_id = format!("{:016x}", RandomState::new().hash_one(std::process::id()));
        // Its own connection, so a heartbeat never queues behind admissions (or they behind it).
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
        let heartbeat = Heartbeat {
            redis: RedisLink::new(&config.url, config.timeout)?,
            key: alive_key(&config.prefix, &replica_id),
            admitter: admitter.clone(),
            last_seen: last_seen.clone(),
            live: live.clone(),
        }
        .spawn();
        Ok(Self {
            redis,
            fallback: LocalStore::new(&limits.share(config.replicas)),
            limits,
            config,
            live,
            excess_pending: AtomicBool::new(false),
            heartbeat,
            own: Mutex::new(VecDeque::new()),
            horizon,
            replica_id,
            sequence: AtomicU64::new(0),
            remaining: Mutex::new(HashMap::new()),
            last_seen,
            gap,
            admitter,
            record: Script::new(RECORD),
            epoch_script: Script::new(EPOCH),
            pause: Script::new(PAUSE),
            leave: Script::new(LEAVE),
            metrics,
        })
    }

    pub async fn try_admit(&self, api: Api, now: Instant) -> Admission {
        if !self.redis_due(now) {
            return self.fallback_admit(api, now);
        }
        let member = self.next_member();
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
                Ok(Reply::Reset) => match self.sync(now).await {
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
    /// slot per `window / calls` of the API's most generous limit (an estimate: other
    /// replicas' calls are not known in advance).
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
        let spacing = self
            .limits
            .per_api
            .get(&api)
            .map_or(Duration::ZERO, |limits| {
                limits
                    .iter()
                    .map(|l| l.window / l.calls.max(1))
                    .min()
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

    /// The fallback's estimate, not before the quarantine ends.
    fn fallback_estimate(&self, api: Api, now: Instant, ahead: usize) -> Instant {
        let at = self.fallback.estimate(api, now, ahead);
        match &*lock(&self.live.mode) {
            Mode::Fallback { quiet_until, .. } => at.max(*quiet_until),
            _ => at,
        }
    }

    /// Leaves the shared quota when the gateway stops cleanly (after its last call): without
    /// it the others would take this replica for cut off and hold its share back until the
    /// next epoch, which a scaled-down replica never brings. Best effort: if Redis does not
    /// answer, the others hold the share back as for any silent replica.
    pub async fn leave(&self) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
        let epoch = lock(&self.live.epoch).clone().unwrap_or_default();
        let Ok(mut connection) = self.redis.connect().await else {
            return;
        };
        let mut invocation = self
            .leave
            .key(alive_key(&self.config.prefix, &self.replica_id));
        invocation
            .key(self.epoch_key())
            .arg(epoch)
            .arg(&self.replica_id);
        match self
            .redis
            .bounded(invocation.invoke_async::<i64>(&mut connection))
            .await
        {
            Ok(_) => tracing::info!("left the shared quota"),
            Err(err) => {
                tracing::warn!(error = %err, "could not leave the shared quota; the other replicas hold this one's share back until the next epoch")
            }
        }
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

    /// False while in fallback between probes (or while another call is returning).
    fn redis_due(&self, now: Instant) -> bool {
        let mut mode = lock(&self.live.mode);
        match &*mode {
            Mode::Shared => true,
            Mode::Returning => false,
            Mode::Fallback { next_probe, .. } if now < *next_probe => false,
            Mode::Fallback { .. } => {
                *mode = Mode::Returning;
                // Force a resync: the calls made in fallback must reach Redis first.
                *lock(&self.live.epoch) = None;
                true
            }
        }
    }

    fn fallback_admit(&self, api: Api, now: Instant) -> Admission {
        {
            let mode = lock(&self.live.mode);
            match &*mode {
                Mode::Returning => return Admission::NotBefore(now + RETURNING_RETRY),
                // Quarantined: wake for the probe too, Redis may be back sooner.
                Mode::Fallback {
                    next_probe,
                    quiet_until,
                } if now < *quiet_until => {
                    return Admission::NotBefore((*quiet_until).min(*next_probe));
                }
                // Counted under the lock, so no call is admitted before the excess is in.
                Mode::Fallback { quiet_until, .. }
                    if self.excess_pending.swap(false, Ordering::AcqRel) =>
                {
                    self.count_others_excess(now, *quiet_until);
                }
                _ => {}
            }
        }
        let admission = self.fallback.try_admit(api, now);
        if admission == Admission::Admitted {
            let member = self.next_member();
            self.remember_own(api, now, member);
        }
        admission
    }

    /// Records a shared admission in the own log and in the fallback's windows.
    fn remember(&self, api: Api, at: Instant, member: String) {
        self.fallback.record(api, at);
        self.remember_own(api, at, member);
    }

    fn remember_own(&self, api: Api, at: Instant, member: String) {
        let mut own = lock(&self.own);
        while own.front().is_some_and(|o| o.at + self.horizon <= at) {
            own.pop_front();
        }
        own.push_back(Own { api, at, member });
    }

    fn next_member(&self) -> String {
        format!(
            "{}:{}",
            self.replica_id,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn enter_fallback(&self, now: Instant, err: &SharedError) {
        let mut mode = lock(&self.live.mode);
        let sent = *lock(&self.live.alive_sent);
        let mut quiet = quiet_until(sent, self.config.timeout, now);
        if let Mode::Fallback { quiet_until, .. } = &*mode {
            quiet = quiet.max(*quiet_until);
        }
        let was = std::mem::replace(
            &mut *mode,
            Mode::Fallback {
                next_probe: now + PROBE_INTERVAL,
                quiet_until: quiet,
            },
        );
        if matches!(was, Mode::Shared) {
            self.excess_pending.store(true, Ordering::Release);
            drop(mode);
            self.metrics.set_quota_fallback(true);
            tracing::warn!(
                error = %err,
                replicas = self.config.replicas,
                quarantine_ms = u64::try_from(quiet.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX),
                "Redis is unreachable: falling back to this replica's share of the quota \
                 once the other replicas can have noticed"
            );
        }
        // A broken connection is rebuilt on the next probe.
        self.redis.forget();
    }

    /// At the end of a fallback's quarantine (`quiet_until`), before this replica admits on
    /// its own: until then the others could count it present and spend more than their
    /// shares. For each window, the others' calls are bounded by what they had made when Redis
    /// last answered, plus what they can have made since ([`others_since`]), and by the
    /// limit. This replica's share is reduced by what that exceeds their shares, recorded as
    /// calls made now, so it counts until every call the others made meanwhile has left the
    /// window. An API Redis never answered about
    /// counts as fully used if this replica was ever present (the others may have spent its
    /// share); a replica that never reached Redis was never counted, so it only has its share.
    fn count_others_excess(&self, now: Instant, quiet_until: Instant) {
        let replicas = self.config.replicas.max(1);
        let last_seen = lock(&self.last_seen).clone();
        let was_present = lock(&self.live.alive_sent).is_some();
        for (&api, limits) in &self.limits.per_api {
            let seen = last_seen.get(&api);
            let since = seen.map_or(0, |seen| {
                let span = quiet_until.saturating_duration_since(seen.at);
                others_since(limits, &seen.recent, span, self.gap)
            });
            let own = lock(&self.own);
            let excess = limits
                .iter()
                .enumerate()
                .map(|(j, limit)| {
                    let others_share = limit.calls - (limit.calls / replicas).max(1);
                    let Some(seen) = seen else {
                        return if was_present {
                            limit.calls - others_share
                        } else {
                            0
                        };
                    };
                    let used = seen.used.get(j).copied().unwrap_or(limit.calls);
                    let mine = own
                        .iter()
                        .filter(|o| o.api == api && o.at + limit.window > seen.at)
                        .count();
                    let mine = u32::try_from(mine).unwrap_or(u32::MAX);
                    let others = used
                        .saturating_sub(mine)
                        .saturating_add(since)
                        .min(limit.calls);
                    others.saturating_sub(others_share)
                })
                .max()
                .unwrap_or(0);
            drop(own);
            for _ in 0..excess {
                self.fallback.record(api, now);
            }
            if excess > 0 {
                tracing::info!(
                    %api,
                    excess,
                    "other replicas may be above their share; this replica's share is reduced"
                );
            }
        }
    }

    fn back_to_shared(&self) {
        let mut mode = lock(&self.live.mode);
        if !matches!(*mode, Mode::Shared) {
            *mode = Mode::Shared;
            self.excess_pending.store(false, Ordering::Release);
            drop(mode);
            self.metrics.set_quota_fallback(false);
            tracing::info!("Redis is reachable again; the quota is shared again");
        }
    }

    /// Writes this replica's recent admissions into Redis (idempotently), then joins Redis's
    /// epoch: a new one after a fallback, so the others write theirs in again too.
    async fn sync(&self, now: Instant) -> Result<(), SharedError> {
        let mut connection = self.redis.connect().await?;
        let own: Vec<(Api, u64, String)> = lock(&self.own)
            .iter()
            .filter(|o| o.at + self.horizon > now)
            .map(|o| {
                let age = u64::try_from((now - o.at).as_micros()).unwrap_or(u64::MAX);
                (o.api, age, o.member.clone())
            })
            .collect();
        for api in Api::ALL {
            let entries: Vec<&(Api, u64, String)> = own.iter().filter(|o| o.0 == api).collect();
            if entries.is_empty() {
                continue;
            }
            let buckets = self.buckets(api);
            let mut invocation = self.record.prepare_invoke();
            for (key, _) in &buckets {
                invocation.key(key);
            }
            invocation.arg(buckets.len());
            for (_, limits) in &buckets {
                let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
                invocation.arg(u64::try_from(longest.as_micros()).unwrap_or(u64::MAX));
            }
            for (_, age, member) in entries {
                invocation.arg(*age).arg(member);
            }
            self.redis
                .bounded(invocation.invoke_async::<i64>(&mut connection))
                .await?;
        }
        let candidate = format!("{}-{}", self.replica_id, self.next_member());
        let mut invocation = self.epoch_script.key(self.epoch_key());
        invocation.key(alive_key(&self.config.prefix, &self.replica_id));
        let returning = matches!(*lock(&self.live.mode), Mode::Returning);
        invocation
            .arg(candidate)
            .arg(&self.replica_id)
            .arg(if returning { "1" } else { "0" })
            .arg(members_lifetime_ms(self.horizon))
            .arg(ALIVE_TTL.as_millis() as u64);
        self.live.sending(false);
        let epoch: String = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        tracing::debug!(
            replayed = own.len(),
            returning,
            "quota log written to Redis"
        );
        *lock(&self.live.epoch) = Some(epoch);
        Ok(())
    }

    /// Runs the admission script for `api`.
    async fn run_admit(&self, api: Api, dry_run: bool, member: &str) -> Result<Reply, SharedError> {
        let Some(epoch) = lock(&self.live.epoch).clone() else {
            return Ok(Reply::Reset);
        };
        let mut connection = self.redis.connect().await?;
        let invocation = self.admitter.invocation(api, &epoch, dry_run, member);
        self.live.sending(false);
        let reply: Vec<i64> = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        parse_reply(&reply)
    }

    fn pause_key(&self, api: Api) -> String {
        self.admitter.pause_key(api)
    }

    fn epoch_key(&self) -> String {
        self.admitter.epoch_key()
    }

    fn buckets(&self, api: Api) -> Vec<(String, &[Limit])> {
        self.admitter.buckets(api)
    }
}

/// Builds the admission script's calls: shared by the admissions and the heartbeat.
struct Admitter {
    prefix: String,
    replica_id: String,
    replicas: u32,
    limits: Limits,
    horizon: Duration,
    gap: Duration,
    script: Script,
}

// === impl Admitter ===

impl Admitter {
    /// The admission script for `api`, in `epoch`.
    fn invocation(
        &self,
        api: Api,
        epoch: &str,
        dry_run: bool,
        member: &str,
    ) -> redis::ScriptInvocation<'_> {
        let buckets = self.buckets(api);
        let mut invocation = self.script.prepare_invoke();
        for (key, _) in &buckets {
            invocation.key(key);
        }
        invocation
            .key(self.pause_key(api))
            .key(self.epoch_key())
            .arg(epoch)
            .arg(if dry_run { "1" } else { "0" })
            .arg(member)
            .arg(self.replicas.max(1))
            .arg(u64::try_from(self.horizon.as_micros()).unwrap_or(u64::MAX))
            .arg(buckets.len())
            .arg(format!("{}:alive:", self.prefix))
            .arg(&self.replica_id)
            .arg(ALIVE_TTL.as_millis() as u64)
            .arg(u64::try_from(self.gap.as_micros()).unwrap_or(u64::MAX))
            .arg(members_lifetime_ms(self.horizon));
        for (_, limits) in &buckets {
            invocation.arg(limits.len());
            for limit in *limits {
                invocation
                    .arg(limit.calls)
                    .arg(u64::try_from(limit.window.as_micros()).unwrap_or(u64::MAX));
            }
        }
        invocation
    }

    /// The buckets an admission on `api` must fit: the API's own, then the overall cap.
    fn buckets(&self, api: Api) -> Vec<(String, &[Limit])> {
        let mut buckets = Vec::with_capacity(2);
        if let Some(limits) = self.limits.per_api.get(&api) {
            buckets.push((
                format!("{}:{}", self.prefix, api.as_str()),
                limits.as_slice(),
            ));
        }
        if let Some(total) = &self.limits.total {
            buckets.push((format!("{}:total", self.prefix), total.as_slice()));
        }
        buckets
    }

    fn pause_key(&self, api: Api) -> String {
        format!("{}:{}:pause", self.prefix, api.as_str())
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
}

/// Reads the admission script's reply.
fn parse_reply(reply: &[i64]) -> Result<Reply, SharedError> {
    let count = |c: &i64| u32::try_from((*c).max(0)).unwrap_or(u32::MAX);
    // Pairs of (remaining, recent) per limit of the API.
    let split = |pairs: &[i64]| -> (Vec<u32>, Vec<u32>) {
        let left = pairs.iter().step_by(2).map(count).collect();
        let recent = pairs.iter().skip(1).step_by(2).map(count).collect();
        (left, recent)
    };
    match reply {
        [-1, ..] => Ok(Reply::Reset),
        [1, _, pairs @ ..] if pairs.len() % 2 == 0 => {
            let (left, recent) = split(pairs);
            Ok(Reply::Admitted(left, recent))
        }
        [0, wait, pairs @ ..] if pairs.len() % 2 == 0 => {
            let (left, recent) = split(pairs);
            let wait = Duration::from_micros(u64::try_from(*wait).unwrap_or(0));
            Ok(Reply::Wait(wait, left, recent))
        }
        _ => Err(SharedError::Reply),
    }
}

/// Remembers `seen` for `api` unless something newer is known already.
fn note_seen(last_seen: &Mutex<HashMap<Api, Seen>>, api: Api, seen: Seen) {
    let mut last_seen = lock(last_seen);
    if last_seen.get(&api).is_none_or(|old| old.at <= seen.at) {
        last_seen.insert(api, seen);
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        if let Some(heartbeat) = &self.heartbeat {
            heartbeat.abort();
        }
    }
}

// === impl Liveness ===

impl Liveness {
    /// Notes that a request refreshing the alive key goes out now; with `shared_only`, only
    /// in shared mode (false, nothing noted, otherwise): in fallback the alive key must lapse.
    fn sending(&self, shared_only: bool) -> bool {
        let mode = lock(&self.mode);
        if shared_only && !matches!(*mode, Mode::Shared) {
            return false;
        }
        *lock(&self.alive_sent) = Some(Instant::now());
        true
    }
}

/// Keeps this replica's alive key fresh while it is idle.
struct Heartbeat {
    redis: RedisLink,
    key: String,
    admitter: Arc<Admitter>,
    last_seen: Arc<Mutex<HashMap<Api, Seen>>>,
    live: Arc<Liveness>,
}

// === impl Heartbeat ===

impl Heartbeat {
    /// Runs on the current runtime; without one (no async context) there is no heartbeat and
    /// the admissions alone refresh the key.
    fn spawn(self) -> Option<AbortHandle> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(runtime.spawn(self.run()).abort_handle())
    }

    async fn run(self) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let script = Script::new(HEARTBEAT_SCRIPT);
        loop {
            ticks.tick().await;
            // Probing and returning are the admissions' job: in fallback, stay silent.
            if !matches!(*lock(&self.live.mode), Mode::Shared) {
                continue;
            }
            let Ok(mut connection) = self.redis.connect().await else {
                failing = self.failed(failing);
                continue;
            };
            if !self.live.sending(true) {
                continue;
            }
            let epoch = lock(&self.live.epoch).clone().unwrap_or_default();
            let mut invocation = script.key(&self.key);
            invocation
                .key(self.admitter.epoch_key())
                .arg(ALIVE_TTL.as_millis() as u64)
                .arg(&epoch)
                .arg(&self.admitter.replica_id)
                .arg(members_lifetime_ms(self.admitter.horizon));
            let beat = self
                .redis
                .bounded(invocation.invoke_async::<i64>(&mut connection))
                .await;
            if beat.is_ok() && !epoch.is_empty() {
                self.refresh_counts(&mut connection, &epoch).await;
            }
            match beat {
                Ok(_) if failing => {
                    failing = false;
                    tracing::debug!("quota heartbeat reaches Redis again");
                }
                Ok(_) => {}
                Err(_) => failing = self.failed(failing),
            }
        }
    }

    /// Asks Redis (dry runs) how full every API's windows are, so a fallback that starts now
    /// knows the others' recent calls even for the APIs this replica has not called lately.
    async fn refresh_counts(&self, connection: &mut ConnectionManager, epoch: &str) {
        for api in Api::ALL {
            let Some(limits) = self.admitter.limits.per_api.get(&api) else {
                continue;
            };
            let asked = Instant::now();
            let invocation = self.admitter.invocation(api, epoch, true, "");
            // A dry run refreshes the alive key too: never once this replica is in fallback.
            if !self.live.sending(true) {
                return;
            }
            let Ok(reply) = self
                .redis
                .bounded(invocation.invoke_async::<Vec<i64>>(connection))
                .await
            else {
                return;
            };
            // Only a full answer counts; a pause or another epoch tells nothing of the windows.
            let Ok(Reply::Wait(wait, left, recent)) = parse_reply(&reply) else {
                continue;
            };
            if recent.len() != limits.len() {
                continue;
            }
            let used = limits
                .iter()
                .zip(&left)
                .map(|(l, r)| {
                    // Nothing fits: as far as this replica knows, every window is full.
                    if wait.is_zero() {
                        l.calls.saturating_sub(*r)
                    } else {
                        l.calls
                    }
                })
                .collect();
            note_seen(
                &self.last_seen,
                api,
                Seen {
                    at: asked,
                    used,
                    recent,
                },
            );
        }
    }

    /// Logs the first failure only; the admissions decide whether to fall back.
    fn failed(&self, failing: bool) -> bool {
        if !failing {
            tracing::debug!("quota heartbeat cannot reach Redis");
        }
        self.redis.forget();
        true
    }
}

/// How long an epoch's member set outlives its last use: every admission and heartbeat keeps
/// it, so only a set nobody uses expires.
fn members_lifetime_ms(horizon: Duration) -> u64 {
    u64::try_from(horizon.as_millis() * 2)
        .unwrap_or(u64::MAX)
        .max(1000)
}

/// The most calls the other replicas can have admitted on an API (with `limits`) in the `span`
/// since Redis counted `recent` calls per limit in each window's latest (window - `gap`).
/// Every limit bounds the same calls, so the tightest one counts: a window longer than `gap`
/// held its `recent` calls then, leaving room for at most the rest (while `span` is within
/// `gap`); any limit allows at most its calls per window that `span` covers.
pub(super) fn others_since(limits: &[Limit], recent: &[u32], span: Duration, gap: Duration) -> u32 {
    limits
        .iter()
        .enumerate()
        .map(|(j, limit)| match recent.get(j) {
            Some(&recent) if span <= gap && limit.window > gap => {
                limit.calls - recent.min(limit.calls)
            }
            _ => {
                let windows = (span.as_secs_f64() / limit.window.as_secs_f64().max(1e-6))
                    .ceil()
                    .clamp(1.0, f64::from(u32::MAX));
                // Saturates: a span of many windows allows any number of calls.
                limit.calls.saturating_mul(windows as u32)
            }
        })
        .min()
        .unwrap_or(u32::MAX)
}

/// `<prefix>:alive:<replica id>`: exists while the replica is present.
fn alive_key(prefix: &str, replica_id: &str) -> String {
    format!("{prefix}:alive:{replica_id}")
}

/// When an alive key last refreshed by a request sent at `sent` has surely expired: that
/// request may reach Redis up to the timeout later, and the key then lives [`ALIVE_TTL`].
/// With nothing ever sent there is no key to wait for.
pub(super) fn quiet_until(sent: Option<Instant>, timeout: Duration, now: Instant) -> Instant {
    sent.map_or(now, |sent| {
        (sent + timeout + ALIVE_TTL + QUIET_SLACK).max(now)
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
