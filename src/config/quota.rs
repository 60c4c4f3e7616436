//! The quota settings' syntax: `100/1m,1500/1h`, calls per window, per Defender API.

use std::str::FromStr;

use super::{ConfigError, Values};
use crate::{
    quota::{Limit, Limits},
    upstream::Api,
};

/// The limits of every API (the default, or each API's own) and the optional overall cap, each
/// window lengthened by the margin.
pub(super) fn limits(v: &Values) -> Result<Limits, ConfigError> {
    let parse = |setting: &str, raw: &str| {
        parse_quota(raw)
            .map(|limits| {
                limits
                    .into_iter()
                    .map(|l| Limit {
                        calls: l.calls,
                        window: l.window + v.quota_margin,
                    })
                    .collect()
            })
            .map_err(|reason| ConfigError::invalid(setting, reason))
    };
    let mut limits = Limits::uniform(parse("quota", &v.quota)?);
    for (api, setting, raw) in [
        (
            Api::RunScan,
            "quota_run_antivirus_scan",
            &v.quota_run_antivirus_scan,
        ),
        (
            Api::GetAction,
            "quota_get_machine_action",
            &v.quota_get_machine_action,
        ),
        (
            Api::ListActions,
            "quota_list_machine_actions",
            &v.quota_list_machine_actions,
        ),
        (
            Api::CancelAction,
            "quota_cancel_machine_action",
            &v.quota_cancel_machine_action,
        ),
    ] {
        if let Some(raw) = raw {
            limits.per_api.insert(api, parse(setting, raw)?);
        }
    }
    if let Some(raw) = &v.quota_total {
        limits.total = Some(parse("quota_total", raw)?);
    }
    Ok(limits)
}

/// The calls of the limit with `window` of `api`'s bucket (`None`: the overall cap).
pub(super) fn whole_limit(limits: &Limits, api: Option<Api>, window: std::time::Duration) -> u32 {
    let bucket = match api {
        Some(api) => limits.per_api.get(&api),
        None => limits.total.as_ref(),
    };
    bucket
        .into_iter()
        .flatten()
        .find(|l| l.window == window)
        .map_or(0, |l| l.calls)
}

/// Parses `100/1m,1500/1h`: calls per window, comma-separated; windows in humantime.
pub fn parse_quota(raw: &str) -> Result<Vec<Limit>, String> {
    let limits = raw
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (calls, window) = pair
                .split_once('/')
                .ok_or_else(|| format!("`{pair}` is not CALLS/WINDOW, e.g. 100/1m"))?;
            let calls = u32::from_str(calls.trim())
                .ok()
                .filter(|&c| c > 0)
                .ok_or_else(|| format!("`{calls}` in `{pair}` is not a positive number"))?;
            let window = humantime::parse_duration(window.trim())
                .ok()
                .filter(|w| !w.is_zero())
                .ok_or_else(|| format!("`{window}` in `{pair}` is not a duration like 1m or 1h"))?;
            Ok(Limit { calls, window })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if limits.is_empty() {
        return Err("at least one CALLS/WINDOW pair is required".into());
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::DEFAULT_QUOTA;

    #[test]
    fn quota_pairs_parse() {
        let limits = parse_quota(DEFAULT_QUOTA).unwrap();
        assert_eq!(
            limits,
            [
                Limit {
                    calls: 100,
                    window: Duration::from_secs(60)
                },
                Limit {
                    calls: 1500,
                    window: Duration::from_secs(3600)
                }
            ]
        );
        for bad in ["", "100", "0/1m", "100/0s", "x/1m", "100/soon"] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_environment_variable_of_the_quota() {
        let err = crate::config::ConfigArgs {
            quota_list_machine_actions: Some("often".into()),
            ..crate::config::ConfigArgs::default()
        }
        .resolve()
        .and_then(|v| limits(&v))
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid SCAN_GATEWAY_QUOTA_LIST_MACHINE_ACTIONS: "),
            "{err}"
        );
    }
}
