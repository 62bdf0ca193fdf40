//! A peer connection on tokio: one UDP socket driven by the sans-IO [`Peer`].
//!
//! [`PeerConnection::start`] binds the socket and starts gathering; candidates come out as
//! [`PeerConnectionEvent::Candidate`] for the signalling channel, the peer's credentials
//! and candidates go in, and once a pair is selected [`PeerConnection::send`] and
//! [`PeerConnection::recv_from`] carry datagrams (directly or through the relay, whichever
//! pair ICE selected, switching without the application noticing).
//!
//! # The data path
//!
//! Application datagrams do not go through the connection's task, and on a direct pair
//! they touch no heap memory:
//! - [`PeerConnection::send`] asks the machine where data goes now ([`Peer::send_into`])
//!   and writes the caller's bytes to the socket itself: as they are on a direct pair,
//!   framed for the relay (ChannelData or a Send indication, in a buffer the connection
//!   keeps) through a TURN server. It waits while the socket's send buffer is full.
//! - [`PeerConnection::recv_from`] reads the socket into the caller's buffer and hands
//!   each datagram to the machine, which says where the application's data lies in it;
//!   STUN (checks, consent, TURN) is handled on the way and the task is woken to send
//!   what follows. The data is moved to the start of the buffer only when it came through
//!   the relay.
//!
//! The task reads the socket only while the application does not: before the first
//! receive, and once the application has not called one for [`HANDOVER`] (or dropped one
//! unfinished). Datagrams of data it reads meanwhile wait in a bounded queue
//! ([`RECV_QUEUE`] datagrams, [`RECV_QUEUE_BYTES`] bytes) that the next receive drains
//! first; it reads into one 64 KiB buffer per thread, shared by the connections whose
//! tasks run there. [`PeerConnection::recv`] and [`PeerConnection::next`] are the same
//! path with a `Vec` per datagram, for convenience.
//!
//! With [`PeerConfig::ice_tcp`], the connection also binds ICE-TCP sockets (RFC 6544: a
//! listening and a simultaneous-open one per base IP) and runs their connections
//! ([`super::ice_tcp`]). Their messages reach the machine through the task, and the data
//! in them the application through the same queue; data sent on a TCP pair is framed
//! (RFC 4571) into the connection's bounded write queue (a copy).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::debug;

use super::ice_tcp::{IceTcp, TcpEvent, TcpTasks};
use super::mdns::{Outcome as MdnsOutcome, Publisher, Resolver};
use super::peer_portmap::{PortMapping, PortmapEvent, Release};
use super::peer_streams::{StreamEvent, StreamWriters, Streams};
use super::udp::{BindOptions, Datagrams, Recv, UdpSocket, segments};
use super::{DriverError, io, os_seed};
use crate::ice::{Candidate, CandidateAddress, CandidateKind, IceCredentials, IceEvent, IceState};
use crate::mdns::MdnsConfig;
use crate::peer::{MAX_FRAMING, Outgoing, Peer, PeerConfig, PeerEvent, PeerInput};
use crate::{Protocol, Received, Transmit};

/// How many datagrams read by the task wait for a receive before more are dropped.
pub const RECV_QUEUE: usize = 4096;
/// How many bytes of data read by the task wait for a receive before more are dropped.
pub const RECV_QUEUE_BYTES: usize = 1 << 20;
/// A buffer given to [`PeerConnection::recv_from`] at least this long is read into
/// directly; a shorter one gets a copy from a buffer of the connection's (allocated on
/// first use), so that STUN and TURN messages are never cut short. A datagram of data
/// longer than the buffer is truncated, as a UDP socket would (through a relay, whose
/// framing no longer checks out then, it is dropped).
pub const MIN_RECV_BUF: usize = 2048;
/// Once the application has not received for this long, the task reads the socket (for
/// the checks, consent and relay traffic that must go on).
pub const HANDOVER: Duration = Duration::from_millis(5);
/// The largest datagram.
const MAX_DATAGRAM: usize = 65_536;
/// At most this many receive errors in a row are skipped before a receive waits again.
const MAX_SKIPPED_ERRORS: usize = 16;
/// After this many datagrams in a row that were not data (a flood of STUN, or of
/// strangers' datagrams), a receive lets the runtime's other tasks run; the task reads at
/// most this many per wake-up.
const MAX_READ_BATCH: usize = 64;

/// Who reads the socket.
const TASK: u8 = 0;
/// The application, inside a receive.
const APP: u8 = 1;
/// The application, between two receives: the task takes over after [`HANDOVER`].
const IDLE: u8 = 2;

/// How long [`PeerConnection::close`] waits for the TURN servers to confirm the
/// deallocations (one round trip and a retransmission or two).
pub const CLOSE_BOUND: Duration = Duration::from_secs(2);

/// What the connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerConnectionEvent {
    /// A local candidate for the peer (trickle).
    Candidate(Candidate),
    /// No more local candidates: tell the peer `a=end-of-candidates`.
    GatheringComplete,
    /// The ICE state changed.
    State(IceState),
    /// Data now goes on this pair.
    SelectedPair {
        /// Ours.
        local: Candidate,
        /// The peer's.
        remote: Candidate,
        /// Whether nominated (else the best valid pair, used until one is).
        nominated: bool,
        /// The validating check's round-trip time.
        rtt: Option<std::time::Duration>,
    },
    /// A relay could not be allocated; the connection goes on without it.
    RelayFailed(String),
    /// A candidate of the peer's with an mDNS name (`<uuid>.local`) that had no answer
    /// within the resolver's bound ([`crate::mdns::MAX_TIMEOUT`]): dropped, the
    /// connection goes on without it. The name.
    CandidateUnresolved(String),
    /// Birthday probing (issue 13) found a pair or gave up.
    Birthday(crate::ice::BirthdayEvent),
    /// The built-in network monitor saw the host's addresses or routes change and the
    /// connection restarted ICE on the new network ([`PeerConnection::network_changed`]):
    /// send the peer these new credentials (`a=ice-ufrag`, `a=ice-pwd`); the candidates
    /// follow as [`PeerConnectionEvent::Candidate`]s, then
    /// [`PeerConnectionEvent::GatheringComplete`]. Also after a resume
    /// ([`PeerConnection::set_keepalive_policy`]) whose path no longer answered: ICE
    /// restarted the same way.
    NetworkChanged {
        /// Our new credentials.
        credentials: IceCredentials,
    },
}

/// An event or a datagram, from [`PeerConnection::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An event.
    Event(Box<PeerConnectionEvent>),
    /// A datagram from the peer.
    Data(Vec<u8>),
}

/// An event or a datagram, from [`PeerConnection::next_into`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingInto {
    /// An event.
    Event(Box<PeerConnectionEvent>),
    /// A datagram from the peer, in the first `len` bytes of the buffer.
    Data {
        /// Its length.
        len: usize,
        /// The peer's address it came from (through a relay: as the relay saw it).
        from: SocketAddr,
    },
}

/// Datagrams of data the task read while the application did not: bytes back to back and
/// their lengths, bounded; allocated as it fills (an idle connection holds none).
#[derive(Debug, Default)]
struct RecvQueue {
    bytes: VecDeque<u8>,
    items: VecDeque<(SocketAddr, usize)>,
}

impl RecvQueue {
    fn push(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        if self.items.len() >= RECV_QUEUE || self.bytes.len() + data.len() > RECV_QUEUE_BYTES {
            return false;
        }
        self.bytes.extend(data);
        self.items.push_back((from, data.len()));
        true
    }

    /// The oldest datagram into `buf` (truncated to it).
    fn pop_into(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let (from, len) = self.items.pop_front()?;
        let n = len.min(buf.len());
        let (a, b) = self.bytes.as_slices();
        let from_a = n.min(a.len());
        buf[..from_a].copy_from_slice(&a[..from_a]);
        buf[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.bytes.drain(..len);
        Some((n, from))
    }
}

/// The machine and what goes with it, under one lock (held only briefly, never across an
/// await).
#[derive(Debug)]
struct State {
    peer: Peer,
    queue: RecvQueue,
    /// Data framed for the relay; grows to the largest datagram sent that way.
    framed: Vec<u8>,
}

/// The bases of a connection's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bases {
    /// The primary base of each family: the IPv4 one and the IPv6 one (one at least).
    primary: [Option<SocketAddr>; 2],
    /// Every base of the machine, the primary first (the primary ones and, on a
    /// dual-stack socket, one per other usable interface address:
    /// [`super::interfaces::host_addresses`]).
    all: Vec<SocketAddr>,
}

/// How a dual-stack socket's bases are found (at start and after a network change).
#[derive(Debug, Clone)]
struct Rebase {
    /// The first server of each family (IPv4, IPv6): the primary base is the local IP
    /// toward it.
    servers: [Option<SocketAddr>; 2],
    primary_only: bool,
    ignore: Vec<String>,
}

