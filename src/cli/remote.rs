//! Remote mode: the commands talk to a running proxy's admin API instead of the database.
//!
//! `--admin URL` (or `AIBRIDGE_ADMIN_URL`) selects it; the bearer token is read from
//! `--admin-token-file` (or `AIBRIDGE_ADMIN_TOKEN_FILE`, default `certs/admin-token`, the file
//! `serve` writes), never from argv. An `https` URL is verified against the public (webpki)
//! roots, or — with `--admin-ca-file` — against that file's certificates only (a private CA in
//! front of the admin API). A plain `http` URL to anything but loopback draws a warning: the
//! token would cross the network in clear.
//!
//! The client is hyper-util's pooled client with hyper-rustls (already linked for upstreams);
//! every request is bounded by [`REQUEST_TIMEOUT`] and every answer by [`MAX_RESPONSE`]. API
//! errors (`{"error", "detail"}`) become [`CliError`]s with the local mode's exit codes.

use super::exit::CliError;
use crate::secret::Secret;
use bytes::Bytes;
use clap::Args;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;

/// The longest one admin request may take, answer included (a write waits up to 3 s for the
/// proxy's router).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP connect to the admin API.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (100 000 tokens listed are about 20 MB).
pub const MAX_RESPONSE: usize = 256 * 1024 * 1024;

/// Where the admin API is and how to trust it; without `--admin` commands open the database.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Talk to a running proxy's admin API at this URL (http://HOST:PORT or https://...)
    /// instead of opening the database.
    #[arg(
        long = "admin",
        value_name = "URL",
        env = "AIBRIDGE_ADMIN_URL",
        conflicts_with = "database_url"
    )]
    pub admin_url: Option<String>,
    /// The admin API bearer token file (with --admin).
    #[arg(
        long,
        env = "AIBRIDGE_ADMIN_TOKEN_FILE",
        default_value = crate::config::DEFAULT_ADMIN_TOKEN_FILE
    )]
    pub admin_token_file: PathBuf,
    /// PEM certificates an https admin URL must chain to, instead of the public roots.
    #[arg(long, env = "AIBRIDGE_ADMIN_CA_FILE")]
    pub admin_ca_file: Option<PathBuf>,
}

/// A client for one admin API.
pub struct AdminClient {
    /// Scheme and authority, and a path prefix without a trailing slash.
    base: String,
    token: Secret<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// An answer: its status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl AdminClient {
    /// The client `args` describe; `url` is `args.admin_url`.
    pub fn new(args: &AdminArgs, url: &str) -> Result<AdminClient, CliError> {
        let base = parse_base(url)?;
        let token = std::fs::read_to_string(&args.admin_token_file).map_err(|e| {
            CliError::Invalid(format!(
                "--admin-token-file {}: {e}",
                args.admin_token_file.display()
            ))
        })?;
        let token = Secret::new(token.trim().to_string());
        if token.expose().is_empty() || !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CliError::Invalid(format!(
                "--admin-token-file {}: not an admin token",
                args.admin_token_file.display()
            )));
        }
        let roots = match &args.admin_ca_file {
            Some(path) => ca_roots(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let crypto = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(crypto)
            .with_safe_default_protocol_versions()
            .map_err(|e| CliError::Failed(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        if base.starts_with("http://") && !is_loopback(&base) {
            eprintln!(
                "warning: --admin {base} is plain HTTP: the admin token crosses the network in clear"
            );
        }
        Ok(AdminClient {
            base,
            token,
            client,
        })
    }

    /// `GET path`, decoded; `Ok(None)` for a 404.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, CliError> {
        let answer = self.call(Method::GET, path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(expect_ok(answer)?).map(Some)
    }

    /// `method path` with a JSON body, decoded.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, CliError> {
        let body =
            Secret::new(serde_json::to_vec(body).map_err(|e| CliError::Failed(e.to_string()))?);
        decode(expect_ok(self.call(method, path, Some(body)).await?)?)
    }

    /// `DELETE path`: `true` when deleted, `false` for a 404.
    pub async fn delete(&self, path: &str) -> Result<bool, CliError> {
        let answer = self.call(Method::DELETE, path, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        expect_ok(answer).map(|_| true)
    }

    /// One request under `/api/v1`; an answer whatever its status, or why none came.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Secret<Vec<u8>>>,
    ) -> Result<Answer, CliError> {
        self.call_path(method, &format!("/api/v1{path}"), body)
            .await
    }

    /// One request to `path` from the admin listener's root (`/readyz`, `/metrics`).
    pub async fn call_path(
        &self,
        method: Method,
        path: &str,
        body: Option<Secret<Vec<u8>>>,
    ) -> Result<Answer, CliError> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|_| CliError::Invalid(format!("cannot build a request URL for {path}")))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose()),
            )
            .header(header::ACCEPT, "application/json");
        let body = match body {
            Some(b) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::copy_from_slice(b.expose()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .map_err(|e| CliError::Failed(format!("building the request: {e}")))?;
        let unreachable =
            |why: String| CliError::Unavailable(format!("admin API {}: {why}", self.base));
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(causes(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))?
    }
}

