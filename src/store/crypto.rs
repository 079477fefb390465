//! Provider keys at rest: AES-256-GCM (ring) under a 32-byte secrets key read from
//! `--secrets-key-file`.
//!
//! Stored form, in the existing `api_key` column: `enc:v1:KID:BASE64`, where `KID` is 8 hex
//! characters naming the secrets key (the first 4 bytes of SHA-256 over a context string and the
//! key) and `BASE64` (standard alphabet, padded) is `nonce (12) ‖ ciphertext ‖ tag (16)`. Every
//! value gets a fresh random nonce. The associated data is a context string, the key row's id and
//! its provider's id, so a value copied into another row (or moved to another provider) does not
//! decrypt. A value without the `enc:` prefix is a key stored in clear (written without a key
//! file): both forms coexist in one table, which is how a database migrates from one to the other
//! (`secrets rotate`), and why no schema change is needed on either backend.
//!
//! The key id lets a reader tell "written under a key file I was not given" from "altered", and
//! lets one process hold several keys (the current one and, during a rotation, the previous one).
//!
//! The key file holds the 32 bytes as 64 hex characters (a trailing newline is fine; `openssl
//! rand -hex 32` makes one too). Like the CA key it is created 0600 at open and refused when
//! group- or world-readable.
//!
//! Nothing here logs or formats a key, a clear value or a ciphertext: errors name the secrets key
//! id, never a value.

use crate::secret::files::{self, FileError};
use crate::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

/// Prefix of every encrypted value; a stored key without it is in clear.
pub const ENCRYPTED_PREFIX: &str = "enc:";
const V1_PREFIX: &str = "enc:v1:";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const AAD_CONTEXT: &[u8] = b"aibridge-proxy provider key v1";
const KEY_ID_CONTEXT: &[u8] = b"aibridge-proxy secrets key id v1";

/// Why a stored key cannot be read (or, for [`CryptoError::Seal`], written). Safe to show: it
/// names a secrets key id at most, never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("it is encrypted but no --secrets-key-file was given")]
    NoSecretsKey,
    #[error(
        "it is encrypted under secrets key {0}, which was not given \
         (--secrets-key-file or --previous-secrets-key-file)"
    )]
    UnknownSecretsKey(KeyId),
    #[error("it does not decrypt under secrets key {0}: altered, or copied from another row")]
    Tampered(KeyId),
    #[error("its stored form is not one this version reads (expected enc:v1:...)")]
    Malformed,
    #[error("encryption failed")]
    Seal,
}

/// Why a secrets key file cannot be used or created.
#[derive(Debug, thiserror::Error)]
pub enum SecretsKeyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path} must hold 32 bytes as 64 hex characters (make one with `aibridge-proxy secrets init`)")]
    Format { path: String },
    #[error("{path} already exists; pass --force to replace it (provider keys encrypted under it become unreadable)")]
    Exists { path: String },
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot set up AES-256-GCM")]
    Cipher,
}

/// The short public name of a secrets key: 8 hex characters, stored with every value it seals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 4]);

