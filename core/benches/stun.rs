//! STUN codec benchmarks: pinhole against stun-proto (whose message layer is the
//! stun-types crate) and webrtc-rs `stun`, side by side on four workloads:
//!
//! 1. `decode_username_priority`: parse the RFC 5769 §2.1 request and read USERNAME and
//!    PRIORITY.
//! 2. `decode_verify`: parse the same request and check MESSAGE-INTEGRITY (short-term
//!    password) and FINGERPRINT.
//! 3. `decode_xor_mapped_address`: parse the RFC 5769 §2.2 response and read
//!    XOR-MAPPED-ADDRESS.
//! 4. `encode_binding_request`: write a Binding request with USERNAME, PRIORITY,
//!    ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY and FINGERPRINT.
//!
//! Fairness rules: each library uses its fastest idiomatic API; everything a library lets
//! an application prepare once (integrity keys, owned attribute values, reusable message
//! objects and output buffers) is prepared outside the timed loop; inputs and outputs go
//! through `black_box`.
//!
//! Library notes:
//! - stun-types' `Message::from_bytes` checks FINGERPRINT itself, so its workload (2)
//!   needs no separate fingerprint call; it caches the HMAC state inside its
//!   `IntegrityKey`, made once here.
//! - stun-types has no typed PRIORITY / ICE-CONTROLLING / USE-CANDIDATE (those live in
//!   the ICE crate built on it), so they go through its `RawAttribute`, which is what such
//!   typed wrappers do internally.
//! - webrtc-rs `stun` decodes into a reusable `Message` (its fast path); its
//!   MESSAGE-INTEGRITY holds the raw key and builds a `ring` HMAC key on every call, which
//!   its API offers no way to avoid. It has no typed ICE attributes either, so those use
//!   `Message::add` / `Message::get`. Encoding calls each `Setter::add_to` directly rather
//!   than `Message::build`, which would box every setter.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_main};

/// RFC 5769 §2.1: sample request (short-term credentials).
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, // header
    0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
    0x69, 0x65, 0x6e, 0x74, // SOFTWARE
    0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, // PRIORITY
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, // ICE-CONTROLLED
    0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
    0x20, // USERNAME
    0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5,
    0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, // MESSAGE-INTEGRITY
    0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf, // FINGERPRINT
];

/// RFC 5769 §2.2: sample IPv4 response.
const RFC5769_RESPONSE_V4: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, // header
    0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72,
    0x20, // SOFTWARE
    0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6,
    0x43, // XOR-MAPPED-ADDRESS
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, // MESSAGE-INTEGRITY
    0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96, // FINGERPRINT
];

/// The short-term password of the RFC 5769 vectors.
const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
/// The RFC 5769 §2.1 transaction ID, reused for the encoding workload.
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];
const USERNAME: &str = "evtj:h6vY";
const PRIORITY: u32 = 0x6e00_01ff;
const TIE_BREAKER: u64 = 0x932f_f9b1_5126_3b36;
/// What the §2.2 response maps to.
const MAPPED: &str = "192.0.2.1:32853";

const ATTR_PRIORITY: u16 = 0x0024;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const ATTR_ICE_CONTROLLING: u16 = 0x802A;

/// pinhole: zero-copy `Message` over the datagram, typed getters, a caller's buffer for
/// the builder, an `IntegrityKey` with the HMAC pads hashed once.
mod ph {
    use super::*;
    use pinhole::stun::attributes::{
        IceControlling, Priority, UseCandidate, Username, XorMappedAddress,
    };
    use pinhole::stun::{IntegrityKey, Message, MessageBuilder, MessageType, TransactionId};

    pub(crate) fn decode_username_priority(buf: &[u8]) -> (usize, u32) {
        let msg = Message::parse(buf).unwrap();
        let user = msg.get::<Username<'_>>().unwrap().unwrap();
        let prio = msg.get::<Priority>().unwrap().unwrap();
        (user.0.len(), prio.0)
    }

    pub(crate) fn decode_verify(buf: &[u8], key: &IntegrityKey) {
        let msg = Message::parse(buf).unwrap();
        msg.verify_integrity(key).unwrap();
        msg.verify_fingerprint().unwrap();
    }

