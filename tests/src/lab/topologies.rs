//! Named topologies: the NAT behaviour matrix that the tests check and that
//! `natlab up` builds by hand.

use std::time::Duration;

use super::nat::{Behaviour, NatConfig};
use super::{Host, Lab, Result, Uplink};

use Behaviour::{
    AddressAndPortDependent as Apd, AddressDependent as Ad, EndpointIndependent as Ei,
};

/// What `pinhole netcheck` should report behind a case's NATs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Whether UDP gets through at all.
    pub udp: bool,
    /// The mapping behaviour (`None`: not determinable, as without UDP).
    pub mapping: Option<Behaviour>,
    /// The filtering behaviour.
    pub filtering: Option<Behaviour>,
    /// Whether the NAT hairpins.
    pub hairpinning: Option<bool>,
    /// How the NAT allocates ports to new mappings, as netcheck's `port_allocation.kind`
    /// says it: `preserving` (masquerade keeps a free port), `random` (`masquerade
    /// random`, and a chain with a random NAT in it), `unknown` without UDP. The lab's
    /// Linux NATs cannot allocate sequentially (the virtual network tests that kind).
    pub port_allocation: &'static str,
}

impl Expected {
    const fn nat(mapping: Behaviour, filtering: Behaviour, hairpinning: bool) -> Self {
        Expected {
            udp: true,
            mapping: Some(mapping),
            filtering: Some(filtering),
            hairpinning: Some(hairpinning),
            port_allocation: "preserving",
        }
    }

    /// With random port allocation expected.
    const fn random(mut self) -> Self {
        self.port_allocation = "random";
        self
    }
}

/// One row of the matrix: a chain of NATs from the internet to a host.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name (also the name of its routers and host in the lab).
    pub name: &'static str,
    /// The NATs, outermost first: one, or a carrier-grade NAT then a home NAT.
    pub nats: Vec<NatConfig>,
    /// What netcheck should find.
    pub expect: Expected,
}

impl Case {
    fn single(name: &'static str, nat: NatConfig, expect: Expected) -> Self {
        Case {
            name,
            nats: vec![nat],
            expect,
        }
    }

    /// A one-line description of its NATs.
    pub fn describe(&self) -> String {
        match self.nats.as_slice() {
            [one] => one.describe(),
            [outer, inner] => format!("CGN {} + home {}", outer.describe(), inner.describe()),
            _ => String::from("?"),
        }
    }

    /// The name of the host a case builds.
    pub fn host_name(&self) -> String {
        format!("{}-h", self.name)
    }
}

/// Every NAT behaviour the lab models, with what netcheck must classify.
pub fn matrix() -> Vec<Case> {
    vec![
        Case::single(
            "full-cone",
            NatConfig::full_cone().random_ports().hairpinning(true),
            Expected::nat(Ei, Ei, true).random(),
        ),
        Case::single(
            "full-cone-nohp",
            NatConfig::full_cone(),
            Expected::nat(Ei, Ei, false),
        ),
        Case::single(
            "restricted",
            NatConfig::restricted_cone().hairpinning(true),
            Expected::nat(Ei, Ad, true),
        ),
        Case::single(
            "port-restricted",
            NatConfig::port_restricted_cone(),
            Expected::nat(Ei, Apd, false),
        ),
        Case::single(
            "port-restr-rand",
            NatConfig::port_restricted_cone()
                .random_ports()
                .hairpinning(true),
            Expected::nat(Ei, Apd, true).random(),
        ),
        Case::single(
            "addr-dependent",
            NatConfig::new(Ad, Ad).random_ports(),
            Expected::nat(Ad, Ad, false).random(),
        ),
        Case::single(
            "symmetric",
            NatConfig::symmetric(),
            Expected::nat(Apd, Apd, false).random(),
        ),
        Case::single(
            "symmetric-pres",
            NatConfig::symmetric().preserving_ports(),
            Expected::nat(Apd, Apd, false),
        ),
        Case::single(
            "symmetric-hp",
            NatConfig::symmetric().hairpinning(true),
            Expected::nat(Apd, Apd, true).random(),
        ),
        Case::single(
            "lossy-5pct",
            NatConfig::full_cone().hairpinning(true).loss(5),
            Expected::nat(Ei, Ei, true),
        ),
        Case::single(
            "delay-40ms",
            NatConfig::port_restricted_cone().delay(Duration::from_millis(40)),
            Expected::nat(Ei, Apd, false),
        ),
        Case::single(
            "udp-blocked",
            NatConfig::port_restricted_cone().blocking_udp(),
            Expected {
                udp: false,
                mapping: None,
                filtering: None,
                hairpinning: None,
                port_allocation: "unknown",
            },
        ),
        Case {
            name: "cgnat",
            nats: vec![
                NatConfig::full_cone().random_ports().hairpinning(true),
                NatConfig::restricted_cone(),
            ],
            expect: Expected::nat(Ei, Ad, true).random(),
        },
        Case {
            name: "cgnat-symmetric",
            nats: vec![NatConfig::symmetric(), NatConfig::full_cone()],
            expect: Expected::nat(Apd, Apd, false).random(),
        },
    ]
}

impl Lab {
    /// Builds a case's NATs and its host; returns the host.
    pub fn add_case(&mut self, case: &Case) -> Result<Host> {
        let host = case.host_name();
        match case.nats.as_slice() {
            [nat] => {
                self.add_router(case.name, nat.clone(), Uplink::Internet)?;
                self.add_host(&host, case.name)?;
            }
            [outer, inner] => {
                let cgn = format!("{}-cgn", case.name);
                let home = format!("{}-home", case.name);
                self.add_carrier_nat(&cgn, outer.clone())?;
                self.add_router(&home, inner.clone(), Uplink::Router(&cgn))?;
                self.add_host(&host, &home)?;
            }
            _ => {
                return Err(super::lab_err!(
                    "case {}: one or two NATs are supported",
                    case.name
                ));
            }
        }
        Ok(self.host(&host)?.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_short() {
        let m = matrix();
        let mut names: Vec<_> = m.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), m.len());
        assert!(m.iter().all(|c| c.name.len() <= 16));
    }

    /// The expected port allocation follows from the NATs: random when any NAT of the
    /// chain is, unknown without UDP, else preserving.
    #[test]
    fn expected_port_allocation_follows_the_nats() {
        use super::super::nat::PortAllocation;
        for c in matrix() {
            let want = if !c.expect.udp {
                "unknown"
            } else if c
                .nats
                .iter()
                .any(|n| n.allocation == PortAllocation::Random)
            {
                "random"
            } else {
                "preserving"
            };
            assert_eq!(c.expect.port_allocation, want, "{}", c.name);
        }
    }
}
