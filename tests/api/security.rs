//! Inbound security (issue 7): TLS and mutual TLS with certificates made here, bearer JWTs
//! against a JWKS file, and the policy's read-only role.

use std::{net::SocketAddr, path::Path, time::Duration};

use rcgen::SanType;
use scan_gateway::{
    config::ConfigArgs,
    grpc::pb::{self, scan_service_client::ScanServiceClient},
};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_types::StatusExt;

use crate::{
    helpers::{
        TestSimulator, collect, fast_simulator, settings_for, spawn_gateway_with, spawn_simulator,
        start_request,
    },
    pki::*,
};

/// Server TLS settings: a server certificate from `server_ca`, and mutual TLS when
/// `client_ca` is given.
fn tls_args(args: &mut ConfigArgs, dir: &Path, server_ca: &Ca, client_ca: Option<&Ca>) {
    let (cert, key) = leaf(server_ca, localhost());
    args.tls_cert = Some(write(dir, "tls.crt", &cert));
    args.tls_key = Some(write(dir, "tls.key", &key));
    args.tls_client_ca = client_ca.map(|ca| write(dir, "client-ca.crt", &ca.pem));
}

/// A TLS client trusting `server_ca`, presenting `identity` when given.
async fn tls_client(
    addr: SocketAddr,
    server_ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<ScanServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server_ca.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(ScanServiceClient::new(channel))
}

/// Whether a call on a fresh connection gets an answer at all (a refused handshake does not).
async fn can_call(client: Result<ScanServiceClient<Channel>, tonic::transport::Error>) -> bool {
    let Ok(mut client) = client else {
        return false;
    };
    let call = client.get_scan(pb::GetScanRequest {
        fresh: true,
        action_id: "not-an-id".into(),
    });
    matches!(call.await, Err(status) if status.code() == Code::InvalidArgument)
}

fn caller_in(status: &tonic::Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get("caller").cloned())
}

// === TLS ===

#[tokio::test]
async fn tls_serves_scans_and_refuses_plaintext() {
    let dir = temp_dir();
    let server_ca = ca("server ca");
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    tls_args(&mut args, &dir, &server_ca, None);
    let gw = spawn_secure(sim, args).await;

    let mut client = tls_client(gw.addr, &server_ca, None)
        .await
        .expect("TLS handshake");
    let started = client
        .start_scan(start_request(&gw.sim.machine(0)))
        .await
        .expect("scan starts over TLS");
    assert!(started.into_inner().action.is_some());

    let plaintext = ScanServiceClient::connect(format!("http://{}", gw.addr)).await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(mut c) => c
            .start_scan(start_request(&gw.sim.machine(1)))
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client must not get through");
    assert_eq!(gw.sim.handle.stats().run_scan, 1);
}

#[tokio::test]
async fn tls_certificate_is_reloaded_when_its_files_change() {
    let dir = temp_dir();
    let (old_ca, new_ca) = (ca("old ca"), ca("new ca"));
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    tls_args(&mut args, &dir, &old_ca, None);
    let gw = spawn_secure(sim, args).await;
    assert!(can_call(tls_client(gw.addr, &old_ca, None).await).await);
    assert!(!can_call(tls_client(gw.addr, &new_ca, None).await).await);

    // As Kubernetes does: new files moved into place.
    let (cert, key) = leaf(&new_ca, localhost());
    write(&dir, "tls.crt.new", &cert);
    write(&dir, "tls.key.new", &key);
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !can_call(tls_client(gw.addr, &new_ca, None).await).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!can_call(tls_client(gw.addr, &old_ca, None).await).await);
}

