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
    for _ in 0..10 {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let primary = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--turn", "--primary", &primary, "--duration", "60"];
        args.extend_from_slice(extra);
        let p = Proc::start(&args);
        if let Ok(l) = p.lines.recv_timeout(Duration::from_secs(5)) {
            if l.contains("listening") {
                return (p, primary.parse().unwrap());
            }
        }
    }
    panic!("pinhole serve --turn did not start");
}

#[test]
fn allocate_echo_through_the_dev_server_with_both_credential_kinds() {
    let (_server, addr) = start_server(&[
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
    for args in [
        &["serve", "--turn"][..],
        &["serve", "--turn", "--user", "nocolon"],
        &["serve", "--user", "a:b"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--duration")
            .arg("1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
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
