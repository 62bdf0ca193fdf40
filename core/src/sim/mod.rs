//! A virtual network for deterministic tests: it moves [`Transmit`]s between any number of
//! hosts on a virtual clock, with latency, jitter (hence reordering), loss, and NATs of
//! every RFC 4787 behaviour. Seeded: the same seed and the same sends give the same
//! deliveries.
//!
//! The network owns no machine. A test sends what its machines emit with
//! [`Network::send`], asks [`Network::poll_timeout`] when the next datagram lands, and
//! takes deliveries with [`Network::poll_delivery`]; each comes with the host it is for
//! and the datagram as that host sees it (source and destination after every NAT on the
//! way). NAT bindings expire after their timeout, so keepalive logic is testable too.
//!
//! [`Sim`] drives any set of [`crate::machine::Machine`]s over a network, so tests need no
//! loops of their own.
//!
//! It complements the NAT lab (real kernels, real NATs); it does not replace it.
//!
//! Behaviours (RFC 4787):
//! - mapping (§4.1): endpoint-independent, address-dependent, address-and-port-dependent;
//! - filtering (§5): endpoint-independent, address-dependent, address-and-port-dependent;
//! - port allocation: preserving, sequential (a delta), random;
//! - hairpinning (§6) on or off, with hairpinned datagrams filtered like inbound ones
//!   or not;
//! - binding timeout (§4.3), refreshed by outbound traffic only (RFC 4787 REQ-6);
//! - an address-rewriting ALG (the middlebox that XOR-MAPPED-ADDRESS, RFC 8489 §14.2,
//!   exists for).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::{Protocol, Transmit};

/// How a NAT chooses whether two flows share an external address (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// The same for every remote endpoint.
    EndpointIndependent,
    /// The same for every port of one remote IP.
    AddressDependent,
    /// One per remote IP and port.
    AddressAndPortDependent,
}

impl Behaviour {
    /// All three, for matrices.
    pub const ALL: [Behaviour; 3] = [
        Self::EndpointIndependent,
        Self::AddressDependent,
        Self::AddressAndPortDependent,
    ];

    /// The part of the remote endpoint that the behaviour keys on.
    fn key(self, remote: SocketAddr) -> Option<SocketAddr> {
        match self {
            Self::EndpointIndependent => None,
            Self::AddressDependent => Some(SocketAddr::new(remote.ip(), 0)),
            Self::AddressAndPortDependent => Some(remote),
        }
    }
}

/// How a NAT picks external ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortAllocation {
    /// The internal port when free, else the next free one.
    Preserving,
    /// The previous allocation plus `delta` (a "sequential" NAT).
    Sequential(u16),
    /// Uniformly random in 1024–65535.
    Random,
}

/// A NAT's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: Behaviour,
    /// Filtering behaviour.
    pub filtering: Behaviour,
    /// Port allocation.
    pub allocation: PortAllocation,
    /// Whether hosts behind it reach each other through its external address.
    pub hairpin: bool,
    /// Whether a hairpinned datagram must pass the filter of the binding it is sent to,
    /// as if it came from outside with the sender's external address (`true`): then
    /// behind an endpoint-dependent filter the receiver must have sent to that address
    /// first. `false`: a hairpinned datagram reaches any live binding, as on NATs that
    /// translate the destination of traffic from the LAN before their inbound filter
    /// (the NAT lab's nftables NAT; RFC 4787 §6 sets no filtering rule for it).
    pub hairpin_filtering: bool,
    /// Idle time after which a binding is forgotten (RFC 4787 REQ-5 says at least 2 min;
    /// many real NATs use 30 s). [`Duration::MAX`]: never.
    pub binding_timeout: Duration,
    /// An address-rewriting ALG: in the payload of every datagram it translates, each
    /// occurrence of the internal host's address bytes (4 for IPv4, 16 for IPv6) is
    /// replaced with the external address on the way out, and each occurrence of the
    /// external address with the internal host's on the way in. It breaks a plain
    /// MAPPED-ADDRESS but not XOR-MAPPED-ADDRESS (RFC 8489 §14.2), and FINGERPRINT.
    pub alg: bool,
}

impl NatConfig {
    /// A NAT of `mapping` and `filtering`, preserving ports, no hairpinning (filtered
    /// when switched on), 120 s bindings, no ALG.
    pub fn new(mapping: Behaviour, filtering: Behaviour) -> Self {
        Self {
            mapping,
            filtering,
            allocation: PortAllocation::Preserving,
            hairpin: false,
            hairpin_filtering: true,
            binding_timeout: Duration::from_secs(120),
            alg: false,
        }
    }

