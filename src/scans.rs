//! The domain service: start, get, cancel, list and follow antivirus scans. It knows the
//! Defender API's quirks (the two shapes of "already in progress", statuses that only end at
//! a final one) and hides them from the gRPC layer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use time::OffsetDateTime;
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use crate::{
    clock::Clock,
    domain::{
        ActionId, ActionStatus, CancelRequest, FieldViolation, ListQuery, MachineAction, MachineId,
        RequestId, ScanRequest, ScanType,
    },
    error::Error,
    idempotency::{Claim, KeyError, SharedKeys},
    metrics::Metrics,
    upstream::{self, ActionQuery, ApiError, CallContext, DefenderClient, SCAN_ACTION_TYPE},
    watcher::{Update, Watcher},
};

/// How long an idempotency key maps to the action it created.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Settings of the scan service.
#[derive(Debug, Clone)]
pub struct ScansConfig {
    /// Longest a stream follows one action; then it ends with DEADLINE_EXCEEDED carrying the
    /// last known status, and the caller resumes with `WatchScan`.
    pub max_watch: Duration,
    /// A scan requested for a machine that is already scanning returns that scan (true), or
    /// fails with ALREADY_EXISTS (false).
    pub follow_running: bool,
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
}

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
    last: ActionStatus,
    until: Instant,
    done: bool,
}

