//! Two agents on the virtual network ([`crate::sim`]), behind NATs of every RFC 4787 kind.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Behaviour, Conditions, Delivery, NatConfig, Network, udp};

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const REFLECTOR: &str = "203.0.113.10:3478";

struct Peer {
    agent: IceAgent,
    base: SocketAddr,
    /// Application data that reached this peer (NotIce datagrams).
    data: Vec<Vec<u8>>,
    events: Vec<IceEvent>,
}

struct World {
    now: Instant,
    start: Instant,
    net: Network,
    peers: [Peer; 2],
    /// Peers that stopped answering (consent tests).
    muted: [bool; 2],
    /// Datagrams each peer sent.
    sent: [usize; 2],
}

/// The server-reflexive address of `base`: a datagram to a public reflector, as a STUN
/// Binding would do.
fn reflect(net: &mut Network, now: &mut Instant, base: SocketAddr) -> SocketAddr {
    net.send(*now, udp(base, a(REFLECTOR), b"binding"));
    loop {
        let t = net.poll_timeout().expect("the reflector answers");
        *now = (*now).max(t);
        if let Some(d) = net.poll_delivery(*now) {
            return d.transmit.source;
        }
    }
}

fn host(base: SocketAddr) -> Candidate {
    Candidate::new(
        CandidateKind::Host,
        CandidateTransport::Udp,
        base,
        base.ip(),
        None,
        65535,
    )
}

fn srflx(mapped: SocketAddr, base: SocketAddr) -> Candidate {
    let mut c = Candidate::new(
        CandidateKind::ServerReflexive,
        CandidateTransport::Udp,
        mapped,
        base.ip(),
        Some(a(REFLECTOR).ip()),
        65535,
    );
    c.related = Some((super::super::CandidateAddress::Ip(base.ip()), base.port()));
    c
}

impl World {
    /// Peer 0 (controlling) at 192.168.1.10:5000, peer 1 at 10.0.0.10:6000, each behind
    /// its NAT (or on the public network with `None`), candidates host + srflx exchanged.
    fn new(nats: [Option<NatConfig>; 2], conditions: Conditions, seed: u64) -> Self {
        let start = Instant::now();
        let mut now = start;
        let mut net = Network::new(seed, Conditions::default());
        net.add_host(a(REFLECTOR).ip(), None);
        let bases = [a("192.168.1.10:5000"), a("10.0.0.10:6000")];
        let externals = ["198.51.100.1", "198.51.100.2"];
        for i in 0..2 {
            let nat = nats[i].map(|c| net.add_nat(externals[i].parse().unwrap(), c));
            net.add_host(bases[i].ip(), nat);
        }
        let mut peers = [0, 1].map(|i| {
            let mut s = [0u8; 32];
            s[0] = i as u8;
            s[1] = seed as u8;
            Peer {
                agent: IceAgent::new(now, IceConfig::default(), i == 0, s),
                base: bases[i],
                data: vec![],
                events: vec![],
            }
        });
        let mut cands: [Vec<Candidate>; 2] = [vec![], vec![]];
        for i in 0..2 {
            let mapped = reflect(&mut net, &mut now, bases[i]);
            cands[i].push(host(bases[i]));
            if mapped != bases[i] {
                cands[i].push(srflx(mapped, bases[i]));
            }
            for c in &cands[i] {
                peers[i].agent.add_local_candidate(c.clone(), bases[i]);
            }
            peers[i].agent.end_of_local_candidates();
        }
        net.set_conditions(conditions);
        for i in 0..2 {
            let creds = peers[1 - i].agent.local_credentials().clone();
            peers[i].agent.set_remote_credentials(creds);
            for c in &cands[1 - i] {
                peers[i].agent.add_remote_candidate(c.clone());
            }
            peers[i].agent.end_of_remote_candidates();
        }
        Self {
            now,
            start,
            net,
            peers,
            muted: [false; 2],
            sent: [0; 2],
        }
    }

