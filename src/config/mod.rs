//! Settings: command-line flag > environment variable > config file (`--config FILE`, TOML) >
//! default. Environment names are the ones Azure and OpenTelemetry users already know.
//! Secrets are `SecretString`: `Debug` prints `[REDACTED]`, and no error quotes them.

mod identity;
mod quota;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

pub use identity::Credentials;
use identity::{client_auth, credentials};
pub use quota::parse_quota;
use quota::quota_limits;

use crate::{
    quota::{Limits, SharedConfig},
    upstream::{self, Api},
};

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_API_BASE: &str = "https://api.security.microsoft.com";
pub const DEFAULT_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
pub const DEFAULT_QUOTA: &str = "100/1m,1500/1h";

/// Flags of `serve`; each also reads its environment variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML file with any of the settings below (snake_case keys, e.g. `listen = "..."`).
    #[arg(long, env = "SCAN_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Microsoft Entra tenant (directory) id.
    #[arg(long, env = "AZURE_TENANT_ID")]
    pub tenant_id: Option<String>,
    /// Application (client) id of the gateway's app registration.
    #[arg(long, env = "AZURE_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Client secret value of that application (environment only: a flag would show in `ps`).
    #[arg(skip)]
    pub client_secret: Option<SecretString>,
    /// PEM file with the application's certificate and its unencrypted RSA private key.
    #[arg(long, env = "AZURE_CLIENT_CERTIFICATE_PATH")]
    pub client_certificate_path: Option<PathBuf>,
    /// Send the certificate chain (x5c) with certificate assertions (subject name/issuer auth).
    #[arg(long, env = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", value_parser = clap::builder::BoolishValueParser::new())]
    pub send_certificate_chain: Option<bool>,
    /// Projected service-account token for workload identity federation (set by the
    /// Azure workload identity webhook on Kubernetes).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
    pub federated_token_file: Option<PathBuf>,
    /// Refresh the access token this long before it expires (at most a quarter of its
    /// lifetime) [default: 5m].
    #[arg(long, env = "SCAN_GATEWAY_TOKEN_REFRESH_MARGIN", value_parser = humantime::parse_duration)]
    pub token_refresh_margin: Option<Duration>,
    /// Token authority [default: https://login.microsoftonline.com].
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    pub authority_host: Option<String>,
    /// Defender API base URL [default: https://api.security.microsoft.com].
    #[arg(long, env = "MDE_API_BASE_URL")]
    pub api_base_url: Option<String>,
    /// OAuth2 scope of the token [default: https://api.securitycenter.microsoft.com/.default].
    #[arg(long, env = "MDE_TOKEN_SCOPE")]
    pub token_scope: Option<String>,
    /// gRPC listen address [default: 0.0.0.0:50051].
    #[arg(long, env = "SCAN_GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin (health, metrics) listen address [default: 0.0.0.0:9464].
    #[arg(long, env = "SCAN_GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Quota per Defender API, as calls/window pairs [default: 100/1m,1500/1h].
    #[arg(long, env = "SCAN_GATEWAY_QUOTA")]
    pub quota: Option<String>,
    /// Quota of `runAntiVirusScan` alone (overrides SCAN_GATEWAY_QUOTA for that API).
    #[arg(long, env = "SCAN_GATEWAY_QUOTA_RUN_ANTIVIRUS_SCAN")]
    pub quota_run_antivirus_scan: Option<String>,
    /// Quota of `GET machineactions/{id}` alone.
    #[arg(long, env = "SCAN_GATEWAY_QUOTA_GET_MACHINE_ACTION")]
    pub quota_get_machine_action: Option<String>,
    /// Quota of `GET machineactions` (list) alone.
    #[arg(long, env = "SCAN_GATEWAY_QUOTA_LIST_MACHINE_ACTIONS")]
    pub quota_list_machine_actions: Option<String>,
    /// Quota of `machineactions/{id}/cancel` alone.
    #[arg(long, env = "SCAN_GATEWAY_QUOTA_CANCEL_MACHINE_ACTION")]
    pub quota_cancel_machine_action: Option<String>,
    /// Optional overall cap across all APIs, as calls/window pairs [default: none].
    #[arg(long, env = "SCAN_GATEWAY_QUOTA_TOTAL")]
    pub quota_total: Option<String>,
    /// Added to every quota window, so network jitter between admission here and counting
    /// upstream can never make Defender see a full window plus one [default: 250ms].
    #[arg(long, env = "SCAN_GATEWAY_QUOTA_MARGIN", value_parser = humantime::parse_duration)]
    pub quota_margin: Option<Duration>,
    /// Most calls waiting for quota per API; beyond, calls are refused [default: 1000].
    #[arg(long, env = "SCAN_GATEWAY_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Redis shared by all replicas for one quota (`redis://host:6379/0`) [default: none,
    /// the quota is kept in this process].
    #[arg(long, env = "SCAN_GATEWAY_REDIS_URL", hide_env_values = true, value_parser = secret_value)]
    pub redis_url: Option<SecretString>,
    /// Replicas sharing the quota: without Redis, or while it is unreachable, each replica keeps
    /// to its share (each limit divided by this) [default: 1].
    #[arg(long, env = "SCAN_GATEWAY_REPLICAS")]
    pub replicas: Option<u32>,
    /// Longest wait for a Redis answer before falling back [default: 250ms].
    #[arg(long, env = "SCAN_GATEWAY_REDIS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub redis_timeout: Option<Duration>,
    /// Longest a call waits for quota before RESOURCE_EXHAUSTED [default: 5m].
    #[arg(long, env = "SCAN_GATEWAY_MAX_QUOTA_WAIT", value_parser = humantime::parse_duration)]
    pub max_quota_wait: Option<Duration>,
    /// Longest one stream follows an action before DEADLINE_EXCEEDED (resume with WatchScan)
    /// [default: 24h].
    #[arg(long, env = "SCAN_GATEWAY_MAX_WATCH", value_parser = humantime::parse_duration)]
    pub max_watch: Option<Duration>,
    /// A scan requested for a machine that is already scanning returns that scan; `false`
    /// answers ALREADY_EXISTS instead [default: true].
    #[arg(long, env = "SCAN_GATEWAY_FOLLOW_RUNNING_SCANS", value_parser = clap::builder::BoolishValueParser::new())]
    pub follow_running_scans: Option<bool>,
    /// Time between status refreshes of followed scans [default: 10s].
    #[arg(long, env = "SCAN_GATEWAY_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Longest one upstream HTTP exchange may take [default: 30s].
    #[arg(long, env = "SCAN_GATEWAY_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Option<Duration>,
    /// On SIGTERM, how long in-flight calls may take to finish before connections are closed
    /// [default: 20s; keep it under the pod's terminationGracePeriodSeconds].
    #[arg(long, env = "SCAN_GATEWAY_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Largest request message accepted, in bytes; larger ones are refused with
    /// OUT_OF_RANGE before they are parsed [default: 65536].
    #[arg(long, env = "SCAN_GATEWAY_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Concurrent HTTP/2 streams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS:
    /// clients wait for a free stream) [default: 1000].
    #[arg(long, env = "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Open RunScan/WatchScan streams per caller (identity, else IP address); beyond,
    /// RESOURCE_EXHAUSTED [default: 10000].
    #[arg(long, env = "SCAN_GATEWAY_MAX_STREAMS_PER_CALLER")]
    pub max_streams_per_caller: Option<usize>,
    /// Sustained calls per second per caller; 0 turns the limit off [default: 100].
    #[arg(long, env = "SCAN_GATEWAY_CALLER_RATE")]
    pub caller_rate: Option<f64>,
    /// Calls per caller allowed at once above the sustained rate [default: 1000].
    #[arg(long, env = "SCAN_GATEWAY_CALLER_BURST")]
    pub caller_burst: Option<u32>,
    /// Inbound TLS, mutual TLS and bearer JWTs (issue 7).
    #[command(flatten)]
    pub security: Box<crate::security::SecurityArgs>,
}

