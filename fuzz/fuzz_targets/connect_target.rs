//! Fuzz target `connect_target`: the invariants are documented on `oracles::connect_target::connect_target`.
#![no_main]
#[path = "../oracles/mod.rs"]
mod oracles;
use oracles::{check, connect_target::connect_target};
libfuzzer_sys::fuzz_target!(|data: &[u8]| check(connect_target(data)));
