//! Peer connections (ICE, RFC 8445; libjuice's `juice_agent` is the model):
//! `pinhole_peer_config_init`, `pinhole_peer_create`, `_get_local_description`,
//! `_set_remote_description`, `_add_remote_candidate`, `_set_remote_gathering_done`,
//! `_send`, `_get_selected_pair`, `_restart`, `_network_changed`,
//! `_set_keepalive_policy`, `_get_keepalive_policy`, `_get_keepalive_interval_ms`,
//! `_destroy`, `_destroy_async`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::codes::*;
use super::{
    CConfig, SendPtr, TaskHandle, cstring, fill, guard, init_sized, opt_str, pinhole_destroyed_cb,
    publish_task_handle, read_sized, write_buf,
};
use crate::error::PinholeError;
use crate::ops::{PeerControl, PeerPlan};
use crate::task::{Rendezvous, Task};
use crate::types::{
    IceConnectionState, KeepalivePolicy, PeerConnectionConfig, PeerConnectionEvent, PeerTurnServer,
    RelayPolicy, SelectedPair,
};

/// How long `pinhole_peer_create` waits for the connection's thread to bind the socket
/// (resolving each server's name takes 5 s at most).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// A peer connection (opaque).
///
/// Threads: its callbacks run on the connection's own thread, one at a time, in order.
/// Every other function may be called from any thread, several at once, and from the
/// callbacks (`pinhole_peer_restart`, `pinhole_peer_network_changed` and
/// `pinhole_peer_get_keepalive_interval_ms` from a callback are applied at once);
/// `pinhole_peer_destroy`
/// or `pinhole_peer_destroy_async` is the last call, from any thread or from a callback.
pub struct pinhole_peer {
    task: Mutex<Option<Task>>,
    destroyed: Arc<AtomicBool>,
    control: Arc<PeerControl>,
}

impl TaskHandle for pinhole_peer {
    fn task(&self) -> &Mutex<Option<Task>> {
        &self.task
    }
    fn destroyed(&self) -> &AtomicBool {
        &self.destroyed
    }
}

/// A TURN server for a peer connection (an element of `pinhole_peer_config.turn_servers`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pinhole_peer_turn_server {
    /// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065; at most
    /// 500 bytes). `turns:` needs a library built with the `tls` feature, else
    /// `PINHOLE_ERR_UNSUPPORTED`.
    pub uri: *const c_char,
    /// The user name of the long-term credentials (1 to 512 bytes).
    pub username: *const c_char,
    /// The password (never logged).
    pub password: *const c_char,
}

/// The pair of candidates data goes on; valid only during a callback, or filled by
/// `pinhole_peer_get_selected_pair`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pinhole_peer_pair {
    /// Our candidate's address, `IP:port` (a relayed candidate's relayed address).
    pub local: [c_char; PINHOLE_ADDRESS_MAX],
    /// The peer's candidate's address, `IP:port`.
    pub remote: [c_char; PINHOLE_ADDRESS_MAX],
    /// Whether data goes through a TURN relay (either candidate is relayed).
    pub relayed: bool,
    /// The round-trip time the pair's check measured, milliseconds; -1 if unknown.
    pub rtt_ms: i32,
}

/// A local candidate to signal to the peer (trickle, RFC 8838): the SDP line
/// `a=candidate:...` (without line ending), valid only during the call.
pub type pinhole_peer_candidate_cb = Option<
    unsafe extern "C" fn(peer: *mut pinhole_peer, candidate: *const c_char, user_ptr: *mut c_void),
>;
/// No more local candidates: signal `a=end-of-candidates`.
pub type pinhole_peer_gathering_done_cb =
    Option<unsafe extern "C" fn(peer: *mut pinhole_peer, user_ptr: *mut c_void)>;
/// The ICE state changed (`PINHOLE_ICE_STATE_*`).
pub type pinhole_peer_state_cb = Option<
    unsafe extern "C" fn(peer: *mut pinhole_peer, state: pinhole_ice_state, user_ptr: *mut c_void),
>;
/// Data now goes on this pair (the first working pair, the nominated one, a move).
pub type pinhole_peer_selected_pair_cb = Option<
    unsafe extern "C" fn(
        peer: *mut pinhole_peer,
        pair: *const pinhole_peer_pair,
        user_ptr: *mut c_void,
    ),
>;
/// A datagram from the peer: `len` bytes at `data`, valid only during the call.
pub type pinhole_peer_recv_cb = Option<
    unsafe extern "C" fn(
        peer: *mut pinhole_peer,
        data: *const u8,
        len: usize,
        user_ptr: *mut c_void,
    ),
>;
/// The connection ended by itself (not called after `pinhole_peer_destroy` began): a
/// `PINHOLE_ERR_*` code and why (valid only during the call). The handle must still be
/// destroyed.
pub type pinhole_peer_closed_cb = Option<
    unsafe extern "C" fn(
        peer: *mut pinhole_peer,
        result: c_int,
        reason: *const c_char,
        user_ptr: *mut c_void,
    ),
>;
/// This side restarted ICE by itself: signal `description` (this side's new local
/// description, CRLF lines, valid only during the call) to the peer; its candidates follow
/// through `cb_candidate`. Either the peer restarted (its description came with a new
/// `a=ice-ufrag`) and this side followed, or the built-in network monitor saw the host's
/// addresses change and restarted on the new network (see `no_network_monitor`), or a
/// resume (`pinhole_peer_set_keepalive_policy` out of `PINHOLE_KEEPALIVE_SUSPENDED`, or
/// back to `PINHOLE_KEEPALIVE_FOREGROUND`) found the path gone and restarted.
pub type pinhole_peer_description_cb = Option<
    unsafe extern "C" fn(
        peer: *mut pinhole_peer,
        description: *const c_char,
        user_ptr: *mut c_void,
    ),
