//! A TURN allocation on tokio: UDP, TCP, or TLS (feature `tls`) to the server, around the
//! sans-IO [`Allocation`].
//!
//! [`allocate`] connects and starts a task that owns the transport and runs the machine
//! (a configuration of the driver's generic runner, like the servers and the port
//! mapper); the returned [`TurnHandle`] sends commands to it and receives [`TurnEvent`]s. Dropping
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
//! The [`Allocation`] has one owner at a time. The task owns it until a data plane is
//! made: the task then lends it the machine, with the handle's commands and events, and
//! stops touching the socket. From then on the data plane alone runs the allocation,
//! without locks: [`TurnDataPlane::recv`] reads the socket, feeds control messages to the
//! machine, applies the handle's commands, runs the timers (refreshes of the allocation,
//! permissions and channels), sends the machine's requests and reports its events to the
//! handle; `send_to`/`queue_to` encode with the machine it owns. So keep calling `recv`
//! while a data plane exists. Dropping it hands the machine back to the task, which
//! receives again. [`TurnHandle::current_server`] reads a copy that the owner updates.
//! Dropping the handle deallocates whoever owns the machine: the data plane (in `recv`),
//! or the task once the data plane is dropped.
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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};

mod control;
mod data_plane;
#[cfg(feature = "tls")]
mod tls;
pub use data_plane::{
    Coalescing, DataPlaneError, DataPlaneStats, RecvBatch, SEND_QUEUE_BYTES, SEND_QUEUE_DATAGRAMS,
    TurnDataPlane,
};

use super::sockets::Sockets;
use super::udp::{BindOptions, UdpSocket};
use super::{DriverError, io, os_seed};
use crate::turn::{
    Allocation, AllocationConfig, AllocationEvent, Credentials, RequestedFamily, TurnError,
    TurnTransport, TurnUri,
};
use control::{Client, Lease, Owned};

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
    /// A data plane asks for the machine: see [`Lease`].
    Lend(oneshot::Sender<Box<Lease>>),
}

/// What the control task and a [`TurnDataPlane`] share: never the machine, which has one
/// owner at a time ([`Owned`]).
#[derive(Debug)]
struct Shared {
    /// The server the allocation lives on, published by whoever owns the machine (a 300
    /// Try Alternate changes it).
    server: Mutex<SocketAddr>,
    /// One permit: held by the one data plane that may exist.
    lease: Arc<Semaphore>,
}

impl Shared {
    fn server(&self) -> SocketAddr {
        *self.server.lock().unwrap_or_else(PoisonError::into_inner)
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
        self.shared.server()
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
    /// [`Coalescing`]: see [`TurnDataPlane`]. One at a time: the allocation's task lends
    /// it the machine (its first `recv` or `queue_to` waits for it), and while it exists
    /// it runs the allocation: data comes from [`TurnDataPlane::recv`], no longer as
    /// [`TurnEvent::Data`], and this handle's commands, the refreshes and the events
    /// happen while `recv` runs, so keep calling it. Dropping it hands the machine back
    /// to the task.
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
        let permit = self
            .shared
            .lease
            .clone()
            .try_acquire_owned()
            .map_err(|_| DataPlaneError::InUse)?;
        let (tx, rx) = oneshot::channel();
        // Should the task be gone, the data plane finds the allocation over.
        let _ = self.commands.send(Command::Lend(tx));
        Ok(TurnDataPlane::new(permit, rx, socket.clone(), coalescing))
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Deallocate);
    }
}

pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

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
    let mut sockets = Sockets::bind(&[]).await?;
    let (udp, local) = match uri.transport {
        TurnTransport::Udp => {
            let any: SocketAddr = if server.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let s = UdpSocket::bind(any, BindOptions::default()).map_err(io("binding"))?;
            let local = match s.local_addr() {
                // Unconnected: the address the server is reached from.
                l if l.ip().is_unspecified() => {
                    local_toward(server).map_or(l, |ip| SocketAddr::new(ip, l.port()))
                }
                l => l,
            };
            let s = Arc::new(s);
            sockets.adopt(local, s.clone());
            sockets.connect(local, server).await?;
            (Some(s), local)
        }
        TurnTransport::Tcp | TurnTransport::Tls => {
            let (stream, local) = connector.connect_stream(server, None).await?;
            sockets.set_stream(stream, local, server);
            (None, local)
        }
    };
    let mut ac = AllocationConfig::new(server, local, uri.transport, config.credentials.clone());
    ac.lifetime = config.lifetime;
    ac.family = config.family;
    let alloc = Allocation::new(Instant::now(), ac, os_seed()?);
    let shared = Arc::new(Shared {
        server: Mutex::new(server),
        lease: Arc::new(Semaphore::new(1)),
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let owned = Owned {
        client: Client::new(alloc, uri.transport),
        commands: cmd_rx,
        commands_open: true,
        events: ev_tx,
        stashed: None,
        shared: shared.clone(),
        target: server,
    };
    tokio::spawn(control::run(owned, sockets, connector));
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
