//! Idempotency keys shared by all replicas through Redis: the same `request_id` on any replica
//! within 24 hours names the same action, and concurrent requests with one key make one
//! upstream call.
//!
//! The first request claims the key (`SET` with a short expiry and a token of its own), keeps
//! the claim alive while its start runs (a start may wait minutes for quota), then records the
//! action under the key for 24 hours, retrying in the background, claim kept, while Redis is
//! unreachable; a failed start releases the claim so a retry, for any scan, can try again.
//! Renewing, recording and releasing check the token, so a start whose claim expired never
//! touches another's. A request that finds the key claimed waits for the action (bounded by
//! its deadline) and is then refused as busy: it never starts a scan of its own. The recorded
//! key also names the machine and scan type, so reusing it for another scan is refused; a
//! claim alone binds nothing. Keys are per caller: the key's name holds the caller's identity
//! after the deployment's prefix.
//!
//! Redis losing its data is seen by a marker key that never expires: a missing marker starts a
//! new epoch that lets no new claim in for [`GATHERING`], while every replica writes the keys
//! it knows back (`restore.rs`) and renews its claims in flight at once.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use redis::Script;
use secrecy::SecretString;
use tokio::{sync::watch, time::Instant};

use super::{BoundKey, KeyedAction};
use crate::{
    domain::{ActionId, FieldViolation, MachineId, RequestId, ScanRequest, ScanType},
    redis_link::{LinkError, RedisLink},
};

/// How long a key maps to its action.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a new epoch lets no new claim in: every replica looks at the marker every
/// `restore::LOOK_EVERY` and writes its keys back well within it.
pub const GATHERING: Duration = Duration::from_secs(2);
/// How long a claim lasts without a recorded action (a crashed replica's claim expires).
const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Time between two renewals of a claim whose start is still running.
const RENEW_EVERY: Duration = Duration::from_secs(20);
/// Time between two looks at a claimed key.
const POLL: Duration = Duration::from_millis(50);
/// Longest pause between two tries to record a key while Redis is unreachable.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(30);
/// Keys written back per round trip.
const WRITE_BACK_CHUNK: usize = 500;

/// Claims a key unless it is taken or a new epoch is gathering (`marker.lua`, `claim.lua`).
const CLAIM_SCRIPT: &str = concat!(include_str!("marker.lua"), include_str!("claim.lua"));
/// The epoch, begun now if the marker is missing (`marker.lua`, `look.lua`).
const LOOK_SCRIPT: &str = concat!(include_str!("marker.lua"), include_str!("look.lua"));
/// Renews a claim that is still ours, or claims the key again if it is gone (Redis lost it
/// while our start runs): `KEYS[1]` the key, `ARGV[1]` our pending value, `ARGV[2]` the
/// expiry (ms). Returns 1 when the claim is ours.
const RENEW_SCRIPT: &str = r"
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";
/// Records an action under a key unless the key already names another: `KEYS[1]` the key,
/// `ARGV[1]` the `done|...` value, `ARGV[2]` its expiry (ms). A pending claim, ours or one
/// made while Redis had lost ours, gives way to the action that exists. Returns 1 when the key
/// names our action.
const RECORD_SCRIPT: &str = r"
local value = redis.call('GET', KEYS[1])
if (not value) or string.sub(value, 1, 8) == 'pending|' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if value == ARGV[1] then
  return 1
end
return 0";
/// Releases a claim, only if it is still ours: `KEYS[1]` the key, `ARGV[1]` our pending value.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// What the shared key says.
#[derive(Debug)]
pub enum Claim {
    /// This request claimed the key: start the scan (keeping the claim alive), then
    /// [`SharedKeys::record`] it.
    Mine(ClaimToken),
    /// Another request already started this scan.
    Existing(KeyedAction),
}

/// Proof that a claim is ours: the pending value written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(String);

/// Why the shared key gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key names another scan.
    #[error("{}", .0.description)]
    Mismatch(FieldViolation),
    /// Another request with this key is still starting its scan, past this one's wait.
    #[error("another request with this request_id is still starting its scan")]
    Busy,
    /// Redis lost its data moments ago and the replicas are still writing their keys back,
    /// past this request's wait.
    #[error("redis lost its data moments ago; the replicas are still writing their keys back")]
    Restoring,
    /// Redis is unreachable or slow.
    #[error("the shared idempotency keys are unavailable: {0}")]
    Unavailable(String),
}

