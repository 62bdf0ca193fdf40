//! The FFI's own data types. They mirror the core's types with only what crosses a
//! language boundary well (strings for addresses, integers for durations, options), so no
//! core type leaks into a binding, and they are the one conversion point from the core: the
//! C API converts these, never the core's types, into its structs.
//!
//! Durations are plain integers whose name carries the unit (`_ms`, `_us`, `_secs`), never
//! a `Duration`: UniFFI maps `Duration` to `java.time.Duration`, which Android has only
//! from API 26, and the AAR supports API 24.
//!
//! Event evolution: the event and progress enums ([`NetcheckProgress`],
//! [`PortMappingEvent`], [`TurnEvent`]) are `#[non_exhaustive]`: a new variant may be added
//! in any release and is not a breaking change. Code that matches them (a Kotlin `when`, a
//! Swift `switch`) must have an `else` / `default` branch.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pinhole::netcheck::{Behaviour, NetcheckEvent, PortAllocation, Report};
use pinhole::portmap::{MapProtocol, MapperEvent, Mapping, ProbeReport, Via};

use crate::error::PinholeError;

/// The default overall netcheck budget, milliseconds.
pub(crate) const DEFAULT_TIMEOUT_MS: u32 = 10_000;
/// The default port-mapping lifetime asked for, seconds.
pub(crate) const DEFAULT_MAPPING_LIFETIME_SECS: u32 = pinhole::portmap::DEFAULT_LIFETIME;
/// The default interval between verifications of a mapping, seconds.
pub(crate) const DEFAULT_VERIFY_INTERVAL_SECS: u32 = 300;

/// What a netcheck probes.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NetcheckConfig {
    /// STUN servers as `stun:host[:port]` URIs (RFC 7064). Empty: the public default
    /// servers (Google's, Cloudflare's, stunprotocol.org's).
    #[uniffi(default = [])]
    pub stun_servers: Vec<String>,
    /// The overall budget, milliseconds; 0 means the default (10 s).
    #[uniffi(default = 10000)]
    pub timeout_ms: u32,
    /// Skip the hairpinning test.
    #[uniffi(default = false)]
    pub no_hairpin: bool,
    /// Also measure the NAT binding lifetime (RFC 5780 §4.6); takes about three minutes.
    #[uniffi(default = false)]
    pub binding_lifetime: bool,
    /// Do not probe the gateway for PCP, NAT-PMP and UPnP.
    #[uniffi(default = false)]
    pub no_portmap: bool,
    /// The gateway to probe (an IP address). None: the default route's gateway (read from
    /// the routing table, which Android 10+ apps cannot read: pass it there, e.g. from
    /// the package's `NetworkMonitor`).
    #[uniffi(default = None)]
    pub gateway: Option<String>,
    /// This host's address toward the gateway (needs `gateway`). None: what the kernel
    /// would use.
    #[uniffi(default = None)]
    pub local_ip: Option<String>,
}

impl Default for NetcheckConfig {
    fn default() -> Self {
        Self {
            stun_servers: Vec::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            no_hairpin: false,
            binding_lifetime: false,
            no_portmap: false,
            gateway: None,
            local_ip: None,
        }
    }
}

/// A NAT behaviour in RFC 4787 terms (mapping §4.1, filtering §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NatBehaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
    /// Not determined.
    Unknown,
}

impl From<Behaviour> for NatBehaviour {
    fn from(b: Behaviour) -> Self {
        match b {
            Behaviour::EndpointIndependent => NatBehaviour::EndpointIndependent,
            Behaviour::AddressDependent => NatBehaviour::AddressDependent,
            Behaviour::AddressAndPortDependent => NatBehaviour::AddressAndPortDependent,
            Behaviour::Unknown => NatBehaviour::Unknown,
        }
    }
}

/// How a NAT picks the external port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PortAllocationKind {
    /// The local port is kept (also what no NAT looks like).
    Preserving,
    /// Each new mapping gets the previous one's port plus `delta`: predictable.
    Sequential,
    /// Unpredictable.
    Random,
    /// Probed, but too few answers to tell.
    Unknown,
}

/// Netcheck's port-allocation result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct PortAllocationReport {
    /// The kind.
    pub kind: PortAllocationKind,
    /// The step between consecutive mappings, when sequential.
    pub delta: Option<i32>,
}

