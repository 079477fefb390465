//! `Secret<T>`: a value that must never be formatted.
//!
//! Provider keys, agent tokens and the CA key travel in this type so that a stray `{:?}` in a
//! log line or an error prints `[redacted]` instead of the value. The contents are zeroed on
//! drop. Reading the value is explicit (`expose`), which makes every use greppable.
//!
//! Beside the type: [`files`] writes and checks private (0600) files (CA key, admin token,
//! secrets key) and [`token`] makes agent tokens and their stored digest.

pub mod files;
pub mod token;

use std::fmt;
use zeroize::Zeroize;

/// A value whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: Zeroize>(T);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself; call only where it must leave the process (an upstream header, a
    /// file written 0600, the one-time display of a new token).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> Drop for Secret<T> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<T: Zeroize> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T: Zeroize> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// The masked form of a key shown by the API and the CLI: the first three and last four
/// characters, e.g. `sk-...abcd`. Short keys show only the tail so that nothing meaningful leaks.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "...".to_string();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("sk-live-123456".to_string());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "sk-live-123456");
    }

    #[test]
    fn mask_keeps_only_head_and_tail() {
        assert_eq!(mask("sk-proj-abcdefghijklmnop"), "sk-...mnop");
        assert_eq!(mask("short"), "...");
    }
}
