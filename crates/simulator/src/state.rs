//! Shared state of one simulated tenant, cloned into every handler.
//!
//! Each store sits behind its own short-lived `std` mutex: no lock is held across an `.await`,
//! and a poisoned lock (a panic elsewhere) is recovered rather than propagated, since every
//! store stays consistent between statements.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::Clock;

use super::actions::ActionStore;
use super::config::SimulatorConfig;
use super::faults::FaultState;
use super::history;
use super::inventory::Inventory;
use super::jwt::Signer;
use super::quota::Quota;
use super::stats::Counters;
use super::traceparents::Traceparents;

/// The simulator's state; build one with [`SimState::new`] and pass it to [`super::app`].
#[derive(Clone)]
pub struct SimState {
    inner: Arc<Inner>,
}

struct Inner {
    config: SimulatorConfig,
    clock: Clock,
    inventory: Inventory,
    actions: Mutex<ActionStore>,
    /// Signs access tokens; replaced to revoke every token issued so far.
    signer: Mutex<Signer>,
    quota: Mutex<Quota>,
    faults: Mutex<FaultState>,
    counters: Counters,
    traceparents: Mutex<Traceparents>,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field("config", &self.inner.config)
            .field("machines", &self.inner.inventory.all().len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimState {
    /// Generates the inventory and a little action history from `config.seed`.
    pub fn new(config: SimulatorConfig, clock: Clock) -> Self {
        let inventory = Inventory::generate(config.seed, config.machine_count);
        let mut actions = ActionStore::new(config.action_seed.unwrap_or(config.seed));
        history::seed(&mut actions, inventory.all(), clock.utc(), config.seed);
        Self {
            inner: Arc::new(Inner {
                quota: Mutex::new(Quota::new(config.quota.clone())),
                faults: Mutex::new(FaultState::new(config.faults.clone(), config.seed)),
                actions: Mutex::new(actions),
                signer: Mutex::new(Signer::generate()),
                counters: Counters::default(),
                traceparents: Mutex::default(),
                inventory,
                config,
                clock,
            }),
        }
    }

    pub(crate) fn config(&self) -> &SimulatorConfig {
        &self.inner.config
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub(crate) fn inventory(&self) -> &Inventory {
        &self.inner.inventory
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn actions(&self) -> MutexGuard<'_, ActionStore> {
        lock(&self.inner.actions)
    }

    pub(crate) fn signer(&self) -> MutexGuard<'_, Signer> {
        lock(&self.inner.signer)
    }

    pub(crate) fn quota(&self) -> MutexGuard<'_, Quota> {
        lock(&self.inner.quota)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.inner.faults)
    }

    pub(crate) fn traceparents(&self) -> MutexGuard<'_, Traceparents> {
        lock(&self.inner.traceparents)
    }
}
