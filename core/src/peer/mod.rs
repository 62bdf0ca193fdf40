//! The peer connection's sans-IO core: one local socket, an [`IceAgent`], its TURN
//! allocations and server-reflexive gathering, behind one input and one output.
//!
//! Every datagram that arrives on the socket goes, in this order (str0m's `Rtc::accepts`
//! and firezone's snownet node are the models):
//! 1. to the TURN allocation whose server sent it: ChannelData and Data indications are
//!    unwrapped and **re-enter** with the peer as their source and the *relayed address*
//!    as their destination, so the agent sees a relayed candidate as an ordinary local
//!    candidate whose base is the relayed address;
//! 2. to the STUN transactions that gather server-reflexive candidates;
//! 3. to the ICE agent (checks and their answers);
//! 4. what is left is application data, reported as a byte range of the datagram —
//!    except a well-formed STUN message that none of them claimed (a late or duplicate
//!    answer to a check or to gathering, whose transaction is over): RFC 7983 §7 makes
//!    it STUN, not the application's, and it is dropped.
//!
//! The agent's datagrams whose source is a relayed address are sent *through* that
//! allocation (a Send indication, or ChannelData once a channel is bound); permissions for
//! every remote candidate's IP are installed as candidates arrive. The agent knows nothing
//! of TURN.
//!
//! Candidates are trickled: each one gathered comes out as [`PeerEvent::Candidate`] for
//! the signalling channel; [`PeerEvent::GatheringComplete`] follows the last one.
//!
//! Port allocation: gathering asks every STUN server, then every TURN server over UDP,
//! from the same socket, in that order; the addresses they saw tell how our NAT allocates
//! ports ([`Peer::port_allocation`]): one external port for all (nothing to predict), or
//! a new one per server, sequential or not. Sent to the peer (pinhole's
//! `a=x-pinhole-port-allocation`), it lets the peer's agent predict the port our NAT
//! gives our checks to it ([`Peer::set_remote_port_allocation`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::ice::{
    BirthdayConfig, BirthdayEvent, BirthdayProber, BirthdayRole, Candidate, CandidateKind,
    CandidateTransport, IceAgent, IceConfig, IceCredentials, IceEvent, IceInput, IceState,
    KeepalivePolicy, RESUME_PROBE, TcpType,
};
use crate::stun::attributes::XorMappedAddress;
use crate::stun::{ClientConfig, Method, Request, StunClient, TransactionEvent, TransactionId};
use crate::turn::{
    Allocation, AllocationConfig, AllocationEvent, Credentials, Input, TurnError, TurnTransport,
};
use crate::{Received, Transmit};

/// Errors from the peer connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No pair is selected yet (or consent was lost).
    #[error("not connected")]
    NotConnected,
    /// The relay could not carry the datagram.
    #[error("relay: {0}")]
    Relay(#[from] TurnError),
}

/// A TURN server to allocate on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TurnServerSpec {
    /// Its address.
    pub server: SocketAddr,
    /// The credentials.
    pub credentials: Credentials,
    /// How to reach it: UDP from the connection's own socket, or a TCP or TLS connection
    /// that the driver opens (RFC 8656 §3.1: for networks that block UDP). Over a stream,
    /// the driver tells the machine when the connection is up
    /// ([`Peer::turn_stream_connected`]) or gone ([`Peer::turn_stream_closed`]).
    pub transport: TurnTransport,
    /// For TLS: the name the server's certificate must carry (the URI's host).
    pub tls_name: Option<String>,
    /// For TLS: PEM certificates to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl TurnServerSpec {
    /// A TURN server reached over UDP.
    pub fn new(server: SocketAddr, credentials: Credentials) -> Self {
        Self {
            server,
            credentials,
            transport: TurnTransport::Udp,
            tls_name: None,
            ca_pem: None,
        }
    }

    /// Reached over `transport` instead; `tls_name` is the name a TLS server's
    /// certificate must carry.
    #[must_use]
    pub fn over(mut self, transport: TurnTransport, tls_name: Option<String>) -> Self {
        self.transport = transport;
        self.tls_name = tls_name;
        self
    }

    /// Trusts these PEM certificates (for TLS) instead of the system's roots.
    #[must_use]
    pub fn with_ca(mut self, pem: Vec<u8>) -> Self {
        self.ca_pem = Some(pem);
        self
    }
}

/// Retransmissions of the server-reflexive gathering requests: 4 transmissions from
/// 250 ms, given up 2.75 s after the first (RFC 8489 §6.2.1's 500 ms × 7 would take 39.5
/// s). A base that cannot reach the server — a second interface without a route to it, a
/// container bridge — must not hold `a=end-of-candidates` back for long; a reachable
/// server answers within a round trip, and four transmissions ride out loss.
fn gathering_stun() -> ClientConfig {
    ClientConfig {
        rto: Duration::from_millis(250),
        max_transmits: 4,
        last_wait_multiplier: 4,
        ..ClientConfig::default()
    }
}

/// The peer connection's settings.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PeerConfig {
    /// The ICE agent's settings.
    pub ice: IceConfig,
    /// STUN servers for server-reflexive candidates.
    pub stun_servers: Vec<SocketAddr>,
    /// TURN servers for relayed candidates.
    pub turn_servers: Vec<TurnServerSpec>,
    /// Offer host candidates (off: only reflexive and relayed ones, as for privacy).
    pub no_host: bool,
    /// Host candidates only on the primary address of each family (the one toward the
    /// servers), not on every usable interface (RFC 8445 §5.1.1.1; the default: the
    /// driver lists the interfaces when the connection is bound to the wildcard address).
    pub primary_interface_only: bool,
    /// Interfaces whose names start with one of these offer no host candidate (a VPN, a
    /// container bridge: `tun`, `docker`, `veth`…).
    pub ignore_interfaces: Vec<String>,
    /// Offer server-reflexive and host candidates at all (off: relay only).
    pub relay_only: bool,
    /// Use no relay.
    pub no_relay: bool,
    /// Ask the gateway for a port mapping of the socket (PCP, NAT-PMP or UPnP IGD, by the
    /// driver) and offer its external address as a candidate: a mapping lets the peer in
    /// whatever the NAT's filtering, which turns pairs that would relay into direct ones.
    /// Gathering waits for the driver's answer ([`Peer::port_mapped`] or
    /// [`Peer::port_mapping_done`]). Off by default in the library; `pinhole connect`
    /// turns it on.
    pub port_mapping: bool,
    /// Birthday probing for a peer behind an endpoint-dependent mapping (see
    /// [`crate::ice::birthday`] and the module docs): its caps, and whether to take part
    /// (off by default in the library; `pinhole connect` turns it on). It runs only when
    /// the peer takes part too ([`Peer::set_remote_birthday`]).
    pub birthday: BirthdayConfig,
    /// ICE-TCP (RFC 6544): offer TCP candidates beside the UDP ones, so that a peer whose
    /// network blocks UDP (or whose UDP pairs all fail) still gets a direct path. The
    /// driver binds, per base IP, a listening socket (a passive candidate) and a port
    /// for simultaneous open (an `so` candidate, with its server-reflexive address from
    /// STUN over TCP), and hands them to [`Peer::tcp_bases`]; each base IP also gets an
    /// active candidate. UDP candidates rank above TCP ones of the same type, TCP ones
    /// above relayed ones. Off by default in the library; `pinhole connect` turns it on.
    pub ice_tcp: bool,
    /// No built-in network monitor in the driver. On Linux and Android the driver of a
    /// dual-stack connection watches the host's addresses and routes (rtnetlink) and,
    /// when its bases change, restarts ICE on the new network by itself
    /// (`PeerConnection::network_changed`, reported as `NetworkChanged`). Hosts with a
    /// monitor of their own turn it off and call `network_changed()`.
    pub no_network_monitor: bool,
    /// The keepalive policy to start with (see [`crate::ice::keepalive`]; change it with
    /// [`Peer::set_keepalive_policy`] as the app moves between foreground and
    /// background). [`KeepalivePolicy::Foreground`] by default.
    pub keepalive: KeepalivePolicy,
}

/// What the peer connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A local candidate to send to the peer (trickle, RFC 8838).
    Candidate(Candidate),
    /// Gathering is over: send `a=end-of-candidates`.
    GatheringComplete,
    /// From the ICE agent: state, selected pair, …
    Ice(IceEvent),
    /// Birthday probing starts on this side as the hard side: the driver binds this many
    /// new UDP sockets (on the primary base's IP, any port) and hands their addresses to
    /// [`Peer::birthday_sockets`] (fewer, or none, if it cannot bind them all).
    BirthdaySockets(usize),
    /// Birthday probing found a pair or gave up. On the hard side the driver keeps the
    /// probe socket that found the pair (`local` of [`BirthdayEvent::Found`]: a base of
    /// the machine from now on) and closes the others; after
    /// [`BirthdayEvent::GaveUp`] it closes them all.
    Birthday(BirthdayEvent),
    /// A relay could not be allocated (the connection goes on without it).
    RelayFailed(TurnError),
    // --- PCP PEER (issue 13) ---
    /// With port mapping on: a remote candidate's address (host or server-reflexive,
    /// UDP) that the driver may ask a PCP gateway for a PEER mapping toward (RFC 6887
    /// §12); its answer comes back through [`Peer::pcp_peer_mapped`].
    PcpPeerRemote(SocketAddr),
    /// The path was probed and neither it nor another pair answered within
    /// [`RESUME_PROBE`]: after a resume from [`KeepalivePolicy::Suspended`] (or the
    /// background) its NAT bindings, its relay or the peer went away meanwhile; in the
    /// foreground it stopped answering ([`crate::ice::UNANSWERED_CHECK`]: a NAT on it
    /// dropped its mapping and made another, a firewall closed it). The driver restarts
    /// ICE as after a network change ([`Peer::network_changed`] with the bases as they
    /// are, the port mapping and the ICE-TCP bases asked for again) and sends the peer the
    /// new credentials.
    PathLost,
}

