//! The prober against the sans-IO server through a modelled NAT, on a virtual clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::stun::{ServerConfig, StunServer};
use crate::{Protocol, Received};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dep {
    Independent,
    Address,
    AddressPort,
}

struct Nat {
    public: IpAddr,
    mapping: Dep,
    filtering: Dep,
    hairpin: bool,
    /// Rewrites the public IP to the internal one wherever it appears in inbound payloads,
    /// as an address-rewriting ALG does.
    alg: bool,
    /// Mappings idle (no outbound traffic) this long are gone.
    idle_timeout: Option<Duration>,
    next_port: u16,
    /// (internal, key) -> public port
    maps: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port -> (internal, contacted remotes)
    ports: HashMap<u16, (SocketAddr, Vec<SocketAddr>)>,
    /// public port -> last outbound packet
    last_used: HashMap<u16, Instant>,
}

impl Nat {
    fn new(mapping: Dep, filtering: Dep, hairpin: bool) -> Self {
        Nat {
            public: "198.51.100.1".parse().unwrap(),
            mapping,
            filtering,
            hairpin,
            alg: false,
            idle_timeout: None,
            next_port: 40000,
            maps: HashMap::new(),
            ports: HashMap::new(),
            last_used: HashMap::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        let Some(idle) = self.idle_timeout else {
            return;
        };
        let dead: Vec<u16> = self
            .last_used
            .iter()
            .filter(|(_, t)| now - **t >= idle)
            .map(|(p, _)| *p)
            .collect();
        for p in dead {
            self.last_used.remove(&p);
            self.ports.remove(&p);
            self.maps.retain(|_, v| *v != p);
        }
    }

    fn outbound(&mut self, now: Instant, from: SocketAddr, to: SocketAddr) -> SocketAddr {
        self.expire(now);
        let key = match self.mapping {
            Dep::Independent => None,
            Dep::Address => Some(SocketAddr::new(to.ip(), 0)),
            Dep::AddressPort => Some(to),
        };
        let port = *self.maps.entry((from, key)).or_insert_with(|| {
            self.next_port += 1;
            self.next_port
        });
        let entry = self.ports.entry(port).or_insert((from, Vec::new()));
        entry.1.push(to);
        self.last_used.insert(port, now);
        SocketAddr::new(self.public, port)
    }

    fn inbound(&mut self, now: Instant, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        self.expire(now);
        let (internal, contacted) = self.ports.get(&to.port())?;
        let ok = match self.filtering {
            Dep::Independent => true,
            Dep::Address => contacted.iter().any(|c| c.ip() == from.ip()),
            Dep::AddressPort => contacted.contains(&from),
        };
        ok.then_some(*internal)
    }
}

fn run(nat: &mut Nat, plain: bool, config_edit: impl FnOnce(&mut NetcheckConfig)) -> Report {
    run_events(nat, plain, config_edit, None).0
}

/// Runs a netcheck through `nat` on a virtual clock; with `stop_after`, calls
/// [`Prober::finish_early`] that long after the start. Returns the report and every
/// progress event before it.
fn run_events(
    nat: &mut Nat,
    plain: bool,
    config_edit: impl FnOnce(&mut NetcheckConfig),
    stop_after: Option<Duration>,
) -> (Report, Vec<NetcheckEvent>) {
    let primary: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let alternate: SocketAddr = "203.0.113.2:3479".parse().unwrap();
    let mut server = StunServer::new(if plain {
        ServerConfig::new(primary)
    } else {
        ServerConfig::rfc5780(primary, alternate)
    })
    .unwrap();
    let mut plain2 = StunServer::new(ServerConfig::new("192.0.2.9:3478".parse().unwrap())).unwrap();
    let mut config = NetcheckConfig {
        servers: vec![ServerSpec {
            label: "lab".into(),
            addr: primary,
        }],
        ..NetcheckConfig::default()
    };
    config_edit(&mut config);
    let locals: Vec<SocketAddr> = (0..config.sockets_needed())
        .map(|i| SocketAddr::new("10.0.0.2".parse().unwrap(), 5000 + i as u16))
        .collect();
    let t0 = Instant::now();
    let mut now = t0;
    let mut p = Prober::new(now, config, locals, [7; 32]).unwrap();
    let latency = Duration::from_millis(15);
    let mut in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>, bool)> = Vec::new();
    let stop_at = stop_after.map(|d| t0 + d);
    let mut events = Vec::new();
    for _ in 0..100_000 {
        while let Some(t) = p.poll_transmit() {
            if t.destination.ip() == nat.public {
                if !nat.hairpin {
                    continue;
                }
                let src = nat.outbound(now, t.source, t.destination);
                if let Some(internal) = nat.ports.get(&t.destination.port()).map(|e| e.0) {
                    in_flight.push((now + latency, src, internal, t.contents, true));
                }
                continue;
            }
            let src = nat.outbound(now, t.source, t.destination);
            in_flight.push((now + latency, src, t.destination, t.contents, false));
        }
        while let Some(ev) = p.poll_event() {
            if let NetcheckEvent::Done(r) = ev {
                return (*r, events);
            }
            events.push(ev);
        }
        // Deliver what is due.
        in_flight.sort_by_key(|f| f.0);
        let next_packet = in_flight.first().map(|f| f.0);
        let next = [next_packet, p.poll_timeout(), stop_at.filter(|s| *s > now)]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        now = now.max(next);
        let due: Vec<_> = in_flight.iter().filter(|f| f.0 <= now).cloned().collect();
        in_flight.retain(|f| f.0 > now);
        for (_, src, dst, bytes, to_host) in due {
            if to_host {
                let rx = Received {
                    proto: Protocol::Udp,
                    source: src,
                    destination: dst,
                    contents: &bytes,
                };
                p.handle_input(now, rx);
                continue;
            }
            if dst.ip() == nat.public {
                if let Some(internal) = nat.inbound(now, src, dst) {
                    let mut bytes = bytes;
                    if let (true, IpAddr::V4(public), IpAddr::V4(private)) =
                        (nat.alg, nat.public, internal.ip())
                    {
                        let (from, to) = (public.octets(), private.octets());
                        for i in 0..bytes.len().saturating_sub(3) {
                            if bytes[i..i + 4] == from {
                                bytes[i..i + 4].copy_from_slice(&to);
                            }
                        }
                    }
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: src,
                        destination: internal,
                        contents: &bytes,
                    };
                    p.handle_input(now, rx);
                }
                continue;
            }
            let srv = if dst.ip().to_string() == "192.0.2.9" {
                &mut plain2
            } else {
                &mut server
            };
            if !srv_listens(srv, dst) {
                continue;
            }
            srv.handle_input(
                now,
                Received {
                    proto: Protocol::Udp,
                    source: src,
                    destination: dst,
                    contents: &bytes,
                },
            );
            while let Some(t) = srv.poll_transmit() {
                in_flight.push((now + latency, t.source, t.destination, t.contents, false));
            }
        }
        if stop_at.is_some_and(|s| now >= s) {
            p.finish_early();
        } else {
            p.handle_timeout(now);
        }
        assert!(now - t0 < Duration::from_secs(600), "simulation ran away");
    }
    panic!("prober never finished");
}

