//! Netcheck: `pinhole_netcheck_config_init`, `_start`, `_cancel`, `_destroy`,
//! `_destroy_async`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::codes::*;
use super::{
    CConfig, SendPtr, TaskHandle, cstring, fill, guard, init_sized, opt_str, pinhole_destroyed_cb,
    publish_task_handle, read_sized,
};
use crate::error::PinholeError;
use crate::ops::NetcheckPlan;
use crate::task::Task;
use crate::types::{
    GatewayProbe, NatBehaviour, NetcheckConfig, NetcheckProgress, NetcheckReport,
    PortAllocationKind,
};

/// A running netcheck (opaque).
///
/// Threads: its callbacks (progress, then done) run on the netcheck's own thread, one at a
/// time, in order. `pinhole_netcheck_cancel` may be called from any thread, several at
/// once, and from the callbacks; `pinhole_netcheck_destroy` (blocking) or
/// `pinhole_netcheck_destroy_async` is the last call, from any thread or from a callback.
pub struct pinhole_netcheck {
    task: Mutex<Option<Task>>,
    destroyed: Arc<AtomicBool>,
}

impl TaskHandle for pinhole_netcheck {
    fn task(&self) -> &Mutex<Option<Task>> {
        &self.task
    }
    fn destroyed(&self) -> &AtomicBool {
        &self.destroyed
    }
}

/// A netcheck progress event; valid only during the callback.
#[repr(C)]
pub struct pinhole_netcheck_event {
    /// What happened.
    pub kind: pinhole_netcheck_event_kind,
    /// The server (`stun:host:port`) for server events, else NULL.
    pub server: *const c_char,
    /// `SERVER_REPLIED`: the public address the server saw ("" if none).
    pub mapped: [c_char; PINHOLE_ADDRESS_MAX],
    /// `SERVER_REPLIED`: the round-trip time, microseconds.
    pub rtt_us: u32,
    /// `MAPPING` and `FILTERING`: the behaviour.
    pub behaviour: pinhole_behaviour,
    /// `HAIRPINNING`: whether the NAT hairpins.
    pub hairpins: bool,
}

/// What one STUN server told us.
#[repr(C)]
pub struct pinhole_server_report {
    /// The server as configured (`stun:host:port`).
    pub label: *const c_char,
    /// Its resolved address.
    pub address: [c_char; PINHOLE_ADDRESS_MAX],
    /// Whether it answered.
    pub answered: bool,
    /// The round-trip time of the first Binding test, microseconds (0 if no answer).
    pub rtt_us: u32,
    /// The public (mapped) address it saw ("" if none).
    pub mapped: [c_char; PINHOLE_ADDRESS_MAX],
    /// Its OTHER-ADDRESS ("" unless it supports RFC 5780).
    pub other_address: [c_char; PINHOLE_ADDRESS_MAX],
}

/// The gateway probe of a netcheck: which port-mapping protocols the gateway speaks.
#[repr(C)]
pub struct pinhole_gateway_probe {
    /// Whether the probe was asked for (false with `no_portmap`; then the rest is empty).
    pub probed: bool,
    /// The gateway probed ("" if it could not be determined).
    pub gateway: [c_char; PINHOLE_ADDRESS_MAX],
    /// PCP (RFC 6887).
    pub pcp: pinhole_tristate,
    /// NAT-PMP (RFC 6886).
    pub natpmp: pinhole_tristate,
    /// UPnP IGD.
    pub upnp: pinhole_tristate,
    /// The external address NAT-PMP reported ("" if none).
    pub natpmp_external: [c_char; PINHOLE_ADDRESS_MAX],
    /// The external address UPnP reported ("" if none).
    pub upnp_external: [c_char; PINHOLE_ADDRESS_MAX],
    /// Why the gateway could not be probed; NULL if it was.
    pub error: *const c_char,
}

