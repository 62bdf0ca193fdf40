//! Typed STUN attributes: RFC 8489, RFC 5780, RFC 8445 (ICE) and RFC 8656 (TURN).
//!
//! Each attribute is a small type implementing [`Attribute`]: it decodes from a value
//! borrowed from the message (strings and byte strings stay borrowed) and encodes into a
//! caller's buffer. Read them with [`Message::get`](super::Message::get) and write them
//! with [`MessageBuilder::add`](super::MessageBuilder::add).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{MAGIC_COOKIE, StunError, TransactionId};

/// A 16-bit attribute type, RFC 8489 §18.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttributeType(pub u16);

macro_rules! attribute_types {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl AttributeType {
            $($(#[$doc])* pub const $name: AttributeType = AttributeType($value);)*

            /// Whether pinhole knows this attribute type.
            pub const fn is_known(self) -> bool {
                matches!(self.0, $($value)|*)
            }

            /// The registered name, if pinhole knows the type.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

attribute_types! {
    /// MAPPED-ADDRESS, RFC 8489 §14.1.
    MAPPED_ADDRESS = 0x0001;
    /// CHANGE-REQUEST, RFC 5780 §7.2.
    CHANGE_REQUEST = 0x0003;
    /// USERNAME, RFC 8489 §14.3.
    USERNAME = 0x0006;
    /// MESSAGE-INTEGRITY, RFC 8489 §14.5.
    MESSAGE_INTEGRITY = 0x0008;
    /// ERROR-CODE, RFC 8489 §14.8.
    ERROR_CODE = 0x0009;
    /// UNKNOWN-ATTRIBUTES, RFC 8489 §14.9.
    UNKNOWN_ATTRIBUTES = 0x000A;
    /// CHANNEL-NUMBER, RFC 8656 §18.1.
    CHANNEL_NUMBER = 0x000C;
    /// LIFETIME, RFC 8656 §18.2.
    LIFETIME = 0x000D;
    /// XOR-PEER-ADDRESS, RFC 8656 §18.3.
    XOR_PEER_ADDRESS = 0x0012;
    /// DATA, RFC 8656 §18.4.
    DATA = 0x0013;
    /// REALM, RFC 8489 §14.9.
    REALM = 0x0014;
    /// NONCE, RFC 8489 §14.10.
    NONCE = 0x0015;
    /// XOR-RELAYED-ADDRESS, RFC 8656 §18.5.
    XOR_RELAYED_ADDRESS = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY, RFC 8656 §18.6.
    REQUESTED_ADDRESS_FAMILY = 0x0017;
    /// EVEN-PORT, RFC 8656 §18.7.
    EVEN_PORT = 0x0018;
    /// REQUESTED-TRANSPORT, RFC 8656 §18.8.
    REQUESTED_TRANSPORT = 0x0019;
    /// DONT-FRAGMENT, RFC 8656 §18.9.
    DONT_FRAGMENT = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256, RFC 8489 §14.6.
    MESSAGE_INTEGRITY_SHA256 = 0x001C;
    /// PASSWORD-ALGORITHM, RFC 8489 §14.12.
    PASSWORD_ALGORITHM = 0x001D;
    /// USERHASH, RFC 8489 §14.4.
    USERHASH = 0x001E;
    /// XOR-MAPPED-ADDRESS, RFC 8489 §14.2.
    XOR_MAPPED_ADDRESS = 0x0020;
    /// RESERVATION-TOKEN, RFC 8656 §18.10.
    RESERVATION_TOKEN = 0x0022;
    /// PRIORITY, RFC 8445 §16.1.
    PRIORITY = 0x0024;
    /// USE-CANDIDATE, RFC 8445 §16.1.
    USE_CANDIDATE = 0x0025;
    /// PADDING, RFC 5780 §7.4.
    PADDING = 0x0026;
    /// RESPONSE-PORT, RFC 5780 §7.5.
    RESPONSE_PORT = 0x0027;
    /// ADDITIONAL-ADDRESS-FAMILY, RFC 8656 §18.11.
    ADDITIONAL_ADDRESS_FAMILY = 0x8000;
    /// ADDRESS-ERROR-CODE, RFC 8656 §18.12.
    ADDRESS_ERROR_CODE = 0x8001;
    /// PASSWORD-ALGORITHMS, RFC 8489 §14.11.
    PASSWORD_ALGORITHMS = 0x8002;
    /// ALTERNATE-DOMAIN, RFC 8489 §14.16.
    ALTERNATE_DOMAIN = 0x8003;
    /// ICMP, RFC 8656 §18.13.
    ICMP = 0x8004;
    /// SOFTWARE, RFC 8489 §14.14.
    SOFTWARE = 0x8022;
    /// ALTERNATE-SERVER, RFC 8489 §14.15.
    ALTERNATE_SERVER = 0x8023;
    /// FINGERPRINT, RFC 8489 §14.7.
    FINGERPRINT = 0x8028;
    /// ICE-CONTROLLED, RFC 8445 §16.1.
    ICE_CONTROLLED = 0x8029;
    /// ICE-CONTROLLING, RFC 8445 §16.1.
    ICE_CONTROLLING = 0x802A;
    /// RESPONSE-ORIGIN, RFC 5780 §7.3.
    RESPONSE_ORIGIN = 0x802B;
    /// OTHER-ADDRESS, RFC 5780 §7.4.
    OTHER_ADDRESS = 0x802C;
    /// MOBILITY-TICKET, RFC 8016 §3.3.
    MOBILITY_TICKET = 0x8030;
}

impl AttributeType {
    /// Types 0x0000–0x7FFF are comprehension-required (RFC 8489 §14).
    pub const fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }
}

/// A typed attribute: how to read its value from a message and write it into one.
pub trait Attribute<'a>: Sized {
    /// The attribute type.
    const TYPE: AttributeType;
    /// Decodes a value (padding excluded). The transaction ID is needed by the XOR
    /// address attributes.
    fn decode(value: &'a [u8], tid: &TransactionId) -> Result<Self, StunError>;
    /// The length of the encoded value, padding excluded.
    fn encoded_len(&self) -> usize;
    /// Writes the value into `out`, which is exactly [`Attribute::encoded_len`] bytes.
    fn encode(&self, out: &mut [u8], tid: &TransactionId);
}

#[inline]
fn invalid(attr: AttributeType, reason: &'static str) -> StunError {
    StunError::InvalidAttribute {
        attr: attr.0,
        reason,
    }
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// Address family numbers, RFC 8489 §14.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 (0x01).
    V4,
    /// IPv6 (0x02).
    V6,
}

impl AddressFamily {
    /// The wire value.
    pub const fn number(self) -> u8 {
        match self {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        }
    }

    fn from_number(attr: AttributeType, n: u8) -> Result<Self, StunError> {
        match n {
            0x01 => Ok(AddressFamily::V4),
            0x02 => Ok(AddressFamily::V6),
            family => Err(StunError::BadAddressFamily {
                attr: attr.0,
                family,
            }),
        }
    }

    /// The family of an IP address.
    pub const fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressFamily::V4,
            IpAddr::V6(_) => AddressFamily::V6,
        }
    }
}

#[inline]
fn address_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

#[inline]
fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&tid.0);
    mask
}

