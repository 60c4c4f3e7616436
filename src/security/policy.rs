//! The authorization policy: caller identity patterns mapped to roles.
//!
//! ```toml
//! [policy]
//! "system:serviceaccount:scanning:scheduler" = "scan"   # exact
//! "system:serviceaccount:dashboards:*" = "read"         # prefix
//! "spiffe://cluster.local/ns/soc/*" = "scan"
//! "system:serviceaccount:fleet:*" = { role = "scan", quota_share = 0.25 }
//! ```
//!
//! An exact pattern beats a prefix; among prefixes the longest wins. A caller no pattern
//! matches may do nothing. A `quota_share` caps the caller's calls at that share of each
//! Defender API's quota (see `quota`), so it cannot starve the others.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::call::Priority;

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

/// What the policy says of the callers one pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(from = "RuleSpec")]
pub struct Rule {
    pub role: Role,
    /// Share (0..=1) of each API's quota the caller may use; `None` is no cap.
    pub quota_share: Option<f64>,
    /// The most urgent quota class the caller may ask for (normal unless the rule says).
    pub max_priority: Priority,
}

impl From<Role> for Rule {
    fn from(role: Role) -> Self {
        Self {
            role,
            quota_share: None,
            max_priority: Priority::Normal,
        }
    }
}

/// Request extension: the most urgent quota class the caller's policy rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPriority(pub Priority);

/// A rule as written: a role alone, or a table.
#[derive(Deserialize)]
#[serde(untagged)]
enum RuleSpec {
    Role(Role),
    Table(RuleTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    role: Role,
    quota_share: Option<f64>,
    #[serde(default)]
    max_priority: Priority,
}

impl From<RuleSpec> for Rule {
    fn from(spec: RuleSpec) -> Self {
        match spec {
            RuleSpec::Role(role) => role.into(),
            RuleSpec::Table(t) => Self {
                role: t.role,
                quota_share: t.quota_share,
                max_priority: t.max_priority,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    exact: BTreeMap<String, Rule>,
    /// Longest prefix first.
    prefixes: Vec<(String, Rule)>,
}

impl Policy {
    pub fn new<R: Into<Rule>>(rules: BTreeMap<String, R>) -> Self {
        let mut exact = BTreeMap::new();
        let mut prefixes = Vec::new();
        for (pattern, role) in rules {
            let role = role.into();
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

    /// The rule that applies to the caller, if the policy names it.
    pub fn rule_of(&self, caller: &str) -> Option<Rule> {
        self.exact.get(caller).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| caller.starts_with(prefix.as_str()))
                .map(|(_, rule)| *rule)
        })
    }

    /// The first quota share outside (0, 1], as `(pattern, share)`.
    pub fn invalid_share(&self) -> Option<(&str, f64)> {
        self.exact
            .iter()
            .map(|(p, r)| (p.as_str(), r))
            .chain(self.prefixes.iter().map(|(p, r)| (p.as_str(), r)))
            .find_map(|(pattern, rule)| {
                rule.quota_share
                    .filter(|s| !(*s > 0.0 && *s <= 1.0))
                    .map(|s| (pattern, s))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Policy {
        fn role_of(&self, caller: &str) -> Option<Role> {
            self.rule_of(caller).map(|rule| rule.role)
        }
    }

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
    fn rules_are_a_role_or_a_table_with_a_quota_share() {
        #[derive(Deserialize)]
        struct File {
            policy: BTreeMap<String, Rule>,
        }
        let file: File = toml::from_str(
            r#"
            [policy]
            "a" = "read"
            "b*" = { role = "scan", quota_share = 0.25 }
            "responder" = { role = "scan", max_priority = "urgent" }
            "#,
        )
        .unwrap();
        let p = Policy::new(file.policy);
        assert_eq!(p.rule_of("a"), Some(Rule::from(Role::Read)));
        assert_eq!(
            p.rule_of("bob"),
            Some(Rule {
                role: Role::Scan,
                quota_share: Some(0.25),
                max_priority: Priority::Normal,
            })
        );
        assert_eq!(
            p.rule_of("responder").map(|r| r.max_priority),
            Some(Priority::Urgent)
        );
        assert_eq!(p.invalid_share(), None);
        let bad = Policy::new(BTreeMap::from([(
            "x".to_owned(),
            Rule {
                role: Role::Scan,
                quota_share: Some(1.5),
                max_priority: Priority::Normal,
            },
        )]));
        assert_eq!(bad.invalid_share(), Some(("x", 1.5)));
        let typo: Result<File, _> =
            toml::from_str("[policy]\n\"a\" = { role = \"scan\", share = 1 }");
        assert!(typo.is_err());
        let unknown: Result<File, _> =
            toml::from_str("[policy]\n\"a\" = { role = \"scan\", max_priority = \"asap\" }");
        assert!(unknown.is_err());
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