/// A netcheck's outcome. Everything it points to lives until the callback returns: copy
/// what you keep. Unknown is not false: undetermined answers are `PINHOLE_UNKNOWN` or
/// `PINHOLE_BEHAVIOUR_UNKNOWN`.
#[repr(C)]
pub struct pinhole_netcheck_report {
    /// Whether any server answered over UDP.
    pub udp: bool,
    /// Mapping behaviour (RFC 4787 §4.1).
    pub mapping: pinhole_behaviour,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: pinhole_behaviour,
    /// Whether the NAT hairpins.
    pub hairpinning: pinhole_tristate,
    /// Whether a middlebox rewrites addresses inside STUN payloads.
    pub alg_rewrites: pinhole_tristate,
    /// Whether the binding lifetime was measured (`binding_lifetime` in the config).
    pub lifetime_measured: bool,
    /// The longest idle interval after which the binding still worked, ms; -1: none.
    pub lifetime_at_least_ms: i64,
    /// The shortest idle interval after which it was gone, ms; -1: it outlived them all.
    pub lifetime_less_than_ms: i64,
    /// The RFC 5780 server used for the behaviour tests; NULL if none.
    pub rfc5780_server: *const c_char,
    /// The distinct public addresses seen, in order of discovery.
    pub public_addresses: *const *const c_char,
    /// How many.
    pub public_address_count: usize,
    /// Per-server results.
    pub servers: *const pinhole_server_report,
    /// How many.
    pub server_count: usize,
    /// What could not be determined, and why.
    pub notes: *const *const c_char,
    /// How many.
    pub note_count: usize,
    /// The gateway probe.
    pub portmap: pinhole_gateway_probe,
    /// How the NAT allocates external ports (appended: read it from a library that has it).
    pub port_allocation: pinhole_port_allocation,
    /// `PINHOLE_PORT_ALLOCATION_SEQUENTIAL`: the step between new mappings; else 0.
    pub port_allocation_delta: i32,
}

/// Progress: called zero or more times before the done callback.
pub type pinhole_netcheck_progress_cb = Option<
    unsafe extern "C" fn(
        netcheck: *mut pinhole_netcheck,
        event: *const pinhole_netcheck_event,
        user_ptr: *mut c_void,
    ),
>;

/// The outcome: called exactly once, last (unless the handle was destroyed first), with
/// `PINHOLE_OK` and the report, or an error code (`PINHOLE_ERR_CANCELLED` after
/// `pinhole_netcheck_cancel`) and NULL.
pub type pinhole_netcheck_done_cb = Option<
    unsafe extern "C" fn(
        netcheck: *mut pinhole_netcheck,
        result: c_int,
        report: *const pinhole_netcheck_report,
        user_ptr: *mut c_void,
    ),
>;

/// What a netcheck probes, and where its results go. Initialise it with
/// `pinhole_netcheck_config_init(&config, sizeof config)`, then set what you need: only
/// `cb_done` is required.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pinhole_netcheck_config {
    /// The size of this struct as the program was built (`sizeof`), set by
    /// `pinhole_netcheck_config_init`: how the library tells which fields the program knows.
    pub struct_size: usize,
    /// STUN servers as `stun:host[:port]` URIs (RFC 7064; at most 32, each at most 500
    /// bytes). With `stun_server_count` 0: the public default servers.
    pub stun_servers: *const *const c_char,
    /// How many.
    pub stun_server_count: usize,
    /// The overall budget, milliseconds; 0: the default (10 s); at most one hour.
    pub timeout_ms: u32,
    /// Skip the hairpinning test.
    pub no_hairpin: bool,
    /// Also measure the binding lifetime (RFC 5780 §4.6); takes about three minutes.
    pub binding_lifetime: bool,
    /// Do not probe the gateway for PCP, NAT-PMP and UPnP.
    pub no_portmap: bool,
    /// Progress (optional).
    pub cb_progress: pinhole_netcheck_progress_cb,
    /// The outcome (required).
    pub cb_done: pinhole_netcheck_done_cb,
    /// Passed to the callbacks.
    pub user_ptr: *mut c_void,
    /// (The struct's first version ends above, at `user_ptr`; fields from here on are
    /// appended ones, read only when `struct_size` covers them, else their default.)
    ///
    /// The gateway to probe (an IP address); NULL: the default route's gateway.
    pub gateway: *const c_char,
}

// SAFETY: `#[repr(C)]`, `struct_size` first; all-zero is valid (NULL pointers, no
// callbacks, false, 0) and means every default.
unsafe impl CConfig for pinhole_netcheck_config {
    const NAME: &'static str = "pinhole_netcheck_config";
    const INIT: &'static str = "pinhole_netcheck_config_init";
    const MIN_SIZE: usize =
        std::mem::offset_of!(pinhole_netcheck_config, user_ptr) + size_of::<*mut c_void>();
    fn set_defaults(&mut self) {
        self.timeout_ms = crate::types::DEFAULT_TIMEOUT_MS;
    }
}

#[derive(Clone, Copy)]
struct HandlePtr(*mut pinhole_netcheck);
// SAFETY: only handed back to the caller's callbacks, never dereferenced by the thread.
unsafe impl Send for HandlePtr {}

