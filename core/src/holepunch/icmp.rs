//! ICMP hole punching: the pwnat technique, sans-IO.
//!
//! A server behind a NAT whose clients cannot signal to it (no rendezvous, no relay)
//! announces itself to its own NAT only:
//!
//! 1. The **server** sends ICMP Echo Requests (RFC 792) to [`DEFAULT_TARGET`], an address
//!    nobody answers from. Its NAT creates a mapping for the echo (Linux conntrack keys it
//!    on addresses and the echo identifier) and keeps it while echoes repeat.
//! 2. The **client**, which knows the server's public address, forges the ICMP Time
//!    Exceeded (RFC 792, type 11) that a router on the way to the target would have sent:
//!    it embeds the server's echo as the NAT sent it (source: the server's public address,
//!    destination: the target, the echo identifier). The server's NAT relates the error to
//!    its echo mapping (RFC 5508 §4: ICMP error messages are translated and forwarded for
//!    the mapping their embedded packet belongs to) and forwards it to the server, which
//!    learns the client's address.
//! 3. Both then send UDP to each other; each side's outbound packets open its own NAT's
//!    filter for the other, as in any simultaneous UDP punch.
//!
//! pinhole's embedded echo carries, after the 8-byte echo header, a payload of its own
//! ([`Advert`]): a token that tags the session's UDP packets, and where the server should
//! send: the client's public address when it knows it (from a STUN server; a Linux NAT does
//! not translate an ICMP error that belongs to no mapping of its own, so the outer source
//! of the forged packet can be the client's private address), else its local UDP port
//! (the outer source address is then the best guess). NATs keep that payload: they rewrite
//! the embedded headers and recompute the outer checksum only.
//!
//! UDP packets ([`UdpFrame`]): `HELLO` (repeated until the peer says it hears us, then as
//! keep-alives) and `DATA` (application bytes; an empty `DATA` ends a direction, as in
//! `pinhole connect`). Each side latches onto the source address the peer's packets come
//! from, so a NAT that did not preserve a port is still answered where it listens.
//!
//! The token is not authentication: anyone who can see the packets can forge them, as in
//! pwnat. Run an authenticated protocol over the link for anything that matters.
//!
//! The machine, [`IcmpPunch`], follows the crate's loop (`handle_input`, `handle_timeout`,
//! `poll_transmit`, `poll_timeout`, `poll_event`, time passed in); the driver
//! (`driver::icmp`) owns the raw ICMP socket and the UDP socket.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// The default unreachable address the server's echoes go to: 192.0.2.99, in TEST-NET-1
/// (RFC 5737 §3: documentation only, never routed on the public internet), so the echoes
/// reach nobody and nobody answers them; the NAT's mapping for them is made on the way
/// out all the same. pwnat used 3.3.3.3, which was unallocated then and is a routed
/// (Amazon) address now: echoes to it would reach a real network.
pub const DEFAULT_TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// The default ICMP echo identifier both sides agree on (RFC 792: "an identifier to aid in
/// matching echos and replies"). A NAT that keeps identifiers (Linux without `random`)
/// leaves it as the server chose it, so the client can embed it.
pub const DEFAULT_ECHO_ID: u16 = 0x7068;
/// The default UDP port of the server (and the one the client sends to).
pub const DEFAULT_PORT: u16 = 2222;
/// How often the server repeats its echo. Linux conntrack forgets an ICMP mapping after
/// 30 s (`nf_conntrack_icmp_timeout`); repeating well within keeps it alive and makes the
/// first echo come early.
pub const ECHO_INTERVAL: Duration = Duration::from_secs(2);
/// How often the client repeats its forged Time Exceeded until it hears the server.
pub const FORGE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a side repeats `HELLO` until the peer says it hears it.
pub const HELLO_INTERVAL: Duration = Duration::from_millis(250);
/// Keep-alive `HELLO`s once both sides hear each other: well within the 2 minutes RFC 4787
/// REQ-5 lets a UDP mapping live, and within the 30 s many NATs use.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// The largest identifier sweep rate, forged Time Exceeded messages per second.
pub const MAX_SWEEP_RATE: u32 = 20_000;
/// How often a sweeping client sends its next batch.
pub const SWEEP_TICK: Duration = Duration::from_millis(20);
/// The identifiers a sweep covers: all of them (RFC 792's 16-bit identifier).
pub const SWEEP_IDS: u32 = 1 << 16;
/// The sweep's stride through the identifiers: odd, so coprime with 2^16, so one pass
/// visits every identifier exactly once.
const SWEEP_STRIDE: u16 = 40_503;

