//! Re-wrap PKCS#1 (RSA) and SEC1 (EC) private keys as PKCS#8.
//!
//! rcgen on the `ring` backend reads only PKCS#8, while operators bring CA keys in whatever form
//! OpenSSL wrote them (`BEGIN RSA PRIVATE KEY`, `BEGIN EC PRIVATE KEY`). The wrapping is a fixed
//! ASN.1 envelope, so it is done here rather than by pulling in another crypto stack.

/// rsaEncryption, 1.2.840.113549.1.1.1, followed by NULL parameters.
const RSA_ALGORITHM: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// id-ecPublicKey, 1.2.840.10045.2.1.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const CONTEXT_0: u8 = 0xa0;

/// Why a key could not be re-wrapped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed private key: {0}")]
pub struct DerError(&'static str);

/// PKCS#8 PrivateKeyInfo around a PKCS#1 RSAPrivateKey.
pub fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    private_key_info(RSA_ALGORITHM, pkcs1)
}

/// PKCS#8 PrivateKeyInfo around a SEC1 ECPrivateKey; the curve comes from the key's own
/// `parameters` field, which OpenSSL always writes.
pub fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, DerError> {
    let curve = sec1_curve_oid(sec1)?;
    let mut algorithm = EC_PUBLIC_KEY_OID.to_vec();
    algorithm.extend_from_slice(curve);
    Ok(private_key_info(&algorithm, sec1))
}

/// SEQUENCE { INTEGER 0, SEQUENCE { algorithm }, OCTET STRING { key } }
fn private_key_info(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![INTEGER, 0x01, 0x00];
    body.extend(tlv(SEQUENCE, algorithm));
    body.extend(tlv(OCTET_STRING, key));
    tlv(SEQUENCE, &body)
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}

/// One DER element: (tag, whole element, value, what follows).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Read one TLV.
fn read_tlv(input: &[u8]) -> Result<Tlv<'_>, DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("truncated"))?;
    let (&first, rest) = rest.split_first().ok_or(DerError("truncated"))?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("bad length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(DerError("truncated"));
    }
    let header = input.len() - rest.len();
    Ok((tag, &input[..header + len], &rest[..len], &rest[len..]))
}

/// ECPrivateKey ::= SEQUENCE { version INTEGER, privateKey OCTET STRING,
///                              parameters [0] OID OPTIONAL, publicKey [1] OPTIONAL }
fn sec1_curve_oid(sec1: &[u8]) -> Result<&[u8], DerError> {
    let (tag, _, body, _) = read_tlv(sec1)?;
    if tag != SEQUENCE {
        return Err(DerError("EC key is not a sequence"));
    }
    let (tag, _, _, rest) = read_tlv(body)?;
    if tag != INTEGER {
        return Err(DerError("EC key has no version"));
    }
    let (tag, _, _, rest) = read_tlv(rest)?;
    if tag != OCTET_STRING {
        return Err(DerError("EC key has no private key"));
    }
    let (tag, _, params, _) = read_tlv(rest)?;
    if tag != CONTEXT_0 {
        return Err(DerError("EC key does not name its curve"));
    }
    let (tag, oid, _, _) = read_tlv(params)?;
    if tag != 0x06 {
        return Err(DerError("EC key curve is not an OID"));
    }
    Ok(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_round_trip() {
        let value = vec![7u8; 300];
        let encoded = tlv(OCTET_STRING, &value);
        assert_eq!(&encoded[..4], &[OCTET_STRING, 0x82, 0x01, 0x2c]);
        let (tag, whole, body, rest) = read_tlv(&encoded).unwrap();
        assert_eq!(
            (tag, whole.len(), body, rest.len()),
            (OCTET_STRING, 304, &value[..], 0)
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for input in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x05, 0x02],
            &[0x04, 0x00],
        ] {
            assert!(sec1_to_pkcs8(input).is_err());
        }
    }
}
