//! The allocation machine against a small fake TURN server, on a virtual clock.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Conditions, Host, Network, Sim};
use crate::stun::attributes::{PasswordAlgorithms, UnknownAttributes};
use crate::stun::{Attribute, MessageBuilder};

const USER: &str = "alice";
const PASS: &str = "wonderland";
const REALM: &str = "pinhole.test";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server() -> SocketAddr {
    addr("203.0.113.10:3478")
}

fn local() -> SocketAddr {
    addr("10.0.0.2:5000")
}

/// The client's address on the network it moves to.
fn moved() -> SocketAddr {
    addr("10.9.0.7:6000")
}

/// What the fake server does with RFC 8016's MOBILITY-TICKET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mobility {
    /// Ignores it, as a server that does not know it does (RFC 8489 §14).
    Ignore,
    /// 405 Mobility Forbidden to an Allocate carrying it (coturn without `--mobility`).
    Forbid,
    /// Grants tickets and moves allocations the way coturn with `--mobility` does: the
    /// allocation belongs to one client address; a Refresh with the current ticket from
    /// another moves it there and rotates the ticket; a ticket from the holder's own
    /// address, or a stale one, is 400; anything else from another address 437.
    Grant,
}

/// Just enough of a TURN server to exercise the client.
struct FakeTurn {
    nonce: String,
    /// Offer PASSWORD-ALGORITHMS (with the nonce cookie bit).
    algorithms: bool,
    /// Ask for USERHASH (nonce cookie bit).
    userhash: bool,
    lifetime: u32,
    /// Answer the next N authenticated requests with 438.
    stale: u32,
    /// Answer Allocate with this error code.
    error: Option<u16>,
    /// Redirect (300) to this server.
    alternate: Option<SocketAddr>,
    /// ...with this ALTERNATE-DOMAIN.
    alternate_domain: Option<&'static str>,
    /// ...this many times (then allocate).
    redirects: u32,
    /// Drop the next N datagrams.
    drop: u32,
    seen: Vec<Vec<u8>>,
    deallocated: bool,
    /// A restarted server: it has no allocation, so authenticated requests other than
    /// Allocate get 437 (after a 438 for the old nonce, which `restart` arranges).
    forgot: bool,
    /// A dead server: nothing is answered.
    dead: bool,
    /// Answers not yet sent.
    out: VecDeque<Transmit>,
    mobility: Mobility,
    /// Where every request in `seen` came from.
    seen_from: Vec<SocketAddr>,
    /// The client address that holds the allocation ([`Mobility::Grant`]).
    holder: Option<SocketAddr>,
    /// Tickets issued: the current one is `ticket-{tickets}`.
    tickets: u32,
    /// Challenge the next N moves (a ticket from an address that does not hold the
    /// allocation) with 401 and a new nonce, as a server whose nonces belong to the
    /// 5-tuple would.
    challenge_moves: u32,
}

impl FakeTurn {
    fn new() -> Self {
        Self {
            nonce: "abcdef0123".into(),
            algorithms: false,
            userhash: false,
            lifetime: 600,
            stale: 0,
            error: None,
            alternate: None,
            alternate_domain: None,
            redirects: u32::MAX,
            drop: 0,
            seen: Vec::new(),
            deallocated: false,
            forgot: false,
            dead: false,
            out: VecDeque::new(),
            mobility: Mobility::Ignore,
            seen_from: Vec::new(),
            holder: None,
            tickets: 0,
            challenge_moves: 0,
        }
    }

    fn granting() -> Self {
        Self {
            mobility: Mobility::Grant,
            ..Self::new()
        }
    }

    fn ticket(&self) -> String {
        format!("ticket-{}", self.tickets)
    }

    /// The server restarts: a new nonce, and no allocation.
    fn restart(&mut self) {
        self.nonce.push_str("-restarted");
        self.stale = 1;
        self.forgot = true;
    }

    fn nonce(&self) -> String {
        if self.algorithms || self.userhash {
            // Feature bits: 0x80 password algorithms, 0x40 user-name anonymity.
            let bits = [
                (u8::from(self.algorithms) << 7) | (u8::from(self.userhash) << 6),
                0,
                0,
            ];
            format!(
                "{NONCE_COOKIE}{}{}",
                base64::engine::general_purpose::STANDARD.encode(bits),
                self.nonce
            )
        } else {
            self.nonce.clone()
        }
    }

    fn key(&self) -> IntegrityKey {
        let alg = if self.algorithms {
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        IntegrityKey::long_term(USER, REALM, PASS, alg).unwrap()
    }

    fn error(
        &self,
        m: &Message<'_>,
        code: u16,
        with_auth: bool,
        extra: &dyn Fn(&mut MessageBuilder<'_>),
    ) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 512];
        let kind = MessageType::new(Class::Error, m.method());
        let mut b = MessageBuilder::new(&mut buf, kind, m.transaction_id()).unwrap();
        b.add(&ErrorCode::new(code, "x")).unwrap();
        if with_auth {
            b.add(&Realm(REALM)).unwrap();
            b.add(&Nonce(&self.nonce())).unwrap();
            if self.algorithms {
                let mut raw = [0u8; 8];
                let list = PasswordAlgorithms::encode_list(&[2, 1], &mut raw).unwrap();
                b.add(&list).unwrap();
            }
        }
        extra(&mut b);
        // After authentication a server protects its errors too (RFC 8489 §9.2.4).
        if !with_auth {
            b.add_message_integrity(&self.key()).unwrap();
        }
        let n = b.finish().len();
        buf.truncate(n);
        Some(buf)
    }

