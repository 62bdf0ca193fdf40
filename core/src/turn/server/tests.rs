//! The client machine against the server machine, wired back to back on a virtual clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sim::{Conditions, Host, Network, Sim};
use crate::turn::{
    Allocation, AllocationConfig, AllocationEvent, Credentials, Input, TurnError, TurnTransport,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const LISTEN: &str = "203.0.113.1:3478";
const CLIENT: &str = "198.51.100.7:40000";
const PEER: &str = "192.0.2.50:9000";

/// A network with zero latency, no loss, where the peer is a host without a machine
/// (what reaches it is collected).
fn instant_network() -> Network {
    let mut net = Network::new(
        1,
        Conditions {
            latency: Duration::ZERO,
            ..Conditions::default()
        },
    );
    net.add_host(addr(PEER).ip(), None);
    net
}

struct World {
    now: Instant,
    server: TurnServer,
    client: Allocation,
    next_relay_port: u16,
    /// What reached the peer.
    at_peer: Vec<Vec<u8>>,
    /// Data the client received.
    at_client: Vec<(SocketAddr, Vec<u8>)>,
    events: Vec<AllocationEvent>,
    /// Zero latency: a pump is instant.
    net: Network,
}

impl World {
    fn new(creds: Credentials, edit: impl FnOnce(&mut TurnServerConfig)) -> Self {
        let now = Instant::now();
        let mut config = TurnServerConfig::new(addr(LISTEN), "pinhole.test", 1_700_000_000);
        config
            .credentials
            .users
            .insert("alice".into(), "wonderland".into());
        config.credentials.rest_secret = Some(b"north".to_vec());
        edit(&mut config);
        let server = TurnServer::new(now, config, [5; 32]);
        let client = Allocation::new(
            now,
            AllocationConfig::new(addr(LISTEN), addr(CLIENT), TurnTransport::Udp, creds),
            [6; 32],
        );
        Self {
            now,
            server,
            client,
            next_relay_port: 50000,
            at_peer: vec![],
            at_client: vec![],
            events: vec![],
            net: instant_network(),
        }
    }

    /// Moves everything until quiet, instantly.
    fn pump(&mut self) {
        self.run_until(self.now);
    }

    /// Runs the server and the client to `end` over a zero-latency network: datagrams for
    /// the peer are collected in `at_peer`, data the client gets in `at_client`, relayed
    /// sockets bound as the server asks.
    fn run_until(&mut self, end: Instant) {
        let listen = addr(LISTEN);
        let (next_port, at_client, events) = (
            &mut self.next_relay_port,
            &mut self.at_client,
            &mut self.events,
        );
        let mut sim = Sim::new(&mut self.net, self.now);
        sim.add(
            Host::new(&mut self.server, [listen.ip()])
                .on_event(|server, _, action| {
                    if let ServerAction::BindRelay { client, .. } = action {
                        *next_port += 1;
                        server.relay_bound(client, SocketAddr::new(listen.ip(), *next_port));
                    }
                })
                .on_transmit(|_, t| {
                    assert!(
                        t.destination == addr(CLIENT) || t.destination == addr(PEER),
                        "{t:?}"
                    )
                }),
        );
        sim.add(
            Host::new(&mut self.client, [addr(CLIENT).ip()])
                .on_event(|_, _, e| events.push(e))
                .on_verdict(|_, v| {
                    if let Input::Data { peer, data, .. } = v {
                        at_client.push((peer, data.to_vec()));
                    }
                }),
        );
        sim.run_until(end);
        self.now = sim.now();
        for d in sim.take_unclaimed() {
            assert_eq!(d.transmit.destination, addr(PEER));
            self.at_peer.push(d.transmit.contents);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.run_until(self.now + by);
    }

    fn peer_sends(&mut self, relayed: SocketAddr, data: &[u8]) {
        self.server.handle_input(
            self.now,
            Received {
                proto: Protocol::Udp,
                source: addr(PEER),
                destination: relayed,
                contents: data,
            },
        );
        self.pump();
    }
}

#[test]
fn long_term_allocation_permission_channel_and_data_both_ways() {
    let mut w = World::new(Credentials::long_term("alice", "wonderland"), |_| {});
    w.pump();
    let AllocationEvent::Allocated {
        relayed,
        mapped,
        lifetime,
    } = w.events[0].clone()
    else {
        panic!("{:?}", w.events)
    };
    assert_eq!(mapped, Some(addr(CLIENT)));
    assert_eq!(lifetime, Duration::from_secs(600));
    // The client asked for an RFC 8016 mobility ticket; this server does not implement
    // mobility and ignores the comprehension-optional attribute (RFC 8489 §14): no
    // ticket, and no 405 either.
    assert!(!w.client.has_mobility_ticket() && !w.client.mobility_refused());
    let relayed = relayed[0];
    // Without a permission nothing reaches the client.
    w.peer_sends(relayed, b"too early");
    assert!(w.at_client.is_empty());
    w.client.create_permission(w.now, addr(PEER).ip()).unwrap();
    w.pump();
    let mut out = [0u8; 128];
    let n = w
        .client
        .encode_to_peer(addr(PEER), b"via send", &mut out)
        .unwrap();
    w.server.handle_input(
        w.now,
        Received {
            proto: Protocol::Udp,
            source: addr(CLIENT),
            destination: addr(LISTEN),
            contents: &out[..n],
        },
    );
    w.pump();
    assert_eq!(w.at_peer, [b"via send".to_vec()]);
    w.peer_sends(relayed, b"data indication");
    assert_eq!(w.at_client, [(addr(PEER), b"data indication".to_vec())]);
    // Channel: both directions as ChannelData.
    w.client.bind_channel(w.now, addr(PEER)).unwrap();
    w.pump();
    let n = w
        .client
        .encode_to_peer(addr(PEER), b"via channel", &mut out)
        .unwrap();
    assert_eq!(out[0] & 0xC0, 0x40);
    w.server.handle_input(
        w.now,
        Received {
            proto: Protocol::Udp,
            source: addr(CLIENT),
            destination: addr(LISTEN),
            contents: &out[..n],
        },
    );
    w.pump();
    assert_eq!(w.at_peer.last().unwrap(), b"via channel");
    w.peer_sends(relayed, b"back on the channel");
    assert_eq!(w.at_client.last().unwrap().1, b"back on the channel");
    // An hour later, everything was refreshed and still works.
    w.advance(Duration::from_secs(3600));
    assert_eq!(w.server.allocations(), 1);
    w.peer_sends(relayed, b"still here");
    assert_eq!(w.at_client.last().unwrap().1, b"still here");
    // Deallocate: the relay is released.
    w.client.deallocate(w.now);
    w.pump();
    assert_eq!(w.server.allocations(), 0);
    assert!(w.events.contains(&AllocationEvent::Deallocated));
}

#[test]
fn rest_credentials_and_stale_nonces() {
    let creds = Credentials::rest("bob", b"north", 1_700_000_000, 3600);
    let mut w = World::new(creds.clone(), |c| {
        c.nonce_lifetime = Duration::from_secs(30)
    });
    // The scheduled refreshes (liveness checks, each a refresh too, would move them).
    w.client = Allocation::new(
        w.now,
        AllocationConfig {
            liveness: None,
            ..AllocationConfig::new(addr(LISTEN), addr(CLIENT), TurnTransport::Udp, creds)
        },
        [6; 32],
    );
    w.pump();
    assert!(matches!(w.events[0], AllocationEvent::Allocated { .. }));
    // Refreshes after the nonce went stale: 438, then success with the new nonce.
    w.advance(Duration::from_secs(1200));
    assert!(
        w.events
            .iter()
            .filter(|e| matches!(e, AllocationEvent::Refreshed { .. }))
            .count()
            >= 2,
        "{:?}",
        w.events
    );
    assert!(
        !w.events
            .iter()
            .any(|e| matches!(e, AllocationEvent::Lost(_)))
    );
    // Expired REST credentials are refused.
    let creds = Credentials::rest("bob", b"north", 1_600_000_000, 60);
    let mut w = World::new(creds, |_| {});
    w.pump();
    assert_eq!(
        w.events,
        [AllocationEvent::Lost(
            crate::turn::TurnError::Unauthenticated
        )]
    );
}

#[test]
fn wrong_password_and_quota() {
    let mut w = World::new(Credentials::long_term("alice", "nope"), |_| {});
    w.pump();
    assert_eq!(
        w.events,
        [AllocationEvent::Lost(
            crate::turn::TurnError::Unauthenticated
        )]
    );
    let mut w = World::new(Credentials::long_term("alice", "wonderland"), |c| {
        c.max_allocations = 0
    });
    w.pump();
    assert_eq!(
        w.events,
        [AllocationEvent::Lost(
            crate::turn::TurnError::AllocationQuotaReached
        )]
    );
}

#[test]
fn allocation_expires_without_refresh() {
    let mut w = World::new(Credentials::long_term("alice", "wonderland"), |c| {
        c.max_lifetime = Duration::from_secs(30)
    });
    w.pump();
    assert!(
        matches!(w.events[0], AllocationEvent::Allocated { lifetime, .. } if lifetime == Duration::from_secs(30))
    );
    // The server alone, with nobody refreshing: gone after 30 s, relay released.
    w.now += Duration::from_secs(31);
    w.server.handle_timeout(w.now);
    assert_eq!(w.server.allocations(), 0);
    assert!(matches!(
        w.server.poll_action(),
        Some(ServerAction::ReleaseRelay(_))
    ));
}

#[test]
fn garbage_never_panics() {
    let mut w = World::new(Credentials::long_term("alice", "wonderland"), |_| {});
    for junk in [
        &b""[..],
        b"\x40\x00\x00\x10",
        b"\x00\x03\x00\x00\x21\x12\xa4\x42aaaaaaaaaaaa",
        &[0xff; 100],
    ] {
        w.server.handle_input(
            w.now,
            Received {
                proto: Protocol::Udp,
                source: addr(CLIENT),
                destination: addr(LISTEN),
                contents: junk,
            },
        );
        w.server.handle_input(
            w.now,
            Received {
                proto: Protocol::Udp,
                source: addr(PEER),
                destination: addr("203.0.113.1:50001"),
                contents: junk,
            },
        );
    }
    // A malformed Allocate got a 401 challenge at most; nothing else happened.
    assert_eq!(w.server.allocations(), 0);
}

// ---------------------------------------------------------------------------
// Safe on a public address (issue: hardening from outside tries)
// ---------------------------------------------------------------------------

/// A second client machine driven against the world's server (its own address), with the
/// server's answers to it delivered and everything else left queued.
struct Other {
    addr: SocketAddr,
    alloc: Allocation,
    events: Vec<AllocationEvent>,
}

impl Other {
    fn new(w: &World, addr_: &str, creds: Credentials) -> Self {
        let a = addr(addr_);
        Self {
            addr: a,
            alloc: Allocation::new(
                w.now,
                AllocationConfig::new(addr(LISTEN), a, TurnTransport::Udp, creds),
                [9; 32],
            ),
            events: vec![],
        }
    }

    fn pump(&mut self, w: &mut World) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some(t) = self.alloc.poll_transmit() {
                moved = true;
                w.server
                    .handle_input(w.now, rx(t.source, t.destination, &t.contents));
            }
            while let Some(a) = w.server.poll_action() {
                moved = true;
                if let ServerAction::BindRelay { client, .. } = a {
                    w.next_relay_port += 1;
                    w.server.relay_bound(
                        client,
                        SocketAddr::new(addr(LISTEN).ip(), w.next_relay_port),
                    );
                }
            }
            let mut rest = Vec::new();
            while let Some(t) = w.server.poll_transmit() {
                if t.destination == self.addr {
                    moved = true;
                    let _ = self
                        .alloc
                        .handle_input(w.now, rx(t.source, t.destination, &t.contents));
                } else {
                    rest.push(t);
                }
            }
            w.server.transmits.extend(rest);
            while let Some(e) = self.alloc.poll_event() {
                moved = true;
                self.events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }
}

fn rx<'a>(source: SocketAddr, destination: SocketAddr, contents: &'a [u8]) -> Received<'a> {
    Received {
        proto: Protocol::Udp,
        source,
        destination,
        contents,
    }
}

