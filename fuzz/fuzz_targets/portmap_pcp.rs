//! The PCP parsers (RFC 6887), and the mapper and probe fed the same bytes as if the
//! gateway sent them (an answer, and an announcement to port 5350), and as if they came to
//! the mapped socket during a verification; the PEER machine ([`PcpPeer`]) fed them as
//! the answer to its request, to its renewal and to its deletion. Properties: no panic; what parses re-emits and
//! parses to the same value.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pinhole::portmap::{
    ANNOUNCE_PORT, MapProtocol, Mapper, MapperConfig, PcpPeer, PcpPeerConfig, Probe, VerifyConfig,
    pcp,
};
use pinhole::{Protocol, Received};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pcp::Response::parse(data) {
        let mut out = [0u8; 128];
        let n = r.emit(&mut out).expect("a parsed response emits");
        assert_eq!(pcp::Response::parse(&out[..n]).expect("re-parses"), r);
    }
    if let Ok(r) = pcp::Request::parse(data) {
        let mut out = [0u8; 128];
        let n = r.emit(&mut out).expect("a parsed request emits");
        assert_eq!(pcp::Request::parse(&out[..n]).expect("re-parses"), r);
    }
    let gw: SocketAddr = "192.168.1.1:5351".parse().unwrap();
    let local: SocketAddr = "192.168.1.20:4000".parse().unwrap();
    let now = Instant::now();
    let mut config = MapperConfig::new(gw.ip(), local.ip(), MapProtocol::Udp, 5000);
    config.verify = Some(VerifyConfig::new("198.51.100.9:3478".parse().unwrap()));
    let mut m = Mapper::new(now, config, local, [0; 32]);
    let rx = Received { proto: Protocol::Udp, source: gw, destination: local, contents: data };
    assert!(m.handle_input(now, rx));
    while m.poll_event().is_some() {}
    m.handle_timeout(now);
    let announce = SocketAddr::new([224, 0, 0, 1].into(), ANNOUNCE_PORT);
    assert!(m.handle_input(now, Received { destination: announce, ..rx }));
    let mapped: SocketAddr = "192.168.1.20:5000".parse().unwrap();
    let reflector: SocketAddr = "198.51.100.9:3478".parse().unwrap();
    m.handle_input(now, Received { source: reflector, destination: mapped, ..rx });
    while m.poll_event().is_some() {}
    while m.poll_transmit().is_some() {}
    m.handle_timeout(now);
    let mut p = Probe::new(now, gw.ip(), local, false);
    p.handle_input(now, rx);
    // PEER: the seed is fixed, so the nonce is too (the fuzzer can find it).
    let mut p = PcpPeer::new(PcpPeerConfig::new(gw.ip(), local.ip(), 5000), local, [0; 32]);
    p.add_remote(now, "198.51.100.9:3478".parse().unwrap());
    while p.poll_transmit().is_some() {}
    p.handle_input(now, rx);
    while p.poll_event().is_some() {}
    let later = now + Duration::from_secs(7200);
    p.handle_timeout(later);
    p.handle_input(later, rx);
    p.release(later);
    p.handle_input(later, rx);
    while p.poll_event().is_some() {}
    while p.poll_transmit().is_some() {}
    let _ = p.poll_timeout();
});
