//! Gateway port mapping: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD.
//!
//! [`Mapper`] is sans-IO. It speaks PCP and NAT-PMP itself, from one UDP socket the driver
//! owns, and asks the driver to do UPnP (SSDP, then SOAP over HTTP/1.1 connections, built
//! and parsed by [`upnp`]) through [`Mapper::poll_upnp`] / [`Mapper::handle_upnp`], so that
//! one machine decides which protocol wins, when to renew and what to report.
//!
//! - With [`ViaChoice::Any`] it sends a PCP MAP and a NAT-PMP external-address request at
//!   once, and starts a UPnP discovery [`UPNP_HEAD_START`] later unless one of them has
//!   mapped by then (or at once when both have failed). A PCP answer is a mapping in one
//!   round trip. Only if PCP fails does NAT-PMP map, and only if both fail does UPnP: a
//!   slow UPnP discovery never holds up a working PCP or NAT-PMP. What worked is
//!   remembered for re-creation.
//! - It renews at half the granted lifetime and tracks good-until.
//! - It checks every PCP and NAT-PMP epoch (RFC 6887 §8.5): a gateway restart means the
//!   mapping is lost; it re-creates it and says so. A lost mapping (restart, expiry,
//!   refusal) is re-created for as long as the mapper runs: when an attempt fails (the
//!   gateway is still rebooting) it tries every allowed protocol again after a pause
//!   that doubles from [`RECREATE_RETRY_MIN`] to [`RECREATE_RETRY_MAX`].
//! - A private or shared (100.64.0.0/10) external address means another NAT sits beyond
//!   the gateway: the mapping is reported as not reachable from the internet.
//! - [`Mapper::release`] deletes the mapping (PCP/NAT-PMP lifetime 0, UPnP
//!   DeletePortMapping), and [`MapperEvent::Released`] says whether the gateway confirmed
//!   it ([`ReleaseOutcome`]).
//! - A renewal that goes unanswered until the mapping is about to expire loses it with
//!   [`LossReason::NotAnswering`]; one the gateway refuses, with [`LossReason::Refused`].
//! - With a STUN reflector ([`MapperConfig::verify`], UDP mappings), it checks that traffic
//!   really arrives through every new mapping, after renewals and every
//!   [`VerifyConfig::interval`] (see [`verify`]). A gateway that grants a mapping and does
//!   not forward gets it deleted and added again ([`LossReason::NotForwarding`]); if that
//!   does not help either, [`MapperEvent::NotForwarding`] says so.
//! - It hears the gateway's unsolicited announcements (PCP ANNOUNCE, NAT-PMP external
//!   address notices, multicast to 224.0.0.1:[`ANNOUNCE_PORT`], RFC 6887 §14.1.3 and
//!   RFC 6886 §3.2.1) when the driver hands them to [`Mapper::handle_input`]. An epoch
//!   that shows a restart of the mapping's own protocol means the mapping is lost; any
//!   other announcement (the gateway's start seen over the other protocol, a new external
//!   address) makes the mapper renew, and the renewal's epoch and answer tell the rest.
//!   Either happens after a random pause of up to [`ANNOUNCE_JITTER`], so that the hosts
//!   of a network do not all ask in the same instant; a restarted gateway is noticed in
//!   seconds rather than at the next renewal.
//!
//! [`Probe`] is the netcheck side: which of the three protocols the gateway speaks, and
//! the external address each reports, without creating any mapping. [`Delete`] deletes a
//! mapping another process left behind, over every protocol, and reports what each
//! answered. Listing a gateway's mappings is UPnP's alone ([`upnp::MappingLister`]).

pub mod natpmp;
pub mod pcp;
pub mod upnp;
pub mod verify;

pub use verify::{MAX_VERIFY_INTERVAL, MIN_VERIFY_INTERVAL, VERIFY_INTERVAL, VerifyConfig};

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use crate::{Protocol, Received, Transmit};

/// First retransmission timeout of PCP and NAT-PMP requests: RFC 6886 §3.1's 250 ms
/// (PCP's 3 s initial timeout, RFC 6887 §8.1.1, is far too slow for a probe budget).
pub const REQUEST_RTO: Duration = Duration::from_millis(250);
/// Transmissions of one request: at 0, 250 and 750 ms.
pub const REQUEST_TRANSMITS: u32 = 3;
/// After the last transmission, wait this long: a request fails 1.75 s after it started.
pub const REQUEST_LAST_WAIT: Duration = Duration::from_millis(1000);
/// Lifetime asked for by default, RFC 6886 §3.3's recommendation.
pub const DEFAULT_LIFETIME: u32 = 7200;
/// How long the driver may take for one UPnP operation before it counts as failed.
pub const UPNP_TIMEOUT: Duration = Duration::from_secs(5);
/// With [`ViaChoice::Any`], UPnP discovery starts this long after PCP and NAT-PMP (or as
/// soon as both have failed): a gateway that answers them within one retransmission
/// timeout never sees UPnP traffic, and the discovery (SSDP, HTTP) does not compete with
/// the one round trip PCP needs. A UPnP-only gateway loses nothing, since UPnP only maps
/// once PCP and NAT-PMP have failed ([`REQUEST_RTO`] × 3 + [`REQUEST_LAST_WAIT`]).
pub const UPNP_HEAD_START: Duration = REQUEST_RTO;
/// After a mapping is lost, the first pause before another attempt to re-create it when
/// one failed; it doubles up to [`RECREATE_RETRY_MAX`].
pub const RECREATE_RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest pause between attempts to re-create a lost mapping.
pub const RECREATE_RETRY_MAX: Duration = Duration::from_secs(64);
/// The port on which clients hear the gateway's unsolicited announcements, multicast to
/// 224.0.0.1 (RFC 6887 §8.2 and §14.1.3; RFC 6886 §3.2.1).
pub const ANNOUNCE_PORT: u16 = 5350;
/// The longest random pause before re-creating a mapping after an announcement showed
/// that the gateway restarted (RFC 6887 §14.1.3: up to 5 seconds, so that the hosts of a
/// network do not all ask at once).
pub const ANNOUNCE_JITTER: Duration = Duration::from_secs(5);

/// Errors from the port-mapping codecs and machines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortmapError {
    /// The datagram is shorter than its type requires.
    #[error("truncated message")]
    Truncated,
    /// A version other than the protocol's (0 means a NAT-PMP-only gateway).
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// A request where a response was expected.
    #[error("not a response")]
    NotAResponse,
    /// An opcode this side does not handle.
    #[error("unexpected opcode {0}")]
    UnexpectedOpcode(u8),
    /// Otherwise malformed.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

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

/// Whether `ip` can be reached from the internet: not private (RFC 1918), shared
/// (CGNAT, RFC 6598's 100.64.0.0/10), loopback, link-local or unspecified; for IPv6 not
/// loopback, unique-local or link-local.
pub fn is_publicly_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let cgnat = o[0] == 100 && (o[1] & 0xC0) == 64;
            !(v4.is_private()
                || cgnat
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let ula = (seg[0] & 0xfe00) == 0xfc00;
            let link_local = (seg[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || ula || link_local)
        }
    }
}

/// The default IPv4 gateway from the text of Linux's `/proc/net/route`.
pub fn default_gateway_from_proc_route(text: &str) -> Option<Ipv4Addr> {
    const RTF_GATEWAY: u32 = 0x2;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (Ok(dest), Ok(gw), Ok(flags)) = (
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[2], 16),
            u32::from_str_radix(f[3], 16),
        ) else {
            continue;
        };
        if dest == 0 && flags & RTF_GATEWAY != 0 && gw != 0 {
            // The kernel prints the address in host (little-endian) byte order.
            return Some(Ipv4Addr::from(gw.to_le_bytes()));
        }
    }
    None
}

/// A mapping that exists on the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Why a mapping was lost or could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// The gateway's epoch went backwards or too slowly: it restarted (RFC 6887 §8.5).
    GatewayRestarted,
    /// Renewal failed until the mapping expired.
    Expired,
    /// The gateway refused the renewal.
    Refused(String),
    /// The gateway stopped answering the renewal (no answer to PCP or NAT-PMP after every
    /// retransmission; for UPnP, no SSDP answer, a failed connection or no HTTP answer in
    /// time) until the mapping was about to expire.
    NotAnswering(String),
    /// The gateway kept the mapping but traffic stopped arriving through it (STUN
    /// verification, [`MapperConfig::verify`]): it is deleted and added again.
    NotForwarding,
}

