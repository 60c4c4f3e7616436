//! The admission through Redis: one atomic script (`admit.lua`) per decision, on Redis's clock,
//! counting the calls in every sliding window and holding back the shares of the replicas that
//! are not present.

use std::time::Duration;

use redis::Script;

use super::{SharedError, SharedStore, heartbeat::ALIVE_TTL, lock};
use crate::{
    call::Api,
    quota::limits::{Limit, Limits},
};

/// Decides (or, with dry_run, only predicts) one admission, and refreshes this replica's alive
/// key (KEYS, ARGV and replies are described in the script).
pub(super) const ADMIT: &str = include_str!("admit.lua");

/// How long a fresh epoch (Redis lost its data, or the first start) admits nothing: every
/// replica that was present beats (and so joins, naming the replicas it knew) within an alive
/// key's lifetime.
pub const GATHERING: Duration = ALIVE_TTL;

/// What the admission script said.
pub(super) enum Reply {
    /// With the remaining calls per limit of the API, and its recent calls.
    Admitted(Vec<u32>, Vec<u32>),
    /// With the remaining calls per limit of the API (were the wait over), and its recent calls.
    Wait(Duration, Vec<u32>, Vec<u32>),
    /// Redis has another epoch (or none): replay, then ask again.
    Reset,
}

/// Builds the admission script's calls: shared by the admissions and the heartbeat.
pub(super) struct Admitter {
    pub(super) prefix: String,
    pub(super) replica_id: String,
    pub(super) replicas: u32,
    pub(super) limits: Limits,
    pub(super) horizon: Duration,
    pub(super) gap: Duration,
    pub(super) script: Script,
}

// === impl Admitter ===

impl Admitter {
    /// The admission script for `api`, in `epoch`.
    pub(super) fn invocation(
        &self,
        api: Api,
        epoch: &str,
        dry_run: bool,
        member: &str,
    ) -> redis::ScriptInvocation<'_> {
        let buckets = self.buckets(api);
        let mut invocation = self.script.prepare_invoke();
        for (key, _) in &buckets {
            invocation.key(key);
        }
        invocation
            .key(self.pause_key(api))
            .key(self.epoch_key())
            .arg(epoch)
            .arg(if dry_run { "1" } else { "0" })
            .arg(member)
            .arg(self.replicas.max(1))
            .arg(u64::try_from(self.horizon.as_micros()).unwrap_or(u64::MAX))
            .arg(buckets.len())
            .arg(format!("{}:alive:", self.prefix))
            .arg(&self.replica_id)
            .arg(ALIVE_TTL.as_millis() as u64)
            .arg(u64::try_from(self.gap.as_micros()).unwrap_or(u64::MAX))
            .arg(members_lifetime_ms(self.horizon))
            .arg(u64::try_from(GATHERING.as_micros()).unwrap_or(u64::MAX));
        for (_, limits) in &buckets {
            invocation.arg(limits.len());
            for limit in *limits {
                invocation
                    .arg(limit.calls)
                    .arg(u64::try_from(limit.window.as_micros()).unwrap_or(u64::MAX));
            }
        }
        invocation
    }

    /// The buckets an admission on `api` must fit: the API's own, then the overall cap.
    pub(super) fn buckets(&self, api: Api) -> Vec<(String, &[Limit])> {
        let mut buckets = Vec::with_capacity(2);
        if let Some(limits) = self.limits.per_api.get(&api) {
            buckets.push((self.api_bucket(api), limits.as_slice()));
        }
        if let Some(total) = &self.limits.total {
            buckets.push((format!("{}:total", self.prefix), total.as_slice()));
        }
        buckets
    }

    /// The bucket of `api`'s own limits.
    pub(super) fn api_bucket(&self, api: Api) -> String {
        format!("{}:{}", self.prefix, api.as_str())
    }

    pub(super) fn pause_key(&self, api: Api) -> String {
        format!("{}:{}:pause", self.prefix, api.as_str())
    }

    pub(super) fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }
}

/// Reads the admission script's reply.
pub(super) fn parse_reply(reply: &[i64]) -> Result<Reply, SharedError> {
    let count = |c: &i64| u32::try_from((*c).max(0)).unwrap_or(u32::MAX);
    // Pairs of (remaining, recent) per limit of the API.
    let split = |pairs: &[i64]| -> (Vec<u32>, Vec<u32>) {
        let left = pairs.iter().step_by(2).map(count).collect();
        let recent = pairs.iter().skip(1).step_by(2).map(count).collect();
        (left, recent)
    };
    match reply {
        [-1, ..] => Ok(Reply::Reset),
        [1, _, pairs @ ..] if pairs.len() % 2 == 0 => {
            let (left, recent) = split(pairs);
            Ok(Reply::Admitted(left, recent))
        }
        [0, wait, pairs @ ..] if pairs.len() % 2 == 0 => {
            let (left, recent) = split(pairs);
            let wait = Duration::from_micros(u64::try_from(*wait).unwrap_or(0));
            Ok(Reply::Wait(wait, left, recent))
        }
        _ => Err(SharedError::Reply),
    }
}

// === impl SharedStore ===

impl SharedStore {
    /// Runs the admission script for `api`.
    pub(super) async fn run_admit(
        &self,
        api: Api,
        dry_run: bool,
        member: &str,
    ) -> Result<Reply, SharedError> {
        let Some(epoch) = lock(&self.live.epoch).clone() else {
            return Ok(Reply::Reset);
        };
        let mut connection = self.redis.connect().await?;
        let invocation = self.admitter.invocation(api, &epoch, dry_run, member);
        self.live.sending(false);
        let reply: Vec<i64> = self
            .redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        parse_reply(&reply)
    }
}

/// How long an epoch's member set outlives its last use: every admission and heartbeat keeps
/// it, so only a set nobody uses expires.
pub(super) fn members_lifetime_ms(horizon: Duration) -> u64 {
    u64::try_from(horizon.as_millis() * 2)
        .unwrap_or(u64::MAX)
        .max(1000)
}
