//! `pinhole connect` and `pinhole signal` end to end on loopback: two real processes meet
//! through a `pinhole signal` room (or a shared directory), gather from `pinhole serve`
//! and `pinhole serve --turn`, connect directly or through the relay, and carry stdin to
//! the peer's stdout both ways. Every server and peer is on 127.0.0.1; `--stun` is always
//! given, so no default public server is ever asked.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pinhole");

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a server and waits for its "listening"/"signalling" line.
fn server(args: &[&str]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    let _ = out.read(&mut first);
    Proc(child)
}

struct Servers {
    _procs: Vec<Proc>,
    stun: String,
    turn: String,
    signal: String,
}

fn servers() -> Servers {
    let (s, t, g) = (free_udp(), free_udp(), free_tcp());
    let stun = format!("127.0.0.1:{s}");
    let turn = format!("127.0.0.1:{t}");
    let signal = format!("127.0.0.1:{g}");
    let procs = vec![
        server(&["serve", "--primary", &stun, "--duration", "60"]),
        // The peers are on loopback: the relay must be told to reach them.
        server(&[
            "serve",
            "--turn",
            "--primary",
            &turn,
            "--user",
            "u:p",
            "--allow-loopback-peers",
            "--duration",
            "60",
        ]),
        server(&["signal", "--listen", &signal, "--duration", "60"]),
    ];
    Servers {
        _procs: procs,
        stun: format!("stun:{stun}"),
        turn: format!("turn:{turn}"),
        signal: format!("http://{signal}"),
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    events: Vec<serde_json::Value>,
}

/// Runs two `pinhole connect`s with `args` each (plus `--json`), feeding each a line on
/// stdin; both bounded by `limit`.
fn pair(args: [Vec<String>; 2], limit: Duration) -> [Outcome; 2] {
    let mut children: Vec<Proc> = args
        .iter()
        .map(|a| {
            Proc(
                Command::new(BIN)
                    .arg("connect")
                    .args(a)
                    .arg("--json")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let mut readers = Vec::new();
    for (i, c) in children.iter_mut().enumerate() {
        let mut stdin = c.0.stdin.take().unwrap();
        std::thread::spawn(move || {
            // Once the other side is surely listening, a line; then EOF after a while.
            std::thread::sleep(Duration::from_millis(200));
            let _ = writeln!(stdin, "hello from side {i}");
            std::thread::sleep(Duration::from_secs(2));
            drop(stdin);
        });
        let mut out = c.0.stdout.take().unwrap();
        let mut err = c.0.stderr.take().unwrap();
        readers.push((
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            }),
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err.read_to_string(&mut s);
                s
            }),
        ));
    }
    let started = Instant::now();
    let mut codes = [None, None];
    while started.elapsed() < limit && codes.iter().any(Option::is_none) {
        for (i, c) in children.iter_mut().enumerate() {
            if codes[i].is_none() {
                if let Ok(Some(s)) = c.0.try_wait() {
                    codes[i] = Some(s.code());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(children);
    let mut out = readers.into_iter().map(|(o, e)| {
        let stdout = o.join().unwrap();
        let stderr = e.join().unwrap();
        let events = stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (stdout, events)
    });
    let mut next = |i: usize| {
        let (stdout, events) = out.next().unwrap();
        Outcome {
            code: codes[i].flatten(),
            stdout,
            events,
        }
    };
    [next(0), next(1)]
}

fn common(s: &Servers) -> Vec<String> {
    [
        "--stun",
        &s.stun,
        "--turn",
        &s.turn,
        "--user",
        "u",
        "--password",
        "p",
        "--timeout",
        "15",
        // Loopback sockets ask no gateway anyway; never let a test try.
        "--no-portmap",
    ]
    .map(String::from)
    .to_vec()
}

fn connected(o: &Outcome) -> &serde_json::Value {
    o.events
        .iter()
        .find(|e| e["event"] == "connected")
        .unwrap_or_else(|| panic!("no connected event: {:?}", o.events))
}

#[test]
fn two_peers_meet_in_a_room_and_talk_directly() {
    let s = servers();
    let mut args = common(&s);
    args.extend(["--signal", &s.signal, "--room", "direct"].map(String::from));
    let [a, b] = pair([args.clone(), args], Duration::from_secs(30));
    assert_eq!(
        (a.code, b.code),
        (Some(0), Some(0)),
        "{:?} {:?}",
        a.events,
        b.events
    );
    assert_eq!(a.stdout, "hello from side 1\n");
    assert_eq!(b.stdout, "hello from side 0\n");
    for o in [&a, &b] {
        let c = connected(o);
        assert!(
            c["elapsed_ms"].as_f64().is_some() && c["rtt_ms"].as_f64().is_some(),
            "{c}"
        );
    }
    // Direct: host to host. The peer's first check can beat its signalled candidate, so
    // the remote may be reported as peer-reflexive first; a `path-changed` event names it
    // when the candidate comes, if it comes before the exchange is over.
    let (pa, pb) = (last_path(&a), last_path(&b));
    for (p, q) in [(pa, pb), (pb, pa)] {
        assert_eq!(p["local"]["type"], "host", "{p}");
        let remote = p["remote"]["type"].as_str();
        assert!(matches!(remote, Some("host" | "prflx")), "{p}");
        assert_eq!(p["remote"]["address"], q["local"]["address"], "{p} {q}");
    }
}

/// The last `connected` or `path-changed` event: the path as the side last knew it.
fn last_path(o: &Outcome) -> &serde_json::Value {
    o.events
        .iter()
        .rev()
        .find(|e| e["event"] == "connected" || e["event"] == "path-changed")
        .unwrap_or_else(|| panic!("no path event: {:?}", o.events))
}

/// `--lite` (RFC 8445 §2.5): the lite side offers its host candidate and `a=ice-lite`,
/// sends no checks, and the full side controls and nominates, whichever name is smaller
/// (here the lite side's would control otherwise).
#[test]
fn a_lite_side_and_a_full_side_connect() {
    let s = servers();
    let mut args = common(&s);
    args.extend(["--signal", &s.signal, "--room", "lite"].map(String::from));
    let mut lite = args.clone();
    lite.push("--lite".into());
    let [a, b] = pair([lite, args], Duration::from_secs(30));
    assert_eq!(
        (a.code, b.code),
        (Some(0), Some(0)),
        "{:?} {:?}",
        a.events,
        b.events
    );
    assert_eq!(a.stdout, "hello from side 1\n");
    assert_eq!(b.stdout, "hello from side 0\n");
    for o in [&a, &b] {
        let c = connected(o);
        assert_eq!(c["local"]["type"], "host", "{c}");
    }
}

#[test]
fn no_direct_goes_through_the_relay_and_file_signalling_works() {
    let s = servers();
    let dir = std::env::temp_dir().join(format!("pinhole-connect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let mut a = common(&s);
    a.extend(
        [
            "--signal-dir",
            &d,
            "--name",
            "alice",
            "--peer",
            "bob",
            "--no-direct",
        ]
        .map(String::from),
    );
    let mut b = common(&s);
    b.extend(["--signal-dir", &d, "--name", "bob", "--peer", "alice"].map(String::from));
    let [a, b] = pair([a, b], Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (a.code, b.code),
        (Some(0), Some(0)),
        "{:?} {:?}",
        a.events,
        b.events
    );
    assert_eq!(a.stdout, "hello from side 1\n");
    assert_eq!(b.stdout, "hello from side 0\n");
    assert_eq!(connected(&a)["local"]["type"], "relay");
    // b may have learned a's relayed address from a check before the signalled candidate
    // arrived (then as peer-reflexive): the address is what matters.
    assert_eq!(
        connected(&b)["remote"]["address"],
        connected(&a)["local"]["address"]
    );
}

/// `--json`'s timing events (for benchmarks such as lab_libnice's): `remote-description`
/// with the wall clock (with trickle it may come after `connected`: the peer's
/// end-of-candidates waits for its gathering), `first-data` with the first datagram's size.
#[test]
fn json_timing_events_with_file_signalling() {
    let s = servers();
    let dir = std::env::temp_dir().join(format!("pinhole-timing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let side = |me: &str, them: &str| {
        let mut a = common(&s);
        a.extend(["--signal-dir", &d, "--name", me, "--peer", them].map(String::from));
        a
    };
    let [a, b] = pair(
        [side("ann", "ben"), side("ben", "ann")],
        Duration::from_secs(30),
    );
    // Each side says how its NAT allocates ports (issue 13): on loopback, no NAT, so the
    // STUN and TURN servers both saw the socket's own port.
    for f in ["ann.sdp", "ben.sdp"] {
        let sdp = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        assert!(
            sdp.contains("a=x-pinhole-port-allocation:preserving\r\n"),
            "{f}: {sdp}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (a.code, b.code),
        (Some(0), Some(0)),
        "{:?} {:?}",
        a.events,
        b.events
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3;
    for o in [&a, &b] {
        let find = |name: &str| {
            o.events
                .iter()
                .find(|e| e["event"] == name)
                .unwrap_or_else(|| panic!("no {name} event: {:?}", o.events))
        };
        let desc = find("remote-description");
        let unix_ms = desc["unix_ms"].as_f64().unwrap();
        assert!(unix_ms <= now_ms && unix_ms > now_ms - 60_000.0, "{desc}");
        let data = find("first-data");
        // The harness writes its line in pieces (`writeln!` on an unbuffered pipe), and
        // each piece pinhole reads from stdin is a datagram.
        let bytes = data["bytes"].as_u64().unwrap();
        assert!(
            bytes > 0 && bytes as usize <= o.stdout.len(),
            "{data} {:?}",
            o.stdout
        );
        for e in [desc, data] {
            assert!(e["elapsed_ms"].as_f64().is_some_and(|t| t >= 0.0), "{e}");
        }
        // Every valid-pair event has the pair and the time.
        for v in o.events.iter().filter(|e| e["event"] == "valid-pair") {
            assert!(
                v["local"]["type"].is_string() && v["elapsed_ms"].is_number(),
                "{v}"
            );
        }
    }
}

#[test]
fn a_peer_that_never_comes_is_a_timeout_with_exit_1() {
    let s = servers();
    let mut args = common(&s);
    let at = args.iter().position(|a| a == "--timeout").unwrap();
    args[at + 1] = "2".into();
    args.extend(["--signal", &s.signal, "--room", "lonely"].map(String::from));
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("connect")
        .args(&args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"event\":\"disconnected\""), "{err}");
    assert!(err.contains("--timeout"), "{err}");
    assert!(out.stdout.is_empty(), "stdout carries data only");
}

#[test]
fn connect_usage_errors() {
    for (args, says) in [
        (&["connect", "--stun", "stun:127.0.0.1:9"][..], "--signal"),
        (&["connect", "--signal", "http://127.0.0.1:9"], "--room"),
        (
            &[
                "connect",
                "--signal",
                "ftp://x",
                "--room",
                "r",
                "--stun",
                "stun:127.0.0.1:9",
            ],
            "http://",
        ),
        (
            &[
                "connect",
                "--signal-dir",
                "/tmp",
                "--name",
                "a",
                "--peer",
                "a",
                "--stun",
                "stun:127.0.0.1:9",
            ],
            "two different names",
        ),
        (
            &[
                "connect",
                "--signal",
                "http://127.0.0.1:9",
                "--room",
                "r",
                "--stun",
                "stun:127.0.0.1:9",
                "--no-direct",
            ],
            "--turn",
        ),
        (
            &[
                "connect",
                "--signal",
                "http://127.0.0.1:9",
                "--room",
                "r",
                "--stun",
                "stun:127.0.0.1:9",
                "--turn",
                "turns:127.0.0.1:9",
                "--ca",
                "/dev/null",
                "--user",
                "u",
                "--password",
                "p",
            ],
            "--ca /dev/null",
        ),
        (&["connect", "--timeout", "1e20"], "seconds"),
        // Keepalives: a policy it knows, an interval from 5 s to an hour.
        (
            &["connect", "--keepalive", "sleepy"],
            "foreground, background, suspended",
        ),
        (&["connect", "--keepalive"], "--keepalive"),
        (&["connect", "--keepalive-interval", "2"], "from 5 to 3600"),
        (&["connect", "--keepalive-interval", "0"], "seconds"),
        (&["connect", "--keepalive-interval", "3601"], "seconds"),
        (&["connect", "--keepalive-interval", "soon"], "seconds"),
        // Good keepalive flags parse: what is refused then is the missing signalling.
        (
            &[
                "connect",
                "--keepalive",
                "background",
                "--keepalive-interval",
                "15.5",
                "--stun",
                "stun:127.0.0.1:9",
            ],
            "--signal URL",
        ),
        (
            &[
                "connect",
                "--keepalive",
                "suspended",
                "--stun",
                "stun:127.0.0.1:9",
            ],
            "--signal URL",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// One HTTP request to the rendezvous, as curl would make it.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_owned(),
    )
}

#[test]
fn the_signal_http_api_as_documented() {
    let g = free_tcp();
    let addr = format!("127.0.0.1:{g}");
    let _s = server(&["signal", "--listen", &addr, "--duration", "30"]);
    let join = |who: &str| {
        let (code, body) = http(&addr, "POST", "/v1/rooms/doc/join", "");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["peer"], who);
        v["token"].as_str().unwrap().to_owned()
    };
    let ta = join("a");
    let tb = join("b");
    assert_eq!(http(&addr, "POST", "/v1/rooms/doc/join", "").0, 409);
    let post_a = format!("/v1/rooms/doc/a?token={ta}");
    assert_eq!(http(&addr, "POST", &post_a, "a=ice-ufrag:abcd\r\n").0, 204);
    // Without b's token nobody reads b's messages (a's password would be among them).
    assert_eq!(http(&addr, "GET", "/v1/rooms/doc/b?after=0", "").0, 403);
    assert_eq!(
        http(&addr, "GET", &format!("/v1/rooms/doc/b?token={ta}"), "").0,
        403
    );
    let (code, body) = http(
        &addr,
        "GET",
        &format!("/v1/rooms/doc/b?token={tb}&after=0"),
        "",
    );
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["next"], 1);
    assert_eq!(v["messages"][0], "a=ice-ufrag:abcd\r\n");
    // Long poll: a post while waiting is delivered at once.
    let (addr2, tb2) = (addr.clone(), tb.clone());
    let waiter = std::thread::spawn(move || {
        let path = format!("/v1/rooms/doc/b?token={tb2}&after=1&wait=10");
        http(&addr2, "GET", &path, "")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http(&addr, "POST", &post_a, "second").0, 204);
    let (code, body) = waiter.join().unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("second"), "{body}");
    // Bounds and errors.
    assert_eq!(http(&addr, "POST", &post_a, &"x".repeat(17 * 1024)).0, 413);
    assert_eq!(http(&addr, "GET", "/v1/rooms/nope/a", "").0, 404);
    assert_eq!(http(&addr, "POST", "/v1/rooms/bad%20name/join", "").0, 400);
    assert_eq!(http(&addr, "GET", "/v1/rooms/doc/c", "").0, 400);
    assert_eq!(http(&addr, "GET", "/elsewhere", "").0, 404);
    let _ = SocketAddr::from(([127, 0, 0, 1], g));
}

/// A peer file left by a run that ended long ago is not read as this session's peer.
#[test]
fn a_stale_peer_file_is_ignored() {
    let dir = std::env::temp_dir().join(format!("pinhole-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let theirs = dir.join("bob.sdp");
    std::fs::write(
        &theirs,
        "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n",
    )
    .unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&theirs)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let d = dir.display().to_string();
    let out = Command::new(BIN)
        .args([
            "connect",
            "--signal-dir",
            &d,
            "--name",
            "alice",
            "--peer",
            "bob",
            "--stun",
            "stun:127.0.0.1:9",
            "--no-portmap",
            "--timeout",
            "2",
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stale-peer-file"), "{err}");
    assert!(!err.contains("remote-description"), "{err}");
}

/// One `pinhole connect --json` kept running: stdin open, stdout and the JSON events on
/// stderr read by threads.
struct Live {
    proc: Proc,
    stdin: std::process::ChildStdin,
    events: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
    out: std::sync::mpsc::Receiver<String>,
}

impl Live {
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new(BIN)
            .arg("connect")
            .args(args)
            .arg("--json")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let (etx, events) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = etx.send(v);
                }
            }
        });
        let (otx, out) = std::sync::mpsc::channel();
        let o = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(o).lines().map_while(Result::ok) {
                let _ = otx.send(line);
            }
        });
        Self {
            proc: Proc(child),
            stdin,
            events,
            seen: Vec::new(),
            out,
        }
    }

    /// The first event (from now on) that `want` accepts, within `limit`.
    fn wait(
        &mut self,
        limit: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + limit;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if want(&v) {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no such event within {limit:?}; seen: {:?}", self.seen);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.proc.0.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

#[test]
fn keepalive_policies_switch_by_signal_with_events_and_the_connection_carries_on() {
    let s = servers();
    let mut args = common(&s);
    args.extend(
        [
            "--signal",
            &s.signal,
            "--room",
            "keepalive",
            "--no-relay",
            "--keepalive-interval",
            "12",
        ]
        .map(String::from),
    );
    let mut a = Live::spawn(&args);
    let mut b = Live::spawn(&args);
    for p in [&mut a, &mut b] {
        p.wait(Duration::from_secs(20), |e| e["event"] == "connected");
    }
    let policy = |p: &'static str| {
        move |e: &serde_json::Value| e["event"] == "keepalive" && e["policy"] == p
    };
    // SIGUSR1: the background, with its fixed interval reported.
    a.signal("USR1");
    a.wait(Duration::from_secs(5), policy("background"));
    let iv = a.wait(Duration::from_secs(5), |e| {
        e["event"] == "keepalive-interval"
    });
    assert_eq!(iv["interval_s"], 12.0, "{iv}");
    // SIGTSTP: suspended, and the process is not stopped: it answers the next signal.
    a.signal("TSTP");
    a.wait(Duration::from_secs(5), policy("suspended"));
    assert!(a.proc.0.try_wait().unwrap().is_none(), "SIGTSTP ended it");
    // SIGUSR2: back to the foreground; the path (alive: a second ago) is kept.
    a.signal("USR2");
    a.wait(Duration::from_secs(5), policy("foreground"));
    // The same signal twice is no switch: no event (the next one is the data's).
    a.signal("USR2");
    writeln!(a.stdin, "still here").unwrap();
    let line = b
        .out
        .recv_timeout(Duration::from_secs(10))
        .expect("data after the switches");
    assert_eq!(line, "still here");
    std::thread::sleep(Duration::from_millis(300));
    while let Ok(v) = a.events.try_recv() {
        a.seen.push(v);
    }
    let switches = a.seen.iter().filter(|e| e["event"] == "keepalive").count();
    assert_eq!(switches, 3, "{:?}", a.seen);
    for p in [&a, &b] {
        assert!(
            !p.seen
                .iter()
                .any(|e| e["event"] == "network-changed" || e["event"] == "disconnected"),
            "{:?}",
            p.seen
        );
    }
}
