//! NAT behaviours in RFC 4787 terms, built with nftables.
//!
//! Linux's own NAT (`masquerade`) gives endpoint-independent mapping only by preserving
//! ports, and address-and-port-dependent filtering (conntrack's exact five-tuple). The
//! other behaviours are built from dynamic maps learned in a postrouting filter chain that
//! runs *after* source NAT, so it sees the translated source:
//!
//! - `pubmap`: external port → internal address . port (inbound and hairpin DNAT);
//! - `privmap`: internal address . port → external address . port (the newest mapping of
//!   an internal endpoint; reused by endpoint-independent mapping and by hairpin SNAT);
//! - `privmap_ad`: internal address . port . remote address → external address . port
//!   (address-dependent mapping);
//! - `peers`: external port . remote address (address-dependent filtering).
//!
//! Every outbound packet refreshes its entries (the mapping timer of RFC 4787 REQ-6).
//!
//! A limit: `pubmap` is keyed by external port alone, and conntrack only keeps five-tuples
//! unique. Two hosts behind one port-preserving NAT that use the same local port toward
//! different servers get the same external port, and the later one owns it for inbound
//! traffic. Tests keep one prober per local port per NAT (ephemeral ports do that).
//! The router drops unsolicited inbound traffic silently: its input chain drops rather
//! than letting the kernel answer ICMP port unreachable.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

/// A mapping or filtering behaviour (RFC 4787 §4.1 and §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
}

impl Behaviour {
    /// The RFC 4787 name, as `pinhole netcheck --json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
        }
    }

    /// A short label for tables: `EI`, `AD`, `APD`.
    pub fn abbrev(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "EI",
            Behaviour::AddressDependent => "AD",
            Behaviour::AddressAndPortDependent => "APD",
        }
    }
}

/// How external ports are chosen for new mappings (RFC 4787 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// Keep the internal port when it is free. With endpoint-dependent mapping only the
    /// first mapping of an internal endpoint keeps its port; later ones get random ports.
    Preserving,
    /// A random port for every new mapping.
    Random,
}

/// One NAT router's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatConfig {
    /// Mapping behaviour.
    pub mapping: Behaviour,
    /// Filtering behaviour.
    pub filtering: Behaviour,
    /// Port allocation.
    pub allocation: PortAllocation,
    /// Whether traffic from the LAN to a mapped address loops back (RFC 4787 §6).
    pub hairpinning: bool,
    /// A firewall that drops all UDP in both directions (TCP still passes).
    pub block_udp: bool,
    /// Whether TCP gets the mapping and filtering behaviour too (RFC 5382), through maps
    /// of its own. Off: TCP is plain `masquerade` (with `random` under random
    /// allocation), whatever the mapping and filtering say.
    pub tcp_behaviour: bool,
    /// Random loss, in percent, of every packet entering the router from either side.
    pub loss_percent: u8,
    /// One-way delay added to every forwarded packet, in each direction (NFQUEUE and the
    /// `nfq-delay` process). Zero adds none and starts no process.
    pub delay: Duration,
    /// How long an idle mapping (and its filter entries) lives.
    pub mapping_timeout: Duration,
}

impl Default for NatConfig {
    /// Endpoint-independent mapping with address-and-port-dependent filtering, port
    /// preservation, no hairpinning: what `masquerade` does.
    fn default() -> Self {
        NatConfig {
            mapping: Behaviour::EndpointIndependent,
            filtering: Behaviour::AddressAndPortDependent,
            allocation: PortAllocation::Preserving,
            hairpinning: false,
            block_udp: false,
            tcp_behaviour: false,
            loss_percent: 0,
            delay: Duration::ZERO,
            mapping_timeout: Duration::from_secs(300),
        }
    }
}

impl NatConfig {
    /// A NAT with the given mapping and filtering, otherwise [`Default`].
    pub fn new(mapping: Behaviour, filtering: Behaviour) -> Self {
        NatConfig {
            mapping,
            filtering,
            ..NatConfig::default()
        }
    }

    /// "Full cone": endpoint-independent mapping and filtering.
    pub fn full_cone() -> Self {
        Self::new(
            Behaviour::EndpointIndependent,
            Behaviour::EndpointIndependent,
        )
    }

    /// "Restricted cone": endpoint-independent mapping, address-dependent filtering.
    pub fn restricted_cone() -> Self {
        Self::new(Behaviour::EndpointIndependent, Behaviour::AddressDependent)
    }

    /// "Port-restricted cone": endpoint-independent mapping, address-and-port-dependent
    /// filtering.
    pub fn port_restricted_cone() -> Self {
        Self::new(
            Behaviour::EndpointIndependent,
            Behaviour::AddressAndPortDependent,
        )
    }

