//! Assembles the gateway from its settings: binds both listeners first (port 0 allowed, so
//! tests learn the addresses before serving), then serves until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc};

use futures_util::future::Either;

use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;
use tracing::Instrument;

use crate::{
    admin,
    clock::Clock,
    config::Settings,
    credentials::{Credential, TokenCache, TokenEndpoint, TokenMetrics},
    grpc::{GrpcMetrics, ScanServiceImpl, pb},
    idempotency::{KeyMetrics, LocalKeys, SharedKeys, spawn_restorer},
    inbound::{self, Authenticator, Connections, InboundMetrics, Limiter},
    metrics::{self, Metrics},
    outbound::{self, UpstreamMetrics},
    quota::{LocalStore, Quota, QuotaConfig, QuotaMetrics, SharedStore, Store},
    scans::{ScanMetrics, Scans, ScansConfig},
    security,
    upstream::{self, DefenderClient, HttpService},
    watcher::{WatchMetrics, Watcher, WatcherConfig},
};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "no Defender credentials: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (and MDE_API_BASE_URL for a non-default API host), or run `scan-gateway serve --simulate` to use the embedded simulator"
    )]
    NoCredentials,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("{0}")]
    Credential(String),
    #[error(
        "SCAN_GATEWAY_REDIS_URL is not a valid Redis URL (expected redis://host:port/db or rediss://...)"
    )]
    Redis,
    #[error("cannot build the token endpoint URL: {0}")]
    Authority(url::ParseError),
    #[error("inbound security: {0}")]
    Security(String),
}

/// A gateway whose listeners are bound.
pub struct Gateway {
    grpc: TcpListener,
    admin: TcpListener,
    service: ScanServiceImpl,
    metrics: Metrics,
    /// The inbound layers' refusals; the layers are built when serving starts.
    inbound_metrics: InboundMetrics,
    /// The client connections: caps, handshake and idle deadlines.
    connections: Connections,
    stopping: watch::Sender<bool>,
    shutdown_grace: std::time::Duration,
    /// TLS on the gRPC port, when configured.
    tls: Option<security::tls::Acceptor>,
    auth: Authenticator,
    limits: crate::config::InboundLimits,
    clock: Clock,
    /// Left (in shared mode) once the last call has finished.
    quota: Arc<Quota>,
    /// Asked for a first token as serving starts, so wrong credentials show at once.
    tokens: Arc<TokenCache>,
}

