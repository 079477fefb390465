//! Fuzz target `sse_anthropic`: the invariants are documented on `aibridge_proxy::fuzz_logic::sse_anthropic`.
#![no_main]
use aibridge_proxy::fuzz_logic::{check, sse_anthropic};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(sse_anthropic(data)));
