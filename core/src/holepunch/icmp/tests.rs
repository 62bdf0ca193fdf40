use super::*;

fn t0() -> Instant {
    Instant::now()
}

const SERVER_PRIV: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const SERVER_PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT_PRIV: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 10);
const CLIENT_PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);

/// Wraps an ICMP message in the IPv4 header a raw socket delivers.
fn ip_packet(source: Ipv4Addr, destination: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
    let mut p = Ipv4Header {
        source,
        destination,
        protocol: IPPROTO_ICMP,
        ttl: 60,
        identification: 7,
        total_length: u16::try_from(IPV4_HEADER_LEN + icmp.len()).unwrap(),
    }
    .emit()
    .to_vec();
    p.extend_from_slice(icmp);
    p
}

/// What the server's NAT does to the client's Time Exceeded on the way in (RFC 5508 §4,
/// Linux `nf_nat_icmp_reply_translation`): the embedded source goes back to the server's
/// private address, both checksums are fixed.
fn nat_translate_inbound(te: &[u8], private: Ipv4Addr) -> Vec<u8> {
    let mut m = te.to_vec();
    let inner = ICMP_HEADER_LEN;
    m[inner + 12..inner + 16].copy_from_slice(&private.octets());
    m[inner + 10..inner + 12].fill(0);
    let c = checksum(&m[inner..inner + IPV4_HEADER_LEN]);
    m[inner + 10..inner + 12].copy_from_slice(&c.to_be_bytes());
    m[2..4].fill(0);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

#[test]
fn checksum_matches_rfc_1071_example() {
    // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2 (complement 220d).
    assert_eq!(
        checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        !0xddf2
    );
    // An odd length pads with zero.
    assert_eq!(checksum(&[0xff]), !0xff00);
    // A message with its checksum in place sums to zero.
    let e = Echo {
        request: true,
        id: 1,
        seq: 2,
        data: b"abc",
    }
    .emit();
    assert_eq!(checksum(&e), 0);
}

#[test]
fn echo_round_trips_and_rejects_a_bad_checksum() {
    let e = Echo {
        request: true,
        id: DEFAULT_ECHO_ID,
        seq: 9,
        data: b"hi",
    };
    let b = e.emit();
    assert_eq!(b[0], ICMP_ECHO_REQUEST);
    assert_eq!(Echo::parse(&b).unwrap(), e);
    let mut bad = b.clone();
    bad[9] ^= 1;
    assert_eq!(Echo::parse(&bad), Err(IcmpError::Checksum));
    assert_eq!(
        Echo::parse(&b[..7]),
        Err(IcmpError::Truncated("ICMP header"))
    );
}

#[test]
fn ipv4_header_round_trips_with_a_valid_checksum() {
    let h = Ipv4Header {
        source: SERVER_PUB,
        destination: DEFAULT_TARGET,
        protocol: IPPROTO_ICMP,
        ttl: 1,
        identification: 3,
        total_length: 50,
    };
    let b = h.emit();
    assert_eq!(checksum(&b), 0);
    assert_eq!(Ipv4Header::parse(&b).unwrap(), (h, IPV4_HEADER_LEN));
    let mut v6 = b;
    v6[0] = 0x65;
    assert!(Ipv4Header::parse(&v6).is_err());
    let mut short_ihl = b;
    short_ihl[0] = 0x44;
    assert!(Ipv4Header::parse(&short_ihl).is_err());
}

#[test]
fn forged_time_exceeded_embeds_the_servers_echo_as_its_nat_sent_it() {
    let advert = Advert {
        token: [1, 2, 3, 4, 5, 6, 7, 8],
        public: Some(SocketAddrV4::new(CLIENT_PUB, 40000)),
        local_port: 5000,
    };
    let m = forge_time_exceeded(SERVER_PUB, DEFAULT_TARGET, DEFAULT_ECHO_ID, 1, &advert);
    assert_eq!(checksum(&m), 0, "outer ICMP checksum");
    assert_eq!(&m[..2], &[ICMP_TIME_EXCEEDED, 0]);
    let inner = &m[ICMP_HEADER_LEN..ICMP_HEADER_LEN + IPV4_HEADER_LEN];
    assert_eq!(checksum(inner), 0, "embedded IPv4 header checksum");
    let echo = &m[ICMP_HEADER_LEN + IPV4_HEADER_LEN..];
    assert_eq!(checksum(echo), 0, "embedded echo checksum");
    let te = TimeExceeded::parse(&m).unwrap();
    assert_eq!(te.code, 0);
    assert_eq!(te.inner.source, SERVER_PUB);
    assert_eq!(te.inner.destination, DEFAULT_TARGET);
    assert_eq!(te.inner.protocol, IPPROTO_ICMP);
    assert_eq!(te.inner.ttl, 1);
    assert_eq!(usize::from(te.inner.total_length), inner.len() + echo.len());
    assert_eq!(te.echo, Some((DEFAULT_ECHO_ID, 1)));
    assert_eq!(Advert::parse(te.echo_data).unwrap(), advert);
    // What conntrack matches on (the embedded echo as the server's NAT sent it) equals
    // what the server's echo looks like after that NAT: same id, source and target.
    let real_bytes = Echo {
        request: true,
        id: DEFAULT_ECHO_ID,
        seq: 5,
        data: &[],
    }
    .emit();
    let real = Echo::parse(&real_bytes).unwrap();
    assert_eq!(te.echo.map(|(id, _)| id), Some(real.id));
}

#[test]
fn advert_and_frames_round_trip() {
    let a = Advert {
        token: [9; 8],
        public: None,
        local_port: 7,
    };
    assert_eq!(Advert::parse(&a.emit()).unwrap(), a);
    assert!(Advert::parse(&a.emit()[..Advert::LEN - 1]).is_err());
    let mut bad = a.emit();
    bad[0] = b'X';
    assert!(Advert::parse(&bad).is_err());
    for kind in [
        FrameKind::Hello { heard: false },
        FrameKind::Hello { heard: true },
    ] {
        let f = UdpFrame {
            kind,
            token: [3; 8],
            data: &[],
        };
        assert_eq!(UdpFrame::parse(&f.emit()).unwrap(), f);
    }
    let f = UdpFrame {
        kind: FrameKind::Data,
        token: [3; 8],
        data: b"line\n",
    };
    assert_eq!(UdpFrame::parse(&f.emit()).unwrap(), f);
    let mut hello_with_data = UdpFrame {
        kind: FrameKind::Hello { heard: false },
        token: [3; 8],
        data: &[],
    }
    .emit();
    hello_with_data.push(1);
    assert!(UdpFrame::parse(&hello_with_data).is_err());
}

#[test]
fn a_raw_packet_is_split_at_its_header_length() {
    let e = Echo {
        request: false,
        id: 1,
        seq: 1,
        data: b"x",
    }
    .emit();
    let p = ip_packet(CLIENT_PUB, SERVER_PRIV, &e);
    let (h, icmp) = split_ipv4(&p).unwrap();
    assert_eq!(h.source, CLIENT_PUB);
    assert_eq!(icmp, &e[..]);
    let mut udp = p.clone();
    udp[9] = 17;
    assert!(split_ipv4(&udp).is_err());
}

fn client(now: Instant, public: Option<SocketAddrV4>) -> IcmpPunch {
    IcmpPunch::new(
        now,
        Role::Client {
            server: SocketAddrV4::new(SERVER_PUB, DEFAULT_PORT),
            public,
            local_port: 5000,
        },
        IcmpPunchConfig::default(),
        [7; 32],
    )
}

fn drain(m: &mut IcmpPunch) -> Vec<IcmpTransmit> {
    std::iter::from_fn(|| m.poll_transmit()).collect()
}

fn events(m: &mut IcmpPunch) -> Vec<IcmpPunchEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[test]
fn server_echoes_the_target_until_connected() {
    let now = t0();
    let mut s = IcmpPunch::new(now, Role::Server, IcmpPunchConfig::default(), [0; 32]);
    assert_eq!(s.poll_timeout(), Some(now));
    s.handle_timeout(now);
    let tx = drain(&mut s);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].channel, Channel::Icmp);
    assert_eq!(
        tx[0].destination,
        SocketAddr::V4(SocketAddrV4::new(DEFAULT_TARGET, 0))
    );
    let e = Echo::parse(&tx[0].contents).unwrap();
    assert!(e.request);
    assert_eq!(e.id, DEFAULT_ECHO_ID);
    assert_eq!(s.poll_timeout(), Some(now + ECHO_INTERVAL));
    s.handle_timeout(now + ECHO_INTERVAL);
    assert_eq!(drain(&mut s).len(), 1);
}