/// What a received datagram was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerInput {
    /// Protocol traffic, consumed.
    Consumed,
    /// Application data from `from`, at `range` of the datagram.
    Data {
        /// The peer's address (through a relay: the peer's address as the relay saw it).
        from: SocketAddr,
        /// Where the data lies in the datagram.
        range: Range<usize>,
    },
}

#[derive(Debug)]
struct Relay {
    alloc: Allocation,
    /// UDP from the connection's socket, or TCP for a stream (TLS included).
    proto: crate::Protocol,
    relayed: Option<SocketAddr>,
    done: bool,
}

impl Relay {
    /// A relay over a stream that the driver reported closed: nothing to send or wait
    /// for any more (a UDP one that is done has no timers left by itself).
    fn closed(&self) -> bool {
        self.done && self.proto == crate::Protocol::Tcp
    }
}

/// How long after [`RESUME_PROBE`] a resumed path's state is looked at: none, the agent's
/// consent deadline falls at the probe's end and it is looked at in the same
/// `handle_timeout`, right after the agent's.
const RESUME_GRACE: Duration = Duration::ZERO;

/// The TURN allocations' liveness check and keepalive interval under a keepalive policy:
/// the defaults in the foreground; none otherwise (a relayed path in use is kept by the
/// agent's keepalive rounds through it; an unused allocation lives by its refreshes, and
/// one whose NAT binding changed meanwhile is answered 437 and made again).
fn turn_checks(policy: KeepalivePolicy) -> (Option<Duration>, Option<Duration>) {
    match policy {
        KeepalivePolicy::Foreground => (
            Some(crate::turn::LIVENESS_INTERVAL),
            Some(crate::turn::KEEPALIVE_INTERVAL),
        ),
        KeepalivePolicy::Background | KeepalivePolicy::Suspended => (None, None),
    }
}

/// The peer connection machine. See the module docs.
#[derive(Debug)]
pub struct Peer {
    config: PeerConfig,
    /// The primary base: the first of `bases` (TURN, port mapping and candidates' related
    /// addresses use the base of the right family; this one when there is a choice).
    local: SocketAddr,
    /// Every local address the socket answers on (one per address family on a
    /// dual-stack socket): each a host candidate's base.
    bases: Vec<SocketAddr>,
    agent: IceAgent,
    stun: StunClient,
    /// Binding requests out for server-reflexive candidates, and the base each is from.
    srflx_pending: Vec<(TransactionId, SocketAddr)>,
    relays: Vec<Relay>,
    /// TURN servers over TCP or TLS whose connection the driver is still opening.
    streams_pending: Vec<(TurnServerSpec, [u8; 32])>,
    /// The driver has not said yet whether the gateway mapped the socket.
    portmap_pending: bool,
    /// ICE-TCP is on and the driver has not handed over its TCP bases yet.
    tcp_pending: bool,
    /// The TCP bases: passive (listening), active (the IP with port 0), so.
    tcp_bases: Vec<SocketAddr>,
    /// Binding requests over TCP from an so base: (transaction, base, STUN server), so
    /// that a connection the driver could not make ends its wait at once.
    tcp_stun: Vec<(TransactionId, SocketAddr, SocketAddr)>,
    /// How many times [`Peer::network_changed`] was called.
    network_changes: u8,
    /// Allocations made again after a relay was lost ([`MAX_REALLOCATIONS`] at most).
    reallocations: u8,
    /// [`Peer::deallocate`] was called: losses are expected.
    deallocating: bool,
    /// An allocation is being made again after gathering was over: the agent is told
    /// when it is done ([`IceAgent::end_of_local_candidates`]).
    regathering: bool,
    /// UDP allocations made from a base that went away with a network change: the
    /// server keeps them until they expire. If the base comes back (a phone returning
    /// to the same Wi-Fi) and the NAT gives it the same mapping, the server still holds
    /// the allocation for that 5-tuple and would refuse a new one (437 Allocation
    /// Mismatch, RFC 8656 §7.2): it is taken up again instead.
    dormant: Vec<Relay>,
    /// What the servers saw of us, per request: (order sent, base, mapped address).
    gathered: Vec<(usize, SocketAddr, SocketAddr)>,
    /// The order each gathering request was sent in (STUN first, then TURN over UDP).
    srflx_order: Vec<(TransactionId, usize)>,
    gathering_done: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PeerEvent>,
    birthday: Birthday,
    /// After the agent started probing the path (a resume, a silence): when to look
    /// whether it came back (else ICE restarts).
    resume_check: Option<Instant>,
    /// The agent's probe that `resume_check` was armed for.
    probe_seen: Option<Instant>,
    /// TURN servers that refused RFC 8016 mobility (405).
    no_mobility: Vec<SocketAddr>,
    /// The latest time the machine was given.
    now: Instant,
    seed: [u8; 32],
}

/// Birthday probing's progress in the peer connection.
#[derive(Debug, Default)]
struct Birthday {
    /// The peer takes part (`a=ice-options:x-pinhole-birthday`).
    remote_agreed: bool,
    /// How the peer's NAT allocates ports, as it says.
    remote_allocation: Option<crate::netcheck::PortAllocation>,
    remote_end: bool,
    /// When both sides' candidates were all known (the wait counts from there).
    ready_at: Option<Instant>,
    state: BirthdayState,
}

#[derive(Debug, Default)]
enum BirthdayState {
    /// Waiting for the decision (at `ready_at` + the wait).
    #[default]
    Idle,
    /// Hard side: waiting for the driver's sockets.
    WantSockets(BirthdayRole),
    Running(Box<BirthdayProber>),
    /// Decided against (no side with endpoint-dependent mapping, a direct pair already,
    /// the peer does not take part, nothing to probe from or to).
    Skipped,
}

/// How many times a connection makes an allocation again after one was lost (a TURN
/// server restart, RFC 8656 §7.2's 437 to a refresh).
pub const MAX_REALLOCATIONS: u8 = 8;

/// What framing for a relay adds to a datagram at most: a Send indication to an IPv6 peer
/// (RFC 8656 §11.2: a 20-byte header, a 24-byte XOR-PEER-ADDRESS, the DATA attribute's
/// 4-byte header and up to 3 bytes of padding); ChannelData adds 4 (RFC 8656 §12.4).
/// A buffer for [`Peer::send_into`] needs this much room beyond the data.
pub const MAX_FRAMING: usize = 64;

/// Where [`Peer::send_into`] says to send application data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// Send the data as it is, from `source` to `destination` (the selected pair is direct).
    Direct {
        /// UDP, or TCP on an ICE-TCP pair (the driver frames it, RFC 4571, on the
        /// connection it keys by `source` and `destination`).
        proto: crate::Protocol,
        /// The local socket's address.
        source: SocketAddr,
        /// The peer's.
        destination: SocketAddr,
    },
    /// Send the first `len` bytes of the buffer (the data framed for the relay) from
    /// `source` to `destination` (the TURN server).
    Framed {
        /// UDP (on the connection's socket), or TCP for a relay reached over a TCP or TLS
        /// stream (the driver writes it on that stream).
        proto: crate::Protocol,
        /// The local socket's address (for a stream: the stream's).
        source: SocketAddr,
        /// The TURN server's.
        destination: SocketAddr,
        /// The framed datagram's length.
        len: usize,
    },
}

/// The UDP host candidate of the `i`-th base (RFC 8445 §5.1.2.1: the local preference
/// ranks the bases, the primary first).
fn host_candidate(i: usize, base: SocketAddr) -> Candidate {
    let pref = 65535u16.saturating_sub(u16::try_from(i).unwrap_or(255).saturating_mul(256));
    Candidate::new(
        CandidateKind::Host,
        CandidateTransport::Udp,
        base,
        base.ip(),
        None,
        pref,
    )
}

/// What no machine claimed: application data at `range` of the datagram, unless `data`
/// (that range) is a well-formed STUN message (RFC 7983 §7: first byte 0–3; the magic
/// cookie and length check out). Such a message is a late or duplicate answer to one of
/// our transactions, or someone else's STUN: never the application's data.
fn leftover(data: &[u8], from: SocketAddr, range: Range<usize>) -> PeerInput {
    if crate::demux::classify(data) == crate::demux::Kind::Stun
        && crate::stun::Message::parse(data).is_ok()
    {
        debug!(%from, "STUN message that nothing here claims dropped");
        PeerInput::Consumed
    } else {
        PeerInput::Data { from, range }
    }
}