impl Follower {
    /// The next action to send, an error that ends the stream, or `None` after the final one.
    pub async fn next(&mut self) -> Option<Result<MachineAction, Error>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(self.start(*first));
        }
        let result = self.changed().await;
        if !matches!(&result, Ok(action) if !action.status.is_final()) {
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

    /// Waits for a status other than the last one sent.
    async fn changed(&mut self) -> Result<MachineAction, Error> {
        let (Some(updates), Some(id)) = (self.updates.as_mut(), self.id.as_ref()) else {
            return Err(Error::ShuttingDown);
        };
        loop {
            // The newest state first: it may be newer than what the caller got.
            let update = updates.borrow_and_update().clone();
            match update {
                Update::Action(action) if action.status != self.last => {
                    self.last = action.status.clone();
                    if self.last.is_final() {
                        self.scans
                            .0
                            .metrics
                            .record_scan_finished(self.last.as_upstream());
                    }
                    return Ok(*action);
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
            tokio::select! {
                changed = updates.changed() => if changed.is_err() {
                    // The watcher let go of the action: the gateway is stopping.
                    return Err(Error::ShuttingDown);
                },
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

/// A page of actions and the offset of the next page, if any.
#[derive(Debug, Clone)]
pub struct Page {
    pub actions: Vec<MachineAction>,
    pub next_skip: Option<u32>,
}

struct Keyed {
    machine_id: MachineId,
    scan_type: ScanType,
    created: Instant,
    action: OnceCell<ActionId>,
}

struct Inner {
    client: DefenderClient,
    clock: Clock,
    config: ScansConfig,
    metrics: Metrics,
    keys: Mutex<HashMap<RequestId, Arc<Keyed>>>,
    /// The same keys for every replica, in Redis (when configured).
    shared_keys: Option<SharedKeys>,
    watcher: Watcher,
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
        metrics: Metrics,
        watcher: Watcher,
        shared_keys: Option<SharedKeys>,
    ) -> Self {
        Self(Arc::new(Inner {
            client,
            clock,
            config,
            metrics,
            keys: Mutex::new(HashMap::new()),
            shared_keys,
            watcher,
        }))
    }

    /// Starts a scan, or returns the scan already running on the machine. With a request id,
    /// the same id returns the same action for 24 hours and concurrent requests with one id make
    /// one upstream call.
    pub async fn start(
        &self,
        request: &ScanRequest,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let Some(key) = &request.request_id else {
            return self.start_upstream(request, ctx).await;
        };
        let keyed = self.keyed(key, request)?;
        let mut created = None;
        let id = keyed
            .action
            .get_or_try_init(|| async {
                // Across replicas: another may already have started this scan.
                let mut claimed = false;
                if let Some(shared) = &self.0.shared_keys {
                    let until = ctx
                        .deadline
                        .unwrap_or_else(|| self.0.clock.now() + Duration::from_secs(30));
                    match shared.claim(key, request, until).await {
                        Ok(Claim::Existing(id)) => return Ok(id),
                        Ok(Claim::Mine) => claimed = true,
                        Err(KeyError::Mismatch(violation)) => return Err(violation.into()),
                        Err(KeyError::Unavailable(reason)) => {
                            tracing::warn!(%reason, "idempotency key kept by this replica only");
                        }
                    }
                }
                let started = self.start_upstream(request, ctx).await;
                let action = match started {
                    Ok(action) => action,
                    Err(err) => {
                        if claimed && let Some(shared) = &self.0.shared_keys {
                            shared.release(key).await;
                        }
                        return Err(err);
                    }
                };
                let id = ActionId::parse("id", &action.id).map_err(|_| malformed_id(&action))?;
                if claimed && let Some(shared) = &self.0.shared_keys {
                    shared.record(key, request, &id).await;
                }
                created = Some(action);
                Ok::<_, Error>(id)
            })
            .await?;
        match created {
            Some(action) => Ok(action),
            None => self.get(id, ctx).await,
        }
    }

    fn keyed(&self, key: &RequestId, request: &ScanRequest) -> Result<Arc<Keyed>, Error> {
        let now = self.0.clock.now();
        let mut keys = self.0.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.retain(|_, keyed| now.duration_since(keyed.created) < IDEMPOTENCY_TTL);
        let keyed = keys
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Keyed {
                    machine_id: request.machine_id.clone(),
                    scan_type: request.scan_type,
                    created: now,
                    action: OnceCell::new(),
                })
            })
            .clone();
        if keyed.machine_id != request.machine_id || keyed.scan_type != request.scan_type {
            return Err(FieldViolation::new(
                "request_id",
                "was already used in the last 24 hours for a scan of another machine or type",
            )
            .into());
        }
        Ok(keyed)
    }

    /// Starts the scan upstream. The stack resends the POST only when it certainly never
    /// reached Defender (`outbound::retry`); when its outcome is unknown (a timeout, a 5xx, a
    /// lost or garbled answer) the machine's scans are looked up here, so a fault never starts
    /// a second scan.
    async fn start_upstream(
        &self,
        request: &ScanRequest,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let sent_at = self.0.clock.utc();
        match self.post_scan(request, ctx).await {
            Ok(action) => Ok(action),
            Err(err) if outcome_unknown(&err) => {
                self.resolve_unknown(request, sent_at, err, ctx).await
            }
            Err(upstream::Error::Api(api)) if api.is_already_in_progress() => {
                if self.0.config.follow_running {
                    self.running_scan(&request.machine_id, api, ctx).await
                } else {
                    Err(Error::AlreadyExists {
                        machine_id: request.machine_id.to_string(),
                        source: Box::new(api),
                    })
                }
            }
            Err(err) => Err(not_found_as(err, "machine", request.machine_id.as_str())),
        }
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

    /// The POST may or may not have created the scan: find the one it created (same comment
    /// and type, created since it was sent, allowing for clock skew) or, when following running
    /// scans, any scan running on the machine. Nothing found: the original error, and the
    /// caller may retry safely.
    async fn resolve_unknown(
        &self,
        request: &ScanRequest,
        sent_at: time::OffsetDateTime,
        error: upstream::Error,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
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
        let found = ours.or_else(|| {
            self.0
                .config
                .follow_running
                .then(|| {
                    actions
                        .iter()
                        .filter(|a| !a.status.is_final())
                        .max_by_key(|a| a.creation_time)
                })
                .flatten()
        });
        match found {
            Some(action) => {
                tracing::warn!(action_id = %action.id, error = %error, "the answer to the scan request was lost; found the scan it created");
                Ok(action.clone())
            }
            None => Err(not_found_as(error, "machine", request.machine_id.as_str())),
        }
    }

    /// Defender said a scan is already running: find that action, newest first.
    async fn running_scan(
        &self,
        machine_id: &MachineId,
        refusal: ApiError,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let query = ActionQuery {
            machine_id: Some(machine_id.clone()),
            action_type: Some(SCAN_ACTION_TYPE),
            top: Some(10),
            ..ActionQuery::default()
        };
        let actions = self.0.client.list_actions(&query, ctx).await?;
        let running = actions
            .into_iter()
            .filter(|a| !a.status.is_final())
            .max_by_key(|a| a.creation_time);
        match running {
            Some(action) => {
                tracing::info!(action_id = %action.id, "a scan was already running; following it");
                Ok(action)
            }
            None => Err(Error::AlreadyExists {
                machine_id: machine_id.to_string(),
                source: Box::new(refusal),
            }),
        }
    }

    /// The action a new stream starts from: the watcher's latest state when it already
    /// follows the action (no upstream call), else a fresh read.
    pub async fn watch_start(
        &self,
        id: &ActionId,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        match self.0.watcher.current(id) {
            Some(action) => Ok(action),
            None => self.get(id, ctx).await,
        }
    }

    pub async fn get(&self, id: &ActionId, ctx: &CallContext) -> Result<MachineAction, Error> {
        self.0
            .client
            .get_action(id, ctx)
            .await
            .map_err(|err| not_found_as(err, "machine action", id.as_str()))
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
    /// whether another page follows.
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
        let mut actions = self.0.client.list_actions(&upstream_query, ctx).await?;
        let next_skip = (actions.len() > query.top as usize).then(|| query.skip + query.top);
        actions.truncate(query.top as usize);
        Ok(Page { actions, next_skip })
    }

    /// Follows `first` for one stream; see [`Follower`].
    pub fn follow(&self, first: MachineAction, ctx: &CallContext) -> Follower {
        let until = {
            let max = self.0.clock.now() + self.0.config.max_watch;
            ctx.deadline.map_or(max, |deadline| deadline.min(max))
        };
        Follower {
            scans: self.clone(),
            last: first.status.clone(),
            first: Some(Box::new(first)),
            id: None,
            updates: None,
            until,
            done: false,
        }
    }

    /// The UTC time of a monotonic instant (for `queued` events).
    pub fn utc_at(&self, at: Instant) -> OffsetDateTime {
        self.0.clock.utc_at(at)
    }
}

/// A failure after which the POST may have created the scan anyway.
fn outcome_unknown(err: &upstream::Error) -> bool {
    use upstream::{Error as U, TransportKind};
    match err {
        U::Transport { kind, .. } => *kind != TransportKind::Connect,
        U::Api(api) => api.status >= 500,
        U::Malformed { .. } => true,
        U::Token(_) | U::Quota(_) | U::DeadlineExceeded { .. } => false,
    }
}

/// A 404 names the resource the call was about.
fn not_found_as(err: upstream::Error, resource: &'static str, name: &str) -> Error {
    match err {
        upstream::Error::Api(api) if api.status == 404 => Error::NotFound {
            resource,
            name: name.to_owned(),
            source: Box::new(api),
        },
        other => other.into(),
    }
}

fn malformed_id(action: &MachineAction) -> Error {
    upstream::Error::Malformed {
        api: upstream::Api::RunScan,
        detail: format!("the action id `{}` is not a GUID", action.id),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::Comment,
        upstream::{Request, Response},
    };
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{service_fn, util::BoxCloneSyncService};

    const MACHINE: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

    fn json(status: u16, body: serde_json::Value) -> Response {
        let mut response = http::Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    }

    fn action(id: &str, status: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "type": "RunAntiVirusScan", "status": status, "machineId": MACHINE,
            "creationDateTimeUtc": "2026-11-26T09:14:05.3318207Z"
        })
    }

    /// Scans over a fake Defender that refuses every scan as "already in progress" and lists
    /// `listed`; counts the scan POSTs.
    fn busy_upstream(listed: Vec<serde_json::Value>) -> (Scans, Arc<AtomicUsize>) {
        let posts = Arc::new(AtomicUsize::new(0));
        let counter = posts.clone();
        let fake = service_fn(move |request: Request| {
            let listed = listed.clone();
            let counter = counter.clone();
            async move {
                Ok::<_, upstream::Error>(if request.method() == http::Method::POST {
                    counter.fetch_add(1, Ordering::SeqCst);
                    json(
                        400,
                        serde_json::json!({"error": {"code": "ActiveRequestAlreadyExists",
                            "message": "Action is already in progress", "target": "t-1"}}),
                    )
                } else {
                    json(200, serde_json::json!({ "value": listed }))
                })
            }
        });
        let client = DefenderClient::new(
            url::Url::parse("https://api.security.microsoft.com").unwrap(),
            BoxCloneSyncService::new(fake),
            crate::clock::Clock::system(),
        );
        let (_, shutdown) = watch::channel(false);
        let watcher = Watcher::start(
            client.clone(),
            Clock::system(),
            crate::watcher::WatcherConfig {
                interval: Duration::from_millis(10),
                list_call_spacing: Duration::ZERO,
                max_failures: 1,
            },
            Metrics::new(),
            shutdown.clone(),
        );
        let scans = Scans::new(
            client,
            Clock::system(),
            ScansConfig {
                max_watch: Duration::from_secs(60),
                follow_running: true,
            },
            Metrics::new(),
            watcher,
            None,
        );
        (scans, posts)
    }

    fn request(request_id: Option<&str>, scan_type: ScanType) -> ScanRequest {
        ScanRequest {
            machine_id: MachineId::parse("machine_id", MACHINE).unwrap(),
            scan_type,
            comment: Comment::parse("comment", "test").unwrap(),
            request_id: request_id
                .map(|k| RequestId::parse_optional("request_id", k).unwrap().unwrap()),
        }
    }

    #[tokio::test]
    async fn already_in_progress_resolves_to_the_newest_running_action() {
        let (scans, _) = busy_upstream(vec![
            action("0d9e8f71-2c3b-4a5d-8e6f-7a1b2c3d4e5f", "Succeeded"),
            action("7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37", "InProgress"),
        ]);
        let action = scans
            .start(&request(None, ScanType::Quick), &CallContext::default())
            .await
            .unwrap();
        assert_eq!(action.id, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37");
    }

    #[tokio::test]
    async fn already_in_progress_without_a_running_action_is_already_exists() {
        let (scans, _) = busy_upstream(vec![action(
            "0d9e8f71-2c3b-4a5d-8e6f-7a1b2c3d4e5f",
            "Succeeded",
        )]);
        let err = scans
            .start(&request(None, ScanType::Quick), &CallContext::default())
            .await
            .unwrap_err();
        let Error::AlreadyExists { machine_id, source } = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(machine_id, MACHINE);
        assert_eq!(source.code, "ActiveRequestAlreadyExists");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
    }

    #[tokio::test]
    async fn a_request_id_reused_for_another_scan_is_invalid() {
        let (scans, posts) = busy_upstream(vec![action(
            "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37",
            "Pending",
        )]);
        scans
            .start(
                &request(Some("k-1"), ScanType::Quick),
                &CallContext::default(),
            )
            .await
            .unwrap();
        let err = scans
            .start(
                &request(Some("k-1"), ScanType::Full),
                &CallContext::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(v) if v[0].field == "request_id"),
            "{err:?}"
        );
        assert_eq!(posts.load(Ordering::SeqCst), 1);
    }
}
