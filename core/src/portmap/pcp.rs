//! PCP wire format, RFC 6887: the common header, ANNOUNCE, MAP and PEER, options skipped
//! safely. Parse and emit side by side.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{MapProtocol, PortmapError};

/// PCP's version number, RFC 6887 §7.
pub const VERSION: u8 = 2;
/// The largest PCP message, RFC 6887 §7.
pub const MAX_MESSAGE_LEN: usize = 1100;
/// Common header length, RFC 6887 §7.1 and §7.2.
pub const HEADER_LEN: usize = 24;
/// MAP opcode data length, RFC 6887 §11.1.
pub const MAP_LEN: usize = 36;
/// PEER opcode data length, RFC 6887 §12.1.
pub const PEER_LEN: usize = 56;
/// The R bit: set in responses.
const RESPONSE_BIT: u8 = 0x80;

/// PCP opcodes, RFC 6887 §19.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// ANNOUNCE (0): learn the server's epoch; no mapping.
    Announce,
    /// MAP (1): an inbound mapping.
    Map,
    /// PEER (2): a mapping toward one remote peer.
    Peer,
}

impl Opcode {
    const fn number(self) -> u8 {
        match self {
            Opcode::Announce => 0,
            Opcode::Map => 1,
            Opcode::Peer => 2,
        }
    }
}

/// A PCP result code, RFC 6887 §7.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u8);

impl ResultCode {
    /// 0 SUCCESS.
    pub const SUCCESS: ResultCode = ResultCode(0);
    /// 1 UNSUPP_VERSION.
    pub const UNSUPP_VERSION: ResultCode = ResultCode(1);
    /// 2 NOT_AUTHORIZED.
    pub const NOT_AUTHORIZED: ResultCode = ResultCode(2);
    /// 3 MALFORMED_REQUEST.
    pub const MALFORMED_REQUEST: ResultCode = ResultCode(3);
    /// 4 UNSUPP_OPCODE.
    pub const UNSUPP_OPCODE: ResultCode = ResultCode(4);
    /// 5 UNSUPP_OPTION.
    pub const UNSUPP_OPTION: ResultCode = ResultCode(5);
    /// 6 MALFORMED_OPTION.
    pub const MALFORMED_OPTION: ResultCode = ResultCode(6);
    /// 7 NETWORK_FAILURE.
    pub const NETWORK_FAILURE: ResultCode = ResultCode(7);
    /// 8 NO_RESOURCES.
    pub const NO_RESOURCES: ResultCode = ResultCode(8);
    /// 9 UNSUPP_PROTOCOL.
    pub const UNSUPP_PROTOCOL: ResultCode = ResultCode(9);
    /// 10 USER_EX_QUOTA.
    pub const USER_EX_QUOTA: ResultCode = ResultCode(10);
    /// 11 CANNOT_PROVIDE_EXTERNAL.
    pub const CANNOT_PROVIDE_EXTERNAL: ResultCode = ResultCode(11);
    /// 12 ADDRESS_MISMATCH.
    pub const ADDRESS_MISMATCH: ResultCode = ResultCode(12);
    /// 13 EXCESSIVE_REMOTE_PEERS.
    pub const EXCESSIVE_REMOTE_PEERS: ResultCode = ResultCode(13);

    /// The RFC's name.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 14] = [
            "SUCCESS",
            "UNSUPP_VERSION",
            "NOT_AUTHORIZED",
            "MALFORMED_REQUEST",
            "UNSUPP_OPCODE",
            "UNSUPP_OPTION",
            "MALFORMED_OPTION",
            "NETWORK_FAILURE",
            "NO_RESOURCES",
            "UNSUPP_PROTOCOL",
            "USER_EX_QUOTA",
            "CANNOT_PROVIDE_EXTERNAL",
            "ADDRESS_MISMATCH",
            "EXCESSIVE_REMOTE_PEERS",
        ];
        NAMES.get(usize::from(self.0)).copied().unwrap_or("unknown")
    }

    /// Long-lifetime errors (RFC 6887 §7.4): retrying soon will not help.
    pub fn is_long_lifetime(self) -> bool {
        matches!(self.0, 1..=6 | 9 | 12)
    }
}

