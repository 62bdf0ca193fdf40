//! The C API (header `include/pinhole.h`, generated from this module by cbindgen).
//!
//! Conventions, in the style of libjuice:
//! - Opaque handles (`pinhole_netcheck`, `pinhole_portmap`, `pinhole_turn`, `pinhole_peer`,
//!   and with the feature `server` `pinhole_server`), created by a `*_start` function
//!   (`pinhole_turn_allocate`, `pinhole_peer_create`) from a
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
//! Config structs begin with `size_t struct_size` and are read by it ([`read_sized`]):
//! fields are only appended, the ones beyond the caller's size take their defaults, and a
//! size that cannot be the struct's is `PINHOLE_ERR_INVALID`. `pinhole_*_config_init`
//! fills a config's defaults and size.
//!
//! Threads: each netcheck, port mapping, TURN allocation and peer connection runs on a thread of its own (a
//! parked [`Task`](crate::task::Task), kept until the handle is destroyed); its callbacks
//! run there, one at a time, in order, never on the thread that called `*_start`. Every
//! function but `*_destroy`/`*_destroy_async` may be called on a live handle from several
//! threads at once and from its callbacks. `*_destroy` from another thread waits until a
//! running callback returns and the handle's ending (deleting a mapping, deallocating) is
//! over; from the handle's own callback it frees the handle at once and the ending goes on
//! in the background. `*_destroy_async` never waits: the handle's thread frees it once its
//! work has ended and then calls the completion callback. The log callback may run on any
//! thread, several at once, and must not call back into pinhole.

// The C API's names follow C conventions (`pinhole_netcheck`, `PINHOLE_OK`).
#![allow(non_camel_case_types)]

pub mod codes;
mod netcheck;
mod peer;
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
pub use peer::*;
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

/// Called once a handle destroyed by `pinhole_*_destroy_async` is gone: its work has ended
/// (a mapping deleted, an allocation released, or given up on), no callback of it runs any
/// more, and it is freed. Runs on the handle's own thread, never inside the
/// `*_destroy_async` call.
pub type pinhole_destroyed_cb = Option<unsafe extern "C" fn(user_ptr: *mut c_void)>;

/// A C handle backed by a parked [`Task`](crate::task::Task).
pub(crate) trait TaskHandle: Send + 'static {
    /// The task, taken once by the destruction. Behind a mutex: a callback may cancel or
    /// release through the handle while another thread destroys it.
    fn task(&self) -> &std::sync::Mutex<Option<crate::task::Task>>;
    /// Set when the destruction begins; callbacks check it and stay silent from then on.
    fn destroyed(&self) -> &std::sync::atomic::AtomicBool;
}

/// Completes a `*_start`: stores the started task in the handle, hands the handle out
/// through `out`, and lets the task go (it waits for `go` before using the handle). When
/// the task could not start, frees the handle and returns the error.
///
/// # Safety
/// `raw` is from `Box::into_raw`, not handed out yet; `out` is non-NULL and writable.
pub(crate) unsafe fn publish_task_handle<H: TaskHandle>(
    raw: *mut H,
    task: Result<crate::task::Task, PinholeError>,
    out: *mut *mut H,
    go: tokio::sync::oneshot::Sender<()>,
) -> Result<c_int, PinholeError> {
    let task = match task {
        Ok(t) => t,
        Err(e) => {
            // SAFETY: from Box::into_raw, never handed out.
            drop(unsafe { Box::from_raw(raw) });
            return Err(e);
        }
    };
    // SAFETY: from Box::into_raw; its thread waits for `go` before using it.
    *unsafe { &*raw }
        .task()
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(task);
    // SAFETY: `out` is non-NULL and writable per the contract.
    unsafe { *out = raw };
    let _ = go.send(());
    Ok(codes::PINHOLE_OK)
}