impl Peer {
    /// A peer connection on the socket bound at `local` (a concrete address), starting to
    /// gather at `now`.
    pub fn new(
        now: Instant,
        config: PeerConfig,
        local: SocketAddr,
        controlling: bool,
        seed: [u8; 32],
    ) -> Self {
        Self::with_bases(now, config, &[local], controlling, seed)
    }

    /// A peer connection whose socket answers on several local addresses, `bases` (the
    /// first is the primary; a dual-stack socket has one of each family): a host
    /// candidate on each, server-reflexive gathering from each toward the STUN servers of
    /// its family, and each TURN allocation from the base of the server's family. The
    /// driver says which base a datagram arrived at (its destination) and sends each of
    /// the machine's datagrams from its source. An empty `bases` is a programming error:
    /// it is treated as the unspecified IPv4 address, which no one can reach.
    pub fn with_bases(
        now: Instant,
        config: PeerConfig,
        bases: &[SocketAddr],
        controlling: bool,
        seed: [u8; 32],
    ) -> Self {
        let local = bases
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut bases = bases.to_vec();
        bases.dedup();
        if bases.is_empty() {
            bases.push(local);
        }
        let mut sub = seed;
        sub[31] ^= 0x5a;
        let mut agent = IceAgent::new(now, config.ice.clone(), controlling, seed);
        agent.set_keepalive_policy(now, config.keepalive);
        let mut p = Self {
            stun: StunClient::new(gathering_stun(), sub),
            local,
            bases,
            agent,
            srflx_pending: Vec::new(),
            relays: Vec::new(),
            streams_pending: Vec::new(),
            portmap_pending: config.port_mapping && !config.relay_only && !config.ice.lite,
            tcp_pending: config.ice_tcp && !config.relay_only && !config.ice.lite,
            tcp_bases: Vec::new(),
            tcp_stun: Vec::new(),
            network_changes: 0,
            reallocations: 0,
            deallocating: false,
            regathering: false,
            dormant: Vec::new(),
            gathered: Vec::new(),
            srflx_order: Vec::new(),
            gathering_done: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            birthday: Birthday::default(),
            resume_check: None,
            probe_seen: None,
            no_mobility: Vec::new(),
            now,
            seed,
            config,
        };
        if !p.config.relay_only && !p.config.no_host {
            // RFC 8445 §5.1.2.1: local preference ranks the bases (the primary first).
            for (i, base) in p.bases.clone().into_iter().enumerate() {
                p.add_local(host_candidate(i, base), base);
            }
        }
        // An ICE-lite agent offers its host candidate only (RFC 8445 §2.5: it has a
        // public address, so nothing else is needed and it runs no gathering).
        let lite = p.config.ice.lite;
        if !p.config.relay_only && !lite {
            p.ask_stun_servers(now);
        }
        if !p.config.no_relay && !lite {
            for (i, spec) in p.config.turn_servers.clone().into_iter().enumerate() {
                if spec.transport.is_stream() {
                    let mut s = seed;
                    s[0] ^= 0xA0 ^ (i as u8);
                    p.streams_pending.push((spec, s));
                }
            }
            p.allocate_udp_relays(now);
        }
        p.check_gathering();
        p
    }

    /// Binding requests from every base to each STUN server of its family
    /// (server-reflexive gathering).
    fn ask_stun_servers(&mut self, now: Instant) {
        for server in self.config.stun_servers.clone() {
            for base in self.bases.clone() {
                if base.is_ipv4() != server.is_ipv4() {
                    continue;
                }
                match self
                    .stun
                    .start(now, Request::binding(base, server), |_| Ok(()))
                {
                    Ok(id) => {
                        let order = self.srflx_order.len();
                        self.srflx_order.push((id, order));
                        self.srflx_pending.push((id, base));
                    }
                    Err(e) => debug!(error = %e, "cannot ask a STUN server"),
                }
            }
        }
    }

    /// An allocation on each TURN server reached over UDP, from the base of its family.
    fn allocate_udp_relays(&mut self, now: Instant) {
        self.allocate_udp_relays_except(now, &[]);
    }

    /// A new allocation, its checks set for the keepalive policy.
    fn allocation(&self, now: Instant, mut cfg: AllocationConfig, seed: [u8; 32]) -> Allocation {
        // A server that refused RFC 8016 mobility once is not asked again (the refusal
        // costs a round trip per allocation).
        if self.no_mobility.contains(&cfg.server) {
            cfg.mobility = false;
        }
        let mut a = Allocation::new(now, cfg, seed);
        let (liveness, keepalive) = turn_checks(self.agent.keepalive_policy());
        a.set_checks(now, liveness, keepalive);
        a
    }

    /// The keepalive policy (see [`crate::ice::keepalive`]).
    #[must_use]
    pub fn keepalive_policy(&self) -> KeepalivePolicy {
        self.agent.keepalive_policy()
    }

    /// Sets the keepalive policy (see [`crate::ice::keepalive`]) as the app moves between
    /// foreground, background and suspended. The agent's consent checks and the TURN
    /// allocations' liveness checks and keepalives follow it. Leaving
    /// [`KeepalivePolicy::Suspended`] (or going back to the foreground) probes the path;
    /// if it does not answer within [`RESUME_PROBE`], [`PeerEvent::PathLost`] asks for an
    /// ICE restart.
    pub fn set_keepalive_policy(&mut self, now: Instant, policy: KeepalivePolicy) {
        self.now = self.now.max(now);
        let old = self.agent.keepalive_policy();
        if old == policy {
            return;
        }
        self.agent.set_keepalive_policy(now, policy);
        let (liveness, keepalive) = turn_checks(policy);
        for r in &mut self.relays {
            r.alloc.set_checks(now, liveness, keepalive);
        }
        self.watch_probe();
    }

    /// The agent started probing the path (a resume, or a silence in the foreground):
    /// the outcome is looked at when the probe ends.
    fn watch_probe(&mut self) {
        let Some(from) = self.agent.probing_since() else {
            return;
        };
        if self.probe_seen != Some(from) {
            self.probe_seen = Some(from);
            self.resume_check = Some(from + RESUME_PROBE + RESUME_GRACE);
        }
    }

    /// When a probe ended: restart ICE if no path answered.
    fn check_resumed(&mut self, now: Instant) {
        self.watch_probe();
        if self.resume_check.is_none_or(|t| t > now) {
            return;
        }
        self.resume_check = None;
        if self.agent.state() == IceState::Connected {
            return;
        }
        debug!("the probed path did not answer: ICE must restart");
        self.events.push_back(PeerEvent::PathLost);
    }

    /// The same, but not on the servers in `except`.
    fn allocate_udp_relays_except(&mut self, now: Instant, except: &[SocketAddr]) {
        for (i, spec) in self.config.turn_servers.clone().into_iter().enumerate() {
            if spec.transport.is_stream() || except.contains(&spec.server) {
                continue;
            }
            // Another seed after each network change: new transaction ids.
            let mut s = self.seed;
            s[0] ^= 0xA0 ^ (i as u8);
            s[2] = s[2].wrapping_add(self.network_changes);
            let from = self.base_for(spec.server);
            let cfg =
                AllocationConfig::new(spec.server, from, TurnTransport::Udp, spec.credentials);
            self.relays.push(Relay {
                alloc: self.allocation(now, cfg, s),
                proto: crate::Protocol::Udp,
                relayed: None,
                done: false,
            });
        }
    }

    /// How our NAT allocates ports, as far as gathering tells (see the module docs), for
    /// the peer (pinhole's `a=x-pinhole-port-allocation`): from the first base that two
    /// servers or more answered, the addresses the STUN and UDP TURN servers saw, in the
    /// order they were asked.
    /// `Some(Preserving)` when every server saw the base's own port, `Sequential` or
    /// `Random` when they saw different ports, `None` when there is nothing to tell (one
    /// server, or one external port other than the local one for all: endpoint-independent
    /// mapping, nothing to predict). Complete once gathering is.
    pub fn port_allocation(&self) -> Option<crate::netcheck::PortAllocation> {
        use crate::netcheck::{PortAllocation, sequential_step};
        // The first base (the primary first) that more than one server answered.
        let samples = |base: SocketAddr| -> Vec<(usize, SocketAddr)> {
            self.gathered
                .iter()
                .filter(|(_, b, m)| *b == base && m.is_ipv4() == base.is_ipv4())
                .map(|(o, _, m)| (*o, *m))
                .collect()
        };
        let (base, mut seen) = self
            .bases
            .iter()
            .map(|b| (*b, samples(*b)))
            .find(|(_, s)| s.len() >= 2)?;
        seen.sort_by_key(|(o, _)| *o);
        if seen.len() < 2 {
            return None;
        }
        let mut ports: Vec<u16> = Vec::new();
        for (_, m) in &seen {
            if !ports.contains(&m.port()) {
                ports.push(m.port());
            }
        }
        match ports.as_slice() {
            [one] if *one == base.port() => Some(PortAllocation::Preserving),
            [_] => None,
            _ => Some(match sequential_step(&ports) {
                Some(delta) => PortAllocation::Sequential { delta },
                None => PortAllocation::Random,
            }),
        }
    }