    fn answer(&mut self, req: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        self.seen.push(req.to_vec());
        self.seen_from.push(from);
        if self.dead {
            return None;
        }
        if self.drop > 0 {
            self.drop -= 1;
            return None;
        }
        let m = Message::parse(req).ok()?;
        if m.class() == Class::Indication {
            return None;
        }
        let method = m.method();
        let mut buf = vec![0u8; 512];
        if !m.has_integrity() {
            return self.error(&m, 401, true, &|_| {});
        }
        if m.verify_integrity(&self.key()).is_err() {
            return self.error(&m, 401, true, &|_| {});
        }
        // Check the identity attributes the client chose.
        if self.userhash {
            assert!(
                m.get::<UserHash<'_>>().unwrap().is_some(),
                "USERHASH expected"
            );
            assert!(m.get::<Username<'_>>().unwrap().is_none());
        } else {
            assert_eq!(m.get::<Username<'_>>().unwrap(), Some(Username(USER)));
        }
        if self.algorithms {
            assert_eq!(
                m.get::<PasswordAlgorithmAttr<'_>>()
                    .unwrap()
                    .unwrap()
                    .algorithm,
                2
            );
            assert!(m.get::<PasswordAlgorithms<'_>>().unwrap().is_some());
        }
        if self.stale > 0 {
            self.stale -= 1;
            self.nonce.push('x');
            return self.error(&m, 438, true, &|_| {});
        }
        if self.forgot && method != Method::ALLOCATE {
            return self.error(&m, 437, false, &|_| {});
        }
        let ticket = m.get::<MobilityTicket<'_>>().unwrap().map(|t| t.0.to_vec());
        if self.challenge_moves > 0
            && method == Method::REFRESH
            && ticket.is_some()
            && Some(from) != self.holder
        {
            self.challenge_moves -= 1;
            self.nonce.push('m');
            return self.error(&m, 401, true, &|_| {});
        }
        if method == Method::ALLOCATE && ticket.is_some() {
            assert_eq!(
                ticket.as_deref(),
                Some(&[][..]),
                "an Allocate asks with none"
            );
            if self.mobility == Mobility::Forbid {
                return self.error(&m, 405, false, &|_| {});
            }
        }
        let mut granted_ticket = None;
        if self.mobility == Mobility::Grant && method != Method::ALLOCATE {
            let previous = format!("ticket-{}", self.tickets.saturating_sub(1));
            match &ticket {
                // coturn takes the ticket an allocation moved with from where it moved
                // to (a retransmission, or a deallocation that crossed the move).
                Some(t)
                    if method == Method::REFRESH
                        && Some(from) == self.holder
                        && self.tickets > 1
                        && t.as_slice() == previous.as_bytes() =>
                {
                    granted_ticket = Some(self.ticket());
                }
                Some(t) => {
                    if method != Method::REFRESH
                        || Some(from) == self.holder
                        || t.as_slice() != self.ticket().as_bytes()
                    {
                        return self.error(&m, 400, false, &|_| {});
                    }
                    self.holder = Some(from);
                    self.tickets += 1;
                    granted_ticket = Some(self.ticket());
                }
                None if Some(from) != self.holder => {
                    return self.error(&m, 437, false, &|_| {});
                }
                None if method == Method::REFRESH => granted_ticket = Some(self.ticket()),
                None => {}
            }
        }
        if self.mobility == Mobility::Grant && method == Method::ALLOCATE {
            self.holder = Some(from);
            if ticket.is_some() {
                self.tickets += 1;
                granted_ticket = Some(self.ticket());
            }
        }
        if method == Method::ALLOCATE {
            if let Some(alt) = self.alternate.filter(|_| self.redirects > 0) {
                self.redirects -= 1;
                let domain = self.alternate_domain;
                return self.error(&m, 300, false, &|b| {
                    b.add(&AlternateServer(alt)).unwrap();
                    if let Some(d) = domain {
                        b.add(&AlternateDomain(d)).unwrap();
                    }
                });
            }
            if let Some(code) = self.error {
                return self.error(&m, code, false, &|_| {});
            }
        }
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::new(Class::Success, method),
            m.transaction_id(),
        )
        .unwrap();
        match method {
            Method::ALLOCATE => {
                b.add(&XorRelayedAddress(addr("203.0.113.10:49152")))
                    .unwrap();
                b.add(&XorMappedAddress(addr("198.51.100.1:40000")))
                    .unwrap();
                b.add(&Lifetime(self.lifetime)).unwrap();
            }
            Method::REFRESH => {
                let l = m.get::<Lifetime>().unwrap().unwrap().0;
                if l == 0 {
                    self.deallocated = true;
                }
                b.add(&Lifetime(l.min(self.lifetime))).unwrap();
            }
            _ => {}
        }
        if let Some(t) = &granted_ticket {
            b.add(&MobilityTicket(t.as_bytes())).unwrap();
        }
        b.add_message_integrity(&self.key()).unwrap();
        let n = b.finish().len();
        buf.truncate(n);
        Some(buf)
    }
}

/// The fake server as a machine on the virtual network: it answers at once, from the
/// address the request was sent to (so it serves every alternate address too).
impl crate::machine::Machine for FakeTurn {
    type Event = crate::machine::NoEvent;
    type Verdict<'a> = ();
    fn handle_input<'a>(&mut self, _now: Instant, rx: Received<'a>) {
        if let Some(contents) = self.answer(rx.contents, rx.source) {
            self.out.push_back(Transmit {
                proto: rx.proto,
                source: rx.destination,
                destination: rx.source,
                contents,
            });
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_event(&mut self) -> Option<crate::machine::NoEvent> {
        None
    }
}

struct Harness {
    t0: Instant,
    now: Instant,
    turn: FakeTurn,
    a: Allocation,
    events: Vec<(Duration, AllocationEvent)>,
    /// Carries datagrams between runs too: 5 ms each way, a 10 ms round trip.
    net: Network,
    /// (source, destination) of every transmit.
    sent: Vec<(SocketAddr, SocketAddr)>,
    /// Answers that arrive at an address the allocation left ([`Allocation::move_to`])
    /// are not its own: counted here rather than failing the run.
    not_turn: usize,
}

impl Harness {
    fn new(turn: FakeTurn) -> Self {
        Self::with(turn, |_| {})
    }

    fn with(turn: FakeTurn, edit: impl FnOnce(&mut AllocationConfig)) -> Self {
        let t0 = Instant::now();
        let mut config = AllocationConfig::new(
            server(),
            local(),
            TurnTransport::Udp,
            Credentials::long_term(USER, PASS),
        );
        edit(&mut config);
        let net = Network::new(
            1,
            Conditions {
                latency: Duration::from_millis(5),
                ..Conditions::default()
            },
        );
        Self {
            t0,
            now: t0,
            turn,
            a: Allocation::new(t0, config, [9; 32]),
            events: Vec::new(),
            net,
            sent: Vec::new(),
            not_turn: 0,
        }
    }

    /// Runs the allocation and the fake server until `until` after the start (virtual);
    /// every datagram the allocation receives must be TURN's.
    fn run_until(&mut self, until: Duration) {
        let t0 = self.t0;
        let mut sim = Sim::new(&mut self.net, self.now);
        let events = &mut self.events;
        let sent = &mut self.sent;
        let not_turn = &mut self.not_turn;
        sim.add(
            Host::new(&mut self.a, [local().ip(), moved().ip()])
                .on_event(|_, at, e| events.push((at - t0, e)))
                .on_verdict(|_, v| match v {
                    Input::NotTurn => *not_turn += 1,
                    v => assert_eq!(v, Input::Consumed),
                })
                .on_transmit(|_, t| sent.push((t.source, t.destination))),
        );
        // The server, and every alternate server the tests redirect to.
        sim.add(Host::new(
            &mut self.turn,
            [server().ip(), addr("203.0.113.11:0").ip()],
        ));
        sim.run_until(t0 + until);
        self.now = sim.now();
        drop(sim);
        if self.turn.seen_from.iter().all(|f| *f == local()) {
            assert_eq!(self.not_turn, 0, "never moved: every datagram is TURN's");
        }
    }

    fn kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|(_, e)| {
                format!("{e:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

#[test]
fn nonce_dance_then_allocated() {
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(1));
    let (at, ev) = &h.events[0];
    assert_eq!(
        *at,
        Duration::from_millis(20),
        "two round trips: 401, then success"
    );
    assert_eq!(
        ev,
        &AllocationEvent::Allocated {
            relayed: vec![addr("203.0.113.10:49152")],
            mapped: Some(addr("198.51.100.1:40000")),
            lifetime: Duration::from_secs(600),
        }
    );
    assert!(h.a.is_allocated());
    // The first request carried no credentials.
    let first = Message::parse(&h.turn.seen[0]).unwrap();
    assert!(!first.has_integrity());
    assert_eq!(
        first.get::<RequestedTransport>().unwrap(),
        Some(RequestedTransport::UDP)
    );
}

#[test]
fn sha256_password_algorithm_and_userhash() {
    let mut t = FakeTurn::new();
    t.algorithms = true;
    t.userhash = true;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert!(
        matches!(h.events[0].1, AllocationEvent::Allocated { .. }),
        "{:?}",
        h.events
    );
}

#[test]
fn stale_nonce_is_retried_with_the_new_nonce() {
    let mut t = FakeTurn::new();
    t.stale = 2;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert!(matches!(h.events[0].1, AllocationEvent::Allocated { .. }));
    let last = Message::parse(h.turn.seen.last().unwrap()).unwrap();
    assert_eq!(last.get::<Nonce<'_>>().unwrap().unwrap().0, "abcdef0123xx");
    // Too many stale answers in a row: give up.
    let mut t = FakeTurn::new();
    t.stale = 10;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert!(
        matches!(
            &h.events[0].1,
            AllocationEvent::Lost(TurnError::ServerError { code: 438, .. })
        ),
        "{:?}",
        h.events
    );
}

#[test]
fn refresh_before_expiry() {
    // Without liveness checks (each is a refresh too, moving the scheduled one).
    let no_checks = |c: &mut AllocationConfig| c.liveness = None;
    let mut h = Harness::with(FakeTurn::new(), no_checks);
    h.run_until(Duration::from_secs(1200));
    let refreshes: Vec<_> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, AllocationEvent::Refreshed { .. }))
        .map(|(t, _)| t.as_millis())
        .collect();
    // Allocated at 20 ms for 600 s: refresh 60 s early, at 540.020 s (answered 10 ms later).
    assert_eq!(refreshes, [540_030, 1_080_040]);
    let mut t = FakeTurn::new();
    t.lifetime = 30;
    let mut h = Harness::with(t, no_checks);
    h.run_until(Duration::from_secs(20));
    let refreshes: Vec<_> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, AllocationEvent::Refreshed { .. }))
        .map(|(t, _)| t.as_millis())
        .collect();
    // A 30 s lifetime refreshes at half of it.
    assert_eq!(refreshes, [15_030]);
}

#[test]
fn lost_requests_are_retransmitted() {
    let mut t = FakeTurn::new();
    t.drop = 2;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(5));
    // Sent at 0 (dropped), 500 (dropped), 1500 -> 401 at 1510 -> allocated at 1520.
    assert_eq!(h.events[0].0, Duration::from_millis(1520));
}

#[test]
fn permissions_channels_and_data() {
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(1));
    let peer = addr("198.51.100.50:7000");
    let mut out = [0u8; 256];
    assert_eq!(
        h.a.encode_to_peer(peer, b"hi", &mut out),
        Err(TurnError::NoPermission(peer))
    );
    h.a.create_permission(h.now, peer.ip()).unwrap();
    let n = h.a.encode_to_peer(peer, b"hi", &mut out).unwrap();
    let send = Message::parse(&out[..n]).unwrap();
    assert_eq!(
        (send.class(), send.method()),
        (Class::Indication, Method::SEND)
    );
    assert_eq!(send.get::<XorPeerAddress>().unwrap().unwrap().0, peer);
    assert_eq!(send.get::<Data<'_>>().unwrap().unwrap().0, b"hi");
    let ch = h.a.bind_channel(h.now, peer).unwrap();
    assert_eq!(ch, 0x4000);
    h.run_until(Duration::from_secs(2));
    assert!(
        h.events.contains(&(
            Duration::from_millis(1010),
            AllocationEvent::PermissionCreated(peer.ip())
        )),
        "{:?}",
        h.events
    );
    assert!(h.events.iter().any(|(_, e)| *e
        == AllocationEvent::ChannelBound {
            peer,
            channel: 0x4000
        }));
    let n = h.a.encode_to_peer(peer, b"hello", &mut out).unwrap();
    assert_eq!(n, 9, "ChannelData over UDP, unpadded");
    assert_eq!(&out[..4], &[0x40, 0x00, 0x00, 0x05]);

    // Inbound: ChannelData and a Data indication, both zero-copy.
    let rx = Received {
        proto: Protocol::Udp,
        source: server(),
        destination: local(),
        contents: &out[..n],
    };
    assert_eq!(
        h.a.handle_input(h.now, rx),
        Input::Data {
            peer,
            data: b"hello",
            offset: 4
        }
    );
    let mut ind = [0u8; 128];
    let mut b = MessageBuilder::new(
        &mut ind,
        MessageType::new(Class::Indication, Method::DATA),
        TransactionId([1; 12]),
    )
    .unwrap();
    b.add(&XorPeerAddress(peer)).unwrap();
    b.add(&Data(b"yo")).unwrap();
    let ind = b.finish().to_vec();
    let rx = Received {
        proto: Protocol::Udp,
        source: server(),
        destination: local(),
        contents: &ind,
    };
    assert_eq!(
        h.a.handle_input(h.now, rx),
        Input::Data {
            peer,
            data: b"yo",
            // Header 20, XOR-PEER-ADDRESS 4 + 8, DATA's header 4.
            offset: 36
        }
    );
    // From somebody else: not ours.
    let rx = Received {
        proto: Protocol::Udp,
        source: peer,
        destination: local(),
        contents: &ind,
    };
    assert_eq!(h.a.handle_input(h.now, rx), Input::NotTurn);
    // ChannelData on an unknown channel: dropped.
    let mut cd = [0u8; 16];
    let n = ChannelData::emit(0x4abc, b"z", false, &mut cd).unwrap();
    let rx = Received {
        proto: Protocol::Udp,
        source: server(),
        destination: local(),
        contents: &cd[..n],
    };
    assert_eq!(h.a.handle_input(h.now, rx), Input::Consumed);

    // Refresh schedule: permission every 240 s, channel every 540 s.
    h.run_until(Duration::from_secs(600));
    let perms: Vec<_> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, AllocationEvent::PermissionCreated(_)))
        .map(|(t, _)| t.as_secs())
        .collect();
    assert_eq!(perms, [1, 241, 481]);
    let chans: Vec<_> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, AllocationEvent::ChannelBound { .. }))
        .map(|(t, _)| t.as_secs())
        .collect();
    assert_eq!(chans, [1, 541]);
}

