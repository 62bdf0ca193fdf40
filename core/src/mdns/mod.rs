//! Multicast DNS (RFC 6762) for ICE host candidates that hide their address behind a
//! `<uuid>.local` name (what browsers send, draft-ietf-mmusic-mdns-ice-candidates):
//! a sans-IO one-shot resolver, and a responder for names this host owns.
//!
//! [`MdnsResolver`]: [`MdnsResolver::resolve`] a `.local` name; the machine sends one
//! question per record type (A and AAAA) to each configured group (224.0.0.251:5353 and
//! [ff02::fb]:5353), [`MdnsConfig::attempts`] times [`MdnsConfig::interval`] apart, and
//! reports [`MdnsEvent::Resolved`] with the addresses of the first response that answers
//! for the name, or [`MdnsEvent::Unresolved`] once [`MdnsConfig::timeout`] passed. The
//! questions go out as one-shot queries (RFC 6762 §5.1) from whatever port the driver
//! binds, with the QU bit (§5.4): a responder answers such a query by unicast to its
//! source, so no socket on port 5353 is needed. Responses are matched by name only (the
//! identifier of a multicast query is zero, §18.1); the cache-flush bit is ignored;
//! malformed messages are dropped with a `debug!`.
//!
//! [`MdnsResponder`]: answers A, AAAA and ANY questions for the names it owns (RFC 6762
//! §6): by unicast to the querier for a legacy query (source port not 5353, §6.7,
//! repeating its identifier and question) or a QU question (§5.4), else to the group.

mod wire;

pub use wire::{
    AddressRecord, CLASS_IN, CLASS_TOP_BIT, MAX_LABEL_LEN, MAX_MESSAGE_LEN, MAX_NAME_LEN,
    MAX_POINTER_JUMPS, MAX_RECORDS, Message, Question, TYPE_A, TYPE_AAAA, TYPE_ANY, encode_query,
    encode_response, parse,
};

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::{Protocol, Received, Transmit};

/// RFC 6762 §3: the IPv4 mDNS group and port.
pub const GROUP_V4: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 251), 5353));
/// RFC 6762 §3: the IPv6 mDNS group (link-local scope) and port.
pub const GROUP_V6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb),
    5353,
    0,
    0,
));
/// RFC 6762 §3: the mDNS port.
pub const MDNS_PORT: u16 = 5353;
/// The longest a resolution may be configured to wait: ICE must not stall on a name.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3);
/// Names being resolved at once, at most; more are refused ([`MdnsError::TooMany`]).
pub const MAX_PENDING: usize = 32;
/// Addresses kept per name, at most.
pub const MAX_ADDRESSES: usize = 8;
/// The TTL the responder gives its address records (RFC 6762 §10: 120 s for records
/// with a host name).
pub const HOST_TTL: u32 = 120;

/// Why a message or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MdnsError {
    /// The message ends inside a field.
    #[error("mDNS message truncated")]
    Truncated,
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("mDNS message too long")]
    TooLong,
    /// A nonzero opcode or response code (RFC 6762 §18.3, §18.11).
    #[error("mDNS message with a nonzero opcode or rcode")]
    NotStandard,
    /// More than [`MAX_RECORDS`] records.
    #[error("mDNS message with too many records")]
    TooManyRecords,
    /// A name too long, with a bad label or a bad compression pointer.
    #[error("bad name in mDNS message")]
    BadName,
    /// An A or AAAA record whose data is not 4 or 16 bytes.
    #[error("bad address record in mDNS message")]
    BadRecord,
    /// [`MdnsResolver::resolve`] was given a name that is not `<labels>.local`.
    #[error("not an mDNS name: {0:?}")]
    NotLocal(String),
    /// [`MAX_PENDING`] names are being resolved already.
    #[error("too many mDNS names being resolved")]
    TooMany,
}

/// How the resolver asks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MdnsConfig {
    /// Where questions go: [`GROUP_V4`] and [`GROUP_V6`] (tests point them at a
    /// responder on loopback).
    pub groups: Vec<SocketAddr>,
    /// How many times the questions are sent (RFC 6762 §5.1 lets a one-shot querier
    /// retransmit).
    pub attempts: u32,
    /// Between two sends (RFC 6762 §5.2: at least one second).
    pub interval: Duration,
    /// After the first send, when a name without an answer is given up; at most
    /// [`MAX_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for MdnsConfig {
    fn default() -> Self {
        Self {
            groups: vec![GROUP_V4, GROUP_V6],
            attempts: 3,
            interval: Duration::from_secs(1),
            timeout: MAX_TIMEOUT,
        }
    }
}