    /// How the peer's NAT allocates ports, as the peer says (pinhole's
    /// `a=x-pinhole-port-allocation`): sequential allocation turns on port prediction
    /// ([`IceAgent::set_remote_port_allocation`]).
    pub fn set_remote_port_allocation(&mut self, allocation: crate::netcheck::PortAllocation) {
        self.birthday.remote_allocation = Some(allocation);
        self.agent.set_remote_port_allocation(allocation);
    }

    /// Whether the peer takes part in birthday probing (its description carries
    /// `a=ice-options:x-pinhole-birthday`, [`crate::ice::birthday::ICE_OPTION`]). Probing
    /// needs both sides: never unilaterally.
    pub fn set_remote_birthday(&mut self, agreed: bool) {
        self.birthday.remote_agreed = agreed;
    }

    /// Probes sent by birthday probing so far (0 when it never started).
    pub fn birthday_probes(&self) -> u32 {
        match &self.birthday.state {
            BirthdayState::Running(p) => p.probes_sent(),
            _ => 0,
        }
    }

    /// The birthday prober, once started (for inspection).
    pub fn birthday_prober(&self) -> Option<&BirthdayProber> {
        match &self.birthday.state {
            BirthdayState::Running(p) => Some(p),
            _ => None,
        }
    }

    /// When birthday probing decides whether to start: both sides' candidates all known,
    /// plus [`BirthdayConfig::wait`]. `None` before that, or once decided.
    pub fn birthday_decision_at(&self) -> Option<Instant> {
        if !matches!(self.birthday.state, BirthdayState::Idle)
            || !self.config.birthday.enabled
            || !self.birthday.remote_agreed
        {
            return None;
        }
        Some(self.birthday.ready_at? + self.config.birthday.wait)
    }

    /// The hard side's probe sockets, bound by the driver after
    /// [`PeerEvent::BirthdaySockets`]: probing starts. None: it does not.
    pub fn birthday_sockets(&mut self, now: Instant, sockets: &[SocketAddr]) {
        self.now = self.now.max(now);
        let BirthdayState::WantSockets(BirthdayRole::Hard { target, .. }) = self.birthday.state
        else {
            debug!("birthday sockets nobody asked for: ignored");
            return;
        };
        if sockets.is_empty() {
            self.birthday.state = BirthdayState::Skipped;
            return;
        }
        let role = BirthdayRole::Hard {
            sockets: sockets.to_vec(),
            target,
        };
        self.start_birthday(now, role);
    }

    fn start_birthday(&mut self, now: Instant, role: BirthdayRole) {
        let Some(remote) = self.agent.remote_credentials().cloned() else {
            self.birthday.state = BirthdayState::Skipped;
            return;
        };
        let mut seed = self.seed;
        seed[30] ^= 0xB1;
        let prober = BirthdayProber::new(
            now,
            &self.config.birthday,
            role,
            self.agent.local_credentials().clone(),
            remote,
            seed,
        );
        self.birthday.state = BirthdayState::Running(Box::new(prober));
    }

    /// Notes when both sides' candidates are all known (the wait counts from there).
    fn birthday_ready(&mut self) {
        if self.birthday.ready_at.is_none()
            && self.gathering_done
            && self.birthday.remote_end
            && self.agent.remote_credentials().is_some()
        {
            self.birthday.ready_at = Some(self.now);
        }
    }

    /// Whether our side's NAT, or the peer's, maps endpoint-dependently: the ports the
    /// servers saw differ (sequential or random), as gathering and the peer's
    /// `a=x-pinhole-port-allocation` say.
    fn edm(a: Option<crate::netcheck::PortAllocation>) -> bool {
        use crate::netcheck::PortAllocation as P;
        matches!(a, Some(P::Random | P::Sequential { .. }))
    }

    /// The decision, once the wait is over: which role, if any (see the module docs).
    fn decide_birthday(&mut self, now: Instant) {
        self.birthday.state = BirthdayState::Skipped;
        // A direct pair already: nothing to win.
        if let Some((l, r)) = self.agent.selected_candidates()
            && l.kind != CandidateKind::Relayed
            && r.kind != CandidateKind::Relayed
            && r.socket_addr().is_some_and(|a| {
                !self
                    .agent
                    .remote_candidates()
                    .any(|c| c.kind == CandidateKind::Relayed && c.socket_addr() == Some(a))
            })
        {
            debug!("birthday probing not needed: a direct pair");
            return;
        }
        let ours = Self::edm(self.port_allocation());
        let theirs = Self::edm(self.birthday.remote_allocation);
        let controlling = self.agent.is_controlling();
        // The peer's first signalled server-reflexive candidate (IPv4): the easy side's
        // address, or the hard side's public IP.
        let peer_srflx = self
            .agent
            .remote_candidates()
            .filter(|c| c.kind == CandidateKind::ServerReflexive)
            .filter_map(Candidate::socket_addr)
            .find(SocketAddr::is_ipv4);
        let Some(peer_srflx) = peer_srflx else {
            debug!("birthday probing: the peer has no server-reflexive candidate");
            return;
        };
        if ours && (!theirs || controlling) {
            debug!(target = %peer_srflx, "birthday probing: the hard side, asking for sockets");
            let n = self.config.birthday.socket_count();
            self.birthday.state = BirthdayState::WantSockets(BirthdayRole::Hard {
                sockets: Vec::new(),
                target: peer_srflx,
            });
            self.events.push_back(PeerEvent::BirthdaySockets(n));
        } else if theirs {
            // Our first server-reflexive candidate (IPv4) and its base: the address the
            // hard side probes.
            let base = self
                .agent
                .local_candidates()
                .filter(|c| c.kind == CandidateKind::ServerReflexive)
                .filter(|c| c.socket_addr().is_some_and(|a| a.is_ipv4()))
                .find_map(|c| match c.related {
                    Some((crate::ice::CandidateAddress::Ip(ip), port)) => {
                        Some(SocketAddr::new(ip, port))
                    }
                    _ => None,
                })
                .filter(|b| self.bases.contains(b));
            let Some(base) = base else {
                debug!("birthday probing: no server-reflexive candidate of ours");
                return;
            };
            debug!(peer = %peer_srflx.ip(), "birthday probing: the easy side");
            self.start_birthday(
                now,
                BirthdayRole::Easy {
                    base,
                    peer_ip: peer_srflx.ip(),
                },
            );
        }
    }

    /// Hands the prober's events on; a pair found becomes an ICE candidate pair.
    fn drain_birthday(&mut self) {
        let BirthdayState::Running(p) = &mut self.birthday.state else {
            return;
        };
        let mut found = Vec::new();
        let hard = matches!(p.role(), BirthdayRole::Hard { .. });
        while let Some(ev) = p.poll_event() {
            if let BirthdayEvent::Found { local, remote, .. } = &ev {
                found.push((*local, *remote));
            }
            self.events.push_back(PeerEvent::Birthday(ev));
        }
        for (local, remote) in found {
            if hard {
                // The probe socket is a base from now on, with a host candidate that is
                // not signalled (the peer learns it as peer-reflexive from our checks),
                // ranked below the signalled ones.
                if !self.bases.contains(&local) {
                    self.bases.push(local);
                }
                let c = Candidate::new(
                    CandidateKind::Host,
                    CandidateTransport::Udp,
                    local,
                    local.ip(),
                    None,
                    1,
                );
                self.agent.add_local_candidate(c, local);
            } else {
                // The hard side's port that answered: a peer-reflexive candidate.
                let c = Candidate::new(
                    CandidateKind::PeerReflexive,
                    CandidateTransport::Udp,
                    remote,
                    remote.ip(),
                    None,
                    65535,
                );
                self.agent.add_remote_candidate(c);
            }
        }
    }

    /// The base to reach `to` from: the first of its family, else the primary.
    fn base_for(&self, to: SocketAddr) -> SocketAddr {
        self.bases
            .iter()
            .copied()
            .find(|b| b.is_ipv4() == to.is_ipv4())
            .unwrap_or(self.local)
    }

    /// The local addresses the machine uses as bases (UDP).
    pub fn bases(&self) -> &[SocketAddr] {
        &self.bases
    }

    /// Whether ICE-TCP waits for the driver's TCP bases ([`Peer::tcp_bases`]).
    pub fn wants_tcp_bases(&self) -> bool {
        self.tcp_pending
    }

    /// Whether `addr` is one of the STUN servers: a TCP connection to it carries STUN
    /// messages as they are (RFC 8489 §6.2.2), not RFC 4571 frames as ICE-TCP does.
    pub fn is_stun_server(&self, addr: SocketAddr) -> bool {
        self.config.stun_servers.contains(&addr)
    }