/// The config file: the same settings, all optional. Unknown keys are an error (a typo must
/// not silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<SecretString>,
    client_certificate_path: Option<PathBuf>,
    send_certificate_chain: Option<bool>,
    federated_token_file: Option<PathBuf>,
    #[serde(default, with = "humantime_option")]
    token_refresh_margin: Option<Duration>,
    authority_host: Option<String>,
    api_base_url: Option<String>,
    token_scope: Option<String>,
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    quota: Option<String>,
    quota_run_antivirus_scan: Option<String>,
    quota_get_machine_action: Option<String>,
    quota_list_machine_actions: Option<String>,
    quota_cancel_machine_action: Option<String>,
    quota_total: Option<String>,
    #[serde(default, with = "humantime_option")]
    quota_margin: Option<Duration>,
    max_queue: Option<usize>,
    redis_url: Option<SecretString>,
    replicas: Option<u32>,
    #[serde(default, with = "humantime_option")]
    redis_timeout: Option<Duration>,
    #[serde(default, with = "humantime_option")]
    max_quota_wait: Option<Duration>,
    #[serde(default, with = "humantime_option")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_option")]
    max_watch: Option<Duration>,
    follow_running_scans: Option<bool>,
    #[serde(default, with = "humantime_option")]
    upstream_timeout: Option<Duration>,
    #[serde(default, with = "humantime_option")]
    shutdown_grace: Option<Duration>,
    max_message_bytes: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_streams_per_caller: Option<usize>,
    caller_rate: Option<f64>,
    caller_burst: Option<u32>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    jwks: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    /// Caller identity pattern → role; see `security::policy`.
    policy: Option<std::collections::BTreeMap<String, crate::security::Rule>>,
}

