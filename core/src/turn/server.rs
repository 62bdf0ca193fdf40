//! A small TURN server for development and tests, sans-IO: UDP allocations, long-term and
//! REST credentials, nonces, permissions, channels and lifetimes (RFC 8656). coturn remains
//! what pinhole is tested against and what we recommend in production.
//!
//! Relayed sockets belong to the driver: when an Allocate passes authentication the
//! server asks for one ([`ServerAction::BindRelay`]) and answers the client once the driver
//! reports it bound ([`TurnServer::relay_bound`]). Datagrams from peers arrive with the
//! relayed address as their destination.
//!
//! # Safe on a public address
//!
//! Someone will run it on one, so it takes coturn's defaults as the bar:
//! - **Peers** ([`PeerPolicy`]): only global unicast peers by default. Loopback, link-local
//!   (169.254.169.254 is a cloud metadata service), private and reserved peers are refused
//!   (403 on CreatePermission and ChannelBind, Send dropped) unless allowed; unspecified,
//!   multicast and broadcast peers, and the server's own listening and relayed addresses,
//!   are refused whatever the configuration, and datagrams *from* its own addresses are
//!   dropped (relaying to itself is a loop a few spoofed datagrams can start).
//! - **Nonces** are minted by the server and verified: a keyed MAC over their expiry, the
//!   client's transport address and the client's allocation (if any). A nonce the server
//!   never issued, one dated in the future, one from another transport address, or one
//!   issued before the client's current allocation existed gets 438 with a fresh nonce.
//!   So a captured request cannot be replayed from another port, nor against a later
//!   allocation (a replayed Refresh with lifetime 0 deletes nothing it was not meant to).
//! - **Quotas**: allocations in total and per user (for REST credentials, the user is the
//!   part after the expiry), permissions and channels per allocation.
//! - **Per-source brakes**: failed authentications per source IP are limited (a password
//!   guesser gets a few tries, then silence), and so are the answers the server gives
//!   before authentication (Binding responses, 401 and 438 challenges), which are larger
//!   than the requests that cause them.
//! - **Timers** live in a heap with one entry per allocation, permission and channel:
//!   the cost of a timeout or a datagram does not grow with the number of permissions.

mod policy;

pub use policy::{Cidr, CidrError, PeerClass, PeerPolicy};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tracing::debug;

use super::channel::{ChannelData, MAX_CHANNEL, MIN_CHANNEL, is_channel_data};
use super::{CHANNEL_REFRESH, PERMISSION_REFRESH};
use crate::ratelimit::{RateLimit, RateLimiter};
use crate::stun::attributes::{
    AddressFamily, ChannelNumber, Data, ErrorCode, Lifetime, Nonce, Realm, RequestedAddressFamily,
    RequestedTransport, Software, UnknownAttributes, Username, XorMappedAddress, XorPeerAddress,
    XorRelayedAddress,
};
use crate::stun::{
    AttributeType, Class, IntegrityKey, Message, MessageBuilder, MessageType, Method,
    PasswordAlgorithm, TransactionId,
};
use crate::{Protocol, Received, Transmit};

/// Permissions last 300 s (RFC 8656 §9).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel bindings last 600 s (RFC 8656 §12).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const _: () = assert!(PERMISSION_REFRESH.as_secs() < PERMISSION_LIFETIME.as_secs());
const _: () = assert!(CHANNEL_REFRESH.as_secs() < CHANNEL_LIFETIME.as_secs());

/// The default allocation lifetime (RFC 8656 §3.2: 10 minutes).
pub const DEFAULT_ALLOCATION_LIFETIME: Duration = Duration::from_secs(600);
/// Default cap on allocations in total.
pub const DEFAULT_MAX_ALLOCATIONS: usize = 1024;
/// Default cap on one user's allocations (REST users: per name after the expiry).
pub const DEFAULT_MAX_ALLOCATIONS_PER_USER: usize = 64;
/// Default cap on permissions per allocation. An ICE agent permits one IP per remote
/// candidate address, rarely more than a dozen.
pub const DEFAULT_MAX_PERMISSIONS: usize = 128;
/// Default cap on channels per allocation (RFC 8656 §12 allows 4096).
pub const DEFAULT_MAX_CHANNELS: usize = 128;
/// Default brake on answers given before authentication (Binding responses, 401 and 438
/// challenges), per source IP: 50 a second, bursts of 100.
pub const DEFAULT_UNAUTHENTICATED_RATE: RateLimit = RateLimit {
    per_second: 50,
    burst: 100,
};
/// Default brake on failed authentications per source IP: 10 at once, then one every
/// 2 s on average (a token bucket holds whole tokens: 1 per second with a burst of 10,
/// and each failure costs 2, so sustained guessing runs at 1 try per 2 s).
pub const DEFAULT_AUTH_FAILURE_RATE: RateLimit = RateLimit {
    per_second: 1,
    burst: 10,
};
/// Each failed authentication spends this many tokens of [`DEFAULT_AUTH_FAILURE_RATE`].
const AUTH_FAILURE_COST: u32 = 2;
/// At most this many of the server's own addresses are remembered (one per local IP).
const MAX_OWN_LISTEN: usize = 64;