    /// "Symmetric": a new random port per destination, address-and-port-dependent
    /// filtering.
    pub fn symmetric() -> Self {
        Self::new(
            Behaviour::AddressAndPortDependent,
            Behaviour::AddressAndPortDependent,
        )
        .random_ports()
    }

    /// With hairpinning on or off.
    pub fn hairpinning(mut self, on: bool) -> Self {
        self.hairpinning = on;
        self
    }

    /// With random port allocation.
    pub fn random_ports(mut self) -> Self {
        self.allocation = PortAllocation::Random;
        self
    }

    /// With port-preserving allocation.
    pub fn preserving_ports(mut self) -> Self {
        self.allocation = PortAllocation::Preserving;
        self
    }

    /// Dropping all UDP.
    pub fn blocking_udp(mut self) -> Self {
        self.block_udp = true;
        self
    }

    /// With the mapping and filtering behaviour applied to TCP too.
    pub fn tcp_behaviour(mut self) -> Self {
        self.tcp_behaviour = true;
        self
    }

    /// With `percent` random loss.
    pub fn loss(mut self, percent: u8) -> Self {
        self.loss_percent = percent.min(100);
        self
    }

    /// With a one-way delay through the router.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// A one-line description: `EIM/APDF preserving, hairpin off`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}M/{}F {}, hairpin {}",
            self.mapping.abbrev(),
            self.filtering.abbrev(),
            match self.allocation {
                PortAllocation::Preserving => "preserving",
                PortAllocation::Random => "random",
            },
            if self.hairpinning { "on" } else { "off" }
        );
        if self.block_udp {
            s.push_str(", UDP blocked");
        }
        if self.tcp_behaviour {
            s.push_str(", TCP alike");
        }
        if self.loss_percent > 0 {
            let _ = write!(s, ", {}% loss", self.loss_percent);
        }
        if !self.delay.is_zero() {
            let _ = write!(s, ", +{} ms one-way", self.delay.as_millis());
        }
        s
    }
}

/// The nftables table every NAT router gets (family `ip`).
pub const TABLE: &str = "lab";

/// Where a router's ruleset applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterIfaces<'a> {
    /// The WAN interface name.
    pub wan: &'a str,
    /// The LAN interface name (a bridge).
    pub lan: &'a str,
    /// The router's WAN address: the external address of every mapping.
    pub wan_ip: Ipv4Addr,
}

