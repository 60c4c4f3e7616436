//! Command-line knobs of `scan-gateway simulate` (and `serve --simulate`).
//!
//! Every knob is optional and overrides the chosen profile, so `--profile demo --full-scan 30s`
//! means "the demo, but with slower full scans". Durations use humantime (`30s`, `3m`, `1h`).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

use super::config::{DuplicateMode, SimulatorConfig};
use super::fault_spec::{ApiTarget, FaultSpec};
use super::faults::{EndpointFaults, Faults, ResetPoint};
use super::roles;

/// The preset the knobs start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Profile {
    /// Realistic timings: pending 30 s, quick scan 3 min, full scan 20 min, a few failures.
    #[default]
    Standalone,
    /// Live demo: a quick scan ends in about 10 s and every scan succeeds.
    Demo,
}

/// Quota rules as `LIMIT/WINDOW[,LIMIT/WINDOW...]`, e.g. `100/1m,1500/1h`, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSpec(pub Vec<(u32, Duration)>);

impl FromStr for QuotaSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("none") {
            return Ok(Self(Vec::new()));
        }
        s.split(',')
            .map(|rule| {
                let (limit, window) = rule
                    .trim()
                    .split_once('/')
                    .ok_or_else(|| format!("quota rule '{rule}' must look like 100/1m"))?;
                let limit = limit
                    .trim()
                    .parse::<u32>()
                    .map_err(|e| format!("quota limit '{limit}': {e}"))?;
                let window = humantime::parse_duration(window.trim())
                    .map_err(|e| format!("quota window '{window}': {e}"))?;
                if window.is_zero() {
                    return Err(format!("quota window in '{rule}' must be longer than zero"));
                }
                Ok((limit, window))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

/// Application roles as `ROLE[,ROLE...]`, e.g. `Machine.Read.All,Machine.Scan`, or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesSpec(pub Vec<String>);

impl FromStr for RolesSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(Self(Vec::new()));
        }
        let mut roles = Vec::new();
        for name in s.split(',') {
            let role = roles::parse(name)?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(Self(roles))
    }
}

fn share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a share between 0 and 1")),
    }
}

fn secret(s: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(s))
}

