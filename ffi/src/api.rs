//! The UniFFI API (Kotlin, Swift): functions, objects and listener traits over the types of
//! [`crate::types`].
//!
//! Threads: a listener's methods are called on the operation's own Rust thread (named
//! `pinhole-netcheck`, `pinhole-portmap`, `pinhole-turn` or `pinhole-peer`), one at a time and in order;
//! never on the caller's thread. A listener may call back into this API, including
//! closing its own operation (but not wait there for it to end, as the async
//! `close_and_wait` methods do). The logger is called from any thread, possibly
//! concurrently, and must not block for long.
//!
//! # Ending things: one verb, `close`
//!
//! Every long-lived object ([`NetcheckTask`], [`PortMapper`], [`TurnAllocation`],
//! [`PeerConnection`], `StunServer`) ends the same way, and never blocks the caller: the netcheck is
//! cancelled, the port mapping deleted in the background (bounded), the TURN allocation
//! deallocated in the background (bounded), the server stopped.
//!
//! - Dropping the Rust handle ends it. In Kotlin that is the generated `close()`
//!   (`AutoCloseable`, so `use {}` works), which frees the handle; the objects' own Rust
//!   `close` methods are excluded from the Kotlin bindings (`ffi/uniffi.toml`), because
//!   they would clash with that generated `close()`, which does the same.
//! - In Swift (no deterministic destruction) the Rust `close()` method below ends the
//!   object while the handle lives on; the handle is freed when the last reference goes.
//! - Where a graceful end is worth awaiting (the gateway confirmed the deletion, the
//!   server the deallocation), `close_and_wait` (Kotlin `suspend fun closeAndWait()`,
//!   Swift `func closeAndWait() async`) ends it and returns once it has ended, bounded
//!   by a few seconds. In Kotlin, `close()` still frees the handle afterwards.
//!
//! After the end, `is_closed` is true (and `is_finished` for a netcheck); the other
//! methods fail with `NotAvailable` or return nothing.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::PinholeError;
use crate::log::{LogLevel, Sink};
#[cfg(feature = "server")]
use crate::ops::Server;
use crate::ops::{
    MappingPlan, NetcheckPlan, NetworkTarget, PeerControl, PeerPlan, TurnCommand, TurnPlan,
    TurnStatus, turn_send_args,
};
use crate::task::Task;
use crate::types::{
    KeepalivePolicy, NetcheckConfig, NetcheckProgress, NetcheckReport, NetworkInfo,
    PeerConnectionConfig, PeerConnectionEvent, PortMapping, PortMappingConfig, PortMappingEvent,
    SelectedPair, TurnConfig, TurnEvent, parse_ip, parse_socket_addr,
};

/// The library's version (`major.minor.patch`).
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

/// Receives pinhole's log records.
#[uniffi::export(with_foreign)]
pub trait PinholeLogger: Send + Sync {
    /// One record. Called from any thread, possibly concurrently; must not block for long.
    fn log(&self, level: LogLevel, target: String, message: String);
}

struct ForeignSink(Arc<dyn PinholeLogger>);

impl Sink for ForeignSink {
    fn log(&self, level: LogLevel, target: &str, message: &str) {
        self.0.log(level, target.to_owned(), message.to_owned());
    }
}

/// Sends pinhole's log records of `level` and above to `logger` (None: logging off).
/// Replaces any previous logger, including the C API's log callback.
#[uniffi::export]
pub fn set_logger(logger: Option<Arc<dyn PinholeLogger>>, level: LogLevel) {
    crate::log::set_sink(
        logger.map(|l| Arc::new(ForeignSink(l)) as Arc<dyn Sink>),
        level,
    );
}

/// Stops a task when dropped without waiting for its thread (a cancelled future or a
/// collected object must not block).
struct DetachOnDrop(Option<Task>);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.detach();
        }
    }
}

/// Runs a netcheck and returns its report. Cancelling the call (dropping the future)
/// stops the netcheck.
#[uniffi::export]
pub async fn netcheck(config: NetcheckConfig) -> Result<NetcheckReport, PinholeError> {
    let plan = NetcheckPlan::new(&config)?;
    let (tx, rx) = oneshot::channel();
    let task = Task::spawn("pinhole-netcheck", move |mut stop| async move {
        let result = tokio::select! {
            r = plan.run(|_| {}) => r,
            () = stop.wait() => Err(PinholeError::Cancelled),
        };
        let _ = tx.send(result);
    })?;
    let mut guard = DetachOnDrop(Some(task));
    let result = rx
        .await
        .unwrap_or_else(|_| Err(PinholeError::Internal("the netcheck thread ended".into())));
    if let Some(t) = guard.0.take() {
        // It has sent its result: the thread is ending.
        t.join();
    }
    result
}

