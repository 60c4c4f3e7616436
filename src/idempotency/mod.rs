//! Idempotency keys: the same `request_id` within 24 hours names the same action, and
//! concurrent requests with one key make one upstream call. Each replica keeps its own keys
//! ([`LocalKeys`]); with Redis configured, the keys are shared by every replica too
//! ([`SharedKeys`]).

mod shared;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::{sync::OnceCell, time::Instant};

use crate::{
    domain::{ActionId, FieldViolation, MachineId, RequestId, ScanRequest, ScanType},
    error::Error,
};

pub use shared::{Claim, KeyError, SharedKeys, TTL};

/// One key of this replica: what it was first used for, and the action once created.
pub struct Keyed {
    machine_id: MachineId,
    scan_type: ScanType,
    created: Instant,
    /// Set once, by the one request that starts the scan; the others wait for it.
    pub action: OnceCell<ActionId>,
}

/// This replica's keys, dropped after [`TTL`].
#[derive(Default)]
pub struct LocalKeys(Mutex<HashMap<RequestId, Arc<Keyed>>>);

impl LocalKeys {
    /// The entry of `key`, made for `request` if new; refused when the key was used for
    /// another machine or scan type.
    pub fn keyed(
        &self,
        key: &RequestId,
        request: &ScanRequest,
        now: Instant,
    ) -> Result<Arc<Keyed>, Error> {
        let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        keys.retain(|_, keyed| now.duration_since(keyed.created) < TTL);
        let keyed = keys
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Keyed {
                    machine_id: request.machine_id.clone(),
                    scan_type: request.scan_type,
                    created: now,
                    action: OnceCell::new(),
                })
            })
            .clone();
        if keyed.machine_id != request.machine_id || keyed.scan_type != request.scan_type {
            return Err(FieldViolation::new(
                "request_id",
                "was already used in the last 24 hours for a scan of another machine or type",
            )
            .into());
        }
        Ok(keyed)
    }
}
