//! A few finished actions from the days before the simulator started, so the action list looks
//! like a real tenant's: older scans and other action types that `$filter=type eq
//! 'RunAntiVirusScan'` must skip. They are final, so they never block a new scan.

use time::OffsetDateTime;

use super::actions::{Action, ActionStatus, ActionStore};
use super::inventory::Machine;
use super::rng::Rng;
use super::timestamp;

/// At most this many historical actions.
const MAX_HISTORY: usize = 8;

/// `(type, scope, requestor, comment)`.
const KINDS: &[(&str, Option<&str>, &str, &str)] = &[
    (
        "RunAntiVirusScan",
        Some("Full"),
        "secops@contoso.com",
        "Weekly hygiene scan",
    ),
    (
        "RunAntiVirusScan",
        Some("Quick"),
        "secops@contoso.com",
        "Alert triage",
    ),
    (
        "Isolate",
        Some("Selective"),
        "analyst@contoso.com",
        "Suspicious lateral movement",
    ),
    (
        "Unisolate",
        None,
        "analyst@contoso.com",
        "Investigation closed",
    ),
    (
        "CollectInvestigationPackage",
        None,
        "analyst@contoso.com",
        "Forensics for INC-1042",
    ),
];

/// Adds up to [`MAX_HISTORY`] finished actions on online devices, 1 to 14 days old.
pub(crate) fn seed(store: &mut ActionStore, machines: &[Machine], now: OffsetDateTime, seed: u64) {
    let mut rng = Rng::stream(seed, "history");
    let online: Vec<&Machine> = machines
        .iter()
        .filter(|m| m.online && m.supports_scan)
        .collect();
    let mut actions: Vec<Action> = (0..MAX_HISTORY.min(online.len()))
        .filter_map(|_| {
            let machine = *online.get(rng.below(online.len()))?;
            let (kind, scope, requestor, comment) = rng.pick(KINDS)?;
            let age_secs = 86_400 + rng.below(13 * 86_400) as i64;
            let created = timestamp::to_tick(now - time::Duration::seconds(age_secs));
            let took = time::Duration::seconds(60 + rng.below(1_800) as i64);
            let status = if rng.below(6) == 0 {
                ActionStatus::Failed
            } else {
                ActionStatus::Succeeded
            };
            Some(Action {
                id: rng.guid(),
                kind,
                scope,
                requestor: requestor.to_owned(),
                comment: Some(comment.to_owned()),
                machine_id: machine.id.clone(),
                computer_dns_name: machine.computer_dns_name.clone(),
                created,
                transitions: vec![
                    (created, ActionStatus::Pending),
                    (timestamp::to_tick(created + took), status),
                ],
                cancellation: None,
            })
        })
        .collect();
    // The store keeps creation order.
    actions.sort_by_key(|a| a.created);
    for action in actions {
        store.insert(action);
    }
}
