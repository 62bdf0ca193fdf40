//! `pinhole allocate` against coturn on loopback: UDP, TCP and TLS, long-term and REST
//! credentials, a short nonce lifetime (stale-nonce handling), a short allocation lifetime
//! (refresh), a peer that sends through the relay and gets its datagrams echoed back,
//! deallocation seen in coturn's log, 300 Try Alternate (coturn's `alternate-server`) on
//! every transport, and a pinned self-signed certificate. Everything stays on
//! 127.0.0.0/8.
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

/// The server certificate of a test coturn.
#[derive(Default, Clone, Copy)]
enum Cert<'a> {
    /// A throw-away CA of its own (`ca.pem`, trusted with --ca) and a certificate for
    /// 127.0.0.1 and localhost signed by it.
    #[default]
    OwnCa,
    /// A certificate signed by the CA in another coturn's directory, for these subject
    /// alternative names (openssl syntax).
    CaOf(&'a Path, &'a str),
    /// Self-signed the way coturn's documentation makes it (`openssl req -x509 … -nodes`,
    /// which marks it CA:TRUE), for 127.0.0.1: `cert.pem` is what --ca pins.
    SelfSigned,
}

/// What a test coturn has beyond the defaults.
#[derive(Default)]
struct CoturnOpts<'a> {
    /// More configuration lines.
    extra: &'a [&'a str],
    /// Its listening ports (plain, TLS), for servers that must know each other's in
    /// advance; free ones otherwise.
    ports: Option<(u16, u16)>,
    /// Its relayed ports (min, max); 49152–65535 otherwise.
    relay_ports: Option<(u16, u16)>,
    cert: Cert<'a>,
}

fn start_coturn(extra: &[&str]) -> Coturn {
    start_coturn_with(&CoturnOpts {
        extra,
        ..CoturnOpts::default()
    })
}

fn start_coturn_with(opts: &CoturnOpts<'_>) -> Coturn {
    let dir = std::env::temp_dir().join(format!(
        "pinhole-coturn-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
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
    // webpki refuses a CA certificate used as the server's own unless --ca pins it.
    let (ca_dir, san) = match opts.cert {
        Cert::OwnCa => {
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
            (dir.clone(), "DNS:localhost,IP:127.0.0.1")
        }
        Cert::CaOf(other, san) => (other.to_owned(), san),
        Cert::SelfSigned => {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "365",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ]);
            (PathBuf::new(), "")
        }
    };
    if !matches!(opts.cert, Cert::SelfSigned) {
        let ca_pem = ca_dir.join("ca.pem").display().to_string();
        let ca_key = ca_dir.join("ca-key.pem").display().to_string();
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
            format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ]);
    }
    let (port, tls_port) = opts.ports.unwrap_or_else(|| (free_port(), free_port()));
    let (min_port, max_port) = opts.relay_ports.unwrap_or((49152, 65535));
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
        format!("min-port={min_port}"),
        format!("max-port={max_port}"),
        "verbose".to_owned(),
        format!("cert={}", dir.join("cert.pem").display()),
        format!("pkey={}", dir.join("key.pem").display()),
        format!("log-file={}", dir.join("turn.log").display()),
        "simple-log".to_owned(),
        format!("pidfile={}", dir.join("turn.pid").display()),
    ];
    conf.extend(opts.extra.iter().map(|s| s.to_string()));
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
    /// Its standard error so far (also echoed to the test's).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
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
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
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
        Self {
            child,
            lines: rx,
            stderr,
        }
    }

    /// What it wrote on standard error so far.
    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

/// Allocates through `uri`, echoes a peer's datagrams through the relay, deallocates;
/// returns the "allocated" event.
fn run_echo(coturn: &Coturn, uri: &str, creds: &[&str], ca: Option<&Path>) -> serde_json::Value {
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
    alloc
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

/// Runs `pinhole allocate` with `args` to its end, which must come within `within`: its
/// exit code, its standard error, and how long it ran.
fn run_to_end(args: &[&str], within: Duration) -> (Option<i32>, String, Duration) {
    use std::io::Read;
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .arg("allocate")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pinhole allocate {args:?} still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code(), stderr, elapsed)
}

/// Four distinct free ports: two coturns' plain and TLS ports.
fn four_ports() -> [u16; 4] {
    let mut ports: Vec<u16> = Vec::new();
    for _ in 0..100 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
        if ports.len() == 4 {
            return [ports[0], ports[1], ports[2], ports[3]];
        }
    }
    panic!("no four distinct free ports");
}

