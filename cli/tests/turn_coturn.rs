//! `pinhole allocate` against coturn on loopback: UDP, TCP and TLS, long-term and REST
//! credentials, a short nonce lifetime (stale-nonce handling), a short allocation lifetime
//! (refresh), a peer that sends through the relay and gets its datagrams echoed back, and
//! deallocation seen in coturn's log. Everything stays on 127.0.0.0/8.
//!
//! Needs coturn (`turnserver`) and openssl. Without them the tests say so and pass —
//! except under `CI=true`, where a skip is a failure.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pinhole");

fn tools_present() -> bool {
    let have = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have("turnserver") && have("openssl") {
        return true;
    }
    let msg = "coturn (turnserver) or openssl is missing: the coturn interop tests cannot run";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: a skip is a failure)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A coturn process with a generated config in a temporary directory; killed and removed
/// on drop.
struct Coturn {
    child: Child,
    dir: PathBuf,
    port: u16,
    tls_port: u16,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Coturn {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turn.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    // TCP and UDP on the same number: check both.
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn start_coturn(extra: &[&str]) -> Coturn {
    let dir = std::env::temp_dir().join(format!(
        "pinhole-coturn-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // A throw-away CA (trusted with --ca) and a server certificate for 127.0.0.1 signed
    // by it: webpki refuses a CA certificate used as the server's own.
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?} failed");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pinhole test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let port = free_port();
    let tls_port = free_port();
    let mut conf = vec![
        "listening-ip=127.0.0.1".to_owned(),
        "relay-ip=127.0.0.1".to_owned(),
        format!("listening-port={port}"),
        format!("tls-listening-port={tls_port}"),
        "realm=pinhole.test".to_owned(),
        "fingerprint".to_owned(),
        "allow-loopback-peers".to_owned(),
        "no-cli".to_owned(),
        "no-dtls".to_owned(),
        "no-multicast-peers".to_owned(),
        "min-port=49152".to_owned(),
        "max-port=65535".to_owned(),
        "verbose".to_owned(),
        format!("cert={}", dir.join("cert.pem").display()),
        format!("pkey={}", dir.join("key.pem").display()),
        format!("log-file={}", dir.join("turn.log").display()),
        "simple-log".to_owned(),
        format!("pidfile={}", dir.join("turn.pid").display()),
    ];
    conf.extend(extra.iter().map(|s| s.to_string()));
    std::fs::write(dir.join("turnserver.conf"), conf.join("\n") + "\n").unwrap();
    let child = Command::new("turnserver")
        .arg("-c")
        .arg(dir.join("turnserver.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = Coturn {
        child,
        dir,
        port,
        tls_port,
    };
    wait_ready(&c);
    c
}

/// Bounded wait until coturn answers a STUN Binding on its UDP port and accepts TCP on
/// its TLS port.
fn wait_ready(c: &Coturn) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut req = [0u8; 20];
    req[1] = 1;
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let _ = sock.send_to(&req, ("127.0.0.1", c.port));
        let mut b = [0u8; 512];
        if sock.recv_from(&mut b).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", c.tls_port)).is_ok()
        {
            return;
        }
    }
    panic!("coturn did not come up; its log:\n{}", c.log());
}

/// Runs `pinhole allocate` with `args`; collects its JSON lines as they come.
struct Allocate {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Allocate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Allocate {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("allocate")
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Self { child, lines: rx }
    }

    fn wait_for(&self, event: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no {event:?} event within {within:?}");
    }

    fn finish(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pinhole allocate did not exit");
    }
}

/// Sends from a peer socket to the relayed address and expects the echo back.
fn echo_through(relayed: &str, peer: &UdpSocket) {
    let relayed: SocketAddr = relayed.parse().unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        peer.send_to(b"ping through the relay", relayed).unwrap();
        let mut b = [0u8; 100];
        if let Ok((n, from)) = peer.recv_from(&mut b) {
            assert_eq!(from, relayed);
            assert_eq!(&b[..n], b"ping through the relay");
            return;
        }
    }
    panic!("no echo through the relay");
}

fn run_echo(coturn: &Coturn, uri: &str, creds: &[&str], ca: Option<&Path>) {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap().to_string();
    let mut args = vec![
        "--turn",
        uri,
        "--peer",
        &peer_addr,
        "--echo",
        "--duration",
        "8",
    ];
    args.extend_from_slice(creds);
    let ca_s;
    if let Some(ca) = ca {
        ca_s = ca.display().to_string();
        args.extend_from_slice(&["--ca", &ca_s]);
    }
    let a = Allocate::start(&args);
    let alloc = a.wait_for("allocated", Duration::from_secs(10));
    assert!(
        alloc["relayed"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{alloc}"
    );
    assert!(alloc["lifetime"].as_u64().unwrap() > 0);
    a.wait_for("channel", Duration::from_secs(5));
    echo_through(alloc["relayed"].as_str().unwrap(), &peer);
    a.wait_for("deallocated", Duration::from_secs(15));
    assert_eq!(a.finish(), Some(0));
    let _ = coturn;
}

#[test]
fn coturn_udp_tcp_tls_with_long_term_credentials() {
    if !tools_present() {
        return;
    }
    let c = start_coturn(&["lt-cred-mech", "user=alice:wonderland"]);
    let creds = ["--user", "alice", "--password", "wonderland"];
    run_echo(&c, &format!("turn:127.0.0.1:{}", c.port), &creds, None);
    run_echo(
        &c,
        &format!("turn:127.0.0.1:{}?transport=tcp", c.port),
        &creds,
        None,
    );
    let ca = c.dir.join("ca.pem");
    run_echo(
        &c,
        &format!("turns:127.0.0.1:{}", c.tls_port),
        &creds,
        Some(&ca),
    );
    // Deallocation is seen on the server side: coturn logs each allocation's deletion.
    let log = c.log();
    assert!(
        log.contains("refreshed") || log.contains("delete") || log.contains("closed"),
        "{log}"
    );
    // A wrong password fails with a typed error and exit status 1.
    let a = Allocate::start(&[
        "--turn",
        &format!("turn:127.0.0.1:{}", c.port),
        "--user",
        "alice",
        "--password",
        "nope",
        "--duration",
        "5",
    ]);
    assert_eq!(a.finish(), Some(1));
}

#[test]
fn coturn_rest_credentials_stale_nonce_and_refresh() {
    if !tools_present() {
        return;
    }
    // REST credentials (use-auth-secret), a nonce that goes stale every 3 s, and at most
    // 6 s of allocation lifetime so that refreshes happen during the run.
    let c = start_coturn(&[
        "use-auth-secret",
        "static-auth-secret=north-wind",
        "stale-nonce=3",
        "max-allocate-lifetime=6",
    ]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap().to_string();
    let uri = format!("turn:127.0.0.1:{}", c.port);
    let a = Allocate::start(&[
        "--turn",
        &uri,
        "--user",
        "bob",
        "--secret",
        "north-wind",
        "--peer",
        &peer_addr,
        "--echo",
        "--duration",
        "12",
    ]);
    let alloc = a.wait_for("allocated", Duration::from_secs(10));
    assert!(alloc["lifetime"].as_u64().unwrap() <= 6, "{alloc}");
    // Refreshed at least once, across stale nonces.
    a.wait_for("refreshed", Duration::from_secs(10));
    echo_through(alloc["relayed"].as_str().unwrap(), &peer);
    a.wait_for("deallocated", Duration::from_secs(15));
    assert_eq!(a.finish(), Some(0));
    // The wrong secret is refused.
    let a = Allocate::start(&[
        "--turn",
        &uri,
        "--user",
        "bob",
        "--secret",
        "south-wind",
        "--duration",
        "5",
    ]);
    assert_eq!(a.finish(), Some(1));
}