>;

/// How a peer connection starts. Initialise it with
/// `pinhole_peer_config_init(&config, sizeof config)`, then set the servers, `controlling`
/// and the callbacks (each optional).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct pinhole_peer_config {
    /// The size of this struct as the program was built (`sizeof`), set by
    /// `pinhole_peer_config_init`: how the library tells which fields the program knows.
    pub struct_size: usize,
    /// STUN servers for server-reflexive candidates: `host:port` or `stun:host[:port]`
    /// (at most 32 servers in all, each at most 500 bytes). None by default (no public
    /// server is used unless given).
    pub stun_servers: *const *const c_char,
    /// How many.
    pub stun_server_count: usize,
    /// TURN servers for relayed candidates.
    pub turn_servers: *const pinhole_peer_turn_server,
    /// How many.
    pub turn_server_count: usize,
    /// This side's ICE role (RFC 8445 §6.1.1): exactly one of the two peers controls
    /// (nominates); the offerer, by convention.
    pub controlling: bool,
    /// Ask the gateway for a port mapping of the socket (PCP, NAT-PMP, UPnP IGD) and offer
    /// its external address as a candidate (off by default).
    pub port_mapping: bool,
    /// Run as an ICE-lite agent (RFC 8445 §2.5), for a host with a public address.
    pub lite: bool,
    /// `PINHOLE_RELAY_ALL` (0, the default), `PINHOLE_RELAY_ONLY` (needs a TURN server;
    /// no host or server-reflexive candidate is offered) or `PINHOLE_RELAY_NONE`.
    pub relay_policy: pinhole_relay_policy,
    /// The local socket address `IP:port`; NULL: `0.0.0.0:0` (the local address toward
    /// the first server, 127.0.0.1 without servers). `[::]:0`: one dual-stack socket with
    /// a host candidate on every usable interface.
    pub bind: *const c_char,
    /// Local candidates, `a=candidate:...`.
    pub cb_candidate: pinhole_peer_candidate_cb,
    /// End of the local candidates.
    pub cb_gathering_done: pinhole_peer_gathering_done_cb,
    /// State changes.
    pub cb_state_changed: pinhole_peer_state_cb,
    /// The selected pair.
    pub cb_selected_pair: pinhole_peer_selected_pair_cb,
    /// Datagrams from the peer (without it, they are dropped).
    pub cb_recv: pinhole_peer_recv_cb,
    /// The connection ended by itself.
    pub cb_closed: pinhole_peer_closed_cb,
    /// This side restarted by itself (the peer restarted, or the network changed): its new
    /// description to signal.
    pub cb_local_description: pinhole_peer_description_cb,
    /// Passed to the callbacks.
    pub user_ptr: *mut c_void,
    /// (The struct's first version ends above, at `user_ptr`; fields from here on are
    /// appended ones, read only when `struct_size` covers them, else their default.)
    ///
    /// Turn off the built-in network monitor (Linux and Android: rtnetlink address and
    /// route changes; off by default, i.e. the monitor runs), which otherwise restarts ICE
    /// by itself when the addresses of a dual-stack socket (`bind` `[::]:0`) change and
    /// calls `cb_local_description`. For programs that follow the network themselves and
    /// call `pinhole_peer_network_changed`. Sockets on loopback, and other platforms, have
    /// no built-in monitor.
    pub no_network_monitor: bool,
    /// The keepalive policy to start with, `PINHOLE_KEEPALIVE_*` (default
    /// `PINHOLE_KEEPALIVE_FOREGROUND`, 0); change it with
    /// `pinhole_peer_set_keepalive_policy`. Another value: `PINHOLE_ERR_INVALID`.
    pub keepalive_policy: pinhole_keepalive_policy,
    /// A fixed keepalive interval for `PINHOLE_KEEPALIVE_BACKGROUND`, milliseconds,
    /// instead of the one that adapts to the path's NATs; 0 (the default): adaptive (25 s
    /// at first, then up to 80 % of the longest silence the path's NAT bindings were seen
    /// to survive, at most 240 s). Otherwise 1000 to 3600000 (an hour), else
    /// `PINHOLE_ERR_INVALID`.
    pub keepalive_interval_ms: u32,
}

// SAFETY: `#[repr(C)]`, `struct_size` first; all-zero is valid (NULL pointers, no
// callbacks, false, 0) and means every default.
unsafe impl CConfig for pinhole_peer_config {
    const NAME: &'static str = "pinhole_peer_config";
    const INIT: &'static str = "pinhole_peer_config_init";
    const MIN_SIZE: usize =
        std::mem::offset_of!(pinhole_peer_config, user_ptr) + size_of::<*mut c_void>();
    fn set_defaults(&mut self) {}
}

#[derive(Clone, Copy)]
struct HandlePtr(*mut pinhole_peer);
// SAFETY: only handed back to the caller's callbacks, never dereferenced by the thread.
unsafe impl Send for HandlePtr {}

/// Reads a C string that must be there.
///
/// # Safety
/// `p` is NULL or NUL-terminated.
unsafe fn required(p: *const c_char, what: &str) -> Result<String, PinholeError> {
    // SAFETY: per the contract.
    unsafe { opt_str(p, what) }?
        .map(str::to_owned)
        .ok_or_else(|| PinholeError::invalid(format!("{what} is NULL")))
}

