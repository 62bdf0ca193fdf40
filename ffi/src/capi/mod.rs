//! The C API (header `include/pinhole.h`, generated from this module by cbindgen).
//!
//! Conventions, in the style of libjuice:
//! - Opaque handles (`pinhole_netcheck`, `pinhole_portmap`, `pinhole_turn`, and with the
//!   feature `server` `pinhole_server`), created by a `*_start` function (`pinhole_turn_allocate`) from a
//!   config struct that holds the callbacks and a `void *user_ptr`, and freed by
//!   `*_destroy`.
//! - Functions return `PINHOLE_OK` (0), a non-negative length, or a negative
//!   `PINHOLE_ERR_*` code; `pinhole_strerror` names it. A NULL where a pointer is required
//!   gives `PINHOLE_ERR_INVALID`.
//! - Strings asked for are written into caller buffers with a documented maximum size
//!   (`PINHOLE_ADDRESS_MAX`); strings handed to callbacks live until the callback returns.
//! - Every entry point catches panics (`PINHOLE_ERR_INTERNAL`): no unwinding crosses into
//!   C.
//!
//! Threads: each netcheck, port mapping and TURN allocation runs on a thread of its own;
//! its callbacks run there, one at a time, in order, never on the thread that called
//! `*_start`. A callback may call any function of this API, including `*_destroy` on its own handle (the handle
//! is then freed at once and its thread ends when the callback returns; the handle must
//! not be used afterwards). `*_destroy` called from another thread waits until a running
//! callback returns; no callback runs after it returns. The log callback may run on any
//! thread, several at once, and must not call back into pinhole.

// The C API's names follow C conventions (`pinhole_netcheck`, `PINHOLE_OK`).
#![allow(non_camel_case_types)]

pub mod codes;
mod netcheck;
mod portmap;
#[cfg(feature = "server")]
mod server;
mod turn;
mod version;

use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

pub use codes::*;
pub use netcheck::*;
pub use portmap::*;
#[cfg(feature = "server")]
pub use server::*;
pub use turn::*;
pub use version::*;

use crate::error::PinholeError;
use crate::log::{LogLevel, Sink};

/// Runs an entry point's body, turning a panic into `PINHOLE_ERR_INTERNAL`, and records
/// the outcome for `pinhole_last_error`: the error's message on failure, nothing on
/// success.
pub(crate) fn guard(body: impl FnOnce() -> Result<c_int, PinholeError>) -> c_int {
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(n)) if n < 0 => {
            set_last_error(Some(&strerror_str(n)));
            n
        }
        Ok(Ok(n)) => {
            set_last_error(None);
            n
        }
        Ok(Err(e)) => {
            set_last_error(Some(&e.to_string()));
            e.code()
        }
        Err(_) => {
            set_last_error(Some(
                "internal error: a panic was caught (a bug in pinhole)",
            ));
            PINHOLE_ERR_INTERNAL
        }
    }
}

fn strerror_str(code: c_int) -> String {
    // SAFETY: pinhole_strerror returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(pinhole_strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// A pointer that may be sent to another thread: the C caller promises (by the
/// documented contract) that `user_ptr` may be used from the callback thread.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut c_void);

// SAFETY: the pointer is never dereferenced by pinhole, only handed back to the caller's
// callbacks, which the API documents as running on another thread.
unsafe impl Send for SendPtr {}
// SAFETY: as above; it is only copied.
unsafe impl Sync for SendPtr {}

/// Reads an optional C string argument: NULL gives `None`, invalid UTF-8 an error.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn opt_str<'a>(
    p: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, PinholeError> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the contract above.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(Some)
        .map_err(|_| PinholeError::invalid(format!("{what} is not UTF-8")))
}

