//! The limits a store keeps (calls per sliding window, per API and overall), what a store
//! answers, and how one process keeps them: sliding windows ([`window`]) and the in-process
//! store ([`LocalStore`]), which is also the shared store's fallback. Below both stores, so the
//! shared store builds on it without importing the quota front.

mod local;
pub mod window;

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use crate::call::Api;

pub use local::LocalStore;

/// At most `calls` calls in any window of length `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub calls: u32,
    pub window: Duration,
}

/// The limits of every bucket: one per API, plus an optional cap over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub per_api: HashMap<Api, Vec<Limit>>,
    pub total: Option<Vec<Limit>>,
}

impl Limits {
    /// The same limits for every API, no overall cap.
    pub fn uniform(limits: Vec<Limit>) -> Self {
        Self {
            per_api: Api::ALL
                .into_iter()
                .map(|api| (api, limits.clone()))
                .collect(),
            total: None,
        }
    }

    /// Each limit divided by `replicas`, rounded down: a replica's share. It may be 0 calls
    /// (2 per window over 3 replicas): rounding up would let the shares sum above the limit.
    pub fn share(&self, replicas: u32) -> Self {
        let divide = |limits: &Vec<Limit>| -> Vec<Limit> {
            limits
                .iter()
                .map(|l| Limit {
                    calls: l.calls / replicas.max(1),
                    window: l.window,
                })
                .collect()
        };
        Self {
            per_api: self
                .per_api
                .iter()
                .map(|(api, limits)| (*api, divide(limits)))
                .collect(),
            total: self.total.as_ref().map(divide),
        }
    }

    /// The first limit (with its API, `None` for the overall cap) that is 0 calls.
    pub fn first_empty(&self) -> Option<(Option<Api>, Limit)> {
        let empty = |limits: &Vec<Limit>| limits.iter().copied().find(|l| l.calls == 0);
        let mut apis: Vec<_> = self.per_api.iter().collect();
        apis.sort_by_key(|(api, _)| api.as_str());
        apis.into_iter()
            .find_map(|(api, limits)| empty(limits).map(|l| (Some(*api), l)))
            .or_else(|| self.total.as_ref().and_then(empty).map(|l| (None, l)))
    }
}

/// What a store says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Nothing fits before this instant.
    NotBefore(Instant),
}
