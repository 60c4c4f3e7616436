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
//! and, when the last answer from Redis showed the other replicas above their shares, from that
//! excess too, so together the replicas stay within the quota while Redis is away.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::Script;
use tokio::time::Instant;

use super::{Admission, Limit, Limits, LocalStore};
use crate::{
    metrics::Metrics,
    redis_link::{LinkError, RedisLink},
    upstream::Api,
};

/// Time between two attempts to reach Redis while in fallback.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a call retries while this replica writes its log back into Redis.
const RETURNING_RETRY: Duration = Duration::from_millis(20);

/// Decides (or, with dry_run, only predicts) one admission.
/// KEYS: bucket zsets..., pause key, epoch key.
/// ARGV: known epoch, dry_run, member, replica count, longest window µs, bucket count, then
/// per bucket: pair count, then (calls, window µs) pairs.
/// Returns {1, 0, remaining per pair of the first bucket...} when admitted, {0, wait µs}
/// when not, {-1} when the epoch differs (Redis lost its data, a replica came back from a
/// fallback, or this replica is new).
///
/// Until every replica has joined the current epoch (written its recent calls into it), each
/// missing replica's share is held back: it may still be deciding on its own.
const ADMIT: &str = r#"
local b = tonumber(ARGV[6])
local epoch = redis.call('GET', KEYS[b + 2])
if not epoch or epoch ~= ARGV[1] then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause = redis.call('PTTL', KEYS[b + 1])
if pause > 0 then return {0, pause * 1000} end
local replicas = tonumber(ARGV[4])
local missing = 0
local since = tonumber(string.match(epoch, '@(%d+)$')) or 0
if now - since < tonumber(ARGV[5]) then
  missing = math.max(0, replicas - redis.call('SCARD', KEYS[b + 2] .. ':' .. epoch))
end
local wait = 0
local idx = 7
local longest = {}
local remaining = {}
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
    if i == 1 then remaining[j] = allowed - count - 1 end
  end
end
if wait > 0 or ARGV[2] == '1' then return {0, wait} end
for i = 1, b do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', now - longest[i]))
  redis.call('ZADD', KEYS[i], string.format('%d', now), ARGV[3])
  redis.call('PEXPIRE', KEYS[i], math.floor(longest[i] / 1000) + 1000)
end
local reply = {1, 0}
for j = 1, #remaining do reply[j + 2] = remaining[j] end
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
/// KEYS: epoch key. ARGV: candidate, replica id, new (1 or 0), member-set lifetime ms.
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
return e
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
    },
    /// Back from a fallback, writing the calls it made into Redis: no local decisions now,
    /// or a call could be admitted here and missing from the log just written.
    Returning,
}

/// One of this replica's admissions, kept for replay.
struct Own {
    api: Api,
    at: Instant,
    member: String,
}

/// What the admission script said.
enum Reply {
    Admitted(Vec<u32>),
    Wait(Duration),
    /// Redis has another epoch (or none): replay, then ask again.
    Reset,
}

