//! Two peer connections on the virtual network, with pinhole's STUN and TURN servers as
//! public hosts, behind NATs of every RFC 4787 kind.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Behaviour, Conditions, Delivery, NatConfig, Network};
use crate::stun::{ServerConfig, StunServer};
use crate::turn::{ServerAction, TurnServer, TurnServerConfig};

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const STUN: &str = "203.0.113.10:3478";
const TURN: &str = "203.0.113.20:3478";

struct Side {
    peer: Peer,
    events: Vec<PeerEvent>,
    got: Vec<Vec<u8>>,
}

struct World {
    now: Instant,
    net: Network,
    stun: StunServer,
    turn: TurnServer,
    next_relay_port: u16,
    sides: [Side; 2],
    /// Each side's NAT, if any.
    nats: [Option<crate::sim::NatId>; 2],
    /// Signal each side's port allocation ([`Peer::port_allocation`]) with its
    /// end-of-candidates, as `pinhole connect` does.
    share_allocation: bool,
}

impl World {
    fn new(nats: [Option<NatConfig>; 2], conditions: Conditions, config: PeerConfig) -> Self {
        Self::with([config.clone(), config], nats, conditions)
    }

    fn with(
        configs: [PeerConfig; 2],
        nats: [Option<NatConfig>; 2],
        conditions: Conditions,
    ) -> Self {
        Self::seeded(configs, nats, conditions, 9)
    }

    fn seeded(
        configs: [PeerConfig; 2],
        nats: [Option<NatConfig>; 2],
        conditions: Conditions,
        net_seed: u64,
    ) -> Self {
        let now = Instant::now();
        let mut net = Network::new(net_seed, conditions);
        net.add_host(a(STUN).ip(), None);
        net.add_host(a(TURN).ip(), None);
        let locals = [a("192.168.1.10:5000"), a("10.0.0.10:6000")];
        let externals = ["198.51.100.1", "198.51.100.2"];
        let nats = [0, 1].map(|i| {
            let nat = nats[i].map(|c| net.add_nat(externals[i].parse().unwrap(), c));
            net.add_host(locals[i].ip(), nat);
            nat
        });
        let stun = StunServer::new(ServerConfig {
            rate_limit: None,
            ..ServerConfig::new(a(STUN))
        })
        .unwrap();
        let mut tc = TurnServerConfig::new(a(TURN), "sim", 1_700_000_000);
        tc.credentials.users.insert("u".into(), "p".into());
        // The hosts' own addresses are private ones (public hosts too, in some tests):
        // the lab's ranges, allowed as `--allow-peer` would.
        tc.peers.allowed = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ];
        let turn = TurnServer::new(now, tc, [4; 32]);
        let sides = [0usize, 1].map(|i| {
            let mut config = configs[i].clone();
            if config.stun_servers.is_empty() {
                config.stun_servers = vec![a(STUN)];
            }
            config.turn_servers = vec![TurnServerSpec::new(
                a(TURN),
                Credentials::long_term("u", "p"),
            )];
            let mut seed = [i as u8 + 1; 32];
            seed[5] = 77;
            seed[6..14].copy_from_slice(&net_seed.to_le_bytes());
            Side {
                peer: Peer::new(now, config, locals[i], i == 0, seed),
                events: vec![],
                got: vec![],
            }
        });
        let mut w = Self {
            now,
            net,
            stun,
            turn,
            next_relay_port: 49152,
            sides,
            nats,
            share_allocation: false,
        };
        let creds = [0, 1].map(|i| w.sides[i].peer.local_credentials().clone());
        for i in 0..2 {
            w.sides[i].peer.set_remote_credentials(creds[1 - i].clone());
            // Each side's description says whether it takes part in birthday probing.
            w.sides[i]
                .peer
                .set_remote_birthday(configs[1 - i].birthday.enabled);
        }
        w
    }

    /// Moves events; trickles candidates to the other side at once (signalling).
    fn signal(&mut self) {
        for i in 0..2 {
            while let Some(e) = self.sides[i].peer.poll_event() {
                match &e {
                    PeerEvent::Candidate(c) => {
                        let c = c.clone();
                        self.sides[1 - i].peer.add_remote_candidate(self.now, c);
                    }
                    PeerEvent::GatheringComplete => {
                        if let Some(a) = self.sides[i]
                            .peer
                            .port_allocation()
                            .filter(|_| self.share_allocation)
                        {
                            self.sides[1 - i].peer.set_remote_port_allocation(a);
                        }
                        self.sides[1 - i].peer.end_of_remote_candidates();
                    }
                    PeerEvent::BirthdaySockets(n) => {
                        // The driver binds `n` sockets on the host's IP.
                        let ip = self.sides[i].peer.local.ip();
                        let sockets: Vec<SocketAddr> = (0..*n)
                            .map(|k| SocketAddr::new(ip, 30_000 + k as u16))
                            .collect();
                        self.sides[i].peer.birthday_sockets(self.now, &sockets);
                    }
                    _ => {}
                }
                self.sides[i].events.push(e);
            }
        }
    }

    fn step(&mut self, until: Instant) -> bool {
        self.signal();
        for i in 0..2 {
            while let Some(t) = self.sides[i].peer.poll_transmit() {
                self.net.send(self.now, t);
            }
        }
        while let Some(t) = self.stun.poll_transmit() {
            self.net.send(self.now, t);
        }
        while let Some(action) = self.turn.poll_action() {
            if let ServerAction::BindRelay { client, .. } = action {
                self.next_relay_port += 1;
                let relayed = SocketAddr::new(a(TURN).ip(), self.next_relay_port);
                self.turn.relay_bound(client, relayed);
            }
        }
        while let Some(t) = self.turn.poll_transmit() {
            self.net.send(self.now, t);
        }
        let next = [
            self.sides[0].peer.poll_timeout(),
            self.sides[1].peer.poll_timeout(),
            self.net.poll_timeout(),
            self.turn.poll_timeout(),
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
            let rx = Received {
                proto: transmit.proto,
                source: transmit.source,
                destination: transmit.destination,
                contents: &transmit.contents,
            };
            if host == a(STUN).ip() {
                self.stun.handle_input(self.now, rx);
            } else if host == a(TURN).ip() {
                self.turn.handle_input(self.now, rx);
            } else if let Some(i) = (0..2).find(|i| self.sides[*i].peer.local.ip() == host) {
                if let PeerInput::Data { range, .. } = self.sides[i].peer.handle_input(self.now, rx)
                {
                    self.sides[i].got.push(transmit.contents[range].to_vec());
                }
            }
        }
        for s in &mut self.sides {
            s.peer.handle_timeout(self.now);
        }
        self.turn.handle_timeout(self.now);
        true
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        for _ in 0..1_000_000 {
            if !self.step(until) {
                return;
            }
        }
        panic!("runaway");
    }

    /// Runs until both sides have a nominated pair (or `limit`).
    fn connect(&mut self, limit: Duration) -> bool {
        let until = self.now + limit;
        for _ in 0..1_000_000 {
            let done = self.sides.iter().all(|s| {
                s.events.iter().any(|e| {
                    matches!(
                        e,
                        PeerEvent::Ice(IceEvent::SelectedPair {
                            nominated: true,
                            ..
                        })
                    )
                })
            });
            if done {
                return true;
            }
            if !self.step(until) {
                return false;
            }
        }
        panic!("runaway");
    }

    /// Sends from side `i` on its selected pair; whether the other side got it.
    fn data_flows(&mut self, i: usize) -> bool {
        let payload = [0x80, 9, 9, i as u8];
        let before = self.sides[1 - i].got.len();
        let t = match self.sides[i].peer.send(&payload) {
            Ok(t) => t,
            Err(_) => return false,
        };
        // The allocation-free form says the same.
        let mut buf = [0u8; 4 + MAX_FRAMING];
        match self.sides[i].peer.send_into(&payload, &mut buf) {
            Ok(Outgoing::Direct {
                proto,
                source,
                destination,
            }) => assert_eq!(
                (proto, source, destination, &payload[..]),
                (t.proto, t.source, t.destination, &t.contents[..])
            ),
            Ok(Outgoing::Framed {
                proto,
                source,
                destination,
                len,
            }) => {
                assert_eq!(
                    (proto, source, destination, &buf[..len]),
                    (t.proto, t.source, t.destination, &t.contents[..])
                );
                // A buffer without room for the framing is an error, not a panic.
                assert!(
                    self.sides[i]
                        .peer
                        .send_into(&payload, &mut [0u8; 8])
                        .is_err()
                );
            }
            Err(e) => panic!("send worked, send_into failed: {e}"),
        }
        self.net.send(self.now, t);
        self.run_for(Duration::from_millis(500));
        self.sides[1 - i].got[before..]
            .iter()
            .any(|g| g[..] == payload)
    }

    /// Per side, whether its selected pair crosses a relay: its own (a relayed base) or
    /// the peer's (a remote address of the TURN server's: a relayed candidate, perhaps
    /// learned as peer-reflexive). A pair from a host base to the peer's relayed address
    /// is not direct, whatever the local side's base says.
    fn relayed(&self) -> [Option<bool>; 2] {
        [0, 1].map(|i| {
            let p = &self.sides[i].peer;
            let (_, remote) = p.agent().selected()?;
            Some(p.is_relayed()? || remote.ip() == a(TURN).ip())
        })
    }
}

#[test]
fn candidates_are_gathered_and_trickled() {
    let nat = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new(
        [Some(nat), Some(nat)],
        Conditions::default(),
        PeerConfig::default(),
    );
    w.run_for(Duration::from_secs(1));
    for s in &w.sides {
        let kinds: Vec<CandidateKind> = s
            .events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Candidate(c) => Some(c.kind),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            [
                CandidateKind::Host,
                CandidateKind::ServerReflexive,
                CandidateKind::Relayed
            ],
            "{:?}",
            s.events
        );
        assert!(s.events.contains(&PeerEvent::GatheringComplete));
    }
}