/// Both machines through two port-preserving NATs, the server's NAT translating the
/// client's Time Exceeded back as Linux does: the server learns the advertised address,
/// both connect, and data flows both ways.
#[test]
fn server_and_client_meet_and_exchange_data() {
    let now = t0();
    let client_pub = SocketAddrV4::new(CLIENT_PUB, 5000);
    let mut s = IcmpPunch::new(now, Role::Server, IcmpPunchConfig::default(), [0; 32]);
    let mut c = client(now, Some(client_pub));
    let server_pub = SocketAddr::V4(SocketAddrV4::new(SERVER_PUB, DEFAULT_PORT));
    let mut t = now;
    let mut icmp_to_server = 0;
    for _ in 0..40 {
        s.handle_timeout(t);
        c.handle_timeout(t);
        for tx in drain(&mut c) {
            match tx.channel {
                Channel::Icmp => {
                    // The client's NAT leaves the unrelated error untranslated; the
                    // server's NAT relates it to the echo mapping.
                    icmp_to_server += 1;
                    let inbound = nat_translate_inbound(&tx.contents, SERVER_PRIV);
                    let p = ip_packet(CLIENT_PRIV, SERVER_PRIV, &inbound);
                    assert!(s.handle_input(t, IcmpInput::Icmp(&p)) || s.peer().is_some());
                }
                Channel::Udp => {
                    assert_eq!(tx.destination, server_pub);
                    s.handle_input(
                        t,
                        IcmpInput::Udp {
                            source: SocketAddr::V4(client_pub),
                            contents: &tx.contents,
                        },
                    );
                }
            }
        }
        for tx in drain(&mut s) {
            if tx.channel == Channel::Udp {
                assert_eq!(tx.destination, SocketAddr::V4(client_pub));
                c.handle_input(
                    t,
                    IcmpInput::Udp {
                        source: server_pub,
                        contents: &tx.contents,
                    },
                );
            }
        }
        t += Duration::from_millis(100);
        if s.is_established() && c.is_established() {
            break;
        }
    }
    assert!(icmp_to_server >= 1);
    assert!(s.is_established() && c.is_established());
    let se = events(&mut s);
    assert!(
        se.contains(&IcmpPunchEvent::ClientLearned {
            address: client_pub,
            outer_source: CLIENT_PRIV,
            advertised: Some(client_pub),
        }),
        "{se:?}"
    );
    assert!(se.contains(&IcmpPunchEvent::Connected {
        peer: SocketAddr::V4(client_pub)
    }));
    assert!(events(&mut c).contains(&IcmpPunchEvent::Connected { peer: server_pub }));
    // Once connected the client stops forging and the server stops echoing.
    s.handle_timeout(t + Duration::from_secs(3));
    c.handle_timeout(t + Duration::from_secs(3));
    assert!(
        drain(&mut s)
            .iter()
            .chain(drain(&mut c).iter())
            .all(|tx| tx.channel == Channel::Udp)
    );
    // Data both ways, then the end of a direction.
    c.send(b"from client\n").unwrap();
    for tx in drain(&mut c) {
        s.handle_input(
            t,
            IcmpInput::Udp {
                source: SocketAddr::V4(client_pub),
                contents: &tx.contents,
            },
        );
    }
    assert_eq!(
        events(&mut s),
        vec![IcmpPunchEvent::Data(b"from client\n".to_vec())]
    );
    s.send(b"from server\n").unwrap();
    s.send(b"").unwrap();
    for tx in drain(&mut s) {
        c.handle_input(
            t,
            IcmpInput::Udp {
                source: server_pub,
                contents: &tx.contents,
            },
        );
    }
    assert_eq!(
        events(&mut c),
        vec![
            IcmpPunchEvent::Data(b"from server\n".to_vec()),
            IcmpPunchEvent::PeerEnded
        ]
    );
}

