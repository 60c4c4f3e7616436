//! Idempotency keys: the same `request_id` within 24 hours names the same action, and
//! concurrent requests with one key make one upstream call. Each replica keeps its own keys
//! ([`LocalKeys`]); with Redis configured, the keys are shared by every replica too
//! ([`SharedKeys`]).
//!
//! Keys are scoped per authenticated caller, here and in Redis: one caller cannot read
//! another's action by guessing its key. Unauthenticated callers share one scope (an address
//! is not an identity: a retry from another pod must find its key). This replica keeps at most [`MAX_KEYS`], oldest forgotten first.
//!
//! A key is bound to its machine and scan type only once it names an action. A start that
//! created nothing (an unknown machine, a refusal, an outage) leaves no trace of its key, here
//! or in Redis, so the key may then start any scan.

mod metrics;
mod restore;
mod shared;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::{sync::OnceCell, time::Instant};

use crate::{
    domain::{ActionId, FieldViolation, MachineId, RequestId, ScanRequest, ScanType},
    error::Error,
};

pub use metrics::KeyMetrics;
pub use restore::spawn_restorer;
pub use shared::{Claim, KeyError, SharedKeys, TTL};

/// Most keys a replica keeps (a few hundred bytes each: tens of MiB at worst). Beyond, the oldest key is forgotten (logged
/// once), as it would be at [`TTL`]; at a sustained rate a key then lives less than 24 h.
pub const MAX_KEYS: usize = 100_000;

/// What a key names: the action, and whether the key's first request followed a scan already
/// running (someone else's) rather than creating it, so a retry says so too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedAction {
    pub id: ActionId,
    pub reused: bool,
}

/// One key of this replica: the scan it is used for, and the action once created. A key is
/// bound to its machine and scan type only once it names an action: until then it only keeps
/// concurrent requests for the same scan to one upstream call.
pub struct Keyed {
    machine_id: MachineId,
    scan_type: ScanType,
    created: Instant,
    /// The entry's place in the creation order (`Keys::order`).
    seq: u64,
    /// Set once, by the one request that starts the scan; the others wait for it.
    pub action: OnceCell<KeyedAction>,
}

impl Keyed {
    fn is_for(&self, request: &ScanRequest) -> bool {
        self.machine_id == request.machine_id && self.scan_type == request.scan_type
    }
}

/// A key as one caller sees it: callers have keys of their own, so one cannot read another's
/// action by guessing its key. `None` is the gateway itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scoped {
    caller: Option<Arc<str>>,
    key: RequestId,
}

/// The keys and their creation order. Expiry and the bound pop the oldest from the front of
/// `order`, so a call touches the keys it expires or evicts, never the whole map.
#[derive(Default)]
struct Keys {
    map: HashMap<Scoped, Arc<Keyed>>,
    /// Creation order (`Keyed::seq`): the front is the oldest. A key forgotten early (its start
    /// created nothing) leaves it too.
    order: BTreeMap<u64, Scoped>,
    next_seq: u64,
    /// The bound was reached (logged once).
    full: bool,
    metrics: KeyMetrics,
}

/// This replica's keys, dropped after [`TTL`] and beyond [`MAX_KEYS`] oldest first; a key that
/// names no action is dropped with the last request holding it. Clones share the keys.
#[derive(Default, Clone)]
pub struct LocalKeys(Arc<Mutex<Keys>>);

/// A key that names an action, as this replica knows it: what it writes back to Redis after
/// Redis lost its data.
#[derive(Debug, Clone)]
pub struct BoundKey {
    pub caller: Option<Arc<str>>,
    pub key: RequestId,
    pub machine_id: MachineId,
    pub scan_type: ScanType,
    pub action: KeyedAction,
    /// How long the key has been bound (it lives [`TTL`] from its first use).
    pub age: std::time::Duration,
}

