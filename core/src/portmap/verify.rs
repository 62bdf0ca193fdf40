//! Does traffic really arrive through a mapping? A STUN check with an RFC 5780 reflector.
//!
//! A gateway can grant a mapping and still not forward (a firmware that loses its rules, a
//! second NAT, a firewall). The only proof is a datagram from outside arriving through the
//! mapping's external address. Two Binding requests go from the mapped socket (the
//! internal address and port) to the reflector:
//!
//! - the **probe** carries RESPONSE-PORT (RFC 5780 §7.5) set to the mapping's external port
//!   and CHANGE-REQUEST (RFC 5780 §7.2) asking for the other IP and port, so the answer is
//!   sent from an address this host never sent to, toward the external address and port of
//!   the mapping: it can only arrive through the mapping, or through a NAT that lets in
//!   anything from anywhere once a host has sent out (endpoint-independent filtering on the
//!   same port), in which case it says that traffic arrives while such an outbound binding
//!   lives, no more. An answer from the address asked (a server that ignores CHANGE-REQUEST)
//!   proves nothing and makes the check unsupported;
//! - the **control** is a plain Binding request: its answer shows that the reflector is
//!   alive and that this host's traffic leaves from the mapping's external IP address (its
//!   XOR-MAPPED-ADDRESS).
//!
//! After a failed verification, later probes ask for the answer from another source (the
//! reflector's other IP with its primary port, or back): the failed probes left
//! connection-tracking state on the router for their own source that keeps bypassing a
//! re-added forwarding rule for half a minute or more, so the next check must come from a
//! source the router has not seen lately.
//!
//! The probe answered: forwarding. The control answered from the right address and the probe
//! not: not forwarding. Neither answered, or the control shows another external address, or
//! the reflector does not do RFC 5780 (it answers 420 or 400): cannot tell.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;

use super::REQUEST_SCHEDULE;
use crate::retransmit::{Due, Retransmit};
use crate::stun::attributes::{ChangeRequest, ErrorCode, ResponsePort, XorMappedAddress};
use crate::stun::{Class, Message, MessageBuilder, MessageType, Method, TransactionId};
use crate::{Protocol, Transmit};

/// How often a mapping is verified again while it lives (besides after every new mapping
/// and every renewal that comes due after this interval).
pub const VERIFY_INTERVAL: Duration = Duration::from_secs(300);
/// The shortest interval between verifications: shorter ones are taken as this.
pub const MIN_VERIFY_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval between verifications (a day): longer ones are taken as this, so
/// that no deadline overflows the clock.
pub const MAX_VERIFY_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Verification of mappings through a STUN reflector that implements RFC 5780 (answers
/// from its other address with CHANGE-REQUEST and to another port with RESPONSE-PORT):
/// `pinhole serve`, coturn with `rfc5780`, stunprotocol.org. Verification needs UDP and the
/// mapped socket: its datagrams must reach [`Mapper::handle_input`](super::Mapper::handle_input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyConfig {
    /// The reflector's primary address.
    pub reflector: SocketAddr,
    /// How often to verify again; see [`VERIFY_INTERVAL`]. The mapper keeps it between
    /// [`MIN_VERIFY_INTERVAL`] and [`MAX_VERIFY_INTERVAL`].
    pub interval: Duration,
}