impl MdnsConfig {
    /// The default schedule, asking `groups` (loopback addresses in tests).
    pub fn with_groups(groups: Vec<SocketAddr>) -> Self {
        Self {
            groups,
            ..Self::default()
        }
    }
}

/// What the resolver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdnsEvent {
    /// A name's addresses (at least one, at most [`MAX_ADDRESSES`]).
    Resolved {
        /// The name, lower-cased.
        name: String,
        /// Its addresses, as the response listed them.
        addrs: Vec<IpAddr>,
    },
    /// No answer for the name within [`MdnsConfig::timeout`].
    Unresolved {
        /// The name, lower-cased.
        name: String,
    },
}

#[derive(Debug)]
struct Pending {
    name: String,
    sent: u32,
    next_send: Instant,
    deadline: Instant,
}

/// Whether `name` is an mDNS host name: LDH labels (and a lenient underscore), ending in
/// `.local`, at most [`MAX_NAME_LEN`] − 2 characters.
pub fn is_mdns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= MAX_NAME_LEN - 2
        && name.len() > ".local".len()
        && name
            .get(name.len() - ".local".len()..)
            .is_some_and(|s| s.eq_ignore_ascii_case(".local"))
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= MAX_LABEL_LEN
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The sans-IO one-shot resolver. See the module docs.
#[derive(Debug)]
pub struct MdnsResolver {
    config: MdnsConfig,
    pending: Vec<Pending>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MdnsEvent>,
}

impl MdnsResolver {
    /// A resolver with nothing to resolve.
    pub fn new(config: MdnsConfig) -> Self {
        let mut config = config;
        config.timeout = config.timeout.min(MAX_TIMEOUT);
        config.attempts = config.attempts.max(1);
        Self {
            config,
            pending: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Starts resolving `name` (asked at once: call [`MdnsResolver::poll_transmit`]). A
    /// name already being resolved is not asked again; its one event answers both.
    pub fn resolve(&mut self, now: Instant, name: &str) -> Result<(), MdnsError> {
        if !is_mdns_name(name) {
            return Err(MdnsError::NotLocal(name.chars().take(64).collect()));
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.pending.iter().any(|p| p.name == name) {
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(MdnsError::TooMany);
        }
        self.pending.push(Pending {
            name,
            sent: 0,
            next_send: now,
            deadline: now + self.config.timeout,
        });
        self.handle_timeout(now);
        Ok(())
    }

    /// Names being resolved.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Offers a datagram (a response to our questions, or anything else on the socket);
    /// returns whether it answered a name being resolved.
    pub fn handle_input(&mut self, _now: Instant, rx: Received<'_>) -> bool {
        let msg = match parse(rx.contents) {
            Ok(m) => m,
            Err(e) => {
                debug!(from = %rx.source, error = %e, "malformed mDNS message dropped");
                return false;
            }
        };
        if !msg.response {
            return false;
        }
        let mut answered = false;
        self.pending.retain(|p| {
            let addrs: Vec<IpAddr> = msg
                .addresses
                .iter()
                .filter(|r| r.ttl > 0 && r.name.as_deref() == Some(p.name.as_str()))
                .map(|r| r.addr)
                .fold(Vec::new(), |mut v, a| {
                    if !v.contains(&a) && v.len() < MAX_ADDRESSES {
                        v.push(a);
                    }
                    v
                });
            if addrs.is_empty() {
                return true;
            }
            debug!(name = %p.name, ?addrs, from = %rx.source, "mDNS name resolved");
            self.events.push_back(MdnsEvent::Resolved {
                name: p.name.clone(),
                addrs,
            });
            answered = true;
            false
        });
        answered
    }

    /// Sends the questions that are due and gives up the names past their deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let config = &self.config;
        let transmits = &mut self.transmits;
        let events = &mut self.events;
        self.pending.retain_mut(|p| {
            if now >= p.deadline {
                debug!(name = %p.name, "mDNS name unresolved: dropped");
                events.push_back(MdnsEvent::Unresolved {
                    name: p.name.clone(),
                });
                return false;
            }
            if p.sent < config.attempts && now >= p.next_send {
                p.sent += 1;
                p.next_send = now + config.interval;
                for group in &config.groups {
                    for qtype in [TYPE_A, TYPE_AAAA] {
                        // The name passed `is_mdns_name`: it encodes.
                        let Ok(contents) = encode_query(0, &p.name, qtype, true) else {
                            continue;
                        };
                        let source = if group.is_ipv4() {
                            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
                        } else {
                            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
                        };
                        transmits.push_back(Transmit {
                            proto: Protocol::Udp,
                            source,
                            destination: *group,
                            contents,
                        });
                    }
                }
            }
            true
        });
    }

    /// The next question to send. Its source is the unspecified address of the group's
    /// family, port 0: any socket of that family will do.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When to call [`MdnsResolver::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| {
                if p.sent < self.config.attempts {
                    p.next_send.min(p.deadline)
                } else {
                    p.deadline
                }
            })
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<MdnsEvent> {
        self.events.pop_front()
    }
}

