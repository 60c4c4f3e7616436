//! Simulator settings: timings, outcome shares, credentials, quota and faults.
//!
//! Two presets: [`SimulatorConfig::standalone`] behaves like a real tenant (scans take minutes),
//! [`SimulatorConfig::demo`] finishes a quick scan in about ten seconds for a live demo.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use secrecy::SecretString;

use super::faults::Faults;
use super::roles;

/// What the simulator answers when a scan is requested for a device that already has one
/// pending or running. Real MDE does both (microsoft-365-docs#5907), so clients must cope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DuplicateMode {
    /// 400 `ActiveRequestAlreadyExists` "Action is already in progress".
    #[default]
    Error,
    /// 201 with the existing, still running action (same id).
    ReturnExisting,
    /// Error and ReturnExisting in turn, starting with Error.
    Alternate,
}

/// Everything that shapes the simulated tenant. `Debug` redacts the client secret.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Seed for the inventory, action ids, scan outcomes and fault rolls.
    pub seed: u64,
    /// Seed for the action ids (and their outcomes) alone, when they must differ from run
    /// to run while the inventory stays the same: an id saved from an earlier run must not
    /// name another action. `None`: from `seed`.
    pub action_seed: Option<u64>,
    /// Number of devices in the inventory.
    pub machine_count: usize,
    /// The only tenant the token endpoint knows.
    pub tenant_id: String,
    /// The only application (client) id the token endpoint knows.
    pub client_id: String,
    /// That application's secret.
    pub client_secret: SecretString,
    /// Application display name, reported as `requestor` / `cancellationRequestor`.
    pub app_name: String,
    /// Application roles (permissions) granted to the application: its tokens' `roles`. Each
    /// Defender endpoint answers 403 "Missing application roles" without one of its own.
    pub app_roles: Vec<String>,
    /// Lifetime of issued access tokens (`expires_in`).
    pub token_lifetime: Duration,
    /// How long a new action stays `Pending` before the device picks it up.
    pub pending_duration: Duration,
    /// How long a quick scan stays `InProgress`.
    pub quick_scan_duration: Duration,
    /// How long a full scan stays `InProgress`.
    pub full_scan_duration: Duration,
    /// An offline device's action stays `Pending` this long, then becomes `TimeOut`.
    pub offline_timeout: Duration,
    /// Share (0..=1) of scans that end `Failed`.
    pub failed_share: f64,
    /// Share (0..=1) of scans that end `TimeOut`.
    pub timed_out_share: f64,
    /// Answer to a scan request while one is already active on the device.
    pub duplicate_mode: DuplicateMode,
    /// Per-API quota: every `(limit, window)` pair must hold, per API and client.
    pub quota: Vec<(u32, Duration)>,
    /// Fault injection, per endpoint.
    pub faults: Faults,
    /// The certificate registered on the application (DER): certificate client assertions
    /// must carry its thumbprint and verify against its key.
    pub client_certificate: Option<Vec<u8>>,
    /// A federated identity credential: an assertion equal to this file's current content
    /// (a projected service-account token) is accepted. Read at every token request, so a
    /// rotated file takes effect at once.
    pub federated_token_file: Option<std::path::PathBuf>,
}

/// Documented Defender limits: 100 calls per minute and 1,500 per hour, per API.
pub fn default_quota() -> Vec<(u32, Duration)> {
    vec![
        (100, Duration::from_secs(60)),
        (1500, Duration::from_secs(3600)),
    ]
}

impl SimulatorConfig {
    /// Realistic timings: pending 30 s, quick scan 3 min, full scan 20 min, a few failures.
    pub fn standalone() -> Self {
        Self {
            seed: 42,
            action_seed: None,
            machine_count: 50,
            tenant_id: "00000000-0000-0000-0000-000000000001".to_owned(),
            client_id: "11111111-1111-1111-1111-111111111111".to_owned(),
            client_secret: SecretString::from("simulator-secret"),
            app_name: "scan-gateway-simulated-app".to_owned(),
            app_roles: roles::default_roles(),
            token_lifetime: Duration::from_secs(3599),
            pending_duration: Duration::from_secs(30),
            quick_scan_duration: Duration::from_secs(3 * 60),
            full_scan_duration: Duration::from_secs(20 * 60),
            offline_timeout: Duration::from_secs(3 * 24 * 3600),
            failed_share: 0.05,
            timed_out_share: 0.02,
            duplicate_mode: DuplicateMode::Error,
            quota: default_quota(),
            faults: Faults::default(),
            client_certificate: None,
            federated_token_file: None,
        }
    }

    /// Short timings for a live demo: a quick scan ends 8 s after the request, a full one after
    /// 10 s, an offline device times out after 30 s, and every scan succeeds.
    pub fn demo() -> Self {
        Self {
            pending_duration: Duration::from_secs(2),
            quick_scan_duration: Duration::from_secs(6),
            full_scan_duration: Duration::from_secs(8),
            offline_timeout: Duration::from_secs(30),
            failed_share: 0.0,
            timed_out_share: 0.0,
            ..Self::standalone()
        }
    }

    /// The same tenant with action ids of this run's own (a random action seed), for a
    /// simulator started without an explicit seed.
    pub fn with_fresh_action_ids(self) -> Self {
        Self {
            action_seed: Some(RandomState::new().hash_one(self.seed)),
            ..self
        }
    }

    /// Shares clamped into `0..=1` (NaN counts as 0) so outcome rolls never misbehave.
    pub(crate) fn outcome_shares(&self) -> (f64, f64) {
        let clamp = |v: f64| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
        let failed = clamp(self.failed_share);
        (failed, clamp(self.timed_out_share).min(1.0 - failed))
    }
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self::standalone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_secret() {
        let text = format!("{:?}", SimulatorConfig::default());
        assert!(!text.contains("simulator-secret"), "{text}");
        assert!(text.contains("REDACTED"));
    }

    #[test]
    fn shares_are_clamped() {
        let config = SimulatorConfig {
            failed_share: 0.7,
            timed_out_share: 0.6,
            ..SimulatorConfig::demo()
        };
        assert_eq!(config.outcome_shares(), (0.7, 0.30000000000000004));
        let config = SimulatorConfig {
            failed_share: f64::NAN,
            timed_out_share: -1.0,
            ..SimulatorConfig::demo()
        };
        assert_eq!(config.outcome_shares(), (0.0, 0.0));
    }
}
