//! The prober against the sans-IO STUN servers through a NAT of the virtual network
//! ([`crate::sim`]), every machine a host of one [`Sim`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{self, Conditions, Host, NatConfig, Network, PortAllocation, Sim};
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
        allocation: PortAllocation::Sequential(1),
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

/// Runs a netcheck through `nat` on a virtual clock, 15 ms each way; with `stop_after`,
/// calls [`Prober::finish_early`] that long after the start. Returns the report and
/// every progress event before it.
fn run_events(
    nat: NatConfig,
    plain: bool,
    config_edit: impl FnOnce(&mut NetcheckConfig),
    stop_after: Option<Duration>,
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
        .map(|i| SocketAddr::new(ip(PRIVATE), 5000 + i as u16))
        .collect();
    let t0 = Instant::now();
    let mut p = Prober::new(t0, config, locals, [7; 32]).unwrap();

    let mut net = Network::new(
        7,
        Conditions {
            latency: Duration::from_millis(15),
            jitter: Duration::ZERO,
            loss: 0.0,
        },
    );
    let nat = net.add_nat(ip(PUBLIC), nat);
    net.add_host(ip(PRIVATE), Some(nat));
    let mut server_ips: Vec<IpAddr> = server.local_addresses().iter().map(|a| a.ip()).collect();
    server_ips.dedup();
    let mut events = Vec::new();
    let mut sim = Sim::new(&mut net, t0);
    sim.add(Host::new(&mut p, [ip(PRIVATE)]).collect_events(&mut events));
    sim.add(Host::new(&mut server, server_ips));
    let plain2_ip = PLAIN2.parse::<SocketAddr>().unwrap().ip();
    sim.add(Host::new(&mut plain2, [plain2_ip]));
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
        Err(NetcheckError::WrongSocketCount { needed: 2, got: 1 })
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
