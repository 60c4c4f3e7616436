//! Deciding alone while Redis is unreachable: this replica's share of the quota, after a
//! quarantine (the others may still count this replica present and spend its share), reduced
//! by what the others may have spent beyond theirs (from what Redis last said: [`Seen`]).

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    Mode, SharedError, SharedStore,
    heartbeat::{ALIVE_TTL, Liveness},
    lock,
};
use crate::{
    call::Api,
    quota::limits::{Admission, Limit},
};

/// Time between two attempts to reach Redis while in fallback.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a call retries while this replica writes its log back into Redis.
const RETURNING_RETRY: Duration = Duration::from_millis(20);
/// Slack on the quarantine for Redis's and this host's clocks running at slightly different
/// rates over the TTL.
pub(super) const QUIET_SLACK: Duration = Duration::from_millis(100);

/// Held by the call that returns this replica to shared mode. Its future may be dropped at
/// any await (the caller cancelled, its deadline passed): then the mode is still `Returning`
/// and nothing else would move it on, every later call would wait, and the heartbeat would
/// stay silent. Dropped that way, the guard puts the fallback back, due for a probe at once.
pub(super) struct ReturnGuard<'a> {
    pub(super) live: &'a Liveness,
    /// The mode to restore if the return is abandoned; `None` when already shared.
    pub(super) abandoned: Option<Mode>,
    /// Log an abandoned return (a caller that left); the heartbeat's failed probes are quiet.
    pub(super) announce: bool,
}

impl Drop for ReturnGuard<'_> {
    fn drop(&mut self) {
        let Some(fallback) = self.abandoned.take() else {
            return;
        };
        if self.live.abandon_return(fallback) && self.announce {
            tracing::info!(
                "a return to the shared quota was abandoned midway; probing Redis again"
            );
        }
    }
}

/// What Redis last said about an API, per limit.
#[derive(Clone)]
pub(super) struct Seen {
    pub(super) at: Instant,
    /// The calls in the window (all of it when the answer was "wait").
    pub(super) used: Vec<u32>,
    /// The calls in the window's latest (window - gap): the calls the others made since are
    /// at most the limit less these, as long as less than `gap` has passed.
    pub(super) recent: Vec<u32>,
}

// === impl SharedStore ===