/// ICMP type Echo Request (RFC 792).
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP type Echo Reply (RFC 792).
pub const ICMP_ECHO_REPLY: u8 = 0;
/// ICMP type Time Exceeded (RFC 792).
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// IP protocol number of ICMP (RFC 790).
pub const IPPROTO_ICMP: u8 = 1;
/// The length of an ICMP header (type, code, checksum, 4 bytes of rest; RFC 792).
pub const ICMP_HEADER_LEN: usize = 8;
/// The length of an IPv4 header without options (RFC 791 §3.1).
pub const IPV4_HEADER_LEN: usize = 20;
/// The magic that starts [`Advert`].
pub const ADVERT_MAGIC: [u8; 4] = *b"PHIA";
/// The magic that starts every [`UdpFrame`].
pub const UDP_MAGIC: [u8; 4] = *b"PHIU";
/// The version byte of [`Advert`] and [`UdpFrame`].
pub const VERSION: u8 = 1;
/// The largest application payload of one `DATA` frame.
pub const MAX_DATA: usize = 1200;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IcmpError {
    /// The packet is shorter than its headers say.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field has a value this codec does not take.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The ICMP checksum does not verify (RFC 792).
    #[error("bad ICMP checksum")]
    Checksum,
    /// Data can only be sent once the peer is known.
    #[error("no peer yet")]
    NotConnected,
    /// Data larger than [`MAX_DATA`].
    #[error("data of {0} bytes is larger than {MAX_DATA}")]
    TooLarge(usize),
}

/// The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of
/// 16-bit words, an odd last byte padded with zero.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (RFC 791 §3.1), the fields this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Source address.
    pub source: Ipv4Addr,
    /// Destination address.
    pub destination: Ipv4Addr,
    /// Protocol number.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub identification: u16,
    /// Total length of the datagram (header and payload), as the header says.
    pub total_length: u16,
}

impl Ipv4Header {
    /// Parses the header at the start of `buf`; returns it and its length (options
    /// included). The total length may exceed `buf` (an embedded datagram is truncated).
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), IcmpError> {
        if buf.len() < IPV4_HEADER_LEN {
            return Err(IcmpError::Truncated("IPv4 header"));
        }
        if buf[0] >> 4 != 4 {
            return Err(IcmpError::Malformed("IP version"));
        }
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if ihl < IPV4_HEADER_LEN {
            return Err(IcmpError::Malformed("IPv4 header length"));
        }
        if buf.len() < ihl {
            return Err(IcmpError::Truncated("IPv4 options"));
        }
        let total_length = u16::from_be_bytes([buf[2], buf[3]]);
        if usize::from(total_length) < ihl {
            return Err(IcmpError::Malformed("IPv4 total length"));
        }
        Ok((
            Ipv4Header {
                source: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
                destination: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
                protocol: buf[9],
                ttl: buf[8],
                identification: u16::from_be_bytes([buf[4], buf[5]]),
                total_length,
            },
            ihl,
        ))
    }

    /// The 20-byte header (no options, no fragmentation, "don't fragment" clear) with its
    /// checksum.
    pub fn emit(&self) -> [u8; IPV4_HEADER_LEN] {
        let mut h = [0u8; IPV4_HEADER_LEN];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&self.total_length.to_be_bytes());
        h[4..6].copy_from_slice(&self.identification.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[12..16].copy_from_slice(&self.source.octets());
        h[16..20].copy_from_slice(&self.destination.octets());
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }
}

/// An ICMP Echo Request or Reply (RFC 792).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echo<'a> {
    /// Request (true) or reply.
    pub request: bool,
    /// Identifier.
    pub id: u16,
    /// Sequence number.
    pub seq: u16,
    /// Data.
    pub data: &'a [u8],
}

impl<'a> Echo<'a> {
    /// Parses an ICMP echo message (`buf` starts at the ICMP type), verifying its checksum.
    pub fn parse(buf: &'a [u8]) -> Result<Self, IcmpError> {
        if buf.len() < ICMP_HEADER_LEN {
            return Err(IcmpError::Truncated("ICMP header"));
        }
        let request = match buf[0] {
            ICMP_ECHO_REQUEST => true,
            ICMP_ECHO_REPLY => false,
            _ => return Err(IcmpError::Malformed("ICMP type")),
        };
        if checksum(buf) != 0 {
            return Err(IcmpError::Checksum);
        }
        Ok(Echo {
            request,
            id: u16::from_be_bytes([buf[4], buf[5]]),
            seq: u16::from_be_bytes([buf[6], buf[7]]),
            data: &buf[ICMP_HEADER_LEN..],
        })
    }

