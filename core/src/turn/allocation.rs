//! The TURN allocation machine, sans-IO (RFC 8656).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use tracing::debug;

use super::channel::{
    ChannelData, HEADER_LEN as CHANNEL_DATA_HEADER, MAX_CHANNEL, MIN_CHANNEL, is_channel_data,
};
use super::{Credentials, TurnError, TurnTransport};
use crate::stun::attributes::{
    AdditionalAddressFamily, AddressFamily, AlternateDomain, AlternateServer, ChannelNumber, Data,
    ErrorCode, Lifetime, MobilityTicket, Nonce, PasswordAlgorithmAttr, PasswordAlgorithms, Realm,
    RequestedAddressFamily, RequestedTransport, Software, UnknownAttributes, UserHash, Username,
    XorMappedAddress, XorPeerAddress, XorRelayedAddress,
};
use crate::stun::{
    AttributeType, Class, ClientConfig, ExpectFrom, IntegrityKey, Message, MessageBuilder,
    MessageType, Method, PasswordAlgorithm, Request, StunClient, StunError, TransactionEvent,
    TransactionId, userhash,
};
use crate::{Protocol, Received, Transmit};

/// Refresh permissions this often; they last 300 s (RFC 8656 §9).
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Refresh channel bindings this often; they last 600 s (RFC 8656 §12).
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// The allocation lifetime asked for by default (RFC 8656 §7.2's default).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Refresh this long before the allocation expires (or at half its lifetime if shorter).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How many 438 Stale Nonce answers in a row one request may get before giving up.
const MAX_STALE_NONCE_RETRIES: u32 = 3;
/// The nonce cookie of RFC 8489 §9.2: the security feature set follows it.
const NONCE_COOKIE: &str = "obMatJos2";

/// The relayed address family to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RequestedFamily {
    /// IPv4 (the server's default).
    #[default]
    V4,
    /// IPv6: REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    V6,
    /// Both: ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    Dual,
}

/// What the allocation is and where it lives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AllocationConfig {
    /// The TURN server.
    pub server: SocketAddr,
    /// The local socket (or stream) that talks to it.
    pub local: SocketAddr,
    /// The transport to the server.
    pub transport: TurnTransport,
    /// Long-term credentials (see [`Credentials::rest`] for REST ones).
    pub credentials: Credentials,
    /// Lifetime to ask for.
    pub lifetime: Duration,
    /// Relayed address family.
    pub family: RequestedFamily,
    /// Retransmission of requests (over UDP).
    pub stun: ClientConfig,
    /// SOFTWARE in requests.
    pub software: Option<String>,
    /// Over UDP, a STUN Binding indication to the server this often while allocated, so
    /// that the NATs on the way keep the client's binding between refreshes (which come
    /// minutes apart: RFC 8656 §9 permissions every 5 minutes, the allocation every
    /// 10). Some NATs forget an idle UDP binding after 30 s (RFC 4787 REQ-5 asks for 2
    /// minutes; many do less); an indication asks for no answer (RFC 8489 §6.3.2). `None`
    /// sends none.
    pub keepalive: Option<Duration>,
    /// Over UDP, an authenticated Refresh this often while allocated, to learn within
    /// seconds that the server lost the allocation: a restarted server answers 437
    /// Allocation Mismatch (RFC 8656 §7.2 and §8.2: the 5-tuple has no allocation) and a
    /// dead one does not answer, and either way the allocation is reported
    /// [`AllocationEvent::Lost`]. Without it that is noticed at the next scheduled
    /// refresh, up to nine minutes later. Over UDP nothing else tells: no connection
    /// breaks (over TCP and TLS the stream's end does). A check is a refresh too (it
    /// asks for [`lifetime`](Self::lifetime)) and keeps the NAT binding like a
    /// [`keepalive`](Self::keepalive) indication, which is not sent in the same interval.
    /// It costs a request and a response per interval, so a background policy turns it
    /// off (`None`) or stretches it.
    pub liveness: Option<Duration>,
    /// Over UDP, ask the server for a mobility ticket (RFC 8016 §3.1.1: an empty
    /// MOBILITY-TICKET in the Allocate), with which [`Allocation::move_to`] keeps the
    /// allocation, and its relayed address, when the client's address changes. A server
    /// that does not know the attribute ignores it (it is comprehension-optional, RFC
    /// 8489 §14); one that forbids mobility answers 405 Mobility Forbidden (RFC 8016
    /// §3.1.4; coturn without `--mobility` does), and the Allocate is then sent again
    /// once without it, which costs one round trip ([`Allocation::mobility_refused`]
    /// tells, so that a caller can leave it off for that server next time). On by
    /// default: phones change networks. Ignored over TCP and TLS.
    pub mobility: bool,
}

/// The default [`AllocationConfig::keepalive`]: RFC 8445 §11's Tr default, 15 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The default [`AllocationConfig::liveness`]: a lost allocation is noticed within about
/// this long plus a round trip (plus a 438 and its retry after a server restart).
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
/// A liveness check (or an RFC 8016 move) unanswered this long, with nothing at all from
/// the server since it went, means the server is gone (dead, unreachable, or restarted
/// and silent about the allocations it forgot, as coturn with `mobility` is): the
/// allocation is [`AllocationEvent::Lost`] then, not at the end of the check's
/// transaction (39.5 s). The check has gone five times by then (0, 0.5, 1.5, 3.5 and
/// 7.5 s at the default RTO), so lost answers alone rarely get there; anything from the
/// server (an answer to another request, relayed data) proves it alive.
pub const LIVENESS_SILENCE: Duration = Duration::from_secs(8);

impl AllocationConfig {
    /// An allocation on `server` from `local` with the defaults.
    pub fn new(
        server: SocketAddr,
        local: SocketAddr,
        transport: TurnTransport,
        credentials: Credentials,
    ) -> Self {
        Self {
            server,
            local,
            transport,
            credentials,
            lifetime: DEFAULT_LIFETIME,
            family: RequestedFamily::V4,
            stun: ClientConfig::default(),
            software: Some(concat!("pinhole ", env!("CARGO_PKG_VERSION")).to_owned()),
            keepalive: Some(KEEPALIVE_INTERVAL),
            liveness: Some(LIVENESS_INTERVAL),
            mobility: true,
        }
    }
}