/// Admissions decided in Redis for all replicas.
pub struct SharedStore {
    redis: RedisLink,
    config: SharedConfig,
    limits: Limits,
    /// This replica's share, counting every call it made: the fallback's decisions.
    fallback: LocalStore,
    mode: Mutex<Mode>,
    /// The epoch this replica has written its log into; empty until the first sync.
    epoch: Mutex<Option<String>>,
    own: Mutex<VecDeque<Own>>,
    /// The longest window of any limit: how long the own log is kept.
    horizon: Duration,
    replica_id: String,
    sequence: AtomicU64,
    remaining: Mutex<HashMap<Api, Vec<(Duration, u32)>>>,
    /// Per API: when Redis last answered, and the calls it counted then, per limit.
    last_seen: Mutex<HashMap<Api, (Instant, Vec<u32>)>>,
    admit: Script,
    record: Script,
    epoch_script: Script,
    pause: Script,
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
        metrics.set_quota_fallback(false);
        let horizon = limits
            .per_api
            .values()
            .chain(limits.total.iter())
            .flatten()
            .map(|l| l.window)
            .max()
            .unwrap_or_default();
        Ok(Self {
            redis,
            fallback: LocalStore::new(&limits.share(config.replicas)),
            limits,
            config,
            mode: Mutex::new(Mode::Shared),
            epoch: Mutex::new(None),
            own: Mutex::new(VecDeque::new()),
            horizon,
            replica_id: format!("{:016x}", RandomState::new().hash_one(std::process::id())),
            sequence: AtomicU64::new(0),
            remaining: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            admit: Script::new(ADMIT),
            record: Script::new(RECORD),
            epoch_script: Script::new(EPOCH),
            pause: Script::new(PAUSE),
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
                Ok(Reply::Admitted(left)) => {
                    self.remember(api, now, member);
                    let limits = self.limits.per_api.get(&api).cloned().unwrap_or_default();
                    let used = limits.iter().zip(&left).map(|(l, r)| l.calls - r).collect();
                    lock(&self.last_seen).insert(api, (now, used));
                    let windows = limits.iter().map(|l| l.window);
                    lock(&self.remaining).insert(api, windows.zip(left).collect());
                    self.back_to_shared();
                    return Admission::Admitted;
                }
                Ok(Reply::Wait(wait)) => {
                    // Nothing fits: as far as this replica knows, every window is full.
                    let limits = self.limits.per_api.get(&api).cloned().unwrap_or_default();
                    lock(&self.last_seen)
                        .insert(api, (now, limits.iter().map(|l| l.calls).collect()));
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
        if !matches!(*lock(&self.mode), Mode::Shared) || lock(&self.epoch).is_none() {
            return self.fallback.estimate(api, now, ahead);
        }
        let wait = match self.run_admit(api, true, "").await {
            Ok(Reply::Wait(wait)) => wait,
            Ok(_) => Duration::ZERO,
            Err(err) => {
                self.enter_fallback(now, &err);
                return self.fallback.estimate(api, now, ahead);
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

    pub fn remaining(&self, api: Api, now: Instant) -> Vec<(Duration, u32)> {
        if !matches!(*lock(&self.mode), Mode::Shared) {
            return self.fallback.remaining(api, now);
        }
        lock(&self.remaining).get(&api).cloned().unwrap_or_default()
    }

    /// False while in fallback between probes (or while another call is returning).
    fn redis_due(&self, now: Instant) -> bool {
        let mut mode = lock(&self.mode);
        match &*mode {
            Mode::Shared => true,
            Mode::Returning => false,
            Mode::Fallback { next_probe } if now < *next_probe => false,
            Mode::Fallback { .. } => {
                *mode = Mode::Returning;
                // Force a resync: the calls made in fallback must reach Redis first.
                *lock(&self.epoch) = None;
                true
            }
        }
    }

    fn fallback_admit(&self, api: Api, now: Instant) -> Admission {
        if matches!(*lock(&self.mode), Mode::Returning) {
            return Admission::NotBefore(now + RETURNING_RETRY);
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
        let mut mode = lock(&self.mode);
        let was = std::mem::replace(
            &mut *mode,
            Mode::Fallback {
                next_probe: now + PROBE_INTERVAL,
            },
        );
        if matches!(was, Mode::Shared) {
            drop(mode);
            self.count_others_excess(now);
            self.metrics.set_quota_fallback(true);
            tracing::warn!(
                error = %err,
                replicas = self.config.replicas,
                "Redis is unreachable: falling back to this replica's share of the quota"
            );
        }
        // A broken connection is rebuilt on the next probe.
        self.redis.forget();
    }

    /// At the start of a fallback: if, when Redis last answered, the other replicas had used
    /// more than their shares of a window (counting the calls they may have made since), this
    /// replica's share of that window is reduced by the excess (recorded as calls at that
    /// moment), so all shares together stay within it.
    fn count_others_excess(&self, now: Instant) {
        let replicas = self.config.replicas.max(1);
        let last_seen = lock(&self.last_seen).clone();
        for (api, (seen_at, used)) in last_seen {
            let Some(limits) = self.limits.per_api.get(&api) else {
                continue;
            };
            let own = lock(&self.own);
            // Calls the others may have made between that answer and the outage: what the
            // limit's average rate allows in the meantime, and one each in any case.
            let stale = now.saturating_duration_since(seen_at).as_secs_f64();
            let excess = limits
                .iter()
                .zip(&used)
                .map(|(limit, &used)| {
                    let rate = f64::from(limit.calls) / limit.window.as_secs_f64().max(1e-3);
                    let unseen = (rate * stale).ceil() as u32 + replicas - 1;
                    let used = used.saturating_add(unseen).min(limit.calls);
                    let mine = own
                        .iter()
                        .filter(|o| o.api == api && o.at + limit.window > seen_at)
                        .count();
                    let mine = u32::try_from(mine).unwrap_or(u32::MAX);
                    let others_share = limit.calls - (limit.calls / replicas).max(1);
                    used.saturating_sub(mine).saturating_sub(others_share)
                })
                .max()
                .unwrap_or(0);
            drop(own);
            for _ in 0..excess {
                self.fallback.record(api, seen_at);
            }
            if excess > 0 {
                tracing::info!(%api, excess, "other replicas were above their share; this replica's share is reduced");
            }
        }
    }

    fn back_to_shared(&self) {
        let mut mode = lock(&self.mode);
        if !matches!(*mode, Mode::Shared) {
            *mode = Mode::Shared;
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
        let returning = matches!(*lock(&self.mode), Mode::Returning);
        invocation
            .arg(candidate)
            .arg(&self.replica_id)
            .arg(if returning { "1" } else { "0" })
            .arg(
                u64::try_from(self.horizon.as_millis() * 2)
                    .unwrap_or(u64::MAX)
                    .max(1000),
            );
        let epoch: String = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        tracing::debug!(
            replayed = own.len(),
            returning,
            "quota log written to Redis"
        );
        *lock(&self.epoch) = Some(epoch);
        Ok(())
    }

    /// Runs the admission script for `api`.
    async fn run_admit(&self, api: Api, dry_run: bool, member: &str) -> Result<Reply, SharedError> {
        let Some(epoch) = lock(&self.epoch).clone() else {
            return Ok(Reply::Reset);
        };
        let mut connection = self.redis.connect().await?;
        let buckets = self.buckets(api);
        let mut invocation = self.admit.prepare_invoke();
        for (key, _) in &buckets {
            invocation.key(key);
        }
        invocation
            .key(self.pause_key(api))
            .key(self.epoch_key())
            .arg(epoch)
            .arg(if dry_run { "1" } else { "0" })
            .arg(member)
            .arg(self.config.replicas.max(1))
            .arg(u64::try_from(self.horizon.as_micros()).unwrap_or(u64::MAX))
            .arg(buckets.len());
        for (_, limits) in &buckets {
            invocation.arg(limits.len());
            for limit in *limits {
                invocation
                    .arg(limit.calls)
                    .arg(u64::try_from(limit.window.as_micros()).unwrap_or(u64::MAX));
            }
        }
        let reply: Vec<i64> = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        match reply.as_slice() {
            [-1, ..] => Ok(Reply::Reset),
            [1, _, left @ ..] => Ok(Reply::Admitted(
                left.iter()
                    .map(|&r| u32::try_from(r.max(0)).unwrap_or(0))
                    .collect(),
            )),
            [0, wait, ..] => Ok(Reply::Wait(Duration::from_micros(
                u64::try_from(*wait).unwrap_or(0),
            ))),
            _ => Err(SharedError::Reply),
        }
    }

    /// The buckets an admission on `api` must fit: the API's own, then the overall cap.
    fn buckets(&self, api: Api) -> Vec<(String, &[Limit])> {
        let mut buckets = Vec::with_capacity(2);
        if let Some(limits) = self.limits.per_api.get(&api) {
            buckets.push((
                format!("{}:{}", self.config.prefix, api.as_str()),
                limits.as_slice(),
            ));
        }
        if let Some(total) = &self.limits.total {
            buckets.push((format!("{}:total", self.config.prefix), total.as_slice()));
        }
        buckets
    }

    fn pause_key(&self, api: Api) -> String {
        format!("{}:{}:pause", self.config.prefix, api.as_str())
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.config.prefix)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
