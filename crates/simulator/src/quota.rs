//! Defender's per-API call quota as a true sliding window.
//!
//! For every `(limit, window)` rule, no span of `window` may contain more than `limit` admitted
//! calls of one API by one client (limits apply per application + tenant). The timestamps of
//! admitted calls are kept, oldest first, so the answer is exact rather than bucketed, and the
//! `Retry-After` is the time until the oldest call leaves the window. Refused calls are not
//! recorded, so a client that keeps retrying early does not extend its own ban.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::stats::Endpoint;

#[derive(Debug)]
pub(crate) struct Quota {
    rules: Vec<(u32, Duration)>,
    /// One deque per rule, per (API, client).
    admitted: HashMap<(Endpoint, String), Vec<VecDeque<Instant>>>,
}

impl Quota {
    pub(crate) fn new(rules: Vec<(u32, Duration)>) -> Self {
        Self {
            rules,
            admitted: HashMap::new(),
        }
    }

    /// Admits and records the call, or returns how long until it would be admitted.
    pub(crate) fn admit(
        &mut self,
        api: Endpoint,
        client: &str,
        now: Instant,
    ) -> Result<(), Duration> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let rules = &self.rules;
        let windows = self
            .admitted
            .entry((api, client.to_owned()))
            .or_insert_with(|| vec![VecDeque::new(); rules.len()]);
        let mut wait = Duration::ZERO;
        for (calls, &(limit, window)) in windows.iter_mut().zip(rules) {
            while calls
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) >= window)
            {
                calls.pop_front();
            }
            if calls.len() >= limit as usize {
                // The call that must leave before this one fits (`len >= limit`, so no
                // underflow); with a zero limit nothing is ever recorded: a whole window.
                let blocking = calls.len() - limit as usize;
                let until = match calls.get(blocking) {
                    Some(&t) if limit > 0 => {
                        window.saturating_sub(now.saturating_duration_since(t))
                    }
                    _ => window,
                };
                wait = wait.max(until);
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for calls in windows.iter_mut() {
            calls.push_back(now);
        }
        Ok(())
    }
}

/// `Retry-After` seconds: rounded up, never 0 (a client told 0 would retry at once).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute_and_hour() -> Quota {
        Quota::new(vec![
            (100, Duration::from_secs(60)),
            (1500, Duration::from_secs(3600)),
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn the_101st_call_in_a_minute_waits_for_the_first_to_leave() {
        let mut quota = minute_and_hour();
        let start = Instant::now();
        for i in 0..100 {
            assert_eq!(
                quota.admit(Endpoint::RunScan, "app", Instant::now()),
                Ok(()),
                "call {i}"
            );
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // 10 s have passed; the first call leaves the window at 60 s.
        let wait = quota
            .admit(Endpoint::RunScan, "app", Instant::now())
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(retry_after_secs(wait), 50);
        // Other APIs and other clients have their own budget.
        assert_eq!(
            quota.admit(Endpoint::GetAction, "app", Instant::now()),
            Ok(())
        );
        assert_eq!(
            quota.admit(Endpoint::RunScan, "other", Instant::now()),
            Ok(())
        );
        tokio::time::advance(Duration::from_millis(49_999)).await;
        assert!(
            quota
                .admit(Endpoint::RunScan, "app", Instant::now())
                .is_err()
        );
        tokio::time::advance(start + Duration::from_secs(60) - Instant::now()).await;
        assert_eq!(
            quota.admit(Endpoint::RunScan, "app", Instant::now()),
            Ok(())
        );
        // Only one slot opened.
        assert!(
            quota
                .admit(Endpoint::RunScan, "app", Instant::now())
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hourly_limit_applies_across_minutes() {
        let mut quota = Quota::new(vec![
            (3, Duration::from_secs(60)),
            (4, Duration::from_secs(3600)),
        ]);
        for _ in 0..3 {
            assert!(quota.admit(Endpoint::Cancel, "app", Instant::now()).is_ok());
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(quota.admit(Endpoint::Cancel, "app", Instant::now()).is_ok());
        let wait = quota
            .admit(Endpoint::Cancel, "app", Instant::now())
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(3540));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_calls_are_not_recorded_and_zero_limits_refuse() {
        let mut quota = Quota::new(vec![(1, Duration::from_secs(10))]);
        assert!(
            quota
                .admit(Endpoint::ListActions, "app", Instant::now())
                .is_ok()
        );
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(
                quota
                    .admit(Endpoint::ListActions, "app", Instant::now())
                    .is_err()
            );
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(
            quota
                .admit(Endpoint::ListActions, "app", Instant::now())
                .is_ok()
        );
        let mut closed = Quota::new(vec![(0, Duration::from_secs(10))]);
        assert_eq!(
            closed.admit(Endpoint::RunScan, "app", Instant::now()),
            Err(Duration::from_secs(10))
        );
        assert!(
            Quota::new(vec![])
                .admit(Endpoint::RunScan, "app", Instant::now())
                .is_ok()
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(36_001)), 37);
        assert_eq!(retry_after_secs(Duration::from_secs(37)), 37);
    }
}
