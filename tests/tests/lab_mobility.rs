//! Issue 14's uplink switch: a host moves from behind one NAT to behind another in the
//! middle of a transfer (a phone leaving Wi-Fi for cellular), ten times, and the
//! connection carries on without the application doing anything.
//!
//! The mover (`pinhole connect` on host `m`) has two uplinks, to routers A and B (both
//! the lab's default Linux NAT); only one is up at a time. Its peer sits behind router C.
//! Both stream numbered lines to each other every [`TICK`]. At each switch the test takes
//! the mover's address and link on one uplink away and brings the other up with the
//! default route ([`Lab::switch_uplink`]); pinhole's built-in network monitor (rtnetlink)
//! sees it, the connection restarts ICE on the new network and `pinhole connect` signals
//! the new credentials; the peer answers with a restart of its own (RFC 8445 §9).
//!
//! Four cells: the mover controlling or controlled, and the path direct or relayed (the
//! mover relay-only, coturn over UDP). For every switch and each direction, "recovered"
//! is the first line sent after the new network was up that reached the other side: the
//! time from the switch to its arrival is reported (median, p90), and the lines sent
//! after the switch that never arrived are counted. The test asserts that every switch
//! is noticed (one `network-changed` event each) and that data flows again in both
//! directions after each one (within [`RECOVERY_BOUND`], a bound on the test, not a
//! performance target); the figures are printed, not asserted.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::in_ns;
use pinhole_tests::lab::process::Process;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{
    COTURN_PRIMARY, COTURN_USER, Host, Lab, NatConfig, PEER_IP, PINHOLE_PRIMARY,
    SERVER_READY_TIMEOUT, Uplink, bins,
};
use serde_json::Value;

/// Switches per cell.
const SWITCHES: usize = 10;
/// How often each side sends a line.
const TICK: Duration = Duration::from_millis(20);
/// The bound on one switch's recovery (both directions), after which the cell fails.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// Quiet time on the new network before the next switch.
const SETTLE: Duration = Duration::from_millis(1500);
/// A marker among a streamer's arguments: its TURN server over TCP.
const TURN_TCP: &str = "(turn over tcp)";
/// Where `pinhole signal` listens (lab internet).
const SIGNAL_PORT: u16 = 8479;

/// Lines a side sent or got: (sequence number, when).
type Log = Arc<Mutex<Vec<(u64, Instant)>>>;

/// One side's `pinhole connect`, streaming; killed when dropped.
struct Streamer {
    child: Child,
    /// What it sent (to its stdin) and when.
    sent: Log,
    /// What reached its stdout from the peer, and when.
    got: Log,
    /// Its JSON events.
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    stop: Arc<AtomicBool>,
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Streamer {
    fn spawn(bin: &Path, host: &Host, signal: &str, room: &str, extra: &[&str]) -> Self {
        let portmap = extra.contains(&"--portmap");
        // The test's own marker: coturn over TCP instead of UDP.
        let over_tcp = extra.contains(&TURN_TCP);
        let extra: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != "--portmap" && *a != TURN_TCP)
            .collect();
        let (user, pass) = COTURN_USER;
        let stun = format!("stun:{PINHOLE_PRIMARY}");
        let turn = if over_tcp {
            format!("turn:{COTURN_PRIMARY}?transport=tcp")
        } else {
            format!("turn:{COTURN_PRIMARY}")
        };
        let mut args = vec![
            "connect",
            "--json",
            "--signal",
            signal,
            "--room",
            room,
            "--stun",
            &stun,
            "--turn",
            &turn,
            "--user",
            user,
            "--password",
            pass,
            "--timeout",
            "20",
        ];
        if !portmap {
            args.push("--no-portmap");
        }
        args.extend_from_slice(&extra);
        let mut child = in_ns(&host.ns, &bin.to_string_lossy(), &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pinhole connect");
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, got): (Log, Log) = Default::default();
        let mut stdin = child.stdin.take().expect("stdin");
        let (s, st) = (Arc::clone(&sent), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Bounded by the test: it stops (or the pipe breaks) when the side is dropped.
            for seq in 0u64.. {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                // One write per line: one datagram.
                if stdin.write_all(format!("{seq}\n").as_bytes()).is_err() {
                    return;
                }
                s.lock().unwrap().push((seq, Instant::now()));
                std::thread::sleep(TICK);
            }
        });
        let out = child.stdout.take().expect("stdout");
        let g = Arc::clone(&got);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(seq) = line.trim().parse::<u64>() {
                    g.lock().unwrap().push((seq, Instant::now()));
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, events) = mpsc::channel();
        // For debugging: PINHOLE_LAB_STDERR_DIR keeps each side's stderr (its events, and
        // the logs RUST_LOG asks for) in a file there.
        let mut trace = std::env::var_os("PINHOLE_LAB_STDERR_DIR").map(|d| {
            std::fs::File::create(Path::new(&d).join(format!("{}-{}.log", host.ns, child.id())))
                .expect("trace file")
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(f) = trace.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            child,
            sent,
            got,
            events,
            seen: Vec::new(),
            stop,
        }
    }

