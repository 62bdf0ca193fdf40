//! pinhole and libnice in the NAT lab (issue 11's proof and benchmarks).
//!
//! The libnice side is `tests/libnice/nice_peer.py` (Nice.Agent through Python GI, Debian
//! `gir1.2-nice-0.1` and `python3-gi`; `tests/lab-deps.sh` installs them): a full peer of
//! `pinhole connect --signal-dir`, writing and reading the same `DIR/NAME.sdp` files of
//! RFC 8839 lines. Both print the same JSON events on stderr (`remote-description`,
//! `valid-pair`, `connected`, `path-changed`, `first-data`; libnice also `ready`).
//!
//! - [`pinhole_and_libnice_interoperate`]: `pinhole connect` ⇄ libnice, pinhole
//!   controlling and controlled, a line each way, in direct cells (the oracle of
//!   `lab_connect` says a direct path exists) and relayed cells (through coturn: a pair of
//!   NATs with no direct path, and both sides forced onto the relay). Pass: both sides
//!   report a selected pair and each printed the other's line. A table shows the path
//!   each side settled on and the times.
//! - [`connect_time_vs_libnice`]: the benchmark, measured and printed, not asserted:
//!   pinhole ⇄ pinhole and libnice ⇄ libnice in one direct cell at ~0 ms and at 100 ms
//!   RTT, several runs each, medians side by side.
//!
//! **The moment both sides hold the remote description** (t0 of the benchmark). Each side
//! writes its whole description into its own directory; the test waits until both are
//! complete (`a=end-of-candidates`), then puts each into the other's directory at once
//! (write and rename: a reader sees all of it or nothing). A side *holds* the remote
//! description when it has applied the peer's credentials, every candidate and
//! `a=end-of-candidates`; it says so with a `remote-description` event carrying the wall
//! clock (`unix_ms`, the one clock two processes share), and times every later event on
//! its own monotonic clock. t0 is the later side's `remote-description`; every time in
//! the benchmark is from t0, so gathering and the signalling's file polling are outside.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::{command, in_ns, output_within};
use pinhole_tests::lab::support::{in_ci, lab_available, say};
use pinhole_tests::lab::{
    COTURN_PRIMARY, COTURN_USER, Host, Lab, NatConfig, PINHOLE_PRIMARY, Uplink, bins,
};
use serde_json::Value;

/// The Python with Debian's `python3-gi` (not whatever `python3` is first on PATH).
const PYTHON: &str = "/usr/bin/python3";
/// Each side's bound on finding a path (`--timeout` of both programs).
const PEER_TIMEOUT_SECS: u64 = 20;
/// The bound on one interop run, from spawn to both done (then both are killed).
const RUN_BUDGET: Duration = Duration::from_secs(PEER_TIMEOUT_SECS + 15);
/// How long an interop run goes on once both sides have a pair and the other's line.
const SETTLE: Duration = Duration::from_secs(3);

/// The tests of this file one at a time: the benchmark's times should not share the two
/// cores with the interop runs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn nice_peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("libnice/nice_peer.py")
}

/// Why libnice cannot run here, or `None` when it can.
fn libnice_unavailable() -> Option<String> {
    if !Path::new(PYTHON).is_file() {
        return Some(format!("{PYTHON} is missing (run tests/lab-deps.sh)"));
    }
    let probe = "import gi; gi.require_version('Nice', '0.1'); from gi.repository import Nice";
    match output_within(
        &mut command(PYTHON, &["-c", probe]),
        Duration::from_secs(20),
    ) {
        Ok(o) if o.success() => None,
        Ok(o) => Some(format!(
            "libnice through Python GI is not importable ({}); run tests/lab-deps.sh \
             (gir1.2-nice-0.1, python3-gi)",
            o.stderr.trim()
        )),
        Err(e) => Some(format!("running {PYTHON}: {e}")),
    }
}

/// The lab and libnice can both run here (else a loud skip, or a failure under CI=true).
fn available(test: &str) -> bool {
    if !lab_available(test, &["turnserver"]) {
        return false;
    }
    match libnice_unavailable() {
        None => true,
        Some(why) => {
            if in_ci() {
                panic!("libnice lab test `{test}` cannot run and CI=true forbids skipping: {why}");
            }
            say(&format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPING libnice lab test `{test}`: {why}\n\
                 !!! (it passes without running; with CI=true it would fail)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            ));
            false
        }
    }
}

