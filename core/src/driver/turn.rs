//! A TURN allocation on tokio: UDP, TCP, or TLS (feature `tls`) to the server, around the
//! sans-IO [`Allocation`].
//!
//! [`allocate`] connects and starts a task that owns the transport and runs the machine;
//! the returned [`TurnHandle`] sends commands to it and receives [`TurnEvent`]s. Dropping
//! the handle deallocates (bounded by [`DEALLOCATE_TIMEOUT`]).
//!
//! A 300 Try Alternate to the Allocate is followed once, on every transport (RFC 8489 §10):
//! over UDP the same socket is re-targeted at the alternate server, over TCP and TLS the
//! connection is closed and a new one opened, its certificate checked against the URI's
//! host name, or the ALTERNATE-DOMAIN of the 300 when it has one. A second 300 ends the
//! allocation with [`TurnError::TooManyRedirects`]. [`TurnHandle::current_server`] tells
//! where the allocation lives.
//!
//! # Two data paths
//!
//! - The handle: [`TurnHandle::send_to`] takes a `Vec<u8>` per datagram to the task, which
//!   sends it with one system call; data from peers comes as [`TurnEvent::Data`], one
//!   `Vec<u8>` each. Simple, works over every transport, and fine at modest rates.
//! - The data plane of a UDP allocation, [`TurnHandle::data_plane`]: a [`TurnDataPlane`]
//!   that the application drives itself, without the task in between. It receives a batch
//!   of datagrams per system call into a caller-owned [`RecvBatch`] (`recvmmsg`, and GRO),
//!   leaving the peer data in place, and sends runs of equal-sized datagrams with one GSO
//!   system call (all datagrams of a TURN client go to its one server, so a batch of
//!   equal-sized payloads goes out whole). Nothing is allocated per datagram. Its socket
//!   work is the `quinn-udp` crate's, which falls back to one datagram per system call
//!   where the platform has no batching. Under a sustained high packet rate, [`Coalescing`]
//!   waits a few tens of microseconds before reading, trading that much latency for fewer
//!   system calls and wake-ups per datagram; at low rates it adds none.
//!
//! The [`Allocation`] is shared by the task and the data plane under a mutex that neither
//! holds across an `.await`: the data plane takes it once per received batch (ChannelData
//! of bound channels and Data indications become data; STUN responses feed the machine and
//! wake the task, which sends what follows and reports events) and once per queued
//! datagram (to encode it as ChannelData or a Send indication). The task handles commands,
//! timers (refreshes, permissions, channels) and everything sent for the machine. While a
//! data plane exists it does all the receiving, so the application keeps calling
//! [`TurnDataPlane::recv`]; dropping it hands receiving back to the task.
//!
//! ```no_run
//! # async fn example(config: pinhole::driver::turn::TurnClientConfig, peer: std::net::SocketAddr)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use pinhole::driver::turn::{RecvBatch, TurnEvent, allocate};
//! use pinhole::turn::AllocationEvent;
//!
//! let mut handle = allocate(config).await?;
//! while let Some(ev) = handle.next_event().await {
//!     match ev {
//!         TurnEvent::Allocation(AllocationEvent::Allocated { .. }) => handle.bind_channel(peer),
//!         TurnEvent::Allocation(AllocationEvent::ChannelBound { .. }) => break,
//!         _ => {}
//!     }
//! }
//! let mut data = handle.data_plane()?;
//! let mut batch = RecvBatch::new();
//! data.send_to(peer, b"hello").await?;
//! loop {
//!     // Sends what was queued, then waits for a batch (events still come from the handle).
//!     data.recv(&mut batch).await?;
//!     for (from, payload) in batch.iter() {
//!         data.queue_to(from, payload).await?; // echo
//!     }
//! }
//! # }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tracing::debug;

mod data_plane;
#[cfg(feature = "tls")]
mod tls;
pub use data_plane::{
    Coalescing, DataPlaneError, DataPlaneStats, RecvBatch, SEND_QUEUE_BYTES, SEND_QUEUE_DATAGRAMS,
    TurnDataPlane,
};