impl LossReason {
    /// A stable name for machine-readable output: `gateway-restarted`, `expired`,
    /// `refused`, `not-answering` or `not-forwarding`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LossReason::GatewayRestarted => "gateway-restarted",
            LossReason::Expired => "expired",
            LossReason::Refused(_) => "refused",
            LossReason::NotAnswering(_) => "not-answering",
            LossReason::NotForwarding => "not-forwarding",
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::GatewayRestarted => f.write_str("the gateway restarted"),
            LossReason::Expired => f.write_str("renewal failed until the mapping expired"),
            LossReason::Refused(why) => write!(f, "the gateway refused the renewal: {why}"),
            LossReason::NotAnswering(why) => {
                write!(f, "the gateway stopped answering the renewal ({why})")
            }
            LossReason::NotForwarding => {
                f.write_str("traffic from the STUN reflector no longer arrives through it")
            }
        }
    }
}

/// What the mapper reports.
#[derive(Debug, Clone, PartialEq)]
pub enum MapperEvent {
    /// A mapping exists (first time, or re-created after a loss).
    Mapped(Mapping),
    /// Renewed with the same external address.
    Renewed(Mapping),
    /// Renewed, but the external address or port changed.
    Changed {
        /// What it was.
        old: Mapping,
        /// What it is.
        new: Mapping,
    },
    /// The mapping is gone; the mapper is re-creating it.
    Lost(LossReason),
    /// No protocol could make a mapping.
    Unavailable(String),
    /// The release ([`Mapper::release`]) is over, and how: whether the gateway confirmed
    /// the deletion. The mapper has finished.
    Released(ReleaseOutcome),
    /// Traffic from the STUN reflector arrived through the mapping
    /// ([`MapperConfig::verify`]).
    Verified(Mapping),
    /// The gateway grants the mapping, but traffic does not arrive through it, even after
    /// deleting and adding it again. It is kept (and verified again after
    /// [`VerifyConfig::interval`]).
    NotForwarding(Mapping),
    /// The mapping could not be verified: the reflector did not answer, does not implement
    /// RFC 5780, or sees this host at another address; or no verification can work (a TCP
    /// mapping, or one whose external address is private or CGNAT, behind another NAT:
    /// said at every new such mapping). With no answer it is tried again after
    /// [`VerifyConfig::interval`]; otherwise verification stops.
    Unverified(String),
}

/// How a release ended ([`MapperEvent::Released`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The gateway confirmed the deletion of this mapping (for UPnP also by answering that
    /// no such mapping exists any more).
    Deleted(Mapping),
    /// The gateway did not confirm the deletion: it did not answer in time, or refused.
    /// The mapping may stay on the gateway until it expires (its
    /// [`good_until`](Mapping::good_until)).
    Unconfirmed {
        /// The mapping that may still exist.
        mapping: Mapping,
        /// What happened instead of a confirmation.
        why: String,
    },
    /// There was no mapping to delete (none was made, or it had been lost).
    NothingToDelete,
}

/// Work for the driver's UPnP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpnpCommand {
    /// Discover the IGD (SSDP: unicast to the gateway first, then multicast) and read
    /// its external address. Answer with [`UpnpResult::Available`],
    /// [`UpnpResult::Failed`] or [`UpnpResult::NoAnswer`].
    Probe,
    /// AddPortMapping (or AddAnyPortMapping when `external_port` is 0 or taken). Answer
    /// with [`UpnpResult::Mapped`], [`UpnpResult::Failed`] or [`UpnpResult::NoAnswer`].
    Map {
        /// UDP or TCP.
        protocol: MapProtocol,
        /// Internal client and port.
        internal: SocketAddr,
        /// Wanted external port (0: any).
        external_port: u16,
        /// Lease in seconds.
        lifetime: u32,
    },
    /// DeletePortMapping. Answer with [`UpnpResult::Deleted`],
    /// [`UpnpResult::NoSuchMapping`], [`UpnpResult::Failed`] or [`UpnpResult::NoAnswer`].
    Delete {
        /// UDP or TCP.
        protocol: MapProtocol,
        /// The external port.
        external_port: u16,
    },
}

/// The driver's answer to a [`UpnpCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpnpResult {
    /// An IGD answered; its external address if it gave one.
    Available {
        /// GetExternalIPAddress.
        external_ip: Option<IpAddr>,
    },
    /// A mapping was added.
    Mapped {
        /// The external address and port.
        external: SocketAddr,
        /// The lease granted, seconds (0: infinite, which the mapper renews hourly).
        lifetime: u32,
    },
    /// A mapping was deleted.
    Deleted,
    /// DeletePortMapping: the gateway has no mapping on that external port (UPnP error 714,
    /// NoSuchEntryInArray).
    NoSuchMapping,
    /// The gateway refused the operation, or answered something unusable.
    Failed(String),
    /// Nothing answered: no IGD answered the SSDP search, or the HTTP exchange could not
    /// connect or got no answer in time. Told apart from [`UpnpResult::Failed`] so that a
    /// gateway that stops answering is not reported as one that refuses.
    NoAnswer(String),
}

/// Where the mapper talks and what it asks for.
#[derive(Debug, Clone)]
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
    /// datagrams must then reach [`Mapper::handle_input`], and [`Mapper::poll_transmit`]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    PcpMap,
    PcpDelete,
    PcpAnnounce,
    NatPmpExternal,
    NatPmpMap,
    NatPmpDelete,
}

#[derive(Debug)]
struct Outstanding {
    req: Req,
    bytes: Vec<u8>,
    transmits: u32,
    rto: Duration,
    deadline: Instant,
}

/// Retransmits PCP / NAT-PMP requests to the gateway on RFC 6886's schedule.
#[derive(Debug)]
struct Requests {
    source: SocketAddr,
    server: SocketAddr,
    out: Vec<Outstanding>,
    transmits: VecDeque<Transmit>,
}

impl Requests {
    fn new(source: SocketAddr, gateway: IpAddr) -> Self {
        Self {
            source,
            server: SocketAddr::new(gateway, natpmp::SERVER_PORT),
            out: Vec::new(),
            transmits: VecDeque::new(),
        }
    }

    fn send(&mut self, now: Instant, req: Req, bytes: Vec<u8>) {
        self.out.retain(|o| o.req != req);
        self.transmits.push_back(Transmit {
            proto: Protocol::Udp,
            source: self.source,
            destination: self.server,
            contents: bytes.clone(),
        });
        self.out.push(Outstanding {
            req,
            bytes,
            transmits: 1,
            rto: REQUEST_RTO,
            deadline: now + REQUEST_RTO,
        });
    }

    fn pending(&self, req: Req) -> bool {
        self.out.iter().any(|o| o.req == req)
    }

    fn done(&mut self, req: Req) -> bool {
        let before = self.out.len();
        self.out.retain(|o| o.req != req);
        before != self.out.len()
    }

    /// Retransmits what is due; returns the requests that gave up.
    fn timeout(&mut self, now: Instant) -> Vec<Req> {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < self.out.len() {
            let o = &mut self.out[i];
            if o.deadline > now {
                i += 1;
                continue;
            }
            if o.transmits < REQUEST_TRANSMITS {
                o.transmits += 1;
                o.rto *= 2;
                o.deadline = if o.transmits == REQUEST_TRANSMITS {
                    now + REQUEST_LAST_WAIT
                } else {
                    now + o.rto
                };
                self.transmits.push_back(Transmit {
                    proto: Protocol::Udp,
                    source: self.source,
                    destination: self.server,
                    contents: o.bytes.clone(),
                });
                i += 1;
            } else {
                failed.push(self.out.swap_remove(i).req);
            }
        }
        failed
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.out.iter().map(|o| o.deadline).min()
    }

    /// Whether `rx` comes from the gateway's port 5351 to our socket.
    fn is_from_gateway(&self, rx: &Received<'_>) -> bool {
        rx.source == self.server && rx.destination == self.source
    }
}

/// A uniformly random pause in `[0, max)`.
fn jitter(rng: &mut ChaCha20Rng, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rng.next_u64() % max_ms)
}

