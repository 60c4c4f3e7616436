//! Idempotency keys shared by all replicas through Redis: the same `request_id` on any replica
//! within 24 hours names the same action, and concurrent requests with one key make one
//! upstream call.
//!
//! The first request claims the key (`SET NX` with a short expiry and a token of its own),
//! keeps the claim alive while its start runs (a start may wait minutes for quota), records
//! the action under the key for 24 hours; a failed start releases the claim so a retry, for any
//! scan, can try again. Renewing and releasing check the token, so a start whose claim expired
//! never touches another's. A request that finds the key claimed waits for the action (bounded
//! by its deadline) and is then refused as busy: it never starts a scan of its own. The recorded key also names the machine and scan type, so
//! reusing it for another scan is refused; a claim alone binds nothing.
//! Keys are per caller: the key's name holds the caller's identity after the deployment's
//! prefix. If Redis cannot be reached, the replica's own keys still apply (logged).

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::Duration,
};

use redis::{AsyncCommands, Script};
use secrecy::SecretString;
use tokio::time::Instant;

use crate::{
    domain::{ActionId, FieldViolation, RequestId, ScanRequest},
    redis_link::{LinkError, RedisLink},
};

/// How long a key maps to its action.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a claim lasts without a recorded action (a crashed replica's claim expires).
const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Time between two renewals of a claim whose start is still running.
const RENEW_EVERY: Duration = Duration::from_secs(20);
/// Time between two looks at a claimed key.
const POLL: Duration = Duration::from_millis(50);

/// Renews a claim, only if it is still ours: `KEYS[1]` the key, `ARGV[1]` our pending value,
/// `ARGV[2]` the new expiry in milliseconds. Returns 1 when renewed.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
    Existing(ActionId),
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
    /// Redis is unreachable or slow: the caller falls back to the replica's own keys.
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
}

impl SharedKeys {
    pub fn new(url: &SecretString, prefix: String, timeout: Duration) -> redis::RedisResult<Self> {
        Ok(Self {
            redis: RedisLink::new(url, timeout)?,
            prefix,
        })
    }

    /// Claims `key` for `request`, or finds the action it already names (waiting, until
    /// `until`, while another request is starting it).
    pub async fn claim(
        &self,
        caller: Option<&str>,
        key: &RequestId,
        request: &ScanRequest,
        until: Instant,
    ) -> Result<Claim, KeyError> {
        let redis_key = self.key(caller, key);
        let scan = scan_of(request);
        // The pending value carries a token of this claim's own (`pending|machine|type|token`).
        let random = RandomState::new();
        let token = format!(
            "pending|{scan}|{:016x}{:016x}",
            random.hash_one(1u8),
            random.hash_one(2u8)
        );
        loop {
            let mut connection = self.redis.connect().await?;
            let claimed: bool = self
                .redis
                .bounded(
                    redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(CLAIM_TTL.as_millis() as u64)
                        .query_async::<Option<String>>(&mut connection),
                )
                .await?
                .is_some();
            if claimed {
                return Ok(Claim::Mine(ClaimToken(token)));
            }
            let value: Option<String> = self.redis.bounded(connection.get(&redis_key)).await?;
            match value.as_deref().map(parse) {
                // Bound: the key names an action.
                Some(Some(("done", stored_scan, action))) => {
                    if stored_scan != scan {
                        return Err(KeyError::Mismatch(FieldViolation::new(
                            "request_id",
                            "was already used in the last 24 hours for a scan of another machine or type",
                        )));
                    }
                    if let Some(id) = action.and_then(|a| ActionId::parse("id", a).ok()) {
                        return Ok(Claim::Existing(id));
                    }
                }
                // Pending, for this scan or another (a key is bound only once its action
                // exists: the other start may still create nothing and release it), or
                // malformed: wait until it is recorded, released or expired.
                Some(_) => {}
                // Expired between SET and GET: try to claim again.
                None => continue,
            }
            if Instant::now() + POLL > until {
                return Err(KeyError::Busy);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Records the action a claimed key names, for [`TTL`].
    pub async fn record(
        &self,
        caller: Option<&str>,
        key: &RequestId,
        request: &ScanRequest,
        action: &ActionId,
    ) {
        let result = async {
            let mut connection = self.redis.connect().await?;
            self.redis
                .bounded(connection.set_ex::<_, _, ()>(
                    self.key(caller, key),
                    format!("done|{}|{action}", scan_of(request)),
                    TTL.as_secs(),
                ))
                .await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not record the idempotency key in Redis");
        }
    }

    /// Gives a claim back after a failed start, so a retry may claim it; a claim that is no
    /// longer ours (it expired and another request claimed the key) is left alone.
    pub async fn release(&self, caller: Option<&str>, key: &RequestId, token: &ClaimToken) {
        if let Err(err) = self
            .run_owned(RELEASE_SCRIPT, caller, key, token, None)
            .await
        {
            tracing::warn!(error = %err, "could not release the idempotency key in Redis");
        }
    }

    /// Extends a claim that is still ours to a full [`CLAIM_TTL`]; false when it is not ours
    /// any more (or Redis did not answer).
    pub async fn renew(&self, caller: Option<&str>, key: &RequestId, token: &ClaimToken) -> bool {
        let ttl = CLAIM_TTL.as_millis() as u64;
        match self
            .run_owned(RENEW_SCRIPT, caller, key, token, Some(ttl))
            .await
        {
            Ok(renewed) => renewed == 1,
            Err(err) => {
                tracing::warn!(error = %err, "could not renew the idempotency claim in Redis");
                false
            }
        }
    }

    /// Keeps the claim alive until the returned guard is dropped (the start has an outcome):
    /// a start may wait for quota far longer than a claim lasts.
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
        KeepAlive(tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                if !keys.renew(caller.as_deref(), &key, &token).await {
                    tracing::warn!("an idempotency claim could not be renewed");
                }
            }
        }))
    }

    async fn run_owned(
        &self,
        script: &str,
        caller: Option<&str>,
        key: &RequestId,
        token: &ClaimToken,
        ttl_ms: Option<u64>,
    ) -> Result<i64, LinkError> {
        let mut connection = self.redis.connect().await?;
        let script = Script::new(script);
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
fn scan_of(request: &ScanRequest) -> String {
    format!("{}|{}", request.machine_id, request.scan_type.as_upstream())
}

/// `state|machine|type[|action]` → (state, `machine|type`, action).
fn parse(value: &str) -> Option<(&str, String, Option<&str>)> {
    let mut parts = value.split('|');
    let state = parts.next()?;
    let machine = parts.next()?;
    let scan_type = parts.next()?;
    Some((state, format!("{machine}|{scan_type}"), parts.next()))
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
            Some(("done", "1e5b|Quick".to_owned(), Some("7f3c")))
        );
        assert_eq!(
            parse("pending|1e5b|Full"),
            Some(("pending", "1e5b|Full".to_owned(), None))
        );
        assert_eq!(parse("garbage"), None);
    }
}