use super::udp::{BindOptions, Datagrams, UdpSocket, segments};
use super::{DriverError, io, os_seed};
use crate::turn::{
    Allocation, AllocationConfig, AllocationEvent, Credentials, Input, RequestedFamily,
    StreamFramer, TurnError, TurnTransport, TurnUri,
};
use crate::{Protocol, Received};

/// How long deallocation may take when the handle is closed or dropped.
pub const DEALLOCATE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting (TCP, TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the server and what to ask for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TurnClientConfig {
    /// The server.
    pub uri: TurnUri,
    /// Credentials (long-term or REST-derived).
    pub credentials: Credentials,
    /// Lifetime to ask for.
    pub lifetime: Duration,
    /// Relayed address family.
    pub family: RequestedFamily,
    /// PEM certificates to trust for `turns:` instead of the system roots. A server
    /// certificate that is byte for byte one of them is accepted as it is (pinned: a
    /// self-signed certificate, even one marked as a CA, as `openssl req -x509` makes
    /// them), the handshake signature still checked; any other must chain to one of them.
    /// A text without a certificate is an error ([`DriverError::Certificates`]).
    pub ca_pem: Option<Vec<u8>>,
}

impl TurnClientConfig {
    /// An allocation on `uri` with `credentials` and the defaults: the lifetime
    /// [`DEFAULT_LIFETIME`](crate::turn::DEFAULT_LIFETIME), an IPv4 relayed address, the
    /// system's roots for `turns:`.
    pub fn new(uri: TurnUri, credentials: Credentials) -> Self {
        Self {
            uri,
            credentials,
            lifetime: crate::turn::DEFAULT_LIFETIME,
            family: RequestedFamily::V4,
            ca_pem: None,
        }
    }
}

/// Checks PEM text meant for [`TurnClientConfig::ca_pem`] before use: the number of
/// certificates in it, or [`DriverError::Certificates`] when there is none or a block is
/// malformed (so that a caller can name the file it came from).
#[cfg(feature = "tls")]
pub fn check_ca_pem(pem: &[u8]) -> Result<usize, DriverError> {
    tls::certificates(pem).map(|c| c.len())
}

/// What the allocation task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnEvent {
    /// A machine event (allocated, refreshed, permission, channel, lost, deallocated).
    Allocation(AllocationEvent),
    /// Data from a peer through the relay.
    Data {
        /// The peer.
        peer: SocketAddr,
        /// The data.
        data: Vec<u8>,
    },
    /// Sending failed (no permission yet, or the allocation is gone).
    SendFailed(SocketAddr, TurnError),
    /// The connection to the server broke.
    Disconnected(String),
    /// The server did not confirm the deallocation within [`DEALLOCATE_TIMEOUT`]: the task
    /// gave up, and the allocation (if the server still holds one) expires on its own at
    /// the end of its lifetime. The last event.
    DeallocateUnconfirmed,
}

enum Command {
    Permission(IpAddr),
    Channel(SocketAddr),
    Send(SocketAddr, Vec<u8>),
    Deallocate,
}

/// What the control task and a [`TurnDataPlane`] share.
struct Shared {
    /// The machine. The control task locks it for commands, timers and transmits; a data
    /// plane locks it once per received batch and once per queued datagram, never across
    /// an `.await`, so the lock is uncontended on the data path.
    alloc: Mutex<Allocation>,
    /// Wakes the control task: a data plane fed the machine a control message (its
    /// transmits and events are the control task's to send), or a data plane came or went.
    wake: Notify,
    /// Whether a data plane exists: it then does all the receiving on the UDP socket.
    data_plane: AtomicBool,
    /// Set when the control task has ended: the allocation is over.
    closed: AtomicBool,
    /// Wakes data planes waiting for datagrams when `closed` is set.
    closed_notify: Notify,
    // The server and our address are the machine's (`Allocation::server`, `local`): a
    // 300 Try Alternate changes them.
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the machine: its state is no one's business in a log line.
        f.debug_struct("Shared")
            .field("data_plane", &self.data_plane.load(Ordering::Relaxed))
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn alloc(&self) -> MutexGuard<'_, Allocation> {
        // The machine never panics on input; should it ever, its state is still the best
        // there is.
        self.alloc.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the allocation over when the control task ends, however it ends.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.closed_notify.notify_waiters();
    }
}