    /// The ICE-TCP bases the driver bound (see [`PeerConfig::ice_tcp`]): `passive`
    /// listening sockets (each a passive host candidate, and its IP an active one whose
    /// base is that IP with port 0: the driver connects from an ephemeral port and keys
    /// the connection by that base and the peer's address) and `so` ports (each a
    /// simultaneous-open host candidate, and a server-reflexive one from a Binding
    /// request over TCP to each STUN server of its family, sent from that port). Either
    /// may be empty (nothing could be bound); the first call ends gathering's wait for
    /// them, later ones are ignored — until [`Peer::network_changed`], after which the
    /// driver hands over the bases of the new network the same way (those of addresses
    /// that stayed included: their candidates are kept, their mappings asked again).
    ///
    /// Transmits for these bases carry [`crate::Protocol::Tcp`]; what arrives on their
    /// connections comes back through [`Peer::handle_input`] with that protocol, the
    /// peer's address as the source and the base as the destination, one message (an
    /// RFC 4571 frame's contents, or a STUN server's message) at a time.
    pub fn tcp_bases(&mut self, now: Instant, passive: &[SocketAddr], so: &[SocketAddr]) {
        if !self.tcp_pending {
            return;
        }
        self.tcp_pending = false;
        // Other preference (RFC 6544 §4.2): the bases in the order given, first best.
        let rank = |i: usize| 0x1FFFu16.saturating_sub(u16::try_from(i).unwrap_or(255) * 32);
        for (i, base) in passive.iter().copied().enumerate() {
            let active_base = SocketAddr::new(base.ip(), 0);
            if !self.config.no_host {
                let c = Candidate::tcp(
                    CandidateKind::Host,
                    TcpType::Passive,
                    base,
                    base.ip(),
                    None,
                    rank(i),
                );
                if !self.tcp_bases.contains(&base) {
                    self.tcp_bases.push(base);
                }
                self.add_local(c, base);
            }
            // An active candidate shows the host's IP too (port 9): not with `no_host`.
            if !self.config.no_host {
                let c = Candidate::tcp(
                    CandidateKind::Host,
                    TcpType::Active,
                    active_base,
                    base.ip(),
                    None,
                    rank(i),
                );
                if !self.tcp_bases.contains(&active_base) {
                    self.tcp_bases.push(active_base);
                }
                self.add_local(c, active_base);
            }
        }
        for (i, base) in so.iter().copied().enumerate() {
            if !self.tcp_bases.contains(&base) {
                self.tcp_bases.push(base);
            }
            if !self.config.no_host {
                let c = Candidate::tcp(
                    CandidateKind::Host,
                    TcpType::SimultaneousOpen,
                    base,
                    base.ip(),
                    None,
                    rank(i),
                );
                self.add_local(c, base);
            }
            for server in self.config.stun_servers.clone() {
                if base.is_ipv4() != server.is_ipv4() {
                    continue;
                }
                let req = Request::new(crate::Protocol::Tcp, base, server, Method::BINDING);
                match self.stun.start(now, req, |_| Ok(())) {
                    Ok(id) => {
                        self.srflx_pending.push((id, base));
                        self.tcp_stun.push((id, base, server));
                    }
                    Err(e) => debug!(error = %e, "cannot ask a STUN server over TCP"),
                }
            }
        }
        self.check_gathering();
    }

    /// The driver could not connect from the TCP base `base` to `remote` (or the
    /// connection ended): a Binding request to that STUN server over it is abandoned at
    /// once, so that gathering does not wait the reliable-transport timeout (RFC 8489
    /// §6.2.2: 39.5 s) for an answer that cannot come. Anything else is ignored.
    pub fn tcp_connection_failed(&mut self, base: SocketAddr, remote: SocketAddr) {
        let failed =
            |(_, b, s): &(TransactionId, SocketAddr, SocketAddr)| *b == base && *s == remote;
        for (id, _, _) in self.tcp_stun.iter().filter(|t| failed(t)) {
            self.stun.cancel(*id);
            self.srflx_pending.retain(|(p, _)| p != id);
        }
        self.tcp_stun.retain(|t| !failed(t));
        self.check_gathering();
    }

    /// Whether `base` is one of the ICE-TCP bases.
    fn is_tcp_base(&self, base: SocketAddr) -> bool {
        self.tcp_bases.contains(&base)
    }

    /// Our ICE credentials.
    pub fn local_credentials(&self) -> &IceCredentials {
        self.agent.local_credentials()
    }

    /// The agent, for inspection.
    pub fn agent(&self) -> &IceAgent {
        &self.agent
    }

    /// The peer's credentials.
    pub fn set_remote_credentials(&mut self, creds: IceCredentials) {
        self.agent.set_remote_credentials(creds);
        self.birthday_ready();
    }

    /// A remote candidate (from the description, or trickled): permitted on every relay.
    pub fn add_remote_candidate(&mut self, now: Instant, c: Candidate) {
        if let Some(a) = c.socket_addr() {
            self.permit(now, a);
            self.pcp_peer_remote(&c, a);
        }
        self.agent.add_remote_candidate(c);
    }

    /// The peer's description says `a=ice-lite`: this agent controls and nominates
    /// ([`IceAgent::set_remote_lite`]).
    pub fn set_remote_lite(&mut self, lite: bool) {
        self.agent.set_remote_lite(lite);
    }

    /// Deletes every TURN allocation (a Refresh with lifetime 0, RFC 8656 §7): when the
    /// connection closes, so that the relayed addresses are freed at once rather than
    /// when their lifetimes run out. The driver keeps running the machine until
    /// [`relays_done`](Self::relays_done), within a bound of its own.
    pub fn deallocate(&mut self, now: Instant) {
        self.deallocating = true;
        for r in &mut self.relays {
            if !r.done {
                r.alloc.deallocate(now);
            }
        }
        self.drain_relays(now);
    }

    /// Whether no allocation is left to delete (each deleted, lost, never made, or over a
    /// stream that closed).
    pub fn relays_done(&self) -> bool {
        self.relays.iter().all(|r| r.done || r.alloc.is_done())
    }

    /// Whether the peer follows renomination ([`IceAgent::set_remote_renomination`]).
    pub fn set_remote_renomination(&mut self, follows: bool) {
        self.agent.set_remote_renomination(follows);
    }

    /// The peer's `a=ice-pacing` in milliseconds ([`IceAgent::set_remote_pacing`]).
    pub fn set_remote_pacing(&mut self, ms: u32) {
        self.agent.set_remote_pacing(ms);
    }

    /// Our `a=ice-pacing` in milliseconds: the Ta we offer ([`IceConfig::ta`]).
    pub fn pacing_ms(&self) -> u32 {
        u32::try_from(self.agent.offered_ta().as_millis()).unwrap_or(u32::MAX)
    }

    /// An ICE restart (RFC 8445 §9), when the network changed or the path was lost: new
    /// local credentials (returned, for the new description), the peer's candidates
    /// forgotten; our candidates come out again as [`PeerEvent::Candidate`]s, then
    /// [`PeerEvent::GatheringComplete`] once gathering is over, to go with the new
    /// credentials. The old path carries data (both ways) until a new pair is selected.
    /// The peer restarts too when it sees the new credentials (its
    /// [`Peer::set_remote_credentials`] with a new ufrag: the application calls its
    /// `restart` then, as for any new description).
    ///
    /// A restart while our path is lost or being probed (the peer's answer to its own
    /// [`PeerEvent::PathLost`] often comes first) also asks the STUN servers again: our
    /// NAT may have mapped us anew (a reboot, a rebinding), and without the new
    /// server-reflexive address neither side reaches the other through address-and-port
    /// dependent filters. [`PeerEvent::GatheringComplete`] then waits for their answers.
    pub fn restart(&mut self) -> IceCredentials {
        let lost =
            self.agent.probing_since().is_some() || self.agent.state() != IceState::Connected;
        let regather = lost
            && self.gathering_done
            && !self.config.relay_only
            && !self.config.ice.lite
            && !self.config.stun_servers.is_empty();
        let creds = if regather {
            debug!("restart with the path lost: asking the STUN servers again");
            self.agent.restart_with_locals(|_, _| true)
        } else {
            self.agent.restart()
        };
        let again: Vec<Candidate> = self.agent.local_candidates().cloned().collect();
        for c in again {
            self.events.push_back(PeerEvent::Candidate(c));
        }
        if regather {
            self.gathering_done = false;
            self.srflx_order.clear();
            self.gathered.clear();
            let now = self.now;
            self.ask_stun_servers(now);
            self.check_gathering();
        } else if self.gathering_done {
            self.events.push_back(PeerEvent::GatheringComplete);
        }
        creds
    }