    /// The ICMP message with its checksum.
    pub fn emit(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(ICMP_HEADER_LEN + self.data.len());
        m.push(if self.request {
            ICMP_ECHO_REQUEST
        } else {
            ICMP_ECHO_REPLY
        });
        m.extend_from_slice(&[0, 0, 0]);
        m.extend_from_slice(&self.id.to_be_bytes());
        m.extend_from_slice(&self.seq.to_be_bytes());
        m.extend_from_slice(self.data);
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }
}

/// What the client says about itself inside the echo its Time Exceeded embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// Tags the session's UDP packets.
    pub token: [u8; 8],
    /// The client's public address, when it knows it (from a STUN server).
    pub public: Option<SocketAddrV4>,
    /// The client's local UDP port (the server's guess of its public port without
    /// `public`: a port-preserving NAT keeps it).
    pub local_port: u16,
}

impl Advert {
    /// The encoded length.
    pub const LEN: usize = 4 + 1 + 1 + 8 + 4 + 2 + 2;

    /// Encodes: magic, version, flags (bit 0: `public` present), token, public address
    /// (zero when absent), public port, local port.
    pub fn emit(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&ADVERT_MAGIC);
        b[4] = VERSION;
        b[5] = u8::from(self.public.is_some());
        b[6..14].copy_from_slice(&self.token);
        if let Some(p) = self.public {
            b[14..18].copy_from_slice(&p.ip().octets());
            b[18..20].copy_from_slice(&p.port().to_be_bytes());
        }
        b[20..22].copy_from_slice(&self.local_port.to_be_bytes());
        b
    }

    /// Decodes the start of `buf` (trailing bytes ignored).
    pub fn parse(buf: &[u8]) -> Result<Self, IcmpError> {
        if buf.len() < Self::LEN {
            return Err(IcmpError::Truncated("advert"));
        }
        if buf[0..4] != ADVERT_MAGIC || buf[4] != VERSION {
            return Err(IcmpError::Malformed("advert magic"));
        }
        let mut token = [0u8; 8];
        token.copy_from_slice(&buf[6..14]);
        let public = (buf[5] & 1 == 1).then(|| {
            SocketAddrV4::new(
                Ipv4Addr::new(buf[14], buf[15], buf[16], buf[17]),
                u16::from_be_bytes([buf[18], buf[19]]),
            )
        });
        Ok(Advert {
            token,
            public,
            local_port: u16::from_be_bytes([buf[20], buf[21]]),
        })
    }
}

/// An ICMP Time Exceeded message (RFC 792) as this module reads it: the embedded
/// datagram's IPv4 header and, when it is an echo request, the echo's identifier and what
/// follows its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeExceeded<'a> {
    /// Code: 0 TTL exceeded in transit, 1 fragment reassembly time exceeded.
    pub code: u8,
    /// The embedded datagram's header.
    pub inner: Ipv4Header,
    /// The embedded echo request's identifier and sequence number, if it is one.
    pub echo: Option<(u16, u16)>,
    /// The bytes after the embedded echo header (as many as the sender kept).
    pub echo_data: &'a [u8],
}

impl<'a> TimeExceeded<'a> {
    /// Parses an ICMP message (`buf` starts at the ICMP type), verifying its checksum.
    pub fn parse(buf: &'a [u8]) -> Result<Self, IcmpError> {
        if buf.len() < ICMP_HEADER_LEN {
            return Err(IcmpError::Truncated("ICMP header"));
        }
        if buf[0] != ICMP_TIME_EXCEEDED {
            return Err(IcmpError::Malformed("ICMP type"));
        }
        if checksum(buf) != 0 {
            return Err(IcmpError::Checksum);
        }
        let body = &buf[ICMP_HEADER_LEN..];
        let (inner, ihl) = Ipv4Header::parse(body)?;
        let rest = &body[ihl..];
        let (echo, echo_data) = if inner.protocol == IPPROTO_ICMP
            && rest.len() >= ICMP_HEADER_LEN
            && rest[0] == ICMP_ECHO_REQUEST
        {
            (
                Some((
                    u16::from_be_bytes([rest[4], rest[5]]),
                    u16::from_be_bytes([rest[6], rest[7]]),
                )),
                &rest[ICMP_HEADER_LEN..],
            )
        } else {
            (None, &[][..])
        };
        Ok(TimeExceeded {
            code: buf[1],
            inner,
            echo,
            echo_data,
        })
    }
}

