//! Fuzz target `base_url`: the invariants are documented on `aibridge_proxy::fuzz_logic::base_url`.
#![no_main]
use aibridge_proxy::fuzz_logic::{base_url, check};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(base_url(data)));
