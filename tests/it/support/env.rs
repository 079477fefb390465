//! One test environment, started with one call: a test CA, the mock provider upstream whose
//! certificate it signs, and the proxy in front, trusting that CA, with one agent token.
//!
//! `Env::openai()` (api.openai.com intercepted to the mock) covers most tests; the others say
//! only what differs, through [`Setup`]: `Env::with(|o| o.openai().deny_non_providers())`.
//! A test with its own upstream (scripted, raw, behind a relay) builds it on [`Setup::ca`]
//! first: `let o = Env::setup(); let up = RawUpstream::start(o.ca(), ..).await;` then
//! `o.openai_at(up.base_url()).start().await`; one that writes rows naming the mock, or puts a
//! relay in front of it, starts the mock first ([`Setup::upstream_first`]). A second proxy on
//! the same upstream is [`Env::another`]. An `Env` derefs to its [`TestProxy`], so
//! `env.client(Http::Two)`, `env.admin_get(..)`, `env.token` read as the proxy's.

use super::proxy::{ProviderSpec, TestProxy, TestProxyOptions};
use super::tls::TestCa;
use super::upstream::MockUpstream;
use aibridge_proxy::config::{AppConfig, NonProviderHosts};
use std::net::IpAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

/// A running test environment; see the module documentation.
pub struct Env {
    /// Signs the upstreams' certificates; the proxy trusts it (`--upstream-ca-file`).
    pub ca: Arc<TestCa>,
    /// The mock provider upstream (h2 and HTTP/1.1 unless [`Setup::http1_upstream`]).
    pub upstream: MockUpstream,
    pub proxy: TestProxy,
}

impl Deref for Env {
    type Target = TestProxy;

    fn deref(&self) -> &TestProxy {
        &self.proxy
    }
}

impl Env {
    /// A setup to change before [`Setup::start`]: no provider, tunnels refused to private
    /// addresses, a SQLite database of its own.
    pub fn setup() -> Setup {
        Setup::new(Arc::new(TestCa::new()))
    }

    /// The environment `change` describes.
    pub async fn with(change: impl FnOnce(Setup) -> Setup) -> Env {
        change(Env::setup()).start().await
    }

    /// No provider: every host is a non-provider host (tunnelled, or refused).
    pub async fn bare() -> Env {
        Env::setup().start().await
    }

    /// api.openai.com intercepted and sent to the mock upstream with the provider's key.
    pub async fn openai() -> Env {
        Env::with(Setup::openai).await
    }

    /// api.anthropic.com intercepted and sent to the mock upstream with the provider's key.
    pub async fn anthropic() -> Env {
        Env::with(Setup::anthropic).await
    }

    /// Both providers, on the one mock upstream.
    pub async fn openai_and_anthropic() -> Env {
        Env::with(|o| o.openai().anthropic()).await
    }

    /// Stop the proxy as `serve` would, with five seconds of grace.
    pub async fn stop(self) {
        self.proxy.app.stop(std::time::Duration::from_secs(5)).await;
    }

    /// A second proxy in front of the same upstream, trusting the same CA (replicas, or two
    /// configurations side by side).
    pub async fn another(&self, change: impl FnOnce(Setup) -> Setup) -> TestProxy {
        change(Setup::new(self.ca.clone()))
            .launch(&self.upstream)
            .await
    }
}

/// Provider to create, given the mock upstream (for its base URL).
type ProviderOf = Box<dyn FnOnce(&MockUpstream) -> ProviderSpec + Send>;

/// What an [`Env`] is made of; every method says one thing that differs from the default.
pub struct Setup {
    ca: Arc<TestCa>,
    alpn: &'static [&'static [u8]],
    providers: Vec<ProviderOf>,
    /// Upstream CA certificates trusted besides [`Setup::ca`].
    trust: Vec<String>,
    /// Tunnels to the mock upstream's own port allowed.
    tunnel_upstream: bool,
    /// The mock upstream, when started before the proxy ([`Setup::upstream_first`]).
    early: Option<MockUpstream>,
    opts: TestProxyOptions,
}