fn behaviour(b: NatBehaviour) -> pinhole_behaviour {
    match b {
        NatBehaviour::Unknown => PINHOLE_BEHAVIOUR_UNKNOWN,
        NatBehaviour::EndpointIndependent => PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT,
        NatBehaviour::AddressDependent => PINHOLE_BEHAVIOUR_ADDRESS_DEPENDENT,
        NatBehaviour::AddressAndPortDependent => PINHOLE_BEHAVIOUR_ADDRESS_AND_PORT_DEPENDENT,
    }
}

pub(crate) fn tristate(v: Option<bool>) -> pinhole_tristate {
    match v {
        None => PINHOLE_UNKNOWN,
        Some(false) => PINHOLE_NO,
        Some(true) => PINHOLE_YES,
    }
}

fn micros(us: u64) -> u32 {
    u32::try_from(us).unwrap_or(u32::MAX)
}

fn millis(ms: Option<u64>) -> i64 {
    ms.map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A C progress event and the storage it points to.
struct CEvent {
    _server: Option<CString>,
    event: pinhole_netcheck_event,
}

impl CEvent {
    fn new(p: &NetcheckProgress) -> Self {
        let mut event = pinhole_netcheck_event {
            kind: 0,
            server: ptr::null(),
            mapped: [0; PINHOLE_ADDRESS_MAX],
            rtt_us: 0,
            behaviour: PINHOLE_BEHAVIOUR_UNKNOWN,
            hairpins: false,
        };
        let mut server = None;
        match p {
            NetcheckProgress::ServerReplied {
                label,
                mapped,
                rtt_us,
            } => {
                event.kind = PINHOLE_NETCHECK_EVENT_SERVER_REPLIED;
                server = Some(cstring(label));
                fill(&mut event.mapped, mapped.as_deref().unwrap_or(""));
                event.rtt_us = micros(*rtt_us);
            }
            NetcheckProgress::ServerTimedOut { label } => {
                event.kind = PINHOLE_NETCHECK_EVENT_SERVER_TIMED_OUT;
                server = Some(cstring(label));
            }
            NetcheckProgress::Mapping { behaviour: b } => {
                event.kind = PINHOLE_NETCHECK_EVENT_MAPPING;
                event.behaviour = behaviour(*b);
            }
            NetcheckProgress::Filtering { behaviour: b } => {
                event.kind = PINHOLE_NETCHECK_EVENT_FILTERING;
                event.behaviour = behaviour(*b);
            }
            NetcheckProgress::Hairpinning { hairpins } => {
                event.kind = PINHOLE_NETCHECK_EVENT_HAIRPINNING;
                event.hairpins = *hairpins;
            }
        }
        if let Some(s) = &server {
            event.server = s.as_ptr();
        }
        CEvent {
            _server: server,
            event,
        }
    }
}

/// A C report and the storage it points to (heap buffers: moving this keeps them put).
struct CReport {
    _strings: Vec<CString>,
    _servers: Vec<pinhole_server_report>,
    _public: Vec<*const c_char>,
    _notes: Vec<*const c_char>,
    report: pinhole_netcheck_report,
}

impl CReport {
    fn new(r: &NetcheckReport) -> Self {
        let mut strings = Vec::new();
        let mut keep = |s: &str| {
            let c = cstring(s);
            let p = c.as_ptr();
            strings.push(c);
            p
        };
        let servers: Vec<pinhole_server_report> = r
            .servers
            .iter()
            .map(|s| {
                let mut c = pinhole_server_report {
                    label: keep(&s.label),
                    address: [0; PINHOLE_ADDRESS_MAX],
                    answered: s.rtt_us.is_some(),
                    rtt_us: s.rtt_us.map_or(0, micros),
                    mapped: [0; PINHOLE_ADDRESS_MAX],
                    other_address: [0; PINHOLE_ADDRESS_MAX],
                };
                fill(&mut c.address, &s.address);
                fill(&mut c.mapped, s.mapped.as_deref().unwrap_or(""));
                fill(
                    &mut c.other_address,
                    s.other_address.as_deref().unwrap_or(""),
                );
                c
            })
            .collect();
        let public: Vec<*const c_char> = r.public_addresses.iter().map(|a| keep(a)).collect();
        let notes: Vec<*const c_char> = r.notes.iter().map(|n| keep(n)).collect();
        let rfc5780_server = r.rfc5780_server.as_deref().map_or(ptr::null(), &mut keep);
        let mut portmap = pinhole_gateway_probe {
            probed: r.portmap.is_some(),
            gateway: [0; PINHOLE_ADDRESS_MAX],
            pcp: PINHOLE_UNKNOWN,
            natpmp: PINHOLE_UNKNOWN,
            upnp: PINHOLE_UNKNOWN,
            natpmp_external: [0; PINHOLE_ADDRESS_MAX],
            upnp_external: [0; PINHOLE_ADDRESS_MAX],
            error: ptr::null(),
        };
        if let Some(GatewayProbe {
            gateway,
            pcp,
            natpmp,
            upnp,
            natpmp_external,
            upnp_external,
            error,
        }) = &r.portmap
        {
            fill(&mut portmap.gateway, gateway.as_deref().unwrap_or(""));
            portmap.pcp = tristate(*pcp);
            portmap.natpmp = tristate(*natpmp);
            portmap.upnp = tristate(*upnp);
            fill(
                &mut portmap.natpmp_external,
                natpmp_external.as_deref().unwrap_or(""),
            );
            fill(
                &mut portmap.upnp_external,
                upnp_external.as_deref().unwrap_or(""),
            );
            portmap.error = error.as_deref().map_or(ptr::null(), &mut keep);
        }
        let report = pinhole_netcheck_report {
            udp: r.udp,
            mapping: behaviour(r.mapping),
            filtering: behaviour(r.filtering),
            hairpinning: tristate(r.hairpinning),
            alg_rewrites: tristate(r.alg_rewrites),
            lifetime_measured: r.binding_lifetime.is_some(),
            lifetime_at_least_ms: millis(r.binding_lifetime.and_then(|l| l.at_least_ms)),
            lifetime_less_than_ms: millis(r.binding_lifetime.and_then(|l| l.less_than_ms)),
            rfc5780_server,
            public_addresses: public.as_ptr(),
            public_address_count: public.len(),
            servers: servers.as_ptr(),
            server_count: servers.len(),
            notes: notes.as_ptr(),
            note_count: notes.len(),
            portmap,
            port_allocation: match r.port_allocation.map(|a| a.kind) {
                None => PINHOLE_PORT_ALLOCATION_NOT_TESTED,
                Some(PortAllocationKind::Unknown) => PINHOLE_PORT_ALLOCATION_UNKNOWN,
                Some(PortAllocationKind::Preserving) => PINHOLE_PORT_ALLOCATION_PRESERVING,
                Some(PortAllocationKind::Sequential) => PINHOLE_PORT_ALLOCATION_SEQUENTIAL,
                Some(PortAllocationKind::Random) => PINHOLE_PORT_ALLOCATION_RANDOM,
            },
            port_allocation_delta: r.port_allocation.and_then(|a| a.delta).unwrap_or(0),
        };
        CReport {
            _strings: strings,
            _servers: servers,
            _public: public,
            _notes: notes,
            report,
        }
    }
}

/// Reads a C netcheck config.
///
/// # Safety
/// `c` follows the documented contract of `pinhole_netcheck_config`.
unsafe fn read_config(c: &pinhole_netcheck_config) -> Result<NetcheckConfig, PinholeError> {
    let mut stun_servers = Vec::new();
    if c.stun_server_count > 0 {
        if c.stun_servers.is_null() {
            return Err(PinholeError::invalid("stun_servers is NULL"));
        }
        if c.stun_server_count > crate::ops::MAX_SERVERS {
            return Err(PinholeError::invalid("too many STUN servers"));
        }
        for i in 0..c.stun_server_count {
            // SAFETY: the caller gives `stun_server_count` pointers.
            let p = unsafe { *c.stun_servers.add(i) };
            // SAFETY: each is NULL or a NUL-terminated string.
            let s = unsafe { opt_str(p, "a STUN server") }?
                .ok_or_else(|| PinholeError::invalid("a STUN server is NULL"))?;
            stun_servers.push(s.to_owned());
        }
    }
    Ok(NetcheckConfig {
        stun_servers,
        timeout_ms: c.timeout_ms,
        no_hairpin: c.no_hairpin,
        binding_lifetime: c.binding_lifetime,
        no_portmap: c.no_portmap,
        // SAFETY: NULL or a NUL-terminated string.
        gateway: unsafe { opt_str(c.gateway, "gateway") }?.map(str::to_owned),
        local_ip: None,
    })
}

/// Starts a netcheck. On success `*out` is the handle (free it with
/// `pinhole_netcheck_destroy`) and the callbacks follow on the netcheck's own thread.
/// The config is copied: it need not outlive the call.
///
/// # Safety
/// `config` and `out` are NULL or valid; the config's strings are NULL or
/// NUL-terminated, and `stun_servers` holds `stun_server_count` of them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_netcheck_start(
    config: *const pinhole_netcheck_config,
    out: *mut *mut pinhole_netcheck,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(PinholeError::invalid("out is NULL"));
        }
        // SAFETY: NULL or valid for its `struct_size`, per the contract.
        let c = &unsafe { read_sized(config) }?;
        let Some(cb_done) = c.cb_done else {
            return Err(PinholeError::invalid("cb_done is NULL"));
        };
        let cb_progress = c.cb_progress;
        let user_ptr = SendPtr(c.user_ptr);
        // SAFETY: per this function's contract.
        let plan = NetcheckPlan::new(&unsafe { read_config(c) }?)?;
        let destroyed = Arc::new(AtomicBool::new(false));
        let handle = Box::new(pinhole_netcheck {
            task: Mutex::new(None),
            destroyed: destroyed.clone(),
        });
        let raw = Box::into_raw(handle);
        let hptr = HandlePtr(raw);
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        let task = Task::spawn_parked("pinhole-netcheck", move |mut stop| async move {
            // Wait until the handle is complete: a callback may destroy it.
            if ready.await.is_err() {
                return;
            }
            let (hptr, user_ptr) = (hptr, user_ptr);
            let alive = || !destroyed.load(Ordering::Acquire);
            let progress = |p: NetcheckProgress| {
                if let (Some(cb), true) = (cb_progress, alive()) {
                    let ev = CEvent::new(&p);
                    // SAFETY: the caller's callback, with what it was promised.
                    unsafe { cb(hptr.0, &ev.event, user_ptr.0) };
                }
            };
            let result = tokio::select! {
                r = plan.run(progress) => r,
                () = stop.wait() => Err(PinholeError::Cancelled),
            };
            if !alive() {
                return;
            }
            match result {
                Ok(report) => {
                    let c = CReport::new(&report);
                    // SAFETY: as above; the report lives across the call.
                    unsafe { cb_done(hptr.0, PINHOLE_OK, &c.report, user_ptr.0) };
                }
                // SAFETY: as above.
                Err(e) => unsafe { cb_done(hptr.0, e.code(), ptr::null(), user_ptr.0) },
            }
        });
        // SAFETY: `raw` from Box::into_raw above, not handed out; `out` checked non-NULL.
        unsafe { publish_task_handle(raw, task, out, go) }
    })
}