    /// Whether a peer behind a NAT of this kind gets a direct path to one behind `other`
    /// with ICE's plain checks (host and server-reflexive candidates, peer-reflexive ones
    /// learned from checks, no port prediction): the oracle for matrix tests, in the
    /// classic terms. With endpoint-dependent mapping (a new external port per peer
    /// endpoint) a side's port toward its peer is unknown in advance, so the other side
    /// must have endpoint-independent mapping and a filter that admits that unknown port
    /// (not address-and-port-dependent); two endpoint-independent mappings always meet.
    ///
    /// Address-dependent mapping is treated as endpoint-dependent here, which is exact
    /// for its first packet and conservative after: its port toward the peer's IP is the
    /// same for every port of the peer, which later checks can use (tests assert "at
    /// least" for it).
    pub fn direct_possible_with(&self, other: &NatConfig) -> bool {
        let eim = |n: &NatConfig| n.mapping == Behaviour::EndpointIndependent;
        let admits_unknown_port = |n: &NatConfig| n.filtering != Behaviour::AddressAndPortDependent;
        (eim(self) && eim(other))
            || (eim(self) && admits_unknown_port(self))
            || (eim(other) && admits_unknown_port(other))
    }
}

/// A host's place in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatId(usize);

#[derive(Debug, Clone, Copy)]
struct Binding {
    external_port: u16,
    internal: SocketAddr,
    /// The last outbound datagram (what keeps the binding alive).
    last_out: Instant,
}

#[derive(Debug)]
struct Nat {
    config: NatConfig,
    external_ip: IpAddr,
    /// (internal endpoint, mapping key) → binding.
    bindings: HashMap<(SocketAddr, Option<SocketAddr>), Binding>,
    /// external port → the binding's key in `bindings`.
    by_port: HashMap<u16, (SocketAddr, Option<SocketAddr>)>,
    /// (external port, filtering key) → last outbound time.
    permits: HashMap<(u16, Option<SocketAddr>), Instant>,
    last_port: u16,
}

impl Nat {
    fn alive(&self, b: &Binding, now: Instant) -> bool {
        now.saturating_duration_since(b.last_out) < self.config.binding_timeout
    }

    /// Translates an outbound datagram's source; returns the external source.
    fn outbound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        rng: &mut ChaCha20Rng,
    ) -> SocketAddr {
        let key = (src, self.config.mapping.key(dst));
        let existing = self
            .bindings
            .get(&key)
            .copied()
            .filter(|b| self.alive(b, now));
        let port = match existing {
            Some(b) => b.external_port,
            None => {
                if let Some(old) = self.bindings.remove(&key) {
                    self.by_port.remove(&old.external_port);
                }
                let port = self.allocate(now, src.port(), rng);
                self.by_port.insert(port, key);
                port
            }
        };
        self.bindings.insert(
            key,
            Binding {
                external_port: port,
                internal: src,
                last_out: now,
            },
        );
        self.permits
            .insert((port, self.config.filtering.key(dst)), now);
        SocketAddr::new(self.external_ip, port)
    }

    fn port_free(&self, port: u16, now: Instant) -> bool {
        port >= 1024
            && self
                .by_port
                .get(&port)
                .and_then(|k| self.bindings.get(k))
                .is_none_or(|b| !self.alive(b, now))
    }

    fn allocate(&mut self, now: Instant, wanted: u16, rng: &mut ChaCha20Rng) -> u16 {
        let mut candidate = match self.config.allocation {
            PortAllocation::Preserving => wanted.max(1024),
            PortAllocation::Sequential(delta) => self.last_port.wrapping_add(delta.max(1)),
            PortAllocation::Random => 1024 + (rng.next_u32() % (65536 - 1024)) as u16,
        };
        for _ in 0..65536 {
            if self.port_free(candidate, now) {
                break;
            }
            candidate = match self.config.allocation {
                PortAllocation::Random => 1024 + (rng.next_u32() % (65536 - 1024)) as u16,
                _ => candidate.wrapping_add(1),
            };
        }
        if let Some(old) = self.by_port.remove(&candidate) {
            self.bindings.remove(&old);
        }
        self.last_port = candidate;
        candidate
    }

    /// Translates an inbound datagram's destination, or drops it (filtering, no binding).
    /// A hairpinned one skips the filter unless [`NatConfig::hairpin_filtering`].
    fn inbound(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst_port: u16,
        hairpinned: bool,
    ) -> Option<SocketAddr> {
        let key = self.by_port.get(&dst_port)?;
        let b = self.bindings.get(key).copied()?;
        if !self.alive(&b, now) {
            return None;
        }
        if hairpinned && !self.config.hairpin_filtering {
            return Some(b.internal);
        }
        let permit = self
            .permits
            .get(&(dst_port, self.config.filtering.key(src)))?;
        if now.saturating_duration_since(*permit) >= self.config.binding_timeout {
            return None;
        }
        Some(b.internal)
    }
}

