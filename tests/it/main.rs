//! Integration tests: one binary, one module per area. Everything runs over loopback with real
//! TLS and real clients; see `support` for the harness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod admin;
mod auth;
mod bad_input;
mod bridge_direct;
mod ca;
mod cancel_fuzz;
mod cli;
mod cli_data;
mod cli_keys;
mod cli_models;
mod cli_output;
mod console;
mod deploy;
mod egress;
mod faults_db;
mod faults_proxy;
mod faults_upstream;
mod fuzz_corpus;
mod governance;
mod health;
mod layering;
mod limits;
mod mitm;
mod otlp;
mod reload;
mod secrets;
mod shutdown;
mod smuggling;
mod store;
mod tokens;
mod tunnel;
mod usage;
mod websocket;
mod wire_fuzz;
