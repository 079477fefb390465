//! Prometheus metrics (SPEC §9, prefix `aibridge_proxy_`), one registry per running proxy.
//!
//! Request-level series are updated where the facts happen (the listener for connections, the
//! interception record for requests, tokens and durations). Counters other components already
//! keep as atomics (leaf cache, reloads, record drops) and state that lives in the snapshot
//! (generation, provider status) are read at scrape time, so the hot path pays for nothing twice.
//! Label values are names and static reasons only — never a key, token or free text.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

const PREFIX: &str = "aibridge_proxy";
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One finished bridged request, as the metrics see it: names and numbers, no record. What
/// counts as an upstream failure is decided by whoever sends it (see `usage::observe`).
#[derive(Debug, Clone, Copy)]
pub struct RequestFinished<'a> {
    pub provider: &'a str,
    pub status: u16,
    pub duration: std::time::Duration,
    pub ttfb: Option<std::time::Duration>,
    /// The static reason when the provider's side failed; `None` when it did not (the client's
    /// own doings are in `requests_total` by status).
    pub upstream_failure: Option<&'a str>,
    /// The label value for `tokens_total{model}`.
    pub model: &'a str,
    /// Tokens by direction (`input`, `output`, `cache_read`, `cache_write`); zeros are skipped.
    pub tokens: [(&'static str, u64); 4],
}

pub struct Metrics {
    registry: Registry,
    pub connections_total: IntCounterVec,
    pub connect_rejections_total: IntCounterVec,
    pub active_connections: IntGaugeVec,
    pub requests_total: IntCounterVec,
    pub inflight_requests: IntGaugeVec,
    pub request_duration_seconds: HistogramVec,
    pub ttfb_seconds: HistogramVec,
    pub upstream_errors_total: IntCounterVec,
    pub tokens_total: IntCounterVec,
    pub websocket_messages_total: IntCounterVec,
    pub cert_cache_hits_total: IntCounter,
    pub cert_cache_misses_total: IntCounter,
    pub cert_mint_seconds: HistogramVec,
    pub router_generation: IntGauge,
    pub reloads_total: IntCounterVec,
    pub last_reload_success_timestamp_seconds: Gauge,
    pub provider_info: IntGaugeVec,
    pub interceptions_dropped_total: IntCounter,
    pub interceptions_deleted_total: IntCounter,
    pub otlp_spans_exported_total: IntCounter,
    pub otlp_spans_dropped_total: IntCounter,
    pub retention_runs_total: IntCounterVec,
    pub task_panics_total: IntCounter,
    pub tls_handshake_failures_total: IntCounterVec,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(opts(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(opts(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(
                    HistogramOpts::new(name, help)
                        .namespace(PREFIX)
                        .buckets(SECONDS_BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(opts(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let metrics = Metrics {
            connections_total: counter_vec("connections_total", "CONNECTs by outcome", &["kind"])?,
            connect_rejections_total: counter_vec(
                "connect_rejections_total",
                "Refused proxy requests",
                &["reason"],
            )?,
            active_connections: gauge_vec(
                "active_connections",
                "Open intercepted or tunnelled connections",
                &["kind"],
            )?,
            requests_total: counter_vec(
                "requests_total",
                "Bridged requests",
                &["provider", "code"],
            )?,
            inflight_requests: gauge_vec(
                "inflight_requests",
                "Bridged requests in flight",
                &["provider"],
            )?,
            request_duration_seconds: histogram(
                "request_duration_seconds",
                "Bridged request duration",
                &["provider"],
            )?,
            ttfb_seconds: histogram(
                "ttfb_seconds",
                "Time to the upstream's response head",
                &["provider"],
            )?,
            upstream_errors_total: counter_vec(
                "upstream_errors_total",
                "Failed bridged requests",
                &["provider", "reason"],
            )?,
            tokens_total: counter_vec(
                "tokens_total",
                "Tokens reported by upstreams",
                &["provider", "model", "direction"],
            )?,
            websocket_messages_total: counter_vec(
                "websocket_messages_total",
                "WebSocket messages relayed on intercepted hosts",
                &["provider", "direction"],
            )?,
            cert_cache_hits_total: counter("cert_cache_hits_total", "Leaf cache hits")?,
            cert_cache_misses_total: counter(
                "cert_cache_misses_total",
                "Leaf cache misses (mints)",
            )?,
            cert_mint_seconds: histogram("cert_mint_seconds", "Leaf minting time", &[])?,
            router_generation: {
                let g = IntGauge::with_opts(opts(
                    "router_generation",
                    "Generation of the serving snapshot",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            reloads_total: counter_vec("reloads_total", "Router reloads", &["result"])?,
            last_reload_success_timestamp_seconds: {
                let g = Gauge::with_opts(opts(
                    "last_reload_success_timestamp_seconds",
                    "When the router last reloaded",
                ))?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            provider_info: gauge_vec(
                "provider_info",
                "Providers and their status",
                &["provider", "kind", "status"],
            )?,
            interceptions_dropped_total: counter(
                "interceptions_dropped_total",
                "Interception records dropped",
            )?,
            interceptions_deleted_total: counter(
                "interceptions_deleted_total",
                "Interception records deleted by retention",
            )?,
            otlp_spans_exported_total: counter(
                "otlp_spans_exported_total",
                "Spans the OTLP collector accepted",
            )?,
            otlp_spans_dropped_total: counter(
                "otlp_spans_dropped_total",
                "Spans dropped: queue full or the collector did not take them",
            )?,
            retention_runs_total: counter_vec(
                "retention_runs_total",
                "Retention runs by result (ok, skipped: another replica holds the lock, error)",
                &["result"],
            )?,
            task_panics_total: counter(
                "task_panics_total",
                "Connection tasks that panicked (each died alone)",
            )?,
            tls_handshake_failures_total: counter_vec(
                "tls_handshake_failures_total",
                "Intercepted connections whose TLS handshake with the agent failed",
                &["reason"],
            )?,
            registry,
        };
        Ok(metrics)
    }

    /// Account one finished bridged request.
    pub fn request_finished(&self, e: &RequestFinished<'_>) {
        let code = e.status.to_string();
        self.requests_total
            .with_label_values(&[e.provider, code.as_str()])
            .inc();
        self.request_duration_seconds
            .with_label_values(&[e.provider])
            .observe(e.duration.as_secs_f64());
        if let Some(ttfb) = e.ttfb {
            self.ttfb_seconds
                .with_label_values(&[e.provider])
                .observe(ttfb.as_secs_f64());
        }
        if let Some(reason) = e.upstream_failure {
            self.upstream_errors_total
                .with_label_values(&[e.provider, reason])
                .inc();
        }
        for (direction, n) in e.tokens {
            if n > 0 {
                self.tokens_total
                    .with_label_values(&[e.provider, e.model, direction])
                    .inc_by(n);
            }
        }
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
