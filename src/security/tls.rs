//! Inbound TLS: a rustls server config rebuilt when its certificate, key or client CA files
//! change (polled; Kubernetes swaps a `..data` symlink, so the contents are compared, not
//! inode events; new connections get the new config), optional client-certificate
//! verification, and the accepted TLS connections as a
//! stream for tonic's `serve_with_incoming_shutdown`.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, aws_lc_rs},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::TlsSettings;

/// How often the certificate files are checked.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a TLS handshake may take before the connection is dropped.
/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {path}: {reason}")]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

fn tls_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The current TLS configuration; clones share it, and the reload task swaps it.
#[derive(Clone)]
pub struct Acceptor {
    current: Arc<RwLock<TlsAcceptor>>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Acceptor")
    }
}

impl Acceptor {
    fn get(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// The contents of the certificate, key and client CA files.
#[derive(PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read(settings: &TlsSettings) -> Result<Files, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| tls_error(path, e));
    Ok(Files {
        cert: read(&settings.cert)?,
        key: read(&settings.key)?,
        client_ca: settings.client_ca.as_deref().map(read).transpose()?,
    })
}

fn server_config(
    settings: &TlsSettings,
    files: &Files,
    client_optional: bool,
) -> Result<ServerConfig, TlsError> {
    let cert = &settings.cert;
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(cert, e))?;
    if chain.is_empty() {
        return Err(tls_error(cert, "no PEM certificate in the file"));
    }
    // Never quote the key's parse error: it may echo key material.
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|_| tls_error(&settings.key, "no usable PEM private key in the file"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(cert, e))?;
    let builder = match (&settings.client_ca, &files.client_ca) {
        (Some(ca), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(der.map_err(|e| tls_error(ca, e))?)
                    .map_err(|e| tls_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            // With JWTs accepted too, a caller may come without a certificate.
            let verifier = if client_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| tls_error(ca, e))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(&settings.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Builds the acceptor and starts the reload task, which re-reads the certificate, key and
/// client CA every [`RELOAD_INTERVAL`] and ends when the acceptor is dropped.
pub fn acceptor(settings: &TlsSettings, client_optional: bool) -> Result<Acceptor, TlsError> {
    let mut seen = read(settings)?;
    let config = server_config(settings, &seen, client_optional)?;
    let acceptor = Acceptor {
        current: Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config)))),
    };
    let weak = Arc::downgrade(&acceptor.current);
    let settings = settings.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(current) = weak.upgrade() else {
                return;
            };
            let fresh = read(&settings).and_then(|files| {
                if files == seen {
                    return Ok(None);
                }
                let config = server_config(&settings, &files, client_optional)?;
                Ok(Some((config, files)))
            });
            match fresh {
                Ok(None) => {}
                Ok(Some((config, files))) => {
                    *current.write().unwrap_or_else(|e| e.into_inner()) =
                        TlsAcceptor::from(Arc::new(config));
                    seen = files;
                    tracing::info!(cert = %settings.cert.display(), "TLS configuration reloaded");
                }
                // Mid-rotation the files may disagree for a moment: keep serving the old ones.
                Err(err) => tracing::warn!(error = %err, "TLS configuration not reloaded"),
            }
        }
    });
    Ok(acceptor)
}

/// The TLS handshake of an accepted connection, with the certificate current at accept; the
/// caller bounds it (`inbound::connections`: the connection's handshake deadline).
pub fn handshake(
    acceptor: &Acceptor,
) -> impl Fn(TcpStream) -> tokio_rustls::Accept<TcpStream> + Send + 'static {
    let acceptor = acceptor.clone();
    move |tcp| acceptor.get().accept(tcp)
}
