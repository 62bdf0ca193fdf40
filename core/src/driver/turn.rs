//! A TURN allocation on tokio: UDP, TCP, or TLS (feature `tls`) to the server, around the
//! sans-IO [`Allocation`].
//!
//! [`allocate`] connects and starts a task that owns the transport and the machine; the
//! returned [`TurnHandle`] sends commands to it and receives [`TurnEvent`]s. Dropping the
//! handle deallocates (bounded by [`DEALLOCATE_TIMEOUT`]).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::debug;

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
pub struct TurnClientConfig {
    /// The server.
    pub uri: TurnUri,
    /// Credentials (long-term or REST-derived).
    pub credentials: Credentials,
    /// Lifetime to ask for.
    pub lifetime: Duration,
    /// Relayed address family.
    pub family: RequestedFamily,
    /// PEM certificates to trust for `turns:` instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// What the allocation task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

enum Command {
    Permission(IpAddr),
    Channel(SocketAddr),
    Send(SocketAddr, Vec<u8>),
    Deallocate,
}

/// A running allocation. Dropping it deallocates.
#[derive(Debug)]
pub struct TurnHandle {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<TurnEvent>,
    /// The server's address and the transport in use.
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

    /// Installs a permission for a peer IP.
    pub fn create_permission(&self, peer: IpAddr) {
        let _ = self.commands.send(Command::Permission(peer));
    }

    /// Binds a channel to a peer (and a permission for its IP).
    pub fn bind_channel(&self, peer: SocketAddr) {
        let _ = self.commands.send(Command::Channel(peer));
    }

    /// Sends data to a peer through the relay.
    pub fn send_to(&self, peer: SocketAddr, data: Vec<u8>) {
        let _ = self.commands.send(Command::Send(peer, data));
    }

