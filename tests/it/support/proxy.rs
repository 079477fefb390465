//! The proxy, started in-process with its own temp dir (SQLite file, generated CA).

use aibridge_proxy::app::{App, Seams};
use aibridge_proxy::config::{AppConfig, NonProviderHosts};
use aibridge_proxy::net::egress::{EgressPolicy, Resolver, StaticResolver};
use aibridge_proxy::provider::ProviderKind;
use aibridge_proxy::secret::Secret;
use aibridge_proxy::store::{Keyring, NewProvider, Store};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use tokio::net::TcpListener;

/// The upstream policy tests write loopback mock upstreams under: the product default refuses
/// them, so every test that does must say so.
pub fn loopback_upstreams() -> EgressPolicy {
    EgressPolicy::public_only(vec![
        "127.0.0.0/8".parse().unwrap(),
        "::1/128".parse().unwrap(),
    ])
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
}

/// A last change to the configuration before the proxy starts.
pub type Tweak = Box<dyn FnOnce(&mut AppConfig) + Send>;

pub struct TestProxyOptions {
    pub providers: Vec<ProviderSpec>,
    /// PEM of the upstream's CA, written to a file and passed as `--upstream-ca-file`.
    pub upstream_ca_pem: Option<String>,
    pub allow_private_cidrs: Vec<&'static str>,
    /// `--allow-private-upstreams`. The product default is none; the harness passes loopback
    /// explicitly because the mock upstreams live there (`egress.rs` sets it empty to prove the
    /// default refuses). Also the policy the seeded providers are written under.
    pub allow_private_upstreams: Vec<&'static str>,
    /// Names the proxy resolves to fixed addresses (a hosts file in front of the system
    /// resolver), for tunnels and upstreams alike.
    pub hosts: Vec<(String, IpAddr)>,
    pub non_provider_hosts: NonProviderHosts,
    pub extra_ports: Vec<u16>,
    /// A CA (cert PEM, key PEM) to use instead of generating one.
    pub ca_files: Option<(String, String)>,
    /// The database (default: a SQLite file in the proxy's temp dir).
    pub database_url: Option<String>,
    /// Create an agent token before starting (default true).
    pub seed_token: bool,
    /// `--max-request-body` (default: the product default).
    pub max_request_body: Option<usize>,
    /// `--secrets-key-file` (also seals the seeded providers' keys).
    pub secrets_key_file: Option<PathBuf>,
    /// `--previous-secrets-key-file`.
    pub previous_secrets_key_file: Option<PathBuf>,
    /// Last word on the configuration (timeouts, limits).
    pub tweak: Option<Tweak>,
    /// Fault injection: decrypted requests for this path panic their connection task (F24).
    pub panic_on_path: Option<String>,
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
            seed_token: true,
            max_request_body: None,
            secrets_key_file: None,
            previous_secrets_key_file: None,
            tweak: None,
            panic_on_path: None,
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
    pub async fn start(opts: TestProxyOptions) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let db_url = opts
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("aibridge.db").display()));
        let keyring = Keyring::load(
            opts.secrets_key_file.as_deref(),
            opts.previous_secrets_key_file.as_deref(),
        )
        .unwrap();
        let allow_private_upstreams: Vec<ipnet::IpNet> = opts
            .allow_private_upstreams
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let store = Store::connect(&db_url)
            .await
            .unwrap()
            .with_keyring(keyring)
            .with_upstream_policy(EgressPolicy::public_only(allow_private_upstreams.clone()));
        for p in &opts.providers {
            store
                .create_provider(NewProvider {
                    name: p.name.to_string(),
                    kind: p.kind,
                    base_url: p.base_url.clone(),
                    intercept_hosts: p.intercept_hosts.clone(),
                    enabled: true,
                    enforce_models: false,
                    api_keys: p
                        .key
                        .map(|k| Secret::new(k.to_string()))
                        .into_iter()
                        .collect(),
                })
                .await
                .unwrap();
        }
        let (token_id, token) = if opts.seed_token {
            let (row, token) = store.create_token("alice").await.unwrap();
            (row.id, token.expose().clone())
        } else {
            (uuid::Uuid::nil(), String::new())
        };
        store.close().await;

        if let Some((cert, key)) = &opts.ca_files {
            std::fs::write(dir.path().join("ca.pem"), cert).unwrap();
            aibridge_proxy::secret::files::write_private(
                &dir.path().join("ca-key.pem"),
                key.as_bytes(),
            )
            .unwrap();
        }
        let mut config = AppConfig::new(
            db_url,
            dir.path().join("ca.pem"),
            dir.path().join("ca-key.pem"),
        );
        if let Some(pem) = &opts.upstream_ca_pem {
            let path = dir.path().join("upstream-ca.pem");
            std::fs::write(&path, pem).unwrap();
            config.upstream_ca_file = Some(path);
        }
        config.proxy.allow_private_cidrs = opts
            .allow_private_cidrs
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        config.allow_private_upstreams = allow_private_upstreams;
        let mut seams = Seams {
            panic_on_path: opts.panic_on_path.clone(),
            ..Seams::default()
        };
        if !opts.hosts.is_empty() {
            let hosts = opts
                .hosts
                .iter()
                .fold(StaticResolver::new(), |r, (name, ip)| r.with(name, [*ip]));
            seams.resolver = Resolver::new(hosts);
        }
        config.proxy.non_provider_hosts = opts.non_provider_hosts;
        config.proxy.connect_ports.extend(&opts.extra_ports);
        config.admin_token_file = dir.path().join("admin-token");
        config.secrets_key_file = opts.secrets_key_file.clone();
        config.previous_secrets_key_file = opts.previous_secrets_key_file.clone();
        if let Some(limit) = opts.max_request_body {
            config.proxy.max_request_body = limit;
        }
        if let Some(tweak) = opts.tweak {
            tweak(&mut config);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::start(config, listener, Some(admin), seams)
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

    /// The router generation now; with [`TestProxy::wait_for_generation`] to see a change land.
    pub fn generation(&self) -> u64 {
        self.app.router.load().generation
    }

    pub async fn wait_for_generation(&self, above: u64) {
        let router = self.app.router.clone();
        super::eventually("router reload", move || router.load().generation > above).await;
    }

    /// Call the admin API: `(status, JSON body or Null)`.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("http://{}{path}", self.app.admin_addr.unwrap());
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(super::tls::client_config(&[], &[]))
            .build()
            .unwrap();
        let mut req = client
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.admin_token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn mints(&self) -> u64 {
        self.app
            .leaves
            .stats()
            .mints
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}
