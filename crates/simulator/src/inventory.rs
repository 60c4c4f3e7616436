//! The simulated tenant's devices, generated deterministically from the seed.
//!
//! Mostly healthy Windows 10/11 workstations, a few macOS/Linux devices (supported with a recent
//! client), a few Windows Servers (scan not supported: 400 `OsPlatformNotSupported`) and a few
//! offline devices whose actions stay `Pending` until they time out. Whenever there are at least
//! three machines, at least one server and one offline device exist, so tests and the demo
//! banner can always find one of each.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::rng::Rng;

/// One device, serialised with the Defender machine entity's key names where they exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// 40 lowercase hex digits.
    pub id: String,
    /// e.g. `ws-finance-017.contoso.local`.
    pub computer_dns_name: String,
    /// `Windows10`, `Windows11`, `WindowsServer2022`, `macOS`, `Linux`...
    pub os_platform: String,
    /// OS release, e.g. `22H2`.
    #[serde(rename = "version")]
    pub os_version: String,
    /// Defender client version.
    pub agent_version: String,
    /// `Active` or `Inactive` (no signal for more than 7 days).
    pub health_status: String,
    /// Offline devices never pick up actions; their scans end `TimeOut`.
    pub online: bool,
    /// Whether the platform supports `runAntiVirusScan`.
    pub supports_scan: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Workstation,
    Server,
    Offline,
}

const DEPARTMENTS: &[&str] = &[
    "finance",
    "hr",
    "sales",
    "eng",
    "ops",
    "legal",
    "marketing",
    "support",
    "it",
    "rnd",
];
const WINDOWS: &[(&str, &str)] = &[
    ("Windows11", "24H2"),
    ("Windows11", "23H2"),
    ("Windows11", "24H2"),
    ("Windows10", "22H2"),
    ("Windows10", "21H2"),
];
const SERVERS: &[(&str, &str)] = &[("WindowsServer2022", "21H2"), ("WindowsServer2019", "1809")];
const WINDOWS_AGENT: &str = "4.18.25010.11";
/// Newer than 101.98.84, the first macOS/Linux client that supports scans.
const UNIX_AGENT: &str = "101.25012.0003";

/// The generated devices with a case-insensitive id index.
#[derive(Debug, Clone)]
pub(crate) struct Inventory {
    machines: Vec<Machine>,
    by_id: HashMap<String, usize>,
}

impl Inventory {
    pub(crate) fn generate(seed: u64, count: usize) -> Self {
        let mut rng = Rng::stream(seed, "inventory");
        let mut kinds = vec![Kind::Workstation; count];
        if count >= 3 {
            let servers = (count / 12).max(1);
            let offline = (count / 15).max(1);
            for kind in kinds.iter_mut().take(servers) {
                *kind = Kind::Server;
            }
            for kind in kinds.iter_mut().skip(servers).take(offline) {
                *kind = Kind::Offline;
            }
        }
        // Fisher-Yates, so the special devices are spread through the list.
        for i in (1..kinds.len()).rev() {
            kinds.swap(i, rng.below(i + 1));
        }
        // Name numbers are drawn from a range at least twice the inventory, so uniqueness
        // retries always terminate quickly.
        let number_range = (count * 2).max(999);
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut machines = Vec::with_capacity(count);
        for kind in kinds {
            let mut machine = Self::machine(&mut rng, kind);
            let dept = rng.pick(DEPARTMENTS).unwrap_or("it");
            let prefix = match machine.os_platform.as_str() {
                "macOS" => "mac",
                "Linux" => "lnx",
                p if p.starts_with("WindowsServer") => "srv",
                _ => "ws",
            };
            loop {
                let name = format!(
                    "{prefix}-{dept}-{:03}.contoso.local",
                    rng.below(number_range) + 1
                );
                if names.insert(name.clone()) {
                    machine.computer_dns_name = name;
                    break;
                }
            }
            while !ids.insert(machine.id.clone()) {
                machine.id = rng.hex(40);
            }
            machines.push(machine);
        }
        let by_id = machines
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        Self { machines, by_id }
    }

    fn machine(rng: &mut Rng, kind: Kind) -> Machine {
        let roll = rng.below(20);
        let (platform, version, agent) = match kind {
            Kind::Server => {
                let (p, v) = rng.pick(SERVERS).unwrap_or(("WindowsServer2022", "21H2"));
                (p, v, WINDOWS_AGENT)
            }
            Kind::Workstation if roll == 0 => ("macOS", "15.3", UNIX_AGENT),
            Kind::Workstation if roll == 1 => ("Linux", "22.04", UNIX_AGENT),
            _ => {
                let (p, v) = rng.pick(WINDOWS).unwrap_or(("Windows11", "24H2"));
                (p, v, WINDOWS_AGENT)
            }
        };
        let online = kind != Kind::Offline;
        Machine {
            id: rng.hex(40),
            computer_dns_name: String::new(),
            os_platform: platform.to_owned(),
            os_version: version.to_owned(),
            agent_version: agent.to_owned(),
            health_status: if online { "Active" } else { "Inactive" }.to_owned(),
            online,
            supports_scan: kind != Kind::Server,
        }
    }

    pub(crate) fn all(&self) -> &[Machine] {
        &self.machines
    }

    /// Case-insensitive lookup, as Defender is lenient about id case.
    pub(crate) fn get(&self, id: &str) -> Option<&Machine> {
        self.by_id
            .get(&id.to_ascii_lowercase())
            .and_then(|&i| self.machines.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inventory() {
        let a = Inventory::generate(9, 50);
        assert_eq!(a.all(), Inventory::generate(9, 50).all());
        assert_ne!(a.all(), Inventory::generate(10, 50).all());
    }

    #[test]
    fn has_every_kind_of_device_with_valid_ids_and_names() {
        let inv = Inventory::generate(1, 50);
        let all = inv.all();
        assert_eq!(all.len(), 50);
        assert!(
            all.iter()
                .any(|m| !m.supports_scan && m.os_platform.starts_with("WindowsServer"))
        );
        assert!(
            all.iter()
                .any(|m| !m.online && m.health_status == "Inactive")
        );
        let healthy = all.iter().filter(|m| m.online && m.supports_scan).count();
        assert!(healthy >= 40, "{healthy}");
        for m in all {
            assert_eq!(m.id.len(), 40);
            assert!(
                m.id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(m.computer_dns_name.ends_with(".contoso.local"));
            assert_eq!(inv.get(&m.id.to_ascii_uppercase()), Some(m));
        }
        let names: HashSet<_> = all.iter().map(|m| &m.computer_dns_name).collect();
        assert_eq!(names.len(), 50);
    }

    #[test]
    fn tiny_inventories_work() {
        assert!(Inventory::generate(1, 0).all().is_empty());
        let three = Inventory::generate(1, 3);
        assert_eq!(
            three
                .all()
                .iter()
                .filter(|m| m.online && m.supports_scan)
                .count(),
            1
        );
    }
}
