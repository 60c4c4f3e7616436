//! [`SimulatorHandle`]: what a running simulator tells and lets you change, for the CLI banner,
//! `serve --simulate` and tests.

use super::actions::ActionStatus;
use super::faults::Faults;
use super::inventory::Machine;
use super::jwt::Signer;
use super::state::SimState;
use super::stats::Stats;
use super::traceparents::SeenTraceparent;

/// A cheap, cloneable view of a simulator's state; usable while it serves.
#[derive(Debug, Clone)]
pub struct SimulatorHandle {
    state: SimState,
}

impl SimState {
    /// A handle on this state.
    pub fn handle(&self) -> SimulatorHandle {
        SimulatorHandle {
            state: self.clone(),
        }
    }
}

impl SimulatorHandle {
    /// The inventory, in generation order.
    pub fn machines(&self) -> Vec<Machine> {
        self.state.inventory().all().to_vec()
    }

    /// Up to `n` healthy, online devices that support scans (for a banner or a first call).
    pub fn demo_machine_ids(&self, n: usize) -> Vec<String> {
        self.state
            .inventory()
            .all()
            .iter()
            .filter(|m| m.online && m.supports_scan && m.health_status == "Active")
            .take(n)
            .map(|m| m.id.clone())
            .collect()
    }

    /// A device whose OS can't scan: `runAntiVirusScan` answers 400 `OsPlatformNotSupported`.
    pub fn unsupported_machine_id(&self) -> Option<String> {
        let all = self.state.inventory().all();
        all.iter().find(|m| !m.supports_scan).map(|m| m.id.clone())
    }

    /// An offline device: its scans stay `Pending`, then end `TimeOut`.
    pub fn offline_machine_id(&self) -> Option<String> {
        let all = self.state.inventory().all();
        all.iter()
            .find(|m| !m.online && m.supports_scan)
            .map(|m| m.id.clone())
    }

    /// Requests received per endpoint (rejected ones included), tokens issued, and more.
    pub fn stats(&self) -> Stats {
        self.state.counters().snapshot()
    }

    /// The W3C `traceparent` headers of the last Defender API requests (at most 256), oldest
    /// first.
    pub fn traceparents(&self) -> Vec<SeenTraceparent> {
        self.state.traceparents().all()
    }

    /// Replaces the fault settings; takes effect for the next request.
    pub fn set_faults(&self, faults: Faults) {
        self.state.faults().set(faults);
    }

    /// Invalidates every issued token: the next Defender call with one gets 401. The signing
    /// key is replaced (the keys endpoint then publishes the new one).
    pub fn revoke_tokens(&self) {
        *self.state.signer() = Signer::generate();
    }

    /// Starts an analyst's action of another type than a scan (`Isolate`, `LiveResponse`,
    /// ...) on a machine; it stays `InProgress`. Returns its id, or `None` for an unknown
    /// machine.
    pub fn start_other_action(&self, machine_id: &str, kind: &'static str) -> Option<String> {
        let now = self.state.clock().utc();
        let machine = self
            .state
            .inventory()
            .get(&machine_id.to_ascii_lowercase())?;
        Some(self.state.actions().create_other(machine, kind, now))
    }

    /// The current status of an action, if it exists.
    pub fn action_status(&self, action_id: &str) -> Option<ActionStatus> {
        let now = self.state.clock().utc();
        let id = action_id.to_ascii_lowercase();
        self.state.actions().get(&id).map(|a| a.state_at(now).0)
    }

    /// Ends a `Pending`/`InProgress` action now with the final `status` (`Succeeded`,
    /// `Failed` or `TimeOut`; `Cancelled` without cancellation details). Returns false if the
    /// action is unknown or already final, or `status` is not final.
    pub fn finish_action(&self, action_id: &str, status: ActionStatus) -> bool {
        let now = self.state.clock().utc();
        let id = action_id.to_ascii_lowercase();
        self.state.actions().finish(&id, now, status)
    }
}
