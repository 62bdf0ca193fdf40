//! A small TURN server for development and tests, sans-IO: UDP allocations, long-term and
//! REST credentials, nonces, permissions, channels and lifetimes (RFC 8656). coturn remains
//! what pinhole is tested against and what we recommend in production.
//!
//! Relayed sockets belong to the driver: when an Allocate passes authentication the
//! server asks for one ([`ServerAction::BindRelay`]) and answers the client once the driver
//! reports it bound ([`TurnServer::relay_bound`]). Datagrams from peers arrive with the
//! relayed address as their destination.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha1::Sha1;
use tracing::debug;

use super::channel::{ChannelData, MAX_CHANNEL, MIN_CHANNEL, is_channel_data};
use super::{CHANNEL_REFRESH, PERMISSION_REFRESH};
use crate::stun::attributes::{
    ChannelNumber, Data, ErrorCode, Lifetime, Nonce, Realm, RequestedTransport, Software,
    UnknownAttributes, Username, XorMappedAddress, XorPeerAddress, XorRelayedAddress,
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

/// The server's settings.
#[derive(Debug, Clone)]
pub struct TurnServerConfig {
    /// The address clients reach (UDP).
    pub listen: SocketAddr,
    /// The realm.
    pub realm: String,
    /// Who may allocate.
    pub credentials: ServerCredentials,
    /// Nonces go stale after this long (438).
    pub nonce_lifetime: Duration,
    /// The default allocation lifetime (RFC 8656 §7.2: 600 s).
    pub default_lifetime: Duration,
    /// The longest allocation lifetime granted (RFC 8656 suggests 3600 s).
    pub max_lifetime: Duration,
    /// Unix time at the `Instant` the server was created: REST user names carry an expiry.
    pub unix_time_at_start: u64,
    /// At most this many allocations.
    pub max_allocations: usize,
}

impl TurnServerConfig {
    /// A server on `listen` for `realm` with the defaults and no users.
    pub fn new(listen: SocketAddr, realm: impl Into<String>, unix_time_at_start: u64) -> Self {
        Self {
            listen,
            realm: realm.into(),
            credentials: ServerCredentials::default(),
            nonce_lifetime: Duration::from_secs(600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            unix_time_at_start,
            max_allocations: 1024,
        }
    }
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAction {
    /// Bind a UDP socket on the listen IP (any port) for the allocation of `client`, then
    /// call [`TurnServer::relay_bound`] (or [`TurnServer::relay_failed`]).
    BindRelay {
        /// The client the relay is for.
        client: SocketAddr,
    },
    /// Close the relayed socket.
    ReleaseRelay(SocketAddr),
}

#[derive(Debug)]
struct Alloc {
    relayed: Option<SocketAddr>,
    username: String,
    key: IntegrityKey,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    /// channel → (peer, expiry)
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// The Allocate transaction, answered once the relay is bound.
    pending_tid: Option<(TransactionId, Duration)>,
}

/// The TURN server machine. See the module docs.
#[derive(Debug)]
pub struct TurnServer {
    config: TurnServerConfig,
    start: Instant,
    rng: ChaCha20Rng,
    allocations: HashMap<SocketAddr, Alloc>,
    by_relay: HashMap<SocketAddr, SocketAddr>,
    transmits: VecDeque<Transmit>,
    actions: VecDeque<ServerAction>,
}

impl TurnServer {
    /// A server starting at `now`.
    pub fn new(now: Instant, config: TurnServerConfig, seed: [u8; 32]) -> Self {
        Self {
            config,
            start: now,
            rng: ChaCha20Rng::from_seed(seed),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
        }
    }

    /// How many allocations exist.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
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

    /// When allocations, permissions or channels next expire.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations
            .values()
            .flat_map(|a| {
                std::iter::once(a.expires)
                    .chain(a.permissions.values().copied())
                    .chain(a.channels.values().map(|c| c.1))
            })
            .min()
    }

    /// Expires allocations, permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        let dead: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in dead {
            debug!(client = %c, "allocation expired");
            self.remove(c);
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, t| *t > now);
            a.channels.retain(|_, (_, t)| *t > now);
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
        if let Some((tid, lifetime)) = a.pending_tid.take() {
            let key = a.key.clone();
            let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
            self.respond(client, Method::ALLOCATE, tid, Some(&key), |b| {
                b.add(&XorRelayedAddress(relayed))?;
                b.add(&XorMappedAddress(client))?;
                b.add(&Lifetime(secs))?;
                Ok(())
            });
        }
    }

    /// The driver could not bind a relayed socket for `client`: 508.
    pub fn relay_failed(&mut self, client: SocketAddr) {
        if let Some(a) = self.allocations.remove(&client) {
            if let Some((tid, _)) = a.pending_tid {
                self.error(
                    client,
                    Method::ALLOCATE,
                    tid,
                    508,
                    "Insufficient Capacity",
                    Some(&a.key),
                );
            }
        }
    }

    fn remove(&mut self, client: SocketAddr) {
        if let Some(a) = self.allocations.remove(&client) {
            if let Some(r) = a.relayed {
                self.by_relay.remove(&r);
                self.actions.push_back(ServerAction::ReleaseRelay(r));
            }
        }
    }

    /// Handles a datagram: from a client to the listen address, or from a peer to a
    /// relayed address.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) {
        if rx.destination != self.config.listen {
            self.relay_from_peer(rx);
            return;
        }
        let client = rx.source;
        if is_channel_data(rx.contents) {
            self.channel_data(now, client, rx.contents);
            return;
        }
        let Ok(msg) = Message::parse(rx.contents) else {
            debug!(from = %client, "garbage dropped");
            return;
        };
        let tid = msg.transaction_id();
        match (msg.class(), msg.method()) {
            (Class::Indication, Method::SEND) => self.send_indication(now, client, &msg),
            (Class::Request, Method::BINDING) => {
                self.respond(client, Method::BINDING, tid, None, |b| {
                    b.add(&XorMappedAddress(client))?;
                    Ok(())
                });
            }
            (Class::Request, method) => self.request(now, client, &msg, method),
            _ => debug!(from = %client, "unexpected message dropped"),
        }
    }

    fn request(&mut self, now: Instant, client: SocketAddr, msg: &Message<'_>, method: Method) {
        let tid = msg.transaction_id();
        if msg.has_unknown_comprehension_required() {
            let mut raw = Vec::new();
            for t in msg.unknown_comprehension_required().take(16) {
                raw.extend_from_slice(&t.0.to_be_bytes());
            }
            let unknown = UnknownAttributes::from_wire(&raw);
            self.respond_error_with(client, method, tid, 420, "Unknown Attribute", None, unknown);
            return;
        }
        let Some(key) = self.authenticate(now, client, msg, method) else {
            return;
        };
        match method {
            Method::ALLOCATE => self.allocate(now, client, msg, key),
            Method::REFRESH => {
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
                };
                let asked = msg.get::<Lifetime>().ok().flatten().map(|l| l.0);
                if asked == Some(0) {
                    self.remove(client);
                    self.respond(client, method, tid, Some(&key), |b| {
                        b.add(&Lifetime(0))?;
                        Ok(())
                    });
                    return;
                }
                let lifetime = clamp_lifetime(asked, &self.config);
                a.expires = now + lifetime;
                let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
                self.respond(client, method, tid, Some(&key), |b| {
                    b.add(&Lifetime(secs))?;
                    Ok(())
                });
            }
            Method::CREATE_PERMISSION => {
                let peers: Vec<IpAddr> = msg
                    .attributes()
                    .filter(|a| a.kind == AttributeType::XOR_PEER_ADDRESS)
                    .filter_map(|a| {
                        use crate::stun::Attribute;
                        XorPeerAddress::decode(a.value, &tid).ok().map(|p| p.0.ip())
                    })
                    .collect();
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
                };
                if peers.is_empty() {
                    return self.error(client, method, tid, 400, "Bad Request", Some(&key));
                }
                for ip in peers {
                    a.permissions.insert(ip, now + PERMISSION_LIFETIME);
                }
                self.respond(client, method, tid, Some(&key), |_| Ok(()));
            }
            Method::CHANNEL_BIND => {
                let (Ok(Some(ChannelNumber(ch))), Ok(Some(XorPeerAddress(peer)))) =
                    (msg.get::<ChannelNumber>(), msg.get::<XorPeerAddress>())
                else {
                    return self.error(client, method, tid, 400, "Bad Request", Some(&key));
                };
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(client, method, tid, 437, "Allocation Mismatch", Some(&key));
                };
                let taken_by_other = a
                    .channels
                    .iter()
                    .any(|(c, (p, _))| (*c == ch) != (*p == peer));
                if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&ch) || taken_by_other {
                    return self.error(client, method, tid, 400, "Bad Request", Some(&key));
                }
                a.channels.insert(ch, (peer, now + CHANNEL_LIFETIME));
                a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
                self.respond(client, method, tid, Some(&key), |_| Ok(()));
            }
            _ => self.error(client, method, tid, 400, "Bad Request", Some(&key)),
        }
    }

    fn allocate(&mut self, now: Instant, client: SocketAddr, msg: &Message<'_>, key: IntegrityKey) {
        let tid = msg.transaction_id();
        if let Some(a) = self.allocations.get(&client) {
            // A retransmission of the same Allocate is answered again; another is 437.
            if a.pending_tid.is_some_and(|(t, _)| t == tid) {
                return;
            }
            if let Some(relayed) = a.relayed {
                let secs = a.expires.saturating_duration_since(now).as_secs() as u32;
                let k = a.key.clone();
                return self.respond(client, Method::ALLOCATE, tid, Some(&k), |b| {
                    b.add(&XorRelayedAddress(relayed))?;
                    b.add(&XorMappedAddress(client))?;
                    b.add(&Lifetime(secs))?;
                    Ok(())
                });
            }
            return self.error(
                client,
                Method::ALLOCATE,
                tid,
                437,
                "Allocation Mismatch",
                Some(&key),
            );
        }
        match msg.get::<RequestedTransport>() {
            Ok(Some(RequestedTransport::UDP)) => {}
            Ok(Some(_)) => {
                return self.error(
                    client,
                    Method::ALLOCATE,
                    tid,
                    442,
                    "Unsupported Transport Protocol",
                    Some(&key),
                );
            }
            _ => {
                return self.error(
                    client,
                    Method::ALLOCATE,
                    tid,
                    400,
                    "Bad Request",
                    Some(&key),
                );
            }
        }
        if msg.has(AttributeType::REQUESTED_ADDRESS_FAMILY) && !self.config.listen.is_ipv6() {
            return self.error(
                client,
                Method::ALLOCATE,
                tid,
                440,
                "Address Family not Supported",
                Some(&key),
            );
        }
        if self.allocations.len() >= self.config.max_allocations {
            return self.error(
                client,
                Method::ALLOCATE,
                tid,
                486,
                "Allocation Quota Reached",
                Some(&key),
            );
        }
        let asked = msg.get::<Lifetime>().ok().flatten().map(|l| l.0);
        let lifetime = clamp_lifetime(asked, &self.config);
        let username = msg
            .get::<Username<'_>>()
            .ok()
            .flatten()
            .map(|u| u.0.to_owned())
            .unwrap_or_default();
        self.allocations.insert(
            client,
            Alloc {
                relayed: None,
                username,
                key,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                pending_tid: Some((tid, lifetime)),
            },
        );
        self.actions.push_back(ServerAction::BindRelay { client });
    }

    /// The long-term credential mechanism (RFC 8489 §9.2): 401 with a nonce, 438 when the
    /// nonce is stale, 401 when the integrity check fails. Returns the key on success.
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
        if !self.nonce_fresh(now, nonce) {
            self.challenge(now, client, method, tid, 438, "Stale Nonce");
            return None;
        }
        let Some(password) = self.password_of(now, user) else {
            self.challenge(now, client, method, tid, 401, "Unauthenticated");
            return None;
        };
        let key =
            IntegrityKey::long_term(user, &self.config.realm, &password, PasswordAlgorithm::Md5)
                .ok()?;
        if msg.verify_integrity(&key).is_err() {
            debug!(from = %client, "integrity check failed");
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

    /// Nonces carry their creation time (seconds since start) and a random part.
    fn make_nonce(&mut self, now: Instant) -> String {
        let secs = now.saturating_duration_since(self.start).as_secs();
        let mut r = [0u8; 8];
        self.rng.fill_bytes(&mut r);
        let mut s = format!("{secs:x}-");
        for b in r {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn nonce_fresh(&self, now: Instant, nonce: &str) -> bool {
        let Some((secs, rest)) = nonce.split_once('-') else {
            return false;
        };
        let (Ok(secs), true) = (u64::from_str_radix(secs, 16), rest.len() == 16) else {
            return false;
        };
        let age = now
            .saturating_duration_since(self.start)
            .as_secs()
            .saturating_sub(secs);
        age < self.config.nonce_lifetime.as_secs()
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
        let nonce = self.make_nonce(now);
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

    fn relay_from_peer(&mut self, rx: Received<'_>) {
        let Some(&client) = self.by_relay.get(&rx.destination) else {
            return;
        };
        let Some(a) = self.allocations.get(&client) else {
            return;
        };
        if !a.permissions.contains_key(&rx.source.ip()) {
            debug!(peer = %rx.source, "datagram from a peer without permission dropped");
            return;
        }
        let channel = a
            .channels
            .iter()
            .find(|(_, (p, _))| *p == rx.source)
            .map(|(c, _)| *c);
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

fn clamp_lifetime(asked: Option<u32>, c: &TurnServerConfig) -> Duration {
    let asked = asked.map_or(c.default_lifetime, |s| Duration::from_secs(u64::from(s)));
    asked.clamp(Duration::from_secs(1), c.max_lifetime)
}

#[cfg(test)]
mod tests;
