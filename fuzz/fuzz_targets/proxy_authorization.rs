//! Fuzz target `proxy_authorization`: the invariants are documented on `oracles::proxy_authorization::proxy_authorization`.
#![no_main]
#[path = "../oracles/mod.rs"]
mod oracles;
use oracles::{check, proxy_authorization::proxy_authorization};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(proxy_authorization(data)));
