//! `pinhole connect` ⇄ webrtc-rs's ICE agent (`webrtc-ice` 0.17) and str0m's sans-IO ICE
//! agent (crate `is` 0.12) in the NAT lab (issue 15).
//!
//! The other side is this crate's `ice-peer` binary (`--impl webrtc-ice` or `--impl
//! str0m`, over `pinhole_tests::interop`), a full peer of `pinhole connect --signal-dir`
//! that reads and writes the same `DIR/NAME.sdp` files, run in a lab namespace with `ip
//! netns exec`, as the libnice peer of `lab_libnice` is. Both print JSON events on stderr
//! (`remote-description`, `connected`, `first-data`).
//!
//! [`pinhole_and_webrtc_ice_and_str0m_in_the_lab`] runs, at once, each with pinhole
//! controlling and controlled:
//! - a direct cell: pinhole behind a Linux NAT, the peer behind an endpoint-independent
//!   mapping with address-and-port-dependent filtering (`lab_connect`'s oracle says a
//!   direct path exists);
//! - a relayed cell through coturn's TURN/UDP: webrtc-ice and pinhole both forced onto
//!   the relay; str0m's agent has no TURN client, so there only pinhole relays
//!   (`--no-direct`) and str0m reaches the relayed address from its server-reflexive one;
//! - ICE-lite: the peer running lite on the lab's internet (a public address, as a lite
//!   agent must have), pinhole full behind a NAT; pinhole is named to start controlled,
//!   so it must switch to controlling on the peer's `a=ice-lite` (RFC 8445 §6.1.1).
//!   (pinhole running lite is tested on loopback, `interop_ice`: `pinhole connect` has no
//!   lite switch.)
//!
//! Pass: both sides report a selected pair, each printed the other's line, the path is
//! the expected one, and the peer exited 0. A table shows the path and each side's time
//! to its first selected pair, in ms from t0, the moment both sides held the other's
//! description (as `lab_libnice` measures it; `PINHOLE_LAB_VERBOSE=1` prints every
//! transcript).
//!
//! Without the lab (not root, no coturn) it skips loudly; with CI=true it fails instead.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::in_ns;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{
    COTURN_PRIMARY, COTURN_USER, Lab, NatConfig, PEER_IP, PINHOLE_PRIMARY, Uplink, bins,
};
use serde_json::Value;

/// Each side's bound on finding a path (`--timeout` of both programs).
const PEER_TIMEOUT_SECS: u64 = 20;
/// The bound on one run, from spawn to both done (then both are killed).
const RUN_BUDGET: Duration = Duration::from_secs(PEER_TIMEOUT_SECS + 15);
/// How long a run goes on once both sides have a pair and the other's line: to see the
/// path each settles on (pinhole renominates a better pair that validates later).
const SETTLE: Duration = Duration::from_millis(2500);
/// The peer's `--linger`: it exits this long after its line went and one came (past
/// [`SETTLE`]).
const LINGER_SECS: f64 = 3.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imp {
    Pinhole,
    WebrtcIce,
    Str0m,
}

impl Imp {
    fn label(self) -> &'static str {
        match self {
            Imp::Pinhole => "pinhole",
            Imp::WebrtcIce => "webrtc-ice",
            Imp::Str0m => "str0m",
        }
    }
}

#[derive(Debug, Clone)]
struct SideSpec {
    imp: Imp,
    ns: String,
    dir: PathBuf,
    name: &'static str,
    peer: &'static str,
    line: String,
    turn: bool,
    relay_only: bool,
    lite: bool,
}

