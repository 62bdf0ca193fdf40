//! ICE-TCP (RFC 6544) in the agent: two agents on public addresses joined by a wire that
//! models TCP connections the way the driver keys them (an active base is its IP with
//! port 0; the peer sees the connection come from an ephemeral port), with UDP blocked or
//! not.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A connection one side opened from an active base.
struct Conn {
    side: usize,
    /// The active base (IP, port 0) and the passive address it connected to.
    key: (SocketAddr, SocketAddr),
    /// Where the other side sees it come from.
    wire: SocketAddr,
}

struct Wire {
    now: Instant,
    agents: [IceAgent; 2],
    ips: [IpAddr; 2],
    udp_blocked: bool,
    conns: Vec<Conn>,
    next_port: u16,
    in_flight: Vec<(Instant, usize, Transmit)>,
    events: [Vec<IceEvent>; 2],
    /// Transmits each side sent, for assertions.
    sent: [Vec<Transmit>; 2],
}

/// What each side offers.
#[derive(Clone, Copy)]
struct Offer {
    udp: bool,
    passive: bool,
    active: bool,
    so: bool,
}

const ALL: Offer = Offer {
    udp: true,
    passive: true,
    active: true,
    so: true,
};

impl Wire {
    fn new(offers: [Offer; 2], udp_blocked: bool) -> Self {
        let now = Instant::now();
        let ips = [a("198.51.100.1:0").ip(), a("198.51.100.2:0").ip()];
        let mut agents = [0u8, 1].map(|i| {
            let mut seed = [7u8; 32];
            seed[0] = i;
            IceAgent::new(now, IceConfig::default(), i == 0, seed)
        });
        let mut cands: [Vec<Candidate>; 2] = [vec![], vec![]];
        for i in 0..2 {
            let ip = ips[i];
            let o = offers[i];
            let mut add = |c: Candidate, base: SocketAddr| {
                assert!(agents[i].add_local_candidate(c.clone(), base));
                cands[i].push(c);
            };
            if o.udp {
                let b = SocketAddr::new(ip, 5000);
                add(
                    Candidate::new(
                        CandidateKind::Host,
                        CandidateTransport::Udp,
                        b,
                        ip,
                        None,
                        65535,
                    ),
                    b,
                );
            }
            if o.passive {
                let b = SocketAddr::new(ip, 6000);
                add(
                    Candidate::tcp(CandidateKind::Host, TcpType::Passive, b, ip, None, 0x1FFF),
                    b,
                );
            }
            if o.active {
                let b = SocketAddr::new(ip, 0);
                add(
                    Candidate::tcp(CandidateKind::Host, TcpType::Active, b, ip, None, 0x1FFF),
                    b,
                );
            }
            if o.so {
                let b = SocketAddr::new(ip, 7000);
                add(
                    Candidate::tcp(
                        CandidateKind::Host,
                        TcpType::SimultaneousOpen,
                        b,
                        ip,
                        None,
                        0x1FFF,
                    ),
                    b,
                );
            }
            agents[i].end_of_local_candidates();
        }
        for i in 0..2 {
            let creds = agents[1 - i].local_credentials().clone();
            agents[i].set_remote_credentials(creds);
            for c in &cands[1 - i] {
                // Through the SDP line, as a peer would get it.
                let line = Candidate::parse(&c.to_string()).expect("our line parses");
                agents[i].add_remote_candidate(line);
            }
            agents[i].end_of_remote_candidates();
        }
        Self {
            now,
            agents,
            ips,
            udp_blocked,
            conns: Vec::new(),
            next_port: 40000,
            in_flight: Vec::new(),
            events: [vec![], vec![]],
            sent: [vec![], vec![]],
        }
    }

    fn offers(&self, side: usize, addr: SocketAddr, t: TcpType) -> bool {
        self.agents[side]
            .local_candidates()
            .any(|c| c.tcp_type == Some(t) && c.socket_addr() == Some(addr))
    }

