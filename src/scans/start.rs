//! Starting a scan: once per idempotency key (on this replica, and across replicas through
//! Redis), and never twice when Defender's answer is lost, even when it is lost to the
//! caller's deadline.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{
    Scans, Started, malformed_id, not_found_as, outcome_unknown,
    running::{Answer, MAX_WAITS, WaitNotice},
};
use crate::{
    domain::{ActionId, MachineAction, RequestId, ScanRequest},
    error::Error,
    idempotency::{Claim, KeyError, KeyHold, KeyedAction},
    telemetry::AUDIT_TARGET,
    upstream::{self, ActionQuery, Api, ApiError, CallContext, SCAN_ACTION_TYPE},
};

/// Time given to look for the scan of a POST that the caller's deadline cut: the caller has
/// left, and the key waits for the answer.
const LOOKUP_WITHIN: Duration = Duration::from_secs(30);

impl Scans {
    /// Starts a scan, or returns the scan already running on the machine (marked `reused`)
    /// when it is at least as thorough; a less thorough one is waited for within the caller's
    /// deadline, then the requested scan started. With a request id, the same id returns the
    /// same action for 24 hours and concurrent requests with one id make one upstream call.
    pub async fn start(&self, request: &ScanRequest, ctx: &CallContext) -> Result<Started, Error> {
        // No one to tell about a wait; the receiver, held as long as the caller waits, says
        // when it has left.
        let (events, _present) = mpsc::channel(1);
        self.start_with(request, ctx, WaitNotice::new(events)).await
    }

    /// [`Scans::start`], telling `notice` about a wait for a running scan.
    pub async fn start_with(
        &self,
        request: &ScanRequest,
        ctx: &CallContext,
        notice: WaitNotice,
    ) -> Result<Started, Error> {
        let Some(key) = &request.request_id else {
            return self.start_upstream(request, ctx, None, &notice).await;
        };
        // Held until the start's outcome is known: a start that created nothing leaves no trace
        // of the key.
        let owner = ctx.key_owner.as_ref();
        let hold = self.0.keys.hold(owner, key, request, self.0.clock.now())?;
        // The keyed start runs in a task of its own. When the caller's deadline cuts the POST,
        // the caller is answered at once (`cut`) while the task finds out whether the POST
        // created the scan and records it under the key before letting the key go, so a retry
        // returns that scan instead of starting a second.
        let (tell, cut) = oneshot::channel();
        let keyed = tokio::spawn({
            let (scans, key, request, ctx, notice) = (
                self.clone(),
                key.clone(),
                request.clone(),
                ctx.clone(),
                notice.clone(),
            );
            async move {
                scans
                    .start_keyed(hold, &key, &request, &ctx, tell, &notice)
                    .await
            }
            .in_current_span()
        });
        let (named, created) = tokio::select! {
            joined = keyed => joined.map_err(|_| Error::StartInterrupted)??,
            Ok(err) = cut => return Err(err),
        };
        match created {
            Some(started) => Ok(started),
            // The key's own scan, started (or followed) by an earlier request with it.
            None => self.get(&named.id, ctx).await.map(|action| Started {
                action,
                reused: named.reused,
            }),
        }
    }

    /// The start of a keyed scan: the action the key names, and the start itself when this
    /// request made it.
    async fn start_keyed(
        &self,
        hold: KeyHold,
        key: &RequestId,
        request: &ScanRequest,
        ctx: &CallContext,
        tell: oneshot::Sender<Error>,
        notice: &WaitNotice,
    ) -> Result<(KeyedAction, Option<Started>), Error> {
        let mut created = None;
        let id = hold
            .action
            .get_or_try_init(|| async {
                // Across replicas: another may already have started this scan.
                let mut claimed = None;
                let owner = ctx.key_owner.as_deref();
                if let Some(shared) = &self.0.shared_keys {
                    let until = ctx
                        .deadline
                        .unwrap_or_else(|| self.0.clock.now() + Duration::from_secs(30));
                    match shared.claim(owner, key, request, until).await {
                        Ok(Claim::Existing(id)) => return Ok(id),
                        Ok(Claim::Mine(token)) => claimed = Some(token),
                        Err(KeyError::Mismatch(violation)) => return Err(violation.into()),
                        // Never start beside a start still in flight on another replica.
                        Err(KeyError::Busy) => return Err(Error::KeyBusy),
                        // Alone, this replica's keys are all the keys.
                        Err(KeyError::Unavailable(reason)) if shared.sole_replica() => {
                            tracing::warn!(%reason, "idempotency key kept by this replica only");
                        }
                        // Another replica may have used the key: never start without knowing.
                        Err(err @ (KeyError::Unavailable(_) | KeyError::Restoring)) => {
                            tracing::warn!(reason = %err, "refusing a keyed start: the shared keys cannot be read");
                            return Err(Error::KeysUnavailable);
                        }
                    }
                }
                // A start may wait for quota far longer than a claim lasts.
                let keep_alive = match (&self.0.shared_keys, &claimed) {
                    (Some(shared), Some(token)) => Some(shared.keep_alive(owner, key, token)),
                    _ => None,
                };
                let started = self.start_upstream(request, ctx, Some(tell), notice).await;
                let started = match started {
                    Ok(started) => started,
                    Err(err) => {
                        drop(keep_alive);
                        if let (Some(shared), Some(token)) = (&self.0.shared_keys, &claimed) {
                            shared.release(owner, key, token).await;
                        }
                        return Err(err);
                    }
                };
                let action = &started.action;
                let named = KeyedAction {
                    id: ActionId::parse("id", &action.id).map_err(|_| malformed_id(action))?,
                    reused: started.reused,
                };
                if let (Some(shared), Some(keep_alive)) = (&self.0.shared_keys, keep_alive) {
                    // The claim stays alive until the key is recorded.
                    shared.record(owner, key, request, &named, keep_alive).await;
                }
                created = Some(started);
                Ok::<_, Error>(named)
            })
            .await?
            .clone();
        Ok((id, created))
    }