/// Receives a netcheck's progress and outcome (see [`start_netcheck`]).
#[uniffi::export(with_foreign)]
pub trait NetcheckListener: Send + Sync {
    /// Progress; zero or more times before the outcome.
    fn on_progress(&self, progress: NetcheckProgress);
    /// The report; exactly one of `on_report` and `on_error` is called, last.
    fn on_report(&self, report: NetcheckReport);
    /// The failure (including [`PinholeError::Cancelled`]).
    fn on_error(&self, error: PinholeError);
}

/// A running netcheck started by [`start_netcheck`]. `close` (or dropping it: Kotlin's
/// `close()`) cancels the netcheck without waiting.
#[derive(uniffi::Object)]
pub struct NetcheckTask {
    task: Mutex<DetachOnDrop>,
}

#[uniffi::export]
impl NetcheckTask {
    /// Cancels the netcheck, returning at once: the listener's `on_error` gets
    /// `Cancelled`, unless the outcome was already delivered. Idempotent. (Not in the
    /// Kotlin bindings, where the generated `close()` drops the handle, which does this.)
    pub fn close(&self) {
        if let Ok(t) = self.task.lock() {
            if let Some(t) = &t.0 {
                t.stop();
            }
        }
    }

    /// Whether the outcome has been delivered.
    pub fn is_finished(&self) -> bool {
        self.task
            .lock()
            .map(|t| t.0.as_ref().is_none_or(Task::is_finished))
            .unwrap_or(true)
    }
}

/// Starts a netcheck that reports to `listener` (on the netcheck's own thread).
#[uniffi::export]
pub fn start_netcheck(
    config: NetcheckConfig,
    listener: Arc<dyn NetcheckListener>,
) -> Result<Arc<NetcheckTask>, PinholeError> {
    let plan = NetcheckPlan::new(&config)?;
    let task = Task::spawn("pinhole-netcheck", move |mut stop| async move {
        let progress = |p| listener.on_progress(p);
        let result = tokio::select! {
            r = plan.run(progress) => r,
            () = stop.wait() => Err(PinholeError::Cancelled),
        };
        match result {
            Ok(report) => listener.on_report(report),
            Err(e) => listener.on_error(e),
        }
    })?;
    Ok(Arc::new(NetcheckTask {
        task: Mutex::new(DetachOnDrop(Some(task))),
    }))
}

/// Receives a port mapping's events (see [`map_port`]).
#[uniffi::export(with_foreign)]
pub trait PortMappingListener: Send + Sync {
    /// One event. The last is `Released` or `Unavailable`.
    fn on_event(&self, event: PortMappingEvent);
}

/// A port mapping kept alive (renewed, re-created, moved when the network changes) until
/// closed. `close` (or dropping it: Kotlin's `close()`) deletes the mapping in the
/// background; `close_and_wait` waits for the deletion.
#[derive(uniffi::Object)]
pub struct PortMapper {
    task: Mutex<DetachOnDrop>,
    finished: tokio::sync::watch::Receiver<bool>,
    current: Arc<Mutex<Option<PortMapping>>>,
    network: mpsc::UnboundedSender<NetworkTarget>,
}

#[uniffi::export]
impl PortMapper {
    /// The mapping as it stands, if one exists.
    pub fn current(&self) -> Option<PortMapping> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// Deletes the mapping and stops, returning at once; the listener then gets
    /// `Released` (or `Unavailable` if no mapping existed and the gateway did not answer).
    /// Idempotent. (Not in the Kotlin bindings, where the generated `close()` drops the
    /// handle, which does this.)
    pub fn close(&self) {
        if let Ok(t) = self.task.lock() {
            if let Some(t) = &t.0 {
                t.stop();
            }
        }
    }

