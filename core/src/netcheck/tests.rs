//! The prober against the sans-IO STUN servers through a NAT of the virtual network
//! ([`crate::sim`]), every machine a host of one [`Sim`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{
    self, Conditions, Host, NatConfig, Network, PortAllocation as PortAllocation_, Sim,
};
use crate::stun::{ServerConfig, StunServer};

use sim::Behaviour::{AddressAndPortDependent as APD, EndpointIndependent as EI};

/// The NAT's external address.
const PUBLIC: &str = "198.51.100.1";
/// The prober's host, behind the NAT.
const PRIVATE: &str = "10.0.0.2";
/// The RFC 5780 server's primary and alternate addresses (the primary alone when plain).
const PRIMARY: &str = "203.0.113.1:3478";
const ALTERNATE: &str = "203.0.113.2:3479";
/// A second, plain server.
const PLAIN2: &str = "192.0.2.9:3478";
/// The last moment a run may reach before the prober must have finished.
const RUN_AWAY: Duration = Duration::from_secs(600);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A NAT of `mapping` and `filtering`, hairpinning or not. Like the NATs the prober is
/// meant for: a new mapping takes the next port, a hairpinned request reaches its
/// mapping whatever the filter, mappings never expire and no ALG; tests change that.
fn nat(mapping: sim::Behaviour, filtering: sim::Behaviour, hairpin: bool) -> NatConfig {
    NatConfig {
        allocation: PortAllocation_::Sequential(1),
        hairpin,
        hairpin_filtering: false,
        binding_timeout: Duration::MAX,
        ..NatConfig::new(mapping, filtering)
    }
}

/// What the prober must report for a NAT behaviour.
fn expect(b: sim::Behaviour) -> Behaviour {
    match b {
        sim::Behaviour::EndpointIndependent => Behaviour::EndpointIndependent,
        sim::Behaviour::AddressDependent => Behaviour::AddressDependent,
        sim::Behaviour::AddressAndPortDependent => Behaviour::AddressAndPortDependent,
    }
}

fn run(nat: NatConfig, plain: bool, config_edit: impl FnOnce(&mut NetcheckConfig)) -> Report {
    run_events(nat, plain, config_edit, None).0
}

/// What else happens on the network of a run.
#[derive(Debug, Clone, Copy)]
struct Extra {
    /// Seeds the network (random ports, jitter) and the prober.
    seed: u64,
    /// Another host behind the same NAT opens a new mapping this often (from a new local
    /// port each time, to a new destination): other traffic between the prober's.
    noise_every: Option<Duration>,
    /// Another host behind the same NAT holds this external port before the run starts
    /// (it sends from that local port first).
    taken_port: Option<u16>,
}

impl Default for Extra {
    fn default() -> Self {
        Self {
            seed: 7,
            noise_every: None,
            taken_port: None,
        }
    }
}

/// The other host of [`Extra::noise_every`].
const NOISE_HOST: &str = "10.0.0.3";

/// Sends one datagram from a new local port to a new destination every `every`.
struct Noise {
    every: Duration,
    next: Instant,
    sent: u16,
    out: Option<crate::Transmit>,
}

impl crate::machine::Machine for Noise {
    type Event = crate::machine::NoEvent;
    type Verdict<'a> = bool;
    fn handle_input<'a>(&mut self, _now: Instant, _rx: crate::Received<'a>) -> bool {
        true
    }
    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next && self.sent < 1000 {
            self.sent += 1;
            self.next = now + self.every;
            self.out = Some(sim::udp(
                SocketAddr::new(ip(NOISE_HOST), 20_000 + self.sent),
                SocketAddr::new(ip("192.0.2.77"), 1000 + self.sent),
                b"noise",
            ));
        }
    }
    fn poll_transmit(&mut self) -> Option<crate::Transmit> {
        self.out.take()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (self.sent < 1000).then_some(self.next)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }
}