    /// The host's network changed (an address came or went, the default route moved: a
    /// switch between Wi-Fi and cellular, a new DHCP lease, a VPN): `bases` are the
    /// addresses the socket now answers on (the first the primary), as at creation.
    ///
    /// What it does: an ICE restart (RFC 8445 §9; the new credentials are returned, for
    /// the new description the peer must get), the host candidates of bases that are gone
    /// forgotten and new ones offered, server-reflexive candidates gathered again from
    /// every base, and the UDP TURN allocations made again (the old ones deleted: a
    /// changed network usually means a new public address, whose 5-tuple the old
    /// allocation does not know). Our candidates come out again as
    /// [`PeerEvent::Candidate`]s, then [`PeerEvent::GatheringComplete`]. The old path
    /// carries data until a new pair is selected, when it still works. ICE-TCP
    /// candidates of addresses that are gone are forgotten. Allocations over TCP or TLS
    /// streams are dropped with their connections, and [`Peer::turn_streams`] lists their
    /// servers again for the driver to connect from the new network; port mappings are
    /// the driver's to redo; birthday probing is not redone.
    pub fn network_changed(&mut self, now: Instant, bases: &[SocketAddr]) -> IceCredentials {
        self.now = self.now.max(now);
        let mut new = bases.to_vec();
        new.dedup();
        if new.is_empty() {
            new.push(self.local);
        }
        let ips: Vec<_> = new.iter().map(SocketAddr::ip).collect();
        // Old allocations: deleted (a Refresh with lifetime 0 from a base that still
        // exists), then forgotten, so that their answers are not mistaken for the new
        // ones' (same server, maybe the same base).
        let mut dormant = Vec::new();
        let mut moved = Vec::new();
        for mut r in std::mem::take(&mut self.relays) {
            if r.proto == crate::Protocol::Tcp {
                // Its connection came from the old network: the driver closes it (the
                // server deletes the allocation with it, RFC 8656 §3.1) and connects
                // again, from the new one ([`Peer::turn_streams`]).
                continue;
            }
            if r.done || r.alloc.is_done() {
                continue;
            }
            // RFC 8016: an allocation with a mobility ticket moves to the new network
            // (a Refresh with the ticket from the new base) and keeps its relayed
            // address, which the peer already has; if the move fails it is lost and made
            // again ([`AllocationEvent::Lost`]).
            let server_v4 = r.alloc.server().is_ipv4();
            if let Some(to) = new.iter().copied().find(|b| b.is_ipv4() == server_v4) {
                if r.relayed.is_some() && r.alloc.move_to(now, to) {
                    debug!(server = %r.alloc.server(), %to, "allocation moving (RFC 8016)");
                    moved.push(r);
                    continue;
                }
            }
            if new.contains(&r.alloc.local()) {
                r.alloc.deallocate(now);
                while let Some(t) = r.alloc.poll_transmit() {
                    self.transmits.push_back(t);
                }
            } else if r.relayed.is_some() {
                dormant.push(r);
            }
        }
        // Those whose base is back: still alive (as far as their timers tell), taken up
        // again; the others wait, a few per server at most.
        let mut revived = Vec::new();
        for mut r in std::mem::take(&mut self.dormant) {
            if new.contains(&r.alloc.local()) {
                r.alloc.handle_timeout(now);
                let mut lost = r.alloc.is_done();
                while let Some(ev) = r.alloc.poll_event() {
                    lost |= matches!(ev, AllocationEvent::Lost(_));
                }
                if !lost {
                    revived.push(r);
                }
            } else {
                dormant.push(r);
            }
        }
        let cap = 4 * self.config.turn_servers.len().max(1);
        if dormant.len() > cap {
            dormant.drain(..dormant.len() - cap);
        }
        self.dormant = dormant;
        let moved_relayed: Vec<SocketAddr> = moved.iter().filter_map(|r| r.relayed).collect();
        let moved_servers: Vec<SocketAddr> = moved.iter().map(|r| r.alloc.server()).collect();
        self.relays = moved;
        self.streams_pending.clear();
        let tcp_bases = &mut self.tcp_bases;
        tcp_bases.retain(|b| ips.contains(&b.ip()));
        let tcp_kept = tcp_bases.clone();
        let creds = self.agent.restart_with_locals(|c, base| match c.transport {
            // Host candidates of bases that stay; the rest is gathered again.
            CandidateTransport::Udp => {
                (c.kind == CandidateKind::Host && new.contains(&base))
                    || moved_relayed.contains(&base)
            }
            CandidateTransport::Tcp => c.kind == CandidateKind::Host && tcp_kept.contains(&base),
        });
        for (id, _) in self.srflx_pending.drain(..) {
            self.stun.cancel(id);
        }
        self.srflx_order.clear();
        self.gathered.clear();
        let old = std::mem::replace(&mut self.bases, new.clone());
        self.local = new[0];
        self.gathering_done = false;
        // The driver maps the socket through the new gateway and says so, as at start,
        // and hands over the ICE-TCP bases of the new network (`tcp_bases`).
        let gathers = !self.config.relay_only && !self.config.ice.lite;
        self.portmap_pending = self.config.port_mapping && gathers;
        self.tcp_pending = self.config.ice_tcp && gathers;
        // Every local candidate again (the restart's description carries them all).
        let again: Vec<Candidate> = self.agent.local_candidates().cloned().collect();
        for c in again {
            self.events.push_back(PeerEvent::Candidate(c));
        }
        if !self.config.relay_only && !self.config.no_host {
            for (i, base) in new.iter().copied().enumerate() {
                if old.contains(&base) {
                    continue;
                }
                self.add_local(host_candidate(i, base), base);
            }
        }
        let lite = self.config.ice.lite;
        if !self.config.relay_only && !lite {
            self.ask_stun_servers(now);
        }
        if !self.config.no_relay && !lite {
            self.network_changes = self.network_changes.wrapping_add(1);
            let mut servers: Vec<SocketAddr> = revived.iter().map(|r| r.alloc.server()).collect();
            servers.extend(moved_servers);
            for r in revived {
                debug!(server = %r.alloc.server(), "allocation from a base that came back taken up again");
                if let Some(relayed) = r.relayed {
                    let c = Self::relayed_candidate(&r, relayed);
                    self.add_local(c, relayed);
                }
                self.relays.push(r);
            }
            self.allocate_udp_relays_except(now, &servers);
            for (i, spec) in self.config.turn_servers.clone().into_iter().enumerate() {
                if spec.transport.is_stream() {
                    let mut s = self.seed;
                    s[0] ^= 0xA0 ^ (i as u8);
                    s[2] = s[2].wrapping_add(self.network_changes);
                    self.streams_pending.push((spec, s));
                }
            }
        }
        self.check_gathering();
        creds
    }

    /// The peer sent `a=end-of-candidates`.
    pub fn end_of_remote_candidates(&mut self) {
        self.agent.end_of_remote_candidates();
        self.birthday.remote_end = true;
        self.birthday_ready();
    }

    fn permit(&mut self, now: Instant, peer: SocketAddr) {
        for r in &mut self.relays {
            if r.alloc.is_allocated() {
                let _ = r.alloc.create_permission(now, peer.ip());
            }
        }
    }

    fn add_local(&mut self, c: Candidate, base: SocketAddr) {
        if self.agent.add_local_candidate(c.clone(), base) {
            self.events.push_back(PeerEvent::Candidate(c));
        }
    }

    /// The TURN servers the driver must open a TCP or TLS connection to, with what it
    /// needs to know to open it.
    pub fn turn_streams(&self) -> impl Iterator<Item = &TurnServerSpec> {
        self.streams_pending.iter().map(|(spec, _)| spec)
    }

    /// The driver's connection to the TURN server `server` (over TCP or TLS, as its spec
    /// says) is up, from `local`: the allocation starts on it. Its messages come out of
    /// [`Peer::poll_transmit`] with protocol TCP and `server` as destination (framed as
    /// RFC 8656 §12.5 says: the driver writes them as they are); what the driver reads
    /// from the stream goes into [`Peer::handle_input`] one message at a time (a
    /// [`crate::turn::StreamFramer`] cuts them), with protocol TCP, `server` as source
    /// and `local` as destination.
    pub fn turn_stream_connected(&mut self, now: Instant, server: SocketAddr, local: SocketAddr) {
        let Some(i) = self
            .streams_pending
            .iter()
            .position(|(s, _)| s.server == server)
        else {
            debug!(%server, "a TURN connection nobody waits for: ignored");
            return;
        };
        let (spec, seed) = self.streams_pending.remove(i);
        let cfg = AllocationConfig::new(server, local, spec.transport, spec.credentials);
        self.relays.push(Relay {
            alloc: self.allocation(now, cfg, seed),
            proto: crate::Protocol::Tcp,
            relayed: None,
            done: false,
        });
    }