/// A running side, killed when dropped; stdout and stderr read as they come.
struct Side {
    spec: SideSpec,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: mpsc::Receiver<String>,
    lines: Vec<String>,
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
        let timeout = PEER_TIMEOUT_SECS.to_string();
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
                        &timeout,
                    ]
                    .map(String::from),
                );
                if spec.turn {
                    let turn = format!("turn:{COTURN_PRIMARY}");
                    args.extend(
                        ["--turn", &turn, "--user", user, "--password", pass].map(String::from),
                    );
                }
                if spec.relay_only {
                    args.push("--no-direct".into());
                }
                pinhole.to_string_lossy().into_owned()
            }
            Imp::WebrtcIce | Imp::Str0m => {
                let imp = if spec.imp == Imp::Str0m {
                    "str0m"
                } else {
                    "webrtc-ice"
                };
                args.extend(
                    [
                        "--impl",
                        imp,
                        "--signal-dir",
                        &dir,
                        "--name",
                        spec.name,
                        "--peer",
                        spec.peer,
                        "--send",
                        &spec.line,
                        "--timeout",
                        &timeout,
                        "--linger",
                        &LINGER_SECS.to_string(),
                    ]
                    .map(String::from),
                );
                if !spec.lite || spec.imp == Imp::Str0m {
                    args.extend(["--stun".to_owned(), PINHOLE_PRIMARY.to_string()]);
                }
                if spec.turn {
                    let turn = COTURN_PRIMARY.to_string();
                    args.extend(
                        ["--turn", &turn, "--user", user, "--password", pass].map(String::from),
                    );
                }
                if spec.relay_only {
                    args.push("--relay-only".into());
                }
                if spec.lite {
                    // One public host address: the internet namespace also holds the
                    // servers' (coturn's among them, which would read as a relay).
                    args.extend(["--lite".to_owned(), "--ip".to_owned(), PEER_IP.to_string()]);
                }
                env!("CARGO_BIN_EXE_ice-peer").to_owned()
            }
        };
        let mut child = in_ns(&spec.ns, &program, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let mut stdin = child.stdin.take();
        if spec.imp == Imp::Pinhole {
            // pinhole reads stdin once it has a pair; stdin stays open until the end.
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

    fn settled(&self) -> Option<&Value> {
        self.events
            .iter()
            .rfind(|e| e["event"] == "connected" || e["event"] == "path-changed")
    }

    /// When it held the peer's description, on the wall clock (ms since the epoch).
    fn described_unix_ms(&self) -> Option<f64> {
        self.event("remote-description")?["unix_ms"].as_f64()
    }

    /// Its first nominated pair, in ms from `t0_unix_ms` (its own monotonic clock lined up
    /// with the wall clock at its `remote-description`).
    fn connected_since(&self, t0_unix_ms: f64) -> Option<f64> {
        let d = self.event("remote-description")?;
        let c = self.event("connected")?["elapsed_ms"].as_f64()?;
        Some(d["unix_ms"].as_f64()? + (c - d["elapsed_ms"].as_f64()?) - t0_unix_ms)
    }

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
        self.pump(Duration::from_millis(200));
    }

    fn transcript(&self) -> String {
        format!(
            "--- {} {} (exit {:?}) ---\nstdout: {:?}\nstderr:\n{}\n",
            self.spec.imp.label(),
            self.spec.name,
            self.code,
            self.stdout(),
            self.lines.join("\n")
        )
    }
}

/// A relayed candidate at either end of the pair, or an address on coturn's IP.
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

/// Runs pinhole (side 0) and webrtc-ice (side 1) until both have a pair and the other's
/// line, or the budget ends.
fn run(bin: &Path, specs: [SideSpec; 2]) -> ([Side; 2], Vec<String>) {
    let deadline = Instant::now() + RUN_BUDGET;
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
            let settle = Instant::now() + SETTLE;
            while Instant::now() < settle && !sides.iter_mut().any(Side::exited) {
                for s in &mut sides {
                    s.pump(Duration::from_millis(10));
                }
            }
            break;
        }
        if sides.iter_mut().any(Side::exited) {
            std::thread::sleep(Duration::from_millis(300));
            for s in &mut sides {
                s.pump(Duration::from_millis(10));
            }
            break;
        }
    }
    let mut trouble = Vec::new();
    for (i, s) in sides.iter().enumerate() {
        if s.event("connected").is_none() {
            trouble.push(format!("{} reported no selected pair", s.spec.imp.label()));
        }
        let want = &lines[1 - i];
        let out = s.stdout();
        if !out.lines().any(|l| l == want) || out.lines().any(|l| l != want) {
            trouble.push(format!(
                "{} printed {out:?}, expected copies of {want:?} and nothing else",
                s.spec.imp.label()
            ));
        }
    }
    let [p, w] = &mut sides;
    w.stop(Duration::from_secs_f64(LINGER_SECS + 3.0));
    p.stop(Duration::from_millis(300));
    if w.code != Some(0) {
        trouble.push(format!(
            "{} exited {:?}, expected 0",
            w.spec.imp.label(),
            w.code
        ));
    }
    (sides, trouble)
}

