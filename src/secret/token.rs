//! Agent tokens as secrets: how one is made and the digest it is stored and looked up by.
//!
//! Only the SHA-256 of a token is ever stored or compared (in constant time, by the router's
//! token table); the clear token exists once, in the answer that creates it.

use super::Secret;
use sha2::{Digest, Sha256};

/// A new agent token: `abp_` and 256 random bits, base64url.
pub fn generate() -> Result<Secret<String>, getrandom::Error> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(Secret::new(format!(
        "abp_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )))
}

/// The stored (and looked-up) form of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_prefixed_and_digested_to_32_bytes() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("abp_") && a.expose().len() == 4 + 43);
        assert_eq!(digest(a.expose()), digest(a.expose()));
        assert_ne!(digest(a.expose()), digest(b.expose()));
    }
}