const ALICE: [&str; 4] = ["--user", "alice", "--password", "wonderland"];
const ALICE_CONF: [&str; 2] = ["lt-cred-mech", "user=alice:wonderland"];
/// The relayed ports of the alternate server in the redirect tests: an allocation there
/// is recognised by its port.
const ALTERNATE_RELAY_PORTS: (u16, u16) = (60000, 60999);

#[test]
fn coturn_redirect_is_followed_on_udp_tcp_and_tls() {
    if !tools_present() {
        return;
    }
    // B allocates; A redirects every Allocate to B (`alternate-server` for UDP and TCP,
    // `tls-alternate-server` for TLS). A's certificate comes from B's CA, so that one --ca
    // trusts both; both carry 127.0.0.1, the name in the URI, which the alternate is
    // checked against too (coturn sends no ALTERNATE-DOMAIN).
    let b = start_coturn_with(&CoturnOpts {
        extra: &ALICE_CONF,
        relay_ports: Some(ALTERNATE_RELAY_PORTS),
        ..CoturnOpts::default()
    });
    let to_b = format!("alternate-server=127.0.0.1:{}", b.port);
    let tls_to_b = format!("tls-alternate-server=127.0.0.1:{}", b.tls_port);
    let a = start_coturn_with(&CoturnOpts {
        extra: &[ALICE_CONF[0], ALICE_CONF[1], &to_b, &tls_to_b],
        relay_ports: Some((50000, 50999)),
        cert: Cert::CaOf(&b.dir, "DNS:localhost,IP:127.0.0.1"),
        ..CoturnOpts::default()
    });
    let ca = b.dir.join("ca.pem");
    for (uri, ca) in [
        (format!("turn:127.0.0.1:{}", a.port), None),
        (format!("turn:127.0.0.1:{}?transport=tcp", a.port), None),
        (
            format!("turns:127.0.0.1:{}", a.tls_port),
            Some(ca.as_path()),
        ),
    ] {
        // Allocated (within run_echo's 10 s: before the fix, UDP gave up after 40 s),
        // and data goes both ways through the alternate's relay.
        let alloc = run_echo(&b, &uri, &ALICE, ca);
        let relayed: SocketAddr = alloc["relayed"].as_str().unwrap().parse().unwrap();
        assert!(
            (ALTERNATE_RELAY_PORTS.0..=ALTERNATE_RELAY_PORTS.1).contains(&relayed.port()),
            "{uri}: allocated at the alternate server: {alloc}"
        );
    }
    let _ = a;
}

#[test]
fn coturn_redirect_to_a_server_whose_certificate_does_not_fit_fails() {
    if !tools_present() {
        return;
    }
    // The alternate's certificate is from the trusted CA but names another host: a
    // redirect does not bypass the check against the URI's name.
    let [pb, tb, ..] = four_ports();
    let tls_to_b = format!("tls-alternate-server=127.0.0.1:{tb}");
    let a = start_coturn_with(&CoturnOpts {
        extra: &[ALICE_CONF[0], ALICE_CONF[1], &tls_to_b],
        ..CoturnOpts::default()
    });
    let b = start_coturn_with(&CoturnOpts {
        extra: &ALICE_CONF,
        ports: Some((pb, tb)),
        cert: Cert::CaOf(&a.dir, "DNS:turn.other.example"),
        ..CoturnOpts::default()
    });
    let ca = a.dir.join("ca.pem").display().to_string();
    let uri = format!("turns:127.0.0.1:{}", a.tls_port);
    let mut args = vec!["--turn", &uri, "--ca", &ca, "--duration", "30"];
    args.extend_from_slice(&ALICE);
    let (code, stderr, _) = run_to_end(&args, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("redirected to") && stderr.contains("certificate"),
        "{stderr}"
    );
    let _ = b;
}

