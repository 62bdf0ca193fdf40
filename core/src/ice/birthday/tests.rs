//! The birthday prober on the virtual network: a hard side behind an endpoint-dependent
//! mapping with random ports, an easy side behind an endpoint-independent mapping with
//! address-and-port-dependent filtering (the cell plain ICE relays), seeded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Behaviour, Conditions, Host, NatConfig, Network, PortAllocation, Sim, udp};

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const HARD_HOST: &str = "10.0.0.10";
const HARD_PUBLIC: &str = "198.51.100.2";
const EASY_BASE: &str = "192.168.1.10:5000";
/// The easy side's server-reflexive address (its NAT preserves ports).
const EASY_SRFLX: &str = "198.51.100.1:5000";
const REFLECTOR: &str = "203.0.113.10:3478";

fn creds(u: &str) -> IceCredentials {
    IceCredentials {
        ufrag: u.into(),
        pwd: format!("{u}{u}{u}{u}{u}{u}{u}{u}"),
    }
}

fn hard_nat() -> NatConfig {
    NatConfig {
        allocation: PortAllocation::Random,
        ..NatConfig::new(
            Behaviour::AddressAndPortDependent,
            Behaviour::AddressAndPortDependent,
        )
    }
}

fn easy_nat() -> NatConfig {
    NatConfig::new(
        Behaviour::EndpointIndependent,
        Behaviour::AddressAndPortDependent,
    )
}

fn hard_sockets(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::new(HARD_HOST.parse().unwrap(), 20_000 + i as u16))
        .collect()
}

/// A network with the two NATs; the easy side's mapping exists (its gathering made it).
fn network(seed: u64, t0: Instant) -> Network {
    let mut net = Network::new(seed, Conditions::default());
    let h = net.add_nat(HARD_PUBLIC.parse().unwrap(), hard_nat());
    let e = net.add_nat(a(EASY_SRFLX).ip(), easy_nat());
    net.add_host(HARD_HOST.parse().unwrap(), Some(h));
    net.add_host(a(EASY_BASE).ip(), Some(e));
    net.add_host(a(REFLECTOR).ip(), None);
    net.send(t0, udp(a(EASY_BASE), a(REFLECTOR), b"gathering"));
    net
}

struct Outcome {
    hard: Vec<BirthdayEvent>,
    easy: Vec<BirthdayEvent>,
    /// Every datagram each side sent, with its time.
    sent: [Vec<(Instant, Transmit)>; 2],
    t0: Instant,
}

fn run(seed: u64, config: &BirthdayConfig, sockets: usize, for_: Duration) -> Outcome {
    let t0 = Instant::now();
    let mut net = network(seed, t0);
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    let mut hard = BirthdayProber::new(
        t0,
        config,
        BirthdayRole::Hard {
            sockets: hard_sockets(sockets),
            target: a(EASY_SRFLX),
        },
        creds("hard"),
        creds("easy"),
        s,
    );
    s[31] = 1;
    let mut easy = BirthdayProber::new(
        t0,
        config,
        BirthdayRole::Easy {
            base: a(EASY_BASE),
            peer_ip: HARD_PUBLIC.parse().unwrap(),
        },
        creds("easy"),
        creds("hard"),
        s,
    );
    let (mut he, mut ee) = (Vec::new(), Vec::new());
    let (mut hs, mut es) = (Vec::new(), Vec::new());
    {
        let mut sim = Sim::new(&mut net, t0);
        sim.add(
            Host::new(&mut hard, [HARD_HOST.parse().unwrap()])
                .on_event(|_, _, e| he.push(e))
                .on_transmit(|at, t| hs.push((at, t.clone()))),
        );
        sim.add(
            Host::new(&mut easy, [a(EASY_BASE).ip()])
                .on_event(|_, _, e| ee.push(e))
                .on_transmit(|at, t| es.push((at, t.clone()))),
        );
        sim.run_until(t0 + for_);
    }
    Outcome {
        hard: he,
        easy: ee,
        sent: [hs, es],
        t0,
    }
}

