use super::attributes::{Attribute, AttributeType};
use super::integrity::{IntegrityKey, fingerprint_of};
use super::{HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN, MessageType, StunError, TransactionId};

/// What may still be added, RFC 8489 §14.5–14.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Attributes,
    AfterIntegrity,
    AfterIntegritySha256,
    AfterFingerprint,
}

/// Writes one STUN message into a caller-provided buffer, with no allocation.
///
/// Add ordinary attributes first, then optionally MESSAGE-INTEGRITY, then optionally
/// MESSAGE-INTEGRITY-SHA256, then optionally FINGERPRINT; the builder refuses any other
/// order. The header's length field is kept up to date as attributes go in.
///
/// ```
/// use pinhole::stun::{MessageBuilder, MessageType, TransactionId, Message};
/// use pinhole::stun::attributes::Software;
/// let mut buf = [0u8; 128];
/// let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, TransactionId([7; 12]))?;
/// b.add(&Software("pinhole"))?;
/// b.add_fingerprint()?;
/// let bytes = b.finish();
/// let msg = Message::parse(bytes)?;
/// msg.verify_fingerprint()?;
/// # Ok::<(), pinhole::stun::StunError>(())
/// ```
#[derive(Debug)]
pub struct MessageBuilder<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
    stage: Stage,
    padding: u8,
}

impl<'b> MessageBuilder<'b> {
    /// Starts a message of type `kind` with transaction ID `tid` in `buf`.
    #[inline]
    pub fn new(
        buf: &'b mut [u8],
        kind: MessageType,
        tid: TransactionId,
    ) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::BufferTooSmall {
                needed: HEADER_LEN,
                capacity: buf.len(),
            });
        }
        buf[0..2].copy_from_slice(&kind.to_u16().to_be_bytes());
        buf[2..4].fill(0);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(&tid.0);
        Ok(Self {
            buf,
            len: HEADER_LEN,
            tid,
            stage: Stage::Attributes,
            padding: 0,
        })
    }

    /// The transaction ID being written.
    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// Sets the byte used to pad attribute values to 4 bytes (zero by default, as
    /// RFC 8489 §14 asks of senders). Receivers must ignore padding; other values exist to
    /// test that they do (the RFC 5769 vectors pad with spaces).
    pub fn padding_byte(&mut self, byte: u8) -> &mut Self {
        self.padding = byte;
        self
    }

    /// The bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether only the header has been written (never true: kept for API symmetry).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserves room for an attribute with a `value_len`-byte value, writes its header and
    /// the padding, updates the length field, and returns the value's slot, which the
    /// caller must fill completely.
    #[inline]
    fn reserve(&mut self, kind: AttributeType, value_len: usize) -> Result<&mut [u8], StunError> {
        let padded = (value_len + 3) & !3;
        let needed = self.len + 4 + padded;
        let value_len16 = u16::try_from(value_len).map_err(|_| StunError::Oversized {
            len: needed,
            max: MAX_MESSAGE_LEN,
        })?;
        if needed > MAX_MESSAGE_LEN {
            return Err(StunError::Oversized {
                len: needed,
                max: MAX_MESSAGE_LEN,
            });
        }
        if needed > self.buf.len() {
            return Err(StunError::BufferTooSmall {
                needed,
                capacity: self.buf.len(),
            });
        }
        let off = self.len;
        self.buf[off..off + 2].copy_from_slice(&kind.0.to_be_bytes());
        self.buf[off + 2..off + 4].copy_from_slice(&value_len16.to_be_bytes());
        if padded != value_len {
            // Pad the whole last word with one fixed-size store rather than a variable-length
            // fill; the caller writes the value next, over the word's leading bytes.
            self.buf[off + padded..off + 4 + padded].copy_from_slice(&[self.padding; 4]);
        }
        self.len = needed;
        self.write_length();
        Ok(&mut self.buf[off + 4..off + 4 + value_len])
    }

    #[inline]
    fn write_length(&mut self) {
        // `len` never exceeds MAX_MESSAGE_LEN, so the body length fits 16 bits.
        let body = u16::try_from(self.len - HEADER_LEN).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
    }

    #[inline]
    fn check_order(&self, kind: AttributeType, max: Stage) -> Result<(), StunError> {
        if self.stage > max {
            return Err(StunError::AttributeOrder { attr: kind.0 });
        }
        Ok(())
    }

    /// Appends a typed attribute.
    #[inline]
    pub fn add<'a, A: Attribute<'a>>(&mut self, attr: &A) -> Result<&mut Self, StunError> {
        self.check_order(A::TYPE, Stage::Attributes)?;
        let tid = self.tid;
        let slot = self.reserve(A::TYPE, attr.encoded_len())?;
        attr.encode(slot, &tid);
        Ok(self)
    }

    /// Appends an attribute from its raw value (for types pinhole does not know).
    #[inline]
    pub fn add_raw(&mut self, kind: AttributeType, value: &[u8]) -> Result<&mut Self, StunError> {
        self.check_order(kind, Stage::Attributes)?;
        self.reserve(kind, value.len())?.copy_from_slice(value);
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 over the message so far, RFC 8489 §14.5).
    #[inline]
    pub fn add_message_integrity(&mut self, key: &IntegrityKey) -> Result<&mut Self, StunError> {
        self.check_order(AttributeType::MESSAGE_INTEGRITY, Stage::Attributes)?;
        let off = self.len;
        self.reserve(AttributeType::MESSAGE_INTEGRITY, 20)?;
        // `reserve` already set the length field to count the new attribute.
        let mac = key.sha1_mac(&self.buf[..off], [self.buf[2], self.buf[3]]);
        self.buf[off + 4..off + 24].copy_from_slice(&mac);
        self.stage = Stage::AfterIntegrity;
        Ok(self)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, the full 32 bytes, RFC 8489 §14.6).
    #[inline]
    pub fn add_message_integrity_sha256(
        &mut self,
        key: &IntegrityKey,
    ) -> Result<&mut Self, StunError> {
        self.check_order(
            AttributeType::MESSAGE_INTEGRITY_SHA256,
            Stage::AfterIntegrity,
        )?;
        let off = self.len;
        self.reserve(AttributeType::MESSAGE_INTEGRITY_SHA256, 32)?;
        let mac = key.sha256_mac(&self.buf[..off], [self.buf[2], self.buf[3]]);
        self.buf[off + 4..off + 36].copy_from_slice(&mac);
        self.stage = Stage::AfterIntegritySha256;
        Ok(self)
    }

    /// Appends FINGERPRINT (RFC 8489 §14.7); nothing may follow it.
    #[inline]
    pub fn add_fingerprint(&mut self) -> Result<&mut Self, StunError> {
        self.check_order(AttributeType::FINGERPRINT, Stage::AfterIntegritySha256)?;
        let off = self.len;
        self.reserve(AttributeType::FINGERPRINT, 4)?;
        let crc = fingerprint_of(&self.buf[..off]);
        self.buf[off + 4..off + 8].copy_from_slice(&crc.to_be_bytes());
        self.stage = Stage::AfterFingerprint;
        Ok(self)
    }

    /// The finished message.
    #[inline]
    pub fn finish(self) -> &'b [u8] {
        &self.buf[..self.len]
    }
}
