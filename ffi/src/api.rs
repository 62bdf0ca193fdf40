//! The UniFFI API (Kotlin, Swift): functions, objects and listener traits over the types of
//! [`crate::types`].
//!
//! Threads: a listener's methods are called on the operation's own Rust thread (named
//! `pinhole-netcheck`, `pinhole-portmap` or `pinhole-turn`), one at a time and in order;
//! never on the caller's thread. A listener may call back into this API, including
//! cancelling or releasing its own operation (but not wait there for it to end, as
//! the async `release` methods do). The logger is called from any thread, possibly
//! concurrently, and must not block for long.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::PinholeError;
use crate::log::{LogLevel, Sink};
#[cfg(feature = "server")]
use crate::ops::Server;
use crate::ops::{MappingPlan, NetcheckPlan, TurnCommand, TurnPlan, TurnStatus, turn_send_args};
use crate::task::Task;
use crate::types::{
    NetcheckConfig, NetcheckProgress, NetcheckReport, PortMapping, PortMappingConfig,
    PortMappingEvent, TurnConfig, TurnEvent, parse_ip, parse_socket_addr,
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

/// A running netcheck started by [`start_netcheck`]. Dropping it cancels the netcheck.
#[derive(uniffi::Object)]
pub struct NetcheckTask {
    task: Mutex<DetachOnDrop>,
}

#[uniffi::export]
impl NetcheckTask {
    /// Cancels the netcheck: the listener's `on_error` gets `Cancelled`, unless the
    /// outcome was already delivered.
    pub fn cancel(&self) {
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

/// A port mapping kept alive (renewed, re-created) until released. Dropping it releases
/// the mapping in the background.
#[derive(uniffi::Object)]
pub struct PortMapper {
    task: Mutex<DetachOnDrop>,
    finished: tokio::sync::watch::Receiver<bool>,
    current: Arc<Mutex<Option<PortMapping>>>,
}

#[uniffi::export]
impl PortMapper {
    /// The mapping as it stands, if one exists.
    pub fn current(&self) -> Option<PortMapping> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// Deletes the mapping and stops, returning at once; the listener then gets
    /// `Released` (or `Unavailable` if no mapping existed and the gateway did not answer).
    pub fn stop(&self) {
        if let Ok(t) = self.task.lock() {
            if let Some(t) = &t.0 {
                t.stop();
            }
        }
    }

    /// Deletes the mapping and waits until the mapper has stopped (at most a few
    /// seconds: the deletion is bounded).
    pub async fn release(&self) {
        self.stop();
        let mut finished = self.finished.clone();
        let _ = finished.wait_for(|f| *f).await;
    }

    /// Whether the mapper has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.finished.borrow()
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
    let task = Task::spawn("pinhole-portmap", move |stop| async move {
        plan.run(stop, current2, |ev| listener.on_event(ev)).await;
    })?;
    Ok(Arc::new(PortMapper {
        finished: task.finished(),
        task: Mutex::new(DetachOnDrop(Some(task))),
        current,
    }))
}

/// A STUN server (RFC 8489 Binding; RFC 5780 with an alternate address), for tests and
/// for running a server of one's own. Dropping it stops the server. Only in a library
/// built with the feature `server`.
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

    /// Stops the server (idempotent).
    pub fn stop(&self) {
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(s) = server {
            s.stop();
        }
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

/// A TURN allocation (RFC 8656): a relayed address on the server, refreshed until released.
/// Made by [`allocate_turn`]. Dropping it deallocates in the background.
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

    /// Deallocates, returning at once; `TurnEvent.Deallocated` follows.
    pub fn deallocate(&self) {
        let _ = self.commands.send(TurnCommand::Deallocate);
    }

    /// Deallocates and waits until the allocation has ended (at most a few seconds: the
    /// deallocation is bounded). The listener gets `Deallocated` (or `Lost`) first. Not to
    /// be awaited inside the listener (it would wait for itself): use `deallocate` there.
    pub async fn release(&self) {
        self.deallocate();
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
