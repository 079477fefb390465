//! Fuzz oracles: one file per fuzz target in `fuzz/`, each checking invariants of a parser on
//! arbitrary bytes rather than only "it did not panic".
//!
//! Not part of the library: the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the corpus-replay
//! test (`tests/it/fuzz_corpus.rs`) include this directory with `#[path]`, and every oracle
//! drives the library through its public API only. A broken invariant is returned as a
//! [`Violation`] (the fuzz shims turn it into a panic, which libFuzzer reports as a crash); a
//! panic inside the parsers themselves is a bug the fuzzer reports the same way.
//!
//! Inputs are plain bytes, so corpus files are readable: a CONNECT target, a header value, an
//! SSE transcript, a JSON body, a base URL. Where an oracle needs choices (how to chunk a
//! stream), it derives them from the input itself.

// Each includer uses part of this: a fuzz target its own oracle, the replay test all of them.
#![allow(dead_code, unused_imports)]

use std::fmt;

/// A broken invariant: which one, and on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// The outcome of one oracle run.
pub type Outcome = Result<(), Violation>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($msg)+)));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(Violation(format!(
                        "{}: left {:?} != right {:?}",
                        format!($($msg)+),
                        l,
                        r
                    )));
                }
            }
        }
    };
}

/// Turn a broken invariant into a panic, which is how libFuzzer learns of it (the fuzz shims
/// call this; the corpus replay test reports violations itself).
#[allow(clippy::panic)]
pub fn check(outcome: Outcome) {
    if let Err(v) = outcome {
        panic!("fuzz invariant broken: {v}");
    }
}

/// An oracle: one fuzz input in, whether every invariant held.
pub type Oracle = fn(&[u8]) -> Outcome;

/// Names of the fuzz targets, in the order of `fuzz/Cargo.toml`, with their oracle.
pub const TARGETS: &[(&str, Oracle)] = &[
    ("connect_target", connect_target::connect_target),
    (
        "proxy_authorization",
        proxy_authorization::proxy_authorization,
    ),
    ("sse_openai", sse_openai::sse_openai),
    ("sse_anthropic", sse_anthropic::sse_anthropic),
    ("usage_json", usage_json::usage_json),
    ("base_url", base_url::base_url),
];

// Declared after the macros above, which they use.
pub mod base_url;
pub mod connect_target;
pub mod proxy_authorization;
pub mod sse_anthropic;
pub mod sse_openai;
pub mod streams;
pub mod usage_json;
