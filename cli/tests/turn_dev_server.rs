//! `pinhole allocate` against `pinhole serve --turn` on loopback: the development TURN
//! server needs no third-party software, so this runs everywhere.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pinhole");

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self { child, lines: rx }
    }

    fn line(&self, containing: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(containing) => return l,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no line containing {containing:?}");
    }

    fn exit_code(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("did not exit");
    }
}

fn start_server(extra: &[&str]) -> (Proc, SocketAddr) {
    start_server_on("127.0.0.1", extra)
}

/// Starts `pinhole serve --turn` on `ip` and a free port; returns it and the address to
/// reach it at (on loopback).
fn start_server_on(ip: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    for _ in 0..10 {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let primary = format!("{ip}:{port}");
        let mut args = vec!["serve", "--turn", "--primary", &primary, "--duration", "60"];
        args.extend_from_slice(extra);
        let p = Proc::start(&args);
        if let Ok(l) = p.lines.recv_timeout(Duration::from_secs(5)) {
            if l.contains("listening") {
                return (p, SocketAddr::from(([127, 0, 0, 1], port)));
            }
        }
    }
    panic!("pinhole serve --turn did not start");
}

#[test]
fn allocate_echo_through_the_dev_server_with_both_credential_kinds() {
    // The peers are on loopback, which the server refuses unless told.
    let (_server, addr) = start_server(&[
        "--allow-loopback-peers",
        "--user",
        "alice:wonderland",
        "--secret",
        "north",
        "--nonce-lifetime",
        "2",
        "--max-lifetime",
        "4",
    ]);
    for creds in [
        &["--user", "alice", "--password", "wonderland"][..],
        &["--user", "bob", "--secret", "north"],
    ] {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let peer_addr = peer.local_addr().unwrap().to_string();
        let uri = format!("turn:{addr}");
        let mut args = vec![
            "allocate",
            "--turn",
            &uri,
            "--peer",
            &peer_addr,
            "--echo",
            "--duration",
            "7",
            "--json",
        ];
        args.extend_from_slice(creds);
        let a = Proc::start(&args);
        let alloc: serde_json::Value = serde_json::from_str(&a.line("\"allocated\"")).unwrap();
        assert_eq!(alloc["transport"], "udp");
        assert_eq!(alloc["lifetime"], 4);
        let relayed: SocketAddr = alloc["relayed"].as_str().unwrap().parse().unwrap();
        a.line("\"channel\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut echoed = false;
        while !echoed && Instant::now() < deadline {
            peer.send_to(b"hello relay", relayed).unwrap();
            let mut b = [0u8; 64];
            if let Ok((n, from)) = peer.recv_from(&mut b) {
                assert_eq!((from, &b[..n]), (relayed, &b"hello relay"[..]));
                echoed = true;
            }
        }
        assert!(echoed, "no echo through the dev server");
        // With a 4 s lifetime and 2 s nonces, refreshes cross stale nonces.
        a.line("\"refreshed\"");
        a.line("\"deallocated\"");
        assert_eq!(a.exit_code(), Some(0));
    }
    // Wrong password: exit 1.
    let a = Proc::start(&[
        "allocate",
        "--turn",
        &format!("turn:{addr}"),
        "--user",
        "alice",
        "--password",
        "x",
        "--duration",
        "5",
    ]);
    assert_eq!(a.exit_code(), Some(1));
}

#[test]
fn serve_turn_usage_errors() {
    for (args, says) in [
        (&["serve", "--turn"][..], "--user or --secret"),
        (&["serve", "--turn", "--user", "nocolon"], "name:password"),
        (&["serve", "--user", "a:b"], "--turn"),
        // Empty users and secrets used to be accepted (and could never authenticate).
        (&["serve", "--turn", "--user", "a:"], "non-empty"),
        (&["serve", "--turn", "--user", ":b"], "non-empty"),
        (
            &["serve", "--turn", "--secret", ""],
            "--secret must not be empty",
        ),
        // CIDRs are checked, and so are relay addresses.
        (
            &[
                "serve",
                "--turn",
                "--user",
                "a:b",
                "--allow-peer",
                "10.1.2.3/8",
            ],
            "10.0.0.0/8",
        ),
        (
            &["serve", "--turn", "--user", "a:b", "--allow-peer", "lan"],
            "not an IP address",
        ),
        (
            &["serve", "--turn", "--user", "a:b", "--relay-ip", "0.0.0.0"],
            "concrete unicast",
        ),
        (
            &["serve", "--turn", "--user", "a:b", "--external-ip", "::1"],
            "address family",
        ),
        (&["serve", "--allow-loopback-peers"], "--turn"),
        // Limits are range-checked.
        (
            &["serve", "--turn", "--user", "a:b", "--max-channels", "5000"],
            "5000",
        ),
        (
            &["serve", "--turn", "--user", "a:b", "--nonce-lifetime", "0"],
            "0",
        ),
        // --alternate with the default wildcard primary used to fail binding a port
        // nothing used.
        (
            &["serve", "--alternate", "127.0.0.2:3479"],
            "concrete primary and alternate IPs",
        ),
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--duration")
            .arg("1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("0x80"),
            "{args:?}: attribute numbers in {err}"
        );
    }
    // Huge durations used to panic (exit 101).
    for d in ["1e20", "inf", "NaN", "-1", "0"] {
        let out = Command::new(BIN)
            .args(["serve", "--primary", "127.0.0.1:0", "--duration", d])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--duration {d}");
    }
    let out = Command::new(BIN)
        .args([
            "allocate",
            "--turn",
            "stun:127.0.0.1",
            "--user",
            "a",
            "--password",
            "b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// By default the server refuses loopback peers (a client reached UDP services on the
/// server's own loopback through it): 403 on ChannelBind.
#[test]
fn loopback_peers_are_refused_unless_allowed() {
    let (_server, addr) = start_server(&["--user", "alice:wonderland"]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap().to_string();
    let a = Proc::start(&[
        "allocate",
        "--turn",
        &format!("turn:{addr}"),
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--peer",
        &peer_addr,
        "--duration",
        "3",
        "--json",
    ]);
    let failed: serde_json::Value = serde_json::from_str(&a.line("\"channel_failed\"")).unwrap();
    assert_eq!(failed["peer"], peer_addr.as_str());
    assert!(
        failed["error"].as_str().unwrap().contains("403"),
        "{failed}"
    );
    assert_eq!(a.exit_code(), Some(0));
}

/// With the default `--primary 0.0.0.0:PORT` the server used to advertise the relayed
/// address `0.0.0.0:PORT`, which no peer can use.
#[test]
fn a_wildcard_listener_advertises_a_concrete_relayed_address() {
    let (_server, addr) = start_server_on("0.0.0.0", &["--user", "alice:wonderland"]);
    let a = Proc::start(&[
        "allocate",
        "--turn",
        &format!("turn:{addr}"),
        "--user",
        "alice",
        "--password",
        "wonderland",
        "--duration",
        "1",
        "--json",
    ]);
    let alloc: serde_json::Value = serde_json::from_str(&a.line("\"allocated\"")).unwrap();
    let relayed: SocketAddr = alloc["relayed"].as_str().unwrap().parse().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1", "{alloc}");
    assert_ne!(relayed.port(), 0);
    assert_eq!(a.exit_code(), Some(0));
}

fn binding_request(i: u16) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[1] = 0x01; // Binding request
    b[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    b[8..10].copy_from_slice(&i.to_be_bytes());
    b
}

/// Sends `n` Binding requests from one socket, 25 at a time (so that loopback's socket
/// buffers do not drop any), reading the answers after each batch; returns how many were
/// answered and how long it all took.
fn flood(server: SocketAddr, n: u16) -> (usize, Duration) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut answered = 0;
    let mut buf = [0u8; 256];
    for batch in 0..n.div_ceil(25) {
        let mut waiting = 0;
        for i in batch * 25..(batch * 25 + 25).min(n) {
            s.send_to(&binding_request(i), server).unwrap();
            waiting += 1;
        }
        while waiting > 0 && s.recv_from(&mut buf).is_ok() {
            answered += 1;
            waiting -= 1;
        }
    }
    (answered, started.elapsed())
}

/// `pinhole serve` answered every request from any source at any rate (an amplifier):
/// now 50 a second per source IP with bursts of 100 by default, `--rate-limit` to change.
#[test]
fn stun_serve_limits_each_source() {
    for (limit, expect_all) in [(None, false), (Some("0"), true)] {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let primary = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--primary", &primary, "--duration", "30"];
        if let Some(l) = limit {
            args.extend(["--rate-limit", l]);
        }
        let p = Proc::start(&args);
        p.line("listening");
        let (answered, took) = flood(primary.parse().unwrap(), 300);
        if expect_all {
            assert_eq!(answered, 300, "--rate-limit 0 answers everything");
        } else {
            // The burst, plus what refilled while the flood was being sent.
            let refill = (took.as_secs_f64() * 50.0).ceil() as usize + 1;
            assert!(
                (100..=100 + refill).contains(&answered),
                "{answered} answered in {took:?}"
            );
        }
    }
}

/// `serve --turn --log debug` said almost nothing: it now logs allocations, permissions,
/// channels and refusals, and never a credential.
#[test]
fn serve_turn_debug_log_tells_what_happened_without_credentials() {
    let log = std::env::temp_dir().join(format!("pinhole-serve-turn-{}.log", std::process::id()));
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let primary = format!("127.0.0.1:{port}");
    let mut server = Command::new(BIN)
        .args([
            "serve",
            "--turn",
            "--primary",
            &primary,
            "--duration",
            "30",
            "--log",
            "debug",
            "--user",
            "alice:sesame-secret-pw",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = Proc::start(&[
        "allocate",
        "--turn",
        &format!("turn:{primary}"),
        "--user",
        "alice",
        "--password",
        "sesame-secret-pw",
        "--peer",
        &peer.local_addr().unwrap().to_string(),
        "--peer",
        "203.0.113.9:9",
        "--duration",
        "2",
        "--json",
    ]);
    a.line("\"channel\"");
    let _ = a.exit_code();
    let _ = server.kill();
    let _ = server.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    for expected in [
        "allocation created",
        "peer refused by the policy",
        "channel bound",
        "permission created",
        "allocation deleted",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("sesame-secret-pw"),
        "a password in the log:\n{text}"
    );
    // Not a terminal: no colour codes.
    assert!(!text.contains('\u{1b}'), "colour codes in:\n{text}");
}
