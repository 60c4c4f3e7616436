//! Issue 6: one trace from the caller to Defender, metrics and logs operators can use.
//!
//! Tracing tests run the real binary (the global tracing subscriber is one per process) in
//! front of an in-process simulator, exporting to an in-process fake OTLP collector.

use std::{collections::HashSet, path::PathBuf, process::Stdio, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use scan_gateway::grpc::pb::{self, scan_service_client::ScanServiceClient};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{
    collector::{Answer, FakeCollector, ReceivedSpan},
    helpers::*,
    process::{Running, real_mode, serving_addr},
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const RUN_SCAN_SPAN: &str = "defender.scan.v1.ScanService/RunScan";

/// `message` with the caller's W3C trace context in the metadata.
fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    metadata.insert("traceparent", traceparent.parse().unwrap());
    metadata.insert("tracestate", "caller=1".parse().unwrap());
    metadata.insert("baggage", "team=secops".parse().unwrap());
    request
}

/// The binary in real mode against `sim`; exporting to `otlp_endpoint` when given, with a
/// short batch delay so spans arrive quickly.
fn start_gateway(
    sim: &TestSimulator,
    otlp_endpoint: Option<&str>,
    env: &[(&str, &str)],
) -> Running {
    let mut command = real_mode(sim);
    if let Some(endpoint) = otlp_endpoint {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
    command.envs(env.iter().copied());
    Running::spawn(command)
}

async fn connect(gateway: &mut Running) -> ScanServiceClient<Channel> {
    let addr = serving_addr(&gateway.stderr_line("\"serving\""));
    ScanServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn run_scan_to_success(client: &mut ScanServiceClient<Channel>, machine: &str) {
    let stream = client
        .run_scan(traced(run_request(machine)))
        .await
        .unwrap()
        .into_inner();
    let (updates, end) = collect(stream).await;
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(
        statuses(&updates).last(),
        Some(&pb::ActionStatus::Succeeded)
    );
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.span.name == name).collect()
}

#[tokio::test]
async fn a_run_scan_is_one_trace_from_the_caller_to_the_defender_request() {
    let sim = spawn_simulator(fast_simulator()).await;
    let collector = FakeCollector::start(Answer::Accept).await;
    // One status read per 300 ms: the 50 ms polls wait for quota, so the trace shows waits.
    let mut gateway = start_gateway(
        &sim,
        Some(&collector.endpoint()),
        &[("SCAN_GATEWAY_QUOTA", "1/300ms")],
    );
    let mut client = connect(&mut gateway).await;
    let machine = sim.machine(0);
    run_scan_to_success(&mut client, &machine).await;

    let all = collector.wait_for(|s| s.span.name == RUN_SCAN_SPAN).await;
    for span in &all {
        assert_eq!(span.service, "scan-gateway");
    }
    // The shared watcher's refreshes are traces of their own; everything else is the caller's.
    let refresh_traces: HashSet<String> = named(&all, "watch refresh")
        .iter()
        .map(|s| s.trace_id())
        .collect();
    assert!(
        !refresh_traces.is_empty(),
        "the watcher refreshed the action"
    );
    assert!(!refresh_traces.contains(TRACE_ID));
    // So is the credentials check as serving starts, which fetches the first token.
    let check = named(&all, "check credentials");
    assert_eq!(check.len(), 1, "one credentials check");
    let check_trace = check[0].trace_id();
    assert_ne!(check_trace, TRACE_ID);
    let token = named(&all, "fetch access token");
    assert_eq!(token.len(), 1, "one token fetch, the check's");
    assert_eq!(token[0].trace_id(), check_trace);
    assert_eq!(token[0].parent_id(), check[0].span_id());
    assert_eq!(token[0].attr("token.outcome").as_deref(), Some("success"));
    let spans: Vec<ReceivedSpan> = all
        .iter()
        .filter(|s| !refresh_traces.contains(&s.trace_id()) && s.trace_id() != check_trace)
        .cloned()
        .collect();
    for span in &spans {
        assert_eq!(
            span.trace_id(),
            TRACE_ID,
            "{} left the trace",
            span.span.name
        );
    }

    // The server span continues the caller's span.
    let server = named(&spans, RUN_SCAN_SPAN);
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(server.parent_id(), CALLER_SPAN_ID);
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(server.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        server.attr("rpc.service").as_deref(),
        Some("defender.scan.v1.ScanService")
    );
    assert_eq!(server.attr("rpc.method").as_deref(), Some("RunScan"));
    assert_eq!(server.attr("rpc.grpc.status_code").as_deref(), Some("0"));

    // The watcher's refreshes link to the stream they serve; their calls are their children.
    let refreshes = named(&all, "watch refresh");
    for refresh in &refreshes {
        assert!(
            refresh
                .links()
                .contains(&(TRACE_ID.to_owned(), server.span_id())),
            "{:?}",
            refresh.links()
        );
    }
    let refresh_ids: HashSet<String> = refreshes.iter().map(|r| r.span_id()).collect();
    let watcher_clients: Vec<&ReceivedSpan> = all
        .iter()
        .filter(|s| {
            s.span.kind == SpanKind::Client as i32 && refresh_traces.contains(&s.trace_id())
        })
        .collect();
    assert!(!watcher_clients.is_empty());
    for client in &watcher_clients {
        assert!(
            refresh_ids.contains(&client.parent_id()),
            "{}",
            client.span.name
        );
        assert_eq!(client.attr("api").as_deref(), Some("list_machine_actions"));
    }

    // One client span per upstream call of the stream, children of the server span.
    let clients: Vec<_> = spans
        .iter()
        .filter(|s| s.span.kind == SpanKind::Client as i32)
        .collect();
    for client in &clients {
        assert_eq!(client.parent_id(), server.span_id(), "{}", client.span.name);
    }
    let post = clients
        .iter()
        .find(|c| c.attr("http.request.method").as_deref() == Some("POST"))
        .expect("a client span for the scan request");
    assert_eq!(
        post.attr("http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        post.attr("url.full"),
        Some(format!(
            "{}/api/machines/{machine}/runAntiVirusScan",
            sim.base_url
        ))
    );
    assert_eq!(post.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        post.attr("server.port"),
        Some(sim.base_url.rsplit(':').next().unwrap().to_owned())
    );

    // Beneath the client spans: the quota waits (the token came from the start-up check).
    let client_ids: HashSet<String> = clients
        .iter()
        .chain(&watcher_clients)
        .map(|c| c.span_id())
        .collect();
    let waits = named(&all, "quota wait");
    assert!(!waits.is_empty(), "no quota wait span");
    for wait in waits {
        assert!(client_ids.contains(&wait.parent_id()), "{wait:?}");
    }

    // Every Defender request carried a traceparent of its trace (the caller's, or a refresh's),
    // naming its client span.
    let seen = sim.handle.traceparents();
    assert!(seen.len() >= 3, "{seen:?}");
    for header in seen {
        let parts: Vec<&str> = header.traceparent.split('-').collect();
        assert!(
            parts[1] == TRACE_ID || refresh_traces.contains(parts[1]),
            "{header:?}"
        );
        assert!(client_ids.contains(parts[2]), "{header:?}");
        assert_eq!(parts[3], "01", "sampled");
    }

    // The log lines of the call carry the same ids as its spans.
    let audit: serde_json::Value =
        serde_json::from_str(&gateway.stderr_line("\"target\":\"audit\"")).unwrap();
    assert_eq!(audit["trace_id"], TRACE_ID);
    assert_eq!(audit["span_id"], server.span_id().as_str());

    let status = gateway.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_last_spans_are_flushed_at_exit_even_with_one_worker_thread() {
    // One tokio worker (a 1-vCPU pod) and no scheduled export before SIGTERM: the call's spans
    // can only reach the collector through the flush at exit. (The flush itself is checked on a
    // single-threaded runtime in `telemetry`'s unit tests.)
    let sim = spawn_simulator(fast_simulator()).await;
    let collector = FakeCollector::start(Answer::Accept).await;
    let mut gateway = start_gateway(
        &sim,
        Some(&collector.endpoint()),
        &[
            ("TOKIO_WORKER_THREADS", "1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let mut client = connect(&mut gateway).await;
    client
        .start_scan(traced(start_request(&sim.machine(0))))
        .await
        .unwrap();
    assert!(collector.spans().is_empty(), "exported before the flush");

    let asked = Instant::now();
    let status = gateway.terminate().await;
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    let spans = collector
        .wait_for(|s| s.span.name == "defender.scan.v1.ScanService/StartScan")
        .await;
    // The call's trace, and the start-up credentials check's (a trace of its own).
    let check: HashSet<String> = named(&spans, "check credentials")
        .iter()
        .map(|s| s.trace_id())
        .collect();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id() == TRACE_ID || check.contains(&s.trace_id())),
        "{spans:#?}"
    );
    assert!(spans.iter().any(|s| s.trace_id() == TRACE_ID));
}

/// How long one `GetScan` through `client` takes.
async fn timed_get_scan(client: &mut ScanServiceClient<Channel>, action_id: &str) -> Duration {
    let started = Instant::now();
    client
        .get_scan(traced(pb::GetScanRequest {
            fresh: true,
            action_id: action_id.to_owned(),
        }))
        .await
        .unwrap();
    started.elapsed()
}

#[tokio::test]
async fn a_collector_that_is_down_refusing_or_stuck_neither_slows_calls_nor_holds_the_exit() {
    let unreachable = {
        // A port nobody listens on: bound, then closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let refusing = FakeCollector::start(Answer::Unavailable).await;
    let stuck = FakeCollector::start(Answer::Hang).await;
    let setups = [
        ("no export", None),
        ("collector unreachable", Some(unreachable)),
        ("collector answers UNAVAILABLE", Some(refusing.endpoint())),
        ("collector never answers", Some(stuck.endpoint())),
    ];

    let mut gateways = Vec::new();
    for (name, endpoint) in setups {
        let sim = spawn_simulator(fast_simulator()).await;
        let mut gateway = start_gateway(&sim, endpoint.as_deref(), &[]);
        let mut client = connect(&mut gateway).await;
        // Scans still work end to end...
        run_scan_to_success(&mut client, &sim.machine(0)).await;
        let action = client
            .start_scan(traced(start_request(&sim.machine(1))))
            .await
            .unwrap()
            .into_inner()
            .action
            .unwrap();
        gateways.push((name, sim, gateway, client, action.id, Vec::new()));
    }
    // ...and take no longer: the same calls, interleaved so noise hits every setup alike.
    for _ in 0..25 {
        for (_, _, _, client, action_id, latencies) in &mut gateways {
            latencies.push(timed_get_scan(client, action_id).await);
        }
    }
    let medians: Vec<(&str, Duration)> = gateways
        .iter_mut()
        .map(|(name, _, _, _, _, latencies)| {
            latencies.sort();
            (*name, latencies[latencies.len() / 2])
        })
        .collect();
    println!("GetScan median latency: {medians:?}");
    let baseline = medians[0].1;
    for (name, median) in &medians[1..] {
        assert!(
            *median <= baseline * 2 + Duration::from_millis(20),
            "{name}: median {median:?} against {baseline:?} without export"
        );
    }
    assert!(
        refusing.exports() >= 1,
        "the exporter never reached the refusing collector"
    );
    assert!(
        stuck.exports() >= 1,
        "the exporter never reached the stuck collector"
    );

    // SIGTERM: the final flush gives up after its bound instead of holding the exit.
    for (name, _sim, mut gateway, _, _, _) in gateways {
        let asked = Instant::now();
        let status = gateway.terminate().await;
        let took = asked.elapsed();
        println!("{name}: exited {took:?} after SIGTERM");
        assert!(status.success(), "{name}: {status:?}");
        assert!(
            took < scan_gateway::telemetry::FLUSH_TIMEOUT + Duration::from_secs(2),
            "{name}: exit took {took:?}"
        );
    }
}

#[tokio::test]
async fn json_logs_carry_the_callers_trace_and_audit_records_say_who_did_what() {
    // No collector: log lines and the upstream traceparent still carry the caller's trace.
    let sim = spawn_simulator(fast_simulator()).await;
    let mut gateway = start_gateway(&sim, None, &[]);
    let mut client = connect(&mut gateway).await;
    let machine = sim.machine(0);
    let action = client
        .start_scan(traced(pb::StartScanRequest {
            comment: "audit me".to_owned(),
            ..start_request(&machine)
        }))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();

    let line = gateway.stderr_line("\"rpc\":\"StartScan\"");
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["target"], "audit");
    assert_eq!(record["trace_id"], TRACE_ID);
    let span_id = record["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16);
    assert_ne!(
        span_id, CALLER_SPAN_ID,
        "the gateway's call has a span of its own"
    );
    let fields = &record["fields"];
    assert_eq!(fields["message"], "scan requested");
    assert!(
        fields["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{fields}"
    );
    assert_eq!(fields["caller"], "unauthenticated");
    assert_eq!(fields["machine_id"], machine.as_str());
    assert_eq!(fields["scan_type"], "SCAN_TYPE_QUICK");
    assert_eq!(fields["comment"], "audit me");
    assert_eq!(fields["action_id"], action.id.as_str());
    assert_eq!(fields["outcome"], "OK");
    let seen = sim.handle.traceparents();
    assert!(
        seen.iter()
            .any(|h| h.traceparent.starts_with(&format!("00-{TRACE_ID}-"))
                && h.traceparent.contains(span_id)),
        "{seen:?}"
    );

    // Refused and cancelling calls are audited too.
    let refused = client
        .run_scan(traced(run_request("not-a-machine")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let line = gateway.stderr_line("\"rpc\":\"RunScan\"");
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["fields"]["outcome"], "INVALID_ARGUMENT");
    assert_eq!(record["fields"]["machine_id"], "not-a-machine");
    assert!(record["fields"].get("action_id").is_none(), "{record}");

    client
        .cancel_scan(traced(pb::CancelScanRequest {
            action_id: action.id.clone(),
            comment: "changed my mind".to_owned(),
        }))
        .await
        .unwrap();
    let line = gateway.stderr_line("\"rpc\":\"CancelScan\"");
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["fields"]["message"], "cancel requested");
    assert_eq!(record["fields"]["action_id"], action.id.as_str());
    assert_eq!(record["fields"]["machine_id"], machine.as_str());
    assert_eq!(record["fields"]["comment"], "changed my mind");
    assert_eq!(record["fields"]["outcome"], "OK");

    let status = gateway.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// `promtool` from `PROMTOOL`, `.tools/bin` (scripts/install-test-tools.sh) or the `PATH`.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("PROMTOOL") {
        return path.into();
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/promtool");
    if local.exists() {
        return local;
    }
    let on_path = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        on_path,
        "promtool is missing: run scripts/install-test-tools.sh (it puts it in .tools/bin)"
    );
    PathBuf::from("promtool")
}

/// `GET /metrics` with an `Accept` header; (content type, body).
async fn scrape(addr: std::net::SocketAddr, accept: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    (content_type, body.to_owned())
}

#[tokio::test]
async fn metrics_after_a_mixed_workload_pass_promtool_and_show_every_family() {
    let mut app = spawn_app().await;
    let machine = app.sim.machine(0);
    // A scan followed to the end, refused calls, a start, a read, a list, a cancel.
    assert!(run_to_end(&mut app.client, &machine).await.1.is_ok());
    let _ = app.client.run_scan(run_request("bad")).await;
    let started = app
        .client
        .start_scan(start_request(&app.sim.machine(1)))
        .await
        .unwrap()
        .into_inner()
        .action
        .unwrap();
    let _ = app
        .client
        .get_scan(pb::GetScanRequest {
            fresh: true,
            action_id: "0d9e8f71-2c3b-4a5d-8e6f-000000000000".to_owned(),
        })
        .await;
    app.client
        .list_scans(pb::ListScansRequest::default())
        .await
        .unwrap();
    app.client
        .cancel_scan(pb::CancelScanRequest {
            action_id: started.id,
            comment: "metrics test".to_owned(),
        })
        .await
        .unwrap();

    let (content_type, text) = scrape(app.admin_addr, "*/*").await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let exposition = text.clone();
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut check = std::process::Command::new(promtool())
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs");
        let mut stdin = check.stdin.take().unwrap();
        stdin.write_all(exposition.as_bytes()).unwrap();
        drop(stdin);
        check.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    for series in [
        r#"scan_gateway_grpc_server_requests_total{method="RunScan",code="OK"} 1"#,
        r#"scan_gateway_grpc_server_requests_total{method="RunScan",code="INVALID_ARGUMENT"} 1"#,
        r#"scan_gateway_grpc_server_requests_total{method="GetScan",code="NOT_FOUND"} 1"#,
        r#"scan_gateway_grpc_server_requests_total{method="CancelScan",code="OK"} 1"#,
        r#"scan_gateway_grpc_server_request_duration_seconds_bucket{le="+Inf",method="ListScans"} 1"#,
        r#"scan_gateway_grpc_server_active_streams{method="RunScan"} 0"#,
        r#"scan_gateway_upstream_requests_total{api="run_antivirus_scan",status="201"}"#,
        r#"scan_gateway_upstream_requests_total{api="get_machine_action",status="404"} 1"#,
        r#"scan_gateway_upstream_request_duration_seconds_count{api="list_machine_actions"}"#,
        r#"scan_gateway_scans_finished_total{status="Succeeded"} 1"#,
        r#"scan_gateway_token_requests_total{credential="client_secret",outcome="success"} 1"#,
        "# TYPE scan_gateway_access_token_ttl_seconds gauge",
        r#"scan_gateway_build_info{version=""#,
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }

    // A scraper that asks for OpenMetrics gets it.
    let (content_type, openmetrics) = scrape(
        app.admin_addr,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
}