#[test]
fn without_an_advertised_address_the_server_uses_the_outer_source_and_local_port() {
    let now = t0();
    let mut s = IcmpPunch::new(now, Role::Server, IcmpPunchConfig::default(), [0; 32]);
    let mut c = client(now, None);
    c.handle_timeout(now);
    let te = drain(&mut c)
        .into_iter()
        .find(|t| t.channel == Channel::Icmp)
        .unwrap();
    let p = ip_packet(
        CLIENT_PUB,
        SERVER_PRIV,
        &nat_translate_inbound(&te.contents, SERVER_PRIV),
    );
    assert!(s.handle_input(now, IcmpInput::Icmp(&p)));
    assert_eq!(
        s.peer(),
        Some(SocketAddr::V4(SocketAddrV4::new(CLIENT_PUB, 5000)))
    );
}

#[test]
fn server_ignores_errors_that_are_not_for_its_echo() {
    let now = t0();
    let mut s = IcmpPunch::new(now, Role::Server, IcmpPunchConfig::default(), [0; 32]);
    let advert = Advert {
        token: [1; 8],
        public: None,
        local_port: 1,
    };
    // Another echo identifier, another target.
    for (target, id) in [
        (DEFAULT_TARGET, DEFAULT_ECHO_ID ^ 1),
        (Ipv4Addr::new(192, 0, 2, 1), DEFAULT_ECHO_ID),
    ] {
        let te = forge_time_exceeded(SERVER_PRIV, target, id, 1, &advert);
        assert!(!s.handle_input(
            now,
            IcmpInput::Icmp(&ip_packet(CLIENT_PUB, SERVER_PRIV, &te))
        ));
    }
    // A genuine router's error: the echo header only, no advert.
    let mut te = forge_time_exceeded(SERVER_PRIV, DEFAULT_TARGET, DEFAULT_ECHO_ID, 1, &advert);
    te.truncate(ICMP_HEADER_LEN + IPV4_HEADER_LEN + ICMP_HEADER_LEN);
    te[2..4].fill(0);
    let c = checksum(&te);
    te[2..4].copy_from_slice(&c.to_be_bytes());
    assert!(!s.handle_input(
        now,
        IcmpInput::Icmp(&ip_packet(CLIENT_PUB, SERVER_PRIV, &te))
    ));
    // A corrupted one.
    let mut te = forge_time_exceeded(SERVER_PRIV, DEFAULT_TARGET, DEFAULT_ECHO_ID, 1, &advert);
    te[30] ^= 0x40;
    assert!(!s.handle_input(
        now,
        IcmpInput::Icmp(&ip_packet(CLIENT_PUB, SERVER_PRIV, &te))
    ));
    assert!(s.peer().is_none());
    assert!(events(&mut s).is_empty());
    // UDP before any client is known is not ours.
    let f = UdpFrame {
        kind: FrameKind::Hello { heard: false },
        token: [1; 8],
        data: &[],
    }
    .emit();
    assert!(!s.handle_input(
        now,
        IcmpInput::Udp {
            source: "198.51.100.11:5000".parse().unwrap(),
            contents: &f
        }
    ));
}

