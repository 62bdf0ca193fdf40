//! The lab's error type: a message meant for a person reading a failed test.

use std::fmt;

/// Something in the lab went wrong; the message says what, with the command's or the
/// server's own output where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabError(pub String);

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

impl From<std::io::Error> for LabError {
    fn from(e: std::io::Error) -> Self {
        LabError(e.to_string())
    }
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Builds a [`LabError`] from a format string.
macro_rules! lab_err {
    ($($arg:tt)*) => { $crate::lab::LabError(format!($($arg)*)) };
}
pub(crate) use lab_err;