/// Builds the Time Exceeded (code 0) a router between `server` and `target` would send
/// for the server's echo `id`/`seq`, embedding that echo with `advert` as its data; the
/// embedded headers and both checksums are as the NAT expects them.
pub fn forge_time_exceeded(
    server: Ipv4Addr,
    target: Ipv4Addr,
    id: u16,
    seq: u16,
    advert: &Advert,
) -> Vec<u8> {
    let data = advert.emit();
    let echo = Echo {
        request: true,
        id,
        seq,
        data: &data,
    }
    .emit();
    let inner = Ipv4Header {
        source: server,
        destination: target,
        protocol: IPPROTO_ICMP,
        // It expired: a router saw it with TTL 1.
        ttl: 1,
        identification: seq,
        total_length: u16::try_from(IPV4_HEADER_LEN + echo.len()).unwrap_or(u16::MAX),
    }
    .emit();
    let mut m = Vec::with_capacity(ICMP_HEADER_LEN + inner.len() + echo.len());
    m.extend_from_slice(&[ICMP_TIME_EXCEEDED, 0, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&inner);
    m.extend_from_slice(&echo);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A received IPv4 packet from a raw ICMP socket (Linux delivers the IP header): its
/// outer source and the ICMP message.
pub fn split_ipv4(packet: &[u8]) -> Result<(Ipv4Header, &[u8]), IcmpError> {
    let (h, ihl) = Ipv4Header::parse(packet)?;
    if h.protocol != IPPROTO_ICMP {
        return Err(IcmpError::Malformed("not ICMP"));
    }
    let end = usize::from(h.total_length).min(packet.len());
    Ok((h, &packet[ihl..end.max(ihl)]))
}

/// The kind of a [`UdpFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// "I am here"; `heard` says whether the sender has received from us.
    Hello {
        /// The sender has received a frame of ours.
        heard: bool,
    },
    /// Application bytes; empty ends the sender's direction.
    Data,
}

/// A UDP frame of the session: magic, version, kind (1 hello, 2 hello-heard, 3 data),
/// token, then the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    /// The kind.
    pub kind: FrameKind,
    /// The session's token.
    pub token: [u8; 8],
    /// The data (`Data` only; empty otherwise).
    pub data: &'a [u8],
}

impl<'a> UdpFrame<'a> {
    /// The header length.
    pub const HEADER_LEN: usize = 4 + 1 + 1 + 8;

    /// Parses a datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self, IcmpError> {
        if buf.len() < Self::HEADER_LEN {
            return Err(IcmpError::Truncated("frame"));
        }
        if buf[0..4] != UDP_MAGIC || buf[4] != VERSION {
            return Err(IcmpError::Malformed("frame magic"));
        }
        let kind = match buf[5] {
            1 => FrameKind::Hello { heard: false },
            2 => FrameKind::Hello { heard: true },
            3 => FrameKind::Data,
            _ => return Err(IcmpError::Malformed("frame kind")),
        };
        let data = &buf[Self::HEADER_LEN..];
        if kind != FrameKind::Data && !data.is_empty() {
            return Err(IcmpError::Malformed("hello with data"));
        }
        if data.len() > MAX_DATA {
            return Err(IcmpError::TooLarge(data.len()));
        }
        let mut token = [0u8; 8];
        token.copy_from_slice(&buf[6..14]);
        Ok(UdpFrame { kind, token, data })
    }

    /// Encodes.
    pub fn emit(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::HEADER_LEN + self.data.len());
        b.extend_from_slice(&UDP_MAGIC);
        b.push(VERSION);
        b.push(match self.kind {
            FrameKind::Hello { heard: false } => 1,
            FrameKind::Hello { heard: true } => 2,
            FrameKind::Data => 3,
        });
        b.extend_from_slice(&self.token);
        b.extend_from_slice(self.data);
        b
    }
}