impl KeyId {
    fn parse(text: &str) -> Option<KeyId> {
        let bytes = text.as_bytes();
        if bytes.len() != 8 {
            return None;
        }
        let mut id = [0u8; 4];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            id[i] = (unhex(pair[0])? << 4) | unhex(pair[1])?;
        }
        Some(KeyId(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How a stored value is kept, read from its prefix alone (no key needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredForm {
    Clear,
    Encrypted(KeyId),
    /// `enc:` but not a form this version reads.
    Unknown,
}

/// Classify a stored value (or a prefix of at least 16 characters of one).
pub fn stored_form(stored: &str) -> StoredForm {
    if !stored.starts_with(ENCRYPTED_PREFIX) {
        return StoredForm::Clear;
    }
    let Some(rest) = stored.strip_prefix(V1_PREFIX) else {
        return StoredForm::Unknown;
    };
    match (rest.get(..8).and_then(KeyId::parse), rest.as_bytes().get(8)) {
        (Some(id), Some(b':')) => StoredForm::Encrypted(id),
        _ => StoredForm::Unknown,
    }
}

/// One AES-256-GCM key. Its bytes live only inside ring's key schedule; `Debug` shows the id.
pub struct SecretsKey {
    id: KeyId,
    key: LessSafeKey,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretsKey({})", self.id)
    }
}

impl SecretsKey {
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<SecretsKey, SecretsKeyError> {
        let mut hasher = Sha256::new();
        hasher.update(KEY_ID_CONTEXT);
        hasher.update(bytes);
        let digest = hasher.finalize();
        let id = KeyId([digest[0], digest[1], digest[2], digest[3]]);
        // ring refuses only a wrong key length, which the type rules out.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SecretsKeyError::Cipher)?;
        Ok(SecretsKey {
            id,
            key: LessSafeKey::new(unbound),
        })
    }

    /// Read a key file: refused when group/world readable or not 64 hex characters.
    pub fn load(path: &Path) -> Result<SecretsKey, SecretsKeyError> {
        files::check_private(path)?;
        let text = Zeroizing::new(std::fs::read(path).map_err(|source| FileError::Io {
            path: path.display().to_string(),
            source,
        })?);
        let format = || SecretsKeyError::Format {
            path: path.display().to_string(),
        };
        let hex = text.trim_ascii();
        if hex.len() != 2 * KEY_LEN {
            return Err(format());
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            bytes[i] =
                (unhex(pair[0]).ok_or_else(format)? << 4) | unhex(pair[1]).ok_or_else(format)?;
        }
        SecretsKey::from_bytes(&bytes)
    }

    /// Generate a key and write it to `path` (0600, created at open). An existing file is kept
    /// unless `force`.
    pub fn generate(path: &Path, force: bool) -> Result<SecretsKey, SecretsKeyError> {
        if path.exists() && !force {
            return Err(SecretsKeyError::Exists {
                path: path.display().to_string(),
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| SecretsKeyError::Random)?;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = Zeroizing::new(Vec::with_capacity(2 * KEY_LEN + 1));
        for b in bytes.iter() {
            text.push(HEX[usize::from(b >> 4)]);
            text.push(HEX[usize::from(b & 0x0f)]);
        }
        text.push(b'\n');
        files::remove_if_exists(path)?;
        files::write_private(path, &text)?;
        SecretsKey::from_bytes(&bytes)
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// `enc:v1:KID:BASE64` for `clear` in row `key_id` of provider `provider_id`.
    pub fn seal(
        &self,
        key_id: Uuid,
        provider_id: Uuid,
        clear: &str,
    ) -> Result<String, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Seal)?;
        // Room for the tag up front: no reallocation leaves a copy of the clear key behind.
        let mut in_out = Zeroizing::new(Vec::with_capacity(clear.len() + TAG_LEN));
        in_out.extend_from_slice(clear.as_bytes());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_id, provider_id)),
                &mut *in_out,
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(format!(
            "{V1_PREFIX}{}:{}",
            self.id,
            STANDARD.encode(sealed)
        ))
    }

    /// Decrypt `nonce ‖ ciphertext ‖ tag` of row `key_id` of provider `provider_id`.
    fn open(
        &self,
        key_id: Uuid,
        provider_id: Uuid,
        sealed: &[u8],
    ) -> Result<Secret<String>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let clear_len = self
            .key
            .open_in_place(nonce, Aad::from(aad(key_id, provider_id)), &mut buf[..])
            .map_err(|_| CryptoError::Tampered(self.id))?
            .len();
        buf.truncate(clear_len);
        match String::from_utf8(std::mem::take(&mut *buf)) {
            Ok(text) => Ok(Secret::new(text)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(CryptoError::Malformed)
            }
        }
    }
}

/// The secrets keys a process holds: the primary one seals every key it writes (none: keys are
/// written in clear); every one of them, the primary included, opens what it sealed.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    primary: Option<Arc<SecretsKey>>,
    keys: Vec<Arc<SecretsKey>>,
}

impl Keyring {
    pub fn new(primary: Option<SecretsKey>, previous: Option<SecretsKey>) -> Keyring {
        let primary = primary.map(Arc::new);
        let keys = primary
            .iter()
            .cloned()
            .chain(previous.map(Arc::new))
            .collect();
        Keyring { primary, keys }
    }

    /// Load `--secrets-key-file` and `--previous-secrets-key-file`, either may be absent.
    pub fn load(
        primary: Option<&Path>,
        previous: Option<&Path>,
    ) -> Result<Keyring, SecretsKeyError> {
        let primary = primary.map(SecretsKey::load).transpose()?;
        let previous = previous.map(SecretsKey::load).transpose()?;
        Ok(Keyring::new(primary, previous))
    }