/// Which ICE implementation a side runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Pinhole,
    Libnice,
}

impl Imp {
    fn label(self) -> &'static str {
        match self {
            Imp::Pinhole => "pinhole",
            Imp::Libnice => "libnice",
        }
    }
}

/// How one side is started.
#[derive(Debug, Clone)]
struct SideSpec {
    imp: Imp,
    host: Host,
    dir: PathBuf,
    name: &'static str,
    peer: &'static str,
    /// The line it sends.
    line: String,
    /// With coturn (TURN/UDP).
    turn: bool,
    /// Only relayed candidates (pinhole `--no-direct`, libnice `force-relay`).
    relay_only: bool,
    /// libnice: how long it stays once its line went and one came (then exits 0).
    linger: f64,
}

/// A running side, killed when dropped. Its stdout and stderr are read as they come.
struct Side {
    spec: SideSpec,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line so far.
    lines: Vec<String>,
    /// The JSON ones.
    events: Vec<Value>,
    code: Option<i32>,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Side {
    fn spawn(spec: SideSpec, pinhole: &Path) -> Side {
        let dir = spec.dir.to_string_lossy().into_owned();
        let (user, pass) = COTURN_USER;
        let mut args: Vec<String> = Vec::new();
        let program = match spec.imp {
            Imp::Pinhole => {
                args.extend(
                    [
                        "connect",
                        "--json",
                        "--signal-dir",
                        &dir,
                        "--name",
                        spec.name,
                        "--peer",
                        spec.peer,
                        "--stun",
                        &format!("stun:{PINHOLE_PRIMARY}"),
                        "--timeout",
                        &PEER_TIMEOUT_SECS.to_string(),
                    ]
                    .map(String::from),
                );
                if spec.turn {
                    args.extend(
                        [
                            "--turn",
                            &format!("turn:{COTURN_PRIMARY}"),
                            "--user",
                            user,
                            "--password",
                            pass,
                        ]
                        .map(String::from),
                    );
                }
                if spec.relay_only {
                    args.push("--no-direct".into());
                }
                pinhole.to_string_lossy().into_owned()
            }
            Imp::Libnice => {
                args.push(nice_peer_script().to_string_lossy().into_owned());
                args.extend(
                    [
                        "--signal-dir",
                        &dir,
                        "--name",
                        spec.name,
                        "--peer",
                        spec.peer,
                        // pinhole serve, as pinhole uses: libnice's server-reflexive
                        // discovery sends RFC 3489 Binding requests (no magic cookie),
                        // which it answers with MAPPED-ADDRESS (RFC 8489 §12).
                        "--stun",
                        &PINHOLE_PRIMARY.to_string(),
                        "--send",
                        &spec.line,
                        "--timeout",
                        &PEER_TIMEOUT_SECS.to_string(),
                        "--linger",
                        &spec.linger.to_string(),
                    ]
                    .map(String::from),
                );
                if spec.turn {
                    args.extend(
                        [
                            "--turn",
                            &COTURN_PRIMARY.to_string(),
                            "--user",
                            user,
                            "--password",
                            pass,
                        ]
                        .map(String::from),
                    );
                }
                if spec.relay_only {
                    args.push("--relay-only".into());
                }
                PYTHON.to_owned()
            }
        };
        let mut child = in_ns(&spec.host.ns, &program, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let mut stdin = child.stdin.take();
        if spec.imp == Imp::Pinhole {
            // pinhole reads stdin once it has a nominated pair: the line waits there, and
            // goes at once then. stdin stays open until the test is done.
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(format!("{}\n", spec.line).as_bytes());
                let _ = s.flush();
            }
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let mut out = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = out.read(&mut b) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&b[..n]);
            }
        });
        let err = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Side {
            spec,
            child,
            stdin,
            stdout,
            stderr: rx,
            lines: Vec::new(),
            events: Vec::new(),
            code: None,
        }
    }

    /// Takes in what stderr has said, waiting at most `wait` for a first line.
    fn pump(&mut self, wait: Duration) {
        let mut first = true;
        loop {
            let got = if first {
                self.stderr.recv_timeout(wait).ok()
            } else {
                self.stderr.try_recv().ok()
            };
            first = false;
            let Some(line) = got else { return };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.is_object() {
                    self.events.push(v);
                }
            }
            self.lines.push(line);
        }
    }

    fn exited(&mut self) -> bool {
        if self.code.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.code = Some(s.code().unwrap_or(-1));
            }
        }
        self.code.is_some()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn event(&self, name: &str) -> Option<&Value> {
        self.events.iter().find(|e| e["event"] == name)
    }

    /// The pair it settled on: its last `connected` or `path-changed` event.
    fn settled(&self) -> Option<&Value> {
        self.events
            .iter()
            .rfind(|e| e["event"] == "connected" || e["event"] == "path-changed")
    }

    /// Stops it: stdin closed, then killed after `grace` unless it has exited.
    fn stop(&mut self, grace: Duration) {
        drop(self.stdin.take());
        let until = Instant::now() + grace;
        while !self.exited() && Instant::now() < until {
            self.pump(Duration::from_millis(20));
        }
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The readers end with the process; what is left comes at once.
        self.pump(Duration::from_millis(200));
    }

    fn transcript(&self) -> String {
        format!(
            "--- {} {} on {} (exit {:?}) ---\nstdout: {:?}\nstderr:\n{}\n",
            self.spec.imp.label(),
            self.spec.name,
            self.spec.host.name,
            self.code,
            self.stdout(),
            self.lines.join("\n")
        )
    }
}

