//! aibridge-proxy: a forward proxy between AI coding agents and LLM providers.
//!
//! Data flow: the [`proxy`] listener accepts `CONNECT host:port`, authenticates the agent
//! ([`proxy::auth`]) and looks the target up in the live [`router`] snapshot. A hit is
//! intercepted: a leaf certificate from the [`ca`] terminates TLS and every decrypted request
//! goes through the [`bridge`], which injects the provider's key and streams the answer back. A
//! miss is tunnelled (or refused) under the [`proxy::egress`] policy. Providers, keys and agent
//! tokens live in the [`store`]; the [`router::reload`] task rebuilds the snapshot whenever the
//! store says something changed, and swaps it in atomically.
//!
//! `main.rs` only parses the command line and calls [`cli::run`]; everything else is here so
//! tests and benches drive the same code in-process.

pub mod admin;
pub mod app;
pub mod auth;
pub mod bridge;
pub mod ca;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod net;
pub mod otlp;
pub mod provider;
pub mod proxy;
pub mod pubsub;
pub mod router;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod usage;

/// The boxed error type used for body and service plumbing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
