//! The quota settings' syntax: `100/1m,1500/1h`, calls per window, per Defender API.

use std::{str::FromStr, time::Duration};

use super::{ConfigError, DEFAULT_QUOTA};
use crate::{
    quota::{Limit, Limits},
    upstream::Api,
};

/// The limits of every API (the default, or each API's own) and the optional overall cap.
pub(super) fn quota_limits(
    default: Option<String>,
    per_api: [(Api, Option<String>); 4],
    total: Option<String>,
    margin: Duration,
) -> Result<Limits, ConfigError> {
    let parse = |setting: &'static str, raw: &str| {
        parse_quota(raw)
            .map(|limits| {
                limits
                    .into_iter()
                    .map(|l| Limit {
                        calls: l.calls,
                        window: l.window + margin,
                    })
                    .collect()
            })
            .map_err(|reason| ConfigError::Invalid { setting, reason })
    };
    let default = parse(
        "SCAN_GATEWAY_QUOTA",
        default.as_deref().unwrap_or(DEFAULT_QUOTA),
    )?;
    let mut limits = Limits::uniform(default);
    for (api, raw) in per_api {
        if let Some(raw) = raw {
            let setting = match api {
                Api::RunScan => "SCAN_GATEWAY_QUOTA_RUN_ANTIVIRUS_SCAN",
                Api::GetAction => "SCAN_GATEWAY_QUOTA_GET_MACHINE_ACTION",
                Api::ListActions => "SCAN_GATEWAY_QUOTA_LIST_MACHINE_ACTIONS",
                Api::CancelAction => "SCAN_GATEWAY_QUOTA_CANCEL_MACHINE_ACTION",
            };
            limits.per_api.insert(api, parse(setting, &raw)?);
        }
    }
    if let Some(raw) = total {
        limits.total = Some(parse("SCAN_GATEWAY_QUOTA_TOTAL", &raw)?);
    }
    Ok(limits)
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
    use super::*;

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
}