/// One server for both STUN and TURN (`stun:turn.example.com` beside
/// `turn:turn.example.com`, what browsers are commonly given): the Binding response comes
/// from the TURN server's address on the allocation's socket, and must reach gathering,
/// not the allocation (which once swallowed it: no server-reflexive candidate).
#[test]
fn one_server_for_stun_and_turn_gives_a_server_reflexive_candidate() {
    let nat = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let config = PeerConfig {
        stun_servers: vec![a(TURN)],
        ..PeerConfig::default()
    };
    let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), config);
    w.run_for(Duration::from_secs(1));
    for s in &w.sides {
        let mut kinds: Vec<CandidateKind> = s
            .events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Candidate(c) => Some(c.kind),
                _ => None,
            })
            .collect();
        kinds.sort_by_key(|k| *k as u8);
        assert_eq!(
            kinds,
            [
                CandidateKind::Host,
                CandidateKind::ServerReflexive,
                CandidateKind::Relayed
            ],
            "{:?}",
            s.events
        );
        assert!(s.events.contains(&PeerEvent::GatheringComplete));
    }
    assert!(w.connect(Duration::from_secs(10)));
    assert_eq!(w.relayed(), [Some(false), Some(false)]);
}

/// Every pair of NAT kinds connects with TURN; directly exactly where the oracle says a
/// direct path exists (at least there, for address-dependent mapping).
#[test]
fn every_pair_of_nat_kinds_connects_with_turn_and_directly_where_possible() {
    let mut kinds = Vec::new();
    for m in Behaviour::ALL {
        for f in Behaviour::ALL {
            kinds.push(NatConfig::new(m, f));
        }
    }
    let mut table = String::new();
    let (mut direct, mut relayed) = (0, 0);
    for (x, nx) in kinds.iter().enumerate() {
        for ny in kinds.iter().skip(x) {
            let mut w = World::new(
                [Some(*nx), Some(*ny)],
                Conditions::default(),
                PeerConfig::default(),
            );
            assert!(w.connect(Duration::from_secs(20)), "{nx:?} {ny:?}");
            // Let renomination move to a direct path if one validates.
            w.run_for(Duration::from_secs(5));
            assert!(w.data_flows(0) && w.data_flows(1), "{nx:?} {ny:?}");
            let r = w.relayed();
            let is_direct = r == [Some(false), Some(false)];
            table.push_str(&format!(
                "{:?}/{:?} x {:?}/{:?}: {}\n",
                nx.mapping,
                nx.filtering,
                ny.mapping,
                ny.filtering,
                if is_direct { "direct" } else { "relay" }
            ));
            let expected = nx.direct_possible_with(ny);
            let adm = [nx, ny]
                .iter()
                .any(|n| n.mapping == Behaviour::AddressDependent);
            if adm {
                assert!(is_direct || !expected, "{table}");
            } else {
                assert_eq!(is_direct, expected, "{r:?}\n{table}");
            }
            if is_direct {
                direct += 1;
            } else {
                relayed += 1;
            }
        }
    }
    println!("{table}{direct} direct, {relayed} relayed, 45 of 45 connected");
    assert_eq!(direct + relayed, 45);
}

#[test]
fn relay_only_and_no_relay() {
    let sym = NatConfig::new(
        Behaviour::AddressAndPortDependent,
        Behaviour::AddressAndPortDependent,
    );
    // Two symmetric NATs without a relay: no path, and both sides say so.
    let config = PeerConfig {
        no_relay: true,
        ..PeerConfig::default()
    };
    let mut w = World::new([Some(sym), Some(sym)], Conditions::default(), config);
    assert!(!w.connect(Duration::from_secs(60)));
    for s in &w.sides {
        assert_eq!(s.peer.agent().state(), crate::ice::IceState::Failed);
    }
    // One side relay only (a privacy setting): relayed all the same. (Both sides relay
    // only would need relay-to-relay on one server, which pinhole's server refuses: its
    // own relayed addresses are never peers. coturn would carry it.)
    let relay = PeerConfig {
        relay_only: true,
        ..PeerConfig::default()
    };
    let mut w = World::with(
        [relay, PeerConfig::default()],
        [None, None],
        Conditions::default(),
    );
    assert!(w.connect(Duration::from_secs(10)));
    // Side 0 through its own relay; side 1 from its host to side 0's relayed address.
    assert_eq!(w.relayed(), [Some(true), Some(true)]);
    assert_eq!(w.sides[1].peer.is_relayed(), Some(false));
    assert!(w.data_flows(0) && w.data_flows(1));
}

#[test]
fn relay_first_then_direct_on_a_lossy_link() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let conditions = Conditions {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(10),
        loss: 0.1,
    };
    let mut w = World::new([Some(cone), Some(cone)], conditions, PeerConfig::default());
    assert!(w.connect(Duration::from_secs(30)));
    w.run_for(Duration::from_secs(10));
    assert_eq!(w.relayed(), [Some(false), Some(false)]);
    assert!((0..5).any(|_| w.data_flows(0)));
    // Retransmitted checks get answered twice; the late answers are STUN, not data.
    for (i, side) in w.sides.iter().enumerate() {
        for g in &side.got {
            assert!(
                crate::stun::Message::parse(g).is_err(),
                "side {i} got a STUN message as application data: {g:02x?}"
            );
        }
    }
}

#[test]
fn stray_stun_never_reaches_the_application() {
    // A late or duplicate answer to a check whose transaction is over (a retransmitted
    // check answered twice; a check replaced by a triggered one) is STUN (RFC 7983 §7),
    // not the application's: `pinhole connect` printed such answers to stdout.
    use crate::stun::{MessageBuilder, MessageType};
    let now = Instant::now();
    let local = a("192.168.1.10:5000");
    let mut peer = Peer::new(now, PeerConfig::default(), local, true, [3; 32]);
    let from = a("198.51.100.2:6000");
    // The peer's candidate (data from anyone else is dropped whatever it holds).
    peer.add_remote_candidate(
        now,
        Candidate::new(
            CandidateKind::Host,
            CandidateTransport::Udp,
            from,
            from.ip(),
            None,
            65535,
        ),
    );
    let mut buf = [0u8; 128];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_SUCCESS,
        TransactionId([7; 12]),
    )
    .unwrap();
    b.add(&XorMappedAddress(local)).unwrap();
    let stun = b.finish().to_vec();
    let rx = |c| Received {
        proto: crate::Protocol::Udp,
        source: from,
        destination: local,
        contents: c,
    };
    assert_eq!(peer.handle_input(now, rx(&stun)), PeerInput::Consumed);
    // Data that merely starts like STUN is still data.
    let data = [0u8, 1, 0, 0, b'h', b'i'];
    assert_eq!(
        peer.handle_input(now, rx(&data)),
        PeerInput::Data {
            from,
            range: 0..data.len()
        }
    );
}

#[test]
fn data_from_outside_the_peers_candidates_is_dropped() {
    let mut w = World::new([None, None], Conditions::default(), PeerConfig::default());
    assert!(w.connect(Duration::from_secs(5)));
    // A stranger who can reach side 1's socket: neither data nor an empty datagram (the
    // end-of-stream mark of `pinhole connect`) reaches the application.
    let stranger = a("203.0.113.66:4444");
    w.net.add_host(stranger.ip(), None);
    let target = w.sides[1].peer.local;
    for payload in [&b"injected"[..], b""] {
        w.net
            .send(w.now, crate::sim::udp(stranger, target, payload));
    }
    let before = w.sides[1].got.len();
    w.run_for(Duration::from_millis(200));
    assert_eq!(w.sides[1].got.len(), before);
    // The peer's data still arrives.
    assert!(w.data_flows(0));
}

/// Both sides settle on the same path, never one direct and one relayed, across the
/// direct-capable NAT pairs with latency, jitter (reordering) and loss varied by seed.
#[test]
fn both_sides_settle_on_the_same_path() {
    let mut kinds = Vec::new();
    for m in Behaviour::ALL {
        for f in Behaviour::ALL {
            kinds.push(NatConfig::new(m, f));
        }
    }
    let (mut runs, mut mixed) = (0, Vec::new());
    for seed in 0..8u64 {
        for (x, nx) in kinds.iter().enumerate() {
            for ny in kinds.iter().skip(x) {
                if !nx.direct_possible_with(ny) {
                    continue;
                }
                let conditions = Conditions {
                    latency: Duration::from_millis(5 + seed * 7),
                    jitter: Duration::from_millis(seed % 4 * 15),
                    loss: (seed % 3) as f64 * 0.05,
                };
                let c = PeerConfig::default();
                let mut w = World::seeded([c.clone(), c], [Some(*nx), Some(*ny)], conditions, seed);
                runs += 1;
                assert!(
                    w.connect(Duration::from_secs(30)),
                    "seed {seed} {nx:?} {ny:?}"
                );
                w.run_for(Duration::from_secs(10));
                let r = w.relayed();
                if r[0] != r[1] {
                    mixed.push(format!("seed {seed} {nx:?} {ny:?}: {r:?}"));
                }
            }
        }
    }
    assert!(
        mixed.is_empty(),
        "{} of {runs} mixed:\n{}",
        mixed.len(),
        mixed.join("\n")
    );
}

