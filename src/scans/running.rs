//! A scan requested for a machine that is already scanning: the running scan answers the
//! request only when it is at least as thorough (a Full scan answers a Quick request, a Quick
//! scan never a Full one). A less thorough one is waited for, as the watcher sees it, and the
//! requested scan started when it ends.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

use super::{ScanEvent, Scans, Started, malformed_id};
use crate::{
    domain::{ActionId, MachineAction, ScanRequest},
    error::{BlockedScan, Error},
    upstream::CallContext,
    watcher::Update,
};

/// Time kept, at the end of a wait, for the requested scan's own POST: a scan that ends later
/// than this before the deadline is answered as still running, rather than with a POST the
/// deadline would cut (an unknown outcome).
const START_RESERVE: Duration = Duration::from_secs(1);

/// How often one start waits for a running scan before giving up: each wait ends with the
/// scan's end, and another may have started meanwhile.
pub(super) const MAX_WAITS: usize = 3;

/// What one scan request came to.
pub(super) enum Answer {
    Started(Started),
    /// A less thorough scan runs on the machine; the requested one can start once it ends.
    Blocked(MachineAction),
}

/// How a start that waits for a running scan tells its caller (the `waiting` event of a
/// RunScan stream) and learns that the caller has left (the receiver is gone), so that a scan
/// no one waits for any more is not started later.
#[derive(Clone)]
pub struct WaitNotice(mpsc::Sender<ScanEvent>);

impl WaitNotice {
    pub fn new(events: mpsc::Sender<ScanEvent>) -> Self {
        Self(events)
    }

    fn tell(&self, blocker: &MachineAction) {
        // Best effort, like `queued`: a full buffer means the caller is behind.
        let _ = self
            .0
            .try_send(ScanEvent::Waiting(Box::new(blocker.clone())));
    }
}

impl Scans {
    /// The answer of a running scan `action`, as Defender named it for `request`.
    pub(super) fn running_answer(request: &ScanRequest, action: MachineAction) -> Answer {
        if request.scan_type.satisfied_by(action.scope.as_deref()) {
            Answer::Started(Started {
                action,
                reused: true,
            })
        } else {
            Answer::Blocked(action)
        }
    }

    /// Until when a start may wait for a running scan: the caller's deadline, or the longest
    /// a stream follows a scan.
    pub(super) fn wait_until(&self, ctx: &CallContext) -> Instant {
        let max = self.0.clock.now() + self.0.config.max_watch;
        ctx.deadline.map_or(max, |deadline| deadline.min(max))
    }

    /// Waits for `blocker` to end, as the watcher sees it (no polling of its own), until
    /// [`START_RESERVE`] before `until`: then the request fails naming the scan in the way.
    pub(super) async fn wait_for_end(
        &self,
        request: &ScanRequest,
        blocker: MachineAction,
        until: Instant,
        notice: &WaitNotice,
    ) -> Result<(), Error> {
        tracing::info!(action_id = %blocker.id, scope = ?blocker.scope, requested = request.scan_type.as_upstream(), "a less thorough scan is running; waiting for it to end");
        self.0.known.insert(&blocker.id);
        notice.tell(&blocker);
        if blocker.status.is_final() {
            return Ok(());
        }
        let id = ActionId::parse("id", &blocker.id).map_err(|_| malformed_id(&blocker))?;
        let give_up = until
            .checked_sub(START_RESERVE)
            .unwrap_or_else(|| self.0.clock.now());
        let mut updates = self.0.watcher.subscribe(id, &blocker);
        loop {
            let update = updates.borrow_and_update().clone();
            let latest = match update {
                Update::Action(action) if action.status.is_final() => {
                    self.0.durations.record(&action);
                    return Ok(());
                }
                Update::Action(action) => action,
                // The watcher cannot tell any more: the next POST asks Defender, which
                // refuses while a scan runs.
                Update::Failed { .. } => return Ok(()),
            };
            tokio::select! {
                changed = updates.changed() => if changed.is_err() {
                    // The watcher let go of every action: the gateway is stopping.
                    return Err(Error::ShuttingDown);
                },
                () = self.0.clock.sleep_until(give_up) => return Err(self.blocked(request, &latest)),
                () = notice.0.closed() => return Err(Error::CallerLeft),
            }
        }
    }
}

impl Scans {
    /// The request could not start: `running`, less thorough, did not end in time. When its
    /// end is in sight (it runs, and scans of its scope took longer than it has so far), the
    /// caller is told when to retry.
    pub(super) fn blocked(&self, request: &ScanRequest, running: &MachineAction) -> Error {
        Error::ScanBlocked(Box::new(BlockedScan {
            machine_id: request.machine_id.to_string(),
            action_id: running.id.clone(),
            scope: running.scope.clone().unwrap_or_default(),
            status: running.status.as_upstream().to_owned(),
            requested: request.scan_type.as_upstream(),
            retry_after: self
                .0
                .durations
                .expected_end_in(running, self.0.clock.utc()),
        }))
    }
}