/// Replaces every occurrence of `from`'s address bytes in `payload` with `to`'s (the
/// ALG of [`NatConfig::alg`]); nothing when their families differ.
fn rewrite_address(payload: &mut [u8], from: IpAddr, to: IpAddr) {
    let (from, to): (Vec<u8>, Vec<u8>) = match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => (f.octets().to_vec(), t.octets().to_vec()),
        (IpAddr::V6(f), IpAddr::V6(t)) => (f.octets().to_vec(), t.octets().to_vec()),
        _ => return,
    };
    let mut i = 0;
    while i + from.len() <= payload.len() {
        if payload[i..i + from.len()] == from[..] {
            payload[i..i + from.len()].copy_from_slice(&to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}

/// A datagram in flight.
#[derive(Debug)]
struct InFlight {
    transmit: Transmit,
    /// The NAT whose external address it is sent to.
    dst_nat: Option<NatId>,
    /// Sent from behind `dst_nat` itself.
    hairpinned: bool,
}

/// A datagram handed to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The host (its own IP address) the datagram is for.
    pub host: IpAddr,
    /// As the host sees it: source after the sender's NATs, destination its own address.
    pub transmit: Transmit,
}

/// Link conditions for every datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    /// One-way latency.
    pub latency: Duration,
    /// Extra latency, uniform in 0..jitter (reorders datagrams when larger than their
    /// spacing).
    pub jitter: Duration,
    /// Share of datagrams lost, 0.0–1.0.
    pub loss: f64,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

/// What became of sent datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sent into the network.
    pub sent: u64,
    /// Handed to hosts.
    pub delivered: u64,
    /// Lost to the loss rate.
    pub lost: u64,
    /// Dropped by a NAT (no binding, filtered, no hairpinning) or unroutable.
    pub dropped: u64,
}

/// The virtual network. See the module docs.
#[derive(Debug)]
pub struct Network {
    rng: ChaCha20Rng,
    conditions: Conditions,
    nats: Vec<Nat>,
    /// Host IP → the NAT it sits behind (none: on the public network).
    hosts: HashMap<IpAddr, Option<NatId>>,
    in_flight: BinaryHeap<Reverse<(Instant, u64)>>,
    payloads: HashMap<u64, InFlight>,
    seq: u64,
    stats: Stats,
    /// Datagrams sent, per source host.
    sent_by: HashMap<IpAddr, usize>,
}

impl Network {
    /// An empty network with `conditions`, seeded.
    pub fn new(seed: u64, conditions: Conditions) -> Self {
        Self {
            rng: ChaCha20Rng::seed_from_u64(seed),
            conditions,
            nats: Vec::new(),
            hosts: HashMap::new(),
            in_flight: BinaryHeap::new(),
            payloads: HashMap::new(),
            seq: 0,
            stats: Stats::default(),
            sent_by: HashMap::new(),
        }
    }

    /// How many datagrams the host at `ip` has sent (whatever became of them).
    pub fn sent_from(&self, ip: IpAddr) -> usize {
        self.sent_by.get(&ip).copied().unwrap_or(0)
    }

    /// Changes the link conditions from now on.
    pub fn set_conditions(&mut self, conditions: Conditions) {
        self.conditions = conditions;
    }

    /// Adds a NAT whose external address is `external_ip` (a public address).
    pub fn add_nat(&mut self, external_ip: IpAddr, config: NatConfig) -> NatId {
        self.nats.push(Nat {
            config,
            external_ip,
            bindings: HashMap::new(),
            by_port: HashMap::new(),
            permits: HashMap::new(),
            last_port: 40_000,
        });
        NatId(self.nats.len() - 1)
    }

    /// Adds a host with address `ip`, behind `nat` or on the public network.
    pub fn add_host(&mut self, ip: IpAddr, nat: Option<NatId>) {
        self.hosts.insert(ip, nat);
    }

    /// Whether `ip` is a host of the network.
    pub fn has_host(&self, ip: IpAddr) -> bool {
        self.hosts.contains_key(&ip)
    }

