//! Port mapping: `pinhole_portmap_config_init`, `_start`, `_get_external`, `_release`,
//! `_destroy`, `_destroy_async`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::codes::*;
use super::{
    CConfig, SendPtr, TaskHandle, cstring, fill, guard, init_sized, opt_str, pinhole_destroyed_cb,
    publish_task_handle, read_sized, write_buf,
};
use crate::error::PinholeError;
use crate::ops::MappingPlan;
use crate::task::Task;
use crate::types::{
    MappingMethod, PortMapping, PortMappingConfig, PortMappingEvent, TransportProtocol,
};

/// A port mapping kept alive until released (opaque).
///
/// Threads: its event callback runs on the mapper's own thread, one event at a time, in
/// order. `pinhole_portmap_get_external` and `pinhole_portmap_release` may be called from
/// any thread, several at once, and from the callback; `pinhole_portmap_destroy` (blocking
/// up to about 3 s while a mapping is deleted) or `pinhole_portmap_destroy_async` is the
/// last call, from any thread or from the callback.
pub struct pinhole_portmap {
    task: Mutex<Option<Task>>,
    destroyed: Arc<AtomicBool>,
    current: Arc<Mutex<Option<PortMapping>>>,
}

impl TaskHandle for pinhole_portmap {
    fn task(&self) -> &Mutex<Option<Task>> {
        &self.task
    }
    fn destroyed(&self) -> &AtomicBool {
        &self.destroyed
    }
}

/// A mapping that exists on the gateway.
#[repr(C)]
pub struct pinhole_mapping {
    /// The protocol that made it (never `PINHOLE_METHOD_ANY`).
    pub method: pinhole_method,
    /// UDP or TCP.
    pub protocol: pinhole_protocol,
    /// The internal address and port.
    pub internal: [c_char; PINHOLE_ADDRESS_MAX],
    /// The external address and port.
    pub external: [c_char; PINHOLE_ADDRESS_MAX],
    /// The lifetime granted, seconds.
    pub lifetime_s: u32,
    /// False when the external address is private or shared (CGNAT): another NAT lies
    /// beyond the gateway and the mapping is not reachable from the internet.
    pub reachable: bool,
}

/// A port-mapping event; valid only during the callback.
#[repr(C)]
pub struct pinhole_portmap_event {
    /// What happened.
    pub kind: pinhole_portmap_event_kind,
    /// `MAPPED`, `RENEWED`, `CHANGED`, `VERIFIED`, `NOT_FORWARDING`: the mapping (for
    /// `CHANGED` the new one).
    pub mapping: pinhole_mapping,
    /// `CHANGED`: the mapping before.
    pub old_mapping: pinhole_mapping,
    /// `LOST`, `UNAVAILABLE`, `UNVERIFIED`: why; else NULL.
    pub reason: *const c_char,
}

/// Receives a port mapping's events, on the mapper's own thread. The last is
/// `PINHOLE_PORTMAP_EVENT_RELEASED` or `PINHOLE_PORTMAP_EVENT_UNAVAILABLE`. Kinds may be
/// added in later versions: ignore the ones you do not know.
pub type pinhole_portmap_cb = Option<
    unsafe extern "C" fn(
        portmap: *mut pinhole_portmap,
        event: *const pinhole_portmap_event,
        user_ptr: *mut c_void,
    ),
>;

