//! The mapper against a fake gateway on a virtual clock.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::requests::epoch_consistent;
use super::*;
use crate::sim::{Conditions, Host, Network, Sim};
use crate::{Received, Transmit};

const GW: &str = "192.168.1.1";
const LOCAL: &str = "192.168.1.20";

/// A gateway that speaks PCP and/or NAT-PMP, with an epoch and a restart button.
struct FakeGateway {
    pcp: bool,
    natpmp: bool,
    external: Ipv4Addr,
    started: Instant,
    /// Grant at most this lifetime.
    max_lifetime: u32,
    next_port: u16,
    /// Answer with this PCP result instead of success.
    pcp_result: pcp::ResultCode,
    /// Answer NAT-PMP requests with this result instead of success.
    natpmp_result: natpmp::ResultCode,
    /// Switched off (rebooting): answers nothing.
    down: bool,
    requests: Vec<Vec<u8>>,
    /// Whether inbound traffic reaches the mapping (a router can stop silently).
    forwarding: bool,
    /// Whether deleting a mapping (and adding it again) makes it forward again.
    readd_fixes: bool,
}

impl FakeGateway {
    fn new(t0: Instant, pcp: bool, natpmp: bool) -> Self {
        Self {
            pcp,
            natpmp,
            external: Ipv4Addr::new(203, 0, 113, 77),
            started: t0,
            max_lifetime: 7200,
            next_port: 61000,
            pcp_result: pcp::ResultCode::SUCCESS,
            natpmp_result: natpmp::ResultCode::SUCCESS,
            down: false,
            requests: Vec::new(),
            forwarding: true,
            readd_fixes: true,
        }
    }

    fn epoch(&self, now: Instant) -> u32 {
        (now - self.started).as_secs() as u32
    }

    fn answer(&mut self, now: Instant, req: &[u8]) -> Option<Vec<u8>> {
        self.requests.push(req.to_vec());
        if self.down {
            return None;
        }
        match req.first()? {
            2 if self.pcp => {
                let r = pcp::Request::parse(req).ok()?;
                if r.lifetime == 0 && self.readd_fixes {
                    self.forwarding = true;
                }
                let data = match r.data {
                    pcp::OpData::Map(mut m) => {
                        if m.external_port == 0 {
                            self.next_port += 1;
                            m.external_port = self.next_port;
                        }
                        m.external_ip = IpAddr::V4(self.external);
                        Some(pcp::OpData::Map(m))
                    }
                    d => Some(d),
                };
                let resp = pcp::Response {
                    result: self.pcp_result,
                    lifetime: r.lifetime.min(self.max_lifetime),
                    epoch: self.epoch(now),
                    opcode: match r.data {
                        pcp::OpData::Announce => pcp::Opcode::Announce,
                        pcp::OpData::Map(_) => pcp::Opcode::Map,
                        pcp::OpData::Peer(_) => pcp::Opcode::Peer,
                    },
                    data,
                };
                let mut b = [0u8; 128];
                let n = resp.emit(&mut b).ok()?;
                Some(b[..n].to_vec())
            }
            2 if self.natpmp => {
                // RFC 6887 §9: a NAT-PMP server answers a PCP request with version 0,
                // UNSUPPORTED_VERSION.
                let resp = natpmp::Response {
                    result: natpmp::ResultCode::UNSUPPORTED_VERSION,
                    epoch: self.epoch(now),
                    body: natpmp::ResponseBody::Error {
                        opcode: req[1] & 0x7f,
                    },
                };
                let mut b = [0u8; 16];
                let n = resp.emit(&mut b);
                Some(b[..n].to_vec())
            }
            0 if self.natpmp && self.natpmp_result != natpmp::ResultCode::SUCCESS => {
                let resp = natpmp::Response {
                    result: self.natpmp_result,
                    epoch: self.epoch(now),
                    body: natpmp::ResponseBody::Error { opcode: req[1] },
                };
                let mut b = [0u8; 16];
                let n = resp.emit(&mut b);
                Some(b[..n].to_vec())
            }
            0 if self.natpmp => {
                let r = natpmp::Request::parse(req).ok()?;
                let body = match r {
                    natpmp::Request::ExternalAddress => {
                        natpmp::ResponseBody::ExternalAddress(self.external)
                    }
                    natpmp::Request::Map {
                        protocol,
                        internal_port,
                        suggested_external_port,
                        lifetime,
                    } => {
                        if lifetime == 0 && self.readd_fixes {
                            self.forwarding = true;
                        }
                        let external_port = if suggested_external_port == 0 {
                            self.next_port += 1;
                            self.next_port
                        } else {
                            suggested_external_port
                        };
                        natpmp::ResponseBody::Map {
                            protocol,
                            internal_port,
                            external_port: if lifetime == 0 { 0 } else { external_port },
                            lifetime: lifetime.min(self.max_lifetime),
                        }
                    }
                };
                let resp = natpmp::Response {
                    result: natpmp::ResultCode::SUCCESS,
                    epoch: self.epoch(now),
                    body,
                };
                let mut b = [0u8; 16];
                let n = resp.emit(&mut b);
                Some(b[..n].to_vec())
            }
            _ => None,
        }
    }
}

type UpnpFake = Box<dyn FnMut(&UpnpCommand) -> Option<UpnpResult>>;

const REFLECTOR: &str = "198.51.100.9:3478";

/// What the fake STUN reflector does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reflector {
    /// RFC 5780: answers the probe toward the mapping's external port.
    Rfc5780,
    /// A plain RFC 8489 server: 420 to CHANGE-REQUEST / RESPONSE-PORT.
    Plain,
    /// Answers nothing.
    Silent,
    /// Ignores CHANGE-REQUEST and RESPONSE-PORT: answers everything from its primary
    /// address to the request's source.
    Careless,
}

/// The fake reflector's other address (RFC 5780 OTHER-ADDRESS).
const REFLECTOR_OTHER: &str = "198.51.100.10:3479";

/// The reflector's answer to `req` (from the mapped socket) and where it comes from, if it
/// arrives there.
fn reflect(kind: Reflector, gw: &FakeGateway, req: &[u8]) -> Option<(Vec<u8>, SocketAddr)> {
    use crate::stun::attributes::{ErrorCode, ResponsePort, XorMappedAddress};
    use crate::stun::{MessageBuilder, MessageType};
    let m = crate::stun::Message::parse(req).ok()?;
    let probe = m.get::<ResponsePort>().ok()?.is_some() && kind != Reflector::Careless;
    let from = if probe && kind == Reflector::Rfc5780 {
        REFLECTOR_OTHER.parse().unwrap()
    } else {
        REFLECTOR.parse().unwrap()
    };
    let mut buf = [0u8; 128];
    let bytes = match kind {
        Reflector::Silent => return None,
        Reflector::Plain if probe => {
            let mut b =
                MessageBuilder::new(&mut buf, MessageType::BINDING_ERROR, m.transaction_id())
                    .ok()?;
            b.add(&ErrorCode::UNKNOWN_ATTRIBUTE).ok()?;
            b.finish().to_vec()
        }
        // The probe's answer goes to the external port from another address: it arrives
        // only if the gateway forwards.
        Reflector::Rfc5780 if probe && !gw.forwarding => return None,
        _ => {
            let mut b =
                MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, m.transaction_id())
                    .ok()?;
            let reflexive = SocketAddr::new(IpAddr::V4(gw.external), 5000);
            b.add(&XorMappedAddress(reflexive)).ok()?;
            b.finish().to_vec()
        }
    };
    Some((bytes, from))
}