impl Rebase {
    /// A base of each family: the local IP toward the first server of that family
    /// (asking the routing table sends nothing); beside a loopback IPv4 base (tests, the
    /// demo) the IPv6 one is loopback too; and (RFC 8445 §5.1.1.1) one on every usable
    /// interface unless `primary_only`. A loopback primary stays alone.
    async fn bases(
        &self,
        port: u16,
    ) -> Result<([Option<SocketAddr>; 2], Vec<SocketAddr>), DriverError> {
        let v4 = match self.servers[0] {
            Some(s) => super::portmap::local_ip_toward(s.ip()).await.ok(),
            None => Some(IpAddr::from([127, 0, 0, 1])),
        };
        let v6 = match (self.servers[1], v4) {
            (Some(s), _) => super::portmap::local_ip_toward(s.ip()).await.ok(),
            (None, Some(ip)) if ip.is_loopback() => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            // A global address's route: the host's primary IPv6 address, if any.
            (None, _) => super::portmap::local_ip_toward(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888,
            )))
            .await
            .ok(),
        };
        let v6 = v6.filter(|ip| !ip.is_unspecified());
        let v4 = v4.filter(|ip| !ip.is_unspecified());
        if v4.is_none() && v6.is_none() {
            return Err(DriverError::Io {
                context: "choosing the connection's addresses".into(),
                source: std::io::Error::other("no route for either address family"),
            });
        }
        let primary = [
            v4.map(|ip| SocketAddr::new(ip, port)),
            v6.map(|ip| SocketAddr::new(ip, port)),
        ];
        let all = if self.primary_only {
            primary.iter().flatten().copied().collect()
        } else {
            let listed = super::interfaces::list().unwrap_or_else(|e| {
                debug!(error = %e, "no interface list: the primary addresses only");
                Vec::new()
            });
            super::interfaces::host_addresses(&listed, [v4, v6], &self.ignore)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        };
        Ok((primary, all))
    }
}

/// What the handle and the task share.
#[derive(Debug)]
struct Shared {
    /// On a dual-stack socket (bound to `[::]`) the machine's bases are one of each
    /// family (the UDP layer maps IPv4 addresses to and from IPv4-mapped IPv6 ones).
    socket: UdpSocket,
    /// The bases; they change with the network ([`PeerConnection::network_changed`]).
    bases: RwLock<Bases>,
    /// How to find the bases again after a network change (a dual-stack socket; a socket
    /// bound to a concrete address keeps its one base).
    rebase: Option<Rebase>,
    /// Port mapping is on ([`PeerConfig::port_mapping`]).
    port_mapping: bool,
    /// The bases changed: the task maps the socket through the new gateway.
    remap: AtomicBool,
    /// The current port mapping's task (the task replaces it after a network change;
    /// [`PeerConnection::close`] deletes the mapping through it).
    release: Mutex<Option<Release>>,
    /// The TCP and TLS connections to TURN servers, by server.
    streams: StreamWriters,
    /// ICE-TCP (RFC 6544): the TCP bases' sockets and connections.
    tcp: IceTcp,
    local: SocketAddr,
    state: Mutex<State>,
    /// Datagrams in `state.queue` (read without the lock).
    queued: AtomicUsize,
    /// Wakes the task: the machine has something for it (datagrams, events, an earlier
    /// timeout), or the reader changed.
    task_wake: Notify,
    /// Wakes a receive: data was queued, or the task ended.
    data_wake: Notify,
    /// [`TASK`], [`APP`] or [`IDLE`].
    reader: AtomicU8,
    /// Receives started so far: the task takes over only after [`HANDOVER`] without one.
    receives: AtomicU64,
    /// The task sleeps without a handover timer (it saw [`APP`]): the end of a receive
    /// must wake it.
    untimed: AtomicBool,
    /// The task is gone.
    closed: AtomicBool,
    /// [`PeerConnection::close`] asked the task to delete the TURN allocations and end.
    closing: AtomicBool,
    /// The birthday probe socket that found a pair (the hard side), once one did: a base
    /// of the machine, which data may go out from. The task reads it.
    won: std::sync::OnceLock<(SocketAddr, Arc<UdpSocket>)>,
}

impl Shared {
    /// The base a datagram that arrived at `destination` (its local address) came to:
    /// the base with that address, else the primary base of its family.
    fn base_for(&self, destination: SocketAddr) -> SocketAddr {
        let b = self.bases.read().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = b.all.iter().find(|b| **b == destination) {
            return *b;
        }
        b.primary[usize::from(destination.is_ipv6())]
            .or(b.primary[0])
            .or(b.primary[1])
            .unwrap_or(self.local)
    }

