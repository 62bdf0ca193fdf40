use super::attributes::{Attribute, AttributeType};
use super::integrity::{IntegrityKey, fingerprint_of};
use super::{
    Class, HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN, MessageType, Method, StunError, TransactionId,
};

/// A checked, zero-copy view of one STUN message.
///
/// [`Message::parse`] validates the header and walks the attributes once, recording where
/// MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT sit. After that, reading
/// attributes cannot fail on layout, only on the content of a value.
///
/// Attributes that follow MESSAGE-INTEGRITY (other than MESSAGE-INTEGRITY-SHA256 and
/// FINGERPRINT) are ignored by the getters, as RFC 8489 §14.5 requires: they are not
/// covered by the integrity check.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    /// Offset of the first attribute not covered by integrity (end of MI / MI-SHA256
    /// region start), or the end of the message.
    covered_end: usize,
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
    unknown_required: bool,
}

/// One attribute as it sits in the message: its type and its value (without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// The attribute type.
    pub kind: AttributeType,
    /// The value bytes, padding excluded.
    pub value: &'a [u8],
    /// Offset of the attribute header within the message.
    pub offset: usize,
}

impl<'a> Message<'a> {
    /// Validates `buf` as exactly one STUN message.
    ///
    /// Checks, in order: header size, the two leading zero bits, the magic cookie, the
    /// length alignment, the length against the buffer, and every attribute's bounds.
    /// Padding bytes are ignored, as RFC 8489 §14 requires of receivers.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, StunError> {
        Self::parse_inner(buf, false)
    }

    /// Like [`Message::parse`], and also rejects non-zero padding. RFC 8489 §14 tells
    /// receivers to ignore padding values, so use this only where a peer is known to pad
    /// with zeros (for example to harden a server against sloppy clients).
    #[inline]
    pub fn parse_strict(buf: &'a [u8]) -> Result<Self, StunError> {
        Self::parse_inner(buf, true)
    }

    #[inline]
    fn parse_inner(buf: &'a [u8], strict_padding: bool) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::TruncatedHeader { len: buf.len() });
        }
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(StunError::Oversized {
                len: buf.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        if buf[0] & 0xC0 != 0 {
            return Err(StunError::NotStun);
        }
        let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(StunError::BadMagicCookie(cookie));
        }
        let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if declared % 4 != 0 {
            return Err(StunError::UnalignedLength(declared));
        }
        let actual = buf.len() - HEADER_LEN;
        if declared != actual {
            return Err(StunError::LengthMismatch { declared, actual });
        }

        let mut msg = Message {
            buf,
            covered_end: buf.len(),
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
            unknown_required: false,
        };
        let end = buf.len();
        let mut off = HEADER_LEN;
        while off < end {
            if end - off < 4 {
                return Err(StunError::AttributeOverflow {
                    attr: 0,
                    offset: off,
                });
            }
            let kind = u16::from_be_bytes([buf[off], buf[off + 1]]);
            let len = usize::from(u16::from_be_bytes([buf[off + 2], buf[off + 3]]));
            let value_end = off + 4 + len;
            if value_end > end {
                return Err(StunError::AttributeOverflow {
                    attr: kind,
                    offset: off,
                });
            }
            // `end` is a multiple of 4 from the header, so the padded end fits too.
            let padded_end = (value_end + 3) & !3;
            if strict_padding && buf[value_end..padded_end].iter().any(|&b| b != 0) {
                return Err(StunError::BadPadding { attr: kind });
            }
            if msg.fingerprint.is_some() {
                return Err(StunError::AttributeAfterFingerprint { attr: kind });
            }
            match AttributeType(kind) {
                AttributeType::FINGERPRINT => msg.fingerprint = Some(off),
                AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                    if msg.integrity_sha256.is_none() {
                        msg.integrity_sha256 = Some(off);
                        msg.covered_end = msg.covered_end.min(off);
                    }
                }
                AttributeType::MESSAGE_INTEGRITY => {
                    // Only meaningful before MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
                    if msg.integrity.is_none() && msg.integrity_sha256.is_none() {
                        msg.integrity = Some(off);
                        msg.covered_end = off;
                    }
                }
                t => {
                    if off < msg.covered_end && t.is_comprehension_required() && !t.is_known() {
                        msg.unknown_required = true;
                    }
                }
            }
            off = padded_end;
        }
        Ok(msg)
    }

    /// The whole message.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The message type.
    #[inline]
    pub fn message_type(&self) -> MessageType {
        MessageType::from_u16(u16::from_be_bytes([self.buf[0], self.buf[1]]))
    }

    /// The class (request, indication, success or error response).
    #[inline]
    pub fn class(&self) -> Class {
        self.message_type().class
    }

    /// The method.
    #[inline]
    pub fn method(&self) -> Method {
        self.message_type().method
    }

    /// The transaction ID.
    #[inline]
    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.buf[8..20]);
        TransactionId(id)
    }

    /// All attributes in order, including those after MESSAGE-INTEGRITY.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            off: HEADER_LEN,
        }
    }

    /// The first attribute of type `kind` that the getters consider (see the type docs).
    #[inline]
    pub fn raw(&self, kind: AttributeType) -> Option<RawAttribute<'a>> {
        match kind {
            AttributeType::MESSAGE_INTEGRITY => self.integrity.map(|o| self.raw_at(o)),
            AttributeType::MESSAGE_INTEGRITY_SHA256 => {
                self.integrity_sha256.map(|o| self.raw_at(o))
            }
            AttributeType::FINGERPRINT => self.fingerprint.map(|o| self.raw_at(o)),
            _ => Attributes {
                buf: &self.buf[..self.covered_end],
                off: HEADER_LEN,
            }
            .find(|a| a.kind == kind),
        }
    }

    #[inline]
    fn raw_at(&self, off: usize) -> RawAttribute<'a> {
        let kind = u16::from_be_bytes([self.buf[off], self.buf[off + 1]]);
        let len = usize::from(u16::from_be_bytes([self.buf[off + 2], self.buf[off + 3]]));
        RawAttribute {
            kind: AttributeType(kind),
            value: &self.buf[off + 4..off + 4 + len],
            offset: off,
        }
    }

    /// Reads the first attribute of type `A`: `Ok(None)` when absent, an error when its
    /// value is malformed.
    #[inline]
    pub fn get<A: Attribute<'a>>(&self) -> Result<Option<A>, StunError> {
        match self.raw(A::TYPE) {
            None => Ok(None),
            Some(raw) => A::decode(raw.value, &self.transaction_id()).map(Some),
        }
    }

    /// Whether the message holds an attribute of type `kind` (among those the getters see).
    #[inline]
    pub fn has(&self, kind: AttributeType) -> bool {
        self.raw(kind).is_some()
    }

    /// Whether some comprehension-required attribute (type below 0x8000) is unknown to
    /// pinhole. A server answers such a request with 420 (RFC 8489 §6.3.1).
    pub fn has_unknown_comprehension_required(&self) -> bool {
        self.unknown_required
    }

    /// The unknown comprehension-required attribute types, for an UNKNOWN-ATTRIBUTES
    /// attribute in a 420 response.
    pub fn unknown_comprehension_required(&self) -> impl Iterator<Item = AttributeType> + 'a {
        let covered = &self.buf[..self.covered_end];
        Attributes {
            buf: covered,
            off: HEADER_LEN,
        }
        .map(|a| a.kind)
        .filter(|t| t.is_comprehension_required() && !t.is_known())
    }

    /// Whether the message carries MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256.
    #[inline]
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some() || self.integrity_sha256.is_some()
    }

    /// Whether the message carries FINGERPRINT.
    #[inline]
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 when present, otherwise MESSAGE-INTEGRITY
    /// (RFC 8489 §§14.5–14.6), in constant time.
    #[inline]
    pub fn verify_integrity(&self, key: &IntegrityKey) -> Result<(), StunError> {
        if let Some(off) = self.integrity_sha256 {
            let raw = self.raw_at(off);
            let len = raw.value.len();
            // RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4.
            if !(16..=32).contains(&len) || len % 4 != 0 {
                return Err(StunError::InvalidAttribute {
                    attr: AttributeType::MESSAGE_INTEGRITY_SHA256.0,
                    reason: "length must be 16..=32 and a multiple of 4",
                });
            }
            let mac = key.sha256_mac(&self.buf[..off], Self::integrity_length(off, len));
            return ct_eq(&mac[..len], raw.value);
        }
        if let Some(off) = self.integrity {
            let raw = self.raw_at(off);
            if raw.value.len() != 20 {
                return Err(StunError::InvalidAttribute {
                    attr: AttributeType::MESSAGE_INTEGRITY.0,
                    reason: "length must be 20",
                });
            }
            let mac = key.sha1_mac(&self.buf[..off], Self::integrity_length(off, 20));
            return ct_eq(&mac, raw.value);
        }
        Err(StunError::MissingIntegrity)
    }

    /// The adjusted length field for an integrity attribute at `off` with a
    /// `value_len`-byte value: the length the message would have if it ended there.
    #[inline]
    fn integrity_length(off: usize, value_len: usize) -> [u8; 2] {
        // `off + 4 + value_len` lies within the message, at most MAX_MESSAGE_LEN.
        u16::try_from(off + 4 + value_len - HEADER_LEN)
            .unwrap_or(u16::MAX)
            .to_be_bytes()
    }

    /// Checks FINGERPRINT (RFC 8489 §14.7).
    #[inline]
    pub fn verify_fingerprint(&self) -> Result<(), StunError> {
        let off = self.fingerprint.ok_or(StunError::MissingFingerprint)?;
        let raw = self.raw_at(off);
        if raw.value.len() != 4 {
            return Err(StunError::InvalidAttribute {
                attr: AttributeType::FINGERPRINT.0,
                reason: "length must be 4",
            });
        }
        // FINGERPRINT is last, so the length field already covers it.
        let expected = fingerprint_of(&self.buf[..off]);
        if raw.value == expected.to_be_bytes() {
            Ok(())
        } else {
            Err(StunError::FingerprintMismatch)
        }
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = f.debug_struct("Message");
        l.field("type", &self.message_type())
            .field("transaction_id", &self.transaction_id())
            .field("len", &self.buf.len());
        l.finish_non_exhaustive()
    }
}

/// Compares a computed MAC with the received one in time independent of where they
/// differ: the lengths are public, the contents are folded into one difference byte
/// without branching, and only that byte goes through `subtle`'s optimisation barrier.
/// (`subtle`'s slice comparison puts a barrier on every byte, several times slower for
/// the same guarantee.)
#[inline]
fn ct_eq(computed: &[u8], received: &[u8]) -> Result<(), StunError> {
    use subtle::ConstantTimeEq;
    if computed.len() != received.len() {
        return Err(StunError::IntegrityMismatch);
    }
    let diff = computed
        .iter()
        .zip(received)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if bool::from(diff.ct_eq(&0)) {
        Ok(())
    } else {
        Err(StunError::IntegrityMismatch)
    }
}

/// Iterator over the attributes of a validated message.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let off = self.off;
        let hdr = self.buf.get(off..off + 4)?;
        let kind = u16::from_be_bytes([hdr[0], hdr[1]]);
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let value = self.buf.get(off + 4..off + 4 + len)?;
        self.off = (off + 4 + len + 3) & !3;
        Some(RawAttribute {
            kind: AttributeType(kind),
            value,
            offset: off,
        })
    }
}
