//! `pinhole allocate` against coturn in the lab's internet: from a host behind an
//! endpoint-dependent (symmetric) NAT over UDP, with long-term and with TURN REST
//! credentials; from a host behind a firewall that drops all UDP, over TCP and over TLS
//! (a throw-away CA generated with openssl, trusted with `--ca`). In every case a peer in
//! the lab's internet sends to the relayed address and gets its datagram echoed back by
//! the client through the relay (data both ways), the client deallocates on SIGINT, and
//! coturn's log shows the deallocation.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::in_ns;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{
    COTURN_PRIMARY, COTURN_SECRET, COTURN_TLS, COTURN_USER, CoturnOptions, Lab, NatConfig, PEER_IP,
    Uplink, bins,
};

/// `pinhole allocate … --json` running in a lab namespace; killed on drop.
struct Allocate {
    what: String,
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
    fn start(what: &str, ns: &str, args: &[String]) -> Self {
        let bin = bins::pinhole().expect("pinhole binary");
        let mut all = vec!["allocate".to_owned()];
        all.extend_from_slice(args);
        // A bound on the whole run, whatever happens to the test.
        all.extend(["--duration".into(), "30".into(), "--json".into()]);
        let mut child = in_ns(ns, &bin.to_string_lossy(), &all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning pinhole allocate");
        let out = child.stdout.take().expect("piped");
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
            what: what.to_owned(),
            child,
            lines: rx,
        }
    }

    fn wait_for(&self, event: &str, within: Duration) -> serde_json::Value {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) if v["event"] == "failed" || v["event"] == "lost" => {
                    panic!("{}: {v} while waiting for {event:?}", self.what)
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("{}: no {event:?} event within {within:?}", self.what);
    }

    /// SIGINT (the CLI's Ctrl-C: deallocate, then exit).
    fn interrupt(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{}: kill -INT failed", self.what);
    }

    fn exit_code(mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{}: pinhole allocate did not exit within {within:?}",
            self.what
        );
    }
}

/// A peer on the lab internet sends to `relayed` from `PEER_IP:port` until the echo comes
/// back on the same socket (`natlab udp-send --wait-ms` connects, so only an answer from
/// the relayed address counts).
fn echo_through(lab: &Lab, what: &str, relayed: &str, port: u16) {
    let bind = format!("{PEER_IP}:{port}");
    for _ in 0..20 {
        let out = lab
            .natlab(
                lab.internet(),
                &[
                    "udp-send",
                    "--bind",
                    &bind,
                    "--to",
                    relayed,
                    "--text",
                    what,
                    "--wait-ms",
                    "300",
                ],
                Duration::from_secs(5),
            )
            .expect("udp-send");
        if out.trim() == "reply" {
            return;
        }
    }
    panic!(
        "{what}: no echo through the relay {relayed}\n{}",
        lab.server_logs()
    );
}

struct Case<'a> {
    what: &'a str,
    ns: &'a str,
    uri: String,
    creds: Vec<String>,
    peer_port: u16,
    /// The address the server must see the client at (the NAT's, the router's WAN IP).
    mapped_ip: Ipv4Addr,
}

/// Allocate, echo a peer's datagram, deallocate on SIGINT; returns the relayed address.
fn run_case(lab: &Lab, c: &Case<'_>) -> SocketAddr {
    let peer = SocketAddrV4::new(PEER_IP, c.peer_port);
    let mut args = vec![
        "--turn".to_owned(),
        c.uri.clone(),
        "--peer".to_owned(),
        peer.to_string(),
        "--echo".to_owned(),
    ];
    args.extend(c.creds.iter().cloned());
    let a = Allocate::start(c.what, c.ns, &args);
    let alloc = a.wait_for("allocated", Duration::from_secs(15));
    let relayed: SocketAddr = alloc["relayed"].as_str().unwrap().parse().unwrap();
    assert_eq!(relayed.ip(), *COTURN_PRIMARY.ip(), "{}: {alloc}", c.what);
    let mapped: SocketAddr = alloc["mapped"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        mapped.ip(),
        c.mapped_ip,
        "{}: coturn did not see the NAT's address: {alloc}",
        c.what
    );
    a.wait_for("channel", Duration::from_secs(10));
    echo_through(lab, c.what, &relayed.to_string(), c.peer_port);
    a.interrupt();
    a.wait_for("deallocated", Duration::from_secs(10));
    assert_eq!(a.exit_code(Duration::from_secs(10)), Some(0), "{}", c.what);
    relayed
}

fn coturn_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir().join("turnserver-file.log")).unwrap_or_default()
        + &lab.server_logs()
}

