//! The authorization policy: caller identity patterns mapped to roles.
//!
//! ```toml
//! [policy]
//! "system:serviceaccount:scanning:scheduler" = "scan"   # exact
//! "system:serviceaccount:dashboards:*" = "read"         # prefix
//! "spiffe://cluster.local/ns/soc/*" = "scan"
//! ```
//!
//! An exact pattern beats a prefix; among prefixes the longest wins. A caller no pattern
//! matches may do nothing.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Start and cancel scans, and read them.
    Scan,
    /// Get, watch and list scans.
    Read,
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Scan,
    Read,
}

impl Role {
    pub fn allows(self, need: Need) -> bool {
        match (self, need) {
            (Role::Scan, _) => true,
            (Role::Read, Need::Read) => true,
            (Role::Read, Need::Scan) => false,
        }
    }
}

/// What a `ScanService` method needs; an unknown method needs the most.
pub fn need_of(method: &str) -> Need {
    match method {
        "GetScan" | "WatchScan" | "ListScans" => Need::Read,
        _ => Need::Scan,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    exact: BTreeMap<String, Role>,
    /// Longest prefix first.
    prefixes: Vec<(String, Role)>,
}

impl Policy {
    pub fn new(rules: BTreeMap<String, Role>) -> Self {
        let mut exact = BTreeMap::new();
        let mut prefixes = Vec::new();
        for (pattern, role) in rules {
            match pattern.strip_suffix('*') {
                Some(prefix) => prefixes.push((prefix.to_owned(), role)),
                None => {
                    exact.insert(pattern, role);
                }
            }
        }
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Self { exact, prefixes }
    }

    /// The caller's role, if the policy names it.
    pub fn role_of(&self, caller: &str) -> Option<Role> {
        self.exact.get(caller).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| caller.starts_with(prefix.as_str()))
                .map(|(_, role)| *role)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(BTreeMap::from([
            ("system:serviceaccount:ns:*".to_owned(), Role::Read),
            ("system:serviceaccount:ns:scheduler".to_owned(), Role::Scan),
            ("system:serviceaccount:ns:soc-*".to_owned(), Role::Scan),
            ("*".to_owned(), Role::Read),
        ]))
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let p = policy();
        assert_eq!(
            p.role_of("system:serviceaccount:ns:scheduler"),
            Some(Role::Scan)
        );
        assert_eq!(
            p.role_of("system:serviceaccount:ns:soc-bot"),
            Some(Role::Scan)
        );
        assert_eq!(p.role_of("system:serviceaccount:ns:ui"), Some(Role::Read));
        assert_eq!(p.role_of("anyone"), Some(Role::Read));
    }

    #[test]
    fn unknown_callers_have_no_role() {
        let p = Policy::new(BTreeMap::from([("a".to_owned(), Role::Scan)]));
        assert_eq!(p.role_of("ab"), None);
    }

    #[test]
    fn read_role_cannot_start_or_cancel() {
        assert!(!Role::Read.allows(need_of("StartScan")));
        assert!(!Role::Read.allows(need_of("RunScan")));
        assert!(!Role::Read.allows(need_of("CancelScan")));
        assert!(!Role::Read.allows(need_of("SomethingNew")));
        assert!(Role::Read.allows(need_of("GetScan")));
        assert!(Role::Read.allows(need_of("WatchScan")));
        assert!(Role::Read.allows(need_of("ListScans")));
        assert!(Role::Scan.allows(need_of("CancelScan")));
    }
}