impl From<LinkError> for KeyError {
    fn from(err: LinkError) -> Self {
        KeyError::Unavailable(err.to_string())
    }
}

/// The shared keys.
pub struct SharedKeys {
    redis: RedisLink,
    prefix: String,
    marker: String,
    sole_replica: bool,
    /// The epoch whose keys this replica has written back: a change renews the claims in
    /// flight at once.
    epoch: watch::Sender<Option<String>>,
    claim_script: Script,
    look_script: Script,
    renew_script: Script,
    record_script: Script,
    release_script: Script,
}

impl SharedKeys {
    /// `sole_replica`: the deployment runs one replica, whose own keys are then all the keys
    /// while Redis is unreachable; with several, a key this replica does not know is refused
    /// until Redis answers (another replica may have used it).
    pub fn new(
        url: &SecretString,
        prefix: String,
        timeout: Duration,
        sole_replica: bool,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            redis: RedisLink::new(url, timeout)?,
            marker: format!("{prefix}:epoch"),
            prefix,
            sole_replica,
            epoch: watch::Sender::new(None),
            claim_script: Script::new(CLAIM_SCRIPT),
            look_script: Script::new(LOOK_SCRIPT),
            renew_script: Script::new(RENEW_SCRIPT),
            record_script: Script::new(RECORD_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
        })
    }

    /// Whether this replica's own keys are all the keys while Redis is unreachable.
    pub fn sole_replica(&self) -> bool {
        self.sole_replica
    }

    /// Claims `key` for `request`, or finds the action it already names (waiting, until
    /// `until`, while another request is starting it or a new epoch gathers).
    pub async fn claim(
        &self,
        caller: Option<&str>,
        key: &RequestId,
        request: &ScanRequest,
        until: Instant,
    ) -> Result<Claim, KeyError> {
        let redis_key = self.key(caller, key);
        let scan = scan_of(&request.machine_id, request.scan_type);
        // The pending value carries a token of this claim's own (`pending|machine|type|token`).
        let token = format!("pending|{scan}|{}", random_name());
        loop {
            let mut connection = self.redis.connect().await?;
            let (answer, value, _epoch): (String, String, String) = self
                .redis
                .bounded(
                    self.claim_script
                        .key(&self.marker)
                        .key(&redis_key)
                        .arg(random_name())
                        .arg(GATHERING.as_millis() as u64)
                        .arg(&token)
                        .arg(CLAIM_TTL.as_millis() as u64)
                        .invoke_async(&mut connection),
                )
                .await?;
            let waiting = match (answer.as_str(), parse(&value)) {
                ("mine", _) => return Ok(Claim::Mine(ClaimToken(token))),
                // Bound: the key names an action.
                ("taken", Some(("done", stored_scan, action, reused))) => {
                    if stored_scan != scan {
                        return Err(KeyError::Mismatch(FieldViolation::new(
                            "request_id",
                            "was already used in the last 24 hours for a scan of another machine or type",
                        )));
                    }
                    match action.and_then(|a| ActionId::parse("id", a).ok()) {
                        Some(id) => return Ok(Claim::Existing(KeyedAction { id, reused })),
                        None => KeyError::Busy,
                    }
                }
                // A new epoch: the key may yet be written back by the replica that knows it.
                ("gathering", _) => KeyError::Restoring,
                // Pending, for this scan or another (a key is bound only once its action
                // exists: the other start may still create nothing and release it), or
                // malformed: wait until it is recorded, released or expired.
                _ => KeyError::Busy,
            };
            if Instant::now() + POLL > until {
                return Err(waiting);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records the action a claimed key names, for [`TTL`]. While Redis is unreachable the
    /// record is retried in the background with the claim kept alive (`keep_alive`), so
    /// another replica finds the key claimed and waits: it never starts a second scan.
    pub async fn record(
        self: &Arc<Self>,
        caller: Option<&str>,
        key: &RequestId,
        request: &ScanRequest,
        action: &KeyedAction,
        keep_alive: KeepAlive,
    ) {
        let redis_key = self.key(caller, key);
        let value = done_value(&request.machine_id, request.scan_type, action);
        match self.record_once(&redis_key, &value).await {
            Ok(recorded) => log_conflict(recorded),
            Err(err) => {
                tracing::warn!(error = %err, "could not record the idempotency key in Redis; retrying in the background");
                let keys = self.clone();
                tokio::spawn(async move {
                    let _claimed = keep_alive;
                    let began = Instant::now();
                    let mut pause = Duration::from_secs(1);
                    while began.elapsed() < TTL {
                        tokio::time::sleep(pause).await;
                        match keys.record_once(&redis_key, &value).await {
                            Ok(recorded) => return log_conflict(recorded),
                            Err(_) => pause = (pause * 2).min(RECORD_RETRY_MAX),
                        }
                    }
                });
            }
        }
    }

    async fn record_once(&self, redis_key: &str, value: &str) -> Result<bool, LinkError> {
        let mut connection = self.redis.connect().await?;
        let recorded: i64 = self
            .redis
            .bounded(
                self.record_script
                    .key(redis_key)
                    .arg(value)
                    .arg(TTL.as_millis() as u64)
                    .invoke_async(&mut connection),
            )
            .await?;
        Ok(recorded == 1)
    }

    /// Gives a claim back after a failed start, so a retry may claim it; a claim that is no
    /// longer ours (it expired and another request claimed the key) is left alone.
    pub async fn release(&self, caller: Option<&str>, key: &RequestId, token: &ClaimToken) {
        if let Err(err) = self
            .run_owned(&self.release_script, caller, key, token, None)
            .await
        {
            tracing::warn!(error = %err, "could not release the idempotency key in Redis");
        }
    }

    /// Extends a claim that is still ours to a full claim's time, claiming the key again if
    /// Redis lost it; false when another request holds it (or Redis did not answer).
    pub async fn renew(&self, caller: Option<&str>, key: &RequestId, token: &ClaimToken) -> bool {
        let ttl = CLAIM_TTL.as_millis() as u64;
        match self
            .run_owned(&self.renew_script, caller, key, token, Some(ttl))
            .await
        {
            Ok(renewed) => renewed == 1,
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the idempotency claim in Redis");
                false
            }
        }
    }

    /// Keeps the claim alive until the returned guard is dropped (the start has an outcome
    /// and is recorded): a start may wait for quota far longer than a claim lasts. A new epoch
    /// (Redis lost its data) renews at once, within its gathering.
    pub fn keep_alive(
        self: &Arc<Self>,
        caller: Option<&str>,
        key: &RequestId,
        token: &ClaimToken,
    ) -> KeepAlive {
        let (keys, caller, key, token) = (
            self.clone(),
            caller.map(str::to_owned),
            key.clone(),
            token.clone(),
        );
        let mut epochs = self.epoch.subscribe();
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RENEW_EVERY) => {}
                    changed = epochs.changed() => if changed.is_err() { return },
                }
                if !keys.renew(caller.as_deref(), &key, &token).await {
                    tracing::warn!("an idempotency claim could not be renewed");
                }
            }
        }))
    }

    /// The current epoch (begun now if Redis lost its data).
    pub(super) async fn look(&self) -> Result<String, LinkError> {
        let mut connection = self.redis.connect().await?;
        self.redis
            .bounded(
                self.look_script
                    .key(&self.marker)
                    .arg(random_name())
                    .arg(GATHERING.as_millis() as u64)
                    .invoke_async(&mut connection),
            )
            .await
    }

    /// Notes that this replica's keys are written back for `epoch`.
    pub(super) fn restored(&self, epoch: String) {
        self.epoch.send_replace(Some(epoch));
    }

    /// Writes `keys` back where Redis has none (`SET NX`), each for what is left of its
    /// [`TTL`]; returns how many were missing.
    pub(super) async fn write_back(&self, keys: &[BoundKey]) -> Result<usize, LinkError> {
        let mut written = 0;
        for chunk in keys.chunks(WRITE_BACK_CHUNK) {
            let mut pipe = redis::pipe();
            for bound in chunk {
                let left = TTL.saturating_sub(bound.age);
                if left.is_zero() {
                    continue;
                }
                pipe.cmd("SET")
                    .arg(self.key(bound.caller.as_deref(), &bound.key))
                    .arg(done_value(
                        &bound.machine_id,
                        bound.scan_type,
                        &bound.action,
                    ))
                    .arg("NX")
                    .arg("PX")
                    .arg(left.as_millis() as u64);
            }
            let mut connection = self.redis.connect().await?;
            let answers: Vec<Option<String>> = self
                .redis
                .bounded(pipe.query_async(&mut connection))
                .await?;
            written += answers.iter().filter(|answer| answer.is_some()).count();
        }
        Ok(written)
    }

    async fn run_owned(
        &self,
        script: &Script,
        caller: Option<&str>,
        key: &RequestId,
        token: &ClaimToken,
        ttl_ms: Option<u64>,
    ) -> Result<i64, LinkError> {
        let mut connection = self.redis.connect().await?;
        let mut invocation = script.key(self.key(caller, key));
        invocation.arg(&token.0);
        if let Some(ttl) = ttl_ms {
            invocation.arg(ttl);
        }
        self.redis
            .bounded(invocation.invoke_async::<i64>(&mut connection))
            .await
    }

    /// The deployment's prefix, the caller and the key: callers have keys of their own. The
    /// caller's id is length-prefixed (ids and keys may hold `:`), and the gateway's own
    /// (`None`) cannot be spelled by a caller.
    fn key(&self, caller: Option<&str>, key: &RequestId) -> String {
        key_name(&self.prefix, caller, key.as_str())
    }
}