/// RFC 6887 §8.5: is the server's epoch consistent with the previous one?
fn epoch_consistent(prev: Option<(u32, Instant)>, epoch: u32, now: Instant) -> bool {
    let Some((prev_epoch, prev_at)) = prev else {
        return true;
    };
    if u64::from(epoch) + 1 < u64::from(prev_epoch) {
        return false;
    }
    let client = now.saturating_duration_since(prev_at).as_secs_f64();
    let server = f64::from(epoch.saturating_sub(prev_epoch));
    !(client + 2.0 < server - server / 16.0 || server + 2.0 < client - client / 16.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Support {
    Unknown,
    Works,
    Fails,
}

/// Why one attempt (to map or to renew) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The gateway answered, and refused (or answered something unusable).
    Refused(String),
    /// Nothing answered in time.
    NoAnswer(String),
}

impl Failure {
    fn why(&self) -> &str {
        match self {
            Failure::Refused(why) | Failure::NoAnswer(why) => why,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Probing,
    Mapped,
    /// Deleting a mapping that does not forward, to add it again.
    Readding,
    Releasing,
    Released,
    Unavailable,
}

/// The port mapper. See the module docs.
#[derive(Debug)]
pub struct Mapper {
    config: MapperConfig,
    rng: ChaCha20Rng,
    nonce: [u8; 12],
    requests: Requests,
    phase: Phase,
    pcp: Support,
    natpmp: Support,
    upnp: Support,
    natpmp_external: Option<Ipv4Addr>,
    natpmp_port: Option<(u16, u32)>,
    upnp_busy: bool,
    /// When the UPnP discovery of [`ViaChoice::Any`] starts (see [`UPNP_HEAD_START`]).
    upnp_probe_at: Option<Instant>,
    /// A mapping was lost and is being re-created: failing is not the end.
    recreating: bool,
    /// When to try re-creating again, and the pause after that attempt fails.
    retry_at: Option<Instant>,
    retry_pause: Duration,
    pcp_epoch: Option<(u32, Instant)>,
    natpmp_epoch: Option<(u32, Instant)>,
    mapping: Option<Mapping>,
    preferred: Option<Via>,
    renewing: bool,
    upnp_out: VecDeque<UpnpCommand>,
    events: VecDeque<MapperEvent>,
    failures: Vec<String>,
    /// The verification under way.
    verification: Option<verify::Verification>,
    /// The last finished one, whose late answers are still ours.
    verification_past: Option<verify::Verification>,
    /// When to verify again.
    verify_at: Option<Instant>,
    /// The reflector cannot verify: stop asking.
    verify_off: bool,
    /// The current mapping was deleted and added again because it did not forward.
    readded: bool,
    /// Probe answers come from the reflector's other IP and primary port instead of its
    /// other IP and port; switched after every failed verification (see [`verify`]).
    verify_alt_source: bool,
    /// Verification datagrams (sent from the mapped socket).
    verify_out: VecDeque<Transmit>,
}

impl Mapper {
    /// A mapper whose PCP/NAT-PMP socket is `source` (its IP should be
    /// `config.local_ip`). It starts probing at once.
    pub fn new(now: Instant, mut config: MapperConfig, source: SocketAddr, seed: [u8; 32]) -> Self {
        if let Some(v) = config.verify.as_mut() {
            v.interval = v.interval.clamp(MIN_VERIFY_INTERVAL, MAX_VERIFY_INTERVAL);
        }
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let mut m = Self {
            requests: Requests::new(source, config.gateway),
            config,
            rng,
            nonce,
            phase: Phase::Probing,
            pcp: Support::Unknown,
            natpmp: Support::Unknown,
            upnp: Support::Unknown,
            natpmp_external: None,
            natpmp_port: None,
            upnp_busy: false,
            upnp_probe_at: None,
            recreating: false,
            retry_at: None,
            retry_pause: RECREATE_RETRY_MIN,
            pcp_epoch: None,
            natpmp_epoch: None,
            mapping: None,
            preferred: None,
            renewing: false,
            upnp_out: VecDeque::new(),
            events: VecDeque::new(),
            failures: Vec::new(),
            verification: None,
            verification_past: None,
            verify_at: None,
            verify_off: false,
            readded: false,
            verify_alt_source: false,
            verify_out: VecDeque::new(),
        };
        m.start(now);
        m
    }

    /// The protocol that made the current (or last) mapping.
    pub fn preferred(&self) -> Option<Via> {
        self.preferred
    }

    /// The current mapping.
    pub fn mapping(&self) -> Option<&Mapping> {
        self.mapping.as_ref()
    }

    /// Whether the mapper has finished: released, or nothing could map.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Released | Phase::Unavailable)
    }

    fn allowed(&self, via: Via) -> bool {
        match self.config.via {
            ViaChoice::Any => true,
            ViaChoice::Only(v) => v == via,
        }
    }

    fn start(&mut self, now: Instant) {
        self.phase = Phase::Probing;
        self.renewing = false;
        self.failures.clear();
        self.retry_at = None;
        // Whatever NAT-PMP said before may be stale (a restarted gateway may have another
        // external address).
        self.natpmp_external = None;
        self.natpmp_port = None;
        let first = match (self.config.via, self.preferred) {
            (ViaChoice::Only(v), _) => Some(v),
            (ViaChoice::Any, p) => p,
        };
        match first {
            Some(Via::Pcp) => self.send_pcp_map(now, self.config.lifetime),
            Some(Via::NatPmp) => {
                self.send_natpmp_external(now);
                self.send_natpmp_map(now, self.config.lifetime);
            }
            Some(Via::Upnp) => self.send_upnp_map(),
            None => {
                self.send_pcp_map(now, self.config.lifetime);
                self.send_natpmp_external(now);
                self.upnp_probe_at = Some(now + UPNP_HEAD_START);
            }
        }
    }

    fn send_pcp_map(&mut self, now: Instant, lifetime: u32) {
        let (port, ip) = match self.mapping.filter(|m| m.via == Via::Pcp) {
            Some(m) => (m.external.port(), m.external.ip()),
            None => (self.config.suggested_external_port, pcp::ANY_V4),
        };
        let req = pcp::Request {
            lifetime,
            client_ip: self.config.local_ip,
            data: pcp::OpData::Map(pcp::MapData {
                nonce: self.nonce,
                protocol: self.config.protocol,
                internal_port: self.config.internal_port,
                external_port: port,
                external_ip: ip,
            }),
        };
        let mut b = [0u8; 80];
        if let Ok(n) = req.emit(&mut b) {
            let kind = if lifetime == 0 {
                Req::PcpDelete
            } else {
                Req::PcpMap
            };
            self.requests.send(now, kind, b[..n].to_vec());
        }
    }

    fn send_natpmp_external(&mut self, now: Instant) {
        let mut b = [0u8; 12];
        let n = natpmp::Request::ExternalAddress.emit(&mut b);
        self.requests
            .send(now, Req::NatPmpExternal, b[..n].to_vec());
    }

    fn send_natpmp_map(&mut self, now: Instant, lifetime: u32) {
        let suggested = match (lifetime, self.mapping.filter(|m| m.via == Via::NatPmp)) {
            // RFC 6886 §3.4: delete with suggested external port 0.
            (0, _) => 0,
            (_, Some(m)) => m.external.port(),
            (_, None) => self.config.suggested_external_port,
        };
        let mut b = [0u8; 12];
        let n = natpmp::Request::Map {
            protocol: self.config.protocol,
            internal_port: self.config.internal_port,
            suggested_external_port: suggested,
            lifetime,
        }
        .emit(&mut b);
        let kind = if lifetime == 0 {
            Req::NatPmpDelete
        } else {
            Req::NatPmpMap
        };
        self.requests.send(now, kind, b[..n].to_vec());
    }

    fn send_upnp_map(&mut self) {
        self.upnp_probe_at = None;
        let external_port = self
            .mapping
            .filter(|m| m.via == Via::Upnp)
            .map_or(self.config.suggested_external_port, |m| m.external.port());
        self.upnp_busy = true;
        self.upnp_out.push_back(UpnpCommand::Map {
            protocol: self.config.protocol,
            internal: SocketAddr::new(self.config.local_ip, self.config.internal_port),
            external_port,
            lifetime: self.config.lifetime,
        });
    }

    /// Deletes the mapping; [`MapperEvent::Released`] follows, saying whether the gateway
    /// confirmed the deletion (also when it does not answer it: after the retransmissions
    /// of PCP and NAT-PMP, when UPnP fails, or at [`Mapper::abandon_release`]).
    pub fn release(&mut self, now: Instant) {
        self.verification = None;
        self.verify_at = None;
        if self.phase == Phase::Readding {
            // The deletion is already under way.
            self.phase = Phase::Releasing;
            return;
        }
        self.requests.out.clear();
        self.upnp_out.clear();
        self.upnp_probe_at = None;
        self.retry_at = None;
        // A renewal under way is dropped: its answer must not count as a new mapping.
        let renewing = std::mem::replace(&mut self.renewing, false);
        match self.mapping.take() {
            Some(m) if self.phase == Phase::Mapped || renewing => {
                self.phase = Phase::Releasing;
                self.mapping = Some(m);
                match m.via {
                    Via::Pcp => self.send_pcp_map(now, 0),
                    Via::NatPmp => self.send_natpmp_map(now, 0),
                    Via::Upnp => {
                        self.upnp_busy = true;
                        self.upnp_out.push_back(UpnpCommand::Delete {
                            protocol: m.protocol,
                            external_port: m.external.port(),
                        });
                    }
                }
            }
            _ => {
                self.phase = Phase::Released;
                self.events
                    .push_back(MapperEvent::Released(ReleaseOutcome::NothingToDelete));
            }
        }
    }

    /// Gives up waiting for the gateway to confirm a deletion under way (the driver's
    /// bound on a release): [`MapperEvent::Released`] follows with
    /// [`ReleaseOutcome::Unconfirmed`]. Does nothing when no release is under way.
    pub fn abandon_release(&mut self, why: &str) {
        if self.phase == Phase::Releasing {
            self.upnp_out.clear();
            self.finish_release(Err(why.to_owned()));
        }
    }

    /// Offers a datagram that arrived on the mapper's socket; returns whether it was a
    /// PCP or NAT-PMP answer from the gateway (accepted or dropped).
    ///
    /// Also takes the answers to a verification (on the mapped socket, see
    /// [`MapperConfig::verify`]) and the gateway's announcements to port
    /// [`ANNOUNCE_PORT`].
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        if let Some(v) = self.verification.as_mut().filter(|v| v.owns(rx.contents)) {
            if let Some(outcome) = v.handle_input(rx.source, rx.contents) {
                self.verified(now, outcome);
            }
            return true;
        }
        if self
            .verification_past
            .as_ref()
            .is_some_and(|v| v.owns(rx.contents))
        {
            debug!("late answer to a finished verification dropped");
            return true;
        }
        let announcement =
            rx.source == self.requests.server && rx.destination.port() == ANNOUNCE_PORT;
        if announcement {
            self.on_announcement(now, rx.contents);
            return true;
        }
        if !self.requests.is_from_gateway(&rx) {
            return false;
        }
        match rx.contents.first() {
            Some(&pcp::VERSION) => match pcp::Response::parse(rx.contents) {
                Ok(r) => self.on_pcp(now, r),
                Err(e) => debug!(error = %e, "malformed PCP response dropped"),
            },
            Some(&natpmp::VERSION) => match natpmp::Response::parse(rx.contents) {
                Ok(r) => self.on_natpmp(now, r),
                Err(e) => debug!(error = %e, "malformed NAT-PMP response dropped"),
            },
            _ => debug!("datagram from the gateway that is neither PCP nor NAT-PMP dropped"),
        }
        true
    }

    fn on_pcp(&mut self, now: Instant, r: pcp::Response) {
        let Some(pcp::OpData::Map(data)) = r.data.filter(|_| r.opcode == pcp::Opcode::Map) else {
            if r.opcode == pcp::Opcode::Announce {
                self.check_epoch(now, Via::Pcp, r.epoch);
            } else if r.result != pcp::ResultCode::SUCCESS && self.requests.done(Req::PcpDelete) {
                // An error without the MAP data (RFC 6887 §7.3 lets a server truncate it).
                self.delete_done(now, Err(format!("PCP: {}", r.result.name())));
            } else if r.result != pcp::ResultCode::SUCCESS && self.requests.pending(Req::PcpMap) {
                self.pcp_failed(now, format!("PCP: {}", r.result.name()));
            }
            return;
        };
        if data.nonce != self.nonce
            || data.protocol != self.config.protocol
            || data.internal_port != self.config.internal_port
        {
            debug!("PCP response for another mapping dropped");
            return;
        }
        if self.requests.done(Req::PcpDelete) {
            let result = if r.result == pcp::ResultCode::SUCCESS {
                Ok(())
            } else {
                Err(format!("PCP: {}", r.result.name()))
            };
            self.delete_done(now, result);
            return;
        }
        if !self.requests.done(Req::PcpMap) {
            return;
        }
        if !self.check_epoch(now, Via::Pcp, r.epoch) {
            return;
        }
        if r.result != pcp::ResultCode::SUCCESS || r.lifetime == 0 {
            self.pcp_failed(now, format!("PCP: {}", r.result.name()));
            return;
        }
        self.pcp = Support::Works;
        let external = SocketAddr::new(data.external_ip, data.external_port);
        self.mapped(now, Via::Pcp, external, r.lifetime);
    }

    fn pcp_failed(&mut self, now: Instant, why: String) {
        self.requests.done(Req::PcpMap);
        self.pcp = Support::Fails;
        self.on_failure(now, Via::Pcp, Failure::Refused(why));
    }

    fn on_natpmp(&mut self, now: Instant, r: natpmp::Response) {
        // A NAT-PMP-only gateway answers our PCP request in NAT-PMP format with
        // UNSUPPORTED_VERSION (RFC 6887 §9): fall back.
        if r.result == natpmp::ResultCode::UNSUPPORTED_VERSION {
            if self.requests.pending(Req::PcpMap) {
                self.pcp_failed(now, "PCP: the gateway speaks only NAT-PMP".into());
            }
            return;
        }
        match r.body {
            natpmp::ResponseBody::ExternalAddress(ip) => {
                if !self.requests.done(Req::NatPmpExternal)
                    || !self.check_epoch(now, Via::NatPmp, r.epoch)
                {
                    return;
                }
                self.natpmp = Support::Works;
                self.natpmp_external = Some(ip);
                self.try_natpmp_mapped(now);
                self.advance(now);
            }
            natpmp::ResponseBody::Map {
                protocol,
                internal_port,
                external_port,
                lifetime,
            } => {
                if protocol != self.config.protocol || internal_port != self.config.internal_port {
                    debug!("NAT-PMP response for another mapping dropped");
                    return;
                }
                if self.requests.done(Req::NatPmpDelete) {
                    self.delete_done(now, Ok(()));
                    return;
                }
                if !self.requests.done(Req::NatPmpMap)
                    || !self.check_epoch(now, Via::NatPmp, r.epoch)
                {
                    return;
                }
                self.natpmp = Support::Works;
                self.natpmp_port = Some((external_port, lifetime));
                self.try_natpmp_mapped(now);
            }
            natpmp::ResponseBody::Error { opcode } => {
                let why = format!("NAT-PMP: {}", r.result.name());
                if opcode == natpmp::OP_EXTERNAL_ADDRESS && self.requests.done(Req::NatPmpExternal)
                {
                    self.natpmp = Support::Fails;
                    self.on_failure(now, Via::NatPmp, Failure::Refused(why));
                } else if self.requests.done(Req::NatPmpDelete) {
                    self.delete_done(now, Err(why));
                } else if self.requests.done(Req::NatPmpMap) {
                    self.natpmp = Support::Fails;
                    self.on_failure(now, Via::NatPmp, Failure::Refused(why));
                }
            }
        }
    }

    /// A NAT-PMP mapping needs both the map response and the external address.
    fn try_natpmp_mapped(&mut self, now: Instant) {
        if let (Some(ip), Some((port, lifetime))) = (self.natpmp_external, self.natpmp_port) {
            self.natpmp_port = None;
            if lifetime == 0 || port == 0 {
                self.natpmp = Support::Fails;
                self.on_failure(
                    now,
                    Via::NatPmp,
                    Failure::Refused("NAT-PMP granted no lifetime".into()),
                );
                return;
            }
            self.mapped(
                now,
                Via::NatPmp,
                SocketAddr::new(IpAddr::V4(ip), port),
                lifetime,
            );
        }
    }

    /// Checks the epoch; on a restart while mapped, reports the loss and re-creates.
    fn check_epoch(&mut self, now: Instant, via: Via, epoch: u32) -> bool {
        let slot = match via {
            Via::Pcp => &mut self.pcp_epoch,
            _ => &mut self.natpmp_epoch,
        };
        let ok = epoch_consistent(*slot, epoch, now);
        *slot = Some((epoch, now));
        if !ok && self.mapping.is_some_and(|m| m.via == via) && self.phase != Phase::Releasing {
            debug!(
                via = via.as_str(),
                epoch, "gateway epoch inconsistent: it restarted"
            );
            self.lose(now, LossReason::GatewayRestarted);
            return false;
        }
        true
    }

    fn mapped(&mut self, now: Instant, via: Via, external: SocketAddr, lifetime: u32) {
        // UPnP's 0 means "infinite": renew hourly all the same.
        let secs = if lifetime == 0 { 7200 } else { lifetime };
        let lifetime = Duration::from_secs(u64::from(secs));
        let new = Mapping {
            via,
            protocol: self.config.protocol,
            internal: SocketAddr::new(self.config.local_ip, self.config.internal_port),
            external,
            lifetime,
            good_until: now + lifetime,
            renew_at: now + lifetime / 2,
            reachable: is_publicly_routable(external.ip()),
        };
        let old = self.mapping.replace(new);
        self.preferred = Some(via);
        self.upnp_probe_at = None;
        self.recreating = false;
        self.retry_at = None;
        self.retry_pause = RECREATE_RETRY_MIN;
        let was_renewing = std::mem::replace(&mut self.renewing, false);
        self.phase = Phase::Mapped;
        // Whatever else was probing is no longer needed.
        self.requests
            .out
            .retain(|o| matches!(o.req, Req::PcpDelete | Req::NatPmpDelete));
        let ev = match old {
            Some(o) if was_renewing && o.external == new.external => MapperEvent::Renewed(new),
            Some(o) if was_renewing => MapperEvent::Changed { old: o, new },
            _ => MapperEvent::Mapped(new),
        };
        let fresh = !matches!(ev, MapperEvent::Renewed(_));
        self.events.push_back(ev);
        if fresh || self.verify_at.is_some_and(|t| now >= t) {
            self.start_verification(now);
        }
    }

    fn on_failure(&mut self, now: Instant, via: Via, failure: Failure) {
        debug!(via = via.as_str(), why = %failure.why(), "port mapping attempt failed");
        if self.renewing {
            // Keep the mapping until good-until; retry halfway to it.
            let Some(m) = self.mapping else { return };
            let left = m.good_until.saturating_duration_since(now);
            if left > Duration::from_secs(2) {
                if let Some(m) = self.mapping.as_mut() {
                    m.renew_at = now + left / 2;
                }
                self.renewing = false;
            } else {
                let reason = match failure {
                    Failure::Refused(why) => LossReason::Refused(why),
                    Failure::NoAnswer(why) => LossReason::NotAnswering(why),
                };
                self.lose(now, reason);
            }
            return;
        }
        self.failures.push(failure.why().to_owned());
        self.advance(now);
    }

    fn lose(&mut self, now: Instant, reason: LossReason) {
        self.events.push_back(MapperEvent::Lost(reason));
        self.readded = false;
        self.verification = None;
        self.verify_at = None;
        self.mapping = None;
        self.requests.out.clear();
        self.recreating = true;
        self.start(now);
    }

    /// In the probing phase, moves on to the next protocol once the preferred ones have
    /// failed, asking those not heard from yet (after a re-creation that tried only the
    /// remembered protocol, say).
    fn advance(&mut self, now: Instant) {
        if self.phase != Phase::Probing || self.retry_at.is_some() {
            return;
        }
        if self.allowed(Via::Pcp) && self.pcp != Support::Fails {
            // PCP may still answer.
            if !self.requests.pending(Req::PcpMap) {
                self.send_pcp_map(now, self.config.lifetime);
            }
            return;
        }
        if self.allowed(Via::NatPmp) && self.natpmp != Support::Fails {
            let waiting =
                self.requests.pending(Req::NatPmpMap) || self.requests.pending(Req::NatPmpExternal);
            if !waiting {
                if self.natpmp_external.is_none() {
                    self.send_natpmp_external(now);
                }
                if self.natpmp == Support::Works && self.natpmp_port.is_none() {
                    self.send_natpmp_map(now, self.config.lifetime);
                }
            }
            return;
        }
        if self.allowed(Via::Upnp) && self.upnp != Support::Fails {
            // An IGD answered the discovery or has not been asked yet: map (the discovery
            // is part of it). A discovery still under way answers first.
            if !self.upnp_busy {
                self.send_upnp_map();
            }
            return;
        }
        let why = if self.failures.is_empty() {
            "no port-mapping protocol answered".to_owned()
        } else {
            self.failures.join("; ")
        };
        if self.recreating {
            // The gateway may be rebooting: try everything again after a pause.
            debug!(%why, pause = ?self.retry_pause, "re-creating the mapping failed");
            self.retry_at = Some(now + self.retry_pause);
            self.retry_pause = (self.retry_pause * 2).min(RECREATE_RETRY_MAX);
            return;
        }
        self.phase = Phase::Unavailable;
        self.events.push_back(MapperEvent::Unavailable(why));
    }

    /// The driver's answer to the last [`UpnpCommand`].
    pub fn handle_upnp(&mut self, now: Instant, result: UpnpResult) {
        self.upnp_busy = false;
        match result {
            UpnpResult::Available { .. } => {
                self.upnp = Support::Works;
                self.advance(now);
            }
            UpnpResult::Mapped { external, lifetime } => {
                if self.phase == Phase::Probing || (self.renewing && self.phase == Phase::Mapped) {
                    self.upnp = Support::Works;
                    self.mapped(now, Via::Upnp, external, lifetime);
                }
            }
            UpnpResult::Deleted | UpnpResult::NoSuchMapping => self.delete_done(now, Ok(())),
            UpnpResult::Failed(why) | UpnpResult::NoAnswer(why)
                if matches!(self.phase, Phase::Releasing | Phase::Readding) =>
            {
                self.delete_done(now, Err(format!("UPnP: {why}")));
            }
            UpnpResult::Failed(why) => {
                self.upnp = Support::Fails;
                self.on_failure(now, Via::Upnp, Failure::Refused(format!("UPnP: {why}")));
            }
            UpnpResult::NoAnswer(why) => {
                self.upnp = Support::Fails;
                self.on_failure(now, Via::Upnp, Failure::NoAnswer(format!("UPnP: {why}")));
            }
        }
    }

    /// The release is over: `result` is the gateway's confirmation, or why there is none.
    fn finish_release(&mut self, result: Result<(), String>) {
        let outcome = match (self.mapping.take(), result) {
            (Some(m), Ok(())) => ReleaseOutcome::Deleted(m),
            (Some(m), Err(why)) => ReleaseOutcome::Unconfirmed { mapping: m, why },
            (None, _) => ReleaseOutcome::NothingToDelete,
        };
        self.verification = None;
        self.requests.out.clear();
        self.phase = Phase::Released;
        self.events.push_back(MapperEvent::Released(outcome));
    }

    /// A deletion finished (`Ok`: confirmed; `Err`: refused or given up, and why): released,
    /// or add the mapping again.
    fn delete_done(&mut self, now: Instant, result: Result<(), String>) {
        match self.phase {
            Phase::Releasing => self.finish_release(result),
            Phase::Readding => {
                // The mapping stays known, so that the same external port is asked for.
                self.requests.out.clear();
                self.recreating = true;
                self.start(now);
            }
            _ => {}
        }
    }

    /// An unsolicited message to [`ANNOUNCE_PORT`] from the gateway.
    fn on_announcement(&mut self, now: Instant, contents: &[u8]) {
        let (via, epoch) = match contents.first() {
            Some(&pcp::VERSION) => match pcp::Response::parse(contents) {
                Ok(r) if r.opcode == pcp::Opcode::Announce => (Via::Pcp, r.epoch),
                Ok(_) => {
                    debug!("unsolicited PCP message other than ANNOUNCE dropped");
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "malformed PCP announcement dropped");
                    return;
                }
            },
            Some(&natpmp::VERSION) => match natpmp::Response::parse(contents) {
                Ok(natpmp::Response {
                    result: natpmp::ResultCode::SUCCESS,
                    epoch,
                    body: natpmp::ResponseBody::ExternalAddress(_),
                }) => (Via::NatPmp, epoch),
                Ok(_) => {
                    debug!("unsolicited NAT-PMP message other than an address notice dropped");
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "malformed NAT-PMP announcement dropped");
                    return;
                }
            },
            _ => {
                debug!("announcement that is neither PCP nor NAT-PMP dropped");
                return;
            }
        };
        let slot = match via {
            Via::Pcp => &mut self.pcp_epoch,
            _ => &mut self.natpmp_epoch,
        };
        let consistent = epoch_consistent(*slot, epoch, now);
        *slot = Some((epoch, now));
        let Some(m) = self.mapping.filter(|_| self.phase == Phase::Mapped) else {
            return;
        };
        if !consistent && m.via == via {
            let pause = jitter(&mut self.rng, ANNOUNCE_JITTER);
            debug!(
                via = via.as_str(),
                epoch,
                ?pause,
                "the gateway announced a restart; re-creating the mapping"
            );
            self.events
                .push_back(MapperEvent::Lost(LossReason::GatewayRestarted));
            self.verification = None;
            self.verify_at = None;
            self.mapping = None;
            self.requests.out.clear();
            self.renewing = false;
            self.recreating = true;
            self.phase = Phase::Probing;
            self.retry_at = Some(now + pause);
            return;
        }
        // Anything else the gateway announces (its start, over a protocol the mapping does
        // not use; a new external address, RFC 6886 §3.2.1) is checked by renewing soon:
        // the renewal's epoch tells a restart, its answer the external address.
        let at = now + jitter(&mut self.rng, ANNOUNCE_JITTER);
        if !self.renewing && m.renew_at > at {
            debug!(
                via = via.as_str(),
                ?at,
                "gateway announcement: renewing soon"
            );
            if let Some(m) = self.mapping.as_mut() {
                m.renew_at = at;
            }
        }
    }

    /// Verifies the current mapping if that is configured and possible. When it is not
    /// possible, [`MapperEvent::Unverified`] says why (once for a TCP mapping, at every new
    /// mapping behind another NAT), so that a caller waiting for the outcome of the
    /// verification of a new mapping always gets one.
    fn start_verification(&mut self, now: Instant) {
        // Cleared first: a check that cannot start must not stay due (a timer in the past).
        self.verify_at = None;
        let (Some(cfg), Some(m)) = (self.config.verify, self.mapping) else {
            return;
        };
        if self.verify_off {
            return;
        }
        if self.config.protocol != MapProtocol::Udp {
            self.verify_off = true;
            self.events.push_back(MapperEvent::Unverified(
                "verification checks UDP mappings only".into(),
            ));
            return;
        }
        if !m.reachable {
            debug!("mapping behind another NAT: not verified");
            self.events.push_back(MapperEvent::Unverified(format!(
                "verification skipped: the mapping's external address {} is private or shared \
                 (CGNAT), so another NAT lies beyond the gateway and traffic from the internet \
                 cannot arrive through it",
                m.external.ip()
            )));
            return;
        }
        self.verification = Some(verify::Verification::start(
            now,
            &mut self.rng,
            m.external,
            m.internal,
            cfg.reflector,
            self.verify_alt_source,
            &mut self.verify_out,
        ));
    }

    /// What a verification found.
    fn verified(&mut self, now: Instant, outcome: verify::Outcome) {
        self.verification_past = self.verification.take();
        let Some(m) = self.mapping.filter(|_| self.phase == Phase::Mapped) else {
            return;
        };
        let interval = self.config.verify.map_or(VERIFY_INTERVAL, |v| v.interval);
        match outcome {
            verify::Outcome::Forwarding => {
                self.readded = false;
                self.verify_at = Some(now + interval);
                self.events.push_back(MapperEvent::Verified(m));
            }
            verify::Outcome::NotForwarding if !self.readded => {
                debug!(
                    via = m.via.as_str(),
                    "nothing arrives through the mapping: deleting and adding it again"
                );
                self.readded = true;
                self.verify_alt_source = !self.verify_alt_source;
                self.events
                    .push_back(MapperEvent::Lost(LossReason::NotForwarding));
                self.phase = Phase::Readding;
                self.renewing = false;
                self.requests.out.clear();
                match m.via {
                    Via::Pcp => self.send_pcp_map(now, 0),
                    Via::NatPmp => self.send_natpmp_map(now, 0),
                    Via::Upnp => {
                        self.upnp_busy = true;
                        self.upnp_out.push_back(UpnpCommand::Delete {
                            protocol: m.protocol,
                            external_port: m.external.port(),
                        });
                    }
                }
            }
            verify::Outcome::NotForwarding => {
                // Still nothing after the re-add: report it and keep the mapping; it is
                // re-added again only after it has forwarded once (or is lost and
                // re-created), not at every interval.
                self.verify_alt_source = !self.verify_alt_source;
                self.verify_at = Some(now + interval);
                self.events.push_back(MapperEvent::NotForwarding(m));
            }
            verify::Outcome::Silent => {
                self.verify_at = Some(now + interval);
                self.events.push_back(MapperEvent::Unverified(
                    "the STUN reflector did not answer".into(),
                ));
            }
            verify::Outcome::Unsupported(why) => {
                self.verify_off = true;
                self.events.push_back(MapperEvent::Unverified(why));
            }
        }
    }

    /// Retransmissions, timeouts, renewals, the UPnP discovery's start and retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(v) = self.verification.as_mut()
            && let Some(outcome) = v.handle_timeout(now, &mut self.verify_out)
        {
            self.verified(now, outcome);
        }
        if self.phase == Phase::Mapped
            && self.verification.is_none()
            && !self.renewing
            && self.verify_at.is_some_and(|t| now >= t)
        {
            self.start_verification(now);
        }
        if self.phase == Phase::Probing {
            if self.retry_at.is_some_and(|t| now >= t) {
                // Every allowed protocol again, in parallel, as at first.
                self.pcp = Support::Unknown;
                self.natpmp = Support::Unknown;
                self.upnp = Support::Unknown;
                let preferred = self.preferred.take();
                self.start(now);
                self.preferred = preferred;
            }
            if self.upnp_probe_at.is_some_and(|t| now >= t) {
                self.upnp_probe_at = None;
                if self.allowed(Via::Upnp) && self.upnp == Support::Unknown && !self.upnp_busy {
                    self.upnp_busy = true;
                    self.upnp_out.push_back(UpnpCommand::Probe);
                }
            }
        }
        // Note every protocol that gave up before reacting, so that the fallback neither
        // asks one that is failing at this very moment nor gives up without its reason.
        let mut gave_up: Vec<(Via, String)> = Vec::new();
        for req in self.requests.timeout(now) {
            match req {
                Req::PcpMap => {
                    self.pcp = Support::Fails;
                    gave_up.push((Via::Pcp, "PCP: no answer".into()));
                }
                Req::NatPmpExternal | Req::NatPmpMap => {
                    self.requests.done(Req::NatPmpExternal);
                    self.requests.done(Req::NatPmpMap);
                    // The external-address and map requests may both give up.
                    if !gave_up.iter().any(|g| g.0 == Via::NatPmp) {
                        gave_up.push((Via::NatPmp, "NAT-PMP: no answer".into()));
                    }
                    self.natpmp = Support::Fails;
                }
                Req::PcpDelete => self.delete_done(now, Err("PCP: no answer".into())),
                Req::NatPmpDelete => self.delete_done(now, Err("NAT-PMP: no answer".into())),
                Req::PcpAnnounce => {}
            }
        }
        if self.renewing {
            if let Some((via, why)) = gave_up.into_iter().next() {
                self.on_failure(now, via, Failure::NoAnswer(why));
            }
        } else if !gave_up.is_empty() {
            for (via, why) in gave_up {
                debug!(via = via.as_str(), %why, "port mapping attempt failed");
                self.failures.push(why);
            }
            self.advance(now);
        }
        if self.phase == Phase::Mapped && !self.renewing {
            if let Some(m) = self.mapping {
                if now >= m.good_until {
                    self.lose(now, LossReason::Expired);
                } else if now >= m.renew_at {
                    self.renewing = true;
                    match m.via {
                        Via::Pcp => self.send_pcp_map(now, self.config.lifetime),
                        Via::NatPmp => {
                            self.send_natpmp_external(now);
                            self.send_natpmp_map(now, self.config.lifetime);
                        }
                        Via::Upnp => self.send_upnp_map(),
                    }
                }
            }
        }
    }

    /// The next datagram: for the gateway, or (verification) for the STUN reflector.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.requests
            .transmits
            .pop_front()
            .or_else(|| self.verify_out.pop_front())
    }

    /// The next UPnP operation for the driver; answer it with [`Mapper::handle_upnp`]
    /// within [`UPNP_TIMEOUT`].
    #[must_use]
    pub fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        self.upnp_out.pop_front()
    }

    /// When to call `handle_timeout` next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let renew = match (self.phase, self.renewing, self.mapping) {
            (Phase::Mapped, false, Some(m)) => Some(m.renew_at.min(m.good_until)),
            _ => None,
        };
        let probing = match self.phase {
            Phase::Probing => [self.upnp_probe_at, self.retry_at],
            // Verification waits for a renewal under way (which starts it when due).
            Phase::Mapped if !self.renewing && self.verification.is_none() => {
                [self.verify_at, None]
            }
            _ => [None, None],
        };
        let verifying = self.verification.as_ref().map(|v| v.deadline());
        [self.requests.next_deadline(), renew, verifying]
            .into_iter()
            .chain(probing)
            .flatten()
            .min()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MapperEvent> {
        self.events.pop_front()
    }

    /// A fresh random nonce (used when the caller wants a new mapping identity).
    pub fn renew_nonce(&mut self) {
        self.rng.fill_bytes(&mut self.nonce);
    }
}

