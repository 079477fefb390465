//! Wiring: build every component from an [`AppConfig`], spawn the listeners, the change
//! subscription and the reloader, and hand back a handle. Tests and `serve` start the proxy the
//! same way.
//!
//! Start-up order keeps one promise: subscribe first, then load, so a change committed during
//! start-up is never missed. A database that is down at start leaves the router empty and
//! `/readyz` false while the admin API serves; the reloader keeps retrying. Tunnels serve too
//! under `--auth none`; with token auth no agent token is known before the first load, so
//! every proxy request answers `503` (`not_ready`, `Retry-After: 5`) until then.

use crate::admin::{self, AdminState};
use crate::ca::{CaError, CaPaths, CertificateAuthority, LeafCache};
use crate::config::AppConfig;
use crate::metrics::Metrics;
use crate::net::egress::{Dialer, EgressPolicy, Resolver};
use crate::net::upstream::{UpstreamFactory, UpstreamTlsError};
use crate::proxy::{self, ProxyState};
use crate::pubsub::Subscription;
use crate::router::reload::{ReloadStats, Reloader, Wake};
use crate::router::Router;
use crate::secret::files::FileError;
use crate::shutdown::Shutdown;
use crate::store::{Keyring, SecretsKeyError, Store, StoreError};
use crate::usage::recorder::Recorder;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// How long shutdown waits for interception records to be written.
const RECORDER_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("admin token: {0}")]
    AdminToken(#[from] FileError),
    #[error("secrets key: {0}")]
    Secrets(#[from] SecretsKeyError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[from] UpstreamTlsError),
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
}

/// What tests (and embedders) may swap that no operator should: not configuration, so not in
/// [`AppConfig`] and not behind a flag.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Seams {
    /// Resolves every name the proxy dials (tunnels, forwards, provider upstreams); the system
    /// resolver by default.
    pub resolver: Resolver,
    /// Panic while handling a decrypted request whose path is this (fault F24: one connection
    /// task dies, is counted, and the process keeps serving).
    pub panic_on_path: Option<String>,
    /// While set, every router reload panics: the reloader dies, is restarted with backoff
    /// (`task_restarts_total`) and `/readyz` answers 503 until a reload completes again.
    pub reload_panic: Option<Arc<AtomicBool>>,
    /// While set, the proxy's accept loop panics at its next connection: the process can no
    /// longer serve and `/healthz` answers 503.
    pub accept_panic: Option<Arc<AtomicBool>>,
}