    /// Deallocates; [`AllocationEvent::Deallocated`] follows, then the task ends.
    pub fn deallocate(&self) {
        let _ = self.commands.send(Command::Deallocate);
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Deallocate);
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

enum Conn {
    Udp(UdpSocket),
    Stream(Pin<Box<dyn Stream>>, StreamFramer),
}

/// Resolves the server, connects (TCP/TLS), and starts allocating.
pub async fn allocate(config: TurnClientConfig) -> Result<TurnHandle, DriverError> {
    let uri = &config.uri;
    let server = tokio::net::lookup_host((uri.host.as_str(), uri.port))
        .await
        .map_err(io(format!("resolving {}", uri.host)))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or(DriverError::NothingResolved)?;
    let (conn, local) = match uri.transport {
        TurnTransport::Udp => {
            let any: SocketAddr = if server.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let s = UdpSocket::bind(any).await.map_err(io("binding"))?;
            s.connect(server)
                .await
                .map_err(io(format!("routing to {server}")))?;
            let local = s.local_addr().map_err(io("local address"))?;
            (Conn::Udp(s), local)
        }
        TurnTransport::Tcp | TurnTransport::Tls => {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
                .await
                .map_err(|_| DriverError::Io {
                    context: format!("connecting to {server}"),
                    source: std::io::ErrorKind::TimedOut.into(),
                })?
                .map_err(io(format!("connecting to {server}")))?;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().map_err(io("local address"))?;
            let stream: Pin<Box<dyn Stream>> = if uri.transport == TurnTransport::Tls {
                tls_connect(tcp, &uri.host, config.ca_pem.as_deref()).await?
            } else {
                Box::pin(tcp)
            };
            (Conn::Stream(stream, StreamFramer::new()), local)
        }
    };
    let mut ac = AllocationConfig::new(server, local, uri.transport, config.credentials.clone());
    ac.lifetime = config.lifetime;
    ac.family = config.family;
    let alloc = Allocation::new(Instant::now(), ac, os_seed()?);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(alloc, conn, server, local, cmd_rx, ev_tx));
    Ok(TurnHandle {
        commands: cmd_tx,
        events: ev_rx,
        server,
        transport: uri.transport,
    })
}

#[cfg(feature = "tls")]
async fn tls_connect(
    tcp: TcpStream,
    host: &str,
    ca_pem: Option<&[u8]>,
) -> Result<Pin<Box<dyn Stream>>, DriverError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let tls_err = |what: String| DriverError::Io {
        context: "TLS".into(),
        source: std::io::Error::other(what),
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| tls_err(format!("bad CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("bad CA certificate: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| tls_err(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| tls_err("handshake timed out".into()))?
        .map_err(io("TLS handshake"))?;
    Ok(Box::pin(stream))
}

#[cfg(not(feature = "tls"))]
async fn tls_connect(
    _tcp: TcpStream,
    _host: &str,
    _ca_pem: Option<&[u8]>,
) -> Result<Pin<Box<dyn Stream>>, DriverError> {
    Err(DriverError::Io {
        context: "TLS".into(),
        source: std::io::Error::other("built without the `tls` feature"),
    })
}

async fn run(
    mut alloc: Allocation,
    mut conn: Conn,
    server: SocketAddr,
    local: SocketAddr,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<TurnEvent>,
) {
    let proto = match conn {
        Conn::Udp(_) => Protocol::Udp,
        Conn::Stream(..) => Protocol::Tcp,
    };
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_600];
    let mut dealloc_deadline: Option<tokio::time::Instant> = None;
    let mut commands_open = true;
    loop {
        while let Some(t) = alloc.poll_transmit() {
            if let Err(e) = send(&mut conn, &t.contents).await {
                let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                return;
            }
        }
        while let Some(ev) = alloc.poll_event() {
            let _ = events.send(TurnEvent::Allocation(ev));
        }
        if alloc.is_done() {
            // Close streams cleanly: for TLS this sends close_notify, so the server sees an
            // orderly close rather than a broken connection. Bounded like everything else.
            if let Conn::Stream(s, _) = &mut conn {
                let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
            }
            return;
        }
        let wake = alloc
            .poll_timeout()
            .map(tokio::time::Instant::from)
            .into_iter()
            .chain(dealloc_deadline)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = recv(&mut conn, &mut buf) => match r {
                Ok(0) => {
                    let _ = events.send(TurnEvent::Disconnected("the server closed the connection".into()));
                    return;
                }
                Ok(n) => {
                    let frames: Vec<Vec<u8>> = match &mut conn {
                        Conn::Udp(_) => vec![buf[..n].to_vec()],
                        Conn::Stream(_, framer) => {
                            if framer.push(&buf[..n]).is_err() {
                                let _ = events.send(TurnEvent::Disconnected("stream framing lost".into()));
                                return;
                            }
                            let mut v = Vec::new();
                            while let Some(f) = framer.next_frame() {
                                match f {
                                    Ok(f) => v.push(f.to_vec()),
                                    Err(e) => {
                                        let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                                        return;
                                    }
                                }
                            }
                            v
                        }
                    };
                    for frame in frames {
                        let rx = Received { proto, source: server, destination: local, contents: &frame };
                        if let Input::Data { peer, data } = alloc.handle_input(Instant::now(), rx) {
                            let _ = events.send(TurnEvent::Data { peer, data: data.to_vec() });
                        }
                    }
                }
                Err(e) => {
                    // Over UDP an ICMP error surfaces here; keep going.
                    debug!(error = %e, "receive error");
                    if !matches!(conn, Conn::Udp(_)) {
                        let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                        return;
                    }
                }
            },
            cmd = commands.recv(), if commands_open => {
                let now = Instant::now();
                match cmd {
                    Some(Command::Permission(ip)) => {
                        if let Err(e) = alloc.create_permission(now, ip) {
                            let _ = events.send(TurnEvent::SendFailed(SocketAddr::new(ip, 0), e));
                        }
                    }
                    Some(Command::Channel(peer)) => {
                        if let Err(e) = alloc.bind_channel(now, peer) {
                            let _ = events.send(TurnEvent::SendFailed(peer, e));
                        }
                    }
                    Some(Command::Send(peer, data)) => match alloc.encode_to_peer(peer, &data, &mut out) {
                        Ok(n) => {
                            if let Err(e) = send(&mut conn, &out[..n]).await {
                                let _ = events.send(TurnEvent::Disconnected(e.to_string()));
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = events.send(TurnEvent::SendFailed(peer, e));
                        }
                    },
                    Some(Command::Deallocate) | None => {
                        commands_open = cmd.is_some();
                        if dealloc_deadline.is_none() {
                            alloc.deallocate(now);
                            dealloc_deadline = Some(tokio::time::Instant::now() + DEALLOCATE_TIMEOUT);
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if dealloc_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    debug!("deallocation not confirmed in time");
                    return;
                }
                alloc.handle_timeout(Instant::now());
            }
        }
    }
}

async fn send(conn: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
    match conn {
        Conn::Udp(s) => s.send(bytes).await.map(|_| ()),
        Conn::Stream(s, _) => s.write_all(bytes).await,
    }
}

async fn recv(conn: &mut Conn, buf: &mut [u8]) -> std::io::Result<usize> {
    match conn {
        Conn::Udp(s) => s.recv(buf).await,
        Conn::Stream(s, _) => s.read(buf).await,
    }
}
