//! ICE candidates (RFC 8445 §5.1): types, priorities, foundations, and the SDP
//! `candidate` attribute (RFC 8839 §5.1, with RFC 6544's `tcptype`) parsed and written.
//!
//! The parser accepts what browsers, libnice, pion, webrtc-rs and str0m write: the
//! attribute with or without `a=` and `candidate:`, any case for the transport, FQDN
//! addresses (mDNS `<uuid>.local` host candidates), `raddr`/`rport`, `tcptype`, and every
//! extension (`generation`, `ufrag`, `network-id`, `network-cost`, unknown ones), which
//! are kept in order and written back. It is bounded: a line longer than
//! [`MAX_LINE_LEN`] or with more than [`MAX_EXTENSIONS`] extensions is refused.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The longest candidate line accepted.
pub const MAX_LINE_LEN: usize = 1024;
/// The most extensions a candidate may carry.
pub const MAX_EXTENSIONS: usize = 16;
/// The longest foundation (RFC 8839 §5.1: 1*32ice-char).
pub const MAX_FOUNDATION_LEN: usize = 32;
/// The longest FQDN accepted as a connection address (RFC 1035 §2.3.4).
pub const MAX_FQDN_LEN: usize = 253;

/// Why a candidate line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CandidateError {
    /// The line is longer than [`MAX_LINE_LEN`] or has too many extensions.
    #[error("candidate line too long")]
    TooLong,
    /// Not a `candidate` attribute.
    #[error("not a candidate attribute")]
    NotCandidate,
    /// A field is missing.
    #[error("candidate: missing {0}")]
    Missing(&'static str),
    /// A field does not have its grammar's form.
    #[error("candidate: bad {field} {value:?}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What it held (shortened).
        value: String,
    },
    /// A transport other than UDP and TCP (RFC 8839 allows extensions; nobody uses one).
    #[error("candidate: unsupported transport {0:?}")]
    UnsupportedTransport(String),
    /// A candidate type other than host, srflx, prflx and relay.
    #[error("candidate: unknown type {0:?}")]
    UnknownType(String),
}

fn invalid(field: &'static str, value: &str) -> CandidateError {
    CandidateError::Invalid {
        field,
        value: value.chars().take(64).collect(),
    }
}

/// The candidate type (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateKind {
    /// An address of a local interface.
    Host,
    /// A NAT's address as a STUN server saw it (also a port mapping's external address).
    ServerReflexive,
    /// Learned from a connectivity check.
    PeerReflexive,
    /// A TURN relayed address.
    Relayed,
}

impl CandidateKind {
    /// The SDP name: `host`, `srflx`, `prflx`, `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::ServerReflexive => "srflx",
            Self::PeerReflexive => "prflx",
            Self::Relayed => "relay",
        }
    }

    /// The recommended type preference (RFC 8445 §5.1.2.2).
    pub fn type_preference(self) -> u32 {
        match self {
            Self::Host => 126,
            Self::PeerReflexive => 110,
            Self::ServerReflexive => 100,
            Self::Relayed => 0,
        }
    }
}

impl CandidateKind {
    /// The type preference of a TCP candidate of this kind (RFC 6544 §4.2: below UDP's
    /// of the same kind, so that UDP is tried first and preferred; above a relayed UDP
    /// candidate's, so that a direct TCP path beats the relay).
    pub fn tcp_type_preference(self) -> u32 {
        match self {
            Self::Host => 80,
            Self::PeerReflexive => 70,
            Self::ServerReflexive => 60,
            Self::Relayed => 0,
        }
    }

    /// The type preference for a candidate of this kind on `transport`.
    pub fn type_preference_on(self, transport: CandidateTransport) -> u32 {
        match transport {
            CandidateTransport::Udp => self.type_preference(),
            CandidateTransport::Tcp => self.tcp_type_preference(),
        }
    }
}

impl FromStr for CandidateKind {
    type Err = CandidateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // RFC 5234 §2.3: ABNF literals are case-insensitive.
        Ok(match s.to_ascii_lowercase().as_str() {
            "host" => Self::Host,
            "srflx" => Self::ServerReflexive,
            "prflx" => Self::PeerReflexive,
            "relay" => Self::Relayed,
            _ => {
                let other = s;
                return Err(CandidateError::UnknownType(
                    other.chars().take(32).collect(),
                ));
            }
        })
    }
}

