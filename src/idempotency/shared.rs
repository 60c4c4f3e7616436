//! Idempotency keys shared by all replicas through Redis: the same `request_id` on any replica
//! within 24 hours names the same action, and concurrent requests with one key make one
//! upstream call.
//!
//! The first request claims the key (`SET NX` with a short expiry), starts the scan and records
//! the action under the key for 24 hours; a failed start releases the claim (deletes the key)
//! so a retry, for any scan, can try again. A request that finds the key claimed waits for the
//! action (bounded by its deadline). The recorded key also names the machine and scan type, so
//! reusing it for another scan is refused; a claim alone binds nothing.
//! Keys are per caller: the key's name holds the caller's identity after the deployment's
//! prefix. If Redis cannot be reached, the replica's own keys still apply (logged).

use std::time::Duration;

use redis::AsyncCommands;
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
/// Time between two looks at a claimed key.
const POLL: Duration = Duration::from_millis(50);

/// What the shared key says.
#[derive(Debug)]
pub enum Claim {
    /// This request claimed the key: start the scan, then [`SharedKeys::record`] it.
    Mine,
    /// Another request already started this scan.
    Existing(ActionId),
}

/// Why the shared key gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key names another scan.
    #[error("{}", .0.description)]
    Mismatch(FieldViolation),
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
        loop {
            let mut connection = self.redis.connect().await?;
            let claimed: bool = self
                .redis
                .bounded(
                    redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(format!("pending|{scan}"))
                        .arg("NX")
                        .arg("PX")
                        .arg(CLAIM_TTL.as_millis() as u64)
                        .query_async::<Option<String>>(&mut connection),
                )
                .await?
                .is_some();
            if claimed {
                return Ok(Claim::Mine);
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
                return Err(KeyError::Unavailable(
                    "another request with this key is still starting its scan".into(),
                ));
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

    /// Gives a claim back after a failed start, so a retry may claim it.
    pub async fn release(&self, caller: Option<&str>, key: &RequestId) {
        let result = async {
            let mut connection = self.redis.connect().await?;
            self.redis
                .bounded(connection.del::<_, ()>(self.key(caller, key)))
                .await
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not release the idempotency key in Redis");
        }
    }

    /// The deployment's prefix, the caller and the key: callers have keys of their own. The
    /// caller's id is length-prefixed (ids and keys may hold `:`), and the gateway's own
    /// (`None`) cannot be spelled by a caller.
    fn key(&self, caller: Option<&str>, key: &RequestId) -> String {
        key_name(&self.prefix, caller, key.as_str())
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
