//! TURN (RFC 8656): `pinhole_turn_config_init`, `pinhole_turn_allocate`, `_get_relayed`,
//! `_get_mapped`, `_create_permission`, `_bind_channel`, `_send`, `_deallocate`,
//! `_destroy`, `_destroy_async`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::net::SocketAddr;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::codes::*;
use super::{
    CConfig, SendPtr, TaskHandle, cstring, fill, guard, init_sized, opt_str, pinhole_destroyed_cb,
    publish_task_handle, read_sized, write_buf,
};
use crate::error::PinholeError;
use crate::ops::{TurnCommand, TurnPlan, TurnStatus, turn_send_args};
use crate::task::Task;
use crate::types::{RelayedFamily, TurnConfig, TurnEvent, parse_ip, parse_socket_addr};

/// A TURN allocation (opaque).
///
/// Threads: its event and data callbacks run on the allocation's own thread, one at a time
/// (never an event and data at once), in order. `pinhole_turn_get_relayed`, `_get_mapped`,
/// `_create_permission`, `_bind_channel`, `_send` and `_deallocate` may be called from any
/// thread, several at once, and from the callbacks; `pinhole_turn_destroy` (blocking up to
/// about 4 s while the allocation is released) or `pinhole_turn_destroy_async` is the last
/// call, from any thread or from a callback.
pub struct pinhole_turn {
    task: Mutex<Option<Task>>,
    destroyed: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<TurnCommand>,
    status: Arc<Mutex<TurnStatus>>,
}

impl TaskHandle for pinhole_turn {
    fn task(&self) -> &Mutex<Option<Task>> {
        &self.task
    }
    fn destroyed(&self) -> &AtomicBool {
        &self.destroyed
    }
}

/// A TURN event; valid only during the callback. Fields not used by its kind are empty
/// ("", 0, NULL).
#[repr(C)]
pub struct pinhole_turn_event {
    /// What happened.
    pub kind: pinhole_turn_event_kind,
    /// `ALLOCATED`: the relayed address (`IP:port`).
    pub relayed: [c_char; PINHOLE_ADDRESS_MAX],
    /// `ALLOCATED` with `PINHOLE_TURN_FAMILY_DUAL`: the second relayed address.
    pub relayed_other: [c_char; PINHOLE_ADDRESS_MAX],
    /// `ALLOCATED`: this host's address as the server saw it ("" if not reported).
    pub mapped: [c_char; PINHOLE_ADDRESS_MAX],
    /// `ALLOCATED`, `REFRESHED`: the lifetime granted, seconds.
    pub lifetime_s: u32,
    /// `PERMISSION`, `PERMISSION_FAILED`: the peer's IP; `CHANNEL`, `CHANNEL_FAILED`,
    /// `SEND_FAILED`: the peer's `IP:port`.
    pub peer: [c_char; PINHOLE_ADDRESS_MAX],
    /// `CHANNEL`: the channel number (0x4000–0x4FFF).
    pub channel: u16,
    /// The failures (`*_FAILED`, `LOST`): a `PINHOLE_ERR_*` code; else `PINHOLE_OK`.
    pub result: c_int,
    /// The failures: why, in words; else NULL.
    pub reason: *const c_char,
}

/// Receives a TURN allocation's events, on the allocation's own thread. The last is
/// `PINHOLE_TURN_EVENT_LOST` or `PINHOLE_TURN_EVENT_DEALLOCATED`.
pub type pinhole_turn_event_cb = Option<
    unsafe extern "C" fn(
        turn: *mut pinhole_turn,
        event: *const pinhole_turn_event,
        user_ptr: *mut c_void,
    ),
>;

/// Receives a datagram from `peer` (`IP:port`) through the relay, on the allocation's own
/// thread; `peer` and `data` (`len` bytes) are valid only during the call.
pub type pinhole_turn_data_cb = Option<
    unsafe extern "C" fn(
        turn: *mut pinhole_turn,
        peer: *const c_char,
        data: *const u8,
        len: usize,
        user_ptr: *mut c_void,
    ),
>;