/// Hands `bytes` from `from` to the server; returns what it sent back to `from`.
fn exchange(w: &mut World, from: SocketAddr, bytes: &[u8]) -> Vec<Transmit> {
    w.server.handle_input(w.now, rx(from, addr(LISTEN), bytes));
    let mut out = Vec::new();
    let mut rest = Vec::new();
    while let Some(t) = w.server.poll_transmit() {
        if t.destination == from {
            out.push(t);
        } else {
            rest.push(t);
        }
    }
    w.server.transmits.extend(rest);
    out
}

fn error_code(t: &Transmit) -> Option<u16> {
    let m = Message::parse(&t.contents).ok()?;
    m.get::<ErrorCode<'_>>().ok().flatten().map(|e| e.code)
}

fn nonce_of(t: &Transmit) -> String {
    let m = Message::parse(&t.contents).unwrap();
    m.get::<Nonce<'_>>().unwrap().unwrap().0.to_owned()
}

/// A request signed with alice's long-term key: `fill`, then USERNAME, REALM, NONCE,
/// MESSAGE-INTEGRITY and FINGERPRINT.
fn signed(
    method: Method,
    tid: u8,
    password: &str,
    nonce: &str,
    fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), crate::stun::StunError>,
) -> Vec<u8> {
    let key =
        IntegrityKey::long_term("alice", "pinhole.test", password, PasswordAlgorithm::Md5).unwrap();
    let mut buf = vec![0u8; 512];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(Class::Request, method),
        TransactionId([tid; 12]),
    )
    .unwrap();
    fill(&mut b).unwrap();
    b.add(&Username("alice")).unwrap();
    b.add(&Realm("pinhole.test")).unwrap();
    b.add(&Nonce(nonce)).unwrap();
    b.add_message_integrity(&key).unwrap();
    b.add_fingerprint().unwrap();
    let n = b.finish().len();
    buf.truncate(n);
    buf
}