impl From<PortAllocation> for PortAllocationReport {
    fn from(a: PortAllocation) -> Self {
        let kind = match a {
            PortAllocation::Preserving => PortAllocationKind::Preserving,
            PortAllocation::Sequential { .. } => PortAllocationKind::Sequential,
            PortAllocation::Random => PortAllocationKind::Random,
            // Unknown, and kinds added later.
            _ => PortAllocationKind::Unknown,
        };
        PortAllocationReport {
            kind,
            delta: a.delta(),
        }
    }
}

/// What one STUN server told us.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ServerReport {
    /// The server as configured (`stun:host:port`).
    pub label: String,
    /// Its resolved address.
    pub address: String,
    /// Round-trip time of the first Binding test, microseconds; None when it did not
    /// answer.
    pub rtt_us: Option<u64>,
    /// The public (mapped) address it saw.
    pub mapped: Option<String>,
    /// Its OTHER-ADDRESS, when it supports RFC 5780.
    pub other_address: Option<String>,
}

/// The estimated NAT binding lifetime (RFC 5780 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct BindingLifetime {
    /// The longest idle interval after which the mapping still worked, milliseconds.
    pub at_least_ms: Option<u64>,
    /// The shortest idle interval after which it was gone, milliseconds (None: it
    /// outlived them all).
    pub less_than_ms: Option<u64>,
}

/// Which port-mapping protocols the gateway speaks (netcheck makes no mapping).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GatewayProbe {
    /// The gateway probed; None when it could not be determined.
    pub gateway: Option<String>,
    /// PCP (RFC 6887); None: unknown.
    pub pcp: Option<bool>,
    /// NAT-PMP (RFC 6886); None: unknown.
    pub natpmp: Option<bool>,
    /// UPnP IGD; None: unknown.
    pub upnp: Option<bool>,
    /// The external address NAT-PMP reported.
    pub natpmp_external: Option<String>,
    /// The external address UPnP reported.
    pub upnp_external: Option<String>,
    /// Why the gateway could not be probed.
    pub error: Option<String>,
}

/// The outcome of a netcheck. Unknown is not false: undetermined fields are None or
/// [`NatBehaviour::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NetcheckReport {
    /// Whether any server answered over UDP.
    pub udp: bool,
    /// The distinct public addresses seen, in order of discovery.
    pub public_addresses: Vec<String>,
    /// Mapping behaviour.
    pub mapping: NatBehaviour,
    /// Filtering behaviour.
    pub filtering: NatBehaviour,
    /// Whether the NAT hairpins.
    pub hairpinning: Option<bool>,
    /// Whether a middlebox rewrites addresses inside STUN payloads.
    pub alg_rewrites: Option<bool>,
    /// The binding lifetime, when it was measured.
    pub binding_lifetime: Option<BindingLifetime>,
    /// The RFC 5780 server used for the behaviour tests.
    pub rfc5780_server: Option<String>,
    /// Per-server results.
    pub servers: Vec<ServerReport>,
    /// What could not be determined, and why.
    pub notes: Vec<String>,
    /// The gateway probe; None when it was not asked for.
    pub portmap: Option<GatewayProbe>,
    /// How the NAT allocates ports; None when it was not tested.
    pub port_allocation: Option<PortAllocationReport>,
}

/// Progress of a running netcheck. New variants may be added in any release (not a
/// breaking change): a `when`/`switch` over it needs an `else`/`default` branch.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum NetcheckProgress {
    /// A server answered.
    ServerReplied {
        /// The server.
        label: String,
        /// The public address it saw.
        mapped: Option<String>,
        /// The round-trip time, microseconds.
        rtt_us: u64,
    },
    /// A server did not answer.
    ServerTimedOut {
        /// The server.
        label: String,
    },
    /// The mapping behaviour is known.
    Mapping {
        /// It.
        behaviour: NatBehaviour,
    },
    /// The filtering behaviour is known.
    Filtering {
        /// It.
        behaviour: NatBehaviour,
    },
    /// Hairpinning is known.
    Hairpinning {
        /// Whether the NAT hairpins.
        hairpins: bool,
    },
}

impl NetcheckProgress {
    /// The progress event for a core event (None for the final one).
    pub(crate) fn from_core(ev: &NetcheckEvent, labels: &[String]) -> Option<Self> {
        let label = |i: usize| labels.get(i).cloned().unwrap_or_default();
        Some(match ev {
            NetcheckEvent::ServerReplied {
                server,
                mapped,
                rtt,
            } => NetcheckProgress::ServerReplied {
                label: label(*server),
                mapped: mapped.map(|m| m.to_string()),
                rtt_us: micros(*rtt),
            },
            NetcheckEvent::ServerTimedOut { server } => NetcheckProgress::ServerTimedOut {
                label: label(*server),
            },
            NetcheckEvent::Mapping(b) => NetcheckProgress::Mapping {
                behaviour: (*b).into(),
            },
            NetcheckEvent::Filtering(b) => NetcheckProgress::Filtering {
                behaviour: (*b).into(),
            },
            NetcheckEvent::Hairpinning(h) => NetcheckProgress::Hairpinning { hairpins: *h },
            // Progress the foreign APIs do not carry (yet), and the final event.
            NetcheckEvent::BindingLifetime { .. } | NetcheckEvent::Done(_) => return None,
            _ => return None,
        })
    }
}