/// The prober's local ports: spread out as the kernel's ephemeral ports are, so that a
/// preserving NAT that moves one mapping to the next free port does not collide with the
/// prober's next socket.
fn local_port(seed: u64, i: usize) -> u16 {
    5000 + (seed % 500) as u16 * 7 + 97 * i as u16
}

/// Runs a netcheck through `nat` on a virtual clock, 15 ms each way; with `stop_after`,
/// calls [`Prober::finish_early`] that long after the start. Returns the report and
/// every progress event before it.
fn run_events(
    nat: NatConfig,
    plain: bool,
    config_edit: impl FnOnce(&mut NetcheckConfig),
    stop_after: Option<Duration>,
) -> (Report, Vec<NetcheckEvent>) {
    run_extra(nat, plain, config_edit, stop_after, Extra::default())
}

fn run_extra(
    nat: NatConfig,
    plain: bool,
    config_edit: impl FnOnce(&mut NetcheckConfig),
    stop_after: Option<Duration>,
    extra: Extra,
) -> (Report, Vec<NetcheckEvent>) {
    let primary: SocketAddr = PRIMARY.parse().unwrap();
    let alternate: SocketAddr = ALTERNATE.parse().unwrap();
    let mut server = StunServer::new(if plain {
        ServerConfig::new(primary)
    } else {
        ServerConfig::rfc5780(primary, alternate)
    })
    .unwrap();
    let mut plain2 = StunServer::new(ServerConfig::new(PLAIN2.parse().unwrap())).unwrap();
    let mut config = NetcheckConfig {
        servers: vec![ServerSpec {
            label: "lab".into(),
            addr: primary,
        }],
        ..NetcheckConfig::default()
    };
    config_edit(&mut config);
    let locals: Vec<SocketAddr> = (0..config.sockets_needed())
        .map(|i| SocketAddr::new(ip(PRIVATE), local_port(extra.seed, i)))
        .collect();
    let t0 = Instant::now();
    let mut seed = [7; 32];
    seed[..8].copy_from_slice(&extra.seed.to_le_bytes());
    let mut p = Prober::new(t0, config, locals, seed).unwrap();

    let mut net = Network::new(
        extra.seed,
        Conditions {
            latency: Duration::from_millis(15),
            jitter: Duration::ZERO,
            loss: 0.0,
        },
    );
    let nat = net.add_nat(ip(PUBLIC), nat);
    net.add_host(ip(PRIVATE), Some(nat));
    net.add_host(ip(NOISE_HOST), Some(nat));
    if let Some(port) = extra.taken_port {
        net.send(
            t0,
            sim::udp(
                SocketAddr::new(ip(NOISE_HOST), port),
                "192.0.2.78:9".parse().unwrap(),
                b"first",
            ),
        );
    }
    let mut noise = Noise {
        every: extra.noise_every.unwrap_or(Duration::MAX),
        next: t0 + extra.noise_every.unwrap_or(RUN_AWAY * 2),
        sent: 0,
        out: None,
    };
    let mut server_ips: Vec<IpAddr> = server.local_addresses().iter().map(|a| a.ip()).collect();
    server_ips.dedup();
    let mut events = Vec::new();
    let mut sim = Sim::new(&mut net, t0);
    sim.add(Host::new(&mut p, [ip(PRIVATE)]).collect_events(&mut events));
    sim.add(Host::new(&mut server, server_ips));
    let plain2_ip = PLAIN2.parse::<SocketAddr>().unwrap().ip();
    sim.add(Host::new(&mut plain2, [plain2_ip]));
    sim.add(Host::new(&mut noise, [ip(NOISE_HOST)]));
    sim.run_until(t0 + stop_after.unwrap_or(RUN_AWAY));
    drop(sim);
    let mut events: Vec<NetcheckEvent> = events.into_iter().map(|(_, e)| e).collect();
    if stop_after.is_some() {
        // A no-op if it finished already.
        p.finish_early();
        events.extend(std::iter::from_fn(|| p.poll_event()));
    }
    let done = events
        .iter()
        .position(|e| matches!(e, NetcheckEvent::Done(_)))
        .unwrap_or_else(|| {
            panic!("the prober did not finish (runs end at {RUN_AWAY:?}): {events:#?}")
        });
    let mut after = events.split_off(done);
    assert_eq!(after.len(), 1, "the report is the last event: {after:#?}");
    let Some(NetcheckEvent::Done(report)) = after.pop() else {
        unreachable!("split at the report");
    };
    (*report, events)
}