struct Harness {
    t0: Instant,
    now: Instant,
    gw: FakeGateway,
    mapper: Mapper,
    upnp: Option<UpnpFake>,
    events: Vec<(Duration, MapperEvent)>,
    upnp_seen: Vec<UpnpCommand>,
    /// When each UPnP command was issued.
    upnp_at: Vec<Duration>,
    /// 1 ms each way; carries datagrams between runs too.
    net: Network,
    reflector: Reflector,
    /// Requests the reflector received.
    reflected: usize,
}

fn source() -> SocketAddr {
    SocketAddr::new(LOCAL.parse().unwrap(), 40404)
}

impl Harness {
    fn new(pcp: bool, natpmp: bool, via: ViaChoice) -> Self {
        let t0 = Instant::now();
        let mut config = MapperConfig::new(
            GW.parse().unwrap(),
            LOCAL.parse().unwrap(),
            MapProtocol::Udp,
            5000,
        );
        config.via = via;
        Self {
            t0,
            now: t0,
            gw: FakeGateway::new(t0, pcp, natpmp),
            mapper: Mapper::new(t0, config, source(), [3; 32]),
            upnp: None,
            events: Vec::new(),
            upnp_seen: Vec::new(),
            upnp_at: Vec::new(),
            net: Network::new(
                1,
                Conditions {
                    latency: Duration::from_millis(1),
                    ..Conditions::default()
                },
            ),
            reflector: Reflector::Rfc5780,
            reflected: 0,
        }
    }

    /// A harness whose mapper verifies through [`REFLECTOR`] every `interval`.
    fn verifying(interval: Duration) -> Self {
        let mut h = Self::new(true, true, ViaChoice::Any);
        let mut config = h.mapper.config.clone();
        config.verify = Some(VerifyConfig {
            reflector: REFLECTOR.parse().unwrap(),
            interval,
        });
        h.mapper = Mapper::new(h.t0, config, source(), [3; 32]);
        h
    }

    /// The mapped socket (the verification's source).
    fn mapped_socket() -> SocketAddr {
        SocketAddr::new(LOCAL.parse().unwrap(), 5000)
    }

    /// Delivers an announcement from `from` to 224.0.0.1:5350 now.
    fn announce(&mut self, from: SocketAddr, bytes: &[u8]) -> bool {
        let rx = Received {
            proto: crate::Protocol::Udp,
            source: from,
            destination: SocketAddr::new(Ipv4Addr::new(224, 0, 0, 1).into(), ANNOUNCE_PORT),
            contents: bytes,
        };
        self.mapper.handle_input(self.now, rx)
    }

    /// Runs until `until` (virtual), the gateway and the reflector answering after one
    /// RTT (1 ms each way).
    fn run_until(&mut self, until: Duration) {
        let t0 = self.t0;
        let gw_addr = SocketAddr::new(GW.parse().unwrap(), 5351);
        let (upnp, upnp_seen, upnp_at, events) = (
            &mut self.upnp,
            &mut self.upnp_seen,
            &mut self.upnp_at,
            &mut self.events,
        );
        let mut far = Far {
            gw: &mut self.gw,
            reflector: self.reflector,
            reflected: &mut self.reflected,
            out: VecDeque::new(),
        };
        let mut sim = Sim::new(&mut self.net, self.now);
        sim.add(
            Host::new(&mut self.mapper, [LOCAL.parse().unwrap()])
                .on_transmit(|_, t| {
                    if t.destination == REFLECTOR.parse().unwrap() {
                        assert_eq!(t.source, Self::mapped_socket());
                    } else {
                        assert_eq!(t.destination, gw_addr);
                    }
                })
                .on_step(|mapper, now| {
                    while let Some(cmd) = mapper.poll_upnp() {
                        upnp_seen.push(cmd.clone());
                        upnp_at.push(now - t0);
                        if let Some(f) = upnp.as_mut() {
                            if let Some(r) = f(&cmd) {
                                mapper.handle_upnp(now, r);
                            }
                        } else {
                            mapper.handle_upnp(now, UpnpResult::Failed("no IGD".into()));
                        }
                    }
                })
                .on_event(|_, at, e| events.push((at - t0, e)))
                .on_verdict(|_, taken| assert!(taken)),
        );
        sim.add(Host::new(
            &mut far,
            [
                gw_addr.ip(),
                REFLECTOR.parse::<SocketAddr>().unwrap().ip(),
                REFLECTOR_OTHER.parse::<SocketAddr>().unwrap().ip(),
            ],
        ));
        sim.run_until(t0 + until);
        self.now = sim.now();
    }
}

/// The gateway and the reflector as one machine on the virtual network (the reflector's
/// answers depend on the gateway's state): each answers a request when it arrives.
struct Far<'h> {
    gw: &'h mut FakeGateway,
    reflector: Reflector,
    /// Requests the reflector received.
    reflected: &'h mut usize,
    out: VecDeque<Transmit>,
}

impl crate::machine::Machine for Far<'_> {
    type Event = crate::machine::NoEvent;
    type Verdict<'a> = ();
    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) {
        let answer = if rx.destination == REFLECTOR.parse().unwrap() {
            *self.reflected += 1;
            reflect(self.reflector, self.gw, rx.contents)
        } else {
            self.gw
                .answer(now, rx.contents)
                .map(|bytes| (bytes, rx.destination))
        };
        if let Some((contents, from)) = answer {
            self.out.push_back(Transmit {
                proto: crate::Protocol::Udp,
                source: from,
                destination: rx.source,
                contents,
            });
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_event(&mut self) -> Option<crate::machine::NoEvent> {
        None
    }
}

#[test]
fn pcp_wins_in_one_round_trip() {
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(1));
    let (at, ev) = &h.events[0];
    assert_eq!(*at, Duration::from_millis(2), "one round trip");
    let MapperEvent::Mapped(m) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(m.via, Via::Pcp);
    assert_eq!(m.external.ip(), IpAddr::V4(h.gw.external));
    assert!(m.reachable);
    // NAT-PMP was only asked for the external address: no second mapping was made.
    let natpmp_maps =
        h.gw.requests
            .iter()
            .filter(|r| r[0] == 0 && r[1] != 0)
            .count();
    assert_eq!(natpmp_maps, 0);
    // PCP answered within UPnP's head start: no UPnP traffic at all.
    assert!(h.upnp_seen.is_empty(), "{:?}", h.upnp_seen);
    assert_eq!(h.mapper.preferred(), Some(Via::Pcp));
}