/// A TURN server over TCP or TLS waits for the driver's connection: gathering is not
/// complete until it is up or has failed, and a failure is reported, not fatal.
#[test]
fn a_relay_over_a_stream_waits_for_the_driver_and_may_fail() {
    let now = Instant::now();
    let config = PeerConfig {
        turn_servers: vec![
            TurnServerSpec::new(a(TURN), Credentials::long_term("u", "p"))
                .over(TurnTransport::Tcp, None),
        ],
        ..PeerConfig::default()
    };
    let mut p = Peer::new(now, config, a("192.168.1.10:5000"), true, [3; 32]);
    let streams: Vec<_> = p.turn_streams().map(|s| (s.server, s.transport)).collect();
    assert_eq!(streams, [(a(TURN), TurnTransport::Tcp)]);
    let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
    assert!(
        !events.contains(&PeerEvent::GatheringComplete),
        "{events:?}"
    );
    // Nothing goes out over UDP for it.
    assert!(p.poll_transmit().is_none());
    p.turn_stream_closed(a(TURN), TurnError::Stream("refused".into()));
    let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
    assert_eq!(
        events,
        [
            PeerEvent::RelayFailed(TurnError::Stream("refused".into())),
            PeerEvent::GatheringComplete
        ]
    );
    assert_eq!(p.turn_streams().count(), 0);

    // Connected: the Allocate request goes out on the stream (protocol TCP, from the
    // stream's local address), and the server's answer is read from it.
    let config = PeerConfig {
        turn_servers: vec![
            TurnServerSpec::new(a(TURN), Credentials::long_term("u", "p"))
                .over(TurnTransport::Tcp, None),
        ],
        ..PeerConfig::default()
    };
    let mut p = Peer::new(now, config, a("192.168.1.10:5000"), true, [3; 32]);
    let stream_local = a("192.168.1.10:40000");
    p.turn_stream_connected(now, a(TURN), stream_local);
    let t = p.poll_transmit().expect("the Allocate request");
    assert_eq!(
        (t.proto, t.source, t.destination),
        (crate::Protocol::Tcp, stream_local, a(TURN))
    );
}

/// With port mapping on, gathering waits for the driver's answer; a mapping becomes a
/// server-reflexive candidate with a foundation of its own.
#[test]
fn a_port_mapping_is_offered_as_a_candidate_of_its_own() {
    let now = Instant::now();
    let local = a("192.168.1.10:5000");
    let config = PeerConfig {
        port_mapping: true,
        ..PeerConfig::default()
    };
    let mut p = Peer::new(now, config.clone(), local, true, [3; 32]);
    let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
    assert!(
        !events.contains(&PeerEvent::GatheringComplete),
        "{events:?}"
    );
    let external = a("198.51.100.1:40000");
    p.port_mapped(external);
    let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
    let [PeerEvent::Candidate(c), PeerEvent::GatheringComplete] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(c.kind, CandidateKind::ServerReflexive);
    assert_eq!(c.socket_addr(), Some(external));
    assert!(c.foundation.ends_with('m'), "{}", c.foundation);
    // A mapping after the end of gathering is not offered.
    p.port_mapped(a("198.51.100.1:40001"));
    assert!(p.poll_event().is_none());

    // No mapping: gathering ends without one.
    let mut p = Peer::new(now, config, local, true, [3; 32]);
    while p.poll_event().is_some() {}
    p.port_mapping_done();
    assert_eq!(p.poll_event(), Some(PeerEvent::GatheringComplete));
}

/// A dual-stack side (a base of each family) and an IPv6-only one: a host candidate on
/// each base, and the pair that works is the IPv6 one, both ways. The loop is written
/// once against the `Machine` trait.
#[test]
fn a_dual_stack_side_offers_both_families_and_meets_an_ipv6_only_peer() {
    use crate::machine::Machine;
    let now0 = Instant::now();
    let mut net = Network::new(5, Conditions::default());
    let dual = [a("198.51.100.50:5000"), a("[2001:db8::50]:5000")];
    let v6 = a("[2001:db8::60]:6000");
    for b in [dual[0], dual[1], v6] {
        net.add_host(b.ip(), None);
    }
    let mut peers = [
        Peer::with_bases(now0, PeerConfig::default(), &dual, true, [1; 32]),
        Peer::with_bases(now0, PeerConfig::default(), &[v6], false, [2; 32]),
    ];
    assert_eq!(peers[0].bases(), &dual);
    let creds = [0, 1].map(|i| peers[i].local_credentials().clone());
    for i in 0..2 {
        peers[i].set_remote_credentials(creds[1 - i].clone());
    }
    let mut candidates: [Vec<Candidate>; 2] = [vec![], vec![]];
    let mut now = now0;
    let mut nominated = [None, None];
    let mut got = [0usize; 2];
    for _ in 0..100_000 {
        for i in 0..2 {
            while let Some(ev) = Machine::poll_event(&mut peers[i]) {
                match ev {
                    PeerEvent::Candidate(c) => {
                        candidates[i].push(c.clone());
                        peers[1 - i].add_remote_candidate(now, c);
                    }
                    PeerEvent::GatheringComplete => peers[1 - i].end_of_remote_candidates(),
                    PeerEvent::Ice(IceEvent::SelectedPair {
                        local,
                        remote,
                        nominated: true,
                        ..
                    }) => nominated[i] = Some((local, remote)),
                    _ => {}
                }
            }
            while let Some(t) = Machine::poll_transmit(&mut peers[i]) {
                net.send(now, t);
            }
        }
        if nominated.iter().all(Option::is_some) && got.iter().all(|g| *g > 0) {
            break;
        }
        if nominated.iter().all(Option::is_some) {
            for (i, p) in peers.iter_mut().enumerate() {
                let t = p.send(&[0x80, 1, 2, i as u8]).expect("a selected pair");
                net.send(now, t);
            }
        }
        let next = [
            Machine::poll_timeout(&peers[0]),
            Machine::poll_timeout(&peers[1]),
            net.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something to wait for");
        now = now.max(next);
        assert!(now - now0 < Duration::from_secs(10), "no connection");
        while let Some(Delivery { host, transmit }) = net.poll_delivery(now) {
            let i = usize::from(host == v6.ip());
            let rx = Received {
                proto: transmit.proto,
                source: transmit.source,
                destination: transmit.destination,
                contents: &transmit.contents,
            };
            if let PeerInput::Data { .. } = Machine::handle_input(&mut peers[i], now, rx) {
                got[i] += 1;
            }
        }
        for p in &mut peers {
            Machine::handle_timeout(p, now);
        }
    }
    let hosts: Vec<_> = candidates[0]
        .iter()
        .filter(|c| c.kind == CandidateKind::Host)
        .map(|c| c.socket_addr().unwrap())
        .collect();
    assert_eq!(
        hosts, dual,
        "a host candidate on each base, the primary first"
    );
    assert!(candidates[0][0].priority > candidates[0][1].priority);
    let (l, r) = nominated[0].clone().expect("connected");
    assert_eq!(
        (l.socket_addr(), r.socket_addr()),
        (Some(dual[1]), Some(v6))
    );
    assert!(got.iter().all(|g| *g > 0), "data both ways: {got:?}");
}

/// An ICE restart on both sides (as after a network change): the old path carries data
/// both ways meanwhile, the candidates go out again with the new credentials, and the
/// two connect again.
#[test]
fn a_restart_keeps_data_flowing_and_connects_again() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut w = World::new(
        [Some(cone), Some(cone)],
        Conditions::default(),
        PeerConfig::default(),
    );
    assert!(w.connect(Duration::from_secs(10)));
    w.run_for(Duration::from_secs(2));
    let old = [0, 1].map(|i| w.sides[i].peer.local_credentials().clone());
    for s in &mut w.sides {
        s.events.clear();
    }
    let creds = [0, 1].map(|i| w.sides[i].peer.restart());
    assert_ne!(creds[0], old[0]);
    // Before the new descriptions are in (no new check can start): the old path, both
    // ways.
    assert!(w.sides.iter().all(|s| s.peer.agent().selected().is_some()));
    assert!(w.data_flows(0) && w.data_flows(1));
    for i in 0..2 {
        w.sides[i].peer.set_remote_credentials(creds[1 - i].clone());
    }
    // Each side's candidates went out again (World::signal trickles them).
    w.signal();
    for s in &w.sides {
        let again = s
            .events
            .iter()
            .filter(|e| matches!(e, PeerEvent::Candidate(_)))
            .count();
        assert!(again >= 2, "{:?}", s.events);
        assert!(s.events.contains(&PeerEvent::GatheringComplete));
    }
    assert!(w.data_flows(0) && w.data_flows(1));
    assert!(w.connect(Duration::from_secs(10)));
    assert!(w.data_flows(0) && w.data_flows(1));
    assert_eq!(w.relayed(), [Some(false), Some(false)]);
}

/// A base that cannot reach the STUN server (a second interface without a route to it)
/// holds gathering back for 2.75 s at most, not RFC 8489's 39.5 s.
#[test]
fn an_unanswered_gathering_request_ends_gathering_within_three_seconds() {
    let start = Instant::now();
    let config = PeerConfig {
        stun_servers: vec![a(STUN)],
        ..PeerConfig::default()
    };
    let bases = [a("192.168.1.10:5000"), a("10.77.1.1:5000")];
    let mut p = Peer::with_bases(start, config, &bases, true, [5; 32]);
    let mut now = start;
    let mut requests = 0;
    let mut done_at = None;
    for _ in 0..1_000 {
        while p.poll_transmit().is_some() {
            requests += 1;
        }
        while let Some(ev) = p.poll_event() {
            if ev == PeerEvent::GatheringComplete {
                done_at.get_or_insert(now);
            }
        }
        if done_at.is_some() {
            break;
        }
        let Some(t) = p.poll_timeout() else { break };
        now = t.max(now);
        p.handle_timeout(now);
    }
    let took = done_at.expect("gathering completes") - start;
    assert!(took <= Duration::from_millis(2_750), "{took:?}");
    // Two bases, one server, four transmissions each.
    assert_eq!(requests, 8);
}

