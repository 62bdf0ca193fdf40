//! The host's interface addresses, for host candidates on every usable interface
//! (RFC 8445 §5.1.1.1).
//!
//! [`list`] reads them from the operating system (`getifaddrs`, through the `if-addrs`
//! crate); [`host_addresses`] chooses the ones a connection offers, a pure function that
//! the tests drive with made-up interfaces.

use std::net::IpAddr;

use super::{DriverError, io};

/// The most host addresses of one address family a connection offers. RFC 8445
/// §5.1.1.1 asks for every interface; each address adds a pair per remote candidate of
/// its family, and RFC 8445 §6.1.2.5 bounds the checklist, so a host with many
/// interfaces (container bridges, VPNs) offers the first ones: the primary address of
/// the family first, then the others in the order the system lists them.
pub const MAX_PER_FAMILY: usize = 4;

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface's name (`eth0`, `wlan0`, `en0`…).
    pub name: String,
    /// The address.
    pub ip: IpAddr,
    /// Whether the interface is operationally up (RFC 2863); unknown counts as up.
    pub up: bool,
}

/// The addresses of the host's interfaces, as the operating system lists them.
pub fn list() -> Result<Vec<InterfaceAddress>, DriverError> {
    let all = if_addrs::get_if_addrs().map_err(io("listing the network interfaces"))?;
    Ok(all
        .into_iter()
        .map(|i| InterfaceAddress {
            ip: i.ip(),
            up: !matches!(i.oper_status, if_addrs::IfOperStatus::Down),
            name: i.name,
        })
        .collect())
}

/// The networks of the host's up interfaces: an address on each and its prefix length
/// (for RFC 6762 §11's on-link check). Empty when the interfaces cannot be listed.
pub(crate) fn networks() -> Vec<(IpAddr, u8)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !matches!(i.oper_status, if_addrs::IfOperStatus::Down))
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), a.prefixlen),
            if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), a.prefixlen),
        })
        .collect()
}

/// Whether `ip` can be a host candidate: not unspecified, multicast, loopback (unless
/// `loopback`), link-local (RFC 8445 §5.1.1.1: IPv6 link-local addresses need a scope a
/// candidate line cannot carry; IPv4 link-local ones are self-assigned addresses of a
/// link without DHCP) or an IPv4-mapped IPv6 address.
pub fn usable(ip: IpAddr, loopback: bool) -> bool {
    if ip.is_unspecified() || ip.is_multicast() || (ip.is_loopback() && !loopback) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_broadcast(),
        IpAddr::V6(v6) => {
            // fe80::/10
            (v6.segments()[0] & 0xffc0) != 0xfe80 && v6.to_ipv4_mapped().is_none()
        }
    }
}

