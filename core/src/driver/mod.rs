//! The tokio driver: real sockets and the real clock around the sans-IO machines.
//!
//! - [`netcheck`] binds the sockets a [`Prober`] needs, runs it and returns its report
//!   ([`netcheck_until`]: or what it found when told to stop).
//! - [`serve`] runs a [`StunServer`] on all of its addresses until the handle is dropped.
//! - [`resolve`] turns `stun:` URIs into [`ServerSpec`]s.
//! - [`portmap`] runs the port mapper and the gateway probe.
//! - [`turn`] runs a TURN allocation over UDP, TCP or TLS.
//! - [`signal`] serves `pinhole signal`'s rendezvous over HTTP.
//! - [`peer`] runs a peer connection (ICE over STUN and TURN) on one UDP socket.

pub mod peer;
mod peer_portmap;
mod peer_streams;
pub use peer_portmap::PORT_MAPPING_WAIT;
pub mod portmap;
pub mod signal;
pub mod turn;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::netcheck::{NetcheckConfig, NetcheckError, NetcheckEvent, Prober, Report, ServerSpec};
use crate::stun::{ServerConfig, StunError, StunServer, StunUri, UriError};
use crate::{Protocol, Received, Transmit};

/// The largest datagram the driver reads.
const MAX_DATAGRAM: usize = 65_535;

/// Public STUN servers used when none are given: Google's and Cloudflare's (plain STUN),
/// and stunprotocol.org's, which supports RFC 5780.
pub const DEFAULT_STUN_SERVERS: [&str; 4] = [
    "stun:stun.l.google.com:19302",
    "stun:stun1.l.google.com:19302",
    "stun:stun.cloudflare.com:3478",
    "stun:stun.stunprotocol.org:3478",
];

/// Errors from the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A URI did not parse.
    #[error("{uri}: {source}")]
    Uri {
        /// The URI.
        uri: String,
        /// The error.
        source: UriError,
    },
    /// A URI's scheme is not supported here.
    #[error("{0}: stuns: (TLS) is not supported for netcheck")]
    Unsupported(String),
    /// No server name resolved.
    #[error("no STUN server could be resolved")]
    NothingResolved,
    /// Setting up the prober failed.
    #[error(transparent)]
    Netcheck(#[from] NetcheckError),
    /// The server configuration is invalid.
    #[error(transparent)]
    Stun(#[from] StunError),
    /// The operating system's random generator failed.
    #[error("random seed: {0}")]
    Random(String),
    /// The certificates to trust for TLS (PEM) are unusable: none in the text, or
    /// malformed.
    #[error("CA certificates: {0}")]
    Certificates(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DriverError {
    let context = context.into();
    move |source| DriverError::Io { context, source }
}

/// A 32-byte seed from the operating system.
pub fn os_seed() -> Result<[u8; 32], DriverError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| DriverError::Random(e.to_string()))?;
    Ok(seed)
}

/// A server that could not be resolved.
#[derive(Debug, Clone)]
pub struct Unresolved {
    /// The URI.
    pub uri: String,
    /// Why.
    pub reason: String,
}

/// Resolves `stun:` URIs, preferring IPv4 addresses. All returned servers share one
/// address family (that of the first resolved); the others are returned as unresolved.
pub async fn resolve(uris: &[String]) -> Result<(Vec<ServerSpec>, Vec<Unresolved>), DriverError> {
    let mut specs = Vec::new();
    let mut failed = Vec::new();
    for uri in uris {
        let parsed: StunUri = uri.parse().map_err(|source| DriverError::Uri {
            uri: uri.clone(),
            source,
        })?;
        if parsed.secure {
            return Err(DriverError::Unsupported(uri.clone()));
        }
        match tokio::net::lookup_host((parsed.host.as_str(), parsed.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
                    Some(a) => specs.push(ServerSpec {
                        label: parsed.to_string(),
                        addr: *a,
                    }),
                    None => failed.push(Unresolved {
                        uri: uri.clone(),
                        reason: "no address".into(),
                    }),
                }
            }
            Err(e) => failed.push(Unresolved {
                uri: uri.clone(),
                reason: e.to_string(),
            }),
        }
    }
    if let Some(first) = specs.first() {
        let v4 = first.addr.is_ipv4();
        let (keep, other): (Vec<_>, Vec<_>) =
            specs.into_iter().partition(|s| s.addr.is_ipv4() == v4);
        failed.extend(other.into_iter().map(|s| Unresolved {
            uri: s.label,
            reason: "address family differs from the first server's".into(),
        }));
        specs = keep;
    }
    Ok((specs, failed))
}

