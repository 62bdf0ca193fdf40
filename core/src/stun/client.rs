//! STUN client transactions, sans-IO (RFC 8489 §6.2–6.3).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tracing::debug;

use super::attributes::ErrorCode;
use super::{
    Class, IntegrityKey, Message, MessageBuilder, MessageType, Method, StunError, TransactionId,
};
use crate::retransmit::{Due, Retransmit, Schedule};
use crate::{Protocol, Received, Transmit};

/// Retransmission settings, RFC 8489 §6.2.1. The defaults are the RFC's.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Initial retransmission timeout (RTO); doubles after each transmission.
    /// Default 500 ms (RFC 8489 §6.2.1).
    pub rto: Duration,
    /// Rc: the number of transmissions over UDP. Default 7 (RFC 8489 §6.2.1).
    pub max_transmits: u32,
    /// Rm: after the last transmission, wait `rm × rto` before giving up. Default 16
    /// (RFC 8489 §6.2.1).
    pub last_wait_multiplier: u32,
    /// Ti: how long to wait for a response over TCP, where nothing is retransmitted.
    /// Default 39.5 s (RFC 8489 §6.2.2).
    pub reliable_timeout: Duration,
    /// The most transactions outstanding at once; more are refused. Default 64.
    pub max_outstanding: usize,
    /// Append FINGERPRINT to every request. Default true.
    pub fingerprint: bool,
    /// Accept a response whose FINGERPRINT is wrong (and say so in
    /// [`StunResponse::fingerprint_ok`]) instead of dropping it. Default false. NAT
    /// behaviour discovery turns it on: an ALG that rewrites MAPPED-ADDRESS also breaks
    /// the FINGERPRINT, and that is exactly what it wants to see. The transaction ID and
    /// source checks still apply, and integrity, when the request has a key.
    pub accept_bad_fingerprint: bool,
}

impl ClientConfig {
    /// The retransmission schedule of a request over `proto`: RFC 8489 §6.2.1's over UDP
    /// (`rto`, `max_transmits`, `last_wait_multiplier`), §6.2.2's over TCP (one
    /// transmission, `reliable_timeout`).
    pub fn schedule(&self, proto: Protocol) -> Schedule {
        match proto {
            Protocol::Udp => {
                Schedule::rfc8489(self.rto, self.max_transmits, self.last_wait_multiplier)
            }
            Protocol::Tcp => Schedule::reliable(self.reliable_timeout),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            rto: Duration::from_millis(500),
            max_transmits: 7,
            last_wait_multiplier: 16,
            reliable_timeout: Duration::from_millis(39_500),
            max_outstanding: 64,
            fingerprint: true,
            accept_bad_fingerprint: false,
        }
    }
}

/// Which source a response must come from to be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectFrom {
    /// The address the request went to (RFC 8489 §6.3: match the transaction and the peer).
    Destination,
    /// A given address: an RFC 5780 CHANGE-REQUEST answer comes from the server's other
    /// address.
    Address(SocketAddr),
    /// Any source (use only where the transaction ID alone must do).
    Any,
}

/// What a new request looks like: where it goes and how it is protected.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Request {
    /// The transport.
    pub proto: Protocol,
    /// The local socket to send from.
    pub source: SocketAddr,
    /// The server.
    pub destination: SocketAddr,
    /// The method (Binding, Allocate, …).
    pub method: Method,
    /// When set, the request carries MESSAGE-INTEGRITY and success responses must carry a
    /// valid one.
    pub key: Option<IntegrityKey>,
    /// Where the response must come from.
    pub expect_from: ExpectFrom,
    /// The local address the response must arrive at; `None` means `source`. RFC 5780's
    /// RESPONSE-PORT sends a response to another of the client's mappings.
    pub response_at: Option<SocketAddr>,
}

impl Request {
    /// A `method` request over `proto` from `source` to `destination`, unauthenticated,
    /// answered by `destination` at `source`.
    pub fn new(
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        method: Method,
    ) -> Self {
        Self {
            proto,
            source,
            destination,
            method,
            key: None,
            expect_from: ExpectFrom::Destination,
            response_at: None,
        }
    }

