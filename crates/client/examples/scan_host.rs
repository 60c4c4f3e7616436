//! The README's example of a service using the client crate ("From Rust: the client crate"),
//! built with the crate's other targets so the README's code keeps compiling; a test in
//! `tests/readme.rs` checks that the README still shows this function.
//!
//! Run against a gateway: `cargo run -p scan-gateway-client --example scan_host -- <machine id>`
//! (with `serve --simulate` listening on the address below, or change it).

use futures_util::StreamExt;
use scan_gateway_client::{CallOptions, ErrorKind, ScanClient, Update, pb};

async fn scan_host(
    machine_id: &str,
    alert: &str,
) -> Result<pb::ActionStatus, scan_gateway_client::Error> {
    let client =
        ScanClient::connect_lazy("http://scan-gateway.security:50051").expect("a valid address");
    let request = pb::RunScanRequest {
        machine_id: machine_id.into(),
        scan_type: pb::ScanType::Quick as i32,
        comment: format!("alert {alert}"),
        // The same key returns the same scan: resumable even before the scan started.
        request_id: format!("alert-{alert}-{machine_id}"),
        // An alert's scan goes before routine sweeps (if the gateway's policy allows it).
        priority: pb::Priority::Urgent as i32,
    };
    let hour = std::time::Duration::from_secs(3600);
    let mut scan = client.run_scan(request, CallOptions::timeout(hour));
    let mut last = pb::ActionStatus::Unspecified;
    while let Some(update) = scan.next().await {
        match update {
            Ok(Update::Action { action, .. }) => last = action.status(),
            Ok(Update::Resumed { reason, .. }) => eprintln!("scan stream resumed: {reason}"),
            Ok(_) => {}
            Err(err) => {
                if let ErrorKind::InvalidArgument { violations } = err.kind() {
                    eprintln!("bad scan request: {violations:?}");
                }
                return Err(err);
            }
        }
    }
    Ok(last)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(machine_id) = std::env::args().nth(1) else {
        eprintln!("usage: scan_host <machine id>");
        std::process::exit(2);
    };
    match scan_host(&machine_id, "example").await {
        Ok(status) => println!("{status:?}"),
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