/// What the gateway supports, for netcheck.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// PCP answered an ANNOUNCE (`None`: not probed or undecided).
    pub pcp: Option<bool>,
    /// NAT-PMP answered an external-address request.
    pub natpmp: Option<bool>,
    /// A UPnP IGD was found.
    pub upnp: Option<bool>,
    /// The external address NAT-PMP reported.
    pub natpmp_external: Option<IpAddr>,
    /// The external address the IGD reported.
    pub upnp_external: Option<IpAddr>,
}

/// Probes which port-mapping protocols the gateway speaks, creating no mapping: a PCP
/// ANNOUNCE, a NAT-PMP external-address request and a UPnP discovery, all at once.
#[derive(Debug)]
pub struct Probe {
    requests: Requests,
    report: ProbeReport,
    upnp_out: VecDeque<UpnpCommand>,
}

impl Probe {
    /// Starts probing `gateway` from `source`.
    pub fn new(now: Instant, gateway: IpAddr, source: SocketAddr, upnp: bool) -> Self {
        let mut requests = Requests::new(source, gateway);
        let mut b = [0u8; 80];
        let announce = pcp::Request {
            lifetime: 0,
            client_ip: source.ip(),
            data: pcp::OpData::Announce,
        };
        if let Ok(n) = announce.emit(&mut b) {
            requests.send(now, Req::PcpAnnounce, b[..n].to_vec());
        }
        let mut b = [0u8; 12];
        let n = natpmp::Request::ExternalAddress.emit(&mut b);
        requests.send(now, Req::NatPmpExternal, b[..n].to_vec());
        let mut upnp_out = VecDeque::new();
        let mut report = ProbeReport::default();
        if upnp {
            upnp_out.push_back(UpnpCommand::Probe);
        } else {
            report.upnp = None;
        }
        Self {
            requests,
            report,
            upnp_out,
        }
    }