fn plain(method: Method, tid: u8, extra: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::new(Class::Request, method),
        TransactionId([tid; 12]),
    )
    .unwrap();
    for (t, v) in extra {
        b.add_raw(AttributeType(*t), v).unwrap();
    }
    b.add_fingerprint().unwrap();
    let n = b.finish().len();
    buf.truncate(n);
    buf
}

fn allocated(w: &World) -> SocketAddr {
    match &w.events[0] {
        AllocationEvent::Allocated { relayed, .. } => relayed[0],
        e => panic!("{e:?}"),
    }
}

fn alice() -> Credentials {
    Credentials::long_term("alice", "wonderland")
}

#[test]
fn peers_refused_by_default_as_coturn_does() {
    let mut w = World::new(alice(), |_| {});
    w.pump();
    let relayed = allocated(&w);
    let refused = [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "240.0.0.1",
    ];
    for ip in refused {
        w.client
            .create_permission(w.now, ip.parse().unwrap())
            .unwrap();
        w.client
            .bind_channel(w.now, SocketAddr::new(ip.parse().unwrap(), 9))
            .unwrap();
        w.pump();
    }
    let failed_perm: Vec<IpAddr> = w
        .events
        .iter()
        .filter_map(|e| match e {
            AllocationEvent::PermissionFailed(ip, TurnError::Forbidden) => Some(*ip),
            _ => None,
        })
        .collect();
    let failed_chan = w
        .events
        .iter()
        .filter(|e| matches!(e, AllocationEvent::ChannelFailed(_, TurnError::Forbidden)))
        .count();
    assert_eq!(failed_perm.len(), refused.len(), "{:?}", w.events);
    assert_eq!(failed_chan, refused.len(), "{:?}", w.events);
    assert_eq!(w.server.permissions_of(addr(CLIENT)), 0);
    // A Send indication to a refused peer goes nowhere (the world's pump would panic on a
    // datagram to anyone but PEER or the client).
    for ip in refused {
        let mut out = [0u8; 128];
        let mut b = MessageBuilder::new(
            &mut out,
            MessageType::new(Class::Indication, Method::SEND),
            TransactionId([1; 12]),
        )
        .unwrap();
        b.add(&XorPeerAddress(SocketAddr::new(ip.parse().unwrap(), 9)))
            .unwrap();
        b.add(&Data(b"x")).unwrap();
        let n = b.finish().len();
        w.server
            .handle_input(w.now, rx(addr(CLIENT), addr(LISTEN), &out[..n]));
        assert!(w.server.poll_transmit().is_none(), "{ip}");
    }
    // A global peer still works.
    w.client.create_permission(w.now, addr(PEER).ip()).unwrap();
    w.pump();
    assert!(
        w.events
            .contains(&AllocationEvent::PermissionCreated(addr(PEER).ip()))
    );
    w.peer_sends(relayed, b"fine");
    assert_eq!(w.at_client.last().unwrap().1, b"fine");
}

