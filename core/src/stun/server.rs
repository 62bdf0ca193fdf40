//! A Binding server with the RFC 5780 NAT-behaviour-discovery extensions, sans-IO.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tracing::debug;

use super::attributes::{
    AttributeType, ChangeRequest, ErrorCode, MappedAddress, OtherAddress, ResponseOrigin,
    ResponsePort, Software, UnknownAttributes, XorMappedAddress,
};
use super::{
    Class, HEADER_LEN, MAGIC_COOKIE, Message, MessageBuilder, MessageType, Method, StunError,
    TransactionId,
};
use crate::ratelimit::{RateLimit, RateLimiter};
use crate::{Received, Transmit};

/// The default per-source brake: 50 requests a second from one IP address, bursts of
/// 100. A netcheck sends a few dozen requests in its first seconds; a reflector that
/// answers any source at any rate is an amplifier (a response is larger than its request,
/// and RESPONSE-PORT lets a spoofer pick the victim's port).
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    per_second: 50,
    burst: 100,
};

/// How the server is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The primary address.
    pub primary: SocketAddr,
    /// The alternate address for RFC 5780: a different IP *and* a different port. With it,
    /// the server listens on all four combinations and honours CHANGE-REQUEST.
    pub alternate: Option<SocketAddr>,
    /// The SOFTWARE attribute in responses (`None` leaves it out).
    pub software: Option<String>,
    /// Requests answered per source IP address ([`DEFAULT_RATE_LIMIT`]); beyond it they
    /// are dropped. `None` answers every request (only for servers no stranger reaches).
    pub rate_limit: Option<RateLimit>,
}

impl ServerConfig {
    /// A plain Binding server on one address.
    pub fn new(primary: SocketAddr) -> Self {
        Self {
            primary,
            alternate: None,
            software: Some(concat!("pinhole ", env!("CARGO_PKG_VERSION")).to_owned()),
            rate_limit: Some(DEFAULT_RATE_LIMIT),
        }
    }

    /// An RFC 5780 server on two addresses.
    pub fn rfc5780(primary: SocketAddr, alternate: SocketAddr) -> Self {
        Self {
            alternate: Some(alternate),
            ..Self::new(primary)
        }
    }

    /// With this per-source rate limit (`None`: none, only for servers no stranger
    /// reaches, such as one on loopback).
    #[must_use]
    pub fn with_rate_limit(mut self, limit: Option<RateLimit>) -> Self {
        self.rate_limit = limit;
        self
    }
}

/// Answers Binding requests (RFC 8489) and the RFC 5780 tests.
///
/// It answers 420 (with UNKNOWN-ATTRIBUTES) to requests carrying comprehension-required
/// attributes it does not know — CHANGE-REQUEST among them when it has no alternate
/// address — and 400 to requests whose header parses but whose body does not. Everything
/// else that is not a Binding request is dropped, and so is every request beyond the
/// per-source rate limit. Its only per-client state is that limit's bounded table.
#[derive(Debug)]
pub struct StunServer {
    config: ServerConfig,
    limiter: Option<RateLimiter>,
    transmits: VecDeque<Transmit>,
}

impl StunServer {
    /// A server; with an alternate address, fails when either address is a wildcard
    /// (an RFC 5780 server answers from two concrete IPs and names them in OTHER-ADDRESS),
    /// or when the two do not differ in both IP and port, or are of different families.
    pub fn new(config: ServerConfig) -> Result<Self, StunError> {
        if let Some(alt) = config.alternate {
            let p = config.primary;
            let why = if p.ip().is_unspecified() || alt.ip().is_unspecified() {
                Some(
                    "RFC 5780 needs concrete primary and alternate IPs (not 0.0.0.0 or ::): \
                     the server answers from both and names the other in OTHER-ADDRESS",
                )
            } else if alt.is_ipv4() != p.is_ipv4() {
                Some("the primary and alternate addresses must be of the same family")
            } else if alt.ip() == p.ip() || alt.port() == p.port() {
                Some("the alternate address must differ from the primary in both IP and port")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(StunError::ServerConfig(why));
            }
        }
        Ok(Self {
            limiter: config.rate_limit.map(RateLimiter::new),
            config,
            transmits: VecDeque::new(),
        })
    }

