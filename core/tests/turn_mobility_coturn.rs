//! RFC 8016 mobility against coturn on loopback: the sans-IO [`Allocation`] driven over
//! real UDP sockets. Another port on 127.0.0.1 stands for the new network: the
//! allocation moves there with its mobility ticket and keeps its relayed address,
//! permission and channel; data a peer sends to the relayed address reaches the new
//! socket, and ChannelData from the new socket reaches the peer. Without `--mobility`
//! coturn answers 405 Mobility Forbidden to the ticket request and the client allocates
//! without it. Everything stays on 127.0.0.0/8.
//!
//! Needs coturn (`turnserver`). Without it the tests say so and pass — except under
//! `CI=true`, where a skip is a failure.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinhole::turn::{
    Allocation, AllocationConfig, AllocationEvent, Credentials, Input, TurnTransport,
};
use pinhole::{Protocol, Received};

const USER: &str = "mobile";
const PASS: &str = "roaming-secret";
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

fn coturn_present() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v turnserver"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    let msg = "coturn (turnserver) is missing: the RFC 8016 interop tests cannot run";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: a skip is a failure)");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

/// A coturn process on 127.0.0.1 with a generated config in a temporary directory;
/// killed and removed on drop.
struct Coturn {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Coturn {
    fn start(mobility: bool) -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "pinhole-coturn-mobility-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = vec![
            "listening-ip=127.0.0.1".to_owned(),
            "relay-ip=127.0.0.1".to_owned(),
            format!("listening-port={port}"),
            "realm=pinhole.test".to_owned(),
            "lt-cred-mech".to_owned(),
            format!("user={USER}:{PASS}"),
            "fingerprint".to_owned(),
            "allow-loopback-peers".to_owned(),
            "no-cli".to_owned(),
            "no-tls".to_owned(),
            "no-dtls".to_owned(),
            "no-tcp".to_owned(),
            "no-multicast-peers".to_owned(),
            "verbose".to_owned(),
            format!("log-file={}", dir.join("turn.log").display()),
            "simple-log".to_owned(),
            format!("pidfile={}", dir.join("turn.pid").display()),
        ];
        if mobility {
            conf.push("mobility".to_owned());
        }
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
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        c.wait_ready();
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turn.log")).unwrap_or_default()
    }

    /// Bounded wait until coturn answers a STUN Binding request.
    fn wait_ready(&self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut req = [0u8; 20];
        req[1] = 1;
        req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let _ = sock.send_to(&req, self.addr);
            let mut b = [0u8; 512];
            if sock.recv_from(&mut b).is_ok() {
                return;
            }
        }
        panic!("coturn did not come up; its log:\n{}", self.log());
    }
}

/// Data from the peer, as the allocation handed it out: where it arrived, and what.
type Delivered = (SocketAddr, Vec<u8>);

/// The allocation over real sockets: it sends from whichever socket its transmits name,
/// and every socket's datagrams are offered to it.
struct Client {
    alloc: Allocation,
    socks: Vec<UdpSocket>,
    events: Vec<AllocationEvent>,
    delivered: Vec<Delivered>,
}

impl Client {
    fn new(server: SocketAddr, socks: Vec<UdpSocket>) -> Self {
        for s in &socks {
            s.set_nonblocking(true).unwrap();
        }
        let local = socks[0].local_addr().unwrap();
        let config = AllocationConfig::new(
            server,
            local,
            TurnTransport::Udp,
            Credentials::long_term(USER, PASS),
        );
        let mut seed = [0u8; 32];
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
        seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        Self {
            alloc: Allocation::new(Instant::now(), config, seed),
            socks,
            events: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn sock(&self, addr: SocketAddr) -> &UdpSocket {
        self.socks
            .iter()
            .find(|s| s.local_addr().unwrap() == addr)
            .unwrap_or_else(|| panic!("no socket at {addr}"))
    }

    /// One round: sends, receives, timers, events.
    fn step(&mut self) {
        let now = Instant::now();
        if self.alloc.poll_timeout().is_some_and(|t| t <= now) {
            self.alloc.handle_timeout(now);
        }
        while let Some(t) = self.alloc.poll_transmit() {
            assert_eq!(t.proto, Protocol::Udp);
            let _ = self.sock(t.source).send_to(&t.contents, t.destination);
        }
        let mut buf = [0u8; 2048];
        for i in 0..self.socks.len() {
            let local = self.socks[i].local_addr().unwrap();
            while let Ok((n, from)) = self.socks[i].recv_from(&mut buf) {
                let rx = Received {
                    proto: Protocol::Udp,
                    source: from,
                    destination: local,
                    contents: &buf[..n],
                };
                if let Input::Data { data, .. } = self.alloc.handle_input(Instant::now(), rx) {
                    self.delivered.push((local, data.to_vec()));
                }
            }
        }
        while let Some(e) = self.alloc.poll_event() {
            self.events.push(e);
        }
    }

    /// Steps until `done` says so, within [`WAIT`].
    fn until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; events: {:?}",
                self.events
            );
            self.step();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn has(&self, f: impl Fn(&AllocationEvent) -> bool) -> bool {
        self.events.iter().any(f)
    }

    fn no_loss(&self) {
        assert!(
            !self.has(|e| matches!(e, AllocationEvent::Lost(_))),
            "{:?}",
            self.events
        );
    }

    /// Sends `data` to `peer` through the allocation (ChannelData once the channel is
    /// bound), from the socket the allocation uses now.
    fn send_to_peer(&self, peer: SocketAddr, data: &[u8]) {
        let mut out = [0u8; 512];
        let n = self.alloc.encode_to_peer(peer, data, &mut out).unwrap();
        self.sock(self.alloc.local())
            .send_to(&out[..n], self.alloc.server())
            .unwrap();
    }
}

/// The peer receives `want` from `from`, within [`WAIT`], resending through `send`
/// every 100 ms (a datagram sent before the server is ready may be dropped).
fn peer_receives(peer: &UdpSocket, from: SocketAddr, want: &[u8], mut send: impl FnMut()) {
    peer.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 512];
    loop {
        assert!(
            Instant::now() < deadline,
            "the peer did not receive {want:?}"
        );
        send();
        while let Ok((n, src)) = peer.recv_from(&mut buf) {
            if src == from && &buf[..n] == want {
                return;
            }
        }
    }
}

