use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Delivers everything in flight; returns the deliveries.
fn drain(net: &mut Network, now: &mut Instant) -> Vec<Delivery> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let Some(t) = net.poll_timeout() else {
            return out;
        };
        *now = (*now).max(t);
        while let Some(d) = net.poll_delivery(*now) {
            out.push(d);
        }
    }
    panic!("network never drained");
}

const S1: &str = "203.0.113.10:3478";
const S2: &str = "203.0.113.11:3478";
const HOST: &str = "192.168.1.10:5000";

/// One host behind `config`, two public servers; returns the external endpoints the
/// servers saw for one socket of the host.
fn mapped(config: NatConfig) -> (SocketAddr, SocketAddr, SocketAddr) {
    let mut net = Network::new(1, Conditions::default());
    let nat = net.add_nat(ip("198.51.100.1"), config);
    net.add_host(ip("192.168.1.10"), Some(nat));
    net.add_host(ip("203.0.113.10"), None);
    net.add_host(ip("203.0.113.11"), None);
    let mut now = Instant::now();
    net.send(now, udp(a(HOST), a(S1), b"1"));
    net.send(now, udp(a(HOST), a("203.0.113.10:3479"), b"2"));
    net.send(now, udp(a(HOST), a(S2), b"3"));
    let d = drain(&mut net, &mut now);
    assert_eq!(d.len(), 3);
    (
        d[0].transmit.source,
        d[1].transmit.source,
        d[2].transmit.source,
    )
}

#[test]
fn mapping_behaviours_are_what_rfc_4787_says() {
    let n = |m| NatConfig::new(m, Behaviour::EndpointIndependent);
    let (x, y, z) = mapped(n(Behaviour::EndpointIndependent));
    assert_eq!(x, a("198.51.100.1:5000"), "ports preserved");
    assert!(x == y && y == z);
    let (x, y, z) = mapped(n(Behaviour::AddressDependent));
    assert_eq!(x, y);
    assert_ne!(x, z);
    let (x, y, z) = mapped(n(Behaviour::AddressAndPortDependent));
    assert!(x != y && y != z && x != z);
}

#[test]
fn port_allocation_kinds() {
    let mut c = NatConfig::new(
        Behaviour::AddressAndPortDependent,
        Behaviour::EndpointIndependent,
    );
    c.allocation = PortAllocation::Sequential(2);
    let (x, y, z) = mapped(c);
    assert_eq!(y.port(), x.port() + 2);
    assert_eq!(z.port(), y.port() + 2);
    c.allocation = PortAllocation::Random;
    let (x, _, _) = mapped(c);
    assert_ne!(x.port(), 5000);
    assert!(x.port() >= 1024);
}

/// A host behind a NAT sends to S1:3478; who may answer to its mapping?
fn filtered(filtering: Behaviour) -> [bool; 3] {
    let mut net = Network::new(2, Conditions::default());
    let nat = net.add_nat(
        ip("198.51.100.1"),
        NatConfig::new(Behaviour::EndpointIndependent, filtering),
    );
    net.add_host(ip("192.168.1.10"), Some(nat));
    net.add_host(ip("203.0.113.10"), None);
    net.add_host(ip("203.0.113.11"), None);
    let mut now = Instant::now();
    net.send(now, udp(a(HOST), a(S1), b"out"));
    let out = drain(&mut net, &mut now);
    let mapping = out[0].transmit.source;
    let mut got = [false; 3];
    for (i, from) in [S1, "203.0.113.10:4000", S2].into_iter().enumerate() {
        net.send(now, udp(a(from), mapping, b"in"));
        let d = drain(&mut net, &mut now);
        got[i] = d.len() == 1;
        if let Some(d) = d.first() {
            assert_eq!(d.transmit.destination, a(HOST));
            assert_eq!(d.host, ip("192.168.1.10"));
        }
    }
    got
}