/// Port prediction (issue 13): a side behind an endpoint-dependent mapping with
/// sequential ports, against one behind endpoint-independent mapping with
/// address-and-port-dependent filtering. Plain ICE relays that cell; with the hard side's
/// port allocation signalled, the easy side predicts the port the hard side's NAT gives
/// its checks and the two go direct. Both orientations (hard side controlling or not),
/// steps 1 and 2, and 20 network seeds each; the easy cells do not change.
#[test]
fn sequential_nat_goes_direct_with_prediction_and_relays_without() {
    use crate::netcheck::PortAllocation as Kind;
    use crate::sim::PortAllocation;
    let easy = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let mut table = String::new();
    let (mut with_direct, mut without_direct, mut trials) = (0, 0, 0);
    for step in [1u16, 2] {
        let hard = NatConfig {
            allocation: PortAllocation::Sequential(step),
            ..NatConfig::new(
                Behaviour::AddressAndPortDependent,
                Behaviour::AddressAndPortDependent,
            )
        };
        for hard_side in [0usize, 1] {
            for seed in 0..20u64 {
                let mut nats = [Some(easy), Some(easy)];
                nats[hard_side] = Some(hard);
                let mut outcome = [false; 2];
                for (k, predict) in [false, true].into_iter().enumerate() {
                    let cfg = PeerConfig::default();
                    let mut w =
                        World::seeded([cfg.clone(), cfg], nats, Conditions::default(), seed);
                    w.share_allocation = predict;
                    assert!(w.connect(Duration::from_secs(20)), "seed {seed}");
                    w.run_for(Duration::from_secs(5));
                    // What the hard side learned of its NAT from gathering.
                    assert_eq!(
                        w.sides[hard_side].peer.port_allocation(),
                        Some(Kind::Sequential {
                            delta: i32::from(step)
                        }),
                        "seed {seed}"
                    );
                    // The easy side keeps its port for every server: nothing to predict.
                    assert_eq!(
                        w.sides[1 - hard_side].peer.port_allocation(),
                        Some(Kind::Preserving)
                    );
                    let predicted = w.sides[1 - hard_side]
                        .peer
                        .agent()
                        .predicted_candidates()
                        .count();
                    assert_eq!(predicted, if predict { MAX_PREDICTED } else { 0 });
                    assert!(w.data_flows(0) && w.data_flows(1), "seed {seed}");
                    outcome[k] = w.relayed() == [Some(false), Some(false)];
                }
                trials += 1;
                with_direct += usize::from(outcome[1]);
                without_direct += usize::from(outcome[0]);
                table.push_str(&format!(
                    "step {step}, hard side {hard_side}, seed {seed}: without {}, with {}\n",
                    if outcome[0] { "direct" } else { "relay" },
                    if outcome[1] { "direct" } else { "relay" }
                ));
            }
        }
    }
    println!(
        "{table}direct with prediction {with_direct}/{trials}, without {without_direct}/{trials}"
    );
    assert_eq!(without_direct, 0, "{table}");
    assert_eq!(with_direct, trials, "{table}");
}

const MAX_PREDICTED: usize = crate::ice::MAX_PREDICTED_PORTS;

/// The easy cells with port allocation signalled: nothing is predicted (no side is
/// sequential: one port for every server, the local one), and the paths are those of
/// plain ICE.
#[test]
fn prediction_changes_nothing_in_the_easy_cells() {
    let eim = |f| NatConfig::new(Behaviour::EndpointIndependent, f);
    for (x, y) in [
        (
            eim(Behaviour::EndpointIndependent),
            eim(Behaviour::AddressAndPortDependent),
        ),
        (
            eim(Behaviour::AddressAndPortDependent),
            eim(Behaviour::AddressAndPortDependent),
        ),
        (
            eim(Behaviour::AddressDependent),
            eim(Behaviour::AddressDependent),
        ),
    ] {
        let mut w = World::new(
            [Some(x), Some(y)],
            Conditions::default(),
            PeerConfig::default(),
        );
        w.share_allocation = true;
        assert!(w.connect(Duration::from_secs(20)));
        w.run_for(Duration::from_secs(2));
        for s in &w.sides {
            assert_eq!(
                s.peer.port_allocation(),
                Some(crate::netcheck::PortAllocation::Preserving)
            );
            assert_eq!(s.peer.agent().predicted_candidates().count(), 0);
        }
        assert_eq!(w.relayed(), [Some(false), Some(false)]);
    }
    // No NAT at all: every server sees the local port.
    let mut w = World::new([None, None], Conditions::default(), PeerConfig::default());
    w.share_allocation = true;
    assert!(w.connect(Duration::from_secs(20)));
    assert_eq!(
        w.sides[0].peer.port_allocation(),
        Some(crate::netcheck::PortAllocation::Preserving)
    );
    assert_eq!(w.sides[1].peer.agent().predicted_candidates().count(), 0);
}

/// Linux `masquerade random`: endpoint-dependent mapping with random ports and
/// address-and-port-dependent filtering.
fn edm_random() -> NatConfig {
    NatConfig {
        allocation: crate::sim::PortAllocation::Random,
        ..NatConfig::new(
            Behaviour::AddressAndPortDependent,
            Behaviour::AddressAndPortDependent,
        )
    }
}

fn with_birthday(on: bool) -> PeerConfig {
    let mut c = PeerConfig::default();
    c.birthday.enabled = on;
    c
}

/// Whether both sides' selected pairs are direct.
fn direct(w: &World) -> bool {
    w.relayed() == [Some(false), Some(false)]
}

/// Runs until both sides' selected pairs are direct (or `limit`): when.
fn until_direct(w: &mut World, limit: Duration) -> Option<Instant> {
    let until = w.now + limit;
    for _ in 0..1_000_000 {
        if direct(w) {
            return Some(w.now);
        }
        if !w.step(until) {
            return None;
        }
    }
    panic!("runaway");
}

fn sockets_asked(s: &Side) -> bool {
    s.events
        .iter()
        .any(|e| matches!(e, PeerEvent::BirthdaySockets(_)))
}

/// Birthday probing (issue 13) in the cells plain ICE relays: a side behind Linux's
/// `masquerade random` (endpoint-dependent mapping, random ports: nothing to predict)
/// against one with endpoint-independent mapping and address-and-port-dependent
/// filtering (which is also Linux's plain masquerade). With birthday probing on both
/// sides the pair goes direct, and data flows on it both ways; with it off on either
/// side (never unilaterally) it stays relayed. Both orientations, 10 seeds each. Prints
/// the time to the direct pair (from the start) and the probes sent.
#[test]
fn birthday_probing_takes_the_edm_cell_direct_and_not_unilaterally() {
    let easy = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let (mut direct_with, mut direct_without, mut one_sided, mut trials) = (0, 0, 0, 0);
    let mut times = Vec::new();
    let mut probes = Vec::new();
    for hard_side in [0usize, 1] {
        for seed in 0..10u64 {
            trials += 1;
            let mut nats = [Some(easy), Some(easy)];
            nats[hard_side] = Some(edm_random());
            // Off, on one side only, on both.
            for (k, on) in [[false, false], [true, false], [true, true]]
                .into_iter()
                .enumerate()
            {
                let mut w = World::seeded(
                    [with_birthday(on[0]), with_birthday(on[1])],
                    nats,
                    Conditions::default(),
                    seed,
                );
                w.share_allocation = true;
                let start = w.now;
                assert!(w.connect(Duration::from_secs(20)), "seed {seed}");
                let at = until_direct(&mut w, Duration::from_secs(20));
                // Two servers' worth of random ports: random, or by chance a "step".
                assert!(matches!(
                    w.sides[hard_side].peer.port_allocation(),
                    Some(
                        crate::netcheck::PortAllocation::Random
                            | crate::netcheck::PortAllocation::Sequential { .. }
                    )
                ));
                assert!(w.data_flows(0) && w.data_flows(1), "seed {seed}");
                match k {
                    0 => {
                        direct_without += usize::from(at.is_some());
                        assert!(w.sides.iter().all(|s| s.peer.birthday_probes() == 0));
                    }
                    1 => {
                        one_sided += usize::from(at.is_some());
                        assert!(w.sides.iter().all(|s| s.peer.birthday_probes() == 0));
                        assert!(!w.sides.iter().any(sockets_asked));
                    }
                    _ => {
                        if let Some(at) = at {
                            direct_with += 1;
                            times.push(at - start);
                            probes.push(
                                w.sides[1 - hard_side].peer.birthday_probes()
                                    + w.sides[hard_side].peer.birthday_probes(),
                            );
                            // The hard side's data leaves from the probe socket that won.
                            let (base, _) = w.sides[hard_side].peer.agent().selected().unwrap();
                            assert_eq!(base.port() / 1000, 30, "seed {seed}: {base}");
                        }
                        assert!(sockets_asked(&w.sides[hard_side]));
                        assert!(!sockets_asked(&w.sides[1 - hard_side]));
                    }
                }
            }
        }
    }
    times.sort();
    probes.sort_unstable();
    println!(
        "EDM x EIM/APDF: direct with birthday {direct_with}/{trials}, one side only \
         {one_sided}/{trials}, without {direct_without}/{trials}; time to direct median {:?} \
         max {:?}; probes (both sides) median {}",
        times.get(times.len() / 2),
        times.last(),
        probes.get(probes.len() / 2).copied().unwrap_or(0)
    );
    assert_eq!(direct_without, 0);
    assert_eq!(one_sided, 0);
    assert_eq!(direct_with, trials);
}

/// EDM × EDM (both behind `masquerade random`): the controlling side plays the hard
/// side, but the easy side's probes leave from new ports too, which the hard side's
/// address-and-port-dependent filter drops; the answers that could come back are
/// filtered the same way. Measured (expected: none direct), and the connection stays
/// up through the relay.
#[test]
fn birthday_probing_between_two_edm_nats_is_measured() {
    let (mut direct_n, mut trials) = (0, 0);
    for seed in 0..10u64 {
        trials += 1;
        let mut w = World::seeded(
            [with_birthday(true), with_birthday(true)],
            [Some(edm_random()), Some(edm_random())],
            Conditions::default(),
            seed,
        );
        w.share_allocation = true;
        assert!(w.connect(Duration::from_secs(20)));
        direct_n += usize::from(until_direct(&mut w, Duration::from_secs(16)).is_some());
        assert!(
            sockets_asked(&w.sides[0]),
            "the controlling side is the hard one"
        );
        assert!(w.sides[1].peer.birthday_probes() > 0);
        assert!(w.data_flows(0) && w.data_flows(1));
    }
    println!("EDM x EDM: direct with birthday {direct_n}/{trials}");
}