/// `scan-gateway simulate [--listen ADDR] [knobs...]`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Address to serve the simulated Defender API and token endpoint on (plain HTTP).
    #[arg(
        long,
        default_value = "127.0.0.1:8443",
        env = "SCAN_GATEWAY_SIM_LISTEN"
    )]
    pub listen: SocketAddr,
    /// Preset the other knobs start from.
    #[arg(long, value_enum, default_value_t = Profile::Standalone, env = "SCAN_GATEWAY_SIM_PROFILE")]
    pub profile: Profile,
    /// Seed for the inventory, action ids, scan outcomes and faults [default: 42 for the
    /// inventory, and action ids of the run's own].
    #[arg(long, env = "SCAN_GATEWAY_SIM_SEED")]
    pub seed: Option<u64>,
    /// Number of simulated devices [default: 50].
    #[arg(long = "machines", env = "SCAN_GATEWAY_SIM_MACHINES")]
    pub machine_count: Option<usize>,
    /// Tenant id the token endpoint accepts.
    #[arg(long, env = "SCAN_GATEWAY_SIM_TENANT_ID")]
    pub tenant_id: Option<String>,
    /// Application (client) id the token endpoint accepts.
    #[arg(long, env = "SCAN_GATEWAY_SIM_CLIENT_ID")]
    pub client_id: Option<String>,
    /// Client secret the token endpoint accepts [default: simulator-secret].
    #[arg(long, env = "SCAN_GATEWAY_SIM_CLIENT_SECRET", hide_env_values = true, value_parser = secret)]
    pub client_secret: Option<SecretString>,
    /// PEM file whose first certificate is registered on the application: certificate client
    /// assertions must be signed with its key.
    #[arg(long, env = "SCAN_GATEWAY_SIM_CLIENT_CERTIFICATE")]
    pub client_certificate: Option<std::path::PathBuf>,
    /// A federated identity credential: assertions equal to this file's current content
    /// (a projected service-account token) are accepted.
    #[arg(long, env = "SCAN_GATEWAY_SIM_FEDERATED_TOKEN_FILE")]
    pub federated_token_file: Option<std::path::PathBuf>,
    /// Application name reported as the actions' requestor.
    #[arg(long, env = "SCAN_GATEWAY_SIM_APP_NAME")]
    pub app_name: Option<String>,
    /// Application roles granted to the application, the `roles` of its tokens, e.g.
    /// Machine.Read.All,Machine.Scan (the default), or none. A Defender endpoint answers 403
    /// "Missing application roles" to a token without one of its roles.
    #[arg(long, value_name = "ROLES", env = "SCAN_GATEWAY_SIM_APP_ROLES")]
    pub app_roles: Option<RolesSpec>,
    /// Lifetime of issued access tokens, e.g. 1h or 5m.
    #[arg(long, env = "SCAN_GATEWAY_SIM_TOKEN_LIFETIME")]
    pub token_lifetime: Option<humantime::Duration>,
    /// How long a new action stays Pending.
    #[arg(long = "pending", env = "SCAN_GATEWAY_SIM_PENDING")]
    pub pending_duration: Option<humantime::Duration>,
    /// How long a quick scan runs (InProgress).
    #[arg(long = "quick-scan", env = "SCAN_GATEWAY_SIM_QUICK_SCAN")]
    pub quick_scan_duration: Option<humantime::Duration>,
    /// How long a full scan runs (InProgress).
    #[arg(long = "full-scan", env = "SCAN_GATEWAY_SIM_FULL_SCAN")]
    pub full_scan_duration: Option<humantime::Duration>,
    /// How long an offline device's action stays Pending before it times out.
    #[arg(long, env = "SCAN_GATEWAY_SIM_OFFLINE_TIMEOUT")]
    pub offline_timeout: Option<humantime::Duration>,
    /// Share (0..=1) of scans that end Failed.
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAILED_SHARE", value_parser = share)]
    pub failed_share: Option<f64>,
    /// Share (0..=1) of scans that end TimeOut.
    #[arg(long, env = "SCAN_GATEWAY_SIM_TIMED_OUT_SHARE", value_parser = share)]
    pub timed_out_share: Option<f64>,
    /// Answer to a scan request while the device already has one running.
    #[arg(long, value_enum, env = "SCAN_GATEWAY_SIM_DUPLICATE_MODE")]
    pub duplicate_mode: Option<DuplicateMode>,
    /// Per-API quota, e.g. 100/1m,1500/1h (the documented limits, the default), or off.
    #[arg(long, env = "SCAN_GATEWAY_SIM_QUOTA")]
    pub quota: Option<QuotaSpec>,
    /// Latency added to every Defender API call.
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_LATENCY")]
    pub fault_latency: Option<humantime::Duration>,
    /// Share (0..=1) of Defender API calls answered 500 InternalServerError.
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_ERROR_RATE", value_parser = share)]
    pub fault_error_rate: Option<f64>,
    /// Share (0..=1) of Defender API calls answered 429 (see --fault-retry-after).
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_THROTTLE_RATE", value_parser = share)]
    pub fault_throttle_rate: Option<f64>,
    /// Retry-After of injected 429s.
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_RETRY_AFTER")]
    pub fault_retry_after: Option<humantime::Duration>,
    /// Share (0..=1) of Defender API calls that take effect but answer 500 (lost responses).
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_LOST_RESPONSE_RATE", value_parser = share)]
    pub fault_lost_response_rate: Option<f64>,
    /// Share (0..=1) of Defender API calls whose connection is dropped without an answer (see
    /// --fault-reset-at).
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_RESET_RATE", value_parser = share)]
    pub fault_reset_rate: Option<f64>,
    /// Where injected resets cut the call: before it takes effect, after (the scan exists, its
    /// answer is lost), or either, half and half [default: either].
    #[arg(long, value_enum, env = "SCAN_GATEWAY_SIM_FAULT_RESET_AT")]
    pub fault_reset_at: Option<ResetPoint>,
    /// Share (0..=1) of successful Defender API answers whose JSON is garbled (status kept; the
    /// call took effect).
    #[arg(long, env = "SCAN_GATEWAY_SIM_FAULT_MALFORMED_RATE", value_parser = share)]
    pub fault_malformed_rate: Option<f64>,
    /// Share (0..=1) of token requests answered 503 temporarily_unavailable.
    #[arg(long, env = "SCAN_GATEWAY_SIM_TOKEN_ERROR_RATE", value_parser = share)]
    pub token_error_rate: Option<f64>,
    /// Latency added to every token request.
    #[arg(long, env = "SCAN_GATEWAY_SIM_TOKEN_LATENCY")]
    pub token_latency: Option<humantime::Duration>,
    /// Share (0..=1) of token requests whose connection is dropped without an answer (before or
    /// after a token is issued, half and half).
    #[arg(long, env = "SCAN_GATEWAY_SIM_TOKEN_RESET_RATE", value_parser = share)]
    pub token_reset_rate: Option<f64>,
    /// Share (0..=1) of issued tokens whose JSON answer is garbled.
    #[arg(long, env = "SCAN_GATEWAY_SIM_TOKEN_MALFORMED_RATE", value_parser = share)]
    pub token_malformed_rate: Option<f64>,
    /// Refuse every token request as if the client secret had expired (AADSTS7000222).
    #[arg(
        long,
        env = "SCAN_GATEWAY_SIM_TOKEN_SECRET_EXPIRED",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub token_secret_expired: bool,
    /// Answer 403 Forbidden "Missing application roles" on these Defender endpoints: api (all
    /// four) or a list of run-scan, get-action, list-actions, cancel.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "ENDPOINTS",
        env = "SCAN_GATEWAY_SIM_FAULT_FORBIDDEN"
    )]
    pub fault_forbidden: Vec<ApiTarget>,
    /// Faults for one endpoint, e.g. run-scan:error-rate=0.2,latency=2s or cancel:forbidden;
    /// repeatable, applied in order after the other fault flags. ENDPOINT: api (the four
    /// Defender endpoints), token, run-scan, get-action, list-actions, cancel. KNOB: latency,
    /// answer-latency, error-rate, throttle-rate, retry-after, lost-response-rate, forbidden,
    /// reset-rate, reset-at, malformed-rate. In the environment variable, specs are separated
    /// by ';'.
    #[arg(
        long = "fault",
        value_name = "ENDPOINT:KNOB=VALUE,...",
        value_delimiter = ';',
        env = "SCAN_GATEWAY_SIM_FAULT"
    )]
    pub fault: Vec<FaultSpec>,
}

