//! Fuzz target `usage_json`: the invariants are documented on `aibridge_proxy::fuzz_logic::usage_json`.
#![no_main]
use aibridge_proxy::fuzz_logic::{check, usage_json};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(usage_json(data)));