/// Whether an event's pair crosses the relay: a relayed candidate at either end, or an
/// address on coturn's IP (a peer-reflexive candidate a side learned from checks that
/// came through the relay before the peer's description did).
fn relay_in(ev: &Value) -> bool {
    let relay_ip = format!("{}:", COTURN_PRIMARY.ip());
    ["local", "remote"].iter().any(|end| {
        ev[end]["type"] == "relay"
            || ev[end]["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&relay_ip))
    })
}

fn pair_types(ev: Option<&Value>) -> String {
    ev.map_or_else(
        || "-".to_owned(),
        |e| {
            format!(
                "{}→{}",
                e["local"]["type"].as_str().unwrap_or("?"),
                e["remote"]["type"].as_str().unwrap_or("?")
            )
        },
    )
}

fn elapsed(ev: Option<&Value>) -> Option<f64> {
    ev.and_then(|e| e["elapsed_ms"].as_f64())
}

/// An event's time from t0 on the shared clock: its side's `remote-description` lines the
/// side's own clock up with the wall clock.
fn since(side: &Side, ev: Option<&Value>, t0_unix_ms: f64) -> Option<f64> {
    let desc = side.event("remote-description")?;
    let at = desc["unix_ms"].as_f64()? + (elapsed(ev)? - elapsed(Some(desc))?);
    Some(at - t0_unix_ms)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |m| format!("{m:.0}"))
}

/// One interop cell: the NAT in front of pinhole and of libnice, and how it must go.
struct Cell {
    label: &'static str,
    pinhole_nat: NatConfig,
    libnice_nat: NatConfig,
    /// What the oracle of `lab_connect` says (or "forced" onto the relay).
    expected: &'static str,
    relay_only: bool,
}

fn cells() -> Vec<Cell> {
    let apdf = || NatConfig::port_restricted_cone().random_ports();
    vec![
        Cell {
            label: "linux ↔ EIM/APDF",
            pinhole_nat: NatConfig::default(),
            libnice_nat: apdf(),
            expected: "direct",
            relay_only: false,
        },
        Cell {
            label: "EDM ↔ EIM/ADF",
            pinhole_nat: NatConfig::symmetric(),
            libnice_nat: NatConfig::restricted_cone().random_ports(),
            expected: "direct",
            relay_only: false,
        },
        Cell {
            label: "EIM/ADF ↔ EDM",
            pinhole_nat: NatConfig::restricted_cone().random_ports(),
            libnice_nat: NatConfig::symmetric(),
            expected: "direct",
            relay_only: false,
        },
        Cell {
            label: "EDM ↔ EIM/APDF",
            pinhole_nat: NatConfig::symmetric(),
            libnice_nat: apdf(),
            expected: "relay",
            relay_only: false,
        },
        Cell {
            label: "linux ↔ linux, relay only",
            pinhole_nat: NatConfig::default(),
            libnice_nat: NatConfig::default(),
            expected: "relay (forced)",
            relay_only: true,
        },
    ]
}

