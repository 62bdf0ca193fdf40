//! Issue 14's keepalive proof: an idle connection through two NATs whose UDP mappings
//! time out after T, under each keepalive policy of `pinhole connect`, and what it costs
//! in packets.
//!
//! Each cell is two hosts, each behind its own Linux NAT router (the lab's default:
//! endpoint-independent mapping by port preservation, conntrack's address-and-port-
//! dependent filtering), with the router's UDP mapping timeout set to T: conntrack's
//! `nf_conntrack_udp_timeout` and `nf_conntrack_udp_timeout_stream` (per network
//! namespace: set in the router's, read back) and [`NatConfig::mapping_timeout`] (the
//! nft maps that keep an endpoint's external port). The two `pinhole connect`s meet in a
//! room of `pinhole signal`, gather from `pinhole serve` (STUN), connect directly
//! (`--no-relay --no-tcp --no-portmap`: one UDP path, nothing else to keep), wait
//! [`SETTLE`] (the checks toward the peer's unreachable private address retransmit for
//! about 17 s: setup, not idling), carry a line each way, and then stay idle for D
//! ([`IDLE_ENV`], default [`DEFAULT_IDLE`]). An nft counter in each router counts the UDP
//! packets its host sends during the idle window (forwarded from its LAN; the TCP
//! signalling is not counted), with a breakdown per destination. After the window each
//! side sends numbered lines until one reaches the other (one every [`RESEND`]): the time
//! from the end of the window to the first arrival is the time to first data.
//!
//! The policies, for T = 120 s and T = 30 s:
//!
//! - foreground: the default, RFC 7675 consent checks every 4–6 s;
//! - background (adaptive): SIGUSR1 when the window starts (an app going to the
//!   background); one round per adaptive interval, shared by the two sides;
//! - background with a fixed 15 s interval: `--keepalive background --keepalive-interval
//!   15` from the start (the classic fixed keepalive, for comparison);
//! - suspended, then resumed: SIGTSTP when the window starts, SIGUSR2 (foreground) to
//!   both at its end; the path is probed and, if it does not answer within 4 s, ICE
//!   restarts through the signalling;
//! - suspended, then A alone resumed: the same, but only A gets SIGUSR2 and talks first
//!   (B answers once A's line came): A's probe meets B's NAT, which forgot the path after
//!   a window longer than T, so this is the restart case;
//! - suspended, then resumed, behind NATs that allocate random ports (endpoint-independent
//!   mapping, address-and-port-dependent filtering): after a window longer than T both
//!   sides' mappings are new ones, both probes fail and both sides restart at once (the
//!   restarts cross in the signalling).
//!
//! Asserted: the stay-up policies (foreground, both backgrounds) carry data both ways
//! within [`ARRIVAL_BOUND`] after the window with no ICE restart (`network-changed`,
//! `peer-restarted`) and no `interrupted` event; the backgrounds then go back to the
//! foreground (SIGUSR2) and keep the path (no restart, no interruption, data within
//! [`ARRIVAL_BOUND`]); the suspended cells send nothing to the peer during the window and
//! carry data again within [`RESUME_BOUND`] (a restart allowed); adaptive background with
//! T = 120 s sends fewer packets per idle minute per side than the fixed 15 s keepalive
//! (4 a minute): at most [`MAX_BACKGROUND_RATE_LEARNING`] over the whole window, while the
//! interval is still learning (each round costs each side one packet, a check one way and
//! its answer the other; the interval grows from 25 s by 30 % per proven round, so a
//! 150 s window holds four or five rounds: 2 a minute), and, over a window of at least
//! [`LONG_WINDOW`], at most the target of [`MAX_BACKGROUND_RATE`] in the window's
//! last two thirds (the steady state). The figures (packets per idle minute, over the
//! window and in its last two thirds, the final interval, the time to first data, the
//! restarts) are printed as a markdown table.
//!
//! The cells run in parallel in one lab: the test takes about D plus a minute. Run it
//! with `PINHOLE_IDLE_SECS=1800` for the 30 minutes. Each side's stderr (events,
//! and `RUST_LOG`, `pinhole=debug` by default: `keepalive interval adapted`, `consent
//! lost`) goes to `$TMPDIR/pinhole-keepalive/<lab>/cellK-{a,b}.log`, kept when the test
//! fails or with `PINHOLE_LAB_KEEP_LOGS`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::{command, in_ns, run_in, run_in_with_input};
use pinhole_tests::lab::process::Process;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{
    Lab, NatConfig, PEER_IP, PINHOLE_PRIMARY, SERVER_READY_TIMEOUT, Uplink, bins,
};
use serde_json::Value;