/// Whether `a` and `b` share their first `len` bits (different families never do).
fn same_prefix(a: IpAddr, b: IpAddr, len: u8) -> bool {
    let (a, b, bits): (u128, u128, u8) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a).into(), u32::from(b).into(), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let len = len.min(bits);
    if len == 0 {
        return true;
    }
    let shift = u32::from(bits - len);
    (a >> shift) == (b >> shift)
}

/// The sans-IO responder for names this host owns. See the module docs.
#[derive(Debug, Default)]
pub struct MdnsResponder {
    names: Vec<(String, Vec<IpAddr>)>,
    transmits: VecDeque<Transmit>,
    /// The networks of this host's links (address, prefix length): a unicast answer goes
    /// only to a source on one of them (RFC 6762 §11).
    local_networks: Vec<(IpAddr, u8)>,
}

impl MdnsResponder {
    /// A responder owning no name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Owns `name` (an mDNS name) with `addrs` (at most [`MAX_ADDRESSES`] kept).
    pub fn publish(&mut self, name: &str, addrs: &[IpAddr]) -> Result<(), MdnsError> {
        if !is_mdns_name(name) {
            return Err(MdnsError::NotLocal(name.chars().take(64).collect()));
        }
        if self.names.len() >= MAX_PENDING {
            return Err(MdnsError::TooMany);
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let addrs = addrs[..addrs.len().min(MAX_ADDRESSES)].to_vec();
        self.names.retain(|(n, _)| *n != name);
        self.names.push((name, addrs));
        Ok(())
    }

    /// The networks of this host's links (an address on each and its prefix length), for
    /// RFC 6762 §11's source address check: a question that asks for a unicast answer
    /// (legacy or QU) is answered only when its source is on one of them, or loopback or
    /// link-local. Without it, a forged source anywhere could have answers reflected to
    /// it.
    pub fn set_local_networks(&mut self, networks: Vec<(IpAddr, u8)>) {
        self.local_networks = networks;
    }

    /// Whether `ip` is on this host's links (see [`MdnsResponder::set_local_networks`]).
    fn on_link(&self, ip: IpAddr) -> bool {
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_loopback() || v6.is_unicast_link_local(),
        };
        link_local
            || self
                .local_networks
                .iter()
                .any(|&(net, len)| same_prefix(net, ip, len))
    }

    /// Offers a datagram; returns whether it asked for a name owned here (and an answer
    /// is queued).
    pub fn handle_input(&mut self, _now: Instant, rx: Received<'_>) -> bool {
        let msg = match parse(rx.contents) {
            Ok(m) => m,
            Err(e) => {
                debug!(from = %rx.source, error = %e, "malformed mDNS message dropped");
                return false;
            }
        };
        if msg.response {
            return false;
        }
        let legacy = rx.source.port() != MDNS_PORT;
        let source_on_link = self.on_link(rx.source.ip());
        let mut answered = false;
        for q in &msg.questions {
            let Some((name, addrs)) = self
                .names
                .iter()
                .find(|(n, _)| q.name.as_deref() == Some(n.as_str()))
            else {
                continue;
            };
            let addrs: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|a| match q.qtype {
                    TYPE_A => a.is_ipv4(),
                    TYPE_AAAA => a.is_ipv6(),
                    TYPE_ANY => true,
                    _ => false,
                })
                .collect();
            if addrs.is_empty() {
                continue;
            }
            // §6.7: a legacy query gets its identifier and question back, by unicast;
            // §5.4: a QU question gets a unicast answer; else the group hears it.
            let (id, question) = if legacy {
                (msg.id, Some(q.qtype))
            } else {
                (0, None)
            };
            let Ok(contents) = encode_response(id, name, &addrs, HOST_TTL, question) else {
                continue;
            };
            let destination = if legacy || q.unicast_response {
                if !source_on_link {
                    debug!(from = %rx.source, "mDNS question from off the link: no unicast answer");
                    continue;
                }
                rx.source
            } else if rx.destination.is_ipv4() {
                GROUP_V4
            } else {
                GROUP_V6
            };
            self.transmits.push_back(Transmit {
                proto: Protocol::Udp,
                source: rx.destination,
                destination,
                contents,
            });
            answered = true;
        }
        answered
    }

    /// The next answer to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
}

#[cfg(test)]
mod tests;
