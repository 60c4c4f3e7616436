//! This replica's own admissions, kept over the longest window under members of its own, and
//! written into Redis again (idempotently) when joining an epoch: after a fallback, and when
//! Redis has lost its data.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{
    Mode, SharedError, SharedStore,
    admitter::members_lifetime_ms,
    heartbeat::{ALIVE_TTL, alive_key},
    lock,
};
use crate::call::Api;

/// Writes admissions made a given age ago under their members (idempotent).
pub(super) const RECORD: &str = include_str!("record.lua");

/// Joins the current epoch (a new one when Redis has none or this replica returns from a
/// fallback) and sets the alive key.
pub(super) const EPOCH: &str = include_str!("epoch.lua");

/// One of this replica's admissions, kept for replay.
pub(super) struct Own {
    pub(super) api: Api,
    pub(super) at: Instant,
    pub(super) member: String,
}

// === impl SharedStore ===

impl SharedStore {
    /// Records a shared admission in the own log and in the fallback's windows.
    pub(super) fn remember(&self, api: Api, at: Instant, member: String) {
        self.fallback.record(api, at);
        self.remember_own(api, at, member);
    }

    pub(super) fn remember_own(&self, api: Api, at: Instant, member: String) {
        let mut own = lock(&self.own);
        while own.front().is_some_and(|o| o.at + self.horizon <= at) {
            own.pop_front();
        }
        own.push_back(Own { api, at, member });
    }

    pub(super) fn next_member(&self) -> String {
        format!(
            "{}:{}",
            self.replica_id,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Writes this replica's recent admissions into Redis (idempotently), then joins Redis's
    /// epoch: a new one after a fallback, so the others write theirs in again too.
    pub(super) async fn sync(&self, now: Instant) -> Result<(), SharedError> {
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
}
