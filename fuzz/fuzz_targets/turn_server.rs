//! The development TURN server fed arbitrary datagrams, after a real client has allocated
//! (so that input reaches the authenticated paths), and the `--allow-peer` CIDR parser.
//! Properties: no panic; whatever the server sends to a client parses as STUN or
//! ChannelData; it never sends to an address its policy refuses; its timer heap stays
//! bounded by what is alive.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pinhole::stun::Message;
use pinhole::turn::{
    Allocation, AllocationConfig, ChannelData, Cidr, Credentials, PeerPolicy, ServerAction,
    TurnServer, TurnServerConfig, TurnTransport,
};
use pinhole::{Protocol, Received};

const LISTEN: &str = "203.0.113.1:3478";
const CLIENT: &str = "198.51.100.7:40000";

fn rx<'a>(source: SocketAddr, destination: SocketAddr, contents: &'a [u8]) -> Received<'a> {
    Received { proto: Protocol::Udp, source, destination, contents }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = s.parse::<Cidr>() {
            let again: Cidr = c.to_string().parse().expect("a CIDR prints as it parses");
            assert_eq!(again, c);
        }
    }
    let listen: SocketAddr = LISTEN.parse().unwrap();
    let client: SocketAddr = CLIENT.parse().unwrap();
    let mut now = Instant::now();
    let mut config = TurnServerConfig::new(listen, "fuzz", 1_700_000_000);
    config.credentials.users.insert("u".into(), "p".into());
    config.max_permissions = 8;
    config.max_channels = 8;
    let policy = PeerPolicy::default();
    let mut server = TurnServer::new(now, config, [1; 32]);
    let mut alloc = Allocation::new(
        now,
        AllocationConfig::new(listen, client, TurnTransport::Udp, Credentials::long_term("u", "p")),
        [2; 32],
    );
    let mut relay = None;
    let check = |server: &mut TurnServer, relay: &mut Option<SocketAddr>| {
        while let Some(a) = server.poll_action() {
            if let ServerAction::BindRelay { client, .. } = a {
                let r: SocketAddr = "203.0.113.1:50000".parse().unwrap();
                server.relay_bound(client, r);
                *relay = Some(r);
            }
        }
        let mut out = Vec::new();
        while let Some(t) = server.poll_transmit() {
            if t.source == listen {
                let ok = Message::parse(&t.contents).is_ok() || ChannelData::parse(&t.contents).is_ok();
                assert!(ok, "the server sent a client something unparseable");
            } else {
                assert!(policy.check(t.destination.ip()).is_ok(), "relayed to {}", t.destination);
            }
            out.push(t);
        }
        out
    };
    // A real allocation first.
    for _ in 0..8 {
        while let Some(t) = alloc.poll_transmit() {
            server.handle_input(now, rx(t.source, t.destination, &t.contents));
        }
        for t in check(&mut server, &mut relay) {
            if t.destination == client {
                let _ = alloc.handle_input(now, rx(t.source, t.destination, &t.contents));
            }
        }
    }
    // Then the fuzzer's datagrams: [selector, len, bytes…]…
    let mut rest = data;
    while rest.len() >= 2 {
        let (sel, len) = (rest[0], usize::from(rest[1]));
        let body = &rest[2..];
        let n = len.min(body.len());
        let (chunk, tail) = body.split_at(n);
        rest = tail;
        let r = relay.unwrap_or("203.0.113.1:50000".parse().unwrap());
        let (src, dst) = match sel % 5 {
            0 => (client, listen),
            1 => ("192.0.2.50:9000".parse().unwrap(), r),
            2 => (listen, r),
            3 => ("198.51.100.99:1234".parse().unwrap(), listen),
            _ => {
                now += Duration::from_secs(u64::from(sel));
                server.handle_timeout(now);
                (client, listen)
            }
        };
        server.handle_input(now, rx(src, dst, chunk));
        let _ = check(&mut server, &mut relay);
        assert!(server.timer_entries() <= 1 + 8 + 8 + 1024 + 64);
    }
});