/// Starts the end of a live handle: marks it destroyed and takes its task.
///
/// # Safety
/// `handle` is a live handle from `Box::into_raw`.
unsafe fn begin_destroy<H: TaskHandle>(handle: *mut H) -> Option<crate::task::Task> {
    // SAFETY: live, per the contract; only shared access until the task has ended.
    let h = unsafe { &*handle };
    h.destroyed()
        .store(true, std::sync::atomic::Ordering::Release);
    h.task().lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The blocking end of a handle: stops its task and waits for it (which returns at once
/// when called from the task's own callback; see [`Task::join`](crate::task::Task::join)),
/// then frees the handle. NULL is ignored; a panic stays here.
///
/// # Safety
/// `handle` is NULL or a live handle from `Box::into_raw`, not used afterwards.
pub(crate) unsafe fn destroy_task_handle<H: TaskHandle>(handle: *mut H) {
    if handle.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract.
        if let Some(t) = unsafe { begin_destroy(handle) } {
            t.stop();
            t.join();
        }
        // SAFETY: live, and its task has ended or it is its own thread's caller that
        // promised not to use it again.
        drop(unsafe { Box::from_raw(handle) });
    }));
}

/// A handle owned by its task's end hook.
struct Owned<H>(*mut H);
// SAFETY: the handle is `Send` (`TaskHandle: Send`); the pointer is its only owner from
// the moment the destruction hands it over.
unsafe impl<H: Send> Send for Owned<H> {}

/// The non-blocking end of a handle: marks it destroyed, asks its task to stop and
/// returns; once the task's work has ended, its thread frees the handle and calls `cb`.
///
/// # Safety
/// `handle` is NULL or a live handle from `Box::into_raw`, not used afterwards.
pub(crate) unsafe fn destroy_task_handle_async<H: TaskHandle>(
    handle: *mut H,
    what: &str,
    cb: pinhole_destroyed_cb,
    user_ptr: *mut c_void,
) -> c_int {
    guard(|| {
        if handle.is_null() {
            return Err(PinholeError::invalid(format!("{what} is NULL")));
        }
        // SAFETY: per the contract.
        let Some(task) = (unsafe { begin_destroy(handle) }) else {
            return Err(PinholeError::Internal(format!("{what} has no task")));
        };
        let (owned, user_ptr) = (Owned(handle), SendPtr(user_ptr));
        let hook: crate::task::Hook = Box::new(move || {
            let (owned, user_ptr) = (owned, user_ptr);
            // SAFETY: the hook owns the handle; its task's work (every callback) is over.
            drop(unsafe { Box::from_raw(owned.0) });
            if let Some(cb) = cb {
                // SAFETY: the caller's callback, with its own pointer.
                unsafe { cb(user_ptr.0) };
            }
        });
        task.end_detached(hook).map_err(|(task, _)| {
            // Not parked: a bug. Stop it without waiting; the handle is leaked rather
            // than freed under a running callback.
            task.detach();
            PinholeError::Internal(format!("{what}'s task cannot end detached"))
        })?;
        Ok(PINHOLE_OK)
    })
}

/// The largest `struct_size` accepted: anything above is not the size of a config.
pub(crate) const CONFIG_SIZE_MAX: usize = 4096;

/// A config struct of the C API, which begins with its `size_t struct_size`.
///
/// # Safety
/// Implemented only for `#[repr(C)]` structs whose first field is `struct_size: usize`
/// and for which all-zero bytes are a valid value meaning "every field at its default".
pub(crate) unsafe trait CConfig: Copy {
    /// The C name, for messages.
    const NAME: &'static str;
    /// The name of its init function, for messages.
    const INIT: &'static str;
    /// The smallest `struct_size` accepted: the struct through `user_ptr`, the end of its
    /// first version.
    const MIN_SIZE: usize;
    /// Sets the fields whose default is not zero to that default.
    fn set_defaults(&mut self);
}

/// Checks a caller's `struct_size` (a wrong one is an error, never a read out of bounds).
fn check_size<T: CConfig>(size: usize) -> Result<(), PinholeError> {
    let ours = std::mem::size_of::<T>();
    if size < T::MIN_SIZE || size > CONFIG_SIZE_MAX || size % std::mem::align_of::<usize>() != 0 {
        return Err(PinholeError::invalid(format!(
            "{}.struct_size is {size}, not the size of a {} (this library's is {ours} bytes; \
             at least {} are accepted): initialise it with {}(&config, sizeof config)",
            T::NAME,
            T::NAME,
            T::MIN_SIZE,
            T::INIT,
        )));
    }
    Ok(())
}