fn found(events: &[BirthdayEvent]) -> Option<(SocketAddr, SocketAddr, u32, Duration)> {
    events.iter().find_map(|e| match e {
        BirthdayEvent::Found {
            local,
            remote,
            probes,
            after,
        } => Some((*local, *remote, *probes, *after)),
        _ => None,
    })
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// The proof the issue asks for: 1 000 seeded trials with the default caps (256
/// sockets, 2 048 probes at 250 per second, 12 s). Each trial succeeds when both sides
/// found the pair: the hard side one of its sockets toward the easy side's
/// server-reflexive address, the easy side its base toward a port of the hard side's
/// public IP. The theory (module docs) says ≈ 99.97 %; the test asserts at least 99 %
/// and prints the figures.
#[test]
fn birthday_success_rate_over_1000_seeded_trials_within_the_default_caps() {
    let config = BirthdayConfig {
        enabled: true,
        ..BirthdayConfig::default()
    };
    let trials = 1000u64;
    let (mut ok, mut times, mut probes) = (0u64, Vec::new(), Vec::new());
    for seed in 0..trials {
        let o = run(seed, &config, config.sockets, Duration::from_secs(13));
        let (Some(h), Some(e)) = (found(&o.hard), found(&o.easy)) else {
            continue;
        };
        assert!(hard_sockets(256).contains(&h.0), "seed {seed}");
        assert_eq!(h.1, a(EASY_SRFLX), "seed {seed}");
        assert_eq!(e.0, a(EASY_BASE), "seed {seed}");
        assert_eq!(
            e.1.ip(),
            HARD_PUBLIC.parse::<IpAddr>().unwrap(),
            "seed {seed}"
        );
        ok += 1;
        times.push(h.3.max(e.3));
        probes.push(Duration::from_millis(u64::from(e.2)));
        // Caps: never more than the default numbers.
        assert!(o.sent[0].len() <= 256 + 256, "seed {seed}");
        assert!(
            o.sent[1]
                .iter()
                .filter(|(_, t)| t.source == a(EASY_BASE))
                .count()
                <= 2048 + 256
        );
    }
    let (p50, p90) = (percentile(&mut times, 0.5), percentile(&mut times, 0.9));
    let probes50 = percentile(&mut probes, 0.5).as_millis();
    println!(
        "birthday: {ok}/{trials} trials found a pair; time to the pair median {p50:?}, p90 \
         {p90:?}; easy-side probes median {probes50}"
    );
    assert!(ok * 100 >= trials * 99, "{ok}/{trials}");
}

/// Every cap holds: the hard side opens no more sockets than configured, each side sends
/// no more than the rate allows in any second, the easy side no more probes than
/// configured, nobody sends after the time cap, which ends probing with `GaveUp`. Here
/// against a hard side that gets no answer (the easy side probes an IP nobody holds,
/// the hard side a target nobody answers at).
#[test]
fn caps_are_honoured() {
    let config = BirthdayConfig {
        enabled: true,
        sockets: 40,
        probes_per_second: 50,
        max_probes: 120,
        max_duration: Duration::from_secs(5),
        wait: Duration::from_secs(2),
    };
    let t0 = Instant::now();
    let mut net = Network::new(3, Conditions::default());
    let mut hard = BirthdayProber::new(
        t0,
        &config,
        BirthdayRole::Hard {
            sockets: hard_sockets(100),
            target: a("203.0.113.99:4000"),
        },
        creds("hard"),
        creds("easy"),
        [1; 32],
    );
    let mut easy = BirthdayProber::new(
        t0,
        &config,
        BirthdayRole::Easy {
            base: a("203.0.113.50:5000"),
            peer_ip: "203.0.113.98".parse().unwrap(),
        },
        creds("easy"),
        creds("hard"),
        [2; 32],
    );
    let (mut he, mut ee, mut hs, mut es) = (vec![], vec![], vec![], vec![]);
    {
        let mut sim = Sim::new(&mut net, t0);
        sim.add(
            Host::new(&mut hard, ["10.0.0.10".parse().unwrap()])
                .collect_events(&mut he)
                .on_transmit(|at, t| hs.push((at, t.clone()))),
        );
        sim.add(
            Host::new(&mut easy, ["203.0.113.50".parse().unwrap()])
                .collect_events(&mut ee)
                .on_transmit(|at, t| es.push((at, t.clone()))),
        );
        sim.run_until(t0 + Duration::from_secs(30));
    }
    // Sockets: 40 of the 100 offered, one probe each.
    let sources: HashSet<SocketAddr> = hs.iter().map(|(_, t)| t.source).collect();
    assert_eq!(sources.len(), 40);
    assert_eq!(hs.len(), 40);
    // Probes in all, each port once.
    assert_eq!(es.len(), 120);
    let ports: HashSet<u16> = es.iter().map(|(_, t)| t.destination.port()).collect();
    assert_eq!(ports.len(), 120);
    assert!(ports.iter().all(|p| *p >= LOWEST_PORT));
    for sent in [&hs, &es] {
        // The rate, in every window of one second.
        for (i, (at, _)) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|(t, _)| *t < *at + Duration::from_secs(1))
                .count();
            assert!(in_window <= 50, "{in_window} probes in one second");
        }
        // Time.
        assert!(sent.iter().all(|(t, _)| *t < t0 + config.max_duration));
    }
    for (events, n) in [(&he, 40), (&ee, 120)] {
        assert_eq!(events.len(), 1);
        let (at, e) = &events[0];
        assert_eq!(*e, BirthdayEvent::GaveUp { probes: n });
        assert_eq!(*at, t0 + config.max_duration);
    }
    assert!(hard.is_done() && easy.is_done());
    assert_eq!(hard.poll_timeout(), None);
    // Caps beyond the documented maxima are lowered to them.
    let wild = BirthdayConfig {
        sockets: 1_000_000,
        probes_per_second: u32::MAX,
        max_probes: u32::MAX,
        ..config
    };
    let c = wild.clamped();
    assert_eq!(
        (c.sockets, c.probes_per_second, c.max_probes),
        (MAX_SOCKETS, MAX_PROBES_PER_SECOND, MAX_PROBES)
    );
}