/// A TURN server and what to ask of it. Initialise it with
/// `pinhole_turn_config_init(&config, sizeof config)`, then set `uri`, `username`, exactly
/// one of `password` and `secret`, and `cb_event`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pinhole_turn_config {
    /// The size of this struct as the program was built (`sizeof`), set by
    /// `pinhole_turn_config_init`: how the library tells which fields the program knows.
    pub struct_size: usize,
    /// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065; at most
    /// 500 bytes). `turns:` needs a library built with the `tls` feature, else
    /// `PINHOLE_ERR_UNSUPPORTED`.
    pub uri: *const c_char,
    /// The user name (1 to 512 bytes); with `secret`, the user part of the REST user name
    /// `expiry:username`.
    pub username: *const c_char,
    /// The password of long-term credentials.
    pub password: *const c_char,
    /// The shared secret of TURN REST credentials (coturn's `static-auth-secret`).
    pub secret: *const c_char,
    /// How long REST credentials stay valid, seconds; 0: the default (one day).
    pub rest_ttl_s: u32,
    /// The allocation lifetime to ask for, seconds; 0: the default (600). It is refreshed
    /// before it ends.
    pub lifetime_s: u32,
    /// The events (required).
    pub cb_event: pinhole_turn_event_cb,
    /// Peers' data (optional: without it, data is dropped).
    pub cb_data: pinhole_turn_data_cb,
    /// Passed to the callbacks.
    pub user_ptr: *mut c_void,
    /// (The struct's first version ends above, at `user_ptr`; fields from here on are
    /// appended ones, read only when `struct_size` covers them, else their default.)
    ///
    /// `PINHOLE_TURN_FAMILY_IPV4` (0, the default), `_IPV6` or `_DUAL`.
    pub family: pinhole_turn_family,
    /// PEM certificates to trust for `turns:` instead of the system roots; NULL: the
    /// system roots. A server certificate that is one of them byte for byte is accepted
    /// (pinned: a self-signed one, too); others must chain to one of them.
    pub ca_pem: *const c_char,
}

// SAFETY: `#[repr(C)]`, `struct_size` first; all-zero is valid (NULL pointers, no
// callbacks, 0) and means every default.
unsafe impl CConfig for pinhole_turn_config {
    const NAME: &'static str = "pinhole_turn_config";
    const INIT: &'static str = "pinhole_turn_config_init";
    const MIN_SIZE: usize =
        std::mem::offset_of!(pinhole_turn_config, user_ptr) + size_of::<*mut c_void>();
    fn set_defaults(&mut self) {
        self.rest_ttl_s = crate::types::DEFAULT_REST_TTL_SECS;
        self.lifetime_s = crate::types::DEFAULT_TURN_LIFETIME_SECS;
    }
}

#[derive(Clone, Copy)]
struct HandlePtr(*mut pinhole_turn);
// SAFETY: only handed back to the caller's callbacks, never dereferenced by the thread.
unsafe impl Send for HandlePtr {}

/// A C event and the storage it points to.
struct CEvent {
    _reason: Option<CString>,
    event: pinhole_turn_event,
}

impl CEvent {
    fn new(ev: &TurnEvent, error: Option<&PinholeError>) -> Self {
        let mut event = pinhole_turn_event {
            kind: PINHOLE_TURN_EVENT_DEALLOCATED,
            relayed: [0; PINHOLE_ADDRESS_MAX],
            relayed_other: [0; PINHOLE_ADDRESS_MAX],
            mapped: [0; PINHOLE_ADDRESS_MAX],
            lifetime_s: 0,
            peer: [0; PINHOLE_ADDRESS_MAX],
            channel: 0,
            result: PINHOLE_OK,
            reason: ptr::null(),
        };
        let mut reason = None;
        match ev {
            TurnEvent::Allocated {
                relayed,
                mapped,
                lifetime_secs,
            } => {
                event.kind = PINHOLE_TURN_EVENT_ALLOCATED;
                fill(
                    &mut event.relayed,
                    relayed.first().map_or("", String::as_str),
                );
                fill(
                    &mut event.relayed_other,
                    relayed.get(1).map_or("", String::as_str),
                );
                fill(&mut event.mapped, mapped.as_deref().unwrap_or(""));
                event.lifetime_s = *lifetime_secs;
            }
            TurnEvent::Refreshed { lifetime_secs } => {
                event.kind = PINHOLE_TURN_EVENT_REFRESHED;
                event.lifetime_s = *lifetime_secs;
            }
            TurnEvent::PermissionCreated { peer_ip } => {
                event.kind = PINHOLE_TURN_EVENT_PERMISSION;
                fill(&mut event.peer, peer_ip);
            }
            TurnEvent::PermissionFailed { peer_ip, reason: r } => {
                event.kind = PINHOLE_TURN_EVENT_PERMISSION_FAILED;
                fill(&mut event.peer, peer_ip);
                reason = Some(cstring(r));
            }
            TurnEvent::ChannelBound { peer, channel } => {
                event.kind = PINHOLE_TURN_EVENT_CHANNEL;
                fill(&mut event.peer, peer);
                event.channel = *channel;
            }
            TurnEvent::ChannelFailed { peer, reason: r } => {
                event.kind = PINHOLE_TURN_EVENT_CHANNEL_FAILED;
                fill(&mut event.peer, peer);
                reason = Some(cstring(r));
            }
            TurnEvent::SendFailed { peer, reason: r } => {
                event.kind = PINHOLE_TURN_EVENT_SEND_FAILED;
                fill(&mut event.peer, peer);
                reason = Some(cstring(r));
            }
            TurnEvent::Lost { reason: r } => {
                event.kind = PINHOLE_TURN_EVENT_LOST;
                reason = Some(cstring(r));
            }
            TurnEvent::Deallocated => {}
        }
        if let Some(r) = &reason {
            event.reason = r.as_ptr();
            event.result = error.map_or(PINHOLE_ERR_IO, PinholeError::code);
        }
        CEvent {
            _reason: reason,
            event,
        }
    }
}

