//! The one source of time for everything that waits or expires (quota, tokens, polling, the
//! simulator's action lifecycle).
//!
//! It reads tokio's clock, so a test that calls `tokio::time::pause()` and `advance()` moves
//! every deadline and every timestamp together without sleeping. Wall-clock time is derived
//! from the monotonic clock and one reading of the system clock taken at construction, so the
//! two never disagree inside one process.
//!
//! A crate of its own so the gateway and the simulator share one `Clock` type (a test runs
//! both on one paused clock) without either depending on the other.
#![forbid(unsafe_code)]

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use tokio::time::Instant;

/// A monotonic clock with a matching UTC reading. Cheap to clone.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_utc: SystemTime,
}

impl Clock {
    /// A clock anchored at the current system time.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one reading of the system clock"
    )]
    pub fn system() -> Self {
        Self::starting_at(SystemTime::now())
    }

    /// A clock whose UTC reading starts at `utc` (tests use fixed dates).
    pub fn starting_at(utc: SystemTime) -> Self {
        Self {
            origin: Instant::now(),
            origin_utc: utc,
        }
    }

    /// Monotonic now; use it for deadlines and elapsed time.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// UTC now, consistent with [`Clock::now`].
    pub fn utc(&self) -> OffsetDateTime {
        OffsetDateTime::from(self.system_time_at(self.now()))
    }

    /// The UTC time that corresponds to a monotonic instant.
    pub fn utc_at(&self, instant: Instant) -> OffsetDateTime {
        OffsetDateTime::from(self.system_time_at(instant))
    }

    fn system_time_at(&self, instant: Instant) -> SystemTime {
        match instant.checked_duration_since(self.origin) {
            Some(ahead) => self.origin_utc + ahead,
            None => self.origin_utc - self.origin.duration_since(instant),
        }
    }

    /// Sleeps until `deadline` on tokio's (pausable) clock.
    pub async fn sleep_until(&self, deadline: Instant) {
        tokio::time::sleep_until(deadline).await;
    }

    /// Sleeps for `duration` on tokio's (pausable) clock.
    pub async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn utc_follows_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = Clock::starting_at(start);
        let before = clock.utc();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.utc() - before, time::Duration::seconds(90));
        assert_eq!(OffsetDateTime::from(start), before);
    }
}
