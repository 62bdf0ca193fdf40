//! pinhole's STUN hot paths do not touch the heap: decoding and reading attributes,
//! checking MESSAGE-INTEGRITY and FINGERPRINT, and building an authenticated request.
//!
//! A counting global allocator (`common`) wraps the system one.

use std::net::SocketAddr;

use pinhole::stun::attributes::{
    IceControlling, Priority, UseCandidate, Username, XorMappedAddress,
};
use pinhole::stun::{IntegrityKey, Message, MessageBuilder, MessageType, TransactionId};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

use common::allocations_during;

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

const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
const TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

fn decode_username_priority(buf: &[u8]) -> (usize, u32) {
    let msg = Message::parse(buf).unwrap();
    let user = msg.get::<Username<'_>>().unwrap().unwrap();
    let prio = msg.get::<Priority>().unwrap().unwrap();
    (user.0.len(), prio.0)
}

fn decode_verify(buf: &[u8], key: &IntegrityKey) {
    let msg = Message::parse(buf).unwrap();
    msg.verify_integrity(key).unwrap();
    msg.verify_fingerprint().unwrap();
}

fn decode_xor_mapped(buf: &[u8]) -> SocketAddr {
    let msg = Message::parse(buf).unwrap();
    msg.get::<XorMappedAddress>().unwrap().unwrap().0
}

fn encode(out: &mut [u8], key: &IntegrityKey) -> usize {
    let mut b = MessageBuilder::new(out, MessageType::BINDING_REQUEST, TransactionId(TID)).unwrap();
    b.add(&Username("evtj:h6vY"))
        .unwrap()
        .add(&Priority(0x6e00_01ff))
        .unwrap()
        .add(&IceControlling(0x932f_f9b1_5126_3b36))
        .unwrap()
        .add(&UseCandidate)
        .unwrap()
        .add_message_integrity(key)
        .unwrap()
        .add_fingerprint()
        .unwrap();
    b.finish().len()
}

/// One test runs all four workloads, in sequence on one thread.
#[test]
fn stun_hot_paths_do_not_allocate() {
    // Preparation may allocate: the key, and any lazily initialised runtime state (CPU
    // feature detection for SHA and CRC, which is static anyway). Run each workload once
    // first so that such one-off work is not counted.
    let key = IntegrityKey::short_term(PASSWORD).unwrap();
    let mut out = [0u8; 256];
    let mapped: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(decode_username_priority(&RFC5769_REQUEST), (9, 0x6e00_01ff));
    decode_verify(&RFC5769_REQUEST, &key);
    assert_eq!(decode_xor_mapped(&RFC5769_RESPONSE_V4), mapped);
    assert_eq!(encode(&mut out, &key), 92);

    // The counter works: an allocation on this thread is seen.
    let (n, v) = allocations_during(|| std::hint::black_box(vec![1u8; 16]));
    assert!(n >= 1, "the counting allocator missed an allocation");
    drop(v);

    let (n, r) = allocations_during(|| decode_username_priority(&RFC5769_REQUEST));
    assert_eq!(r, (9, 0x6e00_01ff));
    assert_eq!(n, 0, "decode + USERNAME + PRIORITY allocated {n} times");

    let (n, ()) = allocations_during(|| decode_verify(&RFC5769_REQUEST, &key));
    assert_eq!(
        n, 0,
        "decode + MESSAGE-INTEGRITY + FINGERPRINT allocated {n} times"
    );

    let (n, addr) = allocations_during(|| decode_xor_mapped(&RFC5769_RESPONSE_V4));
    assert_eq!(addr, mapped);
    assert_eq!(n, 0, "decode + XOR-MAPPED-ADDRESS allocated {n} times");

    let (n, len) = allocations_during(|| encode(&mut out, &key));
    assert_eq!(len, 92);
    assert_eq!(n, 0, "encoding the Binding request allocated {n} times");
    // What was written is a valid, authenticated message.
    decode_verify(&out[..len], &key);
}