    /// The addresses to listen on: the primary, and with an alternate all four IP × port
    /// combinations.
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        let p = self.config.primary;
        match self.config.alternate {
            None => vec![p],
            Some(a) => vec![
                p,
                SocketAddr::new(p.ip(), a.port()),
                SocketAddr::new(a.ip(), p.port()),
                a,
            ],
        }
    }

    /// The address differing from `local` in the IP (`ip`) and/or the port (`port`).
    fn swap(&self, local: SocketAddr, ip: bool, port: bool) -> Option<SocketAddr> {
        let (p, a) = (self.config.primary, self.config.alternate?);
        let other_ip = if local.ip() == p.ip() { a.ip() } else { p.ip() };
        let other_port = if local.port() == p.port() {
            a.port()
        } else {
            p.port()
        };
        Some(SocketAddr::new(
            if ip { other_ip } else { local.ip() },
            if port { other_port } else { local.port() },
        ))
    }

    /// Handles one datagram that arrived at `now`; a response, if any, is queued for
    /// `poll_transmit`.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) {
        if let Some(limiter) = &mut self.limiter {
            if !limiter.allow(now, rx.source.ip()) {
                debug!(from = %rx.source, "over the per-source rate limit: dropped");
                return;
            }
        }
        if let Some(t) = self.respond(rx) {
            self.transmits.push_back(t);
        }
    }

    /// The next response to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn respond(&self, rx: Received<'_>) -> Option<Transmit> {
        let msg = match Message::parse(rx.contents) {
            Ok(m) => m,
            Err(e) => {
                if let Some(t) = classic_binding(&rx) {
                    return Some(t);
                }
                return self.bad_request(rx, e);
            }
        };
        if msg.class() != Class::Request {
            debug!(from = %rx.source, "non-request dropped");
            return None;
        }
        let id = msg.transaction_id();
        if msg.method() != Method::BINDING {
            debug!(from = %rx.source, method = msg.method().0, "unsupported method");
            return self.error(rx, id, msg.method(), ErrorCode::BAD_REQUEST, None);
        }
        if msg.has_fingerprint() && msg.verify_fingerprint().is_err() {
            debug!(from = %rx.source, "request with a bad FINGERPRINT dropped");
            return None;
        }
        // Unknown comprehension-required attributes, plus CHANGE-REQUEST when there is no
        // alternate address (RFC 5780 §6.1).
        let mut unknown = [0u8; 64];
        let mut n = 0;
        let unsupported = msg.unknown_comprehension_required().chain(
            (self.config.alternate.is_none() && msg.has(AttributeType::CHANGE_REQUEST))
                .then_some(AttributeType::CHANGE_REQUEST),
        );
        for t in unsupported {
            if n + 2 <= unknown.len() {
                unknown[n..n + 2].copy_from_slice(&t.0.to_be_bytes());
                n += 2;
            }
        }
        if n > 0 {
            debug!(from = %rx.source, "request with unknown comprehension-required attributes");
            let list = UnknownAttributes::from_wire(&unknown[..n]);
            return self.error(rx, id, Method::BINDING, ErrorCode::UNKNOWN_ATTRIBUTE, list);
        }
        let (change, port) = match (msg.get::<ChangeRequest>(), msg.get::<ResponsePort>()) {
            (Ok(c), Ok(p)) => (c.unwrap_or_default(), p),
            _ => {
                debug!(from = %rx.source, "malformed CHANGE-REQUEST or RESPONSE-PORT");
                return self.error(rx, id, Method::BINDING, ErrorCode::BAD_REQUEST, None);
            }
        };
        let source = if change.change_ip || change.change_port {
            self.swap(rx.destination, change.change_ip, change.change_port)?
        } else {
            rx.destination
        };
        let destination = match port {
            Some(ResponsePort(p)) => SocketAddr::new(rx.source.ip(), p),
            None => rx.source,
        };
        let mut buf = [0u8; 512];
        let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, id).ok()?;
        b.add(&XorMappedAddress(rx.source)).ok()?;
        b.add(&MappedAddress(rx.source)).ok()?;
        if let Some(other) = self.swap(rx.destination, true, true) {
            b.add(&ResponseOrigin(source)).ok()?;
            b.add(&OtherAddress(other)).ok()?;
        }
        if let Some(s) = &self.config.software {
            b.add(&Software(s)).ok()?;
        }
        b.add_fingerprint().ok()?;
        debug!(from = %rx.source, to = %destination, via = %source, "binding response");
        Some(Transmit {
            proto: rx.proto,
            source,
            destination,
            contents: b.finish().to_vec(),
        })
    }

    /// 400 for a request whose header parses but whose body does not; silence otherwise.
    fn bad_request(&self, rx: Received<'_>, e: StunError) -> Option<Transmit> {
        let b = rx.contents;
        let header_ok = b.len() >= HEADER_LEN
            && b[0] & 0xC0 == 0
            && b[4..8] == MAGIC_COOKIE.to_be_bytes()
            && b.len() <= super::MAX_MESSAGE_LEN;
        if !header_ok {
            debug!(from = %rx.source, error = %e, "garbage dropped");
            return None;
        }
        let kind = MessageType::from_u16(u16::from_be_bytes([b[0], b[1]]));
        if kind.class != Class::Request {
            debug!(from = %rx.source, error = %e, "malformed non-request dropped");
            return None;
        }
        let mut id = [0u8; 12];
        id.copy_from_slice(&b[8..20]);
        debug!(from = %rx.source, error = %e, "malformed request, answering 400");
        self.error(
            rx,
            TransactionId(id),
            kind.method,
            ErrorCode::BAD_REQUEST,
            None,
        )
    }

    fn error(
        &self,
        rx: Received<'_>,
        id: TransactionId,
        method: Method,
        code: ErrorCode<'_>,
        unknown: Option<UnknownAttributes<'_>>,
    ) -> Option<Transmit> {
        let mut buf = [0u8; 512];
        let mut b =
            MessageBuilder::new(&mut buf, MessageType::new(Class::Error, method), id).ok()?;
        b.add(&code).ok()?;
        if let Some(u) = unknown {
            b.add(&u).ok()?;
        }
        if let Some(s) = &self.config.software {
            b.add(&Software(s)).ok()?;
        }
        b.add_fingerprint().ok()?;
        Some(Transmit {
            proto: rx.proto,
            source: rx.destination,
            destination: rx.source,
            contents: b.finish().to_vec(),
        })
    }
}

