//! One lane per caller and API, so callers are served in turn rather than in arrival order.
//!
//! A call first queues in its caller's lane (a fair tokio mutex: arrival order within the
//! caller), and only the lane's head then queues for the API's turn. The API's queue therefore
//! holds at most one call per caller, and as each head is admitted the caller's next call
//! joins at the back: callers take turns, and a caller with a thousand queued calls delays
//! another caller's call by at most one admission per caller ahead of it.
//!
//! A lane also keeps the caller's own admissions when the policy gives it a quota share; the
//! head waits in its lane until that share has room, without holding up anyone else.
//!
//! A caller has a lane per priority class: its urgent call never waits behind its own
//! background calls. The API's turn then goes by class (`turns`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::time::Instant;

use super::limits::{Limit, window::Window};
use crate::call::{Api, Priority, QuotaCaller};

/// Above this many lanes, idle ones are dropped.
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug)]
pub(super) struct Lane {
    /// Held by the caller's call that queues for the API's turn.
    pub(super) turn: tokio::sync::Mutex<()>,
    /// Calls of this caller waiting on this API (including the head).
    waiting: AtomicUsize,
    /// The caller's own admissions, when it has a share.
    share: Option<Mutex<Window>>,
}

impl Lane {
    /// When the caller's share allows its next call (`now` without a share).
    pub(super) fn share_free_at(&self, now: Instant) -> Instant {
        self.share.as_ref().map_or(now, |w| lock(w).next_free(now))
    }

    pub(super) fn record(&self, at: Instant) {
        if let Some(window) = &self.share {
            lock(window).admit(at);
        }
    }

    fn idle(&self, now: Instant) -> bool {
        // A share with every call of every window left remembers nothing that matters.
        self.waiting.load(Ordering::SeqCst) == 0
            && self.share.as_ref().is_none_or(|w| {
                let window = lock(w);
                window.remaining(now) == full(window.limits())
            })
    }
}

fn full(limits: &[Limit]) -> Vec<u32> {
    limits.iter().map(|l| l.calls).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lane's key: the API, the caller's identity and the class.
type LaneKey = (Api, Arc<str>, Priority);

/// Every caller's lanes.
#[derive(Debug, Default)]
pub(super) struct Lanes {
    lanes: Mutex<HashMap<LaneKey, Arc<Lane>>>,
}

/// A call counted in its lane until dropped.
pub(super) struct InLane<'a> {
    lanes: &'a Lanes,
    key: LaneKey,
    pub(super) lane: Arc<Lane>,
    /// Calls of the same caller ahead of this one.
    pub(super) own_ahead: usize,
    /// Calls of other callers that will be admitted before this one, taking turns.
    pub(super) others_ahead: usize,
}

impl Lanes {
    /// Enters `caller`'s lane of `api`. `limits` are the API's limits, scaled by the caller's
    /// share when it has one.
    pub(super) fn enter(
        &self,
        api: Api,
        caller: &QuotaCaller,
        limits: impl FnOnce(f64) -> Vec<Limit>,
        now: Instant,
    ) -> InLane<'_> {
        let key = (api, caller.id.clone(), caller.priority);
        let mut lanes = lock(&self.lanes);
        if lanes.len() > SWEEP_ABOVE {
            lanes.retain(|_, lane| Arc::strong_count(lane) > 1 || !lane.idle(now));
        }
        let lane = lanes
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Lane {
                    turn: tokio::sync::Mutex::new(()),
                    waiting: AtomicUsize::new(0),
                    share: caller.share.map(|s| Mutex::new(Window::new(limits(s)))),
                })
            })
            .clone();
        let own_ahead = lane.waiting.fetch_add(1, Ordering::SeqCst);
        // Taking turns in a class, each other caller gets at most one admission per call of
        // ours ahead, plus one for the turn in progress; a more urgent class goes first whole.
        // (Background's floor may let it in sooner: the estimate errs late.)
        let others_ahead = lanes
            .iter()
            .filter(|((a, _, _), _)| *a == api)
            .filter(|(other, _)| **other != key)
            .map(|((_, _, class), other)| {
                let waiting = other.waiting.load(Ordering::SeqCst);
                match class.cmp(&caller.priority) {
                    std::cmp::Ordering::Less => waiting,
                    std::cmp::Ordering::Equal => waiting.min(own_ahead + 1),
                    std::cmp::Ordering::Greater => 0,
                }
            })
            .sum();
        drop(lanes);
        InLane {
            lanes: self,
            key,
            lane,
            own_ahead,
            others_ahead,
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.lanes).len()
    }
}

impl Drop for InLane<'_> {
    fn drop(&mut self) {
        let mut lanes = lock(&self.lanes.lanes);
        let left = self.lane.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        // A lane without a share has nothing to remember once empty. (One with a share stays
        // until it is idle and the map is swept.)
        if left == 0 && self.lane.share.is_none() {
            lanes.remove(&self.key);
        }
    }
}