    fn step(&mut self, until: Instant) -> bool {
        for i in 0..2 {
            while let Some(t) = self.peers[i].agent.poll_transmit() {
                if !self.muted[i] {
                    self.sent[i] += 1;
                    self.net.send(self.now, t);
                }
            }
            while let Some(e) = self.peers[i].agent.poll_event() {
                self.peers[i].events.push(e);
            }
        }
        let next = [
            self.peers[0].agent.poll_timeout(),
            self.peers[1].agent.poll_timeout(),
            self.net.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next.filter(|n| *n <= until) else {
            self.now = until;
            return false;
        };
        self.now = self.now.max(next);
        while let Some(Delivery { host, transmit }) = self.net.poll_delivery(self.now) {
            let Some(i) = self.peers.iter().position(|p| p.base.ip() == host) else {
                continue;
            };
            if self.muted[i] {
                continue;
            }
            let rx = Received {
                proto: transmit.proto,
                source: transmit.source,
                destination: transmit.destination,
                contents: &transmit.contents,
            };
            if self.peers[i].agent.handle_input(self.now, rx) == IceInput::NotIce {
                self.peers[i].data.push(transmit.contents.clone());
            }
        }
        for p in &mut self.peers {
            p.agent.handle_timeout(self.now);
            // Events now, so that `connect` stops at the moment they happen, not at the
            // next timer.
            while let Some(e) = p.agent.poll_event() {
                p.events.push(e);
            }
        }
        true
    }

    /// Runs until both sides have a nominated selected pair, or `limit` of virtual time.
    fn connect(&mut self, limit: Duration) -> bool {
        let until = self.start + limit;
        for _ in 0..1_000_000 {
            if self.peers.iter().all(|p| nominated(p).is_some()) {
                return true;
            }
            if self
                .peers
                .iter()
                .all(|p| p.agent.state() == IceState::Failed)
            {
                return false;
            }
            if !self.step(until) {
                return false;
            }
        }
        panic!("runaway loop");
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..1_000_000 {
            if !self.step(until) {
                return;
            }
        }
        panic!("runaway loop");
    }

    /// Sends application data from peer `i` on its selected pair; returns whether the
    /// other peer got it.
    fn data_flows(&mut self, i: usize) -> bool {
        let (from, to) = self.peers[i].agent.selected().expect("a selected pair");
        let before = self.peers[1 - i].data.len();
        self.net
            .send(self.now, udp(from, to, &[0x80, 0, 0, 1, i as u8]));
        self.run_for(Duration::from_secs(1));
        self.peers[1 - i].data.len() > before
    }
}

fn nominated(p: &Peer) -> Option<(Candidate, Candidate)> {
    p.events.iter().rev().find_map(|e| match e {
        IceEvent::SelectedPair {
            local,
            remote,
            nominated: true,
            ..
        } => Some((local.clone(), remote.clone())),
        _ => None,
    })
}

#[test]
fn public_hosts_connect_in_a_round_trip_or_two() {
    let mut w = World::new([None, None], Conditions::default(), 1);
    let t0 = w.now;
    assert!(w.connect(Duration::from_secs(5)));
    // 10 ms one way: check + answer + nomination well under 100 ms.
    assert!(w.now - t0 < Duration::from_millis(100), "{:?}", w.now - t0);
    let (l, r) = nominated(&w.peers[0]).unwrap();
    assert_eq!((l.kind, r.kind), (CandidateKind::Host, CandidateKind::Host));
    assert!(w.data_flows(0));
    assert!(w.data_flows(1));
    assert_eq!(w.peers[0].agent.state(), IceState::Connected);
}

#[test]
fn every_pair_of_nat_kinds_connects_exactly_when_the_oracle_says() {
    let mut table = String::new();
    let mut kinds = Vec::new();
    for m in Behaviour::ALL {
        for f in Behaviour::ALL {
            kinds.push(NatConfig::new(m, f));
        }
    }
    let short = |b: Behaviour| match b {
        Behaviour::EndpointIndependent => "EI",
        Behaviour::AddressDependent => "AD",
        Behaviour::AddressAndPortDependent => "APD",
    };
    let mut checked = 0;
    for (x, nx) in kinds.iter().enumerate() {
        for (y, ny) in kinds.iter().enumerate().skip(x) {
            let mut w = World::new([Some(*nx), Some(*ny)], Conditions::default(), 7);
            let connected = w.connect(Duration::from_secs(40));
            let expected = nx.direct_possible_with(ny);
            let has_adm = [nx, ny]
                .iter()
                .any(|n| n.mapping == Behaviour::AddressDependent);
            table.push_str(&format!(
                "{}M/{}F x {}M/{}F: {}\n",
                short(nx.mapping),
                short(nx.filtering),
                short(ny.mapping),
                short(ny.filtering),
                if connected {
                    "direct"
                } else {
                    "no direct path"
                }
            ));
            if has_adm {
                // The oracle is conservative for address-dependent mapping.
                assert!(connected || !expected, "{x} {y}:\n{table}");
            } else {
                assert_eq!(connected, expected, "{x} {y}:\n{table}");
            }
            if connected {
                assert!(w.data_flows(0) && w.data_flows(1), "{x} {y}");
            } else {
                // Both give up (the peer said end-of-candidates).
                w.run_for(Duration::from_secs(60));
                for p in &w.peers {
                    assert_eq!(p.agent.state(), IceState::Failed, "{x} {y}:\n{table}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 45);
    println!("{table}");
}

#[test]
fn loss_and_reordering_do_not_stop_it() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    for (loss, seed) in [(0.1, 11), (0.3, 12), (0.3, 13)] {
        let conditions = Conditions {
            latency: Duration::from_millis(40),
            jitter: Duration::from_millis(30),
            loss,
        };
        let mut w = World::new([Some(cone), Some(cone)], conditions, seed);
        assert!(w.connect(Duration::from_secs(30)), "loss {loss}");
        // Data over a lossy path: one of a few gets through.
        assert!((0..5).any(|_| w.data_flows(0)), "loss {loss}");
    }
}

#[test]
fn a_check_on_a_pair_in_progress_triggers_a_check_at_once() {
    for ta in [20, 50] {
        let config = IceConfig {
            ta: Duration::from_millis(ta),
            ..IceConfig::default()
        };
        check_on_a_pair_in_progress(&config);
    }
}

fn check_on_a_pair_in_progress(config: &IceConfig) {
    // RFC 8445 §7.3.1.4: a check that arrives on a pair whose own check is In-Progress
    // cancels it and triggers a new one. Hole punching through two address-and-port-
    // dependent filters needs exactly that: peer 0 starts checking first, its checks are
    // dropped by peer 1's NAT (peer 1 has not sent yet) but open its own; when peer 1
    // starts, its check gets through, and peer 0's answer must be followed at once by a
    // check of its own, not by the next retransmission of the dropped one (up to
    // seconds later with RFC 8489 back-off) — while a relay pair would win the race.
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new([Some(cone), Some(cone)], Conditions::default(), 21);
    let bases = [w.peers[0].base, w.peers[1].base];
    let mapped = [0, 1].map(|i| reflect(&mut w.net, &mut w.now, bases[i]));
    let cands = [0, 1].map(|i| vec![host(bases[i]), srflx(mapped[i], bases[i])]);
    let mut agents = [0u8, 1].map(|i| {
        let mut g = IceAgent::new(w.now, config.clone(), i == 0, [30 + i; 32]);
        for c in &cands[usize::from(i)] {
            g.add_local_candidate(c.clone(), bases[usize::from(i)]);
        }
        g
    });
    // Peer 0 knows peer 1 at once; peer 1 learns of peer 0 only later (trickle).
    let creds1 = agents[1].local_credentials().clone();
    agents[0].set_remote_credentials(creds1);
    for c in &cands[1] {
        agents[0].add_remote_candidate(c.clone());
    }
    let [a0, a1] = agents;
    w.peers[0].agent = a0;
    w.peers[1].agent = a1;
    // Past peer 0's first retransmission (50 ms pacing + 250 ms RTO): its check on the
    // server-reflexive pair is in flight, dropped each time by peer 1's NAT.
    w.run_for(Duration::from_millis(400));
    assert!(nominated(&w.peers[0]).is_none());
    let creds0 = w.peers[0].agent.local_credentials().clone();
    w.peers[1].agent.set_remote_credentials(creds0);
    for c in &cands[0] {
        w.peers[1].agent.add_remote_candidate(c.clone());
    }
    let late = w.now;
    w.peers[0].agent.end_of_remote_candidates();
    w.peers[1].agent.end_of_remote_candidates();
    assert!(w.connect(Duration::from_secs(10)));
    // Peer 1's check goes out within a pacing slot or two (its host pair first), then
    // one round trip for peer 0's triggered check and one for the nomination: well
    // under 200 ms at 10 ms one way. Waiting for the next retransmission instead would
    // take until 800 ms after the start (50 + 250 + 500).
    let took = w.now - late;
    assert!(
        took < Duration::from_millis(200),
        "connected {took:?} after peer 1 started (Ta {:?})",
        config.ta
    );
    let (l, r) = nominated(&w.peers[0]).unwrap();
    assert_eq!(
        (l.kind, r.kind),
        (CandidateKind::Host, CandidateKind::ServerReflexive)
    );
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn a_role_conflict_is_repaired() {
    let mut w = World::new([None, None], Conditions::default(), 3);
    // Make both controlling, as two offerers would be.
    let mut s = [9u8; 32];
    s[0] = 42;
    let creds0 = w.peers[0].agent.local_credentials().clone();
    let mut b = IceAgent::new(w.now, IceConfig::default(), true, s);
    b.add_local_candidate(host(w.peers[1].base), w.peers[1].base);
    b.set_remote_credentials(creds0);
    b.add_remote_candidate(host(w.peers[0].base));
    w.peers[0]
        .agent
        .set_remote_credentials(b.local_credentials().clone());
    w.peers[1].agent = b;
    assert!(w.connect(Duration::from_secs(10)));
    let roles = [
        w.peers[0].agent.is_controlling(),
        w.peers[1].agent.is_controlling(),
    ];
    assert!(roles[0] != roles[1], "{roles:?}");
    assert!(w.peers.iter().any(|p| {
        p.events
            .iter()
            .any(|e| matches!(e, IceEvent::RoleChanged { .. }))
    }));
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn a_better_pair_found_later_is_renominated() {
    // Peer 1 first offers only a low-priority candidate (as a relayed one would be);
    // the host candidate trickles in after the first nomination.
    let mut w = World::new([None, None], Conditions::default(), 4);
    let second = a("10.0.0.10:6001");
    let mut relay_like = Candidate::new(
        CandidateKind::Relayed,
        CandidateTransport::Udp,
        second,
        second.ip(),
        Some(a(REFLECTOR).ip()),
        65535,
    );
    relay_like.foundation = "relay".into();
    let mut s = [7u8; 32];
    s[0] = 1;
    let mut b = IceAgent::new(w.now, IceConfig::default(), false, s);
    b.add_local_candidate(relay_like.clone(), second);
    b.set_remote_credentials(w.peers[0].agent.local_credentials().clone());
    b.add_remote_candidate(host(w.peers[0].base));
    let mut a0 = IceAgent::new(w.now, IceConfig::default(), true, [3; 32]);
    a0.add_local_candidate(host(w.peers[0].base), w.peers[0].base);
    a0.set_remote_credentials(b.local_credentials().clone());
    a0.add_remote_candidate(relay_like);
    b.set_remote_credentials(a0.local_credentials().clone());
    w.peers[0].agent = a0;
    w.peers[1].agent = b;
    w.peers[1].base = second;
    assert!(w.connect(Duration::from_secs(5)));
    assert_eq!(
        nominated(&w.peers[0]).unwrap().1.kind,
        CandidateKind::Relayed
    );
    // The direct candidate arrives (trickle): peer 1's host socket.
    let direct = a("10.0.0.10:6000");
    w.peers[1].agent.add_local_candidate(host(direct), direct);
    w.peers[0].agent.add_remote_candidate(host(direct));
    w.run_for(Duration::from_secs(2));
    // (The world routes by IP, so both of peer 1's sockets reach its one agent.)
    let (_, r) = nominated(&w.peers[0]).unwrap();
    assert_eq!(r.kind, CandidateKind::Host, "{:?}", w.peers[0].events);
    let (l, _) = nominated(&w.peers[1]).unwrap();
    assert_eq!(l.kind, CandidateKind::Host, "{:?}", w.peers[1].events);
    assert_eq!(w.peers[0].agent.selected().unwrap().1, direct);
}

/// Moves datagrams between two agents instantly (zero latency) until `until`, dropping
/// those `drop` picks; returns every event, per agent.
fn pump(
    agents: &mut [IceAgent; 2],
    ips: [IpAddr; 2],
    now: &mut Instant,
    until: Instant,
    mut drop: impl FnMut(usize, &Transmit) -> bool,
    events: &mut [Vec<IceEvent>; 2],
) {
    for _ in 0..100_000 {
        let mut moved = false;
        for i in 0..2 {
            while let Some(t) = agents[i].poll_transmit() {
                moved = true;
                if drop(i, &t) {
                    continue;
                }
                let Some(j) = ips.iter().position(|ip| *ip == t.destination.ip()) else {
                    continue;
                };
                let rx = Received {
                    proto: t.proto,
                    source: t.source,
                    destination: t.destination,
                    contents: &t.contents,
                };
                let _ = agents[j].handle_input(*now, rx);
            }
            while let Some(e) = agents[i].poll_event() {
                events[i].push(e);
            }
        }
        if moved {
            continue;
        }
        let next = agents.iter().filter_map(IceAgent::poll_timeout).min();
        match next.filter(|t| *t <= until) {
            Some(t) => {
                *now = (*now).max(t);
                for g in agents.iter_mut() {
                    g.handle_timeout(*now);
                }
            }
            None => {
                *now = until;
                return;
            }
        }
    }
    panic!("runaway pump");
}

fn last_nominated(events: &[IceEvent]) -> Option<(Candidate, Candidate)> {
    events.iter().rev().find_map(|e| match e {
        IceEvent::SelectedPair {
            local,
            remote,
            nominated: true,
            ..
        } => Some((local.clone(), remote.clone())),
        _ => None,
    })
}

#[test]
fn a_stale_nomination_does_not_undo_a_renomination() {
    // The controlling agent nominates a relayed pair, but that nominating check's answer
    // is lost; a direct pair succeeds and is renominated. The old nominating check must
    // not be retransmitted, nor its late answer honoured: either put the connection back
    // on the relay (seen in the NAT lab with 10 % loss: connected direct, then
    // path-changed to relay 140 ms later when the retransmission was answered).
    let t0 = Instant::now();
    let mut now = t0;
    let a_base = a("192.168.1.10:5000");
    let (b_host, b_relay) = (a("10.0.0.10:6000"), a("10.0.0.10:6001"));
    let mut relay_like = Candidate::new(
        CandidateKind::Relayed,
        CandidateTransport::Udp,
        b_relay,
        b_relay.ip(),
        Some(a(REFLECTOR).ip()),
        65535,
    );
    relay_like.foundation = "relay".into();
    let mut agents = [
        IceAgent::new(now, IceConfig::default(), true, [41; 32]),
        IceAgent::new(now, IceConfig::default(), false, [42; 32]),
    ];
    agents[0].add_local_candidate(host(a_base), a_base);
    agents[1].add_local_candidate(relay_like.clone(), b_relay);
    agents[1].add_local_candidate(host(b_host), b_host);
    let creds = [0, 1].map(|i| agents[i].local_credentials().clone());
    agents[0].set_remote_credentials(creds[1].clone());
    agents[1].set_remote_credentials(creds[0].clone());
    // Peer 0 learns only the relayed candidate for now.
    agents[0].add_remote_candidate(relay_like);
    agents[1].add_remote_candidate(host(a_base));
    let ips = [a_base.ip(), b_host.ip()];
    let mut events = [vec![], vec![]];
    let nominates_relay = |i: usize, t: &Transmit| {
        i == 0
            && t.destination == b_relay
            && Message::parse(&t.contents)
                .is_ok_and(|m| m.has(crate::stun::AttributeType::USE_CANDIDATE))
    };
    // The relayed pair succeeds; its nominating check is lost, and so is everything
    // peer 1 sends from its host socket (a filtering NAT in the way).
    pump(
        &mut agents,
        ips,
        &mut now,
        t0 + Duration::from_millis(100),
        |i, t| nominates_relay(i, t) || (i == 1 && t.source == b_host),
        &mut events,
    );
    assert!(last_nominated(&events[0]).is_none(), "{:?}", events[0]);
    // The direct candidate arrives (trickle); nothing is lost any more. Well past the
    // old check's retransmissions (250, 750 ms, …).
    agents[0].add_remote_candidate(host(b_host));
    let renominated_from = now;
    let mut sent = Vec::new();
    pump(
        &mut agents,
        ips,
        &mut now,
        t0 + Duration::from_secs(3),
        |i, t| {
            if nominates_relay(i, t) {
                sent.push(t.clone());
            }
            false
        },
        &mut events,
    );
    let (_, r) = last_nominated(&events[0]).expect("peer 0 nominated");
    assert_eq!(r.kind, CandidateKind::Host, "{:?}", events[0]);
    let (l, _) =
        last_nominated(&events[1]).unwrap_or_else(|| panic!("peer 1 followed: {:?}", events[1]));
    assert_eq!(l.kind, CandidateKind::Host, "{:?}", events[1]);
    assert!(
        sent.is_empty(),
        "{} USE-CANDIDATE checks toward the relayed candidate after {:?}",
        sent.len(),
        renominated_from - t0
    );
}

#[test]
fn a_peer_that_stops_answering_is_given_up_within_seconds_and_traffic_stops() {
    let mut w = World::new([None, None], Conditions::default(), 5);
    assert!(w.connect(Duration::from_secs(5)));
    let lost_from = w.now;
    w.muted[1] = true;
    // A consent check goes within 6 s (RFC 7675 §5.1: 0.8–1.2 × 5 s); unanswered for
    // UNANSWERED_CHECK it starts a probe, and the pair has RESUME_PROBE more.
    let earliest = UNANSWERED_CHECK + RESUME_PROBE;
    w.run_for(earliest - Duration::from_millis(100));
    assert_eq!(w.peers[0].agent.state(), IceState::Connected);
    let latest = Duration::from_secs(6) + earliest;
    w.run_for(latest - earliest + Duration::from_millis(200));
    let from = w.peers[0].agent.probing_since().expect("a probe ran");
    assert!(
        from - lost_from >= UNANSWERED_CHECK,
        "{:?}",
        from - lost_from
    );
    assert_eq!(
        w.peers[0].agent.state(),
        IceState::Disconnected,
        "{:?}",
        w.now - lost_from
    );
    assert!(w.peers[0].agent.selected().is_none());
}

#[test]
fn lost_answers_under_heavy_loss_do_not_drop_the_path() {
    // 20 % loss each way: a consent check's answer is often lost, rarely four times in
    // a row (the check goes again at 250, 750 and 1750 ms), and a probe that does start
    // ends with the pair's next answer. The path stays up for ten minutes.
    let conditions = Conditions {
        loss: 0.2,
        ..Conditions::default()
    };
    let mut w = World::new([None, None], conditions, 31);
    assert!(w.connect(Duration::from_secs(10)));
    for _ in 0..600 {
        w.run_for(Duration::from_secs(1));
        assert_eq!(w.peers[0].agent.state(), IceState::Connected);
        assert_eq!(w.peers[1].agent.state(), IceState::Connected);
    }
}

#[test]
fn consent_checks_keep_a_nat_binding_alive() {
    // A NAT that forgets bindings after 20 s idle: consent checks every 4-6 s keep it.
    let mut nat = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    nat.binding_timeout = Duration::from_secs(20);
    let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), 6);
    assert!(w.connect(Duration::from_secs(5)));
    w.run_for(Duration::from_secs(120));
    assert_eq!(w.peers[0].agent.state(), IceState::Connected);
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn restart_with_new_credentials_connects_again() {
    let mut w = World::new([None, None], Conditions::default(), 8);
    assert!(w.connect(Duration::from_secs(5)));
    let old = w.peers[0].agent.local_credentials().clone();
    let new0 = w.peers[0].agent.restart();
    assert_ne!(new0, old);
    let new1 = w.peers[1].agent.restart();
    // Data keeps flowing on the old pair meanwhile, both ways: the old path's peer
    // address is still the peer's, though every remote candidate was forgotten.
    let (_, to) = w.peers[0].agent.selected().expect("the old path");
    assert!(w.peers[0].agent.is_remote(to));
    assert!(w.data_flows(0) && w.data_flows(1));
    for (i, creds) in [(0, new1), (1, new0)] {
        w.peers[i].agent.set_remote_credentials(creds);
        let other = w.peers[1 - i].base;
        w.peers[i].agent.add_remote_candidate(host(other));
    }
    for p in &mut w.peers {
        p.events.clear();
    }
    assert!(w.connect(Duration::from_secs(10)));
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn checks_with_the_wrong_key_or_ufrag_are_ignored() {
    let now = Instant::now();
    let mut agent = IceAgent::new(now, IceConfig::default(), false, [1; 32]);
    let base = a("192.0.2.1:5000");
    agent.add_local_candidate(host(base), base);
    let ufrag = agent.local_credentials().ufrag.clone();
    for (user, pwd) in [
        (format!("{ufrag}:peer"), "wrong-password-0123456789"),
        ("other:peer".to_owned(), "wrong-password-0123456789"),
    ] {
        let key = IntegrityKey::short_term(pwd).unwrap();
        let mut buf = [0u8; 256];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::new(crate::stun::Class::Request, Method::BINDING),
            TransactionId([7; 12]),
        )
        .unwrap();
        b.add(&Username(&user)).unwrap();
        b.add(&IceControlling(1)).unwrap();
        b.add_message_integrity(&key).unwrap();
        b.add_fingerprint().unwrap();
        let bytes = b.finish().to_vec();
        let rx = Received {
            proto: Protocol::Udp,
            source: a("198.51.100.9:7000"),
            destination: base,
            contents: &bytes,
        };
        assert_eq!(agent.handle_input(now, rx), IceInput::Consumed);
        assert!(agent.poll_transmit().is_none(), "{user}");
        assert!(agent.poll_event().is_none());
    }
    // Application data and STUN for someone else are passed on.
    let rx = Received {
        proto: Protocol::Udp,
        source: a("198.51.100.9:7000"),
        destination: base,
        contents: &[0x80, 1, 2, 3],
    };
    assert_eq!(agent.handle_input(now, rx), IceInput::NotIce);
    let plain = [
        0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let rx = Received {
        proto: Protocol::Udp,
        source: a("198.51.100.9:7000"),
        destination: base,
        contents: &plain,
    };
    assert_eq!(agent.handle_input(now, rx), IceInput::NotIce);
}

#[test]
fn remote_candidates_and_pairs_are_bounded() {
    let now = Instant::now();
    let mut agent = IceAgent::new(now, IceConfig::default(), true, [2; 32]);
    let base = a("192.0.2.1:5000");
    agent.add_local_candidate(host(base), base);
    let mut added = 0;
    for i in 0..1000u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i));
        if agent.add_remote_candidate(host(SocketAddr::new(ip, 9))) {
            added += 1;
        }
    }
    assert_eq!(added, IceConfig::default().max_remote_candidates);
    assert!(agent.pairs.len() <= IceConfig::default().max_pairs);
}

#[test]
fn pair_priorities_follow_rfc_8445() {
    assert_eq!(pair_priority(1, 2), (1 << 32) + 4);
    assert_eq!(pair_priority(2, 1), (1 << 32) + 4 + 1);
    assert!(pair_priority(100, 100) > pair_priority(99, 1000));
}

#[test]
fn no_failure_before_our_own_gathering_is_over() {
    // A relay-only side whose allocation is still pending has no candidates when the
    // peer's end-of-candidates arrives: that is "wait", not "failed".
    let now = Instant::now();
    let mut agent = IceAgent::new(now, IceConfig::default(), true, [3; 32]);
    agent.set_remote_credentials(IceCredentials::random(&mut ChaCha20Rng::from_seed([4; 32])));
    agent.add_remote_candidate(host(a("192.0.2.7:9000")));
    agent.end_of_remote_candidates();
    agent.handle_timeout(now + Duration::from_secs(1));
    assert_ne!(agent.state(), IceState::Failed);
    agent.end_of_local_candidates();
    assert_eq!(agent.state(), IceState::Failed);
}

#[test]
fn a_controlled_agent_that_missed_the_nomination_follows_at_the_next_consent_check() {
    let mut w = World::new([None, None], Conditions::default(), 11);
    assert!(w.connect(Duration::from_secs(5)));
    // Copies of the nominating check still on the way arrive first.
    w.run_for(Duration::from_secs(1));
    // The controlled agent forgets the nomination, as when every copy of the nominating
    // check was lost, or its own triggered check on the pair failed meanwhile: it uses
    // its best valid pair, not nominated, and nothing in ordinary checks tells it more.
    let now = w.now;
    let p = &mut w.peers[1];
    p.agent.nominated = None;
    for pair in &mut p.agent.pairs {
        pair.nominated = false;
    }
    p.agent.reselect(now);
    p.events.clear();
    assert!(nominated(&w.peers[1]).is_none());
    // The controlling agent's consent checks (every 4-6 s) repeat USE-CANDIDATE.
    w.run_for(Duration::from_secs(7));
    let (l0, r0) = nominated(&w.peers[0]).unwrap();
    let (l1, r1) = nominated(&w.peers[1]).expect("peer 1 follows the nomination again");
    assert_eq!((l0.address, r0.address), (r1.address, l1.address));
}

#[test]
fn an_agent_that_becomes_controlling_after_its_pairs_succeeded_nominates() {
    let mut w = World::new([None, None], Conditions::default(), 12);
    // Two controlled agents whose pairs already succeeded and nothing nominated (as after
    // an application that answers both sides, with consent checks the first to show the
    // conflict): reached by resetting the roles of a normal connection.
    assert!(w.connect(Duration::from_secs(5)));
    for p in &mut w.peers {
        p.agent.controlling = false;
        p.agent.nominated = None;
        for pair in &mut p.agent.pairs {
            pair.nominated = false;
        }
        let now = w.now;
        p.agent.reselect(now);
        p.events.clear();
    }
    w.peers[0].agent.tie_breaker = 1;
    w.peers[1].agent.tie_breaker = u64::MAX;
    // Consent checks now carry ICE-CONTROLLED both ways: peer 1 (larger tie-breaker)
    // becomes controlling, its pairs already valid, and must nominate one.
    w.run_for(Duration::from_secs(10));
    assert!(w.peers[1].agent.is_controlling());
    assert!(!w.peers[0].agent.is_controlling());
    let (l0, r0) = nominated(&w.peers[0]).expect("peer 0 follows a nomination");
    let (l1, r1) = nominated(&w.peers[1]).expect("peer 1 nominates");
    assert_eq!((l0.address, r0.address), (r1.address, l1.address));
}

/// Peer 1 replaced by an ICE-lite agent with peer 0's candidates and credentials.
fn with_lite_peer(w: &mut World) {
    let mut s = [7u8; 32];
    s[0] = 99;
    let config = IceConfig {
        lite: true,
        ..IceConfig::default()
    };
    let mut lite = IceAgent::new(w.now, config, true, s);
    assert!(!lite.is_controlling(), "a lite agent is always controlled");
    let base = w.peers[1].base;
    lite.add_local_candidate(host(base), base);
    lite.end_of_local_candidates();
    lite.set_remote_credentials(w.peers[0].agent.local_credentials().clone());
    lite.add_remote_candidate(host(w.peers[0].base));
    lite.end_of_remote_candidates();
    w.peers[0]
        .agent
        .set_remote_credentials(lite.local_credentials().clone());
    w.peers[1].agent = lite;
}

fn checks_sent_by(w: &mut World, i: usize, d: Duration) -> usize {
    let mut n = 0;
    let until = w.now + d;
    for _ in 0..100_000 {
        // Count requests as the peer emits them (step sends them on).
        let mut sent = Vec::new();
        while let Some(t) = w.peers[i].agent.poll_transmit() {
            if Message::parse(&t.contents).is_ok_and(|m| m.class() == crate::stun::Class::Request) {
                n += 1;
            }
            sent.push(t);
        }
        for t in sent {
            w.net.send(w.now, t);
        }
        if !w.step(until) {
            break;
        }
    }
    n
}

#[test]
fn a_full_agent_connects_to_an_ice_lite_peer_and_controls() {
    // Peer 0 starts controlled (as an answerer would), then learns that the peer is lite.
    let mut w = World::new([None, None], Conditions::default(), 21);
    w.peers[0].agent.controlling = false;
    with_lite_peer(&mut w);
    w.peers[0].agent.set_remote_lite(true);
    assert!(w.peers[0].agent.is_controlling());
    assert_eq!(checks_sent_by(&mut w, 1, Duration::from_secs(2)), 0);
    assert!(w.connect(Duration::from_secs(5)));
    let (l0, r0) = nominated(&w.peers[0]).unwrap();
    let (l1, r1) = nominated(&w.peers[1]).unwrap();
    assert_eq!((l0.address, r0.address), (r1.address, l1.address));
    assert!(w.data_flows(0) && w.data_flows(1));
    // The lite agent keeps consent from the full agent's checks, sending none itself.
    assert_eq!(checks_sent_by(&mut w, 1, Duration::from_secs(40)), 0);
    assert_eq!(w.peers[1].agent.state(), IceState::Connected);
    assert_eq!(w.peers[0].agent.state(), IceState::Connected);
}

#[test]
fn a_full_agent_that_was_not_told_learns_from_the_role_conflict() {
    // Both think they are controlled: the lite agent answers 487 and never switches.
    let mut w = World::new([None, None], Conditions::default(), 22);
    w.peers[0].agent.controlling = false;
    with_lite_peer(&mut w);
    assert!(w.connect(Duration::from_secs(5)));
    assert!(w.peers[0].agent.is_controlling());
    assert!(!w.peers[1].agent.is_controlling());
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn an_old_nomination_waiting_for_its_check_does_not_take_the_path_back() {
    // Behind NATs there are several pairs; peer 1 (controlled) follows the nomination.
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new([Some(cone), Some(cone)], Conditions::default(), 23);
    assert!(w.connect(Duration::from_secs(5)));
    w.run_for(Duration::from_secs(1));
    let now = w.now;
    let g = &mut w.peers[1].agent;
    let d = g.nominated.expect("a nominated pair");
    // A pair of lower priority whose USE-CANDIDATE came before its own check succeeded
    // (the controlling agent's first nomination, of a relayed pair say, which it then
    // renominated away from): its check succeeds only now.
    let r = (0..g.pairs.len()).find(|r| *r != d).expect("another pair");
    g.pairs[r].priority = g.pairs[d].priority - 1;
    g.pairs[r].state = PairState::InProgress;
    g.pairs[r].nominate_on_success = true;
    g.on_success(now, r, false, None);
    assert_eq!(g.nominated, Some(d), "the path stays on the better pair");
    assert_eq!(g.state(), IceState::Connected);
}

#[test]
fn numbered_nominations_order_renominations_whatever_the_priorities_say() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new([Some(cone), Some(cone)], Conditions::default(), 24);
    assert!(w.connect(Duration::from_secs(5)));
    // Peer 1 followed a numbered nomination from peer 0 (pinhole numbers them).
    assert!(w.peers[1].agent.followed_numbered);
    let g = &mut w.peers[1].agent;
    let d = g.nominated.expect("a nominated pair");
    let r = (0..g.pairs.len()).find(|r| *r != d).expect("another pair");
    // This side ranks r above the nominated pair (a relayed candidate learned first as
    // peer-reflexive keeps that priority here, not on the controlling side).
    g.pairs[r].priority = g.pairs[d].priority + 1_000;
    let seq = g.nomination_seq;
    // By priority alone a nomination of d would be refused if r were nominated; numbered,
    // the later one is followed and an older one is not.
    g.nominated = Some(r);
    g.pairs[r].state = PairState::Succeeded;
    assert!(!g.may_follow(d, None));
    assert!(g.may_follow(d, Some(seq + 1)));
    assert!(!g.may_follow(d, Some(seq.wrapping_sub(1))));
}

/// Requests an agent alone emits over `d`, stepping its clock by 1 ms (nothing answers).
fn checks_alone(agent: &mut IceAgent, start: Instant, d: Duration) -> Vec<Instant> {
    let mut at = Vec::new();
    let mut now = start;
    while now <= start + d {
        agent.handle_timeout(now);
        while let Some(t) = agent.poll_transmit() {
            if Message::parse(&t.contents).is_ok_and(|m| m.class() == crate::stun::Class::Request) {
                at.push(now);
            }
        }
        now += Duration::from_millis(1);
    }
    at
}

#[test]
fn checks_are_paced_at_the_higher_of_both_ice_pacing_offers() {
    let start = Instant::now();
    let base = a("10.0.0.1:5000");
    let agent = |remote_ta: Option<u32>| {
        let mut ag = IceAgent::new(start, IceConfig::default(), true, [3; 32]);
        ag.add_local_candidate(host(base), base);
        ag.end_of_local_candidates();
        ag.set_remote_credentials(IceCredentials {
            ufrag: "abcd".into(),
            pwd: "0123456789012345678901".into(),
        });
        if let Some(ms) = remote_ta {
            ag.set_remote_pacing(ms);
        }
        // Ten remote hosts: ten pairs of ten foundations, all waiting at once.
        for i in 0..10u8 {
            ag.add_remote_candidate(host(SocketAddr::from(([198, 51, 100, i + 1], 6000))));
        }
        ag
    };
    // Ours alone (5 ms, RFC 8445 §14.2's floor): the ten first checks within 50 ms.
    let mut ours = agent(None);
    assert_eq!(ours.offered_ta(), MIN_TA);
    let sent = checks_alone(&mut ours, start, Duration::from_millis(49));
    assert_eq!(sent.len(), 10, "{sent:?}");
    for w in sent.windows(2) {
        assert!(w[1] - w[0] >= MIN_TA, "{sent:?}");
    }
    // The peer offers 20 ms: 20 ms apart, ours still offered as 5.
    let mut slower = agent(Some(20));
    assert_eq!(slower.ta(), Duration::from_millis(20));
    assert_eq!(slower.offered_ta(), MIN_TA);
    let sent = checks_alone(&mut slower, start, Duration::from_millis(49));
    assert_eq!(sent.len(), 3, "{sent:?}");
    // A peer that asks for an hour gets MAX_REMOTE_TA: checks never stall.
    let absurd = agent(Some(3_600_000));
    assert_eq!(absurd.ta(), MAX_REMOTE_TA);
    // A peer that offers less than ours does not speed us up.
    let ours_cfg = IceConfig {
        ta: Duration::from_millis(30),
        ..IceConfig::default()
    };
    let mut faster = IceAgent::new(start, ours_cfg, true, [3; 32]);
    faster.set_remote_pacing(5);
    assert_eq!(faster.ta(), Duration::from_millis(30));
}

/// The controlling agent `g`, nominating the direct pair `d`, learns the peer-reflexive
/// candidate `learned` on `d`'s base; the pair it makes succeeds and, ranked above `d`
/// for its learned priority, is renominated. Returns the candidate's and the pair's
/// indices.
fn renominated_to_learned(
    g: &mut IceAgent,
    now: Instant,
    d: usize,
    learned: Candidate,
) -> (usize, usize) {
    g.remotes.push(learned);
    g.learned_on.push(Some(g.locals[g.pairs[d].local].base));
    let r = g.remotes.len() - 1;
    g.pair_up(g.pairs[d].local, r);
    let p = g.pairs.len() - 1;
    assert_eq!(g.pairs[p].remote, r);
    assert!(g.pairs[p].priority > g.pairs[d].priority);
    g.pairs[p].state = PairState::Succeeded;
    g.pairs[p].last_answer = Some(now);
    g.stop_nominating(d);
    g.nominated = Some(p);
    (r, p)
}

#[test]
fn a_signalled_candidate_replacing_a_peer_reflexive_one_takes_its_priority_and_renominates() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new([Some(cone), Some(cone)], Conditions::default(), 24);
    assert!(w.connect(Duration::from_secs(5)));
    let g = &mut w.peers[0].agent;
    assert!(g.is_controlling());
    let d = g.nominated.expect("a nominated pair");
    let seq = g.nomination_seq;
    // The peer's relayed candidate, learned from its check before the trickled candidate
    // came: peer-reflexive, with the check's PRIORITY (type preference 110).
    let relay = a("203.0.113.20:50000");
    let learned = Candidate::new(
        CandidateKind::PeerReflexive,
        CandidateTransport::Udp,
        relay,
        relay.ip(),
        None,
        65535,
    );
    // That pair succeeded and, ranked above the direct one for its learned priority, was
    // renominated.
    let (r, p) = renominated_to_learned(g, w.now, d, learned);
    // The trickled candidate arrives: a relayed one at the same address.
    let signalled = Candidate::new(
        CandidateKind::Relayed,
        CandidateTransport::Udp,
        relay,
        relay.ip(),
        Some(relay.ip()),
        65535,
    );
    assert!(!g.add_remote_candidate(signalled.clone()));
    assert_eq!(g.remotes[r].kind, CandidateKind::Relayed);
    assert_eq!(g.remotes[r].priority, signalled.priority);
    assert!(g.pairs[p].priority < g.pairs[d].priority);
    // The direct pair is nominated again, with a later number, so the peer follows.
    assert_eq!(g.nominated, Some(d));
    assert!(g.nomination_seq > seq);
    assert!(g.triggered.contains(&d));
    w.run_for(Duration::from_secs(1));
    let (l, r) = nominated(&w.peers[0]).expect("nominated");
    assert_eq!(r.kind, CandidateKind::ServerReflexive, "{l:?} -> {r:?}");
    assert!(w.data_flows(0) && w.data_flows(1));
}

/// The peer's relayed candidate seen with another port (a TURN server behind a NAT that
/// rewrites ports; in the NAT lab, miniupnpd's PEER rule rewriting sources): learned from
/// a check as peer-reflexive, with the check's PRIORITY (type preference 110), it outranks
/// the direct pair and the controlling agent renominates it. The peer's relayed candidate
/// at that IP ranks it as relayed: the direct pair is nominated again; a lookalike learned
/// once that candidate is known is ranked as relayed at once.
#[test]
fn a_peer_reflexive_candidate_at_the_peers_relay_ranks_as_relayed() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new([Some(cone), Some(cone)], Conditions::default(), 25);
    assert!(w.connect(Duration::from_secs(5)));
    let g = &mut w.peers[0].agent;
    assert!(g.is_controlling());
    let d = g.nominated.expect("a nominated pair");
    let seq = g.nomination_seq;
    let seen = a("203.0.113.20:50999");
    let learned = Candidate::new(
        CandidateKind::PeerReflexive,
        CandidateTransport::Udp,
        seen,
        seen.ip(),
        None,
        65535,
    );
    let (r, p) = renominated_to_learned(g, w.now, d, learned.clone());
    // The peer's relayed candidate: the same IP, the port its TURN server gave it.
    let relay = a("203.0.113.20:50000");
    let signalled = Candidate::new(
        CandidateKind::Relayed,
        CandidateTransport::Udp,
        relay,
        relay.ip(),
        Some(relay.ip()),
        65535,
    );
    assert!(g.add_remote_candidate(signalled));
    assert_eq!(g.remotes[r].kind, CandidateKind::PeerReflexive);
    assert_eq!(
        g.remotes[r].priority >> 24,
        CandidateKind::Relayed.type_preference()
    );
    assert!(g.pairs[p].priority < g.pairs[d].priority);
    assert_eq!(g.nominated, Some(d));
    assert!(g.nomination_seq > seq);
    // Learned now, another would be ranked as relayed from the start; a peer-reflexive
    // candidate elsewhere keeps its priority.
    let mut again = learned.clone();
    assert!(g.rank_as_relay(&mut again));
    assert_eq!(
        again.priority >> 24,
        CandidateKind::Relayed.type_preference()
    );
    let elsewhere = a("198.51.100.7:4000");
    let mut other = Candidate::new(
        CandidateKind::PeerReflexive,
        CandidateTransport::Udp,
        elsewhere,
        elsewhere.ip(),
        None,
        65535,
    );
    assert!(!g.rank_as_relay(&mut other));
    w.run_for(Duration::from_secs(1));
    let (l, r) = nominated(&w.peers[0]).expect("nominated");
    assert_eq!(r.kind, CandidateKind::ServerReflexive, "{l:?} -> {r:?}");
    assert!(w.data_flows(0) && w.data_flows(1));
}

/// A peer-reflexive remote candidate on the selected pair that the signalled candidate
/// then names (the peer's check beat its trickled candidate): the path stays, and a new
/// `SelectedPair` event says what it is, so the app's view (direct or relayed) is right.
#[test]
fn a_selected_peer_reflexive_candidate_named_later_is_reported_again() {
    let mut w = World::new([None, None], Conditions::default(), 31);
    assert!(w.connect(Duration::from_secs(5)));
    let g = &mut w.peers[0].agent;
    let s = g.selected.expect("a selected pair");
    let r = g.pairs[s].remote;
    let signalled = g.remotes[r].clone();
    assert_eq!(signalled.kind, CandidateKind::Host);
    // As if it had been learned from the peer's check before it was signalled.
    let addr = signalled.socket_addr().expect("an address");
    g.remotes[r] = Candidate::new(
        CandidateKind::PeerReflexive,
        CandidateTransport::Udp,
        addr,
        addr.ip(),
        None,
        65535,
    );
    g.learned_on[r] = Some(g.locals[g.pairs[s].local].base);
    while g.poll_event().is_some() {}
    assert!(!g.add_remote_candidate(signalled));
    assert_eq!(g.selected, Some(s), "the path did not move");
    let events: Vec<_> = std::iter::from_fn(|| g.poll_event()).collect();
    let again = events.iter().find_map(|e| match e {
        IceEvent::SelectedPair {
            remote, nominated, ..
        } => Some((remote.kind, *nominated)),
        _ => None,
    });
    assert_eq!(again, Some((CandidateKind::Host, true)), "{events:?}");
    // A candidate that changes nothing says nothing.
    let same = g.remotes[r].clone();
    assert!(!g.add_remote_candidate(same));
    assert!(g.poll_event().is_none());
}

/// Port prediction's bounds: up to [`MAX_PREDICTED_PORTS`] candidates per
/// server-reflexive candidate of the peer, by its step, never beyond the port range,
/// twice that in all, none for a kind other than sequential, none paired with a relayed
/// base; ranked just below the candidate they come from.
#[test]
fn predicted_candidates_are_bounded() {
    use crate::netcheck::PortAllocation;
    let now = Instant::now();
    let base = a("192.168.1.10:5000");
    let mut agent = IceAgent::new(now, IceConfig::default(), true, [3; 32]);
    agent.add_local_candidate(host(base), base);
    let relayed = a("203.0.113.20:49153");
    let relay = Candidate::new(
        CandidateKind::Relayed,
        CandidateTransport::Udp,
        relayed,
        relayed.ip(),
        Some(relayed.ip()),
        65535,
    );
    agent.add_local_candidate(relay, relayed);
    let s1 = srflx(a("198.51.100.2:40001"), a("10.0.0.10:6000"));
    agent.add_remote_candidate(s1.clone());
    // Not sequential: nothing.
    agent.set_remote_port_allocation(PortAllocation::Random);
    agent.set_remote_port_allocation(PortAllocation::Preserving);
    assert_eq!(agent.predicted_candidates().count(), 0);
    agent.set_remote_port_allocation(PortAllocation::Sequential { delta: 2 });
    let got: Vec<u16> = agent.predicted_candidates().map(|p| p.port()).collect();
    assert_eq!(
        got,
        [40003, 40005, 40007, 40009, 40011, 40013, 40015, 40017]
    );
    for r in &agent.remotes[1..] {
        assert_eq!(r.kind, CandidateKind::PeerReflexive);
        assert!(r.priority < s1.priority);
    }
    // Paired with the host base only: 1 + 8 pairs from it, 1 from the relay.
    assert_eq!(agent.pairs.len(), 1 + 8 + 1);
    assert!(agent.pairs.iter().all(|p| {
        agent.locals[p.local].candidate.kind != CandidateKind::Relayed || p.remote == 0
    }));
    // A second server-reflexive candidate near the top of the range: only what fits.
    agent.add_remote_candidate(srflx(a("198.51.100.2:65530"), a("10.0.0.10:6000")));
    assert_eq!(agent.predicted_candidates().count(), 8 + 2);
    // A third: the total bound.
    agent.add_remote_candidate(srflx(a("198.51.100.3:30000"), a("10.0.0.10:6000")));
    agent.add_remote_candidate(srflx(a("198.51.100.4:30000"), a("10.0.0.10:6000")));
    assert_eq!(
        agent.predicted_candidates().count(),
        2 * MAX_PREDICTED_PORTS
    );
    // Predictions do not count against the signalled candidates' limit.
    assert_eq!(
        agent.remotes.len(),
        4 + 2 * MAX_PREDICTED_PORTS,
        "{:?}",
        agent.remotes
    );
    // Off by configuration.
    let config = IceConfig {
        predicted_ports: 0,
        ..IceConfig::default()
    };
    let mut agent = IceAgent::new(now, config, true, [3; 32]);
    agent.add_remote_candidate(s1);
    agent.set_remote_port_allocation(PortAllocation::Sequential { delta: 1 });
    assert_eq!(agent.predicted_candidates().count(), 0);
}

/// A local candidate that was lost ([`IceAgent::local_candidate_lost`], a relay's
/// allocation gone) and then comes back at the same address (a new allocation that got the
/// same relayed address) is usable again: its pairs are checked afresh and connect.
#[test]
fn a_lost_local_candidate_that_comes_back_is_checked_again() {
    let mut w = World::new([None, None], Conditions::default(), 41);
    assert!(w.connect(Duration::from_secs(5)));
    let base = w.peers[0].base;
    let c = w.peers[0]
        .agent
        .local_candidates()
        .find(|c| c.socket_addr() == Some(base))
        .cloned()
        .expect("the host candidate");
    w.peers[0].agent.local_candidate_lost(base);
    assert!(w.peers[0].agent.selected().is_none());
    w.run_for(Duration::from_secs(1));
    assert!(
        w.peers[0].agent.selected().is_none(),
        "nothing else to go on"
    );
    for p in &mut w.peers {
        p.events.clear();
    }
    assert!(w.peers[0].agent.add_local_candidate(c.clone(), base));
    assert!(!w.peers[0].agent.add_local_candidate(c, base), "once");
    // The peer's pair never failed (it keeps its selection); this side nominates again.
    for _ in 0..50 {
        if nominated(&w.peers[0]).is_some() {
            break;
        }
        w.run_for(Duration::from_millis(100));
    }
    let (l, _) = nominated(&w.peers[0]).expect("nominated again");
    assert_eq!(l.socket_addr(), Some(base));
    assert!(w.data_flows(0) && w.data_flows(1));
}

// --- Keepalive policies (issue 14) ---

fn nat_with_timeout(secs: u64) -> NatConfig {
    let mut nat = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    nat.binding_timeout = Duration::from_secs(secs);
    nat
}

/// Both peers behind NATs that forget a binding after `timeout_s` idle, connected, then
/// idle under `policy` for `minutes`, checked every minute. Returns the world and each
/// side's datagrams per minute over the last `measured` minutes.
fn idle(
    timeout_s: u64,
    policy: KeepalivePolicy,
    minutes: u32,
    measured: u32,
    seed: u64,
) -> (World, [f64; 2]) {
    let nat = nat_with_timeout(timeout_s);
    let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), seed);
    assert!(w.connect(Duration::from_secs(5)));
    let now = w.now;
    for p in &mut w.peers {
        p.agent.set_keepalive_policy(now, policy);
    }
    let mut at_start = [0; 2];
    for m in 0..minutes {
        if m == minutes - measured {
            at_start = w.sent;
        }
        w.run_for(Duration::from_secs(60));
        for (i, p) in w.peers.iter().enumerate() {
            assert_eq!(
                p.agent.state(),
                IceState::Connected,
                "peer {i} after {} min idle ({policy:?}, {timeout_s} s NAT)",
                m + 1
            );
        }
    }
    let rate = [0, 1].map(|i| (w.sent[i] - at_start[i]) as f64 / f64::from(measured));
    (w, rate)
}