impl SimulatorArgs {
    /// The profile with every given knob applied; fails on an unreadable certificate file.
    pub fn to_config(&self) -> Result<SimulatorConfig, String> {
        let mut c = match self.profile {
            Profile::Standalone => SimulatorConfig::standalone(),
            Profile::Demo => SimulatorConfig::demo(),
        };
        let dur = |d: &Option<humantime::Duration>| d.map(Duration::from);
        // Without a seed, each run gets action ids of its own (the inventory stays the same).
        if self.seed.is_none() {
            c = c.with_fresh_action_ids();
        }
        set(&mut c.seed, self.seed);
        set(&mut c.machine_count, self.machine_count);
        set(&mut c.tenant_id, self.tenant_id.clone());
        set(&mut c.client_id, self.client_id.clone());
        set(&mut c.client_secret, self.client_secret.clone());
        set(&mut c.app_name, self.app_name.clone());
        set(&mut c.app_roles, self.app_roles.clone().map(|r| r.0));
        set(&mut c.token_lifetime, dur(&self.token_lifetime));
        set(&mut c.pending_duration, dur(&self.pending_duration));
        set(&mut c.quick_scan_duration, dur(&self.quick_scan_duration));
        set(&mut c.full_scan_duration, dur(&self.full_scan_duration));
        set(&mut c.offline_timeout, dur(&self.offline_timeout));
        set(&mut c.failed_share, self.failed_share);
        set(&mut c.timed_out_share, self.timed_out_share);
        set(&mut c.duplicate_mode, self.duplicate_mode);
        set(&mut c.quota, self.quota.clone().map(|q| q.0));
        let api = EndpointFaults {
            latency: dur(&self.fault_latency).unwrap_or_default(),
            answer_latency: Duration::ZERO,
            error_rate: self.fault_error_rate.unwrap_or_default(),
            throttle_rate: self.fault_throttle_rate.unwrap_or_default(),
            retry_after: dur(&self.fault_retry_after).unwrap_or(Duration::from_secs(30)),
            lost_response_rate: self.fault_lost_response_rate.unwrap_or_default(),
            forbidden: false,
            reset_rate: self.fault_reset_rate.unwrap_or_default(),
            reset_at: self.fault_reset_at.unwrap_or_default(),
            malformed_rate: self.fault_malformed_rate.unwrap_or_default(),
        };
        c.faults = Faults {
            token: EndpointFaults {
                latency: dur(&self.token_latency).unwrap_or_default(),
                error_rate: self.token_error_rate.unwrap_or_default(),
                reset_rate: self.token_reset_rate.unwrap_or_default(),
                malformed_rate: self.token_malformed_rate.unwrap_or_default(),
                ..EndpointFaults::default()
            },
            token_secret_expired: self.token_secret_expired,
            ..Faults::defender_api(api)
        };
        for target in &self.fault_forbidden {
            target.apply(&mut c.faults);
        }
        // Last, so a spec for one endpoint overrides the flags that set all of them.
        for spec in &self.fault {
            spec.apply(&mut c.faults);
        }
        if let Some(path) = &self.client_certificate {
            use rustls_pki_types::{CertificateDer, pem::PemObject};
            let der = CertificateDer::pem_file_iter(path)
                .ok()
                .and_then(|mut certs| certs.next())
                .and_then(Result::ok)
                .ok_or_else(|| {
                    format!(
                        "--client-certificate {}: no readable PEM certificate",
                        path.display()
                    )
                })?;
            c.client_certificate = Some(der.to_vec());
        }
        if let Some(path) = &self.federated_token_file {
            c.federated_token_file = Some(path.clone());
        }
        Ok(c)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimulatorArgs,
    }