/// MAP opcode data (RFC 6887 §11.1); also the first part of PEER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapData {
    /// The mapping nonce: responses must echo it.
    pub nonce: [u8; 12],
    /// The protocol (UDP or TCP).
    pub protocol: MapProtocol,
    /// The internal port.
    pub internal_port: u16,
    /// Requests: the suggested external port (0 for any). Responses: the assigned one.
    pub external_port: u16,
    /// Requests: the suggested external address (unspecified for any). Responses: the
    /// assigned one.
    pub external_ip: IpAddr,
}

/// PEER opcode data (RFC 6887 §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerData {
    /// The mapping part.
    pub map: MapData,
    /// The remote peer.
    pub remote: SocketAddr,
}

/// Opcode-specific data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpData {
    /// ANNOUNCE carries none.
    Announce,
    /// MAP.
    Map(MapData),
    /// PEER.
    Peer(PeerData),
}

impl OpData {
    fn opcode(&self) -> Opcode {
        match self {
            OpData::Announce => Opcode::Announce,
            OpData::Map(_) => Opcode::Map,
            OpData::Peer(_) => Opcode::Peer,
        }
    }

    fn len(&self) -> usize {
        match self {
            OpData::Announce => 0,
            OpData::Map(_) => MAP_LEN,
            OpData::Peer(_) => PEER_LEN,
        }
    }

    fn emit(&self, out: &mut [u8]) {
        let map = match self {
            OpData::Announce => return,
            OpData::Map(m) => m,
            OpData::Peer(p) => &p.map,
        };
        out[..12].copy_from_slice(&map.nonce);
        out[12] = map.protocol.ip_number();
        out[13..16].fill(0);
        out[16..18].copy_from_slice(&map.internal_port.to_be_bytes());
        out[18..20].copy_from_slice(&map.external_port.to_be_bytes());
        out[20..36].copy_from_slice(&ip_to_wire(map.external_ip));
        if let OpData::Peer(p) = self {
            out[36..38].copy_from_slice(&p.remote.port().to_be_bytes());
            out[38..40].fill(0);
            out[40..56].copy_from_slice(&ip_to_wire(p.remote.ip()));
        }
    }

    fn parse(opcode: u8, b: &[u8]) -> Result<(Self, usize), PortmapError> {
        let map = |b: &[u8]| -> Result<MapData, PortmapError> {
            let b = b.get(..MAP_LEN).ok_or(PortmapError::Truncated)?;
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(&b[..12]);
            Ok(MapData {
                nonce,
                protocol: MapProtocol::from_ip_number(b[12])
                    .ok_or(PortmapError::Malformed("unsupported protocol"))?,
                internal_port: u16::from_be_bytes([b[16], b[17]]),
                external_port: u16::from_be_bytes([b[18], b[19]]),
                external_ip: ip_from_wire(&b[20..36]),
            })
        };
        match opcode {
            0 => Ok((OpData::Announce, 0)),
            1 => Ok((OpData::Map(map(b)?), MAP_LEN)),
            2 => {
                let m = map(b)?;
                let b = b.get(..PEER_LEN).ok_or(PortmapError::Truncated)?;
                let port = u16::from_be_bytes([b[36], b[37]]);
                let ip = ip_from_wire(&b[40..56]);
                Ok((
                    OpData::Peer(PeerData {
                        map: m,
                        remote: SocketAddr::new(ip, port),
                    }),
                    PEER_LEN,
                ))
            }
            op => Err(PortmapError::UnexpectedOpcode(op)),
        }
    }
}

/// An address on the wire: 16 bytes, IPv4 as IPv4-mapped IPv6 (RFC 6887 §5).
pub fn ip_to_wire(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`ip_to_wire`]: IPv4-mapped addresses become IPv4.
pub fn ip_from_wire(b: &[u8]) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// "Any IPv4 address" as a suggestion: `::ffff:0.0.0.0` (RFC 6887 §11.1).
pub const ANY_V4: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// A PCP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Requested lifetime in seconds (0 deletes).
    pub lifetime: u32,
    /// The client's own IP address: the source address of the request, which the server
    /// checks (ADDRESS_MISMATCH otherwise).
    pub client_ip: IpAddr,
    /// The opcode and its data.
    pub data: OpData,
}