    /// What a datagram from `source` (a base, as the machine says) to `destination` goes
    /// out as: on a socket bound to a wildcard IP, from that base's IP; else (and when
    /// that IP cannot be the source: a loopback IP toward another host) from the IP the
    /// system chooses.
    fn datagram<'a>(
        &self,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &'a [u8],
    ) -> Datagrams<'a> {
        let ip = source.ip();
        let source = (self.socket.local_addr().ip().is_unspecified()
            && !ip.is_unspecified()
            && ip.is_ipv4() == destination.is_ipv4()
            && (!ip.is_loopback() || destination.ip().is_loopback()))
        .then_some(ip);
        Datagrams {
            destination,
            source,
            contents,
            segment_size: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a usable machine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running peer connection. Dropping it stops the task and closes the socket.
#[derive(Debug)]
pub struct PeerConnection {
    shared: Arc<Shared>,
    /// Boxed: the channel's blocks hold 32 slots each, and an event is ~300 bytes.
    events: mpsc::UnboundedReceiver<Box<PeerConnectionEvent>>,
    credentials: IceCredentials,
    local: SocketAddr,
    /// For receives into short buffers and for the `Vec` API (allocated on first use).
    spare: Vec<u8>,
    task: tokio::task::JoinHandle<()>,
    /// Where the mDNS resolver's task runs (started on the first `.local` candidate).
    runtime: tokio::runtime::Handle,
    mdns: Mutex<Option<Resolver>>,
    mdns_config: MdnsConfig,
    /// The peer's `.local` candidates being resolved.
    pub(super) mdns_wait: Arc<Mutex<MdnsWait>>,
    /// For the resolver's reports; weak, so that the events end with the task.
    events_tx: mpsc::WeakUnboundedSender<Box<PeerConnectionEvent>>,
    /// With [`PeerConnection::publish_mdns`]: the responder, and the name of each host
    /// address.
    published: Option<(Publisher, Vec<(IpAddr, String)>)>,
}

/// The peer's `.local` candidates on their way to the agent.
#[derive(Debug, Default)]
pub(super) struct MdnsWait {
    /// Candidates given to the resolver without an outcome yet.
    pub(super) pending: usize,
    /// The peer's `a=end-of-candidates` came while some were pending: the agent hears it
    /// once the last one is resolved or dropped (else it would conclude, with no
    /// candidate yet, that every pair failed).
    end_deferred: bool,
    /// Counts ICE restarts: a name resolved after one belongs to the old session.
    generation: u64,
}

/// A fresh mDNS name: a random (version 4) UUID, `.local` (what browsers use).
fn mdns_name() -> String {
    let mut b: [u8; 16] = match os_seed() {
        Ok(s) => s[..16].try_into().unwrap_or([0; 16]),
        Err(_) => {
            // No randomness from the system: unique within this process at least.
            static N: AtomicU64 = AtomicU64::new(1);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&n.to_be_bytes());
            b[8..].copy_from_slice(&t.to_be_bytes());
            b
        }
    };
    // RFC 9562 §5.4: version 4, variant 10.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}.local",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerConnection {
    /// Binds a UDP socket on `bind` and starts gathering.
    ///
    /// - `[::]:port`: one dual-stack socket with a base of each family, each the local IP
    ///   toward the first STUN or TURN server of that family (asking the routing table
    ///   sends nothing); without an IPv4 server the IPv4 base is 127.0.0.1, and beside a
    ///   loopback IPv4 base the IPv6 one is ::1; without an IPv6 server, the IPv6 base is
    ///   the host's primary IPv6 address if it routes any. A host candidate on each.
    /// - `0.0.0.0:port`: one concrete address, the local IP toward the first IPv4 server
    ///   (127.0.0.1 without any): its host candidate.
    /// - A concrete address: that one.
    pub async fn start(
        config: PeerConfig,
        bind: SocketAddr,
        controlling: bool,
    ) -> Result<Self, DriverError> {
        let first_of = |v4: bool| {
            config
                .stun_servers
                .iter()
                .copied()
                .chain(config.turn_servers.iter().map(|t| t.server))
                .find(|s| s.is_ipv4() == v4)
        };
        let dual = bind.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let rebase = dual.then(|| Rebase {
            servers: [first_of(true), first_of(false)],
            primary_only: config.primary_interface_only,
            ignore: config.ignore_interfaces.clone(),
        });
        let (socket, bases, base_list) = if let Some(rebase) = &rebase {
            // One dual-stack socket, a base of each family (see `Rebase::bases`).
            let socket = UdpSocket::bind_dual(bind.port(), BindOptions::default())
                .map_err(io(format!("binding [::]:{}", bind.port())))?;
            let (bases, list) = rebase.bases(socket.local_addr().port()).await?;
            (socket, bases, list)
        } else {
            let bind = if bind.ip().is_unspecified() {
                let ip = match first_of(bind.is_ipv4()) {
                    Some(s) => super::portmap::local_ip_toward(s.ip()).await?,
                    None if bind.is_ipv4() => IpAddr::from([127, 0, 0, 1]),
                    None => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                SocketAddr::new(ip, bind.port())
            } else {
                bind
            };
            // One datagram at a time on a concrete IP: the cheapest system calls.
            let opts = BindOptions {
                single: true,
                ..BindOptions::default()
            };
            let socket = UdpSocket::bind(bind, opts).map_err(io(format!("binding {bind}")))?;
            let local = socket.local_addr();
            let bases = if local.is_ipv4() {
                [Some(local), None]
            } else {
                [None, Some(local)]
            };
            (socket, bases, vec![local])
        };
        let local = base_list[0];
        let port_mapping = config.port_mapping;
        let (tcp, tcp_tasks) =
            IceTcp::new(config.stun_servers.clone(), config.ice.tcp_check_timeout);
        let no_monitor = config.no_network_monitor;
        let mut peer =
            Peer::with_bases(Instant::now(), config, &base_list, controlling, os_seed()?);
        let credentials = peer.local_credentials().clone();
        if peer.wants_tcp_bases() {
            // ICE-TCP (RFC 6544): a passive and an so base on each base IP.
            let ips: Vec<IpAddr> = base_list.iter().map(SocketAddr::ip).collect();
            let (passive, so) = tcp.bind(&ips, socket.local_addr().port());
            peer.tcp_bases(Instant::now(), &passive, &so);
        }
        let streams = Streams::start(peer.turn_streams());
        // A loopback socket has no gateway: nothing to ask (and nothing may be sent to
        // one on behalf of a test).
        let (portmap, release) = match bases[0].filter(|b| port_mapping && !b.ip().is_loopback()) {
            Some(v4) => PortMapping::start(v4),
            None => {
                peer.port_mapping_done();
                PortMapping::off()
            }
        };
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            socket,
            bases: RwLock::new(Bases {
                primary: bases,
                all: base_list,
            }),
            rebase,
            port_mapping,
            remap: AtomicBool::new(false),
            release: Mutex::new(Some(release)),
            streams: streams.writers(),
            tcp,
            local,
            state: Mutex::new(State {
                peer,
                queue: RecvQueue::default(),
                framed: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            task_wake: Notify::new(),
            data_wake: Notify::new(),
            reader: AtomicU8::new(TASK),
            receives: AtomicU64::new(0),
            untimed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            won: std::sync::OnceLock::new(),
        });
        let events_tx = ev_tx.downgrade();
        // The built-in monitor (Linux and Android), on a dual-stack socket whose bases are
        // not loopback ones (those never change), unless the application has its own.
        let monitor = match &shared.rebase {
            Some(_) if !no_monitor && !local.ip().is_loopback() => match super::netmon::watch() {
                Ok(m) => Some(m),
                Err(e) => {
                    debug!(error = %e, "no built-in network monitor");
                    None
                }
            },
            _ => None,
        };
        let task = tokio::spawn(run(
            shared.clone(),
            ev_tx,
            streams,
            portmap,
            monitor,
            tcp_tasks,
        ));
        Ok(Self {
            shared,
            events: ev_rx,
            credentials,
            local,
            spare: Vec::new(),
            task,
            runtime: tokio::runtime::Handle::current(),
            mdns: Mutex::new(None),
            mdns_config: MdnsConfig::default(),
            mdns_wait: Arc::new(Mutex::new(MdnsWait::default())),
            events_tx,
            published: None,
        })
    }

    /// How the peer's mDNS candidates are resolved (where the questions go, how long to
    /// wait); takes effect if set before the first `.local` candidate arrives.
    pub fn set_mdns_config(&mut self, config: MdnsConfig) {
        self.mdns_config = config;
    }

    /// Our ICE credentials, for the local description.
    pub fn local_credentials(&self) -> &IceCredentials {
        &self.credentials
    }

    /// The socket's address (the host candidate).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next event; `None` once the task is gone.
    pub async fn next_event(&mut self) -> Option<PeerConnectionEvent> {
        let ev = self.events.recv().await?;
        Some(*self.outgoing(ev))
    }

    /// Publishes this side's host candidates under mDNS names (RFC 6762,
    /// draft-ietf-mmusic-mdns-ice-candidates), as browsers do to keep local addresses
    /// private: from now on each host candidate comes out of the events with a
    /// `<uuid>.local` name (one per address) instead of its address, a responder on
    /// 224.0.0.251:5353 (shared with the host's own) answers for the names, and the
    /// related address of the other candidates is hidden (`0.0.0.0` port 0). Call it
    /// before taking the first event. The peer must resolve the names, so it must be on
    /// the same link (a browser is, when it gets such candidates at all). Fails when the
    /// mDNS port cannot be shared.
    pub fn publish_mdns(&mut self) -> Result<(), DriverError> {
        if self.published.is_none() {
            let p = Publisher::start(&self.runtime).map_err(io("binding 0.0.0.0:5353"))?;
            self.published = Some((p, Vec::new()));
        }
        Ok(())
    }

    /// An event on its way out: with [`PeerConnection::publish_mdns`], a host candidate's
    /// address becomes its name and the others' related address is hidden.
    fn outgoing(&mut self, mut ev: Box<PeerConnectionEvent>) -> Box<PeerConnectionEvent> {
        if let PeerConnectionEvent::NetworkChanged { credentials } = &mut *ev {
            // The task restarted already: a name resolved in between still reaches the
            // new session (the peer's old candidate: its checks fail, nothing more).
            self.new_session();
            // The app may have restarted again since (`restart()`, answering the peer's
            // restart): the credentials in force are the machine's, not the event's.
            let current = self.shared.lock().peer.local_credentials().clone();
            *credentials = current.clone();
            self.credentials = current;
        }
        let Some((publisher, names)) = &mut self.published else {
            return ev;
        };
        if let PeerConnectionEvent::Candidate(c) = &mut *ev {
            match (c.kind, c.address.ip()) {
                (CandidateKind::Host, Some(ip)) => {
                    let name = match names.iter().find(|(a, _)| *a == ip) {
                        Some((_, n)) => n.clone(),
                        None => {
                            let n = mdns_name();
                            publisher.publish(n.clone(), ip);
                            names.push((ip, n.clone()));
                            n
                        }
                    };
                    c.address = CandidateAddress::Name(name);
                }
                (_, _) => {
                    if let Some((a, p)) = &mut c.related {
                        let unspecified = match a.ip() {
                            Some(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                            _ => IpAddr::from([0, 0, 0, 0]),
                        };
                        *a = CandidateAddress::Ip(unspecified);
                        *p = 0;
                    }
                }
            }
        }
        ev
    }

    /// The peer's credentials (from its description).
    pub fn set_remote_credentials(&self, creds: IceCredentials) {
        self.shared.lock().peer.set_remote_credentials(creds);
        self.shared.task_wake.notify_one();
    }

    /// A candidate of the peer's (from its description, or trickled). One with an mDNS
    /// name (`<uuid>.local`, what browsers send) is resolved first (RFC 6762 one-shot
    /// queries, at most [`crate::mdns::MAX_TIMEOUT`]) and added with its address, one
    /// candidate per address family the name has; a name without an answer is dropped
    /// and reported as [`PeerConnectionEvent::CandidateUnresolved`].
    pub fn add_remote_candidate(&self, c: Candidate) {
        if c.address.is_mdns() {
            self.resolve_mdns(c);
            return;
        }
        self.shared
            .lock()
            .peer
            .add_remote_candidate(Instant::now(), c);
        self.shared.task_wake.notify_one();
    }

    fn resolve_mdns(&self, c: Candidate) {
        let mut guard = self.mdns.lock().unwrap_or_else(|e| e.into_inner());
        let resolver = guard.get_or_insert_with(|| {
            let shared = Arc::downgrade(&self.shared);
            let events = self.events_tx.clone();
            let wait = self.mdns_wait.clone();
            Resolver::start(&self.runtime, self.mdns_config.clone(), move |o| {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut w = wait.lock().unwrap_or_else(|e| e.into_inner());
                let mut peer = shared.lock();
                match o {
                    MdnsOutcome::Resolved(cs, g) => {
                        w.pending = w.pending.saturating_sub(1);
                        if g == w.generation {
                            for c in cs {
                                debug!(address = %c.address, "mDNS candidate resolved");
                                peer.peer.add_remote_candidate(Instant::now(), c);
                            }
                        } else {
                            debug!("mDNS candidate resolved after an ICE restart: dropped");
                        }
                    }
                    MdnsOutcome::Unresolved { name, candidates } => {
                        w.pending = w.pending.saturating_sub(candidates);
                        debug!(%name, "mDNS candidate unresolved: dropped");
                        if let Some(tx) = events.upgrade() {
                            let _ =
                                tx.send(Box::new(PeerConnectionEvent::CandidateUnresolved(name)));
                        }
                    }
                }
                if w.pending == 0 && w.end_deferred {
                    w.end_deferred = false;
                    peer.peer.end_of_remote_candidates();
                }
                drop(peer);
                shared.task_wake.notify_one();
            })
        });
        let mut w = self.mdns_wait.lock().unwrap_or_else(|e| e.into_inner());
        w.pending += 1;
        resolver.resolve(c, w.generation);
    }

    /// An ICE restart ([`Peer::restart`]): the new credentials for the new description;
    /// the local candidates come out again as [`PeerConnectionEvent::Candidate`]s (then
    /// [`PeerConnectionEvent::GatheringComplete`]). The current path carries data until
    /// a new pair is selected.
    pub fn restart(&mut self) -> IceCredentials {
        self.new_session();
        let creds = self.shared.lock().peer.restart();
        self.credentials = creds.clone();
        self.shared.task_wake.notify_one();
        creds
    }

    /// The host's network changed (for hosts with a monitor of their own: Android's
    /// `ConnectivityManager`, Apple's `NWPathMonitor`; on Linux and Android the built-in
    /// one does this by itself unless [`PeerConfig::no_network_monitor`], and reports
    /// [`PeerConnectionEvent::NetworkChanged`]). On a dual-stack socket the bases are
    /// found again (the local IP toward the servers, the usable interfaces); then, even
    /// when they look the same (a new Wi-Fi can give the same private address), ICE
    /// restarts on them ([`Peer::network_changed`]: candidates gathered again, UDP
    /// allocations made again). Returns the new credentials for the peer; the candidates
    /// follow as events. The current path carries data until a new pair is selected.
    pub async fn network_changed(&mut self) -> Result<IceCredentials, DriverError> {
        self.new_session();
        let creds = rebase(&self.shared, true)
            .await?
            .unwrap_or_else(|| self.credentials.clone());
        self.credentials = creds.clone();
        Ok(creds)
    }

    /// A new ICE session of ours is starting (a restart): mDNS names resolved from now
    /// on for the old one are stale.
    fn new_session(&mut self) {
        let mut w = self.mdns_wait.lock().unwrap_or_else(|e| e.into_inner());
        w.generation += 1;
        w.end_deferred = false;
    }

    /// Sets the keepalive policy as the app moves between foreground, background and
    /// suspended (see [`crate::ice::keepalive`] and [`Peer::set_keepalive_policy`]):
    /// consent checks every 4–6 s in the foreground, one check per adapted interval
    /// (shared with the peer) in the background, nothing while suspended. Leaving
    /// suspended (or the background for the foreground) probes the path at once; if it
    /// does not answer within [`crate::ice::RESUME_PROBE`], ICE restarts as after a network
    /// change and [`PeerConnectionEvent::NetworkChanged`] brings the new credentials.
    pub fn set_keepalive_policy(&self, policy: crate::ice::KeepalivePolicy) {
        self.shared
            .lock()
            .peer
            .set_keepalive_policy(Instant::now(), policy);
        self.shared.task_wake.notify_one();
    }

    /// The keepalive policy.
    #[must_use]
    pub fn keepalive_policy(&self) -> crate::ice::KeepalivePolicy {
        self.shared.lock().peer.keepalive_policy()
    }

    /// The background keepalive interval as it stands (it adapts to the path's NATs).
    #[must_use]
    pub fn keepalive_interval(&self) -> Duration {
        self.shared.lock().peer.agent().keepalive_interval()
    }

    /// The peer's description says `a=ice-lite`: this side controls (RFC 8445 §6.1.1).
    pub fn set_remote_lite(&self, lite: bool) {
        self.shared.lock().peer.set_remote_lite(lite);
        self.shared.task_wake.notify_one();
    }

    /// Whether the peer follows renomination: its `a=ice-options` has `renomination`
    /// ([`crate::ice::IceAgent::set_remote_renomination`]). Tell it before the checks
    /// succeed: a peer without it is nominated once.
    pub fn set_remote_renomination(&self, follows: bool) {
        self.shared.lock().peer.set_remote_renomination(follows);
        self.shared.task_wake.notify_one();
    }

    /// The peer's description says `a=ice-pacing:MS` (RFC 8839 §5.2): checks are paced at
    /// the higher of the two offers (RFC 8445 §14.2).
    pub fn set_remote_pacing(&self, ms: u32) {
        self.shared.lock().peer.set_remote_pacing(ms);
    }

    /// Our `a=ice-pacing`, in milliseconds, for the local description.
    pub fn pacing_ms(&self) -> u32 {
        self.shared.lock().peer.pacing_ms()
    }

    /// How our NAT allocates ports, from gathering ([`Peer::port_allocation`]): for
    /// `a=x-pinhole-port-allocation` once [`PeerConnectionEvent::GatheringComplete`] came.
    pub fn port_allocation(&self) -> Option<crate::netcheck::PortAllocation> {
        self.shared.lock().peer.port_allocation()
    }

    /// Whether the peer takes part in birthday probing (its description carries
    /// `a=ice-options:x-pinhole-birthday`; see [`Peer::set_remote_birthday`]).
    pub fn set_remote_birthday(&self, agreed: bool) {
        self.shared.lock().peer.set_remote_birthday(agreed);
        self.shared.task_wake.notify_one();
    }

    /// The peer's `a=x-pinhole-port-allocation`: a sequential one turns on port
    /// prediction ([`Peer::set_remote_port_allocation`]).
    pub fn set_remote_port_allocation(&self, allocation: crate::netcheck::PortAllocation) {
        self.shared
            .lock()
            .peer
            .set_remote_port_allocation(allocation);
        self.shared.task_wake.notify_one();
    }

    /// Closes the connection: deletes its TURN allocations (their relayed addresses are
    /// freed at once, not when their lifetimes run out) and, when the socket was mapped
    /// through the gateway, the mapping, waiting for the servers' answers (bounded:
    /// [`CLOSE_BOUND`] for the allocations, a few seconds for the mapping). Dropping the
    /// connection instead stops at once: the allocations expire on the server, and the
    /// mapping is deleted in the background, which a runtime that is shutting down may
    /// not finish.
    pub async fn close(mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // The task reads the socket from now on (the application no longer can).
        self.shared.reader.store(TASK, Ordering::SeqCst);
        self.shared.task_wake.notify_one();
        let deallocated = async {
            let _ = (&mut self.task).await;
        };
        if tokio::time::timeout(CLOSE_BOUND, deallocated)
            .await
            .is_err()
        {
            debug!("TURN deallocation unanswered within the bound: the allocations expire");
        }
        self.task.abort();
        let release = self
            .shared
            .release
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut r) = release {
            r.release().await;
        }
    }

    /// The peer's `a=end-of-candidates`. While some of its `.local` candidates are being
    /// resolved, the agent hears it once they are resolved or dropped.
    pub fn end_of_remote_candidates(&self) {
        {
            let mut w = self.mdns_wait.lock().unwrap_or_else(|e| e.into_inner());
            if w.pending > 0 {
                w.end_deferred = true;
                return;
            }
        }
        self.shared.lock().peer.end_of_remote_candidates();
        self.shared.task_wake.notify_one();
    }

    /// Sends a datagram to the peer on the selected pair (dropped, as UDP would, while no
    /// pair is selected, or when the socket fails). Writes to the socket itself and waits
    /// only while the socket's send buffer is full: when it returns, the datagram is with
    /// the operating system. No heap allocation on a direct pair (through a relay: none
    /// once the framing buffer has grown to the largest datagram).
    ///
    /// Datagrams are sent with the don't-fragment bit (RFC 8085 §3.2): one larger than
    /// the path's MTU is dropped, not fragmented. Keep datagrams at 1 200 bytes or less,
    /// as QUIC and WebRTC do, to fit every path (through a relay, less the TURN framing).
    pub async fn send(&self, data: impl AsRef<[u8]>) {
        send(&self.shared, data.as_ref()).await;
    }

    /// Waits until every datagram sent so far has left: over UDP [`PeerConnection::send`]
    /// hands each to the socket before it returns; through a relay reached over TCP or
    /// TLS, they wait in the stream's queue, and this waits until they are written
    /// (bounded: a second per stream). Call it before exiting after the last send.
    pub async fn flush(&self) {
        self.shared
            .streams
            .flush(std::time::Duration::from_secs(1))
            .await;
        self.shared
            .tcp
            .flush(std::time::Duration::from_secs(1))
            .await;
    }

    /// The next datagram from the peer into `buf` (at its start): its length and the
    /// peer's address it came from; `None` once the task is gone. No heap allocation.
    /// See [`MIN_RECV_BUF`] for short buffers. Cancel-safe: no datagram is lost when the
    /// future is dropped while it waits.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        recv_from(&self.shared, &mut self.spare, buf).await
    }

    /// The next datagram from the peer, in a `Vec` of its own; `None` once the task is
    /// gone. [`PeerConnection::recv_from`] is the same without the allocation.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.resize(MAX_DATAGRAM, 0);
        let r = recv_from(&self.shared, &mut Vec::new(), &mut buf).await;
        let out = r.map(|(n, _)| buf[..n].to_vec());
        self.spare = buf;
        out
    }

    /// The next event or datagram, whichever comes first; `None` once the task is gone.
    /// [`PeerConnection::next_into`] is the same without an allocation per datagram.
    pub async fn next(&mut self) -> Option<Incoming> {
        let mut buf = std::mem::take(&mut self.spare);
        buf.resize(MAX_DATAGRAM, 0);
        let mut unused = Vec::new();
        let r = tokio::select! {
            ev = self.events.recv() => ev.map(|e| Incoming::Event(self.outgoing(e))),
            d = recv_from(&self.shared, &mut unused, &mut buf) => {
                d.map(|(n, _)| Incoming::Data(buf[..n].to_vec()))
            }
        };
        self.spare = buf;
        r
    }

    /// The next event, or the next datagram into `buf` (at its start), whichever comes
    /// first; `None` once the task is gone. No heap allocation for a datagram.
    pub async fn next_into(&mut self, buf: &mut [u8]) -> Option<IncomingInto> {
        tokio::select! {
            ev = self.events.recv() => ev.map(|e| IncomingInto::Event(self.outgoing(e))),
            d = recv_from(&self.shared, &mut self.spare, buf) => {
                d.map(|(len, from)| IncomingInto::Data { len, from })
            }
        }
    }
}