#[test]
fn classifies_every_mapping_and_filtering_combination() {
    for mapping in sim::Behaviour::ALL {
        for filtering in sim::Behaviour::ALL {
            for hairpin in [false, true] {
                let r = run(nat(mapping, filtering, hairpin), false, |_| {});
                let case = format!("{mapping:?}/{filtering:?}/hairpin={hairpin}: {r:#?}");
                assert!(r.udp, "{case}");
                assert_eq!(r.mapping, expect(mapping), "{case}");
                assert_eq!(r.filtering, expect(filtering), "{case}");
                assert_eq!(r.hairpinning, Some(hairpin), "{case}");
                assert_eq!(r.alg_rewrites, Some(false), "{case}");
                assert_eq!(r.rfc5780_server.as_deref(), Some("lab"), "{case}");
            }
        }
    }
}

#[test]
fn plain_servers_give_mapping_only() {
    let two = |c: &mut NetcheckConfig| {
        c.servers.push(ServerSpec {
            label: "other".into(),
            addr: PLAIN2.parse().unwrap(),
        });
    };
    let r = run(nat(EI, APD, false), true, two);
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
    assert_eq!(r.filtering, Behaviour::Unknown);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("filtering cannot be determined")),
        "{r:#?}"
    );
    let r = run(nat(APD, APD, false), true, two);
    assert_eq!(r.mapping, Behaviour::Unknown);
    assert!(
        r.notes.iter().any(|n| n.contains("varies by destination")),
        "{r:#?}"
    );
    let r = run(nat(EI, APD, false), true, |_| {});
    assert_eq!(r.mapping, Behaviour::Unknown);
}

#[test]
fn unreachable_server_reports_no_udp() {
    let r = run(nat(EI, EI, false), false, |c| {
        c.servers[0].addr = "203.0.113.50:3478".parse().unwrap();
    });
    assert!(!r.udp);
    assert_eq!(r.mapping, Behaviour::Unknown);
    assert_eq!(r.hairpinning, None);
    assert_eq!(r.servers[0].rtt, None);
}

#[test]
fn lifetime_discovery_in_parallel() {
    let r = run(nat(EI, APD, false), false, |c| {
        c.lifetime_probes = vec![Duration::from_secs(5), Duration::from_secs(30)];
    });
    // The NAT never expires mappings, so both intervals survive.
    let l = r.binding_lifetime.unwrap();
    assert_eq!(l.at_least, Some(Duration::from_secs(30)));
    assert_eq!(l.less_than, None);

    let mut n = nat(EI, APD, false);
    n.binding_timeout = Duration::from_secs(25);
    let r = run(n, false, |c| {
        c.lifetime_probes = vec![
            Duration::from_secs(5),
            Duration::from_secs(20),
            Duration::from_secs(30),
            Duration::from_secs(60),
        ];
    });
    let l = r.binding_lifetime.unwrap();
    assert_eq!(l.at_least, Some(Duration::from_secs(20)), "{r:#?}");
    assert_eq!(l.less_than, Some(Duration::from_secs(30)), "{r:#?}");
    // The rest of the report is unaffected by the long run.
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
    assert_eq!(r.filtering, Behaviour::AddressAndPortDependent);
}

#[test]
fn setup_errors() {
    let t0 = Instant::now();
    let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
    assert_eq!(
        Prober::new(t0, NetcheckConfig::default(), vec![a, a], [0; 32]).unwrap_err(),
        NetcheckError::NoServers
    );
    let c = NetcheckConfig {
        servers: vec![ServerSpec {
            label: "x".into(),
            addr: a,
        }],
        ..NetcheckConfig::default()
    };
    assert!(matches!(
        Prober::new(t0, c, vec![a], [0; 32]),
        Err(NetcheckError::WrongSocketCount {
            needed: 7, // 2 + DEFAULT_PORT_ALLOCATION_PROBES
            got: 1
        })
    ));
}

