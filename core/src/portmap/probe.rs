//! [`Probe`]: which port-mapping protocols the gateway speaks, for netcheck.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::requests::{Req, Requests};
use super::{UpnpCommand, UpnpResult, natpmp, pcp};
use crate::{Received, Transmit};

/// What the gateway supports, for netcheck.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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