impl Request {
    /// Writes the request into `out` (at least 80 bytes); returns its length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, PortmapError> {
        let len = HEADER_LEN + self.data.len();
        let out = out.get_mut(..len).ok_or(PortmapError::Truncated)?;
        out[0] = VERSION;
        out[1] = self.data.opcode().number();
        out[2..4].fill(0);
        out[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        out[8..24].copy_from_slice(&ip_to_wire(self.client_ip));
        self.data.emit(&mut out[HEADER_LEN..]);
        Ok(len)
    }

    /// Parses a request (fake gateways in tests, the fuzzer).
    pub fn parse(buf: &[u8]) -> Result<Self, PortmapError> {
        check_frame(buf)?;
        if buf[1] & RESPONSE_BIT != 0 {
            return Err(PortmapError::Malformed(
                "response where a request was expected",
            ));
        }
        let (data, _) = OpData::parse(buf[1], &buf[HEADER_LEN..])?;
        Ok(Self {
            lifetime: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            client_ip: ip_from_wire(&buf[8..24]),
            data,
        })
    }
}

/// A PCP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The result.
    pub result: ResultCode,
    /// Granted lifetime (success) or how long the error lasts (failure), seconds.
    pub lifetime: u32,
    /// The server's epoch time, seconds (RFC 6887 §8.5).
    pub epoch: u32,
    /// The opcode.
    pub opcode: Opcode,
    /// Opcode data; error responses may leave it out.
    pub data: Option<OpData>,
}

fn check_frame(buf: &[u8]) -> Result<(), PortmapError> {
    if buf.len() < 2 {
        return Err(PortmapError::Truncated);
    }
    if buf[0] != VERSION {
        return Err(PortmapError::UnsupportedVersion(buf[0]));
    }
    if buf.len() < HEADER_LEN {
        return Err(PortmapError::Truncated);
    }
    if buf.len() > MAX_MESSAGE_LEN || buf.len() % 4 != 0 {
        return Err(PortmapError::Malformed(
            "length not a multiple of 4 up to 1100",
        ));
    }
    Ok(())
}

/// Walks the options after the opcode data; they are skipped, only their framing is
/// checked (RFC 6887 §7.3).
fn check_options(mut b: &[u8]) -> Result<(), PortmapError> {
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(PortmapError::Malformed("truncated option header"));
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let padded = 4 + ((len + 3) & !3);
        b = b
            .get(padded..)
            .ok_or(PortmapError::Malformed("option overflows the message"))?;
    }
    Ok(())
}

impl Response {
    /// Parses a response datagram. A version-0 datagram means the gateway speaks only
    /// NAT-PMP: [`PortmapError::UnsupportedVersion`]`(0)`.
    pub fn parse(buf: &[u8]) -> Result<Self, PortmapError> {
        check_frame(buf)?;
        if buf[1] & RESPONSE_BIT == 0 {
            return Err(PortmapError::NotAResponse);
        }
        let op = buf[1] & !RESPONSE_BIT;
        let opcode = match op {
            0 => Opcode::Announce,
            1 => Opcode::Map,
            2 => Opcode::Peer,
            op => return Err(PortmapError::UnexpectedOpcode(op)),
        };
        let result = ResultCode(buf[3]);
        let lifetime = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let epoch = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let body = &buf[HEADER_LEN..];
        let data = match OpData::parse(op, body) {
            Ok((data, used)) => {
                check_options(&body[used..])?;
                Some(data)
            }
            Err(PortmapError::Truncated) if result != ResultCode::SUCCESS => None,
            Err(e) => return Err(e),
        };
        Ok(Self {
            result,
            lifetime,
            epoch,
            opcode,
            data,
        })
    }