    /// The driver could not connect to the TURN server `server` over TCP or TLS, or the
    /// connection ended: its relay is gone (reported as [`PeerEvent::RelayFailed`] when
    /// it had not been allocated yet; a relayed pair on it loses consent).
    pub fn turn_stream_closed(&mut self, server: SocketAddr, error: TurnError) {
        if let Some(i) = self
            .streams_pending
            .iter()
            .position(|(s, _)| s.server == server)
        {
            self.streams_pending.remove(i);
            self.events.push_back(PeerEvent::RelayFailed(error));
        } else if let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.proto == crate::Protocol::Tcp && r.alloc.server() == server && !r.done)
        {
            debug!(%server, %error, "TURN connection lost");
            if r.relayed.is_none() {
                self.events.push_back(PeerEvent::RelayFailed(error));
            }
            r.done = true;
        }
        self.check_gathering();
    }

    /// The gateway mapped the socket: `external` is its address outside. Offered as a
    /// server-reflexive candidate with a foundation of its own (RFC 8445 §5.1.1.3: no
    /// STUN server found it), unless gathering is already over (a mapping that comes
    /// after `a=end-of-candidates` would need a restart to be offered: dropped).
    pub fn port_mapped(&mut self, external: SocketAddr) {
        if self.gathering_done && !self.portmap_pending {
            debug!(%external, "port mapping after the end of gathering: not offered");
            return;
        }
        self.portmap_pending = false;
        let base = self.base_for(external);
        if !self.config.relay_only && !self.bases.contains(&external) {
            let mut c = Candidate::new(
                CandidateKind::ServerReflexive,
                CandidateTransport::Udp,
                external,
                base.ip(),
                None,
                65535,
            );
            if c.foundation.len() < 32 {
                c.foundation.push('m');
            }
            c.related = Some((crate::ice::CandidateAddress::Ip(base.ip()), base.port()));
            let local = base;
            self.add_local(c, local);
        }
        self.check_gathering();
    }

    // --- PCP PEER (issue 13): begin ---
    fn pcp_peer_remote(&mut self, c: &Candidate, a: SocketAddr) {
        if self.config.port_mapping
            && !self.config.relay_only
            && c.transport == CandidateTransport::Udp
            && matches!(c.kind, CandidateKind::Host | CandidateKind::ServerReflexive)
        {
            self.events.push_back(PeerEvent::PcpPeerRemote(a));
        }
    }

    /// The gateway granted a PCP PEER mapping of the socket (RFC 6887 §12): `external`
    /// is its address outside toward one of the peer's candidates. Offered (trickled) as
    /// a server-reflexive candidate based on the socket, ranked like the port mapping's
    /// ([`Peer::port_mapped`]) — also after the end of gathering, since PEER can only be
    /// asked once the peer's candidates are known. Nothing when it is the address of a
    /// candidate already offered.
    pub fn pcp_peer_mapped(&mut self, external: SocketAddr) {
        if self.config.relay_only || self.bases.contains(&external) {
            return;
        }
        let base = self.base_for(external);
        let mut c = Candidate::new(
            CandidateKind::ServerReflexive,
            CandidateTransport::Udp,
            external,
            base.ip(),
            None,
            65535,
        );
        if c.foundation.len() < 32 {
            c.foundation.push('m');
        }
        c.related = Some((crate::ice::CandidateAddress::Ip(base.ip()), base.port()));
        let before = self.events.len();
        self.add_local(c, base);
        if self.events.len() > before {
            debug!(%external, "PCP PEER mapping offered as a candidate");
        }
    }
    // --- PCP PEER (issue 13): end ---

    /// The gateway will not map the socket (no gateway, no protocol answered, or the
    /// driver's wait is over): gathering goes on without it.
    pub fn port_mapping_done(&mut self) {
        self.portmap_pending = false;
        self.check_gathering();
    }

    fn check_gathering(&mut self) {
        if !self.gathering_done
            && self.srflx_pending.is_empty()
            && self.streams_pending.is_empty()
            && !self.portmap_pending
            && !self.tcp_pending
            && self.relays.iter().all(|r| r.relayed.is_some() || r.done)
        {
            self.gathering_done = true;
            self.agent.end_of_local_candidates();
            self.events.push_back(PeerEvent::GatheringComplete);
            self.birthday_ready();
        }
    }

    /// Offers a datagram received on the socket. See the module docs for the order.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> PeerInput {
        self.now = self.now.max(now);
        // 1. Server-reflexive gathering, while a request is out: a STUN server may also
        // be a TURN server (one host for `stun:` and `turn:`), whose Binding response
        // comes from the allocation's server address; the client claims only responses to
        // its own transactions, so this costs nothing once gathering is done.
        if !self.srflx_pending.is_empty() && self.stun.handle_input(now, rx) {
            self.drain_stun();
            return PeerInput::Consumed;
        }
        // 2. TURN.
        for i in 0..self.relays.len() {
            if rx.source != self.relays[i].alloc.server() || rx.proto != self.relays[i].proto {
                continue;
            }
            let relayed = self.relays[i].relayed;
            let out = match self.relays[i].alloc.handle_input(now, rx) {
                Input::NotTurn => continue,
                Input::Consumed => PeerInput::Consumed,
                Input::Data { peer, data, offset } => {
                    // Offsets, not borrows: where the data sits in the datagram.
                    let range = offset..offset + data.len();
                    match relayed {
                        Some(relayed) => {
                            // UDP between the relay and the peer, whatever carries
                            // it between the relay and us.
                            let inner = Received {
                                proto: crate::Protocol::Udp,
                                source: peer,
                                destination: relayed,
                                contents: data,
                            };
                            match self.agent.handle_input(now, inner) {
                                IceInput::Consumed => PeerInput::Consumed,
                                IceInput::NotIce => {
                                    self.data_if_peer(now, data, (relayed, peer), range)
                                }
                            }
                        }
                        None => {
                            debug!(%peer, "relayed data before the relay was reported: dropped");
                            PeerInput::Consumed
                        }
                    }
                }
            };
            self.drain_relays(now);
            return out;
        }
        // 3. Server-reflexive gathering (a late or repeated response).
        if self.stun.handle_input(now, rx) {
            self.drain_stun();
            return PeerInput::Consumed;
        }
        // 4. Birthday probes and their answers (tagged, authenticated).
        if let BirthdayState::Running(p) = &mut self.birthday.state
            && p.handle_input(now, rx)
        {
            self.drain_birthday();
            return PeerInput::Consumed;
        }
        // 5. ICE, 6. application data, from the peer only.
        match self.agent.handle_input(now, rx) {
            IceInput::Consumed => PeerInput::Consumed,
            IceInput::NotIce => self.data_if_peer(
                now,
                rx.contents,
                (rx.destination, rx.source),
                0..rx.contents.len(),
            ),
        }
    }

    /// Application data, when it comes from the peer: from one of its candidates (signalled,
    /// or learned from an authenticated check), and not a stray STUN message (see
    /// [`leftover`]). Anything else is dropped: whoever can reach the socket must not be
    /// able to write into the application's stream.
    ///
    /// `on` is (our base, the peer's address): the pair it came on, for the agent.
    fn data_if_peer(
        &mut self,
        now: Instant,
        data: &[u8],
        on: (SocketAddr, SocketAddr),
        range: Range<usize>,
    ) -> PeerInput {
        match leftover(data, on.1, range) {
            PeerInput::Data { from, range } if self.agent.is_remote(from) => {
                self.agent.data_received(now, on.0, from);
                PeerInput::Data { from, range }
            }
            PeerInput::Data { from, .. } => {
                debug!(%from, "datagram from outside the peer's candidates dropped");
                PeerInput::Consumed
            }
            other => other,
        }
    }

    fn drain_stun(&mut self) {
        while let Some(ev) = self.stun.poll_event() {
            let id = match &ev {
                TransactionEvent::Response(r) => r.id,
                TransactionEvent::TimedOut { id, .. } => *id,
            };
            let Some(base) = self
                .srflx_pending
                .iter()
                .find(|(p, _)| *p == id)
                .map(|(_, b)| *b)
            else {
                continue;
            };
            self.srflx_pending.retain(|(p, _)| *p != id);
            if let TransactionEvent::Response(r) = ev {
                if let (Some(order), Ok(Some(m))) = (
                    self.srflx_order
                        .iter()
                        .find(|(t, _)| *t == id)
                        .map(|(_, o)| *o),
                    r.message().get::<XorMappedAddress>(),
                ) {
                    self.gathered.push((order, base, m.0));
                }
                let mapped = r
                    .message()
                    .get::<XorMappedAddress>()
                    .ok()
                    .flatten()
                    .map(|m| m.0);
                if self.is_tcp_base(base) {
                    // An so base's mapping (RFC 6544 §5.2): what the peer connects to at
                    // the same moment we connect to it.
                    if let Some(m) = mapped.filter(|m| *m != base) {
                        let mut c = Candidate::tcp(
                            CandidateKind::ServerReflexive,
                            TcpType::SimultaneousOpen,
                            m,
                            base.ip(),
                            Some(r.source.ip()),
                            0x1FFF,
                        );
                        c.related =
                            Some((crate::ice::CandidateAddress::Ip(base.ip()), base.port()));
                        self.add_local(c, base);
                    }
                } else if let Some(m) = mapped.filter(|m| !self.bases.contains(m)) {
                    let mut c = Candidate::new(
                        CandidateKind::ServerReflexive,
                        CandidateTransport::Udp,
                        m,
                        base.ip(),
                        Some(r.source.ip()),
                        65535,
                    );
                    c.related = Some((crate::ice::CandidateAddress::Ip(base.ip()), base.port()));
                    self.add_local(c, base);
                }
            }
        }
        self.check_gathering();
    }

    fn drain_relays(&mut self, now: Instant) {
        let mut lost = Vec::new();
        for i in 0..self.relays.len() {
            while let Some(ev) = self.relays[i].alloc.poll_event() {
                match ev {
                    AllocationEvent::Allocated {
                        relayed, mapped, ..
                    } => {
                        if let (Some(m), crate::Protocol::Udp) = (mapped, self.relays[i].proto) {
                            // After every STUN request: TURN allocations start after them.
                            let order = self.srflx_order.len() + i;
                            let base = self.relays[i].alloc.local();
                            self.gathered.push((order, base, m));
                        }
                        let server = self.relays[i].alloc.server();
                        if self.relays[i].alloc.mobility_refused()
                            && !self.no_mobility.contains(&server)
                        {
                            self.no_mobility.push(server);
                        }
                        let Some(r) = relayed.first().copied() else {
                            continue;
                        };
                        self.relays[i].relayed = Some(r);
                        let c = Self::relayed_candidate(&self.relays[i], r);
                        self.add_local(c, r);
                        // Permissions for what is already known.
                        for a in self.remote_addrs() {
                            let _ = self.relays[i].alloc.create_permission(now, a.ip());
                        }
                    }
                    AllocationEvent::Moved { local, .. } => {
                        debug!(%local, "allocation moved to the new network (RFC 8016)");
                    }
                    AllocationEvent::Lost(e) => {
                        debug!(error = %e, "relay lost");
                        if self.relays[i].relayed.is_none() {
                            self.events.push_back(PeerEvent::RelayFailed(e));
                        }
                        self.relays[i].done = true;
                        if let Some(relayed) = self.relays[i].relayed {
                            // Lost after it worked (the server restarted: its liveness
                            // check got 437; or its lifetime ran out): its pairs fail
                            // now, and an allocation is made again.
                            if !self.deallocating
                                && self.relays[i].proto == crate::Protocol::Udp
                                && self.reallocations < MAX_REALLOCATIONS
                            {
                                // Not failed while the new one is on its way.
                                self.agent.gathering_resumed();
                                self.regathering = true;
                                lost.push(i);
                            }
                            self.agent.local_candidate_lost(relayed);
                        }
                    }
                    _ => {}
                }
            }
        }
        for i in lost {
            self.reallocate(now, i);
        }
        if self.regathering && self.relays.iter().all(|r| r.relayed.is_some() || r.done) {
            self.regathering = false;
            self.agent.end_of_local_candidates();
        }
        self.check_gathering();
    }

    /// A new allocation in place of relay `i`, lost after it worked: on the same server,
    /// from the same base, at most [`MAX_REALLOCATIONS`] times per connection (a server
    /// that keeps losing them is not worth more). Its relayed candidate joins the agent
    /// as a new local candidate and is trickled; where the peer's agent does not take
    /// candidates after `a=end-of-candidates`, it learns the address as peer-reflexive
    /// from our checks (RFC 8445 §7.3.1.3), so no ICE restart is needed.
    fn reallocate(&mut self, now: Instant, i: usize) {
        self.reallocations += 1;
        let old = &self.relays[i].alloc;
        let (server, from) = (old.server(), old.local());
        let Some(spec) = self
            .config
            .turn_servers
            .iter()
            .find(|t| t.server == server && !t.transport.is_stream())
            .cloned()
        else {
            return;
        };
        let mut seed = self.seed;
        seed[0] ^= 0x5C;
        seed[3] = seed[3].wrapping_add(self.reallocations);
        let cfg = AllocationConfig::new(server, from, TurnTransport::Udp, spec.credentials);
        debug!(%server, "allocating again after the relay was lost");
        // In its place: the lost one would take the new one's answers (same server,
        // same base) if it stayed before it.
        self.relays[i] = Relay {
            alloc: self.allocation(now, cfg, seed),
            proto: crate::Protocol::Udp,
            relayed: None,
            done: false,
        };
    }

    /// The relayed candidate of `relay`'s relayed address `r`.
    fn relayed_candidate(relay: &Relay, r: SocketAddr) -> Candidate {
        let server = relay.alloc.server();
        let stream = relay.proto == crate::Protocol::Tcp;
        // RFC 8445 §5.1.2.2: a relay reached over UDP before one over a stream
        // (head-of-line blocking); RFC 8445 §5.1.1.3: the transport to the server is part
        // of the foundation.
        let local_pref = if stream { 65535 - 1024 } else { 65535 };
        let mut c = Candidate::new(
            CandidateKind::Relayed,
            CandidateTransport::Udp,
            r,
            r.ip(),
            Some(server.ip()),
            local_pref,
        );
        if stream && c.foundation.len() < 32 {
            c.foundation.push('t');
        }
        let from = relay.alloc.local();
        c.related = Some((crate::ice::CandidateAddress::Ip(from.ip()), from.port()));
        c
    }

    fn remote_addrs(&self) -> Vec<SocketAddr> {
        // Peer-reflexive candidates are learned from checks that arrived, so the relay
        // already let them in or they came directly; only signalled ones need permits.
        self.agent.remote_addresses()
    }

    /// Retransmissions, pacing, refreshes, consent.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.birthday_decision_at().is_some_and(|t| t <= now) {
            self.decide_birthday(now);
        }
        if let BirthdayState::Running(p) = &mut self.birthday.state {
            p.handle_timeout(now);
            self.drain_birthday();
        }
        self.stun.handle_timeout(now);
        self.drain_stun();
        for r in self.relays.iter_mut().filter(|r| !r.closed()) {
            r.alloc.handle_timeout(now);
        }
        self.drain_relays(now);
        self.agent.handle_timeout(now);
        self.check_resumed(now);
    }

    /// When to call [`Peer::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let birthday = match &self.birthday.state {
            BirthdayState::Running(p) => p.poll_timeout(),
            _ => self.birthday_decision_at(),
        };
        std::iter::once(self.agent.poll_timeout())
            .chain(std::iter::once(self.resume_check))
            .chain(std::iter::once(self.stun.poll_timeout()))
            .chain(std::iter::once(birthday))
            .chain(
                self.relays
                    .iter()
                    .filter(|r| !r.closed())
                    .map(|r| r.alloc.poll_timeout()),
            )
            .flatten()
            .min()
    }

    /// The next datagram for the socket.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        if let Some(t) = self.stun.poll_transmit() {
            return Some(t);
        }
        for r in self.relays.iter_mut().filter(|r| !r.closed()) {
            if let Some(t) = r.alloc.poll_transmit() {
                return Some(t);
            }
        }
        if let BirthdayState::Running(p) = &mut self.birthday.state
            && let Some(t) = p.poll_transmit()
        {
            return Some(t);
        }
        // The agent's: through a relay when its source is a relayed address.
        while let Some(t) = self.agent.poll_transmit() {
            // ICE-TCP checks go on their connections (never through a relay).
            if t.proto == crate::Protocol::Tcp || self.bases.contains(&t.source) {
                return Some(t);
            }
            if let Some(out) = self.through_relay(t.source, t.destination, &t.contents) {
                return Some(out);
            }
        }
        None
    }

    fn through_relay(
        &mut self,
        relayed: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> Option<Transmit> {
        let r = self.relays.iter().find(|r| r.relayed == Some(relayed))?;
        // Control traffic: its own buffer, of the size it needs (no buffer kept per peer).
        let mut contents = vec![0u8; data.len() + MAX_FRAMING];
        match r.alloc.encode_to_peer(to, data, &mut contents) {
            Ok(n) => Some(Transmit {
                proto: r.proto,
                source: r.alloc.local(),
                destination: r.alloc.server(),
                contents: {
                    contents.truncate(n);
                    contents
                },
            }),
            Err(e) => {
                debug!(%to, error = %e, "cannot send through the relay yet");
                None
            }
        }
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.agent.poll_event().map(PeerEvent::Ice)
    }

    /// Application data for the peer, on the selected pair: the datagram to send, in a
    /// `Vec` of its own. [`Peer::send_into`] is the same without the allocation.
    pub fn send(&mut self, data: &[u8]) -> Result<Transmit, PeerError> {
        let mut buf = vec![0u8; data.len() + MAX_FRAMING];
        let (proto, source, destination, contents) = match self.send_into(data, &mut buf)? {
            Outgoing::Direct {
                proto,
                source,
                destination,
            } => (proto, source, destination, data.to_vec()),
            Outgoing::Framed {
                proto,
                source,
                destination,
                len,
            } => {
                buf.truncate(len);
                (proto, source, destination, buf)
            }
        };
        Ok(Transmit {
            proto,
            source,
            destination,
            contents,
        })
    }

    /// Application data for the peer, on the selected pair, without allocating: on a
    /// direct pair it says where to send `data` as it is (`buf` untouched); through a relay
    /// it frames `data` into `buf` (which needs [`MAX_FRAMING`] bytes beyond the data) and
    /// says where to send that.
    pub fn send_into(&self, data: &[u8], buf: &mut [u8]) -> Result<Outgoing, PeerError> {
        let (base, to) = self.agent.selected().ok_or(PeerError::NotConnected)?;
        let proto = self.agent.selected_proto().unwrap_or(crate::Protocol::Udp);
        if proto == crate::Protocol::Tcp || self.bases.contains(&base) {
            return Ok(Outgoing::Direct {
                proto,
                source: base,
                destination: to,
            });
        }
        let r = self
            .relays
            .iter()
            .find(|r| r.relayed == Some(base))
            .ok_or(PeerError::NotConnected)?;
        let len = r.alloc.encode_to_peer(to, data, buf)?;
        Ok(Outgoing::Framed {
            proto: r.proto,
            source: r.alloc.local(),
            destination: r.alloc.server(),
            len,
        })
    }

    /// Whether data would go through a relay.
    pub fn is_relayed(&self) -> Option<bool> {
        let tcp = self.agent.selected_proto() == Some(crate::Protocol::Tcp);
        self.agent
            .selected()
            .map(|(base, _)| !tcp && !self.bases.contains(&base))
    }
}

#[cfg(test)]
mod tests;
