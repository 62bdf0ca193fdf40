//! ICE-TCP (RFC 6544) through the NAT lab with `pinhole connect` (issue 13).
//!
//! - `udp_blocked_side_connects_over_ice_tcp_to_a_public_host`: side A behind a NAT whose
//!   firewall drops all UDP, side B on the lab internet with a public address. Both have
//!   coturn as STUN server and a TURN server (A over TCP, which gets through the
//!   firewall), so the relay is there to be chosen: the test asserts it is not. Both
//!   sides settle on a direct TCP pair and carry a line each way.
//! - `tcp_simultaneous_open_through_nats`: both sides behind NATs that drop all UDP, no
//!   relay, STUN over TCP to coturn for the simultaneous-open candidates' mappings: TCP
//!   simultaneous open is the only way through. The NAT kinds of `lab_connect`, with the
//!   mapping and filtering behaviour applied to TCP too (`NatConfig::tcp_behaviour`;
//!   "linux" is plain `masquerade`, endpoint-independent for TCP by port preservation):
//!   every unordered pair, all at once. Asserted: every pair whose two mappings are
//!   endpoint-independent connects over a direct TCP pair. The other cells are printed
//!   (the oracle of `lab_connect` says an endpoint-independent side with address-dependent
//!   or independent filtering lets an EDM side's connection in).
//!
//! Signalling is `--signal-dir` (files: the namespaces share the file system), so that the
//! test needs no rendezvous server.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::in_ns;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{
    Behaviour, COTURN_PRIMARY, COTURN_USER, Host, Lab, NatConfig, Uplink, bins,
};
use serde_json::Value;

/// `pinhole connect --timeout`.
const CONNECT_TIMEOUT_SECS: u64 = 25;
/// From spawn to both exits (then both are killed).
const PAIR_BUDGET: Duration = Duration::from_secs(CONNECT_TIMEOUT_SECS + 20);
/// How long stdin stays open after the line went.
const HOLD_OPEN: Duration = Duration::from_secs(2);

/// One side's `pinhole connect`, killed when dropped.
struct Side {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<String>>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one side did.
#[derive(Debug, Default)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: Vec<String>,
    /// `connected`, then every `path-changed`.
    path: Vec<Value>,
    trouble: Option<String>,
}

impl Outcome {
    fn settled(&self) -> Option<&Value> {
        self.path.last()
    }

    fn transcript(&self, label: &str) -> String {
        format!(
            "--- {label}: exit {:?} {} ---\nstdout: {:?}\nstderr:\n{}\n",
            self.code,
            self.trouble.as_deref().unwrap_or(""),
            self.stdout,
            self.stderr.join("\n")
        )
    }
}

impl Side {
    fn spawn(
        label: &str,
        bin: &Path,
        host: &Host,
        dir: &Path,
        me: &str,
        peer: &str,
        extra: &[String],
    ) -> Side {
        let args: Vec<String> = [
            "connect",
            "--json",
            "--signal-dir",
            &dir.to_string_lossy(),
            "--name",
            me,
            "--peer",
            peer,
            "--stun",
            &format!("stun:{COTURN_PRIMARY}"),
            "--no-portmap",
            "--no-birthday",
            "--timeout",
            &CONNECT_TIMEOUT_SECS.to_string(),
        ]
        .map(String::from)
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
        let mut child = in_ns(&host.ns, &bin.to_string_lossy(), &args)
            .env("RUST_LOG", "pinhole=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: spawning pinhole connect: {e}"));
        let stdin = child.stdin.take();
        let mut out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let stdout = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            String::from_utf8_lossy(&b).into_owned()
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Side {
            label: label.to_owned(),
            child,
            stdin,
            stdout: Some(stdout),
            stderr: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (until `deadline`) for the `connected` event.
    fn wait_connected(&mut self, deadline: Instant) -> bool {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.stderr.recv_timeout(left) else {
                return false;
            };
            let connected =
                serde_json::from_str::<Value>(&line).is_ok_and(|v| v["event"] == "connected");
            self.seen.push(line);
            if connected {
                return true;
            }
        }
        false
    }