#[inline]
fn decode_address(
    attr: AttributeType,
    value: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, StunError> {
    if value.len() < 4 {
        return Err(invalid(attr, "address shorter than 4 bytes"));
    }
    let family = AddressFamily::from_number(attr, value[1])?;
    let mut port = u16::from_be_bytes([value[2], value[3]]);
    let mask = xor.map(xor_mask);
    if mask.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let body = &value[4..];
    let ip = match family {
        AddressFamily::V4 => {
            let mut b: [u8; 4] = body.try_into().map_err(|_| StunError::BadAddressFamily {
                attr: attr.0,
                family: value[1],
            })?;
            if let Some(m) = mask {
                b.iter_mut().zip(m).for_each(|(x, k)| *x ^= k);
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        AddressFamily::V6 => {
            let mut b: [u8; 16] = body.try_into().map_err(|_| StunError::BadAddressFamily {
                attr: attr.0,
                family: value[1],
            })?;
            if let Some(m) = mask {
                b.iter_mut().zip(m).for_each(|(x, k)| *x ^= k);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
    };
    Ok(SocketAddr::new(ip, port))
}

#[inline]
fn encode_address(addr: &SocketAddr, out: &mut [u8], xor: Option<&TransactionId>) {
    let mask = xor.map(xor_mask);
    out[0] = 0;
    out[1] = AddressFamily::of(&addr.ip()).number();
    let mut port = addr.port();
    if mask.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => out[4..8].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out[4..20].copy_from_slice(&ip.octets()),
    }
    if let Some(m) = mask {
        out[4..].iter_mut().zip(m).for_each(|(x, k)| *x ^= k);
    }
}

macro_rules! address_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident, $xor:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub SocketAddr);

        impl<'a> Attribute<'a> for $name {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], tid: &TransactionId) -> Result<Self, StunError> {
                decode_address(Self::TYPE, value, $xor.then_some(tid)).map($name)
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                address_len(&self.0)
            }
            #[inline]
            fn encode(&self, out: &mut [u8], tid: &TransactionId) {
                encode_address(&self.0, out, $xor.then_some(tid))
            }
        }
    };
}