/// Cancels a netcheck: the done callback follows with `PINHOLE_ERR_CANCELLED`, unless the
/// outcome was already delivered. Returns at once.
///
/// # Safety
/// `netcheck` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_netcheck_cancel(netcheck: *mut pinhole_netcheck) -> c_int {
    guard(|| {
        // SAFETY: NULL or live, per the contract.
        let Some(h) = (unsafe { netcheck.as_ref() }) else {
            return Err(PinholeError::invalid("netcheck is NULL"));
        };
        if let Some(t) = &*h.task.lock().unwrap_or_else(|p| p.into_inner()) {
            t.stop();
        }
        Ok(PINHOLE_OK)
    })
}

/// Stops the netcheck if it runs and frees the handle. From another thread, it waits
/// until a running callback returns (a netcheck has nothing to tell a server: it stops at
/// once otherwise), and no callback runs after it returns; from the netcheck's own
/// callback, it returns at once and no further callback runs. NULL is ignored.
///
/// # Safety
/// `netcheck` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_netcheck_destroy(netcheck: *mut pinhole_netcheck) {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle(netcheck) }
}

/// Stops the netcheck and frees the handle without waiting: returns at once, also from
/// the netcheck's own callback. A callback already running (or just starting) when it is
/// called may still run; then no callback of the netcheck runs (not even the done
/// callback), the handle is freed, and `cb` (optional) is called once on the netcheck's
/// thread, never from within this call. Data the callbacks use must stay valid until `cb`.
/// `PINHOLE_ERR_INVALID` for NULL.
///
/// # Safety
/// `netcheck` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_netcheck_destroy_async(
    netcheck: *mut pinhole_netcheck,
    cb: pinhole_destroyed_cb,
    user_ptr: *mut c_void,
) -> c_int {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle_async(netcheck, "netcheck", cb, user_ptr) }
}

/// Initialises a config: zeroes its `size` bytes, sets the defaults (`timeout_ms` 10000;
/// everything else zero, NULL or false) and `struct_size` = `size`. Call it as
/// `pinhole_netcheck_config_init(&config, sizeof config)`; `PINHOLE_ERR_INVALID` (nothing
/// written) for NULL or a size that cannot be a `pinhole_netcheck_config`.
///
/// # Safety
/// `config` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_netcheck_config_init(
    config: *mut pinhole_netcheck_config,
    size: usize,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { init_sized(config, size) }
}
