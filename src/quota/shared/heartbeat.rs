//! Liveness: each replica keeps a key `<prefix>:alive:<replica id>` while it is present,
//! refreshed by every admission and, while idle, by a heartbeat task; a clean shutdown drops
//! it (leave), so the others get this replica's share back at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{Script, aio::ConnectionManager};
use tokio::{task::AbortHandle, time::Instant};

use super::{
    Mode, SharedStore,
    admitter::{Admitter, Reply, members_lifetime_ms, parse_reply},
    fallback::{Seen, note_seen},
    lock,
    replay::Replay,
};
use super::{
    SharedMetrics,
    fallback::{PROBE_INTERVAL, ReturnGuard, quiet_after},
};
use crate::{call::Api, redis_link::RedisLink, supervisor::supervise};

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
    /// Set on entering a fallback from shared mode: the others' excess is counted once the
    /// quarantine ends (they may have spent more until then).
    pub(super) excess_pending: AtomicBool,
    /// Redis's answer timeout: a quarantine counts it.
    pub(super) timeout: Duration,
}

// === impl Liveness ===

impl Liveness {
    /// From a fallback whose probe is due, starts a return (mode `Returning`, the epoch
    /// forgotten so the calls made alone are written back first); returns the fallback to
    /// restore if the return is abandoned. `None` when no return is due.
    pub(super) fn begin_return(&self, now: Instant) -> Option<Mode> {
        let mut mode = lock(&self.mode);
        let Mode::Fallback {
            next_probe,
            quiet_until,
        } = &*mode
        else {
            return None;
        };
        if now < *next_probe {
            return None;
        }
        let restore = Mode::Fallback {
            next_probe: now + PROBE_INTERVAL,
            quiet_until: *quiet_until,
        };
        *mode = Mode::Returning;
        *lock(&self.epoch) = None;
        Some(restore)
    }

    /// Puts the fallback back after a return that failed or was given up (true if it did),
    /// with its quarantine extended: the attempt may have refreshed the alive key, so the
    /// others may count this replica present again for a while.
    pub(super) fn abandon_return(&self, mut restore: Mode) -> bool {
        let mut mode = lock(&self.mode);
        if !matches!(*mode, Mode::Returning) {
            return false;
        }
        if let Mode::Fallback { quiet_until, .. } = &mut restore {
            let sent = *lock(&self.alive_sent);
            *quiet_until = (*quiet_until).max(quiet_after(sent, self.timeout, Instant::now()));
        }
        *mode = restore;
        true
    }

    pub(super) fn back_to_shared(&self, metrics: &SharedMetrics) {
        let mut mode = lock(&self.mode);
        if !matches!(*mode, Mode::Shared) {
            *mode = Mode::Shared;
            self.excess_pending.store(false, Ordering::Release);
            drop(mode);
            metrics.set_quota_fallback(false);
            tracing::info!("Redis is reachable again; the quota is shared again");
        }
    }

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
    pub(super) replay: Arc<Replay>,
    pub(super) metrics: SharedMetrics,
}

// === impl Heartbeat ===