address_attribute!(
    /// MAPPED-ADDRESS (RFC 8489 §14.1): the reflexive address, not obfuscated.
    MappedAddress, MAPPED_ADDRESS, false);
address_attribute!(
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the reflexive address, XORed with the cookie
    /// and transaction ID so that address-rewriting middleboxes leave it alone.
    XorMappedAddress, XOR_MAPPED_ADDRESS, true);
address_attribute!(
    /// ALTERNATE-SERVER (RFC 8489 §14.15): try this server instead.
    AlternateServer, ALTERNATE_SERVER, false);
address_attribute!(
    /// RESPONSE-ORIGIN (RFC 5780 §7.3): the address the response was sent from.
    ResponseOrigin, RESPONSE_ORIGIN, false);
address_attribute!(
    /// OTHER-ADDRESS (RFC 5780 §7.4): the server's alternate IP and port.
    OtherAddress, OTHER_ADDRESS, false);
address_attribute!(
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3): a peer of a TURN allocation.
    XorPeerAddress, XOR_PEER_ADDRESS, true);
address_attribute!(
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5): the relayed transport address.
    XorRelayedAddress, XOR_RELAYED_ADDRESS, true);

// ---------------------------------------------------------------------------
// Strings and byte strings
// ---------------------------------------------------------------------------

macro_rules! string_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name<'a>(pub &'a str);

        impl<'a> $name<'a> {
            /// The largest value in bytes that RFC 8489 allows.
            pub const MAX_LEN: usize = $max;
        }

        impl<'a> Attribute<'a> for $name<'a> {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
                if value.len() > $max {
                    return Err(invalid(Self::TYPE, "too long"));
                }
                std::str::from_utf8(value)
                    .map($name)
                    .map_err(|_| invalid(Self::TYPE, "not UTF-8"))
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                self.0.len()
            }
            #[inline]
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(self.0.as_bytes())
            }
        }
    };
}

string_attribute!(
    /// USERNAME (RFC 8489 §14.3), under 513 bytes.
    Username, USERNAME, 512);
string_attribute!(
    /// REALM (RFC 8489 §14.9), under 128 characters (763 bytes).
    Realm, REALM, 763);
string_attribute!(
    /// NONCE (RFC 8489 §14.10), under 128 characters (763 bytes).
    Nonce, NONCE, 763);
string_attribute!(
    /// SOFTWARE (RFC 8489 §14.14), under 128 characters (763 bytes).
    Software, SOFTWARE, 763);
string_attribute!(
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16): the domain name of the ALTERNATE-SERVER, for
    /// TLS certificate checks.
    AlternateDomain, ALTERNATE_DOMAIN, 255);

macro_rules! bytes_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name<'a>(pub &'a [u8]);

        impl<'a> Attribute<'a> for $name<'a> {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
                Ok($name(value))
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                self.0.len()
            }
            #[inline]
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(self.0)
            }
        }
    };
}

bytes_attribute!(
    /// DATA (RFC 8656 §18.4): application data in Send and Data indications.
    Data, DATA);
bytes_attribute!(
    /// PADDING (RFC 5780 §7.4): bytes that make a request larger, to probe for
    /// fragmentation.
    Padding, PADDING);

/// MOBILITY-TICKET (RFC 8016 §3.3): an opaque ticket with which a TURN client keeps its
/// allocation when its address changes. Empty in an Allocate request (asking for one,
/// §3.1.1); the server's ticket in Allocate and Refresh success responses (§3.1.2,
/// §3.2.2), and in the Refresh the client sends from its new address (§3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MobilityTicket<'a>(pub &'a [u8]);

