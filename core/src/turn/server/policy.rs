//! Which peers the development TURN server relays to.
//!
//! A TURN server on a public address relays for whoever authenticates; without a policy,
//! an allocation reaches whatever the server itself can reach: services on its loopback,
//! the cloud metadata service at 169.254.169.254, the private network behind it, and the
//! server's own sockets (a datagram relayed to itself loops). coturn refuses loopback and
//! multicast peers by default and recommends denying the private ranges; pinhole's server
//! refuses all of them unless told otherwise (403 Forbidden on CreatePermission and
//! ChannelBind, Send indications dropped, RFC 8656 §9.2 and §12.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix, `192.168.0.0/16` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a [`Cidr`] did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The prefix length is not a number within the family's bits.
    #[error("prefix length {0:?} is not a number from 0 to {1}")]
    Prefix(String, u8),
    /// Bits are set past the prefix (`10.1.2.3/8`): almost always a typo.
    #[error("{0} has bits set past its prefix length (did you mean {1}?)")]
    HostBits(String, String),
}

impl Cidr {
    /// The prefix `addr/prefix`; `None` when `prefix` exceeds the family's bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= max_prefix(addr)).then_some(Self { addr, prefix })
    }

    /// Whether `ip` lies inside (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(a.to_owned()))?;
        let addr = canonical(addr);
        let max = max_prefix(addr);
        let prefix = if p.is_empty() && !s.contains('/') {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix(p.to_owned(), max))?
        };
        let net = Self { addr, prefix };
        let masked = match addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        if masked != addr {
            return Err(CidrError::HostBits(
                s.to_owned(),
                Self {
                    addr: masked,
                    prefix,
                }
                .to_string(),
            ));
        }
        Ok(net)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) as the IPv4 address they carry: a
/// dual-stack relay socket sends to them as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            // IPv4-compatible `::a.b.c.d` (deprecated, RFC 4291 §2.5.5.1): the IPv4 address
            // it carries decides (`::` and `::1` stay themselves).
            let n = u128::from(v6);
            if n >> 32 == 0 && n > 1 {
                return IpAddr::V4(std::net::Ipv4Addr::from(n as u32));
            }
            ip
        }
        v4 => v4,
    }
}

/// What kind of address a peer is, for the policy and for log messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerClass {
    /// A global unicast address: relayed to.
    Global,
    /// 0.0.0.0/8 or `::`: never (RFC 6890).
    Unspecified,
    /// 224.0.0.0/4 or ff00::/8: never.
    Multicast,
    /// 255.255.255.255: never.
    Broadcast,
    /// 240.0.0.0/4, reserved for future use (RFC 1112 §4): refused unless allowed.
    Reserved,
    /// 127.0.0.0/8 or ::1: refused unless loopback peers are allowed.
    Loopback,
    /// 169.254.0.0/16 (with 169.254.169.254, the cloud metadata service) or fe80::/10:
    /// refused unless allowed.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16 (RFC 1918), 100.64/10 (shared address space, RFC 6598)
    /// or fc00::/7 (unique local, RFC 4193): refused unless allowed.
    Private,
}

impl PeerClass {
    /// Classifies `ip` (IPv4-mapped IPv6 as IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                if o[0] == 0 {
                    Self::Unspecified
                } else if v4.is_broadcast() {
                    Self::Broadcast
                } else if v4.is_multicast() {
                    Self::Multicast
                } else if o[0] >= 240 {
                    Self::Reserved
                } else if v4.is_loopback() {
                    Self::Loopback
                } else if v4.is_link_local() {
                    Self::LinkLocal
                } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xC0) == 64) {
                    Self::Private
                } else {
                    Self::Global
                }
            }
            IpAddr::V6(v6) => {
                let s = v6.segments();
                if v6.is_unspecified() {
                    Self::Unspecified
                } else if v6.is_multicast() {
                    Self::Multicast
                } else if v6.is_loopback() {
                    Self::Loopback
                } else if s[0] & 0xffc0 == 0xfe80 {
                    Self::LinkLocal
                } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
                    // Unique local (RFC 4193) and the deprecated site-local fec0::/10.
                    Self::Private
                } else {
                    Self::Global
                }
            }
        }
    }

    /// Whether no flag can allow it.
    pub fn always_refused(self) -> bool {
        matches!(self, Self::Unspecified | Self::Multicast | Self::Broadcast)
    }

    /// A short name for logs and error reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Unspecified => "unspecified",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::Private => "private",
        }
    }
}

