//! ICMP hole punching on real sockets (Linux, `CAP_NET_RAW`): runs an
//! [`IcmpPunch`](crate::holepunch::icmp::IcmpPunch) machine with a raw ICMP socket and a
//! UDP socket until the peer is heard, then carries datagrams over the punched path.
//!
//! [`icmp_punch`] returns an [`IcmpLink`] once a frame of the peer has arrived; the
//! machine keeps running in a task (answering `HELLO`s, keep-alives) until the link is
//! dropped.

// Elsewhere than Linux only the error path is compiled (the imports and helpers serve the
// Linux implementation).
#![cfg_attr(not(target_os = "linux"), allow(unused_imports, dead_code))]

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::holepunch::icmp::{
    Channel, IcmpInput, IcmpPunch, IcmpPunchConfig, IcmpPunchEvent, IcmpTransmit, Role,
};

/// How long the client waits for its STUN server's answer (three tries of this).
pub const STUN_WAIT: Duration = Duration::from_millis(700);

/// Errors of ICMP hole punching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IcmpPunchError {
    /// Raw sockets need `CAP_NET_RAW` (or root).
    #[error(
        "ICMP hole punching needs a raw ICMP socket, which needs CAP_NET_RAW: run as root or \
         grant it (setcap cap_net_raw+ep <binary>) ({0})"
    )]
    NoCapability(std::io::Error),
    /// Not available on this system.
    #[error("ICMP hole punching is only available on Linux")]
    Unsupported,
    /// A socket operation failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The STUN server did not answer (client with a STUN server).
    #[error("the STUN server {0} did not answer")]
    Stun(SocketAddr),
    /// No frame of the peer within the timeout.
    #[error("no answer from the peer within {0:?}")]
    TimedOut(Duration),
}

/// What [`icmp_punch`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IcmpPunchOptions {
    /// Server, or client with the server's public address and UDP port.
    pub role: IcmpRole,
    /// The machine's configuration (target, echo identifier, intervals).
    pub config: IcmpPunchConfig,
    /// The local UDP address (the server's port is the one clients send to).
    pub bind: SocketAddrV4,
    /// (Client) a STUN server to learn this side's public address from, on the UDP socket,
    /// which the client then advertises. Without it the server guesses from the packet.
    pub stun: Option<SocketAddr>,
    /// How long to wait for the peer.
    pub timeout: Duration,
}

/// The side to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRole {
    /// Waits for a client's Time Exceeded.
    Server,
    /// Knows the server's public address and UDP port.
    Client {
        /// The server.
        server: SocketAddrV4,
    },
}

impl IcmpPunchOptions {
    /// Options with the defaults of [`IcmpPunchConfig`].
    pub fn new(role: IcmpRole, bind: SocketAddrV4, timeout: Duration) -> Self {
        IcmpPunchOptions {
            role,
            config: IcmpPunchConfig::default(),
            bind,
            stun: None,
            timeout,
        }
    }
}

/// What the link reports after it is up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcmpLinkEvent {
    /// Bytes from the peer.
    Data(Vec<u8>),
    /// The peer ended its direction.
    PeerEnded,
    /// The peer heard us: the path works both ways.
    Established,
}

/// A punched UDP path to the peer.
#[derive(Debug)]
pub struct IcmpLink {
    /// Where the peer's frames come from.
    pub peer: SocketAddr,
    /// The local UDP address.
    pub local: SocketAddr,
    /// (Server) what the client's Time Exceeded said, if this side is the server.
    pub learned: Option<IcmpPunchEvent>,
    /// (Client) the public address learned from the STUN server and advertised.
    pub advertised: Option<SocketAddrV4>,
    /// (Client) Time Exceeded messages the identifier sweep forged before the server was
    /// heard (0 without a sweep).
    pub swept: u64,
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<IcmpLinkEvent>,
}

impl IcmpLink {
    /// Sends `data` (at most [`MAX_DATA`](crate::holepunch::icmp::MAX_DATA) bytes; empty
    /// ends our direction). Returns false when the link's task has ended.
    pub async fn send(&self, data: &[u8]) -> bool {
        self.tx.send(data.to_vec()).await.is_ok()
    }