/// A running allocation. Dropping it deallocates.
#[derive(Debug)]
pub struct TurnHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<TurnEvent>,
    shared: Arc<Shared>,
    udp: Option<Arc<UdpSocket>>,
    /// The server's address as resolved from the URI. After a 300 Try Alternate the
    /// allocation lives on another: [`TurnHandle::current_server`].
    pub server: SocketAddr,
    /// The transport.
    pub transport: TurnTransport,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl TurnHandle {
    /// The next event; `None` once the task has ended.
    pub async fn next_event(&mut self) -> Option<TurnEvent> {
        self.events.recv().await
    }

    /// The server in use: [`TurnHandle::server`], or the alternate server after a 300 Try
    /// Alternate was followed.
    pub fn current_server(&self) -> SocketAddr {
        self.shared.alloc().server()
    }

    /// Installs a permission for a peer IP.
    pub fn create_permission(&self, peer: IpAddr) {
        let _ = self.commands.send(Command::Permission(peer));
    }

    /// Binds a channel to a peer (and a permission for its IP).
    pub fn bind_channel(&self, peer: SocketAddr) {
        let _ = self.commands.send(Command::Channel(peer));
    }

    /// Sends data to a peer through the relay. Each call is a message to the allocation's
    /// task and a system call; for high packet rates use [`TurnHandle::data_plane`].
    pub fn send_to(&self, peer: SocketAddr, data: Vec<u8>) {
        let _ = self.commands.send(Command::Send(peer, data));
    }

    /// Deallocates; [`AllocationEvent::Deallocated`] follows (or, when the server does not
    /// confirm in time, [`TurnEvent::DeallocateUnconfirmed`]), then the task ends.
    pub fn deallocate(&self) {
        let _ = self.commands.send(Command::Deallocate);
    }

    /// The batched, allocation-free data path of a UDP allocation, with the default
    /// [`Coalescing`]: see [`TurnDataPlane`]. One at a time: while it exists it does all
    /// the receiving (data comes from [`TurnDataPlane::recv`], no longer as
    /// [`TurnEvent::Data`]), so keep calling `recv` — the allocation's control responses
    /// arrive through it too. Dropping it gives receiving back to the handle.
    ///
    /// Fails with [`DataPlaneError::NotUdp`] over TCP or TLS, and with
    /// [`DataPlaneError::InUse`] while another data plane of this allocation exists.
    pub fn data_plane(&self) -> Result<TurnDataPlane, DataPlaneError> {
        self.data_plane_with(Coalescing::default())
    }

    /// [`TurnHandle::data_plane`] with a coalescing policy of your choice
    /// ([`Coalescing::OFF`] never waits).
    pub fn data_plane_with(&self, coalescing: Coalescing) -> Result<TurnDataPlane, DataPlaneError> {
        let Some(socket) = &self.udp else {
            return Err(DataPlaneError::NotUdp);
        };
        TurnDataPlane::new(self.shared.clone(), socket.clone(), coalescing)
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Deallocate);
    }
}

pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

enum Conn {
    Udp(Arc<UdpSocket>),
    Stream(Pin<Box<dyn Stream>>, StreamFramer),
}