    /// Offers a datagram; returns whether it was the gateway's.
    pub fn handle_input(&mut self, _now: Instant, rx: Received<'_>) -> bool {
        if !self.requests.is_from_gateway(&rx) {
            return false;
        }
        match rx.contents.first() {
            Some(&pcp::VERSION) => {
                if let Ok(r) = pcp::Response::parse(rx.contents) {
                    if r.opcode == pcp::Opcode::Announce && self.requests.done(Req::PcpAnnounce) {
                        self.report.pcp = Some(r.result == pcp::ResultCode::SUCCESS);
                    }
                }
            }
            Some(&natpmp::VERSION) => {
                if let Ok(r) = natpmp::Response::parse(rx.contents) {
                    match r.body {
                        _ if r.result == natpmp::ResultCode::UNSUPPORTED_VERSION => {
                            if self.requests.done(Req::PcpAnnounce) {
                                self.report.pcp = Some(false);
                            }
                        }
                        natpmp::ResponseBody::ExternalAddress(ip) => {
                            if self.requests.done(Req::NatPmpExternal) {
                                self.report.natpmp = Some(true);
                                self.report.natpmp_external = Some(IpAddr::V4(ip));
                            }
                        }
                        natpmp::ResponseBody::Error { .. } => {
                            if self.requests.done(Req::NatPmpExternal) {
                                self.report.natpmp = Some(false);
                            }
                        }
                        natpmp::ResponseBody::Map { .. } => {}
                    }
                }
            }
            _ => {}
        }
        true
    }