/// What the allocation reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocationEvent {
    /// The allocation exists.
    Allocated {
        /// Relayed addresses (two with [`RequestedFamily::Dual`]).
        relayed: Vec<SocketAddr>,
        /// Our address as the server saw it.
        mapped: Option<SocketAddr>,
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// Refreshed.
    Refreshed {
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// The allocation moved to a new local address ([`Allocation::move_to`], RFC 8016
    /// §3.2): the same relayed addresses, permissions and channels, now reached from
    /// `local`.
    Moved {
        /// The local address it is now used from.
        local: SocketAddr,
        /// Our new address as the server saw it, when the Refresh response said
        /// (XOR-MAPPED-ADDRESS is not required there; coturn sends none).
        mapped: Option<SocketAddr>,
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// A permission for a peer IP is installed (or refreshed).
    PermissionCreated(IpAddr),
    /// A permission could not be installed.
    PermissionFailed(IpAddr, TurnError),
    /// A channel is bound (or refreshed).
    ChannelBound {
        /// The peer.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
    },
    /// A channel could not be bound.
    ChannelFailed(SocketAddr, TurnError),
    /// The allocation is gone.
    Lost(TurnError),
    /// Deallocated on request.
    Deallocated,
}

/// What a received datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// Data from a peer, borrowed from the datagram (no copy).
    Data {
        /// The peer.
        peer: SocketAddr,
        /// The application data.
        data: &'a [u8],
        /// Where `data` starts in the datagram (`data` is
        /// `contents[offset..offset + data.len()]`): a driver that keeps the datagram in
        /// its own buffer finds the data there without pointer arithmetic.
        offset: usize,
    },
    /// A message for the allocation (or dropped as bogus).
    Consumed,
    /// Not from the server: somebody else's.
    NotTurn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated,
    Deallocating,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Allocate,
    Refresh,
    /// A refresh sent as a liveness check ([`AllocationConfig::liveness`]).
    Check,
    Deallocate,
    Permission(IpAddr),
    Channel(u16),
    /// A Refresh carrying the mobility ticket, from a new local address (RFC 8016
    /// §3.2.1).
    Move,
    /// After a 400 to a [`Purpose::Move`]: a plain Refresh from the new address. coturn
    /// refuses a ticket on a 5-tuple that already has the allocation ("cannot be used
    /// for a stable, already established allocation"), which is what a move to the same
    /// address through an unchanged NAT looks like; success says the allocation is
    /// there, 437 that it is not.
    MoveConfirm,
}

impl Purpose {
    /// Whether it tells that the allocation lives: a liveness check, or a move
    /// ([`LIVENESS_SILENCE`] applies to them).
    fn asks_liveness(&self) -> bool {
        matches!(self, Purpose::Check | Purpose::Move | Purpose::MoveConfirm)
    }
}

#[derive(Debug, Clone)]
struct Auth {
    username: String,
    realm: String,
    nonce: String,
    key: IntegrityKey,
    /// The server's PASSWORD-ALGORITHMS (raw value) and our choice, when negotiated.
    algorithms: Option<(Vec<u8>, PasswordAlgorithm)>,
    userhash: Option<[u8; 32]>,
}

#[derive(Debug, Clone, Copy)]
struct Permission {
    ip: IpAddr,
    installed: bool,
    refresh_at: Instant,
    pending: bool,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    bound: bool,
    refresh_at: Instant,
    pending: bool,
}

/// A TURN allocation: the long-term-credential dance (401, 438, PASSWORD-ALGORITHMS,
/// USERHASH), refreshes, permissions, channels, Send/Data indications and ChannelData,
/// and deallocation. Sans-IO: the driver owns the socket or stream.
#[derive(Debug)]
pub struct Allocation {
    config: AllocationConfig,
    client: StunClient,
    state: State,
    auth: Option<Auth>,
    /// A 300 Try Alternate was followed: a second one is an error (RFC 8489 §10's loop
    /// rule, kept simple: one redirect per allocation).
    redirected: bool,
    /// Over TCP or TLS after a 300: waiting for the driver's new connection to the
    /// alternate server ([`Allocation::connected`]) before sending the Allocate again.
    awaiting_connection: bool,
    /// ALTERNATE-DOMAIN of the 300 followed (RFC 8489 §14.16), for the TLS name check.
    alternate_domain: Option<String>,
    stale_retries: u32,
    purposes: Vec<(TransactionId, Purpose)>,
    relayed: Vec<SocketAddr>,
    mapped: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    events: VecDeque<AllocationEvent>,
    /// Deallocation was asked for while an authenticated Allocate was in flight: should
    /// the server grant it, it is deleted at once instead of lingering until it expires.
    deallocate_when_granted: bool,
    /// When the next keepalive indication goes (over UDP, allocated).
    keepalive_at: Option<Instant>,
    /// A keepalive indication to send.
    keepalive_out: Option<Transmit>,
    /// When the next liveness check goes (over UDP, allocated).
    liveness_at: Option<Instant>,
    /// When the liveness check (or move) in flight went ([`LIVENESS_SILENCE`]).
    check_sent: Option<Instant>,
    /// When anything last came from the server.
    heard_at: Option<Instant>,
    /// Transaction IDs for the keepalive indications (they need not be secret: nothing
    /// answers them; RFC 8489 §5 asks only requests' IDs to be unpredictable).
    keepalive_ids: u64,
    /// The next Allocate asks for a mobility ticket (RFC 8016 §3.1.1).
    ask_mobility: bool,
    /// The server answered 405 Mobility Forbidden (RFC 8016 §3.1.4) or did not know the
    /// attribute (420).
    mobility_refused: bool,
    /// The latest MOBILITY-TICKET from an Allocate or Refresh success response (RFC 8016
    /// §3.1.3, §3.2.3).
    ticket: Option<Vec<u8>>,
    /// A move ([`Allocation::move_to`]) is in flight: other requests wait for it.
    moving: bool,
    /// CreatePermission and ChannelBind requests held back until the move is done.
    deferred: Vec<Purpose>,
}

impl Allocation {
    /// Starts allocating at `now`: the first Allocate request goes out unauthenticated
    /// (RFC 8656 §7.1), to learn the realm and nonce.
    pub fn new(now: Instant, config: AllocationConfig, seed: [u8; 32]) -> Self {
        let mut a = Self {
            client: StunClient::new(config.stun.clone(), seed),
            config,
            state: State::Allocating,
            auth: None,
            redirected: false,
            awaiting_connection: false,
            alternate_domain: None,
            stale_retries: 0,
            purposes: Vec::new(),
            relayed: Vec::new(),
            mapped: None,
            refresh_at: None,
            expires_at: None,
            permissions: Vec::new(),
            channels: Vec::new(),
            events: VecDeque::new(),
            deallocate_when_granted: false,
            keepalive_at: None,
            keepalive_out: None,
            liveness_at: None,
            check_sent: None,
            heard_at: None,
            keepalive_ids: u64::from_le_bytes([
                seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
            ]),
            ask_mobility: false,
            mobility_refused: false,
            ticket: None,
            moving: false,
            deferred: Vec::new(),
        };
        a.ask_mobility = a.wants_mobility();
        a.send(now, Purpose::Allocate);
        a
    }

    /// The server in use (it changes once after 300 Try Alternate).
    pub fn server(&self) -> SocketAddr {
        self.config.server
    }

    /// The local address the machine talks to the server from (it changes when the driver
    /// reconnects to an alternate server over TCP or TLS: [`Allocation::connected`]; and
    /// at once on [`Allocation::move_to`]).
    pub fn local(&self) -> SocketAddr {
        self.config.local
    }

    /// After a 300 Try Alternate over TCP or TLS: the alternate server, to which the
    /// driver closes its current connection and opens a new one (RFC 8656 §7.4, RFC 8489
    /// §10: the same transport, a new connection), then calls [`Allocation::connected`].
    /// Until then nothing is sent. `None` otherwise; over UDP a redirect needs no new
    /// connection: the next Allocate simply goes to the new [`Allocation::server`] from
    /// the same socket (a driver with a connected socket re-targets it).
    pub fn reconnect_to(&self) -> Option<SocketAddr> {
        (self.awaiting_connection && self.state == State::Allocating).then_some(self.config.server)
    }

    /// The ALTERNATE-DOMAIN of the 300 Try Alternate followed, if it had one: over TLS the
    /// alternate server's certificate is checked against this name; without one, against
    /// the name used for the original server (RFC 8489 §10, §14.16).
    pub fn alternate_domain(&self) -> Option<&str> {
        self.alternate_domain.as_deref()
    }

    /// The driver's new connection to [`Allocation::reconnect_to`] is up, from `local`:
    /// the Allocate request goes out on it. Ignored when no reconnection is awaited.
    pub fn connected(&mut self, now: Instant, local: SocketAddr) {
        if self.reconnect_to().is_none() {
            debug!("connected() without a redirect awaiting it: ignored");
            return;
        }
        self.awaiting_connection = false;
        self.config.local = local;
        self.send(now, Purpose::Allocate);
    }

    /// The relayed addresses, once allocated.
    pub fn relayed(&self) -> &[SocketAddr] {
        &self.relayed
    }

    /// Whether the allocation exists.
    pub fn is_allocated(&self) -> bool {
        self.state == State::Allocated
    }

    /// Whether it is over (lost or deallocated).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the configuration asks for mobility (over UDP only).
    fn wants_mobility(&self) -> bool {
        self.config.mobility && !self.config.transport.is_stream()
    }

    /// Whether a mobility ticket is held: [`Allocation::move_to`] can keep the allocation
    /// across a change of address (RFC 8016). False until allocated, and when the server
    /// gave none (it does not support RFC 8016, or refused it).
    pub fn has_mobility_ticket(&self) -> bool {
        self.ticket.is_some()
    }

    /// Whether the server refused the mobility ticket asked for (405 Mobility Forbidden,
    /// RFC 8016 §3.1.4, or 420 naming MOBILITY-TICKET): the Allocate was sent again
    /// without it. A caller making more allocations on this server can set
    /// [`AllocationConfig::mobility`] to false and save that round trip.
    pub fn mobility_refused(&self) -> bool {
        self.mobility_refused
    }

    /// Whether a move ([`Allocation::move_to`]) is waiting for the server's answer.
    pub fn is_moving(&self) -> bool {
        self.moving
    }

    /// Moves the allocation to a new local address (RFC 8016 §3.2): after a network
    /// change, the socket the allocation was used from is gone (or reaches the server
    /// through another NAT), and `local` is the one to use now. With a mobility ticket
    /// held, over UDP, a Refresh carrying it goes from `local` at once (RFC 8016
    /// §3.2.1); the server moves the allocation to the new 5-tuple, with its relayed
    /// address, permissions and channels, and [`AllocationEvent::Moved`] follows. An
    /// error or no answer reports [`AllocationEvent::Lost`], as for a failed refresh,
    /// and a new allocation is the way on. From this call on the allocation sends from
    /// `local` and takes input arriving there only; requests in flight from the old
    /// address are abandoned, and permissions and channels being installed or refreshed
    /// are asked for again once moved. `local` may be the current address (the NAT in
    /// front of it changed).
    ///
    /// Returns false, and changes nothing, when there is no allocation, no ticket (see
    /// [`Allocation::has_mobility_ticket`]), the transport is TCP or TLS (a new
    /// connection is a new allocation here), or `local` is not of the server's address
    /// family: the caller then makes a new allocation, as without RFC 8016.
    pub fn move_to(&mut self, now: Instant, local: SocketAddr) -> bool {
        if self.state != State::Allocated
            || self.config.transport.is_stream()
            || self.ticket.is_none()
            || local.is_ipv4() != self.config.server.is_ipv4()
        {
            return false;
        }
        debug!(from = %self.config.local, to = %local, "moving the TURN allocation (RFC 8016)");
        // Answers to what is in flight would arrive at the old address: abandoned, and
        // what they were for asked again once moved (the move is a refresh and a
        // liveness check itself).
        for (id, purpose) in std::mem::take(&mut self.purposes) {
            self.client.cancel(id);
            if matches!(purpose, Purpose::Permission(_) | Purpose::Channel(_))
                && !self.deferred.contains(&purpose)
            {
                self.deferred.push(purpose);
            }
        }
        self.config.local = local;
        self.keepalive_out = None;
        self.moving = true;
        self.send(now, Purpose::Move);
        true
    }

    fn proto(&self) -> Protocol {
        if self.config.transport.is_stream() {
            Protocol::Tcp
        } else {
            Protocol::Udp
        }
    }

    fn send(&mut self, now: Instant, purpose: Purpose) {
        if self.moving {
            match purpose {
                // The move refreshes the allocation and tells whether it lives.
                Purpose::Refresh | Purpose::Check => return,
                // Sent from the new address before the server moved the allocation,
                // they would find none there (437).
                Purpose::Permission(_) | Purpose::Channel(_) => {
                    if !self.deferred.contains(&purpose) {
                        self.deferred.push(purpose);
                    }
                    return;
                }
                _ => {}
            }
        }
        if purpose.asks_liveness() && !self.purposes.iter().any(|(_, p)| p.asks_liveness()) {
            self.check_sent = Some(now);
        }
        let method = match purpose {
            Purpose::Allocate => Method::ALLOCATE,
            Purpose::Refresh
            | Purpose::Check
            | Purpose::Deallocate
            | Purpose::Move
            | Purpose::MoveConfirm => Method::REFRESH,
            Purpose::Permission(_) => Method::CREATE_PERMISSION,
            Purpose::Channel(_) => Method::CHANNEL_BIND,
        };
        let req = Request {
            proto: self.proto(),
            source: self.config.local,
            destination: self.config.server,
            method,
            key: self.auth.as_ref().map(|a| a.key.clone()),
            expect_from: ExpectFrom::Destination,
            response_at: None,
        };
        let lifetime = u32::try_from(self.config.lifetime.as_secs()).unwrap_or(u32::MAX);
        let family = self.config.family;
        let software = self.config.software.clone();
        let auth = self.auth.clone();
        let channel = match purpose {
            Purpose::Channel(n) => self.channels.iter().find(|c| c.number == n).copied(),
            _ => None,
        };
        let ask_mobility = self.ask_mobility;
        // The ticket goes in the move's Refresh only: coturn refuses it (400) in a Refresh
        // on the 5-tuple that has the allocation. A deallocation while a move is in
        // flight carries it too, so that the server finds the allocation to delete
        // whether or not it has moved it yet.
        let ticket = match purpose {
            Purpose::Move => self.ticket.clone(),
            Purpose::Deallocate if self.moving => self.ticket.clone(),
            _ => None,
        };
        let result = self.client.start(now, req, |b| {
            match purpose {
                Purpose::Allocate => {
                    b.add(&RequestedTransport::UDP)?;
                    b.add(&Lifetime(lifetime))?;
                    match family {
                        RequestedFamily::V4 => {}
                        RequestedFamily::V6 => {
                            b.add(&RequestedAddressFamily(AddressFamily::V6))?;
                        }
                        RequestedFamily::Dual => {
                            b.add(&AdditionalAddressFamily(AddressFamily::V6))?;
                        }
                    }
                    if let Some(s) = &software {
                        b.add(&Software(s))?;
                    }
                    if ask_mobility {
                        // Empty: asking for a ticket (RFC 8016 §3.1.1).
                        b.add(&MobilityTicket(&[]))?;
                    }
                }
                Purpose::Refresh | Purpose::Check | Purpose::Move | Purpose::MoveConfirm => {
                    b.add(&Lifetime(lifetime))?;
                }
                Purpose::Deallocate => {
                    b.add(&Lifetime(0))?;
                }
                Purpose::Permission(ip) => {
                    b.add(&XorPeerAddress(SocketAddr::new(ip, 0)))?;
                }
                Purpose::Channel(_) => {
                    if let Some(c) = channel {
                        b.add(&ChannelNumber(c.number))?;
                        b.add(&XorPeerAddress(c.peer))?;
                    }
                }
            }
            if let Some(t) = &ticket {
                b.add(&MobilityTicket(t))?;
            }
            if let Some(a) = &auth {
                add_auth(b, a)?;
            }
            Ok(())
        });
        match result {
            Ok(id) => self.purposes.push((id, purpose)),
            Err(e) => {
                debug!(error = %e, "could not build a TURN request");
                self.fail(purpose, TurnError::Stun(e));
            }
        }
    }

    /// Installs (or refreshes) a permission for `peer`'s IP (RFC 8656 §9).
    pub fn create_permission(&mut self, now: Instant, peer: IpAddr) -> Result<(), TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NoAllocation);
        }
        match self.permissions.iter_mut().find(|p| p.ip == peer) {
            Some(p) if p.pending => return Ok(()),
            Some(p) => p.pending = true,
            None => self.permissions.push(Permission {
                ip: peer,
                installed: false,
                refresh_at: now + PERMISSION_REFRESH,
                pending: true,
            }),
        }
        self.send(now, Purpose::Permission(peer));
        Ok(())
    }

    /// Binds a channel to `peer` (RFC 8656 §11), which also installs a permission for its
    /// IP; returns the channel number. Data then goes as ChannelData once bound.
    pub fn bind_channel(&mut self, now: Instant, peer: SocketAddr) -> Result<u16, TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NoAllocation);
        }
        if let Some(c) = self.channels.iter().find(|c| c.peer == peer) {
            return Ok(c.number);
        }
        let number = (MIN_CHANNEL..=MAX_CHANNEL)
            .find(|n| !self.channels.iter().any(|c| c.number == *n))
            .ok_or(TurnError::NoChannel)?;
        self.channels.push(Channel {
            number,
            peer,
            bound: false,
            refresh_at: now + CHANNEL_REFRESH,
            pending: true,
        });
        self.send(now, Purpose::Channel(number));
        Ok(number)
    }

    /// Deletes the allocation (Refresh with LIFETIME 0); [`AllocationEvent::Deallocated`]
    /// follows, also when the server does not answer. While an authenticated Allocate is
    /// still in flight, it waits for the answer: a granted allocation is deleted at once
    /// (and never reported as allocated) rather than left to expire on the server.
    pub fn deallocate(&mut self, now: Instant) {
        match self.state {
            State::Allocated => {
                self.state = State::Deallocating;
                self.deferred.clear();
                for (id, purpose) in std::mem::take(&mut self.purposes) {
                    if matches!(purpose, Purpose::Move | Purpose::MoveConfirm) {
                        self.client.cancel(id);
                    }
                }
                self.send(now, Purpose::Deallocate);
                self.moving = false;
            }
            State::Allocating => {
                let in_flight = self.auth.is_some()
                    && self.purposes.iter().any(|(_, p)| *p == Purpose::Allocate);
                if in_flight {
                    self.deallocate_when_granted = true;
                } else {
                    self.state = State::Done;
                    self.purposes.clear();
                    self.events.push_back(AllocationEvent::Deallocated);
                }
            }
            State::Deallocating | State::Done => {}
        }
    }

    /// Writes `data` for `peer` into `out` as ChannelData (when a channel is bound) or a
    /// Send indication; returns the length. Send it to [`Allocation::server`]. No
    /// allocation, no copy beyond writing `out`.
    pub fn encode_to_peer(
        &self,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, TurnError> {
        if self.state != State::Allocated {
            return Err(TurnError::NoAllocation);
        }
        if let Some(c) = self.channels.iter().find(|c| c.peer == peer && c.bound) {
            return ChannelData::emit(c.number, data, self.config.transport.is_stream(), out);
        }
        if !self.permissions.iter().any(|p| p.ip == peer.ip())
            && !self.channels.iter().any(|c| c.peer.ip() == peer.ip())
        {
            return Err(TurnError::NoPermission(peer));
        }
        // A Send indication: transaction IDs of indications need not be unpredictable,
        // but must differ; derive one from the data length and peer cheaply.
        let mut tid = [0u8; 12];
        tid[..2].copy_from_slice(&peer.port().to_be_bytes());
        tid[2..10].copy_from_slice(&(data.len() as u64).to_be_bytes());
        let kind = MessageType::new(Class::Indication, Method::SEND);
        let mut b = MessageBuilder::new(out, kind, TransactionId(tid))?;
        b.add(&XorPeerAddress(peer))?;
        b.add(&Data(data))?;
        Ok(b.finish().len())
    }

    /// Offers a datagram (or a framed stream message). Data from peers comes back
    /// borrowed; everything else feeds the machine.
    pub fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> Input<'a> {
        if rx.source != self.config.server || rx.destination != self.config.local {
            return Input::NotTurn;
        }
        self.heard_at = Some(now);
        if is_channel_data(rx.contents) {
            let Ok(cd) = ChannelData::parse(rx.contents) else {
                debug!("malformed ChannelData dropped");
                return Input::Consumed;
            };
            return match self
                .channels
                .iter()
                .find(|c| c.number == cd.channel && c.bound)
            {
                Some(c) => Input::Data {
                    peer: c.peer,
                    data: cd.data,
                    // After the 4-byte ChannelData header (RFC 8656 §12.4).
                    offset: CHANNEL_DATA_HEADER,
                },
                None => {
                    debug!(
                        channel = cd.channel,
                        "ChannelData on an unbound channel dropped"
                    );
                    Input::Consumed
                }
            };
        }
        let Ok(msg) = Message::parse(rx.contents) else {
            debug!("non-STUN datagram from the TURN server dropped");
            return Input::Consumed;
        };
        if msg.class() == Class::Indication && msg.method() == Method::DATA {
            return match (msg.get::<XorPeerAddress>(), msg.raw(AttributeType::DATA)) {
                (Ok(Some(XorPeerAddress(peer))), Some(raw)) => Input::Data {
                    peer,
                    data: raw.value,
                    // The value follows the attribute's 4-byte header (RFC 8489 §14).
                    offset: raw.offset + 4,
                },
                _ => {
                    debug!("malformed Data indication dropped");
                    Input::Consumed
                }
            };
        }
        if !self.client.handle_input(now, rx) {
            debug!("unexpected STUN message from the TURN server dropped");
        }
        self.drain(now);
        Input::Consumed
    }

    /// Retransmissions, refreshes of the allocation, permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.drain(now);
        if self.state != State::Allocated {
            return;
        }
        if self.expires_at.is_some_and(|e| now >= e) {
            self.lose(TurnError::TimedOut);
            return;
        }
        if self.silence_deadline().is_some_and(|t| now >= t) {
            debug!(server = %self.config.server, "the server is silent: allocation lost");
            self.lose(TurnError::TimedOut);
            return;
        }
        if self.refresh_at.is_some_and(|r| now >= r) {
            self.refresh_at = None;
            self.send(now, Purpose::Refresh);
        }
        if self.liveness_at.is_some_and(|l| now >= l) {
            self.liveness_at = self.config.liveness.map(|l| now + l);
            // One at a time: a check (or refresh) still being retransmitted will tell.
            if !self
                .purposes
                .iter()
                .any(|(_, p)| matches!(p, Purpose::Check | Purpose::Refresh))
            {
                self.send(now, Purpose::Check);
            }
            // The check keeps the NAT binding too: no indication in this interval.
            self.keepalive_at = self.config.keepalive.map(|k| now + k);
        }
        if self.keepalive_at.is_some_and(|k| now >= k) {
            self.keepalive_at = self.config.keepalive.map(|k| now + k);
            if !self.moving {
                self.keepalive_out = self.keepalive_indication();
            }
        }
        let due: Vec<IpAddr> = self
            .permissions
            .iter_mut()
            .filter(|p| !p.pending && p.installed && now >= p.refresh_at)
            .map(|p| {
                p.pending = true;
                p.ip
            })
            .collect();
        for ip in due {
            self.send(now, Purpose::Permission(ip));
        }
        let due: Vec<u16> = self
            .channels
            .iter_mut()
            .filter(|c| !c.pending && c.bound && now >= c.refresh_at)
            .map(|c| {
                c.pending = true;
                c.number
            })
            .collect();
        for n in due {
            self.send(now, Purpose::Channel(n));
        }
    }

    /// The next datagram (or stream message) for the server.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.keepalive_out.take() {
            return Some(t);
        }
        self.client.poll_transmit()
    }

    /// A STUN Binding indication for the server, with FINGERPRINT.
    fn keepalive_indication(&mut self) -> Option<Transmit> {
        self.keepalive_ids = self.keepalive_ids.wrapping_add(1);
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.keepalive_ids.to_le_bytes());
        id[8..].copy_from_slice(b"keep");
        let mut buf = [0u8; 64];
        let kind = MessageType::new(Class::Indication, Method::BINDING);
        let mut b = MessageBuilder::new(&mut buf, kind, TransactionId(id)).ok()?;
        b.add_fingerprint().ok()?;
        Some(Transmit {
            proto: self.proto(),
            source: self.config.local,
            destination: self.config.server,
            contents: b.finish().to_vec(),
        })
    }

    /// Changes [`AllocationConfig::liveness`] and [`AllocationConfig::keepalive`] (a
    /// keepalive policy, issue 14). A liveness check that was off and is turned on goes
    /// at once: a resumed app wants to know now whether its allocation outlived the pause.
    pub fn set_checks(
        &mut self,
        now: Instant,
        liveness: Option<Duration>,
        keepalive: Option<Duration>,
    ) {
        let resumed = self.config.liveness.is_none() && liveness.is_some();
        self.config.liveness = liveness;
        self.config.keepalive = keepalive;
        if self.state != State::Allocated || self.config.transport.is_stream() {
            return;
        }
        self.liveness_at = liveness.map(|l| if resumed { now } else { now + l });
        self.keepalive_at = keepalive.map(|k| now + k);
    }

    /// When to call `handle_timeout` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.client.poll_timeout();
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        if self.state == State::Allocated {
            consider(self.refresh_at);
            consider(self.expires_at);
            consider(self.keepalive_at);
            consider(self.liveness_at);
            consider(self.silence_deadline());
            for p in self
                .permissions
                .iter()
                .filter(|p| !p.pending && p.installed)
            {
                consider(Some(p.refresh_at));
            }
            for c in self.channels.iter().filter(|c| !c.pending && c.bound) {
                consider(Some(c.refresh_at));
            }
        }
        t
    }

    /// When the server's silence loses the allocation ([`LIVENESS_SILENCE`]): a liveness
    /// check in flight, nothing from the server since it went.
    fn silence_deadline(&self) -> Option<Instant> {
        let sent = self.check_sent?;
        let in_flight = self.purposes.iter().any(|(_, p)| p.asks_liveness());
        (in_flight && self.heard_at.is_none_or(|h| h < sent)).then(|| sent + LIVENESS_SILENCE)
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<AllocationEvent> {
        self.events.pop_front()
    }

    fn take_purpose(&mut self, id: TransactionId) -> Option<Purpose> {
        let i = self.purposes.iter().position(|(t, _)| *t == id)?;
        Some(self.purposes.swap_remove(i).1)
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                TransactionEvent::Response(resp) => {
                    let Some(purpose) = self.take_purpose(resp.id) else {
                        continue;
                    };
                    let msg = resp.message();
                    if msg.class() == Class::Success {
                        self.stale_retries = 0;
                        self.on_success(now, purpose, &msg);
                    } else {
                        self.on_error(now, purpose, &msg);
                    }
                }
                TransactionEvent::TimedOut { id, .. } => {
                    if let Some(purpose) = self.take_purpose(id) {
                        self.fail(purpose, TurnError::TimedOut);
                    }
                }
            }
        }
    }

    fn on_success(&mut self, now: Instant, purpose: Purpose, msg: &Message<'_>) {
        let granted = |msg: &Message<'_>| {
            msg.get::<Lifetime>()
                .ok()
                .flatten()
                .map(|l| Duration::from_secs(u64::from(l.0)))
        };
        if matches!(
            purpose,
            Purpose::Allocate
                | Purpose::Refresh
                | Purpose::Check
                | Purpose::Move
                | Purpose::MoveConfirm
        ) {
            self.store_ticket(msg);
        }
        match purpose {
            Purpose::Allocate => {
                let relayed: Vec<SocketAddr> = msg
                    .attributes()
                    .filter(|a| a.kind == AttributeType::XOR_RELAYED_ADDRESS)
                    .filter_map(|a| {
                        use crate::stun::Attribute;
                        XorRelayedAddress::decode(a.value, &msg.transaction_id()).ok()
                    })
                    .map(|r| r.0)
                    .collect();
                let Some(lifetime) = granted(msg) else {
                    return self.lose(TurnError::MissingAttribute("LIFETIME"));
                };
                if lifetime.is_zero() {
                    // An allocation that expires as it is made (RFC 8656 §7.3: the client
                    // uses the lifetime granted): nothing to use, nothing to delete.
                    return self.lose(TurnError::ZeroLifetime);
                }
                if relayed.is_empty() {
                    return self.lose(TurnError::MissingAttribute("XOR-RELAYED-ADDRESS"));
                }
                self.mapped = msg.get::<XorMappedAddress>().ok().flatten().map(|m| m.0);
                self.relayed = relayed.clone();
                self.state = State::Allocated;
                if self.deallocate_when_granted {
                    debug!("allocation granted after deallocation was asked for: deleting it");
                    self.deallocate_when_granted = false;
                    self.deallocate(now);
                    return;
                }
                self.schedule_refresh(now, lifetime);
                if !self.config.transport.is_stream() {
                    self.keepalive_at = self.config.keepalive.map(|k| now + k);
                    self.liveness_at = self.config.liveness.map(|l| now + l);
                }
                self.events.push_back(AllocationEvent::Allocated {
                    relayed,
                    mapped: self.mapped,
                    lifetime,
                });
            }
            Purpose::Refresh => {
                let lifetime = granted(msg).unwrap_or(self.config.lifetime);
                if lifetime.is_zero() {
                    // The server deleted the allocation (RFC 8656 §8.3): it is gone now,
                    // not when a timer says so.
                    return self.lose(TurnError::ZeroLifetime);
                }
                self.schedule_refresh(now, lifetime);
                self.events
                    .push_back(AllocationEvent::Refreshed { lifetime });
            }
            Purpose::Check => {
                // Alive. A check is a refresh: the next scheduled one moves with it.
                let lifetime = granted(msg).unwrap_or(self.config.lifetime);
                if lifetime.is_zero() {
                    return self.lose(TurnError::ZeroLifetime);
                }
                self.schedule_refresh(now, lifetime);
            }
            Purpose::Move | Purpose::MoveConfirm => {
                let lifetime = granted(msg).unwrap_or(self.config.lifetime);
                if lifetime.is_zero() {
                    return self.lose(TurnError::ZeroLifetime);
                }
                self.moving = false;
                self.schedule_refresh(now, lifetime);
                self.liveness_at = self.config.liveness.map(|l| now + l);
                self.keepalive_at = self.config.keepalive.map(|k| now + k);
                // A packet from the new address at once: it keeps the NAT binding there,
                // and a server that relays to the old 5-tuple until the client shows up
                // on the new one (RFC 8016 §3.2.2's make-before-break; newer coturn
                // takes any packet) switches now rather than at the next data.
                self.keepalive_out = self.keepalive_indication();
                let mapped = msg.get::<XorMappedAddress>().ok().flatten().map(|m| m.0);
                if mapped.is_some() {
                    self.mapped = mapped;
                }
                debug!(local = %self.config.local, ?mapped, "TURN allocation moved (RFC 8016)");
                self.events.push_back(AllocationEvent::Moved {
                    local: self.config.local,
                    mapped,
                    lifetime,
                });
                for p in std::mem::take(&mut self.deferred) {
                    self.send(now, p);
                }
            }
            Purpose::Deallocate => self.finish_deallocation(),
            Purpose::Permission(ip) => {
                if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
                    p.installed = true;
                    p.pending = false;
                    p.refresh_at = now + PERMISSION_REFRESH;
                }
                self.events
                    .push_back(AllocationEvent::PermissionCreated(ip));
            }
            Purpose::Channel(n) => {
                if let Some(c) = self.channels.iter_mut().find(|c| c.number == n) {
                    c.bound = true;
                    c.pending = false;
                    c.refresh_at = now + CHANNEL_REFRESH;
                    let peer = c.peer;
                    self.events
                        .push_back(AllocationEvent::ChannelBound { peer, channel: n });
                }
            }
        }
    }

    /// Keeps the MOBILITY-TICKET of a success response: the latest one is the one a move
    /// presents (RFC 8016 §3.1.3, §3.2.3). A response without one leaves the ticket held
    /// (coturn sends it in every Refresh response, other servers may not); one that does
    /// not decode (over [`MobilityTicket::MAX_LEN`]) drops it, as it may have replaced it.
    fn store_ticket(&mut self, msg: &Message<'_>) {
        match msg.get::<MobilityTicket<'_>>() {
            Ok(Some(MobilityTicket(t))) if !t.is_empty() => self.ticket = Some(t.to_vec()),
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "unusable MOBILITY-TICKET: the allocation cannot move");
                self.ticket = None;
            }
        }
    }

    fn schedule_refresh(&mut self, now: Instant, lifetime: Duration) {
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        self.refresh_at = Some(now + lifetime - margin);
        self.expires_at = Some(now + lifetime);
    }

    fn on_error(&mut self, now: Instant, purpose: Purpose, msg: &Message<'_>) {
        let (code, reason) = match msg.get::<ErrorCode<'_>>() {
            Ok(Some(e)) => (e.code, e.reason.to_owned()),
            _ => (0, String::new()),
        };
        match code {
            401 if self.auth.is_none() => match self.learn_auth(msg) {
                Ok(()) => self.send(now, purpose),
                Err(e) => self.fail(purpose, e),
            },
            438 if self.stale_retries < MAX_STALE_NONCE_RETRIES => {
                self.stale_retries += 1;
                match self.learn_auth(msg) {
                    Ok(()) => self.send(now, purpose),
                    Err(e) => self.fail(purpose, e),
                }
            }
            300 if purpose == Purpose::Allocate => self.redirect(now, msg),
            437 if purpose == Purpose::Deallocate => self.finish_deallocation(),
            // The server forbids mobility (RFC 8016 §3.1.4) or, against RFC 8489 §14,
            // refuses the comprehension-optional attribute: the Allocate again without it,
            // once (§3.1.4: not again with it to this server).
            405 | 420
                if purpose == Purpose::Allocate
                    && self.ask_mobility
                    && (code == 405 || names_mobility_ticket(msg)) =>
            {
                debug!(
                    code,
                    "TURN server refuses a mobility ticket: allocating without"
                );
                self.ask_mobility = false;
                self.mobility_refused = true;
                self.send(now, purpose);
            }
            // A server whose nonces belong to the 5-tuple challenges the move's first
            // request from the new address like a new client's: answered with the new
            // nonce, a bounded number of times.
            401 if matches!(purpose, Purpose::Move | Purpose::MoveConfirm)
                && self.stale_retries < MAX_STALE_NONCE_RETRIES =>
            {
                self.stale_retries += 1;
                match self.learn_auth(msg) {
                    Ok(()) => self.send(now, purpose),
                    Err(e) => self.fail(purpose, e),
                }
            }
            400 if purpose == Purpose::Move => self.send(now, Purpose::MoveConfirm),
            _ => self.fail(purpose, TurnError::from_code(code, &reason)),
        }
    }

    /// 300 Try Alternate to an Allocate (RFC 8489 §10, RFC 8656 §7.4): the same request,
    /// over the same transport, to ALTERNATE-SERVER, once. Over UDP it goes at once, from
    /// the same socket; over TCP or TLS after the driver's new connection
    /// ([`Allocation::reconnect_to`]).
    fn redirect(&mut self, now: Instant, msg: &Message<'_>) {
        let Some(AlternateServer(to)) = msg.get::<AlternateServer>().ok().flatten() else {
            return self.fail(
                Purpose::Allocate,
                TurnError::MissingAttribute("ALTERNATE-SERVER"),
            );
        };
        if self.redirected {
            debug!(to = %to, "TURN server redirects again (300): not followed");
            return self.fail(Purpose::Allocate, TurnError::TooManyRedirects);
        }
        let stream = self.config.transport.is_stream();
        if !stream && to.is_ipv4() != self.config.local.is_ipv4() {
            // One UDP socket reaches one address family.
            debug!(to = %to, "TURN server redirects to another address family (300)");
            return self.fail(Purpose::Allocate, TurnError::AlternateFamily(to));
        }
        // A malformed or absent ALTERNATE-DOMAIN leaves the original name in force.
        self.alternate_domain = msg
            .get::<AlternateDomain<'_>>()
            .ok()
            .flatten()
            .map(|d| d.0.to_owned());
        debug!(to = %to, domain = ?self.alternate_domain, "TURN server redirects (300)");
        self.redirected = true;
        self.config.server = to;
        // The alternate has its own realm and nonces: start the dance again.
        self.auth = None;
        self.ask_mobility = self.wants_mobility();
        self.mobility_refused = false;
        self.stale_retries = 0;
        if stream {
            self.awaiting_connection = true;
        } else {
            self.send(now, Purpose::Allocate);
        }
    }

    /// Takes REALM, NONCE and the offered password algorithms from a 401 or 438, and
    /// derives the key (RFC 8489 §9.2.3–9.2.5).
    fn learn_auth(&mut self, msg: &Message<'_>) -> Result<(), TurnError> {
        let nonce = msg
            .get::<Nonce<'_>>()?
            .ok_or(TurnError::MissingAttribute("NONCE"))?
            .0
            .to_owned();
        let realm = match msg.get::<Realm<'_>>()? {
            Some(r) => r.0.to_owned(),
            None => self
                .auth
                .as_ref()
                .map(|a| a.realm.clone())
                .ok_or(TurnError::MissingAttribute("REALM"))?,
        };
        let (feature_algorithms, feature_userhash) = nonce_features(&nonce);
        let algorithms = if feature_algorithms {
            msg.get::<PasswordAlgorithms<'_>>()?.and_then(|list| {
                let chosen = list
                    .iter()
                    .find_map(|a| PasswordAlgorithm::from_number(a.algorithm))?;
                let mut raw = Vec::new();
                for a in list.iter() {
                    raw.extend_from_slice(&a.algorithm.to_be_bytes());
                    raw.extend_from_slice(&(a.params.len() as u16).to_be_bytes());
                    raw.extend_from_slice(a.params);
                    raw.resize((raw.len() + 3) & !3, 0);
                }
                Some((raw, chosen))
            })
        } else {
            None
        };
        let algorithm = algorithms.as_ref().map_or(PasswordAlgorithm::Md5, |a| a.1);
        let c = &self.config.credentials;
        let key = IntegrityKey::long_term(&c.username, &realm, &c.password, algorithm)?;
        let userhash = if feature_userhash {
            Some(userhash(&c.username, &realm)?)
        } else {
            None
        };
        self.auth = Some(Auth {
            username: c.username.clone(),
            realm,
            nonce,
            key,
            algorithms,
            userhash,
        });
        Ok(())
    }

    fn fail(&mut self, purpose: Purpose, error: TurnError) {
        debug!(?purpose, %error, "TURN request failed");
        match purpose {
            Purpose::Allocate
            | Purpose::Refresh
            | Purpose::Check
            | Purpose::Move
            | Purpose::MoveConfirm => self.lose(error),
            Purpose::Deallocate => self.finish_deallocation(),
            Purpose::Permission(ip) => {
                self.permissions.retain(|p| p.ip != ip);
                self.events
                    .push_back(AllocationEvent::PermissionFailed(ip, error));
            }
            Purpose::Channel(n) => {
                if let Some(i) = self.channels.iter().position(|c| c.number == n) {
                    let c = self.channels.swap_remove(i);
                    self.events
                        .push_back(AllocationEvent::ChannelFailed(c.peer, error));
                }
            }
        }
    }

    fn lose(&mut self, error: TurnError) {
        if self.state == State::Done {
            return;
        }
        if self.deallocate_when_granted {
            // Nothing was granted: the deallocation asked for is complete.
            return self.finish_deallocation();
        }
        self.state = State::Done;
        self.purposes.clear();
        self.moving = false;
        self.deferred.clear();
        self.events.push_back(AllocationEvent::Lost(error));
    }

    fn finish_deallocation(&mut self) {
        if self.state != State::Done {
            self.state = State::Done;
            self.purposes.clear();
            self.events.push_back(AllocationEvent::Deallocated);
        }
    }
}

