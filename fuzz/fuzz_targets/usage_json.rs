//! Fuzz target `usage_json`: the invariants are documented on `oracles::usage_json::usage_json`.
#![no_main]
#[path = "../oracles/mod.rs"]
mod oracles;
use oracles::{check, usage_json::usage_json};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(usage_json(data)));