    /// Starts the scan upstream. The stack resends the POST only when it certainly never
    /// reached Defender (`outbound::retry`); when its outcome is unknown (a timeout, a 5xx, a
    /// lost or garbled answer) the machine's scans are looked up here, so a fault never starts
    /// a second scan.
    ///
    /// A POST cut at the caller's deadline is unknown too. With a key (`tell`: how to answer
    /// the caller now), it is looked up with time of its own ([`LOOKUP_WITHIN`]) after the
    /// caller is told; without one, no one could use the answer, and the caller has its own.
    ///
    /// A less thorough scan in the way is waited for (at most [`MAX_WAITS`] times, each
    /// within the caller's deadline), then the scan is requested again.
    async fn start_upstream(
        &self,
        request: &ScanRequest,
        ctx: &CallContext,
        mut tell: Option<oneshot::Sender<Error>>,
        notice: &WaitNotice,
    ) -> Result<Started, Error> {
        let until = self.wait_until(ctx);
        let mut waits = 0;
        loop {
            match self.post_once(request, ctx, &mut tell).await? {
                Answer::Started(started) => return Ok(started),
                Answer::Blocked(running) if waits < MAX_WAITS => {
                    waits += 1;
                    self.wait_for_end(request, running, until, notice).await?;
                }
                Answer::Blocked(running) => return Err(self.blocked(request, &running)),
            }
        }
    }

    /// One scan request, and what it came to.
    async fn post_once(
        &self,
        request: &ScanRequest,
        ctx: &CallContext,
        tell: &mut Option<oneshot::Sender<Error>>,
    ) -> Result<Answer, Error> {
        let sent_at = self.0.clock.utc();
        let started = match self.post_scan(request, ctx).await {
            Ok(action) if self.is_ours(request, sent_at, &action) => Ok(Answer::Started(Started {
                action,
                reused: false,
            })),
            // Defender answered with the scan already pending on the machine.
            Ok(action) => Ok(Self::running_answer(request, action)),
            Err(err @ upstream::Error::DeadlineExceeded { sent: true, .. }) => {
                let Some(tell) = tell.take() else {
                    return Err(err.into());
                };
                let cut = upstream::Error::DeadlineExceeded {
                    api: Api::RunScan,
                    sent: true,
                };
                // The caller may have left already; the lookup is for the key.
                let _ = tell.send(cut.into());
                let lookup = CallContext {
                    deadline: Some(self.0.clock.now() + LOOKUP_WITHIN),
                    observer: None,
                    ..ctx.clone()
                };
                let resolved = self.resolve_unknown(request, sent_at, err, &lookup).await;
                if let Ok(Started { action, .. }) = &resolved {
                    // The call's own record says DEADLINE_EXCEEDED; this one names the action
                    // that call created.
                    tracing::info!(
                        target: AUDIT_TARGET,
                        caller = ctx.caller.as_ref().map(|c| &*c.id),
                        machine_id = %request.machine_id,
                        scan_type = request.scan_type.as_upstream(),
                        comment = request.comment.as_str(),
                        request_id = request.request_id.as_ref().map(RequestId::as_str),
                        action_id = %action.id,
                        outcome = "DEADLINE_EXCEEDED",
                        "scan created after the caller's deadline"
                    );
                }
                resolved.map(Answer::Started)
            }
            Err(err) if outcome_unknown(&err) => self
                .resolve_unknown(request, sent_at, err, ctx)
                .await
                .map(Answer::Started),
            Err(upstream::Error::Api(api)) if api.is_already_in_progress() => {
                if self.0.config.follow_running {
                    self.running_scan(request, api, ctx).await
                } else {
                    Err(Error::AlreadyExists {
                        machine_id: request.machine_id.to_string(),
                        source: Box::new(api),
                    })
                }
            }
            Err(err) => Err(not_found_as(err, "machine", request.machine_id.as_str())),
        };
        if let Ok(Answer::Started(Started { action, .. }) | Answer::Blocked(action)) = &started {
            self.0.known.insert(&action.id);
        }
        started
    }