    /// The key new values are sealed with, if any.
    pub fn primary(&self) -> Option<&Arc<SecretsKey>> {
        self.primary.as_ref()
    }

    /// Whether a value sealed under `id` can be opened.
    pub fn can_open(&self, id: KeyId) -> bool {
        self.keys.iter().any(|k| k.id == id)
    }

    /// This keyring plus `extra` (for reading during a rotation to `extra`).
    pub(crate) fn with(&self, extra: Option<&Arc<SecretsKey>>) -> Keyring {
        let mut ring = self.clone();
        ring.keys.extend(extra.cloned());
        ring
    }

    /// The stored form of `clear` for row `key_id` of provider `provider_id`: sealed under the
    /// primary key, or the clear value itself when there is none.
    pub fn seal(
        &self,
        key_id: Uuid,
        provider_id: Uuid,
        clear: &Secret<String>,
    ) -> Result<Secret<String>, CryptoError> {
        match &self.primary {
            Some(key) => key
                .seal(key_id, provider_id, clear.expose())
                .map(Secret::new),
            None => Ok(clear.clone()),
        }
    }

    /// The clear key from its stored form (a clear value is returned as it is).
    pub fn open(
        &self,
        key_id: Uuid,
        provider_id: Uuid,
        stored: Secret<String>,
    ) -> Result<Secret<String>, CryptoError> {
        let id = match stored_form(stored.expose()) {
            StoredForm::Clear => return Ok(stored),
            StoredForm::Unknown => return Err(CryptoError::Malformed),
            StoredForm::Encrypted(id) => id,
        };
        let key = match self.keys.iter().find(|k| k.id == id) {
            Some(key) => key,
            None if self.keys.is_empty() => return Err(CryptoError::NoSecretsKey),
            None => return Err(CryptoError::UnknownSecretsKey(id)),
        };
        // `enc:v1:KID:` is 16 ASCII characters (checked by `stored_form`).
        let body = stored
            .expose()
            .get(V1_PREFIX.len() + 9..)
            .ok_or(CryptoError::Malformed)?;
        let sealed = STANDARD.decode(body).map_err(|_| CryptoError::Malformed)?;
        key.open(key_id, provider_id, &sealed)
    }
}