/// What one interop run found.
struct Outcome {
    cell: usize,
    pinhole_controls: bool,
    sides: [Side; 2],
    lines: [String; 2],
    trouble: Vec<String>,
    took: Duration,
}

/// Runs pinhole (side 0) and libnice (side 1) until both have a selected pair and the
/// other's line, or the budget ends; libnice then exits by itself, pinhole is stopped.
fn interop_run(bin: &Path, specs: [SideSpec; 2]) -> ([Side; 2], Vec<String>, Duration) {
    let started = Instant::now();
    let deadline = started + RUN_BUDGET;
    let lines = [specs[0].line.clone(), specs[1].line.clone()];
    let [a, b] = specs;
    let mut sides = [Side::spawn(a, bin), Side::spawn(b, bin)];
    let done = |s: &Side, want: &str| {
        s.event("connected").is_some() && s.stdout().lines().any(|l| l == want)
    };
    while Instant::now() < deadline {
        for s in &mut sides {
            s.pump(Duration::from_millis(10));
        }
        if done(&sides[0], &lines[1]) && done(&sides[1], &lines[0]) {
            // Then a while longer, to see the path each settles on (a better pair that
            // validates later is renominated by pinhole when it controls).
            let settle = Instant::now() + SETTLE;
            while Instant::now() < settle && !sides.iter_mut().any(Side::exited) {
                for s in &mut sides {
                    s.pump(Duration::from_millis(10));
                }
            }
            break;
        }
        if sides.iter_mut().any(|s| s.exited()) {
            // One gave up (or crashed): what the other has now is all there is.
            std::thread::sleep(Duration::from_millis(300));
            for s in &mut sides {
                s.pump(Duration::from_millis(10));
            }
            break;
        }
    }
    let took = started.elapsed();
    let mut trouble = Vec::new();
    for (i, s) in sides.iter().enumerate() {
        if s.event("connected").is_none() {
            trouble.push(format!(
                "{} ({}) reported no selected pair",
                s.spec.imp.label(),
                s.spec.name
            ));
        }
        let want = &lines[1 - i];
        let out = s.stdout();
        if !out.lines().any(|l| l == want) || out.lines().any(|l| l != want) {
            trouble.push(format!(
                "{} printed {out:?}, expected one or more copies of {want:?} and nothing else",
                s.spec.imp.label()
            ));
        }
    }
    // libnice exits by itself (--linger after its line went and one came); pinhole does
    // not: libnice cannot send the empty datagram that ends a direction.
    let [p, n] = &mut sides;
    n.stop(Duration::from_secs(3));
    p.stop(Duration::from_millis(300));
    if n.code != Some(0) {
        trouble.push(format!("libnice exited {:?}, expected 0", n.code));
    }
    (sides, trouble, took)
}

