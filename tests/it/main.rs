//! Integration tests: one binary, one module per area. Everything runs over loopback with real
//! TLS and real clients; see `support` for the harness.

mod support;

mod auth;
mod bad_input;
mod ca;
mod cli;
mod mitm;
mod tunnel;