    /// A Binding request over UDP from `source` to `destination`, unauthenticated.
    pub fn binding(source: SocketAddr, destination: SocketAddr) -> Self {
        Self {
            proto: Protocol::Udp,
            source,
            destination,
            method: Method::BINDING,
            key: None,
            expect_from: ExpectFrom::Destination,
            response_at: None,
        }
    }
}

/// An accepted response.
#[derive(Debug, Clone)]
pub struct StunResponse {
    /// The transaction it answers.
    pub id: TransactionId,
    /// Where it came from.
    pub source: SocketAddr,
    /// The local address it arrived at.
    pub destination: SocketAddr,
    /// Time from the first transmission to the response.
    pub elapsed: Duration,
    /// Round-trip time, when the request was sent only once (Karn's rule).
    pub rtt: Option<Duration>,
    /// Whether FINGERPRINT checked out (`None`: the response had none). `Some(false)`
    /// only with [`ClientConfig::accept_bad_fingerprint`].
    pub fingerprint_ok: Option<bool>,
    bytes: Vec<u8>,
}

impl StunResponse {
    /// The response as a message view.
    pub fn message(&self) -> Message<'_> {
        // Validated when accepted; parsing again cannot fail, but stay total.
        Message::parse(&self.bytes).unwrap_or_else(|_| unreachable!("validated on receipt"))
    }

    /// The raw response bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether it is a success response.
    pub fn is_success(&self) -> bool {
        self.message().class() == Class::Success
    }
}

/// What the client reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransactionEvent {
    /// A response was accepted.
    Response(StunResponse),
    /// No response came in time (RFC 8489 §6.2.1).
    TimedOut {
        /// The transaction.
        id: TransactionId,
        /// Where the request went.
        destination: SocketAddr,
    },
}

#[derive(Debug)]
struct Pending {
    id: TransactionId,
    req: Request,
    bytes: Vec<u8>,
    retransmit: Retransmit,
}

/// Runs STUN client transactions: builds requests, retransmits them on schedule, matches
/// responses by transaction ID and source, and checks their integrity.
///
/// Spoofed responses (wrong source), responses that fail integrity, and unauthenticated
/// success responses to authenticated requests are dropped with a `debug!` line; the
/// transaction keeps waiting for the real one.
#[derive(Debug)]
pub struct StunClient {
    config: ClientConfig,
    rng: ChaCha20Rng,
    pending: Vec<Pending>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TransactionEvent>,
}