#[test]
fn frames_with_another_token_are_ignored_and_the_peer_is_latched_to_the_source() {
    let now = t0();
    let mut c = client(now, None);
    c.handle_timeout(now);
    let hello = drain(&mut c)
        .into_iter()
        .find(|t| t.channel == Channel::Udp)
        .unwrap();
    let token = UdpFrame::parse(&hello.contents).unwrap().token;
    let stranger = UdpFrame {
        kind: FrameKind::Data,
        token: [0xee; 8],
        data: b"x",
    }
    .emit();
    assert!(!c.handle_input(
        now,
        IcmpInput::Udp {
            source: "203.0.113.5:1".parse().unwrap(),
            contents: &stranger
        }
    ));
    assert!(!c.is_connected());
    assert_eq!(c.send(b"x"), Err(IcmpError::NotConnected));
    // The server's NAT gave its socket another port: the client answers there.
    let moved: SocketAddr = SocketAddr::V4(SocketAddrV4::new(SERVER_PUB, 40001));
    let f = UdpFrame {
        kind: FrameKind::Hello { heard: false },
        token,
        data: &[],
    }
    .emit();
    assert!(c.handle_input(
        now,
        IcmpInput::Udp {
            source: moved,
            contents: &f
        }
    ));
    assert_eq!(c.peer(), Some(moved));
    c.handle_timeout(now);
    let tx = drain(&mut c);
    let answer = tx.iter().find(|t| t.channel == Channel::Udp).unwrap();
    assert_eq!(answer.destination, moved);
    assert_eq!(
        UdpFrame::parse(&answer.contents).unwrap().kind,
        FrameKind::Hello { heard: true }
    );
    assert_eq!(
        c.send(&[0; MAX_DATA + 1]),
        Err(IcmpError::TooLarge(MAX_DATA + 1))
    );
}