impl MobilityTicket<'_> {
    /// The longest ticket pinhole accepts, in bytes. RFC 8016 §3.3 sets no bound (the
    /// value is whatever the server encrypts into it); this one keeps what a client
    /// stores small and leaves room in a Refresh for the credentials (RFC 8489 §14.3,
    /// §14.9, §14.10) within one 1500-byte datagram. coturn's tickets are about 20 bytes.
    pub const MAX_LEN: usize = 512;
}

impl<'a> Attribute<'a> for MobilityTicket<'a> {
    const TYPE: AttributeType = AttributeType::MOBILITY_TICKET;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        if value.len() > Self::MAX_LEN {
            return Err(invalid(Self::TYPE, "too long"));
        }
        Ok(MobilityTicket(value))
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out.copy_from_slice(self.0)
    }
}

/// USERHASH (RFC 8489 §14.4): SHA-256 of the user name and realm, in place of USERNAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserHash<'a>(pub &'a [u8; 32]);

impl<'a> Attribute<'a> for UserHash<'a> {
    const TYPE: AttributeType = AttributeType::USERHASH;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        value
            .try_into()
            .map(UserHash)
            .map_err(|_| invalid(Self::TYPE, "length must be 32"))
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        32
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out.copy_from_slice(self.0)
    }
}

// ---------------------------------------------------------------------------
// Fixed-size integers and flags
// ---------------------------------------------------------------------------

macro_rules! int_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident, $int:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub $int);

        impl<'a> Attribute<'a> for $name {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
                value
                    .try_into()
                    .map(|b| $name(<$int>::from_be_bytes(b)))
                    .map_err(|_| invalid(Self::TYPE, "wrong length"))
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                std::mem::size_of::<$int>()
            }
            #[inline]
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(&self.0.to_be_bytes())
            }
        }
    };
}

int_attribute!(
    /// PRIORITY (RFC 8445 §7.1.1): the priority a peer-reflexive candidate would get.
    Priority, PRIORITY, u32);
int_attribute!(
    /// ICE-CONTROLLED (RFC 8445 §7.1.3): the sender is controlled; the tie-breaker.
    IceControlled, ICE_CONTROLLED, u64);
int_attribute!(
    /// ICE-CONTROLLING (RFC 8445 §7.1.3): the sender is controlling; the tie-breaker.
    IceControlling, ICE_CONTROLLING, u64);
int_attribute!(
    /// LIFETIME (RFC 8656 §18.2): seconds the allocation should last.
    Lifetime, LIFETIME, u32);
int_attribute!(
    /// RESERVATION-TOKEN (RFC 8656 §18.10): a token for a reserved relayed port.
    ReservationToken, RESERVATION_TOKEN, u64);

macro_rules! flag_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name;

        impl<'a> Attribute<'a> for $name {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
                if value.is_empty() {
                    Ok($name)
                } else {
                    Err(invalid(Self::TYPE, "must be empty"))
                }
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                0
            }
            fn encode(&self, _: &mut [u8], _: &TransactionId) {}
        }
    };
}

flag_attribute!(
    /// USE-CANDIDATE (RFC 8445 §7.1.2): the controlling agent nominates this pair.
    UseCandidate, USE_CANDIDATE);
flag_attribute!(
    /// DONT-FRAGMENT (RFC 8656 §18.9): set DF on relayed datagrams.
    DontFragment, DONT_FRAGMENT);

/// A 16-bit value followed by two reserved bytes: the layout of CHANNEL-NUMBER and
/// RESPONSE-PORT.
macro_rules! u16_rffu_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u16);

        impl<'a> Attribute<'a> for $name {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
                match value {
                    [a, b, _, _] => Ok($name(u16::from_be_bytes([*a, *b]))),
                    _ => Err(invalid(Self::TYPE, "length must be 4")),
                }
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                4
            }
            #[inline]
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out[..2].copy_from_slice(&self.0.to_be_bytes());
                out[2..4].fill(0);
            }
        }
    };
}

u16_rffu_attribute!(
    /// CHANNEL-NUMBER (RFC 8656 §18.1): a channel, 0x4000 through 0x4FFF.
    ChannelNumber, CHANNEL_NUMBER);