struct Case {
    label: &'static str,
    pinhole_role: &'static str,
    expected: &'static str,
    specs: [SideSpec; 2],
}

#[test]
fn pinhole_and_webrtc_ice_and_str0m_in_the_lab() {
    if !lab_available("lab_webrtc interop", &["turnserver"]) {
        return;
    }
    let bin = bins::pinhole().expect("the pinhole CLI");
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    lab.start_coturn().expect("coturn");
    let inet = lab.internet().to_owned();
    let mut cases = Vec::new();
    let apdf = || NatConfig::port_restricted_cone().random_ports();
    // (peer, cell, pinhole's NAT, the peer's NAT, pinhole relay only, peer relay only,
    // expected path)
    let cells = [
        (
            Imp::WebrtcIce,
            "linux ↔ EIM/APDF",
            NatConfig::default(),
            apdf(),
            false,
            false,
            "direct",
        ),
        (
            Imp::WebrtcIce,
            "linux ↔ linux, relay only",
            NatConfig::default(),
            NatConfig::default(),
            true,
            true,
            "relay",
        ),
        (
            Imp::Str0m,
            "linux ↔ EIM/APDF",
            NatConfig::default(),
            apdf(),
            false,
            false,
            "direct",
        ),
        // str0m's agent has no TURN client: the relay is pinhole's alone.
        (
            Imp::Str0m,
            "linux ↔ linux, pinhole relay only",
            NatConfig::default(),
            NatConfig::default(),
            true,
            false,
            "relay",
        ),
    ];
    for (imp, label, p_nat, w_nat, p_relay, w_relay, expected) in cells {
        for pinhole_controls in [true, false] {
            let n = cases.len();
            let (rp, rw) = (format!("w{n}p"), format!("w{n}w"));
            lab.add_router(&rp, p_nat.clone(), Uplink::Internet)
                .expect("router");
            lab.add_router(&rw, w_nat.clone(), Uplink::Internet)
                .expect("router");
            let hp = lab
                .add_host(&format!("{rp}-h"), &rp)
                .expect("host")
                .ns
                .clone();
            let hw = lab
                .add_host(&format!("{rw}-h"), &rw)
                .expect("host")
                .ns
                .clone();
            let dir = lab.dir().join(format!("webrtc-{n}"));
            std::fs::create_dir_all(&dir).expect("signal dir");
            let (pn, wn) = if pinhole_controls {
                ("a", "b")
            } else {
                ("b", "a")
            };
            let spec = |imp: Imp, ns: String, name, peer, relay_only| SideSpec {
                imp,
                ns,
                dir: dir.clone(),
                name,
                peer,
                line: format!("hello from {} ({label})", imp.label()),
                turn: imp != Imp::Str0m,
                relay_only,
                lite: false,
            };
            cases.push(Case {
                label,
                pinhole_role: if pinhole_controls {
                    "controlling"
                } else {
                    "controlled"
                },
                expected,
                specs: [
                    spec(Imp::Pinhole, hp, pn, wn, p_relay),
                    spec(imp, hw, wn, pn, w_relay),
                ],
            });
        }
    }
    // ICE-lite: the peer lite on the internet (public addresses, as a lite agent must
    // have), pinhole full behind a NAT, named "b" so that it starts controlled and must
    // take control on the peer's a=ice-lite (RFC 8445 §6.1.1).
    for imp in [Imp::WebrtcIce, Imp::Str0m] {
        let n = cases.len();
        let rp = format!("w{n}p");
        lab.add_router(&rp, NatConfig::default(), Uplink::Internet)
            .expect("router");
        let hp = lab
            .add_host(&format!("{rp}-h"), &rp)
            .expect("host")
            .ns
            .clone();
        let dir = lab.dir().join(format!("webrtc-{n}"));
        std::fs::create_dir_all(&dir).expect("signal dir");
        let label = "linux ↔ public, peer lite";
        let spec = |imp: Imp, ns: String, name, peer, lite| SideSpec {
            imp,
            ns,
            dir: dir.clone(),
            name,
            peer,
            line: format!("hello from {} ({label})", imp.label()),
            turn: false,
            relay_only: false,
            lite,
        };
        cases.push(Case {
            label,
            pinhole_role: "controlling (took control)",
            expected: "direct",
            specs: [
                spec(Imp::Pinhole, hp, "b", "a", false),
                spec(imp, inet.clone(), "a", "b", true),
            ],
        });
    }

    let outcomes: Vec<([Side; 2], Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| {
                let bin = &bin;
                let specs = c.specs.clone();
                s.spawn(move || run(bin, specs))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("run thread"))
            .collect()
    });

    let mut table = String::new();
    let _ = writeln!(
        table,
        "\npinhole connect ⇄ webrtc-ice 0.17 and str0m's is 0.12 (bin ice-peer) in the NAT lab: \
         pinhole serve STUN, coturn TURN/UDP, file signalling; connected = ms from t0 (both hold \
         the other's description), pinhole/peer"
    );
    let _ = writeln!(
        table,
        "{:<11} | {:<33} | {:<27} | {:<8} | {:<6} | {:<23} | {:>13} | result",
        "peer",
        "NATs (pinhole ↔ peer)",
        "pinhole is",
        "expected",
        "path",
        "pair: pinhole ; peer",
        "connected p/w"
    );
    let mut failures = String::new();
    for (c, (sides, trouble)) in cases.iter().zip(&outcomes) {
        let [p, w] = sides;
        let path = match (p.settled(), w.settled()) {
            (Some(a), Some(b)) if relay_in(a) && relay_in(b) => "relay",
            (Some(a), Some(b)) if !relay_in(a) && !relay_in(b) => "direct",
            (Some(_), Some(_)) => "mixed",
            _ => "-",
        };
        // webrtc-ice's controlled agent takes the first nominated pair and never another
        // (no renomination): pinhole, controlling, nominates such a peer once, and a
        // direct pair where one exists (a relayed pair valid first waits for the direct
        // checks), so both sides must settle on the expected path.
        let mut trouble = trouble.clone();
        if trouble.is_empty() && path != c.expected {
            trouble.push(format!("path {path}, expected {}", c.expected));
        }
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |m| format!("{m:.0}"));
        // t0: the moment both sides held the other's description (the later one).
        let t0 = p
            .described_unix_ms()
            .zip(w.described_unix_ms())
            .map(|(a, b)| a.max(b));
        let since = |s: &Side| t0.and_then(|t0| s.connected_since(t0));
        let _ = writeln!(
            table,
            "{:<11} | {:<33} | {:<27} | {:<8} | {:<6} | {:<23} | {:>13} | {}",
            w.spec.imp.label(),
            c.label,
            c.pinhole_role,
            c.expected,
            path,
            format!("{} ; {}", pair_types(p.settled()), pair_types(w.settled())),
            format!("{}/{}", ms(since(p)), ms(since(w))),
            if trouble.is_empty() { "ok" } else { "FAIL" }
        );
        if std::env::var_os("PINHOLE_LAB_VERBOSE").is_some() {
            eprintln!("{}{}", p.transcript(), w.transcript());
        }
        if !trouble.is_empty() {
            let _ = writeln!(
                failures,
                "{} {} (pinhole {}): {}\n{}{}",
                w.spec.imp.label(),
                c.label,
                c.pinhole_role,
                trouble.join("; "),
                p.transcript(),
                w.transcript()
            );
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{table}\n{failures}");
}