/// Reads a C TURN config.
///
/// # Safety
/// The config's strings are NULL or NUL-terminated.
unsafe fn read_config(c: &pinhole_turn_config) -> Result<TurnConfig, PinholeError> {
    // SAFETY: per the contract (for all the strings below).
    let s = |p, what| unsafe { opt_str(p, what) }.map(|s| s.map(str::to_owned));
    Ok(TurnConfig {
        uri: s(c.uri, "uri")?.ok_or_else(|| PinholeError::invalid("uri is NULL"))?,
        username: s(c.username, "username")?
            .ok_or_else(|| PinholeError::invalid("username is NULL"))?,
        password: s(c.password, "password")?,
        secret: s(c.secret, "secret")?,
        rest_ttl_secs: c.rest_ttl_s,
        lifetime_secs: c.lifetime_s,
        family: Some(match c.family {
            PINHOLE_TURN_FAMILY_IPV4 => RelayedFamily::Ipv4,
            PINHOLE_TURN_FAMILY_IPV6 => RelayedFamily::Ipv6,
            PINHOLE_TURN_FAMILY_DUAL => RelayedFamily::Dual,
            _ => return Err(PinholeError::invalid("family")),
        }),
        ca_pem: s(c.ca_pem, "ca_pem")?,
    })
}

/// Allocates a relayed address on a TURN server. On success `*out` is the handle (free it
/// with `pinhole_turn_destroy`) and the events follow on the allocation's own thread:
/// `PINHOLE_TURN_EVENT_ALLOCATED`, or `PINHOLE_TURN_EVENT_LOST` with the reason
/// (`PINHOLE_ERR_AUTH` for wrong credentials). The allocation is refreshed until
/// `pinhole_turn_deallocate` or `pinhole_turn_destroy`. The config is copied; the
/// password and secret are never logged.
///
/// # Safety
/// `config` and `out` are NULL or valid; the config's strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_allocate(
    config: *const pinhole_turn_config,
    out: *mut *mut pinhole_turn,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(PinholeError::invalid("out is NULL"));
        }
        // SAFETY: NULL or valid for its `struct_size`, per the contract.
        let c = &unsafe { read_sized(config) }?;
        let Some(cb_event) = c.cb_event else {
            return Err(PinholeError::invalid("cb_event is NULL"));
        };
        let cb_data = c.cb_data;
        let user_ptr = SendPtr(c.user_ptr);
        // SAFETY: per this function's contract.
        let plan = TurnPlan::new(&unsafe { read_config(c) }?)?;
        let destroyed = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(TurnStatus::default()));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let handle = Box::new(pinhole_turn {
            task: Mutex::new(None),
            destroyed: destroyed.clone(),
            commands,
            status: status.clone(),
        });
        let raw = Box::into_raw(handle);
        let hptr = HandlePtr(raw);
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        let task = Task::spawn_parked("pinhole-turn", move |stop| async move {
            // Wait until the handle is complete: a callback may destroy it.
            if ready.await.is_err() {
                return;
            }
            let (hptr, user_ptr) = (hptr, user_ptr);
            let alive = || !destroyed.load(Ordering::Acquire);
            // The last peer's address as a C string: most data comes from few peers.
            let mut last_peer: Option<(SocketAddr, CString)> = None;
            plan.run(
                stop,
                commands_rx,
                status,
                |ev, error| {
                    if alive() {
                        let ev = CEvent::new(&ev, error.as_ref());
                        // SAFETY: the caller's callback, with what it was promised.
                        unsafe { cb_event(hptr.0, &ev.event, user_ptr.0) };
                    }
                },
                |peer, data| {
                    let (Some(cb), true) = (cb_data, alive()) else {
                        return;
                    };
                    let text = match &last_peer {
                        Some((p, text)) if *p == peer => text,
                        _ => &last_peer.insert((peer, cstring(&peer.to_string()))).1,
                    };
                    // SAFETY: the caller's callback; the peer and data live across it.
                    unsafe { cb(hptr.0, text.as_ptr(), data.as_ptr(), data.len(), user_ptr.0) };
                },
            )
            .await;
        });
        // SAFETY: `raw` from Box::into_raw above, not handed out; `out` checked non-NULL.
        unsafe { publish_task_handle(raw, task, out, go) }
    })
}

