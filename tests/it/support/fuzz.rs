//! What the seeded fuzz suites (`wire_fuzz`, `cancel_fuzz`) share: the seed and the case count,
//! both from the environment so a failing run can be replayed.

/// `AIBRIDGE_FUZZ_SEED`, or a fresh random seed (printed by the suite, to replay it).
pub fn seed() -> u64 {
    match std::env::var("AIBRIDGE_FUZZ_SEED") {
        Ok(s) => s.parse().expect("AIBRIDGE_FUZZ_SEED is a u64"),
        Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        }
    }
}

/// The case count from the environment variable `var`, else `default`.
pub fn cases(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