/// The nftables ruleset (for `nft -f`) of a NAT router.
pub fn ruleset(cfg: &NatConfig, ifs: &RouterIfaces<'_>) -> String {
    let RouterIfaces { wan, lan, wan_ip } = ifs;
    let t = cfg.mapping_timeout.as_secs().max(1);
    let rnd = match cfg.allocation {
        PortAllocation::Preserving => "",
        PortAllocation::Random => " random",
    };
    let mut r = String::new();
    let _ = writeln!(r, "table ip {TABLE} {{");
    for (kind, name, ty) in [
        ("map", "pubmap", "inet_service : ipv4_addr . inet_service"),
        (
            "map",
            "privmap",
            "ipv4_addr . inet_service : ipv4_addr . inet_service",
        ),
        (
            "map",
            "privmap_ad",
            "ipv4_addr . inet_service . ipv4_addr : ipv4_addr . inet_service",
        ),
        ("set", "peers", "inet_service . ipv4_addr"),
        // The same for TCP (used with `tcp_behaviour`).
        (
            "map",
            "pubmap_tcp",
            "inet_service : ipv4_addr . inet_service",
        ),
        (
            "map",
            "privmap_tcp",
            "ipv4_addr . inet_service : ipv4_addr . inet_service",
        ),
        (
            "map",
            "privmap_ad_tcp",
            "ipv4_addr . inet_service . ipv4_addr : ipv4_addr . inet_service",
        ),
        ("set", "peers_tcp", "inet_service . ipv4_addr"),
    ] {
        let _ = writeln!(
            r,
            "  {kind} {name} {{ type {ty}; flags dynamic,timeout; timeout {t}s; }}"
        );
    }

    // Empty but while the mappings are flushed ([`freeze_commands`]): a flush is one
    // moment for the traffic, as a reboot is, not a window in which a packet re-learns
    // the mapping being forgotten.
    let _ = writeln!(
        r,
        "  chain freeze {{ type filter hook prerouting priority raw - 10; policy accept; }}"
    );

    // Loss first, before conntrack sees the packet.
    let _ = writeln!(
        r,
        "  chain loss {{ type filter hook prerouting priority raw; policy accept;"
    );
    if cfg.loss_percent > 0 {
        let _ = writeln!(
            r,
            "    iifname {{ \"{wan}\", \"{lan}\" }} numgen random mod 100 < {} counter drop",
            cfg.loss_percent
        );
    }
    let _ = writeln!(r, "  }}");

    // Destination NAT: inbound through the learned mappings, and hairpinning.
    let _ = writeln!(
        r,
        "  chain natpre {{ type nat hook prerouting priority dstnat; policy accept;"
    );
    for (p, sfx) in protos(cfg) {
        match cfg.filtering {
            Behaviour::EndpointIndependent => {
                let _ = writeln!(
                    r,
                    "    iifname \"{wan}\" {p} dport @pubmap{sfx} dnat ip to {p} dport map @pubmap{sfx}"
                );
            }
            Behaviour::AddressDependent => {
                let _ = writeln!(
                    r,
                    "    iifname \"{wan}\" {p} dport . ip saddr @peers{sfx} dnat ip to {p} dport map @pubmap{sfx}"
                );
            }
            // Conntrack's exact five-tuple match does it.
            Behaviour::AddressAndPortDependent => {}
        }
    }
    if cfg.hairpinning {
        let _ = writeln!(
            r,
            "    iifname \"{lan}\" ip daddr {wan_ip} udp dport @pubmap dnat ip to udp dport map @pubmap"
        );
    }
    let _ = writeln!(r, "  }}");

    // Source NAT. `iifname` is unknown in postrouting, so hairpinned packets are told by
    // their original destination.
    let _ = writeln!(
        r,
        "  chain natpost {{ type nat hook postrouting priority srcnat; policy accept;"
    );
    if cfg.hairpinning {
        let _ = writeln!(
            r,
            "    oifname \"{lan}\" ct original ip daddr {wan_ip} ip saddr . udp sport @privmap snat ip to ip saddr . udp sport map @privmap"
        );
    }
    let out = format!("oifname \"{wan}\" ip saddr != {wan_ip}");
    for (p, sfx) in protos(cfg) {
        match cfg.mapping {
            Behaviour::EndpointIndependent => {
                let _ = writeln!(
                    r,
                    "    {out} ip saddr . {p} sport @privmap{sfx} snat ip to ip saddr . {p} sport map @privmap{sfx}"
                );
            }
            Behaviour::AddressDependent => {
                let _ = writeln!(
                    r,
                    "    {out} ip saddr . {p} sport . ip daddr @privmap_ad{sfx} snat ip to ip saddr . {p} sport . ip daddr map @privmap_ad{sfx}"
                );
                let _ = writeln!(
                    r,
                    "    {out} ip saddr . {p} sport @privmap{sfx} masquerade random"
                );
            }
            Behaviour::AddressAndPortDependent => {
                let _ = writeln!(
                    r,
                    "    {out} ip saddr . {p} sport @privmap{sfx} masquerade random"
                );
            }
        }
    }
    let _ = writeln!(r, "    {out} masquerade{rnd}");
    let _ = writeln!(r, "  }}");

    // Learning, after source NAT: the packet carries the external source already.
    let _ = writeln!(
        r,
        "  chain learn {{ type filter hook postrouting priority srcnat + 10; policy accept;"
    );
    for (p, sfx) in protos(cfg) {
        let mut learn = format!(
            "    oifname \"{wan}\" meta l4proto {p} ct direction original ct original ip saddr != {wan_ip} \
             update @pubmap{sfx} {{ {p} sport : ct original ip saddr . ct original proto-src }} \
             update @privmap{sfx} {{ ct original ip saddr . ct original proto-src : ip saddr . {p} sport }} \
             update @peers{sfx} {{ {p} sport . ip daddr }}"
        );
        if cfg.mapping == Behaviour::AddressDependent {
            let _ = write!(
                learn,
                " update @privmap_ad{sfx} {{ ct original ip saddr . ct original proto-src . ip daddr : ip saddr . {p} sport }}"
            );
        }
        let _ = writeln!(r, "{learn}");
    }
    let _ = writeln!(r, "  }}");

    // Forwarding filter.
    let _ = writeln!(
        r,
        "  chain filtfwd {{ type filter hook forward priority filter; policy drop;"
    );
    if cfg.block_udp {
        let _ = writeln!(r, "    meta l4proto udp drop");
    }
    let _ = writeln!(r, "    ct state established,related accept");
    let _ = writeln!(r, "    iifname \"{lan}\" accept");
    let _ = writeln!(r, "    iifname \"{wan}\" ct status dnat accept");
    let _ = writeln!(r, "  }}");

    // The router itself: answer nothing unsolicited from outside, and nothing sent to the
    // WAN address from inside (that is hairpin traffic, or its absence).
    let _ = writeln!(
        r,
        "  chain filtin {{ type filter hook input priority filter; policy drop;"
    );
    let _ = writeln!(r, "    ct state established,related accept");
    let _ = writeln!(r, "    iif \"lo\" accept");
    let _ = writeln!(r, "    iifname \"{lan}\" ip daddr {wan_ip} drop");
    let _ = writeln!(r, "    iifname \"{lan}\" accept");
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "}}");
    r
}