    /// The driver's answer to [`UpnpCommand::Probe`].
    pub fn handle_upnp(&mut self, result: UpnpResult) {
        match result {
            UpnpResult::Available { external_ip } => {
                self.report.upnp = Some(true);
                self.report.upnp_external = external_ip;
            }
            _ => self.report.upnp = Some(false),
        }
    }

    /// Retransmits; unanswered requests mean "not supported".
    pub fn handle_timeout(&mut self, now: Instant) {
        for req in self.requests.timeout(now) {
            match req {
                Req::PcpAnnounce => self.report.pcp = Some(false),
                Req::NatPmpExternal => self.report.natpmp = Some(false),
                _ => {}
            }
        }
    }

    /// The next datagram for the gateway.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.requests.transmits.pop_front()
    }

    /// The UPnP discovery to run, once.
    #[must_use]
    pub fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        self.upnp_out.pop_front()
    }

    /// When to call `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.next_deadline()
    }

    /// Whether PCP and NAT-PMP are decided (UPnP is the driver's to bound).
    pub fn udp_done(&self) -> bool {
        self.requests.out.is_empty()
    }

    /// What is known so far.
    pub fn report(&self) -> &ProbeReport {
        &self.report
    }
}

/// What one protocol answered to a [`Delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Not asked: the `via` choice excludes it.
    NotAsked,
    /// Asked; no answer yet.
    Pending,
    /// The gateway confirmed the deletion. PCP and NAT-PMP answer a deletion of a mapping
    /// that does not exist with success too (RFC 6887 §15, RFC 6886 §3.4): afterwards there
    /// is no such mapping either way.
    Confirmed,
    /// UPnP: the gateway has no mapping on that external port (error 714,
    /// NoSuchEntryInArray).
    NoSuchMapping,
    /// The gateway refused; its reason. A PCP gateway deletes only a mapping whose nonce
    /// the request carries (RFC 6887 §11.1, §15), which a new process cannot know.
    Refused(String),
    /// Nothing answered (UPnP: no IGD answered, or the HTTP exchange failed).
    NoAnswer(String),
}

