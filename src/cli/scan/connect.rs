//! How `scan` reaches a gateway that requires TLS, mutual TLS or bearer JWTs: the channel's
//! TLS from PEM files, and a token file re-read for every call (a Kubernetes projected
//! service-account token is rotated in place, so a long scan must not keep a stale copy).

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use scan_gateway_client::ScanClient;

/// Longest the TCP connect, and separately the TLS handshake, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `scan` client as it is used: every call goes through [`BearerToken`].
pub type Client = ScanClient<InterceptedService<Channel, BearerToken>>;

/// Flags of `scan` for a gateway that authenticates its callers; each also reads its
/// environment variable.
#[derive(Debug, Default, Clone, clap::Args)]
#[command(next_help_heading = "Gateway security")]
pub struct ClientArgs {
    /// PEM CA bundle to trust for the gateway's certificate. Required with an https://
    /// gateway address (this build does not read the system's trusted roots).
    #[arg(long = "ca", env = "SCAN_GATEWAY_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs --key.
    #[arg(long = "cert", env = "SCAN_GATEWAY_CLIENT_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate; needs --cert.
    #[arg(long = "key", env = "SCAN_GATEWAY_CLIENT_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Name the gateway's certificate must carry, when it is not the host of the gateway
    /// address (e.g. the address is an IP and the certificate names a DNS host).
    #[arg(long, env = "SCAN_GATEWAY_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// File holding a bearer JWT (e.g. a Kubernetes projected service-account token), re-read
    /// for every call and sent as `authorization: Bearer …`.
    #[arg(long, env = "SCAN_GATEWAY_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

// === errors ===

/// Why the client could not be set up or could not connect. The messages name files and
/// flags, never a token or key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gateway address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error(
        "{flags} given but the gateway address {address} is plaintext: use an https:// address"
    )]
    TlsOnPlaintext { flags: String, address: String },
    #[error(
        "the https:// gateway address needs --ca (SCAN_GATEWAY_CA), the PEM CA bundle of \
         the gateway's certificate: this build does not read the system's trusted roots"
    )]
    NoCa,
    #[error("--{given} needs --{missing} too: mutual TLS takes a client certificate and its key")]
    HalfIdentity {
        given: &'static str,
        missing: &'static str,
    },
    #[error("cannot use {flag} {path}: {reason}")]
    File {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot connect to the gateway at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A token file that cannot be sent; never carries the token itself (an I/O error's text
/// does not quote the file).
#[derive(Debug, thiserror::Error)]
#[error("cannot use --token-file {path}: {reason}")]
pub struct TokenError {
    path: PathBuf,
    reason: String,
}

// === connect ===

/// Connects to `address` as `args` say: plaintext for http://, TLS for https:// (mutual with
/// --cert/--key), and a bearer token on every call with --token-file.
pub async fn connect(address: &str, args: &ClientArgs) -> Result<Client, Error> {
    let endpoint = Endpoint::from_shared(address.to_owned()).map_err(|err| Error::Address {
        address: address.to_owned(),
        reason: err.to_string(),
    })?;
    let uri = endpoint.uri().clone();
    let endpoint = match uri.scheme_str() {
        Some("https") => endpoint.tls_config(tls_config(args)?).map_err(|err| {
            // tonic builds the rustls config here: a CA it cannot parse, an invalid name.
            Error::Tls(causes(&err))
        })?,
        Some("http") => {
            let flags = tls_flags(args);
            if !flags.is_empty() {
                return Err(Error::TlsOnPlaintext {
                    flags: flags.join(", "),
                    address: address.to_owned(),
                });
            }
            endpoint
        }
        _ => {
            return Err(Error::Address {
                address: address.to_owned(),
                reason: "it must start with http:// or https://".into(),
            });
        }
    };

    // Read it once now so a missing or unusable file is reported before anything is sent.
    let token = match &args.token_file {
        Some(path) => {
            read_token(path)?;
            if uri.scheme_str() == Some("http") && !is_loopback(uri.host()) {
                eprintln!(
                    "warning: sending a bearer token over plaintext to {address}: \
                     anyone on the path can replay it; prefer an https:// address"
                );
            }
            BearerToken(Some(Arc::from(path.as_path())))
        }
        None => BearerToken(None),
    };

    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|err| {
            let mut reason = causes(&err);
            // An IP address, or an internal name, that the certificate does not carry.
            if reason.contains("not valid for name") && args.tls_server_name.is_none() {
                reason.push_str("; pass a name it holds with --tls-server-name");
            }
            Error::Connect {
                address: address.to_owned(),
                reason,
            }
        })?;
    probe(channel.clone(), address, &uri, args).await?;
    Ok(ScanClient::new(InterceptedService::new(channel, token)))
}

/// One health check (open on the gateway whatever its security), so that a connection the
/// gateway refuses is reported as such before the scan is sent. With TLS 1.3 the client's
/// side of the handshake completes before the gateway has checked the client certificate, so
/// `connect` succeeds even when the gateway then closes the connection; the first call would
/// fail with whichever symptom wins the race (an alert, a broken pipe, a cancelled request),
/// or wait for its deadline.
async fn probe(
    channel: Channel,
    address: &str,
    uri: &http::Uri,
    args: &ClientArgs,
) -> Result<(), Error> {
    let mut health = HealthClient::new(channel);
    let mut request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(CONNECT_TIMEOUT);
    let reason = match tokio::time::timeout(CONNECT_TIMEOUT, health.check(request)).await {
        Ok(Ok(_)) => return Ok(()),
        // Any answer from the server, even a refusal, means the connection was accepted.
        Ok(Err(status)) if !is_transport_failure(&status) => return Ok(()),
        Ok(Err(status)) => {
            let mut reason = format!("the connection was closed ({}", status.message());
            push_causes(&mut reason, std::error::Error::source(&status));
            reason.push(')');
            reason
        }
        Err(_) => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
    };
    let hint = match (uri.scheme_str(), &args.cert) {
        (Some("https"), None) => {
            "if the gateway requires mutual TLS, pass a client certificate with --cert and --key"
        }
        (Some("https"), Some(_)) => {
            "the gateway may not accept this client certificate (is it from the gateway's client CA?)"
        }
        _ => "if the gateway serves TLS, use an https:// address",
    };
    Err(Error::Connect {
        address: address.to_owned(),
        reason: format!("{reason}; {hint}"),
    })
}

/// A status made on this side because the connection failed (tonic keeps the transport error
/// as its source), not an answer of the server, which may well be UNAVAILABLE while draining.
fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
        || matches!(status.code(), Code::Unknown | Code::Cancelled)
}