    /// Deletes the mapping and waits until the mapper has stopped (at most a few
    /// seconds: the deletion is bounded). Not to be awaited inside the listener (it would
    /// wait for itself).
    pub async fn close_and_wait(&self) {
        self.close();
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|f| *f).await;
    }

    /// Whether the mapper has stopped (closed, or ended by itself with `Unavailable`).
    pub fn is_closed(&self) -> bool {
        *self.finished.borrow()
    }

    /// The host's network changed (or its facts became known): deletes the mapping at
    /// the old gateway (bounded), reports `Lost`, and maps the same port again via
    /// `info`'s gateway and local address, returning at once. With no gateway in `info`,
    /// the routing table's; when none can be found, the mapper reports `Lost` and waits
    /// for the next change. Errors: `InvalidArgument` (not IP addresses, a local address
    /// without a gateway or of another family), `NotAvailable` (the mapper has stopped:
    /// start a new one).
    pub fn network_changed(&self, info: NetworkInfo) -> Result<(), PinholeError> {
        let target = NetworkTarget::from_info(&info)?;
        if self.is_closed() {
            return Err(PinholeError::NotAvailable("the mapper has stopped".into()));
        }
        self.network
            .send(target)
            .map_err(|_| PinholeError::NotAvailable("the mapper has stopped".into()))
    }
}

/// Starts mapping a port. Events go to `listener`, on the mapper's own thread.
#[uniffi::export]
pub fn map_port(
    config: PortMappingConfig,
    listener: Arc<dyn PortMappingListener>,
) -> Result<Arc<PortMapper>, PinholeError> {
    let plan = MappingPlan::new(&config)?;
    let current = Arc::new(Mutex::new(None));
    let current2 = current.clone();
    let (network, network_rx) = mpsc::unbounded_channel();
    let task = Task::spawn("pinhole-portmap", move |stop| async move {
        plan.run_with_network(stop, network_rx, current2, |ev| listener.on_event(ev))
            .await;
    })?;
    Ok(Arc::new(PortMapper {
        finished: task.finished(),
        task: Mutex::new(DetachOnDrop(Some(task))),
        current,
        network,
    }))
}

/// A STUN server (RFC 8489 Binding; RFC 5780 with an alternate address), for tests and
/// for running a server of one's own. `close` (or dropping it: Kotlin's `close()`) stops
/// the server without waiting for its thread. Only in a library built with the feature
/// `server`.
#[cfg(feature = "server")]
#[derive(uniffi::Object)]
pub struct StunServer {
    server: Mutex<Option<Server>>,
    addresses: Vec<String>,
}

#[cfg(feature = "server")]
impl StunServer {
    fn wrap(server: Server) -> Arc<Self> {
        let addresses = server.addresses().iter().map(|a| a.to_string()).collect();
        Arc::new(StunServer {
            server: Mutex::new(Some(server)),
            addresses,
        })
    }
}

#[cfg(feature = "server")]
#[uniffi::export]
impl StunServer {
    /// Starts a server on `primary` (`IP:port`); with `alternate` (a different IP and
    /// port, neither port 0) an RFC 5780 server on the four combinations.
    #[uniffi::constructor]
    pub fn new(primary: String, alternate: Option<String>) -> Result<Arc<Self>, PinholeError> {
        Server::start(Some(&primary), alternate.as_deref()).map(Self::wrap)
    }

    /// Starts an RFC 5780 server on 127.0.0.1 and 127.0.0.2 with free ports.
    #[uniffi::constructor]
    pub fn loopback() -> Result<Arc<Self>, PinholeError> {
        Server::start(None, None).map(Self::wrap)
    }

    /// The addresses it listens on, the primary first.
    pub fn addresses(&self) -> Vec<String> {
        self.addresses.clone()
    }

    /// `stun:` URI of the primary address, for [`NetcheckConfig::stun_servers`].
    pub fn uri(&self) -> String {
        format!("stun:{}", self.addresses.first().map_or("", String::as_str))
    }

    /// Stops the server, returning at once (its sockets close as its thread ends, within
    /// milliseconds). Idempotent. (Not in the Kotlin bindings, where the generated
    /// `close()` drops the handle, which does this.)
    pub fn close(&self) {
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(s) = server {
            s.detach();
        }
    }

    /// Whether the server has been closed.
    pub fn is_closed(&self) -> bool {
        self.server.lock().map(|s| s.is_none()).unwrap_or(true)
    }
}

#[cfg(feature = "server")]
impl Drop for StunServer {
    fn drop(&mut self) {
        // Not `Server`'s own drop, which joins the thread: a finalizer must not block.
        self.close();
    }
}

/// Receives a TURN allocation's events and its peers' data (see [`allocate_turn`]), on the
/// allocation's own thread, one call at a time, in order.
#[uniffi::export(with_foreign)]
pub trait TurnListener: Send + Sync {
    /// One event, from `Allocated` on; the last is `Lost` or `Deallocated`.
    fn on_event(&self, event: TurnEvent);
    /// A datagram from `peer` (`IP:port`) through the relay (it needs a permission).
    fn on_data(&self, peer: String, data: Vec<u8>);
}