fn igd(cmd: &UpnpCommand) -> Option<UpnpResult> {
    Some(match cmd {
        UpnpCommand::Probe => UpnpResult::Available {
            external_ip: Some("203.0.113.77".parse().unwrap()),
        },
        UpnpCommand::Map { .. } => UpnpResult::Mapped {
            external: "203.0.113.77:62000".parse().unwrap(),
            lifetime: 3600,
        },
        UpnpCommand::Delete { .. } => UpnpResult::Deleted,
    })
}

#[test]
fn upnp_discovery_starts_after_its_head_start() {
    // PCP and NAT-PMP silent: the discovery starts after UPNP_HEAD_START, and the
    // mapping waits for them to time out (the preference order).
    let mut h = Harness::new(false, false, ViaChoice::Any);
    h.upnp = Some(Box::new(igd));
    h.run_until(Duration::from_secs(5));
    assert_eq!(h.upnp_at[0], UPNP_HEAD_START);
    assert_eq!(h.upnp_seen[0], UpnpCommand::Probe);
    let (at, ev) = &h.events[0];
    assert_eq!(*at, REQUEST_LAST_WAIT + REQUEST_RTO * 3);
    assert!(matches!(ev, MapperEvent::Mapped(m) if m.via == Via::Upnp));
}

#[test]
fn upnp_maps_at_once_when_pcp_and_natpmp_refuse_early() {
    // A NAT-PMP-only gateway (PCP: UNSUPPORTED_VERSION) that refuses NAT-PMP: both are
    // out after one round trip, before the head start, and UPnP maps right away.
    let mut h = Harness::new(false, true, ViaChoice::Any);
    h.gw.natpmp_result = natpmp::ResultCode::NOT_AUTHORIZED;
    h.upnp = Some(Box::new(igd));
    h.run_until(Duration::from_secs(5));
    assert!(
        matches!(h.upnp_seen[0], UpnpCommand::Map { .. }),
        "{:?}",
        h.upnp_seen
    );
    let (at, ev) = &h.events[0];
    assert_eq!(*at, Duration::from_millis(2));
    assert!(matches!(ev, MapperEvent::Mapped(m) if m.via == Via::Upnp));
}

#[test]
fn recreation_falls_back_from_the_remembered_protocol() {
    // Mapped over PCP; the gateway restarts speaking only NAT-PMP. Re-creation tries PCP
    // (remembered) first, then asks NAT-PMP, whose status was never learnt (PCP won
    // before its answer came).
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.gw.max_lifetime = 60;
    h.run_until(Duration::from_secs(20));
    h.gw.started = h.now;
    h.gw.pcp = false;
    // PCP renewals now fail (UNSUPPORTED_VERSION); the mapping is kept until it is about
    // to expire (60 s after its last renewal at 30 s), then lost and re-created.
    h.run_until(Duration::from_secs(100));
    let evs: Vec<_> = h.events.iter().map(|(_, e)| e).collect();
    assert!(
        matches!(
            evs[..],
            [
                MapperEvent::Mapped(a),
                MapperEvent::Lost(_),
                MapperEvent::Mapped(b),
                ..
            ] if a.via == Via::Pcp && b.via == Via::NatPmp
        ),
        "{:?}",
        h.events
    );
}

#[test]
fn recreates_after_a_long_outage() {
    // The gateway goes silent for a minute (a reboot): the renewals fail, the mapping
    // expires and is lost, attempts to re-create it fail and are retried with backoff,
    // and it is re-created once the gateway answers again. No Unavailable.
    for via in [ViaChoice::Any, ViaChoice::Only(Via::Pcp)] {
        let mut h = Harness::new(true, true, via);
        h.gw.max_lifetime = 10;
        h.run_until(Duration::from_secs(1));
        h.gw.down = true;
        h.run_until(Duration::from_secs(60));
        let silent_requests = h.gw.requests.len();
        h.gw.down = false;
        h.gw.started = h.now;
        h.run_until(Duration::from_secs(200));
        let evs: Vec<_> = h.events.iter().map(|(_, e)| e).collect();
        assert!(
            matches!(
                evs[..],
                [
                    MapperEvent::Mapped(_),
                    MapperEvent::Lost(_),
                    MapperEvent::Mapped(_),
                    ..
                ]
            ),
            "{via:?}: {:?}",
            h.events
        );
        assert!(
            !evs.iter().any(|e| matches!(e, MapperEvent::Unavailable(_))),
            "{:?}",
            h.events
        );
        // Re-created within the longest pause after the gateway came back.
        let back = h.events[2].0;
        assert!(
            back <= Duration::from_secs(60) + RECREATE_RETRY_MAX + Duration::from_secs(2),
            "{back:?}"
        );
        // Backoff: far fewer requests than one per retransmission timeout.
        assert!(
            silent_requests < 60,
            "{silent_requests} requests while down"
        );
    }
}

#[test]
fn natpmp_only_gateway_falls_back() {
    let mut h = Harness::new(false, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(1));
    let (at, ev) = &h.events[0];
    // PCP's UNSUPPORTED_VERSION and the external address come back together; the map
    // request goes out then: two round trips.
    assert_eq!(*at, Duration::from_millis(4));
    let MapperEvent::Mapped(m) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(m.via, Via::NatPmp);
    assert_eq!(
        m.external,
        SocketAddr::new(IpAddr::V4(h.gw.external), 61001)
    );
}

#[test]
fn forced_natpmp_is_one_round_trip() {
    let mut h = Harness::new(true, true, ViaChoice::Only(Via::NatPmp));
    h.run_until(Duration::from_secs(1));
    let (at, ev) = &h.events[0];
    assert_eq!(*at, Duration::from_millis(2));
    assert!(matches!(ev, MapperEvent::Mapped(m) if m.via == Via::NatPmp));
    assert!(h.upnp_seen.is_empty());
}

#[test]
fn upnp_only_after_pcp_and_natpmp_fail() {
    let mut h = Harness::new(false, false, ViaChoice::Any);
    h.upnp = Some(Box::new(|cmd| match cmd {
        UpnpCommand::Probe => Some(UpnpResult::Available {
            external_ip: Some("203.0.113.77".parse().unwrap()),
        }),
        UpnpCommand::Map { external_port, .. } => {
            assert_eq!(*external_port, 0);
            Some(UpnpResult::Mapped {
                external: "203.0.113.77:62000".parse().unwrap(),
                lifetime: 3600,
            })
        }
        UpnpCommand::Delete { .. } => Some(UpnpResult::Deleted),
    }));
    h.run_until(Duration::from_secs(5));
    let (at, ev) = &h.events[0];
    // Both PCP and NAT-PMP time out after 1.75 s.
    assert_eq!(*at, REQUEST_LAST_WAIT + REQUEST_RTO * 3);
    assert!(matches!(ev, MapperEvent::Mapped(m) if m.via == Via::Upnp));
    h.mapper.release(h.now);
    h.run_until(Duration::from_secs(6));
    assert!(matches!(
        h.events.last(),
        Some((_, MapperEvent::Released(ReleaseOutcome::Deleted(m)))) if m.via == Via::Upnp
    ));
    assert!(matches!(
        h.upnp_seen.last(),
        Some(UpnpCommand::Delete {
            external_port: 62000,
            ..
        })
    ));
}