/// The easy cells are not slowed: where no side has endpoint-dependent mapping no side
/// ever probes, and where one has but plain checks find a direct pair within the wait
/// (EDM against endpoint-independent filtering) the decision finds that pair and does
/// not probe; the path and the time to it are the same, to the virtual nanosecond, with
/// birthday probing on and off. In the cell that does probe, probing starts exactly
/// the wait after both sides' candidates are all known (measured).
#[test]
fn birthday_probing_never_slows_the_easy_cells() {
    let eim = |f| NatConfig::new(Behaviour::EndpointIndependent, f);
    let cells = [
        (
            eim(Behaviour::EndpointIndependent),
            eim(Behaviour::AddressAndPortDependent),
        ),
        (
            eim(Behaviour::AddressAndPortDependent),
            eim(Behaviour::AddressAndPortDependent),
        ),
        (
            eim(Behaviour::AddressDependent),
            eim(Behaviour::AddressDependent),
        ),
        (edm_random(), eim(Behaviour::EndpointIndependent)),
        (edm_random(), eim(Behaviour::AddressDependent)),
    ];
    for (x, y) in cells {
        let mut at = [None, None];
        for (k, on) in [false, true].into_iter().enumerate() {
            let mut w = World::with(
                [with_birthday(on), with_birthday(on)],
                [Some(x), Some(y)],
                Conditions::default(),
            );
            w.share_allocation = true;
            let start = w.now;
            assert!(w.connect(Duration::from_secs(20)));
            at[k] = until_direct(&mut w, Duration::from_secs(20)).map(|t| t - start);
            w.run_for(Duration::from_secs(15));
            assert!(direct(&w), "{x:?} {y:?}");
            for s in &w.sides {
                assert_eq!(s.peer.birthday_probes(), 0, "{x:?} {y:?}");
                assert!(!sockets_asked(s));
                assert!(s.peer.birthday_prober().is_none());
            }
        }
        assert!(at[0].is_some());
        assert_eq!(at[0], at[1], "{x:?} {y:?}");
    }
    // The wait, measured in the cell that probes.
    let mut w = World::with(
        [with_birthday(true), with_birthday(true)],
        [
            Some(edm_random()),
            Some(eim(Behaviour::AddressAndPortDependent)),
        ],
        Conditions::default(),
    );
    w.share_allocation = true;
    let until = w.now + Duration::from_secs(30);
    let mut ready = [None, None];
    let mut started = [None, None];
    for _ in 0..1_000_000 {
        for i in 0..2 {
            let p = &w.sides[i].peer;
            if let Some(t) = p.birthday_decision_at() {
                ready[i] = Some(t);
            }
            if let Some(pr) = p.birthday_prober() {
                started[i].get_or_insert(pr.started_at());
            }
        }
        if started.iter().all(Option::is_some) || !w.step(until) {
            break;
        }
    }
    let wait = BirthdayConfig::default().wait;
    for i in 0..2 {
        let (r, s) = (ready[i].unwrap(), started[i].unwrap());
        // The decision comes `wait` after the candidates were all known, and probing
        // starts then (the hard side: once its sockets are bound, at once here).
        assert_eq!(s, r, "side {i}");
        println!("side {i}: probing started {wait:?} after both sides' candidates were known");
    }
}

/// Birthday probing on a lossy link (5 % of datagrams lost each way): a lost probe is
/// one fewer chance, a lost answer is made up by the other side's checks (an
/// authenticated check at the hard side's probe socket makes the pair there too).
/// Both orientations, 10 seeds each; printed, and at least 18 of 20 direct.
#[test]
fn birthday_probing_goes_direct_on_a_lossy_link() {
    let easy = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let lossy = Conditions {
        loss: 0.05,
        ..Conditions::default()
    };
    let (mut direct_n, mut trials) = (0, 0);
    for hard_side in [0usize, 1] {
        for seed in 0..10u64 {
            trials += 1;
            let mut nats = [Some(easy), Some(easy)];
            nats[hard_side] = Some(edm_random());
            let mut w = World::seeded(
                [with_birthday(true), with_birthday(true)],
                nats,
                lossy,
                100 + seed,
            );
            w.share_allocation = true;
            assert!(w.connect(Duration::from_secs(30)), "seed {seed}");
            direct_n += usize::from(until_direct(&mut w, Duration::from_secs(30)).is_some());
        }
    }
    println!("EDM x EIM/APDF with 5 % loss: direct with birthday {direct_n}/{trials}");
    assert!(direct_n >= 18, "{direct_n}/{trials}");
}

/// The distinct pairs (local, remote addresses) the side saw nominated, in order.
fn nominated_pairs(events: &[PeerEvent]) -> Vec<(SocketAddr, SocketAddr)> {
    let mut v: Vec<(SocketAddr, SocketAddr)> = Vec::new();
    for e in events {
        if let PeerEvent::Ice(IceEvent::SelectedPair {
            local,
            remote,
            nominated: true,
            ..
        }) = e
        {
            let p = (
                local.socket_addr().unwrap_or(a("0.0.0.0:0")),
                remote.socket_addr().unwrap_or(a("0.0.0.0:0")),
            );
            if v.last() != Some(&p) {
                v.push(p);
            }
        }
    }
    v
}

/// A peer that does not follow renomination (no `renomination` ICE option: webrtc-ice's
/// controlled agent keeps the first pair nominated to it) is nominated once (RFC 8445
/// §8.1.1), and that once is a direct pair where one exists: a relayed pair that is valid
/// first waits (at most NOMINATION_HOLD) while direct pairs are still being checked. On a
/// lossy link where relayed pairs often validate first, renomination happens in some runs
/// when allowed, and never when not, and every run ends direct.
#[test]
fn a_peer_without_renomination_is_nominated_once_and_directly() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    let conditions = Conditions {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(10),
        loss: 0.1,
    };
    let mut renominated_when_allowed = 0;
    for seed in 0..12u64 {
        for follows in [true, false] {
            let mut w = World::seeded(
                [PeerConfig::default(), PeerConfig::default()],
                [Some(cone), Some(cone)],
                conditions,
                seed,
            );
            w.sides[0].peer.set_remote_renomination(follows);
            assert!(w.connect(Duration::from_secs(30)), "seed {seed}");
            w.run_for(Duration::from_secs(10));
            let seen = nominated_pairs(&w.sides[1].events);
            if follows {
                renominated_when_allowed += usize::from(seen.len() > 1);
            } else {
                assert_eq!(seen.len(), 1, "seed {seed}: nominated {seen:?}");
                assert_eq!(w.relayed(), [Some(false), Some(false)], "seed {seed}");
            }
        }
    }
    println!("renomination when allowed: {renominated_when_allowed} of 12 seeds");
    assert!(
        renominated_when_allowed > 0,
        "the scenario (a relayed pair valid first) never arose: the test proves nothing"
    );
}

// --- PCP PEER (issue 13) ---