fn log_conflict(recorded: bool) {
    if !recorded {
        tracing::error!(
            "the idempotency key names another action: a second start with this request_id ran while Redis was losing its data"
        );
    }
}

/// A name no other replica picks: claim tokens, new epochs.
fn random_name() -> String {
    let random = RandomState::new();
    format!("{:016x}{:016x}", random.hash_one(1u8), random.hash_one(2u8))
}

/// Renews a claim while its start runs; dropping it stops the renewals.
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn key_name(prefix: &str, caller: Option<&str>, key: &str) -> String {
    match caller {
        Some(caller) => format!("{prefix}:c{}:{caller}:{key}", caller.len()),
        None => format!("{prefix}:gateway:{key}"),
    }
}

/// `machine|type`: what a key is bound to.
fn scan_of(machine_id: &MachineId, scan_type: ScanType) -> String {
    format!("{machine_id}|{}", scan_type.as_upstream())
}

/// The value of a key that names `action`: `done|machine|type|action[|reused]`.
fn done_value(machine_id: &MachineId, scan_type: ScanType, action: &KeyedAction) -> String {
    let reused = if action.reused { "|reused" } else { "" };
    format!(
        "done|{}|{}{reused}",
        scan_of(machine_id, scan_type),
        action.id
    )
}

/// `state|machine|type[|action[|reused]]` → (state, `machine|type`, action, reused).
fn parse(value: &str) -> Option<(&str, String, Option<&str>, bool)> {
    let mut parts = value.split('|');
    let state = parts.next()?;
    let machine = parts.next()?;
    let scan_type = parts.next()?;
    let action = parts.next();
    let reused = parts.next() == Some("reused");
    Some((state, format!("{machine}|{scan_type}"), action, reused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_keep_callers_apart() {
        assert_eq!(key_name("p", None, "k"), "p:gateway:k");
        assert_eq!(key_name("p", Some("alice"), "k"), "p:c5:alice:k");
        // Ids and keys may hold `:`: the length keeps `a:b` + `c` apart from `a` + `b:c`.
        assert_ne!(
            key_name("p", Some("a:b"), "c"),
            key_name("p", Some("a"), "b:c")
        );
        assert_ne!(
            key_name("p", Some("gateway"), "k"),
            key_name("p", None, "k")
        );
    }

    #[test]
    fn values_round_trip() {
        assert_eq!(
            parse("done|1e5b|Quick|7f3c"),
            Some(("done", "1e5b|Quick".to_owned(), Some("7f3c"), false))
        );
        assert_eq!(
            parse("done|1e5b|Quick|7f3c|reused"),
            Some(("done", "1e5b|Quick".to_owned(), Some("7f3c"), true))
        );
        assert_eq!(
            parse("pending|1e5b|Full"),
            Some(("pending", "1e5b|Full".to_owned(), None, false))
        );
        assert_eq!(parse("garbage"), None);
    }
}
