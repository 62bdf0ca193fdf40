//! A STUN server for tests and self-hosting: `pinhole_server_start`, `_address_count`,
//! `_get_address`, `_destroy`, `_destroy_async`.

use std::ffi::{c_char, c_int, c_void};

use super::codes::*;
use super::{SendPtr, guard, opt_str, pinhole_destroyed_cb, write_buf};
use crate::error::PinholeError;
use crate::ops::Server;

/// A running STUN server (opaque).
///
/// Threads: it serves on a thread of its own and has no callbacks.
/// `pinhole_server_address_count` and `pinhole_server_get_address` may be called from any
/// thread, several at once; `pinhole_server_destroy` (which waits a moment for the thread)
/// or `pinhole_server_destroy_async` is the last call, from any thread.
pub struct pinhole_server {
    server: Option<Server>,
}

/// Starts a STUN server (RFC 8489 Binding) on `primary` (`IP:port`); with `alternate`
/// (another IP and port, no port 0) an RFC 5780 server on the four combinations. With
/// `primary` NULL: an RFC 5780 server on 127.0.0.1 and 127.0.0.2 with free ports. It
/// serves on its own thread until `pinhole_server_destroy`.
///
/// # Safety
/// `primary` and `alternate` are NULL or NUL-terminated; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_server_start(
    primary: *const c_char,
    alternate: *const c_char,
    out: *mut *mut pinhole_server,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(PinholeError::invalid("out is NULL"));
        }
        // SAFETY: per the contract.
        let (primary, alternate) = unsafe {
            (
                opt_str(primary, "primary")?,
                opt_str(alternate, "alternate")?,
            )
        };
        let server = Server::start(primary, alternate)?;
        let raw = Box::into_raw(Box::new(pinhole_server {
            server: Some(server),
        }));
        // SAFETY: non-NULL and writable per the contract.
        unsafe { *out = raw };
        Ok(PINHOLE_OK)
    })
}

/// How many addresses the server listens on (1, or 4 for RFC 5780); 0 for NULL.
///
/// # Safety
/// `server` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_server_address_count(server: *const pinhole_server) -> usize {
    // SAFETY: NULL or live, per the contract (nothing here can panic).
    unsafe { server.as_ref() }
        .and_then(|s| s.server.as_ref())
        .map_or(0, |s| s.addresses().len())
}

/// Writes the `index`th address (`IP:port`; 0 is the primary) into `buf` of `size`
/// bytes (`PINHOLE_ADDRESS_MAX` always suffices). Returns its length;
/// `PINHOLE_ERR_INVALID` when `index` is out of range.
///
/// # Safety
/// `server` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_server_get_address(
    server: *const pinhole_server,
    index: usize,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    guard(|| {
        // SAFETY: NULL or live, per the contract.
        let s = unsafe { server.as_ref() }
            .and_then(|s| s.server.as_ref())
            .ok_or_else(|| PinholeError::invalid("server is NULL"))?;
        let a = s
            .addresses()
            .get(index)
            .ok_or_else(|| PinholeError::invalid("index out of range"))?;
        // SAFETY: per the contract.
        unsafe { write_buf(&a.to_string(), buf, size) }
    })
}

/// Stops the server, waits for its thread (a moment: it has no callbacks and nothing to
/// tell a peer) and frees the handle. NULL is ignored.
///
/// # Safety
/// `server` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_server_destroy(server: *mut pinhole_server) {
    if server.is_null() {
        return;
    }
    // SAFETY: a live handle from Box::into_raw, per the contract.
    let mut handle = unsafe { Box::from_raw(server) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        if let Some(s) = handle.server.take() {
            s.stop();
        }
    }));
}

/// A server handle on its way to the thread that ends it.
struct Owned(*mut pinhole_server);
// SAFETY: the handle (a `Server`: a task and addresses) may be ended on any thread; this
// pointer is its only owner once handed over.
unsafe impl Send for Owned {}

/// Stops the server and frees the handle without waiting: returns at once; a thread of
/// its own stops it, frees the handle, then calls `cb` (optional) once, never from within
/// this call. `PINHOLE_ERR_INVALID` for NULL; `PINHOLE_ERR_IO` when no thread could be
/// started (the handle is then untouched and still live).
///
/// # Safety
/// `server` is NULL or a live handle, not used afterwards (unless `PINHOLE_ERR_IO`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_server_destroy_async(
    server: *mut pinhole_server,
    cb: pinhole_destroyed_cb,
    user_ptr: *mut c_void,
) -> c_int {
    guard(|| {
        if server.is_null() {
            return Err(PinholeError::invalid("server is NULL"));
        }
        let (owned, user_ptr) = (Owned(server), SendPtr(user_ptr));
        std::thread::Builder::new()
            .name("pinhole-server-end".into())
            .spawn(move || {
                let (owned, user_ptr) = (owned, user_ptr);
                // SAFETY: the only owner of a live handle, per the contract.
                unsafe { pinhole_server_destroy(owned.0) };
                if let Some(cb) = cb {
                    // SAFETY: the caller's callback, with its own pointer.
                    unsafe { cb(user_ptr.0) };
                }
            })?;
        Ok(PINHOLE_OK)
    })
}