#[test]
fn stream_transport_pads_channel_data() {
    let mut h = Harness::with(FakeTurn::new(), |c| c.transport = TurnTransport::Tcp);
    h.run_until(Duration::from_secs(1));
    let peer = addr("198.51.100.50:7000");
    h.a.bind_channel(h.now, peer).unwrap();
    h.run_until(Duration::from_secs(2));
    let mut out = [0u8; 64];
    assert_eq!(h.a.encode_to_peer(peer, b"hello", &mut out).unwrap(), 12);
}

#[test]
fn error_codes_become_typed_errors() {
    for (code, expect) in [
        (403, TurnError::Forbidden),
        (437, TurnError::AllocationMismatch),
        (440, TurnError::AddressFamilyNotSupported),
        (441, TurnError::WrongCredentials),
        (442, TurnError::UnsupportedTransport),
        (486, TurnError::AllocationQuotaReached),
        (508, TurnError::InsufficientCapacity),
    ] {
        let mut t = FakeTurn::new();
        t.error = Some(code);
        let mut h = Harness::new(t);
        h.run_until(Duration::from_secs(1));
        assert_eq!(
            h.events,
            [(Duration::from_millis(20), AllocationEvent::Lost(expect))]
        );
        assert!(h.a.is_done());
    }
}

