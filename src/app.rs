//! Wiring: build every component from an [`AppConfig`], spawn the listener and the reloader,
//! and hand back a handle. Tests and `serve` start the proxy the same way.

use crate::bridge::upstream::{UpstreamFactory, UpstreamTlsError};
use crate::ca::{CaError, CaPaths, CertificateAuthority, LeafCache};
use crate::config::AppConfig;
use crate::proxy::egress::{Dialer, EgressPolicy};
use crate::proxy::{self, ProxyState};
use crate::router::reload::{ReloadStats, Reloader};
use crate::router::Router;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("certificate authority: {0}")]
    Ca(#[from] CaError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[from] UpstreamTlsError),
    #[error("listener: {0}")]
    Listen(#[from] std::io::Error),
}

/// A running proxy.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub router: Arc<Router>,
    pub leaves: Arc<LeafCache>,
    pub store: Store,
    pub shutdown: Shutdown,
    /// Whether this start generated the CA (first start).
    pub ca_generated: bool,
    pub reload_stats: Arc<ReloadStats>,
}

impl App {
    /// Start serving on `listener` (already bound, so tests can use port 0).
    pub async fn start(config: AppConfig, listener: TcpListener) -> Result<App, AppError> {
        config.validate().map_err(AppError::Config)?;
        let crypto = Arc::new(rustls::crypto::ring::default_provider());
        let paths = CaPaths {
            cert: config.ca_cert.clone(),
            key: config.ca_key.clone(),
        };
        let (ca, ca_generated) = CertificateAuthority::load_or_generate(&paths)?;
        if ca_generated {
            tracing::info!(cert = %paths.cert.display(), key = %paths.key.display(), "generated a new CA; agents must trust the certificate (see certs/README.md)");
        }
        let ca = Arc::new(ca);
        let leaves = Arc::new(LeafCache::new(
            ca,
            config.cert_cache_size,
            config.leaf_validity,
            crypto.clone(),
        ));

        let store = Store::connect(&config.database_url).await?;
        // Provider upstreams are operator-configured; base-URL egress checks come with the
        // admin API's write-time validation.
        let upstream_dialer = Dialer::new(EgressPolicy::allow_all(), config.proxy.connect_timeout);
        let upstreams =
            UpstreamFactory::new(crypto, config.upstream_ca_file.as_deref(), upstream_dialer)?;
        let router = Arc::new(Router::new());
        let shutdown = Shutdown::new();

        let mut reloader = Reloader::new(store.clone(), router.clone(), upstreams);
        let reload_stats = reloader.stats();
        if let Err(e) = reloader.reload().await {
            tracing::warn!(error = %e, "initial router load failed; serving with an empty router and retrying");
        }
        shutdown.spawn(reloader.run(shutdown.clone()));

        let proxy_addr = listener.local_addr()?;
        let state = Arc::new(ProxyState::new(
            config.proxy.clone(),
            router.clone(),
            leaves.clone(),
            shutdown.clone(),
        ));
        shutdown.spawn(proxy::serve(state, listener));
        tracing::info!(listen = %proxy_addr, database = store.backend_name(), "proxy listening");
        Ok(App {
            proxy_addr,
            router,
            leaves,
            store,
            shutdown,
            ca_generated,
            reload_stats,
        })
    }

    /// Stop accepting, let in-flight work finish up to `grace`, close the database.
    /// Returns whether everything finished in time.
    pub async fn stop(self, grace: std::time::Duration) -> bool {
        let clean = self.shutdown.shutdown(grace).await;
        self.store.close().await;
        clean
    }
}