#[test]
fn coturn_redirect_loop_fails_fast_on_every_transport() {
    if !tools_present() {
        return;
    }
    // A sends every Allocate to B, B sends it back to A.
    let [pa, ta, pb, tb] = four_ports();
    let a_to_b = [
        format!("alternate-server=127.0.0.1:{pb}"),
        format!("tls-alternate-server=127.0.0.1:{tb}"),
    ];
    let b_to_a = [
        format!("alternate-server=127.0.0.1:{pa}"),
        format!("tls-alternate-server=127.0.0.1:{ta}"),
    ];
    let a = start_coturn_with(&CoturnOpts {
        extra: &[ALICE_CONF[0], ALICE_CONF[1], &a_to_b[0], &a_to_b[1]],
        ports: Some((pa, ta)),
        ..CoturnOpts::default()
    });
    let b = start_coturn_with(&CoturnOpts {
        extra: &[ALICE_CONF[0], ALICE_CONF[1], &b_to_a[0], &b_to_a[1]],
        ports: Some((pb, tb)),
        cert: Cert::CaOf(&a.dir, "DNS:localhost,IP:127.0.0.1"),
        ..CoturnOpts::default()
    });
    let ca = a.dir.join("ca.pem").display().to_string();
    for uri in [
        format!("turn:127.0.0.1:{pa}"),
        format!("turn:127.0.0.1:{pa}?transport=tcp"),
        format!("turns:127.0.0.1:{ta}"),
    ] {
        let mut args = vec!["--turn", &uri, "--ca", &ca, "--duration", "60"];
        args.extend_from_slice(&ALICE);
        let (code, stderr, took) = run_to_end(&args, Duration::from_secs(30));
        assert_eq!(code, Some(1), "{uri}: {stderr}");
        assert!(stderr.contains("redirected again"), "{uri}: {stderr}");
        assert!(took < Duration::from_secs(5), "{uri}: took {took:?}");
    }
    let _ = b;
}

