//! Access tokens are JWTs: the claims of an app-only Entra token, a signature that verifies
//! against the published JWKS, and the API's checks of all of it.

use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::*;

/// The three parts of a compact JWS, the first two decoded.
fn decode(token: &str) -> (Value, Value, Vec<u8>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let json = |part: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    };
    (
        json(parts[0]),
        json(parts[1]),
        URL_SAFE_NO_PAD.decode(parts[2]).expect("signature"),
    )
}

/// Verifies `token` with the key of the JWKS whose `kid` its header names, as a client would.
fn verifies_against(jwks: &Value, token: &str) -> bool {
    let (header, _, signature) = decode(token);
    let Some(key) = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == header["kid"]))
    else {
        return false;
    };
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"], &key["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );
    let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap()).unwrap();
    let point = [vec![4], coordinate("x"), coordinate("y")].concat();
    let signed = token.rsplit_once('.').unwrap().0;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(signed.as_bytes(), &signature)
        .is_ok()
}

async fn jwks(sim: &Sim, tenant: &str) -> Resp {
    let request = Request::get(format!("/{tenant}/discovery/v2.0/keys"))
        .body(Body::empty())
        .unwrap();
    sim.send(request).await
}

#[tokio::test(start_paused = true)]
async fn a_token_is_a_jwt_with_the_claims_of_an_app_token_and_verifies_against_the_jwks() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let (header, claims, _) = decode(&token);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["alg"], "ES256");

    let start = time::OffsetDateTime::from(start()).unix_timestamp();
    let issuer = format!("https://sts.windows.net/{TENANT}/");
    assert_eq!(claims["aud"], "https://api.securitycenter.microsoft.com");
    assert_eq!(
        (&claims["iss"], &claims["idp"]),
        (&json!(issuer), &json!(issuer))
    );
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["appidacr"], "1", "a secret");
    assert_eq!(claims["roles"], json!(["Machine.Read.All", "Machine.Scan"]));
    assert_eq!(
        (&claims["iat"], &claims["nbf"]),
        (&json!(start - 300), &json!(start - 300))
    );
    assert_eq!(claims["exp"], start + 3599);
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["oid"], claims["sub"]);
    assert!(uuid::Uuid::try_parse(claims["oid"].as_str().unwrap()).is_ok());
    assert_ne!(decode(&sim.token().await).1["uti"], claims["uti"]);

    let keys = jwks(&sim, TENANT).await;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.body);
    assert!(verifies_against(&keys.json(), &token));
    let other = Sim::new(config());
    assert!(!verifies_against(
        &jwks(&other, TENANT).await.json(),
        &token
    ));
    let v1 = Request::get("/common/discovery/keys")
        .body(Body::empty())
        .unwrap();
    assert_eq!(sim.send(v1).await.json(), keys.json());
    let unknown = jwks(&sim, "contoso-typo").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json()["error_codes"], json!([90002]));
}

#[tokio::test(start_paused = true)]
async fn v1_tokens_carry_the_requested_resource_and_the_response_times() {
    let sim = Sim::new(config());
    let body = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("resource", "https://api.security.microsoft.com/"),
    ]);
    let resp = sim
        .post_form(&format!("/{TENANT}/oauth2/token"), &body)
        .await;
    let json = resp.json();
    let (_, claims, _) = decode(json["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://api.security.microsoft.com");
    assert_eq!(json["expires_on"], claims["exp"].to_string());
    assert_eq!(json["not_before"], claims["nbf"].to_string());
}

#[tokio::test(start_paused = true)]
async fn a_tampered_token_is_refused() {
    let sim = Sim::new(config());
    let token = sim.token().await;
    let (header, mut claims, _) = decode(&token);
    let [head, _, signature]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 86_400);
    let longer = format!("{head}.{}.{signature}", enc(&claims));
    let mut unsigned_header = header.clone();
    unsigned_header["alg"] = json!("none");
    let unsigned = format!("{}.{}.", enc(&unsigned_header), enc(&claims));
    let truncated = &token[..token.len() - 4];
    for forged in [longer.as_str(), unsigned.as_str(), truncated] {
        let resp = sim
            .get_action(forged, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
            .await;
        assert_error(&resp, StatusCode::UNAUTHORIZED, "Unauthorized");
        assert_eq!(
            resp.message(),
            "Unauthorized request - the access token is invalid."
        );
    }
    let genuine = sim
        .get_action(&token, "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37")
        .await;
    assert_error(&genuine, StatusCode::NOT_FOUND, "ResourceNotFound");
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_refused_from_its_exp_on() {
    let sim = Sim::new(SimulatorConfig {
        token_lifetime: Duration::from_millis(1500),
        ..config()
    });
    let token = sim.token().await;
    // Rounded up to whole seconds: never shorter than expires_in.
    assert_eq!(
        decode(&token).1["exp"],
        time::OffsetDateTime::from(start()).unix_timestamp() + 2
    );
    tokio::time::advance(Duration::from_millis(1999)).await;
    let id = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";
    assert_eq!(
        sim.get_action(&token, id).await.status,
        StatusCode::NOT_FOUND
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    let expired = sim.get_action(&token, id).await;
    assert_error(&expired, StatusCode::UNAUTHORIZED, "Unauthorized");
    assert!(expired.message().contains("expired"), "{}", expired.body);
}

#[tokio::test(start_paused = true)]
async fn roles_the_application_lacks_answer_the_missing_roles_403() {
    let sim = Sim::new(SimulatorConfig {
        app_roles: vec!["Machine.Read.All".into()],
        ..config()
    });
    let token = sim.token().await;
    assert_eq!(decode(&token).1["roles"], json!(["Machine.Read.All"]));
    let resp = sim.scan(&token, &sim.machine(), "Quick").await;
    assert_error(&resp, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(
        resp.message(),
        "Missing application roles. API required roles: Machine.Scan, application roles: Machine.Read.All"
    );
    let list = sim
        .call(Method::GET, "/api/machineactions?$top=1", &token, None)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);

    let none = Sim::new(SimulatorConfig {
        app_roles: Vec::new(),
        ..config()
    });
    let token = none.token().await;
    assert!(
        decode(&token).1.get("roles").is_none(),
        "no roles, no claim"
    );
    let list = none
        .call(Method::GET, "/api/machineactions", &token, None)
        .await;
    assert_error(&list, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(
        list.message(),
        "Missing application roles. API required roles: Machine.Read.All, Machine.ReadWrite.All"
    );
}

#[tokio::test(start_paused = true)]
async fn revoking_rotates_the_published_key() {
    let sim = Sim::new(config());
    let old = sim.token().await;
    let before = jwks(&sim, TENANT).await.json();
    sim.handle.revoke_tokens();
    let after = jwks(&sim, TENANT).await.json();
    assert_ne!(before["keys"][0]["kid"], after["keys"][0]["kid"]);
    assert!(!verifies_against(&after, &old));
    let fresh = sim.token().await;
    assert!(verifies_against(&after, &fresh));
    let resp = sim.scan(&fresh, &sim.machine(), "Quick").await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.body);
}
