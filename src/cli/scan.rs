//! `scan-gateway scan`: starts a scan through a gateway and shows its progress as it happens.
//! Exit code 0 only when the scan succeeded, 1 when it ended otherwise, 2 when it could not
//! be started or followed.
//!
//! A gateway that authenticates its callers is reached over TLS (https:// addresses), with a
//! client certificate and/or a bearer token file: see [`connect`].

mod connect;

use std::{process::ExitCode, time::Duration};

use futures_util::StreamExt;
use scan_gateway_client::{CallOptions, Update, pb};
use tokio::time::Instant;
use tonic::Code;
use tonic_types::StatusExt;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Quick,
    Full,
}

/// The request's quota class (the gateway's policy may not allow urgent).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Class {
    Urgent,
    Normal,
    Background,
}

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// Device id to scan (40 hexadecimal characters).
    #[arg(long)]
    machine: String,
    /// Kind of scan.
    #[arg(long = "type", value_enum, default_value = "quick")]
    kind: Kind,
    /// Why the scan is run (stored on the action in Defender).
    #[arg(long)]
    comment: String,
    /// Idempotency key: running the command again with the same key follows the same scan.
    #[arg(long)]
    request_id: Option<String>,
    /// Quota class: urgent goes before normal, normal before background.
    #[arg(long, value_enum, default_value = "normal")]
    priority: Class,
    /// Gateway address.
    #[arg(
        long,
        env = "SCAN_GATEWAY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    gateway: String,
    /// Give up after this long (e.g. 30m); no limit by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[command(flatten)]
    security: connect::ClientArgs,
}

pub async fn run(args: ScanArgs) -> ExitCode {
    match follow(args).await {
        Ok(pb::ActionStatus::Succeeded) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

async fn follow(args: ScanArgs) -> Result<pb::ActionStatus, String> {
    let started = Instant::now();
    let client = connect::connect(&args.gateway, &args.security)
        .await
        .map_err(|err| err.to_string())?;
    let request = pb::RunScanRequest {
        machine_id: args.machine.clone(),
        scan_type: match args.kind {
            Kind::Quick => pb::ScanType::Quick,
            Kind::Full => pb::ScanType::Full,
        } as i32,
        comment: args.comment.clone(),
        request_id: args.request_id.clone().unwrap_or_default(),
        priority: match args.priority {
            Class::Urgent => pb::Priority::Urgent,
            Class::Normal => pb::Priority::Normal,
            Class::Background => pb::Priority::Background,
        } as i32,
    };
    // The stream resumes by itself (another replica, a dropped connection): see the client
    // crate.
    let mut stream = client.run_scan(
        request,
        CallOptions {
            timeout: args.timeout,
        },
    );

    let mut last = pb::ActionStatus::Unspecified;
    while let Some(update) = stream.next().await {
        let update = update.map_err(|err| describe(err.status()))?;
        let elapsed = started.elapsed().as_secs_f64();
        match update {
            Update::Queued(queued) => {
                let wait = queued
                    .estimated_start
                    .map(|at| {
                        let now = time::OffsetDateTime::now_utc().unix_timestamp();
                        format!(", starts in about {}s", (at.seconds - now).max(0))
                    })
                    .unwrap_or_default();
                println!(
                    "[{elapsed:6.1}s] queued for Defender API quota: position {}{wait}",
                    queued.position
                );
            }
            Update::Waiting(waiting) => {
                if let Some(running) = waiting.action {
                    println!(
                        "[{elapsed:6.1}s] waiting for the running {} scan {} to end before starting this one",
                        running.scope, running.id
                    );
                }
            }
            Update::Delayed(delayed) => {
                println!(
                    "[{elapsed:6.1}s] updates delayed: {} (the stream waits for the API)",
                    delayed.reason
                );
            }
            Update::Resumed { reason, attempt } => {
                println!(
                    "[{elapsed:6.1}s] stream interrupted ({reason}); resuming (attempt {attempt})"
                );
            }
            Update::Action { action, .. } => {
                let status = action.status();
                if last == pb::ActionStatus::Unspecified {
                    let name = if action.computer_dns_name.is_empty() {
                        action.machine_id.clone()
                    } else {
                        action.computer_dns_name.clone()
                    };
                    println!(
                        "[{elapsed:6.1}s] scan {} on {name} ({} scan)",
                        action.id,
                        if action.scope.is_empty() {
                            "?"
                        } else {
                            &action.scope
                        }
                    );
                }
                println!("[{elapsed:6.1}s] {}", label(status));
                last = status;
            }
        }
    }
    match last {
        pb::ActionStatus::Succeeded
        | pb::ActionStatus::Failed
        | pb::ActionStatus::TimedOut
        | pb::ActionStatus::Cancelled => Ok(last),
        _ => Err("the stream ended before the scan reached a final status".into()),
    }
}

fn label(status: pb::ActionStatus) -> &'static str {
    match status {
        pb::ActionStatus::Pending => "pending: waiting for the device to pick it up",
        pb::ActionStatus::InProgress => "in progress: the device is scanning",
        pb::ActionStatus::Succeeded => "succeeded",
        pb::ActionStatus::Failed => "failed",
        pb::ActionStatus::TimedOut => "timed out: the device did not complete the scan",
        pb::ActionStatus::Cancelled => "cancelled",
        pb::ActionStatus::Unspecified => "status unknown",
    }
}

/// Appended when the gateway refuses the caller's credentials.
const UNAUTHENTICATED_HINT: &str =
    "pass a valid bearer token with --token-file, or a client certificate with --cert and --key";
/// Appended when the gateway's policy refuses the caller.
const NOT_ALLOWED_HINT: &str =
    "the gateway's policy does not let this caller start scans: it needs the `scan` role";

/// A status as a person wants to read it: code, message, what the details add, the cause of a
/// transport failure, and what to change when the gateway refused the caller.
fn describe(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let mut text = format!("{code}: {}", without_code(status.message(), &code));
    connect::push_causes(&mut text, std::error::Error::source(status));
    let not_allowed = status
        .get_error_details()
        .error_info()
        .is_some_and(|info| info.reason == "CALLER_NOT_ALLOWED");
    match status.code() {
        Code::Unauthenticated => text.push_str(&format!(" ({UNAUTHENTICATED_HINT})")),
        Code::PermissionDenied if not_allowed => text.push_str(&format!(" ({NOT_ALLOWED_HINT})")),
        _ => {}
    }
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    if let Some(retry) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        text.push_str(&format!("\n  retry after {}s", retry.as_secs()));
    }
    if status.code() == Code::Unavailable && status.message().contains("shutting down") {
        text.push_str("\n  (resume with the same --request-id, or WatchScan)");
    }
    text
}

/// `message` without a leading `code: `: the gateway's own refusals already open with it
/// ("unauthenticated: ...").
fn without_code<'a>(message: &'a str, code: &str) -> &'a str {
    message
        .get(..code.len())
        .filter(|head| head.eq_ignore_ascii_case(code))
        .and_then(|_| message.get(code.len()..))
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(message)
}
