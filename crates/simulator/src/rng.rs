//! Small deterministic random numbers: the simulator must replay the same inventory and scan
//! outcomes for a seed, and the crate has no `rand` dependency. Secrets (tokens) and correlation
//! ids use [`entropy`] instead, so they are not guessable across restarts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// SplitMix64: tiny and statistically fine for names and outcomes (never for secrets).
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream per purpose, so that e.g. fault rolls never shift action outcomes.
    pub(crate) fn stream(seed: u64, label: &str) -> Self {
        // FNV-1a of the label, mixed into the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in label.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Self::new(seed ^ h);
        rng.next_u64();
        rng
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)` (modulo bias is irrelevant here); `n == 0` gives 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`; consumes no randomness when `p <= 0` so that a disabled knob
    /// leaves every other roll unchanged.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// One element of a non-empty constant table.
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        items.get(self.below(items.len())).copied()
    }

    pub(crate) fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        out
    }

    /// A lowercase, hyphenated version-4 GUID, the form Defender uses for action ids.
    pub(crate) fn guid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.bytes16())
            .into_uuid()
            .to_string()
    }

    /// `len` lowercase hex digits.
    pub(crate) fn hex(&mut self, len: usize) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(len);
        let mut word = 0u64;
        for i in 0..len {
            if i % 16 == 0 {
                word = self.next_u64();
            }
            out.push(char::from(DIGITS[(word & 0xf) as usize]));
            word >>= 4;
        }
        out
    }
}

/// 64 unpredictable bits. `RandomState` is keyed from OS randomness once per thread, and the
/// counter makes every call hash a different input.
pub(crate) fn entropy() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A fresh, non-deterministic GUID (error `target`s, trace and correlation ids).
pub(crate) fn fresh_guid() -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&entropy().to_le_bytes());
    bytes[8..].copy_from_slice(&entropy().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_labels_are_independent() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, "a").next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::stream(7, "a").next_u64(),
            Rng::stream(7, "b").next_u64()
        );
    }

    #[test]
    fn guids_and_hex_have_defender_shapes() {
        let mut rng = Rng::new(1);
        let id = rng.guid();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        let hex = rng.hex(40);
        assert_eq!(hex.len(), 40);
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(fresh_guid(), fresh_guid());
    }
}
