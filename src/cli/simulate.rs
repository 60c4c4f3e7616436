//! `scan-gateway simulate`: the Defender API and token endpoint simulator on its own, for
//! testing other services (or a gateway in real mode) against it.

use std::process::ExitCode;

use defender_simulator::{Simulator, SimulatorArgs};

use crate::{
    clock::Clock,
    telemetry::{self, LogFormat},
};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    simulator: SimulatorArgs,
}

pub async fn run(args: SimulateArgs) -> ExitCode {
    let shutdown = super::shutdown_signal();
    // The simulator exports no spans: it plays Microsoft's side.
    let _logs = telemetry::init(LogFormat::from_env(LogFormat::for_stderr()), "info", None);
    let config = match args.simulator.to_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let simulator =
        match Simulator::bind(args.simulator.listen, config.clone(), Clock::system()).await {
            Ok(simulator) => simulator,
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.simulator.listen);
                return ExitCode::from(2);
            }
        };
    println!(
        "Defender API simulator listening on {}",
        simulator.base_url()
    );
    println!("  MDE_API_BASE_URL={}", simulator.base_url());
    println!("  AZURE_AUTHORITY_HOST={}", simulator.authority_url());
    println!("  AZURE_TENANT_ID={}", config.tenant_id);
    println!("  AZURE_CLIENT_ID={}", config.client_id);
    println!(
        "  AZURE_CLIENT_SECRET=<the --client-secret value; simulator default: simulator-secret>"
    );
    println!("Machines:");
    for id in simulator.handle().demo_machine_ids(5) {
        println!("  {id}");
    }
    match simulator.run_until_stopped(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use clap::Parser;
    use defender_simulator::{SimState, SimulatorConfig, app};
    use tower::ServiceExt;

    use super::super::{Cli, Command};
    use crate::clock::Clock;

    /// The simulator's config from a `scan-gateway simulate ...` command line.
    fn config_of(flags: &[&str]) -> SimulatorConfig {
        let argv = ["scan-gateway", "simulate"]
            .into_iter()
            .chain(flags.iter().copied());
        match Cli::try_parse_from(argv).expect("flags").command {
            Command::Simulate(args) => args.simulator.to_config().expect("config"),
            other => panic!("not simulate: {other:?}"),
        }
    }

    async fn send(app: &axum::Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test(start_paused = true)]
    async fn simulate_fault_forbidden_makes_scans_answer_the_missing_roles_403() {
        let config = config_of(&["--fault-forbidden", "run-scan"]);
        let state = SimState::new(config.clone(), Clock::system());
        let machine = state.handle().demo_machine_ids(1).remove(0);
        let app = app(state);
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret=simulator-secret&scope=https://api.securitycenter.microsoft.com/.default",
            config.client_id
        );
        let token = Request::post(format!("/{}/oauth2/v2.0/token", config.tenant_id))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .expect("request");
        let (status, body) = send(&app, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = body["access_token"].as_str().expect("token").to_owned();

        let scan = Request::post(format!("/api/machines/{machine}/runAntiVirusScan"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"Comment":"cli test","ScanType":"Quick"}"#))
            .expect("request");
        let (status, body) = send(&app, scan).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "Forbidden");
        assert_eq!(
            body["error"]["message"],
            "Missing application roles. API required roles: Machine.Scan"
        );
        assert!(body["error"]["target"].is_string(), "{body}");
    }

    #[test]
    fn simulate_refuses_bad_fault_flags() {
        for flags in [
            &["--fault-forbidden", "everything"][..],
            &["--fault", "run-scan:error-rate=2"],
            &["--fault", "token:forbidden"],
        ] {
            let argv = ["scan-gateway", "simulate"]
                .into_iter()
                .chain(flags.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{flags:?}");
        }
    }
}