/// A Binding request of RFC 3489 (no magic cookie: a 16-byte transaction ID), answered
/// as RFC 8489 §12 asks of a server: with MAPPED-ADDRESS (not XOR-MAPPED-ADDRESS, which
/// such a client does not know), and SOURCE-ADDRESS, which RFC 3489 §11.1 made part of
/// every answer. Older ICE stacks (libnice among them, for server-reflexive gathering)
/// still send these. Anything else without the cookie is not STUN of any age: `None`.
fn classic_binding(rx: &Received<'_>) -> Option<Transmit> {
    let b = rx.contents;
    if b.len() < HEADER_LEN || b.len() > 548 || b[..2] != [0x00, 0x01] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if b[4..8] == MAGIC_COOKIE.to_be_bytes() || len != b.len() - HEADER_LEN || len % 4 != 0 {
        return None;
    }
    fn address(out: &mut Vec<u8>, kind: u16, a: std::net::SocketAddr) {
        out.extend_from_slice(&kind.to_be_bytes());
        match a.ip() {
            std::net::IpAddr::V4(ip) => {
                out.extend_from_slice(&8u16.to_be_bytes());
                out.extend_from_slice(&[0, 1]);
                out.extend_from_slice(&a.port().to_be_bytes());
                out.extend_from_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                out.extend_from_slice(&20u16.to_be_bytes());
                out.extend_from_slice(&[0, 2]);
                out.extend_from_slice(&a.port().to_be_bytes());
                out.extend_from_slice(&ip.octets());
            }
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 48);
    out.extend_from_slice(&[0x01, 0x01, 0, 0]);
    out.extend_from_slice(&b[4..20]);
    address(&mut out, 0x0001, rx.source);
    address(&mut out, 0x0004, rx.destination);
    let body = u16::try_from(out.len() - HEADER_LEN).ok()?;
    out[2..4].copy_from_slice(&body.to_be_bytes());
    debug!(from = %rx.source, "RFC 3489 Binding request answered with MAPPED-ADDRESS");
    Some(Transmit {
        proto: rx.proto,
        source: rx.destination,
        destination: rx.source,
        contents: out,
    })
}
