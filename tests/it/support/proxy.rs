//! The proxy, started in-process with its own temp dir (SQLite file, generated CA).
//!
//! This file is where the harness touches the library's wiring: the one `App::start`, the one
//! `AppConfig`, the resolver seam, the egress policy, the CA key writer and the token digest.
//! Tests reach them through [`super::Env`] and the helpers here, never by path, so a move of
//! those library modules changes this file alone.

use aibridge_proxy::app::{App, Seams};
use aibridge_proxy::config::{AppConfig, NonProviderHosts};
use aibridge_proxy::net::egress::{Dialer, EgressPolicy, Resolver, StaticResolver};
use aibridge_proxy::net::upstream::UpstreamFactory;
use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::router::Snapshot;
use aibridge_proxy::secret::token::digest as hash_token;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{AgentToken, Keyring, NewProvider, RoutingData, Store};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::net::TcpListener;

/// An upstream policy allowing these private ranges (as `--allow-private-upstreams` does).
pub fn upstream_policy(cidrs: &[&str]) -> EgressPolicy {
    EgressPolicy::public_only(cidrs.iter().map(|c| c.parse().unwrap()).collect())
}

/// The upstream policy tests write loopback mock upstreams under: the product default refuses
/// them, so every test that does must say so.
pub fn loopback_upstreams() -> EgressPolicy {
    upstream_policy(&["127.0.0.0/8", "::1/128"])
}

/// Write a CA private key the way the product requires it on disk (mode 0600).
pub fn write_private_key(path: &Path, pem: &[u8]) {
    aibridge_proxy::secret::files::write_private(path, pem).unwrap();
}

/// A routing snapshot whose only agent token is `secret` (no providers), for tests that call
/// the authentication function directly.
pub fn snapshot_holding(secret: &str) -> Snapshot {
    let upstreams = UpstreamFactory::new(
        super::tls::provider(),
        None,
        Dialer::new(EgressPolicy::default(), std::time::Duration::from_secs(1)),
    )
    .unwrap();
    let data = RoutingData {
        providers: vec![],
        tokens: vec![AgentToken {
            id: uuid::Uuid::new_v4(),
            user: "u".into(),
            token_hash: hash_token(secret).to_vec(),
            created_at: time::OffsetDateTime::now_utc(),
            last_used_at: None,
            revoked_at: None,
            expires_at: None,
        }],
        models: vec![],
        counter: 1,
    };
    Snapshot::build(data, 1, &Snapshot::empty(), &upstreams)
}

/// A provider to create before the proxy starts.
#[derive(Clone)]
pub struct ProviderSpec {
    pub name: &'static str,
    pub kind: ProviderKind,
    pub base_url: String,
    pub intercept_hosts: Vec<String>,
    pub key: Option<&'static str>,
}

impl ProviderSpec {
    /// `api.openai.com` intercepted and sent to `base_url` with key `sk-provider-openai`.
    pub fn openai(base_url: String) -> Self {
        ProviderSpec {
            name: "openai",
            kind: ProviderKind::Openai,
            base_url,
            intercept_hosts: vec!["api.openai.com".into()],
            key: Some("sk-provider-openai-0123456789"),
        }
    }

    /// `api.anthropic.com` intercepted and sent to `base_url` with key `sk-ant-provider`.
    pub fn anthropic(base_url: String) -> Self {
        ProviderSpec {
            name: "anthropic",
            kind: ProviderKind::Anthropic,
            base_url,
            intercept_hosts: vec!["api.anthropic.com".into()],
            key: Some("sk-ant-provider-0123456789"),
        }
    }

    /// An openai-kind provider `name` intercepting `host` alone, sent to `base_url`.
    pub fn named(name: &'static str, host: &str, base_url: String) -> Self {
        ProviderSpec {
            name,
            intercept_hosts: vec![host.to_string()],
            key: Some("sk-provider-other-0123456789"),
            ..ProviderSpec::openai(base_url)
        }
    }

    fn row(&self) -> NewProvider {
        NewProvider {
            name: self.name.to_string(),
            kind: self.kind,
            base_url: self.base_url.clone(),
            intercept_hosts: self.intercept_hosts.clone(),
            enabled: true,
            enforce_models: false,
            passthrough: Default::default(),
            record_prompts: true,
            api_keys: self
                .key
                .map(|k| Secret::new(k.to_string()))
                .into_iter()
                .collect(),
        }
    }
}

/// A last change to the configuration before the proxy starts.
pub type Tweak = Box<dyn FnOnce(&mut AppConfig) + Send>;