    /// Once connected: the line, EOF [`HOLD_OPEN`] later, then the exit (killed at
    /// `deadline`).
    fn finish(mut self, connected: bool, line: &str, deadline: Instant) -> Outcome {
        if connected {
            if let Some(stdin) = self.stdin.as_mut() {
                let _ = stdin.write_all(format!("{line}\n").as_bytes());
                let _ = stdin.flush();
            }
            std::thread::sleep(HOLD_OPEN);
        }
        drop(self.stdin.take());
        let mut code = None;
        let mut trouble = None;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    code = s.code();
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    trouble = Some(format!("{}: still running at the deadline", self.label));
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Err(e) => {
                    trouble = Some(format!("{}: waiting: {e}", self.label));
                    break;
                }
            }
        }
        let drain_until = Instant::now() + Duration::from_secs(2);
        while let Some(left) = drain_until.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let path = self
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "connected" || v["event"] == "path-changed")
            .collect();
        Outcome {
            code,
            stdout,
            stderr: std::mem::take(&mut self.seen),
            path,
            trouble,
        }
    }
}

/// Runs both sides at once (A is `a`, B is `b` in the signalling directory); each sends
/// its line once both are connected.
fn run_pair(
    bin: &Path,
    hosts: [&Host; 2],
    dir: &Path,
    lines: [&str; 2],
    extra: [&[String]; 2],
) -> [Outcome; 2] {
    std::fs::create_dir_all(dir).expect("signalling directory");
    let deadline = Instant::now() + PAIR_BUDGET;
    let names = [("a", "b"), ("b", "a")];
    let sides: Vec<Side> = (0..2)
        .map(|i| {
            Side::spawn(
                &format!("side {}", names[i].0),
                bin,
                hosts[i],
                dir,
                names[i].0,
                names[i].1,
                extra[i],
            )
        })
        .collect();
    let (tx, rx) = mpsc::channel::<(usize, bool)>();
    let (go_a, wait_a) = mpsc::channel::<()>();
    let (go_b, wait_b) = mpsc::channel::<()>();
    let waits = [wait_a, wait_b];
    let mut threads = Vec::new();
    for ((i, mut side), wait) in sides.into_iter().enumerate().zip(waits) {
        let tx = tx.clone();
        let line = lines[i].to_owned();
        threads.push(std::thread::spawn(move || {
            let connected = side.wait_connected(deadline);
            let _ = tx.send((i, connected));
            // Both connected (or one gave up): send.
            let left = deadline.saturating_duration_since(Instant::now());
            let both = wait.recv_timeout(left).is_ok();
            side.finish(connected && both, &line, deadline)
        }));
    }
    drop(tx);
    let mut ok = [false, false];
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, c)) => ok[i] = c,
            Err(_) => break,
        }
    }
    if ok == [true, true] {
        let _ = go_a.send(());
        let _ = go_b.send(());
    }
    drop((go_a, go_b));
    let mut out = threads.into_iter().map(|t| {
        t.join().unwrap_or_else(|_| Outcome {
            trouble: Some("side thread panicked".into()),
            ..Outcome::default()
        })
    });
    [
        out.next().unwrap_or_default(),
        out.next().unwrap_or_default(),
    ]
}

fn is_relay(c: &Value) -> bool {
    c["type"] == "relay"
}

fn is_tcp(c: &Value) -> bool {
    c["transport"] == "tcp"
}

/// `type/tcptype→type/tcptype` of a pair event.
fn pair_label(e: Option<&Value>) -> String {
    let Some(e) = e else { return "-".into() };
    let one = |c: &Value| {
        format!(
            "{}/{}{}",
            c["type"].as_str().unwrap_or("?"),
            c["transport"].as_str().unwrap_or("?"),
            c["tcptype"]
                .as_str()
                .map(|t| format!(" {t}"))
                .unwrap_or_default()
        )
    };
    format!("{} → {}", one(&e["local"]), one(&e["remote"]))
}

