//! The `pinhole` binary end to end, on loopback only: `serve` on 127.0.0.1 and 127.0.0.2,
//! `netcheck --stun` against it, exit codes, and the server's robustness on a real socket.
//! Nothing here sends to any address outside 127.0.0.0/8.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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
    let (code, j, stderr) = netcheck(&["--stun", &uri, "--json", "--timeout", "10"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(j["udp"], true, "{j}");
    // Loopback has no NAT: everything is endpoint-independent and hairpins.
    assert_eq!(j["mapping"], "endpoint-independent", "{j}");
    assert_eq!(j["filtering"], "endpoint-independent", "{j}");
    assert_eq!(j["hairpinning"], true, "{j}");
    assert_eq!(j["alg_rewrites"], false, "{j}");
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
    let (code, j, stderr) = netcheck(&["--stun", &uri, "--json"]);
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
        .args(["netcheck", "--stun", &format!("stun:{}", server.primary)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for row in [
        "UDP",
        "public address",
        "mapping",
        "filtering",
        "hairpinning",
    ] {
        assert!(stdout.contains(row), "{stdout}");
    }
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
}

#[test]
fn netcheck_exit_1_when_nothing_answers() {
    // A bound socket that never answers: nothing is sent anywhere but loopback.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let uri = format!("stun:{}", silent.local_addr().unwrap());
    let (code, j, _) = netcheck(&["--stun", &uri, "--json", "--timeout", "3"]);
    assert_eq!(code, Some(1));
    assert_eq!(j["udp"], false);
    assert_eq!(j["hairpinning"], serde_json::Value::Null);
    assert_eq!(j["mapping"], "unknown");
}

#[test]
fn netcheck_exit_2_on_usage_errors() {
    for args in [
        &["--stun", "turn:127.0.0.1"][..],
        &["--stun", "stun:127.0.0.1:0"],
        &["--stun", "stuns:127.0.0.1"],
        &["--timeout", "-1", "--stun", "stun:127.0.0.1"],
        &["--bogus"],
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
