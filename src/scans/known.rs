//! The actions this replica knows to be antivirus scans (it created or read them as such),
//! so a cancel can check what it cancels without reading the action first. An action's type
//! never changes, so an entry is never stale; the set is bounded, oldest first out.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

/// Most ids kept (about 40 bytes each, twice).
const CAPACITY: usize = 65_536;

#[derive(Default)]
pub(super) struct KnownScans(Mutex<Known>);

#[derive(Default)]
struct Known {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl KnownScans {
    pub(super) fn insert(&self, id: &str) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.ids.contains(id) {
            return;
        }
        if known.order.len() >= CAPACITY
            && let Some(oldest) = known.order.pop_front()
        {
            known.ids.remove(&oldest);
        }
        known.ids.insert(id.to_owned());
        known.order.push_back(id.to_owned());
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.ids.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_ids_within_its_bound() {
        let known = KnownScans::default();
        for n in 0..CAPACITY + 10 {
            known.insert(&format!("id-{n}"));
        }
        assert!(!known.contains("id-0"));
        assert!(!known.contains("id-9"));
        assert!(known.contains("id-10"));
        assert!(known.contains(&format!("id-{}", CAPACITY + 9)));
        let known = known.0.lock().unwrap();
        assert_eq!((known.ids.len(), known.order.len()), (CAPACITY, CAPACITY));
    }
}
