//! hudsucker as a peer in the load harness: `aibridge-bench-hudsucker UPSTREAM_BASE DIR`.
//!
//! DIR holds `upstream-ca.pem` (the bench upstream's CA, trusted for the upstream leg); the peer
//! writes its own CA to `ca.pem`, then its listening address to `addr`. Every CONNECT is
//! intercepted (hudsucker's default), every request passes through unchanged except that its URI
//! points at the bench upstream, as the harness's minimal relay does.

use hudsucker::certificate_authority::RcgenAuthority;
use hudsucker::hyper::{Request, Uri};
use hudsucker::rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use hudsucker::rustls::crypto::aws_lc_rs;
use hudsucker::rustls::{ClientConfig, RootCertStore};
use hudsucker::{Body, HttpContext, HttpHandler, Proxy, RequestOrResponse};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::Arc;

/// Pass-through: only the target changes (scheme and authority of the bench upstream).
#[derive(Clone)]
struct ToUpstream(Arc<Uri>);

impl HttpHandler for ToUpstream {
    async fn handle_request(
        &mut self,
        _ctx: &HttpContext,
        req: Request<Body>,
    ) -> RequestOrResponse {
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let base = self.0.as_ref();
        parts.uri = Uri::builder()
            .scheme(base.scheme_str().unwrap_or("https"))
            .authority(base.authority().map_or("127.0.0.1", |a| a.as_str()))
            .path_and_query(pq)
            .build()
            .expect("upstream URI");
        parts.headers.remove(hudsucker::hyper::header::HOST);
        Request::from_parts(parts, body).into()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base: Uri = args[1].parse().expect("upstream base");
    let dir = PathBuf::from(&args[2]);

    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "bench hudsucker CA");
    let cert = params.self_signed(&key).expect("CA cert");
    let ca_pem = cert.pem();
    let issuer = Issuer::new(params, key);
    let ca = RcgenAuthority::new(issuer, 1_000, aws_lc_rs::default_provider());

    let upstream_ca = std::fs::read(dir.join("upstream-ca.pem")).expect("upstream CA");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&upstream_ca) {
        roots.add(c.expect("upstream CA PEM")).expect("upstream CA");
    }
    let tls = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    let proxy = Proxy::builder()
        .with_listener(listener)
        .with_ca(ca)
        .with_http_connector(https)
        .with_http_handler(ToUpstream(Arc::new(base)))
        .build()
        .expect("proxy");
    std::fs::write(dir.join("ca.pem"), ca_pem).expect("write ca.pem");
    std::fs::write(dir.join("addr"), addr.to_string()).expect("write addr");
    if let Err(e) = proxy.start().await {
        eprintln!("hudsucker: {e}");
    }
}