/// A TURN allocation (RFC 8656): a relayed address on the server, refreshed until closed.
/// Made by [`allocate_turn`]. `close` (or dropping it: Kotlin's `close()`) deallocates in
/// the background; `close_and_wait` waits for the deallocation.
#[derive(uniffi::Object)]
pub struct TurnAllocation {
    task: Mutex<DetachOnDrop>,
    finished: watch::Receiver<bool>,
    commands: mpsc::UnboundedSender<TurnCommand>,
    status: Arc<Mutex<TurnStatus>>,
    relayed: Vec<String>,
    mapped: Option<String>,
}

impl TurnAllocation {
    fn command(&self, cmd: TurnCommand) -> Result<(), PinholeError> {
        self.status
            .lock()
            .map_err(|_| PinholeError::Internal("poisoned".into()))?
            .usable()?;
        self.commands
            .send(cmd)
            .map_err(|_| PinholeError::NotAvailable("the allocation has ended".into()))
    }
}

fn ended<T>(_: T) -> PinholeError {
    PinholeError::NotAvailable("the allocation ended first".into())
}

#[uniffi::export]
impl TurnAllocation {
    /// The relayed address (`IP:port`): where peers send to reach this host.
    pub fn relayed_address(&self) -> String {
        self.relayed.first().cloned().unwrap_or_default()
    }

    /// All relayed addresses (two with `RelayedFamily.Dual`).
    pub fn relayed_addresses(&self) -> Vec<String> {
        self.relayed.clone()
    }

    /// This host's address as the server saw it.
    pub fn mapped_address(&self) -> Option<String> {
        self.mapped.clone()
    }

    /// Installs a permission for a peer's IP address (refreshed until the end), so that its
    /// datagrams reach this host; returns once the server has confirmed it. Errors:
    /// `InvalidArgument`, `NotAvailable` (the allocation ended), the server's refusal.
    pub async fn create_permission(&self, peer_ip: String) -> Result<(), PinholeError> {
        let ip = parse_ip("peer_ip", &peer_ip)?;
        let (tx, rx) = oneshot::channel();
        self.command(TurnCommand::Permission(ip, Some(tx)))?;
        rx.await.map_err(ended)?
    }

    /// Binds a channel to a peer (`IP:port`), which also permits its IP; data to and from
    /// it then travels with 4 bytes of overhead instead of 36. Returns the channel number
    /// once the server has confirmed it.
    pub async fn bind_channel(&self, peer: String) -> Result<u16, PinholeError> {
        let peer = parse_socket_addr("peer", &peer)?;
        let (tx, rx) = oneshot::channel();
        self.command(TurnCommand::Channel(peer, Some(tx)))?;
        rx.await.map_err(ended)?
    }

    /// Sends a datagram to a peer (`IP:port`) through the relay, returning at once. It needs
    /// a permission for the peer's IP; a failure arrives as `TurnEvent.SendFailed`.
    pub fn send(&self, peer: String, data: Vec<u8>) -> Result<(), PinholeError> {
        let peer = turn_send_args(&peer, data.len())?;
        self.command(TurnCommand::Send(peer, data))
    }

    /// Deallocates, returning at once; `TurnEvent.Deallocated` (or `Lost`) follows.
    /// Idempotent. (Not in the Kotlin bindings, where the generated `close()` drops the
    /// handle, which does this.)
    pub fn close(&self) {
        let _ = self.commands.send(TurnCommand::Deallocate);
    }

    /// Deallocates and waits until the allocation has ended (at most a few seconds: the
    /// deallocation is bounded). The listener gets `Deallocated` (or `Lost`) first. Not to
    /// be awaited inside the listener (it would wait for itself): use `close` there.
    pub async fn close_and_wait(&self) {
        self.close();
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|f| *f).await;
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.0.take() {
                // It has finished: joining is immediate.
                t.join();
            }
        }
    }

    /// Whether the allocation has ended (lost, or deallocated).
    pub fn is_closed(&self) -> bool {
        self.status.lock().map(|s| s.ended).unwrap_or(true)
    }
}

