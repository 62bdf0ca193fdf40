//! The port-mapping error type.

/// Errors from the port-mapping codecs and machines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortmapError {
    /// The datagram is shorter than its type requires.
    #[error("truncated message")]
    Truncated,
    /// A version other than the protocol's (0 means a NAT-PMP-only gateway).
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A request where a response was expected.
    #[error("not a response")]
    NotAResponse,
    /// An opcode this side does not handle.
    #[error("unexpected opcode {0}")]
    UnexpectedOpcode(u8),
    /// Otherwise malformed.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}
