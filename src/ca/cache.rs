//! The leaf cache: one TLS server configuration per intercepted host, minted once.
//!
//! Minting is single-flight: fifty CONNECTs racing to a host nobody has seen yet wait on one
//! mint (moka's `try_get_with` coalesces concurrent initialisers of one key). Only router hits
//! reach this cache, so clients cannot grow it by connecting to arbitrary names. Entries expire
//! an hour before their leaf does.

use super::{CaError, CertificateAuthority};
use crate::proxy::target::Host;
use moka::future::Cache;
use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub mints: AtomicU64,
    pub mint_errors: AtomicU64,
    /// Total time spent minting, in microseconds.
    pub mint_micros: AtomicU64,
}

pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    cache: Cache<Host, Arc<ServerConfig>>,
    validity: Duration,
    crypto: Arc<CryptoProvider>,
    stats: CacheStats,
}

impl LeafCache {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        capacity: u64,
        validity: Duration,
        crypto: Arc<CryptoProvider>,
    ) -> Self {
        let margin = Duration::from_secs(3600).min(validity / 2);
        let cache = Cache::builder()
            .max_capacity(capacity)
            .time_to_live(validity - margin)
            .build();
        LeafCache {
            ca,
            cache,
            validity,
            crypto,
            stats: CacheStats::default(),
        }
    }

    /// The server configuration for `host`, minting its leaf on first use.
    pub async fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, Arc<CaError>> {
        let entry = self
            .cache
            .entry_by_ref(host)
            .or_try_insert_with(async { self.mint(host) })
            .await?;
        if !entry.is_fresh() {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(entry.into_value())
    }

    fn mint(&self, host: &Host) -> Result<Arc<ServerConfig>, CaError> {
        let started = Instant::now();
        let result = self.ca.mint(host, self.validity).and_then(|leaf| {
            let mut config = ServerConfig::builder_with_provider(self.crypto.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(leaf.chain, leaf.key)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        });
        let counter = if result.is_ok() {
            &self.stats.mints
        } else {
            &self.stats.mint_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats
            .mint_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(host = %host, error = %e, "leaf mint failed");
        }
        result
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }
}