#[test]
fn flags_open_loopback_and_named_ranges_but_never_the_rest() {
    let mut w = World::new(alice(), |c| {
        c.peers = PeerPolicy {
            allow_loopback: true,
            allowed: vec!["10.0.0.0/8".parse().unwrap()],
        };
    });
    w.pump();
    for ip in ["127.0.0.1", "10.9.8.7"] {
        w.client
            .create_permission(w.now, ip.parse().unwrap())
            .unwrap();
    }
    w.pump();
    for ip in ["127.0.0.1", "10.9.8.7"] {
        assert!(
            w.events
                .contains(&AllocationEvent::PermissionCreated(ip.parse().unwrap())),
            "{ip}: {:?}",
            w.events
        );
    }
    for ip in ["192.168.1.1", "0.0.0.0", "255.255.255.255", "224.0.0.1"] {
        w.client
            .create_permission(w.now, ip.parse().unwrap())
            .unwrap();
        w.pump();
        assert!(
            w.events.contains(&AllocationEvent::PermissionFailed(
                ip.parse().unwrap(),
                TurnError::Forbidden
            )),
            "{ip}"
        );
    }
}

#[test]
fn the_server_never_relays_to_or_from_itself() {
    // The listen IP is global, so its IP can be permitted; its own sockets still cannot
    // be channel peers, and datagrams spoofed from them are dropped.
    let mut w = World::new(alice(), |_| {});
    w.pump();
    let relayed = allocated(&w);
    w.client
        .create_permission(w.now, addr(LISTEN).ip())
        .unwrap();
    w.pump();
    for own in [addr(LISTEN), relayed] {
        w.client.bind_channel(w.now, own).unwrap();
        w.pump();
        assert!(
            w.events
                .contains(&AllocationEvent::ChannelFailed(own, TurnError::Forbidden)),
            "{own}: {:?}",
            w.events
        );
    }
    let before = w.at_client.len();
    for spoofed in [addr(LISTEN), relayed] {
        w.server.handle_input(w.now, rx(spoofed, relayed, b"loop"));
        assert!(w.server.poll_transmit().is_none(), "{spoofed}");
        // Nor as a "client" of the listening socket.
        let bind = plain(Method::BINDING, 3, &[]);
        assert!(exchange(&mut w, spoofed, &bind).is_empty());
    }
    assert_eq!(w.at_client.len(), before);
}