#[test]
fn filtering_behaviours_are_what_rfc_4787_says() {
    assert_eq!(filtered(Behaviour::EndpointIndependent), [true, true, true]);
    assert_eq!(filtered(Behaviour::AddressDependent), [true, true, false]);
    assert_eq!(
        filtered(Behaviour::AddressAndPortDependent),
        [true, false, false]
    );
}

#[test]
fn bindings_time_out_unless_refreshed_by_outbound_traffic() {
    let mut c = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    c.binding_timeout = Duration::from_secs(30);
    let mut net = Network::new(3, Conditions::default());
    let nat = net.add_nat(ip("198.51.100.1"), c);
    net.add_host(ip("192.168.1.10"), Some(nat));
    net.add_host(ip("203.0.113.10"), None);
    let mut now = Instant::now();
    net.send(now, udp(a(HOST), a(S1), b"out"));
    let mapping = drain(&mut net, &mut now)[0].transmit.source;
    // Keepalives every 20 s keep it for minutes.
    for _ in 0..10 {
        now += Duration::from_secs(20);
        net.send(now, udp(a(HOST), a(S1), b"keepalive"));
        drain(&mut net, &mut now);
        net.send(now, udp(a(S1), mapping, b"in"));
        assert_eq!(drain(&mut net, &mut now).len(), 1);
    }
    // Inbound traffic alone does not refresh it (RFC 4787 REQ-6).
    now += Duration::from_secs(31);
    net.send(now, udp(a(S1), mapping, b"late"));
    assert!(drain(&mut net, &mut now).is_empty());
    assert!(net.stats().dropped >= 1);
    // Flushing drops bindings at once.
    net.send(now, udp(a(HOST), a(S1), b"out"));
    let m2 = drain(&mut net, &mut now)[0].transmit.source;
    net.flush(nat);
    net.send(now, udp(a(S1), m2, b"in"));
    assert!(drain(&mut net, &mut now).is_empty());
}

#[test]
fn hairpinning_and_the_lan() {
    for hairpin in [false, true] {
        let mut c = NatConfig::new(
            Behaviour::EndpointIndependent,
            Behaviour::EndpointIndependent,
        );
        c.hairpin = hairpin;
        let mut net = Network::new(4, Conditions::default());
        let nat = net.add_nat(ip("198.51.100.1"), c);
        net.add_host(ip("192.168.1.10"), Some(nat));
        net.add_host(ip("192.168.1.11"), Some(nat));
        net.add_host(ip("203.0.113.10"), None);
        let mut now = Instant::now();
        net.send(now, udp(a("192.168.1.11:6000"), a(S1), b"open"));
        let m = drain(&mut net, &mut now)[0].transmit.source;
        // Through the external address.
        net.send(now, udp(a(HOST), m, b"hairpin"));
        let d = drain(&mut net, &mut now);
        assert_eq!(d.len(), usize::from(hairpin), "hairpin {hairpin}");
        if let Some(d) = d.first() {
            assert_eq!(d.transmit.destination, a("192.168.1.11:6000"));
            assert_eq!(d.transmit.source.ip(), ip("198.51.100.1"));
        }
        // Directly on the LAN, always, untranslated.
        net.send(now, udp(a(HOST), a("192.168.1.11:6000"), b"lan"));
        let d = drain(&mut net, &mut now);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].transmit.source, a(HOST));
    }
    // A private address behind another NAT is unreachable from outside.
    let mut net = Network::new(5, Conditions::default());
    let n1 = net.add_nat(
        ip("198.51.100.1"),
        NatConfig::new(
            Behaviour::EndpointIndependent,
            Behaviour::EndpointIndependent,
        ),
    );
    let n2 = net.add_nat(
        ip("198.51.100.2"),
        NatConfig::new(
            Behaviour::EndpointIndependent,
            Behaviour::EndpointIndependent,
        ),
    );
    net.add_host(ip("192.168.1.10"), Some(n1));
    net.add_host(ip("10.0.0.10"), Some(n2));
    let mut now = Instant::now();
    net.send(now, udp(a("10.0.0.10:7000"), a(HOST), b"private"));
    assert!(drain(&mut net, &mut now).is_empty());
}