#[test]
fn address_rewriting_alg_is_detected() {
    let mut n = nat(EI, EI, false);
    n.alg = true;
    let r = run(n, false, |_| {});
    assert_eq!(r.alg_rewrites, Some(true), "{r:#?}");
    // XOR-MAPPED-ADDRESS survives the ALG, so the public address is still right.
    assert_eq!(r.public[0].ip(), ip(PUBLIC));
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
}

#[test]
fn finishing_early_keeps_what_was_found() {
    let probes = vec![
        Duration::from_secs(5),
        Duration::from_secs(20),
        Duration::from_secs(60),
    ];
    let mut n = nat(EI, APD, true);
    n.binding_timeout = Duration::from_secs(45);
    // Stopped at 30 s: the 5 s and 20 s intervals have their answers, the 60 s one not.
    let (r, events) = run_events(
        n,
        false,
        |c| c.lifetime_probes = probes.clone(),
        Some(Duration::from_secs(30)),
    );
    let l = r.binding_lifetime.expect("lifetime discovery had started");
    assert_eq!(l.at_least, Some(Duration::from_secs(20)), "{r:#?}");
    assert_eq!(l.less_than, None, "{r:#?}");
    // The tests that had finished are all there.
    assert!(r.udp);
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
    assert_eq!(r.filtering, Behaviour::AddressAndPortDependent);
    assert_eq!(r.hairpinning, Some(true));
    assert!(
        r.notes.iter().any(|n| n.contains("stopped early")),
        "{r:#?}"
    );
    // Each interval answered was reported as it came.
    let lifetimes: Vec<(Duration, bool)> = events
        .iter()
        .filter_map(|e| match e {
            NetcheckEvent::BindingLifetime { idle, open } => Some((*idle, *open)),
            _ => None,
        })
        .collect();
    assert_eq!(
        lifetimes,
        [
            (Duration::from_secs(5), true),
            (Duration::from_secs(20), true)
        ]
    );

    // Run to the end, the 60 s interval outlives the NAT's 45 s and is reported gone.
    let mut n = nat(EI, APD, true);
    n.binding_timeout = Duration::from_secs(45);
    let (r, events) = run_events(n, false, |c| c.lifetime_probes = probes, None);
    assert_eq!(
        r.binding_lifetime.unwrap().less_than,
        Some(Duration::from_secs(60))
    );
    assert!(events.iter().any(|e| matches!(
        e,
        NetcheckEvent::BindingLifetime { open: false, idle } if *idle == Duration::from_secs(60)
    )));
    assert!(!r.notes.iter().any(|n| n.contains("stopped early")));
}

#[test]
fn finishing_early_before_any_answer_reports_unknowns() {
    let t0 = Instant::now();
    let config = NetcheckConfig {
        servers: vec![ServerSpec {
            label: "x".into(),
            addr: "203.0.113.1:3478".parse().unwrap(),
        }],
        ..NetcheckConfig::default()
    };
    let locals = (0..config.sockets_needed())
        .map(|i| SocketAddr::new(ip(PRIVATE), 1 + i as u16))
        .collect();
    let mut p = Prober::new(t0, config, locals, [1; 32]).unwrap();
    p.finish_early();
    assert!(p.is_done());
    assert_eq!(p.poll_timeout(), None);
    let Some(NetcheckEvent::Done(r)) = p.poll_event() else {
        panic!("no report");
    };
    assert!(!r.udp);
    assert_eq!(r.mapping, Behaviour::Unknown);
    assert_eq!(r.binding_lifetime, None);
    // Probed, but without a single answer: not enough evidence.
    assert_eq!(r.port_allocation, Some(PortAllocation::Unknown));
    // Only once.
    p.finish_early();
    assert!(p.poll_event().is_none());
}

