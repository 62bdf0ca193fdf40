//! Birthday probing (issue 13): a direct path to a peer behind an endpoint-dependent
//! mapping (a new external port per destination) when its port cannot be predicted, sans-IO.
//!
//! The side behind the endpoint-dependent mapping (the *hard* side) opens many sockets
//! ([`BirthdayConfig::sockets`], 256 by default) and sends one probe from each to the
//! peer's server-reflexive address: its NAT gives each a new external port and opens its
//! filter for the peer's address there. The other side (the *easy* side, whose mapping is
//! endpoint-independent) sends probes from the base of that server-reflexive address to
//! random, distinct ports of the hard side's public IP, at a bounded rate: each opens the
//! easy side's own filter for that port. As soon as one port is both a hard socket's
//! external port and a port the easy side probed, one probe gets through, in whichever
//! order the two were sent (the birthday paradox: with 256 sockets among the 64 512 ports
//! 1024–65535, 1 024 probes find one in ≈ 98 % of the runs, 2 048 in ≈ 99.97 %; the
//! numbers of Tailscale's write-up "How NAT traversal works"). The answered pair
//! ([`BirthdayEvent::Found`]) becomes an ICE candidate pair on both sides (the peer
//! connection does that, [`crate::peer`]) and ICE's checks take over; the sockets that did
//! not win are closed.
//!
//! Probes are STUN Binding requests authenticated as ICE checks are (RFC 8445 §7.2.2:
//! USERNAME `peer:ours`, MESSAGE-INTEGRITY with the peer's password, FINGERPRINT), tagged
//! with pinhole's comprehension-optional attribute [`PROBE_ATTRIBUTE`] so that the peer's
//! prober, not its ICE agent, takes them. A probe or an answer that fails the integrity
//! check is dropped: a stray or forged datagram cannot choose the pair. Answers must come
//! from the address the probe went to, at the socket it left from.
//!
//! Caps ([`BirthdayConfig`], all configurable, all honoured by the machine): sockets,
//! probes per second (each side), probes in all (the easy side's random ports; the hard
//! side sends one per socket), and time (after which the machine gives up,
//! [`BirthdayEvent::GaveUp`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use super::agent::IceCredentials;
use crate::stun::attributes::{Username, XorMappedAddress};
use crate::stun::{
    AttributeType, Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, TransactionId,
};
use crate::{Protocol, Received, Transmit};

/// pinhole's STUN attribute marking a birthday probe and its answer (empty value; in the
/// comprehension-optional range, RFC 8489 §14, so other agents ignore it).
pub const PROBE_ATTRIBUTE: AttributeType = AttributeType(0xC0B1);

/// The most sockets the hard side may open.
pub const MAX_SOCKETS: usize = 1024;
/// The highest probe rate allowed, per side.
pub const MAX_PROBES_PER_SECOND: u32 = 1000;
/// The most probes the easy side may send (a quarter of the port range).
pub const MAX_PROBES: u32 = 16_384;
/// The lowest external port probed (RFC 6335 §6: 1024–65535 are the ports a NAT
/// allocates).
pub const LOWEST_PORT: u16 = 1024;

/// The `a=ice-options` token by which a side says it takes part in birthday probing:
/// probing runs only when both descriptions carry it.
pub const ICE_OPTION: &str = "x-pinhole-birthday";

/// Birthday probing's settings and caps. Off by default in the library; `pinhole
/// connect` turns it on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BirthdayConfig {
    /// Take part (offer [`ICE_OPTION`] and probe when both sides agree). Default off.
    pub enabled: bool,
    /// The hard side's sockets: 256 by default, at most [`MAX_SOCKETS`].
    pub sockets: usize,
    /// Probes per second, per side: 250 by default, at most [`MAX_PROBES_PER_SECOND`].
    pub probes_per_second: u32,
    /// The easy side's probes in all (distinct random ports): 2 048 by default (≈ 99.97 %
    /// against 256 sockets), at most [`MAX_PROBES`].
    pub max_probes: u32,
    /// How long probing may last before it gives up: 12 s by default (2 048 probes at
    /// 250 per second take 8.2 s; the rest is for the last answers).
    pub max_duration: Duration,
    /// How long plain ICE checks run without a direct pair before probing starts:
    /// 2 s by default. Counted from the moment both sides' candidates are all known.
    /// Probing starts only when one side is known to have endpoint-dependent mapping, so
    /// the easy cells never wait for it.
    pub wait: Duration,
}