/// Everything [`TestProxy::start`] can vary; tests set it through [`super::Setup`].
pub struct TestProxyOptions {
    pub providers: Vec<ProviderSpec>,
    /// PEM of the upstreams' CAs, written to a file and passed as `--upstream-ca-file`.
    pub upstream_ca_pem: Option<String>,
    pub allow_private_cidrs: Vec<&'static str>,
    /// `--allow-private-upstreams`. The product default is none; the harness passes loopback
    /// explicitly because the mock upstreams live there (`egress` sets it empty to prove the
    /// default refuses). Also the policy the seeded providers are written under.
    pub allow_private_upstreams: Vec<&'static str>,
    /// Names the proxy resolves to fixed addresses (a hosts file in front of the system
    /// resolver), for tunnels and upstreams alike.
    pub hosts: Vec<(String, IpAddr)>,
    pub non_provider_hosts: NonProviderHosts,
    pub extra_ports: Vec<u16>,
    /// A CA (cert PEM, key PEM) to use instead of generating one.
    pub ca_files: Option<(String, String)>,
    /// The database seeded before start (default: a SQLite file in the proxy's temp dir).
    pub database_url: Option<String>,
    /// The database the proxy runs on, when not the seeded one's URL (the same database behind
    /// a fault relay, or another database altogether).
    pub serve_database_url: Option<String>,
    /// `--max-request-body` (default: the product default).
    pub max_request_body: Option<usize>,
    /// `--secrets-key-file` (also seals the seeded providers' keys).
    pub secrets_key_file: Option<PathBuf>,
    /// `--previous-secrets-key-file`.
    pub previous_secrets_key_file: Option<PathBuf>,
    /// Requests for this path panic inside their connection task (a test seam).
    pub panic_on_path: Option<String>,
    /// While set, router reloads panic / the accept loop panics (test seams).
    pub reload_panic: Option<Arc<AtomicBool>>,
    pub accept_panic: Option<Arc<AtomicBool>>,
    /// Last word on the configuration (timeouts, limits).
    pub tweak: Option<Tweak>,
}

impl Default for TestProxyOptions {
    fn default() -> Self {
        TestProxyOptions {
            providers: Vec::new(),
            upstream_ca_pem: None,
            allow_private_cidrs: Vec::new(),
            allow_private_upstreams: vec!["127.0.0.0/8", "::1/128"],
            hosts: Vec::new(),
            non_provider_hosts: NonProviderHosts::Tunnel,
            extra_ports: Vec::new(),
            ca_files: None,
            database_url: None,
            serve_database_url: None,
            max_request_body: None,
            secrets_key_file: None,
            previous_secrets_key_file: None,
            panic_on_path: None,
            reload_panic: None,
            accept_panic: None,
            tweak: None,
        }
    }
}

pub struct TestProxy {
    pub app: App,
    pub addr: SocketAddr,
    /// An active agent token.
    pub token: String,
    pub token_id: uuid::Uuid,
    /// The proxy CA's certificate, for clients to trust.
    pub ca_pem: String,
    /// The admin API bearer token.
    pub admin_token: String,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    pub async fn start(mut opts: TestProxyOptions) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let db_url = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("aibridge.db").display()));
        let (token_id, token) = seed(&db_url, &opts).await;
        if let Some((cert, key)) = &opts.ca_files {
            std::fs::write(dir.path().join("ca.pem"), cert).unwrap();
            write_private_key(&dir.path().join("ca-key.pem"), key.as_bytes());
        }
        let serve_url = opts.serve_database_url.clone().unwrap_or(db_url);
        let mut config = configure(&opts, serve_url, dir.path());
        if let Some(tweak) = opts.tweak.take() {
            tweak(&mut config);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::start(config, listener, Some(admin), seams(&opts))
            .await
            .unwrap();
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let admin_token = std::fs::read_to_string(dir.path().join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        TestProxy {
            addr: app.proxy_addr,
            app,
            token,
            token_id,
            ca_pem,
            admin_token,
            dir,
        }
    }
}

/// Create the providers and one agent token (`alice`) in the database before start.
async fn seed(db_url: &str, opts: &TestProxyOptions) -> (uuid::Uuid, String) {
    let keyring = Keyring::load(
        opts.secrets_key_file.as_deref(),
        opts.previous_secrets_key_file.as_deref(),
    )
    .unwrap();
    let store = Store::connect(db_url)
        .await
        .unwrap()
        .with_keyring(keyring)
        .with_upstream_policy(upstream_policy(&opts.allow_private_upstreams));
    for p in &opts.providers {
        store.create_provider(p.row()).await.unwrap();
    }
    let (row, token) = store.create_token("alice").await.unwrap();
    store.close().await;
    (row.id, token.expose().clone())
}

/// What no flag sets: the names resolved to fixed addresses, and the fault-injection path.
fn seams(opts: &TestProxyOptions) -> Seams {
    let mut seams = Seams {
        panic_on_path: opts.panic_on_path.clone(),
        reload_panic: opts.reload_panic.clone(),
        accept_panic: opts.accept_panic.clone(),
        ..Seams::default()
    };
    if !opts.hosts.is_empty() {
        let hosts = opts
            .hosts
            .iter()
            .fold(StaticResolver::new(), |r, (name, ip)| r.with(name, [*ip]));
        seams.resolver = Resolver::new(hosts);
    }
    seams
}

/// The configuration `serve` would build from the flags the options stand for.
fn configure(opts: &TestProxyOptions, database_url: String, dir: &Path) -> AppConfig {
    let mut config = AppConfig::new(database_url, dir.join("ca.pem"), dir.join("ca-key.pem"));
    if let Some(pem) = &opts.upstream_ca_pem {
        let path = dir.join("upstream-ca.pem");
        std::fs::write(&path, pem).unwrap();
        config.upstream_ca_file = Some(path);
    }
    config.proxy.allow_private_cidrs = opts
        .allow_private_cidrs
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    config.allow_private_upstreams = opts
        .allow_private_upstreams
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    config.proxy.non_provider_hosts = opts.non_provider_hosts;
    config.proxy.connect_ports.extend(&opts.extra_ports);
    config.admin_token_file = dir.join("admin-token");
    config.secrets_key_file = opts.secrets_key_file.clone();
    config.previous_secrets_key_file = opts.previous_secrets_key_file.clone();
    if let Some(limit) = opts.max_request_body {
        config.proxy.max_request_body = limit;
    }
    config
}
