//! The STUN message parser, and everything that consumes raw datagrams: integrity,
//! fingerprint, the server and the client. Properties: no panic; whatever the server
//! sends parses; a message that parses can be rebuilt attribute by attribute and then
//! parses strictly to the same attributes.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pinhole::stun::{
    ClientConfig, IntegrityKey, Message, MessageBuilder, Request, ServerConfig, StunClient,
    StunServer,
};
use pinhole::{Protocol, Received};

fuzz_target!(|data: &[u8]| {
    let p: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let a: SocketAddr = "127.0.0.2:3479".parse().unwrap();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();

    // The server never panics and only ever sends parseable messages.
    let mut server = StunServer::new(ServerConfig::rfc5780(p, a)).unwrap();
    let rx = Received { proto: Protocol::Udp, source: client, destination: p, contents: data };
    server.handle_input(Instant::now(), rx);
    while let Some(t) = server.poll_transmit() {
        Message::parse(&t.contents).expect("server output parses");
    }

    // The client ignores or consumes it without panicking.
    let mut c = StunClient::new(ClientConfig::default(), [0; 32]);
    let now = Instant::now();
    let _ = c.start(now, Request::binding(client, p), |_| Ok(()));
    let rx = Received { proto: Protocol::Udp, source: p, destination: client, contents: data };
    let _ = c.handle_input(now, rx);

    let strict = Message::parse_strict(data);
    let Ok(msg) = Message::parse(data) else {
        assert!(strict.is_err());
        return;
    };
    let _ = (msg.class(), msg.method(), msg.transaction_id());
    let _ = msg.verify_fingerprint();
    let key = IntegrityKey::short_term("VOkJxbRl1RmTxUk/WvJxBt").unwrap();
    let _ = msg.verify_integrity(&key);
    let _ = msg.unknown_comprehension_required().count();

    // Rebuild: same type, ID and attribute list, zero padding.
    let mut buf = vec![0u8; data.len()];
    let mut b = MessageBuilder::new(&mut buf, msg.message_type(), msg.transaction_id()).unwrap();
    for attr in msg.attributes() {
        b.add_raw(attr.kind, attr.value).unwrap();
    }
    let rebuilt = b.finish();
    assert_eq!(rebuilt.len(), data.len());
    let again = Message::parse_strict(rebuilt).expect("a rebuilt message parses strictly");
    assert!(again
        .attributes()
        .map(|x| (x.kind, x.value))
        .eq(msg.attributes().map(|x| (x.kind, x.value))));
});
