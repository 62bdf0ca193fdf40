//! [`Delete`]: deleting a mapping another process left behind.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use super::requests::{Req, Requests};
use super::{MapProtocol, UpnpCommand, UpnpResult, Via, ViaChoice, natpmp, pcp};
use crate::{Received, Transmit};

/// What one protocol answered to a [`Delete`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
#[non_exhaustive]
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
