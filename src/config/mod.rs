//! Settings: command-line flag > environment variable > config file (`--config FILE`, TOML) >
//! default. Environment names are the ones Azure and OpenTelemetry users already know.
//! Secrets are `SecretString`: `Debug` prints `[REDACTED]`, and no error quotes them.
//!
//! Each setting is declared once, in `args.rs`: one struct is the flags (clap reads the
//! environment too) and the file (serde). Layers of it merge with one generated `or`; the
//! result, defaults filled in and checked, becomes the typed [`Settings`] here.

mod args;
mod identity;
mod layer;
mod quota;
mod security;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::ExposeSecret;
use url::Url;

pub use args::{
    ConfigArgs, DEFAULT_API_BASE, DEFAULT_AUTHORITY, DEFAULT_QUOTA, DEFAULT_SCOPE, Values,
};
pub use identity::Credentials;
pub use quota::parse_quota;

use crate::{
    quota::{Limits, SharedConfig},
    security::{CallerLimits, ConnectionLimits, SecuritySettings},
    upstream,
};

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
    /// The part of each quota window that covers a call's way to Defender.
    pub quota_margin: Duration,
    pub max_queue: usize,
    /// The least share of admissions background calls get while more urgent ones wait.
    pub background_floor: f64,
    /// Shared quota in Redis; `None` keeps it in this process.
    pub redis: Option<SharedConfig>,
    /// Prefix of every Redis key this deployment writes.
    pub redis_prefix: String,
    /// Replicas sharing the quota (`SCAN_GATEWAY_REPLICAS`). Without Redis each replica keeps
    /// to its share; with Redis the share applies only while Redis is unreachable.
    pub replicas: u32,
    pub poll_interval: Duration,
    /// How old a state `GetScan` may answer without a call (default: twice the poll interval).
    pub read_freshness: Duration,
    pub max_watch: Duration,
    pub stream_ride_out: Duration,
    pub follow_running_scans: bool,
    pub upstream_timeout: Duration,
    pub token_refresh_margin: Duration,
    pub shutdown_grace: Duration,
    /// Inbound TLS, caller authentication and the policy; all off by default.
    pub security: SecuritySettings,
    /// Real mode may serve without caller authentication (`serve` refuses otherwise).
    pub allow_unauthenticated: bool,
    pub limits: InboundLimits,
}

/// What one request, connection or caller may take of the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundLimits {
    pub max_message_bytes: usize,
    pub max_streams_per_connection: u32,
    pub caller: CallerLimits,
    pub connections: ConnectionLimits,
}

/// A setting that cannot be used. Never quotes a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// `setting` is the environment variable (else the file key) of the setting.
    #[error("invalid {setting}: {reason}")]
    Invalid { setting: String, reason: String },
    #[error(
        "incomplete credentials: {missing} must be set too (the Entra ID application needs a tenant, a client id and one way to prove itself: a secret, a certificate or a federated token)"
    )]
    IncompleteCredentials { missing: String },
}

// === impl ConfigError ===

impl ConfigError {
    /// The setting whose file key is `key` cannot be used.
    pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: layer::name_of::<ConfigArgs>(key),
            reason: reason.into(),
        }
    }
}

// === impl Settings ===