/// Allocates a relayed address on a TURN server and returns once the server has granted
/// it. Events and peers' data then go to `listener`, on the allocation's own thread.
/// Errors: `InvalidArgument` (the config), `Unsupported` (`turns:` without TLS support),
/// `Authentication` (wrong credentials), `Refused`, `TimedOut` (no answer), `Io`.
/// Cancelling the call (dropping the future) abandons the allocation.
#[uniffi::export]
pub async fn allocate_turn(
    config: TurnConfig,
    listener: Arc<dyn TurnListener>,
) -> Result<Arc<TurnAllocation>, PinholeError> {
    let plan = TurnPlan::new(&config)?;
    let (tx, rx) = oneshot::channel::<Result<TurnStatus, PinholeError>>();
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let status = Arc::new(Mutex::new(TurnStatus::default()));
    let status2 = status.clone();
    let task = Task::spawn("pinhole-turn", move |stop| async move {
        let mut tx = Some(tx);
        let status3 = status2.clone();
        let data_listener = listener.clone();
        plan.run(
            stop,
            commands_rx,
            status2,
            |event, error| match (&event, tx.take()) {
                // Before the allocation exists, a failure goes to the caller only.
                (TurnEvent::Lost { reason }, Some(tx)) => {
                    let e = error.unwrap_or_else(|| PinholeError::Io(reason.clone()));
                    let _ = tx.send(Err(e));
                }
                (TurnEvent::Allocated { .. }, Some(tx)) => {
                    let s = status3.lock().map(|s| s.clone()).unwrap_or_default();
                    let _ = tx.send(Ok(s));
                    listener.on_event(event);
                }
                (_, tx_left) => {
                    tx = tx_left;
                    listener.on_event(event);
                }
            },
            |peer, data| data_listener.on_data(peer.to_string(), data),
        )
        .await;
    })?;
    let mut guard = DetachOnDrop(Some(task));
    let result = rx
        .await
        .unwrap_or_else(|_| Err(PinholeError::Internal("the TURN thread ended".into())));
    match result {
        Ok(s) => {
            let task = guard.0.take();
            let finished = task
                .as_ref()
                .map_or_else(|| watch::channel(true).1, Task::finished);
            Ok(Arc::new(TurnAllocation {
                task: Mutex::new(DetachOnDrop(task)),
                finished,
                commands,
                status,
                relayed: s.relayed,
                mapped: s.mapped,
            }))
        }
        Err(e) => {
            if let Some(t) = guard.0.take() {
                // It has reported its failure: the thread is ending.
                t.join();
            }
            Err(e)
        }
    }
}

/// Receives a peer connection's events (see [`PeerConnection`]), on the connection's own
/// thread, one call at a time, in order.
#[uniffi::export(with_foreign)]
pub trait PeerConnectionListener: Send + Sync {
    /// One event; the last is `Closed`.
    fn on_event(&self, event: PeerConnectionEvent);
}

/// A peer connection (ICE, RFC 8445, over one UDP socket; through a TURN relay where the
/// direct paths fail): the local description and candidates go to the peer through the
/// application's signalling channel, the peer's come back in, and once a pair is selected
/// datagrams flow both ways (`send`, and `Data` events).
///
/// Signalling: send the peer `local_description()` (or the description the constructor
/// returned with the candidates trickled after it: each `LocalCandidate` as
/// `a=candidate:...`, and `a=end-of-candidates` on `GatheringComplete`); give what the
/// peer sends to `set_remote_description` (whole descriptions) or
/// `add_remote_candidate` / `end_of_remote_candidates` (trickled lines).
///
/// Restarts (RFC 8445 §9): `restart()` returns a new local description to signal; when
/// the peer's description comes with a new `a=ice-ufrag`, this side restarts by itself and
/// reports `RemoteRestarted` with the description to signal back. Data keeps flowing on
/// the old path until the new one is selected.
///
/// Network changes: `network_changed()` restarts on the new network and returns the
/// description to signal; where the built-in monitor runs (Linux and Android, dual-stack
/// sockets, unless `no_network_monitor`) it does the same by itself and reports
/// `NetworkChanged` with the description to signal.
///
/// Keepalives: `set_keepalive_policy()` as the app moves between foreground (the default:
/// RFC 7675 consent every 4 to 6 s), background (one keepalive per interval that adapts to
/// the NATs) and suspended (none); a resume whose path is gone restarts ICE and reports
/// `NetworkChanged`.
///
/// `close` (or dropping it: Kotlin's `close()`) ends it without blocking (a port mapping
/// of its socket is deleted in the background); `close_and_wait` waits for the end. The
/// listener then gets `StateChanged(Closed)` and `Closed`.
#[derive(uniffi::Object)]
pub struct PeerConnection {
    task: Mutex<DetachOnDrop>,
    finished: watch::Receiver<bool>,
    control: Arc<PeerControl>,
}