#[test]
fn pinhole_and_libnice_interoperate() {
    if !available("lab_libnice interop") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bin = bins::pinhole().expect("the pinhole CLI");
    let started = Instant::now();
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    lab.start_coturn().expect("coturn");
    let cells = cells();
    let mut runs: Vec<(usize, bool, [SideSpec; 2])> = Vec::new();
    for (c, cell) in cells.iter().enumerate() {
        for pinhole_controls in [true, false] {
            let n = runs.len();
            let (rp, rn) = (format!("i{n}p"), format!("i{n}n"));
            lab.add_router(&rp, cell.pinhole_nat.clone(), Uplink::Internet)
                .expect("router");
            lab.add_router(&rn, cell.libnice_nat.clone(), Uplink::Internet)
                .expect("router");
            let hp = lab.add_host(&format!("{rp}-h"), &rp).expect("host").clone();
            let hn = lab.add_host(&format!("{rn}-h"), &rn).expect("host").clone();
            let dir = lab.dir().join(format!("interop-{n}"));
            std::fs::create_dir_all(&dir).expect("signal dir");
            // The smaller name controls, in both programs.
            let (pn, nn) = if pinhole_controls {
                ("a", "b")
            } else {
                ("b", "a")
            };
            let spec = |imp: Imp, host: Host, name, peer| SideSpec {
                imp,
                host,
                dir: dir.clone(),
                name,
                peer,
                line: format!("hello from {} ({})", imp.label(), cell.label),
                turn: true,
                relay_only: cell.relay_only,
                // Past SETTLE: it exits by itself after the test has seen the path.
                linger: SETTLE.as_secs_f64() + 0.5,
            };
            runs.push((
                c,
                pinhole_controls,
                [
                    spec(Imp::Pinhole, hp, pn, nn),
                    spec(Imp::Libnice, hn, nn, pn),
                ],
            ));
        }
    }
    let built = started.elapsed();
    let runs_started = Instant::now();
    // Every run at once: each mostly waits on the network.
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|(cell, pinhole_controls, specs)| {
                let bin = &bin;
                s.spawn(move || {
                    let lines = [specs[0].line.clone(), specs[1].line.clone()];
                    let (sides, trouble, took) = interop_run(bin, specs);
                    Outcome {
                        cell,
                        pinhole_controls,
                        sides,
                        lines,
                        trouble,
                        took,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("run thread"))
            .collect()
    });

    let ran = runs_started.elapsed();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\npinhole connect ⇄ libnice {} (nice_peer.py, RFC 5245 mode, aggressive nomination) in the NAT lab: \
         pinhole serve STUN, coturn TURN/UDP, file signalling",
        libnice_version()
    );
    let _ = writeln!(
        table,
        "{:<26} | {:<11} | {:<14} | {:<8} | {:<23} | {:>13} | {:>9} | {:>5} | result",
        "NATs (pinhole ↔ libnice)",
        "pinhole is",
        "expected",
        "path",
        "settled: pinhole ; nice",
        "connected p/n",
        "data p/n",
        "run s",
    );
    let _ = writeln!(table, "{}", "-".repeat(140));
    let mut failures = String::new();
    let mut notes = String::new();
    let mut passed = 0;
    for o in &outcomes {
        let cell = &cells[o.cell];
        let [p, n] = &o.sides;
        let path = match (p.settled(), n.settled()) {
            (Some(a), Some(b)) if relay_in(a) && relay_in(b) => "relay",
            (Some(a), Some(b)) if !relay_in(a) && !relay_in(b) => "direct",
            (Some(_), Some(_)) => "mixed",
            _ => "-",
        };
        let ok = o.trouble.is_empty();
        if ok {
            passed += 1;
        }
        let _ = writeln!(
            table,
            "{:<26} | {:<11} | {:<14} | {:<8} | {:<23} | {:>13} | {:>9} | {:>5.1} | {}",
            cell.label,
            if o.pinhole_controls {
                "controlling"
            } else {
                "controlled"
            },
            cell.expected,
            path,
            format!("{} ; {}", pair_types(p.settled()), pair_types(n.settled())),
            format!(
                "{}/{}",
                ms(elapsed(p.event("connected"))),
                ms(elapsed(n.event("connected")))
            ),
            format!(
                "{}/{}",
                ms(elapsed(p.event("first-data"))),
                ms(elapsed(n.event("first-data")))
            ),
            o.took.as_secs_f64(),
            if ok { "ok" } else { "FAIL" }
        );
        if ok && !cell.expected.starts_with(path) {
            let _ = writeln!(
                notes,
                "{} (pinhole {}): settled {path}, the oracle says {}\n{}{}",
                cell.label,
                if o.pinhole_controls {
                    "controlling"
                } else {
                    "controlled"
                },
                cell.expected,
                p.transcript(),
                n.transcript()
            );
        }
        if !ok {
            let _ = writeln!(
                failures,
                "{} (pinhole {}), lines {:?}:\n  {}\n{}{}",
                cell.label,
                if o.pinhole_controls {
                    "controlling"
                } else {
                    "controlled"
                },
                o.lines,
                o.trouble.join("\n  "),
                p.transcript(),
                n.transcript()
            );
        }
    }
    let _ = writeln!(
        table,
        "{passed}/{} runs passed (both sides reported a selected pair and printed the other's line); \
         ms: elapsed_ms of each side's first nominated pair / first datagram received, each from its own start; \
         lab built in {:.1} s, the runs (in parallel) took {:.1} s",
        outcomes.len(),
        built.as_secs_f64(),
        ran.as_secs_f64()
    );
    println!("{table}");
    if !notes.is_empty() {
        println!(
            "Passing runs whose path is not the oracle's (libnice nominates the first pair \
             that works and never renominates; printed, not failed):\n{notes}"
        );
    }
    assert!(
        failures.is_empty(),
        "pinhole ⇄ libnice failures:\n{failures}\n{}",
        lab.server_logs()
    );
}