    pub(crate) fn decode_xor_mapped(buf: &[u8]) -> SocketAddr {
        let msg = Message::parse(buf).unwrap();
        msg.get::<XorMappedAddress>().unwrap().unwrap().0
    }

    pub(crate) fn encode(out: &mut [u8], key: &IntegrityKey) -> usize {
        let mut b =
            MessageBuilder::new(out, MessageType::BINDING_REQUEST, TransactionId(TID)).unwrap();
        b.add(&Username(black_box(USERNAME)))
            .unwrap()
            .add(&Priority(black_box(PRIORITY)))
            .unwrap()
            .add(&IceControlling(black_box(TIE_BREAKER)))
            .unwrap()
            .add(&UseCandidate)
            .unwrap()
            .add_message_integrity(key)
            .unwrap()
            .add_fingerprint()
            .unwrap();
        b.finish().len()
    }

    pub(crate) fn key() -> IntegrityKey {
        IntegrityKey::short_term(PASSWORD).unwrap()
    }
}

/// stun-proto 2 (message layer in stun-types 2): `Message::from_bytes` (which checks
/// FINGERPRINT), typed attributes, `MessageWriteMutSlice` into a caller's buffer, an
/// `IntegrityKey` that caches its HMAC state.
mod sp {
    use super::*;
    use stun_types::attribute::{
        AttributeStaticType, AttributeType, RawAttribute, Username, XorMappedAddress,
    };
    use stun_types::message::{
        BINDING, IntegrityAlgorithm, IntegrityKey, Message, MessageClass,
        MessageIntegrityCredentials, MessageType, MessageWrite, MessageWriteExt,
        MessageWriteMutSlice, ShortTermCredentials,
    };

    pub(crate) fn decode_username_priority(buf: &[u8]) -> (usize, u32) {
        let msg = Message::from_bytes(buf).unwrap();
        let user = msg.attribute::<Username>().unwrap();
        let prio = msg
            .raw_attribute(AttributeType::new(ATTR_PRIORITY))
            .unwrap();
        let prio = u32::from_be_bytes((&*prio.value).try_into().unwrap());
        (user.username().len(), prio)
    }

    pub(crate) fn decode_verify(buf: &[u8], key: &IntegrityKey) {
        // `from_bytes` verifies FINGERPRINT when present.
        let msg = Message::from_bytes(buf).unwrap();
        msg.validate_integrity_with_key(key).unwrap();
    }

    pub(crate) fn decode_xor_mapped(buf: &[u8]) -> SocketAddr {
        let msg = Message::from_bytes(buf).unwrap();
        msg.attribute::<XorMappedAddress>()
            .unwrap()
            .addr(msg.transaction_id())
    }

    /// Attributes an application would hold across requests.
    pub(crate) struct Prepared {
        username: Username,
        key: IntegrityKey,
        tid: stun_types::message::TransactionId,
    }

    pub(crate) fn prepare() -> Prepared {
        let mut tid = [0u8; 16];
        tid[4..].copy_from_slice(&TID);
        Prepared {
            username: Username::new(USERNAME).unwrap(),
            key: key(),
            tid: u128::from_be_bytes(tid).into(),
        }
    }

    pub(crate) fn encode(out: &mut [u8], p: &Prepared) -> usize {
        let mtype = MessageType::from_class_method(MessageClass::Request, BINDING);
        let mut w = Message::builder(mtype, p.tid, MessageWriteMutSlice::new(out));
        let prio = black_box(PRIORITY).to_be_bytes();
        let tie = black_box(TIE_BREAKER).to_be_bytes();
        w.add_attribute(&p.username).unwrap();
        w.add_attribute(&RawAttribute::new(AttributeType::new(ATTR_PRIORITY), &prio))
            .unwrap();
        w.add_attribute(&RawAttribute::new(
            AttributeType::new(ATTR_ICE_CONTROLLING),
            &tie,
        ))
        .unwrap();
        w.add_attribute(&RawAttribute::new(
            AttributeType::new(ATTR_USE_CANDIDATE),
            &[],
        ))
        .unwrap();
        w.add_message_integrity_with_key(&p.key, IntegrityAlgorithm::Sha1)
            .unwrap();
        w.add_fingerprint().unwrap();
        w.finish()
    }