struct Sockets {
    sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    rx: mpsc::Receiver<(SocketAddr, SocketAddr, Vec<u8>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Sockets {
    /// Binds each address and starts a receive task per socket, all feeding one channel
    /// of (local, remote, bytes).
    async fn bind(addrs: &[SocketAddr]) -> Result<Self, DriverError> {
        let (tx, rx) = mpsc::channel(1024);
        let mut sockets = Vec::new();
        let mut tasks = Vec::new();
        for a in addrs {
            let s = UdpSocket::bind(a)
                .await
                .map_err(io(format!("binding {a}")))?;
            let local = s.local_addr().map_err(io("local address"))?;
            let s = Arc::new(s);
            let (s2, tx) = (s.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match s2.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx.send((local, from, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        // ICMP errors surface as receive errors on Linux: keep reading.
                        Err(e) => debug!(%local, error = %e, "receive error"),
                    }
                }
            }));
            sockets.push((local, s));
        }
        Ok(Self { sockets, rx, tasks })
    }

    async fn send(&self, t: &Transmit) {
        let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == t.source) else {
            debug!(source = %t.source, "no socket for transmit");
            return;
        };
        if let Err(e) = s.send_to(&t.contents, t.destination).await {
            debug!(to = %t.destination, error = %e, "send failed");
        }
    }
}

/// Runs a netcheck: binds `config.sockets_needed()` UDP sockets on the wildcard address
/// of the servers' family, drives a [`Prober`], calls `on_event` for progress, and returns
/// the report.
pub async fn netcheck(
    config: NetcheckConfig,
    on_event: impl FnMut(&NetcheckEvent),
) -> Result<Report, DriverError> {
    netcheck_until(config, on_event, std::future::pending()).await
}

/// [`netcheck`] that also ends when `stop` completes (for example on Ctrl-C): the report
/// then holds what was found so far ([`Prober::finish_early`]).
pub async fn netcheck_until(
    config: NetcheckConfig,
    mut on_event: impl FnMut(&NetcheckEvent),
    stop: impl std::future::Future<Output = ()>,
) -> Result<Report, DriverError> {
    tokio::pin!(stop);
    let mut stopped = false;
    let v6 = config.servers.first().is_some_and(|s| s.addr.is_ipv6());
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let wanted = vec![SocketAddr::new(any, 0); config.sockets_needed()];
    let mut sockets = Sockets::bind(&wanted).await?;
    let locals = sockets.sockets.iter().map(|(a, _)| *a).collect();
    let mut prober = Prober::new(Instant::now(), config, locals, os_seed()?)?;
    loop {
        while let Some(t) = prober.poll_transmit() {
            sockets.send(&t).await;
        }
        while let Some(ev) = prober.poll_event() {
            on_event(&ev);
            if let NetcheckEvent::Done(report) = ev {
                return Ok(*report);
            }
        }
        // Until done the prober always has a deadline (its overall budget); stay bounded
        // even if that ever changed.
        let deadline = prober
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_millis(100));
        tokio::select! {
            msg = sockets.rx.recv() => {
                if let Some((local, from, bytes)) = msg {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: &bytes,
                    };
                    if !prober.handle_input(Instant::now(), rx) {
                        debug!(%from, "datagram not for the prober dropped");
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                prober.handle_timeout(Instant::now());
            }
            () = &mut stop, if !stopped => {
                stopped = true;
                prober.finish_early();
            }
        }
    }
}

/// A running STUN server; dropping it stops the server.
#[derive(Debug)]
pub struct ServeHandle {
    addrs: Vec<SocketAddr>,
    task: JoinHandle<()>,
}

impl ServeHandle {
    pub(crate) fn new(addrs: Vec<SocketAddr>, task: JoinHandle<()>) -> Self {
        Self { addrs, task }
    }

    /// The addresses it listens on (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops the server.
    pub fn stop(self) {}
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a STUN server for `config` on every address it needs (one, or four for
/// RFC 5780). Ports must be given (not 0): an RFC 5780 server's addresses are a 2×2 grid.
pub async fn serve(config: ServerConfig) -> Result<ServeHandle, DriverError> {
    let mut server = StunServer::new(config)?;
    let addrs = server.local_addresses();
    let mut sockets = Sockets::bind(&addrs).await?;
    let bound: Vec<SocketAddr> = sockets.sockets.iter().map(|(a, _)| *a).collect();
    let task = tokio::spawn(async move {
        while let Some((local, from, bytes)) = sockets.rx.recv().await {
            server.handle_input(
                Instant::now(),
                Received {
                    proto: Protocol::Udp,
                    source: from,
                    destination: local,
                    contents: &bytes,
                },
            );
            while let Some(t) = server.poll_transmit() {
                sockets.send(&t).await;
            }
        }
    });
    Ok(ServeHandle { addrs: bound, task })
}

/// Starts an RFC 5780 server on loopback, on 127.0.0.1 and 127.0.0.2 with free ports:
/// the embedded default that lets a netcheck run on one machine.
pub async fn serve_loopback() -> Result<ServeHandle, DriverError> {
    let mut last = None;
    // Two free ports that are free on both IPs; retry a few times on collisions.
    for _ in 0..16 {
        let p1 = free_port().await?;
        let p2 = free_port().await?;
        if p1 == p2 {
            continue;
        }
        let primary = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 1).into(), p1);
        let alternate = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), p2);
        // Only this host can reach it (loopback cannot be spoofed from outside), so the
        // per-source limit would only slow this host's own probes.
        let config = ServerConfig {
            rate_limit: None,
            ..ServerConfig::rfc5780(primary, alternate)
        };
        match serve(config).await {
            Ok(h) => return Ok(h),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DriverError::NothingResolved))
}