#[test]
fn wrong_password_is_unauthenticated() {
    let mut h = Harness::with(FakeTurn::new(), |c| c.credentials.password = "nope".into());
    h.run_until(Duration::from_secs(1));
    assert_eq!(
        h.events[0].1,
        AllocationEvent::Lost(TurnError::Unauthenticated)
    );
}

#[test]
fn alternate_server_is_followed_once() {
    let mut t = FakeTurn::new();
    t.alternate = Some(addr("203.0.113.11:3478"));
    let mut h = Harness::new(t);
    // The fake answers for every address, and keeps redirecting: followed once, then an error.
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.a.server(), addr("203.0.113.11:3478"));
    assert_eq!(h.kinds(), ["Lost"]);
    assert_eq!(
        h.events[0].1,
        AllocationEvent::Lost(TurnError::TooManyRedirects)
    );
}

#[test]
fn alternate_server_over_udp_goes_to_the_alternate_from_the_same_address() {
    let alt = addr("203.0.113.11:3478");
    let mut t = FakeTurn::new();
    t.alternate = Some(alt);
    t.redirects = 1;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert_eq!(h.kinds(), ["Allocated"], "{:?}", h.events);
    assert_eq!(h.a.server(), alt, "{:?}", h.sent);
    assert_eq!(h.a.reconnect_to(), None, "no new connection over UDP");
    // Two requests to the original, then the Allocate dance again at the alternate.
    assert_eq!(
        h.sent,
        [
            (local(), server()),
            (local(), server()),
            (local(), alt),
            (local(), alt)
        ]
    );
}

#[test]
fn alternate_server_over_a_stream_waits_for_the_new_connection() {
    let alt = addr("203.0.113.11:5349");
    let mut t = FakeTurn::new();
    t.alternate = Some(alt);
    t.alternate_domain = Some("turn2.example.org");
    t.redirects = 1;
    let mut h = Harness::with(t, |c| c.transport = TurnTransport::Tls);
    h.run_until(Duration::from_millis(25));
    assert_eq!(h.a.reconnect_to(), Some(alt));
    assert_eq!(h.a.alternate_domain(), Some("turn2.example.org"));
    // Nothing goes out on the old connection, nothing times out, however long it takes.
    let sent = h.sent.len();
    h.run_until(Duration::from_secs(120));
    assert_eq!(h.sent.len(), sent);
    assert!(h.kinds().is_empty(), "{:?}", h.events);
    assert_eq!(h.a.poll_timeout(), None);
    // The driver's new connection: the Allocate goes out on it.
    let new_local = addr("10.0.0.2:5001");
    h.a.connected(h.now, new_local);
    assert_eq!(h.a.reconnect_to(), None);
    h.run_until(Duration::from_secs(121));
    assert_eq!(h.kinds(), ["Allocated"], "{:?}", h.events);
    assert_eq!((h.a.server(), h.a.local()), (alt, new_local));
    assert_eq!(h.sent[sent..], [(new_local, alt), (new_local, alt)]);
    // A second `connected` is ignored.
    h.a.connected(h.now, addr("10.0.0.2:5002"));
    assert_eq!(h.a.local(), new_local);
}

#[test]
fn deallocating_while_awaiting_the_alternate_connection_ends_at_once() {
    let mut t = FakeTurn::new();
    t.alternate = Some(addr("203.0.113.11:3478"));
    let mut h = Harness::with(t, |c| c.transport = TurnTransport::Tcp);
    h.run_until(Duration::from_millis(25));
    assert!(h.a.reconnect_to().is_some());
    h.a.deallocate(h.now);
    assert!(h.a.is_done());
    assert_eq!(h.a.reconnect_to(), None);
    assert_eq!(h.a.poll_event(), Some(AllocationEvent::Deallocated));
    assert_eq!(h.a.poll_transmit(), None);
}

#[test]
fn alternate_server_of_another_family_over_udp_is_an_error() {
    let mut t = FakeTurn::new();
    t.alternate = Some(addr("[2001:db8::11]:3478"));
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert_eq!(
        h.events[..],
        [(
            Duration::from_millis(20),
            AllocationEvent::Lost(TurnError::AlternateFamily(addr("[2001:db8::11]:3478")))
        )]
    );
    assert_eq!(h.a.server(), server());
}

#[test]
fn a_granted_lifetime_of_zero_is_a_failure_not_an_allocation() {
    let mut t = FakeTurn::new();
    t.lifetime = 0;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(5));
    assert_eq!(
        h.events[..],
        [(
            Duration::from_millis(20),
            AllocationEvent::Lost(TurnError::ZeroLifetime)
        )]
    );
    assert!(h.a.is_done() && !h.a.is_allocated());
    assert_eq!(
        TurnError::ZeroLifetime.to_string(),
        "the server granted a lifetime of 0"
    );
}