fn addr(a: SocketAddr) -> String {
    a.to_string()
}

/// A duration in whole microseconds (saturating).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration in whole seconds (saturating).
pub(crate) fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl NetcheckReport {
    pub(crate) fn from_core(
        r: Report,
        portmap: Option<GatewayProbe>,
        extra_notes: Vec<String>,
    ) -> Self {
        let mut notes = extra_notes;
        notes.extend(r.notes);
        NetcheckReport {
            udp: r.udp,
            public_addresses: r.public.into_iter().map(addr).collect(),
            mapping: r.mapping.into(),
            filtering: r.filtering.into(),
            hairpinning: r.hairpinning,
            alg_rewrites: r.alg_rewrites,
            binding_lifetime: r.binding_lifetime.map(|l| BindingLifetime {
                at_least_ms: l.at_least.map(millis),
                less_than_ms: l.less_than.map(millis),
            }),
            rfc5780_server: r.rfc5780_server,
            servers: r
                .servers
                .into_iter()
                .map(|s| ServerReport {
                    label: s.label,
                    address: addr(s.addr),
                    rtt_us: s.rtt.map(micros),
                    mapped: s.mapped.map(addr),
                    other_address: s.other_address.map(addr),
                })
                .collect(),
            notes,
            portmap,
            port_allocation: r.port_allocation.map(Into::into),
        }
    }
}

impl GatewayProbe {
    pub(crate) fn from_core(gateway: IpAddr, r: &ProbeReport) -> Self {
        GatewayProbe {
            gateway: Some(gateway.to_string()),
            pcp: r.pcp,
            natpmp: r.natpmp,
            upnp: r.upnp,
            natpmp_external: r.natpmp_external.map(|a| a.to_string()),
            upnp_external: r.upnp_external.map(|a| a.to_string()),
            error: None,
        }
    }

    pub(crate) fn failed(gateway: Option<IpAddr>, error: String) -> Self {
        GatewayProbe {
            gateway: gateway.map(|g| g.to_string()),
            pcp: None,
            natpmp: None,
            upnp: None,
            natpmp_external: None,
            upnp_external: None,
            error: Some(error),
        }
    }
}

/// The transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TransportProtocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl From<TransportProtocol> for MapProtocol {
    fn from(p: TransportProtocol) -> Self {
        match p {
            TransportProtocol::Udp => MapProtocol::Udp,
            TransportProtocol::Tcp => MapProtocol::Tcp,
        }
    }
}

impl From<MapProtocol> for TransportProtocol {
    fn from(p: MapProtocol) -> Self {
        match p {
            MapProtocol::Udp => TransportProtocol::Udp,
            MapProtocol::Tcp => TransportProtocol::Tcp,
        }
    }
}

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MappingMethod {
    /// PCP, RFC 6887.
    Pcp,
    /// NAT-PMP, RFC 6886.
    NatPmp,
    /// UPnP IGD.
    Upnp,
}

impl From<MappingMethod> for Via {
    fn from(m: MappingMethod) -> Self {
        match m {
            MappingMethod::Pcp => Via::Pcp,
            MappingMethod::NatPmp => Via::NatPmp,
            MappingMethod::Upnp => Via::Upnp,
        }
    }
}

impl From<Via> for MappingMethod {
    fn from(v: Via) -> Self {
        match v {
            Via::Pcp => MappingMethod::Pcp,
            Via::NatPmp => MappingMethod::NatPmp,
            Via::Upnp => MappingMethod::Upnp,
        }
    }
}

