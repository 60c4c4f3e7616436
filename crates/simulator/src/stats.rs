//! Which endpoint a request hit, and how many requests each endpoint received.
//!
//! Counting happens before authentication, quota and faults, so rejected calls are included:
//! tests use it to prove the gateway's own quota and token cache keep upstream traffic down.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The simulated endpoints; quota and faults are configured per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Entra ID token endpoint (v1 or v2.0).
    Token,
    /// `POST /api/machines/{id}/runAntiVirusScan`.
    RunScan,
    /// `GET /api/machineactions/{id}`.
    GetAction,
    /// `GET /api/machineactions`.
    ListActions,
    /// `POST /api/machineactions/{id}/cancel`.
    Cancel,
    /// Anything else (unknown paths).
    Other,
}

impl Endpoint {
    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::RunScan => "run_scan",
            Self::GetAction => "get_action",
            Self::ListActions => "list_actions",
            Self::Cancel => "cancel",
            Self::Other => "other",
        }
    }
}

/// A snapshot of request counts, served at `GET /simulator/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Token requests, including refused ones.
    pub token: u64,
    /// Scan requests, including rejected ones.
    pub run_scan: u64,
    /// Single-action reads.
    pub get_action: u64,
    /// Action list queries.
    pub list_actions: u64,
    /// Cancel requests.
    pub cancel: u64,
    /// Requests to unknown paths.
    pub other: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Scan actions created (a duplicate answered with the existing action is not counted).
    pub actions_created: u64,
    /// Requests refused by the quota with 429 (injected 429s are not counted).
    pub throttled: u64,
    /// Faults injected (500, 503, 429, 403, connection resets and garbled JSON from the fault
    /// settings).
    pub faults_injected: u64,
}

/// Lock-free counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: [AtomicU64; 6],
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) actions_created: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) faults_injected: AtomicU64,
}

impl Counters {
    pub(crate) fn request(&self, endpoint: Endpoint) {
        let slot = match endpoint {
            Endpoint::Token => 0,
            Endpoint::RunScan => 1,
            Endpoint::GetAction => 2,
            Endpoint::ListActions => 3,
            Endpoint::Cancel => 4,
            Endpoint::Other => 5,
        };
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            token: get(&self.requests[0]),
            run_scan: get(&self.requests[1]),
            get_action: get(&self.requests[2]),
            list_actions: get(&self.requests[3]),
            cancel: get(&self.requests[4]),
            other: get(&self.requests[5]),
            tokens_issued: get(&self.tokens_issued),
            actions_created: get(&self.actions_created),
            throttled: get(&self.throttled),
            faults_injected: get(&self.faults_injected),
        }
    }
}
