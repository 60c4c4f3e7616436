//! What a replica writes into Redis again when joining an epoch (after a fallback, and when
//! Redis has lost its data): its own admissions, kept over the longest window, and its mirror
//! of everyone's, which the heartbeat fetches; both written idempotently under their members.
//!
//! *Lost data.* A Redis that restarts empty has lost every replica's calls, and a window may
//! already be full. The replicas notice through the missing epoch key, start a *fresh* epoch
//! and write back what they know: their own calls and their mirror (complete up to their last
//! heartbeat). Only the calls made since the last heartbeat are unknown, and only by replicas
//! that were alive then: each joiner names those as *pending*, and until a pending replica has
//! joined (written its own calls back), or the window has passed since the epoch began, that
//! window admits nothing. A replica that knew no one cannot name them, so a fresh epoch admits
//! nothing for its first [`ALIVE_TTL`] either (capped by each window): every replica that was
//! present beats within that time and so joins. A replica that crashed in the same moment as
//! Redis lost its data holds its windows for one window length: the price of never guessing.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::Script;
use tokio::time::Instant;

use super::{
    Mode, SharedError,
    admitter::{Admitter, members_lifetime_ms},
    heartbeat::{ALIVE_TTL, Liveness, alive_key},
    lock,
};
use crate::{call::Api, redis_link::RedisLink};

/// Writes admissions made a given age ago under their members (idempotent).
const RECORD: &str = include_str!("record.lua");

/// Joins the current epoch (a new one when Redis has none or this replica returns from a
/// fallback) and sets the alive key.
const EPOCH: &str = include_str!("epoch.lua");

/// One of this replica's admissions, kept for replay.
pub(super) struct Own {
    pub(super) api: Api,
    pub(super) at: Instant,
    pub(super) member: String,
}

/// This replica's copy of the shared log, as of its last heartbeat.
#[derive(Default)]
pub(super) struct Mirror {
    /// Per API: (member, Redis time in µs) of every admission in the longest window, oldest first.
    entries: HashMap<Api, VecDeque<(String, i64)>>,
    /// Redis's clock at the last heartbeat, and this host's at the same moment.
    redis_now: Option<(i64, Instant)>,
    /// The other members of the epoch at the last heartbeat, and whether each was alive.
    members: Vec<(String, bool)>,
}

/// Everything a join writes back, and the join itself.
pub(super) struct Replay {
    pub(super) own: Mutex<VecDeque<Own>>,
    pub(super) mirror: Mutex<Mirror>,
    horizon: Duration,
    sequence: AtomicU64,
    admitter: Arc<Admitter>,
    live: Arc<Liveness>,
    record: Script,
    epoch: Script,
}

// === impl Mirror ===

impl Mirror {
    /// The last Redis time fetched for `api` (the next fetch starts there, inclusive).
    pub(super) fn fetched_until(&self, api: Api) -> i64 {
        self.entries
            .get(&api)
            .and_then(|e| e.back())
            .map_or(0, |e| e.1)
    }

    /// Adds what a heartbeat fetched: entries at or after [`Self::fetched_until`].
    pub(super) fn extend(&mut self, api: Api, fetched: Vec<(String, i64)>, horizon: Duration) {
        let log = self.entries.entry(api).or_default();
        let last = log.back().map_or(0, |e| e.1);
        // The fetch is inclusive of the last time seen: skip the members already held there.
        let held: HashSet<String> = log
            .iter()
            .rev()
            .take_while(|e| e.1 == last)
            .map(|e| e.0.clone())
            .collect();
        for (member, at) in fetched {
            if at < last || (at == last && held.contains(&member)) {
                continue;
            }
            log.push_back((member, at));
        }
        let newest = log.back().map_or(0, |e| e.1);
        let horizon = i64::try_from(horizon.as_micros()).unwrap_or(i64::MAX);
        while log.front().is_some_and(|e| e.1 <= newest - horizon) {
            log.pop_front();
        }
    }

    pub(super) fn beat(&mut self, redis_now: i64, at: Instant, members: Vec<(String, bool)>) {
        self.redis_now = Some((redis_now, at));
        self.members = members;
    }
}

// === impl Replay ===