fn srv_listens(s: &StunServer, a: SocketAddr) -> bool {
    s.local_addresses().contains(&a)
}

#[test]
fn classifies_every_mapping_and_filtering_combination() {
    for mapping in [Dep::Independent, Dep::Address, Dep::AddressPort] {
        for filtering in [Dep::Independent, Dep::Address, Dep::AddressPort] {
            for hairpin in [false, true] {
                let mut nat = Nat::new(mapping, filtering, hairpin);
                let r = run(&mut nat, false, |_| {});
                let expect = |d| match d {
                    Dep::Independent => Behaviour::EndpointIndependent,
                    Dep::Address => Behaviour::AddressDependent,
                    Dep::AddressPort => Behaviour::AddressAndPortDependent,
                };
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
            addr: "192.0.2.9:3478".parse().unwrap(),
        });
    };
    let r = run(
        &mut Nat::new(Dep::Independent, Dep::AddressPort, false),
        true,
        two,
    );
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
    assert_eq!(r.filtering, Behaviour::Unknown);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("filtering cannot be determined")),
        "{r:#?}"
    );
    let r = run(
        &mut Nat::new(Dep::AddressPort, Dep::AddressPort, false),
        true,
        two,
    );
    assert_eq!(r.mapping, Behaviour::Unknown);
    assert!(
        r.notes.iter().any(|n| n.contains("varies by destination")),
        "{r:#?}"
    );
    let r = run(
        &mut Nat::new(Dep::Independent, Dep::AddressPort, false),
        true,
        |_| {},
    );
    assert_eq!(r.mapping, Behaviour::Unknown);
}

