//! The three credential kinds end to end against the simulator, and secrets kept out of every
//! output of the binary.

use std::{path::PathBuf, process::Command};

use scan_gateway::grpc::pb::{self, scan_service_client::ScanServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{helpers::*, process};

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scan-gateway-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed RSA certificate: (PEM with certificate and key, certificate DER).
fn certificate() -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["scan-gateway".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        format!("{}{}", cert.pem(), key.serialize_pem()),
        cert.der().to_vec(),
    )
}

/// A JWT-shaped stand-in for a projected service-account token.
fn service_account_token(name: &str) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    format!(
        "{}.{}.{}",
        B64.encode(r#"{"alg":"RS256","kid":"cluster-key"}"#),
        B64.encode(format!(
            r#"{{"iss":"https://oidc.cluster.example","sub":"system:serviceaccount:scans:{name}","aud":["api://AzureADTokenExchange"],"exp":{exp}}}"#
        )),
        B64.encode(format!("signature-of-{name}"))
    )
}

#[tokio::test]
async fn a_certificate_credential_runs_a_scan_end_to_end() {
    let dir = scratch("cert-e2e");
    let (pem, der) = certificate();
    let path = dir.join("client.pem");
    std::fs::write(&path, pem).unwrap();
    let mut config = fast_simulator();
    config.client_certificate = Some(der);
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.client_secret = None;
    args.client_certificate_path = Some(path);
    let mut app = spawn_gateway_with(sim, args).await;

    let (updates, end) = run_to_end(&mut app.client, &app.sim.machine(0)).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        statuses(&updates).last(),
        Some(&pb::ActionStatus::Succeeded)
    );
    assert_eq!(app.sim.handle.stats().tokens_issued, 1);
    assert!(app.metrics().await.contains(
        r#"scan_gateway_token_requests_total{credential="client_certificate",outcome="success"} 1"#
    ));
}