impl Gateway {
    pub async fn build(settings: &Settings, clock: Clock) -> Result<Self, StartupError> {
        let credentials = settings
            .credentials
            .as_ref()
            .ok_or(StartupError::NoCredentials)?;
        let (tls, auth) = inbound_security(&settings.security, clock).await?;
        let grpc = bind(settings.listen).await?;
        let admin = bind(settings.admin_listen).await?;

        let http = HttpService::default_client(settings.upstream_timeout)
            .map_err(|err| StartupError::HttpClient(err.to_string()))?;
        credentials
            .auth
            .check()
            .map_err(|err| StartupError::Credential(err.to_string()))?;
        let endpoint = TokenEndpoint::new(
            &settings.authority_host,
            &credentials.tenant_id,
            settings.token_scope.clone(),
            http.clone(),
            clock,
        )
        .map_err(StartupError::Authority)?;
        // Each subsystem registers its own families; the admin port serves them all.
        let mut registry = metrics::registry();
        let credential = Credential::new(
            endpoint,
            credentials.client_id.clone(),
            credentials.auth.clone(),
        );
        let tokens = Arc::new(TokenCache::new(
            Box::new(credential),
            clock,
            settings.token_refresh_margin,
            TokenMetrics::register(&mut registry),
        ));
        let quota_config = QuotaConfig {
            limits: settings.quota.clone(),
            max_wait: settings.max_quota_wait,
            max_queue: settings.max_queue,
            margin: settings.quota_margin,
            background_floor: settings.background_floor,
        };
        let quota_metrics = QuotaMetrics::register(&mut registry);
        let store = match &settings.redis {
            // Without Redis the replicas cannot coordinate: each keeps to its share.
            None => Store::Local(LocalStore::new(
                &quota_config.limits.share(settings.replicas),
            )),
            Some(shared) => Store::Shared(Box::new(
                SharedStore::new(
                    shared.clone(),
                    quota_config.limits.clone(),
                    quota_metrics.shared(),
                )
                .map_err(|_| StartupError::Redis)?,
            )),
        };
        let quota = Arc::new(Quota::new(&quota_config, store, clock, quota_metrics));
        let stack = outbound::stack(
            HttpService::new(http, settings.upstream_timeout),
            tokens.clone(),
            quota.clone(),
            UpstreamMetrics::register(&mut registry),
        );
        let client = DefenderClient::new(settings.api_base_url.clone(), stack, clock);

        let (stopping, stopped) = watch::channel(false);
        let key_metrics = KeyMetrics::register(&mut registry);
        // The list API's sustainable spacing: its tightest window / calls.
        let list_call_spacing = settings
            .quota
            .per_api
            .get(&upstream::Api::ListActions)
            .into_iter()
            .flatten()
            .map(|limit| limit.window / limit.calls.max(1))
            .max()
            .unwrap_or_default();
        let keys = LocalKeys::new(key_metrics.clone());
        let shared_keys = match &settings.redis {
            None => None,
            Some(shared) => {
                let shared_keys = Arc::new(
                    SharedKeys::new(
                        &shared.url,
                        format!("{}:idempotency", settings.redis_prefix),
                        shared.timeout,
                        settings.replicas <= 1,
                    )
                    .map_err(|_| StartupError::Redis)?,
                );
                spawn_restorer(
                    shared_keys.clone(),
                    keys.clone(),
                    clock,
                    key_metrics,
                    stopped.clone(),
                );
                Some(shared_keys)
            }
        };
        let watcher = Watcher::start(
            client.clone(),
            clock,
            WatcherConfig {
                interval: settings.poll_interval,
                list_call_spacing,
                max_failures: 5,
            },
            WatchMetrics::register(&mut registry),
            stopped.clone(),
        );
        let scans = Scans::new(
            client,
            clock,
            ScansConfig {
                max_watch: settings.max_watch,
                follow_running: settings.follow_running_scans,
                ride_out: settings.stream_ride_out,
                read_freshness: settings.read_freshness,
            },
            ScanMetrics::register(&mut registry),
            watcher,
            keys,
            shared_keys,
        );
        let inbound_metrics = InboundMetrics::register(&mut registry);
        inbound_metrics.set_unauthenticated(!settings.security.authenticates());
        Ok(Self {
            grpc,
            admin,
            service: ScanServiceImpl::new(scans, GrpcMetrics::register(&mut registry)),
            connections: Connections::new(settings.limits.connections, inbound_metrics.clone()),
            inbound_metrics,
            metrics: Metrics::new(registry),
            stopping,
            shutdown_grace: settings.shutdown_grace,
            tls,
            auth,
            limits: settings.limits.clone(),
            clock,
            quota,
            tokens,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The bound admin (health, metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` completes, then drains: health turns NOT_SERVING, open streams
    /// end with UNAVAILABLE (callers resume with WatchScan elsewhere), in-flight unary calls
    /// finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<pb::scan_service_server::ScanServiceServer<ScanServiceImpl>>()
            .await;
        // The google.rpc detail types too, so reflection clients (grpcurl) decode the details
        // of an error instead of printing them as raw bytes.
        let descriptors = [
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_types::pb::FILE_DESCRIPTOR_SET,
        ];
        let reflection = || {
            descriptors.iter().fold(
                tonic_reflection::server::Builder::configure(),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
        };
        let reflection_v1 = reflection().build_v1().map_err(std::io::Error::other)?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(std::io::Error::other)?;

        let ready = admin::Readiness::new();
        let admin_task = tokio::spawn(admin::serve(
            self.admin,
            self.metrics.clone(),
            ready.clone(),
            self.stopping.subscribe(),
        ));

        let stopping = self.stopping;
        let quota = self.quota;
        let (draining_tx, draining) = tokio::sync::oneshot::channel::<()>();
        let idle_closer = self.connections.clone();
        let drain = async move {
            shutdown.await;
            let _ = draining_tx.send(());
            tracing::info!("shutting down: refusing new calls, ending streams");
            ready.set(false);
            health
                .set_not_serving::<pb::scan_service_server::ScanServiceServer<ScanServiceImpl>>()
                .await;
            let _ = stopping.send(true);
            // A connection with no call in flight (or still in its handshake) holds nothing.
            idle_closer.drain();
        };

        let local = self.grpc.local_addr()?;
        tracing::info!(grpc = %local, "serving");
        tokio::spawn(check_credentials(self.tokens.clone()));
        let limiter = Arc::new(Limiter::new(self.limits.caller, self.clock));
        let connection_limits = self.limits.connections;
        let router = Server::builder()
            // Clients queue for a stream beyond this, per connection.
            .max_concurrent_streams(Some(self.limits.max_streams_per_connection))
            // Dead peers with calls in flight; silent and idle ones are `Connections`'.
            .http2_keepalive_interval(Some(connection_limits.keepalive_interval))
            .http2_keepalive_timeout(Some(connection_limits.keepalive_timeout))
            // Calls in flight per connection, span, authentication, per-caller limits.
            .layer(inbound::layers(
                self.connections.clone(),
                self.auth,
                limiter,
                self.inbound_metrics,
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::scan_service_server::ScanServiceServer::new(self.service)
                    .max_decoding_message_size(self.limits.max_message_bytes),
            );
        let connections = self.connections;
        let server = match self.tls {
            None => Either::Left(router.serve_with_incoming_shutdown(
                connections.incoming(self.grpc, |tcp| std::future::ready(Ok(tcp))),
                drain,
            )),
            Some(acceptor) => Either::Right(router.serve_with_incoming_shutdown(
                connections.incoming(self.grpc, security::tls::handshake(&acceptor)),
                drain,
            )),
        };
        // hyper's graceful shutdown waits for every connection to close, and a client that
        // never answers the GOAWAY would hold the process forever: bound the drain.
        let grace = self.shutdown_grace;
        let drain_deadline = async move {
            if draining.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = server => result.map_err(std::io::Error::other),
            () = drain_deadline => {
                tracing::warn!(grace_s = grace.as_secs_f64(), "connections still open after the shutdown grace period; closing them");
                Ok(())
            }
        };
        // Every call has finished: hand this replica's share of a shared quota back.
        quota.leave().await;
        admin_task.await.map_err(std::io::Error::other)??;
        result
    }
}

/// Asks Entra ID for a first token, so that wrong credentials show in the log (with the
/// AADSTS hint) as serving starts, not at a caller's first request. Readiness does not wait
/// for it: see README "Credentials".
async fn check_credentials(tokens: Arc<TokenCache>) {
    // A trace of its own: the token fetch belongs to no call.
    let span = tracing::info_span!(parent: None, "check credentials");
    match tokens.token().instrument(span).await {
        Ok(_) => tracing::info!("credentials accepted: Entra ID issued an access token"),
        Err(err) => tracing::error!(
            error = %err,
            "Entra ID did not issue an access token: calls to Defender fail until it does \
             (retried with backoff; scan_gateway_credentials_state says how it stands)"
        ),
    }
}

/// The TLS acceptor (certificate reloaded as its files change) and the caller checks.
async fn inbound_security(
    settings: &security::SecuritySettings,
    clock: Clock,
) -> Result<(Option<security::tls::Acceptor>, Authenticator), StartupError> {
    let tls = settings
        .tls
        .as_ref()
        .map(|tls| security::tls::acceptor(tls, settings.jwt.is_some()))
        .transpose()
        .map_err(|err| StartupError::Security(err.to_string()))?;
    let jwt = match &settings.jwt {
        Some(jwt) => Some(
            security::jwt::JwtVerifier::start(jwt, clock)
                .await
                .map_err(StartupError::Security)?,
        ),
        None => None,
    };
    let auth = Authenticator {
        mtls: settings.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        jwt,
        policy: settings.policy.clone(),
    };
    Ok((tls, auth))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}