    /// Where a transmit from `i` arrives, as the other side sees it (or nowhere).
    fn route(&mut self, i: usize, mut t: Transmit) -> Option<(usize, Transmit)> {
        let j = 1 - i;
        if t.destination.ip() != self.ips[j] {
            return None;
        }
        if t.proto == Protocol::Udp {
            return (!self.udp_blocked).then_some((j, t));
        }
        if t.source.port() == 0 {
            // From an active base: the connection to a listening address.
            let key = (t.source, t.destination);
            let wire = match self.conns.iter().find(|c| c.side == i && c.key == key) {
                Some(c) => c.wire,
                None => {
                    if !self.offers(j, t.destination, TcpType::Passive) {
                        return None; // refused
                    }
                    self.next_port += 1;
                    let wire = SocketAddr::new(t.source.ip(), self.next_port);
                    self.conns.push(Conn { side: i, key, wire });
                    wire
                }
            };
            t.source = wire;
            return Some((j, t));
        }
        // From a passive base, on a connection the other side opened.
        if let Some(c) = self
            .conns
            .iter()
            .find(|c| c.side == j && c.wire == t.destination && c.key.1 == t.source)
        {
            t.destination = c.key.0;
            return Some((j, t));
        }
        // Simultaneous open between two so addresses.
        (self.offers(i, t.source, TcpType::SimultaneousOpen)
            && self.offers(j, t.destination, TcpType::SimultaneousOpen))
        .then_some((j, t))
    }