impl DeleteOutcome {
    /// A stable name for machine-readable output: `not-asked`, `pending`, `confirmed`,
    /// `no-such-mapping`, `refused` or `no-answer`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeleteOutcome::NotAsked => "not-asked",
            DeleteOutcome::Pending => "pending",
            DeleteOutcome::Confirmed => "confirmed",
            DeleteOutcome::NoSuchMapping => "no-such-mapping",
            DeleteOutcome::Refused(_) => "refused",
            DeleteOutcome::NoAnswer(_) => "no-answer",
        }
    }

    /// The gateway's reason, for `Refused` and `NoAnswer`.
    pub fn detail(&self) -> Option<&str> {
        match self {
            DeleteOutcome::Refused(why) | DeleteOutcome::NoAnswer(why) => Some(why),
            _ => None,
        }
    }
}

/// What each protocol answered to a [`Delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteReport {
    /// PCP (MAP with lifetime 0 for the internal port).
    pub pcp: DeleteOutcome,
    /// NAT-PMP (mapping request with lifetime 0 for the internal port).
    pub natpmp: DeleteOutcome,
    /// UPnP IGD (DeletePortMapping for the external port).
    pub upnp: DeleteOutcome,
}

impl DeleteReport {
    /// The outcomes, with their protocols.
    pub fn each(&self) -> [(Via, &DeleteOutcome); 3] {
        [
            (Via::Pcp, &self.pcp),
            (Via::NatPmp, &self.natpmp),
            (Via::Upnp, &self.upnp),
        ]
    }

    /// The protocols that confirmed the deletion.
    pub fn confirmed(&self) -> Vec<Via> {
        self.each()
            .into_iter()
            .filter(|(_, o)| **o == DeleteOutcome::Confirmed)
            .map(|(v, _)| v)
            .collect()
    }
}