#[test]
fn a_sweep_forges_every_identifier_once_per_pass_at_the_rate() {
    let now = t0();
    let config = IcmpPunchConfig {
        id_sweep_rate: 5000,
        ..IcmpPunchConfig::default()
    };
    let mut c = IcmpPunch::new(
        now,
        Role::Client {
            server: SocketAddrV4::new(SERVER_PUB, DEFAULT_PORT),
            public: None,
            local_port: 5000,
        },
        config,
        [7; 32],
    );
    let mut ids = std::collections::HashSet::new();
    let mut t = now;
    let mut first_second = 0;
    // 65 536 at 5 000/s: 13.1 s; bounded loop.
    for _ in 0..2000 {
        let Some(next) = c.poll_timeout() else { break };
        t = t.max(next);
        c.handle_timeout(t);
        for tx in drain(&mut c) {
            if tx.channel != Channel::Icmp {
                continue;
            }
            let te = TimeExceeded::parse(&tx.contents).unwrap();
            assert_eq!(te.inner.source, SERVER_PUB);
            assert_eq!(te.inner.destination, DEFAULT_TARGET);
            if t < now + Duration::from_secs(1) {
                first_second += 1;
            }
            ids.insert(te.echo.unwrap().0);
        }
        if c.swept() >= u64::from(SWEEP_IDS) {
            break;
        }
    }
    assert_eq!(ids.len(), 1 << 16, "every identifier once");
    // The last batch may start the next pass.
    assert!((u64::from(SWEEP_IDS)..u64::from(SWEEP_IDS) + 100).contains(&c.swept()));
    // The rate: 100 per 20 ms tick, plus the plain forgery once a second.
    assert!((4900..=5200).contains(&first_second), "{first_second}");
    assert!(
        t - now >= Duration::from_secs(13) && t - now < Duration::from_secs(14),
        "{:?}",
        t - now
    );
    // A sweep ends when the server is heard.
    let hello = UdpFrame {
        kind: FrameKind::Hello { heard: false },
        token: c.token.unwrap(),
        data: &[],
    }
    .emit();
    assert!(c.handle_input(
        t,
        IcmpInput::Udp {
            source: SocketAddr::V4(SocketAddrV4::new(SERVER_PUB, 1)),
            contents: &hello
        }
    ));
    c.handle_timeout(t + Duration::from_secs(1));
    assert!(drain(&mut c).iter().all(|tx| tx.channel == Channel::Udp));
    // Off by default.
    let mut plain = client(now, None);
    plain.handle_timeout(now + SWEEP_TICK);
    assert_eq!(plain.swept(), 0);
}