#[test]
fn unreachable_server_reports_no_udp() {
    let mut nat = Nat::new(Dep::Independent, Dep::Independent, false);
    let r = run(&mut nat, false, |c| {
        c.servers[0].addr = "203.0.113.50:3478".parse().unwrap();
    });
    assert!(!r.udp);
    assert_eq!(r.mapping, Behaviour::Unknown);
    assert_eq!(r.hairpinning, None);
    assert_eq!(r.servers[0].rtt, None);
}

#[test]
fn lifetime_discovery_in_parallel() {
    let mut nat = Nat::new(Dep::Independent, Dep::AddressPort, false);
    let r = run(&mut nat, false, |c| {
        c.lifetime_probes = vec![Duration::from_secs(5), Duration::from_secs(30)];
    });
    // The model never expires mappings, so both intervals survive.
    let l = r.binding_lifetime.unwrap();
    assert_eq!(l.at_least, Some(Duration::from_secs(30)));
    assert_eq!(l.less_than, None);

    let mut nat = Nat::new(Dep::Independent, Dep::AddressPort, false);
    nat.idle_timeout = Some(Duration::from_secs(25));
    let r = run(&mut nat, false, |c| {
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
        Err(NetcheckError::WrongSocketCount { needed: 2, got: 1 })
    ));
}

#[test]
fn address_rewriting_alg_is_detected() {
    let mut nat = Nat::new(Dep::Independent, Dep::Independent, false);
    nat.alg = true;
    let r = run(&mut nat, false, |_| {});
    assert_eq!(r.alg_rewrites, Some(true), "{r:#?}");
    // XOR-MAPPED-ADDRESS survives the ALG, so the public address is still right.
    assert_eq!(r.public[0].ip(), nat.public);
    assert_eq!(r.mapping, Behaviour::EndpointIndependent);
}

#[test]
fn finishing_early_keeps_what_was_found() {
    let probes = vec![
        Duration::from_secs(5),
        Duration::from_secs(20),
        Duration::from_secs(60),
    ];
    let mut nat = Nat::new(Dep::Independent, Dep::AddressPort, true);
    nat.idle_timeout = Some(Duration::from_secs(45));
    // Stopped at 30 s: the 5 s and 20 s intervals have their answers, the 60 s one not.
    let (r, events) = run_events(
        &mut nat,
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
    let mut nat = Nat::new(Dep::Independent, Dep::AddressPort, true);
    nat.idle_timeout = Some(Duration::from_secs(45));
    let (r, events) = run_events(&mut nat, false, |c| c.lifetime_probes = probes, None);
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
    let locals = vec!["10.0.0.2:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap()];
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
    // Only once.
    p.finish_early();
    assert!(p.poll_event().is_none());
}