/// The addresses a connection offers host candidates on: for each family, `primary`
/// (the address toward the servers) first, then the other usable addresses of interfaces
/// that are up and whose names start with none of `ignore`, at most [`MAX_PER_FAMILY`]
/// per family. The order is the order of preference (local preference, RFC 8445
/// §5.1.2.1): the primary IPv4 and IPv6 addresses, then the others alternating between the
/// families (RFC 8421 §4: a mix of both early in the checklist). A loopback primary
/// (tests, the demo) stays alone: a connection that talks to loopback servers offers
/// nothing else.
pub fn host_addresses(
    all: &[InterfaceAddress],
    primary: [Option<IpAddr>; 2],
    ignore: &[String],
) -> Vec<IpAddr> {
    let mut families: [Vec<IpAddr>; 2] = [Vec::new(), Vec::new()];
    for (family, first) in primary.into_iter().enumerate() {
        let v6 = family == 1;
        let mut mine: Vec<IpAddr> = first.into_iter().filter(|ip| ip.is_ipv6() == v6).collect();
        if !first.is_some_and(|ip| ip.is_loopback()) {
            for a in all {
                if mine.len() >= MAX_PER_FAMILY {
                    break;
                }
                let ignored = ignore
                    .iter()
                    .any(|p| !p.is_empty() && a.name.starts_with(p.as_str()));
                if a.up
                    && !ignored
                    && a.ip.is_ipv6() == v6
                    && usable(a.ip, false)
                    && !mine.contains(&a.ip)
                {
                    mine.push(a.ip);
                }
            }
        }
        families[family] = mine;
    }
    let [v4, v6] = families;
    let mut out: Vec<IpAddr> = v4
        .iter()
        .take(1)
        .chain(v6.iter().take(1))
        .copied()
        .collect();
    let (mut a, mut b) = (v4.into_iter().skip(1), v6.into_iter().skip(1));
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str, ip: &str) -> InterfaceAddress {
        InterfaceAddress {
            name: name.into(),
            ip: ip.parse().unwrap(),
            up: true,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_usable_interface_after_the_primary_one() {
        let all = [
            addr("lo", "127.0.0.1"),
            addr("lo", "::1"),
            addr("eth0", "192.168.1.10"),
            addr("eth0", "fe80::1"),
            addr("eth0", "2001:db8::10"),
            addr("wlan0", "10.0.0.5"),
            addr("wlan0", "169.254.3.4"),
            addr("docker0", "172.17.0.1"),
            InterfaceAddress {
                up: false,
                ..addr("eth1", "10.9.9.9")
            },
        ];
        let got = host_addresses(
            &all,
            [Some(ip("10.0.0.5")), Some(ip("2001:db8::10"))],
            &["docker".into()],
        );
        assert_eq!(
            got,
            [ip("10.0.0.5"), ip("2001:db8::10"), ip("192.168.1.10")]
        );
        // No IPv6 route: the IPv6 addresses of the interfaces still count.
        let got = host_addresses(&all, [Some(ip("192.168.1.10")), None], &[]);
        assert_eq!(
            got,
            [
                ip("192.168.1.10"),
                ip("2001:db8::10"),
                ip("10.0.0.5"),
                ip("172.17.0.1"),
            ]
        );
        // The others alternate between the families.
        let more = [
            addr("a", "10.1.0.1"),
            addr("a", "2001:db8:1::1"),
            addr("b", "10.2.0.1"),
            addr("b", "2001:db8:2::1"),
        ];
        assert_eq!(
            host_addresses(&more, [Some(ip("10.0.0.1")), Some(ip("2001:db8::1"))], &[]),
            [
                ip("10.0.0.1"),
                ip("2001:db8::1"),
                ip("10.1.0.1"),
                ip("2001:db8:1::1"),
                ip("10.2.0.1"),
                ip("2001:db8:2::1"),
            ]
        );
    }

    #[test]
    fn a_loopback_primary_stays_alone_and_each_family_is_bounded() {
        let all: Vec<InterfaceAddress> = (1..=10)
            .map(|i| addr(&format!("eth{i}"), &format!("10.0.{i}.1")))
            .collect();
        assert_eq!(
            host_addresses(&all, [Some(ip("127.0.0.1")), Some(ip("::1"))], &[]),
            [ip("127.0.0.1"), ip("::1")]
        );
        let got = host_addresses(&all, [Some(ip("10.0.1.1")), None], &[]);
        assert_eq!(got.len(), MAX_PER_FAMILY);
        assert_eq!(got[0], ip("10.0.1.1"));
    }

    #[test]
    fn what_is_usable() {
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "169.254.1.1",
            "fe80::1",
            "febf::1",
            "::ffff:192.0.2.1",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
        ] {
            assert!(!usable(ip(bad), false), "{bad}");
        }
        assert!(usable(ip("127.0.0.1"), true));
        for good in ["192.0.2.1", "10.1.2.3", "2001:db8::1", "fd00::1", "fec0::1"] {
            assert!(usable(ip(good), false), "{good}");
        }
    }
}