/// Adds USERNAME or USERHASH, REALM, NONCE, and the negotiated password algorithm.
fn add_auth(b: &mut MessageBuilder<'_>, a: &Auth) -> Result<(), StunError> {
    match &a.userhash {
        Some(h) => b.add(&UserHash(h))?,
        None => b.add(&Username(&a.username))?,
    };
    b.add(&Realm(&a.realm))?;
    b.add(&Nonce(&a.nonce))?;
    if let Some((raw, chosen)) = &a.algorithms {
        b.add_raw(AttributeType::PASSWORD_ALGORITHMS, raw)?;
        b.add(&PasswordAlgorithmAttr {
            algorithm: chosen.number(),
            params: &[],
        })?;
    }
    Ok(())
}

/// Whether a 420's UNKNOWN-ATTRIBUTES lists MOBILITY-TICKET.
fn names_mobility_ticket(msg: &Message<'_>) -> bool {
    msg.get::<UnknownAttributes<'_>>()
        .ok()
        .flatten()
        .is_some_and(|u| u.types().any(|t| t == AttributeType::MOBILITY_TICKET))
}

/// The security features a nonce announces (RFC 8489 §9.2): (password algorithms,
/// user-name anonymity).
fn nonce_features(nonce: &str) -> (bool, bool) {
    let Some(rest) = nonce.strip_prefix(NONCE_COOKIE) else {
        return (false, false);
    };
    let Some(b64) = rest.get(..4) else {
        return (false, false);
    };
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(bits) if !bits.is_empty() => (bits[0] & 0x80 != 0, bits[0] & 0x40 != 0),
        _ => (false, false),
    }
}

#[cfg(test)]
mod tests;
