//! The STUN server (Binding, RFC 5780 and RFC 3489's cookie-less requests) fed arbitrary
//! datagrams on each of its four addresses. Properties: no panic; at most one answer per
//! datagram, to its source (or RESPONSE-PORT's port on its IP), from one of the server's
//! own addresses; an answer with the cookie parses as STUN.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pinhole::stun::{MAGIC_COOKIE, Message, ServerConfig, StunServer};
use pinhole::{Protocol, Received};

fuzz_target!(|data: &[u8]| {
    let p: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let a: SocketAddr = "203.0.113.2:3479".parse().unwrap();
    let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let mut s = StunServer::new(ServerConfig::rfc5780(p, a)).unwrap();
    let own = s.local_addresses();
    let at = own[usize::from(data.first().copied().unwrap_or(0)) % own.len()];
    s.handle_input(
        Instant::now(),
        Received { proto: Protocol::Udp, source: client, destination: at, contents: data },
    );
    if let Some(t) = s.poll_transmit() {
        assert!(own.contains(&t.source), "{t:?}");
        assert_eq!(t.destination.ip(), client.ip());
        if t.contents.len() >= 8 && t.contents[4..8] == MAGIC_COOKIE.to_be_bytes() {
            Message::parse(&t.contents).expect("an answer parses");
        }
    }
    assert!(s.poll_transmit().is_none(), "one answer per datagram");
});
