//! The audiences (token resources) of the Defender API that the token endpoint issues tokens
//! for and the API accepts in a token's `aud`: upstream-api.md §5 and §6, so a client set up
//! for a regional host or a US Government cloud can be tried here.
//!
//! Only the commercial resource is documented for every commercial host; a host's own URL as
//! the resource is what integrations use for the US Government hosts (and one for a regional
//! host), so each API host of §6 is accepted as a resource too [inf].

/// Documented or observed commercial resources: both API hosts, the App ID URI of the doc's
/// curl sample, and the WindowsDefenderATP application id.
const COMMERCIAL: &[&str] = &[
    "https://api.securitycenter.microsoft.com",
    "https://api.security.microsoft.com",
    "https://securitycenter.onmicrosoft.com/windowsatpservice",
    "fc780465-2017-40d4-a0c5-307022471b92",
];

/// The other commercial API hosts of §6: the legacy WDATP host, the geo hosts of
/// `api.security.microsoft.com`, and the older regional forms.
const REGIONAL: &[&str] = &[
    "https://api.securitycenter.windows.com",
    "https://us.api.security.microsoft.com",
    "https://eu.api.security.microsoft.com",
    "https://uk.api.security.microsoft.com",
    "https://au.api.security.microsoft.com",
    "https://swa.api.security.microsoft.com",
    "https://ina.api.security.microsoft.com",
    "https://aea.api.security.microsoft.com",
    "https://api-us.securitycenter.microsoft.com",
    "https://api-eu.securitycenter.microsoft.com",
    "https://api-uk.securitycenter.microsoft.com",
    "https://api-au.securitycenter.microsoft.com",
    "https://api-us.securitycenter.windows.com",
    "https://api-eu.securitycenter.windows.com",
    "https://api-uk.securitycenter.windows.com",
];

/// US Government (gov.md): the MDE API hosts of GCC and of GCC High/DoD, which are their token
/// resources, and the Defender XDR hosts of the same clouds (defender-xdr/usgov.md).
const US_GOVERNMENT: &[&str] = &[
    "https://api-gcc.securitycenter.microsoft.us",
    "https://api-gov.securitycenter.microsoft.us",
    "https://api-gcc.security.microsoft.us",
    "https://api-gov.security.microsoft.us",
];

fn all() -> impl Iterator<Item = &'static str> {
    COMMERCIAL
        .iter()
        .chain(REGIONAL)
        .chain(US_GOVERNMENT)
        .copied()
}

/// The audience a v1 `resource` (or a v2 scope without its `/.default`) names, in its
/// documented spelling; a trailing `/` and letter case don't matter.
pub(crate) fn of_resource(resource: &str) -> Option<&'static str> {
    let resource = resource.strip_suffix('/').unwrap_or(resource);
    all().find(|a| a.eq_ignore_ascii_case(resource))
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
    all().any(|a| a == aud)
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
        assert!(is_defender("https://api-gcc.securitycenter.microsoft.us"));
        assert!(!is_defender("https://graph.microsoft.com"));
    }

    #[test]
    fn every_api_host_of_section_6_is_a_resource_in_its_documented_spelling() {
        for host in REGIONAL.iter().chain(US_GOVERNMENT) {
            let scope = format!("{}/.default", host.to_ascii_uppercase());
            // Host names are case-insensitive; the `/.default` suffix is written as documented.
            assert_eq!(of_scope(&scope), Some(*host), "{scope}");
            assert_eq!(of_resource(&format!("{host}/")), Some(*host));
        }
        // Neither another cloud's login host nor a near miss is a Defender resource.
        for wrong in [
            "https://login.microsoftonline.us/.default",
            "https://api-gcc.securitycenter.microsoft.com/.default",
            "https://api-dod.securitycenter.microsoft.us/.default",
            "https://fr.api.security.microsoft.com/.default",
            "https://api-gcc.securitycenter.microsoft.us",
        ] {
            assert_eq!(of_scope(wrong), None, "{wrong}");
        }
        let mixed = "https://api-gcc.securitycenter.microsoft.us/.default https://api.securitycenter.microsoft.com/.default";
        assert_eq!(of_scope(mixed), None, "one resource per request");
    }
}