    /// Takes the events that came so far.
    fn pump(&mut self) {
        while let Ok(v) = self.events.try_recv() {
            self.seen.push(v);
        }
    }

    fn count(&self, event: &str) -> usize {
        self.seen.iter().filter(|e| e["event"] == event).count()
    }

    /// Waits (bounded) for an event.
    fn wait_for(&mut self, event: &str, within: Duration) -> Option<Value> {
        let until = Instant::now() + within;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if v["event"] == event {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }
}

/// When the first line `from` sent at or after `t` reached `to` (the arrival), if any.
fn recovered(from: &Streamer, to: &Streamer, t: Instant) -> Option<Instant> {
    let sent = from.sent.lock().unwrap();
    let first = sent.iter().find(|(_, at)| *at >= t)?.0;
    let got = to.got.lock().unwrap();
    got.iter()
        .filter(|(seq, _)| *seq >= first)
        .map(|(_, at)| *at)
        .min()
}

/// Lines `from` sent in `[t, until)` that never reached `to`.
fn lost(from: &Streamer, to: &Streamer, t: Instant, until: Instant) -> usize {
    let sent = from.sent.lock().unwrap();
    let got = to.got.lock().unwrap();
    let arrived: std::collections::HashSet<u64> = got.iter().map(|(s, _)| *s).collect();
    sent.iter()
        .filter(|(s, at)| *at >= t && *at < until && !arrived.contains(s))
        .count()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One cell's figures.
#[derive(Debug, Default)]
struct Cell {
    label: String,
    /// Per switch: ms to recovery, mover→peer and peer→mover.
    recovery: Vec<[f64; 2]>,
    /// Per switch: lines lost, mover→peer and peer→mover.
    lost: Vec<[usize; 2]>,
    trouble: Vec<String>,
}

/// What happens to the mover, again and again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// It moves to its other uplink.
    Switch,
    /// Its NAT forgets every mapping (`conntrack -F`).
    Flush,
    /// coturn restarts (every allocation forgotten).
    TurnRestart,
    /// It moves to its other uplink, where only a port mapping lets the peer in: both of
    /// its routers NAT with random ports and run miniupnpd, the peer's NAT is
    /// endpoint-dependent, no relay and no birthday probing.
    SwitchMapped,
    /// It moves to its other uplink while relay-only with coturn over TCP: its TCP
    /// connection (and the allocation on it) is gone with the old network.
    SwitchTcpRelay,
}

fn run_cell(
    bin: &Path,
    mover_controls: bool,
    relayed: bool,
    what: Disruption,
    nat: NatConfig,
    times: usize,
) -> Cell {
    let label = format!(
        "{}mover {}, {}",
        match what {
            Disruption::Switch => String::new(),
            Disruption::Flush => format!("NAT flush ({}), ", nat.describe()),
            Disruption::TurnRestart => "coturn restart, ".to_owned(),
            Disruption::SwitchMapped => "through port mappings, ".to_owned(),
            Disruption::SwitchTcpRelay => "TURN over TCP, ".to_owned(),
        },
        if mover_controls {
            "controlling"
        } else {
            "controlled"
        },
        if relayed { "relayed" } else { "direct" }
    );
    let mut cell = Cell {
        label: label.clone(),
        ..Cell::default()
    };
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    lab.start_coturn().expect("coturn");
    let listen = format!("{PEER_IP}:{SIGNAL_PORT}");
    let mut signal = Process::spawn(
        "pinhole signal",
        lab.internet(),
        bin,
        &[
            "signal".to_owned(),
            "--listen".to_owned(),
            listen.clone(),
            "--duration".to_owned(),
            "600".to_owned(),
        ],
        &lab.dir().join("pinhole-signal.log"),
    )
    .expect("pinhole signal");
    signal
        .wait_ready(SERVER_READY_TIMEOUT, |p| p.log().contains("signalling on"))
        .expect("pinhole signal ready");
    let signal_url = format!("http://{listen}");
    let mapped = what == Disruption::SwitchMapped;
    let routers = if mapped {
        let random = NatConfig::port_restricted_cone().random_ports();
        [
            ("mA", random.clone()),
            ("mB", random),
            ("pC", NatConfig::symmetric()),
        ]
    } else {
        [
            ("mA", nat),
            ("mB", NatConfig::default()),
            ("pC", NatConfig::default()),
        ]
    };
    for (r, config) in routers {
        lab.add_router(r, config, Uplink::Internet).expect("router");
    }
    if mapped {
        for r in ["mA", "mB"] {
            lab.start_miniupnpd(r).expect("miniupnpd");
        }
    }
    let mover = lab.add_host("m", "mA").expect("host").clone();
    let peer = lab.add_host("p", "pC").expect("host").clone();
    let (b_ip, b_gw) = lab.add_spare_uplink("m", "mB", "eth1").expect("uplink");
    let a_gw = lab.router("mA").expect("router").lan_ip;
    let uplinks = [("eth0", mover.ip, a_gw), ("eth1", b_ip, b_gw)];

    let plain: &[&str] = if mapped {
        &["--no-relay", "--no-birthday"]
    } else {
        &[]
    };
    let mover_extra: &[&str] = if what == Disruption::SwitchTcpRelay {
        &["--no-direct", TURN_TCP]
    } else if relayed {
        &["--no-direct"]
    } else if mapped {
        &["--no-relay", "--no-birthday", "--portmap"]
    } else {
        &[]
    };
    // The first to join the room controls.
    let (mut m, mut p) = if mover_controls {
        let m = Streamer::spawn(bin, &mover, &signal_url, "move", mover_extra);
        std::thread::sleep(Duration::from_millis(500));
        let p = Streamer::spawn(bin, &peer, &signal_url, "move", plain);
        (m, p)
    } else {
        let p = Streamer::spawn(bin, &peer, &signal_url, "move", plain);
        std::thread::sleep(Duration::from_millis(500));
        let m = Streamer::spawn(bin, &mover, &signal_url, "move", mover_extra);
        (m, p)
    };
    for (name, s) in [("mover", &mut m), ("peer", &mut p)] {
        if s.wait_for("connected", Duration::from_secs(25)).is_none() {
            cell.trouble
                .push(format!("{label}: the {name} never connected: {:?}", s.seen));
            return cell;
        }
    }
    std::thread::sleep(SETTLE);
    // The mover's socket port: its host candidate's.
    let mover_port = m
        .seen
        .iter()
        .find_map(|e| {
            (e["event"] == "connected")
                .then(|| e["local"]["address"].as_str())
                .flatten()
                .and_then(|a| a.rsplit(':').next())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut on = 0usize;
    for k in 0..times {
        let done = match what {
            Disruption::Switch | Disruption::SwitchMapped | Disruption::SwitchTcpRelay => {
                let (from, to) = (uplinks[on], uplinks[1 - on]);
                on = 1 - on;
                lab.switch_uplink("m", (from.0, from.1), to)
            }
            Disruption::Flush => {
                // What a flush does to a mapping, seen from a socket of its own (port
                // 40000): the same external port again, or a new one.
                let probe = |lab: &Lab| {
                    lab.stun_ping(
                        &mover.ns,
                        "0.0.0.0:40000".parse().expect("literal"),
                        std::net::SocketAddr::V4(PINHOLE_PRIMARY),
                        Duration::from_secs(2),
                    )
                };
                let before = if k == 0 { probe(&lab).ok() } else { None };
                let r = lab.flush_mappings("mA");
                if let Some(before) = before {
                    let after = probe(&lab).ok();
                    cell.label += &format!(
                        " [probe mapping {before} → {}]",
                        after.map_or("?".into(), |a| a.to_string())
                    );
                }
                r
            }
            Disruption::TurnRestart => lab.restart_coturn(),
        };
        if let Err(e) = done {
            cell.trouble.push(format!("{label}: {what:?} {k}: {e}"));
            return cell;
        }
        let t = Instant::now();
        // Both directions flowing again, within the bound.
        let until = t + RECOVERY_BOUND;
        let mut got = [None, None];
        while Instant::now() < until && got.iter().any(Option::is_none) {
            got = [recovered(&m, &p, t), recovered(&p, &m, t)];
            std::thread::sleep(Duration::from_millis(10));
        }
        let [Some(a), Some(b)] = got else {
            m.pump();
            p.pump();
            cell.trouble.push(format!(
                "{label}: switch {k}: data did not flow again within {RECOVERY_BOUND:?} \
                 (mover→peer {:?}, peer→mover {:?})\nmover events: {:?}\npeer events: {:?}",
                got[0].map(|x| x - t),
                got[1].map(|x| x - t),
                m.seen,
                p.seen
            ));
            return cell;
        };
        std::thread::sleep(SETTLE);
        if mapped {
            // The peer's path ends at the mover's new port mapping: the new router's
            // WAN address, and (miniupnpd maps the external port equal to the internal
            // one when free) the mover's socket port.
            p.pump();
            let router = if on == 1 { "mB" } else { "mA" };
            let wan = lab.router(router).expect("router").wan_ip;
            let want = format!("{wan}:{mover_port}");
            let last = p
                .seen
                .iter()
                .rev()
                .find(|e| e["event"] == "connected" || e["event"] == "path-changed");
            if last.and_then(|e| e["remote"]["address"].as_str()) != Some(want.as_str()) {
                cell.trouble.push(format!(
                    "{label}: switch {k}: the peer's path does not end at the mapping {want}: {last:?}"
                ));
                return cell;
            }
        }
        let end = Instant::now() - Duration::from_millis(500);
        cell.recovery
            .push([(a - t).as_secs_f64() * 1e3, (b - t).as_secs_f64() * 1e3]);
        cell.lost.push([lost(&m, &p, t, end), lost(&p, &m, t, end)]);
    }
    m.pump();
    p.pump();
    let changes = m.count("network-changed");
    let want = if matches!(
        what,
        Disruption::Switch | Disruption::SwitchMapped | Disruption::SwitchTcpRelay
    ) {
        times
    } else {
        0
    };
    if changes != want {
        cell.trouble.push(format!(
            "{label}: {changes} network-changed events for {times} {what:?}"
        ));
    }
    drop((m, p));
    drop(signal);
    cell
}

/// Runs cells in parallel, one thread each: (mover controls, relayed, disruption, the
/// mover's first NAT) and how many times.
fn run_cells<const N: usize>(
    bin: &Path,
    cells: [(bool, bool, Disruption, NatConfig); N],
    times: usize,
) -> Vec<Cell> {
    std::thread::scope(|s| {
        let handles: Vec<_> = cells
            .into_iter()
            .map(|(c, r, what, nat)| s.spawn(move || run_cell(bin, c, r, what, nat, times)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("cell thread"))
            .collect()
    })
}

/// The table of `cells` (titled `title`), and what went wrong.
fn summarize(title: &str, cells: &[Cell], times: usize) -> (String, Vec<String>) {
    let mut report = format!(
        "\n{title}\n\
         | cell | mover→peer median | p90 | peer→mover median | p90 | lines lost after it (m→p, p→m) |\n\
         |---|---|---|---|---|---|\n"
    );
    let mut trouble = Vec::new();
    for c in cells {
        let mut dirs = [Vec::new(), Vec::new()];
        for r in &c.recovery {
            dirs[0].push(r[0]);
            dirs[1].push(r[1]);
        }
        for d in &mut dirs {
            d.sort_by(f64::total_cmp);
        }
        let lost: [usize; 2] = c
            .lost
            .iter()
            .fold([0, 0], |acc, l| [acc[0] + l[0], acc[1] + l[1]]);
        report += &format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {}, {} |\n",
            c.label,
            percentile(&dirs[0], 0.5),
            percentile(&dirs[0], 0.9),
            percentile(&dirs[1], 0.5),
            percentile(&dirs[1], 0.9),
            lost[0],
            lost[1]
        );
        trouble.extend(c.trouble.iter().cloned());
        if c.recovery.len() != times && c.trouble.is_empty() {
            trouble.push(format!(
                "{}: {} measured of {times}",
                c.label,
                c.recovery.len()
            ));
        }
    }
    (report, trouble)
}

#[test]
fn an_uplink_switch_mid_transfer_recovers_in_every_role_and_path() {
    if !lab_available("lab_mobility", &["coturn"]) {
        return;
    }
    let bin = bins::pinhole().expect("pinhole binary");
    let cells = run_cells(
        &bin,
        [(true, false), (false, false), (true, true), (false, true)]
            .map(|(c, r)| (c, r, Disruption::Switch, NatConfig::default())),
        SWITCHES,
    );
    let (report, trouble) = summarize(
        "uplink switch, 10 per cell: ms from the new network up to data flowing again",
        &cells,
        SWITCHES,
    );
    println!("{report}");
    assert!(trouble.is_empty(), "{report}\n{}", trouble.join("\n\n"));
}

/// The uplink switch with the mover relay-only through coturn over TCP, in both roles,
/// four times each: the TCP connection from the old network is closed, a new one made
/// from the new network, and the relayed path comes back.
#[test]
fn an_uplink_switch_under_a_relay_over_tcp_recovers() {
    if !lab_available("lab_mobility", &["coturn"]) {
        return;
    }
    let bin = bins::pinhole().expect("pinhole binary");
    let cells = run_cells(
        &bin,
        [true, false].map(|c| (c, true, Disruption::SwitchTcpRelay, NatConfig::default())),
        4,
    );
    let (report, trouble) = summarize(
        "uplink switch under a relay over TCP, 4 per cell: ms from the new network up to data flowing again",
        &cells,
        4,
    );
    println!("{report}");
    assert!(trouble.is_empty(), "{report}\n{}", trouble.join("\n\n"));
}

/// coturn restarts under a relayed connection (the mover relay-only), three times, in
/// each role: the allocation's liveness check gets 437 within seconds, the allocation is
/// made again, its candidate carries the data, and the controlling side moves the
/// nomination to it ([`pinhole::ice::SILENT_PATH`] when the peer controls). Times count
/// from coturn answering again.
#[test]
fn a_turn_server_restart_under_a_relayed_transfer_is_recovered_from() {
    if !lab_available("lab_mobility", &["coturn"]) {
        return;
    }
    let bin = bins::pinhole().expect("pinhole binary");
    let cells = run_cells(
        &bin,
        [true, false].map(|c| (c, true, Disruption::TurnRestart, NatConfig::default())),
        3,
    );
    let (report, trouble) = summarize("coturn restarted, 3 per cell", &cells, 3);
    println!("{report}");
    assert!(trouble.is_empty(), "{report}\n{}", trouble.join("\n\n"));
}

/// The uplink switch where only a port mapping lets the peer in (both of the mover's
/// routers NAT with random ports and run miniupnpd; the peer's NAT is endpoint-dependent;
/// no relay, no birthday probing): after each switch the mover's connection maps its
/// socket through the new gateway, and the path ends at that mapping. Four switches, in
/// each role.
#[test]
fn the_port_mapping_follows_an_uplink_switch() {
    if !lab_available("lab_mobility", &["coturn", "miniupnpd"]) {
        return;
    }
    let bin = bins::pinhole().expect("pinhole binary");
    let cells = run_cells(
        &bin,
        [true, false].map(|c| (c, false, Disruption::SwitchMapped, NatConfig::default())),
        4,
    );
    let (report, trouble) = summarize("uplink switch through port mappings, 4 per cell", &cells, 4);
    println!("{report}");
    assert!(trouble.is_empty(), "{report}\n{}", trouble.join("\n\n"));
}

/// The mover's NAT drops every mapping (`conntrack -F`, no packet through it meanwhile)
/// mid-transfer, three times: with the lab's default NAT (port preserving: the next
/// packet gets the same mapping) and with an endpoint-independent NAT that allocates
/// random ports (the next packet gets a new external port, which the peer's
/// address-and-port-dependent filter drops, while the peer's packets go to the old one:
/// the direct pair is dead both ways). pinhole's silence probe
/// (`pinhole::ice::UNANSWERED_CHECK`) gives it up within seconds for a relayed pair of
/// the peer's, which the new port reaches; each role.
#[test]
fn a_nat_that_drops_its_mappings_mid_transfer_is_recovered_from() {
    if !lab_available("lab_mobility", &["coturn", "conntrack"]) {
        return;
    }
    let bin = bins::pinhole().expect("pinhole binary");
    let random = NatConfig::port_restricted_cone().random_ports();
    let cells = run_cells(
        &bin,
        [
            (true, NatConfig::default()),
            (false, NatConfig::default()),
            (true, random.clone()),
            (false, random),
        ]
        .map(|(c, nat)| (c, false, Disruption::Flush, nat)),
        3,
    );
    let (report, trouble) = summarize("NAT mappings flushed, 3 per cell", &cells, 3);
    println!("{report}");
    assert!(trouble.is_empty(), "{report}\n{}", trouble.join("\n\n"));
}