/// A running proxy.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub router: Arc<Router>,
    pub leaves: Arc<LeafCache>,
    pub store: Store,
    pub shutdown: Shutdown,
    /// Whether this start generated the CA (first start).
    pub ca_generated: bool,
    /// Whether this start generated the admin token file.
    pub admin_token_generated: bool,
    pub reload_stats: Arc<ReloadStats>,
    pub metrics: Arc<Metrics>,
    /// Interception records (queue handle and counters).
    pub recorder: Recorder,
    recorder_task: tokio::task::JoinHandle<()>,
    /// The OTLP exporter, which flushes once the last recorder is gone.
    tracer_task: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Start serving on already-bound listeners (so tests can use port 0). Without an admin
    /// listener the admin API is not served. `serve` passes `Seams::default()`.
    pub async fn start(
        config: AppConfig,
        proxy_listener: TcpListener,
        admin_listener: Option<TcpListener>,
        seams: Seams,
    ) -> Result<App, AppError> {
        config.validate().map_err(AppError::Config)?;
        // Before anything is generated: a bad key file must not leave a fresh CA behind.
        let keyring = Keyring::load(
            config.secrets_key_file.as_deref(),
            config.previous_secrets_key_file.as_deref(),
        )?;
        let crypto = Arc::new(rustls::crypto::ring::default_provider());
        let paths = CaPaths {
            cert: config.ca_cert.clone(),
            key: config.ca_key.clone(),
        };
        let (ca, ca_generated) = CertificateAuthority::load_or_generate(&paths)?;
        let ca_not_after = ca.not_after();
        if ca_generated {
            tracing::info!(cert = %paths.cert.display(), key = %paths.key.display(), "generated a new CA; agents must trust the certificate (see certs/README.md)");
        }
        let ca_pem = ca.cert_pem().to_string();
        let metrics =
            Arc::new(Metrics::new().map_err(|e| AppError::Config(vec![format!("metrics: {e}")]))?);
        metrics
            .ca_expiry_timestamp_seconds
            .set(ca_not_after.unix_timestamp() as f64);
        metrics
            .max_connections
            .set(i64::try_from(config.proxy.max_connections).unwrap_or(i64::MAX));
        let leaves = Arc::new(
            LeafCache::new(
                Arc::new(ca),
                config.cert_cache_size,
                config.leaf_validity,
                crypto.clone(),
            )
            .with_mint_histogram(metrics.cert_mint_seconds.with_label_values::<&str>(&[])),
        );
        let (admin_token_hash, admin_token_generated) =
            admin::load_or_create_admin_token(&config.admin_token_file)?;

        // One upstream policy for base URLs written through the admin API and for every
        // upstream connection: public addresses plus --allow-private-upstreams.
        let upstream_policy = EgressPolicy::public_only(config.allow_private_upstreams.clone());
        let store = Store::open(&config.database_url)
            .await?
            .with_keyring(keyring)
            .with_upstream_policy(upstream_policy.clone());
        let upstream_dialer = Dialer::new(upstream_policy, config.proxy.connect_timeout)
            .with_resolver(seams.resolver.clone());
        let upstreams =
            UpstreamFactory::new(crypto, config.upstream_ca_file.as_deref(), upstream_dialer)?
                .with_http2(config.upstream_http2);
        let router = Arc::new(Router::new());
        let shutdown = Shutdown::new().count_panics(metrics.task_panics_total.clone());

        let subscription = Subscription::new(&store).await;
        let subscription_live = subscription.live();
        let wake = Arc::new(Wake::new());
        // Counters and health outlive any one reloader: a restarted one reports through them.
        let reload_stats = Arc::new(ReloadStats::default());
        let new_reloader = {
            let (store, router, upstreams) = (store.clone(), router.clone(), upstreams.clone());
            let (timeout, seam) = (config.reload_timeout, seams.reload_panic.clone());
            let stats = reload_stats.clone();
            move || {
                Reloader::new(store.clone(), router.clone(), upstreams.clone())
                    .with_timeout(timeout)
                    .with_stats(stats.clone())
                    .with_panic_seam(seam.clone())
            }
        };
        let mut reloader = new_reloader();
        if subscription_live.load(Ordering::Acquire) {
            match reloader.reload().await {
                Ok(_) => warn_about_clear_keys(&store).await,
                Err(e) => {
                    tracing::warn!(error = %e, "initial router load failed; serving with an empty router and retrying");
                    wake.full();
                }
            }
        } else {
            // The LISTEN attempt already waited out the pool's connect timeout: a load now would
            // wait as long again for the same answer before the listeners open. The reloader
            // tries in the background instead (and again once the subscription is in).
            tracing::warn!(
                "database unreachable at start; serving with an empty router and retrying"
            );
            wake.full();
        }
        spawn_background(
            &shutdown,
            &metrics,
            Background {
                subscription,
                reloader,
                new_reloader,
                store: store.clone(),
                router: router.clone(),
                wake,
                live: subscription_live.clone(),
            },
        );

        let proxy_addr = proxy_listener.local_addr()?;
        let (recorder, recorder_task) =
            Recorder::start(store.clone(), metrics.clone(), shutdown.clone());
        let (tracer, tracer_task) = match &config.otlp_endpoint {
            Some(endpoint) => {
                let counters = crate::otlp::Counters {
                    exported: metrics.otlp_spans_exported_total.clone(),
                    dropped: metrics.otlp_spans_dropped_total.clone(),
                };
                let instance = uuid::Uuid::new_v4().to_string();
                let (tracer, task) = crate::otlp::Tracer::start(endpoint, instance, counters)
                    .map_err(|e| AppError::Config(vec![format!("--otlp-endpoint: {e}")]))?;
                tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
                (Some(tracer), Some(task))
            }
            None => (None, None),
        };
        let recorder = recorder.with_tracer(tracer);
        // Tunnels and plain forwards: public destinations plus --allow-private-cidrs.
        let tunnel_dialer = Dialer::new(
            EgressPolicy::public_only(config.proxy.allow_private_cidrs.clone()),
            config.proxy.connect_timeout,
        )
        .with_resolver(seams.resolver.clone());
        let state = ProxyState::new(
            config.proxy.clone(),
            tunnel_dialer,
            router.clone(),
            leaves.clone(),
            shutdown.clone(),
            recorder.clone(),
            metrics.clone(),
        )
        .with_panic_on_path(seams.panic_on_path)
        .with_accept_panic(seams.accept_panic);
        let serving = state.serving.clone();
        let state = Arc::new(state);
        shutdown.spawn(proxy::serve(state, proxy_listener));
        if !config.retention.is_zero() {
            shutdown.spawn(crate::usage::retention::run(
                store.clone(),
                config.retention,
                config.retention_interval,
                metrics.clone(),
                shutdown.clone(),
            ));
        }

        let admin_addr = match admin_listener {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let admin_state = Arc::new(AdminState {
                    store: store.clone(),
                    router: router.clone(),
                    ca_pem,
                    admin_token_hash,
                    subscription_live,
                    metrics: metrics.clone(),
                    leaves: leaves.clone(),
                    reload_stats: reload_stats.clone(),
                    reload_stale_after: config.reload_stale_after,
                    serving,
                    proxy: config.proxy.clone(),
                    recorder: recorder.clone(),
                    shutdown: shutdown.clone(),
                    sessions: Default::default(),
                });
                shutdown.spawn(admin::serve(listener, admin_state, shutdown.clone()));
                Some(addr)
            }
            None => None,
        };
        tracing::info!(listen = %proxy_addr, admin = ?admin_addr, database = store.backend_name(), "proxy listening");
        Ok(App {
            proxy_addr,
            admin_addr,
            router,
            leaves,
            store,
            shutdown,
            ca_generated,
            admin_token_generated,
            reload_stats,
            metrics,
            recorder,
            recorder_task,
            tracer_task,
        })
    }

    /// Stop accepting, let in-flight work finish up to `grace`, cut what is left, flush the
    /// interception records, close the database. Returns how many tasks had to be cut.
    pub async fn stop(self, grace: std::time::Duration) -> usize {
        let cut = self.shutdown.shutdown(grace).await;
        // Every request task is gone (finished or cut, its record queued), so this is the last
        // sender: the writer drains, flushes and ends. It gets its own bound so a dead
        // database cannot hold the exit forever.
        drop(self.recorder);
        if tokio::time::timeout(RECORDER_FLUSH_TIMEOUT, self.recorder_task)
            .await
            .is_err()
        {
            tracing::warn!("interception records not flushed before exit");
        }
        if let Some(task) = self.tracer_task {
            if tokio::time::timeout(RECORDER_FLUSH_TIMEOUT, task)
                .await
                .is_err()
            {
                tracing::warn!("spans not exported before exit");
            }
        }
        self.store.close().await;
        cut
    }
}