/// What the prober must report for a NAT's port allocation.
fn expect_allocation(a: PortAllocation_) -> PortAllocation {
    match a {
        PortAllocation_::Preserving => PortAllocation::Preserving,
        PortAllocation_::Sequential(d) => PortAllocation::Sequential {
            delta: i32::from(d),
        },
        PortAllocation_::Random => PortAllocation::Random,
    }
}

/// Every allocation kind under every mapping behaviour, over 100 seeds each (random ports,
/// the prober's local ports and transaction IDs): the classification and its accuracy.
#[test]
fn classifies_port_allocation_over_seeded_trials() {
    const TRIALS: u64 = 100;
    let kinds = [
        PortAllocation_::Preserving,
        PortAllocation_::Sequential(1),
        PortAllocation_::Sequential(2),
        PortAllocation_::Sequential(7),
        PortAllocation_::Random,
    ];
    let mut table = String::new();
    let (mut right, mut all) = (0, 0);
    for kind in kinds {
        for mapping in sim::Behaviour::ALL {
            let mut ok = 0;
            for seed in 0..TRIALS {
                let mut n = nat(mapping, APD, false);
                n.allocation = kind;
                let extra = Extra {
                    seed,
                    ..Extra::default()
                };
                let (r, events) = run_extra(n, false, |_| {}, None, extra);
                let want = expect_allocation(kind);
                if r.port_allocation == Some(want) {
                    ok += 1;
                }
                // The progress event says the same as the report.
                assert!(
                    events
                        .iter()
                        .any(|e| matches!(e, NetcheckEvent::PortAllocation(k) if Some(*k) == r.port_allocation)),
                    "{events:#?}"
                );
                // The other tests are not disturbed by the extra mappings.
                assert_eq!(r.mapping, expect(mapping), "{kind:?} seed {seed}: {r:#?}");
                assert_eq!(r.filtering, Behaviour::AddressAndPortDependent);
            }
            right += ok;
            all += TRIALS;
            table.push_str(&format!("{kind:?} {mapping:?}: {ok}/{TRIALS}\n"));
        }
    }
    println!("{table}port allocation classified right in {right} of {all} seeded trials");
    // Random ports look sequential about once in 10^8 runs (see MAX_SEQUENTIAL_STEP);
    // the rest is exact in the virtual network.
    assert_eq!(right, all, "{table}");
}

/// A sequential NAT shared with a host that opens mappings of its own in between: gaps in
/// the sequence. With a gap before some probes the step is still the NAT's; with one
/// before every probe (a busy NAT) the step seen is larger, a multiple of the NAT's, and
/// the kind is still sequential.
#[test]
fn sequential_with_other_traffic_interleaved() {
    for seed in 0..50 {
        for delta in [1u16, 3] {
            for busy in [false, true] {
                let mut n = nat(APD, APD, false);
                n.allocation = PortAllocation_::Sequential(delta);
                // Probes follow each other every 30 ms (a round trip).
                let every = if busy { 20 + seed % 8 } else { 50 + seed % 40 };
                let extra = Extra {
                    seed,
                    noise_every: Some(Duration::from_millis(every)),
                    ..Extra::default()
                };
                let r = run_extra(n, false, |_| {}, None, extra).0;
                let got = r.port_allocation.and_then(PortAllocation::delta);
                let case = format!("seed {seed}, step {delta}, busy {busy}: {r:#?}");
                let d = got.unwrap_or_else(|| panic!("not sequential: {case}"));
                if busy {
                    assert_eq!(d % i32::from(delta), 0, "{case}");
                } else {
                    assert_eq!(d, i32::from(delta), "{case}");
                }
            }
        }
    }
}