/// `https://host:port/prefix` without a trailing slash; refuses what is not a plain base URL.
fn parse_base(url: &str) -> Result<String, CliError> {
    let bad = |why: &str| CliError::Invalid(format!("--admin {url:?}: {why}"));
    if url.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    let uri: Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must start with http:// or https://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("must have a host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not contain userinfo"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn is_loopback(base: &str) -> bool {
    let Ok(uri) = base.parse::<Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn ca_roots(path: &std::path::Path) -> Result<RootCertStore, CliError> {
    let bad = |why: String| CliError::Invalid(format!("--admin-ca-file {}: {why}", path.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    Ok(roots)
}

/// The error and its causes on one line (hyper-util's own text says only "client error").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A 2xx answer, or the API's error as a [`CliError`]: 400, 415 and 422 are input errors (64),
/// 409 a conflict (65), 404 "no such ..." (1), 401 a wrong admin token (1), 500 with the
/// database down and 502-504 unreachable (69).
fn expect_ok(answer: Answer) -> Result<Answer, CliError> {
    if answer.status.is_success() {
        return Ok(answer);
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        error: String,
        #[serde(default)]
        detail: String,
    }
    let (error, detail) = match serde_json::from_slice::<ApiError>(&answer.body) {
        Ok(e) => (e.error, e.detail),
        Err(_) => (
            answer
                .status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase(),
            String::new(),
        ),
    };
    let text = if detail.is_empty() { error } else { detail };
    let text = text.chars().take(500).collect::<String>();
    Err(match answer.status.as_u16() {
        400 | 413 | 415 | 422 => CliError::Invalid(text),
        409 => CliError::Conflict(text),
        404 => CliError::NotFound(text),
        401 => CliError::Failed(
            "the admin API refused the admin token (401): check --admin-token-file".into(),
        ),
        500 if text.contains("database") => CliError::Unavailable(format!("admin API: {text}")),
        502..=504 => CliError::Unavailable(format!("admin API ({}): {text}", answer.status)),
        _ => CliError::Failed(format!("admin API ({}): {text}", answer.status)),
    })
}

fn decode<T: DeserializeOwned>(answer: Answer) -> Result<T, CliError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        CliError::Failed(format!(
            "the admin API's answer is not what this version expects: {e}"
        ))
    })
}

/// One path segment, percent-encoded: a name given on the command line can never reach
/// another route (`../tokens`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        return out.replace('.', "%2E");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_escape_their_route() {
        assert_eq!(segment("openai"), "openai");
        assert_eq!(segment("../tokens"), "..%2Ftokens");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn base_urls_are_plain() {
        assert_eq!(
            parse_base("http://127.0.0.1:8889/").unwrap(),
            "http://127.0.0.1:8889"
        );
        assert!(parse_base("ftp://x").is_err());
        assert!(parse_base("http://u:p@x").is_err());
        assert!(parse_base("http://x/?a=b").is_err());
        assert!(parse_base("127.0.0.1:8889").is_err());
        assert!(is_loopback("http://[::1]:8889"));
        assert!(!is_loopback("http://admin.example"));
    }

    #[test]
    fn api_errors_keep_their_exit_codes() {
        let answer = |status: u16, body: &str| Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_string()),
        };
        let code = |a| expect_ok(a).err().map(|e| e.code());
        assert_eq!(
            code(answer(409, r#"{"error":"conflict","detail":"x"}"#)),
            Some(65)
        );
        assert_eq!(
            code(answer(422, r#"{"error":"invalid","detail":"x"}"#)),
            Some(64)
        );
        assert_eq!(
            code(answer(
                500,
                r#"{"error":"internal error","detail":"the database is unavailable"}"#
            )),
            Some(69)
        );
        assert_eq!(code(answer(404, "")), Some(1));
        assert_eq!(code(answer(200, "{}")), None);
    }
}
