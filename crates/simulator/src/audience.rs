//! The audiences (token resources) of the Defender API that the token endpoint issues tokens
//! for and the API accepts in a token's `aud`.

/// Both API hosts, the App ID URI of the doc's curl sample, and the WindowsDefenderATP
/// application id.
const AUDIENCES: &[&str] = &[
    "https://api.securitycenter.microsoft.com",
    "https://api.security.microsoft.com",
    "https://securitycenter.onmicrosoft.com/windowsatpservice",
    "fc780465-2017-40d4-a0c5-307022471b92",
];

/// The audience a v1 `resource` (or a v2 scope without its `/.default`) names, in its
/// documented spelling; a trailing `/` and letter case don't matter.
pub(crate) fn of_resource(resource: &str) -> Option<&'static str> {
    let resource = resource.strip_suffix('/').unwrap_or(resource);
    AUDIENCES
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(resource))
}

/// `{audience}/.default` for one audience; several scopes must all name the same one.
pub(crate) fn of_scope(scope: &str) -> Option<&'static str> {
    let mut found = None;
    for part in scope.split_whitespace() {
        let base = part.strip_suffix("/.default")?;
        let audience = of_resource(base)?;
        if found.is_some_and(|f| f != audience) {
            return None;
        }
        found = Some(audience);
    }
    found
}

/// Whether a token's `aud` is a Defender audience (exactly as issued).
pub(crate) fn is_defender(aud: &str) -> bool {
    AUDIENCES.contains(&aud)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_resources() {
        assert_eq!(
            of_scope("https://api.securitycenter.microsoft.com/.default"),
            Some("https://api.securitycenter.microsoft.com")
        );
        assert!(
            of_scope("https://securitycenter.onmicrosoft.com/windowsatpservice/.default").is_some()
        );
        assert!(of_scope("https://API.security.microsoft.com/.default https://api.security.microsoft.com/.default").is_some());
        assert!(of_scope("https://api.security.microsoft.com/.default https://api.securitycenter.microsoft.com/.default").is_none());
        assert!(of_scope("https://api.securitycenter.microsoft.com").is_none());
        assert!(of_scope("https://graph.microsoft.com/.default").is_none());
        assert!(of_scope("   ").is_none());
        assert!(of_resource("https://api.securitycenter.microsoft.com/").is_some());
        assert!(of_resource("https://api.securitycenter.microsoft.com/.default").is_none());
        assert!(is_defender("https://api.security.microsoft.com"));
        assert!(!is_defender("https://graph.microsoft.com"));
    }
}
