//! Machine actions: creation, the lazily computed lifecycle and cancellation (JSON in `view.rs`).
//!
//! An action stores its planned transitions (`Pending` at creation, `InProgress` after the
//! pending time, the final status after the scan time) and its status is read off the clock on
//! every request. No background task exists, so paused-clock tests drive the whole lifecycle
//! with `tokio::time::advance`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use super::config::SimulatorConfig;
use super::inventory::Machine;
use super::rng::Rng;
use super::timestamp;

/// Oldest actions are forgotten beyond this, so a long load test cannot exhaust memory.
const MAX_ACTIONS: usize = 100_000;

/// The documented action statuses (`Cancelled` with two l's, as the service spells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionStatus {
    /// Queued; the device has not picked it up yet.
    Pending,
    /// The device is running it.
    InProgress,
    /// Finished without error.
    Succeeded,
    /// Finished with an error (`errorHResult` set).
    Failed,
    /// Never completed in time, e.g. the device stayed offline.
    TimeOut,
    /// Cancelled through the API before it finished.
    Cancelled,
}

impl ActionStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::TimeOut => "TimeOut",
            Self::Cancelled => "Cancelled",
        }
    }

    /// `Succeeded`, `Failed`, `TimeOut` and `Cancelled` never change again.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress)
    }
}

impl fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ActionStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `ScanType` of the request, which becomes the action's `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanType {
    Quick,
    Full,
}

impl ScanType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Quick => "Quick",
            Self::Full => "Full",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Cancellation {
    pub(crate) requestor: String,
    pub(crate) comment: Option<String>,
    pub(crate) at: OffsetDateTime,
}

/// One stored action.
#[derive(Debug, Clone)]
pub(crate) struct Action {
    pub(crate) id: String,
    pub(crate) kind: &'static str,
    pub(crate) scope: Option<&'static str>,
    pub(crate) requestor: String,
    pub(crate) comment: Option<String>,
    pub(crate) machine_id: String,
    pub(crate) computer_dns_name: String,
    pub(crate) created: OffsetDateTime,
    /// Ascending; the first is `(created, Pending)`.
    pub(crate) transitions: Vec<(OffsetDateTime, ActionStatus)>,
    pub(crate) cancellation: Option<Cancellation>,
}

fn after(at: OffsetDateTime, d: Duration) -> Option<OffsetDateTime> {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| at.checked_add(d))
}

impl Action {
    /// Status and time of the latest transition that has happened by `now`.
    pub(crate) fn state_at(&self, now: OffsetDateTime) -> (ActionStatus, OffsetDateTime) {
        self.transitions
            .iter()
            .rev()
            .find(|(at, _)| *at <= now)
            .map_or((ActionStatus::Pending, self.created), |&(at, s)| (s, at))
    }

    /// Replaces whatever was still planned with `status` at `now`.
    fn end_at(&mut self, now: OffsetDateTime, status: ActionStatus) {
        self.transitions.retain(|(at, _)| *at <= now);
        self.transitions.push((now, status));
    }
}

/// Why a cancel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelError {
    NotFound,
    AlreadyFinal,
}

/// All actions, oldest first, plus the newest scan per device for duplicate detection.
#[derive(Debug)]
pub(crate) struct ActionStore {
    by_id: HashMap<String, Action>,
    order: VecDeque<String>,
    latest_scan: HashMap<String, String>,
    rng: Rng,
    duplicates: u64,
}