u16_rffu_attribute!(
    /// RESPONSE-PORT (RFC 5780 §7.5): send the response to this port.
    ResponsePort, RESPONSE_PORT);

/// A family byte followed by three reserved bytes: REQUESTED-ADDRESS-FAMILY and
/// ADDITIONAL-ADDRESS-FAMILY.
macro_rules! family_attribute {
    ($(#[$doc:meta])* $name:ident, $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub AddressFamily);

        impl<'a> Attribute<'a> for $name {
            const TYPE: AttributeType = AttributeType::$ty;
            #[inline]
            fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
                match value {
                    [f, _, _, _] => AddressFamily::from_number(Self::TYPE, *f).map($name),
                    _ => Err(invalid(Self::TYPE, "length must be 4")),
                }
            }
            #[inline]
            fn encoded_len(&self) -> usize {
                4
            }
            #[inline]
            fn encode(&self, out: &mut [u8], _: &TransactionId) {
                out.copy_from_slice(&[self.0.number(), 0, 0, 0]);
            }
        }
    };
}

family_attribute!(
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6): the family of the relayed address.
    RequestedAddressFamily, REQUESTED_ADDRESS_FAMILY);
family_attribute!(
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11): ask for an IPv6 relayed address as well.
    AdditionalAddressFamily, ADDITIONAL_ADDRESS_FAMILY);

/// CHANGE-REQUEST (RFC 5780 §7.2): ask the server to answer from its other IP and/or port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChangeRequest {
    /// Flag A: answer from the alternate IP address.
    pub change_ip: bool,
    /// Flag B: answer from the alternate port.
    pub change_port: bool,
}

impl<'a> Attribute<'a> for ChangeRequest {
    const TYPE: AttributeType = AttributeType::CHANGE_REQUEST;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        match value {
            [_, _, _, flags] => Ok(ChangeRequest {
                change_ip: flags & 0x04 != 0,
                change_port: flags & 0x02 != 0,
            }),
            _ => Err(invalid(Self::TYPE, "length must be 4")),
        }
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        4
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let flags = (u8::from(self.change_ip) << 2) | (u8::from(self.change_port) << 1);
        out.copy_from_slice(&[0, 0, 0, flags]);
    }
}

/// EVEN-PORT (RFC 8656 §18.7): ask for an even relayed port, optionally reserving the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EvenPort {
    /// The R bit: reserve the next-higher port too.
    pub reserve_next: bool,
}

impl<'a> Attribute<'a> for EvenPort {
    const TYPE: AttributeType = AttributeType::EVEN_PORT;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        match value {
            [b] => Ok(EvenPort {
                reserve_next: b & 0x80 != 0,
            }),
            _ => Err(invalid(Self::TYPE, "length must be 1")),
        }
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        1
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[0] = if self.reserve_next { 0x80 } else { 0 };
    }
}

/// REQUESTED-TRANSPORT (RFC 8656 §18.8): the IP protocol number of the relayed transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestedTransport(pub u8);

impl RequestedTransport {
    /// UDP (protocol 17), the only transport RFC 8656 defines.
    pub const UDP: RequestedTransport = RequestedTransport(17);
    /// TCP (protocol 6), RFC 6062.
    pub const TCP: RequestedTransport = RequestedTransport(6);
}

impl<'a> Attribute<'a> for RequestedTransport {
    const TYPE: AttributeType = AttributeType::REQUESTED_TRANSPORT;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        match value {
            [p, _, _, _] => Ok(RequestedTransport(*p)),
            _ => Err(invalid(Self::TYPE, "length must be 4")),
        }
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        4
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out.copy_from_slice(&[self.0, 0, 0, 0]);
    }
}

/// ICMP (RFC 8656 §18.13): an ICMP error the TURN server received for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Icmp {
    /// ICMP type.
    pub kind: u8,
    /// ICMP code.
    pub code: u8,
    /// Error data (for example the MTU of "packet too big").
    pub data: u32,
}