/// The candidate's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateTransport {
    /// UDP.
    Udp,
    /// TCP (RFC 6544).
    Tcp,
}

impl CandidateTransport {
    /// The SDP token, `UDP` or `TCP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

/// RFC 6544 §4.5: how a TCP candidate connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpType {
    /// Opens connections, never accepts them.
    Active,
    /// Accepts connections.
    Passive,
    /// Simultaneous open.
    SimultaneousOpen,
}

impl TcpType {
    /// The SDP token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Passive => "passive",
            Self::SimultaneousOpen => "so",
        }
    }
}

/// A connection address: an IP address, or a name (an mDNS `.local` host candidate,
/// RFC 8839 §5.1 allows an FQDN) to be resolved before use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CandidateAddress {
    /// An IP address.
    Ip(IpAddr),
    /// A host name, lower-cased.
    Name(String),
}

impl CandidateAddress {
    /// The IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(*ip),
            Self::Name(_) => None,
        }
    }

    /// Whether it is an mDNS name (`….local`, RFC 6762).
    pub fn is_mdns(&self) -> bool {
        matches!(self, Self::Name(n) if n.ends_with(".local"))
    }
}

impl fmt::Display for CandidateAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

impl FromStr for CandidateAddress {
    type Err = CandidateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        // An FQDN: labels of letters, digits and hyphens (and a lenient underscore).
        let ok = !s.is_empty()
            && s.len() <= MAX_FQDN_LEN
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            && s.bytes().any(|b| b.is_ascii_alphabetic());
        if ok {
            Ok(Self::Name(s.to_ascii_lowercase()))
        } else {
            Err(invalid("connection-address", s))
        }
    }
}

/// One ICE candidate. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Equal for candidates of the same type, base, server and transport (RFC 8445
    /// §5.1.1.3). 1 to 32 ice-chars.
    pub foundation: String,
    /// The component (1 to 256; 1 for a single data stream).
    pub component: u16,
    /// UDP or TCP.
    pub transport: CandidateTransport,
    /// The priority (RFC 8445 §5.1.2).
    pub priority: u32,
    /// The address.
    pub address: CandidateAddress,
    /// The port (9, the discard port, for an active TCP candidate: RFC 6544 §4.5).
    pub port: u16,
    /// The type.
    pub kind: CandidateKind,
    /// `raddr`/`rport`: the base or mapped address it was derived from (not for host).
    pub related: Option<(CandidateAddress, u16)>,
    /// RFC 6544's `tcptype`, for TCP candidates.
    pub tcp_type: Option<TcpType>,
    /// Every other extension, in order: `generation`, `ufrag`, `network-id`,
    /// `network-cost` and unknown ones.
    pub extensions: Vec<(String, String)>,
}

/// RFC 8445 §5.1.2.1: `2^24 × type preference + 2^8 × local preference + (256 − component)`.
pub fn priority(kind: CandidateKind, local_preference: u16, component: u16) -> u32 {
    let component = u32::from(component.clamp(1, 256));
    (kind.type_preference() << 24) + (u32::from(local_preference) << 8) + (256 - component)
}

/// A foundation (RFC 8445 §5.1.1.3) for a candidate of `kind` and `transport` whose base
/// has `base_ip`, obtained through `server` (the STUN or TURN server's IP, if any): equal
/// inputs give equal foundations, and different inputs almost surely different ones.
pub fn foundation(
    kind: CandidateKind,
    transport: CandidateTransport,
    base_ip: IpAddr,
    server: Option<IpAddr>,
) -> String {
    // FNV-1a, 64 bits: stable across runs and platforms (no randomized std hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(kind.as_str().as_bytes());
    eat(transport.as_str().as_bytes());
    let ip_bytes = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    eat(&ip_bytes(base_ip));
    if let Some(s) = server {
        eat(b"/");
        eat(&ip_bytes(s));
    }
    // Ten decimal digits: ice-chars, short, and what browsers' foundations look like.
    format!("{}", h % 10_000_000_000)
}

fn is_ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