/// A late `handle_timeout` does not burst: one probe per call at most.
#[test]
fn a_late_timeout_sends_one_probe() {
    let t0 = Instant::now();
    let mut easy = BirthdayProber::new(
        t0,
        &BirthdayConfig::default(),
        BirthdayRole::Easy {
            base: a(EASY_BASE),
            peer_ip: HARD_PUBLIC.parse().unwrap(),
        },
        creds("easy"),
        creds("hard"),
        [5; 32],
    );
    easy.handle_timeout(t0 + Duration::from_secs(3));
    assert!(easy.poll_transmit().is_some());
    assert!(easy.poll_transmit().is_none());
    assert!(easy.poll_timeout().unwrap() > t0 + Duration::from_secs(3));
}

fn probe_from(creds_user: &str, pwd_key: &str, tid: [u8; 12], success: bool) -> Vec<u8> {
    let key = IntegrityKey::short_term(pwd_key).unwrap();
    let kind = if success {
        MessageType::BINDING_SUCCESS
    } else {
        MessageType::BINDING_REQUEST
    };
    let mut buf = [0u8; 512];
    let mut b = MessageBuilder::new(&mut buf, kind, TransactionId(tid)).unwrap();
    b.add(&Username(creds_user))
        .unwrap()
        .add_raw(PROBE_ATTRIBUTE, &[])
        .unwrap()
        .add_message_integrity(&key)
        .unwrap()
        .add_fingerprint()
        .unwrap();
    b.finish().to_vec()
}

/// Stray and forged datagrams cannot choose the pair: a probe with the wrong password, an
/// answer with the wrong password, an answer from another address than the probe went
/// to, an answer to a transaction never sent. The genuine ones do. ICE checks (without
/// the probe attribute) are left to the agent.
#[test]
fn stray_or_forged_probes_and_answers_choose_nothing() {
    let t0 = Instant::now();
    let hard_public: IpAddr = HARD_PUBLIC.parse().unwrap();
    let mut easy = BirthdayProber::new(
        t0,
        &BirthdayConfig::default(),
        BirthdayRole::Easy {
            base: a(EASY_BASE),
            peer_ip: hard_public,
        },
        creds("easy"),
        creds("hard"),
        [6; 32],
    );
    easy.handle_timeout(t0);
    let probe = easy.poll_transmit().unwrap();
    let tid = Message::parse(&probe.contents).unwrap().transaction_id().0;
    let rx = |source, contents: &[u8]| -> (SocketAddr, Vec<u8>) { (source, contents.to_vec()) };
    let good_pwd = creds("hard").pwd;
    let cases = [
        // A request signed with a wrong password.
        rx(
            SocketAddr::new(hard_public, 3000),
            &probe_from("easy:hard", "wrongwrongwrongwrongwrong", [1; 12], false),
        ),
        // An answer signed with a wrong password.
        rx(
            probe.destination,
            &probe_from("easy:hard", "wrongwrongwrongwrongwrong", tid, true),
        ),
        // The right answer, from another port.
        rx(
            SocketAddr::new(hard_public, probe.destination.port() ^ 1),
            &probe_from("easy:hard", &good_pwd, tid, true),
        ),
        // An answer to a transaction never sent.
        rx(
            probe.destination,
            &probe_from("easy:hard", &good_pwd, [9; 12], true),
        ),
        // A genuine request from another IP than the hard side's.
        rx(
            a("203.0.113.66:3000"),
            &probe_from("easy:hard", &good_pwd, [2; 12], false),
        ),
    ];
    for (source, contents) in &cases {
        let taken = easy.handle_input(
            t0,
            Received {
                proto: Protocol::Udp,
                source: *source,
                destination: a(EASY_BASE),
                contents,
            },
        );
        assert!(taken, "a probe-tagged message is the prober's");
        assert!(easy.found().is_none());
        assert!(easy.poll_event().is_none());
    }
    // An ICE check (no probe attribute) is not the prober's.
    let mut buf = [0u8; 512];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([3; 12]),
    )
    .unwrap();
    b.add(&Username("easy:hard"))
        .unwrap()
        .add_message_integrity(&IntegrityKey::short_term(&good_pwd).unwrap())
        .unwrap();
    let check = b.finish().to_vec();
    assert!(!easy.handle_input(
        t0,
        Received {
            proto: Protocol::Udp,
            source: probe.destination,
            destination: a(EASY_BASE),
            contents: &check,
        },
    ));
    // The genuine answer, from where the probe went.
    let answer = probe_from("easy:hard", &good_pwd, tid, true);
    assert!(easy.handle_input(
        t0 + Duration::from_millis(20),
        Received {
            proto: Protocol::Udp,
            source: probe.destination,
            destination: a(EASY_BASE),
            contents: &answer,
        },
    ));
    assert_eq!(easy.found(), Some((a(EASY_BASE), probe.destination)));
    assert!(matches!(
        easy.poll_event(),
        Some(BirthdayEvent::Found { probes: 1, .. })
    ));
    // Probing is over: no more probes.
    easy.handle_timeout(t0 + Duration::from_secs(1));
    assert!(easy.poll_transmit().is_none());
    assert_eq!(easy.poll_timeout(), None);
}