#[test]
fn peer_of_another_family_is_443() {
    let mut w = World::new(alice(), |_| {});
    w.pump();
    let v6: SocketAddr = "[2001:db8::7]:9000".parse().unwrap();
    w.client.bind_channel(w.now, v6).unwrap();
    w.client.create_permission(w.now, v6.ip()).unwrap();
    w.pump();
    assert!(w.events.contains(&AllocationEvent::ChannelFailed(
        v6,
        TurnError::PeerAddressFamilyMismatch
    )));
    assert!(w.events.contains(&AllocationEvent::PermissionFailed(
        v6.ip(),
        TurnError::PeerAddressFamilyMismatch
    )));
}

#[test]
fn permissions_and_channels_are_capped_and_timers_do_not_scan() {
    let mut w = World::new(alice(), |c| {
        c.max_permissions = 100;
        c.max_channels = 10;
    });
    w.pump();
    for i in 0..101u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i)); // 198.51.100.x
        w.client.create_permission(w.now, ip).unwrap();
        w.pump();
    }
    assert_eq!(w.server.permissions_of(addr(CLIENT)), 100);
    let over: Vec<_> = w
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                AllocationEvent::PermissionFailed(_, TurnError::InsufficientCapacity)
            )
        })
        .collect();
    assert_eq!(over.len(), 1, "{:?}", w.events);
    // Channels: 10, the 11th is refused (to peers whose IPs are already permitted).
    for i in 0..11u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i));
        w.client
            .bind_channel(w.now, SocketAddr::new(ip, 7))
            .unwrap();
        w.pump();
    }
    let over = w
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                AllocationEvent::ChannelFailed(_, TurnError::InsufficientCapacity)
            )
        })
        .count();
    assert_eq!(over, 1);
    // One timer entry per allocation, permission and channel: refreshing the same ones
    // over and over does not add entries.
    let entries = w.server.timer_entries();
    assert!(entries <= 1 + 100 + 10, "{entries}");
    w.advance(Duration::from_secs(1800));
    assert!(
        w.server.timer_entries() <= entries,
        "{}",
        w.server.timer_entries()
    );
    assert_eq!(w.server.allocations(), 1);
}

#[test]
fn allocating_and_deleting_in_a_loop_keeps_the_timer_heap_bounded() {
    // (Without the unauthenticated brake, which would otherwise stop this loop first.)
    let mut w = World::new(alice(), |c| c.unauthenticated_rate = None);
    w.pump();
    for i in 0..3000u32 {
        let mut o = Other::new(&w, &format!("198.51.100.8:{}", 1000 + i % 50), alice());
        o.pump(&mut w);
        assert!(o.alloc.is_allocated(), "{i}: {:?}", o.events);
        for p in 0..4u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200 + p));
            o.alloc.create_permission(w.now, ip).unwrap();
        }
        o.pump(&mut w);
        o.alloc.deallocate(w.now);
        o.pump(&mut w);
        assert!(o.events.contains(&AllocationEvent::Deallocated));
    }
    assert_eq!(w.server.allocations(), 1);
    // 3000 × 5 entries were stale at some point; compaction keeps a bounded remainder.
    assert!(
        w.server.timer_entries() < 4096,
        "{}",
        w.server.timer_entries()
    );
}

#[test]
fn nonces_the_server_never_issued_are_refused() {
    let mut w = World::new(alice(), |_| {});
    let transport = RequestedTransport::UDP;
    for forged in [
        "0-0123456789abcdef".to_owned(),               // the old format
        "deadbeef".to_owned(),                         // anything
        format!("{:x}.{}", 60, "00".repeat(12)),       // our format, wrong MAC
        format!("{:x}.{}", u64::MAX, "ab".repeat(12)), // dated in the far future
    ] {
        let req = signed(Method::ALLOCATE, 1, "wonderland", &forged, |b| {
            b.add(&transport)?;
            Ok(())
        });
        let out = exchange(&mut w, addr(CLIENT), &req);
        assert_eq!(out.len(), 1, "{forged}");
        assert_eq!(error_code(&out[0]), Some(438), "{forged}");
        assert_eq!(w.server.allocations(), 0);
        assert!(w.server.poll_action().is_none());
    }
    // The nonce from a 438 works.
    let challenge = exchange(&mut w, addr(CLIENT), &plain(Method::ALLOCATE, 2, &[]));
    let nonce = nonce_of(&challenge[0]);
    let req = signed(Method::ALLOCATE, 3, "wonderland", &nonce, |b| {
        b.add(&transport)?;
        Ok(())
    });
    assert!(exchange(&mut w, addr(CLIENT), &req).is_empty()); // answered once bound
    assert!(matches!(
        w.server.poll_action(),
        Some(ServerAction::BindRelay { .. })
    ));
    // A valid nonce goes stale after its lifetime (600 s), and one minted for a
    // future time is never accepted even with a right MAC's length.
    w.now += Duration::from_secs(601);
    w.server.handle_timeout(w.now);
    let refresh = signed(Method::REFRESH, 4, "wonderland", &nonce, |_| Ok(()));
    let out = exchange(&mut w, addr(CLIENT), &refresh);
    assert_eq!(error_code(&out[0]), Some(438));
}