/// The shorter of the two sides' keepalive intervals: the one whose rounds keep the path.
fn keeper_interval(w: &World) -> Duration {
    w.peers
        .iter()
        .map(|p| p.agent.keepalive_interval())
        .min()
        .unwrap_or_default()
}

/// Gave the path up (disconnected, or failed when no other pair was left).
fn gave_up(p: &Peer) -> bool {
    matches!(p.agent.state(), IceState::Disconnected | IceState::Failed)
}

#[test]
fn background_keeps_an_idle_path_through_120_s_nats_with_under_one_packet_a_minute() {
    for seed in [21, 22, 23] {
        let (mut w, rate) = idle(120, KeepalivePolicy::Background, 30, 20, seed);
        assert!(w.data_flows(0) && w.data_flows(1), "seed {seed}");
        // The side with the shorter interval keeps the path (its checks postpone the
        // other's, whose interval then only grows to what they prove).
        let k = keeper_interval(&w);
        assert!(
            k > Duration::from_secs(80) && k < Duration::from_secs(120),
            "seed {seed}: interval {k:?}"
        );
        for (i, r) in rate.iter().enumerate() {
            assert!(*r <= 1.0, "seed {seed} peer {i}: {rate:?} a minute");
        }
        // Between them, about one round (a check and its answer) per interval, and the
        // retransmissions of a round that found a binding gone while an interval settles.
        assert!(rate[0] + rate[1] <= 2.0, "seed {seed}: {rate:?}");
    }
}