/// A request's hold on its key ([`LocalKeys::hold`]). When the last hold of a key that names no
/// action goes (its start created nothing, failed or was abandoned), the key is forgotten: it
/// leaves no trace, and any scan may use it next.
pub struct KeyHold {
    keys: Arc<Mutex<Keys>>,
    key: Scoped,
    keyed: Arc<Keyed>,
}

impl LocalKeys {
    pub fn new(metrics: KeyMetrics) -> Self {
        Self(Arc::new(Mutex::new(Keys {
            metrics,
            ..Keys::default()
        })))
    }

    /// A hold on `caller`'s `key` for `request`, sharing the entry of requests for the same
    /// scan; refused when the key names an action of another machine or scan type, or while a
    /// request for another scan is starting it.
    pub fn hold(
        &self,
        caller: Option<&Arc<str>>,
        key: &RequestId,
        request: &ScanRequest,
        now: Instant,
    ) -> Result<KeyHold, Error> {
        let scoped = Scoped {
            caller: caller.cloned(),
            key: key.clone(),
        };
        let mut keys = lock(&self.0);
        keys.expire(now);
        let keyed = match keys.map.get(&scoped) {
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
            _ => keys.insert(scoped.clone(), request, now),
        };
        Ok(KeyHold {
            keys: self.0.clone(),
            key: scoped,
            keyed,
        })
    }

    /// Every key that names an action, unexpired at `now`.
    pub fn bound(&self, now: Instant) -> Vec<BoundKey> {
        let mut keys = lock(&self.0);
        keys.expire(now);
        keys.map
            .iter()
            .filter_map(|(scoped, keyed)| {
                Some(BoundKey {
                    caller: scoped.caller.clone(),
                    key: scoped.key.clone(),
                    machine_id: keyed.machine_id.clone(),
                    scan_type: keyed.scan_type,
                    action: keyed.action.get()?.clone(),
                    age: now.duration_since(keyed.created),
                })
            })
            .collect()
    }
}

// === impl Keys ===

impl Keys {
    /// Forgets the keys older than [`TTL`], oldest first, stopping at the first younger one.
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.first_key_value().map(|(_, key)| key.clone()) {
            let expired = self
                .map
                .get(&oldest)
                .is_none_or(|keyed| now.duration_since(keyed.created) >= TTL);
            if !expired {
                break;
            }
            self.pop_oldest();
        }
        self.metrics.set_keys(self.map.len());
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_first() {
            self.map.remove(&key);
        }
    }

    fn insert(&mut self, key: Scoped, request: &ScanRequest, now: Instant) -> Arc<Keyed> {
        while self.map.len() >= MAX_KEYS {
            if !self.full {
                self.full = true;
                tracing::warn!(
                    max = MAX_KEYS,
                    "the idempotency keys reached their bound: the oldest are forgotten first"
                );
            }
            self.pop_oldest();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let keyed = Arc::new(Keyed {
            machine_id: request.machine_id.clone(),
            scan_type: request.scan_type,
            created: now,
            seq,
            action: OnceCell::new(),
        });
        if let Some(old) = self.map.insert(key.clone(), keyed.clone()) {
            self.order.remove(&old.seq);
        }
        self.order.insert(seq, key);
        self.metrics.set_keys(self.map.len());
        keyed
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
        let last = keys.map.get(&self.key).is_some_and(|keyed| {
            Arc::ptr_eq(keyed, &self.keyed)
                && Arc::strong_count(keyed) == 2
                && !keyed.action.initialized()
        });
        if last {
            keys.map.remove(&self.key);
            keys.order.remove(&self.keyed.seq);
            let count = keys.map.len();
            keys.metrics.set_keys(count);
        }
    }
}