#[test]
fn nothing_answers_means_unavailable() {
    let mut h = Harness::new(false, false, ViaChoice::Any);
    h.run_until(Duration::from_secs(10));
    assert_eq!(h.events.len(), 1, "{:?}", h.events);
    let (at, MapperEvent::Unavailable(why)) = &h.events[0] else {
        panic!("{:?}", h.events)
    };
    assert_eq!(*at, Duration::from_millis(1750));
    assert!(
        why.contains("PCP") && why.contains("NAT-PMP") && why.contains("UPnP"),
        "{why}"
    );
    assert!(h.mapper.is_finished());
    // Retransmission: 3 PCP and 3 NAT-PMP requests.
    assert_eq!(h.gw.requests.len(), 6);
}

#[test]
fn renews_at_half_the_granted_lifetime() {
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.gw.max_lifetime = 100;
    h.run_until(Duration::from_secs(120));
    let renewals: Vec<_> = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, MapperEvent::Renewed(_)))
        .map(|(t, _)| *t)
        .collect();
    // Mapped at 2 ms with 100 s: renew at 50.002 s (answered 2 ms later), then 100.004 s.
    assert_eq!(
        renewals,
        [
            Duration::from_millis(50_004),
            Duration::from_millis(100_006)
        ]
    );
    // The renewal asked for the same external port.
    let MapperEvent::Renewed(m) = &h.events[1].1 else {
        panic!()
    };
    assert_eq!(m.external.port(), 61001);
}

#[test]
fn gateway_restart_is_detected_and_mapping_recreated() {
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.gw.max_lifetime = 60;
    h.run_until(Duration::from_secs(20));
    // The gateway reboots: its epoch starts again from zero.
    h.gw.started = h.now;
    h.gw.next_port = 63000;
    h.run_until(Duration::from_secs(40));
    let kinds: Vec<_> = h
        .events
        .iter()
        .map(|(_, e)| std::mem::discriminant(e))
        .collect();
    assert!(
        matches!(
            h.events[1].1,
            MapperEvent::Lost(LossReason::GatewayRestarted)
        ),
        "{:?}",
        h.events
    );
    assert!(
        matches!(h.events[2].1, MapperEvent::Mapped(_)),
        "{:?}",
        h.events
    );
    assert_eq!(kinds.len(), 3);
}

#[test]
fn cgnat_external_address_is_not_reachable() {
    let mut h = Harness::new(true, false, ViaChoice::Only(Via::Pcp));
    h.gw.external = Ipv4Addr::new(100, 64, 3, 4);
    h.run_until(Duration::from_secs(1));
    let MapperEvent::Mapped(m) = &h.events[0].1 else {
        panic!()
    };
    assert!(!m.reachable);
    let mut h = Harness::new(true, false, ViaChoice::Only(Via::Pcp));
    h.gw.external = Ipv4Addr::new(10, 1, 2, 3);
    h.run_until(Duration::from_secs(1));
    let MapperEvent::Mapped(m) = &h.events[0].1 else {
        panic!()
    };
    assert!(!m.reachable);
}

#[test]
fn pcp_error_result_is_reported() {
    let mut h = Harness::new(true, false, ViaChoice::Only(Via::Pcp));
    h.gw.pcp_result = pcp::ResultCode::NOT_AUTHORIZED;
    h.run_until(Duration::from_secs(1));
    let MapperEvent::Unavailable(why) = &h.events[0].1 else {
        panic!("{:?}", h.events)
    };
    assert!(why.contains("NOT_AUTHORIZED"), "{why}");
}

#[test]
fn release_deletes_with_lifetime_zero() {
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(1));
    h.mapper.release(h.now);
    h.run_until(Duration::from_secs(2));
    assert!(matches!(
        h.events.last(),
        Some((_, MapperEvent::Released(ReleaseOutcome::Deleted(m)))) if m.via == Via::Pcp
    ));
    let last = pcp::Request::parse(h.gw.requests.last().unwrap()).unwrap();
    assert_eq!(last.lifetime, 0);
    assert!(h.mapper.is_finished());
}

#[test]
fn spoofed_and_malformed_answers_are_ignored() {
    let t0 = Instant::now();
    let config = MapperConfig::new(
        GW.parse().unwrap(),
        LOCAL.parse().unwrap(),
        MapProtocol::Udp,
        5000,
    );
    let mut m = Mapper::new(t0, config, source(), [1; 32]);
    let sent = m.poll_transmit().unwrap();
    let req = pcp::Request::parse(&sent.contents).unwrap();
    let pcp::OpData::Map(data) = req.data else {
        panic!()
    };
    let answer = |nonce: [u8; 12], opcode: pcp::Opcode| {
        let mut d = data;
        d.nonce = nonce;
        d.external_port = 1234;
        d.external_ip = "203.0.113.1".parse().unwrap();
        let mut b = [0u8; 128];
        let n = pcp::Response {
            result: pcp::ResultCode::SUCCESS,
            lifetime: 60,
            epoch: 5,
            opcode,
            data: Some(pcp::OpData::Map(d)),
        }
        .emit(&mut b)
        .unwrap();
        b[..n].to_vec()
    };
    let gw = SocketAddr::new(GW.parse().unwrap(), 5351);
    // Wrong source address: not ours.
    let good = answer(data.nonce, pcp::Opcode::Map);
    let r = Received {
        proto: crate::Protocol::Udp,
        source: "192.168.1.66:5351".parse().unwrap(),
        destination: source(),
        contents: &good,
    };
    assert!(!m.handle_input(t0, r));
    // Wrong nonce, truncated, garbage: dropped.
    let bad_nonce = answer([0xee; 12], pcp::Opcode::Map);
    for contents in [
        &bad_nonce[..],
        &good[..30],
        &[2u8, 0x81][..],
        &[7u8; 40][..],
    ] {
        let r = Received {
            proto: crate::Protocol::Udp,
            source: gw,
            destination: source(),
            contents,
        };
        assert!(m.handle_input(t0, r));
        assert_eq!(m.poll_event(), None);
    }
    // The real one.
    let r = Received {
        proto: crate::Protocol::Udp,
        source: gw,
        destination: source(),
        contents: &good,
    };
    assert!(m.handle_input(t0, r));
    assert!(matches!(m.poll_event(), Some(MapperEvent::Mapped(x)) if x.external.port() == 1234));
}