fn libnice_version() -> String {
    output_within(
        &mut command("dpkg-query", &["-W", "-f", "${Version}", "gir1.2-nice-0.1"]),
        Duration::from_secs(10),
    )
    .ok()
    .filter(|o| o.success())
    .map_or_else(|| "?".to_owned(), |o| o.stdout.trim().to_owned())
}

/// Runs per implementation and RTT in [`connect_time_vs_libnice`].
const BENCH_RUNS: usize = 5;
/// The bound on one benchmark run's steps (descriptions written; then connected).
const BENCH_STEP: Duration = Duration::from_secs(10);

/// What one benchmark run measured, in ms from t0 (see the module docs).
#[derive(Debug, Clone, Default)]
struct Times {
    /// The first valid pair, on either side.
    valid: Option<f64>,
    /// The first application datagram received, on either side.
    first_data: Option<f64>,
    /// Both sides have received one.
    both_data: Option<f64>,
    /// Both sides hold a nominated pair (their first `connected` event).
    nominated: Option<f64>,
    /// libnice: both components READY.
    ready: Option<f64>,
    /// How far apart the two sides took in the remote description.
    spread: Option<f64>,
    /// The nominated pair's check RTT, as pinhole measured it.
    rtt: Option<f64>,
    /// The path both settled on ("direct", "relay", "mixed").
    path: &'static str,
    trouble: Option<String>,
}

fn file_has_end(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("a=end-of-candidates"))
}

/// Puts `from` at `to` whole: written aside, then renamed.
fn release(from: &Path, to: &Path) -> std::io::Result<()> {
    let text = std::fs::read(from)?;
    let tmp = to.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, to)
}

fn min_of(v: [Option<f64>; 2]) -> Option<f64> {
    match v {
        [Some(a), Some(b)] => Some(a.min(b)),
        [a, b] => a.or(b),
    }
}

fn max_of(v: [Option<f64>; 2]) -> Option<f64> {
    match v {
        [Some(a), Some(b)] => Some(a.max(b)),
        _ => None,
    }
}