/// Reads a C peer config.
///
/// # Safety
/// `c` follows the documented contract of `pinhole_peer_config`.
unsafe fn read_config(c: &pinhole_peer_config) -> Result<PeerConnectionConfig, PinholeError> {
    let count = c.stun_server_count.saturating_add(c.turn_server_count);
    if count > crate::ops::MAX_SERVERS {
        return Err(PinholeError::invalid("too many STUN and TURN servers"));
    }
    let mut stun_servers = Vec::new();
    if c.stun_server_count > 0 {
        if c.stun_servers.is_null() {
            return Err(PinholeError::invalid("stun_servers is NULL"));
        }
        for i in 0..c.stun_server_count {
            // SAFETY: the caller gives `stun_server_count` pointers, each NULL or a
            // NUL-terminated string.
            stun_servers.push(unsafe { required(*c.stun_servers.add(i), "a STUN server") }?);
        }
    }
    let mut turn_servers = Vec::new();
    if c.turn_server_count > 0 {
        if c.turn_servers.is_null() {
            return Err(PinholeError::invalid("turn_servers is NULL"));
        }
        for i in 0..c.turn_server_count {
            // SAFETY: the caller gives `turn_server_count` structs.
            let t = unsafe { &*c.turn_servers.add(i) };
            // SAFETY: each string NULL or NUL-terminated, per the contract.
            unsafe {
                turn_servers.push(PeerTurnServer {
                    uri: required(t.uri, "a TURN server's uri")?,
                    username: required(t.username, "a TURN server's username")?,
                    password: required(t.password, "a TURN server's password")?,
                });
            }
        }
    }
    Ok(PeerConnectionConfig {
        stun_servers,
        turn_servers,
        controlling: c.controlling,
        port_mapping: c.port_mapping,
        relay_policy: match c.relay_policy {
            PINHOLE_RELAY_ALL => RelayPolicy::All,
            PINHOLE_RELAY_ONLY => RelayPolicy::RelayOnly,
            PINHOLE_RELAY_NONE => RelayPolicy::NoRelay,
            _ => return Err(PinholeError::invalid("relay_policy")),
        },
        // SAFETY: NULL or a NUL-terminated string.
        bind: unsafe { opt_str(c.bind, "bind") }?.map(str::to_owned),
        lite: c.lite,
        no_network_monitor: c.no_network_monitor,
        keepalive_policy: Some(policy_from_c(c.keepalive_policy, "keepalive_policy")?),
        keepalive_interval_ms: c.keepalive_interval_ms,
    })
}

/// A `PINHOLE_KEEPALIVE_*` value.
fn policy_from_c(p: pinhole_keepalive_policy, what: &str) -> Result<KeepalivePolicy, PinholeError> {
    match p {
        PINHOLE_KEEPALIVE_FOREGROUND => Ok(KeepalivePolicy::Foreground),
        PINHOLE_KEEPALIVE_BACKGROUND => Ok(KeepalivePolicy::Background),
        PINHOLE_KEEPALIVE_SUSPENDED => Ok(KeepalivePolicy::Suspended),
        _ => Err(PinholeError::invalid(format!(
            "{what} {p}: not a PINHOLE_KEEPALIVE_* value"
        ))),
    }
}

fn policy_to_c(p: KeepalivePolicy) -> pinhole_keepalive_policy {
    match p {
        KeepalivePolicy::Foreground => PINHOLE_KEEPALIVE_FOREGROUND,
        KeepalivePolicy::Background => PINHOLE_KEEPALIVE_BACKGROUND,
        KeepalivePolicy::Suspended => PINHOLE_KEEPALIVE_SUSPENDED,
    }
}

fn state_to_c(s: IceConnectionState) -> pinhole_ice_state {
    match s {
        IceConnectionState::New => PINHOLE_ICE_STATE_NEW,
        IceConnectionState::Checking => PINHOLE_ICE_STATE_CHECKING,
        IceConnectionState::Connected => PINHOLE_ICE_STATE_CONNECTED,
        IceConnectionState::Completed => PINHOLE_ICE_STATE_COMPLETED,
        IceConnectionState::Failed => PINHOLE_ICE_STATE_FAILED,
        IceConnectionState::Disconnected => PINHOLE_ICE_STATE_DISCONNECTED,
        IceConnectionState::Closed => PINHOLE_ICE_STATE_CLOSED,
    }
}

fn pair_to_c(p: &SelectedPair, rtt_ms: Option<u32>) -> pinhole_peer_pair {
    let mut out = pinhole_peer_pair {
        local: [0; PINHOLE_ADDRESS_MAX],
        remote: [0; PINHOLE_ADDRESS_MAX],
        relayed: p.relayed,
        rtt_ms: rtt_ms.map_or(-1, |r| i32::try_from(r).unwrap_or(i32::MAX)),
    };
    fill(&mut out.local, &p.local);
    fill(&mut out.remote, &p.remote);
    out
}

/// The callbacks of one connection.
struct Callbacks {
    c: pinhole_peer_config,
    handle: HandlePtr,
    user_ptr: SendPtr,
    destroyed: Arc<AtomicBool>,
}

// SAFETY: the config's pointers are not dereferenced after `pinhole_peer_create` read
// them; the callbacks and `user_ptr` are the caller's, documented as called on the
// connection's own thread.
unsafe impl Send for Callbacks {}