impl VerifyConfig {
    /// Verification through `reflector` every [`VERIFY_INTERVAL`].
    pub fn new(reflector: SocketAddr) -> Self {
        Self {
            reflector,
            interval: VERIFY_INTERVAL,
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The probe's answer arrived through the mapping.
    Forwarding,
    /// The reflector answered the control from the mapping's address, the probe never
    /// arrived.
    NotForwarding,
    /// Cannot tell this time (no answer at all).
    Silent,
    /// Cannot tell, and asking again will not help (the reflector does not do RFC 5780, or
    /// this host's traffic leaves from another address).
    Unsupported(String),
}

/// One verification under way.
#[derive(Debug)]
pub(super) struct Verification {
    external: SocketAddr,
    source: SocketAddr,
    reflector: SocketAddr,
    probe: Pending,
    control: Pending,
    /// The control's XOR-MAPPED-ADDRESS.
    reflexive: Option<SocketAddr>,
    /// Both requests go and go again together, on the gateway requests' schedule.
    retransmit: Retransmit,
}

#[derive(Debug)]
struct Pending {
    id: TransactionId,
    bytes: Vec<u8>,
    answered: bool,
}

impl Verification {
    /// Starts verifying that `external` forwards to `source` (the mapped socket).
    pub(super) fn start(
        now: Instant,
        rng: &mut ChaCha20Rng,
        external: SocketAddr,
        source: SocketAddr,
        reflector: SocketAddr,
        fresh_source: bool,
        out: &mut VecDeque<Transmit>,
    ) -> Self {
        let probe = request(rng, Some((external.port(), !fresh_source)));
        let control = request(rng, None);
        let v = Self {
            external,
            source,
            reflector,
            probe,
            control,
            reflexive: None,
            retransmit: Retransmit::new(now, REQUEST_SCHEDULE),
        };
        v.send(out);
        v
    }

    fn send(&self, out: &mut VecDeque<Transmit>) {
        for p in [&self.probe, &self.control] {
            if !p.answered {
                out.push_back(Transmit {
                    proto: Protocol::Udp,
                    source: self.source,
                    destination: self.reflector,
                    contents: p.bytes.clone(),
                });
            }
        }
    }

    /// When [`Verification::handle_timeout`] is due.
    pub(super) fn deadline(&self) -> Instant {
        self.retransmit.deadline()
    }

    /// Whether `contents` answers one of our two requests.
    pub(super) fn owns(&self, contents: &[u8]) -> bool {
        Message::parse(contents).is_ok_and(|m| {
            m.method() == Method::BINDING
                && m.class() != Class::Request
                && [self.probe.id, self.control.id].contains(&m.transaction_id())
        })
    }

    /// An answer (one that [`Verification::owns`]); `Some` once the outcome is known.
    /// `source`: where the answer came from.
    pub(super) fn handle_input(&mut self, source: SocketAddr, contents: &[u8]) -> Option<Outcome> {
        let m = Message::parse(contents).ok()?;
        let is_probe = m.transaction_id() == self.probe.id;
        if m.class() == Class::Error {
            let code = m
                .get::<ErrorCode<'_>>()
                .ok()
                .flatten()
                .map_or(0, |e| e.code);
            return Some(match (is_probe, code) {
                (true, _) | (false, 400 | 420) => Outcome::Unsupported(format!(
                    "the reflector answered {code} to RESPONSE-PORT and CHANGE-REQUEST: it does not implement RFC 5780"
                )),
                // A passing trouble of the server (500, say): ask again later.
                (false, _) => Outcome::Silent,
            });
        }
        if is_probe {
            // The answer must come from the reflector's other IP address: one from the
            // address asked comes back through the binding the probe itself opened, and
            // proves nothing (a server that ignores CHANGE-REQUEST instead of refusing it).
            if source.ip() == self.reflector.ip() {
                return Some(Outcome::Unsupported(
                    "the reflector ignores CHANGE-REQUEST (it answered from the address asked): it cannot test the mapping".into(),
                ));
            }
            self.probe.answered = true;
            return Some(Outcome::Forwarding);
        }
        self.control.answered = true;
        self.reflexive = m.get::<XorMappedAddress>().ok().flatten().map(|x| x.0);
        None
    }

    /// Retransmits, or decides once the last wait is over.
    pub(super) fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut VecDeque<Transmit>,
    ) -> Option<Outcome> {
        match self.retransmit.handle_timeout(now)? {
            Due::Retransmit => {
                self.send(out);
                return None;
            }
            Due::GiveUp => {}
        }
        Some(match self.reflexive {
            _ if !self.control.answered => Outcome::Silent,
            Some(r) if r.ip() == self.external.ip() => Outcome::NotForwarding,
            Some(r) => Outcome::Unsupported(format!(
                "traffic from this host leaves from {}, not from the mapping's {}: the reflector cannot test the mapping",
                r.ip(),
                self.external.ip()
            )),
            None => Outcome::Unsupported("the reflector's answer has no XOR-MAPPED-ADDRESS".into()),
        })
    }
}

/// A Binding request; with `probe` (the external port, and whether the answer should also
/// come from the other port), the RFC 5780 probe.
fn request(rng: &mut ChaCha20Rng, probe: Option<(u16, bool)>) -> Pending {
    let id = TransactionId::random(rng);
    let mut buf = [0u8; 64];
    let bytes = match MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, id) {
        Ok(mut b) => {
            if let Some((port, change_port)) = probe {
                let change = ChangeRequest {
                    change_ip: true,
                    change_port,
                };
                // Both fit in 64 bytes: 20 + 8 + 8.
                let _ = b.add(&change).and_then(|b| b.add(&ResponsePort(port)));
            }
            b.finish().to_vec()
        }
        Err(_) => Vec::new(),
    };
    Pending {
        id,
        bytes,
        answered: false,
    }
}