/// What to map. Initialise it with `pinhole_portmap_config_init(&config, sizeof config)`,
/// then set at least `internal_port` and `cb_event`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pinhole_portmap_config {
    /// The size of this struct as the program was built (`sizeof`), set by
    /// `pinhole_portmap_config_init`: how the library tells which fields the program knows.
    pub struct_size: usize,
    /// The gateway (an IP address); NULL: the default route's gateway. With an explicit
    /// gateway UPnP searches by unicast to it only, never by multicast.
    pub gateway: *const c_char,
    /// This host's address toward the gateway; NULL: what the kernel would use. Needs an
    /// explicit gateway.
    pub local_ip: *const c_char,
    /// UDP (0, the default) or TCP.
    pub protocol: pinhole_protocol,
    /// The internal port to map (the application's socket; pinhole does not bind it,
    /// except with `verify_stun`).
    pub internal_port: u16,
    /// The external port wanted; 0: any.
    pub suggested_external_port: u16,
    /// The lifetime to ask for, seconds; 0: the default (7200).
    pub lifetime_s: u32,
    /// `PINHOLE_METHOD_ANY` (0, the default) or the only protocol to use.
    pub method: pinhole_method,
    /// The events (required).
    pub cb_event: pinhole_portmap_cb,
    /// Passed to the callback.
    pub user_ptr: *mut c_void,
    /// (The struct's first version ends above, at `user_ptr`; fields from here on are
    /// appended ones, read only when `struct_size` covers them, else their default.)
    ///
    /// Verify that traffic really arrives through the mapping with this STUN server, a
    /// `stun:host[:port]` URI (RFC 7064, at most 500 bytes) of a server that implements
    /// RFC 5780 (`pinhole serve`, coturn with `rfc5780`): after every new mapping, after
    /// renewals and every `verify_interval_s`. The outcome arrives as
    /// `PINHOLE_PORTMAP_EVENT_VERIFIED`, `_NOT_FORWARDING` or `_UNVERIFIED`; a mapping that
    /// does not forward is deleted and added again first (`_LOST`). UDP only
    /// (`PINHOLE_ERR_INVALID` for TCP; `PINHOLE_ERR_UNSUPPORTED` for `stuns:`). pinhole
    /// then binds the internal port itself (on the local address toward the gateway) to
    /// hear the answers, so it must be free: this checks a gateway, it cannot verify a port
    /// another socket holds. The host is resolved when the mapper starts (within 10 s); if
    /// that fails, or the port is taken, the mapper stops with `_UNAVAILABLE` and a reason.
    /// NULL (the default): no verification.
    pub verify_stun: *const c_char,
    /// Seconds between verifications; 0: the default (300); at most 86400.
    pub verify_interval_s: u32,
}

// SAFETY: `#[repr(C)]`, `struct_size` first; all-zero is valid (NULL pointers, no
// callback, 0) and means every default.
unsafe impl CConfig for pinhole_portmap_config {
    const NAME: &'static str = "pinhole_portmap_config";
    const INIT: &'static str = "pinhole_portmap_config_init";
    const MIN_SIZE: usize =
        std::mem::offset_of!(pinhole_portmap_config, user_ptr) + size_of::<*mut c_void>();
    fn set_defaults(&mut self) {
        self.lifetime_s = crate::types::DEFAULT_MAPPING_LIFETIME_SECS;
        self.verify_interval_s = crate::types::DEFAULT_VERIFY_INTERVAL_SECS;
    }
}

#[derive(Clone, Copy)]
struct HandlePtr(*mut pinhole_portmap);
// SAFETY: only handed back to the caller's callback, never dereferenced by the thread.
unsafe impl Send for HandlePtr {}

fn mapping(m: &PortMapping) -> pinhole_mapping {
    let mut c = empty_mapping();
    c.method = match m.method {
        MappingMethod::Pcp => PINHOLE_METHOD_PCP,
        MappingMethod::NatPmp => PINHOLE_METHOD_NATPMP,
        MappingMethod::Upnp => PINHOLE_METHOD_UPNP,
    };
    c.protocol = match m.protocol {
        TransportProtocol::Udp => PINHOLE_PROTOCOL_UDP,
        TransportProtocol::Tcp => PINHOLE_PROTOCOL_TCP,
    };
    fill(&mut c.internal, &m.internal);
    fill(&mut c.external, &m.external);
    c.lifetime_s = m.lifetime_secs;
    c.reachable = m.reachable;
    c
}

fn empty_mapping() -> pinhole_mapping {
    pinhole_mapping {
        method: PINHOLE_METHOD_ANY,
        protocol: PINHOLE_PROTOCOL_UDP,
        internal: [0; PINHOLE_ADDRESS_MAX],
        external: [0; PINHOLE_ADDRESS_MAX],
        lifetime_s: 0,
        reachable: false,
    }
}