    async fn post_scan(
        &self,
        request: &ScanRequest,
        ctx: &CallContext,
    ) -> Result<MachineAction, upstream::Error> {
        self.0
            .client
            .run_antivirus_scan(
                &request.machine_id,
                request.scan_type,
                request.comment.as_str(),
                ctx,
            )
            .await
    }

    /// Whether `action`, Defender's answer to the POST sent at `sent_at`, is the scan that
    /// POST created: Defender may instead return the scan already pending on the machine
    /// (microsoft-365-docs#5907), with someone else's comment and requestor. A scan this
    /// replica had seen before, or with another comment or type, or created well before the
    /// POST, is not new.
    fn is_ours(
        &self,
        request: &ScanRequest,
        sent_at: time::OffsetDateTime,
        action: &MachineAction,
    ) -> bool {
        let skew = time::Duration::seconds(30);
        !self.0.known.contains(&action.id)
            && action.requestor_comment.as_deref() == Some(request.comment.as_str())
            && action
                .scope
                .as_deref()
                .is_none_or(|scope| scope == request.scan_type.as_upstream())
            && action
                .creation_time
                .is_none_or(|created| created >= sent_at - skew)
    }

    /// The POST may or may not have created the scan: find the one it created (same comment
    /// and type, created since it was sent, allowing for clock skew) or, when following running
    /// scans, any scan running on the machine that is at least as thorough. Nothing found: the
    /// original error, and the caller may retry safely (a less thorough scan in the way is
    /// not waited for here: whether this POST created something is still open).
    async fn resolve_unknown(
        &self,
        request: &ScanRequest,
        sent_at: time::OffsetDateTime,
        error: upstream::Error,
        ctx: &CallContext,
    ) -> Result<Started, Error> {
        let query = ActionQuery {
            machine_id: Some(request.machine_id.clone()),
            action_type: Some(SCAN_ACTION_TYPE),
            top: Some(10),
            ..ActionQuery::default()
        };
        let actions = match self.0.client.list_actions(&query, ctx).await {
            Ok(actions) => actions,
            Err(lookup) => {
                tracing::warn!(error = %lookup, "could not check whether the scan was created");
                return Err(error.into());
            }
        };
        let skew = time::Duration::seconds(30);
        let ours = actions.iter().find(|a| {
            a.requestor_comment.as_deref() == Some(request.comment.as_str())
                && a.scope.as_deref() == Some(request.scan_type.as_upstream())
                && a.creation_time
                    .is_some_and(|created| created >= sent_at - skew)
        });
        let found = ours.map(|action| (action, false)).or_else(|| {
            self.0
                .config
                .follow_running
                .then(|| {
                    actions
                        .iter()
                        .filter(|a| !a.status.is_final())
                        .filter(|a| request.scan_type.satisfied_by(a.scope.as_deref()))
                        .max_by_key(|a| a.creation_time)
                })
                .flatten()
                .map(|action| (action, true))
        });
        match found {
            Some((action, reused)) => {
                tracing::warn!(action_id = %action.id, error = %error, reused, "the answer to the scan request was lost; found the scan it created or a running one");
                Ok(Started {
                    action: action.clone(),
                    reused,
                })
            }
            None => Err(not_found_as(error, "machine", request.machine_id.as_str())),
        }
    }

    /// Defender said a scan is already running: find that action, the newest running one at
    /// least as thorough as requested, else the newest running one (which is in the way).
    async fn running_scan(
        &self,
        request: &ScanRequest,
        refusal: ApiError,
        ctx: &CallContext,
    ) -> Result<Answer, Error> {
        let machine_id = &request.machine_id;
        let query = ActionQuery {
            machine_id: Some(machine_id.clone()),
            action_type: Some(SCAN_ACTION_TYPE),
            top: Some(10),
            ..ActionQuery::default()
        };
        let actions = self.0.client.list_actions(&query, ctx).await?;
        let mut running: Vec<_> = actions
            .into_iter()
            .filter(|a| !a.status.is_final())
            .collect();
        running.sort_by_key(|a| std::cmp::Reverse(a.creation_time));
        let thorough = running
            .iter()
            .position(|a| request.scan_type.satisfied_by(a.scope.as_deref()));
        let chosen = match thorough {
            Some(at) => Some(running.swap_remove(at)),
            None => running.into_iter().next(),
        };
        match chosen {
            Some(action) => {
                tracing::info!(action_id = %action.id, "a scan was already running");
                Ok(Self::running_answer(request, action))
            }
            None => Err(Error::AlreadyExists {
                machine_id: machine_id.to_string(),
                source: Box::new(refusal),
            }),
        }
    }
}
