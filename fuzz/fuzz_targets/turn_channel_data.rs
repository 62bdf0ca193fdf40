//! The ChannelData parser (RFC 8656 §12.4), and an allocation fed the bytes as if its
//! server sent them. Properties: no panic; what parses re-emits to a message that parses to
//! the same channel and data.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pinhole::turn::{Allocation, AllocationConfig, ChannelData, Credentials, TurnTransport};
use pinhole::{Protocol, Received};

fuzz_target!(|data: &[u8]| {
    if let Ok(cd) = ChannelData::parse(data) {
        let mut out = vec![0u8; data.len() + 4];
        for pad in [false, true] {
            let n = ChannelData::emit(cd.channel, cd.data, pad, &mut out).expect("emits");
            let again = ChannelData::parse(&out[..n]).expect("re-parses");
            assert_eq!(again, cd);
        }
    }
    let server: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let local: SocketAddr = "10.0.0.2:5000".parse().unwrap();
    let now = Instant::now();
    let config = AllocationConfig::new(server, local, TurnTransport::Udp, Credentials::long_term("u", "p"));
    let mut a = Allocation::new(now, config, [0; 32]);
    let rx = Received { proto: Protocol::Udp, source: server, destination: local, contents: data };
    let _ = a.handle_input(now, rx);
    while a.poll_event().is_some() {}
});