#[test]
fn a_refresh_granting_zero_loses_the_allocation_at_once() {
    let mut t = FakeTurn::new();
    t.lifetime = 120;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert_eq!(h.kinds(), ["Allocated"]);
    // The next refresh (at 60 s) is answered with LIFETIME 0.
    h.turn.lifetime = 0;
    h.run_until(Duration::from_secs(200));
    assert_eq!(h.kinds(), ["Allocated", "Lost"]);
    let (at, ev) = &h.events[1];
    assert_eq!(*ev, AllocationEvent::Lost(TurnError::ZeroLifetime));
    assert!(
        *at < Duration::from_secs(61),
        "at the refresh, not at expiry: {at:?}"
    );
}

#[test]
fn deallocate_sends_lifetime_zero() {
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(1));
    h.a.deallocate(h.now);
    h.run_until(Duration::from_secs(2));
    assert!(h.turn.deallocated);
    assert_eq!(h.kinds(), ["Allocated", "Deallocated"]);
    assert!(h.a.is_done());
}

#[test]
fn hostile_responses_are_ignored() {
    let t0 = Instant::now();
    let config = AllocationConfig::new(
        server(),
        local(),
        TurnTransport::Udp,
        Credentials::long_term(USER, PASS),
    );
    let mut a = Allocation::new(t0, config, [1; 32]);
    let req = a.poll_transmit().unwrap();
    let tid = Message::parse(&req.contents).unwrap().transaction_id();
    // An unauthenticated "success" with a relayed address, before any auth: accepted by
    // STUN rules but lacking LIFETIME, so the allocation fails with a typed error, never
    // a panic.
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(Class::Success, Method::ALLOCATE),
        tid,
    )
    .unwrap();
    b.add(&XorRelayedAddress(addr("192.0.2.66:1"))).unwrap();
    let bogus = b.finish().to_vec();
    // From the wrong address: not ours.
    let rx = Received {
        proto: Protocol::Udp,
        source: addr("192.0.2.66:3478"),
        destination: local(),
        contents: &bogus,
    };
    assert_eq!(a.handle_input(t0, rx), Input::NotTurn);
    // Garbage from the server: consumed, no event.
    for junk in [
        &b"\xff\xff\xff"[..],
        &[0u8; 3],
        &[0x40, 0x00, 0x00, 0x09, 1],
    ] {
        let rx = Received {
            proto: Protocol::Udp,
            source: server(),
            destination: local(),
            contents: junk,
        };
        assert_eq!(a.handle_input(t0, rx), Input::Consumed);
        assert_eq!(a.poll_event(), None);
    }
    let rx = Received {
        proto: Protocol::Udp,
        source: server(),
        destination: local(),
        contents: &bogus,
    };
    assert_eq!(a.handle_input(t0, rx), Input::Consumed);
    assert_eq!(
        a.poll_event(),
        Some(AllocationEvent::Lost(TurnError::MissingAttribute(
            "LIFETIME"
        )))
    );
    // A 420 with UNKNOWN-ATTRIBUTES for a fresh allocation: a typed server error.
    let config = AllocationConfig::new(
        server(),
        local(),
        TurnTransport::Udp,
        Credentials::long_term(USER, PASS),
    );
    let mut a = Allocation::new(t0, config, [2; 32]);
    let tid = Message::parse(&a.poll_transmit().unwrap().contents)
        .unwrap()
        .transaction_id();
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(Class::Error, Method::ALLOCATE),
        tid,
    )
    .unwrap();
    b.add(&ErrorCode::UNKNOWN_ATTRIBUTE).unwrap();
    b.add(&UnknownAttributes::from_wire(&[0x00, 0x19]).unwrap())
        .unwrap();
    let e = b.finish().to_vec();
    let rx = Received {
        proto: Protocol::Udp,
        source: server(),
        destination: local(),
        contents: &e,
    };
    a.handle_input(t0, rx);
    assert!(matches!(
        a.poll_event(),
        Some(AllocationEvent::Lost(TurnError::ServerError {
            code: 420,
            ..
        }))
    ));
    let _ = XorRelayedAddress::decode;
}

#[test]
fn credentials_never_reach_the_logs() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        // A wrong password (so failures are logged too), then a good run with debug output.
        let mut h = Harness::with(FakeTurn::new(), |c| {
            c.credentials.password = "hunter2-secret".into()
        });
        h.run_until(Duration::from_secs(1));
        let mut t = FakeTurn::new();
        t.stale = 1;
        let mut h = Harness::new(t);
        h.run_until(Duration::from_secs(1));
        tracing::debug!(config = ?AllocationConfig::new(server(), local(), TurnTransport::Udp, Credentials::long_term(USER, PASS)), "config");
    });
    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the test must see some logs");
    assert!(!logs.contains("hunter2-secret"));
    assert!(!logs.contains(PASS));
}

#[test]
fn deallocating_while_the_allocate_is_in_flight_deletes_what_the_server_grants() {
    let mut h = Harness::new(FakeTurn::new());
    // The unauthenticated Allocate's 401 comes back at 10 ms; the authenticated one is
    // then in flight until 20 ms.
    h.run_until(Duration::from_millis(15));
    assert!(h.kinds().is_empty(), "{:?}", h.events);
    h.a.deallocate(h.now);
    assert!(!h.a.is_done(), "waits for the Allocate's answer");
    h.run_until(Duration::from_secs(2));
    // Granted, then deleted at once: never reported as allocated.
    assert_eq!(h.kinds(), ["Deallocated"]);
    assert!(
        h.turn.deallocated,
        "the server saw the Refresh with LIFETIME 0"
    );
    assert!(h.a.is_done());
}

#[test]
fn deallocating_before_any_authenticated_allocate_ends_at_once() {
    let mut h = Harness::new(FakeTurn::new());
    // Only the unauthenticated Allocate (which cannot create anything) is in flight.
    h.a.deallocate(h.now);
    assert!(h.a.is_done());
    h.run_until(Duration::from_secs(1));
    assert_eq!(h.kinds(), ["Deallocated"]);
    assert!(!h.turn.deallocated);
}

#[test]
fn deallocating_while_the_allocate_fails_ends_as_deallocated() {
    let mut turn = FakeTurn::new();
    turn.error = Some(486);
    let mut h = Harness::new(turn);
    h.run_until(Duration::from_millis(15));
    h.a.deallocate(h.now);
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.kinds(), ["Deallocated"]);
    assert!(h.a.is_done());
}

