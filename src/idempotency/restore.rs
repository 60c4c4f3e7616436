//! After Redis lost its data: every replica writes the keys it knows back.
//!
//! Each replica looks at the keys' epoch (`shared.rs`) every [`LOOK_EVERY`]. A new epoch means
//! Redis lost its data (or the deployment is new): the replica writes every key that names an
//! action, as it knows it, back where Redis has none, while the new epoch lets no new claim
//! in. A retry on another replica then finds its key, not a free one: no second scan.
//!
//! What is not covered: a replica that cannot reach Redis throughout the gathering (or was
//! restarted, and lost its own keys) writes nothing back; its keys are free again.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::AbortHandle};

use super::{KeyMetrics, LocalKeys, SharedKeys};
use crate::{clock::Clock, supervisor::supervise};

/// Time between two looks at the epoch: well within `shared::GATHERING`.
pub const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Looks at the epoch and writes this replica's keys back on a new one, until `stopped`.
/// Supervised: a panic is logged and the loop started again.
pub fn spawn_restorer(
    shared: Arc<SharedKeys>,
    local: LocalKeys,
    clock: Clock,
    metrics: KeyMetrics,
    mut stopped: watch::Receiver<bool>,
) -> AbortHandle {
    tokio::spawn(async move {
        let supervised = supervise(
            "idempotency restorer",
            LOOK_EVERY,
            || {},
            || run(&shared, &local, clock, &metrics),
        );
        tokio::select! {
            () = supervised => {}
            _ = stopped.wait_for(|stopped| *stopped) => {}
        }
    })
    .abort_handle()
}

async fn run(shared: &SharedKeys, local: &LocalKeys, clock: Clock, metrics: &KeyMetrics) {
    let mut ticks = tokio::time::interval(LOOK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<String> = None;
    loop {
        ticks.tick().await;
        // Unreachable: the claims say so to their callers; look again next tick.
        let Ok(epoch) = shared.look().await else {
            continue;
        };
        if seen.as_ref() == Some(&epoch) {
            continue;
        }
        let keys = local.bound(clock.now());
        match shared.write_back(&keys).await {
            Ok(written) => {
                if seen.is_some() || written > 0 {
                    tracing::warn!(
                        known = keys.len(),
                        written,
                        "redis lost the idempotency keys; wrote this replica's back"
                    );
                }
                metrics.record_restored(written);
                shared.restored(epoch.clone());
                seen = Some(epoch);
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not write the idempotency keys back; trying again");
            }
        }
    }
}