/// Without the hard side's sockets (one socket only: what plain ICE has), the easy
/// side's probes almost never meet it: the sockets are what makes it work. 100 seeds,
/// default caps otherwise; with 256 sockets the same seeds all succeed.
#[test]
fn one_socket_is_not_enough() {
    let config = BirthdayConfig {
        enabled: true,
        ..BirthdayConfig::default()
    };
    let (mut one, mut many) = (0, 0);
    for seed in 0..100 {
        let o = run(seed, &config, 1, Duration::from_secs(13));
        one += usize::from(found(&o.hard).is_some() && found(&o.easy).is_some());
        let o = run(seed, &config, 256, Duration::from_secs(13));
        many += usize::from(found(&o.hard).is_some() && found(&o.easy).is_some());
        let _ = o.t0;
    }
    println!("one socket {one}/100, 256 sockets {many}/100");
    assert!(one <= 10, "{one}");
    assert!(many >= 99, "{many}");
}

/// The hard side takes an authenticated ICE check (no probe attribute) at one of its
/// probe sockets as the pair too, and answers it: the easy side found that socket and
/// the answer to its probe was lost, and its agent's checks now go there. Not with the
/// wrong password, and not at an address that is not a probe socket.
#[test]
fn an_ice_check_at_a_probe_socket_makes_the_pair_on_the_hard_side() {
    let t0 = Instant::now();
    let sockets = hard_sockets(4);
    let mut hard = BirthdayProber::new(
        t0,
        &BirthdayConfig::default(),
        BirthdayRole::Hard {
            sockets: sockets.clone(),
            target: a(EASY_SRFLX),
        },
        creds("hard"),
        creds("easy"),
        [7; 32],
    );
    let check = |pwd: &str| {
        let mut buf = [0u8; 512];
        let mut b = MessageBuilder::new(
            &mut buf,
            MessageType::BINDING_REQUEST,
            TransactionId([4; 12]),
        )
        .unwrap();
        b.add(&Username("hard:easy"))
            .unwrap()
            .add_message_integrity(&IntegrityKey::short_term(pwd).unwrap())
            .unwrap()
            .add_fingerprint()
            .unwrap();
        b.finish().to_vec()
    };
    let rx = |to: SocketAddr, c: &[u8]| -> (SocketAddr, Vec<u8>) { (to, c.to_vec()) };
    let offer = |hard: &mut BirthdayProber, (to, c): (SocketAddr, Vec<u8>)| {
        hard.handle_input(
            t0,
            Received {
                proto: Protocol::Udp,
                source: a(EASY_SRFLX),
                destination: to,
                contents: &c,
            },
        )
    };
    let bad = check("wrongwrongwrongwrongwrong");
    assert!(offer(&mut hard, rx(sockets[2], &bad)));
    assert!(hard.found().is_none());
    let good = check(&creds("hard").pwd);
    // At an address that is not a probe socket: not the prober's.
    assert!(!offer(&mut hard, rx(a("10.0.0.10:5000"), &good)));
    assert!(offer(&mut hard, rx(sockets[2], &good)));
    assert_eq!(hard.found(), Some((sockets[2], a(EASY_SRFLX))));
    let answer = hard.poll_transmit().unwrap();
    assert_eq!(
        (answer.source, answer.destination),
        (sockets[2], a(EASY_SRFLX))
    );
    let m = Message::parse(&answer.contents).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), TransactionId([4; 12]));
    assert!(
        m.verify_integrity(&IntegrityKey::short_term(&creds("hard").pwd).unwrap())
            .is_ok()
    );
    // From now on the socket is the agent's base: its checks are the agent's.
    assert!(!offer(&mut hard, rx(sockets[2], &good)));
    assert!(hard.poll_transmit().is_none());
}