async fn send(shared: &Shared, data: &[u8]) {
    loop {
        let r = {
            let mut guard = shared.lock();
            let st = &mut *guard;
            if st.peer.is_relayed() == Some(true) && st.framed.len() < data.len() + MAX_FRAMING {
                st.framed.resize(data.len() + MAX_FRAMING, 0);
            }
            match st.peer.send_into(data, &mut st.framed) {
                Ok(Outgoing::Direct {
                    proto: Protocol::Tcp,
                    source,
                    destination,
                }) => {
                    // ICE-TCP (RFC 6544): framed into the connection's queue (a copy).
                    drop(guard);
                    shared.tcp.send(source, destination, data);
                    return;
                }
                Ok(Outgoing::Direct {
                    proto: Protocol::Udp,
                    source,
                    destination,
                }) => {
                    drop(guard);
                    match shared.won.get().filter(|(a, _)| *a == source) {
                        // From the birthday probe socket that won (its own address).
                        Some((_, s)) => s.try_send(&Datagrams {
                            destination,
                            source: None,
                            contents: data,
                            segment_size: None,
                        }),
                        None => shared
                            .socket
                            .try_send(&shared.datagram(source, destination, data)),
                    }
                }
                // Sent under the lock: the framing buffer is the connection's.
                Ok(Outgoing::Framed {
                    proto,
                    source,
                    destination,
                    len,
                }) => {
                    // A relay over TCP or TLS: its stream's queue takes it (a copy).
                    if shared
                        .streams
                        .send_bytes(proto, destination, &st.framed[..len])
                    {
                        return;
                    }
                    shared
                        .socket
                        .try_send(&shared.datagram(source, destination, &st.framed[..len]))
                }
                Err(e) => {
                    debug!(error = %e, "datagram not sent");
                    return;
                }
            }
        };
        match r {
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = shared.socket.writable().await {
                    debug!(error = %e, "send failed");
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "send failed");
                return;
            }
        }
    }
}