/// How users authenticate.
#[derive(Clone, Default)]
pub struct ServerCredentials {
    /// Static users: name → password.
    pub users: HashMap<String, String>,
    /// A TURN REST shared secret (coturn's static-auth-secret).
    pub rest_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredentials")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field(
                "rest_secret",
                &self.rest_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The server's settings. [`TurnServerConfig::new`] gives the safe defaults; change
/// fields after it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TurnServerConfig {
    /// The address clients reach (UDP). May be a wildcard (`0.0.0.0:3478`): relayed
    /// addresses are then concrete ones (see [`ServerAction::BindRelay`]).
    pub listen: SocketAddr,
    /// The realm.
    pub realm: String,
    /// Who may allocate.
    pub credentials: ServerCredentials,
    /// Nonces go stale after this long (438).
    pub nonce_lifetime: Duration,
    /// The default allocation lifetime, also the shortest granted (RFC 8656 §7.2: a
    /// client asking for less gets the default).
    pub default_lifetime: Duration,
    /// The longest allocation lifetime granted (RFC 8656 suggests 3600 s).
    pub max_lifetime: Duration,
    /// Unix time at the `Instant` the server was created: REST user names carry an expiry.
    pub unix_time_at_start: u64,
    /// At most this many allocations in total (486 beyond).
    pub max_allocations: usize,
    /// At most this many allocations per user (486 beyond).
    pub max_allocations_per_user: usize,
    /// At most this many permissions (peer IPs) per allocation (508 beyond, RFC 8656 §9.2).
    pub max_permissions: usize,
    /// At most this many channels per allocation (508 beyond, RFC 8656 §12.2).
    pub max_channels: usize,
    /// Which peers allocations may reach.
    pub peers: PeerPolicy,
    /// The IP relayed sockets are bound on (coturn's `--relay-ip`). Default: the listen
    /// IP when it is concrete, else the local IP the server answers the client from.
    pub relay_ip: Option<IpAddr>,
    /// The IP advertised in XOR-RELAYED-ADDRESS instead of the bound one, for a server
    /// behind a 1:1 NAT (coturn's `--external-ip`).
    pub external_ip: Option<IpAddr>,
    /// Brake on answers given before authentication, per source IP (`None`: no brake).
    pub unauthenticated_rate: Option<RateLimit>,
    /// Brake on failed authentications per source IP.
    pub auth_failure_rate: RateLimit,
}

impl TurnServerConfig {
    /// A server on `listen` for `realm` with the defaults and no users.
    pub fn new(listen: SocketAddr, realm: impl Into<String>, unix_time_at_start: u64) -> Self {
        Self {
            listen,
            realm: realm.into(),
            credentials: ServerCredentials::default(),
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: DEFAULT_ALLOCATION_LIFETIME,
            max_lifetime: Duration::from_secs(3600),
            unix_time_at_start,
            max_allocations: DEFAULT_MAX_ALLOCATIONS,
            max_allocations_per_user: DEFAULT_MAX_ALLOCATIONS_PER_USER,
            max_permissions: DEFAULT_MAX_PERMISSIONS,
            max_channels: DEFAULT_MAX_CHANNELS,
            peers: PeerPolicy::default(),
            relay_ip: None,
            external_ip: None,
            unauthenticated_rate: Some(DEFAULT_UNAUTHENTICATED_RATE),
            auth_failure_rate: DEFAULT_AUTH_FAILURE_RATE,
        }
    }
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerAction {
    /// Bind a UDP socket (any port) for the allocation of `client`, on `ip` when given,
    /// else on the concrete local IP the server reaches `client` from, then call
    /// [`TurnServer::relay_bound`] (or [`TurnServer::relay_failed`]). Never a wildcard
    /// address: the relayed address is advertised to peers.
    BindRelay {
        /// The client the relay is for.
        client: SocketAddr,
        /// The IP to bind on (`None`: the one toward `client`).
        ip: Option<IpAddr>,
    },
    /// Close the relayed socket.
    ReleaseRelay(SocketAddr),
}

#[derive(Debug)]
struct Alloc {
    /// Distinguishes this allocation from earlier ones of the same client (nonces, timers).
    serial: u64,
    /// The bound relayed socket's address.
    relayed: Option<SocketAddr>,
    username: String,
    /// The quota key: the user name, or for REST credentials the part after the expiry.
    quota_user: String,
    key: IntegrityKey,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    /// channel → (peer, expiry)
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// peer → channel
    channel_of: HashMap<SocketAddr, u16>,
    /// The Allocate transaction, answered once the relay is bound.
    pending_tid: Option<(TransactionId, Duration)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Allocation,
    Permission(IpAddr),
    Channel(u16),
}

/// A heap entry: when, whose (client and allocation serial), what.
type Timer = Reverse<(Instant, SocketAddr, u64, TimerKind)>;

/// How a nonce checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonceCheck {
    Valid,
    Stale,
    NotOurs,
}

/// The TURN server machine. See the module docs.
#[derive(Debug)]
pub struct TurnServer {
    config: TurnServerConfig,
    start: Instant,
    rng: ChaCha20Rng,
    nonce_key: [u8; 32],
    next_serial: u64,
    allocations: HashMap<SocketAddr, Alloc>,
    by_relay: HashMap<SocketAddr, SocketAddr>,
    per_user: HashMap<String, usize>,
    /// The server's relayed addresses, bound and advertised.
    own_relays: HashSet<SocketAddr>,
    /// The server's listening addresses (concrete ones).
    own_listen: HashSet<SocketAddr>,
    timers: BinaryHeap<Timer>,
    /// Heap entries of allocations that no longer exist (dropped lazily).
    stale_timers: usize,
    unauthenticated: Option<RateLimiter>,
    auth_failures: RateLimiter,
    transmits: VecDeque<Transmit>,
    actions: VecDeque<ServerAction>,
}