#[test]
fn background_keeps_an_idle_path_through_30_s_nats() {
    let (mut w, rate) = idle(30, KeepalivePolicy::Background, 30, 20, 24);
    assert!(w.data_flows(0) && w.data_flows(1));
    assert!(keeper_interval(&w) < Duration::from_secs(30));
    // A 30 s NAT needs a round every 30 s at least: about 2-3 a minute each.
    assert!(rate.iter().all(|r| *r <= 3.0), "{rate:?}");
}

#[test]
fn the_foreground_keeps_rfc_7675s_pace() {
    let (mut w, rate) = idle(120, KeepalivePolicy::Foreground, 3, 2, 25);
    assert!(w.data_flows(0) && w.data_flows(1));
    // A check every 4-6 s from each side and the answers to the other's: ~24 a minute.
    assert!(rate.iter().all(|r| *r >= 18.0 && *r <= 30.0), "{rate:?}");
}

#[test]
fn a_fixed_background_interval_is_kept() {
    let nat = nat_with_timeout(120);
    let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), 26);
    for p in &mut w.peers {
        let config = IceConfig {
            keepalive_interval: Some(Duration::from_secs(15)),
            ..IceConfig::default()
        };
        p.agent = IceAgent::new(
            w.now,
            config,
            p.agent.is_controlling(),
            [p.base.port() as u8; 32],
        );
    }
    // Fresh agents: exchange credentials and candidates again.
    let creds = [0, 1].map(|i| w.peers[i].agent.local_credentials().clone());
    for i in 0..2 {
        let base = w.peers[i].base;
        w.peers[i].agent.add_local_candidate(host(base), base);
        w.peers[i].agent.end_of_local_candidates();
    }
    for i in 0..2 {
        w.peers[i]
            .agent
            .set_remote_credentials(creds[1 - i].clone());
        let other = w.peers[1 - i].base;
        // Behind NATs the host candidates do not meet; the reflexive ones do.
        let mapped = reflect(&mut w.net, &mut w.now, other);
        w.peers[i].agent.add_remote_candidate(srflx(mapped, other));
        w.peers[i].agent.end_of_remote_candidates();
    }
    assert!(w.connect(Duration::from_secs(10)));
    let now = w.now;
    for p in &mut w.peers {
        p.agent
            .set_keepalive_policy(now, KeepalivePolicy::Background);
    }
    let before = w.sent;
    w.run_for(Duration::from_secs(600));
    for p in &w.peers {
        assert_eq!(p.agent.state(), IceState::Connected);
        assert_eq!(p.agent.keepalive_interval(), Duration::from_secs(15));
    }
    let total = (w.sent[0] - before[0]) + (w.sent[1] - before[1]);
    // One round (two datagrams) per 12.75-15 s between them: 80-95 in 10 min.
    assert!((70..=100).contains(&total), "{total}");
}