/// Marks the application as the socket's reader for as long as a receive lasts.
struct Reading<'a> {
    shared: &'a Shared,
    done: bool,
}

impl<'a> Reading<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.receives.fetch_add(1, Ordering::SeqCst);
        if shared.reader.swap(APP, Ordering::SeqCst) == TASK {
            // Stop reading: the application does.
            shared.task_wake.notify_one();
        }
        Self {
            shared,
            done: false,
        }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if self.done {
            // Between two receives: the task takes over only if no other comes soon.
            self.shared.reader.store(IDLE, Ordering::SeqCst);
            if self.shared.untimed.swap(false, Ordering::SeqCst) {
                self.shared.task_wake.notify_one();
            }
        } else {
            // Dropped while waiting: the task reads again at once.
            self.shared.reader.store(TASK, Ordering::SeqCst);
            self.shared.task_wake.notify_one();
        }
    }
}

async fn recv_from(
    shared: &Shared,
    spare: &mut Vec<u8>,
    buf: &mut [u8],
) -> Option<(usize, SocketAddr)> {
    let mut reading = Reading::start(shared);
    let r = if buf.len() >= MIN_RECV_BUF {
        recv_loop(shared, buf).await
    } else {
        if spare.len() < MAX_DATAGRAM {
            spare.resize(MAX_DATAGRAM, 0);
        }
        let r = recv_loop(shared, spare).await;
        r.map(|(n, from)| {
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&spare[..n]);
            (n, from)
        })
    };
    reading.done = true;
    r
}

async fn recv_loop(shared: &Shared, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    let mut skipped = 0;
    let mut not_data = 0;
    loop {
        // What the task read before this receive (or while handing over) comes first.
        if shared.queued.load(Ordering::SeqCst) > 0 {
            let mut st = shared.lock();
            if let Some(d) = st.queue.pop_into(buf) {
                shared.queued.store(st.queue.items.len(), Ordering::SeqCst);
                return Some(d);
            }
        }
        if shared.closed.load(Ordering::SeqCst) {
            return None;
        }
        match shared.socket.try_recv_into(buf) {
            Ok(r) => {
                skipped = 0;
                if let Some(d) = take(shared, buf, r) {
                    return Some(d);
                }
                not_data += 1;
                if not_data >= MAX_READ_BATCH {
                    not_data = 0;
                    tokio::task::yield_now().await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let queued = shared.data_wake.notified();
                tokio::pin!(queued);
                queued.as_mut().enable();
                if shared.queued.load(Ordering::SeqCst) > 0 || shared.closed.load(Ordering::SeqCst)
                {
                    continue;
                }
                tokio::select! {
                    biased;
                    r = shared.socket.readable() => {
                        if let Err(e) = r {
                            debug!(error = %e, "socket not readable");
                            return None;
                        }
                    }
                    () = &mut queued => {}
                }
            }
            Err(e) => {
                // ICMP errors for earlier sends may surface here: skip a bounded number.
                debug!(error = %e, "receive error");
                skipped += 1;
                if skipped >= MAX_SKIPPED_ERRORS {
                    skipped = 0;
                    if shared.socket.readable().await.is_err() {
                        return None;
                    }
                }
            }
        }
    }
}

/// Hands a datagram read by the application to the machine: the data moved to the start
/// of `buf`, or `None` (protocol traffic: the task is woken to send what follows). When
/// GRO put more datagrams behind it, they go to the machine too, their data to the queue
/// that the next receive drains.
fn take(shared: &Shared, buf: &mut [u8], r: Recv) -> Option<(usize, SocketAddr)> {
    let base = shared.base_for(r.destination);
    let first = r.stride.min(r.len);
    let rx = Received {
        proto: Protocol::Udp,
        source: r.source,
        destination: base,
        contents: &buf[..first],
    };
    let verdict = shared.lock().peer.handle_input(Instant::now(), rx);
    let out = match verdict {
        PeerInput::Data { from, range } => {
            let len = range.len();
            if range.start != 0 {
                // Within the first datagram: what GRO put behind it stays in place.
                buf.copy_within(range, 0);
            }
            Some((len, from))
        }
        PeerInput::Consumed => {
            shared.task_wake.notify_one();
            None
        }
    };
    if r.len > first {
        for d in buf[first..r.len].chunks(first.max(1)) {
            let rx = Received {
                proto: Protocol::Udp,
                source: r.source,
                destination: base,
                contents: d,
            };
            queue_input(shared, shared.lock(), rx);
        }
        shared.task_wake.notify_one();
    }
    out
}

/// Marks the connection closed when the task ends, however it ends.
struct Closing(Arc<Shared>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.data_wake.notify_one();
    }
}

