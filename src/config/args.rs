//! Every setting, declared once: its flag, environment variable, file key, help, default and
//! check (the syntax is `layer::settings!`'s).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;

use super::layer::{at_least, not_blank, positive, settings};
use crate::security::Rule;

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_API_BASE: &str = "https://api.security.microsoft.com";
pub const DEFAULT_SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";
pub const DEFAULT_QUOTA: &str = "100/1m,1500/1h";

settings! {
    /// Flags of `serve`, each also read from its environment variable; the same struct, keys
    /// snake_case, is the config file.
    #[derive(Debug, Default, Clone, clap::Args, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ConfigArgs => Values {
        /// TOML file with any of the settings below (snake_case keys, e.g. `listen = "..."`).
        #[arg(long, env = "SCAN_GATEWAY_CONFIG")]
        #[serde(skip)]
        pub config: Option<PathBuf>,

        // === the application's identity (see `crate::credentials`) ===
        /// Microsoft Entra tenant (directory) id.
        #[arg(long, env = "AZURE_TENANT_ID")]
        pub tenant_id: Option<String>,
        /// Application (client) id of the gateway's app registration.
        #[arg(long, env = "AZURE_CLIENT_ID")]
        pub client_id: Option<String>,
        /// Client secret value of that application: `AZURE_CLIENT_SECRET` or the file only, a
        /// flag would show in `ps` (read by [`environment_only`]).
        #[arg(skip)]
        pub client_secret: Option<SecretString>,
        /// PEM file with the application's certificate and its unencrypted RSA private key.
        #[arg(long, env = "AZURE_CLIENT_CERTIFICATE_PATH")]
        pub client_certificate_path: Option<PathBuf>,
        /// Send the certificate chain (x5c) with certificate assertions (subject name/issuer auth).
        #[arg(long, env = "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", value_parser = clap::builder::BoolishValueParser::new())]
        pub send_certificate_chain: Option<bool> = "false",
        /// Projected service-account token for workload identity federation (set by the
        /// Azure workload identity webhook on Kubernetes).
        #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE")]
        pub federated_token_file: Option<PathBuf>,
        /// Refresh the access token this long before it expires (at most a quarter of its
        /// lifetime).
        #[arg(long, env = "SCAN_GATEWAY_TOKEN_REFRESH_MARGIN", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub token_refresh_margin: Option<Duration> = "5m",
        /// Token authority.
        #[arg(long, env = "AZURE_AUTHORITY_HOST")]
        pub authority_host: Option<String> = DEFAULT_AUTHORITY,
        /// Defender API base URL.
        #[arg(long, env = "MDE_API_BASE_URL")]
        pub api_base_url: Option<String> = DEFAULT_API_BASE,
        /// OAuth2 scope of the token.
        #[arg(long, env = "MDE_TOKEN_SCOPE")]
        pub token_scope: Option<String> = DEFAULT_SCOPE, check = not_blank,

        // === listeners ===
        /// gRPC listen address.
        #[arg(long, env = "SCAN_GATEWAY_LISTEN")]
        pub listen: Option<SocketAddr> = "0.0.0.0:50051",
        /// Admin (health, metrics) listen address.
        #[arg(long, env = "SCAN_GATEWAY_ADMIN_LISTEN")]
        pub admin_listen: Option<SocketAddr> = "0.0.0.0:9464",

        // === the Defender quota (see `crate::quota`) ===
        /// Quota per Defender API, as calls/window pairs.
        #[arg(long, env = "SCAN_GATEWAY_QUOTA")]
        pub quota: Option<String> = DEFAULT_QUOTA,
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
        /// Optional overall cap across all APIs, as calls/window pairs.
        #[arg(long, env = "SCAN_GATEWAY_QUOTA_TOTAL")]
        pub quota_total: Option<String>,
        /// Added to every quota window, so network jitter between admission here and counting
        /// upstream can never make Defender see a full window plus one.
        #[arg(long, env = "SCAN_GATEWAY_QUOTA_MARGIN", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub quota_margin: Option<Duration> = "250ms",
        /// Most calls waiting for quota per API; beyond, calls are refused.
        #[arg(long, env = "SCAN_GATEWAY_MAX_QUEUE")]
        pub max_queue: Option<usize> = "1000",
        /// Redis shared by all replicas for one quota (`redis://host:6379/0`); without it the
        /// quota is kept in this process.
        #[arg(long, env = "SCAN_GATEWAY_REDIS_URL", hide_env_values = true, value_parser = secret_value)]
        pub redis_url: Option<SecretString>,
        /// Replicas sharing the quota: without Redis, or while it is unreachable, each replica keeps
        /// to its share (each limit divided by this).
        #[arg(long, env = "SCAN_GATEWAY_REPLICAS")]
        pub replicas: Option<u32> = "1", check = at_least(1),
        /// Longest wait for a Redis answer before falling back.
        #[arg(long, env = "SCAN_GATEWAY_REDIS_TIMEOUT", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub redis_timeout: Option<Duration> = "250ms",
        /// Longest a call waits for quota before RESOURCE_EXHAUSTED.
        #[arg(long, env = "SCAN_GATEWAY_MAX_QUOTA_WAIT", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub max_quota_wait: Option<Duration> = "5m",

        // === following scans ===
        /// Longest one stream follows an action before DEADLINE_EXCEEDED (resume with WatchScan).
        #[arg(long, env = "SCAN_GATEWAY_MAX_WATCH", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub max_watch: Option<Duration> = "24h",
        /// A scan requested for a machine that is already scanning returns that scan; `false`
        /// answers ALREADY_EXISTS instead.
        #[arg(long, env = "SCAN_GATEWAY_FOLLOW_RUNNING_SCANS", value_parser = clap::builder::BoolishValueParser::new())]
        pub follow_running_scans: Option<bool> = "true",
        /// Time between status refreshes of followed scans.
        #[arg(long, env = "SCAN_GATEWAY_POLL_INTERVAL", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub poll_interval: Option<Duration> = "10s", check = positive,
        /// Longest one upstream HTTP exchange may take.
        #[arg(long, env = "SCAN_GATEWAY_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub upstream_timeout: Option<Duration> = "30s", check = positive,
        /// On SIGTERM, how long in-flight calls may take to finish before connections are closed
        /// (keep it under the pod's terminationGracePeriodSeconds).
        #[arg(long, env = "SCAN_GATEWAY_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub shutdown_grace: Option<Duration> = "20s",

        // === inbound limits (see `crate::security::limits`) ===
        /// Largest request message accepted, in bytes; larger ones are refused with
        /// OUT_OF_RANGE before they are parsed.
        // The longest valid StartScan (1,000 four-byte characters of comment, plus ids) is
        // under 4.5 KB: below 8 KiB a valid call could be refused.
        #[arg(long, env = "SCAN_GATEWAY_MAX_MESSAGE_BYTES")]
        pub max_message_bytes: Option<usize> = "65536", check = at_least(8192),
        /// Concurrent HTTP/2 streams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS:
        /// clients wait for a free stream).
        #[arg(long, env = "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION")]
        pub max_streams_per_connection: Option<u32> = "1000", check = at_least(1),
        /// Open RunScan/WatchScan streams per caller (identity, else IP address); beyond,
        /// RESOURCE_EXHAUSTED.
        #[arg(long, env = "SCAN_GATEWAY_MAX_STREAMS_PER_CALLER")]
        pub max_streams_per_caller: Option<usize> = "10000", check = at_least(1),
        /// Sustained calls per second per caller; 0 turns the limit off.
        #[arg(long, env = "SCAN_GATEWAY_CALLER_RATE")]
        pub caller_rate: Option<f64> = "100", check = calls_per_second,
        /// Calls per caller allowed at once above the sustained rate.
        #[arg(long, env = "SCAN_GATEWAY_CALLER_BURST")]
        pub caller_burst: Option<u32> = "1000", check = at_least(1),

        // === who may call (see `crate::security`; checked together there) ===
        /// PEM certificate chain of the gRPC port; with SCAN_GATEWAY_TLS_KEY turns TLS on
        /// (reloaded when the file changes).
        #[arg(long, env = "SCAN_GATEWAY_TLS_CERT")]
        pub tls_cert: Option<PathBuf>,
        /// PEM private key of that certificate.
        #[arg(long, env = "SCAN_GATEWAY_TLS_KEY")]
        pub tls_key: Option<PathBuf>,
        /// PEM CA bundle of client certificates: turns on mutual TLS (required unless JWTs are
        /// also accepted); the caller is the certificate's URI SAN, else its DNS SAN.
        #[arg(long, env = "SCAN_GATEWAY_TLS_CLIENT_CA")]
        pub tls_client_ca: Option<PathBuf>,
        /// JWKS verifying callers' bearer JWTs: a file path (reloaded when it changes) or an
        /// https URL (refreshed every 5 minutes).
        #[arg(long, env = "SCAN_GATEWAY_JWKS")]
        pub jwks: Option<String>,
        /// Required `iss` of callers' JWTs.
        #[arg(long, env = "SCAN_GATEWAY_JWT_ISSUER")]
        pub jwt_issuer: Option<String>,
        /// Required `aud` of callers' JWTs.
        #[arg(long, env = "SCAN_GATEWAY_JWT_AUDIENCE")]
        pub jwt_audience: Option<String>,
        /// File only: a `[policy]` table of caller identity pattern → role (see
        /// `security::policy`).
        #[arg(skip)]
        pub policy: Option<BTreeMap<String, Rule>>,
    }
}

/// The layer of settings read from the environment alone: `AZURE_CLIENT_SECRET`.
pub fn environment_only() -> ConfigArgs {
    ConfigArgs {
        client_secret: std::env::var("AZURE_CLIENT_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        ..ConfigArgs::default()
    }
}

fn secret_value(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw.to_owned()))
}

fn calls_per_second(rate: &f64) -> Result<(), String> {
    if *rate == 0.0 || (rate.is_finite() && *rate > 0.0) {
        return Ok(());
    }
    Err("must be a positive number of calls per second, or 0 for no limit".into())
}