#[test]
fn epoch_rules_of_rfc6887() {
    let t0 = Instant::now();
    assert!(epoch_consistent(None, 0, t0));
    assert!(epoch_consistent(
        Some((100, t0)),
        110,
        t0 + Duration::from_secs(10)
    ));
    // Backwards by more than a second.
    assert!(!epoch_consistent(
        Some((100, t0)),
        50,
        t0 + Duration::from_secs(10)
    ));
    // Too slow: 10 s passed here, 1 s there.
    assert!(!epoch_consistent(
        Some((100, t0)),
        101,
        t0 + Duration::from_secs(10)
    ));
    // Too fast.
    assert!(!epoch_consistent(
        Some((100, t0)),
        200,
        t0 + Duration::from_secs(10)
    ));
}

#[test]
fn probe_reports_what_the_gateway_speaks() {
    let t0 = Instant::now();
    let mut gw = FakeGateway::new(t0, false, true);
    let mut p = Probe::new(t0, GW.parse().unwrap(), source(), true);
    assert_eq!(p.poll_upnp(), Some(UpnpCommand::Probe));
    p.handle_upnp(UpnpResult::Failed("none".into()));
    while let Some(t) = p.poll_transmit() {
        if let Some(resp) = gw.answer(t0, &t.contents) {
            let rx = Received {
                proto: crate::Protocol::Udp,
                source: t.destination,
                destination: source(),
                contents: &resp,
            };
            assert!(p.handle_input(t0, rx));
        }
    }
    assert!(p.udp_done());
    let r = p.report();
    assert_eq!(
        (r.pcp, r.natpmp, r.upnp),
        (Some(false), Some(true), Some(false))
    );
    assert_eq!(r.natpmp_external, Some(IpAddr::V4(gw.external)));
}

#[test]
fn gateway_from_proc_net_route() {
    let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
    assert_eq!(
        default_gateway_from_proc_route(text),
        Some(Ipv4Addr::new(192, 168, 1, 1))
    );
    assert_eq!(default_gateway_from_proc_route("Iface\n"), None);
    assert_eq!(default_gateway_from_proc_route("x\nbad line here\n"), None);
}

#[test]
fn routability() {
    for (ip, public) in [
        ("203.0.113.1", true),
        ("8.8.8.8", true),
        ("10.0.0.1", false),
        ("172.16.5.5", false),
        ("192.168.0.1", false),
        ("100.64.0.1", false),
        ("100.127.255.255", false),
        ("100.128.0.1", true),
        ("169.254.1.1", false),
        ("2001:db8::1", true),
        ("fd00::1", false),
        ("fe80::1", false),
    ] {
        assert_eq!(is_publicly_routable(ip.parse().unwrap()), public, "{ip}");
    }
}

fn names(h: &Harness) -> Vec<&'static str> {
    h.events
        .iter()
        .map(|(_, e)| match e {
            MapperEvent::Mapped(_) => "mapped",
            MapperEvent::Renewed(_) => "renewed",
            MapperEvent::Changed { .. } => "changed",
            MapperEvent::Lost(r) => r.as_str(),
            MapperEvent::Unavailable(_) => "unavailable",
            MapperEvent::Released(_) => "released",
            MapperEvent::Verified(_) => "verified",
            MapperEvent::NotForwarding(_) => "not-forwarding",
            MapperEvent::Unverified(_) => "unverified",
        })
        .collect()
}

#[test]
fn a_new_mapping_is_verified_through_the_reflector() {
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.run_until(Duration::from_secs(1));
    assert_eq!(names(&h), ["mapped", "verified"], "{:?}", h.events);
    // One round trip to the gateway, one to the reflector.
    assert_eq!(h.events[1].0, Duration::from_millis(4));
    // Probe and control, each once.
    assert_eq!(h.reflected, 2);
    // Verified again every interval.
    h.run_until(Duration::from_secs(61));
    assert_eq!(names(&h), ["mapped", "verified", "verified", "verified"]);
}

#[test]
fn a_mapping_that_stops_forwarding_is_deleted_and_added_again() {
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.run_until(Duration::from_secs(10));
    let requests_before = h.gw.requests.len();
    let MapperEvent::Mapped(first) = h.events[0].1 else {
        panic!("{:?}", h.events)
    };
    // The router drops its forwarding rule without telling anybody.
    h.gw.forwarding = false;
    h.run_until(Duration::from_secs(35));
    assert_eq!(
        names(&h),
        ["mapped", "verified", "not-forwarding", "mapped", "verified"],
        "{:?}",
        h.events
    );
    // Deleted (PCP lifetime 0) first, then added again asking for the same port.
    let sent: Vec<pcp::Request> = h.gw.requests[requests_before..]
        .iter()
        .filter_map(|r| pcp::Request::parse(r).ok())
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].lifetime, 0);
    assert!(sent[1].lifetime > 0);
    let MapperEvent::Mapped(again) = h.events[3].1 else {
        unreachable!()
    };
    assert_eq!(again.external, first.external);
}

#[test]
fn a_gateway_that_never_forwards_is_reported_and_kept() {
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.gw.forwarding = false;
    h.gw.readd_fixes = false;
    h.run_until(Duration::from_secs(10));
    assert_eq!(
        names(&h),
        ["mapped", "not-forwarding", "mapped", "not-forwarding"],
        "{:?}",
        h.events
    );
    let MapperEvent::NotForwarding(m) = h.events[3].1 else {
        unreachable!()
    };
    // Kept: it may still work for other senders; tried again after the interval.
    assert_eq!(h.mapper.mapping(), Some(&m));
    h.run_until(Duration::from_secs(45));
    // Not deleted and re-added again at every interval: reported, and kept.
    assert_eq!(names(&h)[4..], ["not-forwarding"]);
    assert_eq!(h.mapper.mapping(), Some(&m));
}

#[test]
fn a_reflector_without_rfc5780_stops_verification() {
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.reflector = Reflector::Plain;
    h.run_until(Duration::from_secs(100));
    assert_eq!(names(&h), ["mapped", "unverified"], "{:?}", h.events);
    let MapperEvent::Unverified(why) = &h.events[1].1 else {
        unreachable!()
    };
    assert!(why.contains("420") && why.contains("RFC 5780"), "{why}");
    assert_eq!(h.reflected, 2, "no further verification");
}

#[test]
fn a_silent_reflector_leaves_the_mapping_alone_and_is_asked_again() {
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.reflector = Reflector::Silent;
    h.run_until(Duration::from_secs(10));
    assert_eq!(names(&h), ["mapped", "unverified"], "{:?}", h.events);
    // RFC 6886's schedule: 3 sends each of probe and control, then the last wait.
    assert_eq!(h.reflected, 6);
    assert_eq!(h.events[1].0, Duration::from_millis(2 + 250 + 500 + 1000));
    h.reflector = Reflector::Rfc5780;
    h.run_until(Duration::from_secs(40));
    assert_eq!(names(&h), ["mapped", "unverified", "verified"]);
}