/// Resolves the server, connects (TCP/TLS), and starts allocating.
pub async fn allocate(config: TurnClientConfig) -> Result<TurnHandle, DriverError> {
    let uri = &config.uri;
    // First: unusable CA certificates fail before any network traffic.
    let connector = Connector {
        transport: uri.transport,
        host: uri.host.clone(),
        tls: TlsClient::for_transport(uri.transport, config.ca_pem.as_deref())?,
    };
    // Not `DriverError::NothingResolved`: that one speaks of STUN servers.
    let resolving = format!("resolving the TURN server {}", uri.host);
    let server = tokio::net::lookup_host((uri.host.as_str(), uri.port))
        .await
        .map_err(io(resolving.clone()))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or_else(|| {
            io(resolving)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })?;
    let (conn, local) = match uri.transport {
        TurnTransport::Udp => {
            let any: SocketAddr = if server.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let s = UdpSocket::bind(any, BindOptions::default()).map_err(io("binding"))?;
            route_udp(&s, server).await?;
            let local = match s.local_addr() {
                // Unconnected: the address the server is reached from.
                l if l.ip().is_unspecified() => {
                    local_toward(server).map_or(l, |ip| SocketAddr::new(ip, l.port()))
                }
                l => l,
            };
            (Conn::Udp(Arc::new(s)), local)
        }
        TurnTransport::Tcp | TurnTransport::Tls => {
            let (stream, local) = connector.connect_stream(server, None).await?;
            (Conn::Stream(stream, StreamFramer::new()), local)
        }
    };
    let mut ac = AllocationConfig::new(server, local, uri.transport, config.credentials.clone());
    ac.lifetime = config.lifetime;
    ac.family = config.family;
    let alloc = Allocation::new(Instant::now(), ac, os_seed()?);
    let shared = Arc::new(Shared {
        alloc: Mutex::new(alloc),
        wake: Notify::new(),
        data_plane: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        closed_notify: Notify::new(),
    });
    let udp = match &conn {
        Conn::Udp(s) => Some(s.clone()),
        Conn::Stream(..) => None,
    };
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(shared.clone(), conn, server, connector, cmd_rx, ev_tx));
    Ok(TurnHandle {
        commands: cmd_tx,
        events: ev_rx,
        shared,
        udp,
        server,
        transport: uri.transport,
    })
}

/// Connects the UDP socket to `server` where the platform allows the data plane's
/// `sendmsg` with a destination on a connected socket (BSDs and Apple refuse it with
/// EISCONN): the kernel then drops datagrams from others and reports ICMP errors.
/// Elsewhere the machine drops datagrams not from the server. Called again to re-target
/// the socket after a 300 Try Alternate.
async fn route_udp(s: &UdpSocket, server: SocketAddr) -> Result<(), DriverError> {
    s.connect_where_supported(server)
        .await
        .map_err(io(format!("routing to {server}")))
}

#[cfg(feature = "tls")]
use tls::TlsClient;

/// Without the `tls` feature: `turns:` fails.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
struct TlsClient;

#[cfg(not(feature = "tls"))]
impl TlsClient {
    #[allow(clippy::unused_async)]
    async fn connect(
        &self,
        _tcp: TcpStream,
        _name: &str,
    ) -> Result<Pin<Box<dyn Stream>>, DriverError> {
        Err(no_tls())
    }
}

#[cfg(not(feature = "tls"))]
fn no_tls() -> DriverError {
    DriverError::Io {
        context: "TLS".into(),
        source: std::io::Error::other("built without the `tls` feature"),
    }
}

impl TlsClient {
    /// The TLS client a transport needs: one for TLS, built now so that unusable CA
    /// certificates fail before any connection.
    fn for_transport(
        transport: TurnTransport,
        ca_pem: Option<&[u8]>,
    ) -> Result<Option<Self>, DriverError> {
        if transport != TurnTransport::Tls {
            return Ok(None);
        }
        #[cfg(feature = "tls")]
        return TlsClient::new(ca_pem).map(Some);
        #[cfg(not(feature = "tls"))]
        {
            let _ = ca_pem;
            Err(no_tls())
        }
    }
}

/// How the task (re)connects over TCP or TLS: the first time, and to an alternate server.
#[derive(Debug)]
pub(super) struct Connector {
    transport: TurnTransport,
    /// The URI's host: the name a TLS certificate must carry (unless an alternate server
    /// comes with an ALTERNATE-DOMAIN).
    host: String,
    /// Set for TLS.
    tls: Option<TlsClient>,
}