    pub(crate) fn key() -> IntegrityKey {
        MessageIntegrityCredentials::ShortTerm(ShortTermCredentials::new(PASSWORD.to_owned()))
            .make_key(IntegrityAlgorithm::Sha1)
    }

    /// Checks that the typed `Username` really is what the other libraries read.
    pub(crate) fn username_type() -> u16 {
        Username::TYPE.value()
    }
}

/// webrtc-rs `stun` 0.17: decoding into a reused `Message`, `Getter`s, `Setter`s.
mod wr {
    use super::*;
    use stun::attributes::{ATTR_USERNAME, AttrType};
    use stun::fingerprint::FINGERPRINT;
    use stun::integrity::MessageIntegrity;
    use stun::message::{BINDING_REQUEST, Getter, Message, Setter};
    use stun::textattrs::TextAttribute;
    use stun::xoraddr::XorMappedAddress;

    pub(crate) fn decode_username_priority(m: &mut Message, buf: &[u8]) -> (usize, u32) {
        m.unmarshal_binary(buf).unwrap();
        let user = TextAttribute::get_from_as(m, ATTR_USERNAME).unwrap();
        let prio = m.get(AttrType(ATTR_PRIORITY)).unwrap();
        let prio = u32::from_be_bytes(prio[..].try_into().unwrap());
        (user.text.len(), prio)
    }

    pub(crate) fn decode_verify(m: &mut Message, buf: &[u8], integrity: &MessageIntegrity) {
        m.unmarshal_binary(buf).unwrap();
        integrity.check(m).unwrap();
        FINGERPRINT.check(m).unwrap();
    }

    pub(crate) fn decode_xor_mapped(m: &mut Message, buf: &[u8]) -> SocketAddr {
        m.unmarshal_binary(buf).unwrap();
        let mut addr = XorMappedAddress::default();
        addr.get_from(m).unwrap();
        SocketAddr::new(addr.ip, addr.port)
    }

    /// Attributes an application would hold across requests.
    pub(crate) struct Prepared {
        username: TextAttribute,
        integrity: MessageIntegrity,
    }

    pub(crate) fn prepare() -> Prepared {
        Prepared {
            username: TextAttribute::new(ATTR_USERNAME, USERNAME.to_owned()),
            integrity: integrity(),
        }
    }

    pub(crate) fn encode(m: &mut Message, p: &Prepared) -> usize {
        m.reset();
        m.typ = BINDING_REQUEST;
        m.transaction_id = stun::agent::TransactionId(TID);
        m.write_header();
        p.username.add_to(m).unwrap();
        m.add(AttrType(ATTR_PRIORITY), &black_box(PRIORITY).to_be_bytes());
        m.add(
            AttrType(ATTR_ICE_CONTROLLING),
            &black_box(TIE_BREAKER).to_be_bytes(),
        );
        m.add(AttrType(ATTR_USE_CANDIDATE), &[]);
        p.integrity.add_to(m).unwrap();
        FINGERPRINT.add_to(m).unwrap();
        m.raw.len()
    }

    pub(crate) fn integrity() -> MessageIntegrity {
        MessageIntegrity::new_short_term_integrity(PASSWORD.to_owned())
    }
}

