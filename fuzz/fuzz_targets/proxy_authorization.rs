//! Fuzz target `proxy_authorization`: the invariants are documented on `aibridge_proxy::fuzz_logic::proxy_authorization`.
#![no_main]
use aibridge_proxy::fuzz_logic::{check, proxy_authorization};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(proxy_authorization(data)));
