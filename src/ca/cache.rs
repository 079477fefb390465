//! The leaf cache: one TLS server configuration per intercepted host, minted once.
//!
//! Minting is single-flight: fifty CONNECTs racing to a host nobody has seen yet wait on one
//! mint (moka's `try_get_with` coalesces concurrent initialisers of one key). Only router hits
//! reach this cache, so clients cannot grow it by connecting to arbitrary names. Entries expire
//! an hour before their leaf does (at most half its life before), including a leaf cut short by
//! the CA's own expiry.
//!
//! Agents reconnect often, so every leaf configuration resumes TLS sessions: stateless tickets
//! (one ticket key set for all hosts, rotated by rustls every six hours, no memory per session)
//! and rustls' bounded in-memory session-ID cache for clients that do not take tickets.

use super::{CaError, CertificateAuthority};
use crate::net::target::Host;
use moka::future::Cache;
use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;
use rustls::ServerConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub mints: AtomicU64,
    pub mint_errors: AtomicU64,
    /// Total time spent minting, in microseconds.
    pub mint_micros: AtomicU64,
}

#[derive(Clone)]
struct CachedLeaf {
    config: Arc<ServerConfig>,
    serve_until: OffsetDateTime,
}

pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    cache: Cache<Host, CachedLeaf>,
    validity: Duration,
    /// How long before its leaf's expiry an entry stops being served.
    margin: Duration,
    crypto: Arc<CryptoProvider>,
    /// Shared by every leaf configuration; `None` if the ticket key could not be made.
    ticketer: Option<Arc<dyn ProducesTickets>>,
    stats: CacheStats,
    /// `cert_mint_seconds`, when the proxy exports metrics (the leaf-mint latency alert).
    mint_seconds: Option<prometheus::Histogram>,
}

/// Session IDs remembered per intercepted host for resumption without a ticket.
const SESSION_IDS_PER_HOST: usize = 256;

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
        // Making a ticket key fails only if the OS has no randomness; full handshakes still work.
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .inspect_err(|e| tracing::warn!(error = %e, "TLS session tickets off"))
            .ok();
        LeafCache {
            ca,
            cache,
            validity,
            margin,
            crypto,
            ticketer,
            stats: CacheStats::default(),
            mint_seconds: None,
        }
    }

    /// Observe every mint's duration in `histogram`.
    pub fn with_mint_histogram(mut self, histogram: prometheus::Histogram) -> Self {
        self.mint_seconds = Some(histogram);
        self
    }

    /// The server configuration for `host`, minting its leaf on first use.
    pub async fn server_config(&self, host: &Host) -> Result<Arc<ServerConfig>, Arc<CaError>> {
        let mint = async { self.mint(host) };
        let mut entry = self
            .cache
            .entry_by_ref(host)
            .or_try_insert_with(mint)
            .await?;
        if entry.value().serve_until <= OffsetDateTime::now_utc() {
            // A leaf cut short by the CA's expiry ends before the cache's time-to-live does.
            self.cache.invalidate(host).await;
            let mint = async { self.mint(host) };
            entry = self
                .cache
                .entry_by_ref(host)
                .or_try_insert_with(mint)
                .await?;
        }
        if entry.is_fresh() {
            // moka applies its capacity bound in housekeeping (every few hundred ms or 64
            // writes); run it now so `--cert-cache-size` holds at every mint.
            self.cache.run_pending_tasks().await;
        } else {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(entry.into_value().config)
    }

    fn mint(&self, host: &Host) -> Result<CachedLeaf, CaError> {
        let started = Instant::now();
        let result = self.ca.mint(host, self.validity).and_then(|leaf| {
            // Served until `margin` before the leaf's expiry, or to its last second when the
            // CA's expiry left it shorter than that (then minting fails from that point on).
            let early = leaf.not_after - self.margin;
            let serve_until = if early > OffsetDateTime::now_utc() {
                early
            } else {
                leaf.not_after
            };
            let mut config = ServerConfig::builder_with_provider(self.crypto.clone())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(leaf.chain, leaf.key)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config.session_storage =
                rustls::server::ServerSessionMemoryCache::new(SESSION_IDS_PER_HOST);
            if let Some(t) = &self.ticketer {
                config.ticketer = t.clone();
            }
            Ok(CachedLeaf {
                config: Arc::new(config),
                serve_until,
            })
        });
        let counter = if result.is_ok() {
            &self.stats.mints
        } else {
            &self.stats.mint_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        self.stats
            .mint_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        if let Some(h) = &self.mint_seconds {
            h.observe(took.as_secs_f64());
        }
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
