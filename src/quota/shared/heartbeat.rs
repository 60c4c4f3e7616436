//! Liveness: each replica keeps a key `<prefix>:alive:<replica id>` while it is present,
//! refreshed by every admission and, while idle, by a heartbeat task; a clean shutdown drops
//! it (leave), so the others get this replica's share back at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use tokio::{task::AbortHandle, time::Instant};

use super::{
    Mode, SharedStore,
    admitter::{Admitter, Reply, members_lifetime_ms, parse_reply},
    fallback::{Seen, note_seen},
    lock,
};
use crate::{call::Api, redis_link::RedisLink};

/// How long a replica counts as present without refreshing its alive key. It bounds how long
/// a replica that lost Redis waits before spending its share alone (the quarantine), so it is
/// short; it must still span a few heartbeats, so one slow Redis answer does not make a
/// healthy replica look gone (which only costs the others its share for a moment).
pub const ALIVE_TTL: Duration = Duration::from_secs(2);
/// Time between two heartbeats: three chances to refresh the alive key before it expires.
pub(super) const HEARTBEAT: Duration = Duration::from_millis(ALIVE_TTL.as_millis() as u64 / 3);

/// Keeps this replica present (and a member of its epoch) while idle.
const HEARTBEAT_SCRIPT: &str = include_str!("heartbeat.lua");

/// Drops this replica's alive key and epoch membership on a clean shutdown.
pub(super) const LEAVE: &str = include_str!("leave.lua");

/// The mode, shared with the heartbeat task.
pub(super) struct Liveness {
    pub(super) mode: Mutex<Mode>,
    /// The epoch this replica has written its log into; empty until the first sync.
    pub(super) epoch: Mutex<Option<String>>,
    /// When the last request that refreshes the alive key was sent: the quarantine counts from
    /// it. Written only while holding `mode`, so a heartbeat cannot slip in after a fallback
    /// has computed its quarantine.
    pub(super) alive_sent: Mutex<Option<Instant>>,
}

// === impl Liveness ===

impl Liveness {
    /// Notes that a request refreshing the alive key goes out now; with `shared_only`, only
    /// in shared mode (false, nothing noted, otherwise): in fallback the alive key must lapse.
    pub(super) fn sending(&self, shared_only: bool) -> bool {
        let mode = lock(&self.mode);
        if shared_only && !matches!(*mode, Mode::Shared) {
            return false;
        }
        *lock(&self.alive_sent) = Some(Instant::now());
        true
    }
}

/// Keeps this replica's alive key fresh while it is idle.
pub(super) struct Heartbeat {
    pub(super) redis: RedisLink,
    pub(super) key: String,
    pub(super) admitter: Arc<Admitter>,
    pub(super) last_seen: Arc<Mutex<HashMap<Api, Seen>>>,
    pub(super) live: Arc<Liveness>,
}

// === impl Heartbeat ===

impl Heartbeat {
    /// Runs on the current runtime; without one (no async context) there is no heartbeat and
    /// the admissions alone refresh the key.
    pub(super) fn spawn(self) -> Option<AbortHandle> {
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

// === impl SharedStore ===

impl SharedStore {
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
}

/// `<prefix>:alive:<replica id>`: exists while the replica is present.
pub(super) fn alive_key(prefix: &str, replica_id: &str) -> String {
    format!("{prefix}:alive:{replica_id}")
}
