//! Token endpoint: response shapes of v1 and v2.0 and each documented refusal.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};

use super::*;
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};

fn v2_form(overrides: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", SCOPE),
    ];
    for (k, v) in overrides {
        pairs.retain(|(key, _)| key != k);
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    form(&pairs)
}

fn v2_uri() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

#[tokio::test(start_paused = true)]
async fn v2_token_has_integer_lifetimes_in_order() {
    let sim = Sim::new(config());
    let resp = sim.post_form(&v2_uri(), &v2_form(&[])).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("cache-control"), Some("no-store, no-cache"));
    let json = resp.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3599);
    assert_eq!(json["ext_expires_in"], 3599);
    let token = json["access_token"].as_str().unwrap();
    assert!(token.len() > 40);
    let expected = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{token}"}}"#
    );
    assert_eq!(resp.body, expected);
    assert_eq!(sim.handle.stats().tokens_issued, 1);
}

#[tokio::test(start_paused = true)]
async fn v1_token_has_string_numbers_and_unix_times() {
    let sim = Sim::new(config());
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("resource", "https://api.securitycenter.microsoft.com"),
    ]);
    let resp = sim
        .post_form(&format!("/{TENANT}/oauth2/token"), &body)
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let json = resp.json();
    assert_eq!(json["expires_in"], "3599");
    assert_eq!(json["ext_expires_in"], "3599");
    assert_eq!(json["expires_on"], "1795688044");
    assert_eq!(json["not_before"], "1795684145");
    assert_eq!(json["resource"], "https://api.securitycenter.microsoft.com");
    let keys: Vec<&str> = [
        "token_type",
        "expires_in",
        "ext_expires_in",
        "expires_on",
        "not_before",
        "resource",
        "access_token",
    ]
    .to_vec();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| resp.body.find(&format!("\"{k}\"")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", resp.body);
}

#[tokio::test(start_paused = true)]
async fn every_audience_and_basic_auth_are_accepted() {
    let sim = Sim::new(config());
    for scope in [
        "https://api.security.microsoft.com/.default",
        "https://securitycenter.onmicrosoft.com/windowsatpservice/.default",
    ] {
        let resp = sim
            .post_form(&v2_uri(), &v2_form(&[("scope", scope)]))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{scope}: {}", resp.body);
    }
    let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT}:{SECRET}")));
    let request = Request::post(v2_uri())
        .header(header::AUTHORIZATION, basic)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form(&[
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
        ])))
        .unwrap();
    let resp = sim.send(request).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
}

/// The `aud` of an access token (its claims decoded without checking the signature).
fn audience_of(token: &str) -> String {
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    claims["aud"].as_str().unwrap().to_owned()
}

#[tokio::test(start_paused = true)]
async fn us_government_and_regional_scopes_get_tokens_for_their_host() {
    let sim = Sim::new(config());
    let machine = sim.machine();
    for (scope, audience) in [
        // GCC, and GCC High / DoD (gov.md: the API host is the token resource).
        (
            "https://api-gcc.securitycenter.microsoft.us/.default",
            "https://api-gcc.securitycenter.microsoft.us",
        ),
        (
            "https://api-gov.securitycenter.microsoft.us/.default",
            "https://api-gov.securitycenter.microsoft.us",
        ),
        // The Defender XDR hosts of those clouds.
        (
            "https://api-gcc.security.microsoft.us/.default",
            "https://api-gcc.security.microsoft.us",
        ),
        (
            "https://API-GOV.security.microsoft.us/.default",
            "https://api-gov.security.microsoft.us",
        ),
        // Commercial geo and regional hosts, and the legacy WDATP host.
        (
            "https://eu.api.security.microsoft.com/.default",
            "https://eu.api.security.microsoft.com",
        ),
        (
            "https://aea.api.security.microsoft.com/.default",
            "https://aea.api.security.microsoft.com",
        ),
        (
            "https://api-eu.securitycenter.microsoft.com/.default",
            "https://api-eu.securitycenter.microsoft.com",
        ),
        (
            "https://api-uk.securitycenter.windows.com/.default",
            "https://api-uk.securitycenter.windows.com",
        ),
        (
            "https://api.securitycenter.windows.com/.default",
            "https://api.securitycenter.windows.com",
        ),
    ] {
        let resp = sim
            .post_form(&v2_uri(), &v2_form(&[("scope", scope)]))
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{scope}: {}", resp.body);
        let token = resp.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(audience_of(&token), audience, "{scope}");
        // The API takes the token: its audience is a Defender one.
        let uri = format!("/api/machineactions?$filter=machineId%20eq%20'{machine}'");
        let list = sim.call(Method::GET, &uri, &token, None).await;
        assert_eq!(list.status, StatusCode::OK, "{scope}: {}", list.body);
    }
    // v1 takes the same hosts as `resource`.
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("resource", "https://api-gcc.securitycenter.microsoft.us/"),
    ]);
    let resp = sim
        .post_form(&format!("/{TENANT}/oauth2/token"), &body)
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(
        resp.json()["resource"],
        "https://api-gcc.securitycenter.microsoft.us"
    );
}

