//! What a mapping is and what the mapper is asked for: protocols, the gateway's mapping,
//! the mapper's configuration.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{DEFAULT_LIFETIME, VerifyConfig, is_publicly_routable};

/// The transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapProtocol {
    /// UDP (IP protocol 17).
    Udp,
    /// TCP (IP protocol 6).
    Tcp,
}

impl MapProtocol {
    /// The IANA protocol number PCP uses.
    pub const fn ip_number(self) -> u8 {
        match self {
            MapProtocol::Udp => 17,
            MapProtocol::Tcp => 6,
        }
    }

    /// The protocol with IANA number `n`, if UDP or TCP.
    pub const fn from_ip_number(n: u8) -> Option<Self> {
        match n {
            17 => Some(MapProtocol::Udp),
            6 => Some(MapProtocol::Tcp),
            _ => None,
        }
    }

    /// `udp` or `tcp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MapProtocol::Udp => "udp",
            MapProtocol::Tcp => "tcp",
        }
    }
}

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// PCP, RFC 6887.
    Pcp,
    /// NAT-PMP, RFC 6886.
    NatPmp,
    /// UPnP IGD.
    Upnp,
}

impl Via {
    /// `pcp`, `natpmp` or `upnp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Via::Pcp => "pcp",
            Via::NatPmp => "natpmp",
            Via::Upnp => "upnp",
        }
    }
}

/// Which protocols the mapper may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ViaChoice {
    /// All three, preferring PCP, then NAT-PMP, then UPnP.
    #[default]
    Any,
    /// Only this one.
    Only(Via),
}

/// A mapping that exists on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mapping {
    /// The protocol that made it.
    pub via: Via,
    /// UDP or TCP.
    pub protocol: MapProtocol,
    /// The internal address and port.
    pub internal: SocketAddr,
    /// The external address and port.
    pub external: SocketAddr,
    /// The lifetime granted.
    pub lifetime: Duration,
    /// When it expires unless renewed.
    pub good_until: Instant,
    /// When the mapper will renew it (half the lifetime).
    pub renew_at: Instant,
    /// False when the external address is private or CGNAT: another NAT lies beyond the
    /// gateway and the mapping is not reachable from the internet.
    pub reachable: bool,
}

impl Mapping {
    /// A mapping granted at `now` for `lifetime`: good until `now + lifetime`, renewed at
    /// half of it, and reachable unless the external address is private or shared
    /// ([`is_publicly_routable`]).
    pub fn new(
        now: Instant,
        via: Via,
        protocol: MapProtocol,
        internal: SocketAddr,
        external: SocketAddr,
        lifetime: Duration,
    ) -> Self {
        Self {
            via,
            protocol,
            internal,
            external,
            lifetime,
            good_until: now + lifetime,
            renew_at: now + lifetime / 2,
            reachable: is_publicly_routable(external.ip()),
        }
    }
}

/// Where the mapper talks and what it asks for.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MapperConfig {
    /// The gateway (PCP and NAT-PMP server on port 5351).
    pub gateway: IpAddr,
    /// This host's address toward the gateway: the PCP client address, and the UPnP
    /// internal client.
    pub local_ip: IpAddr,
    /// UDP or TCP.
    pub protocol: MapProtocol,
    /// The internal port to map (a socket somebody else owns, or ours).
    pub internal_port: u16,
    /// The external port wanted (0: any).
    pub suggested_external_port: u16,
    /// Lifetime to ask for, seconds.
    pub lifetime: u32,
    /// Which protocols may be used.
    pub via: ViaChoice,
    /// Verify UDP mappings through this STUN reflector (default: none). The mapped socket's
    /// datagrams must then reach [`Mapper::handle_input`](super::Mapper::handle_input), and [`Mapper::poll_transmit`](super::Mapper::poll_transmit)
    /// yields datagrams whose `source` is the mapped socket.
    pub verify: Option<VerifyConfig>,
}

impl MapperConfig {
    /// Maps `internal_port` over `protocol` through `gateway` with the defaults.
    pub fn new(
        gateway: IpAddr,
        local_ip: IpAddr,
        protocol: MapProtocol,
        internal_port: u16,
    ) -> Self {
        Self {
            gateway,
            local_ip,
            protocol,
            internal_port,
            suggested_external_port: 0,
            lifetime: DEFAULT_LIFETIME,
            via: ViaChoice::Any,
            verify: None,
        }
    }
}
