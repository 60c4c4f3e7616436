//! Following a scan for one stream: the first action, then each status change the watcher
//! sees, until a final status. During an upstream outage the stream is told its updates are
//! delayed and keeps its place, for the ride-out time at most.

use std::future::pending;

use time::format_description::well_known::Rfc3339;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{ScanEvent, Scans, malformed_id};
use crate::{
    domain::{ActionId, ActionStatus, MachineAction},
    error::Error,
    upstream::CallContext,
    watcher::{Outage, Update},
};

/// One stream's view of a followed action: [`Follower::next`] yields the first action, then
/// the action once per observed status change (from the replica's watcher), and ends after a
/// final status. It ends with an error when the action cannot be followed, the watch time or
/// the caller's deadline runs out, or the gateway shuts down.
///
/// It is pulled by the stream's response body, so it costs nothing while the caller is slow
/// (a slow caller simply gets the newest status when it reads again) and is dropped with the
/// stream. It keeps only what it needs between statuses: the last status sent and the
/// watcher's receiver, so ten thousand open streams stay small.
pub struct Follower {
    scans: Scans,
    /// The first action, until it has been yielded (boxed: the follower lives as long as
    /// its stream, the first action only until the first poll).
    first: Option<Box<MachineAction>>,
    /// Set once subscribed.
    id: Option<ActionId>,
    updates: Option<watch::Receiver<Update>>,
    /// The watcher's outage state.
    outage: watch::Receiver<Option<Outage>>,
    /// The outage this stream was told about, until updates flow again.
    delayed: Option<Outage>,
    last: ActionStatus,
    until: Instant,
    done: bool,
}

impl Follower {
    /// The next event to send (an action, or that updates are delayed), an error that ends
    /// the stream, or `None` after the final action.
    pub async fn next(&mut self) -> Option<Result<ScanEvent, Error>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(self.start(*first).map(|a| ScanEvent::Action(Box::new(a))));
        }
        let result = self.changed().await;
        if !matches!(&result, Ok(ScanEvent::Delayed { .. }))
            && !matches!(&result, Ok(ScanEvent::Action(action)) if !action.status.is_final())
        {
            self.done = true;
        }
        Some(result)
    }

    fn start(&mut self, first: MachineAction) -> Result<MachineAction, Error> {
        if first.status.is_final() {
            self.finished();
            return Ok(first);
        }
        let Ok(id) = ActionId::parse("id", &first.id) else {
            self.done = true;
            return Err(malformed_id(&first));
        };
        self.updates = Some(self.scans.0.watcher.subscribe(id.clone(), &first));
        self.id = Some(id);
        Ok(first)
    }

    /// Waits for a status other than the last one sent, or for an outage to begin or end.
    async fn changed(&mut self) -> Result<ScanEvent, Error> {
        let (Some(updates), Some(id)) = (self.updates.as_mut(), self.id.as_ref()) else {
            return Err(Error::ShuttingDown);
        };
        loop {
            // The newest state first: it may be newer than what the caller got.
            let update = updates.borrow_and_update().clone();
            let outage = self.outage.borrow_and_update().clone();
            match update {
                Update::Action(action) if action.status != self.last => {
                    self.last = action.status.clone();
                    self.delayed = None;
                    if self.last.is_final() {
                        self.scans
                            .0
                            .metrics
                            .record_scan_finished(self.last.as_upstream());
                        self.scans.0.durations.record(&action);
                        // A final state never changes: a later GetScan needs no call.
                        let now = self.scans.0.clock.now();
                        self.scans.0.reads.remember(id, &action, now);
                    }
                    return Ok(ScanEvent::Action(action));
                }
                // Updates flow again: the latest state says so, even if unchanged.
                Update::Action(action) if self.delayed.is_some() && outage.is_none() => {
                    self.delayed = None;
                    return Ok(ScanEvent::Action(action));
                }
                Update::Action(_) => {}
                Update::Failed { not_found, detail } => {
                    return Err(Error::WatchFailed {
                        action_id: id.to_string(),
                        not_found,
                        detail,
                    });
                }
            }
            let gives_up = outage
                .as_ref()
                .map(|outage| (outage.since + self.scans.0.config.ride_out).min(self.until));
            if let Some(outage) = outage.as_ref()
                && self.delayed.as_ref() != Some(outage)
            {
                self.delayed = Some(outage.clone());
                self.scans.0.metrics.record_stream_delayed();
                let gives_up_utc = self.scans.utc_at(gives_up.unwrap_or(self.until));
                return Ok(ScanEvent::Delayed {
                    since: outage.since_utc,
                    reason: outage.reason.clone(),
                    gives_up_at: gives_up_utc,
                });
            }
            tokio::select! {
                changed = updates.changed() => if changed.is_err() {
                    // The watcher let go of the action: the gateway is stopping.
                    return Err(Error::ShuttingDown);
                },
                changed = self.outage.changed() => if changed.is_err() {
                    return Err(Error::ShuttingDown);
                },
                () = sleep_until_some(gives_up.filter(|at| *at < self.until)) => {
                    self.scans.0.metrics.record_stream_outage_end();
                    let outage = self.delayed.clone();
                    return Err(Error::OutageOutlasted {
                        action_id: id.to_string(),
                        status: self.last.as_upstream().to_owned(),
                        since: outage
                            .map_or_else(|| self.scans.0.clock.utc(), |o| o.since_utc)
                            .format(&Rfc3339)
                            .unwrap_or_default(),
                    });
                }
                () = tokio::time::sleep_until(self.until) => {
                    return Err(Error::WatchExpired {
                        action_id: id.to_string(),
                        status: self.last.as_upstream().to_owned(),
                    });
                }
            }
        }
    }

    fn finished(&mut self) {
        self.done = true;
        self.scans
            .0
            .metrics
            .record_scan_finished(self.last.as_upstream());
    }
}

impl Scans {
    /// Follows `first` for one stream; see [`Follower`].
    pub fn follow(&self, first: MachineAction, ctx: &CallContext) -> Follower {
        let until = {
            let max = self.0.clock.now() + self.0.config.max_watch;
            ctx.deadline.map_or(max, |deadline| deadline.min(max))
        };
        Follower {
            scans: self.clone(),
            outage: self.0.watcher.outage(),
            delayed: None,
            last: first.status.clone(),
            first: Some(Box::new(first)),
            id: None,
            updates: None,
            until,
            done: false,
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}