/// What to map, and through which gateway.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PortMappingConfig {
    /// The internal port to map (a socket of the application's; pinhole does not bind it,
    /// except with `verify_stun`).
    pub internal_port: u16,
    /// UDP or TCP.
    pub protocol: TransportProtocol,
    /// The gateway (an IP address). None: the default route's gateway, read from the
    /// routing table (which Android 10+ apps cannot read: pass it there, e.g. from the
    /// package's `NetworkMonitor`). UPnP searches by unicast to an explicit gateway only,
    /// never by multicast. [`PortMapper::network_changed`](crate::api::PortMapper::network_changed)
    /// moves the mapping to another gateway.
    #[uniffi(default = None)]
    pub gateway: Option<String>,
    /// This host's address toward the gateway (needs `gateway`). None: what the kernel
    /// would use.
    #[uniffi(default = None)]
    pub local_ip: Option<String>,
    /// The external port wanted; 0: any.
    #[uniffi(default = 0)]
    pub suggested_external_port: u16,
    /// The lifetime to ask for, seconds; 0 means the default (7200).
    #[uniffi(default = 7200)]
    pub lifetime_secs: u32,
    /// The only protocol to use; None: PCP, then NAT-PMP, then UPnP.
    #[uniffi(default = None)]
    pub method: Option<MappingMethod>,
    /// Verify that traffic really arrives through the mapping with this STUN server, a
    /// `stun:host[:port]` URI (RFC 7064) of a server that implements RFC 5780 (`pinhole
    /// serve`, coturn with `rfc5780`): after every new mapping, after renewals and every
    /// `verify_interval_secs`. The outcome arrives as `Verified`, `NotForwarding` or
    /// `Unverified`; a mapping that does not forward is deleted and added again first
    /// (`Lost`). UDP only. pinhole then binds the internal port itself (on the local
    /// address toward the gateway) to hear the answers, so it must be free: this checks a
    /// gateway, it cannot verify a port another socket holds. The host is resolved when the
    /// mapper starts; if that fails the mapper stops with `Unavailable`. None: no
    /// verification.
    #[uniffi(default = None)]
    pub verify_stun: Option<String>,
    /// Seconds between verifications; 0 means the default (300); at most one day.
    #[uniffi(default = 300)]
    pub verify_interval_secs: u32,
}

/// Network facts the host application knows and pinhole may not: Android 10+ apps cannot
/// read the routing table, and mobile hosts learn about network changes from the system
/// (`ConnectivityManager`, `NWPathMonitor`; the packages' `NetworkMonitor` and
/// `PathMonitor` produce these). Given to
/// [`PortMapper::network_changed`](crate::api::PortMapper::network_changed).
#[derive(Debug, Clone, PartialEq, Eq, Default, uniffi::Record)]
pub struct NetworkInfo {
    /// The default route's gateway on the new network (an IP address). None: unknown;
    /// pinhole then reads the routing table where it can (not on Android 10+ nor iOS).
    #[uniffi(default = None)]
    pub gateway: Option<String>,
    /// This host's address on the new network, of the gateway's family (needs `gateway`).
    /// None: what the kernel would use toward the gateway.
    #[uniffi(default = None)]
    pub local_ip: Option<String>,
}

/// A mapping that exists on the gateway.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PortMapping {
    /// The protocol that made it.
    pub method: MappingMethod,
    /// UDP or TCP.
    pub protocol: TransportProtocol,
    /// The internal address and port.
    pub internal: String,
    /// The external address and port.
    pub external: String,
    /// The lifetime granted, seconds.
    pub lifetime_secs: u32,
    /// False when the external address is private or shared (CGNAT): another NAT lies
    /// beyond the gateway and the mapping is not reachable from the internet.
    pub reachable: bool,
}

impl From<&Mapping> for PortMapping {
    fn from(m: &Mapping) -> Self {
        PortMapping {
            method: m.via.into(),
            protocol: m.protocol.into(),
            internal: m.internal.to_string(),
            external: m.external.to_string(),
            lifetime_secs: secs(m.lifetime),
            reachable: m.reachable,
        }
    }
}

/// What happens to a port mapping. New variants may be added in any release (not a
/// breaking change): a `when`/`switch` over it needs an `else`/`default` branch.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum PortMappingEvent {
    /// A mapping exists (first time, or re-created after a loss).
    Mapped {
        /// It.
        mapping: PortMapping,
    },
    /// Renewed with the same external address.
    Renewed {
        /// It.
        mapping: PortMapping,
    },
    /// Renewed, but the external address or port changed.
    Changed {
        /// What it was.
        old: PortMapping,
        /// What it is.
        new: PortMapping,
    },
    /// The mapping was lost (gateway restart, expiry, refusal, traffic no longer arrives
    /// through it with `verify_stun`, or the network changed: `PortMapper.networkChanged`);
    /// it is being re-created.
    Lost {
        /// Why.
        reason: String,
    },
    /// No mapping can be made; the mapper has stopped. This is the last event.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The release is over (the gateway confirmed the deletion, or did not answer it in
    /// time, in which case the mapping expires on its own); the mapper has stopped. This
    /// is the last event.
    Released,
    /// Traffic from the STUN reflector arrived through the mapping (`verify_stun`).
    Verified {
        /// It.
        mapping: PortMapping,
    },
    /// The gateway grants the mapping but traffic does not arrive through it, even after
    /// deleting and adding it again (`verify_stun`). It is kept, and verified again after
    /// the interval.
    NotForwarding {
        /// It.
        mapping: PortMapping,
    },
    /// The mapping could not be verified (`verify_stun`): the reflector did not answer,
    /// does not implement RFC 5780, or sees this host at another address. With no answer
    /// it is tried again after the interval; otherwise verification stops.
    Unverified {
        /// Why.
        reason: String,
    },
}