/// The TLS flags given, for the error when the address is plaintext.
fn tls_flags(args: &ClientArgs) -> Vec<&'static str> {
    [
        (args.ca.is_some(), "--ca"),
        (args.cert.is_some(), "--cert"),
        (args.key.is_some(), "--key"),
        (args.tls_server_name.is_some(), "--tls-server-name"),
    ]
    .into_iter()
    .filter_map(|(given, flag)| given.then_some(flag))
    .collect()
}

fn tls_config(args: &ClientArgs) -> Result<ClientTlsConfig, Error> {
    // The pairing first: it is a mistake in the command line, whatever the files hold.
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (Some(_), None) => {
            return Err(Error::HalfIdentity {
                given: "cert",
                missing: "key",
            });
        }
        (None, Some(_)) => {
            return Err(Error::HalfIdentity {
                given: "key",
                missing: "cert",
            });
        }
        (None, None) => None,
    };
    let ca = args.ca.as_deref().ok_or(Error::NoCa)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_certificates("--ca", ca)?))
        .timeout(CONNECT_TIMEOUT);
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            read_certificates("--cert", cert)?,
            read_key(key)?,
        ));
    }
    if let Some(name) = &args.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// A PEM file holding at least one certificate; checked here because tonic skips the
/// certificates it cannot parse, which would surface later as an unexplained handshake failure.
fn read_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    let file_error = |reason: String| Error::File {
        flag,
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|err| file_error(err.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(err.to_string()))?;
    if certificates.is_empty() {
        return Err(file_error("no PEM certificate in the file".into()));
    }
    Ok(pem)
}

fn read_key(path: &Path) -> Result<Vec<u8>, Error> {
    let file_error = |reason: String| Error::File {
        flag: "--key",
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|err| file_error(err.to_string()))?;
    // Never quote the parse error: it may echo key material.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| file_error("no usable PEM private key in the file".into()))?;
    Ok(pem)
}

