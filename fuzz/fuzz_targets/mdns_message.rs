//! The mDNS message parser (RFC 6762 responses and queries) and the resolver and
//! responder fed arbitrary datagrams. Properties: no panic; what parses stays within the
//! bounds; the resolver never resolves a name it was not asked for, nor reports more
//! than its bound of addresses.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pinhole::mdns::{
    MAX_ADDRESSES, MAX_RECORDS, MdnsConfig, MdnsEvent, MdnsResolver, MdnsResponder, parse,
};
use pinhole::{Protocol, Received};

const NAME: &str = "4ac7ab5e-92a1-4f0b-9a2d-6f7c0e4b8a11.local";

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = parse(data) {
        assert!(m.questions.len() + m.addresses.len() <= MAX_RECORDS);
        for n in m
            .questions
            .iter()
            .filter_map(|q| q.name.as_ref())
            .chain(m.addresses.iter().filter_map(|a| a.name.as_ref()))
        {
            assert!(n.len() <= 255);
        }
    }
    let now = Instant::now();
    let rx = Received {
        proto: Protocol::Udp,
        source: SocketAddr::from(([192, 0, 2, 7], 5353)),
        destination: SocketAddr::from(([0, 0, 0, 0], 40000)),
        contents: data,
    };
    let mut r = MdnsResolver::new(MdnsConfig::default());
    r.resolve(now, NAME).expect("a good name");
    while r.poll_transmit().is_some() {}
    r.handle_input(now, rx);
    while let Some(e) = r.poll_event() {
        match e {
            MdnsEvent::Resolved { name, addrs } => {
                assert_eq!(name, NAME);
                assert!(!addrs.is_empty() && addrs.len() <= MAX_ADDRESSES);
            }
            MdnsEvent::Unresolved { .. } => panic!("no timeout passed"),
        }
    }
    let mut resp = MdnsResponder::new();
    resp.publish(NAME, &[[192, 0, 2, 7].into()]).expect("a good name");
    resp.handle_input(now, rx);
    while let Some(t) = resp.poll_transmit() {
        parse(&t.contents).expect("an answer parses");
    }
});
