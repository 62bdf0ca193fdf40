//! RFC 5769 test vectors, malformed-input classes, builder round trips, the client and
//! the server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::attributes::*;
use super::*;
use crate::{Protocol, Received};

/// Parses a hex dump with whitespace.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap() as u8)
        .collect();
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

/// RFC 5769 §2.1: sample request (short-term credentials).
pub(crate) const RFC5769_REQUEST: &str = "
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf";
pub(crate) const RFC5769_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";

/// RFC 5769 §2.2: sample IPv4 response.
pub(crate) const RFC5769_RESPONSE_V4: &str = "
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96";

/// RFC 5769 §2.3: sample IPv6 response.
pub(crate) const RFC5769_RESPONSE_V6: &str = "
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c";

/// RFC 5769 §2.4: sample request with long-term credentials.
pub(crate) const RFC5769_LONG_TERM: &str = "
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

#[test]
fn rfc5769_request_parses_verifies_and_reencodes() {
    let bytes = hex(RFC5769_REQUEST);
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.message_type(), MessageType::BINDING_REQUEST);
    assert_eq!(
        msg.get::<Software<'_>>().unwrap(),
        Some(Software("STUN test client"))
    );
    assert_eq!(msg.get::<Priority>().unwrap(), Some(Priority(0x6e0001ff)));
    assert_eq!(
        msg.get::<IceControlled>().unwrap(),
        Some(IceControlled(0x932ff9b151263b36))
    );
    assert_eq!(
        msg.get::<Username<'_>>().unwrap(),
        Some(Username("evtj:h6vY"))
    );
    let key = IntegrityKey::short_term(RFC5769_PASSWORD).unwrap();
    msg.verify_integrity(&key).unwrap();
    msg.verify_fingerprint().unwrap();
    assert_eq!(
        msg.verify_integrity(&IntegrityKey::short_term("wrong").unwrap()),
        Err(StunError::IntegrityMismatch)
    );

    // Re-encode: the vector pads USERNAME with spaces, so the builder does too.
    let mut out = [0u8; 256];
    let mut b = MessageBuilder::new(&mut out, msg.message_type(), msg.transaction_id()).unwrap();
    b.padding_byte(b' ');
    b.add(&Software("STUN test client")).unwrap();
    b.add(&Priority(0x6e0001ff)).unwrap();
    b.add(&IceControlled(0x932ff9b151263b36)).unwrap();
    b.add(&Username("evtj:h6vY")).unwrap();
    b.add_message_integrity(&key).unwrap();
    b.add_fingerprint().unwrap();
    assert_eq!(b.finish(), &bytes[..]);
}

#[test]
fn rfc5769_ipv4_response() {
    let bytes = hex(RFC5769_RESPONSE_V4);
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.message_type(), MessageType::BINDING_SUCCESS);
    let addr: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(
        msg.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(addr))
    );
    let key = IntegrityKey::short_term(RFC5769_PASSWORD).unwrap();
    msg.verify_integrity(&key).unwrap();
    msg.verify_fingerprint().unwrap();

    let mut out = [0u8; 256];
    let mut b = MessageBuilder::new(&mut out, msg.message_type(), msg.transaction_id()).unwrap();
    b.padding_byte(b' ');
    b.add(&Software("test vector")).unwrap();
    b.add(&XorMappedAddress(addr)).unwrap();
    b.add_message_integrity(&key).unwrap();
    b.add_fingerprint().unwrap();
    assert_eq!(b.finish(), &bytes[..]);
}

#[test]
fn rfc5769_ipv6_response() {
    let bytes = hex(RFC5769_RESPONSE_V6);
    let msg = Message::parse(&bytes).unwrap();
    let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    assert_eq!(
        msg.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(addr))
    );
    let key = IntegrityKey::short_term(RFC5769_PASSWORD).unwrap();
    msg.verify_integrity(&key).unwrap();
    msg.verify_fingerprint().unwrap();

    let mut out = [0u8; 256];
    let mut b = MessageBuilder::new(&mut out, msg.message_type(), msg.transaction_id()).unwrap();
    b.padding_byte(b' ');
    b.add(&Software("test vector")).unwrap();
    b.add(&XorMappedAddress(addr)).unwrap();
    b.add_message_integrity(&key).unwrap();
    b.add_fingerprint().unwrap();
    assert_eq!(b.finish(), &bytes[..]);
}

