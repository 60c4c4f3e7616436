//! The actions this replica knows to be antivirus scans (it created or read them as such),
//! so a cancel can check what it cancels without reading the action first. An action's type
//! never changes, so an entry is never stale; the set is bounded, oldest first out.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
};

/// Most ids kept: about 50 bytes each (0.8 MB at most), nearly 3 hours of scans at the API's
/// limit of 100 a minute; an older action costs a cancel one read.
const CAPACITY: usize = 16_384;

#[derive(Default)]
pub(super) struct KnownScans(Mutex<Known>);

#[derive(Default)]
struct Known {
    ids: HashSet<Key>,
    order: VecDeque<Key>,
}

/// An action id as kept: Defender's ids are GUIDs, 16 bytes inline instead of two 36-byte
/// strings on the heap (about 50 bytes an id with the set and the queue, against 170). Any
/// other id is kept as given.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    Guid(u128),
    Other(Box<str>),
}

impl Key {
    fn of(id: &str) -> Self {
        match uuid::Uuid::try_parse(id) {
            // The parse accepts other spellings of one GUID (upper case, braces); the
            // text kept must be the one the API answers, so only its own spelling maps.
            Ok(guid)
                if guid
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    == id =>
            {
                Self::Guid(guid.as_u128())
            }
            _ => Self::Other(id.into()),
        }
    }
}

impl KnownScans {
    pub(super) fn insert(&self, id: &str) {
        let key = Key::of(id);
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.ids.contains(&key) {
            return;
        }
        if known.order.len() >= CAPACITY
            && let Some(oldest) = known.order.pop_front()
        {
            known.ids.remove(&oldest);
        }
        known.ids.insert(key.clone());
        known.order.push_back(key);
    }

    pub(super) fn contains(&self, id: &str) -> bool {
        let key = Key::of(id);
        let known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.ids.contains(&key)
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

    #[test]
    fn a_guid_is_known_by_its_own_spelling_only() {
        let known = KnownScans::default();
        let id = "7f5e3c1a-0b2d-4e6f-8a9b-1c2d3e4f5a6b";
        known.insert(id);
        assert!(known.contains(id));
        // Another spelling of the same GUID names another id for the API.
        assert!(!known.contains(&id.to_uppercase()));
        assert!(!known.contains(&format!("{{{id}}}")));
        known.insert("not-a-guid");
        assert!(known.contains("not-a-guid"));
        assert!(!known.contains("not-a-gui"));
        let known = known.0.lock().unwrap();
        assert!(matches!(known.order.front(), Some(Key::Guid(_))));
    }
}