/// Which peers an allocation may reach. The default is coturn's safe default and then
/// some: global unicast addresses only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Also relay to loopback peers (coturn's `--allow-loopback-peers`): for demos and
    /// tests with every party on one machine, never on a shared host.
    pub allow_loopback: bool,
    /// Prefixes relayed to although their class is refused by default: a lab's private
    /// range, a LAN (`--allow-peer CIDR`). Unspecified, multicast and broadcast peers stay
    /// refused whatever is listed.
    pub allowed: Vec<Cidr>,
}

impl PeerPolicy {
    /// Global peers, plus loopback ones: what tests on one machine need.
    pub fn with_loopback() -> Self {
        Self {
            allow_loopback: true,
            allowed: Vec::new(),
        }
    }

    /// `Ok` when `ip` may be relayed to, else the class that refused it.
    pub fn check(&self, ip: IpAddr) -> Result<(), PeerClass> {
        let class = PeerClass::of(ip);
        if class == PeerClass::Global {
            return Ok(());
        }
        if class.always_refused() {
            return Err(class);
        }
        if class == PeerClass::Loopback && self.allow_loopback {
            return Ok(());
        }
        if self.allowed.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        Err(class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_what_coturn_refuses_and_more() {
        let p = PeerPolicy::default();
        for (a, class) in [
            ("127.0.0.1", PeerClass::Loopback),
            ("127.8.9.10", PeerClass::Loopback),
            ("::1", PeerClass::Loopback),
            ("::ffff:127.0.0.1", PeerClass::Loopback),
            ("0.0.0.0", PeerClass::Unspecified),
            ("0.1.2.3", PeerClass::Unspecified),
            ("::", PeerClass::Unspecified),
            ("255.255.255.255", PeerClass::Broadcast),
            ("224.0.0.1", PeerClass::Multicast),
            ("239.255.255.250", PeerClass::Multicast),
            ("ff02::1", PeerClass::Multicast),
            ("169.254.169.254", PeerClass::LinkLocal),
            ("fe80::1", PeerClass::LinkLocal),
            ("10.0.0.1", PeerClass::Private),
            ("172.16.5.4", PeerClass::Private),
            ("172.31.255.255", PeerClass::Private),
            ("192.168.1.1", PeerClass::Private),
            ("100.64.0.1", PeerClass::Private),
            ("100.127.255.254", PeerClass::Private),
            ("fd00::1", PeerClass::Private),
            ("::ffff:10.1.1.1", PeerClass::Private),
            ("::127.0.0.1", PeerClass::Loopback),
            ("::10.0.0.1", PeerClass::Private),
            ("fec0::1", PeerClass::Private),
            ("240.0.0.1", PeerClass::Reserved),
        ] {
            assert_eq!(p.check(ip(a)), Err(class), "{a}");
        }
        for a in [
            "8.8.8.8",
            "203.0.113.7",
            "198.51.100.1",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(p.check(ip(a)), Ok(()), "{a}");
        }
    }

    #[test]
    fn flags_open_what_they_name_and_nothing_else() {
        let p = PeerPolicy {
            allow_loopback: true,
            allowed: vec![
                "192.168.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
        };
        assert_eq!(p.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check(ip("::1")), Ok(()));
        assert_eq!(p.check(ip("192.168.3.4")), Ok(()));
        assert_eq!(p.check(ip("fd12::1")), Ok(()));
        assert_eq!(p.check(ip("10.0.0.1")), Err(PeerClass::Private));
        assert_eq!(p.check(ip("169.254.169.254")), Err(PeerClass::LinkLocal));
        // Never, whatever the flags say.
        let all = PeerPolicy {
            allow_loopback: true,
            allowed: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        };
        for a in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
            assert!(all.check(ip(a)).is_err(), "{a}");
        }
        assert_eq!(all.check(ip("169.254.169.254")), Ok(()));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "192.0.2.1".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!(matches!(
            "10.1.2.3/8".parse::<Cidr>(),
            Err(CidrError::HostBits(_, s)) if s == "10.0.0.0/8"
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(..))
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::Prefix(..))
        ));
        assert!(matches!(
            "example.com/8".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(c.contains(ip("1.2.3.4")));
        assert!(!c.contains(ip("2001:db8::1")));
    }
}
