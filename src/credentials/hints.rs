//! What to fix, by AADSTS code. Microsoft warns the numbers and texts may change, so an
//! unknown code falls back to the first line of Entra's description (ids and codes only).

use super::CredentialKind;

/// A message that names the cause and the variable to check.
pub fn hint(aadsts: Option<u32>, kind: CredentialKind, status: u16, description: &str) -> String {
    let known = match aadsts {
        Some(7000215) => Some(
            "AZURE_CLIENT_SECRET is not a valid secret of this application (use the secret's value, not its id)",
        ),
        Some(7000222) => Some(
            "the client secret in AZURE_CLIENT_SECRET has expired: create a new one in the app registration",
        ),
        Some(7000216) => Some(
            "no client secret or assertion reached Entra ID: set AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE",
        ),
        Some(700016) => Some(
            "AZURE_CLIENT_ID names no application in tenant AZURE_TENANT_ID (check both, and AZURE_AUTHORITY_HOST for the right cloud)",
        ),
        Some(90002) => Some(
            "AZURE_TENANT_ID names no tenant in this cloud (check it and AZURE_AUTHORITY_HOST)",
        ),
        Some(70011) => Some(
            "MDE_TOKEN_SCOPE is not a valid scope (expected https://api.securitycenter.microsoft.com/.default)",
        ),
        Some(500011) => Some(
            "the Defender API is not provisioned in this tenant (check MDE_TOKEN_SCOPE and AZURE_TENANT_ID)",
        ),
        Some(700027) => Some(
            "the certificate in AZURE_CLIENT_CERTIFICATE_PATH is not registered on this application, or its assertion signature is invalid (upload the certificate's public part to the app registration)",
        ),
        Some(700024) => Some(
            "the client assertion is expired or not yet valid: check the clock of this host, and for workload identity that AZURE_FEDERATED_TOKEN_FILE is being refreshed",
        ),
        Some(50027) => Some(match kind {
            CredentialKind::WorkloadIdentity => {
                "the token in AZURE_FEDERATED_TOKEN_FILE is not a valid JWT"
            }
            _ => "the client assertion built from AZURE_CLIENT_CERTIFICATE_PATH is not a valid JWT",
        }),
        Some(70021 | 700213) => Some(
            "no federated identity credential of this application matches the service account token in AZURE_FEDERATED_TOKEN_FILE (check the federated credential's issuer, subject system:serviceaccount:<namespace>:<name> and audience api://AzureADTokenExchange)",
        ),
        Some(700211 | 700212) => Some(
            "the issuer or audience of the token in AZURE_FEDERATED_TOKEN_FILE does not match the application's federated identity credential (check the cluster's OIDC issuer URL)",
        ),
        Some(7000112) => {
            Some("the application AZURE_CLIENT_ID is disabled in tenant AZURE_TENANT_ID")
        }
        Some(7000214) => Some("the certificate in AZURE_CLIENT_CERTIFICATE_PATH has been revoked"),
        Some(7000274 | 7000277) => Some(
            "the certificate in AZURE_CLIENT_CERTIFICATE_PATH has expired: rotate it and upload the new one",
        ),
        _ => None,
    };
    if let Some(known) = known {
        return known.to_owned();
    }
    let first_line = description.lines().next().unwrap_or("").trim();
    if first_line.is_empty() {
        format!(
            "HTTP {status} without a description; check AZURE_TENANT_ID, AZURE_CLIENT_ID and the {} credential",
            kind.as_str()
        )
    } else {
        first_line.chars().take(300).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_name_the_variable_to_fix() {
        let cases = [
            (7000215, "AZURE_CLIENT_SECRET"),
            (7000222, "expired"),
            (700016, "AZURE_CLIENT_ID"),
            (90002, "AZURE_TENANT_ID"),
            (70011, "MDE_TOKEN_SCOPE"),
            (700027, "AZURE_CLIENT_CERTIFICATE_PATH"),
            (7000274, "AZURE_CLIENT_CERTIFICATE_PATH"),
            (700213, "AZURE_FEDERATED_TOKEN_FILE"),
            (700024, "clock"),
        ];
        for (code, expected) in cases {
            let text = hint(Some(code), CredentialKind::ClientSecret, 400, "");
            assert!(text.contains(expected), "{code}: {text}");
        }
    }

    #[test]
    fn unknown_codes_keep_only_the_first_line() {
        let text = hint(
            Some(1),
            CredentialKind::ClientSecret,
            400,
            "AADSTS1: Something new.\r\nTrace ID: abc\r\nCorrelation ID: def",
        );
        assert_eq!(text, "AADSTS1: Something new.");
        let text = hint(None, CredentialKind::WorkloadIdentity, 401, "");
        assert!(text.contains("workload_identity"), "{text}");
    }
}