impl Default for BirthdayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sockets: 256,
            probes_per_second: 250,
            max_probes: 2048,
            max_duration: Duration::from_secs(12),
            wait: Duration::from_secs(2),
        }
    }
}

impl BirthdayConfig {
    /// The caps, clamped to the documented maxima (and at least one of each).
    fn clamped(&self) -> Self {
        Self {
            enabled: self.enabled,
            sockets: self.sockets.clamp(1, MAX_SOCKETS),
            probes_per_second: self.probes_per_second.clamp(1, MAX_PROBES_PER_SECOND),
            max_probes: self.max_probes.clamp(1, MAX_PROBES),
            max_duration: self.max_duration,
            wait: self.wait,
        }
    }

    /// The probes the hard side may open sockets for (clamped).
    pub fn socket_count(&self) -> usize {
        self.clamped().sockets
    }
}

/// Which side of the probing this machine is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BirthdayRole {
    /// Behind the endpoint-dependent mapping: one probe from each of `sockets` (bound by
    /// the driver) to `target`, the peer's server-reflexive address.
    Hard {
        /// Our probe sockets' local addresses.
        sockets: Vec<SocketAddr>,
        /// The peer's server-reflexive address.
        target: SocketAddr,
    },
    /// Behind the endpoint-independent mapping: probes from `base` to random ports of
    /// `peer_ip`, the hard side's public address.
    Easy {
        /// The base of our server-reflexive candidate.
        base: SocketAddr,
        /// The hard side's public IP (its server-reflexive candidates').
        peer_ip: IpAddr,
    },
}

/// What the prober reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BirthdayEvent {
    /// An authenticated probe or answer went through: `local` (our socket: a probe
    /// socket on the hard side, the base on the easy side) reaches the peer at `remote`.
    /// Probing is over.
    Found {
        /// Our end.
        local: SocketAddr,
        /// The peer's end.
        remote: SocketAddr,
        /// Probes sent until then.
        probes: u32,
        /// Time since probing started.
        after: Duration,
    },
    /// The caps ran out (time; the hard side's sockets and the easy side's probes were
    /// all sent and no answer came within the time).
    GaveUp {
        /// Probes sent.
        probes: u32,
    },
}

/// The birthday prober. See the module docs.
#[derive(Debug)]
pub struct BirthdayProber {
    config: BirthdayConfig,
    role: BirthdayRole,
    rng: ChaCha20Rng,
    local_creds: IceCredentials,
    remote_creds: IceCredentials,
    started: Instant,
    next_send: Option<Instant>,
    /// Probes sent.
    sent: u32,
    /// Easy side: ports already probed.
    probed: HashSet<u16>,
    /// Our probes in flight: transaction → (from, to).
    pending: HashMap<TransactionId, (SocketAddr, SocketAddr)>,
    done: bool,
    found: Option<(SocketAddr, SocketAddr)>,
    transmits: std::collections::VecDeque<Transmit>,
    events: std::collections::VecDeque<BirthdayEvent>,
}

impl BirthdayProber {
    /// A prober in `role`, starting at `now`, with both sides' ICE credentials (probes are
    /// authenticated as ICE checks are). Caps above the documented maxima are lowered to
    /// them; a hard side with more sockets than [`BirthdayConfig::sockets`] uses the
    /// first ones.
    pub fn new(
        now: Instant,
        config: &BirthdayConfig,
        role: BirthdayRole,
        local_creds: IceCredentials,
        remote_creds: IceCredentials,
        seed: [u8; 32],
    ) -> Self {
        let config = config.clamped();
        let role = match role {
            BirthdayRole::Hard {
                mut sockets,
                target,
            } => {
                sockets.truncate(config.sockets);
                BirthdayRole::Hard { sockets, target }
            }
            easy => easy,
        };
        debug!(?role, "birthday probing starts");
        Self {
            config,
            role,
            rng: ChaCha20Rng::from_seed(seed),
            local_creds,
            remote_creds,
            started: now,
            next_send: Some(now),
            sent: 0,
            probed: HashSet::new(),
            pending: HashMap::new(),
            done: false,
            found: None,
            transmits: std::collections::VecDeque::new(),
            events: std::collections::VecDeque::new(),
        }
    }