/// Resolved, checked settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None` until credentials are configured; `serve` refuses to start without them.
    pub credentials: Option<Credentials>,
    pub authority_host: Url,
    pub api_base_url: Url,
    pub token_scope: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub quota: Limits,
    pub max_quota_wait: Duration,
    pub max_queue: usize,
    /// Shared quota in Redis; `None` keeps it in this process.
    pub redis: Option<SharedConfig>,
    /// Replicas sharing the quota (`SCAN_GATEWAY_REPLICAS`). Without Redis each replica keeps
    /// to its share; with Redis the share applies only while Redis is unreachable.
    pub replicas: u32,
    pub poll_interval: Duration,
    pub max_watch: Duration,
    pub follow_running_scans: bool,
    pub upstream_timeout: Duration,
    pub token_refresh_margin: Duration,
    pub shutdown_grace: Duration,
    /// Inbound TLS, caller authentication and the policy; all off by default.
    pub security: crate::security::SecuritySettings,
    pub limits: InboundLimits,
}

/// What one request, connection or caller may take of the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundLimits {
    pub max_message_bytes: usize,
    pub max_streams_per_connection: u32,
    pub caller: crate::security::CallerLimits,
}

/// A setting that cannot be used. Never quotes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error(
        "incomplete credentials: {missing} must be set too (AZURE_TENANT_ID and AZURE_CLIENT_ID, with one of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE)"
    )]
    IncompleteCredentials { missing: String },
}