/// A C event and the storage it points to.
struct CEvent {
    _reason: Option<CString>,
    event: pinhole_portmap_event,
}

impl CEvent {
    fn new(ev: &PortMappingEvent) -> Self {
        let mut event = pinhole_portmap_event {
            kind: PINHOLE_PORTMAP_EVENT_RELEASED,
            mapping: empty_mapping(),
            old_mapping: empty_mapping(),
            reason: ptr::null(),
        };
        let mut reason = None;
        match ev {
            PortMappingEvent::Mapped { mapping: m } => {
                event.kind = PINHOLE_PORTMAP_EVENT_MAPPED;
                event.mapping = mapping(m);
            }
            PortMappingEvent::Renewed { mapping: m } => {
                event.kind = PINHOLE_PORTMAP_EVENT_RENEWED;
                event.mapping = mapping(m);
            }
            PortMappingEvent::Changed { old, new } => {
                event.kind = PINHOLE_PORTMAP_EVENT_CHANGED;
                event.mapping = mapping(new);
                event.old_mapping = mapping(old);
            }
            PortMappingEvent::Lost { reason: r } => {
                event.kind = PINHOLE_PORTMAP_EVENT_LOST;
                reason = Some(cstring(r));
            }
            PortMappingEvent::Unavailable { reason: r } => {
                event.kind = PINHOLE_PORTMAP_EVENT_UNAVAILABLE;
                reason = Some(cstring(r));
            }
            PortMappingEvent::Released => {}
            PortMappingEvent::Verified { mapping: m } => {
                event.kind = PINHOLE_PORTMAP_EVENT_VERIFIED;
                event.mapping = mapping(m);
            }
            PortMappingEvent::NotForwarding { mapping: m } => {
                event.kind = PINHOLE_PORTMAP_EVENT_NOT_FORWARDING;
                event.mapping = mapping(m);
            }
            PortMappingEvent::Unverified { reason: r } => {
                event.kind = PINHOLE_PORTMAP_EVENT_UNVERIFIED;
                reason = Some(cstring(r));
            }
        }
        if let Some(r) = &reason {
            event.reason = r.as_ptr();
        }
        CEvent {
            _reason: reason,
            event,
        }
    }
}

/// Reads a C port-mapping config.
///
/// # Safety
/// The config's strings are NULL or NUL-terminated.
unsafe fn read_config(c: &pinhole_portmap_config) -> Result<PortMappingConfig, PinholeError> {
    Ok(PortMappingConfig {
        internal_port: c.internal_port,
        protocol: match c.protocol {
            PINHOLE_PROTOCOL_UDP => TransportProtocol::Udp,
            PINHOLE_PROTOCOL_TCP => TransportProtocol::Tcp,
            _ => return Err(PinholeError::invalid("protocol")),
        },
        // SAFETY: per the contract.
        gateway: unsafe { opt_str(c.gateway, "gateway") }?.map(str::to_owned),
        // SAFETY: per the contract.
        local_ip: unsafe { opt_str(c.local_ip, "local_ip") }?.map(str::to_owned),
        suggested_external_port: c.suggested_external_port,
        lifetime_secs: c.lifetime_s,
        method: match c.method {
            PINHOLE_METHOD_ANY => None,
            PINHOLE_METHOD_PCP => Some(MappingMethod::Pcp),
            PINHOLE_METHOD_NATPMP => Some(MappingMethod::NatPmp),
            PINHOLE_METHOD_UPNP => Some(MappingMethod::Upnp),
            _ => return Err(PinholeError::invalid("method")),
        },
        // SAFETY: per the contract.
        verify_stun: unsafe { opt_str(c.verify_stun, "verify_stun") }?.map(str::to_owned),
        verify_interval_secs: c.verify_interval_s,
    })
}