/// With port mapping on, the peer's host and server-reflexive UDP candidates are handed
/// to the driver for PCP PEER (relayed ones are not); a PEER mapping's external address
/// is trickled as a server-reflexive candidate even after the end of gathering, based on
/// the socket, and not again when it is already offered.
#[test]
fn pcp_peer_remotes_out_and_mappings_in() {
    let now = Instant::now();
    let local = a("192.168.1.10:5000");
    let config = PeerConfig {
        port_mapping: true,
        ..PeerConfig::default()
    };
    let mut p = Peer::new(now, config, local, true, [3; 32]);
    p.port_mapped(a("198.51.100.1:40000"));
    while p.poll_event().is_some() {}
    let cand = |kind, addr: SocketAddr| {
        Candidate::new(kind, CandidateTransport::Udp, addr, addr.ip(), None, 65535)
    };
    p.add_remote_candidate(now, cand(CandidateKind::Host, a("198.51.100.2:6000")));
    p.add_remote_candidate(
        now,
        cand(CandidateKind::ServerReflexive, a("198.51.100.3:6001")),
    );
    p.add_remote_candidate(now, cand(CandidateKind::Relayed, a("203.0.113.20:50000")));
    let remotes: Vec<_> = std::iter::from_fn(|| p.poll_event())
        .filter_map(|e| match e {
            PeerEvent::PcpPeerRemote(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(remotes, [a("198.51.100.2:6000"), a("198.51.100.3:6001")]);

    let external = a("198.51.100.1:40002");
    p.pcp_peer_mapped(external);
    let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
    let [PeerEvent::Candidate(c)] = &events[..] else {
        panic!("{events:?}");
    };
    assert_eq!(c.kind, CandidateKind::ServerReflexive);
    assert_eq!(c.socket_addr(), Some(external));
    assert_eq!(
        c.related,
        Some((crate::ice::CandidateAddress::Ip(local.ip()), local.port()))
    );
    // The same address again (another remote peer, same external port): nothing new.
    p.pcp_peer_mapped(external);
    assert!(p.poll_event().is_none());

    // Port mapping off: nothing for PCP PEER.
    let mut p = Peer::new(now, PeerConfig::default(), local, true, [3; 32]);
    p.add_remote_candidate(now, cand(CandidateKind::Host, a("198.51.100.2:6000")));
    assert!(
        !std::iter::from_fn(|| p.poll_event()).any(|e| matches!(e, PeerEvent::PcpPeerRemote(_)))
    );
}

/// ICE-TCP (RFC 6544): gathering waits for the driver's TCP bases; each passive base is a
/// passive and an active host candidate, each so base an so host candidate and, from a
/// Binding request over TCP to the STUN server, an so server-reflexive one; data on a
/// TCP pair says TCP.
#[test]
fn ice_tcp_bases_make_tcp_candidates_and_a_reflexive_one_over_tcp() {
    use crate::stun::{MessageBuilder, MessageType};
    let now = Instant::now();
    let local = a("192.168.1.10:5000");
    let server = a(STUN);
    let config = PeerConfig {
        stun_servers: vec![server],
        ice_tcp: true,
        ..PeerConfig::default()
    };
    let mut peer = Peer::new(now, config, local, true, [5; 32]);
    assert!(peer.wants_tcp_bases());
    assert!(peer.is_stun_server(server));
    let mut events = Vec::new();
    let mut transmits = Vec::new();
    let pump = |peer: &mut Peer, events: &mut Vec<PeerEvent>, transmits: &mut Vec<Transmit>| {
        while let Some(t) = peer.poll_transmit() {
            transmits.push(t);
        }
        while let Some(e) = peer.poll_event() {
            events.push(e);
        }
    };
    // The UDP Binding request goes out; answer it.
    pump(&mut peer, &mut events, &mut transmits);
    let answer = |t: &Transmit, mapped: SocketAddr| {
        let id = crate::stun::Message::parse(&t.contents)
            .unwrap()
            .transaction_id();
        let mut buf = [0u8; 128];
        let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, id).unwrap();
        b.add(&XorMappedAddress(mapped)).unwrap();
        b.finish().to_vec()
    };
    let udp = transmits
        .iter()
        .find(|t| t.proto == crate::Protocol::Udp && t.destination == server)
        .expect("a UDP Binding request")
        .clone();
    let r = answer(&udp, a("198.51.100.1:5000"));
    peer.handle_input(
        now,
        Received {
            proto: crate::Protocol::Udp,
            source: server,
            destination: local,
            contents: &r,
        },
    );
    pump(&mut peer, &mut events, &mut transmits);
    assert!(
        !events.contains(&PeerEvent::GatheringComplete),
        "gathering waits for the TCP bases"
    );
    let passive = a("192.168.1.10:6001");
    let so = a("192.168.1.10:6002");
    peer.tcp_bases(now, &[passive], &[so]);
    pump(&mut peer, &mut events, &mut transmits);
    let tcp_req = transmits
        .iter()
        .find(|t| t.proto == crate::Protocol::Tcp)
        .expect("a Binding request over TCP")
        .clone();
    assert_eq!((tcp_req.source, tcp_req.destination), (so, server));
    assert!(!events.contains(&PeerEvent::GatheringComplete));
    let mapped = a("198.51.100.1:41000");
    let r = answer(&tcp_req, mapped);
    assert_eq!(
        peer.handle_input(
            now,
            Received {
                proto: crate::Protocol::Tcp,
                source: server,
                destination: so,
                contents: &r,
            },
        ),
        PeerInput::Consumed
    );
    pump(&mut peer, &mut events, &mut transmits);
    let tcp: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Candidate(c) if c.transport == CandidateTransport::Tcp => {
                Some((c.kind, c.tcp_type, c.socket_addr()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        tcp,
        vec![
            (CandidateKind::Host, Some(TcpType::Passive), Some(passive)),
            (
                CandidateKind::Host,
                Some(TcpType::Active),
                Some(a("192.168.1.10:9"))
            ),
            (
                CandidateKind::Host,
                Some(TcpType::SimultaneousOpen),
                Some(so)
            ),
            (
                CandidateKind::ServerReflexive,
                Some(TcpType::SimultaneousOpen),
                Some(mapped)
            ),
        ]
    );
    assert_eq!(events.last(), Some(&PeerEvent::GatheringComplete));
    // A later call changes nothing.
    peer.tcp_bases(now, &[a("192.168.1.10:7000")], &[]);
    pump(&mut peer, &mut events, &mut transmits);
    assert_eq!(events.last(), Some(&PeerEvent::GatheringComplete));
    // The peer's passive candidate: our active base checks it, over TCP, not through
    // any relay.
    let theirs = a("198.51.100.2:443");
    peer.set_remote_credentials(IceCredentials {
        ufrag: "abcd".into(),
        pwd: "abcdefghijklmnopqrstuvwx".into(),
    });
    let line = Candidate::tcp(
        CandidateKind::Host,
        TcpType::Passive,
        theirs,
        theirs.ip(),
        None,
        1,
    )
    .to_string();
    peer.add_remote_candidate(now, Candidate::parse(&line).unwrap());
    transmits.clear();
    for ms in 0..200 {
        peer.handle_timeout(now + Duration::from_millis(ms));
        pump(&mut peer, &mut events, &mut transmits);
    }
    let check = transmits
        .iter()
        .find(|t| t.destination == theirs)
        .expect("a check to the passive candidate");
    assert_eq!(
        (check.proto, check.source),
        (crate::Protocol::Tcp, a("192.168.1.10:0"))
    );
}

/// A host moves from behind one NAT to behind another (the uplink switch of issue 14):
/// `network_changed` with its new base restarts ICE, gathers again and re-allocates the
/// relay; with the restart signalled (the peer restarts too, RFC 8445 §9), the two
/// connect again on the new network, directly and through the relay.
#[test]
fn a_host_that_changes_networks_connects_again_after_network_changed() {
    let cone = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    for relay_only in [false, true] {
        // Direct: both behind NATs. Relayed: side 0 relay only, both on public addresses
        // (pinhole's TURN server relays to the peer's host address, not to its own
        // relayed addresses).
        let mut w = if relay_only {
            let relay = PeerConfig {
                relay_only: true,
                ..PeerConfig::default()
            };
            World::with(
                [relay, PeerConfig::default()],
                [None, None],
                Conditions::default(),
            )
        } else {
            World::new(
                [Some(cone), Some(cone)],
                Conditions::default(),
                PeerConfig::default(),
            )
        };
        assert!(
            w.connect(Duration::from_secs(10)),
            "relay_only {relay_only}"
        );
        assert!(w.data_flows(0) && w.data_flows(1));
        // Side 0 moves: a new address (behind another NAT of the same kind).
        let moved = a("172.16.0.10:5000");
        let nat = (!relay_only).then(|| w.net.add_nat("198.51.100.3".parse().unwrap(), cone));
        w.net.add_host(moved.ip(), nat);
        for s in &mut w.sides {
            s.events.clear();
        }
        let changed_at = w.now;
        let creds0 = w.sides[0].peer.network_changed(w.now, &[moved]);
        assert_eq!(w.sides[0].peer.bases(), &[moved]);
        // Signalling: the peer sees new credentials, restarts and answers with its own.
        let creds1 = w.sides[1].peer.restart();
        w.sides[1].peer.set_remote_credentials(creds0);
        w.sides[0].peer.set_remote_credentials(creds1);
        assert!(
            w.connect(Duration::from_secs(10)),
            "relay_only {relay_only}: no new pair"
        );
        let took = w.now - changed_at;
        let (l, r) = w.sides[0]
            .peer
            .agent()
            .selected_candidates()
            .map(|(l, r)| (l.clone(), r.clone()))
            .expect("selected");
        if relay_only {
            assert_eq!(l.kind, CandidateKind::Relayed, "{l} -> {r}");
        } else {
            assert_eq!(
                w.sides[0].peer.agent().selected().map(|(b, _)| b),
                Some(moved),
                "{l} -> {r}"
            );
        }
        // No candidate of the old network is offered again.
        for e in &w.sides[0].events {
            if let PeerEvent::Candidate(c) = e {
                assert_ne!(c.socket_addr(), Some(a("192.168.1.10:5000")), "{c}");
                if let Some((related, _)) = &c.related {
                    assert_ne!(
                        related,
                        &crate::ice::CandidateAddress::Ip(a("192.168.1.10:0").ip()),
                        "{c}"
                    );
                }
            }
        }
        assert!(
            w.data_flows(0) && w.data_flows(1),
            "relay_only {relay_only}"
        );
        println!(
            "relay_only {relay_only}: nominated again {took:?} after the change (virtual time)"
        );
        // And back to the first network: the same address (and, through the same NAT,
        // the same mapping). The server still holds the first allocation for that
        // 5-tuple, which is taken up again. (coturn refuses a new Allocate there with
        // 437, which `lab_mobility` shows; pinhole's own server answers it with the
        // existing allocation, so this test alone would pass without the revival.)
        let first = a("192.168.1.10:5000");
        for s in &mut w.sides {
            s.events.clear();
        }
        let creds0 = w.sides[0].peer.network_changed(w.now, &[first]);
        let creds1 = w.sides[1].peer.restart();
        w.sides[1].peer.set_remote_credentials(creds0);
        w.sides[0].peer.set_remote_credentials(creds1);
        assert!(
            w.connect(Duration::from_secs(10)),
            "relay_only {relay_only}: no pair back on the first network"
        );
        assert!(
            !w.sides[0]
                .events
                .iter()
                .any(|e| matches!(e, PeerEvent::RelayFailed(_))),
            "{:?}",
            w.sides[0].events
        );
        assert!(
            w.data_flows(0) && w.data_flows(1),
            "relay_only {relay_only}: back"
        );
    }
}

/// The TURN server restarts under a relayed connection (issue 14): the allocation's
/// liveness check gets 437, the relayed pairs fail at once, an allocation is made again
/// and its candidate (trickled, or learned as peer-reflexive) carries the data again,
/// with no ICE restart. The relayed side controlling (it nominates the new pair) and
/// controlled (the controlling side moves the nomination to the pair the data now comes
/// on, [`crate::ice::SILENT_PATH`]), with data flowing both ways all along.
#[test]
fn a_turn_server_restart_is_recovered_from_by_allocating_again() {
    for relayed_side in [0usize, 1] {
        let relay = PeerConfig {
            relay_only: true,
            ..PeerConfig::default()
        };
        let mut configs = [PeerConfig::default(), PeerConfig::default()];
        configs[relayed_side] = relay;
        let mut w = World::with(configs, [None, None], Conditions::default());
        assert!(w.connect(Duration::from_secs(10)));
        assert!(w.data_flows(0) && w.data_flows(1));
        let first = w.sides[relayed_side]
            .peer
            .agent()
            .selected_candidates()
            .map(|(l, _)| l.clone())
            .expect("a relayed pair");
        assert_eq!(first.kind, CandidateKind::Relayed);
        // A new server at the same address: it knows no allocation.
        let mut tc = TurnServerConfig::new(a(TURN), "sim", 1_700_000_000);
        tc.credentials.users.insert("u".into(), "p".into());
        tc.peers.allowed = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ];
        w.turn = TurnServer::new(w.now, tc, [9; 32]);
        w.next_relay_port = 50_000;
        let restarted = w.now;
        for s in &mut w.sides {
            s.events.clear();
        }
        let on_new = |w: &World, i: usize| {
            let (l, r) = w.sides[i]
                .peer
                .agent()
                .selected_candidates()
                .map(|(l, r)| (l.clone(), r.clone()))?;
            let relayed = if i == relayed_side { l } else { r };
            Some(relayed.socket_addr() != first.socket_addr())
        };
        let mut back = None;
        // Both sides send all along (one datagram each per second of virtual time).
        for _ in 0..30 {
            let flows = [w.data_flows(0), w.data_flows(1)];
            if flows == [true, true] && on_new(&w, 0) == Some(true) && on_new(&w, 1) == Some(true) {
                back = Some(w.now - restarted);
                break;
            }
        }
        let took = back.unwrap_or_else(|| {
            panic!(
                "relayed side {relayed_side}: not on the new allocation both ways within 30 s: {:?} / {:?}",
                w.sides[0].events, w.sides[1].events
            )
        });
        // Never failed: the agent waited for the new allocation.
        for side in &w.sides {
            assert!(
                !side.events.iter().any(|e| matches!(
                    e,
                    PeerEvent::Ice(IceEvent::State(crate::ice::IceState::Failed))
                )),
                "{:?}",
                side.events
            );
        }
        println!(
            "relayed side {relayed_side}: both sides on the new allocation {took:?} after the restart (virtual time)"
        );
    }
}

/// ICE-TCP: when the driver cannot connect an so base to the STUN server
/// ([`Peer::tcp_connection_failed`]), gathering ends at once instead of waiting the
/// reliable-transport timeout (39.5 s) for the Binding request over TCP.
#[test]
fn a_failed_tcp_connection_to_the_stun_server_ends_gathering() {
    let now = Instant::now();
    let local = a("192.168.1.10:5000");
    let server = a(STUN);
    let config = PeerConfig {
        stun_servers: vec![server],
        ice_tcp: true,
        ..PeerConfig::default()
    };
    let mut peer = Peer::new(now, config, local, true, [6; 32]);
    let mut events = Vec::new();
    let pump = |peer: &mut Peer, events: &mut Vec<PeerEvent>, udp: &mut Vec<Transmit>| {
        while let Some(t) = peer.poll_transmit() {
            if t.proto == crate::Protocol::Udp {
                udp.push(t);
            }
        }
        while let Some(e) = peer.poll_event() {
            events.push(e);
        }
    };
    let mut udp = Vec::new();
    let so = a("192.168.1.10:6002");
    peer.tcp_bases(now, &[a("192.168.1.10:6001")], &[so]);
    pump(&mut peer, &mut events, &mut udp);
    // The UDP Binding request answered.
    let id = crate::stun::Message::parse(&udp[0].contents)
        .unwrap()
        .transaction_id();
    let mut buf = [0u8; 128];
    let mut b =
        crate::stun::MessageBuilder::new(&mut buf, crate::stun::MessageType::BINDING_SUCCESS, id)
            .unwrap();
    b.add(&XorMappedAddress(a("198.51.100.1:5000"))).unwrap();
    let r = b.finish().to_vec();
    let rx = Received {
        proto: crate::Protocol::Udp,
        source: server,
        destination: local,
        contents: &r,
    };
    assert_eq!(peer.handle_input(now, rx), PeerInput::Consumed);
    peer.handle_timeout(now + Duration::from_secs(5));
    pump(&mut peer, &mut events, &mut udp);
    assert!(
        !events.contains(&PeerEvent::GatheringComplete),
        "waiting for the Binding response over TCP"
    );
    // Another base's or server's failure changes nothing.
    peer.tcp_connection_failed(a("192.168.1.10:6003"), server);
    peer.tcp_connection_failed(so, a("192.0.2.99:3478"));
    pump(&mut peer, &mut events, &mut udp);
    assert!(!events.contains(&PeerEvent::GatheringComplete));
    peer.tcp_connection_failed(so, server);
    pump(&mut peer, &mut events, &mut udp);
    assert_eq!(events.last(), Some(&PeerEvent::GatheringComplete));
}

/// After a network change, an ICE-TCP connection's gathering waits for the driver's TCP
/// bases of the new network (as at start); the TCP candidates of an address that is gone
/// are not offered again.
#[test]
fn a_network_change_asks_for_the_tcp_bases_again() {
    let now = Instant::now();
    let (old, new) = (a("192.168.1.10:5000"), a("172.16.0.10:5000"));
    let config = PeerConfig {
        ice_tcp: true,
        ..PeerConfig::default()
    };
    let mut peer = Peer::new(now, config, old, true, [6; 32]);
    peer.tcp_bases(now, &[a("192.168.1.10:6001")], &[a("192.168.1.10:6002")]);
    while peer.poll_event().is_some() {}
    assert!(!peer.wants_tcp_bases());
    peer.network_changed(now, &[new]);
    assert!(peer.wants_tcp_bases());
    let mut events: Vec<PeerEvent> = std::iter::from_fn(|| peer.poll_event()).collect();
    assert!(!events.contains(&PeerEvent::GatheringComplete));
    for e in &events {
        if let PeerEvent::Candidate(c) = e {
            assert_ne!(c.address, crate::ice::CandidateAddress::Ip(old.ip()), "{c}");
        }
    }
    peer.tcp_bases(now, &[a("172.16.0.10:6001")], &[a("172.16.0.10:6002")]);
    events.extend(std::iter::from_fn(|| peer.poll_event()));
    let tcp: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Candidate(c) if c.transport == CandidateTransport::Tcp => c.socket_addr(),
            _ => None,
        })
        .collect();
    assert_eq!(
        tcp,
        vec![
            a("172.16.0.10:6001"),
            a("172.16.0.10:9"),
            a("172.16.0.10:6002")
        ]
    );
    assert_eq!(events.last(), Some(&PeerEvent::GatheringComplete));
}

/// A NAT that drops its mappings and maps the next packet to a new port (a reboot, a
/// carrier NAT rebinding): the peer's address-and-port-dependent filter drops what comes
/// from the new port, and the peer's packets go to the old one, so the direct pair is
/// dead both ways and nothing on it says so. The foreground's silence probe
/// ([`crate::ice::UNANSWERED_CHECK`]) gives it up within seconds, where RFC 7675's
/// consent would take 30 s and then leave the agent disconnected: with relays the path
/// moves to a relayed pair of the peer's (its permission is for our IP, so our new port
/// reaches it), without them the peer connection asks for a restart (`PathLost`),
/// which connects again.
#[test]
fn a_nat_that_maps_anew_is_given_up_within_seconds() {
    let rebinding = NatConfig {
        allocation: crate::sim::PortAllocation::Random,
        ..NatConfig::new(
            Behaviour::EndpointIndependent,
            Behaviour::AddressAndPortDependent,
        )
    };
    let plain = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    // A consent check goes within 6 s (RFC 7675 §5.1), unanswered for
    // UNANSWERED_CHECK it starts the probe, which gives the pair RESUME_PROBE more.
    let bound = Duration::from_secs(6) + crate::ice::UNANSWERED_CHECK + RESUME_PROBE;
    for relays in [true, false] {
        let config = PeerConfig {
            no_relay: !relays,
            ..PeerConfig::default()
        };
        let mut w = World::new(
            [Some(rebinding), Some(plain)],
            Conditions::default(),
            config,
        );
        assert!(w.connect(Duration::from_secs(10)));
        assert!(w.data_flows(0) && w.data_flows(1));
        let direct = |w: &World, i: usize| {
            let (l, r) = w.sides[i]
                .peer
                .agent()
                .selected_candidates()
                .expect("a pair");
            l.kind != CandidateKind::Relayed && r.kind != CandidateKind::Relayed
        };
        assert!(direct(&w, 0) && direct(&w, 1));
        for s in &mut w.sides {
            s.events.clear();
        }
        let flushed = w.now;
        w.net.flush(w.nats[0].expect("a NAT"));
        let lost = |w: &World, i: usize| w.sides[i].events.contains(&PeerEvent::PathLost);
        let relayed = |w: &World| {
            (0..2).all(|i| w.sides[i].peer.agent().state() == IceState::Connected)
                && !direct(w, 0)
                && !direct(w, 1)
        };
        // Data still goes out on the old pair meanwhile, and is lost.
        while w.now < flushed + bound && !(lost(&w, 0) || lost(&w, 1)) {
            if relays && relayed(&w) && w.data_flows(0) && w.data_flows(1) {
                break;
            }
            w.run_for(Duration::from_millis(100));
            let _ = (w.data_flows(0), w.data_flows(1));
        }
        if relays {
            // The peer's relayed candidate reaches it: no restart.
            assert!(!lost(&w, 0) && !lost(&w, 1), "{:?}", w.sides[0].events);
            assert!(relayed(&w), "not on a relayed pair within {bound:?}");
            assert!(w.data_flows(0) && w.data_flows(1));
            println!(
                "with relays: on a relayed pair {:?} after the flush",
                w.now - flushed
            );
            continue;
        }
        assert!(lost(&w, 0) || lost(&w, 1), "no PathLost within {bound:?}");
        // What the driver does: the side that lost the path restarts as after a network
        // change; the peer answers the new credentials with a restart of its own.
        let first = usize::from(!lost(&w, 0));
        let bases = w.sides[first].peer.bases().to_vec();
        let mine = w.sides[first].peer.network_changed(w.now, &bases);
        let theirs = w.sides[1 - first].peer.restart();
        w.sides[1 - first].peer.set_remote_credentials(mine);
        w.sides[first].peer.set_remote_credentials(theirs);
        for s in &mut w.sides {
            s.events.clear();
        }
        assert!(
            w.connect(Duration::from_secs(10)),
            "no pair after the restart"
        );
        assert!(w.data_flows(0) && w.data_flows(1));
        assert!(direct(&w, 0) && direct(&w, 1));
        println!(
            "without relays: connected again {:?} after the flush",
            w.now - flushed
        );
    }
}

/// Issue 14's suspended policy: a resume whose path is gone (both NATs forgot it while
/// the app was suspended) and that has no other asks for a restart (`PathLost`); the
/// restart, signalled as after a network change, connects again. A resume whose path
/// lived asks for nothing; one with a relayed pair left moves to it.
#[test]
fn a_resume_whose_path_is_gone_asks_for_a_restart_that_connects_again() {
    let mut nat = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    nat.binding_timeout = Duration::from_secs(120);
    let no_relay = PeerConfig {
        no_relay: true,
        ..PeerConfig::default()
    };
    for (suspended_for, config) in [
        (Duration::from_secs(60), no_relay.clone()),
        (Duration::from_secs(600), no_relay),
        (Duration::from_secs(600), PeerConfig::default()),
    ] {
        let relays = !config.no_relay;
        let mut w = World::new([Some(nat), Some(nat)], Conditions::default(), config);
        assert!(w.connect(Duration::from_secs(10)));
        assert!(w.data_flows(0) && w.data_flows(1));
        let now = w.now;
        for s in &mut w.sides {
            s.peer.set_keepalive_policy(now, KeepalivePolicy::Suspended);
            s.events.clear();
        }
        w.run_for(suspended_for);
        // Side 0 resumes; side 1 stays suspended (it answers, sends nothing by itself).
        // Both resuming at once would punch the path open again, like ICE's checks.
        let resumed = w.now;
        w.sides[0]
            .peer
            .set_keepalive_policy(resumed, KeepalivePolicy::Foreground);
        w.run_for(RESUME_PROBE + Duration::from_secs(1));
        let failed = |w: &World, i: usize| w.sides[i].events.contains(&PeerEvent::PathLost);
        if suspended_for < Duration::from_secs(120) {
            assert!(!failed(&w, 0) && !failed(&w, 1), "the path lived");
            assert!(w.data_flows(0) && w.data_flows(1));
            continue;
        }
        if relays {
            // The relayed pairs lived (their allocations' refreshes went on): the agent
            // moves to one within the probe, no restart needed.
            assert!(!failed(&w, 0), "{:?}", w.sides[0].events);
            let (l, r) = w.sides[0]
                .peer
                .agent()
                .selected_candidates()
                .expect("a pair");
            assert!(
                l.kind == CandidateKind::Relayed || r.kind == CandidateKind::Relayed,
                "{l} -> {r}"
            );
            assert!(w.data_flows(0) && w.data_flows(1));
            continue;
        }
        assert!(failed(&w, 0) && !failed(&w, 1), "{:?}", w.sides[0].events);
        // Disconnected, never failed: an app must not take the pause's end for the end.
        assert!(
            !w.sides[0].events.iter().any(|e| matches!(
                e,
                PeerEvent::Ice(IceEvent::State(crate::ice::IceState::Failed))
            )),
            "{:?}",
            w.sides[0].events
        );
        // What the driver does: a restart as after a network change; the peer answers
        // the new credentials with a restart of its own (RFC 8445 §9).
        let bases = w.sides[0].peer.bases().to_vec();
        let creds0 = w.sides[0].peer.network_changed(w.now, &bases);
        let creds1 = w.sides[1].peer.restart();
        w.sides[1].peer.set_remote_credentials(creds0);
        w.sides[0].peer.set_remote_credentials(creds1);
        let t = w.now;
        assert!(
            w.connect(Duration::from_secs(10)),
            "no new pair after the restart"
        );
        assert!(w.data_flows(0) && w.data_flows(1));
        println!(
            "restarted and connected {:?} after the resume",
            w.now - t + RESUME_PROBE
        );
    }
}

/// TURN allocations follow the policy: liveness checks (every 5 s) and keepalives only
/// in the foreground; in the background a relayed idle path costs the agent's rounds
/// through the relay and the allocation's refreshes, nothing else.
#[test]
fn a_relayed_idle_path_in_the_background_costs_no_turn_liveness_checks() {
    let relay = PeerConfig {
        relay_only: true,
        ..PeerConfig::default()
    };
    let count = |policy: KeepalivePolicy| {
        let mut w = World::with(
            [relay.clone(), PeerConfig::default()],
            [None, None],
            Conditions::default(),
        );
        assert!(w.connect(Duration::from_secs(10)));
        let now = w.now;
        for s in &mut w.sides {
            s.peer.set_keepalive_policy(now, policy);
        }
        // Let the interval settle, then count what side 0 sends to the TURN server.
        w.run_for(Duration::from_secs(600));
        let before = w.net.sent_from(a("192.168.1.10:5000").ip());
        w.run_for(Duration::from_secs(600));
        let sent = w.net.sent_from(a("192.168.1.10:5000").ip()) - before;
        assert!(w.data_flows(0) && w.data_flows(1), "{policy:?}");
        sent
    };
    let fg = count(KeepalivePolicy::Foreground);
    let bg = count(KeepalivePolicy::Background);
    println!("relayed side, datagrams in 10 idle minutes: foreground {fg}, background {bg}");
    // Foreground: a liveness check every 5 s and consent every 4-6 s, each way.
    assert!(fg >= 200, "{fg}");
    // Background: no public NAT to learn from, so the interval grows to its cap (240 s):
    // a few rounds, the permission and allocation refreshes.
    assert!(bg <= 20, "{bg}");
}

/// A network change drops the allocations over TCP or TLS with their connections (they
/// came from the old network) and lists their servers again for the driver, which
/// connects from the new network; the new Allocate goes on the new connection.
#[test]
fn a_network_change_connects_the_turn_streams_again() {
    let now = Instant::now();
    let config = PeerConfig {
        turn_servers: vec![
            TurnServerSpec::new(a(TURN), Credentials::long_term("u", "p"))
                .over(TurnTransport::Tls, Some("turn.example".into())),
        ],
        ..PeerConfig::default()
    };
    let mut p = Peer::new(now, config, a("192.168.1.10:5000"), true, [3; 32]);
    p.turn_stream_connected(now, a(TURN), a("192.168.1.10:40000"));
    while p.poll_transmit().is_some() {}
    assert_eq!(p.turn_streams().count(), 0);
    let moved = a("172.16.0.10:5000");
    let _ = p.network_changed(now, &[moved]);
    let streams: Vec<_> = p.turn_streams().map(|s| (s.server, s.transport)).collect();
    assert_eq!(streams, [(a(TURN), TurnTransport::Tls)]);
    // Nothing more for the old connection.
    while let Some(t) = p.poll_transmit() {
        assert_ne!(t.proto, crate::Protocol::Tcp, "{t:?}");
    }
    let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
    assert!(
        !events.contains(&PeerEvent::GatheringComplete),
        "gathering waits for the new connection: {events:?}"
    );
    let new_local = a("172.16.0.10:40001");
    p.turn_stream_connected(now, a(TURN), new_local);
    let t = p.poll_transmit().expect("the Allocate request");
    assert_eq!(
        (t.proto, t.source, t.destination),
        (crate::Protocol::Tcp, new_local, a(TURN))
    );
}

/// Issue 14's background policy through the peer connection, the two sides switching at
/// different times (the watcher first: it saw the keeper's foreground pace, a check every
/// 5 s, which must not become its own): over 30 idle minutes behind 120 s NATs the
/// interval settles under the NAT timeout and each side sends about a datagram a minute.
#[test]
fn background_switched_at_different_times_settles_under_the_nat_timeout() {
    let mut nat = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    nat.binding_timeout = Duration::from_secs(120);
    let no_relay = PeerConfig {
        no_relay: true,
        ..PeerConfig::default()
    };
    for (first, gap) in [(1usize, 7u64), (0, 12)] {
        let mut w = World::new(
            [Some(nat), Some(nat)],
            Conditions::default(),
            no_relay.clone(),
        );
        assert!(w.connect(Duration::from_secs(10)));
        w.run_for(Duration::from_secs(20));
        let now = w.now;
        w.sides[first]
            .peer
            .set_keepalive_policy(now, KeepalivePolicy::Background);
        w.run_for(Duration::from_secs(gap));
        let now = w.now;
        w.sides[1 - first]
            .peer
            .set_keepalive_policy(now, KeepalivePolicy::Background);
        let ips = [a("192.168.1.10:0").ip(), a("10.0.0.10:0").ip()];
        let before = ips.map(|ip| w.net.sent_from(ip));
        for _ in 0..30 {
            w.run_for(Duration::from_secs(60));
            for s in &w.sides {
                assert_eq!(s.peer.agent().state(), crate::ice::IceState::Connected);
            }
        }
        let sent = [0, 1].map(|i| w.net.sent_from(ips[i]) - before[i]);
        let keeper = w.sides[0].peer.agent().keepalive_interval();
        println!("first {first}: sent {sent:?} in 30 min, keeper's interval {keeper:?}");
        assert!(
            keeper > Duration::from_secs(80) && keeper < Duration::from_secs(120),
            "{keeper:?}"
        );
        assert!(sent.iter().all(|n| *n <= 36), "{sent:?}");
        assert!(w.data_flows(0) && w.data_flows(1));
    }
}
