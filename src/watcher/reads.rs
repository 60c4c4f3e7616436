//! What `GetScan` readers take from the watcher: the state it follows with when Defender last
//! confirmed it, and following an action for readers alone, so that an action read again and
//! again is refreshed by the batched list calls instead of one GET per read.

use tokio::{sync::watch, time::Instant};

use super::{Entry, Update, Watcher};
use crate::domain::{ActionId, MachineAction};

impl Watcher {
    /// The followed state of `id` and when Defender last confirmed it.
    pub fn confirmed(&self, id: &ActionId) -> Option<(MachineAction, Instant)> {
        let entries = self.lock();
        let entry = entries.get(id)?;
        match &*entry.tx.borrow() {
            Update::Action(action) => Some(((**action).clone(), entry.confirmed)),
            Update::Failed { .. } => None,
        }
    }

    /// Follows `action`, just read from Defender, for readers until `until` (longer if read
    /// again): it is refreshed with the others while it is unfinished.
    pub fn follow_for_readers(&self, id: &ActionId, action: &MachineAction, until: Instant) {
        if action.status.is_final() || self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let now = self.0.clock.now();
        let mut entries = self.lock();
        let entry = entries.entry(id.clone()).or_insert_with(|| Entry {
            tx: watch::Sender::new(Update::Action(Box::new(action.clone()))),
            created: action.creation_time,
            links: Vec::new(),
            lookup_failures: 0,
            confirmed: now,
            read_until: None,
        });
        entry.read_until = Some(entry.read_until.map_or(until, |known| known.max(until)));
        drop(entries);
        self.0.wake.notify_one();
    }
}