/// The environment variable with the idle window in seconds.
const IDLE_ENV: &str = "PINHOLE_IDLE_SECS";
/// The idle window by default: longer than the 120 s NAT timeout.
const DEFAULT_IDLE: Duration = Duration::from_secs(150);
/// How long data may take to arrive after the window where the path is promised to stay.
const ARRIVAL_BOUND: Duration = Duration::from_secs(10);
/// How long data may take to flow again after a resume (the probe, 4 s, then a restart
/// through the signalling).
const RESUME_BOUND: Duration = Duration::from_secs(30);
/// How often a side sends a line until one arrives.
const RESEND: Duration = Duration::from_millis(200);
/// The most packets per idle minute per side in adaptive background with T = 120 s, over
/// the whole window (the interval learning; the fixed 15 s keepalive sends 4).
const MAX_BACKGROUND_RATE_LEARNING: f64 = 3.0;
/// The most in the last two thirds of a window of at least [`LONG_WINDOW`]: issue 14's
/// target.
const MAX_BACKGROUND_RATE: f64 = 1.0;
/// A window long enough for the steady state to be asserted.
const LONG_WINDOW: Duration = Duration::from_secs(900);
/// How long after connecting the window waits: the checks of the pairs that never work
/// (toward the peer's private host address) retransmit for about 17 s.
const SETTLE: Duration = Duration::from_secs(20);
/// Where `pinhole signal` listens (lab internet).
const SIGNAL_PORT: u16 = 8481;
/// How long a side may take to connect.
const CONNECT_BOUND: Duration = Duration::from_secs(40);

/// A keepalive policy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Foreground,
    Background,
    Fixed15,
    Suspended,
    /// Both suspended; only side A resumes (its probe meets B's NAT, which forgot it).
    SuspendedOneResumes,
    /// Both suspended and resumed, behind NATs that allocate random ports: the mappings
    /// made afresh at the resume are new ones, both probes fail, both sides restart.
    SuspendedPortsMove,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::Foreground => "foreground",
            Policy::Background => "background (adaptive)",
            Policy::Fixed15 => "background, fixed 15 s",
            Policy::Suspended => "suspended, then resumed",
            Policy::SuspendedOneResumes => "suspended, then A alone resumed",
            Policy::SuspendedPortsMove => "suspended, then resumed; random-port NATs",
        }
    }

    /// Whether the policy promises to keep the path up.
    fn stays_up(self) -> bool {
        matches!(
            self,
            Policy::Foreground | Policy::Background | Policy::Fixed15
        )
    }

    /// The `connect` flags it starts with.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Policy::Fixed15 => &["--keepalive", "background", "--keepalive-interval", "15"],
            _ => &[],
        }
    }

    /// The signal that starts the idle window, and the policy event it brings.
    fn at_idle(self) -> Option<(&'static str, &'static str)> {
        match self {
            Policy::Background => Some(("USR1", "background")),
            Policy::Suspended | Policy::SuspendedOneResumes | Policy::SuspendedPortsMove => {
                Some(("TSTP", "suspended"))
            }
            _ => None,
        }
    }
}

/// Lines a side got on stdout, and when.
type Log = Arc<Mutex<Vec<(String, Instant)>>>;