impl PortMappingEvent {
    /// The FFI form of a mapper event; `None` for events the foreign APIs do not carry
    /// (yet).
    pub(crate) fn from_core(ev: &MapperEvent) -> Option<Self> {
        Some(match ev {
            MapperEvent::Mapped(m) => PortMappingEvent::Mapped { mapping: m.into() },
            MapperEvent::Renewed(m) => PortMappingEvent::Renewed { mapping: m.into() },
            MapperEvent::Changed { old, new } => PortMappingEvent::Changed {
                old: old.into(),
                new: new.into(),
            },
            MapperEvent::Lost(reason) => PortMappingEvent::Lost {
                reason: reason.to_string(),
            },
            MapperEvent::Unavailable(why) => PortMappingEvent::Unavailable {
                reason: why.clone(),
            },
            MapperEvent::Released(_) => PortMappingEvent::Released,
            MapperEvent::Verified(m) => PortMappingEvent::Verified { mapping: m.into() },
            MapperEvent::NotForwarding(m) => PortMappingEvent::NotForwarding { mapping: m.into() },
            MapperEvent::Unverified(why) => PortMappingEvent::Unverified {
                reason: why.clone(),
            },
            _ => return None,
        })
    }
}

/// The default TURN allocation lifetime asked for, seconds.
pub(crate) const DEFAULT_TURN_LIFETIME_SECS: u32 = 600;
/// The default validity of TURN REST credentials, seconds (one day).
pub(crate) const DEFAULT_REST_TTL_SECS: u32 = 86_400;

/// The relayed address family a TURN allocation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RelayedFamily {
    /// IPv4 (the servers' default).
    Ipv4,
    /// IPv6 (RFC 8656 REQUESTED-ADDRESS-FAMILY).
    Ipv6,
    /// Both (ADDITIONAL-ADDRESS-FAMILY): two relayed addresses.
    Dual,
}

impl From<RelayedFamily> for pinhole::turn::RequestedFamily {
    fn from(f: RelayedFamily) -> Self {
        use pinhole::turn::RequestedFamily;
        match f {
            RelayedFamily::Ipv4 => RequestedFamily::V4,
            RelayedFamily::Ipv6 => RequestedFamily::V6,
            RelayedFamily::Dual => RequestedFamily::Dual,
        }
    }
}

/// How to reach a TURN server (RFC 8656) and with which credentials. Exactly one of
/// `password` (long-term credentials) and `secret` (TURN REST credentials) is required.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct TurnConfig {
    /// `turn:host[:port][?transport=udp|tcp]`, or `turns:host[:port]` (RFC 7065; TLS only
    /// in a library built with the `tls` feature).
    pub uri: String,
    /// The user name; with `secret`, the user part of the REST user name `expiry:username`.
    pub username: String,
    /// The password of long-term credentials.
    #[uniffi(default = None)]
    pub password: Option<String>,
    /// The shared secret of TURN REST credentials (coturn's `static-auth-secret`): the
    /// password is derived from it and the user name.
    #[uniffi(default = None)]
    pub secret: Option<String>,
    /// How long REST credentials stay valid, seconds; 0 means the default (one day).
    #[uniffi(default = 86400)]
    pub rest_ttl_secs: u32,
    /// The allocation lifetime to ask for, seconds (it is refreshed before it ends); 0
    /// means the default (600).
    #[uniffi(default = 600)]
    pub lifetime_secs: u32,
    /// The relayed address family; None: IPv4.
    #[uniffi(default = None)]
    pub family: Option<RelayedFamily>,
    /// PEM certificates to trust for `turns:` instead of the system roots. A server
    /// certificate that is one of them byte for byte is accepted (pinned: a self-signed
    /// one, too); others must chain to one of them.
    #[uniffi(default = None)]
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password nor the secret.
        f.debug_struct("TurnConfig")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("lifetime_secs", &self.lifetime_secs)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// What happens to a TURN allocation. Data from peers goes to
