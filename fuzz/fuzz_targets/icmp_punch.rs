//! ICMP hole punching's codecs (`pinhole::holepunch::icmp`): the raw IPv4 packet split,
//! Time Exceeded with its embedded IPv4 + echo headers, echoes, the advert and the UDP
//! frames; and both machines fed the bytes as a raw ICMP packet and as a UDP datagram.
//! Properties: no panic; what parses re-emits and parses to the same value; a Time
//! Exceeded that the server machine accepts names its echo.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pinhole::holepunch::icmp::{
    Advert, DEFAULT_ECHO_ID, DEFAULT_TARGET, Echo, IcmpInput, IcmpPunch, IcmpPunchConfig,
    IcmpPunchEvent, Role, TimeExceeded, UdpFrame, split_ipv4,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Echo::parse(data) {
        let b = e.emit();
        assert_eq!(Echo::parse(&b).expect("re-parses"), e);
    }
    if let Ok(a) = Advert::parse(data) {
        assert_eq!(Advert::parse(&a.emit()).expect("re-parses"), a);
    }
    if let Ok(f) = UdpFrame::parse(data) {
        let b = f.emit();
        assert_eq!(UdpFrame::parse(&b).expect("re-parses"), f);
    }
    let _ = TimeExceeded::parse(data);
    let accepted_te = split_ipv4(data)
        .ok()
        .and_then(|(_, icmp)| TimeExceeded::parse(icmp).ok());

    let now = Instant::now();
    let mut server = IcmpPunch::new(now, Role::Server, IcmpPunchConfig::default(), [1; 32]);
    server.handle_timeout(now);
    if server.handle_input(now, IcmpInput::Icmp(data)) {
        let te = accepted_te.expect("accepted packets parse");
        assert_eq!(te.inner.destination, DEFAULT_TARGET);
        assert_eq!(te.echo.map(|(id, _)| id), Some(DEFAULT_ECHO_ID));
        assert!(matches!(
            server.poll_event(),
            Some(IcmpPunchEvent::ClientLearned { .. })
        ));
    }
    let source = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 9), 4000));
    let _ = server.handle_input(now, IcmpInput::Udp { source, contents: data });
    let mut client = IcmpPunch::new(
        now,
        Role::Client {
            server: SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 2222),
            public: None,
            local_port: 5000,
        },
        IcmpPunchConfig::default(),
        [2; 32],
    );
    let _ = client.handle_input(now, IcmpInput::Icmp(data));
    let _ = client.handle_input(now, IcmpInput::Udp { source, contents: data });
    for m in [&mut server, &mut client] {
        m.handle_timeout(now + Duration::from_secs(1));
        while m.poll_transmit().is_some() {}
        while m.poll_event().is_some() {}
        let _ = m.poll_timeout();
    }
});