impl ActionStore {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            latest_scan: HashMap::new(),
            rng: Rng::stream(seed, "actions"),
            duplicates: 0,
        }
    }

    /// Adds an action, which must be newer than every stored one.
    pub(crate) fn insert(&mut self, action: Action) {
        if self.order.len() >= MAX_ACTIONS {
            if let Some(old) = self.order.pop_front().and_then(|id| self.by_id.remove(&id)) {
                if self.latest_scan.get(&old.machine_id) == Some(&old.id) {
                    self.latest_scan.remove(&old.machine_id);
                }
            }
        }
        if action.kind == "RunAntiVirusScan" {
            self.latest_scan
                .insert(action.machine_id.clone(), action.id.clone());
        }
        self.order.push_back(action.id.clone());
        self.by_id.insert(action.id.clone(), action);
    }

    /// The device's scan that is still `Pending` or `InProgress`, if any.
    pub(crate) fn active_scan(&self, machine_id: &str, now: OffsetDateTime) -> Option<&Action> {
        let id = self.latest_scan.get(machine_id)?;
        self.by_id.get(id).filter(|a| !a.state_at(now).0.is_final())
    }

    /// For `DuplicateMode::Alternate`: true on the 1st, 3rd, 5th... duplicate.
    pub(crate) fn alternate_duplicate_is_error(&mut self) -> bool {
        self.duplicates += 1;
        self.duplicates % 2 == 1
    }

    /// Creates a scan, choosing its final status now with the seeded outcome stream.
    pub(crate) fn create_scan(
        &mut self,
        machine: &Machine,
        scan: ScanType,
        comment: String,
        now: OffsetDateTime,
        config: &SimulatorConfig,
    ) -> String {
        let created = timestamp::to_tick(now);
        let id = self.rng.guid();
        let (failed, timed_out) = config.outcome_shares();
        let roll = self.rng.next_f64();
        let mut transitions = vec![(created, ActionStatus::Pending)];
        if machine.online {
            let running = match scan {
                ScanType::Quick => config.quick_scan_duration,
                ScanType::Full => config.full_scan_duration,
            };
            let outcome = if roll < failed {
                ActionStatus::Failed
            } else if roll < failed + timed_out {
                ActionStatus::TimeOut
            } else {
                ActionStatus::Succeeded
            };
            // A transition beyond the representable range simply never happens.
            let started = after(created, config.pending_duration);
            transitions.extend(started.map(|t| (t, ActionStatus::InProgress)));
            let finished = started.and_then(|t| after(t, running));
            transitions.extend(finished.map(|t| (t, outcome)));
        } else {
            let timeout = after(created, config.offline_timeout);
            transitions.extend(timeout.map(|t| (t, ActionStatus::TimeOut)));
        }
        self.insert(Action {
            id: id.clone(),
            kind: "RunAntiVirusScan",
            scope: Some(scan.as_str()),
            requestor: config.app_name.clone(),
            comment: Some(comment),
            machine_id: machine.id.clone(),
            computer_dns_name: machine.computer_dns_name.clone(),
            created,
            transitions,
            cancellation: None,
        });
        id
    }

    /// Starts an analyst's action of another type (`Isolate`, `LiveResponse`, ...) on
    /// `machine`: it stays `InProgress` until finished or cancelled, as a real isolation
    /// does until it is released.
    pub(crate) fn create_other(
        &mut self,
        machine: &Machine,
        kind: &'static str,
        now: OffsetDateTime,
    ) -> String {
        let created = timestamp::to_tick(now);
        let id = self.rng.guid();
        self.insert(Action {
            id: id.clone(),
            kind,
            scope: None,
            requestor: "analyst@contoso.com".to_owned(),
            comment: Some(format!("{kind} started by an analyst")),
            machine_id: machine.id.clone(),
            computer_dns_name: machine.computer_dns_name.clone(),
            created,
            transitions: vec![
                (created, ActionStatus::Pending),
                (created, ActionStatus::InProgress),
            ],
            cancellation: None,
        });
        id
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Action> {
        self.by_id.get(id)
    }

    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &Action> {
        self.order.iter().rev().filter_map(|id| self.by_id.get(id))
    }

    /// Cancels an action that is not final yet; the same action becomes `Cancelled`.
    pub(crate) fn cancel(
        &mut self,
        id: &str,
        now: OffsetDateTime,
        requestor: &str,
        comment: Option<String>,
    ) -> Result<&Action, CancelError> {
        let action = self.by_id.get_mut(id).ok_or(CancelError::NotFound)?;
        if action.state_at(now).0.is_final() {
            return Err(CancelError::AlreadyFinal);
        }
        let at = timestamp::to_tick(now);
        action.end_at(at, ActionStatus::Cancelled);
        action.cancellation = Some(Cancellation {
            requestor: requestor.to_owned(),
            comment,
            at,
        });
        Ok(action)
    }

    /// Forces a not-yet-final action into the final `status` now (tests, demos).
    pub(crate) fn finish(&mut self, id: &str, now: OffsetDateTime, status: ActionStatus) -> bool {
        match self.by_id.get_mut(id) {
            Some(a) if status.is_final() && !a.state_at(now).0.is_final() => {
                a.end_at(timestamp::to_tick(now), status);
                true
            }
            _ => false,
        }
    }
}