#[test]
fn coturn_pinned_self_signed_certificate() {
    if !tools_present() {
        return;
    }
    // The certificate coturn's documentation makes (CA:TRUE, which webpki refuses as a
    // server's own): pinned with --ca, it works.
    let c = start_coturn_with(&CoturnOpts {
        extra: &ALICE_CONF,
        cert: Cert::SelfSigned,
        ..CoturnOpts::default()
    });
    let pinned = c.dir.join("cert.pem");
    let uri = format!("turns:127.0.0.1:{}", c.tls_port);
    run_echo(&c, &uri, &ALICE, Some(&pinned));
    // Another self-signed certificate in --ca: refused, as a certificate error.
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-keyout",
            "other-key.pem",
            "-out",
            "other.pem",
            "-days",
            "365",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .current_dir(&c.dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let other = c.dir.join("other.pem").display().to_string();
    let mut args = vec!["--turn", &uri, "--ca", &other, "--duration", "30"];
    args.extend_from_slice(&ALICE);
    let (code, stderr, _) = run_to_end(&args, Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
}

#[test]
fn ca_file_without_a_certificate_is_a_usage_error_naming_it() {
    // No server needed: the file is checked before anything is sent.
    let dir = std::env::temp_dir().join(format!("pinhole-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    for (name, contents) in [("empty.pem", ""), ("key-only.pem", key_only)] {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        let path = path.display().to_string();
        let args = [
            "--turn",
            "turns:127.0.0.1:9",
            "--user",
            "alice",
            "--password",
            "x",
            "--ca",
            &path,
        ];
        let (code, stderr, _) = run_to_end(&args, Duration::from_secs(10));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&path) && stderr.contains("no certificate"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs two `pinhole connect --json` with `args`, each fed a line on stdin and EOF later;
/// their exit codes, stdouts and JSON events. Bounded by `limit`.
fn connect_pair(args: [Vec<String>; 2], limit: Duration) -> Vec<(Option<i32>, String, String)> {
    use std::io::{Read, Write};
    let mut children: Vec<Child> = args
        .iter()
        .map(|a| {
            Command::new(BIN)
                .arg("connect")
                .args(a)
                .arg("--json")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut readers = Vec::new();
    for (i, c) in children.iter_mut().enumerate() {
        let mut stdin = c.stdin.take().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let _ = writeln!(stdin, "hello from side {i}");
            std::thread::sleep(Duration::from_secs(2));
            drop(stdin);
        });
        let (mut out, mut err) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
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
    let deadline = Instant::now() + limit;
    let mut codes = [None, None];
    while Instant::now() < deadline && codes.iter().any(Option::is_none) {
        for (i, c) in children.iter_mut().enumerate() {
            if codes[i].is_none() {
                if let Ok(Some(s)) = c.try_wait() {
                    codes[i] = Some(s.code());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    readers
        .into_iter()
        .enumerate()
        .map(|(i, (o, e))| (codes[i].flatten(), o.join().unwrap(), e.join().unwrap()))
        .collect()
}

/// `pinhole connect` relays over TCP on one side and TLS on the other (RFC 8656 §3.1, for
/// networks that block UDP): every datagram crosses coturn on a stream, both ways.
#[test]
fn connect_relays_over_tcp_and_tls() {
    if !tools_present() {
        return;
    }
    let c = start_coturn(&["lt-cred-mech", "user=alice:wonderland"]);
    let dir = c.dir.join("signal");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let ca = c.dir.join("ca.pem").display().to_string();
    let stun = format!("stun:127.0.0.1:{}", c.port);
    let side = |turn: String, me: &str, them: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--stun",
            &stun,
            "--turn",
            &turn,
            "--user",
            "alice",
            "--password",
            "wonderland",
            "--no-direct",
            "--signal-dir",
            &d,
            "--name",
            me,
            "--peer",
            them,
            "--timeout",
            "15",
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = side(
        format!("turn:127.0.0.1:{}?transport=tcp", c.port),
        "alice",
        "bob",
        &[],
    );
    let b = side(
        format!("turns:127.0.0.1:{}", c.tls_port),
        "bob",
        "alice",
        &["--ca", &ca],
    );
    let out = connect_pair([a, b], Duration::from_secs(40));
    let report = format!("{out:#?}\ncoturn log:\n{}", c.log());
    for (i, (code, stdout, events)) in out.iter().enumerate() {
        assert_eq!(*code, Some(0), "side {i}: {report}");
        assert_eq!(stdout, &format!("hello from side {}\n", 1 - i), "{report}");
        let connected: serde_json::Value = events
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .find(|e: &serde_json::Value| e["event"] == "connected")
            .unwrap_or_else(|| panic!("side {i}: no connected event: {report}"));
        // Only relays over TCP and TLS were given, and no direct candidate: the pair's
        // local side is a relayed address of coturn's.
        assert_eq!(connected["local"]["type"], "relay", "side {i}: {report}");
    }
    // coturn saw both streams: a TCP and a TLS allocation.
    let log = c.log();
    assert!(log.contains("TCP") && log.contains("TLS"), "{log}");
}

/// coturn restarts under a live allocation (killed and started again on the same ports:
/// a new nonce, no allocations). `pinhole allocate` notices at its next liveness check
/// (a Refresh every 5 s: 438 for the old nonce, then 437 Allocation Mismatch) and ends
/// with "allocation lost", seconds after the restart: before the checks it went unnoticed
/// until the next refresh, up to nine minutes later (the allocation here is 600 s, its
/// first refresh due at 540 s). The wait for the exit is bounded at 30 s.
#[test]
fn coturn_restart_under_a_live_allocation_is_noticed_within_seconds() {
    if !tools_present() {
        return;
    }
    let [port, tls_port, _, _] = four_ports();
    let opts = CoturnOpts {
        extra: &ALICE_CONF,
        ports: Some((port, tls_port)),
        ..CoturnOpts::default()
    };
    let c = start_coturn_with(&opts);
    let uri = format!("turn:127.0.0.1:{port}");
    let mut args = vec!["--turn", uri.as_str()];
    args.extend(ALICE);
    args.extend(["--duration", "300"]);
    let mut a = Allocate::start(&args);
    a.wait_for("allocated", Duration::from_secs(10));
    // Alive across a few checks first.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "pinhole allocate ended while coturn was up"
    );
    drop(c);
    let c = start_coturn_with(&opts);
    let restarted = Instant::now();
    let status = loop {
        if let Some(s) = a.child.try_wait().unwrap() {
            break s;
        }
        if restarted.elapsed() > Duration::from_secs(30) {
            panic!(
                "the restart went unnoticed for 30 s; coturn's log:\n{}",
                c.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let noticed = restarted.elapsed();
    // The reader thread has the last line once the pipe closed; bounded wait for it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !a.stderr().contains("allocation lost") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = a.stderr();
    println!(
        "coturn restarted under a live allocation: pinhole allocate noticed it {:.1} s later ({})",
        noticed.as_secs_f64(),
        stderr.trim()
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("allocation lost") && stderr.contains("437"),
        "{stderr}"
    );
}
