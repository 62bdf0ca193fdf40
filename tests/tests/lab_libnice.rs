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
                        // coturn, not pinhole serve: libnice's server-reflexive
                        // discovery sends RFC 3489 Binding requests (no magic cookie),
                        // which pinhole serve does not answer (RFC 8489 §12 says a server
                        // SHOULD); libnice would then wait 2 s for nothing.
                        "--stun",
                        &COTURN_PRIMARY.to_string(),
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
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned()
    }

    fn event(&self, name: &str) -> Option<&Value> {
        self.events.iter().find(|e| e["event"] == name)
    }

    /// The pair it settled on: its last `connected` or `path-changed` event.
    fn settled(&self) -> Option<&Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == "connected" || e["event"] == "path-changed")
            .last()
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
                linger: 1.0,
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
        &mut command(
            "dpkg-query",
            &["-W", "-f", "${Version}", "gir1.2-nice-0.1"],
        ),
        Duration::from_secs(10),
    )
    .ok()
    .filter(|o| o.success())
    .map_or_else(|| "?".to_owned(), |o| o.stdout.trim().to_owned())
}