#[test]
fn suspended_sends_nothing_and_a_resume_finds_a_path_that_lived() {
    // No NAT to forget: the path outlives the suspension.
    let mut w = World::new([None, None], Conditions::default(), 27);
    assert!(w.connect(Duration::from_secs(5)));
    let now = w.now;
    for p in &mut w.peers {
        p.agent
            .set_keepalive_policy(now, KeepalivePolicy::Suspended);
    }
    let before = w.sent;
    w.run_for(Duration::from_secs(600));
    assert_eq!(w.sent, before, "a suspended agent sends nothing");
    assert!(
        w.peers
            .iter()
            .all(|p| p.agent.state() == IceState::Connected)
    );
    let now = w.now;
    w.peers[0]
        .agent
        .set_keepalive_policy(now, KeepalivePolicy::Foreground);
    w.run_for(RESUME_PROBE * 2);
    assert_eq!(w.peers[0].agent.state(), IceState::Connected);
    assert!(w.sent[0] > before[0], "the resume probed the path");
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn a_resume_gives_up_a_path_whose_nat_forgot_it_within_the_probe() {
    // 120 s NATs, suspended for 10 min: the bindings are gone. The resumed side's probe
    // leaves its NAT and is dropped at the peer's, which has no binding any more.
    let nat = nat_with_timeout(120);
    let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), 28);
    assert!(w.connect(Duration::from_secs(5)));
    let now = w.now;
    for p in &mut w.peers {
        p.agent
            .set_keepalive_policy(now, KeepalivePolicy::Suspended);
    }
    w.run_for(Duration::from_secs(600));
    let resumed = w.now;
    w.peers[0]
        .agent
        .set_keepalive_policy(resumed, KeepalivePolicy::Foreground);
    w.run_for(RESUME_PROBE - Duration::from_millis(100));
    assert_eq!(
        w.peers[0].agent.state(),
        IceState::Connected,
        "the probe's time"
    );
    w.run_for(Duration::from_millis(200));
    assert!(gave_up(&w.peers[0]), "{:?}", w.peers[0].agent.state());
}