/// What is wrong with a pair that must settle on a direct TCP pair and carry the lines.
fn check_direct_tcp(r: &[Outcome; 2], lines: [&str; 2]) -> Vec<String> {
    let mut bad = Vec::new();
    for (i, side) in r.iter().enumerate() {
        if let Some(t) = &side.trouble {
            bad.push(t.clone());
        }
        if side.code != Some(0) {
            bad.push(format!("side {i} exited {:?}, expected 0", side.code));
        }
        let want = format!("{}\n", lines[1 - i]);
        if side.stdout != want {
            bad.push(format!(
                "side {i} printed {:?}, expected {want:?}",
                side.stdout
            ));
        }
        match side.settled() {
            None => bad.push(format!("side {i}: no connected event")),
            Some(e) => {
                let (l, rm) = (&e["local"], &e["remote"]);
                if is_relay(l) || is_relay(rm) || !is_tcp(l) || !is_tcp(rm) {
                    bad.push(format!(
                        "side {i} settled on {}, expected a direct TCP pair",
                        pair_label(Some(e))
                    ));
                }
            }
        }
    }
    bad
}

/// A UDP-blocked side (behind a NAT whose firewall drops all UDP) and a side with a
/// public address: they connect over ICE-TCP directly, though a TURN relay is offered to
/// both (A reaches it over TCP).
#[test]
fn udp_blocked_side_connects_over_ice_tcp_to_a_public_host() {
    if !lab_available("lab_icetcp udp-blocked", &["turnserver"]) {
        return;
    }
    let bin = bins::pinhole().expect("the pinhole CLI");
    let mut lab = Lab::new().expect("lab");
    lab.start_coturn().expect("coturn");
    lab.add_router(
        "walled",
        NatConfig::default().blocking_udp(),
        Uplink::Internet,
    )
    .expect("router");
    let a = lab.add_host("walled-h", "walled").expect("host").clone();
    let b = lab.add_public_host("public").expect("public host").clone();
    let (user, pass) = COTURN_USER;
    let turn = |uri: String| -> Vec<String> {
        [
            "--turn".to_owned(),
            uri,
            "--user".into(),
            user.into(),
            "--password".into(),
            pass.into(),
        ]
        .to_vec()
    };
    let ea = turn(format!("turn:{COTURN_PRIMARY}?transport=tcp"));
    let eb = turn(format!("turn:{COTURN_PRIMARY}"));
    let lines = [
        "hello from behind the UDP block",
        "hello from the public host",
    ];
    let t0 = Instant::now();
    let r = run_pair(
        &bin,
        [&a, &b],
        &lab.dir().join("sig-udp-blocked"),
        lines,
        [&ea, &eb],
    );
    println!(
        "\nICE-TCP, UDP-blocked side A ({}) ↔ public host B ({}): A {}; B {}; exits {:?} {:?} ({:.1} s)",
        NatConfig::default().blocking_udp().describe(),
        b.ip,
        pair_label(r[0].settled()),
        pair_label(r[1].settled()),
        r[0].code,
        r[1].code,
        t0.elapsed().as_secs_f64()
    );
    let bad = check_direct_tcp(&r, lines);
    assert!(
        bad.is_empty(),
        "lab_icetcp udp-blocked:\n  {}\n{}{}\n{}",
        bad.join("\n  "),
        r[0].transcript("side A (UDP blocked)"),
        r[1].transcript("side B (public)"),
        lab.server_logs()
    );
}

/// A NAT kind of the simultaneous-open matrix.
#[derive(Debug, Clone)]
struct Kind {
    label: &'static str,
    tag: &'static str,
    config: NatConfig,
}

impl Kind {
    fn eim(&self) -> bool {
        self.config.mapping == Behaviour::EndpointIndependent
    }

    fn open_cone(&self) -> bool {
        self.eim() && self.config.filtering != Behaviour::AddressAndPortDependent
    }
}

fn kinds() -> Vec<Kind> {
    vec![
        Kind {
            label: "linux",
            tag: "lx",
            config: NatConfig::default().blocking_udp(),
        },
        Kind {
            label: "EIM/APDF",
            tag: "pr",
            config: NatConfig::port_restricted_cone()
                .random_ports()
                .tcp_behaviour()
                .blocking_udp(),
        },
        Kind {
            label: "EIM/ADF",
            tag: "rc",
            config: NatConfig::restricted_cone()
                .random_ports()
                .tcp_behaviour()
                .blocking_udp(),
        },
        Kind {
            label: "EIM/EIF",
            tag: "fc",
            config: NatConfig::full_cone()
                .random_ports()
                .tcp_behaviour()
                .blocking_udp(),
        },
        Kind {
            label: "EDM",
            tag: "sy",
            config: NatConfig::symmetric().tcp_behaviour().blocking_udp(),
        },
    ]
}

