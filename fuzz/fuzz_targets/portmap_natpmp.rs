//! The NAT-PMP parsers (RFC 6886), and the mapper fed the same bytes as if the gateway
//! sent them. Properties: no panic; what parses re-emits and parses to the same value.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pinhole::portmap::{MapProtocol, Mapper, MapperConfig, Via, ViaChoice, natpmp};
use pinhole::{Protocol, Received};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = natpmp::Response::parse(data) {
        let mut out = [0u8; 16];
        let n = r.emit(&mut out);
        assert_eq!(natpmp::Response::parse(&out[..n]).expect("re-parses"), r);
    }
    if let Ok(r) = natpmp::Request::parse(data) {
        let mut out = [0u8; 12];
        let n = r.emit(&mut out);
        assert_eq!(natpmp::Request::parse(&out[..n]).expect("re-parses"), r);
    }
    let gw: SocketAddr = "192.168.1.1:5351".parse().unwrap();
    let local: SocketAddr = "192.168.1.20:4000".parse().unwrap();
    let now = Instant::now();
    let mut config = MapperConfig::new(gw.ip(), local.ip(), MapProtocol::Tcp, 5000);
    config.via = ViaChoice::Only(Via::NatPmp);
    let mut m = Mapper::new(now, config, local, [0; 32]);
    let rx = Received { proto: Protocol::Udp, source: gw, destination: local, contents: data };
    assert!(m.handle_input(now, rx));
    while m.poll_event().is_some() {}
});