#[tokio::test]
async fn mtls_takes_the_caller_from_the_client_certificate() {
    let dir = temp_dir();
    let (server_ca, client_ca, rogue_ca) = (ca("server ca"), ca("client ca"), ca("rogue ca"));
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    tls_args(&mut args, &dir, &server_ca, Some(&client_ca));
    args.config = Some(write(
        &dir,
        "gateway.toml",
        "[policy]\n\"spiffe://test/ns/soc/sa/scanner\" = \"scan\"\n\"spiffe://test/ns/ui/*\" = \"read\"\n",
    ));
    let gw = spawn_secure(sim, args).await;
    let machine = gw.sim.machine(0);

    // The scanner (URI SAN) may start a scan.
    let mut scanner = tls_client(
        gw.addr,
        &server_ca,
        Some(leaf(&client_ca, uri("spiffe://test/ns/soc/sa/scanner"))),
    )
    .await
    .expect("mTLS handshake");
    scanner
        .start_scan(start_request(&machine))
        .await
        .expect("the scanner may scan");

    // The reader's identity reaches the policy: refused, and named in the details.
    let mut reader = tls_client(
        gw.addr,
        &server_ca,
        Some(leaf(&client_ca, uri("spiffe://test/ns/ui/sa/dashboard"))),
    )
    .await
    .expect("mTLS handshake");
    let refused = reader
        .start_scan(start_request(&gw.sim.machine(1)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        caller_in(&refused).as_deref(),
        Some("spiffe://test/ns/ui/sa/dashboard")
    );

    // A DNS SAN the policy does not name: PERMISSION_DENIED too.
    let mut stranger = tls_client(
        gw.addr,
        &server_ca,
        Some(leaf(
            &client_ca,
            vec![SanType::DnsName("stranger.example".try_into().unwrap())],
        )),
    )
    .await
    .expect("mTLS handshake");
    let refused = stranger
        .start_scan(start_request(&machine))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(caller_in(&refused).as_deref(), Some("stranger.example"));

    // No certificate, or one from another CA: no connection at all.
    assert!(!can_call(tls_client(gw.addr, &server_ca, None).await).await);
    assert!(
        !can_call(
            tls_client(
                gw.addr,
                &server_ca,
                Some(leaf(&rogue_ca, uri("spiffe://test/ns/soc/sa/scanner")))
            )
            .await
        )
        .await
    );
    assert_eq!(gw.sim.handle.stats().run_scan, 1);
}

#[tokio::test]
async fn client_ca_is_reloaded_when_its_file_changes() {
    let dir = temp_dir();
    let (server_ca, old_clients, new_clients) =
        (ca("server ca"), ca("old clients"), ca("new clients"));
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    tls_args(&mut args, &dir, &server_ca, Some(&old_clients));
    let gw = spawn_secure(sim, args).await;
    let client = |ca: &Ca| Some(leaf(ca, uri("spiffe://test/ns/soc/sa/scanner")));
    assert!(can_call(tls_client(gw.addr, &server_ca, client(&old_clients)).await).await);
    assert!(!can_call(tls_client(gw.addr, &server_ca, client(&new_clients)).await).await);

    write(&dir, "client-ca.crt.new", &new_clients.pem);
    std::fs::rename(dir.join("client-ca.crt.new"), dir.join("client-ca.crt")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !can_call(tls_client(gw.addr, &server_ca, client(&new_clients)).await).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new client CA was not used within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!can_call(tls_client(gw.addr, &server_ca, client(&old_clients)).await).await);
}

/// JWT settings with a JWKS file holding `signer`'s key, and `policy` (TOML lines) if any.
pub(crate) fn jwt_args(
    sim: &TestSimulator,
    dir: &Path,
    signer: &Signer,
    policy: &str,
) -> ConfigArgs {
    let mut args = settings_for(sim);
    let jwks = serde_json::json!({ "keys": [signer.jwk()] }).to_string();
    args.jwks = Some(write(dir, "jwks.json", &jwks).display().to_string());
    args.jwt_issuer = Some(ISSUER.into());
    args.jwt_audience = Some(AUDIENCE.into());
    if !policy.is_empty() {
        args.config = Some(write(dir, "gateway.toml", &format!("[policy]\n{policy}\n")));
    }
    args
}

pub(crate) fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn jwt_accepted_and_refused() {
    let dir = temp_dir();
    let signer = Signer::new("k1");
    let sim = spawn_simulator(fast_simulator()).await;
    let args = jwt_args(&sim, &dir, &signer, "");
    let gw = spawn_gateway_with(sim, args).await;
    let machine = gw.sim.machine(0);
    let mut client = gw.client.clone();

    let good = signer.token(claims("system:serviceaccount:soc:scanner"));
    client
        .start_scan(with_token(start_request(&machine), &good))
        .await
        .expect("a valid token is accepted");

    let mut expired = claims("system:serviceaccount:soc:scanner");
    expired["exp"] = (now() - 3600).into();
    expired["nbf"] = (now() - 7200).into();
    let mut wrong_audience = claims("system:serviceaccount:soc:scanner");
    wrong_audience["aud"] = serde_json::json!(["someone-else"]);
    let mut wrong_issuer = claims("system:serviceaccount:soc:scanner");
    wrong_issuer["iss"] = "https://evil.example".into();
    let stranger = Signer::new("k1");
    let cases = [
        ("expired", Some(signer.token(expired)), "expired"),
        (
            "wrong audience",
            Some(signer.token(wrong_audience)),
            "audience",
        ),
        ("wrong issuer", Some(signer.token(wrong_issuer)), "issuer"),
        (
            "wrong key",
            Some(stranger.token(claims("system:serviceaccount:soc:scanner"))),
            "signature",
        ),
        ("garbage", Some("not.a.jwt".to_owned()), "well-formed"),
        ("missing", None, "no credentials"),
    ];
    for (case, token, says) in cases {
        let request = match &token {
            Some(token) => with_token(start_request(&machine), token),
            None => Request::new(start_request(&machine)),
        };
        let status = client.start_scan(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(
            status.message().contains(says),
            "{case}: {}",
            status.message()
        );
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.as_str()),
            Some("UNAUTHENTICATED"),
            "{case}"
        );
        if let Some(token) = &token {
            assert!(
                !status.message().contains(token.as_str()),
                "{case}: the token is echoed"
            );
        }
    }
    // Only the accepted call reached Defender.
    assert_eq!(gw.sim.handle.stats().run_scan, 1);

    // Health stays open.
    let channel = Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no token");
    assert_eq!(health.into_inner().status, 1);
}

