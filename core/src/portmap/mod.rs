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
//!
//! [`PcpPeer`] asks a PCP gateway for PEER mappings (RFC 6887 §12) from a socket toward
//! remote peers, renews them and deletes them.

mod config;
mod delete;
mod error;
mod events;
mod mapper;
mod pcp_peer;
mod probe;
mod requests;

pub mod natpmp;
pub mod pcp;
pub mod upnp;
pub mod verify;

pub use config::{MapProtocol, MapperConfig, Mapping, Via, ViaChoice};
pub use delete::{Delete, DeleteOutcome, DeleteReport};
pub use error::PortmapError;
pub use events::{LossReason, MapperEvent, ReleaseOutcome, UpnpCommand, UpnpResult};
pub use mapper::Mapper;
pub use pcp_peer::{
    MAX_PEERS, PEER_SCHEDULE, PEER_TRANSMITS, PcpPeer, PcpPeerConfig, PcpPeerEvent,
};
pub use probe::{Probe, ProbeReport};
pub use verify::{MAX_VERIFY_INTERVAL, MIN_VERIFY_INTERVAL, VERIFY_INTERVAL, VerifyConfig};

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::retransmit::Schedule;

/// First retransmission timeout of PCP and NAT-PMP requests: RFC 6886 §3.1's 250 ms
/// (PCP's 3 s initial timeout, RFC 6887 §8.1.1, is far too slow for a probe budget).
pub const REQUEST_RTO: Duration = Duration::from_millis(250);
/// Transmissions of one request: at 0, 250 and 750 ms.
pub const REQUEST_TRANSMITS: u32 = 3;
/// After the last transmission, wait this long: a request fails 1.75 s after it started.
/// It is the RTO doubled once more, as RFC 6886 §3.1 waits after its last attempt.
pub const REQUEST_LAST_WAIT: Duration = Duration::from_millis(1000);
/// The schedule of every PCP and NAT-PMP request (and of the STUN checks that verify a
/// mapping): RFC 6886 §3.1's ([`Schedule::NAT_PMP`]) cut to [`REQUEST_TRANSMITS`]
/// transmissions, failing [`REQUEST_LAST_WAIT`] after the last.
pub const REQUEST_SCHEDULE: Schedule = Schedule::doubling(REQUEST_RTO, REQUEST_TRANSMITS);
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

#[cfg(test)]
mod tests;