impl Setup {
    fn new(ca: Arc<TestCa>) -> Setup {
        Setup {
            ca,
            alpn: &[b"h2", b"http/1.1"],
            providers: Vec::new(),
            trust: Vec::new(),
            tunnel_upstream: false,
            early: None,
            opts: TestProxyOptions::default(),
        }
    }

    /// The CA the proxy will trust, to sign a test's own upstreams with before the start.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Start the mock upstream now, before the proxy: for a test that writes rows naming it, or
    /// puts a relay in front of it, before the proxy starts.
    pub async fn upstream_first(mut self) -> Setup {
        self.early = Some(MockUpstream::start(self.ca.server_config(self.alpn)).await);
        self
    }

    /// The mock upstream started by [`Setup::upstream_first`].
    pub fn upstream(&self) -> &MockUpstream {
        self.early.as_ref().expect("Setup::upstream_first")
    }

    /// Start the mock upstream (unless already started), then the proxy.
    pub async fn start(mut self) -> Env {
        let upstream = match self.early.take() {
            Some(upstream) => upstream,
            None => MockUpstream::start(self.ca.server_config(self.alpn)).await,
        };
        let ca = self.ca.clone();
        let proxy = self.launch(&upstream).await;
        Env {
            ca,
            upstream,
            proxy,
        }
    }

    async fn launch(mut self, upstream: &MockUpstream) -> TestProxy {
        self.opts.providers = self.providers.into_iter().map(|p| p(upstream)).collect();
        let trusted: String = std::iter::once(self.ca.cert_pem.clone())
            .chain(self.trust)
            .collect();
        self.opts.upstream_ca_pem = Some(trusted);
        if self.tunnel_upstream {
            self.opts.extra_ports.push(upstream.addr.port());
        }
        TestProxy::start(self.opts).await
    }

    /// A provider built from the mock upstream (`|u| ProviderSpec::openai(u.base_url())`).
    pub fn provider(
        mut self,
        spec: impl FnOnce(&MockUpstream) -> ProviderSpec + Send + 'static,
    ) -> Setup {
        self.providers.push(Box::new(spec));
        self
    }

    /// api.openai.com to the mock upstream.
    pub fn openai(self) -> Setup {
        self.provider(|u| ProviderSpec::openai(u.base_url()))
    }

    /// api.openai.com, on 443 and on 80: absolute-form `http://api.openai.com/...` reaches the
    /// bridge too.
    pub fn openai_also_on_80(self) -> Setup {
        self.provider(|u| {
            let mut openai = ProviderSpec::openai(u.base_url());
            openai.intercept_hosts.push("api.openai.com:80".into());
            openai
        })
    }

    /// api.anthropic.com to the mock upstream.
    pub fn anthropic(self) -> Setup {
        self.provider(|u| ProviderSpec::anthropic(u.base_url()))
    }

    /// api.openai.com to another upstream (scripted, behind a relay, or nothing listening).
    pub fn openai_at(self, base_url: impl Into<String>) -> Setup {
        let base_url = base_url.into();
        self.provider(move |_| ProviderSpec::openai(base_url))
    }

    /// An openai-kind provider `name` intercepting `host` alone, sent to the mock upstream.
    pub fn named(self, name: &'static str, host: &'static str) -> Setup {
        self.provider(move |u| ProviderSpec::named(name, host, u.base_url()))
    }

    /// [`Setup::named`], sent to `base_url` instead.
    pub fn named_at(self, name: &'static str, host: &'static str, base_url: String) -> Setup {
        self.provider(move |_| ProviderSpec::named(name, host, base_url))
    }

    /// The mock upstream offers HTTP/1.1 only (one upstream connection per request in flight,
    /// and the `Host` it receives is visible).
    pub fn http1_upstream(mut self) -> Setup {
        self.alpn = &[b"http/1.1"];
        self
    }