async fn run(
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Box<PeerConnectionEvent>>,
    mut streams: Streams,
    mut portmap: PortMapping,
    mut monitor: Option<super::netmon::NetworkMonitor>,
    mut tcp: TcpTasks,
) {
    let _closing = Closing(shared.clone());
    let mut deallocating = false;
    // While the application is between receives: when the task takes over, unless the
    // count of receives moved.
    let mut handover: Option<(tokio::time::Instant, u64)> = None;
    // Birthday probing's sockets (the hard side), while it runs; then the one that won.
    let mut probe: Option<super::sockets::Sockets> = None;
    loop {
        if shared.closing.load(Ordering::SeqCst) {
            let mut st = shared.lock();
            if !deallocating {
                deallocating = true;
                st.peer.deallocate(Instant::now());
            }
            // Each allocation is done once its deletion is answered (or it never was
            // made): nothing left to send or wait for.
            if st.peer.relays_done() {
                return;
            }
        }
        if shared.remap.swap(false, Ordering::SeqCst) {
            remap(&shared, &mut portmap);
            // The TURN servers over TCP or TLS too: connected again from the new network
            // (the machine dropped the old connections' allocations).
            let specs: Vec<_> = shared.lock().peer.turn_streams().cloned().collect();
            streams.reconnect(specs.iter());
        }
        loop {
            let t = shared.lock().peer.poll_transmit();
            let Some(t) = t else { break };
            // ICE-TCP by its source (a TCP base), before the TURN streams, which take
            // every other TCP transmit.
            if t.proto == Protocol::Tcp && shared.tcp.is_base(t.source) {
                shared.tcp.send(t.source, t.destination, &t.contents);
                continue;
            }
            if shared.streams.send(&t) {
                continue;
            }
            match probe.as_mut() {
                Some(p)
                    if shared.won.get().is_none()
                        && p.sockets.iter().any(|(a, _)| *a == t.source) =>
                {
                    p.send(&t).await;
                }
                _ => send_control(&shared, &t).await,
            }
        }
        let mut birthday = Vec::new();
        let mut path_lost = false;
        let wake = {
            let mut st = shared.lock();
            while let Some(ev) = st.peer.poll_event() {
                path_lost |= ev == PeerEvent::PathLost;
                if matches!(ev, PeerEvent::BirthdaySockets(_) | PeerEvent::Birthday(_)) {
                    birthday.push(ev.clone());
                }
                // PCP PEER (issue 13).
                if let PeerEvent::PcpPeerRemote(remote) = ev {
                    portmap.pcp_peer_remote(remote);
                }
                let Some(out) = event(ev) else { continue };
                if events.send(Box::new(out)).is_err() {
                    return;
                }
            }
            st.peer.poll_timeout()
        };
        if !birthday.is_empty() {
            birthday_event(&shared, &mut probe, birthday).await;
            continue;
        }
        if path_lost {
            // As after a network change: new bases if any, an ICE restart on them, the
            // port mapping and the ICE-TCP bases again; the app sends the credentials.
            match rebase(&shared, true).await {
                Ok(Some(credentials)) => {
                    debug!("path lost: ICE restarted");
                    let ev = PeerConnectionEvent::NetworkChanged { credentials };
                    if events.send(Box::new(ev)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, "path lost, and no bases"),
            }
            continue;
        }
        let wake = wake
            .map(tokio::time::Instant::from)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        // Who reads: see `Reading`. `untimed` first, so that a receive that ends after
        // this looks sees it set.
        shared.untimed.store(true, Ordering::SeqCst);
        let reader = shared.reader.load(Ordering::SeqCst);
        if reader != APP {
            shared.untimed.store(false, Ordering::SeqCst);
        }
        if reader == IDLE {
            if handover.is_none() {
                handover = Some((
                    tokio::time::Instant::now() + HANDOVER,
                    shared.receives.load(Ordering::SeqCst),
                ));
            }
        } else {
            handover = None;
        }
        let deadline = handover.map_or(wake, |(at, _)| at.min(wake));
        tokio::select! {
            biased;
            () = shared.task_wake.notified() => {}
            r = shared.socket.readable(), if reader == TASK => match r {
                Ok(()) => read_on_this_thread(&shared),
                Err(e) => {
                    debug!(error = %e, "socket not readable");
                    return;
                }
            },
            Some(ev) = portmap.next() => {
                let mut st = shared.lock();
                match ev {
                    PortmapEvent::Mapped(external) => st.peer.port_mapped(external),
                    PortmapEvent::Done => st.peer.port_mapping_done(),
                    PortmapEvent::PeerMapped(external) => st.peer.pcp_peer_mapped(external),
                }
            }
            Some(ev) = streams.next() => stream_event(&shared, ev),
            Some(ev) = tcp.next() => tcp_event(&shared, ev),
            change = async {
                match monitor.as_mut() {
                    Some(m) => m.changed().await,
                    None => std::future::pending().await,
                }
            } => match change {
                Some(change) => match rebase(&shared, false).await {
                    Ok(Some(credentials)) => {
                        debug!(?change, "network changed: ICE restarted on the new bases");
                        let ev = PeerConnectionEvent::NetworkChanged { credentials };
                        if events.send(Box::new(ev)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => debug!(?change, "network changed, the bases did not"),
                    Err(e) => debug!(error = %e, "network changed: no bases now"),
                },
                None => monitor = None,
            },
            (_, n) = async {
                match probe.as_mut() {
                    Some(p) => p.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(p) = probe.as_ref() {
                    for i in 0..n {
                        if let Some(rx) = p.received(i) {
                            queue_input(&shared, shared.lock(), rx);
                        }
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let now = tokio::time::Instant::now();
                if let Some((_, receives)) = handover.filter(|(at, _)| *at <= now) {
                    handover = None;
                    if shared.receives.load(Ordering::SeqCst) == receives {
                        let _ = shared.reader.compare_exchange(
                            IDLE, TASK, Ordering::SeqCst, Ordering::SeqCst,
                        );
                    }
                }
                if wake <= now {
                    shared.lock().peer.handle_timeout(Instant::now());
                }
            }
        }
    }
}

/// What birthday probing asks of the driver: the hard side's sockets (bound on the
/// primary IPv4 base's IP, any port, and handed to the machine), and once it is over the
/// one that won kept (a base, [`Shared::won`]) and the others closed.
async fn birthday_event(
    shared: &Shared,
    probe: &mut Option<super::sockets::Sockets>,
    events: Vec<PeerEvent>,
) {
    for ev in events {
        match ev {
            PeerEvent::BirthdaySockets(n) => {
                let primary = shared
                    .bases
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .primary[0];
                let Some(ip) = primary.map(|b| b.ip()) else {
                    shared.lock().peer.birthday_sockets(Instant::now(), &[]);
                    continue;
                };
                let mut sockets = match super::sockets::Sockets::bind(&[]).await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(error = %e, "no birthday sockets");
                        shared.lock().peer.birthday_sockets(Instant::now(), &[]);
                        continue;
                    }
                };
                let mut bound = Vec::with_capacity(n);
                for _ in 0..n {
                    match sockets.add(SocketAddr::new(ip, 0)).await {
                        Ok(a) => bound.push(a),
                        Err(e) => {
                            // Out of descriptors or ports: probe with what there is.
                            debug!(error = %e, bound = bound.len(), "birthday sockets: fewer");
                            break;
                        }
                    }
                }
                debug!(sockets = bound.len(), "birthday probing: sockets bound");
                shared.lock().peer.birthday_sockets(Instant::now(), &bound);
                *probe = Some(sockets);
            }
            PeerEvent::Birthday(crate::ice::BirthdayEvent::Found { local, .. }) => {
                if let Some(p) = probe.as_mut() {
                    if let Some((a, s)) = p.sockets.iter().find(|(a, _)| *a == local) {
                        let _ = shared.won.set((*a, s.clone()));
                    }
                    let losers: Vec<SocketAddr> = p
                        .sockets
                        .iter()
                        .map(|(a, _)| *a)
                        .filter(|a| *a != local)
                        .collect();
                    for a in losers {
                        p.remove(a);
                    }
                    if p.sockets.is_empty() {
                        *probe = None;
                    }
                }
            }
            PeerEvent::Birthday(_) => {
                // Gave up: every probe socket closed.
                *probe = None;
            }
            _ => {}
        }
    }
}

thread_local! {
    /// The tasks' receive buffer: one per thread, shared by every connection whose task
    /// runs there (reading is synchronous, so no two use it at once), allocated on first
    /// use and kept. A connection holds no 64 KiB of its own, and handing reading back and
    /// forth allocates nothing.
    static TASK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn read_on_this_thread(shared: &Shared) {
    let done = TASK_BUF.try_with(|b| {
        let Ok(mut buf) = b.try_borrow_mut() else {
            return false;
        };
        if buf.len() < MAX_DATAGRAM {
            buf.resize(MAX_DATAGRAM, 0);
        }
        read(shared, &mut buf);
        true
    });
    if done != Ok(true) {
        // The thread is shutting down (or, impossibly, reading already): a buffer of
        // its own.
        read(shared, &mut vec![0u8; MAX_DATAGRAM]);
    }
}

/// Reads what the socket holds while the task is the reader: protocol traffic to the
/// machine, data to the queue.
fn read(shared: &Shared, buf: &mut [u8]) {
    let mut skipped = 0;
    for _ in 0..MAX_READ_BATCH {
        if shared.reader.load(Ordering::SeqCst) != TASK {
            return;
        }
        match shared.socket.try_recv_into(buf) {
            Ok(r) => {
                let base = shared.base_for(r.destination);
                // With GRO, several datagrams of `stride` bytes back to back.
                for d in segments(r.len, r.stride) {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: r.source,
                        destination: base,
                        contents: &buf[d],
                    };
                    queue_input(shared, shared.lock(), rx);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                debug!(error = %e, "receive error");
                skipped += 1;
                if skipped >= MAX_SKIPPED_ERRORS {
                    return;
                }
            }
        }
    }
}

/// After a network change, with port mapping on: the socket mapped through the gateway
/// of the new primary IPv4 base (the old mapping's task is dropped, which deletes it in
/// the background if its gateway still answers); the machine waits for it as at start.
fn remap(shared: &Shared, portmap: &mut PortMapping) {
    if !shared.port_mapping {
        return;
    }
    let v4 = shared
        .bases
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .primary[0];
    let (pm, release) = match v4.filter(|b| !b.ip().is_loopback()) {
        Some(v4) => PortMapping::start(v4),
        None => {
            shared.lock().peer.port_mapping_done();
            PortMapping::off()
        }
    };
    *portmap = pm;
    let old = shared
        .release
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(release);
    drop(old);
}

/// Finds the bases again after a network change and, when they changed (or `force`),
/// restarts the machine on them ([`Peer::network_changed`]): its new credentials.
async fn rebase(shared: &Shared, force: bool) -> Result<Option<IceCredentials>, DriverError> {
    let current = shared
        .bases
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let new = match &shared.rebase {
        Some(r) => {
            let (primary, all) = r.bases(shared.socket.local_addr().port()).await?;
            Bases { primary, all }
        }
        None => current.clone(),
    };
    if new == current && !force {
        return Ok(None);
    }
    let creds = {
        let mut st = shared.lock();
        *shared.bases.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        let creds = st.peer.network_changed(Instant::now(), &new.all);
        if st.peer.wants_tcp_bases() {
            // ICE-TCP bases on the new IPs (those of IPs that stayed are kept).
            let ips: Vec<IpAddr> = new.all.iter().map(SocketAddr::ip).collect();
            let (passive, so) = shared.tcp.rebind(&ips, shared.socket.local_addr().port());
            st.peer.tcp_bases(Instant::now(), &passive, &so);
        }
        creds
    };
    // The port mapping follows (a new gateway, most likely): the task makes it again.
    shared.remap.store(true, Ordering::SeqCst);
    shared.task_wake.notify_one();
    Ok(Some(creds))
}

/// Hands a datagram the task read to the machine, and the application's data in it to
/// the queue that the next receive drains (waking a receive that waits).
fn queue_input(shared: &Shared, mut st: MutexGuard<'_, State>, rx: Received<'_>) {
    if let PeerInput::Data { from, range } = st.peer.handle_input(Instant::now(), rx) {
        if st.queue.push(from, &rx.contents[range]) {
            shared.queued.store(st.queue.items.len(), Ordering::SeqCst);
            drop(st);
            shared.data_wake.notify_one();
        } else {
            debug!("receive queue full: datagram dropped");
        }
    }
}

/// What a TURN stream brought: its connection to the machine, a message to the machine
/// (and data in it to the queue), or its end.
fn stream_event(shared: &Shared, ev: StreamEvent) {
    let mut st = shared.lock();
    match ev {
        StreamEvent::Connected { server, local } => {
            st.peer.turn_stream_connected(Instant::now(), server, local);
        }
        StreamEvent::Frame {
            server,
            local,
            data: frame,
        } => {
            let rx = Received {
                proto: Protocol::Tcp,
                source: server,
                destination: local,
                contents: &frame,
            };
            queue_input(shared, st, rx);
        }
        StreamEvent::Closed { server, error } => {
            debug!(%server, %error, "TURN connection over TCP/TLS ended");
            st.peer
                .turn_stream_closed(server, crate::turn::TurnError::Stream(error));
        }
    }
}

/// What an ICE-TCP connection brought: a message to the machine, like a datagram (its
/// data to the queue that the next receive drains), or its failure.
fn tcp_event(shared: &Shared, ev: TcpEvent) {
    match ev {
        TcpEvent::Message(m) => {
            let rx = Received {
                proto: Protocol::Tcp,
                source: m.remote,
                destination: m.base,
                contents: &m.data,
            };
            queue_input(shared, shared.lock(), rx);
        }
        TcpEvent::Failed { base, remote } => {
            shared.lock().peer.tcp_connection_failed(base, remote);
        }
    }
}

async fn send_control(shared: &Shared, t: &Transmit) {
    if let Some((_, s)) = shared.won.get().filter(|(a, _)| *a == t.source) {
        let d = Datagrams {
            destination: t.destination,
            source: None,
            contents: &t.contents,
            segment_size: None,
        };
        if let Err(e) = s.send(&d).await {
            debug!(to = %t.destination, error = %e, "send failed");
        }
        return;
    }
    if let Err(e) = shared
        .socket
        .send(&shared.datagram(t.source, t.destination, &t.contents))
        .await
    {
        debug!(to = %t.destination, error = %e, "send failed");
    }
}

fn event(ev: PeerEvent) -> Option<PeerConnectionEvent> {
    Some(match ev {
        PeerEvent::Candidate(c) => PeerConnectionEvent::Candidate(c),
        PeerEvent::GatheringComplete => PeerConnectionEvent::GatheringComplete,
        PeerEvent::RelayFailed(e) => PeerConnectionEvent::RelayFailed(e.to_string()),
        PeerEvent::Ice(IceEvent::State(s)) => PeerConnectionEvent::State(s),
        PeerEvent::Ice(IceEvent::SelectedPair {
            local,
            remote,
            nominated,
            rtt,
        }) => PeerConnectionEvent::SelectedPair {
            local,
            remote,
            nominated,
            rtt,
        },
        PeerEvent::Birthday(ev) => PeerConnectionEvent::Birthday(ev),
        PeerEvent::Ice(_)
        | PeerEvent::BirthdaySockets(_)
        | PeerEvent::PcpPeerRemote(_)
        | PeerEvent::PathLost => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ice::{CandidateKind, CandidateTransport};

    /// Datagrams that GRO coalesced into one buffer (a GSO send over loopback reaches a
    /// socket with GRO on whole) each reach the application, in order, with the
    /// peer's address (as IPv4 on the dual-stack socket).
    #[test]
    fn gro_coalesced_datagrams_each_reach_the_application() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            // On a wildcard socket (the one with GRO on); its IPv4 base is 127.0.0.1.
            let any: SocketAddr = "[::]:0".parse().unwrap();
            let mut p = PeerConnection::start(PeerConfig::default(), any, true)
                .await
                .unwrap();
            let other = PeerConnection::start(PeerConfig::default(), lo, false)
                .await
                .unwrap();
            // A "peer" whose host candidate is a plain socket of the UDP layer.
            let raw = UdpSocket::bind(lo, BindOptions::default()).unwrap();
            p.set_remote_credentials(other.local_credentials().clone());
            p.add_remote_candidate(Candidate::new(
                CandidateKind::Host,
                CandidateTransport::Udp,
                raw.local_addr(),
                raw.local_addr().ip(),
                None,
                65_535,
            ));
            let mut contents = Vec::new();
            for i in 0..8u8 {
                contents.extend_from_slice(&[0x80 | i; 200]);
            }
            contents.extend_from_slice(&[0x88; 50]);
            let d = Datagrams {
                destination: p.local_addr(),
                source: None,
                contents: &contents,
                segment_size: Some(200),
            };
            raw.send(&d).await.unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), async {
                while got.len() < 9 {
                    let (n, from) = p.recv_from(&mut buf).await.expect("the task runs");
                    assert_eq!(from, raw.local_addr());
                    got.push((buf[0], n));
                }
            })
            .await
            .expect("every datagram arrives");
            let want: Vec<(u8, usize)> = (0..9u8)
                .map(|i| (0x80 | i, if i == 8 { 50 } else { 200 }))
                .collect();
            assert_eq!(got, want);
        });
    }

    /// `close()` deletes the connection's TURN allocation: the server frees the relayed
    /// address at once (its port can be bound again), where before it stayed allocated
    /// until its lifetime ran out (10 minutes). Dropping does not wait for that.
    #[test]
    fn close_deletes_the_turn_allocations() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let mut config = crate::turn::TurnServerConfig::new(lo, "test", 0);
            config.credentials.users.insert("u".into(), "p".into());
            config.peers = crate::turn::PeerPolicy::with_loopback();
            let server = crate::driver::serve_turn(config).await.unwrap();
            let turn = server.local_addrs()[0];
            let within = Duration::from_secs(10);
            let relayed_of = |mut pc: PeerConnection| async move {
                let relayed = tokio::time::timeout(within, async {
                    loop {
                        match pc.next_event().await {
                            Some(PeerConnectionEvent::Candidate(c))
                                if c.kind == CandidateKind::Relayed =>
                            {
                                break c.socket_addr().unwrap();
                            }
                            Some(_) => {}
                            None => panic!("the connection ended"),
                        }
                    }
                })
                .await
                .expect("a relayed candidate");
                (pc, relayed)
            };
            let config = PeerConfig {
                turn_servers: vec![crate::peer::TurnServerSpec::new(
                    turn,
                    crate::turn::Credentials::long_term("u", "p"),
                )],
                relay_only: true,
                ..PeerConfig::default()
            };
            let (pc, relayed) = relayed_of(
                PeerConnection::start(config.clone(), lo, true)
                    .await
                    .unwrap(),
            )
            .await;
            assert!(
                std::net::UdpSocket::bind(relayed).is_err(),
                "the relayed port {relayed} is the server's while allocated"
            );
            pc.close().await;
            // Freed once the server has answered the deletion (close waited for that).
            let freed = async {
                while std::net::UdpSocket::bind(relayed).is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(2), freed)
                .await
                .expect("the relayed port freed after close()");
        });
    }

    /// Two connections on a dual-stack loopback socket each, the first controlling, with
    /// each other's credentials, connected (a nominated pair on both sides).
    async fn connected_pair(config: PeerConfig, within: Duration) -> [PeerConnection; 2] {
        let any: SocketAddr = "[::]:0".parse().unwrap();
        let a = PeerConnection::start(config.clone(), any, true)
            .await
            .unwrap();
        let b = PeerConnection::start(config, any, false).await.unwrap();
        a.set_remote_credentials(b.local_credentials().clone());
        b.set_remote_credentials(a.local_credentials().clone());
        let mut pcs = [a, b];
        pump_until_nominated(&mut pcs, within).await;
        pcs
    }

    /// The defaults without the built-in network monitor (the tests make the changes).
    fn no_monitor() -> PeerConfig {
        PeerConfig {
            no_network_monitor: true,
            ..PeerConfig::default()
        }
    }

    /// Reads each side's events until it has been quiet for 300 ms (at most 100).
    async fn drain_quietly(pcs: &mut [PeerConnection; 2]) {
        for pc in pcs {
            for _ in 0..100 {
                let quiet = Duration::from_millis(300);
                if tokio::time::timeout(quiet, pc.next_event()).await.is_err() {
                    break;
                }
            }
        }
    }

    /// Moves each side's events to the other (trickle) until both have reported a
    /// nominated pair, or `within`.
    async fn pump_until_nominated(pcs: &mut [PeerConnection; 2], within: Duration) {
        let mut nominated = [false; 2];
        tokio::time::timeout(within, async {
            while !nominated.iter().all(|n| *n) {
                let [p0, p1] = &mut *pcs;
                let (i, ev) = tokio::select! {
                    ev = p0.next_event() => (0, ev),
                    ev = p1.next_event() => (1, ev),
                };
                match ev.expect("the connection runs") {
                    PeerConnectionEvent::Candidate(c) => pcs[1 - i].add_remote_candidate(c),
                    PeerConnectionEvent::GatheringComplete => pcs[1 - i].end_of_remote_candidates(),
                    PeerConnectionEvent::SelectedPair {
                        nominated: true, ..
                    } => nominated[i] = true,
                    _ => {}
                }
            }
        })
        .await
        .expect("both sides nominate a pair");
    }

    /// `network_changed()` restarts ICE (on a loopback dual-stack socket the bases stay
    /// the same, and the restart happens all the same): new credentials; once the peer
    /// has them (and restarted in turn, as RFC 8445 §9 has it), the two connect again
    /// and data flows.
    #[test]
    fn network_changed_restarts_ice_and_the_peers_connect_again() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let within = Duration::from_secs(10);
            let mut pcs = connected_pair(PeerConfig::default(), within).await;
            // What the first session still reports (a renomination…): not counted below.
            drain_quietly(&mut pcs).await;
            let before = pcs[0].local_credentials().clone();
            let creds = pcs[0].network_changed().await.expect("bases found");
            assert_ne!(creds, before, "new credentials");
            assert_eq!(pcs[0].local_credentials(), &creds);
            let answer = pcs[1].restart();
            pcs[1].set_remote_credentials(creds);
            pcs[0].set_remote_credentials(answer);
            pump_until_nominated(&mut pcs, within).await;
            let [a, mut b] = pcs;
            a.send(b"after the change").await;
            let got = tokio::time::timeout(within, b.recv())
                .await
                .expect("data within the bound");
            assert_eq!(got.as_deref(), Some(&b"after the change"[..]));
        });
    }

    /// Network changes in a burst, the app reading nothing meanwhile (a phone that wakes
    /// up on a new network after several): no event is lost (each restart's gathering
    /// ends with its own `GatheringComplete`, in order after its candidates), the last
    /// credentials are the ones in force, and once the peer has them the two connect
    /// again without anything else from the app.
    #[test]
    fn a_burst_of_network_changes_loses_no_event_and_the_last_one_connects() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let within = Duration::from_secs(10);
            let mut pcs = connected_pair(no_monitor(), within).await;
            drain_quietly(&mut pcs).await;
            const CHANGES: usize = 5;
            let mut creds = Vec::new();
            for _ in 0..CHANGES {
                creds.push(pcs[0].network_changed().await.expect("bases found"));
            }
            assert_eq!(pcs[0].local_credentials(), creds.last().unwrap());
            // Everything the five restarts reported, read only now.
            let mut events = Vec::new();
            let quiet = Duration::from_millis(500);
            while let Ok(Some(ev)) = tokio::time::timeout(quiet, pcs[0].next_event()).await {
                events.push(ev);
            }
            let completes = events
                .iter()
                .filter(|e| **e == PeerConnectionEvent::GatheringComplete)
                .count();
            assert_eq!(completes, CHANGES, "{events:?}");
            // Each gathering's candidates come before its end.
            let hosts_before_each_end = events
                .split(|e| *e == PeerConnectionEvent::GatheringComplete)
                .take(CHANGES)
                .all(|run| {
                    run.iter().any(|e| {
                        matches!(e, PeerConnectionEvent::Candidate(c) if c.kind == CandidateKind::Host)
                    })
                });
            assert!(hosts_before_each_end, "{events:?}");
            let answer = pcs[1].restart();
            pcs[1].set_remote_credentials(creds.last().unwrap().clone());
            pcs[0].set_remote_credentials(answer);
            // The candidates of the last restart, as the app would signal them.
            let last_run = events
                .rsplit(|e| *e == PeerConnectionEvent::GatheringComplete)
                .nth(1)
                .unwrap_or_default();
            for e in last_run {
                if let PeerConnectionEvent::Candidate(c) = e {
                    pcs[1].add_remote_candidate(c.clone());
                }
            }
            pcs[1].end_of_remote_candidates();
            pump_until_nominated(&mut pcs, within).await;
            let [a, mut b] = pcs;
            a.send(b"after five changes").await;
            let got = tokio::time::timeout(within, b.recv())
                .await
                .expect("data within the bound");
            assert_eq!(got.as_deref(), Some(&b"after five changes"[..]));
        });
    }

    /// A resume whose path is gone (the peer closed while we were suspended) restarts
    /// ICE by itself and reports `NetworkChanged`. If the app restarts again before it
    /// reads that event (answering the peer's own restart), the event carries the
    /// credentials in force, not the ones of the restart it reports.
    #[test]
    fn a_resume_restart_reports_the_credentials_in_force() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pcs = connected_pair(no_monitor(), Duration::from_secs(10)).await;
            let [mut a, b] = pcs;
            a.set_keepalive_policy(crate::ice::KeepalivePolicy::Suspended);
            drop(b);
            let before = a.local_credentials().clone();
            a.set_keepalive_policy(crate::ice::KeepalivePolicy::Foreground);
            // The probe's 4 s, and the restart after it, without reading events.
            let restarted = async {
                while a.shared.lock().peer.local_credentials() == &before {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), restarted)
                .await
                .expect("the resume restarted ICE");
            let answer = a.restart();
            let creds = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match a.next_event().await {
                        Some(PeerConnectionEvent::NetworkChanged { credentials }) => {
                            break credentials;
                        }
                        Some(_) => {}
                        None => panic!("the connection ended"),
                    }
                }
            })
            .await
            .expect("NetworkChanged");
            assert_eq!(creds, answer, "the credentials in force");
            assert_eq!(a.local_credentials(), &answer);
        });
    }

    #[test]
    fn the_queue_keeps_order_and_bounds() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut q = RecvQueue::default();
        assert!(q.push(a, b"one"));
        assert!(q.push(a, b""));
        assert!(q.push(a, b"three"));
        let mut buf = [0u8; 8];
        assert_eq!(q.pop_into(&mut buf), Some((3, a)));
        assert_eq!(&buf[..3], b"one");
        assert_eq!(q.pop_into(&mut buf), Some((0, a)));
        let mut short = [0u8; 2];
        assert_eq!(q.pop_into(&mut short), Some((2, a)));
        assert_eq!(&short, b"th");
        assert_eq!(q.pop_into(&mut buf), None);
        assert!(q.bytes.is_empty());
        let big = vec![7u8; RECV_QUEUE_BYTES];
        assert!(q.push(a, &big));
        assert!(!q.push(a, b"x"), "the byte bound holds");
        let mut out = vec![0u8; RECV_QUEUE_BYTES];
        assert_eq!(q.pop_into(&mut out), Some((RECV_QUEUE_BYTES, a)));
        for _ in 0..RECV_QUEUE {
            assert!(q.push(a, b""));
        }
        assert!(!q.push(a, b""), "the datagram bound holds");
    }
}