#[tokio::test(start_paused = true)]
async fn scopes_of_no_defender_host_are_still_refused() {
    let sim = Sim::new(config());
    for scope in [
        "https://api-gcc.securitycenter.microsoft.com/.default",
        "https://fr.api.security.microsoft.com/.default",
        "https://graph.microsoft.us/.default",
        "https://api-gcc.securitycenter.microsoft.us",
        "https://api-gcc.securitycenter.microsoft.us/.default https://api.securitycenter.microsoft.com/.default",
    ] {
        let resp = sim
            .post_form(&v2_uri(), &v2_form(&[("scope", scope)]))
            .await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{scope}");
        assert_eq!(resp.json()["error"], "invalid_scope", "{scope}");
        assert_eq!(resp.json()["error_codes"][0], 70011, "{scope}");
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::from(start()).unix_timestamp()
}

fn assertion_form(jwt: &str) -> String {
    v2_form(&[
        ("client_secret", ""),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", jwt),
    ])
}

#[tokio::test(start_paused = true)]
async fn a_federated_token_must_match_the_current_token_file() {
    let dir = std::env::temp_dir().join(format!("sim-federated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let kube_token = |sub: &str| {
        format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256","kid":"k1"}"#),
            enc(&format!(
                r#"{{"iss":"https://oidc.example","sub":"{sub}","aud":["api://AzureADTokenExchange"],"exp":{}}}"#,
                now_unix() + 3600
            )),
            enc("sig")
        )
    };
    let first = kube_token("system:serviceaccount:scans:gateway-1");
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let mut config = config();
    config.federated_token_file = Some(file.clone());
    let sim = Sim::new(config);

    let resp = sim.post_form(&v2_uri(), &assertion_form(&first)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let access = resp.json()["access_token"].as_str().unwrap().to_owned();
    let claims = access.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["appidacr"], "2", "an assertion, not a secret");

    // The kubelet rotates the file: the old token no longer matches, the new one does.
    let second = kube_token("system:serviceaccount:scans:gateway-2");
    std::fs::write(&file, &second).unwrap();
    let resp = sim.post_form(&v2_uri(), &assertion_form(&first)).await;
    assert_eq!(resp.json()["error_codes"][0], 700213, "{}", resp.body);
    let resp = sim.post_form(&v2_uri(), &assertion_form(&second)).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `(form overrides, tenant, status, error, AADSTS code)`.
type Refusal<'a> = (&'a [(&'a str, &'a str)], &'a str, StatusCode, &'a str, u32);

#[tokio::test(start_paused = true)]
async fn refusals_use_entra_error_bodies() {
    let sim = Sim::new(config());
    let cases: &[Refusal] = &[
        (
            &[],
            "contoso-typo",
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
        ),
        (
            &[("client_id", "22222222-2222-2222-2222-222222222222")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
        ),
        (
            &[("client_secret", "the-secret-id-not-value")],
            TENANT,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
        ),
        (
            &[("scope", "https://graph.microsoft.com/.default")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
        ),
        (
            &[("scope", "https://api.securitycenter.microsoft.com")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
        ),
        (
            &[("grant_type", "")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
        (
            &[("client_id", "")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
        (
            &[("scope", "")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
        ),
        (
            &[("grant_type", "password")],
            TENANT,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
        ),
        (
            &[("client_secret", "")],
            TENANT,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000216,
        ),
    ];
    for (overrides, tenant, status, error, code) in cases {
        let resp = sim
            .post_form(&format!("/{tenant}/oauth2/v2.0/token"), &v2_form(overrides))
            .await;
        assert_eq!(resp.status, *status, "{overrides:?}: {}", resp.body);
        let json = resp.json();
        assert_eq!(json["error"], *error, "{overrides:?}");
        assert_eq!(json["error_codes"], serde_json::json!([code]));
        let description = json["error_description"].as_str().unwrap();
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{description}"
        );
        assert!(description.contains("\r\nTrace ID: "), "{description}");
        assert!(
            description.ends_with("\r\nTimestamp: 2026-11-26 09:14:05Z"),
            "{description}"
        );
        assert_eq!(json["timestamp"], "2026-11-26 09:14:05Z");
        assert_eq!(
            json["error_uri"],
            format!("https://login.microsoftonline.com/error?code={code}")
        );
        assert!(!resp.body.contains(SECRET) && !resp.body.contains("the-secret-id-not-value"));
    }
    let stats = sim.handle.stats();
    assert_eq!((stats.token, stats.tokens_issued), (cases.len() as u64, 0));
}

#[tokio::test(start_paused = true)]
async fn error_body_keys_are_in_entra_order_and_echo_the_correlation_id() {
    let sim = Sim::new(config());
    let correlation = "2f9a77d0-1111-4222-8333-444455556666";
    let request = Request::post(v2_uri())
        .header("client-request-id", correlation)
        .body(Body::from(v2_form(&[("client_secret", "wrong")])))
        .unwrap();
    let resp = sim.send(request).await;
    let json = resp.json();
    assert_eq!(json["correlation_id"], correlation);
    assert!(
        json["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!("Correlation ID: {correlation}"))
    );
    let keys = [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| resp.body.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", resp.body);
}

#[tokio::test(start_paused = true)]
async fn v1_refuses_unknown_resources() {
    let sim = Sim::new(config());
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("resource", "https://graph.microsoft.com"),
    ]);
    let resp = sim
        .post_form(&format!("/{TENANT}/oauth2/token"), &body)
        .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(resp.json()["error"], "invalid_resource");
}