#[test]
fn captured_allocate_replayed_from_another_port_gets_nothing() {
    let mut w = World::new(alice(), |_| {});
    // The client's first Allocate is unauthenticated; capture the second.
    let first = w.client.poll_transmit().unwrap();
    w.server
        .handle_input(w.now, rx(first.source, first.destination, &first.contents));
    let challenge = w.server.poll_transmit().unwrap();
    let _ = w.client.handle_input(
        w.now,
        rx(challenge.source, challenge.destination, &challenge.contents),
    );
    let signed_allocate = w.client.poll_transmit().unwrap();
    // Replayed from another port of the same host, and from another host.
    for thief in ["198.51.100.7:40001", "198.51.100.99:40000"] {
        let out = exchange(&mut w, addr(thief), &signed_allocate.contents);
        assert_eq!(out.len(), 1);
        assert_eq!(error_code(&out[0]), Some(438), "{thief}");
        assert_eq!(w.server.allocations(), 0, "{thief}");
    }
    // The real client still gets its allocation.
    w.server.handle_input(
        w.now,
        rx(
            signed_allocate.source,
            signed_allocate.destination,
            &signed_allocate.contents,
        ),
    );
    w.pump();
    assert!(matches!(w.events[0], AllocationEvent::Allocated { .. }));
}

#[test]
fn replayed_refresh_zero_cannot_delete_a_later_allocation() {
    let mut w = World::new(alice(), |_| {});
    w.pump();
    w.client.deallocate(w.now);
    let dealloc = w.client.poll_transmit().unwrap();
    w.server.handle_input(
        w.now,
        rx(dealloc.source, dealloc.destination, &dealloc.contents),
    );
    w.pump();
    assert_eq!(w.server.allocations(), 0);
    // Later, a new allocation from the same address and port.
    w.now += Duration::from_secs(10);
    let mut again = Other::new(&w, CLIENT, alice());
    again.pump(&mut w);
    assert!(again.alloc.is_allocated(), "{:?}", again.events);
    // The captured Refresh(0) replayed: refused, the allocation stays.
    let out = exchange(&mut w, addr(CLIENT), &dealloc.contents);
    assert_eq!(out.len(), 1);
    assert_eq!(error_code(&out[0]), Some(438));
    assert_eq!(w.server.allocations(), 1);
    // The new allocation keeps working through the 438 its first request meets.
    again
        .alloc
        .create_permission(w.now, addr(PEER).ip())
        .unwrap();
    again.pump(&mut w);
    assert!(
        again
            .events
            .contains(&AllocationEvent::PermissionCreated(addr(PEER).ip())),
        "{:?}",
        again.events
    );
}

#[test]
fn per_user_quota_beside_the_total() {
    let mut w = World::new(alice(), |c| {
        c.max_allocations_per_user = 2;
        c.credentials.users.insert("carol".into(), "secret".into());
    });
    w.pump(); // alice's first
    let mut a2 = Other::new(&w, "198.51.100.7:40001", alice());
    a2.pump(&mut w);
    assert!(a2.alloc.is_allocated());
    let mut a3 = Other::new(&w, "198.51.100.7:40002", alice());
    a3.pump(&mut w);
    assert_eq!(
        a3.events,
        [AllocationEvent::Lost(TurnError::AllocationQuotaReached)]
    );
    // Another user is not starved.
    let mut c1 = Other::new(
        &w,
        "198.51.100.9:40000",
        Credentials::long_term("carol", "secret"),
    );
    c1.pump(&mut w);
    assert!(c1.alloc.is_allocated(), "{:?}", c1.events);
    // REST users count by name whatever the expiry.
    let mut w = World::new(
        Credentials::rest("dave", b"north", 1_700_000_000, 3600),
        |c| c.max_allocations_per_user = 1,
    );
    w.pump();
    assert!(matches!(w.events[0], AllocationEvent::Allocated { .. }));
    let mut d2 = Other::new(
        &w,
        "198.51.100.7:40005",
        Credentials::rest("dave", b"north", 1_700_000_000, 7200),
    );
    d2.pump(&mut w);
    assert_eq!(
        d2.events,
        [AllocationEvent::Lost(TurnError::AllocationQuotaReached)]
    );
}