impl SharedStore {
    /// False while in fallback between probes (or while another call is returning).
    /// The guard it returns, when the decision goes to Redis, must live until that decision
    /// is made: it undoes a return to shared mode that its caller abandoned.
    pub(super) fn redis_due(&self, now: Instant) -> Option<ReturnGuard<'_>> {
        if matches!(*lock(&self.live.mode), Mode::Shared) {
            return Some(ReturnGuard {
                live: &self.live,
                abandoned: None,
                announce: true,
            });
        }
        // Returning (another call is at it), or in fallback between probes: decide alone.
        let restore = self.live.begin_return(now)?;
        Some(ReturnGuard {
            live: &self.live,
            announce: true,
            // Abandoned, the probe is due again at once.
            abandoned: Some(match restore {
                Mode::Fallback { quiet_until, .. } => Mode::Fallback {
                    next_probe: now,
                    quiet_until,
                },
                other => other,
            }),
        })
    }

    pub(super) fn fallback_admit(&self, api: Api, now: Instant) -> Admission {
        {
            let mode = lock(&self.live.mode);
            match &*mode {
                Mode::Returning => return Admission::NotBefore(now + RETURNING_RETRY),
                // Quarantined: wake for the probe too, Redis may be back sooner.
                Mode::Fallback {
                    next_probe,
                    quiet_until,
                } if now < *quiet_until => {
                    return Admission::NotBefore((*quiet_until).min(*next_probe));
                }
                // Counted under the lock, so no call is admitted before the excess is in.
                Mode::Fallback { quiet_until, .. }
                    if self.live.excess_pending.swap(false, Ordering::AcqRel) =>
                {
                    self.count_others_excess(now, *quiet_until);
                }
                _ => {}
            }
        }
        let admission = self.fallback.try_admit(api, now);
        if admission == Admission::Admitted {
            let member = self.replay.next_member();
            self.replay.remember_own(api, now, member);
        }
        admission
    }

    /// The fallback's estimate, not before the quarantine ends.
    pub(super) fn fallback_estimate(&self, api: Api, now: Instant, ahead: usize) -> Instant {
        let at = self.fallback.estimate(api, now, ahead);
        match &*lock(&self.live.mode) {
            Mode::Fallback { quiet_until, .. } => at.max(*quiet_until),
            _ => at,
        }
    }

    pub(super) fn enter_fallback(&self, now: Instant, err: &SharedError) {
        let mut mode = lock(&self.live.mode);
        let sent = *lock(&self.live.alive_sent);
        let mut quiet = quiet_after(sent, self.config.timeout, now);
        if let Mode::Fallback { quiet_until, .. } = &*mode {
            quiet = quiet.max(*quiet_until);
        }
        let was = std::mem::replace(
            &mut *mode,
            Mode::Fallback {
                next_probe: now + PROBE_INTERVAL,
                quiet_until: quiet,
            },
        );
        if matches!(was, Mode::Shared) {
            self.live.excess_pending.store(true, Ordering::Release);
            drop(mode);
            self.metrics.set_quota_fallback(true);
            tracing::warn!(
                error = %err,
                replicas = self.config.replicas,
                quarantine_ms = u64::try_from(quiet.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX),
                "Redis is unreachable: falling back to this replica's share of the quota \
                 once the other replicas can have noticed"
            );
        }
        // A broken connection is rebuilt on the next probe.
        self.redis.forget();
    }

    /// At the end of a fallback's quarantine (`quiet_until`), before this replica admits on
    /// its own: until then the others could count it present and spend more than their
    /// shares. For each window, the others' calls are bounded by what they had made when Redis
    /// last answered, plus what they can have made since ([`others_since`]), and by the
    /// limit. This replica's share is reduced by what that exceeds their shares, recorded as
    /// calls made now, so it counts until every call the others made meanwhile has left the
    /// window. An API Redis never answered about counts as fully used: the others may have
    /// spent this replica's share (it was present), or never knew of it (it never reached
    /// Redis, so they held nothing back for it). Alone by configuration (one replica), a replica
    /// that never reached Redis has its whole share.
    fn count_others_excess(&self, now: Instant, quiet_until: Instant) {
        let replicas = self.config.replicas.max(1);
        let last_seen = lock(&self.last_seen).clone();
        let was_present = lock(&self.live.alive_sent).is_some();
        for (&api, limits) in &self.limits.per_api {
            let seen = last_seen.get(&api);
            let since = seen.map_or(0, |seen| {
                let span = quiet_until.saturating_duration_since(seen.at);
                others_since(limits, &seen.recent, span, self.gap)
            });
            let own = lock(&self.replay.own);
            let excess = limits
                .iter()
                .enumerate()
                .map(|(j, limit)| {
                    let others_share = limit.calls - limit.calls / replicas;
                    // Nothing known: the others may have used all of it. A replica that never
                    // reached Redis is no member of theirs, so no share was kept for it either.
                    let Some(seen) = seen else {
                        return if was_present || replicas > 1 {
                            limit.calls - others_share
                        } else {
                            0
                        };
                    };
                    let used = seen.used.get(j).copied().unwrap_or(limit.calls);
                    let mine = own
                        .iter()
                        .filter(|o| o.api == api && o.at + limit.window > seen.at)
                        .count();
                    let mine = u32::try_from(mine).unwrap_or(u32::MAX);
                    let others = used
                        .saturating_sub(mine)
                        .saturating_add(since)
                        .min(limit.calls);
                    others.saturating_sub(others_share)
                })
                .max()
                .unwrap_or(0);
            drop(own);
            for _ in 0..excess {
                self.fallback.record(api, now);
            }
            if excess > 0 {
                tracing::info!(
                    %api,
                    excess,
                    "other replicas may be above their share; this replica's share is reduced"
                );
            }
        }
    }

    pub(super) fn back_to_shared(&self) {
        self.live.back_to_shared(&self.metrics);
    }
}