#[tokio::test]
async fn an_unregistered_certificate_is_upstream_auth_naming_the_variable() {
    let dir = scratch("cert-unregistered");
    let (pem, _) = certificate();
    let (_, registered) = certificate();
    let path = dir.join("client.pem");
    std::fs::write(&path, &pem).unwrap();
    let mut config = fast_simulator();
    config.client_certificate = Some(registered);
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.client_secret = None;
    args.client_certificate_path = Some(path);
    let mut app = spawn_gateway_with(sim, args).await;

    let status = app
        .client
        .start_scan(start_request(&app.sim.machine(0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "UPSTREAM_AUTH"
    );
    assert!(
        status.message().contains("AZURE_CLIENT_CERTIFICATE_PATH"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("AADSTS700027"),
        "{}",
        status.message()
    );
    let key_body = pem
        .lines()
        .nth(pem.lines().position(|l| l.contains("PRIVATE KEY")).unwrap() + 1)
        .unwrap();
    assert!(!format!("{status:?}").contains(key_body));
}

#[tokio::test]
async fn workload_identity_reads_the_rotated_token_file_for_every_token_request() {
    let dir = scratch("federated");
    let file = dir.join("azure-identity-token");
    std::fs::write(&file, service_account_token("first")).unwrap();
    let mut config = fast_simulator();
    config.federated_token_file = Some(file.clone());
    let sim = spawn_simulator(config).await;
    let mut args = settings_for(&sim);
    args.client_secret = None;
    args.federated_token_file = Some(file.clone());
    let mut app = spawn_gateway_with(sim, args).await;

    app.client
        .list_scans(pb::ListScansRequest::default())
        .await
        .unwrap();
    // The kubelet rotates the token; the simulator now trusts only the new one. Revoking the
    // access token forces a token request, which must carry the new file content.
    std::fs::write(&file, service_account_token("second")).unwrap();
    app.sim.handle.revoke_tokens();
    app.client
        .list_scans(pb::ListScansRequest::default())
        .await
        .unwrap();
    assert_eq!(app.sim.handle.stats().tokens_issued, 2);
    assert!(app.metrics().await.contains(
        r#"scan_gateway_token_requests_total{credential="workload_identity",outcome="success"} 2"#
    ));
}

#[tokio::test]
async fn an_unreadable_federated_token_file_refuses_to_start() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.client_secret = None;
    args.federated_token_file = Some(PathBuf::from("/nonexistent/azure-identity-token"));
    let settings = scan_gateway::config::Settings::load(&args).unwrap();
    let Err(err) =
        scan_gateway::startup::Gateway::build(&settings, scan_gateway::clock::Clock::system())
            .await
    else {
        panic!("the gateway must not start");
    };
    assert!(
        err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"),
        "{err}"
    );
}

/// Runs the real binary with one credential kind at trace level, does a scan and a refused
/// call, stops it, and returns everything it printed.
async fn run_binary_and_capture(sim: &TestSimulator, credential: &[(&str, &str)]) -> String {
    let mut command: Command = process::real_mode(sim);
    command
        .env_remove("AZURE_CLIENT_SECRET")
        .env("RUST_LOG", "trace");
    for (key, value) in credential {
        command.env(key, value);
    }
    let mut gateway = process::Running::spawn(command);
    let addr = process::serving_addr(&gateway.stderr_line("\"serving\""));
    let mut client = ScanServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (_, end) = run_to_end(&mut client, &sim.machine(0)).await;
    assert!(end.is_ok(), "{end:?}");
    let refused = client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let status = gateway.terminate().await;
    assert!(status.success());
    format!("{}\n{refused:?}", gateway.all_stderr())
}

fn assert_absent(output: &str, what: &str, needle: &str) {
    assert!(!needle.is_empty());
    assert!(
        !output.contains(needle),
        "the {what} appeared in the output"
    );
}

/// An access token issued by the simulator: `sim.` and 64 hex digits.
fn contains_access_token(output: &str) -> bool {
    output.match_indices("sim.").any(|(i, _)| {
        let rest = &output[i + 4..];
        rest.len() >= 64 && rest[..64].bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[tokio::test]
async fn no_secret_key_token_or_assertion_appears_in_any_output_of_the_binary() {
    let dir = scratch("canaries");
    let (pem, der) = certificate();
    let cert_path = dir.join("client.pem");
    std::fs::write(&cert_path, &pem).unwrap();
    let token_path = dir.join("token");
    let federated = service_account_token("canary");
    std::fs::write(&token_path, &federated).unwrap();
    let secret_value = "CANARY-secret-9f8e7d6c5b4a";

    let mut config = fast_simulator();
    config.client_secret = secret(secret_value);
    config.client_certificate = Some(der);
    config.federated_token_file = Some(token_path.clone());
    let sim = spawn_simulator(config).await;

    let key_lines: Vec<&str> = pem
        .lines()
        .skip_while(|l| !l.contains("PRIVATE KEY"))
        .skip(1)
        .take(3)
        .collect();
    let cert_path = cert_path.display().to_string();
    let token_path = token_path.display().to_string();
    let runs = [
        vec![("AZURE_CLIENT_SECRET", secret_value)],
        vec![("AZURE_CLIENT_CERTIFICATE_PATH", cert_path.as_str())],
        vec![("AZURE_FEDERATED_TOKEN_FILE", token_path.as_str())],
    ];
    for credential in runs {
        let output = run_binary_and_capture(&sim, &credential).await;
        assert!(
            output.contains("fetched an access token"),
            "trace logs were captured"
        );
        assert_absent(&output, "client secret", secret_value);
        for line in &key_lines {
            assert_absent(&output, "private key", line);
        }
        assert_absent(&output, "federated token", &federated);
        // Any JWT (a certificate assertion) starts with a base64url JSON header.
        assert_absent(&output, "client assertion", "eyJ");
        assert!(
            !contains_access_token(&output),
            "an access token appeared in the output"
        );
        assert_absent(&output, "bearer header", "Bearer ");
    }
    assert_eq!(sim.handle.stats().tokens_issued, 3);
}

#[tokio::test]
async fn wrong_credentials_show_as_serving_starts_and_readiness_stays() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.client_secret = Some(secret("not-the-secret"));
    let app = spawn_gateway_with(sim, args).await;
    // No call made: the credentials check as serving starts asked for a token.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let metrics = app.metrics().await;
        if metrics.contains(r#"scan_gateway_credentials_state{state="refused"} 1"#) {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < until, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(metrics.contains(r#"scan_gateway_credentials_state{state="success"} 0"#));
    assert_eq!(app.sim.api_requests(), 0, "no call reached Defender");
    // Decided: readiness does not depend on the token (README "Credentials").
    let (status, _) = http_get(app.admin_addr, "/readyz").await;
    assert_eq!(status, 200);
}

// Two workers: the simulator answers while this test blocks reading the gateway's stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_refused_credentials_with_the_hint_before_any_call() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut command = process::real_mode(&sim);
    command.env("AZURE_CLIENT_SECRET", "not-the-secret");
    let mut gateway = process::Running::spawn(command);
    let line = gateway.stderr_line("did not issue an access token");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("AADSTS7000215"), "{line}");
    assert!(
        line.contains("value"),
        "the hint says to use the secret's value: {line}"
    );
    assert!(
        !line.contains("not-the-secret"),
        "the secret leaked: {line}"
    );
    let status = gateway.terminate().await;
    assert!(status.success(), "{status:?}");
}
