//! NAT-PMP wire format, RFC 6886: requests and responses, parse and emit side by side.

use std::net::Ipv4Addr;

use super::{MapProtocol, PortmapError};

/// The gateway's NAT-PMP (and PCP) port, RFC 6886 §3.1.
pub const SERVER_PORT: u16 = 5351;
/// NAT-PMP's version number.
pub const VERSION: u8 = 0;
/// Opcode of the external address request, RFC 6886 §3.2.
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode of a UDP mapping request, RFC 6886 §3.3.
pub const OP_MAP_UDP: u8 = 1;
/// Opcode of a TCP mapping request, RFC 6886 §3.3.
pub const OP_MAP_TCP: u8 = 2;
/// Added to the request opcode in responses, RFC 6886 §3.2.
pub const RESPONSE_BIT: u8 = 128;

/// A NAT-PMP result code, RFC 6886 §3.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u16);

impl ResultCode {
    /// 0: success.
    pub const SUCCESS: ResultCode = ResultCode(0);
    /// 1: unsupported version.
    pub const UNSUPPORTED_VERSION: ResultCode = ResultCode(1);
    /// 2: not authorized / refused (e.g. mapping disabled by the user).
    pub const NOT_AUTHORIZED: ResultCode = ResultCode(2);
    /// 3: network failure (e.g. no external address yet).
    pub const NETWORK_FAILURE: ResultCode = ResultCode(3);
    /// 4: out of resources.
    pub const OUT_OF_RESOURCES: ResultCode = ResultCode(4);
    /// 5: unsupported opcode.
    pub const UNSUPPORTED_OPCODE: ResultCode = ResultCode(5);

    /// The RFC's name for the code.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "success",
            1 => "unsupported version",
            2 => "not authorized",
            3 => "network failure",
            4 => "out of resources",
            5 => "unsupported opcode",
            _ => "unknown result code",
        }
    }
}

/// A NAT-PMP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Ask for the external address.
    ExternalAddress,
    /// Create, renew (same ports) or delete (lifetime 0) a mapping.
    Map {
        /// UDP or TCP.
        protocol: MapProtocol,
        /// The internal port.
        internal_port: u16,
        /// The external port wanted (0: any; the gateway may choose another).
        suggested_external_port: u16,
        /// Seconds; 0 deletes. RFC 6886 recommends 7200.
        lifetime: u32,
    },
}

impl Request {
    /// Writes the request into `out`; returns its length (2 or 12 bytes).
    pub fn emit(&self, out: &mut [u8; 12]) -> usize {
        match *self {
            Request::ExternalAddress => {
                out[..2].copy_from_slice(&[VERSION, OP_EXTERNAL_ADDRESS]);
                2
            }
            Request::Map {
                protocol,
                internal_port,
                suggested_external_port,
                lifetime,
            } => {
                out[0] = VERSION;
                out[1] = match protocol {
                    MapProtocol::Udp => OP_MAP_UDP,
                    MapProtocol::Tcp => OP_MAP_TCP,
                };
                out[2..4].fill(0);
                out[4..6].copy_from_slice(&internal_port.to_be_bytes());
                out[6..8].copy_from_slice(&suggested_external_port.to_be_bytes());
                out[8..12].copy_from_slice(&lifetime.to_be_bytes());
                12
            }
        }
    }

    /// Parses a request (used by fake gateways in tests and by the fuzzer).
    pub fn parse(buf: &[u8]) -> Result<Self, PortmapError> {
        if buf.len() < 2 {
            return Err(PortmapError::Truncated);
        }
        if buf[0] != VERSION {
            return Err(PortmapError::UnsupportedVersion(buf[0]));
        }
        match buf[1] {
            OP_EXTERNAL_ADDRESS => Ok(Request::ExternalAddress),
            op @ (OP_MAP_UDP | OP_MAP_TCP) => {
                let b: &[u8; 12] = buf
                    .get(..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(PortmapError::Truncated)?;
                Ok(Request::Map {
                    protocol: if op == OP_MAP_UDP {
                        MapProtocol::Udp
                    } else {
                        MapProtocol::Tcp
                    },
                    internal_port: u16::from_be_bytes([b[4], b[5]]),
                    suggested_external_port: u16::from_be_bytes([b[6], b[7]]),
                    lifetime: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                })
            }
            op => Err(PortmapError::UnexpectedOpcode(op)),
        }
    }
}

/// What a NAT-PMP response carries besides the common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// An external address response.
    ExternalAddress(Ipv4Addr),
    /// A mapping response.
    Map {
        /// UDP or TCP.
        protocol: MapProtocol,
        /// The internal port.
        internal_port: u16,
        /// The external port the gateway chose.
        external_port: u16,
        /// Seconds granted.
        lifetime: u32,
    },
    /// An error response, which may stop after the header (RFC 6886 §3.5).
    Error {
        /// The opcode of the request it answers.
        opcode: u8,
    },
}

/// A NAT-PMP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The result code.
    pub result: ResultCode,
    /// Seconds since the gateway's mapping table was (re)initialised.
    pub epoch: u32,
    /// The rest.
    pub body: ResponseBody,
}

