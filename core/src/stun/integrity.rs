//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.

use std::borrow::Cow;

use md5::Md5;
use sha1::Sha1;
use sha1::digest::generic_array::GenericArray;
use sha1::digest::typenum::U64;
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
/// the hashing of its own bytes. Clone it freely: cloning copies four small hash states. The
/// `Debug` output never shows key material.
#[derive(Clone)]
pub struct IntegrityKey {
    sha1: PreparedHmac<5>,
    sha256: PreparedHmac<8>,
}

impl std::fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

impl IntegrityKey {
    /// A key from raw key bytes (already derived).
    pub fn from_bytes(key: &[u8]) -> Self {
        // RFC 2104 §2: a key longer than the block is replaced by its hash.
        let mut k1 = [0u8; BLOCK_LEN];
        let mut k256 = [0u8; BLOCK_LEN];
        if key.len() > BLOCK_LEN {
            k1[..20].copy_from_slice(&Sha1::digest(key));
            k256[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k1[..key.len()].copy_from_slice(key);
            k256[..key.len()].copy_from_slice(key);
        }
        Self {
            sha1: PreparedHmac::new(sha1::compress, SHA1_IV, &k1),
            sha256: PreparedHmac::new(sha2::compress256, SHA256_IV, &k256),
        }
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

    /// HMAC-SHA1 over `msg` with its length field (bytes 2..4) replaced by `length`: STUN
    /// authenticates the message up to the integrity attribute, with the length field
    /// counting up to the end of that attribute. `msg` holds at least a STUN header.
    #[inline]
    pub(crate) fn sha1_mac(&self, msg: &[u8], length: [u8; 2]) -> [u8; 20] {
        be_bytes(self.sha1.mac(sha1::compress, msg, length))
    }

    /// HMAC-SHA256, as [`IntegrityKey::sha1_mac`].
    #[inline]
    pub(crate) fn sha256_mac(&self, msg: &[u8], length: [u8; 2]) -> [u8; 32] {
        be_bytes(self.sha256.mac(sha2::compress256, msg, length))
    }
}

/// Input block of SHA-1 and SHA-256: both hash 64-byte blocks.
type Block = GenericArray<u8, U64>;
const BLOCK_LEN: usize = 64;
/// FIPS 180-4 §5.3.1.
const SHA1_IV: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];
/// FIPS 180-4 §5.3.3.
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// HMAC (RFC 2104) over a hash with 64-byte blocks, 32-bit big-endian state words and
/// MD-style padding (SHA-1, SHA-256), with the hash states after the inner and outer key
/// pads computed once.
///
/// Each MAC then drives the compression function directly: the blocks of a typical STUN
/// message go through it in one call straight from the caller's buffer (or a small stack
/// copy for the first and last blocks), with no hasher to clone and no block buffer to
/// manage. For a 100-byte message that is three compressions and little else.
#[derive(Clone)]
struct PreparedHmac<const W: usize> {
    inner: [u32; W],
    outer: [u32; W],
}

impl<const W: usize> PreparedHmac<W> {
    /// Writes the STUN length field into a first block, unless it already holds it (as
    /// when building, where `reserve` has set it).
    fn set_length(block: &mut Block, length: [u8; 2]) {
        if block[2..4] != length {
            block[2..4].copy_from_slice(&length);
        }
    }