/// [`TurnListener::on_data`](crate::api::TurnListener::on_data) instead. New variants may
/// be added in any release (not a breaking change): a `when`/`switch` over it needs an
/// `else`/`default` branch.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum TurnEvent {
    /// The allocation exists.
    Allocated {
        /// The relayed addresses (two with the `Dual` family).
        relayed: Vec<String>,
        /// This host's address as the server saw it.
        mapped: Option<String>,
        /// The lifetime granted, seconds.
        lifetime_secs: u32,
    },
    /// Refreshed.
    Refreshed {
        /// The lifetime granted, seconds.
        lifetime_secs: u32,
    },
    /// A permission for a peer IP is installed (or refreshed).
    PermissionCreated {
        /// The peer's IP address.
        peer_ip: String,
    },
    /// A permission could not be installed.
    PermissionFailed {
        /// The peer's IP address.
        peer_ip: String,
        /// Why.
        reason: String,
    },
    /// A channel is bound (or refreshed).
    ChannelBound {
        /// The peer (`IP:port`).
        peer: String,
        /// The channel number.
        channel: u16,
    },
    /// A channel could not be bound.
    ChannelFailed {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// Data for a peer could not be sent (no permission for it, no allocation).
    SendFailed {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The allocation failed or is gone (refresh refused, server unreachable, connection
    /// broken). This is the last event.
    Lost {
        /// Why.
        reason: String,
    },
    /// Deallocated on request. This is the last event.
    Deallocated,
}

impl TurnEvent {
    /// The event for a core allocation event, with the typed error of a failure; `None`
    /// for events the foreign APIs do not carry (yet).
    pub(crate) fn from_core(
        ev: pinhole::turn::AllocationEvent,
    ) -> Option<(Self, Option<PinholeError>)> {
        use pinhole::turn::AllocationEvent;
        let failed = |e: pinhole::turn::TurnError| {
            let reason = e.to_string();
            (reason, Some(PinholeError::from(e)))
        };
        Some(match ev {
            AllocationEvent::Allocated {
                relayed,
                mapped,
                lifetime,
            } => (
                TurnEvent::Allocated {
                    relayed: relayed.into_iter().map(addr).collect(),
                    mapped: mapped.map(addr),
                    lifetime_secs: secs(lifetime),
                },
                None,
            ),
            AllocationEvent::Refreshed { lifetime } => (
                TurnEvent::Refreshed {
                    lifetime_secs: secs(lifetime),
                },
                None,
            ),
            AllocationEvent::PermissionCreated(ip) => (
                TurnEvent::PermissionCreated {
                    peer_ip: ip.to_string(),
                },
                None,
            ),
            AllocationEvent::PermissionFailed(ip, e) => {
                let (reason, e) = failed(e);
                (
                    TurnEvent::PermissionFailed {
                        peer_ip: ip.to_string(),
                        reason,
                    },
                    e,
                )
            }
            AllocationEvent::ChannelBound { peer, channel } => (
                TurnEvent::ChannelBound {
                    peer: addr(peer),
                    channel,
                },
                None,
            ),
            AllocationEvent::ChannelFailed(peer, e) => {
                let (reason, e) = failed(e);
                (
                    TurnEvent::ChannelFailed {
                        peer: addr(peer),
                        reason,
                    },
                    e,
                )
            }
            AllocationEvent::Lost(e) => {
                let (reason, e) = failed(e);
                (TurnEvent::Lost { reason }, e)
            }
            AllocationEvent::Deallocated => (TurnEvent::Deallocated, None),
            _ => return None,
        })
    }
}

/// Parses an IP address given as text.
pub(crate) fn parse_ip(what: &str, text: &str) -> Result<IpAddr, PinholeError> {
    text.trim()
        .parse()
        .map_err(|_| PinholeError::invalid(format!("{what}: not an IP address: {text:?}")))
}

/// Parses a socket address given as text.
pub(crate) fn parse_socket_addr(what: &str, text: &str) -> Result<SocketAddr, PinholeError> {
    text.trim()
        .parse()
        .map_err(|_| PinholeError::invalid(format!("{what}: not an IP:port address: {text:?}")))
}

/// A TURN server for a [`PeerConnectionConfig`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PeerTurnServer {
    /// `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065; at most
    /// 500 bytes). `turns:` needs a library built with the `tls` feature, else
    /// `Unsupported`.
    pub uri: String,
    /// The user name of the long-term credentials (1 to 512 bytes).
    pub username: String,
    /// The password (never logged).
    pub password: String,
}

/// Which paths a peer connection may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Enum)]
pub enum RelayPolicy {
    /// Direct paths and, where they fail, the relays (the default).
    #[default]
    All,
    /// Only through a TURN relay: no host or server-reflexive candidate is offered, so the
    /// peer never learns this host's addresses. Needs a TURN server.
    RelayOnly,
    /// Never through a relay (the TURN servers, if any, are not used).
    NoRelay,
}

/// How a [`PeerConnection`](crate::api::PeerConnection) starts.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PeerConnectionConfig {
    /// STUN servers for server-reflexive candidates: `host:port` or `stun:host[:port]`
    /// (RFC 7064). Empty: none (no public default: only host candidates, and relayed
    /// ones with a TURN server).
    #[uniffi(default = [])]
    pub stun_servers: Vec<String>,
    /// TURN servers for relayed candidates.
    #[uniffi(default = [])]
    pub turn_servers: Vec<PeerTurnServer>,
    /// This side's ICE role (RFC 8445 §6.1.1): exactly one of the two peers controls
    /// (nominates the pair); the offerer, by convention.
    pub controlling: bool,
    /// Ask the gateway for a port mapping of the socket (PCP, NAT-PMP, UPnP IGD) and offer
    /// its external address as a candidate. Gathering waits for the gateway's answer.
    #[uniffi(default = false)]
    pub port_mapping: bool,
    /// Which paths may be used (`All` for the usual).
    pub relay_policy: RelayPolicy,
    /// The local socket address: `IP:port`. None: `0.0.0.0:0` (an IPv4 socket on the
    /// local address toward the first server, 127.0.0.1 without servers). `[::]:0`: one
    /// dual-stack socket with a host candidate on every usable interface.
    #[uniffi(default = None)]
    pub bind: Option<String>,
    /// Run as an ICE-lite agent (RFC 8445 §2.5), for a host with a public address: it
    /// answers checks and sends none; the peer must be a full agent and controls.
    #[uniffi(default = false)]
    pub lite: bool,
    /// Turn off the built-in network monitor (Linux and Android: rtnetlink address and
    /// route changes), which otherwise restarts ICE by itself when the addresses of a
    /// dual-stack socket (`bind` `[::]:0`) change, reporting `NetworkChanged`. For apps
    /// that follow the network themselves (Android's `ConnectivityManager`, Apple's
    /// `NWPathMonitor`) and call `network_changed()`. Sockets on loopback, and other
    /// platforms, have no built-in monitor.
    #[uniffi(default = false)]
    pub no_network_monitor: bool,
    /// The keepalive policy to start with (change it with `set_keepalive_policy()` as
    /// the app moves between foreground and background). None: `Foreground`. (An
    /// option because UniFFI gives a record's enum field no default.)
    #[uniffi(default = None)]
    pub keepalive_policy: Option<KeepalivePolicy>,
    /// A fixed keepalive interval for `Background`, milliseconds, instead of the one that
    /// adapts to the path's NATs; 0 (the default): adaptive (25 s at first, then up to
    /// 80 % of the longest silence the path's NAT bindings were seen to survive, at most
    /// 240 s). Otherwise 1 000 to 3 600 000 (an hour), else `InvalidArgument`.
    #[uniffi(default = 0)]
    pub keepalive_interval_ms: u32,
}

