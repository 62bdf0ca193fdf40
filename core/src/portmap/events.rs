//! What the machines report ([`MapperEvent`]) and what they ask of the driver's UPnP
//! client ([`UpnpCommand`], answered with [`UpnpResult`]).

use std::net::{IpAddr, SocketAddr};

use super::{MapProtocol, Mapping};

/// Why a mapping was lost or could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// verification, [`MapperConfig::verify`](super::MapperConfig::verify)): it is deleted and added again.
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
#[non_exhaustive]
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
    /// The release ([`Mapper::release`](super::Mapper::release)) is over, and how: whether the gateway confirmed
    /// the deletion. The mapper has finished.
    Released(ReleaseOutcome),
    /// Traffic from the STUN reflector arrived through the mapping
    /// ([`MapperConfig::verify`](super::MapperConfig::verify)).
    Verified(Mapping),
    /// The gateway grants the mapping, but traffic does not arrive through it, even after
    /// deleting and adding it again. It is kept (and verified again after
    /// [`VerifyConfig::interval`](super::VerifyConfig::interval)).
    NotForwarding(Mapping),
    /// The mapping could not be verified: the reflector did not answer, does not implement
    /// RFC 5780, or sees this host at another address; or no verification can work (a TCP
    /// mapping, or one whose external address is private or CGNAT, behind another NAT:
    /// said at every new such mapping). With no answer it is tried again after
    /// [`VerifyConfig::interval`](super::VerifyConfig::interval); otherwise verification stops.
    Unverified(String),
}

/// How a release ended ([`MapperEvent::Released`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
#[non_exhaustive]
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