/// Which side a machine plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends echoes, learns the client from its Time Exceeded.
    Server,
    /// Forges the Time Exceeded toward a server it knows.
    Client {
        /// The server's public address and UDP port.
        server: SocketAddrV4,
        /// This client's public address, if known (a STUN server's answer on the UDP
        /// socket); else the server guesses from the packet.
        public: Option<SocketAddrV4>,
        /// This client's local UDP port.
        local_port: u16,
    },
}

/// The machine's configuration; both sides must agree on `target` and `echo_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IcmpPunchConfig {
    /// Where the server's echoes go ([`DEFAULT_TARGET`]).
    pub target: Ipv4Addr,
    /// The echo identifier ([`DEFAULT_ECHO_ID`]).
    pub echo_id: u16,
    /// [`ECHO_INTERVAL`].
    pub echo_interval: Duration,
    /// [`FORGE_INTERVAL`].
    pub forge_interval: Duration,
    /// [`HELLO_INTERVAL`].
    pub hello_interval: Duration,
    /// [`KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// (Client) forge Time Exceeded messages for every echo identifier at this many per
    /// second (0: off; at most [`MAX_SWEEP_RATE`]), for a server behind a NAT that
    /// rewrites identifiers (Linux `masquerade random` draws a random one): one of them
    /// names the server's echo as its NAT sent it. A pass is 65 536 packets of 78 bytes;
    /// passes repeat until the server answers.
    pub id_sweep_rate: u32,
}

impl Default for IcmpPunchConfig {
    fn default() -> Self {
        IcmpPunchConfig {
            target: DEFAULT_TARGET,
            echo_id: DEFAULT_ECHO_ID,
            echo_interval: ECHO_INTERVAL,
            forge_interval: FORGE_INTERVAL,
            hello_interval: HELLO_INTERVAL,
            keepalive_interval: KEEPALIVE_INTERVAL,
            id_sweep_rate: 0,
        }
    }
}

/// Which socket a transmit goes out of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The raw ICMP socket (the kernel adds the IPv4 header); the destination's port is 0.
    Icmp,
    /// The UDP socket.
    Udp,
}

/// A packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpTransmit {
    /// The socket.
    pub channel: Channel,
    /// Where to.
    pub destination: SocketAddr,
    /// The ICMP message or the UDP payload.
    pub contents: Vec<u8>,
}

