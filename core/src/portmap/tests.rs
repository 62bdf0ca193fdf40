//! The mapper against a fake gateway on a virtual clock.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::Received;

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
    rtt: Duration,
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
            rtt: Duration::from_millis(2),
        }
    }

    /// Runs until `until` (virtual), delivering datagrams after one RTT.
    fn run_until(&mut self, until: Duration) {
        let end = self.t0 + until;
        let mut in_flight: Vec<(Instant, Vec<u8>)> = Vec::new();
        for _ in 0..100_000 {
            while let Some(t) = self.mapper.poll_transmit() {
                assert_eq!(t.destination, SocketAddr::new(GW.parse().unwrap(), 5351));
                if let Some(resp) = self.gw.answer(self.now, &t.contents) {
                    in_flight.push((self.now + self.rtt, resp));
                }
            }
            while let Some(cmd) = self.mapper.poll_upnp() {
                self.upnp_seen.push(cmd.clone());
                self.upnp_at.push(self.now - self.t0);
                if let Some(f) = self.upnp.as_mut() {
                    if let Some(r) = f(&cmd) {
                        self.mapper.handle_upnp(self.now, r);
                    }
                } else {
                    self.mapper
                        .handle_upnp(self.now, UpnpResult::Failed("no IGD".into()));
                }
            }
            while let Some(e) = self.mapper.poll_event() {
                self.events.push((self.now - self.t0, e));
            }
            let next = [
                in_flight.iter().map(|f| f.0).min(),
                self.mapper.poll_timeout(),
                Some(end),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
            if next >= end && self.now >= end {
                return;
            }
            self.now = next.max(self.now);
            let due: Vec<_> = in_flight
                .iter()
                .filter(|f| f.0 <= self.now)
                .cloned()
                .collect();
            in_flight.retain(|f| f.0 > self.now);
            for (_, bytes) in due {
                let rx = Received {
                    proto: crate::Protocol::Udp,
                    source: SocketAddr::new(GW.parse().unwrap(), 5351),
                    destination: source(),
                    contents: &bytes,
                };
                assert!(self.mapper.handle_input(self.now, rx));
            }
            self.mapper.handle_timeout(self.now);
        }
        panic!("simulation did not converge");
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
    assert!(matches!(h.events.last(), Some((_, MapperEvent::Released))));
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
    assert!(matches!(h.events.last(), Some((_, MapperEvent::Released))));
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