    /// Writes the response into `out` (at least 80 bytes); returns its length.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, PortmapError> {
        let data_len = self.data.as_ref().map_or(0, OpData::len);
        let len = HEADER_LEN + data_len;
        let out = out.get_mut(..len).ok_or(PortmapError::Truncated)?;
        out[0] = VERSION;
        out[1] = RESPONSE_BIT | self.opcode.number();
        out[2] = 0;
        out[3] = self.result.0;
        out[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        out[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        out[12..24].fill(0);
        if let Some(d) = &self.data {
            d.emit(&mut out[HEADER_LEN..]);
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(nonce: u8) -> MapData {
        MapData {
            nonce: [nonce; 12],
            protocol: MapProtocol::Udp,
            internal_port: 5000,
            external_port: 0,
            external_ip: ANY_V4,
        }
    }

    #[test]
    fn round_trips() {
        let client_ip = "192.168.1.20".parse().unwrap();
        for data in [
            OpData::Announce,
            OpData::Map(map(1)),
            OpData::Peer(PeerData {
                map: map(2),
                remote: "198.51.100.7:4444".parse().unwrap(),
            }),
        ] {
            let req = Request {
                lifetime: 7200,
                client_ip,
                data,
            };
            let mut b = [0u8; 128];
            let n = req.emit(&mut b).unwrap();
            assert_eq!(n % 4, 0);
            assert_eq!(Request::parse(&b[..n]).unwrap(), req);
            let resp = Response {
                result: ResultCode::SUCCESS,
                lifetime: 3600,
                epoch: 99,
                opcode: data.opcode(),
                data: Some(data),
            };
            let n = resp.emit(&mut b).unwrap();
            assert_eq!(Response::parse(&b[..n]).unwrap(), resp);
        }
    }

    #[test]
    fn wire_layout_of_map() {
        let mut b = [0u8; 80];
        let n = Request {
            lifetime: 7200,
            client_ip: "10.0.0.2".parse().unwrap(),
            data: OpData::Map(map(0xaa)),
        }
        .emit(&mut b)
        .unwrap();
        assert_eq!(n, 60);
        assert_eq!(&b[..4], &[2, 1, 0, 0]);
        assert_eq!(&b[4..8], &7200u32.to_be_bytes());
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2]
        );
        assert_eq!(b[36], 17);
        assert_eq!(
            &b[44..60],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(Response::parse(&[2]), Err(PortmapError::Truncated));
        // A NAT-PMP gateway's answer: version 0.
        assert_eq!(
            Response::parse(&[0, 129, 0, 1, 0, 0, 0, 0]),
            Err(PortmapError::UnsupportedVersion(0))
        );
        let mut b = [0u8; 80];
        let resp = Response {
            result: ResultCode::SUCCESS,
            lifetime: 1,
            epoch: 1,
            opcode: Opcode::Map,
            data: Some(OpData::Map(map(3))),
        };
        let n = resp.emit(&mut b).unwrap();
        // Truncated success.
        assert_eq!(Response::parse(&b[..n - 4]), Err(PortmapError::Truncated));
        // Not a multiple of 4.
        assert!(matches!(
            Response::parse(&b[..n - 1]),
            Err(PortmapError::Malformed(_))
        ));
        // A request is not a response.
        b[1] = 1;
        assert_eq!(Response::parse(&b[..n]), Err(PortmapError::NotAResponse));
        // An option overflowing the message.
        let mut v = b[..n].to_vec();
        v[1] = 0x81;
        v.extend_from_slice(&[1, 0, 0, 40]);
        assert!(matches!(
            Response::parse(&v),
            Err(PortmapError::Malformed(_))
        ));
        // An option that fits is skipped.
        let mut v = b[..n].to_vec();
        v[1] = 0x81;
        v.extend_from_slice(&[3, 0, 0, 4, 9, 9, 9, 9]);
        assert!(Response::parse(&v).is_ok());
        // An error response may stop after the header.
        let mut e = [0u8; 24];
        e[0] = 2;
        e[1] = 0x81;
        e[3] = ResultCode::NOT_AUTHORIZED.0;
        let r = Response::parse(&e).unwrap();
        assert_eq!((r.result, r.data), (ResultCode::NOT_AUTHORIZED, None));
    }
}
