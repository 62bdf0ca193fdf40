//! The client machine against the server machine, wired back to back on a virtual clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::turn::{
    Allocation, AllocationConfig, AllocationEvent, Credentials, Input, TurnTransport,
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const LISTEN: &str = "203.0.113.1:3478";
const CLIENT: &str = "198.51.100.7:40000";
const PEER: &str = "192.0.2.50:9000";

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
        }
    }

    /// Moves everything until quiet, instantly.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit() {
                moved = true;
                self.server.handle_input(
                    self.now,
                    Received {
                        proto: Protocol::Udp,
                        source: t.source,
                        destination: t.destination,
                        contents: &t.contents,
                    },
                );
            }
            while let Some(a) = self.server.poll_action() {
                moved = true;
                if let ServerAction::BindRelay { client } = a {
                    self.next_relay_port += 1;
                    self.server.relay_bound(
                        client,
                        SocketAddr::new(addr(LISTEN).ip(), self.next_relay_port),
                    );
                }
            }
            while let Some(t) = self.server.poll_transmit() {
                moved = true;
                if t.destination == addr(CLIENT) {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: t.source,
                        destination: t.destination,
                        contents: &t.contents,
                    };
                    if let Input::Data { peer, data } = self.client.handle_input(self.now, rx) {
                        self.at_client.push((peer, data.to_vec()));
                    }
                } else {
                    assert_eq!(t.destination, addr(PEER));
                    self.at_peer.push(t.contents);
                }
            }
            while let Some(e) = self.client.poll_event() {
                moved = true;
                self.events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        for _ in 0..10_000 {
            self.pump();
            let next = [
                self.client.poll_timeout(),
                self.server.poll_timeout(),
                Some(end),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
            if next >= end {
                self.now = end;
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
                self.pump();
                return;
            }
            self.now = next.max(self.now);
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
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
    let mut w = World::new(creds, |c| c.nonce_lifetime = Duration::from_secs(30));
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