impl TurnServer {
    /// A server starting at `now`.
    pub fn new(now: Instant, config: TurnServerConfig, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut nonce_key = [0u8; 32];
        rng.fill_bytes(&mut nonce_key);
        let mut own_listen = HashSet::new();
        if !config.listen.ip().is_unspecified() {
            own_listen.insert(config.listen);
        }
        if let Some(ip) = config.external_ip {
            own_listen.insert(SocketAddr::new(ip, config.listen.port()));
        }
        Self {
            unauthenticated: config.unauthenticated_rate.map(RateLimiter::new),
            auth_failures: RateLimiter::new(config.auth_failure_rate),
            config,
            start: now,
            rng,
            nonce_key,
            next_serial: 1,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
            own_relays: HashSet::new(),
            own_listen,
            timers: BinaryHeap::new(),
            stale_timers: 0,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
        }
    }

    /// How many allocations exist.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// How many permissions the allocation of `client` holds (0 without one).
    pub fn permissions_of(&self, client: SocketAddr) -> usize {
        self.allocations
            .get(&client)
            .map_or(0, |a| a.permissions.len())
    }

    /// How many timer entries are kept: bounded by the live allocations, permissions and
    /// channels (plus those of removed allocations, compacted away).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// The next datagram to send (from the listen address or a relayed one).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next job for the driver.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<ServerAction> {
        self.actions.pop_front()
    }

    /// When allocations, permissions or channels next expire. Constant time: the top of
    /// a heap (which may hold an entry that has since been refreshed; `handle_timeout`
    /// then re-files it).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, ..))| *t)
    }

    fn arm(&mut self, at: Instant, client: SocketAddr, serial: u64, kind: TimerKind) {
        self.timers.push(Reverse((at, client, serial, kind)));
    }

    /// Expires allocations, permissions and channels that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut refiled = Vec::new();
        while let Some(&Reverse((at, client, serial, kind))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self
                .allocations
                .get_mut(&client)
                .filter(|a| a.serial == serial)
            else {
                self.stale_timers = self.stale_timers.saturating_sub(1);
                continue;
            };
            match kind {
                TimerKind::Allocation => {
                    if a.expires <= now {
                        debug!(%client, user = %a.username, "allocation expired");
                        self.remove(client);
                    } else {
                        refiled.push((a.expires, client, serial, kind));
                    }
                }
                TimerKind::Permission(ip) => match a.permissions.get(&ip) {
                    Some(&t) if t <= now => {
                        a.permissions.remove(&ip);
                        debug!(%client, peer = %ip, "permission expired");
                    }
                    Some(&t) => refiled.push((t, client, serial, kind)),
                    None => {}
                },
                TimerKind::Channel(ch) => match a.channels.get(&ch) {
                    Some(&(peer, t)) if t <= now => {
                        a.channels.remove(&ch);
                        a.channel_of.remove(&peer);
                        debug!(%client, channel = ch, %peer, "channel expired");
                    }
                    Some(&(_, t)) => refiled.push((t, client, serial, kind)),
                    None => {}
                },
            }
        }
        for (t, c, s, k) in refiled {
            self.arm(t, c, s, k);
        }
    }

    /// The driver bound the relayed socket for `client`.
    pub fn relay_bound(&mut self, client: SocketAddr, relayed: SocketAddr) {
        let Some(a) = self.allocations.get_mut(&client) else {
            self.actions.push_back(ServerAction::ReleaseRelay(relayed));
            return;
        };
        a.relayed = Some(relayed);
        self.by_relay.insert(relayed, client);
        let advertised = advertised(&self.config, relayed);
        self.own_relays.insert(relayed);
        self.own_relays.insert(advertised);
        if self.own_listen.len() < MAX_OWN_LISTEN {
            // With a wildcard listen address, the relay's IP is one the server listens on.
            self.own_listen
                .insert(SocketAddr::new(relayed.ip(), self.config.listen.port()));
        }
        debug!(%client, user = %a.username, relayed = %advertised, "allocation created");
        if let Some((tid, lifetime)) = a.pending_tid.take() {
            let key = a.key.clone();
            let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
            self.respond(client, Method::ALLOCATE, tid, Some(&key), |b| {
                b.add(&XorRelayedAddress(advertised))?;
                b.add(&XorMappedAddress(client))?;
                b.add(&Lifetime(secs))?;
                Ok(())
            });
        }
    }

    /// The driver could not bind a relayed socket for `client`: 508.
    pub fn relay_failed(&mut self, client: SocketAddr) {
        let pending = self.allocations.get(&client).and_then(|a| {
            a.pending_tid
                .map(|(tid, _)| (tid, a.key.clone()))
                .filter(|_| a.relayed.is_none())
        });
        if let Some((tid, key)) = pending {
            self.remove(client);
            self.error(
                client,
                Method::ALLOCATE,
                tid,
                508,
                "Insufficient Capacity",
                Some(&key),
            );
        }
    }

    fn remove(&mut self, client: SocketAddr) {
        let Some(a) = self.allocations.remove(&client) else {
            return;
        };
        if let Some(r) = a.relayed {
            self.by_relay.remove(&r);
            self.own_relays.remove(&r);
            self.own_relays.remove(&advertised(&self.config, r));
            self.actions.push_back(ServerAction::ReleaseRelay(r));
        }
        if let Some(n) = self.per_user.get_mut(&a.quota_user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&a.quota_user);
            }
        }
        // Its timer entries stay in the heap until due; compact when they dominate, so
        // that allocating and deleting in a loop cannot grow the heap without bound.
        self.stale_timers += 1 + a.permissions.len() + a.channels.len();
        if self.stale_timers > 1024 && self.stale_timers > self.timers.len() / 2 {
            let live = &self.allocations;
            self.timers
                .retain(|Reverse((_, c, s, _))| live.get(c).is_some_and(|a| a.serial == *s));
            self.stale_timers = 0;
        }
    }

    /// Whether `addr` is one of the server's own sockets (listening or relayed).
    fn is_own(&self, addr: SocketAddr) -> bool {
        if self.own_relays.contains(&addr) || self.own_listen.contains(&addr) {
            return true;
        }
        // A wildcard listener also answers on loopback.
        self.config.listen.ip().is_unspecified()
            && addr.port() == self.config.listen.port()
            && (addr.ip().is_loopback() || addr.ip().is_unspecified())
    }

    /// Handles a datagram: from a client to the listen address, or from a peer to a
    /// relayed address.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) {
        if self.by_relay.contains_key(&rx.destination) || rx.destination != self.config.listen {
            self.relay_from_peer(now, rx);
            return;
        }
        let client = rx.source;
        if self.is_own(client) {
            debug!(from = %client, "datagram from the server's own address dropped");
            return;
        }
        if is_channel_data(rx.contents) {
            self.channel_data(now, client, rx.contents);
            return;
        }
        let Ok(msg) = Message::parse(rx.contents) else {
            debug!(from = %client, "garbage dropped");
            return;
        };
        if msg.has_fingerprint() && msg.verify_fingerprint().is_err() {
            debug!(from = %client, "message with a bad FINGERPRINT dropped");
            return;
        }
        let tid = msg.transaction_id();
        match (msg.class(), msg.method()) {
            (Class::Indication, Method::SEND) => self.send_indication(now, client, &msg),
            // A client's keepalive toward us (RFC 8489 §6.3.2: no answer): it has done
            // its job by crossing the NATs on the way.
            (Class::Indication, Method::BINDING) => {}
            (Class::Request, method) => {
                if msg.has_unknown_comprehension_required() {
                    if !self.unauthenticated_allowed(now, client) {
                        return;
                    }
                    let mut raw = Vec::new();
                    for t in msg.unknown_comprehension_required().take(16) {
                        raw.extend_from_slice(&t.0.to_be_bytes());
                    }
                    let unknown = UnknownAttributes::from_wire(&raw);
                    debug!(from = %client, "request with unknown comprehension-required attributes: 420");
                    self.respond_error_with(
                        client,
                        method,
                        tid,
                        420,
                        "Unknown Attribute",
                        None,
                        unknown,
                    );
                    return;
                }
                if method == Method::BINDING {
                    if self.unauthenticated_allowed(now, client) {
                        self.respond(client, Method::BINDING, tid, None, |b| {
                            b.add(&XorMappedAddress(client))?;
                            Ok(())
                        });
                    }
                    return;
                }
                self.request(now, client, &msg, method);
            }
            _ => debug!(from = %client, "unexpected message dropped"),
        }
    }

    /// Whether an answer that needs no authentication may go to `client` now.
    fn unauthenticated_allowed(&mut self, now: Instant, client: SocketAddr) -> bool {
        let ok = self
            .unauthenticated
            .as_mut()
            .is_none_or(|l| l.allow(now, client.ip()));
        if !ok {
            debug!(from = %client, "over the unauthenticated rate: dropped");
        }
        ok
    }

    /// A peer's address for `method`: refused (403) by the policy, as the server's own
    /// address, or for its family (443).
    fn check_peer(
        &self,
        client: SocketAddr,
        peer: SocketAddr,
        whole: bool,
    ) -> Result<(), (u16, &'static str)> {
        const FORBIDDEN: (u16, &str) = (403, "Forbidden");
        if let Err(class) = self.config.peers.check(peer.ip()) {
            debug!(%client, %peer, class = class.as_str(), "peer refused by the policy");
            return Err(FORBIDDEN);
        }
        if whole && self.is_own(peer) {
            debug!(%client, %peer, "peer is the server's own address: refused");
            return Err(FORBIDDEN);
        }
        if peer.is_ipv4() != self.config.listen.is_ipv4() {
            debug!(%client, %peer, "peer of another address family than the relay: 443");
            return Err((443, "Peer Address Family Mismatch"));
        }
        Ok(())
    }

    fn request(&mut self, now: Instant, client: SocketAddr, msg: &Message<'_>, method: Method) {
        let tid = msg.transaction_id();
        let Some(key) = self.authenticate(now, client, msg, method) else {
            return;
        };
        match method {
            Method::ALLOCATE => self.allocate(now, client, msg, key),
            Method::REFRESH => {
                let asked = msg.get::<Lifetime>().ok().flatten().map(|l| l.0);
                let lifetime = clamp_lifetime(asked, &self.config);
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
                };
                if asked == Some(0) {
                    debug!(%client, user = %a.username, "allocation deleted");
                    self.remove(client);
                    self.respond(client, method, tid, Some(&key), |b| {
                        b.add(&Lifetime(0))?;
                        Ok(())
                    });
                    return;
                }
                let earlier = now + lifetime < a.expires;
                a.expires = now + lifetime;
                let serial = a.serial;
                // A shorter lifetime than before: its heap entry is too late, add one.
                if earlier {
                    self.arm(now + lifetime, client, serial, TimerKind::Allocation);
                }
                let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
                self.respond(client, method, tid, Some(&key), |b| {
                    b.add(&Lifetime(secs))?;
                    Ok(())
                });
            }
            Method::CREATE_PERMISSION => self.create_permission(now, client, msg, key),
            Method::CHANNEL_BIND => self.channel_bind(now, client, msg, key),
            _ => self.error(client, method, tid, 400, "Bad Request", Some(&key)),
        }
    }

    fn create_permission(
        &mut self,
        now: Instant,
        client: SocketAddr,
        msg: &Message<'_>,
        key: IntegrityKey,
    ) {
        let method = Method::CREATE_PERMISSION;
        let tid = msg.transaction_id();
        let mut peers: Vec<SocketAddr> = Vec::new();
        for a in msg
            .attributes()
            .filter(|a| a.kind == AttributeType::XOR_PEER_ADDRESS)
        {
            use crate::stun::Attribute;
            match XorPeerAddress::decode(a.value, &tid) {
                Ok(p) => peers.push(p.0),
                Err(_) => return self.error(client, method, tid, 400, "Bad Request", Some(&key)),
            }
        }
        if !self.allocations.contains_key(&client) {
            return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
        }
        if peers.is_empty() {
            return self.error(client, method, tid, 400, "Bad Request", Some(&key));
        }
        // All or nothing (RFC 8656 §9.2).
        for p in &peers {
            if let Err((code, reason)) = self.check_peer(client, *p, false) {
                return self.error(client, method, tid, code, reason, Some(&key));
            }
        }
        let max = self.config.max_permissions;
        let Some(a) = self.allocations.get_mut(&client) else {
            return;
        };
        let mut new: Vec<IpAddr> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !a.permissions.contains_key(ip))
            .collect();
        new.sort_unstable();
        new.dedup();
        if a.permissions.len() + new.len() > max {
            debug!(%client, held = a.permissions.len(), max, "permission quota reached: 508");
            return self.error(
                client,
                method,
                tid,
                508,
                "Insufficient Capacity",
                Some(&key),
            );
        }
        let serial = a.serial;
        for p in &peers {
            a.permissions.insert(p.ip(), now + PERMISSION_LIFETIME);
        }
        for ip in new {
            debug!(%client, peer = %ip, "permission created");
            self.arm(
                now + PERMISSION_LIFETIME,
                client,
                serial,
                TimerKind::Permission(ip),
            );
        }
        self.respond(client, method, tid, Some(&key), |_| Ok(()));
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        client: SocketAddr,
        msg: &Message<'_>,
        key: IntegrityKey,
    ) {
        let method = Method::CHANNEL_BIND;
        let tid = msg.transaction_id();
        let (Ok(Some(ChannelNumber(ch))), Ok(Some(XorPeerAddress(peer)))) =
            (msg.get::<ChannelNumber>(), msg.get::<XorPeerAddress>())
        else {
            return self.error(client, method, tid, 400, "Bad Request", Some(&key));
        };
        if !self.allocations.contains_key(&client) {
            return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
        }
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&ch) {
            return self.error(client, method, tid, 400, "Bad Request", Some(&key));
        }
        if let Err((code, reason)) = self.check_peer(client, peer, true) {
            return self.error(client, method, tid, code, reason, Some(&key));
        }
        let (max_ch, max_perm) = (self.config.max_channels, self.config.max_permissions);
        let Some(a) = self.allocations.get_mut(&client) else {
            return;
        };
        // A channel is bound to one peer and a peer to one channel (RFC 8656 §12.2).
        let channel_elsewhere = a.channels.get(&ch).is_some_and(|(p, _)| *p != peer);
        let peer_elsewhere = a.channel_of.get(&peer).is_some_and(|c| *c != ch);
        if channel_elsewhere || peer_elsewhere {
            return self.error(client, method, tid, 400, "Bad Request", Some(&key));
        }
        let new_channel = !a.channels.contains_key(&ch);
        let new_permission = !a.permissions.contains_key(&peer.ip());
        if (new_channel && a.channels.len() >= max_ch)
            || (new_permission && a.permissions.len() >= max_perm)
        {
            debug!(%client, channels = a.channels.len(), max_ch, "channel quota reached: 508");
            return self.error(
                client,
                method,
                tid,
                508,
                "Insufficient Capacity",
                Some(&key),
            );
        }
        let serial = a.serial;
        a.channels.insert(ch, (peer, now + CHANNEL_LIFETIME));
        a.channel_of.insert(peer, ch);
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        if new_channel {
            debug!(%client, channel = ch, %peer, "channel bound");
            self.arm(
                now + CHANNEL_LIFETIME,
                client,
                serial,
                TimerKind::Channel(ch),
            );
        }
        if new_permission {
            debug!(%client, peer = %peer.ip(), "permission created");
            self.arm(
                now + PERMISSION_LIFETIME,
                client,
                serial,
                TimerKind::Permission(peer.ip()),
            );
        }
        self.respond(client, method, tid, Some(&key), |_| Ok(()));
    }

    fn allocate(&mut self, now: Instant, client: SocketAddr, msg: &Message<'_>, key: IntegrityKey) {
        let tid = msg.transaction_id();
        let method = Method::ALLOCATE;
        if let Some(a) = self.allocations.get(&client) {
            // A retransmission of the same Allocate is answered again; another is 437.
            if a.pending_tid.is_some_and(|(t, _)| t == tid) {
                return;
            }
            if let Some(relayed) = a.relayed {
                let secs = a.expires.saturating_duration_since(now).as_secs() as u32;
                let k = a.key.clone();
                let advertised = advertised(&self.config, relayed);
                return self.respond(client, method, tid, Some(&k), |b| {
                    b.add(&XorRelayedAddress(advertised))?;
                    b.add(&XorMappedAddress(client))?;
                    b.add(&Lifetime(secs))?;
                    Ok(())
                });
            }
            return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
        }
        match msg.get::<RequestedTransport>() {
            Ok(Some(RequestedTransport::UDP)) => {}
            Ok(Some(_)) => {
                return self.error(
                    client,
                    method,
                    tid,
                    442,
                    "Unsupported Transport Protocol",
                    Some(&key),
                );
            }
            _ => return self.error(client, method, tid, 400, "Bad Request", Some(&key)),
        }
        let family_ok = match msg.get::<RequestedAddressFamily>() {
            Ok(None) => true,
            Ok(Some(RequestedAddressFamily(f))) => {
                (f == AddressFamily::V6) == self.config.listen.is_ipv6()
            }
            Err(_) => return self.error(client, method, tid, 400, "Bad Request", Some(&key)),
        };
        if !family_ok {
            return self.error(
                client,
                method,
                tid,
                440,
                "Address Family not Supported",
                Some(&key),
            );
        }
        let username = msg
            .get::<Username<'_>>()
            .ok()
            .flatten()
            .map(|u| u.0.to_owned())
            .unwrap_or_default();
        let quota_user = self.quota_user(&username).to_owned();
        let used = self.per_user.get(&quota_user).copied().unwrap_or(0);
        if self.allocations.len() >= self.config.max_allocations
            || used >= self.config.max_allocations_per_user
        {
            debug!(%client, user = %username, used, "allocation quota reached: 486");
            return self.error(
                client,
                method,
                tid,
                486,
                "Allocation Quota Reached",
                Some(&key),
            );
        }
        let asked = msg.get::<Lifetime>().ok().flatten().map(|l| l.0);
        let lifetime = clamp_lifetime(asked, &self.config);
        let serial = self.next_serial;
        self.next_serial += 1;
        *self.per_user.entry(quota_user.clone()).or_insert(0) += 1;
        self.allocations.insert(
            client,
            Alloc {
                serial,
                relayed: None,
                username,
                quota_user,
                key,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
                pending_tid: Some((tid, lifetime)),
            },
        );
        self.arm(now + lifetime, client, serial, TimerKind::Allocation);
        let ip = self
            .config
            .relay_ip
            .or_else(|| Some(self.config.listen.ip()).filter(|ip| !ip.is_unspecified()));
        self.actions
            .push_back(ServerAction::BindRelay { client, ip });
    }

    /// The quota key of a user: REST user names (`expiry:name`) count as `name`, so that
    /// minting new expiries does not escape the quota.
    fn quota_user<'u>(&self, user: &'u str) -> &'u str {
        if self.config.credentials.users.contains_key(user) {
            return user;
        }
        match user.split_once(':') {
            Some((expiry, name)) if expiry.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => user,
        }
    }

    /// The long-term credential mechanism (RFC 8489 §9.2): 401 with a nonce, 438 when the
    /// nonce is stale or not one this server issued for this client, 401 when the
    /// integrity check fails. Returns the key on success.
    fn authenticate(
        &mut self,
        now: Instant,
        client: SocketAddr,
        msg: &Message<'_>,
        method: Method,
    ) -> Option<IntegrityKey> {
        let tid = msg.transaction_id();
        let (Ok(Some(Username(user))), Ok(Some(Realm(realm))), Ok(Some(Nonce(nonce)))) = (
            msg.get::<Username<'_>>(),
            msg.get::<Realm<'_>>(),
            msg.get::<Nonce<'_>>(),
        ) else {
            self.challenge(now, client, method, tid, 401, "Unauthenticated");
            return None;
        };
        if !msg.has_integrity() || realm != self.config.realm {
            self.challenge(now, client, method, tid, 401, "Unauthenticated");
            return None;
        }
        // The brake: a source that failed too often gets silence, before any HMAC.
        if !self.auth_failures.check(now, client.ip()) {
            debug!(from = %client, "too many failed authentications from this source: dropped");
            return None;
        }
        match self.check_nonce(now, client, method, nonce) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => {
                self.challenge(now, client, method, tid, 438, "Stale Nonce");
                return None;
            }
            NonceCheck::NotOurs => {
                debug!(from = %client, "nonce not issued for this client's address and allocation: 438 with a fresh one");
                self.challenge(now, client, method, tid, 438, "Stale Nonce");
                return None;
            }
        }
        let Some(password) = self.password_of(now, user) else {
            debug!(from = %client, %user, "unknown user");
            self.auth_failed(now, client);
            self.challenge(now, client, method, tid, 401, "Unauthenticated");
            return None;
        };
        let key =
            IntegrityKey::long_term(user, &self.config.realm, &password, PasswordAlgorithm::Md5)
                .ok()?;
        if msg.verify_integrity(&key).is_err() {
            debug!(from = %client, %user, "integrity check failed");
            self.auth_failed(now, client);
            self.challenge(now, client, method, tid, 401, "Unauthenticated");
            return None;
        }
        if let Some(a) = self.allocations.get(&client) {
            if a.username != user && method != Method::ALLOCATE {
                self.error(client, method, tid, 441, "Wrong Credentials", Some(&key));
                return None;
            }
        }
        Some(key)
    }

    fn auth_failed(&mut self, now: Instant, client: SocketAddr) {
        for _ in 0..AUTH_FAILURE_COST {
            self.auth_failures.spend(now, client.ip());
        }
    }

    fn password_of(&self, now: Instant, user: &str) -> Option<String> {
        if let Some(p) = self.config.credentials.users.get(user) {
            return Some(p.clone());
        }
        let secret = self.config.credentials.rest_secret.as_ref()?;
        let (expiry, _) = user.split_once(':')?;
        let expiry: u64 = expiry.parse().ok()?;
        let now_unix =
            self.config.unix_time_at_start + now.saturating_duration_since(self.start).as_secs();
        if expiry < now_unix {
            return None;
        }
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).ok()?;
        mac.update(user.as_bytes());
        Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// The epoch nonces of `client` are bound to: its allocation's serial, 0 without one.
    fn epoch_of(&self, client: SocketAddr) -> u64 {
        self.allocations.get(&client).map_or(0, |a| a.serial)
    }

    fn nonce_mac(&self, expiry: u64, client: SocketAddr, epoch: u64) -> [u8; 12] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&expiry.to_be_bytes());
        match client.ip() {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        mac.update(&epoch.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 12];
        out.copy_from_slice(&full[..12]);
        out
    }

    fn secs_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// `EXPIRY.MAC`: the expiry in seconds since the server started (hex), and a
    /// truncated HMAC-SHA256 under a key only this server holds over the expiry, the
    /// client's transport address and its allocation epoch.
    fn make_nonce(&self, now: Instant, client: SocketAddr) -> String {
        let expiry = self.secs_since_start(now) + self.config.nonce_lifetime.as_secs().max(1);
        let mac = self.nonce_mac(expiry, client, self.epoch_of(client));
        let mut s = format!("{expiry:x}.");
        for b in mac {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn check_nonce(
        &self,
        now: Instant,
        client: SocketAddr,
        method: Method,
        nonce: &str,
    ) -> NonceCheck {
        let Some((expiry, mac_hex)) = nonce.split_once('.') else {
            return NonceCheck::NotOurs;
        };
        if expiry.is_empty() || expiry.len() > 16 || mac_hex.len() != 24 {
            return NonceCheck::NotOurs;
        }
        let (Ok(expiry), Some(mac)) = (u64::from_str_radix(expiry, 16), decode_hex12(mac_hex))
        else {
            return NonceCheck::NotOurs;
        };
        let now_s = self.secs_since_start(now);
        // Never issued that far ahead: forged, whatever the MAC says.
        if expiry > now_s + self.config.nonce_lifetime.as_secs().max(1) {
            return NonceCheck::NotOurs;
        }
        let epoch = self.epoch_of(client);
        // An Allocate may still carry the nonce from before the allocation existed (a
        // retransmission, or a second Allocate answered 437).
        let epochs: &[u64] = if method == Method::ALLOCATE && epoch != 0 {
            &[epoch, 0]
        } else {
            &[epoch]
        };
        let ours = epochs
            .iter()
            .any(|e| bool::from(self.nonce_mac(expiry, client, *e).ct_eq(&mac)));
        if !ours {
            NonceCheck::NotOurs
        } else if expiry <= now_s {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    fn challenge(
        &mut self,
        now: Instant,
        client: SocketAddr,
        method: Method,
        tid: TransactionId,
        code: u16,
        reason: &str,
    ) {
        if !self.unauthenticated_allowed(now, client) {
            return;
        }
        let nonce = self.make_nonce(now, client);
        let realm = self.config.realm.clone();
        self.reply(
            client,
            MessageType::new(Class::Error, method),
            tid,
            None,
            |b| {
                b.add(&ErrorCode::new(code, reason))?;
                b.add(&Realm(&realm))?;
                b.add(&Nonce(&nonce))?;
                Ok(())
            },
        );
    }

    fn error(
        &mut self,
        client: SocketAddr,
        method: Method,
        tid: TransactionId,
        code: u16,
        reason: &str,
        key: Option<&IntegrityKey>,
    ) {
        debug!(%client, method = method.0, code, "error response");
        self.respond_error_with(client, method, tid, code, reason, key, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_error_with(
        &mut self,
        client: SocketAddr,
        method: Method,
        tid: TransactionId,
        code: u16,
        reason: &str,
        key: Option<&IntegrityKey>,
        unknown: Option<UnknownAttributes<'_>>,
    ) {
        self.reply(
            client,
            MessageType::new(Class::Error, method),
            tid,
            key,
            |b| {
                b.add(&ErrorCode::new(code, reason))?;
                if let Some(u) = &unknown {
                    b.add(u)?;
                }
                Ok(())
            },
        );
    }

    fn respond(
        &mut self,
        client: SocketAddr,
        method: Method,
        tid: TransactionId,
        key: Option<&IntegrityKey>,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), crate::stun::StunError>,
    ) {
        self.reply(
            client,
            MessageType::new(Class::Success, method),
            tid,
            key,
            fill,
        );
    }

    /// Builds a response (`fill`, then SOFTWARE, MESSAGE-INTEGRITY when there is a key,
    /// and FINGERPRINT) and queues it for the client.
    fn reply(
        &mut self,
        client: SocketAddr,
        kind: MessageType,
        tid: TransactionId,
        key: Option<&IntegrityKey>,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), crate::stun::StunError>,
    ) {
        let mut buf = [0u8; 512];
        let Ok(mut b) = MessageBuilder::new(&mut buf, kind, tid) else {
            return;
        };
        let built = fill(&mut b).and_then(|()| {
            b.add(&Software(SOFTWARE))?;
            if let Some(k) = key {
                b.add_message_integrity(k)?;
            }
            b.add_fingerprint()?;
            Ok(())
        });
        if built.is_ok() {
            self.push(self.config.listen, client, b.finish().to_vec());
        }
    }

    fn push(&mut self, source: SocketAddr, destination: SocketAddr, contents: Vec<u8>) {
        self.transmits.push_back(Transmit {
            proto: Protocol::Udp,
            source,
            destination,
            contents,
        });
    }

    fn send_indication(&mut self, now: Instant, client: SocketAddr, msg: &Message<'_>) {
        let (Ok(Some(XorPeerAddress(peer))), Ok(Some(Data(data)))) =
            (msg.get::<XorPeerAddress>(), msg.get::<Data<'_>>())
        else {
            return;
        };
        if self.check_peer(client, peer, true).is_err() {
            return;
        }
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        let (Some(relayed), true) = (
            a.relayed,
            a.permissions.get(&peer.ip()).is_some_and(|t| *t > now),
        ) else {
            debug!(%peer, "Send indication without permission dropped");
            return;
        };
        self.push(relayed, peer, data.to_vec());
    }

    fn channel_data(&mut self, now: Instant, client: SocketAddr, bytes: &[u8]) {
        let Ok(cd) = ChannelData::parse(bytes) else {
            return;
        };
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        let (Some(relayed), Some((peer, until))) = (a.relayed, a.channels.get(&cd.channel)) else {
            return;
        };
        if *until > now {
            let peer = *peer;
            self.push(relayed, peer, cd.data.to_vec());
        }
    }

    fn relay_from_peer(&mut self, now: Instant, rx: Received<'_>) {
        let Some(&client) = self.by_relay.get(&rx.destination) else {
            return;
        };
        if self.is_own(rx.source) {
            debug!(peer = %rx.source, "datagram from the server's own address to a relay dropped");
            return;
        }
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        if a.permissions.get(&rx.source.ip()).is_none_or(|t| *t <= now) {
            debug!(peer = %rx.source, "datagram from a peer without permission dropped");
            return;
        }
        let channel = a
            .channel_of
            .get(&rx.source)
            .filter(|c| a.channels.get(c).is_some_and(|(_, t)| *t > now))
            .copied();
        let out = match channel {
            Some(ch) => {
                let mut buf = vec![0u8; rx.contents.len() + 4];
                match ChannelData::emit(ch, rx.contents, false, &mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        buf
                    }
                    Err(_) => return,
                }
            }
            None => {
                let mut buf = vec![0u8; rx.contents.len() + 64];
                let mut tid = [0u8; 12];
                self.rng.fill_bytes(&mut tid);
                let Ok(mut b) = MessageBuilder::new(
                    &mut buf,
                    MessageType::new(Class::Indication, Method::DATA),
                    TransactionId(tid),
                ) else {
                    return;
                };
                if b.add(&XorPeerAddress(rx.source))
                    .and_then(|b| b.add(&Data(rx.contents)))
                    .is_err()
                {
                    return;
                }
                let n = b.finish().len();
                buf.truncate(n);
                buf
            }
        };
        self.push(self.config.listen, client, out);
    }
}

const SOFTWARE: &str = concat!("pinhole ", env!("CARGO_PKG_VERSION"));

/// The address advertised for a relay bound on `bound`.
fn advertised(config: &TurnServerConfig, bound: SocketAddr) -> SocketAddr {
    config
        .external_ip
        .map_or(bound, |ip| SocketAddr::new(ip, bound.port()))
}

/// RFC 8656 §7.2: the lifetime granted is the one asked for, but not less than the default
/// nor more than the maximum (and at least one second whatever the configuration says).
fn clamp_lifetime(asked: Option<u32>, c: &TurnServerConfig) -> Duration {
    let asked = asked.map_or(c.default_lifetime, |s| Duration::from_secs(u64::from(s)));
    asked
        .max(c.default_lifetime)
        .min(c.max_lifetime)
        .max(Duration::from_secs(1))
}

fn decode_hex12(s: &str) -> Option<[u8; 12]> {
    let b = s.as_bytes();
    if b.len() != 24 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 12];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
