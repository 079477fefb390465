//! Fuzz target `base_url`: the invariants are documented on `oracles::base_url::base_url`.
#![no_main]
#[path = "../oracles/mod.rs"]
mod oracles;
use oracles::{check, base_url::base_url};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(base_url(data)));