impl<'a> Attribute<'a> for Icmp {
    const TYPE: AttributeType = AttributeType::ICMP;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        match value {
            [_, _, kind, code, d0, d1, d2, d3] => Ok(Icmp {
                kind: *kind,
                code: *code,
                data: u32::from_be_bytes([*d0, *d1, *d2, *d3]),
            }),
            _ => Err(invalid(Self::TYPE, "length must be 8")),
        }
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        8
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[..4].copy_from_slice(&[0, 0, self.kind, self.code]);
        out[4..].copy_from_slice(&self.data.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// Error codes
// ---------------------------------------------------------------------------

fn decode_code(attr: AttributeType, b2: u8, b3: u8) -> Result<u16, StunError> {
    let class = u16::from(b2 & 0x07);
    let number = u16::from(b3);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(invalid(attr, "code outside 300..=699"));
    }
    Ok(class * 100 + number)
}

fn code_bytes(code: u16) -> [u8; 2] {
    // Codes are 300..=699 by construction; other values are written as given mod 100.
    [((code / 100) & 0x07) as u8, (code % 100) as u8]
}

/// ERROR-CODE (RFC 8489 §14.8): a code from 300 to 699 and a reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode<'a> {
    /// The code, 300 to 699.
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

impl ErrorCode<'static> {
    /// 300 Try Alternate.
    pub const TRY_ALTERNATE: ErrorCode<'static> = ErrorCode::new(300, "Try Alternate");
    /// 400 Bad Request.
    pub const BAD_REQUEST: ErrorCode<'static> = ErrorCode::new(400, "Bad Request");
    /// 401 Unauthenticated.
    pub const UNAUTHENTICATED: ErrorCode<'static> = ErrorCode::new(401, "Unauthenticated");
    /// 420 Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: ErrorCode<'static> = ErrorCode::new(420, "Unknown Attribute");
    /// 438 Stale Nonce.
    pub const STALE_NONCE: ErrorCode<'static> = ErrorCode::new(438, "Stale Nonce");
    /// 500 Server Error.
    pub const SERVER_ERROR: ErrorCode<'static> = ErrorCode::new(500, "Server Error");
}

impl<'a> ErrorCode<'a> {
    /// An error code with a reason.
    pub const fn new(code: u16, reason: &'a str) -> Self {
        Self { code, reason }
    }
}

impl<'a> Attribute<'a> for ErrorCode<'a> {
    const TYPE: AttributeType = AttributeType::ERROR_CODE;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        if value.len() < 4 {
            return Err(invalid(Self::TYPE, "shorter than 4 bytes"));
        }
        if value.len() > 4 + 763 {
            return Err(invalid(Self::TYPE, "reason too long"));
        }
        let code = decode_code(Self::TYPE, value[2], value[3])?;
        let reason =
            std::str::from_utf8(&value[4..]).map_err(|_| invalid(Self::TYPE, "not UTF-8"))?;
        Ok(ErrorCode { code, reason })
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        4 + self.reason.len()
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let [c, n] = code_bytes(self.code);
        out[..4].copy_from_slice(&[0, 0, c, n]);
        out[4..].copy_from_slice(self.reason.as_bytes());
    }
}

/// ADDRESS-ERROR-CODE (RFC 8656 §18.12): why an address family could not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressErrorCode<'a> {
    /// The family that failed.
    pub family: AddressFamily,
    /// The code, 300 to 699.
    pub code: u16,
    /// The reason phrase.
    pub reason: &'a str,
}

impl<'a> Attribute<'a> for AddressErrorCode<'a> {
    const TYPE: AttributeType = AttributeType::ADDRESS_ERROR_CODE;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        if value.len() < 4 {
            return Err(invalid(Self::TYPE, "shorter than 4 bytes"));
        }
        if value.len() > 4 + 763 {
            return Err(invalid(Self::TYPE, "reason too long"));
        }
        let family = AddressFamily::from_number(Self::TYPE, value[0])?;
        let code = decode_code(Self::TYPE, value[2], value[3])?;
        let reason =
            std::str::from_utf8(&value[4..]).map_err(|_| invalid(Self::TYPE, "not UTF-8"))?;
        Ok(AddressErrorCode {
            family,
            code,
            reason,
        })
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        4 + self.reason.len()
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        let [c, n] = code_bytes(self.code);
        out[..4].copy_from_slice(&[self.family.number(), 0, c, n]);
        out[4..].copy_from_slice(self.reason.as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------

/// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13): the comprehension-required types a server did not
/// understand. Decoding borrows the list; [`UnknownAttributes::types`] iterates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnknownAttributes<'a> {
    raw: &'a [u8],
}