#[test]
fn wrong_passwords_meet_a_per_source_brake() {
    let mut w = World::new(alice(), |_| {});
    let guesser = addr("198.51.100.66:5000");
    let challenge = exchange(&mut w, guesser, &plain(Method::ALLOCATE, 1, &[]));
    let nonce = nonce_of(&challenge[0]);
    let transport = RequestedTransport::UDP;
    let mut answered = 0;
    for i in 0..200u8 {
        let req = signed(Method::ALLOCATE, i, &format!("guess{i}"), &nonce, |b| {
            b.add(&transport)?;
            Ok(())
        });
        answered += exchange(&mut w, guesser, &req).len();
    }
    // DEFAULT_AUTH_FAILURE_RATE: a burst of 10 tokens, 2 per failure.
    assert_eq!(answered, 5);
    // Another source is not braked.
    let other = addr("198.51.100.67:5000");
    let challenge = exchange(&mut w, other, &plain(Method::ALLOCATE, 1, &[]));
    let nonce2 = nonce_of(&challenge[0]);
    let req = signed(Method::ALLOCATE, 1, "guess", &nonce2, |b| {
        b.add(&transport)?;
        Ok(())
    });
    assert_eq!(error_code(&exchange(&mut w, other, &req)[0]), Some(401));
    // Time refills the bucket: 1 try every 2 s.
    w.now += Duration::from_secs(2);
    let req = signed(Method::ALLOCATE, 250, "guess", &nonce, |b| {
        b.add(&transport)?;
        Ok(())
    });
    assert_eq!(exchange(&mut w, guesser, &req).len(), 1);
    assert!(exchange(&mut w, guesser, &req).is_empty());
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut w = World::new(alice(), |_| {});
    let mut answered = 0;
    for i in 0..1000u16 {
        let from = SocketAddr::new(addr("198.51.100.66:1").ip(), 1000 + i);
        answered += exchange(&mut w, from, &plain(Method::BINDING, 1, &[])).len();
        answered += exchange(&mut w, from, &plain(Method::ALLOCATE, 2, &[])).len();
    }
    assert_eq!(answered, DEFAULT_UNAUTHENTICATED_RATE.burst as usize);
    // Someone else is answered.
    assert_eq!(
        exchange(&mut w, addr(CLIENT), &plain(Method::BINDING, 1, &[])).len(),
        1
    );
}

#[test]
fn lifetimes_below_the_default_get_the_default() {
    // RFC 8656 §7.2, as coturn does.
    for (asked, granted) in [
        (1u64, 600u64),
        (60, 600),
        (600, 600),
        (1800, 1800),
        (7200, 3600),
    ] {
        let now = Instant::now();
        let mut config = TurnServerConfig::new(addr(LISTEN), "pinhole.test", 1_700_000_000);
        config
            .credentials
            .users
            .insert("alice".into(), "wonderland".into());
        let mut ac = AllocationConfig::new(addr(LISTEN), addr(CLIENT), TurnTransport::Udp, alice());
        ac.lifetime = Duration::from_secs(asked);
        let mut w = World {
            now,
            server: TurnServer::new(now, config, [5; 32]),
            client: Allocation::new(now, ac, [6; 32]),
            next_relay_port: 50000,
            at_peer: vec![],
            at_client: vec![],
            events: vec![],
            net: instant_network(),
        };
        w.pump();
        assert!(
            matches!(w.events[0], AllocationEvent::Allocated { lifetime, .. } if lifetime == Duration::from_secs(granted)),
            "{asked}: {:?}",
            w.events
        );
    }
}

#[test]
fn binding_requests_with_unknown_attributes_or_bad_fingerprints() {
    let mut w = World::new(alice(), |_| {});
    let req = plain(Method::BINDING, 1, &[(0x7fff, b"abcd")]);
    let out = exchange(&mut w, addr(CLIENT), &req);
    assert_eq!(out.len(), 1);
    assert_eq!(error_code(&out[0]), Some(420));
    let m = Message::parse(&out[0].contents).unwrap();
    let unknown: Vec<_> = m
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .types()
        .collect();
    assert_eq!(unknown, [AttributeType(0x7fff)]);
    // A bad FINGERPRINT: dropped.
    let mut bad = plain(Method::BINDING, 2, &[]);
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(exchange(&mut w, addr(CLIENT), &bad).is_empty());
    // A good one is answered.
    assert_eq!(
        exchange(&mut w, addr(CLIENT), &plain(Method::BINDING, 3, &[])).len(),
        1
    );
}