/// Both sides behind NATs that drop all UDP, no relay: only TCP simultaneous open
/// (so ↔ so, the mappings from STUN over TCP to coturn) gets through. Every unordered
/// pair of NAT kinds at once; the pairs with endpoint-independent mapping on both sides
/// must connect directly over TCP.
#[test]
fn tcp_simultaneous_open_through_nats() {
    if !lab_available("lab_icetcp simultaneous open", &["turnserver"]) {
        return;
    }
    let bin = bins::pinhole().expect("the pinhole CLI");
    let mut lab = Lab::new().expect("lab");
    lab.start_coturn().expect("coturn");
    let ks = kinds();
    let mut cells = Vec::new();
    for i in 0..ks.len() {
        for j in i..ks.len() {
            let (ka, kb) = (ks[i].clone(), ks[j].clone());
            let ra = format!("{}{}a", ka.tag, kb.tag);
            let rb = format!("{}{}b", ka.tag, kb.tag);
            lab.add_router(&ra, ka.config.clone(), Uplink::Internet)
                .expect("router");
            lab.add_router(&rb, kb.config.clone(), Uplink::Internet)
                .expect("router");
            let ha = lab.add_host(&format!("{ra}-h"), &ra).expect("host").clone();
            let hb = lab.add_host(&format!("{rb}-h"), &rb).expect("host").clone();
            cells.push((ka, kb, ha, hb));
        }
    }
    let no_relay = ["--no-relay".to_owned()];
    let t0 = Instant::now();
    let runs: Vec<_> = cells
        .iter()
        .map(|(ka, kb, ha, hb)| {
            let (bin, ha, hb) = (bin.clone(), ha.clone(), hb.clone());
            let dir = lab.dir().join(format!("sig-{}-{}", ka.tag, kb.tag));
            let extra = no_relay.clone();
            std::thread::spawn(move || {
                let lines = ["so from A", "so from B"];
                run_pair(&bin, [&ha, &hb], &dir, lines, [&extra, &extra])
            })
        })
        .collect();
    let results: Vec<[Outcome; 2]> = runs
        .into_iter()
        .map(|t| t.join().expect("a pair's thread"))
        .collect();
    let mut table = String::from(
        "\nTCP simultaneous open through NATs that drop UDP (no relay; STUN over TCP to coturn)\n\
         A        | B        | EIM both | oracle | result | A's pair                              | B's pair\n",
    );
    let mut bad = Vec::new();
    for ((ka, kb, _, _), r) in cells.iter().zip(&results) {
        let problems = check_direct_tcp(r, ["so from A", "so from B"]);
        let must = ka.eim() && kb.eim();
        let oracle = must || ka.open_cone() || kb.open_cone();
        table.push_str(&format!(
            "{:<8} | {:<8} | {:<8} | {:<6} | {:<6} | {:<37} | {}\n",
            ka.label,
            kb.label,
            if must { "yes" } else { "no" },
            if oracle { "direct" } else { "none" },
            if problems.is_empty() {
                "direct"
            } else {
                "failed"
            },
            pair_label(r[0].settled()),
            pair_label(r[1].settled()),
        ));
        if must && !problems.is_empty() {
            bad.push(format!(
                "{} ↔ {}:\n  {}\n{}{}",
                ka.label,
                kb.label,
                problems.join("\n  "),
                r[0].transcript("side A"),
                r[1].transcript("side B")
            ));
        }
    }
    table.push_str(&format!(
        "({:.1} s for all pairs at once)\n",
        t0.elapsed().as_secs_f64()
    ));
    println!("{table}");
    assert!(
        bad.is_empty(),
        "lab_icetcp simultaneous open:\n{}\n{table}",
        bad.join("\n")
    );
}