/// Reads a caller's config by its `struct_size`: the fields within it are the caller's,
/// the fields beyond it (a program built against an older header) take their defaults; a
/// larger struct (a newer header) is accepted when the fields this library does not know
/// are zero (their defaults), else `PINHOLE_ERR_UNSUPPORTED`.
///
/// # Safety
/// `config` is NULL or points to a readable struct of at least `struct_size` bytes (or
/// `MIN_SIZE` when `struct_size` is wrong).
pub(crate) unsafe fn read_sized<T: CConfig>(config: *const T) -> Result<T, PinholeError> {
    if config.is_null() {
        return Err(PinholeError::invalid(format!("{} is NULL", T::NAME)));
    }
    // SAFETY: the first field, a size_t, of a readable struct.
    let size = unsafe { std::ptr::read(config.cast::<usize>()) };
    check_size::<T>(size)?;
    let ours = std::mem::size_of::<T>();
    let bytes = config.cast::<u8>();
    if size > ours {
        // SAFETY: the caller's struct has `size` readable bytes.
        let newer = unsafe { std::slice::from_raw_parts(bytes.add(ours), size - ours) };
        if newer.iter().any(|b| *b != 0) {
            return Err(PinholeError::Unsupported(format!(
                "{} sets fields this library ({}) does not know: struct_size {size} is \
                 above its {ours} bytes and the bytes beyond are not zero",
                T::NAME,
                env!("CARGO_PKG_VERSION"),
            )));
        }
    }
    let mut out = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `min(size, ours)` bytes are readable there and writable here; all-zero is a
    // valid `T` (the trait's contract) and the copied prefix holds the caller's fields.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes, out.as_mut_ptr().cast::<u8>(), size.min(ours));
        Ok(out.assume_init())
    }
}

