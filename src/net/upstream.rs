//! The upstream HTTP client: pooled, TLS-verified, HTTP/2 where the provider offers it.
//!
//! Verification is always on: the webpki roots plus any `--upstream-ca-file` roots. Redirects
//! are never followed (hyper's client does not), so a provider cannot bounce a request that
//! carries its key to another host: a `3xx` goes back to the client as it came. Connections are
//! opened only through the egress [`Dialer`](crate::net::egress::Dialer), under the upstream
//! policy (public addresses plus `--allow-private-upstreams`), checked on the exact address
//! dialled every time a connection is opened.

use crate::net::egress::Dialer;
use crate::BoxError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The body type on both sides of the proxy: streamed, never collected.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A pooled client for one provider's upstream.
pub type UpstreamClient = Client<HttpsConnector<Dialer>, ProxyBody>;

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the upstream TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("{path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds upstream clients that share one TLS configuration and one dialer.
#[derive(Clone)]
pub struct UpstreamFactory {
    tls: Arc<ClientConfig>,
    dialer: Dialer,
    http2: bool,
}

impl UpstreamFactory {
    /// Trust the webpki roots plus every certificate in `extra_ca_file`.
    pub fn new(
        crypto: Arc<CryptoProvider>,
        extra_ca_file: Option<&Path>,
        dialer: Dialer,
    ) -> Result<Self, UpstreamTlsError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca_file {
            let ca_error = |reason: String| UpstreamTlsError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no PEM certificate found".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
        }
        let tls = ClientConfig::builder_with_provider(crypto)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(UpstreamFactory {
            tls: Arc::new(tls),
            dialer,
            http2: false,
        })
    }

    /// Whether [`UpstreamFactory::client`] offers HTTP/2 (`--upstream-http2`).
    pub fn with_http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    /// The egress policy every upstream connection is dialled under.
    pub fn policy(&self) -> &crate::net::egress::EgressPolicy {
        self.dialer.policy()
    }

    /// A client speaking HTTP/1.1 only (ALPN `http/1.1`): the one a WebSocket upgrade needs,
    /// since an h2 connection cannot carry the RFC 6455 handshake.
    pub fn client_http1(&self) -> UpstreamClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(self.dialer.clone());
        pooled(connector)
    }

    /// A fresh client with its own connection pool: HTTP/1.1, or HTTP/2 when offered if
    /// [`UpstreamFactory::with_http2`] turned it on.
    pub fn client(&self) -> UpstreamClient {
        if !self.http2 {
            return self.client_http1();
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(self.dialer.clone());
        pooled(connector)
    }
}

/// A client with its own pool on `connector`: idle connections dropped after
/// [`POOL_IDLE_TIMEOUT`].
fn pooled(connector: HttpsConnector<Dialer>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}
