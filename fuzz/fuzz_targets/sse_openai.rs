//! Fuzz target `sse_openai`: the invariants are documented on `aibridge_proxy::fuzz_logic::sse_openai`.
#![no_main]
use aibridge_proxy::fuzz_logic::{check, sse_openai};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(sse_openai(data)));
