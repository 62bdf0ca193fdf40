use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Behaviour, Conditions, NatConfig, udp};

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const PINGER: &str = "192.0.2.1:4000";
const ECHO: &str = "203.0.113.5:7";

/// Sends `count` numbered pings to [`ECHO`], one every `every`; reports each pong's number.
struct Pinger {
    from: SocketAddr,
    next_at: Instant,
    every: Duration,
    sent: u32,
    count: u32,
    out: VecDeque<Transmit>,
    events: VecDeque<u32>,
}

impl Pinger {
    fn new(from: SocketAddr, t0: Instant, every: Duration, count: u32) -> Self {
        Self {
            from,
            next_at: t0,
            every,
            sent: 0,
            count,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

impl Machine for Pinger {
    type Event = u32;
    type Verdict<'a> = bool;
    fn handle_input<'a>(&mut self, _now: Instant, rx: Received<'a>) -> bool {
        let Ok(n) = <[u8; 4]>::try_from(rx.contents) else {
            return false;
        };
        self.events.push_back(u32::from_be_bytes(n));
        true
    }
    fn handle_timeout(&mut self, now: Instant) {
        while self.sent < self.count && self.next_at <= now {
            self.out
                .push_back(udp(self.from, a(ECHO), &self.sent.to_be_bytes()));
            self.sent += 1;
            self.next_at += self.every;
        }
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (self.sent < self.count).then_some(self.next_at)
    }
    fn poll_event(&mut self) -> Option<u32> {
        self.events.pop_front()
    }
}

/// Answers every datagram to its source; reports the sources it saw.
#[derive(Default)]
struct Echo {
    out: VecDeque<Transmit>,
    seen: VecDeque<SocketAddr>,
}

impl Machine for Echo {
    type Event = SocketAddr;
    type Verdict<'a> = ();
    fn handle_input<'a>(&mut self, _now: Instant, rx: Received<'a>) {
        self.seen.push_back(rx.source);
        self.out
            .push_back(udp(rx.destination, rx.source, rx.contents));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_event(&mut self) -> Option<SocketAddr> {
        self.seen.pop_front()
    }
}

/// Pings through `conditions` with `seed`; returns (ms since start, pong number) for each
/// pong, and the network's stats.
fn ping(seed: u64, conditions: Conditions, count: u32) -> (Vec<(u128, u32)>, crate::sim::Stats) {
    let t0 = Instant::now();
    let mut net = Network::new(seed, conditions);
    let mut pinger = Pinger::new(a(PINGER), t0, Duration::from_millis(1), count);
    let mut echo = Echo::default();
    let mut pongs = Vec::new();
    let mut sim = Sim::new(&mut net, t0);
    sim.add(Host::new(&mut pinger, [ip("192.0.2.1")]).collect_events(&mut pongs));
    sim.add(Host::new(&mut echo, [ip("203.0.113.5")]));
    sim.run_for(Duration::from_secs(10));
    assert_eq!(sim.now(), t0 + Duration::from_secs(10));
    drop(sim);
    let pongs = pongs
        .into_iter()
        .map(|(at, n)| ((at - t0).as_millis(), n))
        .collect();
    (pongs, net.stats())
}

#[test]
fn latency_is_the_one_way_delay_each_way() {
    let (pongs, stats) = ping(1, Conditions::default(), 3);
    assert_eq!(pongs, [(20, 0), (21, 1), (22, 2)], "10 ms each way");
    assert_eq!(stats.delivered, 6);
    let zero = Conditions {
        latency: Duration::ZERO,
        ..Conditions::default()
    };
    let (pongs, _) = ping(1, zero, 2);
    assert_eq!(pongs, [(0, 0), (1, 1)], "answered at the same instant");
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let rough = Conditions {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(30),
        loss: 0.2,
    };
    let (first, s1) = ping(42, rough, 200);
    let (again, s2) = ping(42, rough, 200);
    assert_eq!(first, again);
    assert_eq!(s1, s2);
    let (other, _) = ping(43, rough, 200);
    assert_ne!(first, other);
}

#[test]
fn loss_is_honoured() {
    let lossy = Conditions {
        loss: 0.3,
        ..Conditions::default()
    };
    let (pongs, stats) = ping(7, lossy, 1000);
    // Each pong survives two trips: 0.7² ≈ 49 %.
    assert!((400..600).contains(&pongs.len()), "{}", pongs.len());
    assert_eq!(stats.lost + stats.delivered, stats.sent);
    // Every echo answers a delivered ping; every pong received was delivered.
    assert_eq!(stats.delivered, (stats.sent - 1000) + pongs.len() as u64);
    let (pongs, stats) = ping(7, Conditions::default(), 1000);
    assert_eq!((pongs.len(), stats.lost), (1000, 0));
}

#[test]
fn jitter_reorders() {
    let (pongs, _) = ping(
        3,
        Conditions {
            jitter: Duration::from_millis(20),
            ..Conditions::default()
        },
        100,
    );
    assert_eq!(pongs.len(), 100, "nothing lost");
    let numbers: Vec<u32> = pongs.iter().map(|p| p.1).collect();
    assert!(numbers.windows(2).any(|w| w[0] > w[1]), "{numbers:?}");
    assert!(
        pongs.windows(2).all(|w| w[0].0 <= w[1].0),
        "in arrival order"
    );
    // Without jitter, in order.
    let (pongs, _) = ping(3, Conditions::default(), 100);
    assert!(pongs.windows(2).all(|w| w[0].1 < w[1].1));
}

#[test]
fn machines_behind_a_nat_are_reached_through_it() {
    let t0 = Instant::now();
    let mut net = Network::new(1, Conditions::default());
    let nat = net.add_nat(
        ip("198.51.100.1"),
        NatConfig::new(
            Behaviour::EndpointIndependent,
            Behaviour::AddressAndPortDependent,
        ),
    );
    net.add_host(ip("192.0.2.1"), Some(nat));
    let mut pinger = Pinger::new(a(PINGER), t0, Duration::from_millis(1), 1);
    let mut echo = Echo::default();
    let (mut pongs, mut seen) = (Vec::new(), Vec::new());
    let mut sim = Sim::new(&mut net, t0);
    sim.add(Host::new(&mut pinger, [ip("192.0.2.1")]).collect_events(&mut pongs));
    sim.add(Host::new(&mut echo, [ip("203.0.113.5")]).collect_events(&mut seen));
    sim.run_for(Duration::from_secs(1));
    drop(sim);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1, a("198.51.100.1:4000"), "the NAT's mapping");
    assert_eq!(pongs.len(), 1);
}

#[test]
fn verdicts_transmits_and_unclaimed_hosts_are_reported() {
    let t0 = Instant::now();
    let mut net = Network::new(1, Conditions::default());
    net.add_host(ip("203.0.113.5"), None);
    let mut pinger = Pinger::new(a(PINGER), t0, Duration::from_millis(5), 2);
    let (mut verdicts, mut sent) = (Vec::new(), Vec::new());
    let mut sim = Sim::new(&mut net, t0);
    sim.add(
        Host::new(&mut pinger, [ip("192.0.2.1")])
            .on_verdict(|_, v| verdicts.push(v))
            .on_transmit(|at, t| sent.push((at - t0, t.destination))),
    );
    sim.run_for(Duration::from_secs(1));
    // No machine at the echo's host: the pings land there unclaimed.
    let unclaimed = sim.take_unclaimed();
    assert_eq!(unclaimed.len(), 2);
    assert_eq!(unclaimed[0].transmit.source, a(PINGER));
    // Answer one by hand, at the pinger.
    let reply = udp(a(ECHO), a(PINGER), b"five!");
    let now = sim.now();
    sim.network().send(now, reply);
    sim.run_for(Duration::from_secs(1));
    drop(sim);
    assert_eq!(
        verdicts,
        [false],
        "the pinger's verdict on a datagram not 4 bytes long"
    );
    assert_eq!(
        sent,
        [
            (Duration::ZERO, a(ECHO)),
            (Duration::from_millis(5), a(ECHO))
        ]
    );
}

#[test]
fn two_machines_at_one_host_are_refused() {
    let t0 = Instant::now();
    let mut net = Network::new(1, Conditions::default());
    let (mut e1, mut e2) = (Echo::default(), Echo::default());
    let mut sim = Sim::new(&mut net, t0);
    sim.add(Host::new(&mut e1, [ip("203.0.113.5"), ip("203.0.113.6")]));
    assert_eq!(
        sim.try_add(Host::new(&mut e2, [ip("203.0.113.6")])),
        Err(SimError::HostTaken(ip("203.0.113.6")))
    );
}

/// Two echoes bouncing one datagram at zero latency never let the clock move.
fn endless(sim_cap: usize) -> Result<(), SimError> {
    let t0 = Instant::now();
    let mut net = Network::new(
        1,
        Conditions {
            latency: Duration::ZERO,
            ..Conditions::default()
        },
    );
    let (mut e1, mut e2) = (Echo::default(), Echo::default());
    net.add_host(ip("203.0.113.5"), None);
    net.add_host(ip("203.0.113.6"), None);
    net.send(t0, udp(a("203.0.113.5:7"), a("203.0.113.6:7"), b"ball"));
    let mut sim = Sim::new(&mut net, t0);
    sim.set_max_iterations(sim_cap);
    sim.add(Host::new(&mut e1, [ip("203.0.113.5")]));
    sim.add(Host::new(&mut e2, [ip("203.0.113.6")]));
    sim.try_run_until(t0 + Duration::from_secs(1))
}

#[test]
fn the_iteration_cap_ends_a_run_that_never_converges() {
    assert_eq!(
        endless(50),
        Err(SimError::IterationCap {
            iterations: 50,
            elapsed: Duration::ZERO
        })
    );
}

#[test]
#[should_panic(expected = "did not reach its end in 100000 steps")]
fn run_until_fails_loudly_at_the_cap() {
    let t0 = Instant::now();
    let mut net = Network::new(
        1,
        Conditions {
            latency: Duration::ZERO,
            ..Conditions::default()
        },
    );
    let (mut e1, mut e2) = (Echo::default(), Echo::default());
    net.add_host(ip("203.0.113.5"), None);
    net.send(t0, udp(a("203.0.113.5:7"), a("203.0.113.6:7"), b"ball"));
    let mut sim = Sim::new(&mut net, t0);
    sim.add(Host::new(&mut e1, [ip("203.0.113.5")]));
    sim.add(Host::new(&mut e2, [ip("203.0.113.6")]));
    sim.run_for(Duration::from_secs(1));
}
