//! The version macros, the run-time version number and the last error message.

use std::cell::RefCell;
use std::ffi::{CString, c_char};

/// The major version of the header (Cargo's version of pinhole-ffi).
pub const PINHOLE_VERSION_MAJOR: u32 = 0;
/// The minor version of the header.
pub const PINHOLE_VERSION_MINOR: u32 = 1;
/// The patch version of the header.
pub const PINHOLE_VERSION_PATCH: u32 = 0;
/// The header's version as one number, `(major << 16) | (minor << 8) | patch`
/// (0x000100 for 0.1.0), for `#if PINHOLE_VERSION_NUMBER >= ...`; compare it with
/// `pinhole_version_number()`, the library's at run time.
pub const PINHOLE_VERSION_NUMBER: u32 =
    (PINHOLE_VERSION_MAJOR << 16) | (PINHOLE_VERSION_MINOR << 8) | PINHOLE_VERSION_PATCH;

/// Parses a decimal version component at compile time (a non-digit fails the build).
const fn parse(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: u32 = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "a version component is not a number");
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

// The macros are literals (cbindgen reads the source, not Cargo's environment); the build
// fails when they differ from Cargo's version, so a version bump cannot leave them behind.
const _: () = assert!(
    PINHOLE_VERSION_MAJOR == parse(env!("CARGO_PKG_VERSION_MAJOR"))
        && PINHOLE_VERSION_MINOR == parse(env!("CARGO_PKG_VERSION_MINOR"))
        && PINHOLE_VERSION_PATCH == parse(env!("CARGO_PKG_VERSION_PATCH")),
    "PINHOLE_VERSION_* in ffi/src/capi/version.rs differ from Cargo's version: update them \
     and run bindings/generate.sh header"
);
const _: () = assert!(
    PINHOLE_VERSION_MINOR < 256 && PINHOLE_VERSION_PATCH < 256,
    "PINHOLE_VERSION_NUMBER holds minor and patch in 8 bits each"
);

/// The library's version number at run time, in `PINHOLE_VERSION_NUMBER`'s format.
/// A program built against one header and run with another library checks that the
/// ABI matches: the same major version (before 1.0, the same major and minor).
#[unsafe(no_mangle)]
pub extern "C" fn pinhole_version_number() -> u32 {
    PINHOLE_VERSION_NUMBER
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records the message of the calling thread's last failure (`None`: the last call
/// succeeded).
pub(crate) fn set_last_error(message: Option<&str>) {
    let message = message.map(super::cstring);
    // A thread being torn down has no slot left: nothing to record then.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = message);
}

/// Why the last call of this thread into pinhole that returned a negative `PINHOLE_ERR_*`
/// code failed, in English (for logs and people, not for matching: the codes are the
/// API), e.g. `invalid argument: stun_servers[0]: not a STUN URI`. An empty string when
/// that call succeeded or no call was made on this thread. Per thread: a failure on one
/// thread never shows on another. The string stays valid until the calling thread's next
/// call into pinhole (this function excepted); never free it.
#[unsafe(no_mangle)]
pub extern "C" fn pinhole_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ref().map(|s| s.as_ptr()))
        .ok()
        .flatten()
        .unwrap_or(c"".as_ptr())
}
