//! The resolver and responder against hand-built messages, on a virtual clock.

use super::*;

const NAME: &str = "7e1c2f0a-3b4d-4c5e-8f9a-0b1c2d3e4f50.local";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rx<'a>(source: &str, contents: &'a [u8]) -> Received<'a> {
    Received {
        proto: Protocol::Udp,
        source: sa(source),
        destination: sa("0.0.0.0:40000"),
        contents,
    }
}

fn feed(resp: &mut MdnsResponder, source: &str, here: SocketAddr, contents: &[u8]) -> bool {
    resp.handle_input(
        Instant::now(),
        Received {
            proto: Protocol::Udp,
            source: sa(source),
            destination: here,
            contents,
        },
    )
}

fn drain(r: &mut MdnsResolver) -> Vec<Transmit> {
    std::iter::from_fn(|| r.poll_transmit()).collect()
}

/// A response built by hand, byte by byte (RFC 1035 §4.1): a compressed name in the
/// second answer, the cache-flush bit on both, an unrelated TXT record first.
fn hand_built_response() -> Vec<u8> {
    let mut m = vec![
        0x00, 0x00, // id
        0x84, 0x00, // QR, AA
        0x00, 0x00, // qd
        0x00, 0x03, // an
        0x00, 0x00, 0x00, 0x00,
    ];
    // TXT record for "x.local": skipped.
    m.extend_from_slice(&[1, b'x', 5]);
    m.extend_from_slice(b"local");
    m.extend_from_slice(&[0, 0x00, 0x10, 0x80, 0x01, 0, 0, 0, 120, 0, 2, 1, b'a']);
    // A record for NAME (upper case in the message: matched case-insensitively).
    let name_at = m.len();
    let (label, _) = NAME.split_once('.').unwrap();
    m.push(36);
    m.extend_from_slice(label.to_ascii_uppercase().as_bytes());
    m.push(5);
    m.extend_from_slice(b"LOCAL");
    m.push(0);
    m.extend_from_slice(&[0x00, 0x01, 0x80, 0x01, 0, 0, 0, 120, 0, 4, 192, 0, 2, 7]);
    // AAAA record for NAME through a compression pointer.
    m.extend_from_slice(&[0xc0 | (name_at >> 8) as u8, name_at as u8]);
    m.extend_from_slice(&[0x00, 0x1c, 0x80, 0x01, 0, 0, 0, 120, 0, 16]);
    m.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    m
}

#[test]
fn resolves_from_a_hand_built_response() {
    let t0 = Instant::now();
    let mut r = MdnsResolver::new(MdnsConfig::default());
    r.resolve(t0, NAME).unwrap();
    let sent = drain(&mut r);
    // A and AAAA questions to each group, one question per message, with the QU bit.
    assert_eq!(sent.len(), 4);
    let dests: Vec<SocketAddr> = sent.iter().map(|t| t.destination).collect();
    assert_eq!(dests, [GROUP_V4, GROUP_V4, GROUP_V6, GROUP_V6]);
    for (t, qtype) in sent.iter().zip([TYPE_A, TYPE_AAAA, TYPE_A, TYPE_AAAA]) {
        let m = parse(&t.contents).unwrap();
        assert!(!m.response);
        assert_eq!(m.id, 0, "RFC 6762 §18.1");
        assert_eq!(
            m.questions,
            [Question {
                name: Some(NAME.into()),
                qtype,
                unicast_response: true
            }]
        );
        assert_eq!(t.source.ip().is_ipv4(), t.destination.is_ipv4());
    }
    // An answer for another name does not resolve ours.
    let other = encode_response(0, "other.local", &[ip("192.0.2.9")], 120, None).unwrap();
    assert!(!r.handle_input(t0, rx("192.0.2.9:5353", &other)));
    assert_eq!(r.poll_event(), None);
    // Nor does a query for it.
    let q = encode_query(0, NAME, TYPE_A, false).unwrap();
    assert!(!r.handle_input(t0, rx("192.0.2.9:5353", &q)));

    let resp = hand_built_response();
    assert!(r.handle_input(t0 + Duration::from_millis(20), rx("192.0.2.7:5353", &resp)));
    assert_eq!(
        r.poll_event(),
        Some(MdnsEvent::Resolved {
            name: NAME.into(),
            addrs: vec![ip("192.0.2.7"), ip("2001:db8::7")]
        })
    );
    assert_eq!(r.pending(), 0);
    assert_eq!(r.poll_timeout(), None);
    // A late duplicate answers nothing.
    assert!(!r.handle_input(t0, rx("192.0.2.7:5353", &resp)));
    assert_eq!(r.poll_event(), None);
}