#[test]
fn tcp_mappings_and_unreachable_ones_are_not_verified_and_say_so() {
    // TCP: said once, never tried.
    let mut h = Harness::verifying(Duration::from_secs(30));
    let mut config = h.mapper.config.clone();
    config.protocol = MapProtocol::Tcp;
    h.gw.max_lifetime = 10;
    h.mapper = Mapper::new(h.t0, config, source(), [3; 32]);
    h.run_until(Duration::from_secs(40));
    let n = names(&h);
    assert_eq!(n[..2], ["mapped", "unverified"], "{:?}", h.events);
    assert!(n[2..].iter().all(|e| *e == "renewed"), "{n:?}");
    assert_eq!(h.reflected, 0);
    // Behind another NAT (the external address is CGNAT or private): a caller waiting for
    // the verification's outcome (`pinhole map --once --verify`) gets one at once, saying
    // why, instead of waiting forever; nothing is sent to the reflector.
    for external in [Ipv4Addr::new(100, 64, 0, 7), Ipv4Addr::new(10, 0, 0, 2)] {
        let mut h = Harness::verifying(Duration::from_secs(30));
        h.gw.external = external;
        h.run_until(Duration::from_secs(40));
        assert_eq!(names(&h), ["mapped", "unverified"], "{:?}", h.events);
        assert_eq!(h.events[1].0, h.events[0].0, "at once");
        let MapperEvent::Unverified(why) = &h.events[1].1 else {
            unreachable!()
        };
        assert!(
            why.contains("another NAT") && why.contains(&external.to_string()),
            "{why}"
        );
        assert_eq!(h.reflected, 0);
    }
}

/// PCP ANNOUNCE from the gateway (opcode 0, response bit), as a restarted server sends.
fn pcp_announce(epoch: u32) -> Vec<u8> {
    let resp = pcp::Response {
        result: pcp::ResultCode::SUCCESS,
        lifetime: 0,
        epoch,
        opcode: pcp::Opcode::Announce,
        data: None,
    };
    let mut b = [0u8; 64];
    let n = resp.emit(&mut b).unwrap();
    b[..n].to_vec()
}

#[test]
fn an_announced_restart_recreates_the_mapping_at_once() {
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(100));
    assert_eq!(names(&h), ["mapped"]);
    // The gateway restarts and announces it (epoch 0); the next renewal is an hour away.
    h.gw.started = h.now;
    h.gw.next_port = 63000;
    let gw = SocketAddr::new(GW.parse().unwrap(), 5351);
    assert!(h.announce(gw, &pcp_announce(0)));
    let announced = h.now - h.t0;
    h.run_until(Duration::from_secs(110));
    assert_eq!(
        names(&h),
        ["mapped", "gateway-restarted", "mapped"],
        "{:?}",
        h.events
    );
    assert_eq!(h.events[1].0, announced);
    let again = h.events[2].0 - announced;
    assert!(
        again <= ANNOUNCE_JITTER + Duration::from_millis(2),
        "{again:?}"
    );
}

#[test]
fn announcements_that_are_consistent_spoofed_or_malformed_change_nothing() {
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(100));
    let gw = SocketAddr::new(GW.parse().unwrap(), 5351);
    // A consistent epoch: nothing happened.
    let epoch = h.gw.epoch(h.now);
    assert!(h.announce(gw, &pcp_announce(epoch)));
    // A restart claimed by another host on the network: not the gateway, not taken.
    let other = SocketAddr::new("192.168.1.66".parse().unwrap(), 5351);
    assert!(!h.announce(other, &pcp_announce(0)));
    // Garbage from the gateway: taken (it is the gateway's) and dropped.
    assert!(h.announce(gw, &[2, 0x80, 0]));
    assert!(h.announce(gw, &[0, 0x80, 0, 0, 0, 0, 0, 1]));
    assert!(h.announce(gw, &[9; 40]));
    h.run_until(Duration::from_secs(200));
    // The consistent announcement is checked with one early renewal.
    assert_eq!(names(&h), ["mapped", "renewed"], "{:?}", h.events);
    assert!(h.events[1].0 <= Duration::from_secs(100) + ANNOUNCE_JITTER);
}

#[test]
fn a_natpmp_address_notice_with_a_new_address_renews_soon() {
    let mut h = Harness::new(false, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(100));
    assert_eq!(names(&h), ["mapped"]);
    h.gw.external = Ipv4Addr::new(203, 0, 113, 99);
    let notice = natpmp::Response {
        result: natpmp::ResultCode::SUCCESS,
        epoch: h.gw.epoch(h.now),
        body: natpmp::ResponseBody::ExternalAddress(h.gw.external),
    };
    let mut b = [0u8; 16];
    let n = notice.emit(&mut b);
    let gw = SocketAddr::new(GW.parse().unwrap(), 5351);
    assert!(h.announce(gw, &b[..n]));
    h.run_until(Duration::from_secs(106));
    assert_eq!(names(&h), ["mapped", "changed"], "{:?}", h.events);
    let MapperEvent::Changed { new, .. } = &h.events[1].1 else {
        unreachable!()
    };
    assert_eq!(new.external.ip(), IpAddr::V4(h.gw.external));
}

#[test]
fn a_reflector_that_ignores_change_request_proves_nothing() {
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.reflector = Reflector::Careless;
    // Even with a gateway that does not forward, the careless answer would come back
    // through the probe's own outbound binding: it must not count as verified.
    h.gw.forwarding = false;
    h.run_until(Duration::from_secs(100));
    assert_eq!(names(&h), ["mapped", "unverified"], "{:?}", h.events);
    let MapperEvent::Unverified(why) = &h.events[1].1 else {
        unreachable!()
    };
    assert!(why.contains("CHANGE-REQUEST"), "{why}");
}

#[test]
fn a_mapping_that_becomes_unreachable_stops_verification_without_spinning() {
    // The external address turns private at a renewal (the ISP's modem now NATs too): no
    // verification can work; the mapper must not keep an overdue timer (run_until panics
    // when the simulation does not converge).
    let mut h = Harness::verifying(Duration::from_secs(30));
    h.gw.max_lifetime = 40;
    h.run_until(Duration::from_secs(10));
    h.gw.external = Ipv4Addr::new(100, 64, 0, 7);
    h.run_until(Duration::from_secs(200));
    let n = names(&h);
    assert_eq!(
        n[..4],
        ["mapped", "verified", "changed", "unverified"],
        "{:?}",
        h.events
    );
    assert!(n[4..].iter().all(|e| *e == "renewed"), "{n:?}");
}