    /// Forgets every binding of `nat` (a NAT reboot, or "mapping loss").
    pub fn flush(&mut self, nat: NatId) {
        if let Some(n) = self.nats.get_mut(nat.0) {
            n.bindings.clear();
            n.by_port.clear();
            n.permits.clear();
        }
    }

    /// What happened so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sends `t` from its source host at `now`. Its source is translated by the host's
    /// NAT now (as a real NAT does when the datagram leaves), its fate decided now.
    pub fn send(&mut self, now: Instant, t: Transmit) {
        self.stats.sent += 1;
        *self.sent_by.entry(t.source.ip()).or_default() += 1;
        let Some(&from_nat) = self.hosts.get(&t.source.ip()) else {
            self.stats.dropped += 1;
            return;
        };
        if self.conditions.loss > 0.0 {
            let r = f64::from(self.rng.next_u32()) / f64::from(u32::MAX);
            if r < self.conditions.loss {
                self.stats.lost += 1;
                return;
            }
        }
        let mut t = t;
        let dst_nat = self.nat_of_external(t.destination.ip());
        let to_private_same_nat = self
            .hosts
            .get(&t.destination.ip())
            .is_some_and(|n| n.is_some() && *n == from_nat);
        let hairpinned = from_nat.is_some() && dst_nat == from_nat;
        // Leaving through the NAT unless the destination is on the same LAN.
        if let Some(id) = from_nat {
            if !to_private_same_nat {
                let nat = &mut self.nats[id.0];
                if hairpinned && !nat.config.hairpin {
                    self.stats.dropped += 1;
                    return;
                }
                let (internal, dst) = (t.source, t.destination);
                t.source = nat.outbound(now, internal, dst, &mut self.rng);
                if nat.config.alg {
                    rewrite_address(&mut t.contents, internal.ip(), nat.external_ip);
                }
            }
        }
        let jitter = if self.conditions.jitter.is_zero() {
            Duration::ZERO
        } else {
            let j = u64::try_from(self.conditions.jitter.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(self.rng.next_u64() % j.max(1))
        };
        let at = now + self.conditions.latency + jitter;
        self.seq += 1;
        self.in_flight.push(Reverse((at, self.seq)));
        self.payloads.insert(
            self.seq,
            InFlight {
                transmit: t,
                dst_nat,
                hairpinned,
            },
        );
    }

    fn nat_of_external(&self, ip: IpAddr) -> Option<NatId> {
        self.nats
            .iter()
            .position(|n| n.external_ip == ip)
            .map(NatId)
    }

    /// When the next datagram lands.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((t, _))| *t)
    }

    /// The next datagram that has landed by `now`, translated for its host; datagrams a
    /// NAT drops are consumed silently (counted in [`Stats::dropped`]).
    pub fn poll_delivery(&mut self, now: Instant) -> Option<Delivery> {
        while let Some(&Reverse((at, seq))) = self.in_flight.peek() {
            if at > now {
                return None;
            }
            self.in_flight.pop();
            let Some(InFlight {
                transmit: mut t,
                dst_nat,
                hairpinned,
            }) = self.payloads.remove(&seq)
            else {
                continue;
            };
            if let Some(id) = dst_nat {
                let nat = &mut self.nats[id.0];
                match nat.inbound(at, t.source, t.destination.port(), hairpinned) {
                    Some(internal) => {
                        if nat.config.alg {
                            rewrite_address(&mut t.contents, nat.external_ip, internal.ip());
                        }
                        t.destination = internal;
                    }
                    None => {
                        self.stats.dropped += 1;
                        continue;
                    }
                }
            }
            let host = t.destination.ip();
            match self.hosts.get(&host) {
                // A private host is reached only through its NAT or from its own LAN.
                Some(Some(n))
                    if dst_nat != Some(*n)
                        && self.hosts.get(&t.source.ip()).copied().flatten() != Some(*n) =>
                {
                    self.stats.dropped += 1;
                }
                Some(_) => {
                    self.stats.delivered += 1;
                    return Some(Delivery { host, transmit: t });
                }
                None => self.stats.dropped += 1,
            }
        }
        None
    }
}

/// A UDP transmit, for tests.
pub fn udp(source: SocketAddr, destination: SocketAddr, contents: &[u8]) -> Transmit {
    Transmit {
        proto: Protocol::Udp,
        source,
        destination,
        contents: contents.to_vec(),
    }
}

mod runner;
pub use runner::{DEFAULT_MAX_ITERATIONS, Host, Sim, SimError};

#[cfg(test)]
mod tests;