#[test]
fn binding_indications_keep_the_nat_binding_to_the_server_alive() {
    let keepalives = |h: &Harness| {
        h.turn
            .seen
            .iter()
            .filter_map(|b| Message::parse(b).ok())
            .filter(|m| m.class() == Class::Indication && m.method() == Method::BINDING)
            .inspect(|m| assert!(m.verify_fingerprint().is_ok()))
            .count()
    };
    // Allocated at 20 ms: one every 15 s after it (RFC 8445 §11's Tr), no answer needed
    // (without liveness checks, which keep the binding themselves: none then).
    let mut h = Harness::with(FakeTurn::new(), |c| c.liveness = None);
    h.run_until(Duration::from_secs(50));
    assert_eq!(keepalives(&h), 3);
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(50));
    assert_eq!(keepalives(&h), 0);
    // None over a stream (TCP keeps its own binding), and none when turned off.
    let mut h = Harness::with(FakeTurn::new(), |c| c.transport = TurnTransport::Tcp);
    h.run_until(Duration::from_secs(50));
    assert_eq!(keepalives(&h), 0);
    let mut h = Harness::with(FakeTurn::new(), |c| c.keepalive = None);
    h.run_until(Duration::from_secs(50));
    assert_eq!(keepalives(&h), 0);
}

fn refreshes_seen(h: &Harness) -> usize {
    h.turn
        .seen
        .iter()
        .filter_map(|b| Message::parse(b).ok())
        .filter(|m| m.method() == Method::REFRESH && m.has_integrity())
        .count()
}

/// The `Lost` events so far, with when they came.
fn lost_events(h: &Harness) -> Vec<&(Duration, AllocationEvent)> {
    h.events
        .iter()
        .filter(|(_, e)| matches!(e, AllocationEvent::Lost(_)))
        .collect()
}

/// A server that restarts under a live allocation forgets it; the client learns that at
/// its next liveness check (438 for the old nonce, then 437), not at the next refresh
/// nine minutes later.
#[test]
fn a_restarted_server_is_noticed_at_the_next_liveness_check() {
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(30));
    assert_eq!(
        h.kinds(),
        ["Allocated"],
        "checks report nothing while alive"
    );
    // Allocated at 20 ms; a check every 5 s after it: 5 by 30 s (the sixth at 30.020 s).
    assert_eq!(refreshes_seen(&h), 5);
    assert!(!h.a.is_done());
    h.turn.restart();
    h.run_until(Duration::from_secs(60));
    let lost = lost_events(&h);
    assert_eq!(lost.len(), 1, "{:?}", h.events);
    let (at, e) = lost[0];
    assert_eq!(*e, AllocationEvent::Lost(TurnError::AllocationMismatch));
    // The check at 30.020 s: 438 at 30.030, the retry's 437 at 30.040.
    assert_eq!(*at, Duration::from_millis(30_040));
    assert!(h.a.is_done());
}

/// A server that stops answering: [`LIVENESS_SILENCE`] after the first check it leaves
/// unanswered, with nothing else from it, the allocation is lost (not when the check's
/// transaction ends, 39.5 s after it went).
#[test]
fn a_dead_server_is_noticed_within_seconds_of_a_silent_check() {
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(10));
    h.turn.dead = true;
    h.run_until(Duration::from_secs(120));
    let lost = lost_events(&h);
    assert_eq!(lost.len(), 1, "{:?}", h.events);
    assert_eq!(lost[0].1, AllocationEvent::Lost(TurnError::TimedOut));
    // The check at 10.020 s goes unanswered.
    assert_eq!(
        lost[0].0,
        Duration::from_millis(10_020) + crate::turn::LIVENESS_SILENCE
    );
    // One check at a time: the next ticks sent no new request while it was retransmitted.
    let checks: std::collections::HashSet<[u8; 12]> = h
        .turn
        .seen
        .iter()
        .filter_map(|b| Message::parse(b).ok())
        .filter(|m| m.method() == Method::REFRESH)
        .map(|m| m.transaction_id().0)
        .collect();
    // The one at 5.020 s, answered, and the one at 10.020 s (the server dead by then),
    // retransmitted until the allocation was given up: the ticks meanwhile sent none.
    assert_eq!(checks.len(), 2, "{checks:?}");
}

/// A check's answers lost while the server's other traffic arrives: the server is
/// alive, the allocation is kept, and the check's transaction goes on.
#[test]
fn a_check_unanswered_while_the_server_speaks_loses_nothing() {
    let mut h = Harness::new(FakeTurn::new());
    h.run_until(Duration::from_secs(10));
    h.turn.dead = true;
    // 10.020 s: the check goes; the server says something else at 12 s (as relayed data
    // would come).
    h.run_until(Duration::from_secs(12));
    let server = h.a.server();
    let local = h.a.local();
    let junk = [0u8; 4];
    let _ = h.a.handle_input(
        h.t0 + Duration::from_secs(12),
        crate::Received {
            proto: crate::Protocol::Udp,
            source: server,
            destination: local,
            contents: &junk,
        },
    );
    h.run_until(Duration::from_secs(10) + crate::turn::LIVENESS_SILENCE + Duration::from_secs(1));
    assert!(!h.a.is_done(), "{:?}", h.events);
}

/// Without checks (a background policy), nothing but the scheduled refresh asks.
#[test]
fn liveness_checks_can_be_turned_off() {
    let mut h = Harness::with(FakeTurn::new(), |c| c.liveness = None);
    h.run_until(Duration::from_secs(100));
    assert_eq!(refreshes_seen(&h), 0);
    h.turn.restart();
    h.run_until(Duration::from_secs(200));
    assert_eq!(h.kinds(), ["Allocated"], "unnoticed until the refresh");
}

// ---------------------------------------------------------------------------
// RFC 8016 mobility
// ---------------------------------------------------------------------------

/// The requests the fake server saw with `method`, authenticated ones only, with where
/// each came from.
fn requests(h: &Harness, method: Method) -> Vec<(Message<'_>, SocketAddr)> {
    h.turn
        .seen
        .iter()
        .zip(&h.turn.seen_from)
        .filter_map(|(b, from)| Some((Message::parse(b).ok()?, *from)))
        .filter(|(m, _)| m.class() == Class::Request && m.method() == method && m.has_integrity())
        .collect()
}

fn ticket_of<'a>(m: &Message<'a>) -> Option<&'a [u8]> {
    m.get::<MobilityTicket<'_>>().unwrap().map(|t| t.0)
}

fn moves(h: &Harness) -> Vec<(Duration, AllocationEvent)> {
    h.events
        .iter()
        .filter(|(_, e)| matches!(e, AllocationEvent::Moved { .. }))
        .cloned()
        .collect()
}

