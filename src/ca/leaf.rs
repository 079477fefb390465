//! One leaf certificate for one host.
//!
//! Shape (SPEC §3): ECDSA P-256, exactly one SAN (DNS, or IP for literals) so that no client
//! coalesces HTTP/2 connections across hosts, CN = host, serverAuth only, not a CA, valid from an
//! hour ago (clock skew) to the earlier of now + validity and the CA's own expiry.

use crate::net::target::Host;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::time::Duration;
use time::OffsetDateTime;

use super::CaError;

/// A minted leaf: the chain to serve (leaf first) and its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: OffsetDateTime,
}

const CLOCK_SKEW: Duration = Duration::from_secs(3600);

pub(super) fn mint(
    issuer: &Issuer<'static, KeyPair>,
    ca_chain: &[CertificateDer<'static>],
    ca_not_after: OffsetDateTime,
    host: &Host,
    validity: Duration,
) -> Result<Leaf, CaError> {
    let now = OffsetDateTime::now_utc();
    if ca_not_after <= now {
        // The CA expired while running: a leaf signed now would fail every client's check.
        return Err(CaError::ExpiredWhileRunning(ca_not_after));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let name = match host {
        Host::Domain(d) => d.clone(),
        Host::Ip(ip) => ip.to_string(),
    };
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![match host {
        Host::Domain(d) => SanType::DnsName(d.clone().try_into()?),
        Host::Ip(ip) => SanType::IpAddress(*ip),
    }];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - CLOCK_SKEW;
    params.not_after = (now + validity).min(ca_not_after);
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, issuer)?;
    let mut chain = Vec::with_capacity(1 + ca_chain.len());
    chain.push(cert.der().clone());
    chain.extend(ca_chain.iter().cloned());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(Leaf {
        chain,
        key,
        not_after: params.not_after,
    })
}

/// A random positive 128-bit serial (RFC 5280 allows up to 20 octets).
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // getrandom fails only if the OS has no entropy source at all; a fixed serial is still a
    // valid certificate, so fall back rather than fail the handshake.
    let _ = getrandom::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
