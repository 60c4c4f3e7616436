//! The in-process store: one sliding window per API (and one for the overall cap), plus the
//! pauses set by upstream 429s. Also the fallback of the shared store.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    Admission, Limits,
    window::{Window, estimate},
};
use crate::call::Api;

#[derive(Debug)]
struct State {
    apis: HashMap<Api, Window>,
    total: Option<Window>,
    paused: HashMap<Api, Instant>,
}

/// Admissions decided in this process.
#[derive(Debug)]
pub struct LocalStore {
    state: Mutex<State>,
}

impl LocalStore {
    pub fn new(limits: &Limits) -> Self {
        Self {
            state: Mutex::new(State {
                apis: limits
                    .per_api
                    .iter()
                    .map(|(api, l)| (*api, Window::new(l.clone())))
                    .collect(),
                total: limits.total.clone().map(Window::new),
                paused: HashMap::new(),
            }),
        }
    }

    /// Admits now if every bucket allows it.
    pub fn try_admit(&self, api: Api, now: Instant) -> Admission {
        let mut state = self.lock();
        let at = state.next_free(api, now);
        if at > now {
            return Admission::NotBefore(at);
        }
        state.admit(api, now);
        Admission::Admitted
    }

    /// Counts the call admitted at `admitted` from `by` instead (it may have reached Defender
    /// that late).
    pub fn restamp(&self, api: Api, admitted: Instant, by: Instant) {
        let mut state = self.lock();
        if let Some(window) = state.apis.get_mut(&api) {
            window.restamp(admitted, by);
        }
        if let Some(total) = state.total.as_mut() {
            total.restamp(admitted, by);
        }
    }

    /// Records an admission decided elsewhere (the shared store mirrors its own calls here).
    pub fn record(&self, api: Api, at: Instant) {
        self.lock().admit(api, at);
    }

    pub fn estimate(&self, api: Api, now: Instant, ahead: usize) -> Instant {
        let state = self.lock();
        let mut buckets: Vec<&Window> = state.apis.get(&api).into_iter().collect();
        buckets.extend(state.total.as_ref());
        estimate(&buckets, now, ahead, state.paused.get(&api).copied())
    }

    pub fn pause(&self, api: Api, until: Instant) {
        let mut state = self.lock();
        let paused = state.paused.entry(api).or_insert(until);
        *paused = (*paused).max(until);
    }

    /// Calls left per window of `api`'s own limits.
    pub fn remaining(&self, api: Api, now: Instant) -> Vec<(Duration, u32)> {
        let state = self.lock();
        state.apis.get(&api).map_or_else(Vec::new, |w| {
            w.limits()
                .iter()
                .map(|l| l.window)
                .zip(w.remaining(now))
                .collect()
        })
    }

    /// This API's admissions within `horizon` (for replay into the shared store).
    pub fn recent(&self, api: Api, now: Instant, horizon: Duration) -> Vec<Instant> {
        self.lock()
            .apis
            .get(&api)
            .map_or_else(Vec::new, |w| w.recent(now, horizon))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave a half-written window; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn next_free(&self, api: Api, now: Instant) -> Instant {
        let mut at = self.paused.get(&api).map_or(now, |&p| p.max(now));
        if let Some(window) = self.apis.get(&api) {
            at = at.max(window.next_free(now));
        }
        if let Some(total) = &self.total {
            at = at.max(total.next_free(now));
        }
        at
    }

    fn admit(&mut self, api: Api, at: Instant) {
        if let Some(window) = self.apis.get_mut(&api) {
            window.admit(at);
        }
        if let Some(total) = &mut self.total {
            total.admit(at);
        }
    }
}
