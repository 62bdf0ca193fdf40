//! A STUN server for tests and self-hosting: `pinhole_server_start`, `_address_count`,
//! `_get_address`, `_destroy`.

use std::ffi::{c_char, c_int};

use super::codes::*;
use super::{guard, opt_str, write_buf};
use crate::error::PinholeError;
use crate::ops::Server;

/// A running STUN server (opaque).
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

/// Stops the server, waits for its thread and frees the handle. NULL is ignored.
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