#[test]
fn retries_then_gives_up_within_the_bound() {
    let t0 = Instant::now();
    let mut r = MdnsResolver::new(MdnsConfig::default());
    r.resolve(t0, NAME).unwrap();
    // The same name twice: one resolution.
    r.resolve(t0, &NAME.to_ascii_uppercase()).unwrap();
    assert_eq!(r.pending(), 1);
    let mut sends = vec![(t0, drain(&mut r).len())];
    let mut now = t0;
    let mut event = None;
    // Bounded: the machine's deadlines, at most 10 steps.
    for _ in 0..10 {
        let Some(next) = r.poll_timeout() else { break };
        assert!(next >= now, "deadlines move forward");
        now = next;
        r.handle_timeout(now);
        let n = drain(&mut r).len();
        if n > 0 {
            sends.push((now, n));
        }
        if let Some(e) = r.poll_event() {
            event = Some((now, e));
        }
    }
    assert_eq!(
        sends,
        [
            (t0, 4),
            (t0 + Duration::from_secs(1), 4),
            (t0 + Duration::from_secs(2), 4)
        ]
    );
    assert_eq!(
        event,
        Some((
            t0 + MAX_TIMEOUT,
            MdnsEvent::Unresolved { name: NAME.into() }
        ))
    );
    assert_eq!(r.pending(), 0);
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn timeout_is_bounded_and_names_are_checked() {
    let t0 = Instant::now();
    let mut config = MdnsConfig::with_groups(vec![sa("127.0.0.1:5353")]);
    config.timeout = Duration::from_secs(60);
    let mut r = MdnsResolver::new(config);
    for bad in [
        "192.0.2.1",
        "example.com",
        "local",
        ".local",
        "a..local",
        "a b.local",
    ] {
        assert!(
            matches!(r.resolve(t0, bad), Err(MdnsError::NotLocal(_))),
            "{bad}"
        );
    }
    r.resolve(t0, "host.local.").unwrap();
    assert_eq!(drain(&mut r).len(), 2);
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    r.handle_timeout(t0 + MAX_TIMEOUT);
    assert_eq!(
        r.poll_event(),
        Some(MdnsEvent::Unresolved {
            name: "host.local".into()
        })
    );
    for i in 0..MAX_PENDING {
        r.resolve(t0, &format!("h{i}.local")).unwrap();
    }
    assert_eq!(r.resolve(t0, "one-more.local"), Err(MdnsError::TooMany));
}

#[test]
fn malformed_and_odd_messages_are_dropped() {
    let t0 = Instant::now();
    let mut r = MdnsResolver::new(MdnsConfig::default());
    r.resolve(t0, NAME).unwrap();
    let good = hand_built_response();
    // Every truncation of a good response: no answer, no panic.
    for n in 0..good.len() {
        assert!(!r.handle_input(t0, rx("192.0.2.7:5353", &good[..n])), "{n}");
    }
    // A pointer loop, a forward pointer, an extended label type.
    let mut looped = good[..12].to_vec();
    looped[7] = 1;
    looped.extend_from_slice(&[0xc0, 12]);
    assert_eq!(parse(&looped), Err(MdnsError::BadName));
    let mut fwd = good[..12].to_vec();
    fwd[7] = 1;
    fwd.extend_from_slice(&[0xc0, 40]);
    assert_eq!(parse(&fwd), Err(MdnsError::BadName));
    let mut ext = good[..12].to_vec();
    ext[7] = 1;
    ext.extend_from_slice(&[0x41, 0]);
    assert_eq!(parse(&ext), Err(MdnsError::BadName));
    // An A record of 5 bytes.
    let mut bad_a = encode_response(0, NAME, &[ip("192.0.2.7")], 120, None).unwrap();
    let n = bad_a.len();
    bad_a[n - 5] = 5;
    bad_a.push(0);
    assert_eq!(parse(&bad_a), Err(MdnsError::BadRecord));
    assert!(!r.handle_input(t0, rx("192.0.2.7:5353", &bad_a)));
    // A nonzero rcode.
    let mut rcode = encode_response(0, NAME, &[ip("192.0.2.7")], 120, None).unwrap();
    rcode[3] |= 3;
    assert_eq!(parse(&rcode), Err(MdnsError::NotStandard));
    // A goodbye (TTL 0, RFC 6762 §10.1) resolves nothing.
    let bye = encode_response(0, NAME, &[ip("192.0.2.7")], 0, None).unwrap();
    assert!(!r.handle_input(t0, rx("192.0.2.7:5353", &bye)));
    // Too many records claimed.
    let mut many = vec![0, 0, 0x84, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
    many.extend_from_slice(&[0; 64]);
    assert_eq!(parse(&many), Err(MdnsError::TooManyRecords));
    assert_eq!(r.poll_event(), None);
    assert_eq!(r.pending(), 1);
    // And the good one still works after all that.
    assert!(r.handle_input(t0, rx("192.0.2.7:5353", &good)));
}

#[test]
fn responder_answers_for_its_names_the_way_rfc_6762_says() {
    let t0 = Instant::now();
    let mut resp = MdnsResponder::new();
    // This host's link: 192.0.2.0/24 (the queriers below are on it).
    resp.set_local_networks(vec![(ip("192.0.2.7"), 24)]);
    resp.publish(NAME, &[ip("192.0.2.7"), ip("2001:db8::7")])
        .unwrap();
    assert!(resp.publish("example.com", &[]).is_err());
    let here = sa("192.0.2.7:5353");
    // A legacy one-shot query (source port not 5353): unicast back, id and question
    // repeated (§6.7), only the A record for an A question.
    let mut q = encode_query(0x1234, &NAME.to_ascii_uppercase(), TYPE_A, false).unwrap();
    assert!(feed(&mut resp, "192.0.2.1:40000", here, &q));
    let t = resp.poll_transmit().unwrap();
    assert_eq!(t.destination, sa("192.0.2.1:40000"));
    let m = parse(&t.contents).unwrap();
    assert!(m.response);
    assert_eq!(m.id, 0x1234);
    assert_eq!(m.questions.len(), 1);
    assert_eq!(
        m.addresses,
        [AddressRecord {
            name: Some(NAME.into()),
            addr: ip("192.0.2.7"),
            ttl: HOST_TTL
        }]
    );
    // From port 5353 without QU: to the group; with QU: unicast.
    q = encode_query(0, NAME, TYPE_AAAA, false).unwrap();
    assert!(feed(&mut resp, "192.0.2.1:5353", here, &q));
    let t = resp.poll_transmit().unwrap();
    assert_eq!(t.destination, GROUP_V4);
    assert_eq!(
        parse(&t.contents).unwrap().addresses[0].addr,
        ip("2001:db8::7")
    );
    q = encode_query(0, NAME, TYPE_ANY, true).unwrap();
    assert!(feed(&mut resp, "192.0.2.1:5353", here, &q));
    let t = resp.poll_transmit().unwrap();
    assert_eq!(t.destination, sa("192.0.2.1:5353"));
    assert_eq!(parse(&t.contents).unwrap().addresses.len(), 2);
    // Other names, responses and garbage: silence.
    q = encode_query(0, "other.local", TYPE_A, false).unwrap();
    assert!(!feed(&mut resp, "192.0.2.1:5353", here, &q));
    let r = encode_response(0, NAME, &[ip("192.0.2.7")], 120, None).unwrap();
    assert!(!feed(&mut resp, "192.0.2.1:5353", here, &r));
    assert!(!feed(&mut resp, "192.0.2.1:5353", here, &[1, 2, 3]));
    assert_eq!(resp.poll_transmit(), None);

    // The resolver and the responder, end to end.
    let mut res = MdnsResolver::new(MdnsConfig::with_groups(vec![here]));
    res.resolve(t0, NAME).unwrap();
    for t in drain(&mut res) {
        let src = sa("192.0.2.1:40000");
        resp.handle_input(
            t0,
            Received {
                proto: Protocol::Udp,
                source: src,
                destination: t.destination,
                contents: &t.contents,
            },
        );
    }
    let mut got = Vec::new();
    while let Some(t) = resp.poll_transmit() {
        res.handle_input(t0, rx("192.0.2.7:5353", &t.contents));
        got.extend(res.poll_event());
    }
    assert_eq!(
        got,
        [MdnsEvent::Resolved {
            name: NAME.into(),
            addrs: vec![ip("192.0.2.7")]
        }]
    );
}

/// RFC 6762 §11: a question asking for a unicast answer (legacy or QU) from a source off
/// this host's links gets none (else a forged source anywhere could have answers
/// reflected at it); on the link, loopback and link-local sources are answered; a plain
/// multicast question is answered to the group whatever its source.
#[test]
fn responder_answers_unicast_only_on_the_link() {
    let mut resp = MdnsResponder::new();
    resp.set_local_networks(vec![(ip("192.0.2.7"), 24), (ip("2001:db8::7"), 64)]);
    resp.publish(NAME, &[ip("192.0.2.7")]).unwrap();
    let here = sa("192.0.2.7:5353");
    let legacy = encode_query(0x1234, NAME, TYPE_A, false).unwrap();
    let qu = encode_query(0, NAME, TYPE_A, true).unwrap();
    for off in [
        "198.51.100.7:40000",
        "192.0.3.1:40000",
        "[2001:db9::1]:40000",
    ] {
        assert!(!feed(&mut resp, off, here, &legacy), "{off}");
        assert_eq!(resp.poll_transmit(), None, "{off}");
    }
    assert!(!feed(&mut resp, "198.51.100.7:5353", here, &qu));
    assert_eq!(resp.poll_transmit(), None);
    for on in [
        "192.0.2.200:40000",
        "127.0.0.1:40000",
        "169.254.3.4:40000",
        "[2001:db8::99]:40000",
        "[fe80::1]:40000",
    ] {
        assert!(feed(&mut resp, on, here, &legacy), "{on}");
        assert_eq!(resp.poll_transmit().map(|t| t.destination), Some(sa(on)));
    }
    // A multicast question from off the link: the group hears the answer, not the source.
    let plain = encode_query(0, NAME, TYPE_A, false).unwrap();
    assert!(feed(&mut resp, "198.51.100.7:5353", here, &plain));
    assert_eq!(resp.poll_transmit().map(|t| t.destination), Some(GROUP_V4));
    // Without any network of its own, only loopback and link-local sources get unicast.
    let mut bare = MdnsResponder::new();
    bare.publish(NAME, &[ip("192.0.2.7")]).unwrap();
    assert!(!feed(&mut bare, "192.0.2.200:40000", here, &legacy));
    assert!(feed(&mut bare, "127.0.0.1:40000", here, &legacy));
}
