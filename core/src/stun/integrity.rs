//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{FINGERPRINT_XOR, StunError};

/// The password algorithm for long-term credentials, RFC 8489 §18.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5 (value 0x0001), the RFC 5389 key derivation.
    Md5,
    /// SHA-256 (value 0x0002).
    Sha256,
}

impl PasswordAlgorithm {
    /// The registered number, RFC 8489 §18.5.
    pub const fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    /// The algorithm with the registered number `n`, if pinhole knows it.
    pub const fn from_number(n: u16) -> Option<Self> {
        match n {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }
}

/// Keys for MESSAGE-INTEGRITY (HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256),
/// prepared once.
///
/// HMAC's inner and outer pads are hashed when the key is made, so each message costs only
/// the hashing of its own bytes. Clone it freely: cloning copies two hash states. The
/// `Debug` output never shows key material.
#[derive(Clone)]
pub struct IntegrityKey {
    sha1: Hmac<Sha1>,
    sha256: Hmac<Sha256>,
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl IntegrityKey {
    /// A key from raw key bytes (already derived).
    pub fn from_bytes(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so these constructors cannot fail.
        let sha1 = <Hmac<Sha1> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        let sha256 = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        Self { sha1, sha256 }
    }

    /// Short-term credentials (RFC 8489 §9.1.2): the key is OpaqueString(password).
    pub fn short_term(password: &str) -> Result<Self, StunError> {
        let p = opaque_string(password)?;
        Ok(Self::from_bytes(p.as_bytes()))
    }

    /// Long-term credentials (RFC 8489 §9.2.2):
    /// `H(username ":" OpaqueString(realm) ":" OpaqueString(password))`, where H is MD5 or
    /// SHA-256 as the password algorithm says.
    pub fn long_term(
        username: &str,
        realm: &str,
        password: &str,
        algorithm: PasswordAlgorithm,
    ) -> Result<Self, StunError> {
        let realm = opaque_string(realm)?;
        let password = opaque_string(password)?;
        let parts: [&[u8]; 5] = [
            username.as_bytes(),
            b":",
            realm.as_bytes(),
            b":",
            password.as_bytes(),
        ];
        Ok(match algorithm {
            PasswordAlgorithm::Md5 => {
                let mut h = Md5::new();
                parts.iter().for_each(|p| h.update(p));
                Self::from_bytes(&h.finalize())
            }
            PasswordAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                Self::from_bytes(&h.finalize())
            }
        })
    }

    pub(crate) fn sha1_parts(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = self.sha1.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    pub(crate) fn sha256_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.sha256.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// USERHASH, RFC 8489 §14.4: `SHA-256(OpaqueString(username) ":" OpaqueString(realm))`.
pub fn userhash(username: &str, realm: &str) -> Result<[u8; 32], StunError> {
    let u = opaque_string(username)?;
    let r = opaque_string(realm)?;
    let mut h = Sha256::new();
    h.update(u.as_bytes());
    h.update(b":");
    h.update(r.as_bytes());
    Ok(h.finalize().into())
}

/// The OpaqueString profile of PRECIS (RFC 8265 §4.2) as STUN uses it for passwords and
/// realms: non-ASCII spaces map to U+0020, the result is NFC-normalised, and it must be
/// non-empty and free of control characters. ASCII input without controls is returned as is.
pub fn opaque_string(s: &str) -> Result<Cow<'_, str>, StunError> {
    if s.is_empty() {
        return Err(StunError::BadCredential("empty"));
    }
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(Cow::Borrowed(s));
    }
    use unicode_normalization::UnicodeNormalization;
    let mapped: String = s
        .chars()
        .map(|c| if is_non_ascii_space(c) { ' ' } else { c })
        .nfc()
        .collect();
    if mapped.chars().any(char::is_control) {
        return Err(StunError::BadCredential("control character"));
    }
    Ok(Cow::Owned(mapped))
}

/// Unicode general category Zs, minus U+0020.
fn is_non_ascii_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// CRC-32 (ISO HDLC) of `data` XOR 0x5354554e, RFC 8489 §14.7.
pub(crate) fn fingerprint_of(data: &[u8]) -> u32 {
    crc32fast::hash(data) ^ FINGERPRINT_XOR
}