#[test]
fn rfc5769_long_term_request() {
    let bytes = hex(RFC5769_LONG_TERM);
    let msg = Message::parse(&bytes).unwrap();
    let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    assert_eq!(msg.get::<Username<'_>>().unwrap(), Some(Username(username)));
    assert_eq!(
        msg.get::<Nonce<'_>>().unwrap(),
        Some(Nonce("f//499k954d6OL34oL9FSTvy64sA"))
    );
    assert_eq!(msg.get::<Realm<'_>>().unwrap(), Some(Realm("example.org")));
    assert!(!msg.has_fingerprint());
    // RFC 5769 gives the password "The<U+00AD>M<U+00AA>tr<U+2168>", which SASLprep (RFC
    // 4013) turns into "TheMatrIX". RFC 8489 replaced SASLprep by OpaqueString, which keeps
    // those characters, so the vector's key is derived from the SASLprep output.
    let key = IntegrityKey::long_term(username, "example.org", "TheMatrIX", PasswordAlgorithm::Md5)
        .unwrap();
    msg.verify_integrity(&key).unwrap();
    assert_eq!(msg.verify_fingerprint(), Err(StunError::MissingFingerprint));

    let mut out = [0u8; 256];
    let mut b = MessageBuilder::new(&mut out, msg.message_type(), msg.transaction_id()).unwrap();
    b.add(&Username(username)).unwrap();
    b.add(&Nonce("f//499k954d6OL34oL9FSTvy64sA")).unwrap();
    b.add(&Realm("example.org")).unwrap();
    b.add_message_integrity(&key).unwrap();
    assert_eq!(b.finish(), &bytes[..]);
}

fn request_with(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([1; 12]),
    )
    .unwrap();
    for (t, v) in attrs {
        b.add_raw(AttributeType(*t), v).unwrap();
    }
    let n = b.finish().len();
    buf.truncate(n);
    buf
}

#[test]
fn malformed_truncated_header() {
    let bytes = hex(RFC5769_REQUEST);
    for n in 0..20 {
        assert_eq!(
            Message::parse(&bytes[..n]).unwrap_err(),
            StunError::TruncatedHeader { len: n }
        );
    }
}

#[test]
fn malformed_bad_magic_cookie_and_leading_bits() {
    let mut bytes = hex(RFC5769_REQUEST);
    bytes[4] = 0x21;
    bytes[5] = 0x13;
    assert!(matches!(
        Message::parse(&bytes),
        Err(StunError::BadMagicCookie(0x2113a442))
    ));
    let mut bytes = hex(RFC5769_REQUEST);
    bytes[0] = 0x40;
    assert_eq!(Message::parse(&bytes).unwrap_err(), StunError::NotStun);
}

#[test]
fn malformed_length_not_multiple_of_four() {
    let mut bytes = hex(RFC5769_REQUEST);
    bytes[3] = 0x57;
    assert_eq!(
        Message::parse(&bytes).unwrap_err(),
        StunError::UnalignedLength(0x57)
    );
}

#[test]
fn malformed_length_mismatch() {
    let bytes = hex(RFC5769_REQUEST);
    assert!(matches!(
        Message::parse(&bytes[..bytes.len() - 4]),
        Err(StunError::LengthMismatch {
            declared: 0x58,
            actual: 0x54
        })
    ));
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    assert!(matches!(
        Message::parse(&longer),
        Err(StunError::LengthMismatch { .. })
    ));
}

#[test]
fn malformed_attribute_overflow() {
    let mut bytes = request_with(&[(0x8022, b"abcd")]);
    // Claim 8 value bytes where 4 exist.
    bytes[23] = 8;
    assert_eq!(
        Message::parse(&bytes).unwrap_err(),
        StunError::AttributeOverflow {
            attr: 0x8022,
            offset: 20
        }
    );
    // Attribute header cut: a body of 4 bytes holding half a header then a full one.
    let mut bytes = request_with(&[(0x8022, b"")]);
    bytes.extend_from_slice(&[0x80, 0x22, 0x00]);
    bytes.push(0);
    bytes[3] = 8;
    // Body: 80 22 00 00 | 80 22 00 00 -> fine; now break the second into a 2-byte tail.
    let mut cut = request_with(&[(0x8022, b"abcd")]);
    cut[3] = 12; // declare 12, give 8 + 4 of a new header whose length runs over
    cut.extend_from_slice(&[0x80, 0x22, 0x00, 0x04]);
    assert!(matches!(
        Message::parse(&cut),
        Err(StunError::AttributeOverflow { .. })
    ));
}

#[test]
fn malformed_bad_padding() {
    let bytes = hex(RFC5769_REQUEST); // USERNAME padded with spaces
    assert_eq!(
        Message::parse_strict(&bytes).unwrap_err(),
        StunError::BadPadding { attr: 0x0006 }
    );
    // RFC 8489 §14: the lenient parser ignores padding values.
    assert!(Message::parse(&bytes).is_ok());
}

#[test]
fn malformed_attribute_after_fingerprint() {
    let mut buf = vec![0u8; 128];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([1; 12]),
    )
    .unwrap();
    b.add_fingerprint().unwrap();
    assert_eq!(
        b.add(&Software("x")).unwrap_err(),
        StunError::AttributeOrder { attr: 0x8022 }
    );
    let mut bytes = b.finish().to_vec();
    bytes.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
    bytes[3] += 4;
    assert_eq!(
        Message::parse(&bytes).unwrap_err(),
        StunError::AttributeAfterFingerprint { attr: 0x8022 }
    );
}

