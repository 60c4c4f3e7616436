//! Every setting, declared once: its flag, environment variable, file key, help, default and
//! check (the syntax is `layer::settings!`'s).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;

use super::layer::{at_least, not_blank, positive, redis_prefix, settings, share};
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
        #[arg(long, env = "SCAN_GATEWAY_TOKEN_REFRESH_MARGIN", value_parser = super::layer::duration)]
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
        #[arg(long, env = "SCAN_GATEWAY_QUOTA_MARGIN", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub quota_margin: Option<Duration> = "250ms",
        /// Most calls waiting for quota per API; beyond, calls are refused.
        #[arg(long, env = "SCAN_GATEWAY_MAX_QUEUE")]
        pub max_queue: Option<usize> = "1000",
        /// The least share of admissions background-priority calls get while more urgent ones
        /// wait too (above 0, at most 1), so background never starves.
        #[arg(long, env = "SCAN_GATEWAY_BACKGROUND_FLOOR")]
        pub background_floor: Option<f64> = "0.1", check = share,
        /// Redis shared by all replicas for one quota (`redis://host:6379/0`); without it the
        /// quota is kept in this process.
        #[arg(long, env = "SCAN_GATEWAY_REDIS_URL", hide_env_values = true, value_parser = secret_value)]
        pub redis_url: Option<SecretString>,
        /// Prefix of every Redis key (the quota, the request_id claims): deployments that share
        /// one Redis (tenants, staging beside production) must each have their own.
        #[arg(long, env = "SCAN_GATEWAY_REDIS_PREFIX")]
        pub redis_prefix: Option<String> = "scan-gateway", check = redis_prefix,
        /// Replicas sharing the quota: without Redis, or while it is unreachable, each replica keeps
        /// to its share (each limit divided by this).
        #[arg(long, env = "SCAN_GATEWAY_REPLICAS")]
        pub replicas: Option<u32> = "1", check = at_least(1),
        /// Longest wait for a Redis answer before falling back.
        #[arg(long, env = "SCAN_GATEWAY_REDIS_TIMEOUT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub redis_timeout: Option<Duration> = "250ms",
        /// Longest a call waits for quota before RESOURCE_EXHAUSTED.
        #[arg(long, env = "SCAN_GATEWAY_MAX_QUOTA_WAIT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub max_quota_wait: Option<Duration> = "5m",

        // === following scans ===
        /// Longest one stream follows an action before DEADLINE_EXCEEDED (resume with WatchScan).
        #[arg(long, env = "SCAN_GATEWAY_MAX_WATCH", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub max_watch: Option<Duration> = "24h",
        /// Longest a stream rides out an upstream outage (telling its caller that updates are
        /// delayed) before it ends UNAVAILABLE with the last known status.
        #[arg(long, env = "SCAN_GATEWAY_STREAM_RIDE_OUT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub stream_ride_out: Option<Duration> = "10m",
        /// A scan requested for a machine that is already scanning returns that scan when it
        /// is at least as thorough (else waits for its end); `false` answers Defender's
        /// "already in progress" with ALREADY_EXISTS instead.
        #[arg(long, env = "SCAN_GATEWAY_FOLLOW_RUNNING_SCANS", value_parser = clap::builder::BoolishValueParser::new())]
        pub follow_running_scans: Option<bool> = "true",
        /// Time between status refreshes of followed scans.
        #[arg(long, env = "SCAN_GATEWAY_POLL_INTERVAL", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub poll_interval: Option<Duration> = "10s", check = positive,
        /// How old a state GetScan may answer without calling Defender (the watcher's, or a
        /// recent read); unset: twice the poll interval. Callers can ask for a fresh read.
        #[arg(long, env = "SCAN_GATEWAY_READ_FRESHNESS", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub read_freshness: Option<Duration>,
        /// Longest one upstream HTTP exchange may take.
        #[arg(long, env = "SCAN_GATEWAY_UPSTREAM_TIMEOUT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub upstream_timeout: Option<Duration> = "30s", check = positive,
        /// On SIGTERM, how long in-flight calls may take to finish before connections are closed
        /// (keep it under the pod's terminationGracePeriodSeconds).
        #[arg(long, env = "SCAN_GATEWAY_SHUTDOWN_GRACE", value_parser = super::layer::duration)]
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
        /// From accepting a connection to its TLS handshake and HTTP/2 preface with the first
        /// frame; a slower or silent peer is disconnected.
        #[arg(long, env = "SCAN_GATEWAY_HANDSHAKE_TIMEOUT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub handshake_timeout: Option<Duration> = "5s", check = positive,
        /// A connection with no call in flight for this long is closed.
        #[arg(long, env = "SCAN_GATEWAY_IDLE_TIMEOUT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub idle_timeout: Option<Duration> = "5m", check = positive,
        /// Time between HTTP/2 keep-alive pings to each client.
        #[arg(long, env = "SCAN_GATEWAY_KEEPALIVE_INTERVAL", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub keepalive_interval: Option<Duration> = "30s", check = positive,
        /// A keep-alive ping unanswered this long closes the connection (a dead peer).
        #[arg(long, env = "SCAN_GATEWAY_KEEPALIVE_TIMEOUT", value_parser = super::layer::duration)]
        #[serde(with = "super::layer::humantime_option")]
        pub keepalive_timeout: Option<Duration> = "10s", check = positive,
        /// Open client connections; beyond, new ones are closed at accept.
        #[arg(long, env = "SCAN_GATEWAY_MAX_CONNECTIONS")]
        pub max_connections: Option<usize> = "4096", check = at_least(1),
        /// Open client connections per peer IP address; beyond, new ones are closed at accept.
        #[arg(long, env = "SCAN_GATEWAY_MAX_CONNECTIONS_PER_PEER")]
        pub max_connections_per_peer: Option<usize> = "512", check = at_least(1),
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
        /// Serve callers without authentication (no mutual TLS, no JWTs) in real mode: every
        /// caller may then do everything with the tenant's credential. Without it, `serve`
        /// refuses to start unauthenticated (`serve --simulate` stays open).
        #[arg(long, env = "SCAN_GATEWAY_ALLOW_UNAUTHENTICATED", value_parser = clap::builder::BoolishValueParser::new())]
        pub allow_unauthenticated: Option<bool> = "false",
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

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use clap::{Args, FromArgMatches};
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::layer;

    /// `serve`'s settings, the environment left out: tests must not depend on it.
    fn command() -> clap::Command {
        ConfigArgs::augment_args(clap::Command::new("serve")).mut_args(|arg| arg.env(None))
    }

    /// Two values of a setting's type: as typed after its flag, and as written in the file.
    fn samples(arg: &clap::Arg) -> [(&'static str, &'static str); 2] {
        let is = |id: TypeId| arg.get_value_parser().type_id() == id;
        if is(TypeId::of::<Duration>()) {
            [("7s", "\"7s\""), ("8s", "\"8s\"")]
        } else if is(TypeId::of::<SocketAddr>()) {
            [
                ("127.0.0.1:7", "\"127.0.0.1:7\""),
                ("127.0.0.1:8", "\"127.0.0.1:8\""),
            ]
        } else if is(TypeId::of::<bool>()) {
            [("true", "true"), ("false", "false")]
        } else if [
            TypeId::of::<usize>(),
            TypeId::of::<u32>(),
            TypeId::of::<f64>(),
        ]
        .into_iter()
        .any(is)
        {
            [("7", "7"), ("8", "8")]
        } else if [
            TypeId::of::<String>(),
            TypeId::of::<PathBuf>(),
            TypeId::of::<SecretString>(),
        ]
        .into_iter()
        .any(is)
        {
            [("/seven", "\"/seven\""), ("/eight", "\"/eight\"")]
        } else {
            panic!("no sample values for the type of {:?}", arg.get_id())
        }
    }

    #[test]
    fn every_setting_takes_its_flag_over_its_file_key_over_its_default() {
        // Clap reads a setting's environment variable only when its flag is absent, into the
        // same field: the environment ranks with the flags, over the file.
        let command = command();
        let flag = |long: &str, value: &str| {
            let matches = command
                .clone()
                .try_get_matches_from(["serve".to_owned(), format!("--{long}={value}")])
                .unwrap();
            ConfigArgs::from_arg_matches(&matches).unwrap()
        };
        let file = |key: &str, value: &str| {
            layer::parse_file::<ConfigArgs>(&format!("{key} = {value}")).unwrap()
        };
        // Over the defaults, as `resolve` does (without the checks: samples need not pass them).
        let shown = |layer: &ConfigArgs| format!("{:?}", layer.clone().or(ConfigArgs::defaults()));
        let default = shown(&ConfigArgs::default());
        let mut tested = 0;
        for arg in command
            .get_arguments()
            .filter(|arg| arg.get_id() != "config")
        {
            let key = arg.get_id().as_str();
            let long = arg.get_long().expect("every setting has a flag");
            let mut samples = samples(arg);
            if shown(&file(key, samples[1].1)) == default {
                samples.swap(0, 1);
            }
            let (flag, file) = (flag(long, samples[0].0), file(key, samples[1].1));
            assert_ne!(shown(&file), default, "{key}: the file is ignored");
            let merged = flag.clone().or(file.clone());
            if shown(&flag) != shown(&file) {
                assert_eq!(
                    shown(&merged),
                    shown(&flag),
                    "{key}: the file beats the flag"
                );
            } else {
                // `Debug` hides a secret's value.
                assert_eq!(key, "redis_url");
                let url = merged.redis_url.expect("set");
                assert_eq!(url.expose_secret(), samples[0].0, "{key}");
            }
            tested += 1;
        }
        assert!(tested > 30, "only {tested} settings");
    }

    #[test]
    fn every_flag_has_help_an_environment_variable_and_its_default_in_the_help() {
        let command = ConfigArgs::augment_args(clap::Command::new("serve"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(arg.get_env().is_some(), "{id} has no environment variable");
            assert!(arg.get_long().is_some(), "{id} has no flag");
            match ConfigArgs::DEFAULTS.iter().find(|(key, _)| *key == id) {
                Some((_, default)) => assert!(
                    help.ends_with(&format!(" [default: {default}]")),
                    "{id}: {help}"
                ),
                None => assert!(!help.contains("[default:"), "{id}: {help}"),
            }
            assert!(!help.starts_with(" ["), "{id} has no help");
        }
    }

    #[test]
    fn the_defaults_parse_and_pass_their_checks() {
        let values = ConfigArgs::default().resolve().unwrap();
        assert_eq!(values.listen, SocketAddr::from(([0, 0, 0, 0], 50051)));
        assert_eq!(values.token_refresh_margin, Duration::from_secs(300));
        assert_eq!(values.quota, DEFAULT_QUOTA);
        assert!(values.follow_running_scans && !values.send_certificate_chain);
        assert_eq!(values.caller_rate, 100.0);
    }

    #[test]
    fn a_refused_value_names_its_environment_variable() {
        let err = ConfigArgs {
            poll_interval: Some(Duration::ZERO),
            ..ConfigArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SCAN_GATEWAY_POLL_INTERVAL: must be longer than zero"
        );
        let err = layer::parse_file::<ConfigArgs>("max_message_bytes = 4096")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid SCAN_GATEWAY_MAX_MESSAGE_BYTES: must be at least 8192"
        );
    }
}