fn aad(key_id: Uuid, provider_id: Uuid) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_CONTEXT.len() + 32);
    aad.extend_from_slice(AAD_CONTEXT);
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(provider_id.as_bytes());
    aad
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[byte; KEY_LEN]).unwrap()
    }

    fn secret(s: &str) -> Secret<String> {
        Secret::new(s.to_string())
    }

    const CLEAR: &str = "sk-proj-clear-value-0123456789";

    #[test]
    fn sealed_values_round_trip_and_never_repeat() {
        let ring = Keyring::new(Some(key(1)), None);
        let (row, provider) = (Uuid::new_v4(), Uuid::new_v4());
        let a = ring.seal(row, provider, &secret(CLEAR)).unwrap();
        let b = ring.seal(row, provider, &secret(CLEAR)).unwrap();
        let prefix = format!("enc:v1:{}:", key(1).id());
        assert!(a.expose().starts_with(&prefix), "{}", a.expose());
        assert_ne!(a.expose(), b.expose(), "a fresh nonce per value");
        assert!(!a.expose().contains(CLEAR) && !a.expose().contains("0123456789"));
        assert_eq!(stored_form(a.expose()), StoredForm::Encrypted(key(1).id()));
        assert_eq!(ring.open(row, provider, a).unwrap().expose(), CLEAR);
        assert_eq!(ring.open(row, provider, b).unwrap().expose(), CLEAR);
        // nonce (12) + clear + tag (16), base64-encoded after the 16-character prefix.
        let body = ring.seal(row, provider, &secret(CLEAR)).unwrap();
        let raw = STANDARD.decode(&body.expose()[16..]).unwrap();
        assert_eq!(raw.len(), NONCE_LEN + CLEAR.len() + TAG_LEN);
    }

    #[test]
    fn a_value_moved_to_another_row_or_provider_or_altered_does_not_open() {
        let ring = Keyring::new(Some(key(1)), None);
        let (row, provider) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = ring.seal(row, provider, &secret(CLEAR)).unwrap();
        let id = key(1).id();
        let moved_row = ring.open(Uuid::new_v4(), provider, sealed.clone());
        assert_eq!(moved_row.unwrap_err(), CryptoError::Tampered(id));
        let moved_provider = ring.open(row, Uuid::new_v4(), sealed.clone());
        assert_eq!(moved_provider.unwrap_err(), CryptoError::Tampered(id));

        let mut raw = STANDARD.decode(&sealed.expose()[16..]).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let altered = format!("{}{}", &sealed.expose()[..16], STANDARD.encode(&raw));
        assert_eq!(
            ring.open(row, provider, secret(&altered)).unwrap_err(),
            CryptoError::Tampered(id)
        );
        let short = format!("{}{}", &sealed.expose()[..16], STANDARD.encode([0u8; 20]));
        assert_eq!(
            ring.open(row, provider, secret(&short)).unwrap_err(),
            CryptoError::Malformed
        );
        for bad in [
            "enc:v2:00000000:AAAA",
            "enc:v1:zz:AAAA",
            "enc:",
            "enc:v1:0011223",
            "enc:v1:00112233AAAA",
        ] {
            assert_eq!(
                ring.open(row, provider, secret(bad)).unwrap_err(),
                CryptoError::Malformed,
                "{bad}"
            );
        }
        let not_base64 = format!("{}!!!", &sealed.expose()[..16]);
        assert_eq!(
            ring.open(row, provider, secret(&not_base64)).unwrap_err(),
            CryptoError::Malformed
        );
    }

    #[test]
    fn keys_are_found_by_id_and_clear_values_pass_through() {
        let (row, provider) = (Uuid::new_v4(), Uuid::new_v4());
        let old = Keyring::new(Some(key(1)), None);
        let sealed = old.seal(row, provider, &secret(CLEAR)).unwrap();

        let rotated = Keyring::new(Some(key(2)), Some(key(1)));
        assert_eq!(
            rotated
                .open(row, provider, sealed.clone())
                .unwrap()
                .expose(),
            CLEAR
        );
        let other = Keyring::new(Some(key(2)), None);
        let err = other.open(row, provider, sealed.clone()).unwrap_err();
        assert_eq!(err, CryptoError::UnknownSecretsKey(key(1).id()));
        assert!(err.to_string().contains(&key(1).id().to_string()), "{err}");
        let none = Keyring::default();
        assert_eq!(
            none.open(row, provider, sealed).unwrap_err(),
            CryptoError::NoSecretsKey
        );
        // Without a primary key values are written, and read, in clear.
        let clear = none.seal(row, provider, &secret(CLEAR)).unwrap();
        assert_eq!(clear.expose(), CLEAR);
        assert_eq!(stored_form(CLEAR), StoredForm::Clear);
        assert_eq!(rotated.open(row, provider, clear).unwrap().expose(), CLEAR);
        assert_ne!(key(1).id(), key(2).id());
        assert_eq!(
            format!("{:?}", key(1)),
            format!("SecretsKey({})", key(1).id())
        );
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_0600_hex_and_open_ones_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secrets.key");
        let generated = SecretsKey::generate(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 65, "64 hex characters and a newline");
        assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(SecretsKey::load(&path).unwrap().id(), generated.id());

        let exists = SecretsKey::generate(&path, false).unwrap_err().to_string();
        assert!(
            exists.contains("--force") && exists.contains("secrets.key"),
            "{exists}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "kept");
        let replaced = SecretsKey::generate(&path, true).unwrap();
        assert_ne!(replaced.id(), generated.id());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = SecretsKey::load(&path).unwrap_err().to_string();
        assert!(
            open.contains("secrets.key") && open.contains("chmod 600"),
            "{open}"
        );

        let bad = dir.path().join("bad.key");
        files::write_private(&bad, b"not hex at all\n").unwrap();
        let err = SecretsKey::load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.key") && err.contains("64 hex"), "{err}");
        assert!(
            !err.contains("not hex at all"),
            "the content is never echoed"
        );
        let missing = SecretsKey::load(&dir.path().join("nope.key")).unwrap_err();
        assert!(missing.to_string().contains("nope.key"));

        // Upper-case hex and surrounding whitespace are accepted (`openssl rand -hex 32`).
        let upper = dir.path().join("upper.key");
        files::write_private(&upper, format!("  {}\n\n", "AB".repeat(32)).as_bytes()).unwrap();
        assert_eq!(
            SecretsKey::load(&upper).unwrap().id(),
            SecretsKey::from_bytes(&[0xab; KEY_LEN]).unwrap().id()
        );
    }
}
