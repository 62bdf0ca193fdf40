//! Two [`PeerConnection`]s on loopback: connected, data both ways, restarts, a TURN relay,
//! calls from the listener, and bad input. Every wait is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::*;
use crate::types::{IceConnectionState, KeepalivePolicy, PeerTurnServer, RelayPolicy};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

struct Events(Mutex<std_mpsc::Sender<PeerConnectionEvent>>);

impl PeerConnectionListener for Events {
    fn on_event(&self, event: PeerConnectionEvent) {
        if let Ok(tx) = self.0.lock() {
            let _ = tx.send(event);
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(controlling: bool) -> PeerConnectionConfig {
    PeerConnectionConfig {
        stun_servers: vec![],
        turn_servers: vec![],
        controlling,
        port_mapping: false,
        relay_policy: RelayPolicy::All,
        bind: Some("127.0.0.1:0".into()),
        lite: false,
        no_network_monitor: false,
        keepalive_policy: None,
        keepalive_interval_ms: 0,
    }
}

/// One side: its connection and what it has heard.
struct Side {
    pc: Arc<PeerConnection>,
    rx: std_mpsc::Receiver<PeerConnectionEvent>,
    /// Pairs selected so far.
    pairs: Vec<SelectedPair>,
    data: Vec<Vec<u8>>,
    states: Vec<IceConnectionState>,
    restarted: usize,
    /// `NetworkChanged` events (the built-in monitor restarted).
    network_changed: usize,
    closed: Option<Option<String>>,
}

impl Side {
    fn new(config: PeerConnectionConfig) -> Side {
        let (tx, rx) = std_mpsc::channel();
        let pc = block_on(PeerConnection::create(
            config,
            Arc::new(Events(Mutex::new(tx))),
        ))
        .unwrap();
        Side {
            pc,
            rx,
            pairs: Vec::new(),
            data: Vec::new(),
            states: Vec::new(),
            restarted: 0,
            network_changed: 0,
            closed: None,
        }
    }
}

/// Delivers each side's events to the other as a signalling channel would, until `done`
/// (or [`WAIT`]: then it fails).
fn pump(a: &mut Side, b: &mut Side, what: &str, done: impl Fn(&Side, &Side) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(a, b) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let mut idle = true;
        for first in [true, false] {
            let (me, other) = if first {
                (&mut *a, &*b)
            } else {
                (&mut *b, &*a)
            };
            idle &= drain(me, other);
        }
        if idle {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Hands `me`'s events to `other`; whether there were none.
fn drain(me: &mut Side, other: &Side) -> bool {
    let mut idle = true;
    while let Ok(ev) = me.rx.try_recv() {
        idle = false;
        match ev {
            PeerConnectionEvent::LocalCandidate { candidate } => {
                other.pc.add_remote_candidate(candidate).unwrap();
            }
            PeerConnectionEvent::GatheringComplete => other.pc.end_of_remote_candidates(),
            PeerConnectionEvent::RemoteRestarted { local_description } => {
                me.restarted += 1;
                other.pc.set_remote_description(local_description).unwrap();
            }
            PeerConnectionEvent::NetworkChanged { local_description } => {
                me.network_changed += 1;
                other.pc.set_remote_description(local_description).unwrap();
            }
            PeerConnectionEvent::SelectedPair {
                local,
                remote,
                relayed,
                ..
            } => me.pairs.push(SelectedPair {
                local,
                remote,
                relayed,
            }),
            PeerConnectionEvent::StateChanged { state } => me.states.push(state),
            PeerConnectionEvent::Data { data } => me.data.push(data),
            PeerConnectionEvent::Closed { error } => me.closed = Some(error),
            _ => {}
        }
    }
    idle
}

/// Exchanges the two descriptions and waits until both have a pair.
fn connect(a: &mut Side, b: &mut Side) {
    b.pc.set_remote_description(a.pc.local_description())
        .unwrap();
    a.pc.set_remote_description(b.pc.local_description())
        .unwrap();
    pump(a, b, "a selected pair on both sides", |a, b| {
        !a.pairs.is_empty() && !b.pairs.is_empty()
    });
}

/// Sends `msg` from `from` (index 0: a, 1: b) until the other side has it (a datagram may
/// be lost, or sent before the peer's pair exists).
fn exchange(a: &mut Side, b: &mut Side, from_a: bool, msg: &[u8]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sender = if from_a { &a.pc } else { &b.pc };
        sender.send(msg.to_vec()).unwrap();
        let until = Instant::now() + Duration::from_millis(200);
        pump(a, b, "a datagram", |a, b| {
            let got = if from_a { &b.data } else { &a.data };
            got.iter().any(|d| d == msg) || Instant::now() > until
        });
        let got = if from_a { &b.data } else { &a.data };
        if got.iter().any(|d| d == msg) {
            return;
        }
        assert!(Instant::now() < deadline, "{msg:?} never arrived");
    }
}

fn ufrag(description: &str) -> String {
    description
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("a ufrag")
        .to_owned()
}

/// Two connections on 127.0.0.1 connect, carry data both ways, and carry it again after
/// an ICE restart of one side (the other follows by itself, reporting `RemoteRestarted`)
/// and after a restart of both; close ends them with `Closed` last.
#[test]
fn two_peer_connections_connect_exchange_data_and_survive_restarts() {
    let mut a = Side::new(config(true));
    let mut b = Side::new(config(false));
    let desc = a.pc.local_description();
    assert!(desc.starts_with("a=ice-ufrag:"), "{desc}");
    assert!(desc.contains("a=ice-pwd:") && desc.contains("a=ice-options:trickle renomination\r\n"));
    connect(&mut a, &mut b);
    assert!(!a.pairs[0].relayed);
    assert!(
        a.pairs[0].local.starts_with("127.0.0.1:"),
        "{:?}",
        a.pairs[0]
    );
    assert_eq!(a.pc.selected_pair(), a.pairs.last().cloned());
    exchange(&mut a, &mut b, true, b"ping");
    exchange(&mut a, &mut b, false, b"pong");
    pump(&mut a, &mut b, "Connected on both", |a, b| {
        a.states.contains(&IceConnectionState::Connected)
            && b.states.contains(&IceConnectionState::Connected)
    });
    // Gathering is over by now: the description says so.
    pump(&mut a, &mut b, "end of candidates", |a, _| {
        a.pc.local_description().contains("a=end-of-candidates")
    });
    assert!(a.pc.local_description().contains("a=candidate:"));

    // One side restarts; the other follows when it sees the new ufrag.
    let old_a = ufrag(&a.pc.local_description());
    let old_b = ufrag(&b.pc.local_description());
    let new_desc = a.pc.restart().unwrap();
    assert_ne!(ufrag(&new_desc), old_a);
    assert!(
        !new_desc.contains("a=candidate:"),
        "credentials only at first"
    );
    let (pa, pb) = (a.pairs.len(), b.pairs.len());
    b.pc.set_remote_description(new_desc).unwrap();
    pump(&mut a, &mut b, "a new pair after a restart", |a, b| {
        b.restarted == 1 && a.pairs.len() > pa && b.pairs.len() > pb
    });
    assert_ne!(ufrag(&b.pc.local_description()), old_b, "b restarted too");
    a.data.clear();
    b.data.clear();
    exchange(&mut a, &mut b, true, b"after restart a->b");
    exchange(&mut a, &mut b, false, b"after restart b->a");

    // Both restart at once (neither follows the other a second time).
    let (da, db) = (a.pc.restart().unwrap(), b.pc.restart().unwrap());
    let (pa, pb) = (a.pairs.len(), b.pairs.len());
    a.pc.set_remote_description(db).unwrap();
    b.pc.set_remote_description(da).unwrap();
    pump(&mut a, &mut b, "a new pair after both restarted", |a, b| {
        a.pairs.len() > pa && b.pairs.len() > pb
    });
    assert_eq!((a.restarted, b.restarted), (0, 1), "no extra restart");
    exchange(&mut a, &mut b, true, b"after both restarted a->b");
    exchange(&mut a, &mut b, false, b"after both restarted b->a");

    // close_and_wait: bounded, Closed last (no error), and then calls fail.
    let started = Instant::now();
    block_on(a.pc.close_and_wait());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(a.pc.is_closed());
    pump(&mut a, &mut b, "a's Closed", |a, _| a.closed.is_some());
    assert_eq!(a.closed, Some(None));
    assert_eq!(a.states.last(), Some(&IceConnectionState::Closed));
    assert!(matches!(
        a.pc.send(b"late".to_vec()),
        Err(PinholeError::NotAvailable(_))
    ));
    assert!(matches!(a.pc.restart(), Err(PinholeError::NotAvailable(_))));
    b.pc.close();
    pump(&mut a, &mut b, "b's Closed", |_, b| b.closed.is_some());
    assert!(b.pc.is_closed());
}

/// `network_changed()` on one side (a dual-stack socket, `[::]:0`: its bases found again
/// on loopback) restarts ICE there and returns the new description; once it reaches the
/// other side, that side restarts too (`RemoteRestarted`), the two select a pair again
/// and data flows both ways. On loopback the built-in monitor does not run: no
/// `NetworkChanged` event. The config's `no_network_monitor` is accepted either way.
#[test]
fn network_changed_restarts_and_the_peers_connect_again() {
    let mut a = Side::new(PeerConnectionConfig {
        bind: Some("[::]:0".into()),
        no_network_monitor: true,
        ..config(true)
    });
    let mut b = Side::new(config(false));
    connect(&mut a, &mut b);
    exchange(&mut a, &mut b, true, b"before the change a->b");
    exchange(&mut a, &mut b, false, b"before the change b->a");
    pump(&mut a, &mut b, "end of candidates", |a, b| {
        a.pc.local_description().contains("a=end-of-candidates")
            && b.pc.local_description().contains("a=end-of-candidates")
    });

    let old_a = ufrag(&a.pc.local_description());
    let old_b = ufrag(&b.pc.local_description());
    let new_desc = a.pc.network_changed().unwrap();
    assert_ne!(ufrag(&new_desc), old_a, "new credentials");
    assert!(
        !new_desc.contains("a=candidate:") && !new_desc.contains("a=end-of-candidates"),
        "credentials only at first: {new_desc}"
    );
    assert_eq!(ufrag(&a.pc.local_description()), ufrag(&new_desc));
    let (pa, pb) = (a.pairs.len(), b.pairs.len());
    b.pc.set_remote_description(new_desc).unwrap();
    pump(&mut a, &mut b, "a new pair after the change", |a, b| {
        b.restarted == 1 && a.pairs.len() > pa && b.pairs.len() > pb
    });
    assert_ne!(ufrag(&b.pc.local_description()), old_b, "b restarted too");
    assert_eq!(a.restarted, 0, "a did not restart a second time");
    a.data.clear();
    b.data.clear();
    exchange(&mut a, &mut b, true, b"after the change a->b");
    exchange(&mut a, &mut b, false, b"after the change b->a");
    // The candidates of the new session, gathered again, fill the description.
    pump(&mut a, &mut b, "a's candidates again", |a, _| {
        let d = a.pc.local_description();
        d.contains("a=candidate:") && d.contains("a=end-of-candidates")
    });
    assert_eq!((a.network_changed, b.network_changed), (0, 0));

    block_on(a.pc.close_and_wait());
    assert!(matches!(
        a.pc.network_changed(),
        Err(PinholeError::NotAvailable(_))
    ));
    block_on(b.pc.close_and_wait());
}

/// Pumps both sides' events for `d` (the connections run meanwhile).
fn pump_for(a: &mut Side, b: &mut Side, d: Duration) {
    let until = Instant::now() + d;
    pump(a, b, "time to pass", |_, _| Instant::now() >= until);
}

/// Both sides go to the background, then suspended, then back to the foreground: the
/// getter says each policy at once, data flows both ways in each, and the resume in the
/// foreground finds the path alive (the probe answered: no restart, no `NetworkChanged`
/// after the 4 s it has). The interval: the adaptive one's start (25 s) by default, the
/// config's fixed one otherwise; the config's initial policy is taken.
#[test]
fn keepalive_policies_switch_on_a_connected_pair_and_data_flows() {
    let mut a = Side::new(config(true));
    let mut b = Side::new(PeerConnectionConfig {
        keepalive_policy: Some(KeepalivePolicy::Background),
        keepalive_interval_ms: 12_000,
        ..config(false)
    });
    assert_eq!(a.pc.keepalive_policy(), KeepalivePolicy::Foreground);
    assert_eq!(b.pc.keepalive_policy(), KeepalivePolicy::Background);
    assert_eq!(a.pc.keepalive_interval_ms().unwrap(), 25_000);
    assert_eq!(b.pc.keepalive_interval_ms().unwrap(), 12_000);
    connect(&mut a, &mut b);
    exchange(&mut a, &mut b, true, b"foreground a->b");
    exchange(&mut a, &mut b, false, b"background b->a");
    for policy in [
        KeepalivePolicy::Background,
        KeepalivePolicy::Suspended,
        KeepalivePolicy::Foreground,
    ] {
        for side in [&a, &b] {
            side.pc.set_keepalive_policy(policy).unwrap();
            assert_eq!(side.pc.keepalive_policy(), policy);
        }
        let msg = format!("{policy:?}");
        exchange(&mut a, &mut b, true, format!("{msg} a->b").as_bytes());
        exchange(&mut a, &mut b, false, format!("{msg} b->a").as_bytes());
    }
    // The resume's probe has 4 s; past them, the path is still the one selected.
    let (pa, pb) = (a.pairs.len(), b.pairs.len());
    pump_for(&mut a, &mut b, Duration::from_secs(5));
    assert_eq!((a.network_changed, b.network_changed), (0, 0), "no restart");
    assert_eq!((a.restarted, b.restarted), (0, 0));
    assert_eq!((a.pairs.len(), b.pairs.len()), (pa, pb), "the same pair");
    exchange(&mut a, &mut b, true, b"after the resume a->b");
    exchange(&mut a, &mut b, false, b"after the resume b->a");
    assert_eq!(b.pc.keepalive_interval_ms().unwrap(), 12_000, "fixed");
    block_on(a.pc.close_and_wait());
    assert!(matches!(
        a.pc.set_keepalive_policy(KeepalivePolicy::Background),
        Err(PinholeError::NotAvailable(_))
    ));
    assert!(matches!(
        a.pc.keepalive_interval_ms(),
        Err(PinholeError::NotAvailable(_))
    ));
    assert_eq!(a.pc.keepalive_policy(), KeepalivePolicy::Foreground);
    block_on(b.pc.close_and_wait());
}

/// A resume whose path is gone: `a` is suspended, its peer goes away meanwhile; back in
/// the foreground, `a`'s probe goes unanswered and, about 4 s later, ICE restarts by
/// itself and `NetworkChanged` brings the new description (new credentials) to signal.
#[test]
fn a_resume_whose_path_is_gone_restarts_and_reports_network_changed() {
    let mut a = Side::new(config(true));
    let mut b = Side::new(config(false));
    connect(&mut a, &mut b);
    exchange(&mut a, &mut b, true, b"before a->b");
    exchange(&mut a, &mut b, false, b"before b->a");
    pump(&mut a, &mut b, "end of candidates", |a, _| {
        a.pc.local_description().contains("a=end-of-candidates")
    });
    let old = ufrag(&a.pc.local_description());
    a.pc.set_keepalive_policy(KeepalivePolicy::Suspended)
        .unwrap();
    block_on(b.pc.close_and_wait());
    // Suspended: no probe, no deadline, no restart.
    let quiet = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet {
        if let Ok(ev) = a.rx.recv_timeout(Duration::from_millis(50)) {
            assert!(
                !matches!(ev, PeerConnectionEvent::NetworkChanged { .. }),
                "{ev:?} while suspended"
            );
        }
    }
    let resumed = Instant::now();
    a.pc.set_keepalive_policy(KeepalivePolicy::Foreground)
        .unwrap();
    let deadline = resumed + WAIT;
    let description = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match a.rx.recv_timeout(left) {
            Ok(PeerConnectionEvent::NetworkChanged { local_description }) => {
                break local_description;
            }
            Ok(_) => {}
            Err(e) => panic!("no NetworkChanged after the resume: {e}"),
        }
    };
    let took = resumed.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "restarted {took:?} after the resume (the probe has 4 s)"
    );
    assert_ne!(ufrag(&description), old, "new credentials");
    assert!(
        !description.contains("a=candidate:"),
        "credentials first: {description}"
    );
    assert_eq!(ufrag(&a.pc.local_description()), ufrag(&description));
    assert_eq!(a.pc.keepalive_policy(), KeepalivePolicy::Foreground);
    block_on(a.pc.close_and_wait());
}

/// The development TURN server on 127.0.0.1 (loopback peers allowed), on a thread of its
/// own.
struct DevTurn {
    addr: SocketAddr,
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DevTurn {
    fn start() -> Self {
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            block_on(async move {
                let mut config = pinhole::turn::TurnServerConfig::new(
                    SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    "test",
                    0,
                );
                config.credentials.users.insert("u".into(), "p".into());
                config.peers = pinhole::turn::PeerPolicy::with_loopback();
                let handle = pinhole::driver::serve_turn(config).await.unwrap();
                addr_tx.send(handle.local_addrs()[0]).unwrap();
                // Bounded: a test lasts less than this.
                for _ in 0..600 {
                    if stop_rx.try_recv().is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                drop(handle);
            });
        });
        let addr = addr_rx.recv_timeout(WAIT).expect("TURN server up");
        DevTurn {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for DevTurn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// With `RelayOnly`, a connection reaches its peer (one with `NoRelay`) through the TURN
/// relay: the pair is relayed on both sides, data flows both ways, and no host candidate
/// was signalled. (The development server does not relay to its own relayed addresses,
/// so the peer is not relayed too.)
#[test]
fn two_peer_connections_connect_through_a_turn_relay() {
    let turn = DevTurn::start();
    let relay_only = |controlling| PeerConnectionConfig {
        turn_servers: vec![PeerTurnServer {
            uri: format!("turn:{}", turn.addr),
            username: "u".into(),
            password: "p".into(),
        }],
        relay_policy: RelayPolicy::RelayOnly,
        ..config(controlling)
    };
    let mut a = Side::new(relay_only(true));
    let mut b = Side::new(PeerConnectionConfig {
        relay_policy: RelayPolicy::NoRelay,
        ..relay_only(false)
    });
    connect(&mut a, &mut b);
    assert!(a.pairs.iter().all(|p| p.relayed), "{:?}", a.pairs);
    assert!(b.pairs.iter().all(|p| p.relayed), "{:?}", b.pairs);
    exchange(&mut a, &mut b, true, b"relayed a->b");
    exchange(&mut a, &mut b, false, b"relayed b->a");
    let desc = a.pc.local_description();
    assert!(desc.contains("typ relay"), "{desc}");
    assert!(!desc.contains("typ host"), "{desc}");
    block_on(a.pc.close_and_wait());
    block_on(b.pc.close_and_wait());
}

/// A listener that restarts its own connection from inside `on_event` (on the
/// connection's thread), once, when checking begins: the call is applied at once rather
/// than deadlocking, and the connection goes on.
struct Restarter {
    pc: OnceLock<Weak<PeerConnection>>,
    /// `network_changed()` rather than `restart()`.
    network: bool,
    done: std::sync::atomic::AtomicBool,
    results: Mutex<std_mpsc::Sender<(Result<String, PinholeError>, Duration)>>,
}

impl PeerConnectionListener for Restarter {
    fn on_event(&self, event: PeerConnectionEvent) {
        let checking = PeerConnectionEvent::StateChanged {
            state: IceConnectionState::Checking,
        };
        if event != checking || self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some(pc) = self.pc.get().and_then(Weak::upgrade) {
            let started = Instant::now();
            let r = if self.network {
                pc.network_changed()
            } else {
                pc.restart()
            };
            if let Ok(tx) = self.results.lock() {
                let _ = tx.send((r, started.elapsed()));
            }
        }
    }
}

#[test]
fn a_listener_may_restart_its_connection() {
    listener_restarts(false, config(true));
}

/// The same with `network_changed()` from the listener, on a dual-stack socket with a
/// (silent, loopback) STUN server: the bases are found again (asking the routing table)
/// within the call.
#[test]
fn a_listener_may_report_a_network_change() {
    listener_restarts(
        true,
        PeerConnectionConfig {
            bind: Some("[::]:0".into()),
            stun_servers: vec!["127.0.0.1:9".into()],
            ..config(true)
        },
    );
}

fn listener_restarts(network: bool, config: PeerConnectionConfig) {
    let (tx, rx) = std_mpsc::channel();
    let listener = Arc::new(Restarter {
        pc: OnceLock::new(),
        network,
        done: std::sync::atomic::AtomicBool::new(false),
        results: Mutex::new(tx),
    });
    let pc = block_on(PeerConnection::create(config, listener.clone())).unwrap();
    let first = ufrag(&pc.local_description());
    let _ = listener.pc.set(Arc::downgrade(&pc));
    // A peer's description starts the checks: the listener restarts on `Checking`.
    pc.set_remote_description(
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
            .into(),
    )
    .unwrap();
    let (r, took) = rx.recv_timeout(WAIT).expect("the listener restarted");
    let desc = r.expect("restart from the listener");
    assert!(took < Duration::from_secs(1), "applied at once: {took:?}");
    assert_ne!(ufrag(&desc), first);
    assert_eq!(ufrag(&pc.local_description()), ufrag(&desc));
    assert!(!pc.is_closed());
    pc.close();
    drop(pc);
}

/// Bad configurations and bad input fail with typed errors; nothing panics.
#[test]
fn bad_input_is_refused_with_typed_errors() {
    let bad = |c: PeerConnectionConfig| {
        let (tx, _rx) = std_mpsc::channel();
        block_on(PeerConnection::create(c, Arc::new(Events(Mutex::new(tx))))).err()
    };
    let invalid = |e: Option<PinholeError>| matches!(e, Some(PinholeError::InvalidArgument(_)));
    assert!(invalid(bad(PeerConnectionConfig {
        bind: Some("nowhere".into()),
        ..config(true)
    })));
    assert!(invalid(bad(PeerConnectionConfig {
        relay_policy: RelayPolicy::RelayOnly,
        ..config(true)
    })));
    assert!(invalid(bad(PeerConnectionConfig {
        stun_servers: vec!["stun:".into()],
        ..config(true)
    })));
    assert!(invalid(bad(PeerConnectionConfig {
        turn_servers: vec![PeerTurnServer {
            uri: "http://x".into(),
            username: "u".into(),
            password: "p".into(),
        }],
        ..config(true)
    })));
    assert!(matches!(
        bad(PeerConnectionConfig {
            turn_servers: vec![PeerTurnServer {
                uri: "turns:127.0.0.1".into(),
                username: "u".into(),
                password: "p".into(),
            }],
            ..config(true)
        }),
        Some(PinholeError::Unsupported(_)) | None
    ));
    // A port in use: an I/O error.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(matches!(
        bad(PeerConnectionConfig {
            bind: Some(taken.local_addr().unwrap().to_string()),
            ..config(true)
        }),
        Some(PinholeError::Io(_))
    ));

    let side = Side::new(config(true));
    let pc = &side.pc;
    for garbage in [
        "",
        "hello",
        "a=ice-ufrag:x\r\na=ice-pwd:y",
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\na=ice-ufrag:efgh",
    ] {
        assert!(
            matches!(
                pc.set_remote_description(garbage.into()),
                Err(PinholeError::InvalidArgument(_))
            ),
            "{garbage:?}"
        );
    }
    assert!(
        matches!(
            pc.set_remote_description("x".repeat(70_000)),
            Err(PinholeError::InvalidArgument(_))
        ),
        "too long"
    );
    for garbage in [
        "",
        "candidate:",
        "a=ice-ufrag:abcd",
        "candidate:1 1 udp x y z",
    ] {
        assert!(
            matches!(
                pc.add_remote_candidate(garbage.into()),
                Err(PinholeError::InvalidArgument(_))
            ),
            "{garbage:?}"
        );
    }
    // Nothing to send on before a pair is selected; too big is refused first.
    assert!(matches!(
        pc.send(b"early".to_vec()),
        Err(PinholeError::NotAvailable(_))
    ));
    assert!(matches!(
        pc.send(vec![0; 70_000]),
        Err(PinholeError::InvalidArgument(_))
    ));
    assert!(pc.selected_pair().is_none());
    // A good description and a good candidate are accepted.
    pc.set_remote_description(
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
            .into(),
    )
    .unwrap();
    pc.add_remote_candidate("candidate:2 1 udp 2130706430 127.0.0.1 10 typ host".into())
        .unwrap();
    pc.end_of_remote_candidates();
    pc.close();
    pc.close();
    let deadline = Instant::now() + WAIT;
    while !pc.is_closed() {
        assert!(Instant::now() < deadline, "closed in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(
        pc.set_remote_description(
            "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n".into()
        ),
        Err(PinholeError::NotAvailable(_))
    ));
    assert!(pc.local_description().starts_with("a=ice-ufrag:"));
    let mut last = None;
    while let Ok(ev) = side.rx.recv_timeout(WAIT) {
        let end = matches!(ev, PeerConnectionEvent::Closed { .. });
        last = Some(ev);
        if end {
            break;
        }
    }
    assert_eq!(last, Some(PeerConnectionEvent::Closed { error: None }));
}
