//! The `pinhole` binary end to end, on loopback only: `serve` on 127.0.0.1 and 127.0.0.2,
//! `netcheck --stun` against it, exit codes, and the server's robustness on a real socket.
//! Nothing here sends to any address outside 127.0.0.0/8.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pinhole::stun::attributes::{ErrorCode, UnknownAttributes, XorMappedAddress};
use pinhole::stun::{AttributeType, Class, Message, MessageBuilder, MessageType, TransactionId};

const BIN: &str = env!("CARGO_BIN_EXE_pinhole");

/// A `pinhole serve` child, killed on drop (also when a test panics).
struct Server {
    child: Child,
    primary: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `pinhole serve` on loopback; waits (bounded) for its four "listening" lines.
fn start_server(rfc5780: bool) -> Server {
    for _ in 0..10 {
        let p1 = free_udp_port("127.0.0.1");
        let p2 = free_udp_port("127.0.0.2");
        if p1 == p2 {
            continue;
        }
        let primary: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--primary",
            &primary.to_string(),
            "--duration",
            "120",
        ]);
        if rfc5780 {
            cmd.args(["--alternate", &format!("127.0.0.2:{p2}")]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let want = if rfc5780 { 4 } else { 1 };
        // `serve` prints its lines once bound, or exits (port taken): both end the read.
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .take(want)
            .map_while(Result::ok)
            .collect();
        if lines.len() == want && lines.iter().all(|l| l.starts_with("listening on udp")) {
            return Server { child, primary };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("pinhole serve did not start on loopback");
}

fn netcheck(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(BIN)
        .arg("netcheck")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, stderr)
}

#[test]
fn netcheck_json_against_pinhole_serve() {
    let server = start_server(true);
    let uri = format!("stun:{}", server.primary);
    let (code, j, stderr) =
        netcheck(&["--stun", &uri, "--json", "--timeout", "10", "--no-portmap"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(j["udp"], true, "{j}");
    // Loopback has no NAT: everything is endpoint-independent and hairpins.
    assert_eq!(j["mapping"], "endpoint-independent", "{j}");
    assert_eq!(j["filtering"], "endpoint-independent", "{j}");
    assert_eq!(j["hairpinning"], true, "{j}");
    assert_eq!(j["alg_rewrites"], false, "{j}");
    // No NAT keeps every local port.
    assert_eq!(
        j["port_allocation"],
        serde_json::json!({"kind": "preserving", "delta": null}),
        "{j}"
    );
    let public = j["public"].as_array().unwrap();
    assert!(public[0].as_str().unwrap().starts_with("127.0.0.1:"), "{j}");
    let s = &j["servers"][0];
    assert_eq!(s["uri"], uri.as_str());
    assert!(s["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["mapped"], public[0]);
    assert!(
        s["other_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.2:")
    );
}

#[test]
fn netcheck_against_a_plain_server_says_what_is_unknown() {
    let server = start_server(false);
    let uri = format!("stun:{}", server.primary);
    let (code, j, stderr) = netcheck(&["--stun", &uri, "--json", "--no-portmap"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(j["udp"], true);
    assert_eq!(j["mapping"], "unknown");
    assert_eq!(j["filtering"], "unknown");
    let notes = j["notes"].to_string();
    assert!(notes.contains("RFC 5780"), "{notes}");
}

#[test]
fn netcheck_human_output_shows_a_table() {
    let server = start_server(true);
    let out = Command::new(BIN)
        .args([
            "netcheck",
            "--no-portmap",
            "--stun",
            &format!("stun:{}", server.primary),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for row in [
        "UDP",
        "mapped address",
        "mapping",
        "filtering",
        "hairpinning",
    ] {
        assert!(stdout.contains(row), "{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("port allocation") && l.contains("preserving")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("answered in"),
        "progress goes to stderr: {stderr}"
    );
}

#[test]
fn netcheck_embedded_is_one_command() {
    let (code, j, stderr) = netcheck(&["--embedded", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(j["mapping"], "endpoint-independent", "{j}");
    assert_eq!(j["filtering"], "endpoint-independent", "{j}");
    // --embedded never probes the gateway.
    assert_eq!(j["portmap"], serde_json::Value::Null, "{j}");
}

#[test]
fn netcheck_exit_1_when_nothing_answers() {
    // A bound socket that never answers: nothing is sent anywhere but loopback.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("stun:{}", silent.local_addr().unwrap());
    let (code, j, _) = netcheck(&["--stun", &uri, "--json", "--timeout", "3", "--no-portmap"]);
    assert_eq!(code, Some(1));
    assert_eq!(j["udp"], false);
    assert_eq!(j["hairpinning"], serde_json::Value::Null);
    assert_eq!(j["mapping"], "unknown");
    // Probed but nothing answered: not enough evidence (not `null`, "not tested").
    assert_eq!(
        j["port_allocation"],
        serde_json::json!({"kind": "unknown", "delta": null})
    );
}

#[test]
fn netcheck_exit_2_on_usage_errors() {
    for args in [
        &["--stun", "turn:127.0.0.1"][..],
        &["--stun", "stun:127.0.0.1:0"],
        &["--stun", "stuns:127.0.0.1"],
        &["--timeout", "-1", "--stun", "stun:127.0.0.1"],
        &["--bogus"],
        &["--stun", "stun:127.0.0.1", "--embedded"],
    ] {
        let (code, _, stderr) = netcheck(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
    let out = Command::new(BIN)
        .args([
            "serve",
            "--primary",
            "127.0.0.1:1",
            "--alternate",
            "127.0.0.1:2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

fn exchange(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    sock.send_to(bytes, to).unwrap();
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn serve_survives_garbage_and_answers_420_and_400() {
    let server = start_server(false);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    // Garbage: no answer, and the server lives on.
    for junk in [
        &b""[..],
        b"\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 20],
        &[0xffu8; 600],
    ] {
        assert_eq!(exchange(&sock, server.primary, junk), None);
    }

    // Unknown comprehension-required attribute and CHANGE-REQUEST on a plain server: 420.
    let mut buf = [0u8; 128];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([4; 12]),
    )
    .unwrap();
    b.add_raw(AttributeType(0x7abc), b"?").unwrap();
    b.add_raw(AttributeType::CHANGE_REQUEST, &[0, 0, 0, 6])
        .unwrap();
    let resp = exchange(&sock, server.primary, b.finish()).expect("a 420");
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.get::<ErrorCode<'_>>().unwrap().unwrap().code, 420);
    let unknown: Vec<_> = m
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .types()
        .collect();
    assert_eq!(
        unknown,
        [AttributeType(0x7abc), AttributeType::CHANGE_REQUEST]
    );

    // A good header over a broken body: 400.
    let mut buf = [0u8; 128];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([5; 12]),
    )
    .unwrap();
    b.add_raw(AttributeType::SOFTWARE, b"abcd").unwrap();
    let mut bad = b.finish().to_vec();
    bad[23] = 200;
    let resp = exchange(&sock, server.primary, &bad).expect("a 400");
    let m = Message::parse(&resp).unwrap();
    assert_eq!(m.get::<ErrorCode<'_>>().unwrap().unwrap().code, 400);
    assert_eq!(m.transaction_id(), TransactionId([5; 12]));

    // Still serving.
    let mut buf = [0u8; 64];
    let req = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([6; 12]),
    )
    .unwrap()
    .finish()
    .to_vec();
    let resp = exchange(&sock, server.primary, &req).expect("a binding response");
    let m = Message::parse(&resp).unwrap();
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap().unwrap().0,
        sock.local_addr().unwrap()
    );
}

// ---------------------------------------------------------------------------
// Port mapping against a fake gateway on a loopback address of its own
// ---------------------------------------------------------------------------

mod fake_gateway {
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use pinhole::portmap::{natpmp, pcp};

    pub(crate) const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 77);

    /// Answers PCP and/or NAT-PMP on `ip`:5351 until dropped; records what it received.
    pub(crate) struct FakeGateway {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
        pub(crate) requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Drop for FakeGateway {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub(crate) fn start(ip: &str, speak_pcp: bool, speak_natpmp: bool) -> FakeGateway {
        start_with(ip, speak_pcp, speak_natpmp, EXTERNAL, true)
    }

    /// [`start`] with another external address, and optionally deaf to deletions (lifetime
    /// 0), as a gateway that stopped answering just then.
    pub(crate) fn start_with(
        ip: &str,
        speak_pcp: bool,
        speak_natpmp: bool,
        external: Ipv4Addr,
        answer_deletes: bool,
    ) -> FakeGateway {
        let sock = UdpSocket::bind((ip, natpmp::SERVER_PORT)).expect("bind fake gateway");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, req2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut buf = [0u8; 1500];
            // Bounded: the owner stops it, and it never outlives two minutes.
            while !stop2.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = &buf[..n];
                req2.lock().unwrap().push(req.to_vec());
                let deletion = match req.first() {
                    Some(2) => pcp::Request::parse(req).is_ok_and(|r| r.lifetime == 0),
                    Some(0) => matches!(
                        natpmp::Request::parse(req),
                        Ok(natpmp::Request::Map { lifetime: 0, .. })
                    ),
                    _ => false,
                };
                if deletion && !answer_deletes {
                    continue;
                }
                let epoch = started.elapsed().as_secs() as u32;
                let mut out = [0u8; 128];
                let len = match req.first() {
                    Some(2) if speak_pcp => {
                        let Ok(r) = pcp::Request::parse(req) else {
                            continue;
                        };
                        let data = match r.data {
                            pcp::OpData::Map(mut m) => {
                                m.external_port = if r.lifetime == 0 { 0 } else { 61001 };
                                m.external_ip = IpAddr::V4(external);
                                pcp::OpData::Map(m)
                            }
                            d => d,
                        };
                        let opcode = match data {
                            pcp::OpData::Announce => pcp::Opcode::Announce,
                            pcp::OpData::Map(_) => pcp::Opcode::Map,
                            pcp::OpData::Peer(_) => pcp::Opcode::Peer,
                        };
                        pcp::Response {
                            result: pcp::ResultCode::SUCCESS,
                            lifetime: r.lifetime.min(3600),
                            epoch,
                            opcode,
                            data: Some(data),
                        }
                        .emit(&mut out)
                        .unwrap()
                    }
                    Some(2) if speak_natpmp => {
                        let mut b = [0u8; 16];
                        let resp = natpmp::Response {
                            result: natpmp::ResultCode::UNSUPPORTED_VERSION,
                            epoch,
                            body: natpmp::ResponseBody::Error {
                                opcode: req[1] & 0x7f,
                            },
                        };
                        let n = resp.emit(&mut b);
                        out[..n].copy_from_slice(&b[..n]);
                        n
                    }
                    Some(0) if speak_natpmp => {
                        let Ok(r) = natpmp::Request::parse(req) else {
                            continue;
                        };
                        let body = match r {
                            natpmp::Request::ExternalAddress => {
                                natpmp::ResponseBody::ExternalAddress(external)
                            }
                            natpmp::Request::Map {
                                protocol,
                                internal_port,
                                lifetime,
                                ..
                            } => natpmp::ResponseBody::Map {
                                protocol,
                                internal_port,
                                external_port: if lifetime == 0 { 0 } else { 62002 },
                                lifetime: lifetime.min(3600),
                            },
                        };
                        let mut b = [0u8; 16];
                        let n = natpmp::Response {
                            result: natpmp::ResultCode::SUCCESS,
                            epoch,
                            body,
                        }
                        .emit(&mut b);
                        out[..n].copy_from_slice(&b[..n]);
                        n
                    }
                    _ => continue,
                };
                let _ = sock.send_to(&out[..len], from);
            }
        });
        FakeGateway {
            stop,
            thread: Some(thread),
            requests,
        }
    }
}

fn map_cmd(args: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let out = Command::new(BIN).arg("map").args(args).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null))
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn map_once_via_pcp_then_delete() {
    let gw = fake_gateway::start("127.0.0.3", true, true);
    let (code, lines, stderr) = map_cmd(&[
        "--port",
        "6000",
        "--gateway",
        "127.0.0.3",
        "--via",
        "pcp",
        "--once",
        "--json",
        "--lifetime",
        "600",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let m = &lines[0];
    assert_eq!(m["event"], "mapped");
    assert_eq!(m["via"], "pcp");
    assert_eq!(m["protocol"], "udp");
    assert_eq!(m["external"], "203.0.113.77:61001");
    assert_eq!(m["internal"], "127.0.0.1:6000");
    assert_eq!(m["lifetime"], 600);
    assert_eq!(lines.last().unwrap()["event"], "released");
    // The last request deleted the mapping: PCP MAP with lifetime 0.
    let reqs = gw.requests.lock().unwrap().clone();
    let last = pinhole::portmap::pcp::Request::parse(reqs.last().unwrap()).unwrap();
    assert_eq!(last.lifetime, 0);
}

#[test]
fn map_any_falls_back_to_natpmp_and_netcheck_reports_it() {
    let _gw = fake_gateway::start("127.0.0.4", false, true);
    let (code, lines, stderr) = map_cmd(&[
        "--port",
        "6001",
        "--protocol",
        "tcp",
        "--gateway",
        "127.0.0.4",
        "--once",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines[0]["via"], "natpmp");
    assert_eq!(lines[0]["protocol"], "tcp");
    assert_eq!(lines[0]["external"], "203.0.113.77:62002");
    assert_eq!(lines[0]["reachable"], true);

    // netcheck's portmap object, against the same fake gateway (UPnP: nothing on
    // 127.0.0.4:1900, and no multicast since the gateway is explicit).
    let server = start_server(false);
    let (code, j, stderr) = netcheck(&[
        "--stun",
        &format!("stun:{}", server.primary),
        "--json",
        "--gateway",
        "127.0.0.4",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let p = &j["portmap"];
    assert_eq!(p["gateway"], "127.0.0.4", "{j}");
    assert_eq!(p["pcp"], false, "{j}");
    assert_eq!(p["natpmp"], true, "{j}");
    assert_eq!(p["natpmp_external"], "203.0.113.77", "{j}");
    assert_eq!(p["upnp"], false, "{j}");
}

#[test]
fn map_fails_cleanly_without_a_gateway() {
    // Nothing listens on 127.0.0.5: PCP and NAT-PMP time out, UPnP's unicast search finds
    // nothing; all of it stays on loopback.
    let (code, lines, stderr) = map_cmd(&[
        "--port",
        "6002",
        "--gateway",
        "127.0.0.5",
        "--once",
        "--json",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    // --json: the failure as a JSON object on stdout, too.
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"], "error", "{lines:?}");
    assert_eq!(lines[0]["error"], "unavailable", "{lines:?}");
    assert!(
        lines[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no port mapping") && d.contains("PCP")),
        "{lines:?}"
    );
    assert!(stderr.contains("no port mapping"), "{stderr}");
    let (code, _, _) = map_cmd(&["--port", "0", "--gateway", "127.0.0.5"]);
    assert_eq!(code, Some(2));
}

// ---------------------------------------------------------------------------
// Issue #10: what a new user ran into with netcheck and allocate
// ---------------------------------------------------------------------------

/// What a bounded run of the binary left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `pinhole args...`, killing it after `limit` (then `code` is None).
fn run(args: &[&str], limit: Duration) -> Run {
    run_env(args, &[], limit)
}

fn run_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        took: started.elapsed(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A UDP socket on loopback that never answers (bound, so no ICMP error either).
fn silent_udp() -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap().to_string();
    (s, a)
}

#[test]
fn huge_or_bad_durations_are_usage_errors_not_panics() {
    let (_silent, addr) = silent_udp();
    let turn = format!("turn:{addr}");
    let allocate = [
        "allocate",
        "--turn",
        &turn,
        "--user",
        "u",
        "--password",
        "p",
    ];
    let cases: Vec<Vec<&str>> = vec![
        vec!["--duration", "1e20"],
        vec!["--duration", "1e300"],
        vec!["--duration", "inf"],
        vec!["--duration", "NaN"],
        vec!["--duration", "-1"],
        vec!["--duration", "0"],
        vec!["--duration", "31536001"],
        vec!["--lifetime", "0"],
        vec!["--lifetime", "86401"],
        vec!["--lifetime", "18446744073709551615"],
        vec!["--lifetime", "99999999999999999999999"],
        vec!["--timeout", "1e20"],
        vec!["--timeout", "0"],
        vec!["--timeout", "3601"],
    ];
    for extra in cases {
        let args: Vec<&str> = allocate.iter().copied().chain(extra.clone()).collect();
        let r = run(&args, Duration::from_secs(10));
        assert_eq!(r.code, Some(2), "{extra:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{extra:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(extra[0]),
            "{extra:?} names the flag: {}",
            r.stderr
        );
    }
    for t in ["1e20", "inf", "NaN", "0", "-1", "3601"] {
        let r = run(
            &["netcheck", "--embedded", "--timeout", t],
            Duration::from_secs(10),
        );
        assert_eq!(r.code, Some(2), "--timeout {t}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // The largest values allowed are accepted (and stopped at once by a short --timeout).
    let r = run(
        &[
            &allocate[..],
            &[
                "--duration",
                "31536000",
                "--lifetime",
                "86400",
                "--timeout",
                "0.5",
            ],
        ]
        .concat(),
        Duration::from_secs(10),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
}

#[test]
fn allocate_shows_progress_and_gives_up_after_its_timeout() {
    let (_silent, addr) = silent_udp();
    let r = run(
        &[
            "allocate",
            "--turn",
            &format!("turn:{addr}"),
            "--user",
            "u",
            "--password",
            "p",
            "--timeout",
            "6",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.took >= Duration::from_secs(5) && r.took < Duration::from_secs(12),
        "took {:?}",
        r.took
    );
    for want in [
        &format!("allocating on {addr} via udp") as &str,
        "no answer yet",
        "within 6 s (--timeout)",
    ] {
        assert!(r.stderr.contains(want), "{want:?} in {}", r.stderr);
    }
    assert!(!r.stdout.contains("deallocated"), "{}", r.stdout);
}

#[test]
fn allocate_stopped_before_allocating_says_so() {
    let (_silent, addr) = silent_udp();
    let turn = format!("turn:{addr}");
    let args = [
        "allocate",
        "--turn",
        &turn,
        "--user",
        "u",
        "--password",
        "p",
    ];
    let r = run(
        &[&args[..], &["--duration", "1"]].concat(),
        Duration::from_secs(20),
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(8), "took {:?}", r.took);
    assert!(
        r.stdout.contains("stopped before an allocation was made"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("deallocated"), "{}", r.stdout);
    let r = run(
        &[&args[..], &["--duration", "1", "--json"]].concat(),
        Duration::from_secs(20),
    );
    let j: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(j["event"], "stopped", "{j}");
    // --json keeps stderr for errors: no progress lines.
    assert!(!r.stderr.contains("allocating on"), "{}", r.stderr);
}

/// `pinhole serve --turn` on loopback, with SIGSTOP/SIGCONT; killed on drop.
struct TurnServer {
    child: Child,
    addr: String,
}

impl TurnServer {
    fn start() -> Self {
        for _ in 0..10 {
            let addr = format!("127.0.0.1:{}", free_udp_port("127.0.0.1"));
            let mut child = Command::new(BIN)
                .args(["serve", "--turn", "--primary", &addr, "--user", "u:p"])
                .args(["--duration", "60"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let first = BufReader::new(child.stdout.take().unwrap())
                .lines()
                .next()
                .and_then(Result::ok);
            if first.is_some_and(|l| l.contains("listening")) {
                return Self { child, addr };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("pinhole serve --turn did not start");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of a child's stream, as they come, through a channel.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (bounded) for a line containing `want`; returns it and everything seen.
fn wait_line(rx: &mpsc::Receiver<String>, want: &str, limit: Duration) -> (String, String) {
    let deadline = Instant::now() + limit;
    let mut seen = String::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => return (l, seen),
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            Err(_) => break,
        }
    }
    panic!("no line with {want:?}; saw:\n{seen}");
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("did not exit within {limit:?}");
}

#[test]
fn allocate_says_when_a_deallocation_was_not_confirmed() {
    let server = TurnServer::start();
    let turn = format!("turn:{}", server.addr);
    let mut child = Command::new(BIN)
        .args([
            "allocate",
            "--turn",
            &turn,
            "--user",
            "u",
            "--password",
            "p",
        ])
        .args(["--duration", "2", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let mut err = child.stderr.take().unwrap();
    let (line, _) = wait_line(&out, "\"allocated\"", Duration::from_secs(10));
    let granted = serde_json::from_str::<serde_json::Value>(&line).unwrap()["lifetime"].clone();
    // The server freezes: the Refresh (lifetime 0) that deallocates goes unanswered.
    server.signal("-STOP");
    let code = wait_exit(&mut child, Duration::from_secs(15));
    server.signal("-CONT");
    let (line, _) = wait_line(&out, "deallocate_unconfirmed", Duration::from_secs(1));
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(j["lifetime"], granted, "{j}");
    let mut stderr = String::new();
    err.read_to_string(&mut stderr).unwrap();
    assert!(
        stderr.contains("did not confirm the deallocation")
            && stderr.contains("expires on its own"),
        "{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn log_output_has_no_colour_codes_unless_stderr_is_a_terminal() {
    let r = run(
        &["netcheck", "--embedded", "--json", "--log", "debug"],
        Duration::from_secs(30),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("DEBUG"), "{}", r.stderr);
    assert!(!r.stderr.contains('\x1b'), "{:?}", r.stderr);

    // On a terminal (a pty from util-linux `script`) colours are on, unless NO_COLOR says no.
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "util-linux `script` is missing (CI=true: a skip is a failure)"
        );
        eprintln!("skipping the terminal half: no `script`");
        return;
    }
    let on_tty = |no_color: Option<&str>| {
        let cmd = format!("{BIN} netcheck --embedded --json --log debug");
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env_remove("NO_COLOR");
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = c.stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("DEBUG"), "{text}");
        text
    };
    assert!(on_tty(None).contains('\x1b'), "colours on a terminal");
    assert!(!on_tty(Some("1")).contains('\x1b'), "NO_COLOR=1");
    assert!(
        on_tty(Some("")).contains('\x1b'),
        "an empty NO_COLOR counts as unset"
    );
}

#[test]
fn uri_errors_say_what_is_wrong() {
    let r = run(
        &["netcheck", "--stun", "stun:127.0.0.1:3478?transport=tcp"],
        Duration::from_secs(10),
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(!r.stderr.contains("bad port"), "{}", r.stderr);
    assert!(
        r.stderr.contains("takes no query") && r.stderr.contains("RFC 7064"),
        "{}",
        r.stderr
    );
    for (uri, want) in [
        ("stun://127.0.0.1", "no //"),
        ("stun:::1", "brackets"),
        ("stun:127.0.0.1:99999", "bad port"),
    ] {
        let r = run(&["netcheck", "--stun", uri], Duration::from_secs(10));
        assert_eq!(r.code, Some(2), "{uri}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{uri}: {}", r.stderr);
    }
    for (uri, want) in [
        (
            "turn:127.0.0.1?transport=sctp",
            "?transport=udp or ?transport=tcp",
        ),
        ("turns:127.0.0.1?transport=udp", "DTLS"),
        ("turn:127.0.0.1:0", "bad port"),
        ("stun:127.0.0.1", "RFC 7065"),
    ] {
        let r = run(
            &["allocate", "--turn", uri, "--user", "u", "--password", "p"],
            Duration::from_secs(10),
        );
        assert_eq!(r.code, Some(2), "{uri}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{uri}: {}", r.stderr);
    }
}

#[test]
fn flags_that_would_be_ignored_are_refused() {
    let (_silent, addr) = silent_udp();
    let stun = format!("stun:{addr}");
    for args in [
        &["--embedded", "--gateway", "127.0.0.1"][..],
        &["--stun", &stun, "--no-portmap", "--gateway", "127.0.0.1"],
        &["--stun", &stun, "--gateway", "0.0.0.0"],
        &["--stun", &stun, "--gateway", "::"],
    ] {
        let r = run(
            &[&["netcheck", "--timeout", "1"], args].concat(),
            Duration::from_secs(10),
        );
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("--gateway"), "{args:?}: {}", r.stderr);
    }
    let turn = format!("turn:{addr}");
    for args in [
        &["--user", "", "--password", "p"][..],
        &["--user", "u", "--password", ""],
        &["--user", "u", "--secret", ""],
        &["--user", "u", "--password", "p", "--peer", "0.0.0.0:5000"],
        &["--user", "u", "--password", "p", "--peer", "127.0.0.1:0"],
    ] {
        let r = run(
            &[&["allocate", "--turn", &turn, "--timeout", "1"], args].concat(),
            Duration::from_secs(10),
        );
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("must not be empty") || r.stderr.contains("--peer"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn netcheck_on_loopback_says_loopback_and_what_it_means() {
    let r = run(&["netcheck", "--embedded"], Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("mapped address"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(
        row.contains("127.0.0.1:") && row.contains("(loopback)"),
        "{row}"
    );
    assert!(!r.stdout.contains("public"), "{}", r.stdout);
    assert!(r.stdout.contains("No NAT"), "{}", r.stdout);
    let r = run(
        &["netcheck", "--embedded", "--json"],
        Duration::from_secs(30),
    );
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["connectivity"], "no-nat", "{j}");
    // The field name stays: scripts read it.
    assert!(
        j["public"][0].as_str().unwrap().starts_with("127.0.0.1:"),
        "{j}"
    );
}

#[test]
fn ctrl_c_during_lifetime_discovery_prints_the_partial_report() {
    let mut child = Command::new(BIN)
        .args(["netcheck", "--embedded", "--lifetime"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let err = lines_of(child.stderr.take().unwrap());
    let (budget, _) = wait_line(&err, "takes up to", Duration::from_secs(10));
    assert!(
        budget.contains("190 s (--timeout 10 s + 180 s)"),
        "{budget}"
    );
    // The first interval's answer comes 10 s in: progress while the lifetime test runs.
    wait_line(&err, "still open after 10 s idle", Duration::from_secs(30));
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let code = wait_exit(&mut child, Duration::from_secs(10));
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    assert_eq!(code, Some(0), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("binding lifetime"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("at least 10 s (no expiry seen within the test)"),
        "{row}"
    );
    assert!(!out.contains('?'), "{out}");
    // What was found before the interruption is all there.
    assert!(out.contains("endpoint-independent"), "{out}");
    assert!(out.contains("stopped early"), "{out}");
}

/// `pinhole map` with a bound: killed after `limit` (code `None`), so that a run that
/// would hang fails the test instead of hanging it.
fn map_within(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .arg("map")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null))
        .collect()
}

#[test]
fn map_flag_ranges_and_unusable_gateways_are_usage_errors() {
    // Each would otherwise run (against 127.0.0.6, where nothing listens) or panic.
    for args in [
        &[
            "--port",
            "6003",
            "--verify",
            "stun:127.0.0.1:9",
            "--verify-interval",
            "18446744073709551615",
        ][..],
        &[
            "--port",
            "6003",
            "--verify",
            "stun:127.0.0.1:9",
            "--verify-interval",
            "86401",
        ],
        &[
            "--port",
            "6003",
            "--verify",
            "stun:127.0.0.1:9",
            "--verify-interval",
            "0",
        ],
        &[
            "--port",
            "6003",
            "--verify",
            "stun:127.0.0.1:9",
            "--verify-interval",
            "1e20",
        ],
        &["--port", "6003", "--lifetime", "4294967296"],
        &["--port", "6003", "--lifetime", "0"],
        &["--port", "65536"],
        &["--delete", "0"],
        &["--delete", "6003", "--once"],
        &["--delete", "6003", "--verify-interval", "5"],
        &["--list", "--once"],
        &["--list", "--delete", "6003"],
        &["--list", "--via", "natpmp"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--gateway", "127.0.0.6", "--json"]);
        let (code, stdout, stderr) = map_within(&all, Duration::from_secs(5));
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
    }
    for gw in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
        let (code, stdout, stderr) = map_within(
            &["--port", "6003", "--gateway", gw, "--json"],
            Duration::from_secs(5),
        );
        assert_eq!(code, Some(2), "--gateway {gw}: {stdout}{stderr}");
        let lines = json_lines(&stdout);
        assert_eq!(lines.len(), 1, "{stdout}");
        assert_eq!(lines[0]["event"], "error");
        assert_eq!(lines[0]["error"], "usage");
        assert!(stderr.contains("--gateway"), "{stderr}");
    }
    let (code, _, stderr) = map_within(
        &[
            "--port",
            "6003",
            "--gateway",
            "127.0.0.6",
            "--local-ip",
            "0.0.0.0",
        ],
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn map_once_verify_behind_another_nat_ends_with_unverified() {
    // The gateway's external address is in 100.64.0.0/10: another NAT lies beyond it, the
    // verification is skipped, and --once must say so and end, not wait forever.
    let _gw = fake_gateway::start_with(
        "127.0.0.11",
        true,
        false,
        std::net::Ipv4Addr::new(100, 64, 7, 8),
        true,
    );
    let port = free_udp_port("127.0.0.1").to_string();
    let (code, stdout, stderr) = map_within(
        &[
            "--port",
            &port,
            "--gateway",
            "127.0.0.11",
            "--via",
            "pcp",
            "--once",
            "--verify",
            "stun:127.0.0.1:9",
            "--json",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(events, ["mapped", "unverified", "released"], "{stdout}");
    assert_eq!(lines[0]["reachable"], false);
    assert!(
        lines[1]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("another NAT") && d.contains("100.64.7.8")),
        "{stdout}"
    );
    assert_eq!(lines[2]["outcome"], "deleted", "{stdout}");
}

#[test]
fn map_says_when_the_gateway_did_not_confirm_the_deletion() {
    // The gateway maps, then does not answer the deletion: `released` says it was not
    // confirmed and when the mapping expires; the text says so in words.
    let _gw = fake_gateway::start_with("127.0.0.12", true, true, fake_gateway::EXTERNAL, false);
    let (code, stdout, stderr) = map_within(
        &[
            "--port",
            "6004",
            "--gateway",
            "127.0.0.12",
            "--via",
            "pcp",
            "--once",
            "--json",
            "--lifetime",
            "600",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    let released = lines.last().unwrap();
    assert_eq!(released["event"], "released", "{stdout}");
    assert_eq!(released["outcome"], "unconfirmed", "{stdout}");
    assert_eq!(released["confirmed"], false, "{stdout}");
    assert!(
        released["expires_in"]
            .as_u64()
            .is_some_and(|s| (590..=600).contains(&s)),
        "{stdout}"
    );
    assert!(
        released["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no answer")),
        "{stdout}"
    );
    let (code, stdout, stderr) = map_within(
        &[
            "--port",
            "6005",
            "--gateway",
            "127.0.0.12",
            "--via",
            "natpmp",
            "--once",
            "--lifetime",
            "600",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("delete not confirmed by the gateway") && stdout.contains("expires in"),
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l == "deleted"), "{stdout}");
    // A gateway that confirms: the text says who confirmed.
    let _gw2 = fake_gateway::start("127.0.0.13", true, true);
    let (code, stdout, _) = map_within(
        &[
            "--port",
            "6006",
            "--gateway",
            "127.0.0.13",
            "--via",
            "pcp",
            "--once",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("deleted: udp") && stdout.contains("confirmed by the gateway over pcp"),
        "{stdout}"
    );
}

#[test]
fn map_delete_asks_each_protocol_and_says_which_confirmed() {
    let gw = fake_gateway::start("127.0.0.14", true, true);
    // No IGD on 127.0.0.14: UPnP does not answer (unicast SSDP only, to loopback).
    let (code, stdout, stderr) = map_within(
        &["--delete", "6007", "--gateway", "127.0.0.14", "--json"],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    let j = &lines[0];
    assert_eq!(j["event"], "deleted", "{j}");
    assert_eq!(j["port"], 6007);
    assert_eq!(
        j["confirmed_by"],
        serde_json::json!(["pcp", "natpmp"]),
        "{j}"
    );
    assert_eq!(j["pcp"]["outcome"], "confirmed", "{j}");
    assert_eq!(j["natpmp"]["outcome"], "confirmed", "{j}");
    assert_eq!(j["upnp"]["outcome"], "no-answer", "{j}");
    // What went out: PCP MAP and a NAT-PMP request with lifetime 0 for internal port 6007.
    let reqs = gw.requests.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| {
        pinhole::portmap::pcp::Request::parse(r).is_ok_and(|p| p.lifetime == 0
        && matches!(p.data, pinhole::portmap::pcp::OpData::Map(m) if m.internal_port == 6007))
    }));
    assert!(reqs.iter().any(|r| matches!(
        pinhole::portmap::natpmp::Request::parse(r),
        Ok(pinhole::portmap::natpmp::Request::Map {
            internal_port: 6007,
            lifetime: 0,
            ..
        })
    )));
    // Only NAT-PMP asked, in words; a gateway that answers nothing: exit 1, and a JSON
    // error object.
    let (code, stdout, _) = map_within(
        &[
            "--delete",
            "6007",
            "--gateway",
            "127.0.0.14",
            "--via",
            "natpmp",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("confirmed by the gateway over natpmp") && !stdout.contains("pcp "),
        "{stdout}"
    );
    let (code, stdout, stderr) = map_within(
        &["--delete", "6007", "--gateway", "127.0.0.15", "--json"],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let j = &json_lines(&stdout)[0];
    assert_eq!(j["event"], "error", "{j}");
    assert_eq!(j["error"], "not-deleted", "{j}");
    assert_eq!(j["pcp"]["outcome"], "no-answer", "{j}");
}

#[test]
fn map_list_without_upnp_says_pcp_and_natpmp_cannot_list() {
    let _gw = fake_gateway::start("127.0.0.16", true, true);
    let (code, stdout, stderr) = map_within(
        &["--list", "--gateway", "127.0.0.16", "--json"],
        Duration::from_secs(15),
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    let j = &json_lines(&stdout)[0];
    assert_eq!(j["event"], "error", "{j}");
    assert_eq!(j["error"], "no-list", "{j}");
    assert_eq!(
        (j["pcp"].as_bool(), j["natpmp"].as_bool()),
        (Some(true), Some(true)),
        "{j}"
    );
    assert!(
        stderr.contains("PCP and NAT-PMP") && stderr.contains("no operation to list"),
        "{stderr}"
    );
}