/// What the two supervised background loops are built from.
struct Background<F> {
    subscription: Subscription,
    reloader: Reloader,
    /// Builds a reloader after the first one panicked (same store, router, timeout, seam).
    new_reloader: F,
    store: Store,
    router: Arc<Router>,
    wake: Arc<Wake>,
    /// The readiness flag the subscription reports through, kept across restarts.
    live: Arc<AtomicBool>,
}

/// Spawn the change subscription and the reloader, each restarted with backoff if it panics
/// (counted in `task_restarts_total`). A restarted loop asks for a full reload at once: the
/// wake-up the dead one swallowed must not be lost.
fn spawn_background<F>(shutdown: &Shutdown, metrics: &Metrics, bg: Background<F>)
where
    F: Fn() -> Reloader + Send + 'static,
{
    let restarts = |task: &str| metrics.task_restarts_total.with_label_values(&[task]);
    let mut first = Some(bg.subscription);
    let (store, router, wake, live, scope) = (
        bg.store,
        bg.router,
        bg.wake.clone(),
        bg.live,
        shutdown.clone(),
    );
    shutdown.spawn_supervised("subscription", restarts("subscription"), move |_| {
        let first = first.take();
        let (store, router, wake, live, scope) = (
            store.clone(),
            router.clone(),
            wake.clone(),
            live.clone(),
            scope.clone(),
        );
        async move {
            let subscription = match first {
                Some(s) => s,
                None => {
                    let s = Subscription::new(&store).await.with_live(live);
                    wake.full();
                    s
                }
            };
            subscription.run(router, wake, scope).await
        }
    });
    let mut first = Some(bg.reloader);
    let (new_reloader, wake, scope) = (bg.new_reloader, bg.wake, shutdown.clone());
    shutdown.spawn_supervised("reloader", restarts("reloader"), move |_| {
        let reloader = match first.take() {
            Some(r) => r,
            None => {
                wake.full();
                new_reloader()
            }
        };
        reloader.run(wake.clone(), scope.clone())
    });
}

/// Say once, at start (after a successful first load), when provider keys sit in the database
/// in clear.
async fn warn_about_clear_keys(store: &Store) {
    let encrypting = store.keyring().primary().is_some();
    match store.key_storage().await {
        Ok(storage) if storage.clear > 0 && encrypting => tracing::warn!(
            clear_keys = storage.clear,
            "provider keys are stored in clear in the database; encrypt them with `aibridge-proxy secrets rotate --new-secrets-key-file` and this key file"
        ),
        Ok(storage) if storage.clear > 0 => tracing::warn!(
            clear_keys = storage.clear,
            "provider keys are stored in clear in the database (no --secrets-key-file); see `aibridge-proxy secrets init`"
        ),
        Ok(_) if !encrypting => tracing::info!(
            "no --secrets-key-file: provider keys added later will be stored in clear"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "could not count clear provider keys"),
    }
}