#[test]
fn a_binding_timeout_of_duration_max_never_expires() {
    let mut c = NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    );
    c.binding_timeout = Duration::MAX;
    let mut net = Network::new(3, Conditions::default());
    let nat = net.add_nat(ip("198.51.100.1"), c);
    net.add_host(ip("192.168.1.10"), Some(nat));
    net.add_host(ip("203.0.113.10"), None);
    let mut now = Instant::now();
    net.send(now, udp(a(HOST), a(S1), b"out"));
    let mapping = drain(&mut net, &mut now)[0].transmit.source;
    now += Duration::from_secs(30 * 24 * 3600);
    net.send(now, udp(a(S1), mapping, b"a month later"));
    assert_eq!(drain(&mut net, &mut now).len(), 1);
    // The mapping is still the same one.
    net.send(now, udp(a(HOST), a(S1), b"out"));
    assert_eq!(drain(&mut net, &mut now)[0].transmit.source, mapping);
}

/// Behind an address-dependent mapping and filtering with hairpinning: host .11 opens a
/// mapping toward S1; then host .10 (another host) and .11 itself (a second binding,
/// since the destination differs) send to it. Returns what arrived at .11.
fn hairpinned(hairpin_filtering: bool) -> Vec<Delivery> {
    let mut c = NatConfig::new(Behaviour::AddressDependent, Behaviour::AddressDependent);
    c.hairpin = true;
    c.hairpin_filtering = hairpin_filtering;
    let mut net = Network::new(4, Conditions::default());
    let nat = net.add_nat(ip("198.51.100.1"), c);
    net.add_host(ip("192.168.1.10"), Some(nat));
    net.add_host(ip("192.168.1.11"), Some(nat));
    net.add_host(ip("203.0.113.10"), None);
    let mut now = Instant::now();
    net.send(now, udp(a("192.168.1.11:6000"), a(S1), b"open"));
    let m = drain(&mut net, &mut now)[0].transmit.source;
    net.send(now, udp(a(HOST), m, b"from the other host"));
    net.send(now, udp(a("192.168.1.11:6000"), m, b"to itself"));
    let d = drain(&mut net, &mut now);
    for d in &d {
        assert_eq!(d.transmit.destination, a("192.168.1.11:6000"));
        assert_eq!(d.transmit.source.ip(), ip("198.51.100.1"));
        assert_ne!(d.transmit.source, m, "a new address-dependent binding");
    }
    d
}

#[test]
fn hairpinned_datagrams_skip_the_filter_only_when_told() {
    // Filtered: neither sender was ever sent to from m's binding (only S1 was).
    assert!(hairpinned(true).is_empty());
    let d = hairpinned(false);
    let contents: Vec<&[u8]> = d.iter().map(|d| &d.transmit.contents[..]).collect();
    assert_eq!(contents, [&b"from the other host"[..], &b"to itself"[..]]);
}

#[test]
fn an_alg_rewrites_addresses_in_payloads_both_ways() {
    for alg in [false, true] {
        let mut c = NatConfig::new(
            Behaviour::EndpointIndependent,
            Behaviour::EndpointIndependent,
        );
        c.alg = alg;
        let mut net = Network::new(6, Conditions::default());
        let nat = net.add_nat(ip("198.51.100.1"), c);
        net.add_host(ip("192.168.1.10"), Some(nat));
        net.add_host(ip("203.0.113.10"), None);
        let mut now = Instant::now();
        // "I am 192.168.1.10" twice, and an address the ALG leaves alone.
        let out = [
            b"me",
            &[192, 168, 1, 10][..],
            &[192, 168, 1, 10],
            &[10, 0, 0, 1],
        ]
        .concat();
        net.send(now, udp(a(HOST), a(S1), &out));
        let d = drain(&mut net, &mut now);
        let seen = &d[0].transmit;
        let expect = if alg {
            [
                b"me",
                &[198, 51, 100, 1][..],
                &[198, 51, 100, 1],
                &[10, 0, 0, 1],
            ]
            .concat()
        } else {
            out.clone()
        };
        assert_eq!(seen.contents, expect, "alg {alg}");
        // "You are 198.51.100.1" (as a plain MAPPED-ADDRESS would say), and an XORed copy.
        let xored: Vec<u8> = [198u8, 51, 100, 1].iter().map(|b| b ^ 0x21).collect();
        let back = [b"you", &[198, 51, 100, 1][..], &xored].concat();
        net.send(now, udp(a(S1), seen.source, &back));
        let d = drain(&mut net, &mut now);
        let expect = if alg {
            [b"you", &[192, 168, 1, 10][..], &xored].concat()
        } else {
            back.clone()
        };
        assert_eq!(d[0].transmit.contents, expect, "alg {alg}");
        assert_eq!(d[0].transmit.destination, a(HOST));
    }
}

