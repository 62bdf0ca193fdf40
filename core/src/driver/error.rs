//! The driver's error type, and what every part of the driver needs to make one.

use crate::netcheck::NetcheckError;
use crate::stun::{StunError, UriError};

/// Errors from the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A URI did not parse.
    #[error("{uri}: {source}")]
    Uri {
        /// The URI.
        uri: String,
        /// The error.
        source: UriError,
    },
    /// A URI's scheme is not supported here.
    #[error("{0}: stuns: (TLS) is not supported for netcheck")]
    Unsupported(String),
    /// No server name resolved.
    #[error("no STUN server could be resolved")]
    NothingResolved,
    /// Setting up the prober failed.
    #[error(transparent)]
    Netcheck(#[from] NetcheckError),
    /// The server configuration is invalid.
    #[error(transparent)]
    Stun(#[from] StunError),
    /// The operating system's random generator failed.
    #[error("random seed: {0}")]
    Random(String),
    /// The certificates to trust for TLS (PEM) are unusable: none in the text, or
    /// malformed.
    #[error("CA certificates: {0}")]
    Certificates(String),
}

/// Wraps an I/O error with what was being done.
pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let context = context.into();
    move |source| DriverError::Io { context, source }
}

/// A 32-byte seed from the operating system.
pub fn os_seed() -> Result<[u8; 32], DriverError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| DriverError::Random(e.to_string()))?;
    Ok(seed)
}
