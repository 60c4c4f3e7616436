//! The `scan` client against a gateway that authenticates its callers: the real binary, run
//! with TLS, mutual TLS and bearer token file options against gateways started here (fixtures
//! in `pki`).

use std::process::{Command, Output};

use rcgen::SanType;

use crate::{helpers::*, pki::*, process::BIN};

/// A fixture file's path, as the `scan` command line takes it.
fn file(dir: &std::path::Path, name: &str, contents: &str) -> String {
    write(dir, name, contents).display().to_string()
}

/// The only caller the JWT gateway's policy lets scan.
const SCANNER: &str = "system:serviceaccount:soc:scanner";

// === a gateway and the binary ===

/// Runs `scan-gateway scan` for `machine` with `args` and `env` only (nothing inherited but
/// PATH, so the runner's SCAN_GATEWAY_* cannot leak in), debug logging on.
async fn scan(machine: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args([
            "scan",
            "--machine",
            machine,
            "--comment",
            "cli security test",
        ])
        .args(["--timeout", "60s"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace")
        .envs(env.iter().copied());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_succeeded(output: &Output) {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().last().unwrap_or("").contains("succeeded"),
        "{stdout}"
    );
}

/// Exit code 2 and a single `error:` line on stderr that contains every one of `says`.
#[track_caller]
fn assert_refused(output: &Output, says: &[&str]) -> String {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"))
        .to_owned();
    for expected in says {
        assert!(line.contains(expected), "{expected:?} in {line}");
    }
    line
}

// === TLS and mutual TLS ===

#[tokio::test]
async fn scan_over_mtls_succeeds_with_a_client_certificate_and_fails_clearly_without_one() {
    let dir = temp_dir();
    let (server_ca, client_ca, other_ca) = (ca("server ca"), ca("client ca"), ca("other ca"));
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    // The certificate names a DNS host only, so an IP address needs --tls-server-name.
    let (cert, key) = leaf(
        &server_ca,
        vec![SanType::DnsName("gateway.test".try_into().unwrap())],
    );
    args.tls_cert = Some(write(&dir, "tls.crt", &cert));
    args.tls_key = Some(write(&dir, "tls.key", &key));
    args.tls_client_ca = Some(write(&dir, "client-ca.crt", &client_ca.pem));
    let gw = spawn_secure(sim, args).await;
    let machine = gw.sim.machine(0);

    let ca_file = file(&dir, "ca.crt", &server_ca.pem);
    let other_ca_file = file(&dir, "other-ca.crt", &other_ca.pem);
    let (cert, key) = leaf(
        &client_ca,
        vec![SanType::URI(
            "spiffe://test/ns/soc/sa/scanner".try_into().unwrap(),
        )],
    );
    let (cert_file, key_file) = (file(&dir, "c.crt", &cert), file(&dir, "c.key", &key));
    let https = format!("https://{}", gw.addr);
    let gateway = ["--gateway", https.as_str()];
    let name = ["--tls-server-name", "gateway.test"];

    // Flags.
    let ok = scan(
        &machine,
        &[
            &gateway[..],
            &name,
            &["--ca", &ca_file, "--cert", &cert_file, "--key", &key_file],
        ]
        .concat(),
        &[],
    )
    .await;
    assert_succeeded(&ok);

    // The same through the environment (another machine: a new scan, not the first one's).
    let ok = scan(
        &gw.sim.machine(1),
        &[],
        &[
            ("SCAN_GATEWAY_URL", &https),
            ("SCAN_GATEWAY_TLS_SERVER_NAME", "gateway.test"),
            ("SCAN_GATEWAY_CA", &ca_file),
            ("SCAN_GATEWAY_CLIENT_CERT", &cert_file),
            ("SCAN_GATEWAY_CLIENT_KEY", &key_file),
        ],
    )
    .await;
    assert_succeeded(&ok);

    // No client certificate: the gateway ends the handshake.
    let no_cert = scan(
        &machine,
        &[&gateway[..], &name, &["--ca", &ca_file]].concat(),
        &[],
    )
    .await;
    let line = assert_refused(&no_cert, &[]);
    assert!(
        line.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {line}"
    );

    // A gateway certificate from a CA not trusted.
    let untrusted = scan(
        &machine,
        &[
            &gateway[..],
            &name,
            &[
                "--ca",
                &other_ca_file,
                "--cert",
                &cert_file,
                "--key",
                &key_file,
            ],
        ]
        .concat(),
        &[],
    )
    .await;
    assert_refused(&untrusted, &["cannot connect", "UnknownIssuer"]);

    // Without --tls-server-name the IP address does not match the certificate.
    let wrong_name = scan(
        &machine,
        &[
            &gateway[..],
            &["--ca", &ca_file, "--cert", &cert_file, "--key", &key_file],
        ]
        .concat(),
        &[],
    )
    .await;
    assert_refused(
        &wrong_name,
        &["cannot connect", "not valid for name", "--tls-server-name"],
    );

    // Mistakes in the command line, found before connecting.
    let half = scan(
        &machine,
        &[&gateway[..], &["--ca", &ca_file, "--cert", &cert_file]].concat(),
        &[],
    )
    .await;
    assert_refused(&half, &["--cert needs --key"]);
    let missing = dir.join("missing.crt").display().to_string();
    let no_file = scan(&machine, &[&gateway[..], &["--ca", &missing]].concat(), &[]).await;
    assert_refused(&no_file, &["cannot use --ca", "missing.crt"]);
    let not_pem = scan(
        &machine,
        &[&gateway[..], &["--ca", &ca_file, "--cert", &cert_file]].concat(),
        &[("SCAN_GATEWAY_CLIENT_KEY", &cert_file)],
    )
    .await;
    assert_refused(&not_pem, &["cannot use --key", "no usable PEM private key"]);
    let no_ca = scan(&machine, &gateway, &[]).await;
    assert_refused(&no_ca, &["--ca"]);
    let plaintext = scan(
        &machine,
        &[
            "--gateway",
            &format!("http://{}", gw.addr),
            "--ca",
            &ca_file,
        ],
        &[],
    )
    .await;
    assert_refused(&plaintext, &["https://"]);

    assert_eq!(gw.sim.handle.stats().run_scan, 2, "only the two good runs");
}

// === bearer tokens ===

#[tokio::test]
async fn scan_with_a_token_file_succeeds_and_fails_clearly_without_a_valid_token() {
    let dir = temp_dir();
    let signer = Signer::new("k1");
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    args.jwks = Some(file(&dir, "jwks.json", &signer.jwks()));
    args.jwt_issuer = Some(ISSUER.into());
    args.jwt_audience = Some(AUDIENCE.into());
    args.config = Some(write(
        &dir,
        "gateway.toml",
        &format!("[policy]\n\"{SCANNER}\" = \"scan\"\n"),
    ));
    let gw = spawn_gateway_with(sim, args).await;
    let machine = gw.sim.machine(0);
    let gateway = format!("http://{}", gw.addr);

    let good = signer.token(claims(SCANNER));
    // As a hand-written file may be: with a trailing newline.
    let good_file = file(&dir, "token", &format!("{good}\n"));
    let ok = scan(
        &machine,
        &["--gateway", &gateway, "--token-file", &good_file],
        &[],
    )
    .await;
    assert_succeeded(&ok);
    let ok_env = scan(
        &gw.sim.machine(1),
        &["--gateway", &gateway],
        &[("SCAN_GATEWAY_TOKEN_FILE", &good_file)],
    )
    .await;
    assert_succeeded(&ok_env);

    let without = scan(&machine, &["--gateway", &gateway], &[]).await;
    assert_refused(
        &without,
        &["Unauthenticated", "no credentials", "--token-file"],
    );

    let expired = signer.token(claims_between(SCANNER, now() - 7200, now() - 3600));
    let expired_file = file(&dir, "expired", &expired);
    let refused = scan(
        &machine,
        &["--gateway", &gateway, "--token-file", &expired_file],
        &[],
    )
    .await;
    assert_refused(&refused, &["Unauthenticated", "expired"]);

    // A valid token of a caller the policy does not name.
    let stranger = signer.token(claims("system:serviceaccount:other:app"));
    let stranger_file = file(&dir, "stranger", &stranger);
    let denied = scan(
        &machine,
        &["--gateway", &gateway, "--token-file", &stranger_file],
        &[],
    )
    .await;
    assert_refused(
        &denied,
        &[
            "PermissionDenied",
            "system:serviceaccount:other:app",
            "policy",
        ],
    );

    let missing = dir.join("no-token").display().to_string();
    let no_file = scan(
        &machine,
        &["--gateway", &gateway, "--token-file", &missing],
        &[],
    )
    .await;
    assert_refused(&no_file, &["cannot use --token-file", "no-token"]);

    // Neither token is printed, whatever happened.
    for output in [&ok, &ok_env, &refused, &denied] {
        let (stdout, stderr) = text(output);
        for token in [&good, &expired, &stranger] {
            // The signature alone is what makes a token usable.
            let signature = token.rsplit('.').next().unwrap();
            assert!(!stdout.contains(signature), "token on stdout: {stdout}");
            assert!(!stderr.contains(signature), "token on stderr: {stderr}");
        }
        assert!(!stderr.contains("Bearer "), "{stderr}");
    }
    assert_eq!(gw.sim.handle.stats().run_scan, 2, "only the two good runs");
}

#[tokio::test]
async fn scan_sends_its_token_over_tls() {
    let dir = temp_dir();
    let (server_ca, signer) = (ca("server ca"), Signer::new("k1"));
    let sim = spawn_simulator(fast_simulator()).await;
    let mut args = settings_for(&sim);
    // 127.0.0.1 in the certificate: no --tls-server-name needed.
    let (cert, key) = leaf(&server_ca, vec![SanType::IpAddress([127, 0, 0, 1].into())]);
    args.tls_cert = Some(write(&dir, "tls.crt", &cert));
    args.tls_key = Some(write(&dir, "tls.key", &key));
    args.jwks = Some(file(&dir, "jwks.json", &signer.jwks()));
    args.jwt_issuer = Some(ISSUER.into());
    args.jwt_audience = Some(AUDIENCE.into());
    let gw = spawn_secure(sim, args).await;
    let https = format!("https://{}", gw.addr);
    let ca_file = file(&dir, "ca.crt", &server_ca.pem);
    let token = signer.token(claims(SCANNER));
    let token_file = file(&dir, "token", &token);

    let ok = scan(
        &gw.sim.machine(0),
        &["--gateway", &https, "--ca", &ca_file],
        &[("SCAN_GATEWAY_TOKEN_FILE", &token_file)],
    )
    .await;
    assert_succeeded(&ok);
    let (stdout, stderr) = text(&ok);
    let signature = token.rsplit('.').next().unwrap();
    assert!(!stdout.contains(signature) && !stderr.contains(signature));
    // Over TLS there is nothing to warn about.
    assert!(!stderr.contains("warning"), "{stderr}");

    let without = scan(
        &gw.sim.machine(1),
        &["--gateway", &https, "--ca", &ca_file],
        &[],
    )
    .await;
    assert_refused(&without, &["Unauthenticated", "--token-file"]);
    assert_eq!(gw.sim.handle.stats().run_scan, 1);
}
