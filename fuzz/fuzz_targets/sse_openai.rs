//! Fuzz target `sse_openai`: the invariants are documented on `oracles::sse_openai::sse_openai`.
#![no_main]
#[path = "../oracles/mod.rs"]
mod oracles;
use oracles::{check, sse_openai::sse_openai};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(sse_openai(data)));