impl Replay {
    pub(super) fn new(admitter: Arc<Admitter>, live: Arc<Liveness>, horizon: Duration) -> Self {
        Self {
            own: Mutex::new(VecDeque::new()),
            mirror: Mutex::new(Mirror::default()),
            horizon,
            sequence: AtomicU64::new(0),
            admitter,
            live,
            record: Script::new(RECORD),
            epoch: Script::new(EPOCH),
        }
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
            self.admitter.replica_id,
            self.sequence.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// What to write back per API: (age in µs, member), own calls first, each member once.
    fn entries(&self, now: Instant) -> HashMap<Api, Vec<(u64, String)>> {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let mut written = HashSet::new();
        let mut entries: HashMap<Api, Vec<(u64, String)>> = HashMap::new();
        for own in lock(&self.own).iter().filter(|o| o.at + self.horizon > now) {
            written.insert(own.member.clone());
            let age = micros(now - own.at);
            entries
                .entry(own.api)
                .or_default()
                .push((age, own.member.clone()));
        }
        let mirror = lock(&self.mirror);
        let Some((redis_then, local_then)) = mirror.redis_now else {
            return entries;
        };
        // Redis's clock now, as far as this host can tell: then plus the time since.
        let redis_now =
            redis_then.saturating_add(i64::try_from(micros(now - local_then)).unwrap_or(i64::MAX));
        let horizon = i64::try_from(micros(self.horizon)).unwrap_or(i64::MAX);
        for (api, log) in &mirror.entries {
            for (member, at) in log {
                let age = redis_now.saturating_sub(*at);
                if age >= horizon || !written.insert(member.clone()) {
                    continue;
                }
                let age = u64::try_from(age.max(0)).unwrap_or(0);
                entries.entry(*api).or_default().push((age, member.clone()));
            }
        }
        entries
    }

    /// Writes `entries` (age in µs, member) of `api` into its buckets, idempotently.
    async fn record(
        &self,
        redis: &RedisLink,
        connection: &mut redis::aio::ConnectionManager,
        api: Api,
        entries: &[(u64, String)],
    ) -> Result<(), SharedError> {
        let buckets = self.admitter.buckets(api);
        let mut invocation = self.record.prepare_invoke();
        for (key, _) in &buckets {
            invocation.key(key);
        }
        invocation.arg(buckets.len());
        for (_, limits) in &buckets {
            let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
            invocation.arg(u64::try_from(longest.as_micros()).unwrap_or(u64::MAX));
        }
        for (age, member) in entries {
            invocation.arg(*age).arg(member);
        }
        redis
            .bounded(invocation.invoke_async::<i64>(connection))
            .await?;
        Ok(())
    }

    /// Moves this replica's call of `api` admitted at `admitted` to `by` in the own log, and
    /// returns its member; `None` if the log does not hold it (any more).
    pub(super) fn restamp_own(&self, api: Api, admitted: Instant, by: Instant) -> Option<String> {
        let mut own = lock(&self.own);
        let entry = own.iter_mut().find(|o| o.api == api && o.at == admitted)?;
        entry.at = by;
        Some(entry.member.clone())
    }

    /// Rewrites `member`'s time in Redis to `by` (as Redis's clock tells it now).
    pub(super) async fn rewrite(
        &self,
        redis: &RedisLink,
        api: Api,
        member: String,
        by: Instant,
    ) -> Result<(), SharedError> {
        let mut connection = redis.connect().await?;
        let age = Instant::now().saturating_duration_since(by);
        let age = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
        self.record(redis, &mut connection, api, &[(age, member)])
            .await
    }

    /// Writes this replica's recent admissions, and its mirror of everyone's, into Redis
    /// (idempotently), then joins Redis's epoch: a new one after a fallback, so the others write
    /// theirs in again too. Joining a fresh epoch (Redis lost its data), it names the members it
    /// knew: the ones alive at its last heartbeat may have calls it never saw.
    pub(super) async fn sync(&self, redis: &RedisLink, now: Instant) -> Result<(), SharedError> {
        let mut connection = redis.connect().await?;
        let entries = self.entries(now);
        let written: usize = entries.values().map(Vec::len).sum();
        for (api, entries) in entries {
            self.record(redis, &mut connection, api, &entries).await?;
        }
        let candidate = format!("{}-{}", self.admitter.replica_id, self.next_member());
        let mut invocation = self.epoch.key(self.admitter.epoch_key());
        invocation.key(alive_key(&self.admitter.prefix, &self.admitter.replica_id));
        let returning = matches!(*lock(&self.live.mode), Mode::Returning);
        invocation
            .arg(candidate)
            .arg(&self.admitter.replica_id)
            .arg(if returning { "1" } else { "0" })
            .arg(members_lifetime_ms(self.horizon))
            .arg(ALIVE_TTL.as_millis() as u64);
        for (member, alive) in &lock(&self.mirror).members {
            invocation.arg(member).arg(if *alive { "1" } else { "0" });
        }
        self.live.sending(false);
        let epoch: String = redis
            .bounded(invocation.invoke_async(&mut connection))
            .await?;
        tracing::debug!(written, returning, %epoch, "quota log written to Redis");
        *lock(&self.live.epoch) = Some(epoch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, at: i64) -> (String, i64) {
        (name.to_owned(), at)
    }

    #[test]
    fn the_mirror_keeps_each_admission_once_and_only_over_the_longest_window() {
        let mut mirror = Mirror::default();
        let horizon = Duration::from_micros(100);
        mirror.extend(
            Api::GetAction,
            vec![member("a", 10), member("b", 20)],
            horizon,
        );
        assert_eq!(mirror.fetched_until(Api::GetAction), 20);
        // The next fetch starts at 20 inclusive: "b" again, and "c" at the same instant.
        mirror.extend(
            Api::GetAction,
            vec![member("b", 20), member("c", 20), member("d", 115)],
            horizon,
        );
        let log: Vec<_> = mirror.entries[&Api::GetAction]
            .iter()
            .map(|e| e.0.as_str())
            .collect();
        // "a" (at 10) left the window that ends at 115.
        assert_eq!(log, ["b", "c", "d"]);
        assert_eq!(mirror.fetched_until(Api::RunScan), 0);
    }
}
