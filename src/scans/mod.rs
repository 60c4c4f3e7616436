//! The domain service: start, get, cancel, list and follow antivirus scans. It knows the
//! Defender API's quirks (the two shapes of "already in progress", statuses that only end at
//! a final one) and hides them from the gRPC layer. Starting is in [`start`], following in
//! [`follow`], the idempotency keys in [`crate::idempotency`].

mod durations;
mod follow;
mod known;
mod metrics;
mod reads;
#[cfg(test)]
mod reads_tests;
mod running;
mod start;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::{
    clock::Clock,
    domain::{ActionId, ActionStatus, CancelRequest, ListQuery, MachineAction},
    error::Error,
    idempotency::{LocalKeys, SharedKeys},
    upstream::{self, ActionQuery, CallContext, DefenderClient, SCAN_ACTION_TYPE},
    watcher::Watcher,
};

pub use follow::Follower;
pub use metrics::ScanMetrics;
pub use reads::{READ_INTEREST, ReadSource};
pub use running::WaitNotice;

/// Settings of the scan service.
#[derive(Debug, Clone)]
pub struct ScansConfig {
    /// Longest a stream follows one action; then it ends with DEADLINE_EXCEEDED carrying the
    /// last known status, and the caller resumes with `WatchScan`. Also the longest a start
    /// without a deadline waits for a less thorough running scan to end.
    pub max_watch: Duration,
    /// A scan requested for a machine that is already scanning returns that scan when it is at
    /// least as thorough, else waits for its end (true), or Defender's "already in progress"
    /// fails with ALREADY_EXISTS (false).
    pub follow_running: bool,
    /// Longest a stream rides out an upstream outage (telling its caller that updates are
    /// delayed) before it ends UNAVAILABLE with the last known status.
    pub ride_out: Duration,
    /// How old a state `GetScan` may answer without a call (the watcher's, or a recent read).
    pub read_freshness: Duration,
}

/// One event of a followed scan.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanEvent {
    /// Waiting for quota: position 1 is next.
    Queued {
        position: usize,
        estimated_start: OffsetDateTime,
    },
    /// The action, sent once per observed status change.
    Action(Box<MachineAction>),
    /// A less thorough scan (this action) runs on the machine: the requested scan starts
    /// once it ends.
    Waiting(Box<MachineAction>),
    /// Updates are delayed by an upstream outage since `since`; the stream ends at
    /// `gives_up_at` if it lasts.
    Delayed {
        since: OffsetDateTime,
        reason: String,
        gives_up_at: OffsetDateTime,
    },
}

/// The scan a start answers with.
#[derive(Debug, Clone)]
pub struct Started {
    pub action: MachineAction,
    /// The scan was already running and this request did not create it (its comment and
    /// requestor are someone else's); it is at least as thorough as the one requested.
    pub reused: bool,
}

/// A page of actions and the offset of the next page, if any.
#[derive(Debug, Clone)]
pub struct Page {
    pub actions: Vec<MachineAction>,
    pub next_skip: Option<u32>,
    /// When Defender answered the listing.
    pub observed_at: OffsetDateTime,
}

struct Inner {
    client: DefenderClient,
    clock: Clock,
    config: ScansConfig,
    metrics: ScanMetrics,
    /// This replica's idempotency keys.
    keys: LocalKeys,
    /// The same keys for every replica, in Redis (when configured).
    shared_keys: Option<Arc<SharedKeys>>,
    watcher: Watcher,
    /// Actions known to be scans: a cancel checks the type without a read.
    known: known::KnownScans,
    /// How long scans took: when a scan in the way is expected to end.
    durations: durations::ScanDurations,
    /// Reads served from what the replica knows, or shared while in flight.
    reads: reads::Reads,
}

/// The scan service. Cheap to clone.
#[derive(Clone)]
pub struct Scans(Arc<Inner>);