impl Connector {
    /// For `transport` (TCP or TLS) to a server named `host` (the name its certificate
    /// must carry), trusting `ca_pem` instead of the system's roots when given. Unusable
    /// CA certificates fail here, before any connection.
    pub(super) fn new(
        transport: TurnTransport,
        host: String,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, DriverError> {
        Ok(Self {
            transport,
            host,
            tls: TlsClient::for_transport(transport, ca_pem)?,
        })
    }

    /// A TCP connection to `server`, with TLS on top for `turns:` (its certificate checked
    /// against `domain`, or the URI's host), bounded by [`CONNECT_TIMEOUT`] each; the
    /// stream and our end's address.
    pub(super) async fn connect_stream(
        &self,
        server: SocketAddr,
        domain: Option<&str>,
    ) -> Result<(Pin<Box<dyn Stream>>, SocketAddr), DriverError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| DriverError::Io {
                context: format!("connecting to {server}"),
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(io(format!("connecting to {server}")))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(io("local address"))?;
        let stream: Pin<Box<dyn Stream>> = match (&self.tls, self.transport) {
            (Some(tls), TurnTransport::Tls) => {
                tls.connect(tcp, domain.unwrap_or(&self.host)).await?
            }
            _ => Box::pin(tcp),
        };
        Ok((stream, local))
    }
}

async fn run(
    shared: Arc<Shared>,
    mut conn: Conn,
    // Where the connection goes: the server, or after a 300 Try Alternate the alternate.
    mut target: SocketAddr,
    connector: Connector,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<TurnEvent>,
) {
    let _close = CloseOnDrop(shared.clone());
    let proto = match conn {
        Conn::Udp(_) => Protocol::Udp,
        Conn::Stream(..) => Protocol::Tcp,
    };
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_600];
    let mut dealloc_deadline: Option<tokio::time::Instant> = None;
    let mut commands_open = true;
    loop {
        loop {
            // Not `while let`: the lock must be released before the `.await`.
            let t = shared.alloc().poll_transmit();
            let Some(t) = t else { break };
            if let Conn::Udp(s) = &conn {
                if t.destination != target {
                    // A 300 Try Alternate was followed: the same socket, another server
                    // (the data plane reads the machine's server as it encodes).
                    debug!(from = %target, to = %t.destination, "TURN over UDP: to the alternate server");
                    if let Err(e) = route_udp(s, t.destination).await {
                        let _ = events.send(TurnEvent::Disconnected(format!(
                            "the TURN server redirected to {}: {e}",
                            t.destination
                        )));
                        return;
                    }
                    target = t.destination;
                }
            }
            if let Err(e) = send(&mut conn, target, &t.contents).await {
                let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                return;
            }
        }
        let (done, timeout, reconnect) = {
            let mut alloc = shared.alloc();
            while let Some(ev) = alloc.poll_event() {
                let _ = events.send(TurnEvent::Allocation(ev));
            }
            let reconnect = alloc
                .reconnect_to()
                .map(|to| (to, alloc.alternate_domain().map(str::to_owned)));
            (alloc.is_done(), alloc.poll_timeout(), reconnect)
        };
        if done {
            // Close streams cleanly: for TLS this sends close_notify, so the server sees an
            // orderly close rather than a broken connection. Bounded like everything else.
            if let Conn::Stream(s, _) = &mut conn {
                let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
            }
            return;
        }
        if let (Some((to, domain)), Conn::Stream(old, _)) = (reconnect, &mut conn) {
            // A 300 Try Alternate over TCP or TLS: close this connection, open one to the
            // alternate server (RFC 8656 §7.4), bounded by CONNECT_TIMEOUT (twice for TLS).
            debug!(from = %target, to = %to, ?domain, "TURN: reconnecting to the alternate server");
            let _ = tokio::time::timeout(Duration::from_secs(1), old.shutdown()).await;
            match connector.connect_stream(to, domain.as_deref()).await {
                Ok((stream, local)) => {
                    conn = Conn::Stream(stream, StreamFramer::new());
                    target = to;
                    shared.alloc().connected(Instant::now(), local);
                    continue;
                }
                Err(e) => {
                    let _ = events.send(TurnEvent::Disconnected(format!(
                        "the TURN server redirected to {to}: {e}"
                    )));
                    return;
                }
            }
        }
        let wake = timeout
            .map(tokio::time::Instant::from)
            .into_iter()
            .chain(dealloc_deadline)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // A data plane receives for us; once deallocating we read too, so that the answer
        // arrives even when the application no longer calls `recv`.
        let reading = !shared.data_plane.load(Ordering::Acquire) || dealloc_deadline.is_some();
        tokio::select! {
            r = recv(&mut conn, &mut buf), if reading => match r {
                Ok((0, None, _)) => {
                    let _ = events.send(TurnEvent::Disconnected("the server closed the connection".into()));
                    return;
                }
                Ok((n, from, stride)) => match &mut conn {
                    Conn::Udp(_) => {
                        // GRO puts datagrams of one size back to back, `stride` apart.
                        for d in segments(n, stride) {
                            deliver(&shared, &events, proto, from, &buf[d]);
                        }
                    }
                    Conn::Stream(_, framer) => {
                        if framer.push(&buf[..n]).is_err() {
                            let _ = events.send(TurnEvent::Disconnected("stream framing lost".into()));
                            return;
                        }
                        while let Some(f) = framer.next_frame() {
                            match f {
                                Ok(f) => deliver(&shared, &events, proto, None, f),
                                Err(e) => {
                                    let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                                    return;
                                }
                            }
                        }
                    }
                },
                Err(e) => {
                    // Over UDP an ICMP error surfaces here; keep going.
                    debug!(error = %e, "receive error");
                    if !matches!(conn, Conn::Udp(_)) {
                        let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                        return;
                    }
                }
            },
            () = shared.wake.notified() => {}
            cmd = commands.recv(), if commands_open => {
                let now = Instant::now();
                match cmd {
                    Some(Command::Permission(ip)) => {
                        if let Err(e) = shared.alloc().create_permission(now, ip) {
                            let _ = events.send(TurnEvent::SendFailed(SocketAddr::new(ip, 0), e));
                        }
                    }
                    Some(Command::Channel(peer)) => {
                        if let Err(e) = shared.alloc().bind_channel(now, peer) {
                            let _ = events.send(TurnEvent::SendFailed(peer, e));
                        }
                    }
                    Some(Command::Send(peer, data)) => {
                        let encoded = shared.alloc().encode_to_peer(peer, &data, &mut out);
                        match encoded {
                            Ok(n) => {
                                if let Err(e) = send(&mut conn, target, &out[..n]).await {
                                    let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = events.send(TurnEvent::SendFailed(peer, e));
                            }
                        }
                    }
                    Some(Command::Deallocate) | None => {
                        commands_open = cmd.is_some();
                        if dealloc_deadline.is_none() {
                            shared.alloc().deallocate(now);
                            dealloc_deadline = Some(tokio::time::Instant::now() + DEALLOCATE_TIMEOUT);
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => {
                if dealloc_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    debug!("deallocation not confirmed in time");
                    let _ = events.send(TurnEvent::DeallocateUnconfirmed);
                    return;
                }
                shared.alloc().handle_timeout(Instant::now());
            }
        }
    }
}

/// Feeds one datagram or stream message to the machine; peer data becomes an event.
/// `from` is the datagram's source over UDP (the stream's peer is the server).
fn deliver(
    shared: &Shared,
    events: &mpsc::UnboundedSender<TurnEvent>,
    proto: Protocol,
    from: Option<SocketAddr>,
    frame: &[u8],
) {
    let mut alloc = shared.alloc();
    let rx = Received {
        proto,
        // A stream carries only the server's messages, to us.
        source: from.unwrap_or(alloc.server()),
        destination: alloc.local(),
        contents: frame,
    };
    if let Input::Data { peer, data } = alloc.handle_input(Instant::now(), rx) {
        let _ = events.send(TurnEvent::Data {
            peer,
            data: data.to_vec(),
        });
    }
}

async fn send(conn: &mut Conn, server: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
    match conn {
        Conn::Udp(s) => {
            let d = Datagrams {
                destination: server,
                source: None,
                contents: bytes,
                segment_size: None,
            };
            s.send(&d).await
        }
        Conn::Stream(s, _) => s.write_all(bytes).await,
    }
}

/// Reads from the connection: the bytes, over UDP where they came from, and the size of
/// each datagram in them (more than one only with GRO).
async fn recv(
    conn: &mut Conn,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SocketAddr>, usize)> {
    match conn {
        Conn::Udp(s) => loop {
            s.readable().await?;
            match s.try_recv_into(buf) {
                Ok(r) => return Ok((r.len, Some(r.source), r.stride)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        },
        Conn::Stream(s, _) => s.read(buf).await.map(|n| (n, None, n)),
    }
}

/// The local IP the system would use toward `server` (a throw-away connected socket).
fn local_toward(server: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(server).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}