impl StunClient {
    /// A client whose transaction IDs come from ChaCha20 seeded with `seed`. Seed it from
    /// the operating system in production and with a constant in tests.
    pub fn new(config: ClientConfig, seed: [u8; 32]) -> Self {
        Self {
            config,
            rng: ChaCha20Rng::from_seed(seed),
            pending: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Starts a transaction: `fill` adds the attributes; MESSAGE-INTEGRITY (when the
    /// request has a key) and FINGERPRINT (when configured) are appended after it.
    /// The first transmission is queued at once.
    pub fn start(
        &mut self,
        now: Instant,
        req: Request,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), StunError>,
    ) -> Result<TransactionId, StunError> {
        if self.pending.len() >= self.config.max_outstanding {
            return Err(StunError::TooManyTransactions(self.pending.len()));
        }
        let id = TransactionId::random(&mut self.rng);
        let mut buf = [0u8; 1500];
        let len = {
            let mut b =
                MessageBuilder::new(&mut buf, MessageType::new(Class::Request, req.method), id)?;
            fill(&mut b)?;
            if let Some(key) = &req.key {
                b.add_message_integrity(key)?;
            }
            if self.config.fingerprint {
                b.add_fingerprint()?;
            }
            b.finish().len()
        };
        let bytes = buf[..len].to_vec();
        let retransmit = Retransmit::new(now, self.config.schedule(req.proto));
        self.transmits.push_back(Transmit {
            proto: req.proto,
            source: req.source,
            destination: req.destination,
            contents: bytes.clone(),
        });
        self.pending.push(Pending {
            id,
            req,
            bytes,
            retransmit,
        });
        Ok(id)
    }

    /// Abandons a transaction; a late response to it is then ignored.
    pub fn cancel(&mut self, id: TransactionId) {
        self.pending.retain(|p| p.id != id);
    }

    /// Whether `id` is still waiting for a response.
    pub fn is_pending(&self, id: TransactionId) -> bool {
        self.pending.iter().any(|p| p.id == id)
    }

    /// How many transactions are outstanding.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Offers a received datagram. Returns true when it was a response to one of this
    /// client's transactions (accepted or dropped as forged); false when it belongs to
    /// somebody else and should be handed on.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        let Ok(msg) = Message::parse(rx.contents) else {
            return false;
        };
        if !matches!(msg.class(), Class::Success | Class::Error) {
            return false;
        }
        let id = msg.transaction_id();
        let Some(idx) = self.pending.iter().position(|p| p.id == id) else {
            return false;
        };
        let p = &self.pending[idx];
        let from_ok = match p.req.expect_from {
            ExpectFrom::Destination => rx.source == p.req.destination,
            ExpectFrom::Address(a) => rx.source == a,
            ExpectFrom::Any => true,
        };
        let at = p.req.response_at.unwrap_or(p.req.source);
        if !from_ok || rx.destination != at || rx.proto != p.req.proto {
            debug!(?id, from = %rx.source, "STUN response from an unexpected address dropped");
            return true;
        }
        if msg.method() != p.req.method {
            debug!(?id, "STUN response with the wrong method dropped");
            return true;
        }
        let fingerprint_ok = msg
            .has_fingerprint()
            .then(|| msg.verify_fingerprint().is_ok());
        if fingerprint_ok == Some(false) && !self.config.accept_bad_fingerprint {
            debug!(?id, "STUN response with a bad FINGERPRINT dropped");
            return true;
        }
        if let Some(key) = &p.req.key {
            if msg.has_integrity() {
                if msg.verify_integrity(key).is_err() {
                    debug!(?id, "STUN response failing MESSAGE-INTEGRITY dropped");
                    return true;
                }
            } else if !unauthenticated_error_allowed(&msg) {
                debug!(
                    ?id,
                    "unauthenticated STUN response to an authenticated request dropped"
                );
                return true;
            }
        }
        let p = self.pending.swap_remove(idx);
        let elapsed = now.saturating_duration_since(p.retransmit.first_sent());
        self.events
            .push_back(TransactionEvent::Response(StunResponse {
                id,
                source: rx.source,
                destination: rx.destination,
                elapsed,
                rtt: (p.retransmit.transmits() == 1).then_some(elapsed),
                fingerprint_ok,
                bytes: rx.contents.to_vec(),
            }));
        true
    }

    /// Retransmits and times out transactions whose deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            match p.retransmit.handle_timeout(now) {
                None => i += 1,
                Some(Due::Retransmit) => {
                    self.transmits.push_back(Transmit {
                        proto: p.req.proto,
                        source: p.req.source,
                        destination: p.req.destination,
                        contents: p.bytes.clone(),
                    });
                    i += 1;
                }
                Some(Due::GiveUp) => {
                    let p = self.pending.swap_remove(i);
                    debug!(id = ?p.id, to = %p.req.destination, "STUN transaction timed out");
                    self.events.push_back(TransactionEvent::TimedOut {
                        id: p.id,
                        destination: p.req.destination,
                    });
                }
            }
        }
    }

    /// The next datagram to send. Changes after `start` and `handle_timeout`.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When `handle_timeout` must next be called; `None` when nothing is outstanding.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.retransmit.deadline()).min()
    }

    /// The next event. Changes after `handle_input` and `handle_timeout`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<TransactionEvent> {
        self.events.pop_front()
    }
}

/// Error responses a server sends before it can authenticate (RFC 8489 §9.1.3 and
/// §9.2.4): these may arrive without MESSAGE-INTEGRITY.
fn unauthenticated_error_allowed(msg: &Message<'_>) -> bool {
    msg.class() == Class::Error
        && matches!(
            msg.get::<ErrorCode<'_>>(),
            Ok(Some(ErrorCode {
                code: 400 | 401 | 420 | 438,
                ..
            }))
        )
}