impl Scans {
    /// Followed scans end with [`Error::ShuttingDown`] when the gateway stops: the watcher
    /// (started with the shutdown signal) lets go of every action.
    pub fn new(
        client: DefenderClient,
        clock: Clock,
        config: ScansConfig,
        metrics: ScanMetrics,
        watcher: Watcher,
        keys: LocalKeys,
        shared_keys: Option<Arc<SharedKeys>>,
    ) -> Self {
        Self(Arc::new(Inner {
            reads: reads::Reads::new(clock, config.read_freshness),
            client,
            clock,
            config,
            metrics,
            keys,
            shared_keys,
            watcher,
            known: known::KnownScans::default(),
            durations: durations::ScanDurations::default(),
        }))
    }

    /// The action a new stream starts from: the watcher's latest state when it already
    /// follows the action (no upstream call), else a fresh read.
    pub async fn watch_start(
        &self,
        id: &ActionId,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        match self.0.watcher.current(id) {
            Some(action) => self.scan_only(action, id),
            None => self.get(id, ctx).await,
        }
    }

    /// The scan `id`; any other action (an isolation, a live response) is not found here.
    pub async fn get(&self, id: &ActionId, ctx: &CallContext) -> Result<MachineAction, Error> {
        self.read(id, ctx, false).await.map(|(action, _)| action)
    }

    /// The scan `id` and when Defender confirmed that state: from what this replica knows when
    /// fresh enough, else from Defender (`fresh`: always), see [`reads`].
    pub async fn read(
        &self,
        id: &ActionId,
        ctx: &CallContext,
        fresh: bool,
    ) -> Result<(MachineAction, OffsetDateTime), Error> {
        let inner = &self.0;
        // A second read (this replica read or followed it before) is what makes an action
        // worth following for readers; a one-off read costs no refreshes.
        let again = inner.reads.read_before(id) || inner.watcher.confirmed(id).is_some();
        let known = if fresh {
            None
        } else {
            inner.reads.known(&inner.watcher, id)
        };
        let ((action, at), source) = match known {
            Some(known) => known,
            None => {
                let client = inner.client.clone();
                let (read_id, read_ctx) = (id.clone(), ctx.clone());
                let read = async move { client.get_action(&read_id, &read_ctx).await };
                inner
                    .reads
                    .upstream(id, ctx, read)
                    .await
                    .map_err(|err| not_found_as(err, "machine action", id.as_str()))?
            }
        };
        inner.metrics.record_read("GetScan", source.as_str());
        let action = self.scan_only(action, id)?;
        // Read again and again: the watcher's batched refresh serves the next reads.
        if again {
            inner
                .watcher
                .follow_for_readers(id, &action, inner.clock.now() + READ_INTEREST);
        }
        Ok((action, inner.clock.utc_at(at)))
    }

    /// Cancels an action. Cancelling is idempotent: when the answer is lost (the cancel may
    /// have taken effect) or Defender refuses because the action is already final, the action
    /// is read back, and if it is Cancelled the caller gets it, as a retry of a cancel whose
    /// answer was lost expects.
    pub async fn cancel(
        &self,
        request: &CancelRequest,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let id = &request.action_id;
        // Only scans are cancelled here, never an analyst's isolation or live response: the
        // type is checked first, read only when this replica has not seen the action yet.
        if !self.0.known.contains(id.as_str()) && self.0.watcher.current(id).is_none() {
            self.get(id, ctx).await?;
        }
        let err = match self
            .0
            .client
            .cancel_action(id, request.comment.as_str(), ctx)
            .await
        {
            Ok(action) => return Ok(action),
            Err(err) => err,
        };
        let already_final = matches!(&err, upstream::Error::Api(api) if api.status == 400);
        if outcome_unknown(&err) || already_final {
            match self.0.client.get_action(id, ctx).await {
                Ok(action) if action.status == ActionStatus::Cancelled => {
                    tracing::info!(action_id = %id, error = %err, "the cancel's answer was lost or refused, but the action is cancelled");
                    return Ok(action);
                }
                Ok(_) => {}
                Err(lookup) => {
                    tracing::warn!(action_id = %id, error = %lookup, "could not read the action back after a failed cancel");
                }
            }
        }
        Err(not_found_as(err, "machine action", id.as_str()))
    }