impl Candidate {
    /// A candidate with the recommended priority for `local_preference`, component 1,
    /// and the foundation of its kind, base and server.
    pub fn new(
        kind: CandidateKind,
        transport: CandidateTransport,
        address: SocketAddr,
        base: IpAddr,
        server: Option<IpAddr>,
        local_preference: u16,
    ) -> Self {
        Self {
            foundation: foundation(kind, transport, base, server),
            component: 1,
            transport,
            priority: priority(kind, local_preference, 1),
            address: CandidateAddress::Ip(address.ip()),
            port: address.port(),
            kind,
            related: None,
            tcp_type: None,
            extensions: Vec::new(),
        }
    }

    /// A TCP candidate (RFC 6544 §4): `address` is where it accepts connections or
    /// connects from (its port is written as 9 for an active one, §4.5), and its priority
    /// follows §4.2: the local preference is `2^13 × direction preference +
    /// other_preference`, with the direction preference of §4.2 (host: active 6, passive
    /// 4, so 2; behind a NAT, server-reflexive and peer-reflexive: so 6, active 4,
    /// passive 2), `other_preference` below 2^13 ranking the bases.
    pub fn tcp(
        kind: CandidateKind,
        tcp_type: TcpType,
        address: SocketAddr,
        base: IpAddr,
        server: Option<IpAddr>,
        other_preference: u16,
    ) -> Self {
        let direction: u16 = match (kind, tcp_type) {
            (CandidateKind::Host | CandidateKind::Relayed, TcpType::Active) => 6,
            (CandidateKind::Host | CandidateKind::Relayed, TcpType::Passive) => 4,
            (CandidateKind::Host | CandidateKind::Relayed, TcpType::SimultaneousOpen) => 2,
            (_, TcpType::SimultaneousOpen) => 6,
            (_, TcpType::Active) => 4,
            (_, TcpType::Passive) => 2,
        };
        let local_preference = (direction << 13) | (other_preference & 0x1FFF);
        let mut c = Self::new(
            kind,
            CandidateTransport::Tcp,
            address,
            base,
            server,
            local_preference,
        );
        c.priority = (kind.tcp_type_preference() << 24) + (u32::from(local_preference) << 8) + 255;
        c.tcp_type = Some(tcp_type);
        if tcp_type == TcpType::Active {
            c.port = 9;
        }
        c
    }