    /// The next event; `None` once the task has ended.
    pub async fn recv(&mut self) -> Option<IcmpLinkEvent> {
        self.rx.recv().await
    }
}

/// Opens the raw ICMP socket, mapping a permission error to
/// [`IcmpPunchError::NoCapability`].
#[cfg(target_os = "linux")]
fn raw_socket() -> Result<socket2::Socket, IcmpPunchError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => IcmpPunchError::NoCapability(e),
            _ if e.raw_os_error() == Some(1) => IcmpPunchError::NoCapability(e),
            _ => IcmpPunchError::Io("raw ICMP socket", e),
        }
    })?;
    s.set_nonblocking(true)
        .map_err(|e| IcmpPunchError::Io("raw ICMP socket", e))?;
    Ok(s)
}

/// Learns this socket's public address from a STUN server (RFC 8489 Binding).
async fn stun_binding(
    sock: &UdpSocket,
    server: SocketAddr,
) -> Result<SocketAddrV4, IcmpPunchError> {
    use crate::stun::attributes::XorMappedAddress;
    use crate::stun::{MessageBuilder, MessageType, TransactionId};
    let mut tid = [0u8; 12];
    getrandom::fill(&mut tid).map_err(|_| IcmpPunchError::Stun(server))?;
    let tid = TransactionId(tid);
    let mut buf = [0u8; 64];
    let req = {
        let Ok(b) = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, tid) else {
            return Err(IcmpPunchError::Stun(server));
        };
        b.finish().to_vec()
    };
    let mut rbuf = vec![0u8; 1500];
    for _ in 0..3 {
        sock.send_to(&req, server)
            .await
            .map_err(|e| IcmpPunchError::Io("STUN request", e))?;
        let deadline = tokio::time::Instant::now() + STUN_WAIT;
        while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut rbuf)).await {
            let (n, from) = r.map_err(|e| IcmpPunchError::Io("STUN answer", e))?;
            if from != server {
                continue;
            }
            let Ok(m) = crate::stun::Message::parse(&rbuf[..n]) else {
                continue;
            };
            if m.transaction_id() != tid || m.message_type() != MessageType::BINDING_SUCCESS {
                continue;
            }
            if let Ok(Some(XorMappedAddress(SocketAddr::V4(a)))) = m.get::<XorMappedAddress>() {
                return Ok(a);
            }
        }
    }
    Err(IcmpPunchError::Stun(server))
}

