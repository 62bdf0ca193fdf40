//! The one error type of both foreign APIs, and the one place where the core's errors are
//! converted into it. The C API turns it into a negative result code ([`PinholeError::code`]);
//! UniFFI turns it into an exception (Kotlin `PinholeException`, Swift `PinholeError`).

use pinhole::driver::DriverError;
use pinhole::turn::TurnError;

use crate::capi::codes;

/// Why an operation failed. Flat: each variant carries only its message across the FFI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum PinholeError {
    /// An argument is invalid: a malformed address or URI, a value out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No STUN server could be resolved or none was usable.
    #[error("no usable STUN server: {0}")]
    NoServer(String),
    /// A `stuns:` (TLS) URI or another unsupported request.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A socket or another operating-system operation failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// What was asked for does not exist (yet, or any more): no allocation, no permission
    /// for the peer.
    #[error("not available: {0}")]
    NotAvailable(String),
    /// The server rejected the credentials (TURN 401 with credentials, 441).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The server refused the request (TURN 403, 437, 440, 442, 443, 486, 508, another
    /// error code).
    #[error("refused: {0}")]
    Refused(String),
    /// The server did not answer in time.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// An internal error: a bug, such as a caught panic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl PinholeError {
    /// The C API's result code for this error (always negative).
    pub(crate) fn code(&self) -> i32 {
        match self {
            PinholeError::InvalidArgument(_) => codes::PINHOLE_ERR_INVALID,
            PinholeError::NoServer(_) => codes::PINHOLE_ERR_NO_SERVER,
            PinholeError::Unsupported(_) => codes::PINHOLE_ERR_UNSUPPORTED,
            PinholeError::Io(_) => codes::PINHOLE_ERR_IO,
            PinholeError::Cancelled => codes::PINHOLE_ERR_CANCELLED,
            PinholeError::NotAvailable(_) => codes::PINHOLE_ERR_NOT_AVAILABLE,
            PinholeError::Authentication(_) => codes::PINHOLE_ERR_AUTH,
            PinholeError::Refused(_) => codes::PINHOLE_ERR_REFUSED,
            PinholeError::TimedOut(_) => codes::PINHOLE_ERR_TIMEOUT,
            PinholeError::Internal(_) => codes::PINHOLE_ERR_INTERNAL,
        }
    }

    pub(crate) fn invalid(what: impl std::fmt::Display) -> Self {
        PinholeError::InvalidArgument(what.to_string())
    }
}

impl From<DriverError> for PinholeError {
    fn from(e: DriverError) -> Self {
        let text = e.to_string();
        match e {
            DriverError::Io { .. } | DriverError::Random(_) => PinholeError::Io(text),
            DriverError::Uri { .. } | DriverError::Stun(_) | DriverError::Certificates(_) => {
                PinholeError::InvalidArgument(text)
            }
            DriverError::Unsupported(_) => PinholeError::Unsupported(text),
            DriverError::NothingResolved | DriverError::Netcheck(_) => PinholeError::NoServer(text),
            // DriverError is non-exhaustive: a new variant is an I/O-level failure until
            // it is given its own mapping here.
            _ => PinholeError::Io(text),
        }
    }
}

impl From<TurnError> for PinholeError {
    fn from(e: TurnError) -> Self {
        let text = e.to_string();
        match e {
            TurnError::Unauthenticated | TurnError::WrongCredentials => {
                PinholeError::Authentication(text)
            }
            TurnError::Forbidden
            | TurnError::AllocationMismatch
            | TurnError::AddressFamilyNotSupported
            | TurnError::UnsupportedTransport
            | TurnError::PeerAddressFamilyMismatch
            | TurnError::AllocationQuotaReached
            | TurnError::InsufficientCapacity
            | TurnError::TooManyRedirects
            | TurnError::AlternateFamily(_)
            | TurnError::ZeroLifetime
            | TurnError::ServerError { .. } => PinholeError::Refused(text),
            TurnError::TimedOut => PinholeError::TimedOut(text),
            TurnError::NoPermission(_) | TurnError::NoAllocation | TurnError::NoChannel => {
                PinholeError::NotAvailable(text)
            }
            TurnError::Uri(_) | TurnError::BufferTooSmall { .. } => {
                PinholeError::InvalidArgument(text)
            }
            // The codec's errors (the server's messages were malformed or the stream lost
            // its framing) and variants added later: a failure of the connection.
            _ => PinholeError::Io(text),
        }
    }
}

impl From<std::io::Error> for PinholeError {
    fn from(e: std::io::Error) -> Self {
        PinholeError::Io(e.to_string())
    }
}