async fn free_port() -> Result<u16, DriverError> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(io("finding a free port"))?;
    Ok(s.local_addr().map_err(io("local address"))?.port())
}

/// Starts the development TURN server ([`crate::turn::TurnServer`]) on `config.listen`
/// (UDP); relayed sockets are bound on `config.relay_ip`, else on the listen IP when it
/// is concrete, else on the local IP the server answers each client from. Its peer
/// policy, quotas and brakes are `config`'s (safe by default: see the server's docs).
/// Dropping the handle stops it and closes every relay.
pub async fn serve_turn(config: crate::turn::TurnServerConfig) -> Result<ServeHandle, DriverError> {
    use crate::turn::{ServerAction, TurnServer};
    use std::collections::HashMap;

    let listen = UdpSocket::bind(config.listen)
        .await
        .map_err(io(format!("binding {}", config.listen)))?;
    let listen_addr = listen.local_addr().map_err(io("local address"))?;
    let mut config = config;
    config.listen = listen_addr;
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(1024);
    // Readers live in a JoinSet owned by the server task: aborting the task (dropping the
    // handle) drops the set, which aborts every reader and closes every socket.
    let spawn_reader =
        |set: &mut tokio::task::JoinSet<()>,
         sock: Arc<UdpSocket>,
         local: SocketAddr,
         tx: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>| {
            set.spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx.send((local, from, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => debug!(%local, error = %e, "receive error"),
                    }
                }
            })
        };
    let listen = Arc::new(listen);
    let mut server = TurnServer::new(Instant::now(), config, os_seed()?);
    let task = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        spawn_reader(&mut readers, listen.clone(), listen_addr, tx.clone());
        let mut relays: HashMap<SocketAddr, (Arc<UdpSocket>, tokio::task::AbortHandle)> =
            HashMap::new();
        loop {
            while let Some(action) = server.poll_action() {
                match action {
                    ServerAction::BindRelay { client, ip } => {
                        // Never a wildcard: the relayed address is advertised to peers. By
                        // default the IP the server answers this client from.
                        let ip = match ip {
                            Some(ip) => ip,
                            None => match portmap::local_ip_toward(client.ip()).await {
                                Ok(ip) if !ip.is_unspecified() => ip,
                                _ => {
                                    debug!(%client, "no local IP toward the client for a relay");
                                    server.relay_failed(client);
                                    continue;
                                }
                            },
                        };
                        match UdpSocket::bind((ip, 0)).await {
                            Ok(s) => match s.local_addr() {
                                Ok(addr) => {
                                    let s = Arc::new(s);
                                    let reader =
                                        spawn_reader(&mut readers, s.clone(), addr, tx.clone());
                                    relays.insert(addr, (s, reader));
                                    server.relay_bound(client, addr);
                                }
                                Err(_) => server.relay_failed(client),
                            },
                            Err(e) => {
                                debug!(error = %e, "cannot bind a relay");
                                server.relay_failed(client);
                            }
                        }
                    }
                    ServerAction::ReleaseRelay(addr) => {
                        if let Some((_, reader)) = relays.remove(&addr) {
                            reader.abort();
                        }
                    }
                }
            }
            while let Some(t) = server.poll_transmit() {
                let sock = if t.source == listen_addr {
                    Some(&listen)
                } else {
                    relays.get(&t.source).map(|(s, _)| s)
                };
                if let Some(s) = sock {
                    if let Err(e) = s.send_to(&t.contents, t.destination).await {
                        debug!(to = %t.destination, error = %e, "send failed");
                    }
                }
            }
            let wake = server
                .poll_timeout()
                .map(tokio::time::Instant::from)
                .unwrap_or_else(|| {
                    tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
                });
            tokio::select! {
                msg = rx.recv() => {
                    let Some((local, from, bytes)) = msg else { break };
                    server.handle_input(Instant::now(), Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: &bytes,
                    });
                }
                _ = tokio::time::sleep_until(wake) => server.handle_timeout(Instant::now()),
            }
        }
        readers.abort_all();
    });
    Ok(ServeHandle {
        addrs: vec![listen_addr],
        task,
    })
}