/// Punches a UDP path with ICMP (see [the module](self)). Fails at once with
/// [`IcmpPunchError::NoCapability`] without `CAP_NET_RAW`; with
/// [`IcmpPunchError::TimedOut`] when no frame of the peer arrived within the timeout.
#[cfg(target_os = "linux")]
pub async fn icmp_punch(options: IcmpPunchOptions) -> Result<IcmpLink, IcmpPunchError> {
    use std::io::Read as _;
    use tokio::io::unix::AsyncFd;

    // Deprecated for descriptors that may close while registered; a `socket2::Socket`
    // closes only when the `AsyncFd` drops (after deregistering), as in `netmon`.
    #[allow(deprecated)]
    let raw = AsyncFd::new(raw_socket()?).map_err(|e| IcmpPunchError::Io("raw ICMP socket", e))?;
    let udp = UdpSocket::bind(options.bind)
        .await
        .map_err(|e| IcmpPunchError::Io("UDP socket", e))?;
    let local = udp
        .local_addr()
        .map_err(|e| IcmpPunchError::Io("UDP socket", e))?;
    let advertised = match (options.role, options.stun) {
        (IcmpRole::Client { .. }, Some(stun)) => Some(stun_binding(&udp, stun).await?),
        _ => None,
    };
    let role = match options.role {
        IcmpRole::Server => Role::Server,
        IcmpRole::Client { server } => Role::Client {
            server,
            public: advertised,
            local_port: local.port(),
        },
    };
    let seed = super::os_seed()
        .map_err(|e| IcmpPunchError::Io("random seed", std::io::Error::other(e.to_string())))?;
    let start = tokio::time::Instant::now();
    let mut m = IcmpPunch::new(start.into_std(), role, options.config, seed);
    tracing::debug!(?role, %local, "ICMP hole punching");

    let (up_tx, up_rx) =
        oneshot::channel::<Result<(SocketAddr, Option<IcmpPunchEvent>, u64), IcmpPunchError>>();
    let (data_tx, mut data_rx) = mpsc::channel::<Vec<u8>>(64);
    let (ev_tx, ev_rx) = mpsc::channel::<IcmpLinkEvent>(256);
    let timeout = options.timeout;
    tokio::spawn(async move {
        let mut up_tx = Some(up_tx);
        let mut learned = None;
        let give_up = start + timeout;
        let mut ubuf = vec![0u8; 2048];
        let mut rbuf = vec![0u8; 2048];
        let mut sending_open = true;
        loop {
            // Send what is due.
            while let Some(IcmpTransmit {
                channel,
                destination,
                contents,
            }) = m.poll_transmit()
            {
                match channel {
                    Channel::Udp => {
                        if let Err(e) = udp.send_to(&contents, destination).await {
                            tracing::debug!(%destination, error = %e, "UDP send failed");
                        }
                    }
                    Channel::Icmp => {
                        let to = socket2::SockAddr::from(destination);
                        if let Err(e) = raw.get_ref().send_to(&contents, &to) {
                            tracing::debug!(%destination, error = %e, "ICMP send failed");
                        }
                    }
                }
            }
            while let Some(ev) = m.poll_event() {
                let out = match ev {
                    e @ IcmpPunchEvent::ClientLearned { .. } => {
                        tracing::info!(event = ?e, "ICMP: client learned");
                        learned = Some(e);
                        None
                    }
                    IcmpPunchEvent::Connected { peer } => {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(Ok((peer, learned.clone(), m.swept())));
                        }
                        None
                    }
                    IcmpPunchEvent::Established => Some(IcmpLinkEvent::Established),
                    IcmpPunchEvent::Data(d) => Some(IcmpLinkEvent::Data(d)),
                    IcmpPunchEvent::PeerEnded => Some(IcmpLinkEvent::PeerEnded),
                };
                if let Some(out) = out {
                    if up_tx.is_none() {
                        let _ = ev_tx.send(out).await;
                    }
                }
            }
            if up_tx.as_ref().is_some_and(|t| t.is_closed())
                || (up_tx.is_none() && ev_tx.is_closed())
            {
                return;
            }
            let wake = m
                .poll_timeout()
                .map_or(give_up, tokio::time::Instant::from_std);
            let wake = if up_tx.is_some() {
                wake.min(give_up)
            } else {
                wake
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {
                    let now = tokio::time::Instant::now();
                    if up_tx.is_some() && now >= give_up {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(Err(IcmpPunchError::TimedOut(timeout)));
                        }
                        return;
                    }
                    m.handle_timeout(now.into_std());
                }
                r = udp.recv_from(&mut ubuf) => {
                    match r {
                        Ok((n, source)) => {
                            m.handle_input(
                                std::time::Instant::now(),
                                IcmpInput::Udp { source, contents: &ubuf[..n] },
                            );
                        }
                        Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
                    }
                }
                g = raw.readable() => {
                    let Ok(mut g) = g else { return };
                    match g.try_io(|s| s.get_ref().read(&mut rbuf)) {
                        Ok(Ok(n)) => {
                            m.handle_input(std::time::Instant::now(), IcmpInput::Icmp(&rbuf[..n]));
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "ICMP receive failed"),
                        Err(_would_block) => {}
                    }
                }
                d = data_rx.recv(), if up_tx.is_none() && sending_open => {
                    match d {
                        Some(d) => {
                            if let Err(e) = m.send(&d) {
                                tracing::debug!(error = %e, "data not sent");
                            }
                        }
                        None => sending_open = false,
                    }
                }
            }
        }
    });
    let (peer, learned, swept) = up_rx
        .await
        .map_err(|_| IcmpPunchError::TimedOut(timeout))??;
    Ok(IcmpLink {
        peer,
        local,
        learned,
        advertised,
        swept,
        tx: data_tx,
        rx: ev_rx,
    })
}

/// ICMP hole punching is Linux only.
#[cfg(not(target_os = "linux"))]
pub async fn icmp_punch(_options: IcmpPunchOptions) -> Result<IcmpLink, IcmpPunchError> {
    Err(IcmpPunchError::Unsupported)
}