/// Runs `f` on a live handle's status and sends its command.
///
/// # Safety
/// `turn` is NULL or a live handle.
unsafe fn command(
    turn: *const pinhole_turn,
    cmd: impl FnOnce() -> Result<TurnCommand, PinholeError>,
) -> Result<c_int, PinholeError> {
    // SAFETY: NULL or live, per the contract.
    let Some(h) = (unsafe { turn.as_ref() }) else {
        return Err(PinholeError::invalid("turn is NULL"));
    };
    let cmd = cmd()?;
    h.status
        .lock()
        .map_err(|_| PinholeError::Internal("poisoned".into()))?
        .usable()?;
    h.commands
        .send(cmd)
        .map_err(|_| PinholeError::NotAvailable("the allocation has ended".into()))?;
    Ok(PINHOLE_OK)
}

/// Writes an address of the allocation into `buf`.
///
/// # Safety
/// `turn` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
unsafe fn get_address(
    turn: *const pinhole_turn,
    buf: *mut c_char,
    size: usize,
    which: impl FnOnce(&TurnStatus) -> Option<String>,
) -> Result<c_int, PinholeError> {
    // SAFETY: NULL or live, per the contract.
    let Some(h) = (unsafe { turn.as_ref() }) else {
        return Err(PinholeError::invalid("turn is NULL"));
    };
    let address = h
        .status
        .lock()
        .ok()
        .filter(|s| s.allocated && !s.ended)
        .and_then(|s| which(&s));
    match address {
        // SAFETY: per the contract.
        Some(a) => unsafe { write_buf(&a, buf, size) },
        None => Ok(PINHOLE_ERR_NOT_AVAILABLE),
    }
}

/// Writes the relayed address (`IP:port`; the first with `PINHOLE_TURN_FAMILY_DUAL`) into
/// `buf` of `size` bytes (`PINHOLE_ADDRESS_MAX` always suffices). Returns its length, or
/// `PINHOLE_ERR_NOT_AVAILABLE` before `ALLOCATED` and after the allocation ended.
///
/// # Safety
/// `turn` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_get_relayed(
    turn: *const pinhole_turn,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    // SAFETY: per the contract.
    guard(|| unsafe { get_address(turn, buf, size, |s| s.relayed.first().cloned()) })
}

/// Writes this host's address as the TURN server saw it (`IP:port`) into `buf` of `size`
/// bytes. Returns its length, or `PINHOLE_ERR_NOT_AVAILABLE` when there is none now.
///
/// # Safety
/// `turn` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_get_mapped(
    turn: *const pinhole_turn,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    // SAFETY: per the contract.
    guard(|| unsafe { get_address(turn, buf, size, |s| s.mapped.clone()) })
}

/// Installs a permission for a peer's IP address (refreshed until the end), so that its
/// datagrams reach this host, returning at once: `PINHOLE_TURN_EVENT_PERMISSION` or
/// `_PERMISSION_FAILED` follows. `PINHOLE_ERR_NOT_AVAILABLE` before `ALLOCATED` and after
/// the allocation ended.
///
/// # Safety
/// `turn` is NULL or a live handle; `peer_ip` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_create_permission(
    turn: *mut pinhole_turn,
    peer_ip: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        unsafe {
            command(turn, || {
                let ip = opt_str(peer_ip, "peer_ip")?
                    .ok_or_else(|| PinholeError::invalid("peer_ip is NULL"))?;
                Ok(TurnCommand::Permission(parse_ip("peer_ip", ip)?, None))
            })
        }
    })
}