    fn step(&mut self, until: Instant) -> bool {
        for i in 0..2 {
            while let Some(t) = self.agents[i].poll_transmit() {
                self.sent[i].push(t.clone());
                if let Some((j, t)) = self.route(i, t) {
                    self.in_flight
                        .push((self.now + Duration::from_millis(10), j, t));
                }
            }
            while let Some(e) = self.agents[i].poll_event() {
                self.events[i].push(e);
            }
        }
        let next = [
            self.agents[0].poll_timeout(),
            self.agents[1].poll_timeout(),
            self.in_flight.iter().map(|f| f.0).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next.filter(|n| *n <= until) else {
            self.now = until;
            return false;
        };
        self.now = self.now.max(next);
        let due: Vec<_> = self
            .in_flight
            .iter()
            .filter(|f| f.0 <= self.now)
            .cloned()
            .collect();
        self.in_flight.retain(|f| f.0 > self.now);
        for (_, j, t) in due {
            let rx = Received {
                proto: t.proto,
                source: t.source,
                destination: t.destination,
                contents: &t.contents,
            };
            self.agents[j].handle_input(self.now, rx);
        }
        for i in 0..2 {
            self.agents[i].handle_timeout(self.now);
        }
        true
    }

    /// Runs until both sides selected a nominated pair (true), or `limit`.
    fn connect(&mut self, limit: Duration) -> bool {
        let until = self.now + limit;
        for _ in 0..100_000 {
            if self.events.iter().all(|ev| {
                ev.iter().any(|e| {
                    matches!(
                        e,
                        IceEvent::SelectedPair {
                            nominated: true,
                            ..
                        }
                    )
                })
            }) {
                return true;
            }
            if !self.step(until) {
                return false;
            }
        }
        panic!("runaway loop");
    }

    fn selected(&self, i: usize) -> (Candidate, Candidate) {
        let (l, r) = self.agents[i]
            .selected_candidates()
            .expect("a selected pair");
        (l.clone(), r.clone())
    }
}

#[test]
fn with_udp_blocked_the_agents_connect_over_tcp() {
    let mut w = Wire::new([ALL, ALL], true);
    assert!(w.connect(Duration::from_secs(10)));
    for i in 0..2 {
        assert_eq!(w.agents[i].selected_proto(), Some(Protocol::Tcp));
        let (l, r) = w.selected(i);
        assert_eq!(
            (l.transport, r.transport),
            (CandidateTransport::Tcp, CandidateTransport::Tcp)
        );
    }
    // Both sides agree on the pair: the same two connection ends.
    let (l0, r0) = w.selected(0);
    let (l1, r1) = w.selected(1);
    let pair0 = (l0.tcp_type, r0.tcp_type);
    let pair1 = (r1.tcp_type, l1.tcp_type);
    assert_eq!(pair0, pair1, "{l0} {r0} / {l1} {r1}");
    // No check ever went to an active candidate's port 9 (RFC 6544 §6.2).
    for s in &w.sent {
        assert!(s.iter().all(|t| t.destination.port() != 9));
    }
}

#[test]
fn udp_is_preferred_when_it_works() {
    let mut w = Wire::new([ALL, ALL], false);
    assert!(w.connect(Duration::from_secs(10)));
    // Let the controlling side finish: it nominates the best valid pair.
    let until = w.now + Duration::from_secs(2);
    while w.step(until) {}
    for i in 0..2 {
        assert_eq!(
            w.agents[i].selected_proto(),
            Some(Protocol::Udp),
            "side {i}"
        );
    }
}

#[test]
fn an_active_side_connects_to_a_passive_side_which_learns_it_as_peer_reflexive() {
    let active = Offer {
        udp: false,
        passive: false,
        active: true,
        so: false,
    };
    let passive = Offer {
        udp: false,
        passive: true,
        active: false,
        so: false,
    };
    for (offers, controlling_active) in [([active, passive], true), ([passive, active], false)] {
        let mut w = Wire::new(offers, true);
        assert!(
            w.connect(Duration::from_secs(10)),
            "active controls: {controlling_active}"
        );
        let (ai, pi) = if controlling_active { (0, 1) } else { (1, 0) };
        let (l, r) = w.selected(ai);
        assert_eq!(
            (l.tcp_type, r.tcp_type),
            (Some(TcpType::Active), Some(TcpType::Passive))
        );
        let (l, r) = w.selected(pi);
        assert_eq!(l.tcp_type, Some(TcpType::Passive));
        // The connection's far end: learned from the check, an active peer-reflexive one.
        assert_eq!(
            (r.kind, r.tcp_type),
            (CandidateKind::PeerReflexive, Some(TcpType::Active))
        );
        assert!(w.events[pi].iter().any(
            |e| matches!(e, IceEvent::PeerReflexive(c) if c.transport == CandidateTransport::Tcp)
        ));
        // Answers went back on the connection the check came on.
        assert!(
            w.sent[pi]
                .iter()
                .all(|t| t.proto == Protocol::Tcp && t.destination.port() >= 40000)
        );
    }
}

#[test]
fn two_simultaneous_open_candidates_connect() {
    let so = Offer {
        udp: false,
        passive: false,
        active: false,
        so: true,
    };
    let mut w = Wire::new([so, so], true);
    assert!(w.connect(Duration::from_secs(10)));
    for i in 0..2 {
        let (l, r) = w.selected(i);
        assert_eq!(
            (l.tcp_type, r.tcp_type),
            (
                Some(TcpType::SimultaneousOpen),
                Some(TcpType::SimultaneousOpen)
            )
        );
    }
}

#[test]
fn tcp_candidates_without_a_partner_type_do_not_pair() {
    // Active with active, passive with passive: nothing to check, the agents fail.
    let active = Offer {
        udp: false,
        passive: false,
        active: true,
        so: false,
    };
    let mut w = Wire::new([active, active], true);
    assert!(!w.connect(Duration::from_secs(20)));
    assert!(w.sent.iter().all(|s| s.is_empty()), "no check sent");
    assert_eq!(w.agents[0].state(), IceState::Failed);
    // A TCP candidate without a tcptype is refused (RFC 6544 §4.5).
    let mut c = Candidate::tcp(
        CandidateKind::Host,
        TcpType::Passive,
        a("198.51.100.9:80"),
        a("198.51.100.9:80").ip(),
        None,
        1,
    );
    c.tcp_type = None;
    assert!(!w.agents[0].add_remote_candidate(c));
}

#[test]
fn tcp_priorities_rank_below_udp_of_the_same_type_and_above_relays() {
    let ip = a("198.51.100.1:0").ip();
    let udp_srflx = Candidate::new(
        CandidateKind::ServerReflexive,
        CandidateTransport::Udp,
        a("198.51.100.1:1"),
        ip,
        None,
        65535,
    );
    let udp_relay = Candidate::new(
        CandidateKind::Relayed,
        CandidateTransport::Udp,
        a("198.51.100.1:2"),
        ip,
        None,
        65535,
    );
    let tcp = |k, t| Candidate::tcp(k, t, a("198.51.100.1:3"), ip, None, 0x1FFF);
    let host_active = tcp(CandidateKind::Host, TcpType::Active);
    let host_passive = tcp(CandidateKind::Host, TcpType::Passive);
    let host_so = tcp(CandidateKind::Host, TcpType::SimultaneousOpen);
    let srflx_so = tcp(CandidateKind::ServerReflexive, TcpType::SimultaneousOpen);
    let srflx_active = tcp(CandidateKind::ServerReflexive, TcpType::Active);
    // RFC 6544 §4.2's direction preferences.
    assert!(host_active.priority > host_passive.priority);
    assert!(host_passive.priority > host_so.priority);
    assert!(srflx_so.priority > srflx_active.priority);
    // Below UDP of the same kind (and below UDP srflx), above relays.
    assert!(udp_srflx.priority > host_active.priority);
    assert!(srflx_so.priority > udp_relay.priority);
    assert_eq!(
        host_active.port, 9,
        "RFC 6544 §4.5: active candidates say port 9"
    );
    assert!(host_active.to_string().contains(" tcptype active"));
}