/// Writes `s` and a NUL into `buf` of `size` bytes; returns the length written, or
/// `PINHOLE_ERR_TOO_SMALL` (leaving an empty string when `size` > 0).
///
/// # Safety
/// `buf` is NULL or points to `size` writable bytes.
pub(crate) unsafe fn write_buf(
    s: &str,
    buf: *mut c_char,
    size: usize,
) -> Result<c_int, PinholeError> {
    if buf.is_null() {
        return Err(PinholeError::invalid("buffer is NULL"));
    }
    if s.len() >= size {
        if size > 0 {
            // SAFETY: `buf` has at least one byte.
            unsafe { *buf = 0 };
        }
        return Ok(PINHOLE_ERR_TOO_SMALL);
    }
    // SAFETY: `buf` has `size` > `s.len()` bytes and does not overlap `s` (a Rust string).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(c_int::try_from(s.len()).unwrap_or(c_int::MAX))
}

/// Copies `s` into a fixed array, truncated at a character boundary, NUL-terminated.
pub(crate) fn fill(dst: &mut [c_char], s: &str) {
    let Some(room) = dst.len().checked_sub(1) else {
        return;
    };
    let mut n = s.len().min(room);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    for (d, b) in dst.iter_mut().zip(&s.as_bytes()[..n]) {
        *d = *b as c_char;
    }
    dst[n] = 0;
}

/// A C string for text that may contain NUL bytes (they are dropped).
pub(crate) fn cstring(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// The library version, `major.minor.patch`, a static string.
#[unsafe(no_mangle)]
pub extern "C" fn pinhole_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// A static description of a result code.
#[unsafe(no_mangle)]
pub extern "C" fn pinhole_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        PINHOLE_OK => c"success",
        PINHOLE_ERR_INVALID => c"invalid argument",
        PINHOLE_ERR_TOO_SMALL => c"buffer too small",
        PINHOLE_ERR_NO_SERVER => c"no usable STUN server",
        PINHOLE_ERR_UNSUPPORTED => c"unsupported",
        PINHOLE_ERR_IO => c"I/O error",
        PINHOLE_ERR_CANCELLED => c"cancelled",
        PINHOLE_ERR_NOT_AVAILABLE => c"not available",
        PINHOLE_ERR_INTERNAL => c"internal error",
        PINHOLE_ERR_AUTH => c"authentication failed",
        PINHOLE_ERR_REFUSED => c"refused by the server",
        PINHOLE_ERR_TIMEOUT => c"timed out",
        n if n > 0 => c"success",
        _ => c"unknown error",
    };
    s.as_ptr()
}

/// Receives log records: the level, the emitting module (`target`) and the message,
/// both valid only during the call. Runs on any thread, possibly concurrently.
pub type pinhole_log_cb = Option<
    unsafe extern "C" fn(
        level: pinhole_log_level,
        target: *const c_char,
        message: *const c_char,
        user_ptr: *mut c_void,
    ),
>;

struct CSink {
    cb: unsafe extern "C" fn(pinhole_log_level, *const c_char, *const c_char, *mut c_void),
    user_ptr: SendPtr,
}

impl Sink for CSink {
    fn log(&self, level: LogLevel, target: &str, message: &str) {
        let (target, message) = (cstring(target), cstring(message));
        // SAFETY: the callback was given by the caller for exactly this; the strings
        // live across the call.
        unsafe {
            (self.cb)(
                level_to_c(level),
                target.as_ptr(),
                message.as_ptr(),
                self.user_ptr.0,
            );
        }
    }
}

fn level_to_c(l: LogLevel) -> pinhole_log_level {
    match l {
        LogLevel::Trace => PINHOLE_LOG_TRACE,
        LogLevel::Debug => PINHOLE_LOG_DEBUG,
        LogLevel::Info => PINHOLE_LOG_INFO,
        LogLevel::Warn => PINHOLE_LOG_WARN,
        LogLevel::Error => PINHOLE_LOG_ERROR,
        LogLevel::Off => PINHOLE_LOG_NONE,
    }
}