impl Callbacks {
    fn deliver(&self, ev: PeerConnectionEvent) {
        if self.destroyed.load(Ordering::Acquire) {
            return;
        }
        let (h, u) = (self.handle.0, self.user_ptr.0);
        let c = &self.c;
        // SAFETY (every call below): the caller's callbacks, with their own pointer; the
        // strings and structs live across the calls.
        match ev {
            PeerConnectionEvent::LocalCandidate { candidate } => {
                if let Some(cb) = c.cb_candidate {
                    let line = cstring(&format!("a={candidate}"));
                    // SAFETY: see above.
                    unsafe { cb(h, line.as_ptr(), u) };
                }
            }
            PeerConnectionEvent::GatheringComplete => {
                if let Some(cb) = c.cb_gathering_done {
                    // SAFETY: see above.
                    unsafe { cb(h, u) };
                }
            }
            PeerConnectionEvent::StateChanged { state } => {
                if let Some(cb) = c.cb_state_changed {
                    // SAFETY: see above.
                    unsafe { cb(h, state_to_c(state), u) };
                }
            }
            PeerConnectionEvent::SelectedPair {
                local,
                remote,
                relayed,
                rtt_ms,
            } => {
                if let Some(cb) = c.cb_selected_pair {
                    let pair = pair_to_c(
                        &SelectedPair {
                            local,
                            remote,
                            relayed,
                        },
                        rtt_ms,
                    );
                    // SAFETY: see above.
                    unsafe { cb(h, &pair, u) };
                }
            }
            PeerConnectionEvent::Data { data } => {
                if let Some(cb) = c.cb_recv {
                    // SAFETY: see above.
                    unsafe { cb(h, data.as_ptr(), data.len(), u) };
                }
            }
            PeerConnectionEvent::RemoteRestarted { local_description }
            | PeerConnectionEvent::NetworkChanged { local_description } => {
                if let Some(cb) = c.cb_local_description {
                    let d = cstring(&local_description);
                    // SAFETY: see above.
                    unsafe { cb(h, d.as_ptr(), u) };
                }
            }
            PeerConnectionEvent::Closed { error: Some(e) } => {
                if let Some(cb) = c.cb_closed {
                    let reason: CString = cstring(&e);
                    // SAFETY: see above.
                    unsafe { cb(h, PINHOLE_ERR_IO, reason.as_ptr(), u) };
                }
            }
            PeerConnectionEvent::RelayFailed { reason } => {
                tracing::warn!(%reason, "a relay could not be allocated; going on without it");
            }
            PeerConnectionEvent::CandidateUnresolved { name } => {
                tracing::info!(%name, "a candidate of the peer's was not resolved (mDNS)");
            }
            // After a close asked for (only by destroying, which silences the callbacks).
            PeerConnectionEvent::Closed { error: None } => {}
        }
    }
}

/// Creates a peer connection: binds its socket (resolving the servers' names first) and
/// starts gathering, returning once the socket is bound; `*out` is then the handle (free
/// it with `pinhole_peer_destroy`), `pinhole_peer_get_local_description` has the local
/// credentials, and the callbacks follow on the connection's own thread (candidates,
/// states, ...). Errors: `PINHOLE_ERR_INVALID` (the config), `PINHOLE_ERR_UNSUPPORTED`
/// (`turns:` without TLS support), `PINHOLE_ERR_NO_SERVER` (relay only and no TURN server
/// resolved), `PINHOLE_ERR_IO` (the socket). The config is copied; passwords are never
/// logged.
///
/// # Safety
/// `config` and `out` are NULL or valid; the config's strings are NULL or NUL-terminated
/// and its arrays hold their counts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_create(
    config: *const pinhole_peer_config,
    out: *mut *mut pinhole_peer,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(PinholeError::invalid("out is NULL"));
        }
        // SAFETY: NULL or valid for its `struct_size`, per the contract.
        let c = unsafe { read_sized(config) }?;
        // SAFETY: per this function's contract.
        let plan = PeerPlan::new(&unsafe { read_config(&c) }?)?;
        let (control, commands) = PeerControl::new();
        let destroyed = Arc::new(AtomicBool::new(false));
        let raw = Box::into_raw(Box::new(pinhole_peer {
            task: Mutex::new(None),
            destroyed: destroyed.clone(),
            control: control.clone(),
        }));
        let callbacks = Callbacks {
            c,
            handle: HandlePtr(raw),
            user_ptr: SendPtr(c.user_ptr),
            destroyed,
        };
        let (go, ready) = tokio::sync::oneshot::channel::<()>();
        // A condition variable, not a channel: this may be a C program's main thread,
        // which a channel's wait would give a handle never freed.
        let started = Arc::new(Rendezvous::<Result<(), PinholeError>>::default());
        let started_tx = started.clone();
        let task = Task::spawn_parked("pinhole-peer", move |stop| async move {
            let callbacks = callbacks;
            plan.run(
                stop,
                control,
                commands,
                |r| started_tx.put(r),
                // The handle is complete before the callbacks begin: one may destroy it.
                Some(ready),
                |ev| callbacks.deliver(ev),
            )
            .await;
        });
        let task = match task {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: from Box::into_raw, never handed out.
                drop(unsafe { Box::from_raw(raw) });
                return Err(e);
            }
        };
        let started = started.take_timeout(CREATE_TIMEOUT).unwrap_or_else(|| {
            Err(PinholeError::TimedOut(
                "the peer connection did not start in time".into(),
            ))
        });
        if let Err(e) = started {
            task.stop();
            // It has reported its failure (or is told to stop): it ends without a
            // callback.
            task.join();
            // SAFETY: from Box::into_raw, never handed out; its thread has ended.
            drop(unsafe { Box::from_raw(raw) });
            return Err(e);
        }
        // SAFETY: `raw` from Box::into_raw above, not handed out; `out` checked non-NULL.
        unsafe { publish_task_handle(raw, Ok(task), out, go) }
    })
}