/// Before timing anything, checks that every library reads the same values and writes
/// the same bytes, so the workloads really are equivalent.
fn sanity() {
    let mapped: SocketAddr = MAPPED.parse().unwrap();
    let expected = (USERNAME.len(), PRIORITY);
    assert_eq!(ph::decode_username_priority(&RFC5769_REQUEST), expected);
    assert_eq!(sp::decode_username_priority(&RFC5769_REQUEST), expected);
    let mut wm = stun::message::Message::new();
    assert_eq!(
        wr::decode_username_priority(&mut wm, &RFC5769_REQUEST),
        expected
    );
    assert_eq!(sp::username_type(), 0x0006);

    ph::decode_verify(&RFC5769_REQUEST, &ph::key());
    sp::decode_verify(&RFC5769_REQUEST, &sp::key());
    wr::decode_verify(&mut wm, &RFC5769_REQUEST, &wr::integrity());

    assert_eq!(ph::decode_xor_mapped(&RFC5769_RESPONSE_V4), mapped);
    assert_eq!(sp::decode_xor_mapped(&RFC5769_RESPONSE_V4), mapped);
    assert_eq!(wr::decode_xor_mapped(&mut wm, &RFC5769_RESPONSE_V4), mapped);

    let mut a = [0u8; 128];
    let mut b = [0u8; 128];
    let la = ph::encode(&mut a, &ph::key());
    let lb = sp::encode(&mut b, &sp::prepare());
    let lc = wr::encode(&mut wm, &wr::prepare());
    assert_eq!(la, 92);
    assert_eq!(
        &a[..la],
        &b[..lb],
        "pinhole and stun-types encode differently"
    );
    assert_eq!(
        &a[..la],
        &wm.raw[..],
        "pinhole and webrtc-rs encode differently"
    );
    assert_eq!(la, lc);
    // And every library accepts what pinhole wrote.
    ph::decode_verify(&a[..la], &ph::key());
    sp::decode_verify(&a[..la], &sp::key());
    wr::decode_verify(&mut wm, &a[..la], &wr::integrity());
}

fn benches(c: &mut Criterion) {
    sanity();

    let ph_key = ph::key();
    let sp_key = sp::key();
    let wr_integrity = wr::integrity();
    let sp_prepared = sp::prepare();
    let wr_prepared = wr::prepare();
    let mut wm = stun::message::Message::new();
    let mut out = [0u8; 256];

    let mut g = c.benchmark_group("decode_username_priority");
    g.bench_function("pinhole", |b| {
        b.iter(|| black_box(ph::decode_username_priority(black_box(&RFC5769_REQUEST))))
    });
    g.bench_function("stun-proto", |b| {
        b.iter(|| black_box(sp::decode_username_priority(black_box(&RFC5769_REQUEST))))
    });
    g.bench_function("webrtc-stun", |b| {
        b.iter(|| {
            black_box(wr::decode_username_priority(
                &mut wm,
                black_box(&RFC5769_REQUEST),
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decode_verify");
    g.bench_function("pinhole", |b| {
        b.iter(|| ph::decode_verify(black_box(&RFC5769_REQUEST), black_box(&ph_key)))
    });
    g.bench_function("stun-proto", |b| {
        b.iter(|| sp::decode_verify(black_box(&RFC5769_REQUEST), black_box(&sp_key)))
    });
    g.bench_function("webrtc-stun", |b| {
        b.iter(|| {
            wr::decode_verify(
                &mut wm,
                black_box(&RFC5769_REQUEST),
                black_box(&wr_integrity),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decode_xor_mapped_address");
    g.bench_function("pinhole", |b| {
        b.iter(|| black_box(ph::decode_xor_mapped(black_box(&RFC5769_RESPONSE_V4))))
    });
    g.bench_function("stun-proto", |b| {
        b.iter(|| black_box(sp::decode_xor_mapped(black_box(&RFC5769_RESPONSE_V4))))
    });
    g.bench_function("webrtc-stun", |b| {
        b.iter(|| {
            black_box(wr::decode_xor_mapped(
                &mut wm,
                black_box(&RFC5769_RESPONSE_V4),
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("encode_binding_request");
    g.bench_function("pinhole", |b| {
        b.iter(|| {
            let n = ph::encode(black_box(&mut out), black_box(&ph_key));
            black_box(&out[..n]);
        })
    });
    g.bench_function("stun-proto", |b| {
        b.iter(|| {
            let n = sp::encode(black_box(&mut out), black_box(&sp_prepared));
            black_box(&out[..n]);
        })
    });
    g.bench_function("webrtc-stun", |b| {
        b.iter(|| {
            let n = wr::encode(&mut wm, black_box(&wr_prepared));
            black_box(&wm.raw[..n]);
        })
    });
    g.finish();
}

/// The generated group function is `pub`; a private module keeps it out of the
/// `missing_docs` lint's reach.
mod group {
    criterion::criterion_group!(stun_benches, super::benches);
}
criterion_main!(group::stun_benches);
