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

use crate::call::instant_after;

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

/// The longest `grpc-timeout` taken as it is. Eight digits of hours (the most the header can
/// say) is over 11,000 years; nothing the gateway does lasts a month (a stream follows an action
/// for `max_watch`, 24 h by default), so a longer timeout is read as 30 days and every instant
/// computed from it stays far inside what an `Instant` holds.
const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`, at most [`MAX_GRPC_TIMEOUT`]), less a margin of a tenth of it (at most
/// [`DEADLINE_MARGIN`]). An unreadable header never gets here: `inbound::timeout` refuses it.
pub fn deadline_of<T>(request: &tonic::Request<T>) -> Option<Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    let within = timeout - (timeout / 10).min(DEADLINE_MARGIN);
    Some(instant_after(Instant::now(), within))
}

/// Whether a `grpc-timeout` header value can be read (the inbound layer refuses the others).
pub fn grpc_timeout_is_valid(raw: &str) -> bool {
    parse_grpc_timeout(raw).is_some()
}

fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    // Digits only: `u64::from_str` would also take a sign.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    };
    Some(timeout.min(MAX_GRPC_TIMEOUT))
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
        for bad in ["+5S", "", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_longest_grpc_timeout_is_clamped_to_30_days() {
        assert_eq!(parse_grpc_timeout("99999999H"), Some(MAX_GRPC_TIMEOUT));
        assert_eq!(parse_grpc_timeout("720H"), Some(MAX_GRPC_TIMEOUT));
        assert_eq!(
            parse_grpc_timeout("719H"),
            Some(Duration::from_secs(719 * 3600))
        );
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert("grpc-timeout", "99999999H".parse().unwrap());
        let deadline = deadline_of(&request).expect("a deadline");
        assert!(deadline <= Instant::now() + MAX_GRPC_TIMEOUT);
    }
}