/// How hard a peer connection works to keep an idle path alive: set it as the app moves
/// between foreground, background and suspended (Android's process lifecycle, iOS's
/// application states). Whatever the policy, data sent goes out at once and data received
/// is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, uniffi::Enum)]
pub enum KeepalivePolicy {
    /// The app is in front of its user (the default): consent checks every 4 to 6 s on the
    /// path (RFC 7675: a dead path is noticed within 30 s), TURN allocations checked every
    /// 5 s.
    #[default]
    Foreground,
    /// The app is in the background: the fewest packets that keep the path's NAT bindings
    /// alive, one check per keepalive interval (shared with the peer: between two pinhole
    /// peers in the background one round goes per interval), an interval that adapts to
    /// the NATs (or `keepalive_interval_ms`). A dead path takes two intervals to notice;
    /// back in the foreground, the path is probed at once (as after `Suspended`).
    Background,
    /// The app is about to be suspended: no keepalives at all and no consent deadline
    /// (nothing wakes the radio). On the way back (`Foreground` or `Background`) the path
    /// is probed at once; if it does not answer within 4 s (its NAT bindings, its relay or
    /// the peer went away meanwhile), ICE restarts and `NetworkChanged` brings the new
    /// local description to signal.
    Suspended,
}

impl From<KeepalivePolicy> for pinhole::ice::KeepalivePolicy {
    fn from(p: KeepalivePolicy) -> Self {
        match p {
            KeepalivePolicy::Foreground => Self::Foreground,
            KeepalivePolicy::Background => Self::Background,
            KeepalivePolicy::Suspended => Self::Suspended,
        }
    }
}