fn lock(keys: &Mutex<Keys>) -> MutexGuard<'_, Keys> {
    keys.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Comment;
    use std::time::Duration;

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

    fn action() -> KeyedAction {
        KeyedAction {
            id: ActionId::parse("id", "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37").unwrap(),
            reused: false,
        }
    }

    const A: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";
    const B: &str = "2e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    #[tokio::test]
    async fn a_key_is_bound_only_once_it_names_an_action() {
        let keys = LocalKeys::default();
        let now = Instant::now();
        let (a, b) = (request(A, ScanType::Quick), request(B, ScanType::Quick));

        // A start that created nothing: the key goes with its hold.
        drop(keys.hold(None, &key(), &a, now).unwrap());
        assert!(lock(&keys.0).map.is_empty());

        // While a start for A runs, B is refused, and a second request for A shares the entry.
        let first = keys.hold(None, &key(), &a, now).unwrap();
        assert!(keys.hold(None, &key(), &b, now).is_err());
        let second = keys.hold(None, &key(), &a, now).unwrap();
        assert!(Arc::ptr_eq(&first.keyed, &second.keyed));
        drop(first);
        assert_eq!(
            lock(&keys.0).map.len(),
            1,
            "the second request still holds it"
        );
        second.action.set(action()).unwrap();
        drop(second);

        // Bound: kept without holds, refused for another machine or type.
        assert_eq!(lock(&keys.0).map.len(), 1);
        assert!(keys.hold(None, &key(), &b, now).is_err());
        assert!(
            keys.hold(None, &key(), &request(A, ScanType::Full), now)
                .is_err()
        );
        let again = keys.hold(None, &key(), &a, now).unwrap();
        assert_eq!(again.action.get(), Some(&action()));
    }

    fn numbered(i: usize) -> RequestId {
        RequestId::parse_optional("request_id", &format!("key-{i}"))
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn expiry_and_the_bound_forget_the_oldest_keys_without_a_scan() {
        let metrics = KeyMetrics::default();
        let keys = LocalKeys::new(metrics.clone());
        let (a, b) = (request(A, ScanType::Quick), request(B, ScanType::Quick));
        let start = Instant::now();
        let bind = |i: usize, at: Instant| {
            let hold = keys.hold(None, &numbered(i), &a, at).unwrap();
            hold.action.set(action()).unwrap();
        };
        for i in 0..MAX_KEYS {
            bind(i, start);
        }
        assert_eq!(metrics.keys(), MAX_KEYS as i64);

        // Full: each new key forgets the oldest. A scan of the map per call would take 10,000
        // times 100,000 steps; popping the front takes 10,000.
        let hour_later = start + Duration::from_secs(3600);
        let timer = Instant::now();
        for i in MAX_KEYS..MAX_KEYS + 10_000 {
            bind(i, hour_later);
        }
        assert!(
            timer.elapsed() < Duration::from_secs(5),
            "{:?}",
            timer.elapsed()
        );
        assert_eq!(metrics.keys(), MAX_KEYS as i64);
        assert!(
            keys.hold(None, &numbered(10_000), &b, hour_later).is_err(),
            "kept"
        );
        // (A new key at the bound: this probe itself evicts the next oldest, 10,000.)
        assert!(
            keys.hold(None, &numbered(9_999), &b, hour_later).is_ok(),
            "evicted"
        );

        // At 24 h the keys of the start expire, from the front, and the younger 10,000 stay.
        bind(MAX_KEYS + 10_000, start + TTL);
        assert_eq!(metrics.keys(), 10_001);
        assert_eq!(lock(&keys.0).order.len(), 10_001);
        assert!(
            keys.hold(None, &numbered(MAX_KEYS), &b, start + TTL)
                .is_err()
        );
    }

    #[tokio::test]
    async fn callers_have_keys_of_their_own() {
        let keys = LocalKeys::default();
        let now = Instant::now();
        let (alice, bob): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
        let first = keys
            .hold(Some(&alice), &key(), &request(A, ScanType::Quick), now)
            .unwrap();
        first.action.set(action()).unwrap();
        let other = keys
            .hold(Some(&bob), &key(), &request(B, ScanType::Quick), now)
            .unwrap();
        assert!(
            other.action.get().is_none(),
            "bob does not see alice's action"
        );
        assert!(
            keys.hold(None, &key(), &request(B, ScanType::Full), now)
                .is_ok()
        );
    }
}