/// One benchmark run: `imp` on both hosts (host 0 controls), descriptions released at
/// once when both are complete, then both sides until nominated with a datagram each
/// (libnice: and READY).
fn bench_run(bin: &Path, imp: Imp, hosts: [&Host; 2], dir: &Path) -> Times {
    let mut t = Times {
        path: "-",
        ..Times::default()
    };
    let dirs = [dir.join("a"), dir.join("b")];
    for d in &dirs {
        std::fs::create_dir_all(d).expect("bench dir");
    }
    let names = [("a", "b"), ("b", "a")];
    let mut sides: Vec<Side> = (0..2)
        .map(|i| {
            Side::spawn(
                SideSpec {
                    imp,
                    host: hosts[i].clone(),
                    dir: dirs[i].clone(),
                    name: names[i].0,
                    peer: names[i].1,
                    line: format!("bench from {}", names[i].0),
                    turn: false,
                    relay_only: false,
                    // The test stops it.
                    linger: 60.0,
                },
                bin,
            )
        })
        .collect();
    let own = [dirs[0].join("a.sdp"), dirs[1].join("b.sdp")];
    let deadline = Instant::now() + BENCH_STEP;
    while !(file_has_end(&own[0]) && file_has_end(&own[1])) {
        if Instant::now() > deadline || sides.iter_mut().any(Side::exited) {
            t.trouble = Some("the descriptions were not both written".into());
            return t;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Each side's whole description into the other's directory, back to back.
    let released = release(&own[0], &dirs[1].join("a.sdp"))
        .and_then(|()| release(&own[1], &dirs[0].join("b.sdp")));
    if let Err(e) = released {
        t.trouble = Some(format!("releasing the descriptions: {e}"));
        return t;
    }
    let deadline = Instant::now() + BENCH_STEP;
    let done = |s: &Side| {
        s.event("connected").is_some()
            && s.event("first-data").is_some()
            && (imp == Imp::Pinhole || s.event("ready").is_some())
    };
    while Instant::now() < deadline && !sides.iter().all(done) {
        for s in &mut sides {
            s.pump(Duration::from_millis(5));
        }
        if sides.iter_mut().any(Side::exited) {
            break;
        }
    }
    for s in &mut sides {
        s.stop(Duration::ZERO);
    }
    let descs: Vec<Option<f64>> = sides
        .iter()
        .map(|s| {
            s.event("remote-description")
                .and_then(|e| e["unix_ms"].as_f64())
        })
        .collect();
    let (Some(da), Some(db)) = (descs[0], descs[1]) else {
        t.trouble = Some(format!(
            "no remote-description event\n{}{}",
            sides[0].transcript(),
            sides[1].transcript()
        ));
        return t;
    };
    let t0 = da.max(db);
    t.spread = Some((da - db).abs());
    let at = |i: usize, name: &str| since(&sides[i], sides[i].event(name), t0);
    let valid = |i: usize| min_of([at(i, "valid-pair"), at(i, "connected")]);
    t.valid = min_of([valid(0), valid(1)]);
    t.first_data = min_of([at(0, "first-data"), at(1, "first-data")]);
    t.both_data = max_of([at(0, "first-data"), at(1, "first-data")]);
    t.nominated = max_of([at(0, "connected"), at(1, "connected")]);
    if imp == Imp::Libnice {
        t.ready = max_of([at(0, "ready"), at(1, "ready")]);
    }
    t.rtt = sides[0]
        .event("connected")
        .and_then(|e| e["rtt_ms"].as_f64());
    t.path = match (sides[0].settled(), sides[1].settled()) {
        (Some(a), Some(b)) if relay_in(a) && relay_in(b) => "relay",
        (Some(a), Some(b)) if !relay_in(a) && !relay_in(b) => "direct",
        (Some(_), Some(_)) => "mixed",
        _ => "-",
    };
    if !sides.iter().all(done) {
        t.trouble = Some(format!(
            "not connected with data both ways within {} s\n{}{}",
            BENCH_STEP.as_secs(),
            sides[0].transcript(),
            sides[1].transcript()
        ));
    }
    t
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[test]
fn connect_time_vs_libnice() {
    if !available("lab_libnice benchmark") {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bin = bins::pinhole().expect("the pinhole CLI");
    let started = Instant::now();
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    // libnice's STUN server (see Side::spawn).
    lab.start_coturn().expect("coturn");
    // The direct cell: linux ↔ EIM/APDF (both filters need hole punching); for 100 ms
    // RTT the linux router delays every packet it forwards by 50 ms each way.
    let settings = [("~0 ms", 0u64), ("100 ms", 50)];
    let mut hosts = Vec::new();
    for (i, (_, one_way)) in settings.iter().enumerate() {
        let (ra, rb) = (format!("b{i}a"), format!("b{i}b"));
        lab.add_router(
            &ra,
            NatConfig::default().delay(Duration::from_millis(*one_way)),
            Uplink::Internet,
        )
        .expect("router");
        lab.add_router(
            &rb,
            NatConfig::port_restricted_cone().random_ports(),
            Uplink::Internet,
        )
        .expect("router");
        let ha = lab.add_host(&format!("{ra}-h"), &ra).expect("host").clone();
        let hb = lab.add_host(&format!("{rb}-h"), &rb).expect("host").clone();
        hosts.push([ha, hb]);
    }
    let mut results: Vec<[Vec<Times>; 2]> = Vec::new();
    let mut troubles = Vec::new();
    for (i, (label, _)) in settings.iter().enumerate() {
        let mut per_imp: [Vec<Times>; 2] = [Vec::new(), Vec::new()];
        // Alternating, so that a slow moment of the machine hits both alike.
        for run in 0..BENCH_RUNS {
            for (k, imp) in [Imp::Pinhole, Imp::Libnice].into_iter().enumerate() {
                let dir = lab.dir().join(format!("bench-{i}-{}-{run}", imp.label()));
                let t = bench_run(&bin, imp, [&hosts[i][0], &hosts[i][1]], &dir);
                if let Some(why) = &t.trouble {
                    troubles.push(format!("{} at {label}, run {run}: {why}", imp.label()));
                }
                per_imp[k].push(t);
            }
        }
        results.push(per_imp);
    }
    let took = started.elapsed();

    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nConnect time, pinhole ⇄ pinhole vs libnice {} ⇄ libnice (nice_peer.py, aggressive nomination), \
         NAT lab direct cell linux ↔ EIM/APDF, host/srflx candidates, no relay; \
         medians of {BENCH_RUNS} runs, in ms from the moment both sides hold the remote description \
         [in RTT units at 100 ms]",
        libnice_version()
    );
    let _ = writeln!(
        table,
        "{:<7} | {:<34} | {:>15} | {:>15} | {:>15}",
        "RTT", "milestone", "pinhole", "libnice", "pinhole/libnice"
    );
    let _ = writeln!(table, "{}", "-".repeat(98));
    type Pick = fn(&Times) -> Option<f64>;
    let milestones: [(&str, Pick); 6] = [
        ("first valid pair (either side)", |t| t.valid),
        ("first datagram received (either)", |t| t.first_data),
        ("datagram received by both", |t| t.both_data),
        ("nominated on both sides", |t| t.nominated),
        ("libnice READY on both sides", |t| t.ready),
        ("(spread of the two sides' t0)", |t| t.spread),
    ];
    for (i, (label, one_way)) in settings.iter().enumerate() {
        let rtt = 2.0 * *one_way as f64;
        let fmt = |v: Option<f64>| match v {
            None => "-".to_owned(),
            Some(m) if rtt > 0.0 => format!("{m:.0} [{:.2}]", m / rtt),
            Some(m) => format!("{m:.1}"),
        };
        for (name, pick) in milestones {
            let [p, n] = [0, 1].map(|k| {
                median(
                    results[i][k]
                        .iter()
                        .filter(|t| t.trouble.is_none())
                        .filter_map(pick)
                        .collect(),
                )
            });
            let ratio = match (p, n) {
                (Some(p), Some(n)) if n > 0.0 => format!("{:.2}", p / n),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                table,
                "{:<7} | {:<34} | {:>15} | {:>15} | {:>15}",
                label,
                name,
                fmt(p),
                fmt(n),
                ratio
            );
        }
        for (k, imp) in [Imp::Pinhole, Imp::Libnice].into_iter().enumerate() {
            let runs = &results[i][k];
            let list = |pick: Pick| {
                runs.iter()
                    .map(|t| ms(pick(t)))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(
                table,
                "{:<7} |   {} runs: first datagram {} | nominated {} | paths {} | check RTT {}",
                label,
                imp.label(),
                list(|t| t.first_data),
                list(|t| t.nominated),
                runs.iter().map(|t| t.path).collect::<Vec<_>>().join(" "),
                list(|t| t.rtt),
            );
        }
        let _ = writeln!(table, "{}", "-".repeat(98));
    }
    let _ = writeln!(
        table,
        "issue 11's targets at 100 ms: first datagram ≤ 1.5 RTT, nominated ≤ 2 RTT, pinhole ≤ 0.5× libnice \
         (not asserted); {} runs failed; benchmark took {:.1} s",
        troubles.len(),
        took.as_secs_f64()
    );
    println!("{table}");
    for t in &troubles {
        println!("benchmark run trouble: {t}");
    }
    // Measured, not asserted: but every run must have connected.
    assert!(
        troubles.is_empty(),
        "benchmark runs that did not connect:\n{}\n{}",
        troubles.join("\n"),
        lab.server_logs()
    );
}
