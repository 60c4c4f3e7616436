//! The `scan-gateway` binary itself: `serve` in real mode against a separately started
//! simulator (the production path), `serve --simulate` as a newcomer runs it, the refusal to
//! start without credentials, and the `scan` client's output and exit codes.

use std::{process::Command, time::Duration};

use secrecy::ExposeSecret;

use crate::{helpers::*, process::*};

#[tokio::test]
async fn serve_in_real_mode_runs_a_scan_against_a_separate_simulator_and_stops_on_sigterm() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut gateway = Running::spawn(real_mode(&sim));
    // Served open on purpose (real_mode sets the override): said at start.
    let warning = gateway.stderr_line("without caller authentication");
    assert!(warning.contains("WARN"), "{warning}");
    let addr = serving_addr(&gateway.stderr_line("\"serving\""));

    let mut client = scan_gateway::grpc::pb::scan_service_client::ScanServiceClient::connect(
        format!("http://{addr}"),
    )
    .await
    .unwrap();
    let (updates, end) = run_to_end(&mut client, &sim.machine(0)).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        statuses(&updates).last(),
        Some(&scan_gateway::grpc::pb::ActionStatus::Succeeded)
    );
    assert!(
        sim.handle.stats().token >= 1,
        "the real token endpoint path was used"
    );

    // A stream refused at its end logs that with the call's trace and span ids, as every
    // line of a call does.
    let unknown = client
        .watch_scan(scan_gateway::grpc::pb::WatchScanRequest {
            action_id: "7f5e3c1a-0b2d-4e6f-8a9b-1c2d3e4f5a6b".into(),
        })
        .await;
    let refused = match unknown {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let line = gateway.stderr_line("\"call refused\"");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["fields"]["code"], "NotFound", "{line}");
    assert_eq!(line["trace_id"].as_str().map(str::len), Some(32), "{line}");
    assert_eq!(line["span_id"].as_str().map(str::len), Some(16), "{line}");

    let status = gateway.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let logs = gateway.all_stderr();
    assert!(
        !logs.contains(sim.config.client_secret.expose_secret()),
        "the client secret appeared in the logs"
    );
    assert!(!logs.contains("Bearer "), "a token appeared in the logs");
}

#[tokio::test]
async fn serve_in_real_mode_without_caller_authentication_refuses_to_start_naming_the_settings() {
    let sim = spawn_simulator(fast_simulator()).await;
    let mut command = real_mode(&sim);
    command.env_remove("SCAN_GATEWAY_ALLOW_UNAUTHENTICATED");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "SCAN_GATEWAY_TLS_CLIENT_CA",
        "SCAN_GATEWAY_JWKS",
        "SCAN_GATEWAY_ALLOW_UNAUTHENTICATED=true",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
    assert_eq!(sim.handle.stats().token, 0, "nothing was started");
}

#[tokio::test]
async fn serve_without_credentials_refuses_to_start_and_says_what_to_set() {
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("SCAN_GATEWAY_LISTEN", ANY_PORT)
        .env("SCAN_GATEWAY_ADMIN_LISTEN", ANY_PORT)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "--simulate",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
}

#[tokio::test]
async fn serve_refuses_plain_http_to_a_remote_api() {
    let output = Command::new(BIN)
        .args(["serve", "--simulate"])
        .env_clear()
        .env("MDE_API_BASE_URL", "http://api.security.microsoft.com")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("https://"), "{stderr}");
}

#[tokio::test]
async fn serve_simulate_prints_machines_and_a_demo_scan_succeeds_within_seconds() {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--simulate"])
        .env_clear()
        .env("SCAN_GATEWAY_LISTEN", ANY_PORT)
        .env("SCAN_GATEWAY_ADMIN_LISTEN", ANY_PORT);
    let gateway = Running::spawn(command);
    let grpc_line = gateway.stdout_line("gRPC");
    let addr = grpc_line
        .split_whitespace()
        .nth(1)
        .expect("the banner names the gRPC address")
        .to_owned();
    gateway.stdout_line("Machines you can scan");
    let machine = gateway.stdout_line("  ").trim().to_owned();
    assert_eq!(machine.len(), 40, "{machine}");

    let started = tokio::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "scan",
                "--gateway",
                &format!("http://{addr}"),
                "--machine",
                &machine,
            ])
            .args(["--comment", "newcomer demo", "--timeout", "60s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("pending"), "{stdout}");
    assert!(stdout.contains("in progress"), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

async fn scan_cli(app: &TestGateway, machine: &str) -> std::process::Output {
    let gateway = format!("http://{}", app.addr);
    let machine = machine.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["scan", "--gateway", &gateway, "--machine", &machine])
            .args(["--type", "full", "--comment", "cli test"])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn scan_client_exits_zero_on_success_one_on_failure_two_on_error() {
    let app = spawn_app().await;
    let ok = scan_cli(&app, &app.sim.machine(0)).await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("(Full scan)"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap_or("").contains("succeeded"),
        "{stdout}"
    );

    let bad = scan_cli(&app, "not-a-machine").await;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("machine_id"), "{stderr}");

    let mut failing = fast_simulator();
    failing.failed_share = 1.0;
    let app = spawn_gateway(spawn_simulator(failing).await).await;
    let failed = scan_cli(&app, &app.sim.machine(0)).await;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stdout).contains("failed"));
}
