//! STUN, RFC 8489.
//!
//! - [`Message`] is a zero-copy, checked view over a received datagram: one pass validates
//!   the header and the attribute layout, after which typed getters ([`Message::get`]) and
//!   iteration ([`Message::attributes`]) never fail on layout.
//! - [`MessageBuilder`] writes a message into a caller-provided buffer: no allocation.
//! - [`IntegrityKey`] holds HMAC keys prepared once (short-term and long-term credentials,
//!   MD5 and SHA-256 password algorithms); [`Message::verify_integrity`] and
//!   [`Message::verify_fingerprint`] check a received message.
//! - [`StunClient`] runs client transactions (RFC 8489 §6.2.1 retransmission) sans-IO.
//! - `StunServer` (feature `server`) answers Binding requests, with the RFC 5780
//!   extensions when it has two addresses.
//!
//! Every attribute registered by RFC 8489, RFC 5780, RFC 8445 and RFC 8656 has a typed
//! representation in [`attributes`].

pub mod attributes;
mod builder;
mod client;
mod integrity;
mod message;
#[cfg(any(test, feature = "server"))]
mod server;
mod uri;

pub use attributes::{Attribute, AttributeType};
pub use builder::MessageBuilder;
pub use client::{ClientConfig, ExpectFrom, Request, StunClient, StunResponse, TransactionEvent};
pub use integrity::{IntegrityKey, PasswordAlgorithm, opaque_string, userhash};
pub use message::{Attributes, Message, RawAttribute};
#[cfg(any(test, feature = "server"))]
pub use server::{DEFAULT_RATE_LIMIT, ServerConfig, StunServer};
pub use uri::{StunUri, UriError};

/// The magic cookie, RFC 8489 §5.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the fixed header, RFC 8489 §5.
pub const HEADER_LEN: usize = 20;
/// The largest message the 16-bit length field can describe.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 0xFFFC;
/// The XOR applied to the CRC-32 of a FINGERPRINT attribute, RFC 8489 §14.7.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// The default port for STUN and TURN over UDP and TCP, RFC 8489 §9.
pub const DEFAULT_PORT: u16 = 3478;
/// The default port for STUN and TURN over TLS, RFC 8489 §9.
pub const DEFAULT_TLS_PORT: u16 = 5349;