    /// Antivirus-scan actions, newest first. One more than the page is fetched to know
    /// whether another page follows. A malformed action is left out of its page and logged.
    pub async fn list(&self, query: &ListQuery, ctx: &CallContext) -> Result<Page, Error> {
        let upstream_query = ActionQuery {
            machine_id: query.machine_id.clone(),
            action_type: Some(SCAN_ACTION_TYPE),
            status: query.status.clone(),
            created_at_or_after: query.created_after,
            top: Some(query.top + 1),
            skip: Some(query.skip),
            ..ActionQuery::default()
        };
        let client = self.0.client.clone();
        let list_ctx = ctx.clone();
        let list = async move { client.list_actions_each(&upstream_query, &list_ctx).await };
        let (mut entries, at, source) = self.0.reads.list(query, ctx, list).await?;
        self.0.metrics.record_read("ListScans", source.as_str());
        // Paging counts every entry Defender returned, so a skipped one never shifts a page.
        let next_skip = (entries.len() > query.top as usize).then(|| query.skip + query.top);
        entries.truncate(query.top as usize);
        // A malformed action is left out of the page (and logged) rather than failing the
        // whole listing: the caller can still read the others.
        let mut actions = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                Ok(action) => {
                    self.0.known.insert(&action.id);
                    actions.push(action);
                }
                Err(skipped) => tracing::warn!(
                    action_id = skipped.id.as_deref().unwrap_or("(none)"),
                    reason = %skipped.reason,
                    "a malformed action was left out of a ListScans page"
                ),
            }
        }
        Ok(Page {
            actions,
            next_skip,
            observed_at: self.0.clock.utc_at(at),
        })
    }

    /// The gateway serves antivirus scans: another action type is answered as not found, so no
    /// RPC reads, follows or cancels it.
    pub(super) fn scan_only(
        &self,
        action: MachineAction,
        id: &ActionId,
    ) -> Result<MachineAction, Error> {
        if action.action_type == SCAN_ACTION_TYPE {
            self.0.known.insert(id.as_str());
            Ok(action)
        } else {
            Err(Error::NotAScan {
                action_id: id.to_string(),
            })
        }
    }

    /// The UTC time of a monotonic instant (for `queued` events).
    pub fn utc_at(&self, at: Instant) -> OffsetDateTime {
        self.0.clock.utc_at(at)
    }
}

/// A failure after which the POST may have created the scan anyway.
pub(crate) fn outcome_unknown(err: &upstream::Error) -> bool {
    use upstream::{Error as U, TransportKind};
    match err {
        U::Transport { kind, .. } => *kind != TransportKind::Connect,
        U::Api(api) => api.status >= 500,
        U::Malformed { .. } => true,
        // Cut at the caller's deadline after it left: as unknown as any other timeout.
        U::DeadlineExceeded { sent, .. } => *sent,
        U::Token(_) | U::Quota(_) => false,
    }
}

/// A 404 names the resource the call was about.
pub(crate) fn not_found_as(err: upstream::Error, resource: &'static str, name: &str) -> Error {
    match err {
        upstream::Error::Api(api) if api.status == 404 => Error::NotFound {
            resource,
            name: name.to_owned(),
            source: Box::new(api),
        },
        other => other.into(),
    }
}

pub(crate) fn malformed_id(action: &MachineAction) -> Error {
    upstream::Error::Malformed {
        api: upstream::Api::RunScan,
        detail: format!("the action id `{}` is not a GUID", action.id),
    }
    .into()
}