// === policy ===

#[tokio::test]
async fn read_only_caller_may_get_and_watch_but_not_start_or_cancel() {
    let dir = temp_dir();
    let signer = Signer::new("k1");
    let sim = spawn_simulator(fast_simulator()).await;
    let args = jwt_args(
        &sim,
        &dir,
        &signer,
        "\"system:serviceaccount:soc:scanner\" = \"scan\"\n\"system:serviceaccount:dashboards:*\" = \"read\"",
    );
    let gw = spawn_gateway_with(sim, args).await;
    let machine = gw.sim.machine(0);
    let mut client = gw.client.clone();
    let scanner = signer.token(claims("system:serviceaccount:soc:scanner"));
    let reader = signer.token(claims("system:serviceaccount:dashboards:ui"));
    let stranger = signer.token(claims("system:serviceaccount:other:app"));

    let action = client
        .start_scan(with_token(start_request(&machine), &scanner))
        .await
        .expect("the scanner may start")
        .into_inner()
        .action
        .unwrap();

    let refused = client
        .start_scan(with_token(start_request(&gw.sim.machine(1)), &reader))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        caller_in(&refused).as_deref(),
        Some("system:serviceaccount:dashboards:ui")
    );
    let refused = client
        .cancel_scan(with_token(
            pb::CancelScanRequest {
                action_id: action.id.clone(),
                comment: "no".into(),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let got = client
        .get_scan(with_token(
            pb::GetScanRequest {
                fresh: true,
                action_id: action.id.clone(),
            },
            &reader,
        ))
        .await
        .expect("the reader may get");
    assert_eq!(got.into_inner().action.unwrap().id, action.id);
    let stream = client
        .watch_scan(with_token(
            pb::WatchScanRequest {
                action_id: action.id.clone(),
            },
            &reader,
        ))
        .await
        .expect("the reader may watch")
        .into_inner();
    let (updates, end) = collect(stream).await;
    assert!(end.is_ok(), "{end:?}");
    assert!(!updates.is_empty());

    // A caller the policy does not name may not even read.
    let refused = client
        .get_scan(with_token(
            pb::GetScanRequest {
                fresh: true,
                action_id: action.id.clone(),
            },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The scanner may cancel (the scan may already be over: then Defender refuses, not we).
    let cancel = client
        .cancel_scan(with_token(
            pb::CancelScanRequest {
                action_id: action.id,
                comment: "done".into(),
            },
            &scanner,
        ))
        .await;
    if let Err(status) = cancel {
        assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
        assert_ne!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(gw.sim.handle.stats().run_scan, 1);
}

#[tokio::test]
async fn jwks_is_fetched_from_a_url() {
    let signer = Signer::new("url-key");
    let jwks = serde_json::json!({ "keys": [signer.jwk()] });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.jwks = Some(format!("http://{jwks_addr}/openid/v1/jwks"));
    args.jwt_issuer = Some(ISSUER.into());
    args.jwt_audience = Some(AUDIENCE.into());
    let gw = spawn_gateway_with(sim, args).await;
    let mut client = gw.client.clone();

    let token = signer.token(claims("system:serviceaccount:soc:scanner"));
    client
        .start_scan(with_token(start_request(&gw.sim.machine(0)), &token))
        .await
        .expect("a token signed by a key of the fetched set is accepted");
    let other = Signer::new("url-key").token(claims("system:serviceaccount:soc:scanner"));
    let status = client
        .start_scan(with_token(start_request(&gw.sim.machine(1)), &other))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    server.abort();
}

#[tokio::test]
async fn a_caller_with_a_quota_share_cannot_take_the_others_quota() {
    let dir = temp_dir();
    let signer = Signer::new("k1");
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = jwt_args(
        &sim,
        &dir,
        &signer,
        "\"system:serviceaccount:fleet:bulk\" = { role = \"scan\", quota_share = 0.2 }\n\"system:serviceaccount:soc:*\" = \"scan\"",
    );
    // Five scans a minute: the bulk caller may use one of them.
    args.quota_run_antivirus_scan = Some("5/1m".into());
    let gw = spawn_gateway_with(sim, args).await;
    let mut client = gw.client.clone();
    let bulk = signer.token(claims("system:serviceaccount:fleet:bulk"));
    let soc = signer.token(claims("system:serviceaccount:soc:responder"));

    client
        .start_scan(with_token(start_request(&gw.sim.machine(0)), &bulk))
        .await
        .expect("the first call is within the share");
    let mut second = with_token(start_request(&gw.sim.machine(1)), &bulk);
    second.set_timeout(Duration::from_secs(5));
    let refused = client.start_scan(second).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let wait = refused
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo");
    assert!(wait > Duration::from_secs(50), "{wait:?}");

    // The rest of the minute's quota is still there for everyone else.
    for n in 2..6 {
        client
            .start_scan(with_token(start_request(&gw.sim.machine(n)), &soc))
            .await
            .expect("the other caller's scans start at once");
    }
    assert_eq!(gw.sim.api_requests(), 5);
}