/// The live handle behind `peer`.
///
/// # Safety
/// `peer` is NULL or a live handle.
unsafe fn handle<'a>(peer: *const pinhole_peer) -> Result<&'a pinhole_peer, PinholeError> {
    // SAFETY: NULL or live, per the contract.
    unsafe { peer.as_ref() }.ok_or_else(|| PinholeError::invalid("peer is NULL"))
}

/// Writes the local description into `buf` of `size` bytes: `a=ice-ufrag`, `a=ice-pwd`,
/// `a=ice-options:trickle renomination`, `a=ice-pacing` (and `a=ice-lite`), the candidates gathered so
/// far and, once gathering is over, `a=end-of-candidates`; CRLF-terminated SDP lines.
/// Returns its length, or `PINHOLE_ERR_TOO_SMALL` (4096 bytes hold the credentials and
/// about 30 candidates).
///
/// # Safety
/// `peer` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_get_local_description(
    peer: *const pinhole_peer,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        // SAFETY: per the contract.
        unsafe { write_buf(&h.control.local_description(), buf, size) }
    })
}

/// Gives the peer's description: SDP lines (`a=ice-ufrag`, `a=ice-pwd`, `a=candidate`,
/// `a=end-of-candidates`, ...) or a whole SDP; other lines and unusable candidates are
/// ignored. May be given again with more candidates. A new `a=ice-ufrag` means the peer
/// restarted: this side restarts too and calls `cb_local_description`. Returns once
/// checked (applied in order on the connection's thread). `PINHOLE_ERR_INVALID` (NULL,
/// not UTF-8, no or malformed `a=ice-ufrag`/`a=ice-pwd`, over 64 KiB),
/// `PINHOLE_ERR_NOT_AVAILABLE` (the connection ended).
///
/// # Safety
/// `peer` is NULL or a live handle; `description` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_set_remote_description(
    peer: *mut pinhole_peer,
    description: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        // SAFETY: per the contract.
        let d = unsafe { required(description, "description") }?;
        h.control.set_remote_description(&d)?;
        Ok(PINHOLE_OK)
    })
}

/// Adds a candidate the peer trickled: `a=candidate:...` or `candidate:...`.
/// `PINHOLE_ERR_INVALID` (NULL, malformed), `PINHOLE_ERR_NOT_AVAILABLE` (ended).
///
/// # Safety
/// `peer` is NULL or a live handle; `candidate` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_add_remote_candidate(
    peer: *mut pinhole_peer,
    candidate: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        // SAFETY: per the contract.
        let c = unsafe { required(candidate, "candidate") }?;
        h.control.add_remote_candidate(&c)?;
        Ok(PINHOLE_OK)
    })
}

/// The peer's `a=end-of-candidates`: once every pair has failed, the state is
/// `PINHOLE_ICE_STATE_FAILED` (without it, ICE waits for more candidates).
/// `PINHOLE_ERR_NOT_AVAILABLE` (ended).
///
/// # Safety
/// `peer` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_set_remote_gathering_done(peer: *mut pinhole_peer) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        h.control.end_of_remote_candidates()?;
        Ok(PINHOLE_OK)
    })
}

/// Sends `len` bytes (at most `PINHOLE_PEER_DATA_MAX`; keep to 1 200 to fit every path)
/// to the peer on the selected pair; the data is copied and the call returns at once (UDP
/// may still lose it). `PINHOLE_ERR_INVALID` (NULL, too long), `PINHOLE_ERR_NOT_AVAILABLE`
/// (no pair selected yet, before the first `cb_selected_pair`; 1024 datagrams already
/// waiting for the connection's thread; ended).
///
/// # Safety
/// `peer` is NULL or a live handle; `data` is NULL (then `len` is 0) or has `len`
/// readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_send(
    peer: *mut pinhole_peer,
    data: *const u8,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        if len > PINHOLE_PEER_DATA_MAX {
            return Err(PinholeError::invalid(format!(
                "len {len}: at most PINHOLE_PEER_DATA_MAX ({PINHOLE_PEER_DATA_MAX})"
            )));
        }
        let bytes = if len == 0 {
            Vec::new()
        } else if data.is_null() {
            return Err(PinholeError::invalid("data is NULL"));
        } else {
            // SAFETY: `data` has `len` readable bytes, per the contract.
            unsafe { std::slice::from_raw_parts(data, len) }.to_vec()
        };
        h.control.send(bytes)?;
        Ok(PINHOLE_OK)
    })
}

/// Fills `*pair` with the pair data goes on. `PINHOLE_ERR_NOT_AVAILABLE` when none was
/// selected yet.
///
/// # Safety
/// `peer` is NULL or a live handle; `pair` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_get_selected_pair(
    peer: *const pinhole_peer,
    pair: *mut pinhole_peer_pair,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        if pair.is_null() {
            return Err(PinholeError::invalid("pair is NULL"));
        }
        match h.control.selected_pair() {
            Some(p) => {
                // SAFETY: non-NULL and writable, per the contract.
                unsafe { pair.write(pair_to_c(&p, None)) };
                Ok(PINHOLE_OK)
            }
            None => Ok(PINHOLE_ERR_NOT_AVAILABLE),
        }
    })
}