impl Heartbeat {
    /// Runs on the current runtime; without one (no async context) there is no heartbeat and
    /// the admissions alone refresh the key.
    /// Supervised: a panic is logged, counted and the loop started again (the mode, the epoch
    /// and the mirror live outside it, so a restart keeps them).
    pub(super) fn spawn(self) -> Option<AbortHandle> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let metrics = self.metrics.clone();
        let heartbeat = Arc::new(self);
        let supervised = async move {
            supervise(
                "quota heartbeat",
                HEARTBEAT,
                || metrics.record_heartbeat_panic(),
                || heartbeat.clone().run(),
            )
            .await;
        };
        Some(runtime.spawn(supervised).abort_handle())
    }

    async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let script = Script::new(HEARTBEAT_SCRIPT);
        // The APIs with limits of their own: the buckets the mirror follows.
        let mirrored: Vec<Api> = Api::ALL
            .into_iter()
            .filter(|api| self.admitter.limits.per_api.contains_key(api))
            .collect();
        loop {
            ticks.tick().await;
            // In fallback, stay silent (the alive key must lapse) until a probe is due; then
            // try to return, as an admission would: an idle replica must come back too, or the
            // others wait for it to write its calls back after Redis lost its data.
            if !matches!(*lock(&self.live.mode), Mode::Shared) {
                self.try_return().await;
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
            invocation.key(self.admitter.epoch_key());
            for api in &mirrored {
                invocation.key(self.admitter.api_bucket(*api));
            }
            invocation
                .arg(ALIVE_TTL.as_millis() as u64)
                .arg(&epoch)
                .arg(&self.admitter.replica_id)
                .arg(members_lifetime_ms(self.admitter.horizon))
                .arg(format!("{}:alive:", self.admitter.prefix));
            {
                let mirror = lock(&self.replay.mirror);
                for api in &mirrored {
                    invocation.arg(mirror.fetched_until(*api));
                }
            }
            let beat = self
                .redis
                .bounded(invocation.invoke_async::<Vec<String>>(&mut connection))
                .await;
            let beat = match beat {
                Ok(reply) if reply.first().is_some_and(|r| r == "1") => {
                    // Redis's clock is taken to be at `now` as the answer arrives: the latest
                    // it can be, so the mirror's calls never look older than they are.
                    self.mirror(&reply, &mirrored, Instant::now());
                    self.refresh_counts(&mut connection, &epoch).await;
                    Ok(())
                }
                // Redis has another epoch, or none (it lost its data): join it now, writing
                // back what this replica knows, even while idle.
                Ok(_) => self
                    .replay
                    .sync(&self.redis, Instant::now())
                    .await
                    .map_err(|_| ()),
                Err(_) => Err(()),
            };
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

    /// Returns this replica to shared mode if a probe is due: writes its calls back and joins.
    async fn try_return(&self) {
        let now = Instant::now();
        let Some(restore) = self.live.begin_return(now) else {
            return;
        };
        // However this ends short of shared mode (an error, a panic that the supervisor
        // restarts from, the task aborted), the fallback is put back.
        let _returning = ReturnGuard {
            live: &self.live,
            abandoned: Some(restore),
            announce: false,
        };
        match self.replay.sync(&self.redis, now).await {
            Ok(()) => self.live.back_to_shared(&self.metrics),
            Err(_) => self.redis.forget(),
        }
    }

    /// Takes in a heartbeat's reply: the epoch's members and the shared log's new entries.
    fn mirror(&self, reply: &[String], mirrored: &[Api], answered: Instant) {
        let Some(parsed) = parse_beat(reply, mirrored.len()) else {
            tracing::debug!("unexpected reply from the quota heartbeat");
            return;
        };
        let mut mirror = lock(&self.replay.mirror);
        let others = parsed
            .members
            .into_iter()
            .filter(|(m, _)| *m != self.admitter.replica_id)
            .collect();
        mirror.beat(parsed.redis_now, answered, others);
        for (api, entries) in mirrored.iter().zip(parsed.entries) {
            mirror.extend(*api, entries, self.admitter.horizon);
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
            .key(alive_key(&self.config.prefix, &self.admitter.replica_id));
        invocation
            .key(self.admitter.epoch_key())
            .arg(epoch)
            .arg(&self.admitter.replica_id);
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

/// A heartbeat's reply, read.
struct Beat {
    redis_now: i64,
    members: Vec<(String, bool)>,
    entries: Vec<Vec<(String, i64)>>,
}

/// Reads `{'1', now, member count, (member, alive)..., per bucket: count, (member, time)...}`.
fn parse_beat(reply: &[String], buckets: usize) -> Option<Beat> {
    let mut fields = reply.iter().skip(1);
    let number = |fields: &mut dyn Iterator<Item = &String>| -> Option<i64> {
        // Scores come back as doubles' text; times in µs fit one exactly.
        fields.next()?.parse::<f64>().ok().map(|v| v as i64)
    };
    let redis_now = number(&mut fields)?;
    let count = usize::try_from(number(&mut fields)?).ok()?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member = fields.next()?.clone();
        members.push((member, fields.next()? == "1"));
    }
    let mut entries = Vec::with_capacity(buckets);
    for _ in 0..buckets {
        let count = usize::try_from(number(&mut fields)?).ok()?;
        let mut bucket = Vec::with_capacity(count);
        for _ in 0..count {
            let member = fields.next()?.clone();
            bucket.push((member, number(&mut fields)?));
        }
        entries.push(bucket);
    }
    Some(Beat {
        redis_now,
        members,
        entries,
    })
}

/// `<prefix>:alive:<replica id>`: exists while the replica is present.
pub(super) fn alive_key(prefix: &str, replica_id: &str) -> String {
    format!("{prefix}:alive:{replica_id}")
}