/// Starts mapping a port; events follow on the mapper's own thread. The mapping is
/// renewed and re-created until `pinhole_portmap_release` or `pinhole_portmap_destroy`.
/// The config is copied.
///
/// # Safety
/// `config` and `out` are NULL or valid; the config's strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_portmap_start(
    config: *const pinhole_portmap_config,
    out: *mut *mut pinhole_portmap,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(PinholeError::invalid("out is NULL"));
        }
        // SAFETY: NULL or valid for its `struct_size`, per the contract.
        let c = &unsafe { read_sized(config) }?;
        let Some(cb) = c.cb_event else {
            return Err(PinholeError::invalid("cb_event is NULL"));
        };
        let user_ptr = SendPtr(c.user_ptr);
        // SAFETY: per this function's contract.
        let plan = MappingPlan::new(&unsafe { read_config(c) }?)?;
        let destroyed = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let handle = Box::new(pinhole_portmap {
            task: Mutex::new(None),
            destroyed: destroyed.clone(),
            current: current.clone(),
        });
        let raw = Box::into_raw(handle);
        let hptr = HandlePtr(raw);
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        let task = Task::spawn_parked("pinhole-portmap", move |stop| async move {
            if ready.await.is_err() {
                return;
            }
            let (hptr, user_ptr) = (hptr, user_ptr);
            plan.run(stop, current, |ev| {
                if !destroyed.load(Ordering::Acquire) {
                    let ev = CEvent::new(&ev);
                    // SAFETY: the caller's callback, with what it was promised.
                    unsafe { cb(hptr.0, &ev.event, user_ptr.0) };
                }
            })
            .await;
        });
        // SAFETY: `raw` from Box::into_raw above, not handed out; `out` checked non-NULL.
        unsafe { publish_task_handle(raw, task, out, go) }
    })
}

/// Writes the current mapping's external address (`IP:port`) into `buf` of `size` bytes
/// (`PINHOLE_ADDRESS_MAX` always suffices). Returns its length, or
/// `PINHOLE_ERR_NOT_AVAILABLE` when no mapping exists now.
///
/// # Safety
/// `portmap` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_portmap_get_external(
    portmap: *const pinhole_portmap,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    guard(|| {
        // SAFETY: NULL or live, per the contract.
        let Some(h) = (unsafe { portmap.as_ref() }) else {
            return Err(PinholeError::invalid("portmap is NULL"));
        };
        let external = h
            .current
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|m| m.external.clone()));
        match external {
            // SAFETY: per the contract.
            Some(e) => unsafe { write_buf(&e, buf, size) },
            None => Ok(PINHOLE_ERR_NOT_AVAILABLE),
        }
    })
}

/// Deletes the mapping and stops the mapper, returning at once: the
/// `PINHOLE_PORTMAP_EVENT_RELEASED` event follows (or `UNAVAILABLE` when no mapping
/// existed), within a few seconds.
///
/// # Safety
/// `portmap` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_portmap_release(portmap: *mut pinhole_portmap) -> c_int {
    guard(|| {
        // SAFETY: NULL or live, per the contract.
        let Some(h) = (unsafe { portmap.as_ref() }) else {
            return Err(PinholeError::invalid("portmap is NULL"));
        };
        if let Some(t) = &*h.task.lock().unwrap_or_else(|p| p.into_inner()) {
            t.stop();
        }
        Ok(PINHOLE_OK)
    })
}

/// Releases the mapping if it exists, stops and frees the handle, blocking: from another
/// thread it waits until a running callback returns and the deletion is confirmed or given
/// up on (at most about 3 s when the gateway does not answer; from a UI thread use
/// `pinhole_portmap_destroy_async`). No event is delivered once it has begun. Called from
/// the handle's own callback, it returns at once and the release finishes in the
/// background. NULL is ignored.
///
/// # Safety
/// `portmap` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_portmap_destroy(portmap: *mut pinhole_portmap) {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle(portmap) }
}

/// Releases the mapping if it exists, stops the mapper and frees the handle without
/// waiting: returns at once, also from the mapper's own callback and while the gateway
/// does not answer. An event already being delivered (or just starting) when it is called
/// may still run; then no event is delivered (not even `RELEASED`); once the deletion is
/// confirmed or given up on (about 3 s), the handle is freed and `cb` (optional) is called
/// once on the mapper's thread, never from within this call. Data the callback uses must
/// stay valid until `cb`. `PINHOLE_ERR_INVALID` for NULL.
///
/// # Safety
/// `portmap` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_portmap_destroy_async(
    portmap: *mut pinhole_portmap,
    cb: pinhole_destroyed_cb,
    user_ptr: *mut c_void,
) -> c_int {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle_async(portmap, "portmap", cb, user_ptr) }
}