/// One side's `pinhole connect`; killed when dropped.
struct Side {
    child: Child,
    stdin: ChildStdin,
    got: Log,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
    log: PathBuf,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Side {
    fn spawn(bin: &Path, ns: &str, signal: &str, room: &str, extra: &[&str], log: PathBuf) -> Self {
        let stun = format!("stun:{PINHOLE_PRIMARY}");
        let mut args = vec![
            "connect",
            "--json",
            "--signal",
            signal,
            "--room",
            room,
            "--stun",
            &stun,
            "--no-relay",
            "--no-tcp",
            "--no-portmap",
            "--timeout",
            "30",
        ];
        args.extend_from_slice(extra);
        let mut child = in_ns(ns, &bin.to_string_lossy(), &args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "pinhole=debug".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning pinhole connect");
        let stdin = child.stdin.take().expect("stdin");
        let got: Log = Arc::default();
        let out = child.stdout.take().expect("stdout");
        let g = Arc::clone(&got);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                g.lock().unwrap().push((line, Instant::now()));
            }
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, events) = mpsc::channel();
        let path = log.clone();
        std::thread::spawn(move || {
            // Everything (events and the debug log) to the side's log file; events parsed.
            let mut file = std::fs::File::create(&path).ok();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Self {
            child,
            stdin,
            got,
            events,
            seen: Vec::new(),
            log,
        }
    }

    /// Takes the events that came so far.
    fn pump(&mut self) {
        while let Ok(v) = self.events.try_recv() {
            self.seen.push(v);
        }
    }

    fn count(&mut self, event: &str) -> usize {
        self.pump();
        self.seen.iter().filter(|e| e["event"] == event).count()
    }

    /// Waits (bounded) for an event that `want` accepts.
    fn wait_for(&mut self, within: Duration, want: impl Fn(&Value) -> bool) -> Option<Value> {
        self.pump();
        if let Some(v) = self.seen.iter().find(|v| want(v)) {
            return Some(v.clone());
        }
        let until = Instant::now() + within;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if want(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// The last background interval it reported, in seconds.
    fn last_interval(&mut self) -> Option<f64> {
        self.pump();
        self.seen
            .iter()
            .rev()
            .find(|e| e["event"] == "keepalive-interval")
            .and_then(|e| e["interval_s"].as_f64())
    }

    fn signal(&self, sig: &str) {
        let out = command("kill", &[format!("-{sig}"), self.child.id().to_string()])
            .output()
            .expect("kill");
        assert!(out.status.success(), "kill -{sig}: {out:?}");
    }

    fn send(&mut self, line: &str) {
        // One write per line: one datagram.
        let _ = self.stdin.write_all(format!("{line}\n").as_bytes());
        let _ = self.stdin.flush();
    }

    /// When the first line starting with `prefix` arrived at or after `t`.
    fn arrival(&self, prefix: &str, t: Instant) -> Option<Instant> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .find(|(l, at)| l.starts_with(prefix) && *at >= t)
            .map(|(_, at)| *at)
    }

    fn transcript(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        format!(
            "--- {} (last 60 lines) ---\n{}",
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// Both sides send `prefix-N` lines every [`RESEND`] until each has got one of the
/// other's, for at most `bound`; returns the time from `t0` to each arrival (a→b, b→a).
/// With `b_answers`, b sends only once a's line has come (a request and its answer: b's
/// own packets do not open its NAT for a).
fn exchange(
    a: &mut Side,
    b: &mut Side,
    prefix: &str,
    t0: Instant,
    bound: Duration,
    b_answers: bool,
) -> [Option<Duration>; 2] {
    let mut n = 0u32;
    loop {
        let ab = b.arrival(prefix, t0);
        let ba = a.arrival(prefix, t0);
        if (ab.is_some() && ba.is_some()) || t0.elapsed() >= bound {
            return [ab, ba].map(|t| t.map(|t| t.saturating_duration_since(t0)));
        }
        if ab.is_none() {
            a.send(&format!("{prefix}-a-{n}"));
        }
        if ba.is_none() && (ab.is_some() || !b_answers) {
            b.send(&format!("{prefix}-b-{n}"));
        }
        n += 1;
        std::thread::sleep(RESEND);
    }
}

/// The nft counters of a router: UDP from its LAN (all, and toward the peer's router).
fn add_counters(ns: &str, peer_wan: std::net::Ipv4Addr) {
    let rules = format!(
        "table ip idle {{\n\
         \x20 counter sent {{ }}\n\
         \x20 counter sent_peer {{ }}\n\
         \x20 set dests {{ type ipv4_addr . inet_service; flags dynamic; counter; }}\n\
         \x20 chain count {{ type filter hook forward priority -10; policy accept;\n\
         \x20   iifname \"lan\" meta l4proto udp ip daddr {peer_wan} counter name \"sent_peer\"\n\
         \x20   iifname \"lan\" meta l4proto udp counter name \"sent\"\n\
         \x20   iifname \"lan\" meta l4proto udp add @dests {{ ip daddr . udp dport }}\n\
         \x20 }}\n\
         }}\n"
    );
    run_in_with_input(ns, "nft", &["-f", "-"], &rules).expect("nft counters");
}

/// A counter's packets.
fn packets(ns: &str, counter: &str) -> u64 {
    let out = run_in(ns, "nft", &["list", "counter", "ip", "idle", counter]).expect("nft list");
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out:?}"))
}

/// The UDP packets sent through a router so far, per destination (`IP:PORT`).
fn destinations(ns: &str) -> BTreeMap<String, u64> {
    let out = run_in(ns, "nft", &["list", "set", "ip", "idle", "dests"]).expect("nft list");
    let words: Vec<&str> = out
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .filter(|w| !w.is_empty())
        .collect();
    let mut m = BTreeMap::new();
    for w in words.windows(6) {
        if w[1] == "." && w[3] == "counter" && w[4] == "packets" {
            if let Ok(n) = w[5].parse() {
                m.insert(format!("{}:{}", w[0], w[2]), n);
            }
        }
    }
    m
}

/// What a cell needs of the lab.
#[derive(Debug, Clone)]
struct CellSpec {
    t: Duration,
    policy: Policy,
    room: String,
    /// (host namespace, router namespace) of each side.
    sides: [(String, String); 2],
    logs: [PathBuf; 2],
}

/// One cell's figures.
#[derive(Debug)]
struct Outcome {
    spec: CellSpec,
    /// UDP packets each side sent during the window: all, and toward the peer.
    sent: [u64; 2],
    sent_peer: [u64; 2],
    /// Packets per minute each side sent in the window's last two thirds.
    steady: [f64; 2],
    /// The window's packets per destination, each side.
    dests: [Vec<(String, u64)>; 2],
    idle: Duration,
    /// The final background interval each side reported.
    interval: [Option<f64>; 2],
    /// From the window's end to the first arrival, a→b and b→a.
    first_data: [Option<Duration>; 2],
    /// ICE restarts (`network-changed` + `peer-restarted`) and `interrupted` events,
    /// each side, after connecting.
    restarts: [usize; 2],
    interrupted: [usize; 2],
    /// Background cells: restarts and interruptions after coming back to the foreground.
    foreground: Option<[usize; 2]>,
    trouble: Vec<String>,
}

impl Outcome {
    fn per_minute(&self, n: u64) -> f64 {
        n as f64 * 60.0 / self.idle.as_secs_f64()
    }
}

fn run_cell(bin: &Path, signal: &str, spec: CellSpec, idle: Duration) -> Outcome {
    let mut o = Outcome {
        spec: spec.clone(),
        sent: [0; 2],
        sent_peer: [0; 2],
        steady: [0.0; 2],
        dests: [Vec::new(), Vec::new()],
        idle,
        interval: [None; 2],
        first_data: [None; 2],
        restarts: [0; 2],
        interrupted: [0; 2],
        foreground: None,
        trouble: Vec::new(),
    };
    let label = format!("T={} s, {}", spec.t.as_secs(), spec.policy.label());
    let flags = spec.policy.flags();
    // The first to join the room controls.
    let mut a = Side::spawn(
        bin,
        &spec.sides[0].0,
        signal,
        &spec.room,
        flags,
        spec.logs[0].clone(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut b = Side::spawn(
        bin,
        &spec.sides[1].0,
        signal,
        &spec.room,
        flags,
        spec.logs[1].clone(),
    );
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        if s.wait_for(CONNECT_BOUND, |e| e["event"] == "connected")
            .is_none()
        {
            o.trouble.push(format!(
                "{label}: side {name} never connected\n{}",
                s.transcript()
            ));
            return o;
        }
    }
    // The checks of the other pairs (toward the peer's private host address) end first:
    // their retransmissions are the connection's setup, not its idling.
    std::thread::sleep(SETTLE);
    let before = exchange(
        &mut a,
        &mut b,
        "hello",
        Instant::now(),
        ARRIVAL_BOUND,
        false,
    );
    if before.iter().any(Option::is_none) {
        o.trouble.push(format!(
            "{label}: the first lines did not cross: {before:?}\n{}\n{}",
            a.transcript(),
            b.transcript()
        ));
        return o;
    }
    // The window starts: the app goes to the background, or is suspended.
    if let Some((sig, policy)) = spec.policy.at_idle() {
        for (name, s) in [("a", &mut a), ("b", &mut b)] {
            s.signal(sig);
            if s.wait_for(Duration::from_secs(5), |e| {
                e["event"] == "keepalive" && e["policy"] == policy
            })
            .is_none()
            {
                o.trouble.push(format!(
                    "{label}: side {name}: no keepalive event {policy} after SIG{sig}: {:?}",
                    s.seen
                ));
                return o;
            }
        }
    }
    let routers = [&spec.sides[0].1, &spec.sides[1].1];
    let start = routers.map(|r| (packets(r, "sent"), packets(r, "sent_peer")));
    let start_dests = routers.map(|r| destinations(r));
    let began = Instant::now();
    std::thread::sleep(idle / 3);
    let third = routers.map(|r| packets(r, "sent"));
    let thirds = Instant::now();
    std::thread::sleep(idle.saturating_sub(began.elapsed()));
    let end = routers.map(|r| (packets(r, "sent"), packets(r, "sent_peer")));
    let steady = thirds.elapsed().as_secs_f64() / 60.0;
    for i in 0..2 {
        o.steady[i] = (end[i].0 - third[i]) as f64 / steady;
    }
    for i in 0..2 {
        for (d, n) in destinations(routers[i]) {
            let n = n - start_dests[i].get(&d).copied().unwrap_or(0);
            if n > 0 {
                o.dests[i].push((d, n));
            }
        }
    }
    o.idle = began.elapsed();
    for i in 0..2 {
        o.sent[i] = end[i].0 - start[i].0;
        o.sent_peer[i] = end[i].1 - start[i].1;
    }
    o.interval = [a.last_interval(), b.last_interval()];
    let t0 = Instant::now();
    let bound = if matches!(spec.policy, Policy::Suspended | Policy::SuspendedPortsMove) {
        for s in [&a, &b] {
            s.signal("USR2");
        }
        RESUME_BOUND
    } else if spec.policy == Policy::SuspendedOneResumes {
        a.signal("USR2");
        RESUME_BOUND
    } else {
        ARRIVAL_BOUND
    };
    let b_answers = spec.policy == Policy::SuspendedOneResumes;
    o.first_data = exchange(&mut a, &mut b, "after", t0, bound, b_answers);
    // Events that a late restart would bring.
    std::thread::sleep(Duration::from_millis(500));
    let restarts = |s: &mut Side| s.count("network-changed") + s.count("peer-restarted");
    for (i, s) in [&mut a, &mut b].into_iter().enumerate() {
        o.restarts[i] = restarts(s);
        o.interrupted[i] = s.count("interrupted");
    }
    let stay = spec.policy.stays_up();
    let mut bad = Vec::new();
    if matches!(spec.policy, Policy::Background | Policy::Fixed15) {
        // Back to the foreground: the path the background kept is probed, and must answer
        // (no restart, no interruption), and carry data.
        for s in [&a, &b] {
            s.signal("USR2");
        }
        std::thread::sleep(pinhole::ice::RESUME_PROBE + Duration::from_secs(3));
        let back = exchange(&mut a, &mut b, "fg", Instant::now(), ARRIVAL_BOUND, false);
        let mut after = [0; 2];
        for (i, s) in [&mut a, &mut b].into_iter().enumerate() {
            after[i] = restarts(s) + s.count("interrupted") - o.restarts[i] - o.interrupted[i];
        }
        o.foreground = Some(after);
        if after != [0, 0] || back.iter().any(Option::is_none) {
            bad.push(format!(
                "back in the foreground the path was not kept: restarts and interruptions \
                 {after:?}, data {back:?}"
            ));
        }
    }
    if o.first_data.iter().any(Option::is_none) {
        bad.push(format!(
            "data did not flow both ways within {} s after the window: {:?}",
            bound.as_secs(),
            o.first_data
        ));
    }
    if stay && (o.restarts != [0, 0] || o.interrupted != [0, 0]) {
        bad.push(format!(
            "the path was not kept: restarts {:?}, interrupted {:?}",
            o.restarts, o.interrupted
        ));
    }
    if !stay && o.sent_peer != [0, 0] {
        bad.push(format!(
            "suspended, yet packets went to the peer: {:?}",
            o.sent_peer
        ));
    }
    if spec.policy == Policy::Background && spec.t == Duration::from_secs(120) {
        for i in 0..2 {
            let rate = o.per_minute(o.sent[i]);
            if rate > MAX_BACKGROUND_RATE_LEARNING {
                bad.push(format!(
                    "side {i}: {rate:.2} packets per idle minute, above \
                     {MAX_BACKGROUND_RATE_LEARNING}"
                ));
            }
            if idle >= LONG_WINDOW && o.steady[i] > MAX_BACKGROUND_RATE {
                bad.push(format!(
                    "side {i}: {:.2} packets per idle minute in the window's last two \
                     thirds, above {MAX_BACKGROUND_RATE}",
                    o.steady[i]
                ));
            }
        }
    }
    if !bad.is_empty() {
        o.trouble.push(format!(
            "{label}: {}\n{}\n{}",
            bad.join("; "),
            a.transcript(),
            b.transcript()
        ));
    }
    o
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
}

fn table(outcomes: &[Outcome], idle: Duration) -> String {
    let mut t = format!(
        "\nkeepalives over an idle window of {} s (packets: UDP each side sent through its \
         NAT during the window; to peer: of those, toward the peer's NAT)\n\n\
         | NAT UDP timeout | policy | pkts/idle-min A | pkts/idle-min B | last ⅔: pkts/min A / B \
         | to peer A / B | \
         final interval A / B (s) | first data after idle A→B / B→A (ms) | ICE restarts A / B \
         | interrupted A / B | back to foreground: restarts + interruptions A / B \
         |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        idle.as_secs()
    );
    for o in outcomes {
        let iv = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.1}"));
        let _ = writeln!(
            t,
            "| {} s | {} | {:.2} ({}) | {:.2} ({}) | {:.2} / {:.2} | {} / {} | {} / {} | {} / {} | {} / {} | {} / {} | {} |",
            o.spec.t.as_secs(),
            o.spec.policy.label(),
            o.per_minute(o.sent[0]),
            o.sent[0],
            o.per_minute(o.sent[1]),
            o.sent[1],
            o.steady[0],
            o.steady[1],
            o.sent_peer[0],
            o.sent_peer[1],
            iv(o.interval[0]),
            iv(o.interval[1]),
            ms(o.first_data[0]),
            ms(o.first_data[1]),
            o.restarts[0],
            o.restarts[1],
            o.interrupted[0],
            o.interrupted[1],
            o.foreground
                .map_or("—".into(), |[a, b]| format!("{a} / {b}")),
        );
    }
    t.push_str("\nwhere the window's packets went (IP:PORT packets), side A; side B:\n");
    for o in outcomes {
        let list = |v: &[(String, u64)]| {
            v.iter()
                .map(|(d, n)| format!("{d} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            t,
            "- T={} s, {}: {}; {}",
            o.spec.t.as_secs(),
            o.spec.policy.label(),
            list(&o.dests[0]),
            list(&o.dests[1])
        );
    }
    t
}

fn idle_window() -> Duration {
    match std::env::var(IDLE_ENV) {
        Ok(v) => Duration::from_secs(
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{IDLE_ENV}={v:?}: not a number of seconds")),
        ),
        Err(_) => DEFAULT_IDLE,
    }
}

#[test]
fn idle_connections_stay_up_under_each_keepalive_policy_and_cost_few_packets() {
    if !lab_available("lab_keepalive", &["nft"]) {
        return;
    }
    let idle = idle_window();
    let bin = bins::pinhole().expect("pinhole binary");
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    let listen = format!("{PEER_IP}:{SIGNAL_PORT}");
    let mut signal = Process::spawn(
        "pinhole signal",
        lab.internet(),
        &bin,
        &[
            "signal".to_owned(),
            "--listen".to_owned(),
            listen.clone(),
            "--duration".to_owned(),
            (idle.as_secs() + 600).to_string(),
        ],
        &lab.dir().join("pinhole-signal.log"),
    )
    .expect("pinhole signal");
    signal
        .wait_ready(SERVER_READY_TIMEOUT, |p| p.log().contains("signalling on"))
        .expect("pinhole signal ready");
    let signal_url = format!("http://{listen}");
    // The sides' logs (events and RUST_LOG) outside the lab's directory, which a later
    // lab sweeps once this process is gone: kept unless the test passes, or always with
    // PINHOLE_LAB_KEEP_LOGS.
    let logs = std::env::temp_dir()
        .join("pinhole-keepalive")
        .join(lab.prefix());
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut specs = Vec::new();
    for t in [120u64, 30] {
        for policy in [
            Policy::Foreground,
            Policy::Background,
            Policy::Fixed15,
            Policy::Suspended,
            Policy::SuspendedOneResumes,
            Policy::SuspendedPortsMove,
        ] {
            let k = specs.len();
            let t = Duration::from_secs(t);
            let nat = NatConfig {
                mapping_timeout: t,
                ..if policy == Policy::SuspendedPortsMove {
                    NatConfig::port_restricted_cone().random_ports()
                } else {
                    NatConfig::default()
                }
            };
            let mut sides = Vec::new();
            for s in ["a", "b"] {
                let (router, host) = (format!("r{k}{s}"), format!("h{k}{s}"));
                let r = lab
                    .add_router(&router, nat.clone(), Uplink::Internet)
                    .expect("router")
                    .clone();
                // Conntrack's UDP timeouts are per network namespace: the router's own.
                let secs = t.as_secs();
                run_in(
                    &r.ns,
                    "sysctl",
                    &[
                        "-qw",
                        &format!("net.netfilter.nf_conntrack_udp_timeout={secs}"),
                        &format!("net.netfilter.nf_conntrack_udp_timeout_stream={secs}"),
                    ],
                )
                .expect("conntrack timeouts");
                let h = lab.add_host(&host, &router).expect("host").clone();
                sides.push((h.ns, r.ns, r.wan_ip));
            }
            add_counters(&sides[0].1, sides[1].2);
            add_counters(&sides[1].1, sides[0].2);
            specs.push(CellSpec {
                t,
                policy,
                room: format!("idle{k}"),
                sides: [
                    (sides[0].0.clone(), sides[0].1.clone()),
                    (sides[1].0.clone(), sides[1].1.clone()),
                ],
                logs: [
                    logs.join(format!("cell{k}-a.log")),
                    logs.join(format!("cell{k}-b.log")),
                ],
            });
        }
    }
    // The timeouts took: read one back.
    let check = run_in(
        &specs[specs.len() - 1].sides[0].1,
        "sysctl",
        &["-n", "net.netfilter.nf_conntrack_udp_timeout_stream"],
    )
    .expect("sysctl");
    assert_eq!(check.trim(), "30", "conntrack's timeout in a router");
    eprintln!(
        "lab_keepalive: {} cells, idle window {} s, logs in {}",
        specs.len(),
        idle.as_secs(),
        logs.display()
    );
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                let (bin, url) = (bin.clone(), signal_url.clone());
                s.spawn(move || run_cell(&bin, &url, spec, idle))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("cell thread"))
            .collect()
    });
    let report = table(&outcomes, idle);
    println!("{report}");
    eprintln!("{report}");
    let trouble: Vec<&String> = outcomes.iter().flat_map(|o| &o.trouble).collect();
    if trouble.is_empty() && std::env::var_os("PINHOLE_LAB_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
    assert!(
        trouble.is_empty(),
        "{report}\n{}",
        trouble
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}
