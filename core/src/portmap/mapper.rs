//! The port mapper, [`Mapper`]: see the [module docs](super).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use super::requests::{Req, Requests, epoch_consistent, jitter};
use super::{
    ANNOUNCE_JITTER, ANNOUNCE_PORT, LossReason, MAX_VERIFY_INTERVAL, MIN_VERIFY_INTERVAL,
    MapProtocol, MapperConfig, MapperEvent, Mapping, RECREATE_RETRY_MAX, RECREATE_RETRY_MIN,
    ReleaseOutcome, UPNP_HEAD_START, UpnpCommand, UpnpResult, VERIFY_INTERVAL, Via, ViaChoice,
    natpmp, pcp, verify,
};
use crate::{Received, Transmit};

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
    pub(super) config: MapperConfig,
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
        let new = Mapping::new(
            now,
            via,
            self.config.protocol,
            SocketAddr::new(self.config.local_ip, self.config.internal_port),
            external,
            lifetime,
        );
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
    /// within [`UPNP_TIMEOUT`](super::UPNP_TIMEOUT).
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