/// Sends log records of `level` and above to `cb` (NULL: logging off). Process-wide;
/// replaces any previous handler, including a UniFFI logger.
#[unsafe(no_mangle)]
pub extern "C" fn pinhole_set_log_handler(
    cb: pinhole_log_cb,
    level: pinhole_log_level,
    user_ptr: *mut c_void,
) -> c_int {
    guard(|| {
        let level = match level {
            PINHOLE_LOG_TRACE => LogLevel::Trace,
            PINHOLE_LOG_DEBUG => LogLevel::Debug,
            PINHOLE_LOG_INFO => LogLevel::Info,
            PINHOLE_LOG_WARN => LogLevel::Warn,
            PINHOLE_LOG_ERROR => LogLevel::Error,
            PINHOLE_LOG_NONE => LogLevel::Off,
            _ => return Err(PinholeError::invalid("log level")),
        };
        let sink = cb.map(|cb| {
            Arc::new(CSink {
                cb,
                user_ptr: SendPtr(user_ptr),
            }) as Arc<dyn Sink>
        });
        crate::log::set_sink(sink, level);
        Ok(PINHOLE_OK)
    })
}

/// The end of a handle backed by a [`Task`](crate::task::Task): marks it destroyed (its
/// callbacks check the flag and stay silent from then on), stops the task and waits for it
/// (which returns at once when called from the task's own callback; see
/// [`Task::join`](crate::task::Task::join)). A panic stays here.
pub(crate) fn destroy_task(
    destroyed: &std::sync::atomic::AtomicBool,
    task: Option<crate::task::Task>,
) {
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        destroyed.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = task {
            t.stop();
            t.join();
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_truncates_at_a_character_boundary_and_terminates() {
        let mut buf = [1 as c_char; 5];
        fill(&mut buf, "abé€x");
        // "ab" + "é" (2 bytes) fills 4; "€" does not fit.
        // SAFETY: `fill` NUL-terminated it.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), "abé");
        let mut empty: [c_char; 0] = [];
        fill(&mut empty, "x");
    }

    #[test]
    fn write_buf_reports_length_or_too_small() {
        let mut buf = [1 as c_char; 8];
        // SAFETY: `buf` has `buf.len()` bytes.
        let n = unsafe { write_buf("1.2.3.4", buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(n, 7);
        // SAFETY: as above.
        let n = unsafe { write_buf("1.2.3.45", buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(n, PINHOLE_ERR_TOO_SMALL);
        assert_eq!(buf[0], 0);
        // SAFETY: NULL is allowed (and refused).
        assert!(unsafe { write_buf("x", std::ptr::null_mut(), 8) }.is_err());
    }

    #[test]
    fn every_code_has_a_description_and_errors_map_to_codes() {
        for code in [
            PINHOLE_ERR_INVALID,
            PINHOLE_ERR_TOO_SMALL,
            PINHOLE_ERR_NO_SERVER,
            PINHOLE_ERR_UNSUPPORTED,
            PINHOLE_ERR_IO,
            PINHOLE_ERR_CANCELLED,
            PINHOLE_ERR_NOT_AVAILABLE,
            PINHOLE_ERR_INTERNAL,
            PINHOLE_ERR_AUTH,
            PINHOLE_ERR_REFUSED,
            PINHOLE_ERR_TIMEOUT,
        ] {
            // SAFETY: pinhole_strerror returns static C strings.
            let s = unsafe { CStr::from_ptr(pinhole_strerror(code)) };
            assert_ne!(s.to_str().unwrap(), "unknown error", "{code}");
        }
        assert_eq!(PinholeError::Cancelled.code(), PINHOLE_ERR_CANCELLED);
        assert_eq!(
            PinholeError::invalid("x").code(),
            PINHOLE_ERR_INVALID,
            "one conversion for both APIs"
        );
    }

    #[test]
    fn a_panic_becomes_internal_error() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, PINHOLE_ERR_INTERNAL);
    }
}
