//! `simulate` flags all the way to the answers: parsed into a config, then served.

use axum::http::{Method, StatusCode};
use clap::Parser;

use super::*;
use crate::SimulatorArgs;

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    sim: SimulatorArgs,
}

/// A simulator built from `simulate` flags (every scan succeeds, as in [`config`]).
fn sim_from(flags: &[&str]) -> Sim {
    let args = Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
        .sim;
    let config = args.to_config().expect("config");
    Sim::new(SimulatorConfig {
        failed_share: 0.0,
        timed_out_share: 0.0,
        ..config
    })
}

#[tokio::test(start_paused = true)]
async fn fault_forbidden_answers_the_missing_roles_403_on_the_named_endpoint() {
    let sim = sim_from(&["--fault-forbidden", "run-scan"]);
    let token = sim.token().await;
    let resp = sim.scan(&token, &sim.machine(), "Quick").await;
    assert_error(&resp, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(
        resp.message(),
        "Missing application roles. API required roles: Machine.Scan"
    );
    let json = resp.json();
    let keys: Vec<&String> = json["error"]
        .as_object()
        .expect("error object")
        .keys()
        .collect();
    assert_eq!(keys, ["code", "message", "target"]);
    // The other endpoints answer as usual.
    let list = sim
        .call(Method::GET, "/api/machineactions?$top=1", &token, None)
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(sim.handle.stats().actions_created, 0);
}

#[tokio::test(start_paused = true)]
async fn a_fault_spec_forbids_reads_and_throttles_one_endpoint_only() {
    let sim = sim_from(&[
        "--fault",
        "get-action:forbidden",
        "--fault",
        "list-actions:throttle-rate=1,retry-after=7s",
    ]);
    let token = sim.token().await;
    let created = sim.scan(&token, &sim.machine(), "Quick").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();

    let read = sim.get_action(&token, &id).await;
    assert_error(&read, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(
        read.message(),
        "Missing application roles. API required roles: Machine.Read.All, Machine.ReadWrite.All"
    );
    let list = sim
        .call(Method::GET, "/api/machineactions", &token, None)
        .await;
    assert_error(&list, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    assert_eq!(list.header("retry-after"), Some("7"));
}

#[tokio::test(start_paused = true)]
async fn a_spec_overrides_the_flags_for_all_endpoints() {
    // Every Defender call fails, except cancels, which the spec turns back on.
    let sim = sim_from(&[
        "--fault-forbidden",
        "api",
        "--fault",
        "cancel:forbidden=false",
    ]);
    let token = sim.token().await;
    let resp = sim.scan(&token, &sim.machine(), "Full").await;
    assert_error(&resp, StatusCode::FORBIDDEN, "Forbidden");
    let uri = "/api/machineactions/7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37/cancel";
    let cancel = sim.call(Method::POST, uri, &token, None).await;
    assert_error(&cancel, StatusCode::NOT_FOUND, "ResourceNotFound");
}

#[tokio::test(start_paused = true)]
async fn app_roles_without_machine_scan_make_scans_answer_403() {
    let sim = sim_from(&["--app-roles", "Machine.ReadWrite.All,Machine.Isolate"]);
    let token = sim.token().await;
    let resp = sim.scan(&token, &sim.machine(), "Quick").await;
    assert_error(&resp, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(
        resp.message(),
        "Missing application roles. API required roles: Machine.Scan, application roles: Machine.ReadWrite.All, Machine.Isolate"
    );
    let uri = "/api/machineactions/7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";
    let read = sim.call(Method::GET, uri, &token, None).await;
    assert_error(&read, StatusCode::NOT_FOUND, "ResourceNotFound");
}

#[test]
fn bad_fault_flags_are_refused_with_the_reason() {
    for (flags, expected) in [
        (&["--fault-forbidden", "token"][..], "invalid value 'token'"),
        (&["--fault-forbidden", "run-scan,machines"], "'machines'"),
        (
            &["--fault", "run-scan"],
            "must look like ENDPOINT:KNOB=VALUE",
        ),
        (&["--fault", "run-scan:error-rate=1.5"], "not a share"),
        (&["--fault", "token:forbidden"], "answers no 403"),
        (
            &["--app-roles", "Machine.scan"],
            "unknown application role 'Machine.scan'",
        ),
    ] {
        let err =
            match Cli::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied())) {
                Ok(_) => panic!("{flags:?} accepted"),
                Err(e) => e.to_string(),
            };
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
}