impl Settings {
    /// Resolves flags and environment (already merged by clap), the config file, and defaults.
    /// `client_secret` comes from `AZURE_CLIENT_SECRET` when `args` has none.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let secret = args
            .client_secret
            .clone()
            .or_else(|| {
                std::env::var("AZURE_CLIENT_SECRET")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .map(SecretString::from)
            })
            .or(file.client_secret);
        let auth = client_auth(
            secret,
            args.client_certificate_path
                .clone()
                .or(file.client_certificate_path)
                .map(|path| {
                    (
                        path,
                        args.send_certificate_chain
                            .or(file.send_certificate_chain)
                            .unwrap_or(false),
                    )
                }),
            args.federated_token_file
                .clone()
                .or(file.federated_token_file),
        );
        let credentials = credentials(
            args.tenant_id.clone().or(file.tenant_id),
            args.client_id.clone().or(file.client_id),
            auth,
        )?;
        let url = |setting, raw: Option<String>, default: &str| {
            let raw = raw.unwrap_or_else(|| default.to_owned());
            upstream::parse_base_url(&raw).map_err(|err| ConfigError::Invalid {
                setting,
                reason: err.to_string(),
            })
        };
        let quota = quota_limits(
            args.quota.clone().or(file.quota),
            [
                (
                    Api::RunScan,
                    args.quota_run_antivirus_scan
                        .clone()
                        .or(file.quota_run_antivirus_scan),
                ),
                (
                    Api::GetAction,
                    args.quota_get_machine_action
                        .clone()
                        .or(file.quota_get_machine_action),
                ),
                (
                    Api::ListActions,
                    args.quota_list_machine_actions
                        .clone()
                        .or(file.quota_list_machine_actions),
                ),
                (
                    Api::CancelAction,
                    args.quota_cancel_machine_action
                        .clone()
                        .or(file.quota_cancel_machine_action),
                ),
            ],
            args.quota_total.clone().or(file.quota_total),
            args.quota_margin
                .or(file.quota_margin)
                .unwrap_or(Duration::from_millis(250)),
        )?;
        let replicas = args.replicas.or(file.replicas).unwrap_or(1);
        if replicas == 0 {
            return Err(ConfigError::Invalid {
                setting: "SCAN_GATEWAY_REPLICAS",
                reason: "must be at least 1".into(),
            });
        }
        let redis = args
            .redis_url
            .clone()
            .or(file.redis_url)
            .filter(|url| !url.expose_secret().trim().is_empty())
            .map(|url| SharedConfig {
                url,
                replicas,
                prefix: "scan-gateway:quota".to_owned(),
                timeout: args
                    .redis_timeout
                    .or(file.redis_timeout)
                    .unwrap_or(Duration::from_millis(250)),
            });
        let security = crate::security::SecuritySettings::resolve(
            &args.security,
            crate::security::SecurityFile {
                tls_cert: file.tls_cert,
                tls_key: file.tls_key,
                tls_client_ca: file.tls_client_ca,
                jwks: file.jwks,
                jwt_issuer: file.jwt_issuer,
                jwt_audience: file.jwt_audience,
                policy: file.policy,
            },
        )
        .map_err(|err| ConfigError::Invalid {
            setting: err.setting,
            reason: err.reason,
        })?;
        let defaults = crate::security::CallerLimits::default();
        let limits = InboundLimits {
            max_message_bytes: args
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(64 * 1024),
            max_streams_per_connection: args
                .max_streams_per_connection
                .or(file.max_streams_per_connection)
                .unwrap_or(1000),
            caller: crate::security::CallerLimits {
                rate: match args.caller_rate.or(file.caller_rate) {
                    None => defaults.rate,
                    // 0 turns the limit off.
                    Some(0.0) => None,
                    Some(rate) => Some(rate),
                },
                burst: args
                    .caller_burst
                    .or(file.caller_burst)
                    .unwrap_or(defaults.burst),
                max_streams: args
                    .max_streams_per_caller
                    .or(file.max_streams_per_caller)
                    .unwrap_or(defaults.max_streams),
            },
        };
        let settings = Settings {
            limits,
            security,
            credentials,
            authority_host: url(
                "AZURE_AUTHORITY_HOST",
                args.authority_host.clone().or(file.authority_host),
                DEFAULT_AUTHORITY,
            )?,
            api_base_url: url(
                "MDE_API_BASE_URL",
                args.api_base_url.clone().or(file.api_base_url),
                DEFAULT_API_BASE,
            )?,
            token_scope: args
                .token_scope
                .clone()
                .or(file.token_scope)
                .unwrap_or_else(|| DEFAULT_SCOPE.to_owned()),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 50051))),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9464))),
            quota,
            redis,
            replicas,
            max_quota_wait: args
                .max_quota_wait
                .or(file.max_quota_wait)
                .unwrap_or(Duration::from_secs(300)),
            max_queue: args.max_queue.or(file.max_queue).unwrap_or(1000).max(1),
            max_watch: args
                .max_watch
                .or(file.max_watch)
                .unwrap_or(Duration::from_secs(24 * 3600)),
            follow_running_scans: args
                .follow_running_scans
                .or(file.follow_running_scans)
                .unwrap_or(true),
            poll_interval: args
                .poll_interval
                .or(file.poll_interval)
                .unwrap_or(Duration::from_secs(10)),
            upstream_timeout: args
                .upstream_timeout
                .or(file.upstream_timeout)
                .unwrap_or(Duration::from_secs(30)),
            token_refresh_margin: args
                .token_refresh_margin
                .or(file.token_refresh_margin)
                .unwrap_or(Duration::from_secs(300)),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(Duration::from_secs(20)),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let positive = |setting, value: Duration| {
            if value.is_zero() {
                Err(ConfigError::Invalid {
                    setting,
                    reason: "must be longer than zero".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("SCAN_GATEWAY_POLL_INTERVAL", self.poll_interval)?;
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.into(),
            })
        };
        // The longest valid StartScan (1,000 four-byte characters of comment, plus ids) is
        // under 4.5 KB: below 8 KiB a valid call could be refused.
        if self.limits.max_message_bytes < 8192 {
            return invalid("SCAN_GATEWAY_MAX_MESSAGE_BYTES", "must be at least 8192");
        }
        if self.limits.max_streams_per_connection == 0 {
            return invalid(
                "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION",
                "must be at least 1",
            );
        }
        if self.limits.caller.max_streams == 0 {
            return invalid("SCAN_GATEWAY_MAX_STREAMS_PER_CALLER", "must be at least 1");
        }
        if let Some(rate) = self.limits.caller.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return invalid(
                "SCAN_GATEWAY_CALLER_RATE",
                "must be a positive number of calls per second, or 0 for no limit",
            );
        }
        if self.limits.caller.burst == 0 {
            return invalid("SCAN_GATEWAY_CALLER_BURST", "must be at least 1");
        }
        positive("SCAN_GATEWAY_UPSTREAM_TIMEOUT", self.upstream_timeout)?;
        if self.token_scope.trim().is_empty() {
            return Err(ConfigError::Invalid {
                setting: "MDE_TOKEN_SCOPE",
                reason: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

fn read_file(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    // toml's messages quote the offending line, which may hold the secret: keep only the
    // position and the kind of problem.
    toml::from_str(&text).map_err(|err| ConfigError::File {
        path: path.clone(),
        reason: match err.span() {
            Some(span) => format!("invalid TOML near byte {}: {}", span.start, err.message()),
            None => format!("invalid TOML: {}", err.message()),
        },
    })
}

fn secret_value(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

mod humantime_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| humantime::parse_duration(&raw).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("scan-gateway-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:6000\"\npoll_interval = \"3s\"\nquota = \"10/1m\"\n",
        )
        .unwrap();
        let args = ConfigArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:7000".parse().unwrap()),
            ..ConfigArgs::default()
        };
        let settings = Settings::load(&args).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(settings.poll_interval, Duration::from_secs(3));
        assert_eq!(settings.quota.per_api[&Api::RunScan].len(), 1);
        std::fs::write(&path, "client_secret = \"hunter2-secret\"\nbogus = 1\n").unwrap();
        let err = Settings::load(&args).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn plain_http_is_refused_for_remote_hosts() {
        let args = ConfigArgs {
            api_base_url: Some("http://api.security.microsoft.com".into()),
            ..ConfigArgs::default()
        };
        let err = Settings::load(&args).unwrap_err().to_string();
        assert!(err.contains("MDE_API_BASE_URL"), "{err}");
    }
}