fn is_loopback(host: Option<&str>) -> bool {
    match host {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// An error and its sources on one line: tonic's transport errors say only "transport
/// error" and keep the reason (e.g. rustls' "invalid peer certificate: UnknownIssuer") a few
/// sources down.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    push_causes(&mut text, err.source());
    text
}

/// Appends `source` and its own sources to `text`, skipping what `text` already says (each
/// layer tends to repeat the one below).
pub fn push_causes(text: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
}

// === impl BearerToken ===

/// Adds `authorization: Bearer <token>` to every call, read from the file each time.
#[derive(Clone)]
pub struct BearerToken(Option<Arc<Path>>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The path only: the token is read per call and never kept here.
        f.debug_tuple("BearerToken").field(&self.0).finish()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(path) = &self.0 {
            // The file was readable at start; failing now means it vanished or was replaced
            // by something unusable, and the call must not go out without its credential.
            let value = read_token(path)
                .map_err(|err| Status::unauthenticated(format!("no token sent: {err}")))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// The header value for the token in `path`: surrounding whitespace (a trailing newline of a
/// hand-written file) dropped, marked sensitive so that HTTP/2 never indexes it and `Debug`
/// prints `Sensitive`.
fn read_token(path: &Path) -> Result<MetadataValue<Ascii>, TokenError> {
    let error = |reason: String| TokenError {
        path: path.to_owned(),
        reason,
    };
    let contents = std::fs::read_to_string(path)
        .map_err(|err| error(format!("cannot read the file: {err}")))?;
    let token = contents.trim();
    if token.is_empty() {
        return Err(error("the file is empty".into()));
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        error(
            "the file holds characters a token cannot have (spaces, line breaks or non-ASCII)"
                .into(),
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

// === tests ===

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "scan-gateway-connect-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, contents).expect("the temp dir is writable");
        path
    }

    #[test]
    fn token_is_trimmed_marked_sensitive_and_never_debug_printed() {
        let path = temp_file("token", "header.payload.signature\n");
        let value = read_token(&path).expect("a usable token");
        assert_eq!(
            value.to_str().expect("ASCII"),
            "Bearer header.payload.signature"
        );
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("payload"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_token_is_read_again_for_every_call() {
        let path = temp_file("rotated", "first.token.value");
        let mut bearer = BearerToken(Some(Arc::from(path.as_path())));
        let sent = |bearer: &mut BearerToken| {
            let request = bearer.call(Request::new(())).expect("a token is sent");
            request.metadata().get("authorization").cloned()
        };
        assert_eq!(
            sent(&mut bearer).expect("authorization").to_str().ok(),
            Some("Bearer first.token.value")
        );
        // As the kubelet rotates a projected token: in place.
        std::fs::write(&path, "second.token.value").expect("writable");
        assert_eq!(
            sent(&mut bearer).expect("authorization").to_str().ok(),
            Some("Bearer second.token.value")
        );
        std::fs::remove_file(&path).expect("removable");
        let status = bearer.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("no token sent"), "{status:?}");
        assert!(BearerToken(None).call(Request::new(())).is_ok());
    }

    #[test]
    fn unusable_token_files_are_refused_without_quoting_them() {
        let missing = std::env::temp_dir().join("scan-gateway-connect-no-such-token");
        let err = read_token(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read the file"), "{err}");

        let empty = temp_file("empty", " \n");
        let err = read_token(&empty).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");

        let pem = temp_file(
            "pem",
            "-----BEGIN SECRET-----\nc2VjcmV0\n-----END SECRET-----\n",
        );
        let err = read_token(&pem).unwrap_err().to_string();
        assert!(err.contains("cannot have"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(pem);
    }

    #[tokio::test]
    async fn tls_flags_on_a_plaintext_address_are_refused() {
        let args = ClientArgs {
            ca: Some("ca.pem".into()),
            ..ClientArgs::default()
        };
        let err = connect("http://127.0.0.1:1", &args).await.unwrap_err();
        assert!(matches!(err, Error::TlsOnPlaintext { .. }), "{err}");
        assert!(err.to_string().contains("--ca"), "{err}");
    }

    #[tokio::test]
    async fn https_without_a_ca_says_to_pass_one() {
        let err = connect("https://127.0.0.1:1", &ClientArgs::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoCa), "{err}");
        assert!(err.to_string().contains("--ca"), "{err}");
    }

    #[tokio::test]
    async fn a_certificate_without_its_key_is_refused_and_so_is_an_empty_ca() {
        let args = ClientArgs {
            ca: Some("ca.pem".into()),
            cert: Some("client.pem".into()),
            ..ClientArgs::default()
        };
        let err = connect("https://127.0.0.1:1", &args).await.unwrap_err();
        assert!(err.to_string().contains("--cert needs --key"), "{err}");

        let ca = temp_file("empty-ca.pem", "");
        let args = ClientArgs {
            ca: Some(ca.clone()),
            ..ClientArgs::default()
        };
        let err = connect("https://127.0.0.1:1", &args).await.unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn only_loopback_hosts_count_as_loopback() {
        assert!(is_loopback(Some("localhost")));
        assert!(is_loopback(Some("127.0.0.1")));
        assert!(is_loopback(Some("[::1]")));
        assert!(!is_loopback(Some("gateway.soc.svc")));
        assert!(!is_loopback(Some("10.0.0.1")));
        assert!(!is_loopback(None));
    }
}