    /// The role.
    pub fn role(&self) -> &BirthdayRole {
        &self.role
    }

    /// When probing started.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Probes sent so far.
    pub fn probes_sent(&self) -> u32 {
        self.sent
    }

    /// The pair found, if any.
    pub fn found(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.found
    }

    /// Whether probing is over (found or given up).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether `local` is one of this prober's sockets (the hard side's probe sockets, or
    /// the easy side's base).
    pub fn owns(&self, local: SocketAddr) -> bool {
        match &self.role {
            BirthdayRole::Hard { sockets, .. } => sockets.contains(&local),
            BirthdayRole::Easy { base, .. } => *base == local,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.config.probes_per_second
    }

    /// When to call [`BirthdayProber::handle_timeout`] next: the next probe, or the end
    /// of the time cap.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let end = self.started + self.config.max_duration;
        Some(self.next_send.map_or(end, |t| t.min(end)))
    }

    /// Sends the probes that are due (one per interval: a late call does not burst), and
    /// gives up at the time cap.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now.saturating_duration_since(self.started) >= self.config.max_duration {
            self.done = true;
            self.next_send = None;
            debug!(probes = self.sent, "birthday probing gave up");
            self.events
                .push_back(BirthdayEvent::GaveUp { probes: self.sent });
            return;
        }
        let Some(at) = self.next_send else { return };
        if now < at {
            return;
        }
        let probe = match &self.role {
            BirthdayRole::Hard { sockets, target } => {
                sockets.get(self.sent as usize).map(|s| (*s, *target))
            }
            BirthdayRole::Easy { base, peer_ip } => {
                let (base, ip) = (*base, *peer_ip);
                if self.sent >= self.config.max_probes {
                    None
                } else {
                    self.random_port().map(|p| (base, SocketAddr::new(ip, p)))
                }
            }
        };
        match probe {
            Some((from, to)) => {
                self.send_probe(from, to);
                // The next one an interval after this one was due, unless the call came
                // late: never two at once.
                self.next_send = Some((at + self.interval()).max(now + self.interval() / 2));
            }
            None => self.next_send = None,
        }
    }

    /// A port of the peer's IP not probed yet, uniformly at random.
    fn random_port(&mut self) -> Option<u16> {
        let span = u32::from(u16::MAX - LOWEST_PORT) + 1;
        if self.probed.len() >= span as usize {
            return None;
        }
        for _ in 0..64 {
            let p = LOWEST_PORT + (self.rng.next_u32() % span) as u16;
            if self.probed.insert(p) {
                return Some(p);
            }
        }
        // Crowded (not with the documented caps): the next free one.
        let start = LOWEST_PORT + (self.rng.next_u32() % span) as u16;
        let p = (0..span)
            .map(|k| LOWEST_PORT + ((u32::from(start - LOWEST_PORT) + k) % span) as u16)
            .find(|p| !self.probed.contains(p))?;
        self.probed.insert(p);
        Some(p)
    }

    fn send_probe(&mut self, from: SocketAddr, to: SocketAddr) {
        let Ok(key) = IntegrityKey::short_term(&self.remote_creds.pwd) else {
            debug!("the peer's ICE password is not a valid OpaqueString: no probing");
            self.next_send = None;
            return;
        };
        let mut id = [0u8; 12];
        self.rng.fill_bytes(&mut id);
        let tid = TransactionId(id);
        let username = format!("{}:{}", self.remote_creds.ufrag, self.local_creds.ufrag);
        let mut buf = [0u8; 512];
        let Ok(mut b) = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, tid) else {
            return;
        };
        let built = b
            .add(&Username(&username))
            .and_then(|b| b.add_raw(PROBE_ATTRIBUTE, &[]))
            .and_then(|b| b.add_message_integrity(&key))
            .and_then(|b| b.add_fingerprint());
        if built.is_err() {
            return;
        }
        self.sent += 1;
        self.pending.insert(tid, (from, to));
        self.transmits.push_back(Transmit {
            proto: Protocol::Udp,
            source: from,
            destination: to,
            contents: b.finish().to_vec(),
        });
    }

    /// Offers a datagram that arrived at one of our sockets. Returns whether it was a
    /// birthday probe or answer (consumed, whether authentic or dropped); anything else
    /// is for others.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        if rx.proto != Protocol::Udp
            || crate::demux::classify(rx.contents) != crate::demux::Kind::Stun
        {
            return false;
        }
        let Ok(msg) = Message::parse(rx.contents) else {
            return false;
        };
        if msg.method() != Method::BINDING {
            return false;
        }
        if !msg.has(PROBE_ATTRIBUTE) {
            // An ICE check at one of the hard side's probe sockets (never a base of the
            // agent's): the peer found this socket and our answer to its probe was lost.
            // Authenticated like a probe, it makes the pair as well (and the answer is
            // a valid answer to the check).
            // Once a pair is found, checks are the agent's (the socket is its base then).
            let at_probe_socket = !self.done
                && matches!(
                    &self.role,
                    BirthdayRole::Hard { sockets, .. } if sockets.contains(&rx.destination)
                );
            if !(at_probe_socket && msg.class() == Class::Request) {
                return false;
            }
        }
        if !self.owns(rx.destination) {
            // A probe at a socket of ours that the role does not use: not ours to take,
            // but not ICE's either.
            return true;
        }
        if msg.has_fingerprint() && msg.verify_fingerprint().is_err() {
            debug!(from = %rx.source, "birthday probe with a bad FINGERPRINT dropped");
            return true;
        }
        match msg.class() {
            Class::Request => self.answer(now, &rx, &msg),
            Class::Success => self.answered(now, &rx, &msg),
            _ => {}
        }
        true
    }

    /// A probe from the peer: authenticated, answered, and (the first time) the pair.
    fn answer(&mut self, now: Instant, rx: &Received<'_>, msg: &Message<'_>) {
        let Ok(Some(Username(user))) = msg.get::<Username<'_>>() else {
            return;
        };
        if user.split_once(':').map(|(ours, _)| ours) != Some(self.local_creds.ufrag.as_str()) {
            return;
        }
        let Ok(key) = IntegrityKey::short_term(&self.local_creds.pwd) else {
            return;
        };
        if msg.verify_integrity(&key).is_err() {
            debug!(from = %rx.source, "birthday probe failing MESSAGE-INTEGRITY dropped");
            return;
        }
        if let BirthdayRole::Easy { peer_ip, .. } = &self.role
            && rx.source.ip() != *peer_ip
        {
            return;
        }
        let mut buf = [0u8; 256];
        if let Ok(mut b) =
            MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, msg.transaction_id())
        {
            let built = b
                .add(&XorMappedAddress(rx.source))
                .and_then(|b| b.add_raw(PROBE_ATTRIBUTE, &[]))
                .and_then(|b| b.add_message_integrity(&key))
                .and_then(|b| b.add_fingerprint());
            if built.is_ok() {
                self.transmits.push_back(Transmit {
                    proto: Protocol::Udp,
                    source: rx.destination,
                    destination: rx.source,
                    contents: b.finish().to_vec(),
                });
            }
        }
        self.found_pair(now, rx.destination, rx.source);
    }

    /// An answer to one of our probes: from where it went, at the socket it left from,
    /// authenticated with the peer's password.
    fn answered(&mut self, now: Instant, rx: &Received<'_>, msg: &Message<'_>) {
        let tid = msg.transaction_id();
        let Some(&(from, to)) = self.pending.get(&tid) else {
            return;
        };
        if rx.source != to || rx.destination != from {
            return;
        }
        let Ok(key) = IntegrityKey::short_term(&self.remote_creds.pwd) else {
            return;
        };
        if msg.verify_integrity(&key).is_err() {
            debug!(from = %rx.source, "birthday answer failing MESSAGE-INTEGRITY dropped");
            return;
        }
        self.pending.remove(&tid);
        self.found_pair(now, from, to);
    }

    fn found_pair(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr) {
        if self.found.is_some() || self.done {
            return;
        }
        let after = now.saturating_duration_since(self.started);
        debug!(%local, %remote, probes = self.sent, ?after, "birthday probing found a pair");
        self.found = Some((local, remote));
        self.done = true;
        self.next_send = None;
        self.pending.clear();
        self.events.push_back(BirthdayEvent::Found {
            local,
            remote,
            probes: self.sent,
            after,
        });
    }

    /// The next datagram to send (its source is the socket to send it from).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<BirthdayEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