impl Settings {
    /// Merges flags and environment (already merged by clap), `AZURE_CLIENT_SECRET`, the config
    /// file and the defaults, then types and checks the result.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => layer::read_file(path)?,
            None => ConfigArgs::default(),
        };
        let values = args
            .clone()
            .or(args::environment_only())
            .or(file)
            .resolve()?;
        Self::from_values(values)
    }

    /// Types the settings, checking those that go together.
    fn from_values(v: Values) -> Result<Self, ConfigError> {
        let auth = identity::client_auth(
            v.client_secret.clone(),
            v.client_certificate_path
                .clone()
                .map(|path| (path, v.send_certificate_chain)),
            v.federated_token_file.clone(),
        );
        let credentials = identity::credentials(v.tenant_id.clone(), v.client_id.clone(), auth)?;
        let url = |key, raw: &str| {
            upstream::parse_base_url(raw).map_err(|err| ConfigError::invalid(key, err.to_string()))
        };
        let authority_host = url("authority_host", &v.authority_host)?;
        let api_base_url = url("api_base_url", &v.api_base_url)?;
        let quota = quota::limits(&v)?;
        let security = security::resolve(&v).map_err(|err| ConfigError::Invalid {
            setting: err.setting.to_owned(),
            reason: err.reason,
        })?;
        let redis = v
            .redis_url
            .filter(|url| !url.expose_secret().trim().is_empty())
            .map(|url| SharedConfig {
                url,
                replicas: v.replicas,
                prefix: format!("{}:quota", v.redis_prefix),
                timeout: v.redis_timeout,
            });
        // Without Redis each replica keeps to its share alone: a share of nothing would refuse
        // every call on that API for good.
        if redis.is_none()
            && let Some((api, limit)) = quota.share(v.replicas).first_empty()
        {
            let whole = quota::whole_limit(&quota, api, limit.window);
            return Err(ConfigError::invalid(
                "replicas",
                format!(
                    "{whole} calls per {} of {} split over {} replicas leaves each replica none; \
                     share the quota through Redis (SCAN_GATEWAY_REDIS_URL) or run fewer replicas",
                    humantime::format_duration(limit.window - v.quota_margin),
                    api.map_or("all APIs together", |api| api.as_str()),
                    v.replicas
                ),
            ));
        }
        let limits = InboundLimits {
            max_message_bytes: v.max_message_bytes,
            max_streams_per_connection: v.max_streams_per_connection,
            caller: CallerLimits {
                rate: match v.caller_rate {
                    // 0 turns the limit off.
                    0.0 => None,
                    rate => Some(rate),
                },
                burst: v.caller_burst,
                max_streams: v.max_streams_per_caller,
            },
            connections: ConnectionLimits {
                handshake: v.handshake_timeout,
                idle: v.idle_timeout,
                keepalive_interval: v.keepalive_interval,
                keepalive_timeout: v.keepalive_timeout,
                max_total: v.max_connections,
                max_per_peer: v.max_connections_per_peer,
            },
        };
        Ok(Settings {
            limits,
            security,
            allow_unauthenticated: v.allow_unauthenticated,
            credentials,
            authority_host,
            api_base_url,
            token_scope: v.token_scope,
            listen: v.listen,
            admin_listen: v.admin_listen,
            quota,
            redis,
            replicas: v.replicas,
            max_quota_wait: v.max_quota_wait,
            quota_margin: v.quota_margin,
            redis_prefix: v.redis_prefix.clone(),
            max_queue: v.max_queue.max(1),
            background_floor: v.background_floor,
            max_watch: v.max_watch,
            stream_ride_out: v.stream_ride_out,
            follow_running_scans: v.follow_running_scans,
            poll_interval: v.poll_interval,
            // The watcher confirms every poll interval; twice that lets a refresh be late
            // without every reader of every followed action falling through to a GET.
            read_freshness: v
                .read_freshness
                .unwrap_or(v.poll_interval.saturating_mul(2)),
            upstream_timeout: v.upstream_timeout,
            token_refresh_margin: v.token_refresh_margin,
            shutdown_grace: v.shutdown_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Api;

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
    fn a_duration_past_a_century_is_refused_where_it_is_given() {
        // Deadlines are now + a setting: an instant the clock cannot hold would panic later.
        let err = layer::duration("500000000000y").unwrap_err();
        assert!(err.contains("at most 100 years"), "{err}");
        assert_eq!(layer::duration("24h"), Ok(Duration::from_secs(86_400)));
        let refused = <ConfigArgs as clap::Args>::augment_args(clap::Command::new("serve"))
            .try_get_matches_from(["serve", "--max-watch", "500000000000y"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("at most 100 years"), "{refused}");
        let dir = std::env::temp_dir().join(format!("scan-gateway-long-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, "handshake_timeout = \"500000000000y\"\n").unwrap();
        let args = ConfigArgs {
            config: Some(path),
            ..ConfigArgs::default()
        };
        let err = Settings::load(&args).unwrap_err().to_string();
        assert!(err.contains("at most 100 years"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_share_of_no_calls_is_refused_without_redis_only() {
        // 2 per 5 s over 3 replicas: rounded up, the shares would sum to 3.
        let args = ConfigArgs {
            quota: Some("100/1m,2/5s".into()),
            replicas: Some(3),
            ..ConfigArgs::default()
        };
        let err = Settings::load(&args).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid SCAN_GATEWAY_REPLICAS: 2 calls per 5s"),
            "{err}"
        );
        assert!(err.contains("SCAN_GATEWAY_REDIS_URL"), "{err}");
        // With Redis the share only applies while Redis is away: it may be nothing.
        let shared = ConfigArgs {
            redis_url: Some("redis://127.0.0.1:6379/0".to_owned().into()),
            ..args
        };
        let settings = Settings::load(&shared).expect("a shared quota may leave no fallback share");
        let share = settings.quota.share(3);
        assert_eq!(share.first_empty().map(|(_, l)| l.calls), Some(0));
    }

    #[test]
    fn every_redis_key_carries_the_deployment_prefix() {
        let args = ConfigArgs {
            redis_url: Some("redis://127.0.0.1:6379/0".to_owned().into()),
            redis_prefix: Some("contoso-prod".into()),
            ..ConfigArgs::default()
        };
        let settings = Settings::load(&args).unwrap();
        assert_eq!(settings.redis_prefix, "contoso-prod");
        assert_eq!(settings.redis.unwrap().prefix, "contoso-prod:quota");
        let bad = ConfigArgs {
            redis_prefix: Some("two words".into()),
            ..args
        };
        let err = Settings::load(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid SCAN_GATEWAY_REDIS_PREFIX"),
            "{err}"
        );
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