/// Deletes a mapping that this process did not make (one a crashed program left behind),
/// as `natpmpc -d` and `upnpc -d` do: a PCP MAP and a NAT-PMP mapping request with
/// lifetime 0 for the internal port (RFC 6887 §15, RFC 6886 §3.4) and a UPnP
/// DeletePortMapping for the same external port, all at once, each over the protocols the
/// `via` choice allows. [`Delete::report`] tells what each answered.
///
/// A PCP gateway deletes only the mapping of the nonce that made it, which this process
/// cannot know: PCP refuses (NOT_AUTHORIZED; miniupnpd says NO_RESOURCES), and NAT-PMP or
/// UPnP may succeed instead.
#[derive(Debug)]
pub struct Delete {
    requests: Requests,
    protocol: MapProtocol,
    port: u16,
    nonce: [u8; 12],
    report: DeleteReport,
    upnp_out: VecDeque<UpnpCommand>,
}

impl Delete {
    /// Starts deleting the `protocol` mapping of `port` (internal for PCP and NAT-PMP,
    /// external for UPnP) on `gateway`, from `source` (its IP is this host's address toward
    /// the gateway: PCP's client address).
    pub fn new(
        now: Instant,
        gateway: IpAddr,
        source: SocketAddr,
        protocol: MapProtocol,
        port: u16,
        via: ViaChoice,
        seed: [u8; 32],
    ) -> Self {
        let allowed = |v: Via| match via {
            ViaChoice::Any => true,
            ViaChoice::Only(o) => o == v,
        };
        let mut nonce = [0u8; 12];
        ChaCha20Rng::from_seed(seed).fill_bytes(&mut nonce);
        let mut requests = Requests::new(source, gateway);
        let mut report = DeleteReport {
            pcp: DeleteOutcome::NotAsked,
            natpmp: DeleteOutcome::NotAsked,
            upnp: DeleteOutcome::NotAsked,
        };
        if allowed(Via::Pcp) {
            let req = pcp::Request {
                lifetime: 0,
                client_ip: source.ip(),
                data: pcp::OpData::Map(pcp::MapData {
                    nonce,
                    protocol,
                    internal_port: port,
                    external_port: 0,
                    external_ip: pcp::ANY_V4,
                }),
            };
            let mut b = [0u8; 80];
            if let Ok(n) = req.emit(&mut b) {
                requests.send(now, Req::PcpDelete, b[..n].to_vec());
                report.pcp = DeleteOutcome::Pending;
            }
        }
        if allowed(Via::NatPmp) {
            let mut b = [0u8; 12];
            // RFC 6886 §3.4: suggested external port 0.
            let n = natpmp::Request::Map {
                protocol,
                internal_port: port,
                suggested_external_port: 0,
                lifetime: 0,
            }
            .emit(&mut b);
            requests.send(now, Req::NatPmpDelete, b[..n].to_vec());
            report.natpmp = DeleteOutcome::Pending;
        }
        let mut upnp_out = VecDeque::new();
        if allowed(Via::Upnp) {
            upnp_out.push_back(UpnpCommand::Delete {
                protocol,
                external_port: port,
            });
            report.upnp = DeleteOutcome::Pending;
        }
        Self {
            requests,
            protocol,
            port,
            nonce,
            report,
            upnp_out,
        }
    }

    /// Offers a datagram; returns whether it was the gateway's.
    pub fn handle_input(&mut self, _now: Instant, rx: Received<'_>) -> bool {
        if !self.requests.is_from_gateway(&rx) {
            return false;
        }
        match rx.contents.first() {
            Some(&pcp::VERSION) => match pcp::Response::parse(rx.contents) {
                Ok(r) if r.opcode == pcp::Opcode::Map => {
                    let ours = match r.data {
                        Some(pcp::OpData::Map(d)) => {
                            d.nonce == self.nonce
                                && d.protocol == self.protocol
                                && d.internal_port == self.port
                        }
                        // An error without the MAP data (RFC 6887 §7.3).
                        _ => r.result != pcp::ResultCode::SUCCESS,
                    };
                    if ours && self.requests.done(Req::PcpDelete) {
                        self.report.pcp = if r.result == pcp::ResultCode::SUCCESS {
                            DeleteOutcome::Confirmed
                        } else {
                            DeleteOutcome::Refused(format!("PCP: {}", r.result.name()))
                        };
                    }
                }
                Ok(_) => debug!("PCP response other than MAP dropped"),
                Err(e) => debug!(error = %e, "malformed PCP response dropped"),
            },
            Some(&natpmp::VERSION) => match natpmp::Response::parse(rx.contents) {
                // A NAT-PMP-only gateway answers the PCP request so (RFC 6887 §9).
                Ok(r) if r.result == natpmp::ResultCode::UNSUPPORTED_VERSION => {
                    if self.requests.done(Req::PcpDelete) {
                        self.report.pcp = DeleteOutcome::Refused(
                            "PCP: not supported (the gateway speaks only NAT-PMP)".into(),
                        );
                    }
                }
                Ok(natpmp::Response {
                    result,
                    body:
                        natpmp::ResponseBody::Map {
                            protocol,
                            internal_port,
                            ..
                        },
                    ..
                }) if protocol == self.protocol && internal_port == self.port => {
                    if self.requests.done(Req::NatPmpDelete) {
                        self.report.natpmp = if result == natpmp::ResultCode::SUCCESS {
                            DeleteOutcome::Confirmed
                        } else {
                            DeleteOutcome::Refused(format!("NAT-PMP: {}", result.name()))
                        };
                    }
                }
                Ok(natpmp::Response {
                    result,
                    body: natpmp::ResponseBody::Error { opcode },
                    ..
                }) if opcode
                    == match self.protocol {
                        MapProtocol::Udp => natpmp::OP_MAP_UDP,
                        MapProtocol::Tcp => natpmp::OP_MAP_TCP,
                    } =>
                {
                    if self.requests.done(Req::NatPmpDelete) {
                        self.report.natpmp =
                            DeleteOutcome::Refused(format!("NAT-PMP: {}", result.name()));
                    }
                }
                Ok(_) => debug!("NAT-PMP response for something else dropped"),
                Err(e) => debug!(error = %e, "malformed NAT-PMP response dropped"),
            },
            _ => debug!("datagram from the gateway that is neither PCP nor NAT-PMP dropped"),
        }
        true
    }

    /// The driver's answer to the [`UpnpCommand::Delete`].
    pub fn handle_upnp(&mut self, result: UpnpResult) {
        if self.report.upnp != DeleteOutcome::Pending {
            return;
        }
        self.report.upnp = match result {
            UpnpResult::Deleted => DeleteOutcome::Confirmed,
            UpnpResult::NoSuchMapping => DeleteOutcome::NoSuchMapping,
            UpnpResult::NoAnswer(why) => DeleteOutcome::NoAnswer(format!("UPnP: {why}")),
            UpnpResult::Failed(why) => DeleteOutcome::Refused(format!("UPnP: {why}")),
            other => DeleteOutcome::Refused(format!("UPnP: unexpected answer {other:?}")),
        };
    }

    /// Retransmits; gives up on requests unanswered after the last wait.
    pub fn handle_timeout(&mut self, now: Instant) {
        for req in self.requests.timeout(now) {
            match req {
                Req::PcpDelete => {
                    self.report.pcp = DeleteOutcome::NoAnswer("PCP: no answer".into())
                }
                Req::NatPmpDelete => {
                    self.report.natpmp = DeleteOutcome::NoAnswer("NAT-PMP: no answer".into());
                }
                _ => {}
            }
        }
    }

    /// The next datagram for the gateway.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.requests.transmits.pop_front()
    }

    /// The UPnP deletion to run, once; answer it with [`Delete::handle_upnp`].
    #[must_use]
    pub fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        self.upnp_out.pop_front()
    }

    /// When to call `handle_timeout`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.next_deadline()
    }

    /// Stops waiting: every protocol still pending counts as not answering (`why`).
    pub fn give_up(&mut self, why: &str) {
        self.requests.out.clear();
        self.upnp_out.clear();
        for o in [
            &mut self.report.pcp,
            &mut self.report.natpmp,
            &mut self.report.upnp,
        ] {
            if *o == DeleteOutcome::Pending {
                *o = DeleteOutcome::NoAnswer(why.to_owned());
            }
        }
    }

    /// Whether every protocol asked has answered or given up.
    pub fn is_done(&self) -> bool {
        self.report
            .each()
            .iter()
            .all(|(_, o)| **o != DeleteOutcome::Pending)
    }

    /// What each protocol answered so far.
    pub fn report(&self) -> &DeleteReport {
        &self.report
    }
}

#[cfg(test)]
mod tests;