    /// Also trust upstream certificates signed by this CA certificate.
    pub fn trust(mut self, ca_pem: String) -> Setup {
        self.trust.push(ca_pem);
        self
    }

    /// `--non-provider-hosts deny`: a host no provider claims is refused at once (no DNS).
    pub fn deny_non_providers(mut self) -> Setup {
        self.opts.non_provider_hosts = NonProviderHosts::Deny;
        self
    }

    /// Seed and run on this database instead of a SQLite file of its own.
    pub fn database(mut self, url: &str) -> Setup {
        self.opts.database_url = Some(url.to_string());
        self
    }

    /// Run on `url` after seeding through [`Setup::database`] (the same database behind a
    /// fault relay, or one that cannot be reached).
    pub fn serve_database(mut self, url: &str) -> Setup {
        self.opts.serve_database_url = Some(url.to_string());
        self
    }

    /// `--allow-private-cidrs`, one range more.
    pub fn allow_private(mut self, cidr: &'static str) -> Setup {
        self.opts.allow_private_cidrs.push(cidr);
        self
    }

    /// `--connect-ports`, one port more than 443.
    pub fn port(mut self, port: u16) -> Setup {
        self.opts.extra_ports.push(port);
        self
    }

    /// Tunnels to `127.0.0.1:port` allowed (an echo server, a plain destination).
    pub fn tunnels_to(self, port: u16) -> Setup {
        self.allow_private("127.0.0.0/8").port(port)
    }

    /// Tunnels to the mock upstream's port allowed (with loopback in `--allow-private-cidrs`):
    /// a client reaches it through the proxy without interception.
    pub fn tunnels_to_upstream(mut self) -> Setup {
        self.tunnel_upstream = true;
        self
    }

    /// `--allow-private-upstreams` exactly these ranges (the harness default is loopback).
    pub fn allow_private_upstreams(mut self, cidrs: &[&'static str]) -> Setup {
        self.opts.allow_private_upstreams = cidrs.to_vec();
        self
    }

    /// The proxy resolves `name` to `ip` (a hosts-file entry in front of the system resolver).
    pub fn resolve(mut self, name: impl Into<String>, ip: IpAddr) -> Setup {
        self.opts.hosts.push((name.into(), ip));
        self
    }

    /// `--max-request-body`.
    pub fn max_request_body(mut self, bytes: usize) -> Setup {
        self.opts.max_request_body = Some(bytes);
        self
    }

    /// The operator's CA (cert PEM, key PEM) instead of a generated one.
    pub fn ca_files(mut self, cert: String, key: String) -> Setup {
        self.opts.ca_files = Some((cert, key));
        self
    }

    /// `--secrets-key-file` (the seeded providers' keys are sealed under it too).
    pub fn secrets_key(mut self, path: PathBuf) -> Setup {
        self.opts.secrets_key_file = Some(path);
        self
    }

    /// `--previous-secrets-key-file`.
    pub fn previous_secrets_key(mut self, path: PathBuf) -> Setup {
        self.opts.previous_secrets_key_file = Some(path);
        self
    }

    /// Requests for `path` panic inside their connection task (fault injection, no flag).
    pub fn panic_on_path(mut self, path: &str) -> Setup {
        self.opts.panic_on_path = Some(path.to_string());
        self
    }

    /// Router reloads panic while `flag` is set (fault injection, no flag).
    pub fn reload_panic(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Setup {
        self.opts.reload_panic = Some(flag);
        self
    }

    /// The accept loop panics at its next connection once `flag` is set (fault injection).
    pub fn accept_panic(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Setup {
        self.opts.accept_panic = Some(flag);
        self
    }

    /// A last change to the configuration (timeouts, limits); tweaks apply in order.
    pub fn tweak(mut self, tweak: impl FnOnce(&mut AppConfig) + Send + 'static) -> Setup {
        let before = self.opts.tweak.take();
        self.opts.tweak = Some(Box::new(move |c: &mut AppConfig| {
            if let Some(before) = before {
                before(c);
            }
            tweak(c);
        }));
        self
    }
}