/// The last event, which must be `Released`: its outcome.
fn released(h: &Harness) -> &ReleaseOutcome {
    match h.events.last() {
        Some((_, MapperEvent::Released(o))) => o,
        other => panic!("expected Released, got {other:?} in {:?}", h.events),
    }
}

#[test]
fn release_says_whether_the_gateway_confirmed_the_deletion() {
    // Confirmed over PCP and NAT-PMP.
    for via in [Via::Pcp, Via::NatPmp] {
        let mut h = Harness::new(true, true, ViaChoice::Only(via));
        h.run_until(Duration::from_secs(1));
        let mapping = *h.mapper.mapping().unwrap();
        h.mapper.release(h.now);
        h.run_until(Duration::from_secs(2));
        assert_eq!(released(&h), &ReleaseOutcome::Deleted(mapping), "{via:?}");
    }
    // The gateway stops answering before the release: not confirmed, after the
    // retransmissions; the mapping (and when it expires) is in the outcome.
    for via in [Via::Pcp, Via::NatPmp] {
        let mut h = Harness::new(true, true, ViaChoice::Only(via));
        h.run_until(Duration::from_secs(1));
        let mapping = *h.mapper.mapping().unwrap();
        h.gw.down = true;
        h.mapper.release(h.now);
        let asked = h.now;
        h.run_until(Duration::from_secs(5));
        let ReleaseOutcome::Unconfirmed { mapping: m, why } = released(&h) else {
            panic!("{:?}", h.events)
        };
        assert_eq!(*m, mapping);
        assert!(why.contains("no answer"), "{why}");
        assert_eq!(
            h.events.last().unwrap().0,
            asked - h.t0 + REQUEST_RTO * 3 + REQUEST_LAST_WAIT
        );
        assert!(h.mapper.is_finished());
    }
    // The gateway refuses the deletion.
    let mut h = Harness::new(true, false, ViaChoice::Only(Via::Pcp));
    h.run_until(Duration::from_secs(1));
    h.gw.pcp_result = pcp::ResultCode::NOT_AUTHORIZED;
    h.mapper.release(h.now);
    h.run_until(Duration::from_secs(2));
    assert!(
        matches!(released(&h), ReleaseOutcome::Unconfirmed { why, .. } if why.contains("NOT_AUTHORIZED")),
        "{:?}",
        h.events
    );
    // UPnP: a failed deletion is not confirmed; "no such mapping" is as good as deleted.
    for (answer, confirmed) in [
        (UpnpResult::NoAnswer("connection refused".into()), false),
        (UpnpResult::Failed("UPnP error 606".into()), false),
        (UpnpResult::NoSuchMapping, true),
    ] {
        let mut h = Harness::new(false, false, ViaChoice::Only(Via::Upnp));
        let answer2 = answer.clone();
        h.upnp = Some(Box::new(move |cmd| match cmd {
            UpnpCommand::Delete { .. } => Some(answer2.clone()),
            c => igd(c),
        }));
        h.run_until(Duration::from_secs(1));
        h.mapper.release(h.now);
        h.run_until(Duration::from_secs(2));
        assert_eq!(
            matches!(released(&h), ReleaseOutcome::Deleted(_)),
            confirmed,
            "{answer:?}: {:?}",
            h.events
        );
    }
    // Nothing mapped yet: nothing to delete.
    let mut h = Harness::new(false, false, ViaChoice::Any);
    h.mapper.release(h.now);
    h.run_until(Duration::from_millis(1));
    assert_eq!(released(&h), &ReleaseOutcome::NothingToDelete);
}

#[test]
fn an_abandoned_release_is_unconfirmed() {
    // The driver's bound on a release (a UPnP deletion that hangs): the mapper reports it
    // unconfirmed, with the reason given.
    let mut h = Harness::new(false, false, ViaChoice::Only(Via::Upnp));
    h.upnp = Some(Box::new(|cmd| match cmd {
        UpnpCommand::Delete { .. } => None,
        c => igd(c),
    }));
    h.run_until(Duration::from_secs(1));
    h.mapper.release(h.now);
    h.run_until(Duration::from_secs(2));
    assert_eq!(names(&h), ["mapped"]);
    h.mapper.abandon_release("no confirmation within 3 s");
    h.run_until(Duration::from_secs(3));
    assert!(
        matches!(released(&h), ReleaseOutcome::Unconfirmed { why, .. } if why == "no confirmation within 3 s"),
        "{:?}",
        h.events
    );
    assert!(h.mapper.is_finished());
    // Not releasing: nothing happens.
    let mut h = Harness::new(true, true, ViaChoice::Any);
    h.run_until(Duration::from_secs(1));
    h.mapper.abandon_release("x");
    h.run_until(Duration::from_secs(2));
    assert_eq!(names(&h), ["mapped"]);
}

