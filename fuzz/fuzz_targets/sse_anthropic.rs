//! Fuzz target `sse_anthropic`: the invariants are documented on `oracles::sse_anthropic::sse_anthropic`.
#![no_main]
#[path = "../oracles/mod.rs"]
mod oracles;
use oracles::{check, sse_anthropic::sse_anthropic};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(sse_anthropic(data)));