/// Errors from parsing, building, authenticating or running STUN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Fewer than 20 bytes: no STUN header.
    #[error("truncated header: {len} bytes, need 20")]
    TruncatedHeader {
        /// Bytes available.
        len: usize,
    },
    /// The two most significant bits of the first byte are not zero.
    #[error("not a STUN message (first two bits set)")]
    NotStun,
    /// The magic cookie is not 0x2112A442.
    #[error("bad magic cookie {0:#010x}")]
    BadMagicCookie(u32),
    /// The length field is not a multiple of 4 (RFC 8489 §5).
    #[error("message length {0} is not a multiple of 4")]
    UnalignedLength(usize),
    /// The buffer does not hold exactly the header plus the declared length.
    #[error("message length {declared} does not match the {actual} bytes after the header")]
    LengthMismatch {
        /// The length field.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// The buffer is longer than any STUN message can be.
    #[error("oversized: {len} bytes, a STUN message holds at most {max}")]
    Oversized {
        /// The size of the input.
        len: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// An attribute's header or value runs past the end of the message.
    #[error("attribute {attr:#06x} at offset {offset} overflows the message")]
    AttributeOverflow {
        /// The attribute type (0 when even the attribute header is cut).
        attr: u16,
        /// Where the attribute starts.
        offset: usize,
    },
    /// Non-zero padding after an attribute value (only [`Message::parse_strict`]).
    #[error("attribute {attr:#06x} has non-zero padding")]
    BadPadding {
        /// The attribute type.
        attr: u16,
    },
    /// An attribute follows FINGERPRINT, which must be last (RFC 8489 §14.7).
    #[error("attribute {attr:#06x} follows FINGERPRINT")]
    AttributeAfterFingerprint {
        /// The attribute type.
        attr: u16,
    },
    /// An address attribute has an unknown family or a length that does not fit it.
    #[error("attribute {attr:#06x}: bad address family {family:#04x} or length")]
    BadAddressFamily {
        /// The attribute type.
        attr: u16,
        /// The family byte.
        family: u8,
    },
    /// An attribute value is malformed for its type.
    #[error("attribute {attr:#06x} is malformed: {reason}")]
    InvalidAttribute {
        /// The attribute type.
        attr: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// The message has no MESSAGE-INTEGRITY (or -SHA256) attribute.
    #[error("no MESSAGE-INTEGRITY")]
    MissingIntegrity,
    /// MESSAGE-INTEGRITY (or -SHA256) does not match.
    #[error("MESSAGE-INTEGRITY does not match")]
    IntegrityMismatch,
    /// The message has no FINGERPRINT attribute.
    #[error("no FINGERPRINT")]
    MissingFingerprint,
    /// FINGERPRINT does not match.
    #[error("FINGERPRINT does not match")]
    FingerprintMismatch,
    /// The output buffer cannot hold the message.
    #[error("buffer too small: need {needed} bytes, have {capacity}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// Attributes were added in an order RFC 8489 forbids (after FINGERPRINT, or a
    /// MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256).
    #[error("attribute {attr:#06x} cannot follow the integrity or fingerprint attributes")]
    AttributeOrder {
        /// The attribute type that was refused.
        attr: u16,
    },
    /// A server configuration that cannot work.
    #[error("{0}")]
    ServerConfig(&'static str),
    /// A password, user name or realm is not valid under the OpaqueString profile (RFC 8265).
    #[error("credential is not a valid OpaqueString: {0}")]
    BadCredential(&'static str),
    /// Too many transactions are outstanding.
    #[error("too many outstanding transactions ({0})")]
    TooManyTransactions(usize),
}

/// The class of a message, RFC 8489 §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request: expects a response.
    Request,
    /// An indication: no response.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// A STUN method (12 bits), RFC 8489 §18.2 and RFC 8656 §17.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding, RFC 8489.
    pub const BINDING: Method = Method(0x001);
    /// Allocate, RFC 8656.
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh, RFC 8656.
    pub const REFRESH: Method = Method(0x004);
    /// Send, RFC 8656.
    pub const SEND: Method = Method(0x006);
    /// Data, RFC 8656.
    pub const DATA: Method = Method(0x007);
    /// CreatePermission, RFC 8656.
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind, RFC 8656.
    pub const CHANNEL_BIND: Method = Method(0x009);
}

/// Class and method together: the 14-bit message type, RFC 8489 §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The class.
    pub class: Class,
    /// The method.
    pub method: Method,
}

impl MessageType {
    /// A type from its parts.
    pub const fn new(class: Class, method: Method) -> Self {
        Self { class, method }
    }

    /// A Binding request.
    pub const BINDING_REQUEST: MessageType = MessageType::new(Class::Request, Method::BINDING);
    /// A Binding success response.
    pub const BINDING_SUCCESS: MessageType = MessageType::new(Class::Success, Method::BINDING);
    /// A Binding error response.
    pub const BINDING_ERROR: MessageType = MessageType::new(Class::Error, Method::BINDING);

    /// Decodes the 16-bit type field (the two top bits must be zero).
    pub const fn from_u16(v: u16) -> Self {
        let class = match ((v >> 7) & 0x2) | ((v >> 4) & 0x1) {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        let method = (v & 0x000F) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0F80);
        Self {
            class,
            method: Method(method),
        }
    }

    /// Encodes the 16-bit type field.
    pub const fn to_u16(self) -> u16 {
        let c: u16 = match self.class {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        };
        let m = self.method.0 & 0x0FFF;
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }
}

/// The 96-bit transaction ID, RFC 8489 §5.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh ID from a cryptographically secure generator (RFC 8489 §5 requires it to be
    /// uniformly random).
    pub fn random<R: rand_core::CryptoRng + rand_core::RngCore>(rng: &mut R) -> Self {
        let mut id = [0u8; 12];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

impl std::fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Whether `data` looks like a STUN message: at least a header, the top two bits clear and
/// the magic cookie in place. Used to demultiplex STUN from other traffic on one socket
/// (RFC 7983).
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN && data[0] & 0xC0 == 0 && data[4..8] == MAGIC_COOKIE.to_be_bytes()
}

#[cfg(test)]
mod tests;