#[test]
fn in_the_background_a_silent_peer_is_given_up_after_two_intervals() {
    let (mut w, _) = idle(120, KeepalivePolicy::Background, 2, 1, 29);
    let k = w.peers[0].agent.keepalive_interval();
    w.muted[1] = true;
    let from = w.now;
    let bound = (k * 2 + Duration::from_secs(10)).max(Duration::from_secs(30)) + k;
    for _ in 0..1000 {
        if w.peers[0].agent.state() != IceState::Connected || w.now - from > bound {
            break;
        }
        w.run_for(Duration::from_secs(1));
    }
    let took = w.now - from;
    assert!(gave_up(&w.peers[0]), "{took:?}");
    assert!(took >= Duration::from_secs(30) && took <= bound, "{took:?}");
}

#[test]
fn a_background_side_answers_a_foreground_peer_and_sends_nothing_else() {
    let nat = nat_with_timeout(120);
    let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), 30);
    assert!(w.connect(Duration::from_secs(5)));
    let now = w.now;
    w.peers[1]
        .agent
        .set_keepalive_policy(now, KeepalivePolicy::Background);
    w.run_for(Duration::from_secs(10));
    let before = w.sent;
    w.run_for(Duration::from_secs(300));
    let (fg, bg) = (w.sent[0] - before[0], w.sent[1] - before[1]);
    // The foreground side checks every 4-6 s; the background side only answers them.
    assert!(bg <= fg + 1, "fg {fg} bg {bg}");
    assert!(bg >= 50, "{bg}");
    assert!(
        w.peers
            .iter()
            .all(|p| p.agent.state() == IceState::Connected)
    );
}