/// An ICE restart (RFC 8445 §9), for a changed network or a lost path: writes the new
/// local description (credentials; the candidates follow through `cb_candidate`) into
/// `buf` of `size` bytes, to signal to the peer, and returns its length
/// (`PINHOLE_ERR_TOO_SMALL`: the restart happened, the description is in
/// `pinhole_peer_get_local_description`). The current path carries data until a new pair
/// is selected. From a callback it is applied at once; from another thread it waits for
/// the connection's thread (`PINHOLE_ERR_TIMEOUT` after 10 s, when a callback blocks it).
///
/// # Safety
/// `peer` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_restart(
    peer: *mut pinhole_peer,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        if buf.is_null() {
            return Err(PinholeError::invalid("buf is NULL"));
        }
        let d = h.control.restart()?;
        // SAFETY: per the contract.
        unsafe { write_buf(&d, buf, size) }
    })
}

/// The host's network changed (Wi-Fi to cellular, a new address, a VPN), for programs that
/// follow the network themselves (with `no_network_monitor` where the built-in monitor
/// runs): a dual-stack socket's (`[::]:0`) addresses are found again and ICE restarts on
/// them (RFC 8445 §9), even when they look the same (candidates gathered again, relays
/// allocated again). Like `pinhole_peer_restart`, writes the new local description
/// (credentials; the candidates follow through `cb_candidate`) into `buf` of `size` bytes,
/// to signal to the peer, and returns its length (`PINHOLE_ERR_TOO_SMALL`: the restart
/// happened, the description is in `pinhole_peer_get_local_description`); the peer
/// restarts too and answers with its new description. The current path carries data
/// until a new pair is selected. From a callback it is applied at once; from another
/// thread it waits for the connection's thread (`PINHOLE_ERR_TIMEOUT` after 10 s, when a
/// callback blocks it). `PINHOLE_ERR_INVALID` (NULL), `PINHOLE_ERR_NOT_AVAILABLE`
/// (ended), `PINHOLE_ERR_IO` (no route for either address family).
///
/// # Safety
/// `peer` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_network_changed(
    peer: *mut pinhole_peer,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        if buf.is_null() {
            return Err(PinholeError::invalid("buf is NULL"));
        }
        let d = h.control.network_changed()?;
        // SAFETY: per the contract.
        unsafe { write_buf(&d, buf, size) }
    })
}

/// Sets the keepalive policy (`PINHOLE_KEEPALIVE_*`) as the program moves between
/// foreground, background and suspended (an app's lifecycle, a laptop going to sleep):
/// consent checks every 4 to 6 s in the foreground; in the background one check per
/// keepalive interval (see `pinhole_peer_get_keepalive_interval_ms`), shared with the
/// peer; none while suspended. Set `PINHOLE_KEEPALIVE_SUSPENDED` before a known suspension
/// (the system gives no callback at the moment it suspends). Leaving it (or the background
/// for the foreground) probes the path at once; if it does not answer within 4 s, ICE
/// restarts and `cb_local_description` brings the new description to signal. Returns at
/// once, from any thread or a callback; applied on the connection's thread in order with
/// the other calls. `PINHOLE_ERR_INVALID` (NULL, not a `PINHOLE_KEEPALIVE_*` value),
/// `PINHOLE_ERR_NOT_AVAILABLE` (ended).
///
/// # Safety
/// `peer` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_set_keepalive_policy(
    peer: *mut pinhole_peer,
    policy: pinhole_keepalive_policy,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        h.control
            .set_keepalive_policy(policy_from_c(policy, "policy")?)?;
        Ok(PINHOLE_OK)
    })
}

/// Writes the keepalive policy last set (the config's until then) into `*policy`.
/// `PINHOLE_ERR_INVALID` (NULL).
///
/// # Safety
/// `peer` is NULL or a live handle; `policy` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_get_keepalive_policy(
    peer: *const pinhole_peer,
    policy: *mut pinhole_keepalive_policy,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        if policy.is_null() {
            return Err(PinholeError::invalid("policy is NULL"));
        }
        // SAFETY: non-NULL and writable, per the contract.
        unsafe { policy.write(policy_to_c(h.control.keepalive_policy())) };
        Ok(PINHOLE_OK)
    })
}

/// Writes the background keepalive interval as it stands, milliseconds, into `*ms`: the
/// config's fixed `keepalive_interval_ms`, or the adaptive one (25 s at first; it grows
/// while the path's NAT bindings survive the silences between keepalives, and drops below
/// a silence one did not survive). From a callback it is read at once; from another thread
/// it waits for the connection's thread (`PINHOLE_ERR_TIMEOUT` after 10 s, when a callback
/// blocks it). `PINHOLE_ERR_INVALID` (NULL), `PINHOLE_ERR_NOT_AVAILABLE` (ended).
///
/// # Safety
/// `peer` is NULL or a live handle; `ms` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_get_keepalive_interval_ms(
    peer: *const pinhole_peer,
    ms: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: per the contract.
        let h = unsafe { handle(peer) }?;
        if ms.is_null() {
            return Err(PinholeError::invalid("ms is NULL"));
        }
        let v = h.control.keepalive_interval_ms()?;
        // SAFETY: non-NULL and writable, per the contract.
        unsafe { ms.write(v) };
        Ok(PINHOLE_OK)
    })
}

/// Closes the connection (deleting a port mapping of its socket, if it made one) and
/// frees the handle, blocking: from another thread it waits until a running callback
/// returns and the connection has closed (at most a few seconds, when a gateway does not
/// answer; from a UI thread use `pinhole_peer_destroy_async`). No callback runs once it
/// has begun. Called from the handle's own callback, it returns at once and the closing
/// finishes in the background. NULL is ignored.
///
/// # Safety
/// `peer` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_destroy(peer: *mut pinhole_peer) {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle(peer) }
}

