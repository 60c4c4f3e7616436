//! Idempotency keys: the same `request_id` within 24 hours names the same action, and
//! concurrent requests with one key make one upstream call. Each replica keeps its own keys
//! ([`LocalKeys`]); with Redis configured, the keys are shared by every replica too
//! ([`SharedKeys`]).
//!
//! A key is bound to its machine and scan type only once it names an action. A start that
//! created nothing (an unknown machine, a refusal, an outage) leaves no trace of its key, here
//! or in Redis, so the key may then start any scan.

mod shared;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::{sync::OnceCell, time::Instant};

use crate::{
    domain::{ActionId, FieldViolation, MachineId, RequestId, ScanRequest, ScanType},
    error::Error,
};

pub use shared::{Claim, KeyError, SharedKeys, TTL};

/// One key of this replica: the scan it is used for, and the action once created. A key is
/// bound to its machine and scan type only once it names an action: until then it only keeps
/// concurrent requests for the same scan to one upstream call.
pub struct Keyed {
    machine_id: MachineId,
    scan_type: ScanType,
    created: Instant,
    /// Set once, by the one request that starts the scan; the others wait for it.
    pub action: OnceCell<ActionId>,
}

impl Keyed {
    fn is_for(&self, request: &ScanRequest) -> bool {
        self.machine_id == request.machine_id && self.scan_type == request.scan_type
    }
}

type Map = HashMap<RequestId, Arc<Keyed>>;

/// This replica's keys, dropped after [`TTL`]; a key that names no action is dropped with the
/// last request holding it.
#[derive(Default)]
pub struct LocalKeys(Arc<Mutex<Map>>);

/// A request's hold on its key ([`LocalKeys::hold`]). When the last hold of a key that names no
/// action goes (its start created nothing, failed or was abandoned), the key is forgotten: it
/// leaves no trace, and any scan may use it next.
pub struct KeyHold {
    keys: Arc<Mutex<Map>>,
    key: RequestId,
    keyed: Arc<Keyed>,
}

impl LocalKeys {
    /// A hold on `key` for `request`, sharing the entry of requests for the same scan; refused
    /// when the key names an action of another machine or scan type, or while a request for
    /// another scan is starting it.
    pub fn hold(
        &self,
        key: &RequestId,
        request: &ScanRequest,
        now: Instant,
    ) -> Result<KeyHold, Error> {
        let mut keys = lock(&self.0);
        keys.retain(|_, keyed| now.duration_since(keyed.created) < TTL);
        let keyed = match keys.get(key) {
            Some(keyed) if keyed.is_for(request) => keyed.clone(),
            Some(keyed) if keyed.action.initialized() => {
                return Err(FieldViolation::new(
                    "request_id",
                    "was already used in the last 24 hours for a scan of another machine or type",
                )
                .into());
            }
            // Holds are handed out under this lock, so the count is exact: more than the map's
            // own means a request is starting another scan with this key right now.
            Some(keyed) if Arc::strong_count(keyed) > 1 => {
                return Err(FieldViolation::new(
                    "request_id",
                    "is in use right now by a request for a scan of another machine or type",
                )
                .into());
            }
            // New, or left by a start that created nothing: the key is free.
            _ => {
                let keyed = Arc::new(Keyed {
                    machine_id: request.machine_id.clone(),
                    scan_type: request.scan_type,
                    created: now,
                    action: OnceCell::new(),
                });
                keys.insert(key.clone(), keyed.clone());
                keyed
            }
        };
        Ok(KeyHold {
            keys: self.0.clone(),
            key: key.clone(),
            keyed,
        })
    }
}

impl std::ops::Deref for KeyHold {
    type Target = Keyed;

    fn deref(&self) -> &Keyed {
        &self.keyed
    }
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        let mut keys = lock(&self.keys);
        // Ours and the map's are the last two: no other request holds the key to start it.
        let last = keys.get(&self.key).is_some_and(|keyed| {
            Arc::ptr_eq(keyed, &self.keyed)
                && Arc::strong_count(keyed) == 2
                && !keyed.action.initialized()
        });
        if last {
            keys.remove(&self.key);
        }
    }
}

fn lock(keys: &Mutex<Map>) -> MutexGuard<'_, Map> {
    keys.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Comment;

    const KEY: &str = "ticket-4711";

    fn request(machine: &str, scan_type: ScanType) -> ScanRequest {
        ScanRequest {
            machine_id: MachineId::parse("machine_id", machine).unwrap(),
            scan_type,
            comment: Comment::parse("comment", "test").unwrap(),
            request_id: RequestId::parse_optional("request_id", KEY).unwrap(),
        }
    }

    fn key() -> RequestId {
        RequestId::parse_optional("request_id", KEY)
            .unwrap()
            .unwrap()
    }

    fn action() -> ActionId {
        ActionId::parse("id", "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37").unwrap()
    }

    const A: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
    const B: &str = "2e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    #[tokio::test]
    async fn a_key_is_bound_only_once_it_names_an_action() {
        let keys = LocalKeys::default();
        let now = Instant::now();
        let (a, b) = (request(A, ScanType::Quick), request(B, ScanType::Quick));

        // A start that created nothing: the key goes with its hold.
        drop(keys.hold(&key(), &a, now).unwrap());
        assert!(lock(&keys.0).is_empty());

        // While a start for A runs, B is refused, and a second request for A shares the entry.
        let first = keys.hold(&key(), &a, now).unwrap();
        assert!(keys.hold(&key(), &b, now).is_err());
        let second = keys.hold(&key(), &a, now).unwrap();
        assert!(Arc::ptr_eq(&first.keyed, &second.keyed));
        drop(first);
        assert_eq!(lock(&keys.0).len(), 1, "the second request still holds it");
        second.action.set(action()).unwrap();
        drop(second);

        // Bound: kept without holds, refused for another machine or type.
        assert_eq!(lock(&keys.0).len(), 1);
        assert!(keys.hold(&key(), &b, now).is_err());
        assert!(keys.hold(&key(), &request(A, ScanType::Full), now).is_err());
        let again = keys.hold(&key(), &a, now).unwrap();
        assert_eq!(again.action.get(), Some(&action()));
    }
}