    /// The transport address, when the address is an IP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// An extension's value (`generation`, `ufrag`, …).
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses a candidate attribute: `a=candidate:…`, `candidate:…` or the value alone
    /// (RFC 8839 §5.1). Surrounding white space and a trailing CR are ignored.
    pub fn parse(line: &str) -> Result<Self, CandidateError> {
        if line.len() > MAX_LINE_LEN {
            return Err(CandidateError::TooLong);
        }
        // ASCII white space only: what the writer puts between fields. (Trimming
        // Unicode spaces would eat the end of a last extension value, so that a line
        // written with that value in the middle would not read back the same.)
        let line = line.trim_ascii();
        let line = line.strip_prefix("a=").unwrap_or(line);
        // `name:value`, unless what precedes the first colon has spaces: then it is the
        // value alone, with an IPv6 address in it.
        let value = match line.split_once(':') {
            Some((name, rest)) if !name.contains(char::is_whitespace) => {
                if !name.eq_ignore_ascii_case("candidate") {
                    return Err(CandidateError::NotCandidate);
                }
                rest
            }
            _ => line,
        };
        let mut it = value.split_ascii_whitespace();
        let mut next = |what: &'static str| it.next().ok_or(CandidateError::Missing(what));
        let foundation = next("foundation")?;
        if foundation.is_empty()
            || foundation.len() > MAX_FOUNDATION_LEN
            || !foundation.bytes().all(is_ice_char)
        {
            return Err(invalid("foundation", foundation));
        }
        let component_s = next("component-id")?;
        let component: u16 = component_s
            .parse()
            .ok()
            .filter(|c| (1..=256).contains(c) && component_s.len() <= 3)
            .ok_or_else(|| invalid("component-id", component_s))?;
        let transport_s = next("transport")?;
        let transport = if transport_s.eq_ignore_ascii_case("udp") {
            CandidateTransport::Udp
        } else if transport_s.eq_ignore_ascii_case("tcp") {
            CandidateTransport::Tcp
        } else {
            return Err(CandidateError::UnsupportedTransport(
                transport_s.chars().take(32).collect(),
            ));
        };
        let priority_s = next("priority")?;
        let priority: u32 = priority_s
            .parse()
            .ok()
            .filter(|_| priority_s.len() <= 10 && priority_s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| invalid("priority", priority_s))?;
        let address: CandidateAddress = next("connection-address")?.parse()?;
        let port = parse_port(next("port")?)?;
        let typ = next("typ")?;
        if !typ.eq_ignore_ascii_case("typ") {
            return Err(invalid("typ", typ));
        }
        let kind: CandidateKind = next("candidate type")?.parse()?;
        let mut c = Self {
            foundation: foundation.to_owned(),
            component,
            transport,
            priority,
            address,
            port,
            kind,
            related: None,
            tcp_type: None,
            extensions: Vec::new(),
        };
        let mut raddr = None;
        let mut rport = None;
        while let Some(name) = it.next() {
            let value = it
                .next()
                .ok_or(CandidateError::Missing("extension value"))?;
            // RFC 5234 §2.3: the literals `raddr`, `rport`, `tcptype` and its values are
            // case-insensitive; what is written is lower case.
            let known = ["raddr", "rport", "tcptype"]
                .into_iter()
                .find(|k| name.eq_ignore_ascii_case(k));
            match known {
                Some("raddr") if raddr.is_none() => {
                    raddr = Some(value.parse::<CandidateAddress>()?);
                }
                Some("rport") if rport.is_none() => rport = Some(parse_port(value)?),
                Some("tcptype") if c.tcp_type.is_none() => {
                    c.tcp_type = Some(match value.to_ascii_lowercase().as_str() {
                        "active" => TcpType::Active,
                        "passive" => TcpType::Passive,
                        "so" => TcpType::SimultaneousOpen,
                        _ => return Err(invalid("tcptype", value)),
                    });
                }
                _ => {
                    if c.extensions.len() >= MAX_EXTENSIONS {
                        return Err(CandidateError::TooLong);
                    }
                    // RFC 8839 §5.1: a token, and *VCHAR; beyond ASCII is let through
                    // (it writes back as it came), control characters are not.
                    if !name.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(invalid("extension name", name));
                    }
                    if value.chars().any(char::is_control) {
                        return Err(invalid("extension value", value));
                    }
                    c.extensions.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        c.related = match (raddr, rport) {
            (Some(a), Some(p)) => Some((a, p)),
            (None, None) => None,
            // RFC 8839 §5.1 wants both; some stacks write only raddr. Keep what can be
            // used; an rport without its address means nothing.
            (Some(a), None) => Some((a, 0)),
            (None, Some(_)) => return Err(invalid("rport", "without raddr")),
        };
        if transport == CandidateTransport::Udp && c.tcp_type.is_some() {
            return Err(invalid("tcptype", "on a UDP candidate"));
        }
        Ok(c)
    }

    /// The attribute value, `candidate:…` (write `a=` before it for SDP).
    pub fn to_attribute(&self) -> String {
        self.to_string()
    }
}

fn parse_port(s: &str) -> Result<u16, CandidateError> {
    s.parse::<u16>()
        .ok()
        .filter(|_| s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| invalid("port", s))
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "candidate:{} {} {} {} {} {} typ {}",
            self.foundation,
            self.component,
            self.transport.as_str(),
            self.priority,
            self.address,
            self.port,
            self.kind.as_str()
        )?;
        if let Some((a, p)) = &self.related {
            write!(f, " raddr {a} rport {p}")?;
        }
        if let Some(t) = self.tcp_type {
            write!(f, " tcptype {}", t.as_str())?;
        }
        for (n, v) in &self.extensions {
            write!(f, " {n} {v}")?;
        }
        Ok(())
    }
}

impl FromStr for Candidate {
    type Err = CandidateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(line: &str) -> Candidate {
        let c = Candidate::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let again = Candidate::parse(&c.to_string()).unwrap();
        assert_eq!(again, c, "{line}");
        c
    }