/// A preserving NAT whose preferred port for one probe is held by another host: that one
/// mapping gets another port, the verdict stays preserving.
#[test]
fn preserving_with_a_taken_port() {
    for seed in 0..20 {
        for i in 0..DEFAULT_PORT_ALLOCATION_PROBES {
            let taken = local_port(seed, 2 + i);
            let mut n = nat(EI, APD, false);
            n.allocation = PortAllocation_::Preserving;
            let extra = Extra {
                seed,
                taken_port: Some(taken),
                ..Extra::default()
            };
            let r = run_extra(n, false, |_| {}, None, extra).0;
            assert_eq!(
                r.port_allocation,
                Some(PortAllocation::Preserving),
                "seed {seed}, port {taken} taken: {r:#?}"
            );
        }
    }
}

#[test]
fn port_allocation_not_tested_or_not_enough_evidence() {
    // Disabled: not tested, and no extra sockets are needed.
    let r = run(nat(EI, APD, false), false, |c| c.port_allocation_probes = 0);
    assert_eq!(r.port_allocation, None);
    let c = NetcheckConfig {
        port_allocation_probes: 0,
        ..NetcheckConfig::default()
    };
    assert_eq!(c.sockets_needed(), 2);
    // Two probes are too few to tell.
    let r = run(nat(EI, APD, false), false, |c| c.port_allocation_probes = 2);
    assert_eq!(r.port_allocation, Some(PortAllocation::Unknown));
    assert!(
        r.notes.iter().any(|n| n.contains("port allocation")),
        "{r:#?}"
    );
    // No UDP: probed, nothing known.
    let r = run(nat(EI, EI, false), false, |c| {
        c.servers[0].addr = "203.0.113.50:3478".parse().unwrap();
    });
    assert_eq!(r.port_allocation, Some(PortAllocation::Unknown));
    // Plain servers (no RFC 5780) are reflectors too.
    let mut n = nat(APD, APD, false);
    n.allocation = PortAllocation_::Sequential(2);
    let r = run(n, true, |_| {});
    assert_eq!(
        r.port_allocation,
        Some(PortAllocation::Sequential { delta: 2 })
    );
}

#[test]
fn the_classifier_and_the_attribute() {
    use PortAllocation::*;
    assert_eq!(classify_port_allocation(&[(1, 1), (2, 2)]), Unknown);
    assert_eq!(
        classify_port_allocation(&[(1000, 1000), (2000, 2001), (3000, 3000)]),
        Preserving
    );
    assert_eq!(
        classify_port_allocation(&[(1000, 40001), (2000, 40002), (3000, 40003)]),
        Sequential { delta: 1 }
    );
    // Gaps: the smallest step is the NAT's.
    assert_eq!(
        classify_port_allocation(&[(1, 100), (2, 104), (3, 106), (4, 112), (5, 114)]),
        Sequential { delta: 2 }
    );
    // Counting down.
    assert_eq!(
        classify_port_allocation(&[(1, 500), (2, 499), (3, 498)]),
        Sequential { delta: -1 }
    );
    // One wrap-around among four steps is forgiven, not among two.
    assert_eq!(sequential_step(&[65533, 65534, 65535, 1024, 1025]), Some(1));
    assert_eq!(sequential_step(&[65535, 1024, 1025]), None);
    assert_eq!(
        classify_port_allocation(&[(1, 31000), (2, 52011), (3, 7777), (4, 9000)]),
        Random
    );
    // Steps of mixed sign are not sequential.
    assert_eq!(sequential_step(&[100, 101, 100, 101]), None);

    for (value, want) in [
        ("sequential 1", Some(Sequential { delta: 1 })),
        ("SEQUENTIAL -2 later-words", Some(Sequential { delta: -2 })),
        ("  preserving", Some(Preserving)),
        ("random", Some(Random)),
        ("sequential", None),
        ("sequential 0", None),
        ("sequential 65", None),
        ("sequential x", None),
        ("unknown", None),
        ("", None),
    ] {
        assert_eq!(PortAllocation::parse_attribute(value), want, "{value:?}");
    }
    for k in [Preserving, Random, Sequential { delta: 3 }] {
        let v = k.to_attribute().unwrap();
        assert_eq!(PortAllocation::parse_attribute(&v), Some(k));
    }
    assert_eq!(Unknown.to_attribute(), None);
}