/// Closes the connection and frees the handle without waiting: returns at once, also from
/// the connection's own callback. A callback already running (or just starting) when it
/// is called may still run; then no callback runs; once closed, the handle is freed and
/// `cb` (optional) is called once on the connection's thread, never from within this
/// call. Data the callbacks use must stay valid until `cb`. `PINHOLE_ERR_INVALID` for
/// NULL.
///
/// # Safety
/// `peer` is NULL or a live handle, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_destroy_async(
    peer: *mut pinhole_peer,
    cb: pinhole_destroyed_cb,
    user_ptr: *mut c_void,
) -> c_int {
    // SAFETY: NULL or a live handle from Box::into_raw, per the contract.
    unsafe { super::destroy_task_handle_async(peer, "peer", cb, user_ptr) }
}

/// Initialises a config: zeroes its `size` bytes (every default: no servers, controlled,
/// no port mapping, `PINHOLE_RELAY_ALL`, bound to `0.0.0.0:0`, no callbacks, the built-in
/// network monitor on, `PINHOLE_KEEPALIVE_FOREGROUND` with the adaptive interval) and sets
/// `struct_size` = `size`. Call it as `pinhole_peer_config_init(&config, sizeof config)`;
/// `PINHOLE_ERR_INVALID` (nothing written) for NULL or a size that cannot be a
/// `pinhole_peer_config`.
///
/// # Safety
/// `config` is NULL or has `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pinhole_peer_config_init(
    config: *mut pinhole_peer_config,
    size: usize,
) -> c_int {
    // SAFETY: per the contract.
    unsafe { init_sized(config, size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `no_network_monitor`, appended after `user_ptr`: read when `struct_size` covers it,
    /// its default (the monitor on) for a program built before it.
    #[test]
    fn no_network_monitor_is_read_when_the_struct_has_it() {
        let ours = size_of::<pinhole_peer_config>();
        let min = <pinhole_peer_config as CConfig>::MIN_SIZE;
        assert!(min < ours);
        // An older program's struct, followed by bytes that are not its own.
        let mut b = vec![0xABAB_ABAB_ABAB_ABABu64; (ours + 64).div_ceil(8)];
        let p = b.as_mut_ptr().cast::<pinhole_peer_config>();
        // SAFETY: the buffer holds more than `ours` bytes.
        unsafe {
            assert_eq!(pinhole_peer_config_init(p, min), PINHOLE_OK);
            let c = read_sized(p).unwrap();
            assert!(!read_config(&c).unwrap().no_network_monitor);
        }
        for set in [false, true] {
            let mut b = vec![0u64; ours.div_ceil(8)];
            let p = b.as_mut_ptr().cast::<pinhole_peer_config>();
            // SAFETY: the buffer holds `ours` bytes.
            unsafe {
                assert_eq!(pinhole_peer_config_init(p, ours), PINHOLE_OK);
                (*p).no_network_monitor = set;
                let c = read_sized(p).unwrap();
                assert_eq!(read_config(&c).unwrap().no_network_monitor, set);
            }
        }
    }

    /// `keepalive_policy` and `keepalive_interval_ms`, appended after
    /// `no_network_monitor`: their defaults (the foreground, adaptive) for a program built
    /// before them (its struct ends at `no_network_monitor`'s padding, which its
    /// `pinhole_peer_config_init` zeroed) or before `no_network_monitor`; read when the
    /// struct has them; a value that is no `PINHOLE_KEEPALIVE_*` refused.
    #[test]
    fn keepalive_fields_are_read_when_the_struct_has_them() {
        let ours = size_of::<pinhole_peer_config>();
        let before = std::mem::offset_of!(pinhole_peer_config, no_network_monitor)
            .next_multiple_of(align_of::<usize>())
            + align_of::<usize>();
        assert!(before < ours);
        assert!(std::mem::offset_of!(pinhole_peer_config, keepalive_interval_ms) >= before);
        for size in [<pinhole_peer_config as CConfig>::MIN_SIZE, before] {
            let mut b = vec![0xABAB_ABAB_ABAB_ABABu64; (ours + 64).div_ceil(8)];
            let p = b.as_mut_ptr().cast::<pinhole_peer_config>();
            // SAFETY: the buffer holds more than `ours` bytes.
            unsafe {
                assert_eq!(pinhole_peer_config_init(p, size), PINHOLE_OK);
                let c = read_config(&read_sized(p).unwrap()).unwrap();
                assert_eq!(
                    c.keepalive_policy,
                    Some(KeepalivePolicy::Foreground),
                    "{size}"
                );
                assert_eq!(c.keepalive_interval_ms, 0, "{size}");
            }
        }
        for (v, want) in [
            (PINHOLE_KEEPALIVE_FOREGROUND, KeepalivePolicy::Foreground),
            (PINHOLE_KEEPALIVE_BACKGROUND, KeepalivePolicy::Background),
            (PINHOLE_KEEPALIVE_SUSPENDED, KeepalivePolicy::Suspended),
        ] {
            let mut b = vec![0u64; ours.div_ceil(8)];
            let p = b.as_mut_ptr().cast::<pinhole_peer_config>();
            // SAFETY: the buffer holds `ours` bytes.
            unsafe {
                assert_eq!(pinhole_peer_config_init(p, ours), PINHOLE_OK);
                (*p).keepalive_policy = v;
                (*p).keepalive_interval_ms = 15_000;
                let c = read_config(&read_sized(p).unwrap()).unwrap();
                assert_eq!(c.keepalive_policy, Some(want));
                assert_eq!(c.keepalive_interval_ms, 15_000);
            }
        }
        for bad in [-1, 3, c_int::MAX] {
            let mut b = vec![0u64; ours.div_ceil(8)];
            let p = b.as_mut_ptr().cast::<pinhole_peer_config>();
            // SAFETY: the buffer holds `ours` bytes.
            unsafe {
                assert_eq!(pinhole_peer_config_init(p, ours), PINHOLE_OK);
                (*p).keepalive_policy = bad;
                assert!(matches!(
                    read_config(&read_sized(p).unwrap()),
                    Err(PinholeError::InvalidArgument(_))
                ));
                let mut out = std::ptr::null_mut();
                assert_eq!(pinhole_peer_create(p, &mut out), PINHOLE_ERR_INVALID);
                assert!(out.is_null());
            }
        }
        // A fixed interval out of range: refused when the connection is made.
        for bad in [1, 999, 3_600_001] {
            let mut b = vec![0u64; ours.div_ceil(8)];
            let p = b.as_mut_ptr().cast::<pinhole_peer_config>();
            // SAFETY: the buffer holds `ours` bytes.
            unsafe {
                assert_eq!(pinhole_peer_config_init(p, ours), PINHOLE_OK);
                (*p).keepalive_interval_ms = bad;
                let mut out = std::ptr::null_mut();
                assert_eq!(pinhole_peer_create(p, &mut out), PINHOLE_ERR_INVALID);
                assert!(out.is_null());
            }
        }
    }

    /// `pinhole_peer_set_keepalive_policy` and the getters: NULL and values that are no
    /// `PINHOLE_KEEPALIVE_*` refused (never a panic), each policy set and read back on a
    /// live handle, the fixed interval read back, `PINHOLE_ERR_NOT_AVAILABLE` once ended.
    #[test]
    fn keepalive_policy_calls_check_their_arguments() {
        // SAFETY: every call below gets NULL or the live handle made here, and pointers to
        // locals.
        unsafe {
            let mut policy = -5;
            let mut ms = 0u32;
            assert_eq!(
                pinhole_peer_set_keepalive_policy(std::ptr::null_mut(), 0),
                PINHOLE_ERR_INVALID
            );
            assert_eq!(
                pinhole_peer_get_keepalive_policy(std::ptr::null(), &mut policy),
                PINHOLE_ERR_INVALID
            );
            assert_eq!(
                pinhole_peer_get_keepalive_interval_ms(std::ptr::null(), &mut ms),
                PINHOLE_ERR_INVALID
            );
            let mut c: pinhole_peer_config = std::mem::zeroed();
            assert_eq!(
                pinhole_peer_config_init(&mut c, size_of_val(&c)),
                PINHOLE_OK
            );
            let bind = CString::new("127.0.0.1:0").unwrap();
            c.bind = bind.as_ptr();
            c.keepalive_policy = PINHOLE_KEEPALIVE_BACKGROUND;
            c.keepalive_interval_ms = 20_000;
            let mut p = std::ptr::null_mut();
            assert_eq!(pinhole_peer_create(&c, &mut p), PINHOLE_OK);
            assert_eq!(
                pinhole_peer_get_keepalive_policy(p, &mut policy),
                PINHOLE_OK
            );
            assert_eq!(policy, PINHOLE_KEEPALIVE_BACKGROUND, "the config's");
            assert_eq!(
                pinhole_peer_get_keepalive_interval_ms(p, &mut ms),
                PINHOLE_OK
            );
            assert_eq!(ms, 20_000);
            assert_eq!(
                pinhole_peer_get_keepalive_policy(p, std::ptr::null_mut()),
                PINHOLE_ERR_INVALID
            );
            assert_eq!(
                pinhole_peer_get_keepalive_interval_ms(p, std::ptr::null_mut()),
                PINHOLE_ERR_INVALID
            );
            for bad in [-1, 3, 42, c_int::MIN] {
                assert_eq!(
                    pinhole_peer_set_keepalive_policy(p, bad),
                    PINHOLE_ERR_INVALID
                );
            }
            for v in [
                PINHOLE_KEEPALIVE_SUSPENDED,
                PINHOLE_KEEPALIVE_FOREGROUND,
                PINHOLE_KEEPALIVE_BACKGROUND,
                PINHOLE_KEEPALIVE_FOREGROUND,
            ] {
                assert_eq!(pinhole_peer_set_keepalive_policy(p, v), PINHOLE_OK);
                assert_eq!(
                    pinhole_peer_get_keepalive_policy(p, &mut policy),
                    PINHOLE_OK
                );
                assert_eq!(policy, v);
            }
            // The bad values changed nothing, and the calls reached the connection's
            // thread (the interval's call waits for it, after them).
            assert_eq!(
                pinhole_peer_get_keepalive_interval_ms(p, &mut ms),
                PINHOLE_OK
            );
            assert_eq!(ms, 20_000);
            // What the handle held, kept past its end: the calls fail, NotAvailable.
            let control = (*p).control.clone();
            pinhole_peer_destroy(p);
            assert!(matches!(
                control.set_keepalive_policy(KeepalivePolicy::Background),
                Err(PinholeError::NotAvailable(_))
            ));
            assert!(matches!(
                control.keepalive_interval_ms(),
                Err(PinholeError::NotAvailable(_))
            ));
            assert_eq!(control.keepalive_policy(), KeepalivePolicy::Foreground);
        }
    }
}