    #[test]
    fn flags_override_the_profile() {
        let cli = Cli::try_parse_from([
            "x",
            "--profile",
            "demo",
            "--full-scan",
            "30s",
            "--quota",
            "5/10s,50/1h",
            "--seed",
            "7",
            "--failed-share",
            "0.5",
            "--duplicate-mode",
            "return-existing",
            "--fault-error-rate",
            "0.1",
            "--client-secret",
            "hunter2",
            "--token-secret-expired",
            "--app-roles",
            "Machine.Scan, Machine.Scan,Machine.Isolate",
        ])
        .unwrap();
        let c = cli.sim.to_config().unwrap();
        assert_eq!(c.app_roles, ["Machine.Scan", "Machine.Isolate"]);
        assert_eq!(cli.sim.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.full_scan_duration, Duration::from_secs(30));
        assert_eq!(c.quick_scan_duration, Duration::from_secs(6));
        assert_eq!(
            c.quota,
            vec![
                (5, Duration::from_secs(10)),
                (50, Duration::from_secs(3600))
            ]
        );
        assert_eq!((c.seed, c.failed_share), (7, 0.5));
        // A seed given: the action ids follow it too.
        assert_eq!(c.action_seed, None);
        assert_eq!(c.duplicate_mode, DuplicateMode::ReturnExisting);
        assert_eq!(c.faults.run_scan.error_rate, 0.1);
        assert_eq!(c.faults.token, EndpointFaults::default());
        assert!(c.faults.token_secret_expired);
        assert!(!format!("{:?} {c:?}", cli.sim).contains("hunter2"));
    }

    #[test]
    fn reset_and_malformed_knobs_reach_every_defender_endpoint() {
        let cli = Cli::try_parse_from([
            "x",
            "--fault-reset-rate",
            "0.25",
            "--fault-reset-at",
            "after",
            "--fault-malformed-rate",
            "0.5",
            "--token-reset-rate",
            "0.1",
            "--token-malformed-rate",
            "0.2",
        ])
        .unwrap();
        let c = cli.sim.to_config().unwrap();
        for f in [
            &c.faults.run_scan,
            &c.faults.get_action,
            &c.faults.list_actions,
            &c.faults.cancel,
        ] {
            assert_eq!((f.reset_rate, f.reset_at), (0.25, ResetPoint::After));
            assert_eq!(f.malformed_rate, 0.5);
        }
        assert_eq!(
            (c.faults.token.reset_rate, c.faults.token.malformed_rate),
            (0.1, 0.2)
        );
        assert_eq!(c.faults.token.reset_at, ResetPoint::Either);
        let c = Cli::try_parse_from(["x"]).unwrap().sim.to_config().unwrap();
        assert_eq!(c.faults.run_scan.reset_at, ResetPoint::Either);
        assert_eq!(
            (
                c.faults.run_scan.reset_rate,
                c.faults.run_scan.malformed_rate
            ),
            (0.0, 0.0)
        );
    }

    #[test]
    fn defaults_are_the_standalone_profile_without_faults() {
        let c = Cli::try_parse_from(["x"]).unwrap().sim.to_config().unwrap();
        assert_eq!(c.pending_duration, Duration::from_secs(30));
        assert_eq!(c.quota, crate::config::default_quota());
        assert_eq!(c.faults.cancel.error_rate, 0.0);
        assert_eq!(c.app_roles, ["Machine.Read.All", "Machine.Scan"]);
        let none = Cli::try_parse_from(["x", "--app-roles", "none"]).unwrap();
        assert!(none.sim.to_config().unwrap().app_roles.is_empty());
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["x", "--failed-share", "1.5"][..],
            &["x", "--quota", "100"],
            &["x", "--quota", "100/0s"],
            &["x", "--pending", "soon"],
            &["x", "--fault-reset-rate", "2"],
            &["x", "--fault-malformed-rate", "-0.1"],
            &["x", "--fault-reset-at", "sometimes"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        assert_eq!("off".parse::<QuotaSpec>(), Ok(QuotaSpec(vec![])));
    }
}