#[uniffi::export]
impl PeerConnection {
    /// Binds the socket and starts gathering; returns once the socket is bound (the
    /// servers' names resolved), with the local credentials in `local_description()`.
    /// Candidates then come as `LocalCandidate` events. Errors: `InvalidArgument` (the
    /// config), `Unsupported` (`turns:` without TLS support), `NoServer` (relay only and
    /// no TURN server resolved), `Io` (the socket).
    ///
    /// A named constructor, not `new`: Kotlin has no async primary constructors (Kotlin
    /// `PeerConnection.create(config, listener)`, a suspend function; Swift
    /// `try await PeerConnection.create(config:listener:)`).
    #[uniffi::constructor]
    pub async fn create(
        config: PeerConnectionConfig,
        listener: Arc<dyn PeerConnectionListener>,
    ) -> Result<Arc<Self>, PinholeError> {
        let plan = PeerPlan::new(&config)?;
        let (control, commands) = PeerControl::new();
        let control2 = control.clone();
        let (tx, rx) = oneshot::channel::<Result<(), PinholeError>>();
        let task = Task::spawn("pinhole-peer", move |stop| async move {
            plan.run(
                stop,
                control2,
                commands,
                |r| {
                    let _ = tx.send(r);
                },
                None,
                |ev| listener.on_event(ev),
            )
            .await;
        })?;
        let mut guard = DetachOnDrop(Some(task));
        let result = rx.await.unwrap_or_else(|_| {
            Err(PinholeError::Internal(
                "the peer connection's thread ended".into(),
            ))
        });
        match result {
            Ok(()) => {
                let task = guard.0.take();
                let finished = task
                    .as_ref()
                    .map_or_else(|| watch::channel(true).1, Task::finished);
                Ok(Arc::new(PeerConnection {
                    task: Mutex::new(DetachOnDrop(task)),
                    finished,
                    control,
                }))
            }
            Err(e) => {
                if let Some(t) = guard.0.take() {
                    // It has reported its failure: the thread is ending.
                    t.join();
                }
                Err(e)
            }
        }
    }

    /// The local description to signal: `a=ice-ufrag`, `a=ice-pwd`,
    /// `a=ice-options:trickle renomination`, `a=ice-pacing` (and `a=ice-lite`), the candidates gathered
    /// so far and, once gathering is over, `a=end-of-candidates`; CRLF-terminated RFC 8839
    /// lines, what `pinhole connect` signals.
    pub fn local_description(&self) -> String {
        self.control.local_description()
    }

    /// The peer's description: RFC 8839 attribute lines or a whole SDP (lines that are
    /// not ICE attributes and unusable candidates are ignored). May be given again with
    /// more candidates. A new `a=ice-ufrag` means the peer restarted: this side restarts
    /// too and reports `RemoteRestarted`. Errors: `InvalidArgument` (no or malformed
    /// `a=ice-ufrag`/`a=ice-pwd`, over 64 KiB), `NotAvailable` (closed).
    pub fn set_remote_description(&self, description: String) -> Result<(), PinholeError> {
        self.control.set_remote_description(&description)
    }

    /// A candidate the peer trickled: `candidate:...` or `a=candidate:...`. Errors:
    /// `InvalidArgument` (malformed), `NotAvailable` (closed).
    pub fn add_remote_candidate(&self, candidate: String) -> Result<(), PinholeError> {
        self.control.add_remote_candidate(&candidate)
    }

    /// The peer's `a=end-of-candidates`: once every pair has failed, the state is `Failed`
    /// (without it, ICE waits for more candidates). Nothing once closed.
    pub fn end_of_remote_candidates(&self) {
        let _ = self.control.end_of_remote_candidates();
    }

    /// Sends a datagram to the peer on the selected pair, returning at once (it is queued
    /// for the connection's thread; UDP may still lose it). Keep datagrams at 1 200 bytes
    /// or less to fit every path. Errors: `InvalidArgument` (over 65 400 bytes),
    /// `NotAvailable` (closed; no pair selected yet, before the first `SelectedPair`; or
    /// 1 024 datagrams already queued: try again later).
    pub fn send(&self, data: Vec<u8>) -> Result<(), PinholeError> {
        self.control.send(data)
    }

    /// An ICE restart (RFC 8445 §9), for a changed network or a lost path: returns the new
    /// local description to signal (credentials only; the candidates follow as
    /// `LocalCandidate` events, and `local_description()` collects them). The current path
    /// carries data until the new one is selected. Errors: `NotAvailable` (closed),
    /// `TimedOut` (the connection's thread stayed busy 10 s, inside a listener call).
    pub fn restart(&self) -> Result<String, PinholeError> {
        self.control.restart()
    }