    /// Pads from a key already reduced to at most one block (zero-filled).
    fn new(
        compress: impl Fn(&mut [u32; W], &[Block]),
        iv: [u32; W],
        key: &[u8; BLOCK_LEN],
    ) -> Self {
        let pad = |x: u8| {
            let mut state = iv;
            compress(&mut state, &[Block::from(key.map(|b| b ^ x))]);
            state
        };
        Self {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The MAC of `msg` with bytes 2..4 (the STUN length field) replaced by `length`, as
    /// hash state words. `msg` holds at least 4 bytes.
    fn mac(
        &self,
        compress: impl Fn(&mut [u32; W], &[Block]),
        msg: &[u8],
        length: [u8; 2],
    ) -> [u32; W] {
        let len = msg.len();
        let mut state = self.inner;
        // The first block (whose length field may change) and the padded tail are
        // assembled here; whole blocks in between are hashed in place.
        let mut buf: [Block; 3] = Default::default();
        // `start`: the first block of `buf` still to hash; `tail`: the block where the
        // final partial block (possibly empty) goes.
        let (start, tail) = if len < BLOCK_LEN {
            buf[0][..len].copy_from_slice(msg);
            (0, 0)
        } else {
            let (first, rest) = msg.split_at(BLOCK_LEN);
            buf[0].copy_from_slice(first);
            let mut blocks = rest.chunks_exact(BLOCK_LEN);
            let start = if blocks.len() == 0 {
                0
            } else {
                Self::set_length(&mut buf[0], length);
                compress(&mut state, &buf[..1]);
                for block in &mut blocks {
                    compress(&mut state, std::slice::from_ref(Block::from_slice(block)));
                }
                1
            };
            let remainder = blocks.remainder();
            buf[1][..remainder.len()].copy_from_slice(remainder);
            (start, 1)
        };
        if start == 0 {
            Self::set_length(&mut buf[0], length);
        }
        // MD padding: 0x80, zeros, then the bit length of everything hashed (the key block
        // included) as a 64-bit big-endian integer in the last 8 bytes of a block.
        let partial = len % BLOCK_LEN;
        buf[tail][partial] = 0x80;
        let last = if partial < BLOCK_LEN - 8 {
            tail
        } else {
            tail + 1
        };
        let bits = ((BLOCK_LEN + len) as u64) * 8;
        buf[last][BLOCK_LEN - 8..].copy_from_slice(&bits.to_be_bytes());
        compress(&mut state, &buf[start..=last]);

        // Outer hash: the inner digest, padded, after the outer key block.
        let mut block = Block::default();
        for (out, word) in block.chunks_exact_mut(4).zip(state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        block[4 * W] = 0x80;
        let bits = ((BLOCK_LEN + 4 * W) as u64) * 8;
        block[BLOCK_LEN - 8..].copy_from_slice(&bits.to_be_bytes());
        let mut state = self.outer;
        compress(&mut state, std::slice::from_ref(&block));
        state
    }
}

/// Hash state words as the big-endian digest bytes (`N` is `4 * W`).
fn be_bytes<const W: usize, const N: usize>(state: [u32; W]) -> [u8; N] {
    debug_assert_eq!(N, 4 * W);
    let mut out = [0u8; N];
    for (o, word) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&word.to_be_bytes());
    }
    out
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
#[inline]
pub(crate) fn fingerprint_of(data: &[u8]) -> u32 {
    crc32fast::hash(data) ^ FINGERPRINT_XOR
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    fn reference<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().to_vec()
    }

    /// RFC 2202 §3 test cases 1 and 6 (a key longer than the block, data over a block).
    #[test]
    fn rfc2202_hmac_sha1() {
        let key = IntegrityKey::from_bytes(&[0x0b; 20]);
        assert_eq!(
            key.sha1_mac(b"Hi There", *b" T"),
            [
                0xb6, 0x17, 0x31, 0x86, 0x55, 0x05, 0x72, 0x64, 0xe2, 0x8b, 0xc0, 0xb6, 0xfb, 0x37,
                0x8c, 0x8e, 0xf1, 0x46, 0xbe, 0x00
            ]
        );
        let key = IntegrityKey::from_bytes(&[0xaa; 80]);
        let msg = b"Test Using Larger Than Block-Size Key - Hash Key First";
        assert_eq!(
            key.sha1_mac(msg, [msg[2], msg[3]]),
            [
                0xaa, 0x4a, 0xe5, 0xe1, 0x52, 0x72, 0xd0, 0x0e, 0x95, 0x70, 0x56, 0x37, 0xce, 0x8a,
                0x3b, 0x55, 0xed, 0x40, 0x21, 0x12
            ]
        );
    }

    /// Every message length across the block and padding boundaries, and keys shorter
    /// than, equal to and longer than a block, against the `hmac` crate.
    #[test]
    fn matches_reference_hmac() {
        let data: Vec<u8> = (0..400u32).map(|i| (i * 37 + 11) as u8).collect();
        for key_len in [0, 1, 16, 20, 32, 63, 64, 65, 100] {
            let key_bytes = &data[200..200 + key_len];
            let key = IntegrityKey::from_bytes(key_bytes);
            for len in 4..=300 {
                let msg = &data[..len];
                // With the length field kept, and replaced.
                for length in [[msg[2], msg[3]], [0xab, 0xcd]] {
                    let mut expected = msg.to_vec();
                    expected[2..4].copy_from_slice(&length);
                    assert_eq!(
                        key.sha1_mac(msg, length).to_vec(),
                        reference::<Hmac<Sha1>>(key_bytes, &expected),
                        "SHA-1, key {key_len}, message {len}"
                    );
                    assert_eq!(
                        key.sha256_mac(msg, length).to_vec(),
                        reference::<Hmac<Sha256>>(key_bytes, &expected),
                        "SHA-256, key {key_len}, message {len}"
                    );
                }
            }
        }
    }
}
