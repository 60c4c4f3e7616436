//! The gRPC face of the gateway: `ScanService`, health and reflection on one port.

pub mod audit;
pub mod codec;
mod convert;
mod metrics;
mod service;
pub mod status;
mod stream;
#[cfg(test)]
mod validation_props;

use std::time::Duration;

use tokio::time::Instant;

pub use metrics::GrpcMetrics;
pub use service::ScanServiceImpl;

/// The generated protobuf types, client and server of `defender.scan.v1`.
#[allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
pub mod pb {
    tonic::include_proto!("defender.scan.v1");

    /// The encoded descriptors of `proto/`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("scan_descriptor");
}

/// Time kept back from the caller's deadline (at most), so the gateway's own
/// DEADLINE_EXCEEDED, which says what was being waited for, reaches the caller before the
/// caller's local timer fires.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`), less a margin of a tenth of it (at most [`DEADLINE_MARGIN`]). An unreadable
/// header means no deadline rather than a refused call.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    Some(Instant::now() + timeout - (timeout / 10).min(DEADLINE_MARGIN))
}

fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_grpc_timeout_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