/// The shortest fixed keepalive interval accepted, milliseconds: below it a background
/// keepalive is no longer one.
pub(crate) const MIN_KEEPALIVE_INTERVAL_MS: u32 = 1_000;
/// The longest fixed keepalive interval accepted, milliseconds (an hour: longer than any
/// NAT keeps an idle UDP binding).
pub(crate) const MAX_KEEPALIVE_INTERVAL_MS: u32 = 3_600_000;

/// A peer connection's ICE state, as WebRTC's `RTCIceConnectionState` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum IceConnectionState {
    /// Waiting for the peer's description or candidates.
    New,
    /// Checking pairs; none works yet.
    Checking,
    /// A pair works: data flows.
    Connected,
    /// The controlling side nominated the pair: ICE has settled (checks on other pairs
    /// stop; consent goes on). Data flows.
    Completed,
    /// Every pair failed after the peer's end of candidates: restart or give up.
    Failed,
    /// Consent was lost on every working pair (RFC 7675); checks go on while candidates
    /// remain. A restart may bring the path back.
    Disconnected,
    /// The connection is closed.
    Closed,
}

/// The pair of candidates data goes on.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SelectedPair {
    /// Ours, `IP:port` (a relayed candidate's relayed address).
    pub local: String,
    /// The peer's, `IP:port`.
    pub remote: String,
    /// Whether data goes through a TURN relay (either candidate is relayed).
    pub relayed: bool,
}

/// What a peer connection reports, in order, on its own thread. New variants may be added
/// in any release (not a breaking change): a `when`/`switch` over it needs an
/// `else`/`default` branch.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[non_exhaustive]
pub enum PeerConnectionEvent {
    /// A local candidate to signal to the peer (trickle, RFC 8838): the RFC 8839
    /// attribute value `candidate:...` (without `a=`).
    LocalCandidate {
        /// The candidate.
        candidate: String,
    },
    /// No more local candidates: signal `a=end-of-candidates` (or the whole
    /// `local_description()`, which now ends with it).
    GatheringComplete,
    /// The ICE state changed.
    StateChanged {
        /// The new state.
        state: IceConnectionState,
    },
    /// Data now goes on this pair (the first working pair, the nominated one, a move to
    /// another pair).
    SelectedPair {
        /// Ours, `IP:port`.
        local: String,
        /// The peer's, `IP:port`.
        remote: String,
        /// Through a TURN relay.
        relayed: bool,
        /// The round-trip time the pair's check measured, milliseconds.
        rtt_ms: Option<u32>,
    },
    /// A datagram from the peer.
    Data {
        /// Its bytes.
        data: Vec<u8>,
    },
    /// A relay could not be allocated; the connection goes on without it.
    RelayFailed {
        /// Why.
        reason: String,
    },
    /// A candidate of the peer's with an mDNS name (`<uuid>.local`) had no answer: it was
    /// dropped, the connection goes on without it.
    CandidateUnresolved {
        /// The name.
        name: String,
    },
    /// The peer restarted ICE (its description came with a new `a=ice-ufrag`), so this
    /// side restarted too: signal this new local description to the peer (its candidates
    /// follow as `LocalCandidate`s).
    RemoteRestarted {
        /// The new local description (as `local_description()` gives it).
        local_description: String,
    },
    /// The built-in network monitor saw the host's addresses or routes change and this
    /// side restarted ICE on the new network (as `network_changed()` does), or a resume
    /// (`set_keepalive_policy()` out of `Suspended`, or back to `Foreground`) found the
    /// path gone and ICE restarted:
    /// signal this new local description to the peer (its candidates follow as
    /// `LocalCandidate`s); the peer restarts too when it sees the new `a=ice-ufrag`, and
    /// its new description comes back as its `RemoteRestarted`.
    NetworkChanged {
        /// The new local description (as `local_description()` gives it).
        local_description: String,
    },
    /// The connection has ended: the last event. `error` is None after `close()`.
    Closed {
        /// Why it ended by itself.
        error: Option<String>,
    },
}