/// The protocols that get the mapping and filtering behaviour, with their maps' suffix:
/// UDP, and TCP with [`NatConfig::tcp_behaviour`].
fn protos(cfg: &NatConfig) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("udp", "")];
    if cfg.tcp_behaviour {
        v.push(("tcp", "_tcp"));
    }
    v
}

/// The nft commands that stop all traffic through the router and forget the NAT's own
/// maps, in one transaction; then `conntrack -F` forgets the kernel's side and
/// [`thaw_commands`] lets traffic through again. Without the freeze, a packet between
/// the two steps re-learns the mapping from the connection not yet flushed, and a NAT
/// that allocates random ports keeps the old port (sometimes: it made a lab test flaky).
pub fn freeze_commands() -> String {
    let mut r = format!("add rule ip {TABLE} freeze drop\n");
    r.push_str(&flush_commands());
    r
}

/// The nft command that ends [`freeze_commands`].
pub fn thaw_commands() -> String {
    format!("flush chain ip {TABLE} freeze\n")
}

/// The nft commands that forget every mapping (with `conntrack -F` for the kernel's side).
pub fn flush_commands() -> String {
    let mut r = String::new();
    for m in [
        "pubmap",
        "privmap",
        "privmap_ad",
        "pubmap_tcp",
        "privmap_tcp",
        "privmap_ad_tcp",
    ] {
        let _ = writeln!(r, "flush map ip {TABLE} {m}");
    }
    let _ = writeln!(r, "flush set ip {TABLE} peers");
    let _ = writeln!(r, "flush set ip {TABLE} peers_tcp");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifs() -> RouterIfaces<'static> {
        RouterIfaces {
            wan: "wan",
            lan: "lan",
            wan_ip: Ipv4Addr::new(198, 51, 100, 10),
        }
    }

    #[test]
    fn full_cone_dnats_every_inbound_to_a_mapping() {
        let r = ruleset(&NatConfig::full_cone(), &ifs());
        assert!(r.contains("iifname \"wan\" udp dport @pubmap dnat"));
        assert!(!r.contains("@peers dnat"));
        assert!(r.contains("masquerade\n"));
    }

    #[test]
    fn symmetric_gets_a_new_random_port_per_destination() {
        let r = ruleset(&NatConfig::symmetric(), &ifs());
        assert!(r.contains("@privmap masquerade random"));
        assert!(!r.contains("snat ip to ip saddr . udp sport map @privmap\n"));
        assert!(!r.contains("dnat ip to"));
    }

    #[test]
    fn hairpinning_adds_dnat_and_snat() {
        let r = ruleset(&NatConfig::default().hairpinning(true), &ifs());
        assert!(r.contains("iifname \"lan\" ip daddr 198.51.100.10 udp dport @pubmap dnat"));
        assert!(r.contains("ct original ip daddr 198.51.100.10"));
    }

    #[test]
    fn loss_and_udp_block() {
        let r = ruleset(&NatConfig::default().loss(7).blocking_udp(), &ifs());
        assert!(r.contains("numgen random mod 100 < 7 counter drop"));
        assert!(r.contains("meta l4proto udp drop"));
    }

    #[test]
    fn tcp_behaviour_gets_maps_of_its_own() {
        let plain = ruleset(&NatConfig::full_cone(), &ifs());
        assert!(!plain.contains("tcp sport @privmap_tcp"));
        assert!(!plain.contains("tcp dport @pubmap_tcp"));
        let r = ruleset(&NatConfig::full_cone().tcp_behaviour(), &ifs());
        assert!(r.contains(
            "iifname \"wan\" tcp dport @pubmap_tcp dnat ip to tcp dport map @pubmap_tcp"
        ));
        assert!(
            r.contains("tcp sport @privmap_tcp snat ip to ip saddr . tcp sport map @privmap_tcp")
        );
        assert!(r.contains("meta l4proto tcp ct direction original"));
        // UDP keeps its own.
        assert!(r.contains("udp dport @pubmap dnat ip to udp dport map @pubmap\n"));
    }

    #[test]
    fn describe_names_the_behaviour() {
        assert_eq!(
            NatConfig::restricted_cone().hairpinning(true).describe(),
            "EIM/ADF preserving, hairpin on"
        );
    }
}