/// Initialises a caller's config of `size` bytes: all zero (padding too), the defaults of
/// the fields within `size`, and `struct_size` = `size`.
///
/// # Safety
/// `config` is NULL or points to `size` writable bytes.
pub(crate) unsafe fn init_sized<T: CConfig>(config: *mut T, size: usize) -> c_int {
    guard(|| {
        if config.is_null() {
            return Err(PinholeError::invalid(format!("{} is NULL", T::NAME)));
        }
        check_size::<T>(size)?;
        // SAFETY: all-zero is a valid `T` (the trait's contract).
        let mut defaults: T = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
        defaults.set_defaults();
        let bytes = config.cast::<u8>();
        // SAFETY: `size` writable bytes there; `min(size, ours)` of the defaults copied
        // (`struct_size` first), the rest stays zero.
        unsafe {
            std::ptr::write_bytes(bytes, 0, size);
            std::ptr::copy_nonoverlapping(
                (&raw const defaults).cast::<u8>(),
                bytes,
                size.min(std::mem::size_of::<T>()),
            );
            std::ptr::write(bytes.cast::<usize>(), size);
        }
        Ok(PINHOLE_OK)
    })
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

    /// A config in a buffer of `len` bytes filled with `fill`, initialised for `size`.
    fn buffer(len: usize, fill: u8) -> Vec<u64> {
        let mut b = vec![0u64; len.div_ceil(8)];
        // SAFETY: the vector has at least `len` bytes.
        unsafe { std::ptr::write_bytes(b.as_mut_ptr().cast::<u8>(), fill, len) };
        b
    }

    #[test]
    fn a_config_is_read_by_its_size_with_defaults_beyond_it() {
        let ours = size_of::<pinhole_portmap_config>();
        let min = <pinhole_portmap_config as CConfig>::MIN_SIZE;
        assert!(
            min < ours,
            "the first version is smaller than the current one"
        );
        // An older program's struct ends at `user_ptr`; what follows it in memory is not
        // its and must not be read.
        let mut b = buffer(ours + 64, 0xAB);
        let p = b.as_mut_ptr().cast::<pinhole_portmap_config>();
        // SAFETY: the buffer holds `ours` bytes and more.
        assert_eq!(unsafe { init_sized(p, min) }, PINHOLE_OK);
        // SAFETY: as above.
        let c = unsafe { read_sized(p) }.unwrap();
        assert_eq!(c.struct_size, min);
        assert_eq!(c.lifetime_s, crate::types::DEFAULT_MAPPING_LIFETIME_SECS);
        assert!(c.verify_stun.is_null(), "beyond struct_size: the default");
        assert_eq!(
            c.verify_interval_s, 0,
            "beyond struct_size: zero, the default"
        );
        // SAFETY: the bytes after `min` were left alone by init.
        assert_eq!(unsafe { *b.as_ptr().cast::<u8>().add(min) }, 0xAB);
        // A current program's struct: every field read, the init's defaults in place.
        let mut b = buffer(ours, 0xAB);
        let p = b.as_mut_ptr().cast::<pinhole_portmap_config>();
        // SAFETY: `ours` bytes.
        assert_eq!(unsafe { init_sized(p, ours) }, PINHOLE_OK);
        // SAFETY: as above.
        let c = unsafe { read_sized(p) }.unwrap();
        assert_eq!(
            c.verify_interval_s,
            crate::types::DEFAULT_VERIFY_INTERVAL_SECS
        );
        assert!(c.gateway.is_null() && c.cb_event.is_none());
    }

    #[test]
    fn a_newer_config_is_accepted_when_the_unknown_fields_are_zero() {
        let ours = size_of::<pinhole_turn_config>();
        let mut b = buffer(ours + 16, 0xAB);
        let p = b.as_mut_ptr().cast::<pinhole_turn_config>();
        // SAFETY: `ours + 16` bytes.
        assert_eq!(unsafe { init_sized(p, ours + 16) }, PINHOLE_OK);
        // SAFETY: as above.
        let c = unsafe { read_sized(p) }.unwrap();
        assert_eq!(c.lifetime_s, crate::types::DEFAULT_TURN_LIFETIME_SECS);
        // SAFETY: inside the buffer.
        unsafe { *b.as_mut_ptr().cast::<u8>().add(ours + 3) = 1 };
        // SAFETY: as above.
        let e = unsafe { read_sized(b.as_ptr().cast::<pinhole_turn_config>()) }
            .err()
            .unwrap();
        assert_eq!(e.code(), PINHOLE_ERR_UNSUPPORTED);
        assert!(e.to_string().contains("does not know"), "{e}");
    }

    #[test]
    fn a_wrong_size_is_an_error_and_nothing_is_read_or_written() {
        let ours = size_of::<pinhole_netcheck_config>();
        for size in [
            0,
            1,
            8,
            <pinhole_netcheck_config as CConfig>::MIN_SIZE - 8,
            ours + 1,
            CONFIG_SIZE_MAX + 8,
            usize::MAX,
            0xdead_beef,
        ] {
            let mut b = buffer(ours, 0);
            // SAFETY: the first field is a size_t.
            unsafe { *b.as_mut_ptr().cast::<usize>() = size };
            // SAFETY: `ours` bytes; a wrong size is refused before anything else is read.
            let e = unsafe { read_sized(b.as_ptr().cast::<pinhole_netcheck_config>()) };
            let e = e.err().unwrap_or_else(|| panic!("{size} accepted"));
            assert_eq!(e.code(), PINHOLE_ERR_INVALID);
            assert!(
                e.to_string().contains("pinhole_netcheck_config_init"),
                "{e}"
            );
            let mut b = buffer(ours, 0xAB);
            let p = b.as_mut_ptr().cast::<pinhole_netcheck_config>();
            // SAFETY: refused before writing.
            assert_eq!(unsafe { init_sized(p, size) }, PINHOLE_ERR_INVALID);
            // SAFETY: the buffer's first byte.
            assert_eq!(unsafe { *b.as_ptr().cast::<u8>() }, 0xAB);
        }
        // SAFETY: NULL is refused.
        assert!(unsafe { read_sized::<pinhole_turn_config>(std::ptr::null()) }.is_err());
        // SAFETY: NULL is refused.
        let rc = unsafe { init_sized::<pinhole_turn_config>(std::ptr::null_mut(), 64) };
        assert_eq!(rc, PINHOLE_ERR_INVALID);
    }

    #[test]
    fn a_panic_becomes_internal_error() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, PINHOLE_ERR_INTERNAL);
    }
}