    #[test]
    fn what_peers_write_parses_and_round_trips() {
        // Chromium, with mDNS and its extensions.
        let c = roundtrip(
            "a=candidate:2894919582 1 udp 2113937151 7e1c2f0a-3b4d-4c5e-8f9a-0b1c2d3e4f50.local 54321 typ host generation 0 ufrag EsAw network-cost 999",
        );
        assert!(c.address.is_mdns());
        assert_eq!(c.kind, CandidateKind::Host);
        assert_eq!(c.extension("ufrag"), Some("EsAw"));
        assert_eq!(c.extension("network-cost"), Some("999"));
        // Firefox srflx.
        let c = roundtrip(
            "candidate:1 1 UDP 1686052607 203.0.113.5 61665 typ srflx raddr 192.168.1.2 rport 61665",
        );
        assert_eq!(
            c.related,
            Some((CandidateAddress::Ip("192.168.1.2".parse().unwrap()), 61665))
        );
        assert_eq!(c.socket_addr(), Some("203.0.113.5:61665".parse().unwrap()));
        // libnice relay and TCP with tcptype.
        roundtrip(
            "candidate:5 1 UDP 16777215 198.51.100.4 49200 typ relay raddr 203.0.113.5 rport 5000",
        );
        let c = roundtrip(
            "candidate:3 1 TCP 1015022079 192.168.1.2 9 typ host tcptype active generation 0 network-id 1",
        );
        assert_eq!(c.tcp_type, Some(TcpType::Active));
        assert_eq!(c.extension("network-id"), Some("1"));
        // IPv6, a value alone, CRLF, and an unknown extension kept.
        let c = roundtrip(
            "candidate:a+b/c 2 udp 1 2001:db8::1 1 typ prflx raddr :: rport 0 x-future yes\r",
        );
        assert_eq!(c.component, 2);
        assert_eq!(c.extension("x-future"), Some("yes"));
        roundtrip("1 1 udp 100 192.0.2.1 1000 typ host");
    }

