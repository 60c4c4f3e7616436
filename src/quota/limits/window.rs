//! A sliding-window log: the admission times that still matter, and the earliest moment one
//! more call fits every (calls, window) limit. No window of length `window`, wherever it
//! starts, ever holds more than `calls` admissions.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::Limit;

/// The admissions of one bucket (an API, or the optional overall cap).
#[derive(Debug, Clone)]
pub struct Window {
    limits: Vec<Limit>,
    /// Admission times, oldest first; only as many as the largest limit needs.
    admitted: VecDeque<Instant>,
}

impl Window {
    pub fn new(limits: Vec<Limit>) -> Self {
        Self {
            limits,
            admitted: VecDeque::new(),
        }
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The earliest instant, not before `now`, at which one more call fits every limit.
    ///
    /// For a limit of `n` calls per `w`, a call at `t` fits when fewer than `n` admissions lie
    /// in `(t - w, t]`, that is, when the n-th most recent admission is at or before `t - w`.
    /// A limit of 0 calls (a share rounded down to nothing) never fits: the answer is a window
    /// away, and again a window away when asked then.
    pub fn next_free(&self, now: Instant) -> Instant {
        let mut at = now;
        for limit in &self.limits {
            let calls = limit.calls as usize;
            if calls == 0 {
                at = at.max(now + limit.window);
            } else if self.admitted.len() >= calls {
                at = at.max(self.admitted[self.admitted.len() - calls] + limit.window);
            }
        }
        at
    }

    /// Records an admission at `at` (never earlier than the previous one).
    pub fn admit(&mut self, at: Instant) {
        let at = self.admitted.back().map_or(at, |&last| at.max(last));
        self.admitted.push_back(at);
        self.trim();
    }

    /// Moves the admission at `from` to `to` (later): the call counts from then. An admission
    /// already dropped (older than the largest limit needs) is counted anew.
    pub fn restamp(&mut self, from: Instant, to: Instant) {
        let at = self.admitted.partition_point(|&t| t < from);
        if self.admitted.get(at) == Some(&from) {
            self.admitted.remove(at);
        }
        let to = to.max(from);
        let at = self.admitted.partition_point(|&t| t <= to);
        self.admitted.insert(at, to);
        self.trim();
    }

    /// Keeps only as many admissions as the largest limit needs.
    fn trim(&mut self) {
        let keep = self
            .limits
            .iter()
            .map(|l| l.calls as usize)
            .max()
            .unwrap_or(0);
        while self.admitted.len() > keep {
            self.admitted.pop_front();
        }
    }

    /// Calls still allowed now, per limit (same order as the limits).
    pub fn remaining(&self, now: Instant) -> Vec<u32> {
        self.limits
            .iter()
            .map(|limit| {
                // Admissions are in order, so the ones still in the window are a suffix: a
                // binary search, not a walk over up to the largest limit's worth of them.
                let used = self.admitted.len()
                    - self.admitted.partition_point(|&t| t + limit.window <= now);
                limit
                    .calls
                    .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX))
            })
            .collect()
    }

    /// Admission times in the last `horizon` (to hand over to another store).
    pub fn recent(&self, now: Instant, horizon: std::time::Duration) -> Vec<Instant> {
        self.admitted
            .iter()
            .copied()
            .filter(|&t| t + horizon > now)
            .collect()
    }
}

/// When the `ahead + 1`-th call would start if the `ahead` calls before it are each admitted
/// as early as every bucket allows. `paused_until` delays everything.
pub fn estimate(
    buckets: &[&Window],
    now: Instant,
    ahead: usize,
    paused_until: Option<Instant>,
) -> Instant {
    let start = paused_until.map_or(now, |p| p.max(now));
    let first = buckets
        .iter()
        .fold(start, |at, w| at.max(w.next_free(start)));
    if ahead == 0 {
        // Nobody queued (every call that needs no wait): no copy of the admission log, which
        // holds as many entries as the largest limit allows.
        return first;
    }
    let mut future: Vec<Window> = buckets.iter().map(|w| (*w).clone()).collect();
    let next = |future: &[Window], from: Instant| {
        future.iter().fold(from, |at, w| at.max(w.next_free(from)))
    };
    let mut at = first;
    for _ in 0..ahead {
        for w in &mut future {
            w.admit(at);
        }
        at = next(&future, at);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(pairs: &[(u32, u64)]) -> Vec<Limit> {
        pairs
            .iter()
            .map(|&(calls, secs)| Limit {
                calls,
                window: Duration::from_secs(secs),
            })
            .collect()
    }

    #[test]
    fn a_full_window_frees_exactly_one_window_after_its_oldest_call() {
        let t0 = Instant::now();
        let mut w = Window::new(limits(&[(2, 10)]));
        w.admit(t0);
        w.admit(t0 + Duration::from_secs(3));
        assert_eq!(
            w.next_free(t0 + Duration::from_secs(4)),
            t0 + Duration::from_secs(10)
        );
        assert_eq!(w.remaining(t0 + Duration::from_secs(4)), [0]);
        assert_eq!(w.remaining(t0 + Duration::from_secs(10)), [1]);
        assert_eq!(w.remaining(t0 + Duration::from_secs(13)), [2]);
    }

    #[test]
    fn a_limit_of_no_calls_admits_nothing_ever() {
        let t0 = Instant::now();
        let w = Window::new(limits(&[(0, 10), (5, 100)]));
        assert_eq!(w.next_free(t0), t0 + Duration::from_secs(10));
        let later = t0 + Duration::from_secs(1000);
        assert_eq!(w.next_free(later), later + Duration::from_secs(10));
        assert_eq!(w.remaining(t0), [0, 5]);
    }

    #[test]
    fn a_restamped_admission_counts_from_its_new_time() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut w = Window::new(limits(&[(2, 10)]));
        w.admit(t0);
        w.admit(t0 + secs(1));
        assert_eq!(w.next_free(t0 + secs(2)), t0 + secs(10));
        // The first call reached upstream only at 4 s: the window frees at 11 s, then 14 s.
        w.restamp(t0, t0 + secs(4));
        assert_eq!(w.next_free(t0 + secs(5)), t0 + secs(11));
        assert_eq!(w.remaining(t0 + secs(12)), [1]);
        assert_eq!(w.remaining(t0 + secs(14)), [2]);
    }

    #[test]
    fn estimates_follow_every_limit() {
        let t0 = Instant::now();
        let w = Window::new(limits(&[(2, 10), (3, 100)]));
        // Two now, the third at 10 s, the fourth must wait for the 100 s window.
        assert_eq!(estimate(&[&w], t0, 0, None), t0);
        assert_eq!(estimate(&[&w], t0, 2, None), t0 + Duration::from_secs(10));
        assert_eq!(estimate(&[&w], t0, 3, None), t0 + Duration::from_secs(100));
        let paused = t0 + Duration::from_secs(5);
        assert_eq!(estimate(&[&w], t0, 0, Some(paused)), paused);
    }
}
