//! The W3C `traceparent` headers the simulated Defender API received, newest last, so tests
//! (and people) can check that a caller's trace reached the upstream request.

use std::collections::VecDeque;

use super::stats::Endpoint;

/// How many headers are kept; older ones are forgotten.
pub const KEPT: usize = 256;

/// A `traceparent` header and the endpoint whose request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenTraceparent {
    pub endpoint: Endpoint,
    pub traceparent: String,
}

/// The last [`KEPT`] headers received.
#[derive(Debug, Default)]
pub(crate) struct Traceparents {
    seen: VecDeque<SeenTraceparent>,
}

impl Traceparents {
    pub(crate) fn record(&mut self, endpoint: Endpoint, traceparent: &str) {
        if self.seen.len() == KEPT {
            self.seen.pop_front();
        }
        self.seen.push_back(SeenTraceparent {
            endpoint,
            traceparent: traceparent.to_owned(),
        });
    }

    pub(crate) fn all(&self) -> Vec<SeenTraceparent> {
        self.seen.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_headers_up_to_the_bound() {
        let mut kept = Traceparents::default();
        for n in 0..KEPT + 3 {
            kept.record(Endpoint::GetAction, &n.to_string());
        }
        let all = kept.all();
        assert_eq!(all.len(), KEPT);
        assert_eq!(all[0].traceparent, "3");
        assert_eq!(all[KEPT - 1].traceparent, (KEPT + 2).to_string());
    }
}
