//! Fuzz target `connect_target`: the invariants are documented on `aibridge_proxy::fuzz_logic::connect_target`.
#![no_main]
use aibridge_proxy::fuzz_logic::{check, connect_target};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(connect_target(data)));
