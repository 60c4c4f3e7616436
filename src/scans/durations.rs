//! How long scans take here: the basis of "an end in sight" when a request is refused because
//! a less thorough scan runs (`RetryInfo` on `WEAKER_SCAN_RUNNING`). Defender gives no estimate
//! of its own, so the gateway keeps the durations of the last scans it saw succeed, per scope,
//! and expects a running scan to take their median.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use time::OffsetDateTime;

use crate::domain::{ActionStatus, MachineAction};

/// Scans remembered per scope.
const SAMPLES: usize = 32;
/// Fewer than this and nothing is expected.
const MIN_SAMPLES: usize = 3;

/// The last durations (creation to last update) of succeeded scans, per scope.
#[derive(Default)]
pub struct ScanDurations(Mutex<HashMap<String, VecDeque<Duration>>>);

impl ScanDurations {
    /// Remembers `action`'s duration if it is a scan that succeeded.
    pub fn record(&self, action: &MachineAction) {
        let (ActionStatus::Succeeded, Some(scope), Some(created), Some(updated)) = (
            &action.status,
            &action.scope,
            action.creation_time,
            action.last_update_time,
        ) else {
            return;
        };
        let Ok(took) = Duration::try_from(updated - created) else {
            return;
        };
        let mut durations = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let samples = durations.entry(scope.clone()).or_default();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(took);
    }

    /// How long until `running` likely ends, at `now`: the median of its scope's durations less
    /// its age. None while it is pending (the device has not picked it up: it may be offline for
    /// days), without enough samples, or once it is past the median (no end in sight).
    pub fn expected_end_in(
        &self,
        running: &MachineAction,
        now: OffsetDateTime,
    ) -> Option<Duration> {
        if running.status != ActionStatus::InProgress {
            return None;
        }
        let created = running.creation_time?;
        let durations = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let samples = durations.get(running.scope.as_deref()?)?;
        if samples.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<Duration> = samples.iter().copied().collect();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let age = Duration::try_from(now - created).unwrap_or_default();
        median.checked_sub(age).filter(|left| !left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(status: ActionStatus, scope: &str, created: i64, updated: i64) -> MachineAction {
        MachineAction {
            id: "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37".into(),
            action_type: "RunAntiVirusScan".into(),
            scope: Some(scope.into()),
            status,
            machine_id: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07".into(),
            computer_dns_name: None,
            requestor: None,
            requestor_comment: None,
            creation_time: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(created)),
            last_update_time: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(updated)),
            cancellation_requestor: None,
            cancellation_comment: None,
            cancellation_time: None,
            title: None,
            external_id: None,
        }
    }

    #[test]
    fn a_running_scan_is_expected_to_take_the_median_of_its_scope() {
        let durations = ScanDurations::default();
        let at = |s: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(s);
        let running = scan(ActionStatus::InProgress, "Quick", 1000, 1010);
        durations.record(&scan(ActionStatus::Succeeded, "Quick", 0, 100));
        durations.record(&scan(ActionStatus::Succeeded, "Quick", 0, 300));
        assert_eq!(
            durations.expected_end_in(&running, at(1050)),
            None,
            "2 samples"
        );
        // Failed scans and other scopes say nothing about Quick scans that succeed.
        durations.record(&scan(ActionStatus::Failed, "Quick", 0, 5));
        durations.record(&scan(ActionStatus::Succeeded, "Full", 0, 5000));
        durations.record(&scan(ActionStatus::Succeeded, "Quick", 0, 200));
        // Median 200 s; 50 s old: 150 s left.
        assert_eq!(
            durations.expected_end_in(&running, at(1050)),
            Some(Duration::from_secs(150))
        );
        assert_eq!(
            durations.expected_end_in(&running, at(1250)),
            None,
            "overdue"
        );
        let pending = scan(ActionStatus::Pending, "Quick", 1000, 1000);
        assert_eq!(
            durations.expected_end_in(&pending, at(1050)),
            None,
            "pending"
        );
    }
}