    /// The host's network changed (Wi-Fi to cellular, a new address, a VPN): for apps
    /// that follow the network themselves (Android's `ConnectivityManager`, Apple's
    /// `NWPathMonitor`; with `no_network_monitor` set where the built-in monitor runs).
    /// A dual-stack socket's (`bind` `[::]:0`) addresses are found again, and ICE
    /// restarts on them (RFC 8445 §9) even when they look the same: candidates gathered
    /// again, relays allocated again. Returns the new local description to signal, as
    /// `restart()` does (the candidates follow as `LocalCandidate` events; the peer
    /// restarts too and reports `RemoteRestarted`). The current path carries data until
    /// the new one is selected. Errors: `NotAvailable` (closed), `Io` (no route for
    /// either address family), `TimedOut` (the connection's thread stayed busy 10 s,
    /// inside a listener call).
    pub fn network_changed(&self) -> Result<String, PinholeError> {
        self.control.network_changed()
    }

    /// Sets the keepalive policy as the app moves between foreground, background and
    /// suspended (see [`KeepalivePolicy`]; the package's adapters do it from the platform's
    /// lifecycle: Android's `AppLifecycle`, iOS's `AppLifecycle`). Returns at once; applied
    /// in order with the other calls. Leaving `Suspended` (or the background for the
    /// foreground) probes the path at once; if it does not answer within 4 s, ICE restarts
    /// and `NetworkChanged` brings the new local description to signal. Errors:
    /// `NotAvailable` (closed).
    pub fn set_keepalive_policy(&self, policy: KeepalivePolicy) -> Result<(), PinholeError> {
        self.control.set_keepalive_policy(policy)
    }

    /// The keepalive policy last set (the config's until then).
    pub fn keepalive_policy(&self) -> KeepalivePolicy {
        self.control.keepalive_policy()
    }

    /// The background keepalive interval as it stands, milliseconds: the config's fixed
    /// `keepalive_interval_ms`, or the adaptive one (25 s at first; it grows while the
    /// path's NAT bindings survive the silences between keepalives, and drops below a
    /// silence that one did not survive). Waits for the connection's thread. Errors:
    /// `NotAvailable` (closed), `TimedOut` (its thread stayed busy 10 s, inside a listener
    /// call).
    pub fn keepalive_interval_ms(&self) -> Result<u32, PinholeError> {
        self.control.keepalive_interval_ms()
    }

    /// The pair data goes on, if one was selected (kept across a restart until a new
    /// one is selected).
    pub fn selected_pair(&self) -> Option<SelectedPair> {
        self.control.selected_pair()
    }

    /// Ends the connection, returning at once; the listener then gets
    /// `StateChanged(Closed)` and `Closed`. Idempotent. (Not in the Kotlin bindings, where
    /// the generated `close()` drops the handle, which does this.)
    pub fn close(&self) {
        if let Ok(t) = self.task.lock() {
            if let Some(t) = &t.0 {
                t.stop();
            }
        }
    }

    /// Ends the connection and waits until it has ended (bounded: deleting a port
    /// mapping takes a few seconds at most). Not to be awaited inside the listener (it
    /// would wait for itself): use `close` there.
    pub async fn close_and_wait(&self) {
        self.close();
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|f| *f).await;
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.0.take() {
                // It has finished: joining is immediate.
                t.join();
            }
        }
    }

    /// Whether the connection has ended (closed, or ended by itself).
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
    }
}

