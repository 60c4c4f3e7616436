//! Application roles (permissions) of the Defender API: which ones the simulated application
//! holds, which ones each endpoint requires (upstream-api.md §1, §3), and the 403 for a token
//! that has none of them.

use super::stats::Endpoint;

/// The roles of the machine APIs (application permissions of WindowsDefenderATP).
pub const KNOWN: &[&str] = &[
    "Machine.Read.All",
    "Machine.ReadWrite.All",
    "Machine.Scan",
    "Machine.CollectForensics",
    "Machine.Isolate",
    "Machine.RestrictExecution",
    "Machine.Offboard",
    "Machine.StopAndQuarantine",
    "Machine.LiveResponse",
];

/// What the gateway's setup asks for (README: `Machine.Scan` and `Machine.Read.All`).
pub(crate) fn default_roles() -> Vec<String> {
    vec!["Machine.Read.All".to_owned(), "Machine.Scan".to_owned()]
}

/// Any one of these lets a token call the endpoint.
pub(crate) fn required(endpoint: Endpoint) -> &'static [&'static str] {
    match endpoint {
        Endpoint::RunScan => &["Machine.Scan"],
        // Older pages also list Machine.Read.All, which integrations use successfully.
        Endpoint::GetAction | Endpoint::ListActions => {
            &["Machine.Read.All", "Machine.ReadWrite.All"]
        }
        Endpoint::Cancel => &[
            "Machine.CollectForensics",
            "Machine.Isolate",
            "Machine.RestrictExecution",
            "Machine.Scan",
            "Machine.Offboard",
            "Machine.StopAndQuarantine",
            "Machine.LiveResponse",
        ],
        Endpoint::Token | Endpoint::Other => &[],
    }
}

/// The observed 403 message when `held` has none of the endpoint's roles (`None`: allowed).
/// Role names are case-sensitive, as in the token.
pub(crate) fn missing(endpoint: Endpoint, held: &[String]) -> Option<String> {
    let required = required(endpoint);
    if required.is_empty() || required.iter().any(|r| held.iter().any(|h| h == r)) {
        return None;
    }
    Some(missing_message(endpoint, held))
}

/// "Missing application roles. API required roles: ..." with, as some variants do, the roles
/// the token holds.
pub(crate) fn missing_message(endpoint: Endpoint, held: &[String]) -> String {
    let mut message = format!(
        "Missing application roles. API required roles: {}",
        required(endpoint).join(", ")
    );
    if !held.is_empty() {
        message.push_str(", application roles: ");
        message.push_str(&held.join(", "));
    }
    message
}

/// A role name as `--app-roles` takes it: one of [`KNOWN`], in its exact case.
pub(crate) fn parse(name: &str) -> Result<String, String> {
    let name = name.trim();
    KNOWN
        .iter()
        .find(|known| **known == name)
        .map(|known| (*known).to_owned())
        .ok_or_else(|| {
            format!(
                "unknown application role '{name}' (one of {}; names are case-sensitive)",
                KNOWN.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(roles: &[&str]) -> Vec<String> {
        roles.iter().map(|r| (*r).to_owned()).collect()
    }

    #[test]
    fn each_endpoint_needs_one_of_its_roles() {
        let defaults = default_roles();
        for endpoint in [
            Endpoint::RunScan,
            Endpoint::GetAction,
            Endpoint::ListActions,
            Endpoint::Cancel,
        ] {
            assert_eq!(missing(endpoint, &defaults), None, "{endpoint:?}");
        }
        let read_write = held(&["Machine.ReadWrite.All"]);
        assert_eq!(missing(Endpoint::ListActions, &read_write), None);
        assert_eq!(
            missing(Endpoint::RunScan, &read_write).as_deref(),
            Some(
                "Missing application roles. API required roles: Machine.Scan, application roles: Machine.ReadWrite.All"
            )
        );
        assert_eq!(missing(Endpoint::Cancel, &held(&["Machine.Isolate"])), None);
        assert_eq!(
            missing(Endpoint::GetAction, &[]).as_deref(),
            Some(
                "Missing application roles. API required roles: Machine.Read.All, Machine.ReadWrite.All"
            )
        );
        assert!(missing(Endpoint::GetAction, &held(&["machine.read.all"])).is_some());
        assert_eq!(missing(Endpoint::Token, &[]), None);
    }

    #[test]
    fn only_known_role_names_parse() {
        assert_eq!(parse(" Machine.Scan ").as_deref(), Ok("Machine.Scan"));
        let err = parse("Machine.scan").unwrap_err();
        assert!(
            err.contains("unknown application role 'Machine.scan'"),
            "{err}"
        );
        assert!(parse("Machine.CollectForensic").is_err());
    }
}
