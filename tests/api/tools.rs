//! Real third-party clients against a running gateway: grpcurl (server reflection) and a
//! Python grpcio client generated from `proto/`. Install them with
//! `scripts/install-test-tools.sh` (the test command does).

use std::{path::PathBuf, process::Command};

use crate::helpers::*;

fn tool(relative: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-tools.sh first",
        path.display()
    );
    path
}

/// Runs a command off the async runtime and returns (success, stdout, stderr).
async fn run(mut command: Command) -> (bool, String, String) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the tool runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn grpcurl(args: &[&str]) -> Command {
    let mut command = Command::new(tool(".tools/bin/grpcurl"));
    command.args(args);
    command
}

#[tokio::test]
async fn grpcurl_lists_by_reflection_starts_a_scan_and_follows_one_to_succeeded() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();

    let (ok, listed, err) = run(grpcurl(&["-plaintext", &addr, "list"])).await;
    assert!(ok, "{err}");
    assert!(listed.contains("defender.scan.v1.ScanService"), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");

    let (ok, described, err) = run(grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "defender.scan.v1.ScanService",
    ]))
    .await;
    assert!(ok, "{err}");
    for rpc in [
        "RunScan",
        "StartScan",
        "GetScan",
        "WatchScan",
        "CancelScan",
        "ListScans",
    ] {
        assert!(described.contains(rpc), "{rpc} in {described}");
    }

    let body = format!(
        r#"{{"machine_id":"{}","scan_type":"SCAN_TYPE_QUICK","comment":"from grpcurl"}}"#,
        app.sim.machine(0)
    );
    let (ok, started, err) = run(grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        &addr,
        "defender.scan.v1.ScanService/StartScan",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(started.contains("ACTION_STATUS_PENDING"), "{started}");

    let body = format!(
        r#"{{"machine_id":"{}","scan_type":"SCAN_TYPE_FULL","comment":"from grpcurl"}}"#,
        app.sim.machine(1)
    );
    let (ok, streamed, err) = run(grpcurl(&[
        "-plaintext",
        "-max-time",
        "30",
        "-d",
        &body,
        &addr,
        "defender.scan.v1.ScanService/RunScan",
    ]))
    .await;
    assert!(ok, "{err}");
    let pending = streamed
        .find("ACTION_STATUS_PENDING")
        .expect("pending first");
    let running = streamed
        .find("ACTION_STATUS_IN_PROGRESS")
        .expect("then in progress");
    let done = streamed
        .find("ACTION_STATUS_SUCCEEDED")
        .expect("then succeeded");
    assert!(pending < running && running < done, "{streamed}");
}

#[tokio::test]
async fn grpcurl_sees_invalid_argument_with_details() {
    let app = spawn_app().await;
    let (ok, _, err) = run(grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"machine_id":"nope","comment":"x"}"#,
        &app.addr.to_string(),
        "defender.scan.v1.ScanService/StartScan",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(err.contains("machine_id"), "{err}");
}

#[tokio::test]
async fn grpcurl_decodes_the_rich_error_details_through_reflection() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let (ok, _, err) = run(grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"machine_id":"nope","comment":"x"}"#,
        &addr,
        "defender.scan.v1.ScanService/StartScan",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("google.rpc.BadRequest"), "{err}");
    assert!(err.contains(r#""fieldViolations""#), "{err}");
    assert!(!err.contains("not recognized"), "{err}");
    let (ok, _, err) = run(grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"action_id":"7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37"}"#,
        &addr,
        "defender.scan.v1.ScanService/GetScan",
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("google.rpc.ResourceInfo"), "{err}");
    assert!(err.contains(r#""resourceName""#), "{err}");
    assert!(!err.contains("not recognized"), "{err}");
}

#[tokio::test]
async fn a_python_grpcio_client_generated_from_the_proto_runs_a_scan() {
    let app = spawn_app().await;
    let mut command = Command::new(tool(".tools/venv/bin/python"));
    command
        .arg(tool("tests/python/scan_client.py"))
        .arg(app.addr.to_string())
        .arg(app.sim.machine(0));
    let (ok, out, err) = run(command).await;
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("python client: OK"), "{out}");
}
