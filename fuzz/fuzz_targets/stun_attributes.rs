//! Every typed attribute getter, through a real message. The first two bytes pick the
//! attribute type (so unknown types are covered too), the rest is the value. Properties:
//! no panic; whatever decodes, encodes, and decodes again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::stun::attributes::*;
use pinhole::stun::{Message, MessageBuilder, MessageType, TransactionId};

/// Decodes `$t` from the message; if it decodes, encodes it, decodes that, encodes again,
/// and checks both encodings agree.
macro_rules! check {
    ($msg:expr, $t:ty) => {{
        if let Ok(Some(attr)) = $msg.get::<$t>() {
            let tid = $msg.transaction_id();
            let mut out = vec![0u8; attr.encoded_len()];
            attr.encode(&mut out, &tid);
            let again = <$t>::decode(&out, &tid).expect("an encoded attribute decodes");
            let mut out2 = vec![0u8; again.encoded_len()];
            again.encode(&mut out2, &tid);
            assert_eq!(out, out2);
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 || data.len() > 1024 {
        return;
    }
    let kind = AttributeType(u16::from_be_bytes([data[0], data[1]]));
    let value = &data[2..];
    let mut buf = vec![0u8; 2048];
    let tid = TransactionId([0x5a; 12]);
    let mut b = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, tid).unwrap();
    b.add_raw(kind, value).unwrap();
    let bytes = b.finish().to_vec();
    let msg = Message::parse(&bytes).unwrap();
    let _ = msg.has_unknown_comprehension_required();

    check!(msg, MappedAddress);
    check!(msg, XorMappedAddress);
    check!(msg, AlternateServer);
    check!(msg, ResponseOrigin);
    check!(msg, OtherAddress);
    check!(msg, XorPeerAddress);
    check!(msg, XorRelayedAddress);
    check!(msg, Username<'_>);
    check!(msg, Realm<'_>);
    check!(msg, Nonce<'_>);
    check!(msg, Software<'_>);
    check!(msg, AlternateDomain<'_>);
    check!(msg, Data<'_>);
    check!(msg, Padding<'_>);
    check!(msg, UserHash<'_>);
    check!(msg, Priority);
    check!(msg, IceControlled);
    check!(msg, IceControlling);
    check!(msg, Lifetime);
    check!(msg, ReservationToken);
    check!(msg, UseCandidate);
    check!(msg, DontFragment);
    check!(msg, ChannelNumber);
    check!(msg, ResponsePort);
    check!(msg, RequestedAddressFamily);
    check!(msg, AdditionalAddressFamily);
    check!(msg, ChangeRequest);
    check!(msg, EvenPort);
    check!(msg, RequestedTransport);
    check!(msg, Icmp);
    check!(msg, ErrorCode<'_>);
    check!(msg, AddressErrorCode<'_>);
    check!(msg, UnknownAttributes<'_>);
    check!(msg, PasswordAlgorithmAttr<'_>);
    check!(msg, PasswordAlgorithms<'_>);
    check!(msg, MobilityTicket<'_>);
    if let Ok(Some(list)) = msg.get::<PasswordAlgorithms<'_>>() {
        let _ = list.iter().count();
    }
    if let Ok(Some(list)) = msg.get::<UnknownAttributes<'_>>() {
        let _ = list.types().count();
    }
});