#[test]
fn an_allocation_moves_to_a_new_socket_with_its_mobility_ticket() {
    if !coturn_present() {
        return;
    }
    let coturn = Coturn::start(true);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut c = Client::new(coturn.addr, vec![a, b]);

    c.until("the allocation", |c| {
        c.has(|e| matches!(e, AllocationEvent::Allocated { .. }))
    });
    c.no_loss();
    assert!(
        c.alloc.has_mobility_ticket(),
        "coturn with --mobility grants a ticket; its log:\n{}",
        coturn.log()
    );
    assert!(!c.alloc.mobility_refused());
    let relayed = c.alloc.relayed()[0];

    c.alloc
        .create_permission(Instant::now(), peer_addr.ip())
        .unwrap();
    let channel = c.alloc.bind_channel(Instant::now(), peer_addr).unwrap();
    c.until("the channel", |c| {
        c.has(|e| matches!(e, AllocationEvent::ChannelBound { .. }))
    });
    // Before the move: peer data reaches the first socket.
    c.until("data at the first socket", |c| {
        let _ = peer.send_to(b"before", relayed);
        c.delivered.contains(&(a_addr, b"before".to_vec()))
    });

    // The move: the ticket in a Refresh from the second socket.
    assert!(c.alloc.move_to(Instant::now(), b_addr));
    assert_eq!(c.alloc.local(), b_addr);
    c.until("the move", |c| {
        c.has(|e| matches!(e, AllocationEvent::Moved { .. }))
    });
    c.no_loss();
    assert!(
        c.has(|e| matches!(e, AllocationEvent::Moved { local, .. } if *local == b_addr)),
        "{:?}",
        c.events
    );
    assert_eq!(c.alloc.relayed(), [relayed], "the same relayed address");
    assert!(c.alloc.has_mobility_ticket(), "the rotated ticket is kept");

    // Peer data to the same relayed address now reaches the second socket, on the
    // channel bound before the move.
    c.delivered.clear();
    c.until("data at the second socket", |c| {
        let _ = peer.send_to(b"after the move", relayed);
        c.delivered.contains(&(b_addr, b"after the move".to_vec()))
    });
    assert!(
        c.delivered.iter().all(|(at, _)| *at == b_addr),
        "nothing for the old socket: {:?}",
        c.delivered
    );
    // And ChannelData from the second socket reaches the peer from the relayed address.
    let mut out = [0u8; 64];
    let n = c.alloc.encode_to_peer(peer_addr, b"x", &mut out).unwrap();
    assert_eq!(
        pinhole::turn::ChannelData::parse(&out[..n])
            .unwrap()
            .channel,
        channel,
        "the channel is still bound"
    );
    peer_receives(&peer, relayed, b"from the new socket", || {
        c.send_to_peer(peer_addr, b"from the new socket")
    });

    // The liveness checks that follow (plain Refreshes, 5 s apart) are answered on the
    // new 5-tuple: the allocation lives there now.
    let checks_from = Instant::now();
    c.until("a liveness check from the new socket", |_| {
        checks_from.elapsed() > pinhole::turn::LIVENESS_INTERVAL + Duration::from_secs(1)
    });
    c.no_loss();
    assert!(c.alloc.is_allocated());

    // It moves back, with the rotated ticket.
    assert!(c.alloc.move_to(Instant::now(), a_addr));
    let moved = |c: &Client| {
        c.events
            .iter()
            .filter(|e| matches!(e, AllocationEvent::Moved { .. }))
            .count()
    };
    c.until("the second move", |c| moved(c) == 2);
    c.no_loss();
    c.delivered.clear();
    c.until("data at the first socket again", |c| {
        let _ = peer.send_to(b"back", relayed);
        c.delivered.contains(&(a_addr, b"back".to_vec()))
    });

    c.alloc.deallocate(Instant::now());
    c.until("the deallocation", |c| {
        c.has(|e| *e == AllocationEvent::Deallocated)
    });
}

/// coturn without `--mobility` answers the ticket request with 405 Mobility Forbidden
/// (RFC 8016 §3.1.4): the client allocates without it, and cannot move.
#[test]
fn without_mobility_coturn_forbids_the_ticket_and_the_client_still_allocates() {
    if !coturn_present() {
        return;
    }
    let coturn = Coturn::start(false);
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr = b.local_addr().unwrap();
    let mut c = Client::new(coturn.addr, vec![a, b]);
    c.until("the allocation", |c| {
        c.has(|e| matches!(e, AllocationEvent::Allocated { .. }))
    });
    c.no_loss();
    assert!(
        c.alloc.mobility_refused(),
        "coturn without --mobility refuses the ticket; its log:\n{}",
        coturn.log()
    );
    assert!(!c.alloc.has_mobility_ticket());
    assert!(!c.alloc.move_to(Instant::now(), b_addr));
    c.alloc.deallocate(Instant::now());
    c.until("the deallocation", |c| {
        c.has(|e| *e == AllocationEvent::Deallocated)
    });
}