#[test]
fn relays_are_bound_on_a_concrete_address_and_advertised_as_configured() {
    // A wildcard listener asks the driver for the IP toward the client.
    let now = Instant::now();
    let wildcard: SocketAddr = "0.0.0.0:3478".parse().unwrap();
    let mut config = TurnServerConfig::new(wildcard, "pinhole.test", 1_700_000_000);
    config
        .credentials
        .users
        .insert("alice".into(), "wonderland".into());
    let mut s = TurnServer::new(now, config.clone(), [1; 32]);
    let mut c = Allocation::new(
        now,
        AllocationConfig::new(wildcard, addr(CLIENT), TurnTransport::Udp, alice()),
        [2; 32],
    );
    for _ in 0..4 {
        while let Some(t) = c.poll_transmit() {
            s.handle_input(now, rx(t.source, t.destination, &t.contents));
        }
        while let Some(t) = s.poll_transmit() {
            let _ = c.handle_input(now, rx(t.source, t.destination, &t.contents));
        }
    }
    assert_eq!(
        s.poll_action(),
        Some(ServerAction::BindRelay {
            client: addr(CLIENT),
            ip: None
        })
    );
    // --relay-ip and --external-ip.
    config.relay_ip = Some("10.0.0.5".parse().unwrap());
    config.external_ip = Some("203.0.113.99".parse().unwrap());
    let mut s = TurnServer::new(now, config, [1; 32]);
    let mut c = Allocation::new(
        now,
        AllocationConfig::new(wildcard, addr(CLIENT), TurnTransport::Udp, alice()),
        [2; 32],
    );
    let mut events = vec![];
    for _ in 0..4 {
        while let Some(t) = c.poll_transmit() {
            s.handle_input(now, rx(t.source, t.destination, &t.contents));
        }
        while let Some(a) = s.poll_action() {
            assert_eq!(
                a,
                ServerAction::BindRelay {
                    client: addr(CLIENT),
                    ip: Some("10.0.0.5".parse().unwrap())
                }
            );
            s.relay_bound(addr(CLIENT), addr("10.0.0.5:50001"));
        }
        while let Some(t) = s.poll_transmit() {
            let _ = c.handle_input(now, rx(t.source, t.destination, &t.contents));
        }
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
    }
    assert!(
        matches!(&events[0], AllocationEvent::Allocated { relayed, .. } if relayed == &[addr("203.0.113.99:50001")]),
        "{events:?}"
    );
}

#[test]
fn a_refresh_that_shortens_the_lifetime_is_enforced() {
    // Allocate for an hour, then a Refresh without LIFETIME (the default, 600 s): the
    // allocation must end at 600 s, not at the hour its first timer was set for.
    let now = Instant::now();
    let mut config = TurnServerConfig::new(addr(LISTEN), "pinhole.test", 1_700_000_000);
    config
        .credentials
        .users
        .insert("alice".into(), "wonderland".into());
    let mut ac = AllocationConfig::new(addr(LISTEN), addr(CLIENT), TurnTransport::Udp, alice());
    ac.lifetime = Duration::from_secs(3600);
    let mut w = World {
        now,
        server: TurnServer::new(now, config, [5; 32]),
        client: Allocation::new(now, ac, [6; 32]),
        next_relay_port: 50000,
        at_peer: vec![],
        at_client: vec![],
        events: vec![],
        net: instant_network(),
    };
    w.pump();
    assert!(
        matches!(w.events[0], AllocationEvent::Allocated { lifetime, .. } if lifetime == Duration::from_secs(3600))
    );
    // The challenge for a nonce of the allocation's epoch, then a signed Refresh.
    let challenge = exchange(&mut w, addr(CLIENT), &plain(Method::REFRESH, 1, &[]));
    let nonce = nonce_of(&challenge[0]);
    let refresh = signed(Method::REFRESH, 2, "wonderland", &nonce, |_| Ok(()));
    let out = exchange(&mut w, addr(CLIENT), &refresh);
    assert_eq!(error_code(&out[0]), None, "refresh answered with success");
    w.now += Duration::from_secs(601);
    w.server.handle_timeout(w.now);
    assert_eq!(w.server.allocations(), 0);
}

/// The dev server restarts under a live allocation (a new instance on the same address:
/// a new nonce key, no allocations): the client's next liveness check gets 438, then 437,
/// and the allocation is lost within the check interval, not at the refresh minutes later.
#[test]
fn a_server_restart_is_noticed_by_the_next_liveness_check() {
    let mut w = World::new(Credentials::long_term("alice", "wonderland"), |_| {});
    w.pump();
    assert!(matches!(w.events[0], AllocationEvent::Allocated { .. }));
    w.advance(Duration::from_secs(12));
    assert_eq!(
        w.events.len(),
        1,
        "checks report nothing while alive: {:?}",
        w.events
    );
    assert_eq!(w.server.allocations(), 1);
    let mut config = TurnServerConfig::new(addr(LISTEN), "pinhole.test", 1_700_000_000);
    config
        .credentials
        .users
        .insert("alice".into(), "wonderland".into());
    w.server = TurnServer::new(w.now, config, [7; 32]);
    let restarted = w.now;
    w.advance(crate::turn::LIVENESS_INTERVAL + Duration::from_secs(1));
    assert_eq!(
        w.events.last(),
        Some(&AllocationEvent::Lost(
            crate::turn::TurnError::AllocationMismatch
        )),
        "{:?}",
        w.events
    );
    assert!(w.client.is_done());
    assert!(w.now - restarted <= crate::turn::LIVENESS_INTERVAL + Duration::from_secs(1));
}