#[test]
fn the_alg_rewrite_matches_whole_addresses_of_one_family() {
    let v6: IpAddr = ip("2001:db8::1");
    let v6b: IpAddr = ip("2001:db8::2");
    let mut p = [&[0u8][..], &ip6_octets(v6), &[1, 2]].concat();
    rewrite_address(&mut p, v6, v6b);
    assert_eq!(p, [&[0u8][..], &ip6_octets(v6b), &[1, 2]].concat());
    // Across families nothing changes; a partial address at the end neither.
    let mut p = vec![198, 51, 100, 1, 198, 51, 100];
    rewrite_address(&mut p, ip("198.51.100.1"), v6);
    assert_eq!(p, [198, 51, 100, 1, 198, 51, 100]);
    rewrite_address(&mut p, ip("198.51.100.1"), ip("10.0.0.2"));
    assert_eq!(p, [10, 0, 0, 2, 198, 51, 100]);
}

fn ip6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

#[test]
fn loss_latency_jitter_and_determinism() {
    let run = |seed| {
        let mut net = Network::new(
            seed,
            Conditions {
                latency: Duration::from_millis(50),
                jitter: Duration::from_millis(30),
                loss: 0.3,
            },
        );
        net.add_host(ip("203.0.113.10"), None);
        net.add_host(ip("203.0.113.11"), None);
        let start = Instant::now();
        let mut now = start;
        for i in 0..1000u16 {
            net.send(now, udp(a(S1), a(S2), &i.to_be_bytes()));
            now += Duration::from_millis(1);
        }
        let d = drain(&mut net, &mut now);
        let order: Vec<u16> = d
            .iter()
            .map(|d| u16::from_be_bytes([d.transmit.contents[0], d.transmit.contents[1]]))
            .collect();
        (order, net.stats(), now - start)
    };
    let (order, stats, took) = run(7);
    assert_eq!(stats.sent, 1000);
    assert_eq!(stats.delivered + stats.lost, 1000);
    assert!((200..400).contains(&stats.lost), "{stats:?}");
    assert!(order.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
    assert!(took >= Duration::from_millis(999 + 50));
    // Same seed, same world; another seed, another.
    assert_eq!(run(7).0, order);
    assert_ne!(run(8).0, order);
}

#[test]
fn the_oracle_matches_the_behaviours() {
    use Behaviour::*;
    let n = |m, f| NatConfig::new(m, f);
    assert!(
        n(EndpointIndependent, AddressAndPortDependent)
            .direct_possible_with(&n(EndpointIndependent, AddressAndPortDependent))
    );
    assert!(
        n(EndpointIndependent, EndpointIndependent)
            .direct_possible_with(&n(AddressAndPortDependent, AddressAndPortDependent))
    );
    assert!(
        !n(EndpointIndependent, AddressAndPortDependent)
            .direct_possible_with(&n(AddressAndPortDependent, AddressAndPortDependent))
    );
    assert!(
        !n(AddressAndPortDependent, EndpointIndependent)
            .direct_possible_with(&n(AddressAndPortDependent, EndpointIndependent))
    );
}