impl<'a> UnknownAttributes<'a> {
    /// A list to encode, from the wire bytes of big-endian 16-bit types.
    pub fn from_wire(raw: &'a [u8]) -> Option<Self> {
        (raw.len() % 2 == 0).then_some(Self { raw })
    }

    /// The attribute types listed.
    pub fn types(&self) -> impl Iterator<Item = AttributeType> + 'a {
        self.raw
            .chunks_exact(2)
            .map(|c| AttributeType(u16::from_be_bytes([c[0], c[1]])))
    }
}

impl<'a> Attribute<'a> for UnknownAttributes<'a> {
    const TYPE: AttributeType = AttributeType::UNKNOWN_ATTRIBUTES;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        Self::from_wire(value).ok_or(invalid(Self::TYPE, "odd length"))
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        self.raw.len()
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out.copy_from_slice(self.raw)
    }
}

/// PASSWORD-ALGORITHM (RFC 8489 §14.12): the algorithm the client chose, with parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithmAttr<'a> {
    /// The algorithm number (see [`PasswordAlgorithm`](super::PasswordAlgorithm)).
    pub algorithm: u16,
    /// Its parameters (none for MD5 and SHA-256).
    pub params: &'a [u8],
}

impl<'a> Attribute<'a> for PasswordAlgorithmAttr<'a> {
    const TYPE: AttributeType = AttributeType::PASSWORD_ALGORITHM;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        if value.len() < 4 {
            return Err(invalid(Self::TYPE, "shorter than 4 bytes"));
        }
        let algorithm = u16::from_be_bytes([value[0], value[1]]);
        let len = usize::from(u16::from_be_bytes([value[2], value[3]]));
        let params = value
            .get(4..4 + len)
            .ok_or(invalid(Self::TYPE, "parameters overflow"))?;
        Ok(Self { algorithm, params })
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        4 + self.params.len()
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out[..2].copy_from_slice(&self.algorithm.to_be_bytes());
        let len = u16::try_from(self.params.len()).unwrap_or(u16::MAX);
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out[4..].copy_from_slice(self.params);
    }
}

/// PASSWORD-ALGORITHMS (RFC 8489 §14.11): the algorithms a server offers, in order of
/// preference. Decoding validates the list; [`PasswordAlgorithms::iter`] walks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PasswordAlgorithms<'a> {
    raw: &'a [u8],
}

impl<'a> PasswordAlgorithms<'a> {
    /// The wire form of a list of algorithms without parameters, into `out` (4 bytes
    /// each); returns the attribute, borrowing `out`.
    pub fn encode_list(algorithms: &[u16], out: &'a mut [u8]) -> Option<Self> {
        let need = algorithms.len() * 4;
        let out = out.get_mut(..need)?;
        for (chunk, alg) in out.chunks_exact_mut(4).zip(algorithms) {
            chunk[..2].copy_from_slice(&alg.to_be_bytes());
            chunk[2..].fill(0);
        }
        Some(Self { raw: out })
    }

    /// The algorithms offered, with their parameters.
    pub fn iter(&self) -> impl Iterator<Item = PasswordAlgorithmAttr<'a>> + 'a {
        let mut rest = self.raw;
        std::iter::from_fn(move || {
            let a = PasswordAlgorithmAttr::decode(rest, &TransactionId([0; 12])).ok()?;
            let step = (4 + a.params.len() + 3) & !3;
            rest = rest.get(step..).unwrap_or(&[]);
            Some(a)
        })
    }
}

impl<'a> Attribute<'a> for PasswordAlgorithms<'a> {
    const TYPE: AttributeType = AttributeType::PASSWORD_ALGORITHMS;
    #[inline]
    fn decode(value: &'a [u8], _: &TransactionId) -> Result<Self, StunError> {
        let mut rest = value;
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(invalid(Self::TYPE, "truncated entry"));
            }
            let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
            let step = (4 + len + 3) & !3;
            if 4 + len > rest.len() {
                return Err(invalid(Self::TYPE, "parameters overflow"));
            }
            rest = rest.get(step..).unwrap_or(&[]);
        }
        Ok(Self { raw: value })
    }
    #[inline]
    fn encoded_len(&self) -> usize {
        self.raw.len()
    }
    #[inline]
    fn encode(&self, out: &mut [u8], _: &TransactionId) {
        out.copy_from_slice(self.raw)
    }
}