#[test]
fn malformed_wrong_address_family() {
    let bytes = request_with(&[(0x0020, &[0, 3, 0, 1, 1, 2, 3, 4])]);
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(
        msg.get::<XorMappedAddress>().unwrap_err(),
        StunError::BadAddressFamily {
            attr: 0x0020,
            family: 3
        }
    );
    // IPv6 family with an IPv4-sized body.
    let bytes = request_with(&[(0x0001, &[0, 2, 0, 1, 1, 2, 3, 4])]);
    let msg = Message::parse(&bytes).unwrap();
    assert!(matches!(
        msg.get::<MappedAddress>(),
        Err(StunError::BadAddressFamily { .. })
    ));
}

#[test]
fn malformed_oversized() {
    let mut bytes = hex(RFC5769_REQUEST);
    bytes.resize(MAX_MESSAGE_LEN + 1, 0);
    assert!(matches!(
        Message::parse(&bytes),
        Err(StunError::Oversized { .. })
    ));
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 100];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([1; 12]),
    )
    .unwrap();
    let big = vec![0u8; MAX_MESSAGE_LEN];
    assert!(matches!(
        b.add(&Data(&big)),
        Err(StunError::Oversized { .. })
    ));
}

#[test]
fn malformed_values_give_typed_errors() {
    let bytes = request_with(&[
        (0x0024, &[1, 2, 3]),          // PRIORITY, 3 bytes
        (0x0009, &[0, 0, 7, 0]),       // ERROR-CODE class 7
        (0x8022, &[0xff, 0xfe]),       // SOFTWARE, not UTF-8
        (0x001E, &[0; 31]),            // USERHASH, 31 bytes
        (0x8002, &[0, 1, 0, 8, 0, 0]), // PASSWORD-ALGORITHMS, params overflow
        (0x8030, &[7; 513]),           // MOBILITY-TICKET, over its 512-byte bound
    ]);
    let msg = Message::parse(&bytes).unwrap();
    assert!(matches!(
        msg.get::<Priority>(),
        Err(StunError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        msg.get::<ErrorCode<'_>>(),
        Err(StunError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        msg.get::<Software<'_>>(),
        Err(StunError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        msg.get::<UserHash<'_>>(),
        Err(StunError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        msg.get::<PasswordAlgorithms<'_>>(),
        Err(StunError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        msg.get::<MobilityTicket<'_>>(),
        Err(StunError::InvalidAttribute { attr: 0x8030, .. })
    ));
}

#[test]
fn every_attribute_round_trips() {
    let tid = TransactionId([9; 12]);
    let v4: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let hash = [7u8; 32];
    let mut algs = [0u8; 8];
    let algs = PasswordAlgorithms::encode_list(&[1, 2], &mut algs).unwrap();
    let unknown = UnknownAttributes::from_wire(&[0x12, 0x34, 0x00, 0x77]).unwrap();
    let mut buf = [0u8; 1024];
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, tid).unwrap();
    b.add(&MappedAddress(v4)).unwrap();
    b.add(&XorMappedAddress(v6)).unwrap();
    b.add(&Username("u")).unwrap();
    b.add(&UserHash(&hash)).unwrap();
    b.add(&ErrorCode::new(438, "Stale Nonce")).unwrap();
    b.add(&Realm("r")).unwrap();
    b.add(&Nonce("n")).unwrap();
    b.add(&algs).unwrap();
    b.add(&PasswordAlgorithmAttr {
        algorithm: 2,
        params: &[],
    })
    .unwrap();
    b.add(&unknown).unwrap();
    b.add(&Software("s")).unwrap();
    b.add(&AlternateServer(v4)).unwrap();
    b.add(&AlternateDomain("example.org")).unwrap();
    b.add(&ChangeRequest {
        change_ip: true,
        change_port: false,
    })
    .unwrap();
    b.add(&ResponseOrigin(v4)).unwrap();
    b.add(&OtherAddress(v6)).unwrap();
    b.add(&ResponsePort(1234)).unwrap();
    b.add(&Padding(&[0; 5])).unwrap();
    b.add(&Priority(77)).unwrap();
    b.add(&UseCandidate).unwrap();
    b.add(&IceControlled(5)).unwrap();
    b.add(&IceControlling(6)).unwrap();
    b.add(&ChannelNumber(0x4001)).unwrap();
    b.add(&Lifetime(600)).unwrap();
    b.add(&XorPeerAddress(v4)).unwrap();
    b.add(&Data(b"hello")).unwrap();
    b.add(&XorRelayedAddress(v6)).unwrap();
    b.add(&RequestedAddressFamily(AddressFamily::V6)).unwrap();
    b.add(&EvenPort { reserve_next: true }).unwrap();
    b.add(&RequestedTransport::UDP).unwrap();
    b.add(&DontFragment).unwrap();
    b.add(&ReservationToken(0x0102030405060708)).unwrap();
    b.add(&AdditionalAddressFamily(AddressFamily::V6)).unwrap();
    b.add(&AddressErrorCode {
        family: AddressFamily::V6,
        code: 440,
        reason: "x",
    })
    .unwrap();
    b.add(&Icmp {
        kind: 3,
        code: 4,
        data: 1400,
    })
    .unwrap();
    b.add(&MobilityTicket(b"ticket")).unwrap();
    let key = IntegrityKey::short_term("pw").unwrap();
    b.add_message_integrity(&key).unwrap();
    b.add_message_integrity_sha256(&key).unwrap();
    b.add_fingerprint().unwrap();
    let bytes = b.finish().to_vec();

    let m = Message::parse_strict(&bytes).unwrap();
    m.verify_integrity(&key).unwrap();
    m.verify_fingerprint().unwrap();
    assert_eq!(m.get::<MappedAddress>().unwrap(), Some(MappedAddress(v4)));
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(v6))
    );
    assert_eq!(m.get::<Username<'_>>().unwrap(), Some(Username("u")));
    assert_eq!(m.get::<UserHash<'_>>().unwrap(), Some(UserHash(&hash)));
    assert_eq!(
        m.get::<ErrorCode<'_>>().unwrap(),
        Some(ErrorCode::new(438, "Stale Nonce"))
    );
    assert_eq!(m.get::<Realm<'_>>().unwrap(), Some(Realm("r")));
    assert_eq!(m.get::<Nonce<'_>>().unwrap(), Some(Nonce("n")));
    let got: Vec<u16> = m
        .get::<PasswordAlgorithms<'_>>()
        .unwrap()
        .unwrap()
        .iter()
        .map(|a| a.algorithm)
        .collect();
    assert_eq!(got, [1, 2]);
    assert_eq!(
        m.get::<PasswordAlgorithmAttr<'_>>()
            .unwrap()
            .unwrap()
            .algorithm,
        2
    );
    let u: Vec<_> = m
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .types()
        .collect();
    assert_eq!(u, [AttributeType(0x1234), AttributeType(0x0077)]);
    assert_eq!(m.get::<Software<'_>>().unwrap(), Some(Software("s")));
    assert_eq!(
        m.get::<AlternateServer>().unwrap(),
        Some(AlternateServer(v4))
    );
    assert_eq!(
        m.get::<AlternateDomain<'_>>().unwrap(),
        Some(AlternateDomain("example.org"))
    );
    assert_eq!(
        m.get::<ChangeRequest>().unwrap(),
        Some(ChangeRequest {
            change_ip: true,
            change_port: false
        })
    );
    assert_eq!(m.get::<ResponseOrigin>().unwrap(), Some(ResponseOrigin(v4)));
    assert_eq!(m.get::<OtherAddress>().unwrap(), Some(OtherAddress(v6)));
    assert_eq!(m.get::<ResponsePort>().unwrap(), Some(ResponsePort(1234)));
    assert_eq!(m.get::<Padding<'_>>().unwrap(), Some(Padding(&[0; 5])));
    assert_eq!(m.get::<Priority>().unwrap(), Some(Priority(77)));
    assert_eq!(m.get::<UseCandidate>().unwrap(), Some(UseCandidate));
    assert_eq!(m.get::<IceControlled>().unwrap(), Some(IceControlled(5)));
    assert_eq!(m.get::<IceControlling>().unwrap(), Some(IceControlling(6)));
    assert_eq!(
        m.get::<ChannelNumber>().unwrap(),
        Some(ChannelNumber(0x4001))
    );
    assert_eq!(m.get::<Lifetime>().unwrap(), Some(Lifetime(600)));
    assert_eq!(m.get::<XorPeerAddress>().unwrap(), Some(XorPeerAddress(v4)));
    assert_eq!(m.get::<Data<'_>>().unwrap(), Some(Data(b"hello")));
    assert_eq!(
        m.get::<XorRelayedAddress>().unwrap(),
        Some(XorRelayedAddress(v6))
    );
    assert_eq!(
        m.get::<RequestedAddressFamily>().unwrap(),
        Some(RequestedAddressFamily(AddressFamily::V6))
    );
    assert_eq!(
        m.get::<EvenPort>().unwrap(),
        Some(EvenPort { reserve_next: true })
    );
    assert_eq!(
        m.get::<RequestedTransport>().unwrap(),
        Some(RequestedTransport::UDP)
    );
    assert_eq!(m.get::<DontFragment>().unwrap(), Some(DontFragment));
    assert_eq!(
        m.get::<ReservationToken>().unwrap(),
        Some(ReservationToken(0x0102030405060708))
    );
    assert_eq!(
        m.get::<AdditionalAddressFamily>().unwrap(),
        Some(AdditionalAddressFamily(AddressFamily::V6))
    );
    assert_eq!(
        m.get::<AddressErrorCode<'_>>().unwrap(),
        Some(AddressErrorCode {
            family: AddressFamily::V6,
            code: 440,
            reason: "x"
        })
    );
    assert_eq!(
        m.get::<Icmp>().unwrap(),
        Some(Icmp {
            kind: 3,
            code: 4,
            data: 1400
        })
    );
    assert_eq!(
        m.get::<MobilityTicket<'_>>().unwrap(),
        Some(MobilityTicket(b"ticket"))
    );
    assert!(!m.has_unknown_comprehension_required());
    assert!(m.attributes().all(|a| a.kind.is_known()));
}

#[test]
fn integrity_sha256_is_preferred_and_checked() {
    let key = IntegrityKey::long_term("user", "realm", "pass", PasswordAlgorithm::Sha256).unwrap();
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([3; 12]),
    )
    .unwrap();
    b.add(&Username("user")).unwrap();
    b.add_message_integrity_sha256(&key).unwrap();
    let mut bytes = b.finish().to_vec();
    Message::parse(&bytes)
        .unwrap()
        .verify_integrity(&key)
        .unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(
        Message::parse(&bytes).unwrap().verify_integrity(&key),
        Err(StunError::IntegrityMismatch)
    );
}

#[test]
fn attributes_after_integrity_are_ignored_by_getters() {
    let key = IntegrityKey::short_term("pw").unwrap();
    let mut buf = [0u8; 256];
    let mut b = MessageBuilder::new(
        &mut buf,
        MessageType::BINDING_REQUEST,
        TransactionId([3; 12]),
    )
    .unwrap();
    b.add_message_integrity(&key).unwrap();
    let mut bytes = b.finish().to_vec();
    // Smuggle a SOFTWARE and an unknown required attribute after the integrity.
    bytes.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'e', b'v', b'i', b'l']);
    bytes.extend_from_slice(&[0x7f, 0x00, 0x00, 0x00]);
    bytes[3] += 12;
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.get::<Software<'_>>().unwrap(), None);
    assert!(!m.has_unknown_comprehension_required());
    assert_eq!(m.attributes().count(), 3);
    m.verify_integrity(&key).unwrap();
}

#[test]
fn unknown_comprehension_required_is_reported() {
    let bytes = request_with(&[(0x7777, b"x"), (0xC001, b"y")]);
    let m = Message::parse(&bytes).unwrap();
    assert!(m.has_unknown_comprehension_required());
    let u: Vec<_> = m.unknown_comprehension_required().collect();
    assert_eq!(u, [AttributeType(0x7777)]);
}

#[test]
fn message_type_encoding() {
    for class in [
        Class::Request,
        Class::Indication,
        Class::Success,
        Class::Error,
    ] {
        for m in [0x001, 0x003, 0x009, 0xABC, 0xFFF] {
            let t = MessageType::new(class, Method(m));
            assert_eq!(MessageType::from_u16(t.to_u16()), t);
        }
    }
    assert_eq!(MessageType::BINDING_REQUEST.to_u16(), 0x0001);
    assert_eq!(MessageType::BINDING_SUCCESS.to_u16(), 0x0101);
    assert_eq!(MessageType::BINDING_ERROR.to_u16(), 0x0111);
    assert_eq!(
        MessageType::new(Class::Indication, Method::SEND).to_u16(),
        0x0016
    );
}

#[test]
fn opaque_string_profile() {
    assert_eq!(opaque_string("abc").unwrap(), "abc");
    assert_eq!(opaque_string("a\u{00A0}b").unwrap(), "a b");
    // NFC: e + combining acute becomes é.
    assert_eq!(opaque_string("e\u{0301}").unwrap(), "\u{00E9}");
    assert!(opaque_string("").is_err());
    assert!(opaque_string("a\u{0007}").is_err());
    assert!(IntegrityKey::short_term("").is_err());
}

// ---------------------------------------------------------------------------
// Client transactions
// ---------------------------------------------------------------------------

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn respond(
    req: &[u8],
    from: SocketAddr,
    mapped: SocketAddr,
    key: Option<&IntegrityKey>,
) -> Vec<u8> {
    let m = Message::parse(req).unwrap();
    let mut buf = [0u8; 256];
    let mut b =
        MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, m.transaction_id()).unwrap();
    b.add(&XorMappedAddress(mapped)).unwrap();
    if let Some(k) = key {
        b.add_message_integrity(k).unwrap();
    }
    b.add_fingerprint().unwrap();
    let _ = from;
    b.finish().to_vec()
}

#[test]
fn client_retransmits_on_the_rfc_schedule_then_times_out() {
    let t0 = Instant::now();
    let mut c = StunClient::new(ClientConfig::default(), [1; 32]);
    let local = addr("10.0.0.1:5000");
    let server = addr("203.0.113.1:3478");
    let id = c
        .start(t0, Request::binding(local, server), |_| Ok(()))
        .unwrap();
    let mut sends = vec![];
    let mut now = t0;
    let mut guard = 0;
    loop {
        while let Some(t) = c.poll_transmit() {
            assert_eq!(t.destination, server);
            sends.push(now - t0);
        }
        if let Some(TransactionEvent::TimedOut { id: got, .. }) = c.poll_event() {
            assert_eq!(got, id);
            break;
        }
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now);
        guard += 1;
        assert!(guard < 20);
    }
    let ms: Vec<u128> = sends.iter().map(Duration::as_millis).collect();
    // RFC 8489 §6.2.1: 0, 500, 1500, 3500, 7500, 15500, 31500; give up at 39500.
    assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!((now - t0).as_millis(), 39500);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn client_matches_by_id_and_source_and_checks_integrity() {
    let t0 = Instant::now();
    let mut c = StunClient::new(ClientConfig::default(), [2; 32]);
    let local = addr("10.0.0.1:5000");
    let server = addr("203.0.113.1:3478");
    let key = IntegrityKey::short_term("secret").unwrap();
    let mut req = Request::binding(local, server);
    req.key = Some(key.clone());
    let id = c
        .start(t0, req, |b| b.add(&Username("a:b")).map(|_| ()))
        .unwrap();
    let sent = c.poll_transmit().unwrap();
    Message::parse(&sent.contents)
        .unwrap()
        .verify_integrity(&key)
        .unwrap();
    let mapped = addr("198.51.100.9:7000");
    let rx = |src, bytes: &[u8]| -> Vec<u8> {
        let _ = src;
        bytes.to_vec()
    };

    // Spoofed source: consumed but dropped.
    let good = respond(&sent.contents, server, mapped, Some(&key));
    let spoof = rx(0, &good);
    let r = Received {
        proto: Protocol::Udp,
        source: addr("192.0.2.66:3478"),
        destination: local,
        contents: &spoof,
    };
    assert!(c.handle_input(t0, r));
    assert!(c.poll_event().is_none());
    // No integrity on a success response to an authenticated request: dropped.
    let bare = respond(&sent.contents, server, mapped, None);
    let r = Received {
        proto: Protocol::Udp,
        source: server,
        destination: local,
        contents: &bare,
    };
    assert!(c.handle_input(t0, r));
    assert!(c.poll_event().is_none());
    // Wrong key: dropped.
    let wrong = respond(
        &sent.contents,
        server,
        mapped,
        Some(&IntegrityKey::short_term("x").unwrap()),
    );
    let r = Received {
        proto: Protocol::Udp,
        source: server,
        destination: local,
        contents: &wrong,
    };
    assert!(c.handle_input(t0, r));
    assert!(c.poll_event().is_none());
    // Unknown transaction: not ours.
    let mut other = good.clone();
    other[10] ^= 0xff;
    let r = Received {
        proto: Protocol::Udp,
        source: server,
        destination: local,
        contents: &other,
    };
    assert!(!c.handle_input(t0, r));
    // The real one.
    let later = t0 + Duration::from_millis(30);
    let r = Received {
        proto: Protocol::Udp,
        source: server,
        destination: local,
        contents: &good,
    };
    assert!(c.handle_input(later, r));
    match c.poll_event() {
        Some(TransactionEvent::Response(resp)) => {
            assert_eq!(resp.id, id);
            assert_eq!(resp.rtt, Some(Duration::from_millis(30)));
            assert_eq!(
                resp.message().get::<XorMappedAddress>().unwrap(),
                Some(XorMappedAddress(mapped))
            );
        }
        e => panic!("expected a response, got {e:?}"),
    }
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn client_ids_are_seeded() {
    let t0 = Instant::now();
    let a = addr("10.0.0.1:1");
    let ids = |seed| {
        let mut c = StunClient::new(ClientConfig::default(), seed);
        (0..3)
            .map(|_| c.start(t0, Request::binding(a, a), |_| Ok(())).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids([5; 32]), ids([5; 32]));
    assert_ne!(ids([5; 32]), ids([6; 32]));
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

fn serve(
    server: &mut StunServer,
    from: SocketAddr,
    to: SocketAddr,
    bytes: &[u8],
) -> Option<crate::Transmit> {
    server.handle_input(
        std::time::Instant::now(),
        Received {
            proto: Protocol::Udp,
            source: from,
            destination: to,
            contents: bytes,
        },
    );
    server.poll_transmit()
}

#[test]
fn server_answers_binding_and_rfc5780() {
    let p = addr("203.0.113.1:3478");
    let a = addr("203.0.113.2:3479");
    let mut s = StunServer::new(ServerConfig::rfc5780(p, a)).unwrap();
    assert_eq!(s.local_addresses().len(), 4);
    let client = addr("198.51.100.5:40000");

    let req = request_with(&[]);
    let t = serve(&mut s, client, p, &req).unwrap();
    assert_eq!((t.source, t.destination), (p, client));
    let m = Message::parse(&t.contents).unwrap();
    assert_eq!(
        m.get::<XorMappedAddress>().unwrap(),
        Some(XorMappedAddress(client))
    );
    assert_eq!(
        m.get::<MappedAddress>().unwrap(),
        Some(MappedAddress(client))
    );
    assert_eq!(m.get::<OtherAddress>().unwrap(), Some(OtherAddress(a)));
    assert_eq!(m.get::<ResponseOrigin>().unwrap(), Some(ResponseOrigin(p)));
    m.verify_fingerprint().unwrap();

    let both = request_with(&[(0x0003, &[0, 0, 0, 6])]);
    let t = serve(&mut s, client, p, &both).unwrap();
    assert_eq!(t.source, a);
    let port = request_with(&[(0x0003, &[0, 0, 0, 2])]);
    assert_eq!(
        serve(&mut s, client, p, &port).unwrap().source,
        addr("203.0.113.1:3479")
    );
    let ip = request_with(&[(0x0003, &[0, 0, 0, 4])]);
    assert_eq!(
        serve(&mut s, client, p, &ip).unwrap().source,
        addr("203.0.113.2:3478")
    );
    // Received on the alternate: OTHER-ADDRESS is the primary.
    let t = serve(&mut s, client, a, &req).unwrap();
    assert_eq!(
        Message::parse(&t.contents)
            .unwrap()
            .get::<OtherAddress>()
            .unwrap(),
        Some(OtherAddress(p))
    );
    // RESPONSE-PORT.
    let rp = request_with(&[(0x0027, &[0x12, 0x34, 0, 0])]);
    assert_eq!(
        serve(&mut s, client, p, &rp).unwrap().destination,
        addr("198.51.100.5:4660")
    );
}

#[test]
fn server_answers_an_rfc_3489_binding_request() {
    let p = addr("203.0.113.1:3478");
    let mut s = StunServer::new(ServerConfig::new(p)).unwrap();
    let client = addr("198.51.100.5:40000");
    // No magic cookie: a 16-byte transaction ID, as libnice's gathering sends.
    let mut req = vec![0x00, 0x01, 0x00, 0x00];
    req.extend_from_slice(b"0123456789abcdef");
    let t = serve(&mut s, client, p, &req).expect("an answer");
    assert_eq!((t.source, t.destination), (p, client));
    let b = &t.contents;
    assert_eq!(&b[..2], &[0x01, 0x01], "Binding success");
    assert_eq!(&b[4..20], b"0123456789abcdef", "the ID echoed");
    assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len() - 20);
    // MAPPED-ADDRESS (not XORed): 198.51.100.5:40000, then SOURCE-ADDRESS.
    assert_eq!(&b[20..32], &[0, 1, 0, 8, 0, 1, 0x9c, 0x40, 198, 51, 100, 5]);
    assert_eq!(&b[32..36], &[0, 4, 0, 8]);
    // Without the cookie and not a well-formed Binding request: nothing.
    for bad in [
        &req[..19],
        &[0x00, 0x01, 0x00, 0x04][..],
        &[
            0x01, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ][..],
    ] {
        assert!(serve(&mut s, client, p, bad).is_none(), "{bad:?}");
    }
}

#[test]
fn server_error_paths() {
    let p = addr("127.0.0.1:3478");
    let mut s = StunServer::new(ServerConfig::new(p)).unwrap();
    let client = addr("127.0.0.1:40000");
    // CHANGE-REQUEST without an alternate: 420 listing it.
    let req = request_with(&[(0x0003, &[0, 0, 0, 6]), (0x7123, b"")]);
    let t = serve(&mut s, client, p, &req).unwrap();
    let m = Message::parse(&t.contents).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.get::<ErrorCode<'_>>().unwrap().unwrap().code, 420);
    let u: Vec<_> = m
        .get::<UnknownAttributes<'_>>()
        .unwrap()
        .unwrap()
        .types()
        .collect();
    assert_eq!(u, [AttributeType(0x7123), AttributeType::CHANGE_REQUEST]);
    // Malformed body with a good header: 400.
    let mut bad = request_with(&[(0x8022, b"abcd")]);
    bad[23] = 9;
    let t = serve(&mut s, client, p, &bad).unwrap();
    assert_eq!(
        Message::parse(&t.contents)
            .unwrap()
            .get::<ErrorCode<'_>>()
            .unwrap()
            .unwrap()
            .code,
        400
    );
    // Malformed CHANGE-REQUEST value on an RFC 5780 server: 400.
    let mut s5780 = StunServer::new(ServerConfig::rfc5780(p, addr("127.0.0.2:3479"))).unwrap();
    let bad_cr = request_with(&[(0x0003, &[0, 6])]);
    let t = serve(&mut s5780, client, p, &bad_cr).unwrap();
    assert_eq!(
        Message::parse(&t.contents)
            .unwrap()
            .get::<ErrorCode<'_>>()
            .unwrap()
            .unwrap()
            .code,
        400
    );
    // Garbage, responses and short input: silence.
    assert!(serve(&mut s, client, p, b"hello world, this is not stun").is_none());
    assert!(serve(&mut s, client, p, &hex(RFC5769_RESPONSE_V4)).is_none());
    assert!(serve(&mut s, client, p, &[]).is_none());
    // Bad alternate.
    assert!(StunServer::new(ServerConfig::rfc5780(p, addr("127.0.0.1:1"))).is_err());
}

/// `pinhole serve --alternate` with the default `--primary 0.0.0.0:3478` used to bind
/// 0.0.0.0 and the alternate IP on the same port and fail with an error naming a port
/// nothing used; a wildcard cannot be one of the two IPs an RFC 5780 server answers from.
#[test]
fn server_rfc5780_refuses_wildcards_with_a_plain_reason() {
    for (p, a) in [
        ("0.0.0.0:3478", "192.0.2.2:3479"),
        ("192.0.2.1:3478", "0.0.0.0:3479"),
        ("[::]:3478", "[2001:db8::2]:3479"),
    ] {
        let e = StunServer::new(ServerConfig::rfc5780(addr(p), addr(a))).unwrap_err();
        assert!(matches!(e, StunError::ServerConfig(_)), "{p} {a}: {e:?}");
        assert!(e.to_string().contains("concrete"), "{e}");
    }
    let e = StunServer::new(ServerConfig::rfc5780(
        addr("192.0.2.1:3478"),
        addr("[2001:db8::2]:3479"),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("family"), "{e}");
    let e = StunServer::new(ServerConfig::rfc5780(
        addr("192.0.2.1:3478"),
        addr("192.0.2.2:3478"),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("both IP and port"), "{e}");
    // No attribute numbers in what a user reads.
    assert!(!e.to_string().contains("0x"), "{e}");
}

/// The server used to answer every request from any source at any rate: an amplifier.
#[test]
fn server_limits_each_source() {
    let p = addr("203.0.113.1:3478");
    let mut s = StunServer::new(ServerConfig::new(p)).unwrap();
    let t0 = std::time::Instant::now();
    let attacker = addr("198.51.100.66:5000");
    let other = addr("198.51.100.7:40000");
    let req = request_with(&[]);
    let rx = |from: SocketAddr| Received {
        proto: Protocol::Udp,
        source: from,
        destination: p,
        contents: &req,
    };
    let mut answered = 0;
    for i in 0..1000u16 {
        // Changing the source port does not escape the limit.
        let from = SocketAddr::new(attacker.ip(), 5000 + i);
        s.handle_input(t0, rx(from));
        while s.poll_transmit().is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, crate::stun::DEFAULT_RATE_LIMIT.burst as usize);
    // Others are unaffected.
    s.handle_input(t0, rx(other));
    assert!(s.poll_transmit().is_some());
    // A second later the attacker gets its rate's worth again, no more.
    let t1 = t0 + std::time::Duration::from_secs(1);
    let mut later = 0;
    for _ in 0..1000 {
        s.handle_input(t1, rx(attacker));
        while s.poll_transmit().is_some() {
            later += 1;
        }
    }
    assert_eq!(later, crate::stun::DEFAULT_RATE_LIMIT.per_second as usize);
    // Without a limit (a loopback-only server), everything is answered.
    let mut open = StunServer::new(ServerConfig {
        rate_limit: None,
        ..ServerConfig::new(p)
    })
    .unwrap();
    for _ in 0..1000 {
        open.handle_input(t0, rx(attacker));
        assert!(open.poll_transmit().is_some());
    }
}