/// A lab with coturn (`opts`), a symmetric NAT `sym` with host `sym-h`, and a router
/// `fw` that drops all UDP, with host `fw-h`.
fn lab_with(opts: &CoturnOptions) -> Lab {
    let mut lab = Lab::new().expect("lab");
    lab.start_coturn_with(opts).expect("coturn");
    lab.add_router("sym", NatConfig::symmetric(), Uplink::Internet)
        .expect("router");
    lab.add_router(
        "fw",
        NatConfig::port_restricted_cone().blocking_udp(),
        Uplink::Internet,
    )
    .expect("router");
    lab.add_host("sym-h", "sym").expect("host");
    lab.add_host("fw-h", "fw").expect("host");
    lab
}

/// Runs the cases in parallel, then checks that coturn logged a deallocation for each.
fn run_cases(lab: &Lab, cases: &[Case<'_>]) {
    let relayed: Vec<SocketAddr> = std::thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|c| s.spawn(move || run_case(lab, c)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a case failed"))
            .collect()
    });
    // Deallocation seen on the server side: coturn logs each Refresh with lifetime 0
    // (bounded wait: the log is written asynchronously).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = coturn_log(lab);
        let deleted = log.lines().filter(|l| is_deallocation(l)).count();
        if deleted >= relayed.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "coturn logged {deleted} deallocations for {} allocations ({relayed:?}):\n{log}",
            relayed.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn long_term() -> Vec<String> {
    let (user, pass) = COTURN_USER;
    vec![
        "--user".to_owned(),
        user.to_owned(),
        "--password".to_owned(),
        pass.to_owned(),
    ]
}

#[test]
fn turn_over_udp_tcp_tls_through_symmetric_nat_and_udp_blocking_firewall() {
    if !lab_available("lab_turn", &["turnserver", "openssl", "kill"]) {
        return;
    }
    let lab = lab_with(&CoturnOptions {
        tls: true,
        ..CoturnOptions::default()
    });
    let sym = lab.host("sym-h").unwrap().ns.clone();
    let fw = lab.host("fw-h").unwrap().ns.clone();
    let sym_wan = lab.router("sym").unwrap().wan_ip;
    let fw_wan = lab.router("fw").unwrap().wan_ip;

    // The firewall really drops UDP: STUN to coturn gets nothing back.
    assert!(
        lab.stun_ping(
            &fw,
            "0.0.0.0:0".parse().unwrap(),
            SocketAddr::V4(COTURN_PRIMARY),
            Duration::from_millis(500),
        )
        .is_err(),
        "UDP passed the firewall"
    );

    let ca = lab.coturn_ca().display().to_string();
    run_cases(
        &lab,
        &[
            Case {
                what: "udp via symmetric NAT",
                ns: &sym,
                uri: format!("turn:{COTURN_PRIMARY}"),
                creds: long_term(),
                peer_port: 40001,
                mapped_ip: sym_wan,
            },
            Case {
                what: "tcp through the UDP-blocking firewall",
                ns: &fw,
                uri: format!("turn:{COTURN_PRIMARY}?transport=tcp"),
                creds: long_term(),
                peer_port: 40003,
                mapped_ip: fw_wan,
            },
            Case {
                what: "tls through the UDP-blocking firewall",
                ns: &fw,
                uri: format!("turns:{COTURN_TLS}"),
                creds: [long_term(), vec!["--ca".to_owned(), ca]].concat(),
                peer_port: 40004,
                mapped_ip: fw_wan,
            },
        ],
    );
}

#[test]
fn turn_rest_credentials_through_symmetric_nat() {
    if !lab_available("lab_turn_rest", &["turnserver", "openssl", "kill"]) {
        return;
    }
    // coturn with use-auth-secret accepts REST credentials only.
    let lab = lab_with(&CoturnOptions {
        rest: true,
        ..CoturnOptions::default()
    });
    let sym = lab.host("sym-h").unwrap().ns.clone();
    let sym_wan = lab.router("sym").unwrap().wan_ip;
    let rest = |secret: &str| {
        vec![
            "--user".to_owned(),
            "lab-rest".to_owned(),
            "--secret".to_owned(),
            secret.to_owned(),
        ]
    };
    run_cases(
        &lab,
        &[Case {
            what: "udp via symmetric NAT, REST credentials",
            ns: &sym,
            uri: format!("turn:{COTURN_PRIMARY}"),
            creds: rest(COTURN_SECRET),
            peer_port: 40002,
            mapped_ip: sym_wan,
        }],
    );
    // A wrong secret is refused: a typed error and exit status 1, quickly.
    let mut args = vec!["--turn".to_owned(), format!("turn:{COTURN_PRIMARY}")];
    args.extend(rest("not-the-secret"));
    let bad = Allocate::start("wrong REST secret", &sym, &args);
    assert_eq!(bad.exit_code(Duration::from_secs(15)), Some(1));
}

/// Whether a line of coturn's log is a deallocation: a Refresh with LIFETIME 0,
/// `session …: refreshed, realm=<…>, username=<…>, lifetime=0[, cipher=…]`.
fn is_deallocation(line: &str) -> bool {
    line.contains(": refreshed, realm=")
        && (line.ends_with("lifetime=0") || line.contains("lifetime=0,"))
}