    /// Lines as each stack writes them (formats from their documentation and source:
    /// libwebrtc's `SdpSerializeCandidate`, Firefox's nICEr `nr_ice_format_candidate_attribute`,
    /// libnice's `nice_agent_generate_local_candidate_sdp`, pion's `Candidate.Marshal`),
    /// with the fields each one sets.
    #[test]
    fn real_stacks_lines_parse_keep_everything_and_round_trip() {
        struct Want {
            line: &'static str,
            transport: CandidateTransport,
            kind: CandidateKind,
            address: &'static str,
            port: u16,
            related: Option<(&'static str, u16)>,
            tcp_type: Option<TcpType>,
            extensions: &'static [(&'static str, &'static str)],
        }
        use CandidateKind::*;
        use CandidateTransport::*;
        let wants = [
            // Chrome: srflx with every extension it writes.
            Want {
                line: "a=candidate:842163049 1 udp 1677729535 203.0.113.5 46154 typ srflx raddr 192.168.1.5 rport 46154 generation 0 ufrag EsAw network-id 1 network-cost 10",
                transport: Udp,
                kind: ServerReflexive,
                address: "203.0.113.5",
                port: 46154,
                related: Some(("192.168.1.5", 46154)),
                tcp_type: None,
                extensions: &[
                    ("generation", "0"),
                    ("ufrag", "EsAw"),
                    ("network-id", "1"),
                    ("network-cost", "10"),
                ],
            },
            // Chrome: mDNS host.
            Want {
                line: "candidate:1840965416 1 udp 2113937151 4ac7ab5e-92a1-4f0b-9a2d-6f7c0e4b8a11.local 56117 typ host generation 0 ufrag EsAw network-cost 999",
                transport: Udp,
                kind: Host,
                address: "4ac7ab5e-92a1-4f0b-9a2d-6f7c0e4b8a11.local",
                port: 56117,
                related: None,
                tcp_type: None,
                extensions: &[
                    ("generation", "0"),
                    ("ufrag", "EsAw"),
                    ("network-cost", "999"),
                ],
            },
            // Chrome: srflx behind mDNS (the related address hidden as 0.0.0.0 0).
            Want {
                line: "candidate:3006307946 1 udp 1677729535 198.51.100.20 50713 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag EsAw network-cost 999",
                transport: Udp,
                kind: ServerReflexive,
                address: "198.51.100.20",
                port: 50713,
                related: Some(("0.0.0.0", 0)),
                tcp_type: None,
                extensions: &[
                    ("generation", "0"),
                    ("ufrag", "EsAw"),
                    ("network-cost", "999"),
                ],
            },
            // Chrome: IPv6 host, and a TCP active host (port 9, RFC 6544 §4.5 discard).
            Want {
                line: "candidate:2999745851 1 udp 2122262783 2001:db8:85a3::8a2e:370:7334 58481 typ host generation 0 ufrag EsAw network-id 2",
                transport: Udp,
                kind: Host,
                address: "2001:db8:85a3::8a2e:370:7334",
                port: 58481,
                related: None,
                tcp_type: None,
                extensions: &[("generation", "0"), ("ufrag", "EsAw"), ("network-id", "2")],
            },
            Want {
                line: "candidate:1467250027 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active generation 0 ufrag EsAw network-id 1 network-cost 10",
                transport: Tcp,
                kind: Host,
                address: "192.168.1.5",
                port: 9,
                related: None,
                tcp_type: Some(TcpType::Active),
                extensions: &[
                    ("generation", "0"),
                    ("ufrag", "EsAw"),
                    ("network-id", "1"),
                    ("network-cost", "10"),
                ],
            },
            // Chrome: relay.
            Want {
                line: "candidate:1052359862 1 udp 33562367 198.51.100.4 61090 typ relay raddr 203.0.113.5 rport 46154 generation 0 ufrag EsAw network-id 1",
                transport: Udp,
                kind: Relayed,
                address: "198.51.100.4",
                port: 61090,
                related: Some(("203.0.113.5", 46154)),
                tcp_type: None,
                extensions: &[("generation", "0"), ("ufrag", "EsAw"), ("network-id", "1")],
            },
            // Firefox: mDNS host, srflx, TCP passive and so.
            Want {
                line: "candidate:0 1 UDP 2122252543 b3e1c2d4-5f60-4a7b-8c9d-0e1f2a3b4c5d.local 49203 typ host",
                transport: Udp,
                kind: Host,
                address: "b3e1c2d4-5f60-4a7b-8c9d-0e1f2a3b4c5d.local",
                port: 49203,
                related: None,
                tcp_type: None,
                extensions: &[],
            },
            Want {
                line: "candidate:1 1 UDP 1686052863 203.0.113.5 49203 typ srflx raddr 0.0.0.0 rport 0",
                transport: Udp,
                kind: ServerReflexive,
                address: "203.0.113.5",
                port: 49203,
                related: Some(("0.0.0.0", 0)),
                tcp_type: None,
                extensions: &[],
            },
            Want {
                line: "candidate:2 1 TCP 2105524479 192.168.1.5 9 typ host tcptype active",
                transport: Tcp,
                kind: Host,
                address: "192.168.1.5",
                port: 9,
                related: None,
                tcp_type: Some(TcpType::Active),
                extensions: &[],
            },
            Want {
                line: "candidate:3 1 TCP 2105458943 192.168.1.5 52614 typ host tcptype passive",
                transport: Tcp,
                kind: Host,
                address: "192.168.1.5",
                port: 52614,
                related: None,
                tcp_type: Some(TcpType::Passive),
                extensions: &[],
            },
            // libnice: IPv6 link-local host, TCP so with a related address.
            Want {
                line: "a=candidate:1 1 UDP 2015363327 fe80::2c0:ffff:fe00:1 40123 typ host",
                transport: Udp,
                kind: Host,
                address: "fe80::2c0:ffff:fe00:1",
                port: 40123,
                related: None,
                tcp_type: None,
                extensions: &[],
            },
            Want {
                line: "a=candidate:7 1 TCP 1684796415 203.0.113.5 40200 typ srflx raddr 192.168.1.5 rport 40200 tcptype so",
                transport: Tcp,
                kind: ServerReflexive,
                address: "203.0.113.5",
                port: 40200,
                related: Some(("192.168.1.5", 40200)),
                tcp_type: Some(TcpType::SimultaneousOpen),
                extensions: &[],
            },
            // pion: the value alone (no `candidate:`), TCP passive, and a prflx.
            Want {
                line: "1966762133 1 udp 2130706431 192.168.1.5 60540 typ host",
                transport: Udp,
                kind: Host,
                address: "192.168.1.5",
                port: 60540,
                related: None,
                tcp_type: None,
                extensions: &[],
            },
            Want {
                line: "candidate:1052353102 1 tcp 1675624447 192.168.1.5 8443 typ host tcptype passive",
                transport: Tcp,
                kind: Host,
                address: "192.168.1.5",
                port: 8443,
                related: None,
                tcp_type: Some(TcpType::Passive),
                extensions: &[],
            },
            Want {
                line: "candidate:3493287136 1 udp 1845501695 203.0.113.9 51000 typ prflx raddr 0.0.0.0 rport 51000 generation 0",
                transport: Udp,
                kind: PeerReflexive,
                address: "203.0.113.9",
                port: 51000,
                related: Some(("0.0.0.0", 51000)),
                tcp_type: None,
                extensions: &[("generation", "0")],
            },
            // The ABNF's literals are case-insensitive (RFC 5234 §2.3); an unknown
            // extension is kept in its place.
            Want {
                line: "candidate:9 1 UDP 100 192.0.2.1 1000 TYP SRFLX RADDR 10.0.0.1 RPORT 5 x-vendor a=b;c generation 3",
                transport: Udp,
                kind: ServerReflexive,
                address: "192.0.2.1",
                port: 1000,
                related: Some(("10.0.0.1", 5)),
                tcp_type: None,
                extensions: &[("x-vendor", "a=b;c"), ("generation", "3")],
            },
        ];
        for w in wants {
            let c = roundtrip(w.line);
            assert_eq!(c.transport, w.transport, "{}", w.line);
            assert_eq!(c.kind, w.kind, "{}", w.line);
            assert_eq!(c.address, w.address.parse().unwrap(), "{}", w.line);
            assert_eq!(c.port, w.port, "{}", w.line);
            assert_eq!(
                c.related,
                w.related.map(|(a, p)| (a.parse().unwrap(), p)),
                "{}",
                w.line
            );
            assert_eq!(c.tcp_type, w.tcp_type, "{}", w.line);
            let ext: Vec<(&str, &str)> = c
                .extensions
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            assert_eq!(ext, w.extensions, "{}", w.line);
            // What is written is what the stacks expect: lower-case keywords, the
            // extensions after the related address and tcptype, in order.
            let written = c.to_string();
            assert!(written.starts_with("candidate:"), "{written}");
            assert!(written.contains(&format!(" typ {}", c.kind.as_str())));
            if !w.extensions.is_empty() {
                let tail: String = w
                    .extensions
                    .iter()
                    .map(|(n, v)| format!(" {n} {v}"))
                    .collect();
                assert!(written.ends_with(&tail), "{written}");
            }
        }
    }

    /// Regressions: trimming Unicode spaces ate the end of a last extension value, so that
    /// a candidate written with that value in the middle read back different; a control
    /// character in a value (which would be written into SDP) was accepted.
    #[test]
    fn values_write_back_exactly() {
        let c = roundtrip("candidate:1 1 udp 1 192.0.2.1 1 typ host a x\u{2003} b y");
        assert_eq!(c.extension("a"), Some("x\u{2003}"));
        let last =
            Candidate::parse("candidate:1 1 udp 1 192.0.2.1 1 typ host a x\u{2003}").unwrap();
        assert_eq!(last.extension("a"), Some("x\u{2003}"));
        assert_eq!(Candidate::parse(&last.to_string()).unwrap(), last);
        assert!(matches!(
            Candidate::parse("candidate:1 1 udp 1 192.0.2.1 1 typ host a x\u{7}y"),
            Err(CandidateError::Invalid {
                field: "extension value",
                ..
            })
        ));
    }

    #[test]
    fn bad_lines_get_typed_errors() {
        for (line, want) in [
            ("candidate:", CandidateError::Missing("foundation")),
            (
                "candidate:1 1 udp 1 192.0.2.1 1 typ",
                CandidateError::Missing("candidate type"),
            ),
            (
                "candidate:1 1 sctp 1 192.0.2.1 1 typ host",
                CandidateError::UnsupportedTransport("sctp".into()),
            ),
            (
                "candidate:1 1 udp 1 192.0.2.1 1 typ weird",
                CandidateError::UnknownType("weird".into()),
            ),
            ("a=ice-ufrag:abcd", CandidateError::NotCandidate),
            (
                "candidate:1 1 udp 1 192.0.2.1 1 typ host generation",
                CandidateError::Missing("extension value"),
            ),
        ] {
            assert_eq!(Candidate::parse(line), Err(want), "{line}");
        }
        for line in [
            "candidate:1 0 udp 1 192.0.2.1 1 typ host",
            "candidate:1 257 udp 1 192.0.2.1 1 typ host",
            "candidate:1 1 udp 4294967296 192.0.2.1 1 typ host",
            "candidate:1 1 udp -1 192.0.2.1 1 typ host",
            "candidate:1 1 udp 1 192.0.2.1 65536 typ host",
            "candidate:1 1 udp 1 192.0.2.1 +1 typ host",
            "candidate:1 1 udp 1 bad..name 1 typ host",
            "candidate:1 1 udp 1 1.2.3 1 typ host",
            "candidate:1 1 udp 1 192.0.2.1 1 type host",
            "candidate:f*o 1 udp 1 192.0.2.1 1 typ host",
            "candidate:1 1 udp 1 192.0.2.1 1 typ host tcptype active",
            "candidate:1 1 tcp 1 192.0.2.1 1 typ host tcptype both",
        ] {
            assert!(
                matches!(Candidate::parse(line), Err(CandidateError::Invalid { .. })),
                "{line}: {:?}",
                Candidate::parse(line)
            );
        }
        let long = format!(
            "candidate:1 1 udp 1 192.0.2.1 1 typ host{}",
            " a b".repeat(400)
        );
        assert_eq!(Candidate::parse(&long), Err(CandidateError::TooLong));
        let many = format!(
            "candidate:1 1 udp 1 192.0.2.1 1 typ host{}",
            " a b".repeat(17)
        );
        assert_eq!(Candidate::parse(&many), Err(CandidateError::TooLong));
    }

    #[test]
    fn priorities_follow_rfc_8445() {
        // RFC 8445 §5.1.2.1 with the recommended type preferences.
        assert_eq!(priority(CandidateKind::Host, 65535, 1), 2_130_706_431);
        assert_eq!(
            priority(CandidateKind::ServerReflexive, 65535, 1),
            1_694_498_815
        );
        assert_eq!(priority(CandidateKind::Relayed, 65535, 1), 16_777_215);
        assert_eq!(
            priority(CandidateKind::PeerReflexive, 65535, 2),
            1_862_270_974
        );
        assert!(
            priority(CandidateKind::Host, 0, 1) > priority(CandidateKind::PeerReflexive, 65535, 1)
        );
    }

    #[test]
    fn foundations_are_equal_exactly_when_rfc_8445_says() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let f = |k, t, b, s| foundation(k, t, ip(b), s);
        let udp = CandidateTransport::Udp;
        let a = f(
            CandidateKind::ServerReflexive,
            udp,
            "10.0.0.2",
            Some(ip("203.0.113.1")),
        );
        assert_eq!(
            a,
            f(
                CandidateKind::ServerReflexive,
                udp,
                "10.0.0.2",
                Some(ip("203.0.113.1"))
            )
        );
        for other in [
            f(
                CandidateKind::ServerReflexive,
                udp,
                "10.0.0.3",
                Some(ip("203.0.113.1")),
            ),
            f(
                CandidateKind::ServerReflexive,
                udp,
                "10.0.0.2",
                Some(ip("203.0.113.2")),
            ),
            f(
                CandidateKind::Relayed,
                udp,
                "10.0.0.2",
                Some(ip("203.0.113.1")),
            ),
            f(
                CandidateKind::ServerReflexive,
                CandidateTransport::Tcp,
                "10.0.0.2",
                Some(ip("203.0.113.1")),
            ),
            f(CandidateKind::Host, udp, "10.0.0.2", None),
        ] {
            assert_ne!(a, other);
        }
        assert!(a.len() <= MAX_FOUNDATION_LEN && a.bytes().all(is_ice_char));
        let c = Candidate::new(
            CandidateKind::Host,
            udp,
            "192.0.2.1:5000".parse().unwrap(),
            ip("192.0.2.1"),
            None,
            65535,
        );
        assert_eq!(Candidate::parse(&c.to_string()).unwrap(), c);
    }
}