#[test]
fn a_gateway_that_stops_answering_is_not_reported_as_refusing() {
    // PCP and NAT-PMP: the renewals time out until the mapping is about to expire.
    for via in [Via::Pcp, Via::NatPmp] {
        let mut h = Harness::new(true, true, ViaChoice::Only(via));
        h.gw.max_lifetime = 10;
        h.run_until(Duration::from_secs(1));
        h.gw.down = true;
        h.run_until(Duration::from_secs(12));
        let lost: Vec<_> = h
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                MapperEvent::Lost(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert!(
            matches!(&lost[..], [LossReason::NotAnswering(why)] if why.contains("no answer")),
            "{via:?}: {:?}",
            h.events
        );
        assert_eq!(lost[0].as_str(), "not-answering");
    }
    // A gateway that answers with a refusal is still one that refuses.
    let mut h = Harness::new(true, false, ViaChoice::Only(Via::Pcp));
    h.gw.max_lifetime = 10;
    h.run_until(Duration::from_secs(1));
    h.gw.pcp_result = pcp::ResultCode::NO_RESOURCES;
    h.run_until(Duration::from_secs(12));
    assert!(
        h.events
            .iter()
            .any(|(_, e)| matches!(e, MapperEvent::Lost(LossReason::Refused(why)) if why.contains("NO_RESOURCES"))),
        "{:?}",
        h.events
    );
    // UPnP: no answer versus a refusal.
    for (answer, expect) in [
        (
            UpnpResult::NoAnswer("connecting: refused".into()),
            "not-answering",
        ),
        (UpnpResult::Failed("UPnP error 606".into()), "refused"),
    ] {
        let mut h = Harness::new(false, false, ViaChoice::Only(Via::Upnp));
        let renewals = std::rc::Rc::new(std::cell::Cell::new(0));
        let r2 = renewals.clone();
        let answer2 = answer.clone();
        h.upnp = Some(Box::new(move |cmd| match cmd {
            UpnpCommand::Map { .. } if r2.get() > 0 => Some(answer2.clone()),
            UpnpCommand::Map { .. } => {
                r2.set(1);
                Some(UpnpResult::Mapped {
                    external: "203.0.113.77:62000".parse().unwrap(),
                    lifetime: 10,
                })
            }
            c => igd(c),
        }));
        h.run_until(Duration::from_secs(12));
        assert!(names(&h).contains(&expect), "{answer:?}: {:?}", h.events);
    }
}

#[test]
fn a_huge_verification_interval_does_not_overflow_the_clock() {
    // From the FFI or a library caller: Duration::MAX must not panic at `now + interval`.
    let mut h = Harness::verifying(Duration::MAX);
    h.run_until(Duration::from_secs(10));
    assert_eq!(names(&h), ["mapped", "verified"], "{:?}", h.events);
    // The next verification is due a day later (MAX_VERIFY_INTERVAL), with the renewals.
    h.run_until(MAX_VERIFY_INTERVAL + Duration::from_secs(3600));
    assert!(
        names(&h).iter().filter(|e| **e == "verified").count() >= 2,
        "{:?}",
        names(&h)
    );
    // And a zero interval is taken as a second, not a busy loop.
    let mut h = Harness::verifying(Duration::ZERO);
    h.run_until(Duration::from_secs(10));
    let verified = names(&h).iter().filter(|e| **e == "verified").count();
    assert!((5..=11).contains(&verified), "{verified}");
}

/// Runs a [`Delete`] against `gw` (and `upnp` for its UPnP command) until it is done.
fn run_delete(
    gw: &mut FakeGateway,
    via: ViaChoice,
    upnp: Option<UpnpResult>,
) -> (DeleteReport, Duration) {
    let t0 = gw.started;
    let mut now = t0;
    let gw_addr = SocketAddr::new(GW.parse().unwrap(), 5351);
    let mut d = Delete::new(
        now,
        GW.parse().unwrap(),
        source(),
        MapProtocol::Udp,
        5000,
        via,
        [9; 32],
    );
    if let Some(cmd) = d.poll_upnp() {
        assert_eq!(
            cmd,
            UpnpCommand::Delete {
                protocol: MapProtocol::Udp,
                external_port: 5000
            }
        );
        if let Some(r) = upnp {
            d.handle_upnp(r);
        }
    }
    for _ in 0..100 {
        while let Some(t) = d.poll_transmit() {
            assert_eq!(t.destination, gw_addr);
            if let Some(resp) = gw.answer(now, &t.contents) {
                let rx = Received {
                    proto: crate::Protocol::Udp,
                    source: gw_addr,
                    destination: source(),
                    contents: &resp,
                };
                assert!(d.handle_input(now, rx));
            }
        }
        if d.is_done() {
            return (d.report().clone(), now - t0);
        }
        match d.poll_timeout() {
            Some(t) => now = t,
            None => break,
        }
        d.handle_timeout(now);
    }
    (d.report().clone(), now - t0)
}

#[test]
fn delete_asks_every_allowed_protocol_and_reports_each() {
    let t0 = Instant::now();
    // A gateway that speaks both and confirms: PCP's MAP and NAT-PMP's request carry
    // lifetime 0 for the internal port (NAT-PMP with suggested external port 0).
    let mut gw = FakeGateway::new(t0, true, true);
    let (r, took) = run_delete(&mut gw, ViaChoice::Any, Some(UpnpResult::NoSuchMapping));
    assert_eq!(
        (&r.pcp, &r.natpmp, &r.upnp),
        (
            &DeleteOutcome::Confirmed,
            &DeleteOutcome::Confirmed,
            &DeleteOutcome::NoSuchMapping
        )
    );
    assert_eq!(r.confirmed(), [Via::Pcp, Via::NatPmp]);
    assert_eq!(took, Duration::ZERO);
    let pcp_req = gw
        .requests
        .iter()
        .find_map(|b| pcp::Request::parse(b).ok())
        .unwrap();
    assert!(
        matches!(pcp_req.data, pcp::OpData::Map(m) if m.internal_port == 5000)
            && pcp_req.lifetime == 0
    );
    let nat_req = gw
        .requests
        .iter()
        .find_map(|b| natpmp::Request::parse(b).ok())
        .unwrap();
    assert_eq!(
        nat_req,
        natpmp::Request::Map {
            protocol: MapProtocol::Udp,
            internal_port: 5000,
            suggested_external_port: 0,
            lifetime: 0
        }
    );
    // PCP refuses (another nonce made the mapping); a NAT-PMP-only gateway answers PCP
    // with UNSUPPORTED_VERSION; NAT-PMP refuses; UPnP confirms.
    let mut gw = FakeGateway::new(t0, true, false);
    gw.pcp_result = pcp::ResultCode::NOT_AUTHORIZED;
    let (r, _) = run_delete(&mut gw, ViaChoice::Only(Via::Pcp), None);
    assert_eq!(r.pcp, DeleteOutcome::Refused("PCP: NOT_AUTHORIZED".into()));
    assert_eq!(
        (&r.natpmp, &r.upnp),
        (&DeleteOutcome::NotAsked, &DeleteOutcome::NotAsked)
    );
    let mut gw = FakeGateway::new(t0, false, true);
    let (r, _) = run_delete(&mut gw, ViaChoice::Any, Some(UpnpResult::Deleted));
    assert!(
        matches!(&r.pcp, DeleteOutcome::Refused(w) if w.contains("only NAT-PMP")),
        "{r:?}"
    );
    assert_eq!(r.natpmp, DeleteOutcome::Confirmed);
    assert_eq!(r.upnp, DeleteOutcome::Confirmed);
    let mut gw = FakeGateway::new(t0, false, true);
    gw.natpmp_result = natpmp::ResultCode::NOT_AUTHORIZED;
    let (r, _) = run_delete(&mut gw, ViaChoice::Only(Via::NatPmp), None);
    assert_eq!(
        r.natpmp,
        DeleteOutcome::Refused("NAT-PMP: not authorized".into())
    );
    // Silence: no answer after the retransmissions (1.75 s), bounded.
    let mut gw = FakeGateway::new(t0, true, true);
    gw.down = true;
    let (r, took) = run_delete(
        &mut gw,
        ViaChoice::Any,
        Some(UpnpResult::NoAnswer("no IGD".into())),
    );
    assert!(
        r.each()
            .iter()
            .all(|(_, o)| matches!(o, DeleteOutcome::NoAnswer(_))),
        "{r:?}"
    );
    assert_eq!(took, REQUEST_RTO * 3 + REQUEST_LAST_WAIT);
    assert!(r.confirmed().is_empty());
    // Giving up marks what is pending.
    let mut d = Delete::new(
        t0,
        GW.parse().unwrap(),
        source(),
        MapProtocol::Tcp,
        80,
        ViaChoice::Only(Via::Upnp),
        [1; 32],
    );
    assert!(!d.is_done());
    d.give_up("time is up");
    assert_eq!(
        d.report().upnp,
        DeleteOutcome::NoAnswer("time is up".into())
    );
    assert!(d.is_done());
}