/// An Allocate asks for a ticket with an empty MOBILITY-TICKET (RFC 8016 §3.1.1) and the
/// one granted is kept; refreshes on the same address carry none (coturn refuses one
/// there) and keep the ticket their responses repeat.
#[test]
fn a_mobility_ticket_is_asked_for_and_kept() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(12));
    assert_eq!(h.kinds(), ["Allocated"]);
    assert!(h.a.has_mobility_ticket());
    assert!(!h.a.mobility_refused());
    let allocates = requests(&h, Method::ALLOCATE);
    assert_eq!(allocates.len(), 1);
    assert_eq!(ticket_of(&allocates[0].0), Some(&[][..]));
    // The liveness checks at 5 and 10 s: no ticket, answered with the same one.
    let refreshes = requests(&h, Method::REFRESH);
    assert_eq!(refreshes.len(), 2);
    assert!(refreshes.iter().all(|(m, _)| ticket_of(m).is_none()));
    assert_eq!(h.a.ticket.as_deref(), Some(&b"ticket-1"[..]));
}

/// Without `mobility`, and over TCP, no ticket is asked for.
#[test]
fn no_ticket_is_asked_for_when_mobility_is_off_or_over_a_stream() {
    for edit in [
        (|c: &mut AllocationConfig| c.mobility = false) as fn(&mut AllocationConfig),
        |c| c.transport = TurnTransport::Tcp,
    ] {
        let mut h = Harness::with(FakeTurn::granting(), edit);
        h.run_until(Duration::from_secs(1));
        assert_eq!(h.kinds(), ["Allocated"]);
        assert!(
            h.turn
                .seen
                .iter()
                .filter_map(|b| Message::parse(b).ok())
                .all(|m| ticket_of(&m).is_none())
        );
        assert!(!h.a.has_mobility_ticket());
        assert!(!h.a.move_to(h.now, moved()));
    }
}

/// A server that ignores the attribute grants no ticket: the allocation cannot move, and
/// `move_to` says so without changing anything.
#[test]
fn without_a_ticket_move_to_declines_and_changes_nothing() {
    let mut h = Harness::new(FakeTurn::new());
    assert!(!h.a.move_to(h.now, moved()), "not allocated yet");
    h.run_until(Duration::from_secs(1));
    assert_eq!(h.kinds(), ["Allocated"]);
    assert!(!h.a.has_mobility_ticket());
    let seen = h.turn.seen.len();
    assert!(!h.a.move_to(h.now, moved()));
    assert_eq!(h.a.local(), local());
    assert!(!h.a.is_moving());
    assert!(h.a.poll_transmit().is_none());
    assert_eq!(h.turn.seen.len(), seen);
    // With a ticket, but to an address of the other family than the server's.
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    assert!(!h.a.move_to(h.now, addr("[2001:db8::7]:6000")));
    assert_eq!(h.a.local(), local());
}

/// 405 Mobility Forbidden (coturn without `--mobility`): the Allocate is sent again at
/// once without the attribute, and allocates; `mobility_refused` says so.
#[test]
fn mobility_forbidden_allocates_again_without_the_ticket() {
    let mut t = FakeTurn::new();
    t.mobility = Mobility::Forbid;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert_eq!(h.kinds(), ["Allocated"]);
    // 401, 405, then success: one more round trip.
    assert_eq!(h.events[0].0, Duration::from_millis(30));
    assert!(h.a.mobility_refused());
    assert!(!h.a.has_mobility_ticket());
    let allocates = requests(&h, Method::ALLOCATE);
    assert_eq!(allocates.len(), 2);
    assert!(ticket_of(&allocates[0].0).is_some());
    assert!(ticket_of(&allocates[1].0).is_none());
    // A second 405 is not answered by a third attempt: a server that forbids the
    // Allocate itself with 405 fails it.
    let mut t = FakeTurn::new();
    t.error = Some(405);
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert_eq!(
        h.events[0].1,
        AllocationEvent::Lost(TurnError::ServerError {
            code: 405,
            reason: "x".into()
        })
    );
    assert_eq!(requests(&h, Method::ALLOCATE).len(), 2);
}

/// A move to a server that went silent (dead, or restarted and silent about the
/// allocation it forgot): lost [`LIVENESS_SILENCE`] after the move's Refresh went, not
/// when its transaction ends.
#[test]
fn a_move_the_server_never_answers_is_lost_within_seconds() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    h.turn.dead = true;
    let at = h.now;
    assert!(h.a.move_to(at, moved()));
    h.run_until(Duration::from_secs(30));
    let lost = lost_events(&h);
    assert_eq!(lost.len(), 1, "{:?}", h.events);
    assert_eq!(lost[0].0, at - h.t0 + crate::turn::LIVENESS_SILENCE);
}

/// The move: a Refresh with the ticket from the new address at once (RFC 8016 §3.2.1);
/// its success keeps the allocation (same relayed address, channel still bound), reports
/// `Moved`, takes the rotated ticket, and everything after goes from the new address,
/// starting with a Binding indication. A second move presents the rotated ticket.
#[test]
fn move_to_keeps_the_allocation_from_the_new_address() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    let peer = addr("198.51.100.50:7000");
    h.a.create_permission(h.now, peer.ip()).unwrap();
    let ch = h.a.bind_channel(h.now, peer).unwrap();
    h.run_until(Duration::from_secs(2));
    assert_eq!(
        h.kinds(),
        ["Allocated", "PermissionCreated", "ChannelBound"]
    );
    let relayed = h.a.relayed().to_vec();

    let at = h.now;
    assert!(h.a.move_to(at, moved()));
    assert!(h.a.is_moving());
    assert_eq!(h.a.local(), moved());
    let sent_before = h.sent.len();
    h.run_until(Duration::from_secs(3));
    let m = moves(&h);
    assert_eq!(m.len(), 1, "{:?}", h.events);
    assert_eq!(
        m[0].0,
        at - h.t0 + Duration::from_millis(10),
        "one round trip"
    );
    assert_eq!(
        m[0].1,
        AllocationEvent::Moved {
            local: moved(),
            mapped: None,
            lifetime: Duration::from_secs(600)
        }
    );
    assert!(!h.a.is_moving());
    assert_eq!(h.a.relayed(), relayed);
    assert_eq!(h.turn.holder, Some(moved()));
    let (mv, from) = requests(&h, Method::REFRESH).pop().unwrap();
    assert_eq!((ticket_of(&mv), from), (Some(&b"ticket-1"[..]), moved()));
    assert_eq!(h.a.ticket.as_deref(), Some(&b"ticket-2"[..]));
    // Everything since went from the new address: the move, then an indication.
    assert!(h.sent[sent_before..].iter().all(|(src, _)| *src == moved()));
    let after: Vec<_> = h.turn.seen[h.turn.seen.len() - 2..]
        .iter()
        .map(|b| Message::parse(b).unwrap().message_type())
        .collect();
    assert_eq!(
        after,
        [
            MessageType::new(Class::Request, Method::REFRESH),
            MessageType::new(Class::Indication, Method::BINDING)
        ]
    );
    // The channel is still bound: data goes as ChannelData.
    let mut out = [0u8; 64];
    let n = h.a.encode_to_peer(peer, b"hi", &mut out).unwrap();
    assert_eq!(ChannelData::parse(&out[..n]).unwrap().channel, ch);

    // Liveness checks and the permission and channel refreshes keep working from there
    // (the fake answers 437 to anything from an address that does not hold it).
    h.run_until(Duration::from_secs(600));
    assert!(
        !h.kinds()
            .iter()
            .any(|k| k == "Lost" || k.ends_with("Failed")),
        "{:?}",
        h.kinds()
    );
    assert!(
        h.turn.seen_from[h.turn.seen_from.len() - 20..]
            .iter()
            .all(|f| *f == moved())
    );
    assert!(requests(&h, Method::CREATE_PERMISSION).last().unwrap().1 == moved());
    assert!(requests(&h, Method::CHANNEL_BIND).last().unwrap().1 == moved());

    // Back to the first network: the rotated ticket.
    assert!(h.a.move_to(h.now, local()));
    h.run_until(Duration::from_secs(601));
    assert_eq!(moves(&h).len(), 2);
    let (mv, from) = requests(&h, Method::REFRESH).pop().unwrap();
    assert_eq!((ticket_of(&mv), from), (Some(&b"ticket-2"[..]), local()));
    assert_eq!(h.turn.holder, Some(local()));
}

