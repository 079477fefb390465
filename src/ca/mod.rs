//! The certificate authority: load or generate the CA, and mint per-host leaves from it.
//!
//! The CA key is the most sensitive thing the proxy holds: it is read only from a 0600 file,
//! kept behind [`crate::secret::Secret`]-style redaction (rcgen's `KeyPair` has no `Display` and
//! we never log it), and never served — `/ca.pem` gets [`CertificateAuthority::cert_pem`] only.

mod cache;
pub mod der;
mod leaf;

pub use cache::{CacheStats, LeafCache};
pub use leaf::Leaf;

use crate::secret::files;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// How long a generated CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The common name of a generated CA.
pub const CA_COMMON_NAME: &str = "aibridge-proxy CA";

/// A CA closer than this to its expiry is warned about at start.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why the CA cannot be used. Messages name the file and the fix; none contains key material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error("{0}: no PEM certificate found")]
    NoCertificate(String),
    #[error("{0}: no usable private key (PKCS#1, PKCS#8 or SEC1 PEM expected)")]
    BadKey(String),
    #[error("{0}: certificate could not be parsed")]
    BadCertificate(String),
    #[error("{cert} and {key} do not belong together (the key does not match the certificate)")]
    Mismatch { cert: String, key: String },
    #[error("{0}: the CA certificate expired on {1}; run `aibridge-proxy ca init --force`")]
    Expired(String, OffsetDateTime),
    #[error("the CA certificate expired on {0}; no leaf can be minted: run `aibridge-proxy ca init --force` and restart")]
    ExpiredWhileRunning(OffsetDateTime),
    #[error("{0}: the CA certificate is not valid before {1}")]
    NotYetValid(String, OffsetDateTime),
    #[error("{0}: the certificate is not a CA (basicConstraints CA:TRUE missing)")]
    NotCa(String),
    #[error("only one of {cert} and {key} exists; restore the other or run `aibridge-proxy ca init --force`")]
    HalfPresent { cert: String, key: String },
    #[error("{0} already exists; pass --force to replace the CA")]
    Exists(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A loaded CA, ready to sign leaves.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate followed by whatever chain the cert file holds; served after each leaf.
    chain: Vec<CertificateDer<'static>>,
    cert_pem: String,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Where the CA lives on disk.
#[derive(Debug, Clone)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateAuthority {
    /// Load the CA, or generate one if neither file exists. Returns whether it was generated.
    pub fn load_or_generate(paths: &CaPaths) -> Result<(Self, bool), CaError> {
        match (paths.cert.exists(), paths.key.exists()) {
            (false, false) => {
                generate_files(paths, false)?;
                Ok((Self::load(paths)?, true))
            }
            (true, true) => Ok((Self::load(paths)?, false)),
            _ => Err(CaError::HalfPresent {
                cert: display(&paths.cert),
                key: display(&paths.key),
            }),
        }
    }

    /// Load and validate a CA from PEM files: RSA or ECDSA key, PKCS#1, PKCS#8 or SEC1.
    pub fn load(paths: &CaPaths) -> Result<Self, CaError> {
        let (cert_name, key_name) = (display(&paths.cert), display(&paths.key));
        files::check_private(&paths.key)?;
        let cert_pem =
            std::fs::read_to_string(&paths.cert).map_err(|source| files::FileError::Io {
                path: cert_name.clone(),
                source,
            })?;
        let key_pem =
            crate::secret::Secret::new(std::fs::read_to_string(&paths.key).map_err(|source| {
                files::FileError::Io {
                    path: key_name.clone(),
                    source,
                }
            })?);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| CaError::NoCertificate(cert_name.clone()))?;
        let ca_der = chain
            .first()
            .ok_or_else(|| CaError::NoCertificate(cert_name.clone()))?;
        let key = load_key_pair(key_pem.expose().as_bytes())
            .ok_or_else(|| CaError::BadKey(key_name.clone()))?;

        let (_, parsed) = x509_parser::parse_x509_certificate(ca_der)
            .map_err(|_| CaError::BadCertificate(cert_name.clone()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Mismatch {
                cert: cert_name,
                key: key_name,
            });
        }
        if !parsed.is_ca() {
            return Err(CaError::NotCa(cert_name));
        }
        let validity = parsed.validity();
        let not_after = validity.not_after.to_datetime();
        let now = OffsetDateTime::now_utc();
        if not_after <= now {
            return Err(CaError::Expired(cert_name, not_after));
        }
        let not_before = validity.not_before.to_datetime();
        if not_before > now + Duration::from_secs(3600) {
            return Err(CaError::NotYetValid(cert_name, not_before));
        }
        if not_after - now < EXPIRY_WARNING {
            tracing::warn!(cert = %cert_name, %not_after, "the CA certificate expires within 30 days; leaves will not outlive it and interception stops when it expires: run `aibridge-proxy ca init --force` and redistribute the certificate");
        }
        let issuer = Issuer::from_ca_cert_der(ca_der, key)
            .map_err(|_| CaError::BadCertificate(cert_name))?;
        let cert_pem = certificates_pem(&chain);
        Ok(CertificateAuthority {
            issuer,
            chain,
            cert_pem,
            not_after,
        })
    }

    /// The CA certificate (and chain) as PEM, re-encoded from the parsed certificates: a cert
    /// file that also holds a key (a combined PEM) never leaks it through `/ca.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Mint a leaf for one host; see [`leaf`] for its shape.
    pub fn mint(
        &self,
        host: &crate::net::target::Host,
        validity: Duration,
    ) -> Result<Leaf, CaError> {
        leaf::mint(&self.issuer, &self.chain, self.not_after, host, validity)
    }
}

/// Generate a fresh ECDSA P-256 CA into `paths`: the key 0600 (created at open), the cert 0644.
pub fn generate_files(paths: &CaPaths, force: bool) -> Result<(), CaError> {
    for path in [&paths.key, &paths.cert] {
        if path.exists() {
            if !force {
                return Err(CaError::Exists(display(path)));
            }
            files::remove_if_exists(path)?;
        }
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "aibridge-proxy");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(leaf::random_serial());
    let cert = params.self_signed(&key)?;
    let key_pem = crate::secret::Secret::new(key.serialize_pem());
    files::write_private(&paths.key, key_pem.expose().as_bytes())?;
    files::write_public(&paths.cert, cert.pem().as_bytes())?;
    Ok(())
}

/// PEM for certificates alone.
fn certificates_pem(chain: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for cert in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Parse any PEM private key and bring it to the PKCS#8 form rcgen reads.
fn load_key_pair(pem: &[u8]) -> Option<KeyPair> {
    let pkcs8 = match PrivateKeyDer::from_pem_slice(pem).ok()? {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => der::pkcs1_to_pkcs8(k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => der::sec1_to_pkcs8(k.secret_sec1_der()).ok()?,
        _ => return None,
    };
    let pkcs8 = crate::secret::Secret::new(pkcs8);
    KeyPair::try_from(&PrivatePkcs8KeyDer::from(pkcs8.expose().as_slice())).ok()
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