#[cfg(test)]
mod peer_tests;

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::sync::mpsc as std_mpsc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::types::{MappingMethod, TransportProtocol};

    /// PCP's and NAT-PMP's server port (RFC 6887 §19.1, RFC 6886 §3).
    const PCP_PORT: u16 = 5351;

    struct Events(Mutex<std_mpsc::Sender<PortMappingEvent>>);

    impl PortMappingListener for Events {
        fn on_event(&self, event: PortMappingEvent) {
            if let Ok(tx) = self.0.lock() {
                let _ = tx.send(event);
            }
        }
    }

    /// A silent gateway on loopback: its PCP socket, which never answers.
    fn fake_gateway(ip: &str) -> UdpSocket {
        let s = UdpSocket::bind((ip, PCP_PORT)).expect("bind a fake gateway on loopback");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    }

    /// The source of the first request the fake gateway hears within 15 s.
    fn first_request(gw: &UdpSocket) -> Option<std::net::SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 1100];
        while Instant::now() < deadline {
            if let Ok((_, from)) = gw.recv_from(&mut buf) {
                return Some(from);
            }
        }
        None
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A PCP mapping of UDP `internal_port` from 127.0.0.1 at the gateway `gateway`.
    fn pcp_mapping(gateway: &str, internal_port: u16) -> PortMappingConfig {
        PortMappingConfig {
            internal_port,
            protocol: TransportProtocol::Udp,
            gateway: Some(gateway.into()),
            local_ip: Some("127.0.0.1".into()),
            suggested_external_port: 0,
            lifetime_secs: 60,
            method: Some(MappingMethod::Pcp),
            verify_stun: None,
            verify_interval_secs: 0,
        }
    }

    /// `network_changed` moves the mapping: after it, requests go to the new gateway from
    /// the new local address, and the listener hears `Lost` for the change. Loopback only
    /// (127.0.0.21-23, where nothing else listens).
    #[test]
    fn network_changed_moves_the_mapping_to_the_new_gateway() {
        let old = fake_gateway("127.0.0.21");
        let new = fake_gateway("127.0.0.22");
        let (tx, rx) = std_mpsc::channel();
        let mapper = map_port(
            pcp_mapping("127.0.0.21", 40123),
            Arc::new(Events(Mutex::new(tx))),
        )
        .unwrap();
        let from = first_request(&old).expect("a request at the first gateway");
        assert_eq!(from.ip().to_string(), "127.0.0.1");

        // Bad facts are refused at once.
        let bad = |gateway: Option<&str>, local_ip: Option<&str>| {
            mapper.network_changed(NetworkInfo {
                gateway: gateway.map(Into::into),
                local_ip: local_ip.map(Into::into),
            })
        };
        for (g, l) in [
            (Some("nope"), None),
            (None, Some("127.0.0.1")),
            (Some("127.0.0.22"), Some("::1")),
        ] {
            assert!(matches!(bad(g, l), Err(PinholeError::InvalidArgument(_))));
        }

        mapper
            .network_changed(NetworkInfo {
                gateway: Some("127.0.0.22".into()),
                local_ip: Some("127.0.0.23".into()),
            })
            .unwrap();
        let from = first_request(&new).expect("a request at the new gateway");
        assert_eq!(
            from.ip().to_string(),
            "127.0.0.23",
            "from the new local address"
        );
        let lost = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("an event for the change");
        assert!(
            matches!(&lost, PortMappingEvent::Lost { reason } if reason.contains("127.0.0.22")),
            "{lost:?}"
        );
        assert!(!mapper.is_closed());

        // close_and_wait ends it (bounded); the last event is Released or Unavailable.
        let started = Instant::now();
        block_on(mapper.close_and_wait());
        assert!(started.elapsed() < Duration::from_secs(15));
        assert!(mapper.is_closed());
        let last = rx.try_iter().last();
        assert!(
            matches!(
                last,
                Some(PortMappingEvent::Released | PortMappingEvent::Unavailable { .. })
            ),
            "{last:?}"
        );
        assert!(matches!(
            bad(Some("127.0.0.22"), None),
            Err(PinholeError::NotAvailable(_))
        ));
    }

    /// `close` returns at once and ends every object; dropping does too.
    #[test]
    fn close_ends_without_blocking() {
        let _gw = fake_gateway("127.0.0.24");
        let (tx, rx) = std_mpsc::channel();
        let mapper = map_port(
            pcp_mapping("127.0.0.24", 40124),
            Arc::new(Events(Mutex::new(tx))),
        )
        .unwrap();
        let started = Instant::now();
        mapper.close();
        mapper.close();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "close does not block"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while !mapper.is_closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(mapper.is_closed(), "the mapper ended in the background");
        assert!(rx.try_iter().last().is_some());
    }

    /// Closing a STUN server returns at once and frees its port.
    #[cfg(feature = "server")]
    #[test]
    fn closing_a_server_does_not_block() {
        let server = StunServer::loopback().unwrap();
        let addr: std::net::SocketAddr = server.addresses()[0].parse().unwrap();
        let started = Instant::now();
        server.close();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(server.is_closed());
        // Its port is released once its thread has ended (within milliseconds).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut rebound = false;
        while Instant::now() < deadline {
            if UdpSocket::bind(addr).is_ok() {
                rebound = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(rebound, "the server's port was freed");
        drop(server);
    }
}