/// A received packet.
#[derive(Debug, Clone, Copy)]
pub enum IcmpInput<'a> {
    /// An IPv4 packet from the raw ICMP socket, IP header included.
    Icmp(&'a [u8]),
    /// A UDP datagram.
    Udp {
        /// Its source.
        source: SocketAddr,
        /// Its payload.
        contents: &'a [u8],
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcmpPunchEvent {
    /// (Server) a client's Time Exceeded arrived: where the server now sends.
    ClientLearned {
        /// Where the server sends its `HELLO`s.
        address: SocketAddrV4,
        /// The outer source of the Time Exceeded (after the NATs).
        outer_source: Ipv4Addr,
        /// The public address the client advertised, if any.
        advertised: Option<SocketAddrV4>,
    },
    /// A frame of the peer arrived: the UDP path works in the peer-to-us direction.
    Connected {
        /// Where the peer's frames come from (where we send from now on).
        peer: SocketAddr,
    },
    /// The peer heard us too: the path works both ways.
    Established,
    /// Application bytes from the peer.
    Data(Vec<u8>),
    /// The peer ended its direction (an empty `DATA`).
    PeerEnded,
}

/// The ICMP hole-punching machine of one side. See the module docs.
#[derive(Debug)]
pub struct IcmpPunch {
    role: Role,
    config: IcmpPunchConfig,
    /// The session token: the client's own, the server's from the advert.
    token: Option<[u8; 8]>,
    /// Where `HELLO`s and data go.
    peer: Option<SocketAddr>,
    /// Received a frame of the peer.
    connected: bool,
    /// The peer received ours.
    heard_by_peer: bool,
    peer_ended: bool,
    seq: u16,
    next_icmp: Instant,
    /// The sweep: identifiers sent in this pass, where the pass starts, the next batch.
    sweep_sent: u32,
    sweep_offset: u16,
    next_sweep: Instant,
    /// Forged messages sent by the sweep.
    sweep_total: u64,
    next_hello: Instant,
    transmits: VecDeque<IcmpTransmit>,
    events: VecDeque<IcmpPunchEvent>,
}

impl IcmpPunch {
    /// A machine for `role`, starting at `now`; `seed` gives the client its token.
    pub fn new(now: Instant, role: Role, config: IcmpPunchConfig, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let (token, peer) = match role {
            Role::Server => (None, None),
            Role::Client { server, .. } => {
                let mut t = [0u8; 8];
                rng.fill_bytes(&mut t);
                (Some(t), Some(SocketAddr::V4(server)))
            }
        };
        let mut config = config;
        config.id_sweep_rate = config.id_sweep_rate.min(MAX_SWEEP_RATE);
        let sweep_offset = (rng.next_u32() & 0xffff) as u16;
        IcmpPunch {
            role,
            config,
            token,
            peer,
            connected: false,
            heard_by_peer: false,
            peer_ended: false,
            seq: 0,
            next_icmp: now,
            sweep_sent: 0,
            sweep_offset,
            // The plain forgery (the identifier as the server chose it) goes first.
            next_sweep: now + SWEEP_TICK,
            sweep_total: 0,
            next_hello: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where frames go now, once known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether a frame of the peer has arrived.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the peer has said it hears us.
    pub fn is_established(&self) -> bool {
        self.connected && self.heard_by_peer
    }

    /// How many Time Exceeded messages the identifier sweep has forged.
    pub fn swept(&self) -> u64 {
        self.sweep_total
    }

    fn sweeping(&self) -> bool {
        !self.connected && self.config.id_sweep_rate > 0 && matches!(self.role, Role::Client { .. })
    }

    /// Queues `data` for the peer (one `DATA` frame; empty ends our direction).
    pub fn send(&mut self, data: &[u8]) -> Result<(), IcmpError> {
        if data.len() > MAX_DATA {
            return Err(IcmpError::TooLarge(data.len()));
        }
        let (Some(peer), Some(token), true) = (self.peer, self.token, self.connected) else {
            return Err(IcmpError::NotConnected);
        };
        self.transmits.push_back(IcmpTransmit {
            channel: Channel::Udp,
            destination: peer,
            contents: UdpFrame {
                kind: FrameKind::Data,
                token,
                data,
            }
            .emit(),
        });
        Ok(())
    }

    /// Feeds a received packet; returns whether it belonged to this session.
    pub fn handle_input(&mut self, now: Instant, input: IcmpInput<'_>) -> bool {
        match input {
            IcmpInput::Icmp(packet) => self.handle_icmp(now, packet),
            IcmpInput::Udp { source, contents } => self.handle_udp(now, source, contents),
        }
    }

    fn handle_icmp(&mut self, now: Instant, packet: &[u8]) -> bool {
        if self.role != Role::Server || self.connected {
            return false;
        }
        let Ok((outer, icmp)) = split_ipv4(packet) else {
            return false;
        };
        let Ok(te) = TimeExceeded::parse(icmp) else {
            return false;
        };
        // Ours: the embedded datagram is our echo, as our NAT translated it back.
        if te.inner.destination != self.config.target
            || te.inner.protocol != IPPROTO_ICMP
            || te.echo.map(|(id, _)| id) != Some(self.config.echo_id)
        {
            return false;
        }
        let Ok(advert) = Advert::parse(te.echo_data) else {
            tracing::debug!(from = %outer.source, "Time Exceeded for our echo without a pinhole advert: ignored");
            return false;
        };
        let address = advert
            .public
            .unwrap_or_else(|| SocketAddrV4::new(outer.source, advert.local_port));
        if self.peer == Some(SocketAddr::V4(address)) && self.token == Some(advert.token) {
            return true;
        }
        tracing::debug!(%address, outer = %outer.source, "client learned from its Time Exceeded");
        self.token = Some(advert.token);
        self.peer = Some(SocketAddr::V4(address));
        self.next_hello = now;
        self.events.push_back(IcmpPunchEvent::ClientLearned {
            address,
            outer_source: outer.source,
            advertised: advert.public,
        });
        true
    }

    fn handle_udp(&mut self, now: Instant, source: SocketAddr, contents: &[u8]) -> bool {
        let Some(token) = self.token else {
            return false;
        };
        let Ok(frame) = UdpFrame::parse(contents) else {
            return false;
        };
        if frame.token != token {
            return false;
        }
        if !self.connected || self.peer != Some(source) {
            // Latch onto where the peer really is (a NAT may not have kept a port).
            self.peer = Some(source);
            self.next_hello = now;
            if !self.connected {
                self.connected = true;
                self.events
                    .push_back(IcmpPunchEvent::Connected { peer: source });
            }
        }
        match frame.kind {
            FrameKind::Hello { heard } => {
                if heard || !self.heard_by_peer {
                    // Answer at once, so that the peer learns it is heard.
                    self.next_hello = now;
                }
                if heard {
                    self.set_heard();
                }
            }
            FrameKind::Data => {
                self.set_heard();
                if frame.data.is_empty() {
                    if !self.peer_ended {
                        self.peer_ended = true;
                        self.events.push_back(IcmpPunchEvent::PeerEnded);
                    }
                } else {
                    self.events
                        .push_back(IcmpPunchEvent::Data(frame.data.to_vec()));
                }
            }
        }
        true
    }

    fn set_heard(&mut self) {
        if !self.heard_by_peer {
            self.heard_by_peer = true;
            self.events.push_back(IcmpPunchEvent::Established);
        }
    }

    /// Sends what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.connected && now >= self.next_icmp {
            match self.role {
                Role::Server => {
                    self.seq = self.seq.wrapping_add(1);
                    self.transmits.push_back(IcmpTransmit {
                        channel: Channel::Icmp,
                        destination: SocketAddr::V4(SocketAddrV4::new(self.config.target, 0)),
                        contents: Echo {
                            request: true,
                            id: self.config.echo_id,
                            seq: self.seq,
                            data: &[],
                        }
                        .emit(),
                    });
                    self.next_icmp = now + self.config.echo_interval;
                }
                Role::Client {
                    server,
                    public,
                    local_port,
                } => {
                    if let Some(token) = self.token {
                        let advert = Advert {
                            token,
                            public,
                            local_port,
                        };
                        self.transmits.push_back(IcmpTransmit {
                            channel: Channel::Icmp,
                            destination: SocketAddr::V4(SocketAddrV4::new(*server.ip(), 0)),
                            contents: forge_time_exceeded(
                                *server.ip(),
                                self.config.target,
                                self.config.echo_id,
                                1,
                                &advert,
                            ),
                        });
                    }
                    self.next_icmp = now + self.config.forge_interval;
                }
            }
        }
        if self.sweeping() && now >= self.next_sweep {
            if let (
                Role::Client {
                    server,
                    public,
                    local_port,
                },
                Some(token),
            ) = (self.role, self.token)
            {
                let advert = Advert {
                    token,
                    public,
                    local_port,
                };
                // rate × tick, at least one.
                let batch = (u64::from(self.config.id_sweep_rate) * SWEEP_TICK.as_millis() as u64)
                    .div_ceil(1000)
                    .max(1);
                for _ in 0..batch {
                    if self.sweep_sent >= SWEEP_IDS {
                        self.sweep_sent = 0;
                    }
                    let id = self
                        .sweep_offset
                        .wrapping_add((self.sweep_sent as u16).wrapping_mul(SWEEP_STRIDE));
                    self.sweep_sent += 1;
                    self.sweep_total += 1;
                    self.transmits.push_back(IcmpTransmit {
                        channel: Channel::Icmp,
                        destination: SocketAddr::V4(SocketAddrV4::new(*server.ip(), 0)),
                        contents: forge_time_exceeded(
                            *server.ip(),
                            self.config.target,
                            id,
                            1,
                            &advert,
                        ),
                    });
                }
            }
            self.next_sweep = now + SWEEP_TICK;
        }
        if now >= self.next_hello {
            if let (Some(peer), Some(token)) = (self.peer, self.token) {
                self.transmits.push_back(IcmpTransmit {
                    channel: Channel::Udp,
                    destination: peer,
                    contents: UdpFrame {
                        kind: FrameKind::Hello {
                            heard: self.connected,
                        },
                        token,
                        data: &[],
                    }
                    .emit(),
                });
            }
            self.next_hello = now
                + if self.is_established() {
                    self.config.keepalive_interval
                } else {
                    self.config.hello_interval
                };
        }
    }

    /// The next packet to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<IcmpTransmit> {
        self.transmits.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hello = (self.peer.is_some() && self.token.is_some()).then_some(self.next_hello);
        let icmp = (!self.connected).then_some(self.next_icmp);
        let sweep = self.sweeping().then_some(self.next_sweep);
        [hello, icmp, sweep].into_iter().flatten().min()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<IcmpPunchEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