/// A permission asked for while the move is in flight, and one that was being
/// refreshed when it started, go from the new address after it, not before (the
/// server would find no allocation there yet).
#[test]
fn permissions_wait_for_the_move() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    let first = addr("198.51.100.50:7000");
    h.a.create_permission(h.now, first.ip()).unwrap();
    // In flight (sent, not yet answered) when the move starts: abandoned, asked again.
    assert!(h.a.move_to(h.now, moved()));
    let second = addr("198.51.100.60:7000");
    h.a.create_permission(h.now, second.ip()).unwrap();
    h.run_until(Duration::from_secs(2));
    assert_eq!(
        h.kinds(),
        [
            "Allocated",
            "Moved",
            "PermissionCreated",
            "PermissionCreated"
        ]
    );
    // The answer to the one in flight arrived at the old address: not the allocation's.
    assert_eq!(h.not_turn, 1);
    let perms = requests(&h, Method::CREATE_PERMISSION);
    // The one from the old address (abandoned), then both from the new one.
    assert_eq!(
        perms.iter().map(|(_, f)| *f).collect::<Vec<_>>(),
        [local(), moved(), moved()]
    );
}

/// A stale ticket (the server rotated it, or forgot the allocation): 400, then the plain
/// Refresh from the new address finds no allocation (437), and it is lost. A server that
/// does not answer the move: lost when the Refresh times out.
#[test]
fn a_failed_move_is_lost() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    h.turn.tickets += 1;
    assert!(h.a.move_to(h.now, moved()));
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.kinds(), ["Allocated", "Lost"]);
    assert_eq!(
        h.events[1].1,
        AllocationEvent::Lost(TurnError::AllocationMismatch)
    );
    assert!(h.a.is_done() && !h.a.is_moving());

    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    h.turn.dead = true;
    assert!(h.a.move_to(h.now, moved()));
    h.run_until(Duration::from_secs(60));
    assert_eq!(h.kinds(), ["Allocated", "Lost"]);
    assert_eq!(h.events[1].1, AllocationEvent::Lost(TurnError::TimedOut));
}

/// A move to the address in use, through a NAT that did not change: the server sees the
/// 5-tuple that holds the allocation and refuses the ticket there (400, as coturn does);
/// a plain Refresh confirms the allocation, and it is `Moved` (to where it was).
#[test]
fn a_move_to_the_same_address_through_the_same_nat_is_confirmed() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    assert!(h.a.move_to(h.now, local()));
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.kinds(), ["Allocated", "Moved"]);
    let refreshes = requests(&h, Method::REFRESH);
    let tickets: Vec<_> = refreshes.iter().map(|(m, _)| ticket_of(m)).collect();
    assert_eq!(tickets, [Some(&b"ticket-1"[..]), None]);
    assert!(h.a.has_mobility_ticket());
}

/// Deallocating while the move is in flight: the Refresh with LIFETIME 0 carries the
/// ticket, so that the server finds the allocation whether or not it moved it yet.
#[test]
fn deallocating_during_a_move_carries_the_ticket() {
    let mut h = Harness::new(FakeTurn::granting());
    h.run_until(Duration::from_secs(1));
    assert!(h.a.move_to(h.now, moved()));
    h.a.deallocate(h.now);
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.kinds(), ["Allocated", "Deallocated"]);
    assert!(h.turn.deallocated);
    let (last, from) = requests(&h, Method::REFRESH).pop().unwrap();
    assert_eq!(last.get::<Lifetime>().unwrap(), Some(Lifetime(0)));
    assert_eq!((ticket_of(&last), from), (Some(&b"ticket-1"[..]), moved()));
}

/// A server that challenges the move from the new address (401 with a new nonce): the
/// move is sent again with that nonce, a bounded number of times.
#[test]
fn a_challenged_move_is_retried_with_the_new_nonce() {
    let mut t = FakeTurn::granting();
    t.challenge_moves = 1;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert!(h.a.move_to(h.now, moved()));
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.kinds(), ["Allocated", "Moved"]);
    let (mv, from) = requests(&h, Method::REFRESH).pop().unwrap();
    assert_eq!(from, moved());
    assert_eq!(mv.get::<Nonce<'_>>().unwrap().unwrap().0, "abcdef0123m");
    assert_eq!(ticket_of(&mv), Some(&b"ticket-1"[..]));
    // Challenged every time (wrong credentials, really): lost after the bounded retries.
    let mut t = FakeTurn::granting();
    t.challenge_moves = u32::MAX;
    let mut h = Harness::new(t);
    h.run_until(Duration::from_secs(1));
    assert!(h.a.move_to(h.now, moved()));
    h.run_until(Duration::from_secs(2));
    assert_eq!(h.kinds(), ["Allocated", "Lost"]);
    assert_eq!(
        h.events[1].1,
        AllocationEvent::Lost(TurnError::Unauthenticated)
    );
    let moves_sent = requests(&h, Method::REFRESH)
        .iter()
        .filter(|(m, _)| ticket_of(m).is_some())
        .count();
    assert_eq!(moves_sent, 1 + MAX_STALE_NONCE_RETRIES as usize);
}