impl Response {
    /// Parses a response datagram.
    pub fn parse(buf: &[u8]) -> Result<Self, PortmapError> {
        if buf.len() < 8 {
            return Err(PortmapError::Truncated);
        }
        if buf[0] != VERSION {
            return Err(PortmapError::UnsupportedVersion(buf[0]));
        }
        let op = buf[1];
        if op < RESPONSE_BIT {
            return Err(PortmapError::NotAResponse);
        }
        let result = ResultCode(u16::from_be_bytes([buf[2], buf[3]]));
        let epoch = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let opcode = op - RESPONSE_BIT;
        if result != ResultCode::SUCCESS {
            return Ok(Self {
                result,
                epoch,
                body: ResponseBody::Error { opcode },
            });
        }
        let body = match opcode {
            OP_EXTERNAL_ADDRESS => {
                let ip: [u8; 4] = buf
                    .get(8..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(PortmapError::Truncated)?;
                ResponseBody::ExternalAddress(Ipv4Addr::from(ip))
            }
            OP_MAP_UDP | OP_MAP_TCP => {
                let b = buf.get(8..16).ok_or(PortmapError::Truncated)?;
                ResponseBody::Map {
                    protocol: if opcode == OP_MAP_UDP {
                        MapProtocol::Udp
                    } else {
                        MapProtocol::Tcp
                    },
                    internal_port: u16::from_be_bytes([b[0], b[1]]),
                    external_port: u16::from_be_bytes([b[2], b[3]]),
                    lifetime: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                }
            }
            op => return Err(PortmapError::UnexpectedOpcode(op)),
        };
        Ok(Self {
            result,
            epoch,
            body,
        })
    }

    /// Writes the response into `out`; returns its length (8, 12 or 16 bytes).
    pub fn emit(&self, out: &mut [u8; 16]) -> usize {
        out[0] = VERSION;
        out[2..4].copy_from_slice(&self.result.0.to_be_bytes());
        out[4..8].copy_from_slice(&self.epoch.to_be_bytes());
        match self.body {
            ResponseBody::ExternalAddress(ip) => {
                out[1] = RESPONSE_BIT + OP_EXTERNAL_ADDRESS;
                out[8..12].copy_from_slice(&ip.octets());
                12
            }
            ResponseBody::Map {
                protocol,
                internal_port,
                external_port,
                lifetime,
            } => {
                out[1] = RESPONSE_BIT
                    + match protocol {
                        MapProtocol::Udp => OP_MAP_UDP,
                        MapProtocol::Tcp => OP_MAP_TCP,
                    };
                out[8..10].copy_from_slice(&internal_port.to_be_bytes());
                out[10..12].copy_from_slice(&external_port.to_be_bytes());
                out[12..16].copy_from_slice(&lifetime.to_be_bytes());
                16
            }
            ResponseBody::Error { opcode } => {
                out[1] = RESPONSE_BIT | opcode;
                8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for req in [
            Request::ExternalAddress,
            Request::Map {
                protocol: MapProtocol::Tcp,
                internal_port: 8080,
                suggested_external_port: 0,
                lifetime: 7200,
            },
        ] {
            let mut b = [0u8; 12];
            let n = req.emit(&mut b);
            assert_eq!(Request::parse(&b[..n]).unwrap(), req);
        }
        for resp in [
            Response {
                result: ResultCode::SUCCESS,
                epoch: 77,
                body: ResponseBody::ExternalAddress(Ipv4Addr::new(203, 0, 113, 9)),
            },
            Response {
                result: ResultCode::SUCCESS,
                epoch: 78,
                body: ResponseBody::Map {
                    protocol: MapProtocol::Udp,
                    internal_port: 1,
                    external_port: 2,
                    lifetime: 3,
                },
            },
            Response {
                result: ResultCode::NOT_AUTHORIZED,
                epoch: 1,
                body: ResponseBody::Error { opcode: 1 },
            },
        ] {
            let mut b = [0u8; 16];
            let n = resp.emit(&mut b);
            assert_eq!(Response::parse(&b[..n]).unwrap(), resp);
        }
    }

    #[test]
    fn rfc6886_wire_layout() {
        let mut b = [0u8; 12];
        let n = Request::Map {
            protocol: MapProtocol::Udp,
            internal_port: 0x1234,
            suggested_external_port: 0x5678,
            lifetime: 7200,
        }
        .emit(&mut b);
        assert_eq!(
            &b[..n],
            &[0, 1, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0x1c, 0x20]
        );
    }

    #[test]
    fn malformed_responses() {
        assert_eq!(Response::parse(&[0, 128, 0]), Err(PortmapError::Truncated));
        assert_eq!(
            Response::parse(&[2, 128, 0, 0, 0, 0, 0, 0]),
            Err(PortmapError::UnsupportedVersion(2))
        );
        assert_eq!(
            Response::parse(&[0, 1, 0, 0, 0, 0, 0, 0]),
            Err(PortmapError::NotAResponse)
        );
        // Success without the address.
        assert_eq!(
            Response::parse(&[0, 128, 0, 0, 0, 0, 0, 1]),
            Err(PortmapError::Truncated)
        );
        assert_eq!(
            Response::parse(&[0, 128 + 9, 0, 0, 0, 0, 0, 1]),
            Err(PortmapError::UnexpectedOpcode(9))
        );
    }
}