/// Remembers `seen` for `api` unless something newer is known already.
pub(super) fn note_seen(last_seen: &Mutex<HashMap<Api, Seen>>, api: Api, seen: Seen) {
    let mut last_seen = lock(last_seen);
    if last_seen.get(&api).is_none_or(|old| old.at <= seen.at) {
        last_seen.insert(api, seen);
    }
}

/// The most calls the other replicas can have admitted on an API (with `limits`) in the `span`
/// since Redis counted `recent` calls per limit in each window's latest (window - `gap`).
/// Every limit bounds the same calls, so the tightest one counts: a window longer than `gap`
/// held its `recent` calls then, leaving room for at most the rest (while `span` is within
/// `gap`); any limit allows at most its calls per window that `span` covers.
fn others_since(limits: &[Limit], recent: &[u32], span: Duration, gap: Duration) -> u32 {
    limits
        .iter()
        .enumerate()
        .map(|(j, limit)| match recent.get(j) {
            Some(&recent) if span <= gap && limit.window > gap => {
                limit.calls - recent.min(limit.calls)
            }
            _ => {
                let windows = (span.as_secs_f64() / limit.window.as_secs_f64().max(1e-6))
                    .ceil()
                    .clamp(1.0, f64::from(u32::MAX));
                // Saturates: a span of many windows allows any number of calls.
                limit.calls.saturating_mul(windows as u32)
            }
        })
        .min()
        .unwrap_or(u32::MAX)
}

/// When an alive key last refreshed by a request sent at `sent` has surely expired: that
/// request may reach Redis up to the timeout later, and the key then lives [`ALIVE_TTL`].
/// With nothing ever sent there is no key to wait for.
pub(super) fn quiet_after(sent: Option<Instant>, timeout: Duration, now: Instant) -> Instant {
    sent.map_or(now, |sent| {
        (sent + timeout + ALIVE_TTL + QUIET_SLACK).max(now)
    })
}

#[cfg(test)]
mod tests {
    // The liveness rules; the scripts themselves run against a real redis-server in
    // tests/shared_quota.

    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 3_600_000;

    fn limits(pairs: &[(u32, u64)]) -> Vec<Limit> {
        pairs
            .iter()
            .map(|&(calls, millis)| Limit {
                calls,
                window: Duration::from_millis(millis),
            })
            .collect()
    }

    #[test]
    fn a_quarantine_lasts_until_the_last_alive_refresh_has_surely_expired() {
        let now = Instant::now();
        let timeout = Duration::from_millis(250);
        // Never sent: no alive key to wait for.
        assert_eq!(quiet_after(None, timeout, now), now);
        // Sent just now: it may reach Redis a timeout later and then live a whole TTL.
        let quiet = quiet_after(Some(now), timeout, now);
        assert!(quiet >= now + timeout + ALIVE_TTL, "{:?}", quiet - now);
        assert!(quiet <= now + timeout + ALIVE_TTL + Duration::from_millis(500));
        // Sent long ago: expired already.
        let later = now + ALIVE_TTL * 10;
        assert_eq!(quiet_after(Some(now), timeout, later), later);
    }

    #[test]
    fn the_calls_others_can_make_unseen_are_bounded_by_the_tightest_limit() {
        let defender = limits(&[(100, MIN), (1500, HOUR)]);
        let gap = Duration::from_millis(3600);
        // A fresh answer: the minute's room bounds it, not the hour's.
        let fresh = others_since(&defender, &[40, 300], Duration::from_secs(3), gap);
        assert_eq!(fresh, 60);
        // A stale answer: ten minutes allow ten minutes' worth, capped by the hour.
        let stale = others_since(&defender, &[40, 300], Duration::from_secs(600), gap);
        assert_eq!(stale, 1000);
        // A window shorter than the gap says nothing recent: its calls per window spanned.
        let short = limits(&[(10, 1000)]);
        let spanned = others_since(&short, &[5], Duration::from_millis(2500), gap);
        assert_eq!(spanned, 30);
    }
}