/// Initialises a config: zeroes its `size` bytes, sets the defaults (`lifetime_s` 7200,
/// `verify_interval_s` 300; everything else zero, NULL or UDP) and `struct_size` = `size`.
/// Call it as `pinhole_portmap_config_init(&config, sizeof config)`;
/// `PINHOLE_ERR_INVALID` (nothing written) for NULL or a size that cannot be a
/// `pinhole_portmap_config`.
///
/// # Safety
/// `config` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_portmap_config_init(
    config: *mut pinhole_portmap_config,
    size: usize,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { init_sized(config, size) }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn zeroed() -> pinhole_portmap_config {
        pinhole_portmap_config {
            struct_size: size_of::<pinhole_portmap_config>(),
            gateway: ptr::null(),
            local_ip: ptr::null(),
            protocol: PINHOLE_PROTOCOL_UDP,
            internal_port: 40000,
            suggested_external_port: 0,
            lifetime_s: 0,
            method: PINHOLE_METHOD_ANY,
            cb_event: None,
            user_ptr: ptr::null_mut(),
            verify_stun: ptr::null(),
            verify_interval_s: 0,
        }
    }

    #[test]
    fn the_verification_fields_are_read_and_zero_means_off() {
        // SAFETY: no strings.
        let c = unsafe { read_config(&zeroed()) }.unwrap();
        assert_eq!(c.verify_stun, None);
        assert_eq!(c.verify_interval_secs, 0);
        let mut cfg = zeroed();
        cfg.verify_stun = c"stun:127.0.0.1:3478".as_ptr();
        cfg.verify_interval_s = 60;
        // SAFETY: a static C string.
        let c = unsafe { read_config(&cfg) }.unwrap();
        assert_eq!(c.verify_stun.as_deref(), Some("stun:127.0.0.1:3478"));
        assert_eq!(c.verify_interval_secs, 60);
        assert!(MappingPlan::new(&c).is_ok());
        cfg.verify_stun = c"stun:".as_ptr();
        // SAFETY: a static C string.
        let c = unsafe { read_config(&cfg) }.unwrap();
        assert_eq!(
            MappingPlan::new(&c).unwrap_err().code(),
            PINHOLE_ERR_INVALID
        );
    }

    #[test]
    fn verification_events_have_their_kinds() {
        let m = PortMapping {
            method: MappingMethod::Upnp,
            protocol: TransportProtocol::Udp,
            internal: "10.0.0.2:40000".into(),
            external: "203.0.113.7:40000".into(),
            lifetime_secs: 3600,
            reachable: true,
        };
        let ev = CEvent::new(&PortMappingEvent::Verified { mapping: m.clone() });
        assert_eq!(ev.event.kind, PINHOLE_PORTMAP_EVENT_VERIFIED);
        assert_eq!(ev.event.mapping.method, PINHOLE_METHOD_UPNP);
        assert_eq!(ev.event.mapping.lifetime_s, 3600);
        assert!(ev.event.reason.is_null());
        let ev = CEvent::new(&PortMappingEvent::NotForwarding { mapping: m });
        assert_eq!(ev.event.kind, PINHOLE_PORTMAP_EVENT_NOT_FORWARDING);
        // SAFETY: `fill` NUL-terminates.
        let external = unsafe { CStr::from_ptr(ev.event.mapping.external.as_ptr()) };
        assert_eq!(external.to_str().unwrap(), "203.0.113.7:40000");
        let ev = CEvent::new(&PortMappingEvent::Unverified {
            reason: "no answer".into(),
        });
        assert_eq!(ev.event.kind, PINHOLE_PORTMAP_EVENT_UNVERIFIED);
        // SAFETY: it points into `ev`, alive here.
        let reason = unsafe { CStr::from_ptr(ev.event.reason) };
        assert_eq!(reason.to_str().unwrap(), "no answer");
    }
}