/// Binds a channel to a peer (`IP:port`), which also permits its IP; data to and from it
/// then travels with 4 bytes of overhead instead of 36. Returns at once:
/// `PINHOLE_TURN_EVENT_CHANNEL` or `_CHANNEL_FAILED` follows. `PINHOLE_ERR_NOT_AVAILABLE`
/// before `ALLOCATED` and after the allocation ended.
///
/// # Safety
/// `turn` is NULL or a live handle; `peer` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_bind_channel(
    turn: *mut pinhole_turn,
    peer: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        unsafe {
            command(turn, || {
                let peer =
                    opt_str(peer, "peer")?.ok_or_else(|| PinholeError::invalid("peer is NULL"))?;
                Ok(TurnCommand::Channel(parse_socket_addr("peer", peer)?, None))
            })
        }
    })
}

/// Sends `len` bytes (at most `PINHOLE_TURN_DATA_MAX`) to a peer (`IP:port`) through the
/// relay; the data is copied and the call returns at once. It needs a permission for the
/// peer's IP; a failure arrives as `PINHOLE_TURN_EVENT_SEND_FAILED`.
/// `PINHOLE_ERR_NOT_AVAILABLE` before `ALLOCATED` and after the allocation ended.
///
/// # Safety
/// `turn` is NULL or a live handle; `peer` is NULL or NUL-terminated; `data` is NULL (then
/// `len` is 0) or has `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_send(
    turn: *mut pinhole_turn,
    peer: *const c_char,
    data: *const u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        unsafe {
            command(turn, || {
                let peer =
                    opt_str(peer, "peer")?.ok_or_else(|| PinholeError::invalid("peer is NULL"))?;
                let peer = turn_send_args(peer, len)?;
                let bytes = if len == 0 {
                    Vec::new()
                } else if data.is_null() {
                    return Err(PinholeError::invalid("data is NULL"));
                } else {
                    // SAFETY: `data` has `len` readable bytes, per the contract.
                    std::slice::from_raw_parts(data, len).to_vec()
                };
                Ok(TurnCommand::Send(peer, bytes))
            })
        }
    })
}

/// Deallocates, returning at once: `PINHOLE_TURN_EVENT_DEALLOCATED` follows (within a few
/// seconds, also when the server does not answer), then the allocation has ended.
///
/// # Safety
/// `turn` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_deallocate(turn: *mut pinhole_turn) -> c_int {
    guard(|| {
        // SAFETY: NULL or live, per the contract.
        let Some(h) = (unsafe { turn.as_ref() }) else {
            return Err(PinholeError::invalid("turn is NULL"));
        };
        let _ = h.commands.send(TurnCommand::Deallocate);
        Ok(PINHOLE_OK)
    })
}

/// Deallocates if the allocation exists, stops and frees the handle, blocking: from
/// another thread it waits until a running callback returns and the server has confirmed
/// the deallocation or it was given up on (at most about 4 s when the server does not
/// answer; from a UI thread use `pinhole_turn_destroy_async`). No callback runs once it
/// has begun. Called from the handle's own callback, it returns at once and the
/// deallocation finishes in the background. NULL is ignored.
///
/// # Safety
/// `turn` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_destroy(turn: *mut pinhole_turn) {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle(turn) }
}

/// Deallocates if the allocation exists, stops and frees the handle without waiting:
/// returns at once, also from the allocation's own callback and while the server does not
/// answer. A callback already running (or just starting) when it is called may still run;
/// then no callback runs (not even `DEALLOCATED`); once the server has confirmed the
/// deallocation or it was given up on (about 4 s), the handle is freed and `cb` (optional)
/// is called once on the allocation's thread, never from within this call. Data the
/// callbacks use must stay valid until `cb`. `PINHOLE_ERR_INVALID` for NULL.
///
/// # Safety
/// `turn` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_destroy_async(
    turn: *mut pinhole_turn,
    cb: pinhole_destroyed_cb,
    user_ptr: *mut c_void,
) -> c_int {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle_async(turn, "turn", cb, user_ptr) }
}

/// Initialises a config: zeroes its `size` bytes, sets the defaults (`rest_ttl_s` 86400,
/// `lifetime_s` 600; everything else zero, NULL or `PINHOLE_TURN_FAMILY_IPV4`) and
/// `struct_size` = `size`. Call it as `pinhole_turn_config_init(&config, sizeof config)`;
/// `PINHOLE_ERR_INVALID` (nothing written) for NULL or a size that cannot be a
/// `pinhole_turn_config`.
///
/// # Safety
/// `config` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_turn_config_init(
    config: *mut pinhole_turn_config,
    size: usize,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { init_sized(config, size) }
}
