//! miniupnpd (UPnP IGD, NAT-PMP, PCP) on a lab router, exercised with miniupnpc's `upnpc`
//! and `natpmpc`, PCP with pinhole's own codec (`natlab pcp-map`), and `pinhole map`: inbound
//! traffic through the mappings, deletion, re-creation after miniupnpd restarts, and
//! double NAT behind a carrier-grade NAT.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{Lab, NatConfig, PEER_IP, Streaming, Uplink, bins};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Sends from a lab internet peer to `to` until `host` receives it on `port`.
fn inbound_reaches(lab: &Lab, host_ns: &str, port: u16, to: &str) -> String {
    let bind = format!("0.0.0.0:{port}");
    std::thread::scope(|s| {
        let recv = s.spawn(|| {
            lab.natlab(
                host_ns,
                &["udp-recv", "--bind", &bind, "--timeout-ms", "4000"],
                Duration::from_secs(8),
            )
        });
        let peer = format!("{PEER_IP}:0");
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(200));
            lab.natlab(
                lab.internet(),
                &["udp-send", "--bind", &peer, "--to", to, "--text", "inbound"],
                Duration::from_secs(5),
            )
            .expect("udp-send");
            if recv.is_finished() {
                break;
            }
        }
        recv.join().expect("receiver").expect("nothing arrived")
    })
}

#[test]
fn miniupnpd_maps_ports_for_natpmp_upnp_and_pcp() {
    if !lab_available("miniupnpd", &["miniupnpd", "upnpc", "natpmpc"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    let pm = lab.start_miniupnpd("gw").expect("miniupnpd");
    let wan = lab.router("gw").unwrap().wan_ip;

    // NAT-PMP (RFC 6886).
    let gw = pm.pmp_addr.ip().to_string();
    let out = lab
        .exec(
            &host.ns,
            "natpmpc",
            &["-g", &gw, "-a", "40100", "40100", "udp", "600"],
            TIMEOUT,
        )
        .unwrap();
    assert!(
        out.success() && out.stdout.contains("Mapped public port 40100 protocol UDP"),
        "natpmpc: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        lab.server_logs()
    );
    assert!(
        out.stdout.contains(&format!("Public IP address : {wan}")),
        "{}",
        out.stdout
    );
    let got = inbound_reaches(&lab, &host.ns, 40100, &format!("{wan}:40100"));
    assert!(got.contains("inbound"), "{got}");

    // UPnP IGD. `-i`: the external address is a reserved (documentation) address.
    let ip = host.ip.to_string();
    let out = lab
        .exec(
            &host.ns,
            "upnpc",
            &["-i", "-u", &pm.upnp_url, "-a", &ip, "40101", "40101", "UDP"],
            TIMEOUT,
        )
        .unwrap();
    assert!(
        out.success() && out.stdout.contains("is redirected to internal"),
        "upnpc: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        lab.server_logs()
    );
    let got = inbound_reaches(&lab, &host.ns, 40101, &format!("{wan}:40101"));
    assert!(got.contains("inbound"), "{got}");

    // PCP (RFC 6887), with pinhole's own codec.
    let out = lab
        .natlab(
            &host.ns,
            &[
                "pcp-map",
                "--gateway",
                &gw,
                "--client",
                &ip,
                "--port",
                "40102",
            ],
            TIMEOUT,
        )
        .unwrap();
    assert!(
        out.starts_with("result SUCCESS") && out.contains(&format!("external {wan}:40102")),
        "PCP MAP: {out}\n{}",
        lab.server_logs()
    );
    let got = inbound_reaches(&lab, &host.ns, 40102, &format!("{wan}:40102"));
    assert!(got.contains("inbound"), "{got}");

    let list = lab
        .exec(
            &host.ns,
            "upnpc",
            &["-i", "-u", &pm.upnp_url, "-l"],
            TIMEOUT,
        )
        .unwrap();
    for port in ["40100", "40101", "40102"] {
        assert!(
            list.stdout.contains(port),
            "{port} not listed: {}",
            list.stdout
        );
    }
}

#[test]
fn pinhole_map_against_miniupnpd_over_pcp_natpmp_and_upnp() {
    if !lab_available("pinhole_map", &["miniupnpd", "upnpc"]) {
        return;
    }
    let pinhole = pinhole_tests::lab::bins::pinhole().expect("the pinhole CLI");
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    let pm = lab.start_miniupnpd("gw").expect("miniupnpd");
    let wan = lab.router("gw").unwrap().wan_ip;
    for (i, via) in ["pcp", "natpmp", "upnp"].into_iter().enumerate() {
        let port = (40300 + i).to_string();
        let out = lab
            .exec(
                &host.ns,
                &pinhole.to_string_lossy(),
                &["map", "--port", &port, "--via", via, "--once", "--json"],
                TIMEOUT,
            )
            .unwrap();
        let events: Vec<serde_json::Value> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mapped = events.iter().find(|e| e["event"] == "mapped");
        let ok = out.success()
            && mapped.is_some_and(|m| {
                m["via"] == via
                    && m["external"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{wan}:")))
                    && m["internal"] == format!("{}:{port}", host.ip)
            })
            && events.iter().any(|e| e["event"] == "released");
        assert!(
            ok,
            "pinhole map --via {via}: {}\n{}\n{}",
            out.stdout,
            out.stderr,
            lab.server_logs()
        );
        // Deleted: miniupnpd (which lists PCP and NAT-PMP mappings too) has no mapping
        // to the port left.
        let list = lab
            .exec(
                &host.ns,
                "upnpc",
                &["-i", "-u", &pm.upnp_url, "-l"],
                TIMEOUT,
            )
            .unwrap();
        let internal = format!("{}:{port}", host.ip);
        assert!(
            !list.stdout.contains(&internal),
            "pinhole map --via {via} --once left its mapping behind:\n{}",
            list.stdout
        );
    }
}

/// The lifetime `pinhole map` asks for in the long-running tests: renewals every 2 s.
const LIFETIME: u32 = 4;
/// How long an event may take beyond what the lifetime implies.
const EVENT_SLACK: Duration = Duration::from_secs(8);

/// A long-running `pinhole map --json` in a namespace; its events are read as they come.
/// Killed on drop (declare it after the lab, so that it goes first).
struct MapRun {
    p: Streaming,
    logs: String,
}

impl MapRun {
    fn start(lab: &Lab, ns: &str, args: &[&str]) -> Self {
        let pinhole = bins::pinhole().expect("the pinhole CLI");
        let mut all = vec!["map", "--json"];
        all.extend_from_slice(args);
        let p = lab
            .spawn_streaming("pinhole map", ns, &pinhole, &all)
            .expect("starting pinhole map");
        MapRun {
            p,
            logs: String::new(),
        }
    }

    /// The next event, within `timeout`.
    fn next(&mut self, lab: &Lab, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.p.next_line(left) else {
                self.logs = lab.server_logs();
                panic!(
                    "pinhole map: no event within {timeout:?}\n{}\n{}",
                    self.p.transcript(),
                    self.logs
                );
            };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                // Captured by the test harness; shown when a test fails (or --nocapture).
                eprintln!("pinhole map: {v}");
                return v;
            }
        }
    }

    /// The next event, which must be `what`.
    fn expect(&mut self, lab: &Lab, what: &str, timeout: Duration) -> Value {
        let ev = self.next(lab, timeout);
        assert_eq!(
            ev["event"],
            what,
            "pinhole map: expected `{what}`, got {ev}\n{}\n{}",
            self.p.transcript(),
            lab.server_logs()
        );
        ev
    }

    /// Ctrl-C, then the `released` event; events in `tolerated` may come first (a renewal
    /// or a verification under way).
    fn interrupt(&mut self, lab: &Lab, tolerated: &[&str]) {
        self.p.signal("INT").expect("SIGINT");
        loop {
            let ev = self.next(lab, EVENT_SLACK);
            match ev["event"].as_str() {
                Some("released") => return,
                Some(e) if tolerated.contains(&e) => {}
                _ => self.fail(lab, &format!("expected `released`, got {ev}")),
            }
        }
    }

    /// The process exits with status 0 within 5 s.
    fn expect_success(&mut self, lab: &Lab) {
        match self.p.wait_exit(Duration::from_secs(5)) {
            Some(s) if s.success() => {}
            other => self.fail(lab, &format!("pinhole map exited with {other:?}")),
        }
    }

    fn fail(&self, lab: &Lab, why: &str) -> ! {
        panic!("{why}\n{}\n{}", self.p.transcript(), lab.server_logs());
    }
}

fn external(ev: &Value) -> SocketAddr {
    ev["external"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no external address in {ev}"))
}

/// Listens on UDP `port` in `host_ns` (natlab udp-recv) and sends to `to` from a fresh
/// port of `from_ip` in `from_ns`, every 200 ms up to `attempts` times, until it arrives.
/// Returns whether it did.
fn arrives(
    lab: &Lab,
    host_ns: &str,
    port: u16,
    (from_ns, from_ip): (&str, Ipv4Addr),
    to: SocketAddr,
    attempts: u32,
) -> bool {
    let natlab = bins::natlab().expect("natlab");
    let bind = format!("0.0.0.0:{port}");
    let mut recv = lab
        .spawn_streaming(
            "udp-recv",
            host_ns,
            &natlab,
            &["udp-recv", "--bind", &bind, "--timeout-ms", "15000"],
        )
        .expect("udp-recv");
    assert!(
        recv.wait_for_line(Duration::from_secs(5), |l| l.starts_with("listening"))
            .is_some(),
        "udp-recv did not start listening\n{}",
        recv.transcript()
    );
    let from = format!("{from_ip}:0");
    let to = to.to_string();
    for _ in 0..attempts {
        lab.natlab(
            from_ns,
            &[
                "udp-send", "--bind", &from, "--to", &to, "--text", "inbound",
            ],
            Duration::from_secs(5),
        )
        .expect("udp-send");
        if recv
            .wait_for_line(Duration::from_millis(200), |l| l.starts_with("from "))
            .is_some()
        {
            return true;
        }
    }
    false
}

fn from_internet(lab: &Lab) -> (&str, Ipv4Addr) {
    (lab.internet(), PEER_IP)
}

/// `pinhole map --via <via>` (long-running) against miniupnpd: the mapping forwards
/// inbound traffic from the internet; after miniupnpd restarts (losing every mapping, as
/// a router reboot does) pinhole re-creates it on its own and traffic arrives again; after
/// SIGINT pinhole deletes it and traffic no longer arrives.
fn map_lifecycle(via: &str, port: u16) {
    if !lab_available(&format!("map_lifecycle_{via}"), &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
    // miniupnpd's epoch is 0 about now.
    let started = Instant::now();
    let wan = lab.router("gw").unwrap().wan_ip;
    let port_s = port.to_string();
    let lifetime = LIFETIME.to_string();
    let mut map = MapRun::start(
        &lab,
        &host.ns,
        &["--port", &port_s, "--via", via, "--lifetime", &lifetime],
    );

    // Mapped, and reachable from the internet.
    let ev = map.expect(&lab, "mapped", EVENT_SLACK);
    let ext = external(&ev);
    assert!(
        ev["via"] == via
            && ext.ip() == wan
            && ev["internal"] == format!("{}:{port}", host.ip)
            && ev["reachable"] == true
            && ev["protocol"] == "udp",
        "{ev}"
    );
    if !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 15) {
        map.fail(&lab, &format!("nothing arrived through {ext}"));
    }

    // Restart miniupnpd right after a renewal, so that the next renewal is the first
    // contact with the new instance. RFC 6887 §8.5 can only tell a restart from the
    // epoch once the old instance's epoch exceeds the new one's by more than a second:
    // with renewals every LIFETIME/2 s, the old one must have run LIFETIME/2 + 1 s
    // (plus a margin) when its last answer was sent.
    let renew = Duration::from_secs(u64::from(LIFETIME) / 2);
    let epoch_gap = renew + Duration::from_millis(1500);
    loop {
        let ev = map.next(&lab, renew + EVENT_SLACK);
        if ev["event"] != "renewed" {
            map.fail(&lab, &format!("expected renewals, got {ev}"));
        }
        if via == "upnp" || started.elapsed() >= epoch_gap {
            break;
        }
    }
    lab.restart_miniupnpd("gw").expect("restarting miniupnpd");

    let ext = if via == "upnp" {
        // UPnP has no epoch: the next renewal (AddPortMapping) re-adds the mapping.
        let ev = map.next(&lab, renew + EVENT_SLACK);
        if ev["event"] != "renewed" && ev["event"] != "changed" {
            map.fail(
                &lab,
                &format!("expected a renewal after the restart, got {ev}"),
            );
        }
        external(&ev)
    } else {
        // The next renewal sees the epoch start again: lost, then mapped anew.
        let ev = map.next(&lab, renew + EVENT_SLACK);
        if ev["event"] != "lost" || ev["reason"] != "gateway-restarted" {
            map.fail(
                &lab,
                &format!("expected the loss of the mapping to be noticed, got {ev}"),
            );
        }
        let ev = map.expect(&lab, "mapped", EVENT_SLACK);
        assert!(ev["via"] == via && ev["reachable"] == true, "{ev}");
        external(&ev)
    };
    assert_eq!(ext.ip(), std::net::IpAddr::V4(wan));
    if !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 15) {
        map.fail(
            &lab,
            &format!("nothing arrived through {ext} after the restart"),
        );
    }

    // Ctrl-C: pinhole deletes the mapping, says so and exits 0.
    // A renewal may have been under way.
    map.interrupt(&lab, &["renewed"]);
    map.expect_success(&lab);
    assert!(
        !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 5),
        "traffic to {ext} still arrives after pinhole deleted the mapping\n{}",
        lab.server_logs()
    );
}

#[test]
fn map_lifecycle_pcp() {
    map_lifecycle("pcp", 40410);
}

#[test]
fn map_lifecycle_natpmp() {
    map_lifecycle("natpmp", 40420);
}

#[test]
fn map_lifecycle_upnp() {
    map_lifecycle("upnp", 40430);
}

/// Double NAT: a home router running miniupnpd behind a carrier-grade NAT. miniupnpd's
/// STUN check asks a server inside the carrier's network, so it reports its carrier-side
/// address (100.64.0.0/10) as external, as home routers without STUN do. pinhole maps over
/// each protocol and reports the mapping as not reachable from the internet; the mapping
/// works from the carrier's network, but the internet cannot get through the carrier NAT.
#[test]
fn map_behind_carrier_nat_is_not_reachable() {
    if !lab_available("map_behind_carrier_nat_is_not_reachable", &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let cgn = lab
        .add_carrier_nat("cgn", NatConfig::port_restricted_cone())
        .expect("carrier NAT")
        .clone();
    lab.add_router(
        "home",
        NatConfig::port_restricted_cone(),
        Uplink::Router("cgn"),
    )
    .expect("home router");
    let host = lab.add_host("h", "home").expect("host").clone();
    let stun = lab.start_carrier_stun("cgn").expect("STUN in the carrier");
    lab.start_miniupnpd_with_stun("home", stun)
        .expect("miniupnpd on the home router");
    let home_wan = lab.router("home").unwrap().wan_ip;
    assert!(home_wan.octets()[0] == 100, "{home_wan}");
    let pinhole = bins::pinhole().expect("the pinhole CLI");

    for (i, via) in ["pcp", "natpmp", "upnp"].into_iter().enumerate() {
        let port = (40440 + i).to_string();
        let out = lab
            .exec(
                &host.ns,
                &pinhole.to_string_lossy(),
                &["map", "--port", &port, "--via", via, "--once", "--json"],
                TIMEOUT,
            )
            .unwrap();
        let mapped = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "mapped");
        assert!(
            out.success()
                && mapped.as_ref().is_some_and(|m| m["via"] == via
                    && m["reachable"] == false
                    && external(m).ip() == home_wan),
            "pinhole map --via {via} behind the carrier NAT: {}\n{}\n{}",
            out.stdout,
            out.stderr,
            lab.server_logs()
        );
    }
    // The text output says so too.
    let out = lab
        .exec(
            &host.ns,
            &pinhole.to_string_lossy(),
            &["map", "--port", "40443", "--once"],
            TIMEOUT,
        )
        .unwrap();
    assert!(
        out.success() && out.stdout.contains("not reachable from the internet"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // Long-running, with `any`: the mapping forwards from the carrier's network, and the
    // internet cannot reach the port through the carrier NAT.
    let port = 40444;
    let mut map = MapRun::start(&lab, &host.ns, &["--port", &port.to_string()]);
    let ev = map.expect(&lab, "mapped", EVENT_SLACK);
    assert!(ev["via"] == "pcp" && ev["reachable"] == false, "{ev}");
    let ext = external(&ev);
    if !arrives(&lab, &host.ns, port, (&cgn.ns, cgn.lan_ip), ext, 15) {
        map.fail(
            &lab,
            &format!("nothing arrived through {ext} from the carrier"),
        );
    }
    let through_carrier = SocketAddr::new(cgn.wan_ip.into(), ext.port());
    assert!(
        !arrives(
            &lab,
            &host.ns,
            port,
            from_internet(&lab),
            through_carrier,
            5
        ),
        "traffic from the internet to {through_carrier} arrived"
    );
    map.p.signal("TERM").expect("SIGTERM");
    map.expect(&lab, "released", EVENT_SLACK);
}

/// A longer outage, as a real router reboot is: miniupnpd stays away until the renewal has
/// failed and the mapping is lost, and while pinhole tries to re-create it — with
/// `--via any`, PCP first (remembered), then NAT-PMP and UPnP, which it had never heard
/// answer (PCP won the first time), then everything again after a pause. pinhole maps
/// again once miniupnpd is back, over whichever protocol the attempt under way reaches,
/// and inbound traffic arrives.
#[test]
fn map_recovers_after_a_long_outage() {
    if !lab_available("map_recovers_after_a_long_outage", &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
    let port = 40450;
    let lifetime = LIFETIME.to_string();
    let mut map = MapRun::start(
        &lab,
        &host.ns,
        &["--port", &port.to_string(), "--lifetime", &lifetime],
    );
    let ev = map.expect(&lab, "mapped", EVENT_SLACK);
    assert_eq!(ev["via"], "pcp", "{ev}");

    lab.stop_miniupnpd("gw").expect("stopping miniupnpd");
    let down = Instant::now();
    // The renewal fails; the mapping is lost before it expires.
    let ev = map.expect(
        &lab,
        "lost",
        Duration::from_secs(u64::from(LIFETIME)) + EVENT_SLACK,
    );
    // Silence is not a refusal.
    assert_eq!(ev["reason"], "not-answering", "{ev}");
    // Let the attempt to re-create it over PCP, then NAT-PMP (1.75 s each) fail too.
    std::thread::sleep(Duration::from_secs(4));
    lab.restart_miniupnpd("gw")
        .expect("starting miniupnpd again");
    let ev = map.expect(&lab, "mapped", EVENT_SLACK);
    eprintln!(
        "re-created over {} {:?} after miniupnpd went away",
        ev["via"],
        down.elapsed()
    );
    let ext = external(&ev);
    assert!(
        ev["reachable"] == true && ext.ip() == lab.router("gw").unwrap().wan_ip,
        "{ev}"
    );
    if !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 15) {
        map.fail(
            &lab,
            &format!("nothing arrived through {ext} after the outage"),
        );
    }
    map.interrupt(&lab, &["renewed"]);
}

/// `pinhole map --verify` against miniupnpd, with `pinhole serve` (RFC 5780) in the lab's
/// internet as the reflector: the new mapping is verified (the reflector's answer, sent
/// from its other address to the external port, arrives through it). Then the router
/// stops forwarding without telling anybody (its DNAT rules flushed behind miniupnpd's
/// back): the next verification notices, pinhole deletes the mapping and adds it again,
/// and the mapping is verified again.
fn map_verified(via: &str, port: u16) {
    if !lab_available(&format!("map_verified_{via}"), &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (reflector and miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
    let router_ns = lab.router("gw").unwrap().ns.clone();
    let reflector = format!("stun:{}", pinhole_tests::lab::PINHOLE_STUN.primary);
    let port_s = port.to_string();
    let mut map = MapRun::start(
        &lab,
        &host.ns,
        &[
            "--port",
            &port_s,
            "--via",
            via,
            "--verify",
            &reflector,
            "--verify-interval",
            "5",
        ],
    );
    let mapped = map.expect(&lab, "mapped", EVENT_SLACK);
    let ev = map.expect(&lab, "verified", EVENT_SLACK);
    assert_eq!(ev["external"], mapped["external"], "{ev}");
    // Verified again at the interval while nothing changes.
    map.expect(&lab, "verified", EVENT_SLACK);

    // The router silently stops forwarding.
    let flushed = lab
        .exec(
            &router_ns,
            "nft",
            &[
                "flush",
                "chain",
                "inet",
                pinhole_tests::lab::MINIUPNPD_TABLE,
                "pre_upnp",
            ],
            Duration::from_secs(5),
        )
        .expect("nft");
    assert!(flushed.status.success(), "{flushed:?}");
    // And the connection tracking that would keep old flows going, as a router that lost
    // its state has none.
    let flushed = lab
        .exec(&router_ns, "conntrack", &["-F"], Duration::from_secs(5))
        .expect("conntrack");
    assert!(flushed.status.success(), "{flushed:?}");
    let ev = map.next(&lab, EVENT_SLACK);
    if ev["event"] != "lost" || ev["reason"] != "not-forwarding" {
        map.fail(
            &lab,
            &format!("expected the silent failure to be noticed, got {ev}"),
        );
    }
    let again = map.expect(&lab, "mapped", EVENT_SLACK);
    assert_eq!(again["via"], via, "{again}");
    let ev = map.expect(&lab, "verified", EVENT_SLACK);
    assert_eq!(ev["external"], again["external"], "{ev}");

    map.interrupt(&lab, &["verified", "renewed"]);
    map.expect_success(&lab);
}

#[test]
fn map_verified_pcp() {
    map_verified("pcp", 40510);
}

#[test]
fn map_verified_natpmp() {
    map_verified("natpmp", 40520);
}

#[test]
fn map_verified_upnp() {
    map_verified("upnp", 40530);
}

/// miniupnpd announces its start (PCP ANNOUNCE, multicast to 224.0.0.1:5350). `pinhole map`
/// hears it and, within the random pause of RFC 6887 §14.1.3, re-creates the mapping (PCP:
/// the announcement's epoch shows the restart) or renews (NAT-PMP: the renewal's epoch
/// shows it), long before the scheduled renewal (half an hour away) would have noticed.
fn map_hears_restart_announcement(via: &str, port: u16) {
    if !lab_available(&format!("map_hears_announcement_{via}"), &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
    let port_s = port.to_string();
    let mut map = MapRun::start(
        &lab,
        &host.ns,
        &["--port", &port_s, "--via", via, "--lifetime", "3600"],
    );
    map.expect(&lab, "mapped", EVENT_SLACK);
    // RFC 6887 §8.5 tells a restart from the epoch once the old instance has run for more
    // than a couple of seconds.
    std::thread::sleep(Duration::from_secs(4));
    lab.restart_miniupnpd("gw").expect("restarting miniupnpd");
    let restarted = Instant::now();
    let ev = map.next(&lab, EVENT_SLACK);
    if ev["event"] != "lost" || ev["reason"] != "gateway-restarted" {
        map.fail(
            &lab,
            &format!("expected the announced restart to be heard, got {ev}"),
        );
    }
    let ev = map.expect(&lab, "mapped", EVENT_SLACK);
    assert_eq!(ev["via"], via, "{ev}");
    eprintln!("re-created {:?} after the restart", restarted.elapsed());
    let ext = external(&ev);
    if !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 15) {
        map.fail(
            &lab,
            &format!("nothing arrived through {ext} after the restart"),
        );
    }
}

#[test]
fn map_hears_restart_announcement_pcp() {
    map_hears_restart_announcement("pcp", 40540);
}

#[test]
fn map_hears_restart_announcement_natpmp() {
    map_hears_restart_announcement("natpmp", 40550);
}

/// miniupnpd describing itself as an IGD v1 device (WANIPConnection:1, no
/// AddAnyPortMapping): `pinhole map --via upnp` maps with AddPortMapping, traffic from the
/// internet arrives through the mapping, and the mapping is deleted at the end.
#[test]
fn upnp_igd_v1_maps_with_add_port_mapping() {
    if !lab_available("upnp_igd_v1", &["miniupnpd"]) {
        return;
    }
    let port = 40560;
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd_igd_v1("gw").expect("miniupnpd");
    let port_s = port.to_string();
    let mut map = MapRun::start(&lab, &host.ns, &["--port", &port_s, "--via", "upnp"]);
    let ev = map.expect(&lab, "mapped", EVENT_SLACK);
    assert!(ev["via"] == "upnp" && ev["reachable"] == true, "{ev}");
    let ext = external(&ev);
    // IGD v1: no AddAnyPortMapping, so the internal port is asked for first.
    assert_eq!(ext.port(), port, "{ev}");
    if !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 15) {
        map.fail(&lab, &format!("nothing arrived through {ext}"));
    }
    let log = lab.server_logs();
    assert!(
        log.contains("WANIPConnection:1#AddPortMapping") && !log.contains("AddAnyPortMapping"),
        "expected an IGD v1 exchange:\n{log}"
    );
    map.interrupt(&lab, &[]);
    assert!(
        !arrives(&lab, &host.ns, port, from_internet(&lab), ext, 5),
        "traffic to {ext} still arrives after the mapping was deleted"
    );
}

/// Runs `pinhole map ARGS` to its end in `ns` (bounded by [`TIMEOUT`]); its output and its
/// JSON lines.
fn map_once(lab: &Lab, ns: &str, args: &[&str]) -> (pinhole_tests::lab::cmd::Output, Vec<Value>) {
    let pinhole = bins::pinhole().expect("the pinhole CLI");
    let mut all = vec!["map"];
    all.extend_from_slice(args);
    let out = lab
        .exec(ns, &pinhole.to_string_lossy(), &all, TIMEOUT)
        .expect("pinhole map");
    let lines = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out, lines)
}

/// miniupnpd's table as `upnpc -l` prints it (PCP and NAT-PMP mappings included).
fn upnpc_list(lab: &Lab, ns: &str, url: &str) -> String {
    lab.exec(ns, "upnpc", &["-i", "-u", url, "-l"], TIMEOUT)
        .expect("upnpc -l")
        .stdout
}

/// `pinhole map --list` against miniupnpd: a mapping made over each protocol (NAT-PMP with
/// natpmpc, UPnP with upnpc, PCP with a running `pinhole map`) is listed over UPnP
/// (GetGenericPortMappingEntry until 713), as JSON and as text. `--list --via pcp` is a
/// usage error. With UPnP unreachable (SSDP and HTTP dropped on the router), `--list`
/// says that the gateway speaks PCP and NAT-PMP, which cannot list, and exits 1 with a
/// JSON error object.
#[test]
fn map_list_shows_the_mappings_of_every_protocol() {
    if !lab_available("map_list", &["miniupnpd", "upnpc", "natpmpc"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    let pm = lab.start_miniupnpd("gw").expect("miniupnpd");
    let gw = pm.pmp_addr.ip().to_string();
    let ip = host.ip.to_string();
    let out = lab
        .exec(
            &host.ns,
            "natpmpc",
            &["-g", &gw, "-a", "40600", "40600", "udp", "600"],
            TIMEOUT,
        )
        .unwrap();
    assert!(out.success(), "natpmpc: {}{}", out.stdout, out.stderr);
    let out = lab
        .exec(
            &host.ns,
            "upnpc",
            &["-i", "-u", &pm.upnp_url, "-a", &ip, "40601", "40601", "TCP"],
            TIMEOUT,
        )
        .unwrap();
    assert!(out.success(), "upnpc: {}{}", out.stdout, out.stderr);
    let mut map = MapRun::start(&lab, &host.ns, &["--port", "40602", "--via", "pcp"]);
    map.expect(&lab, "mapped", EVENT_SLACK);

    let (out, lines) = map_once(&lab, &host.ns, &["--list", "--json"]);
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let j = &lines[0];
    assert!(
        j["event"] == "list"
            && j["via"] == "upnp"
            && j["end"] == "complete"
            && j["gateway"] == gw
            && j["pcp"] == true
            && j["natpmp"] == true,
        "{j}"
    );
    let mappings = j["mappings"].as_array().expect("mappings");
    for (port, proto) in [(40600, "udp"), (40601, "tcp"), (40602, "udp")] {
        assert!(
            mappings.iter().any(|m| m["external_port"] == port
                && m["protocol"] == proto
                && m["internal"] == format!("{ip}:{port}")
                && m["enabled"] == true),
            "{proto} {port} not listed: {j}"
        );
    }
    // The NAT-PMP mapping's lease counts down from 600 s.
    let natpmp = mappings
        .iter()
        .find(|m| m["external_port"] == 40600)
        .unwrap();
    assert!(
        natpmp["lease"].as_u64().is_some_and(|l| l > 0 && l <= 600),
        "{natpmp}"
    );

    let (out, _) = map_once(&lab, &host.ns, &["--list"]);
    assert!(
        out.success()
            && out.stdout.contains("UPnP IGD")
            && out.stdout.contains("3 port mappings")
            && out.stdout.contains(&format!("{ip}:40601")),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let (out, _) = map_once(&lab, &host.ns, &["--list", "--via", "pcp"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("only UPnP IGD can list"),
        "{}",
        out.stderr
    );

    // UPnP gone from the router (SSDP and its HTTP port dropped): PCP and NAT-PMP still
    // answer, and cannot list.
    let router_ns = lab.router("gw").unwrap().ns.clone();
    let rules = "table inet phtest_noupnp {\n chain input { type filter hook input priority filter - 10; policy accept;\n  udp dport 1900 drop\n  tcp dport 5000 drop\n }\n}\n";
    let nft = lab
        .exec(
            &router_ns,
            "sh",
            &["-c", &format!("printf '%s' '{rules}' | nft -f -")],
            TIMEOUT,
        )
        .expect("nft");
    assert!(nft.success(), "{}{}", nft.stdout, nft.stderr);
    let (out, lines) = map_once(&lab, &host.ns, &["--list", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let j = &lines[0];
    assert!(
        j["event"] == "error" && j["error"] == "no-list" && j["pcp"] == true && j["natpmp"] == true,
        "{j}"
    );
    let (out, _) = map_once(&lab, &host.ns, &["--list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains("it speaks PCP and NAT-PMP, which have no operation to list mappings"),
        "{}",
        out.stderr
    );
    map.interrupt(&lab, &[]);
}

/// `pinhole map --delete PORT --via upnp`: a UPnP mapping that another program left behind
/// (made with upnpc) is deleted with DeletePortMapping, and upnp confirmed it; deleting it
/// again says that none is left.
#[test]
fn map_delete_over_upnp() {
    if !lab_available("map_delete_over_upnp", &["miniupnpd", "upnpc"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    let pm = lab.start_miniupnpd("gw").expect("miniupnpd");
    let ip = host.ip.to_string();
    let out = lab
        .exec(
            &host.ns,
            "upnpc",
            &["-i", "-u", &pm.upnp_url, "-a", &ip, "40610", "40610", "UDP"],
            TIMEOUT,
        )
        .unwrap();
    assert!(out.success(), "upnpc: {}{}", out.stdout, out.stderr);
    assert!(upnpc_list(&lab, &host.ns, &pm.upnp_url).contains(&format!("{ip}:40610")));

    let (out, lines) = map_once(
        &lab,
        &host.ns,
        &["--delete", "40610", "--via", "upnp", "--json"],
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let j = &lines[0];
    assert!(
        j["event"] == "deleted"
            && j["confirmed_by"] == serde_json::json!(["upnp"])
            && j["upnp"]["outcome"] == "confirmed"
            && j["pcp"]["outcome"] == "not-asked",
        "{j}"
    );
    let list = upnpc_list(&lab, &host.ns, &pm.upnp_url);
    assert!(
        !list.contains(&format!("{ip}:40610")),
        "still there:\n{list}"
    );

    // Again: none is left. (A gateway may answer 714 NoSuchEntryInArray, "nothing to
    // delete"; miniupnpd 2.3.1 answers success.)
    let (out, _) = map_once(&lab, &host.ns, &["--delete", "40610", "--via", "upnp"]);
    assert!(
        out.success()
            && (out.stdout.contains("nothing to delete")
                || out.stdout.contains("the gateway keeps no such mapping now")),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// `pinhole map --delete PORT` over NAT-PMP and PCP, for mappings a crashed `pinhole map`
/// (SIGKILL) left behind. NAT-PMP deletes (miniupnpd takes the request for its external
/// port = PORT) and confirms. PCP cannot: a PCP server deletes a mapping only for the
/// nonce that made it (RFC 6887 §15), which the new process does not know; pinhole says so
/// and exits 1, and the mapping stays. With `--via any` the other protocols delete it.
#[test]
fn map_delete_over_natpmp_and_pcp() {
    if !lab_available("map_delete_over_natpmp_and_pcp", &["miniupnpd", "upnpc"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    let pm = lab.start_miniupnpd("gw").expect("miniupnpd");
    let ip = host.ip.to_string();
    let crash = |via: &str, port: u16| {
        let mut map = MapRun::start(
            &lab,
            &host.ns,
            &[
                "--port",
                &port.to_string(),
                "--via",
                via,
                "--lifetime",
                "600",
            ],
        );
        map.expect(&lab, "mapped", EVENT_SLACK);
        map.p.signal("KILL").expect("SIGKILL");
        map.p.wait_exit(Duration::from_secs(5));
        let list = upnpc_list(&lab, &host.ns, &pm.upnp_url);
        assert!(
            list.contains(&format!("{ip}:{port}")),
            "the crashed {via} mapping is gone already:\n{list}"
        );
    };

    crash("natpmp", 40620);
    let (out, lines) = map_once(
        &lab,
        &host.ns,
        &["--delete", "40620", "--via", "natpmp", "--json"],
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let j = &lines[0];
    assert!(
        j["event"] == "deleted" && j["confirmed_by"] == serde_json::json!(["natpmp"]),
        "{j}"
    );
    let list = upnpc_list(&lab, &host.ns, &pm.upnp_url);
    assert!(
        !list.contains(&format!("{ip}:40620")),
        "still there:\n{list}"
    );

    crash("pcp", 40621);
    let (out, lines) = map_once(
        &lab,
        &host.ns,
        &["--delete", "40621", "--via", "pcp", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let j = &lines[0];
    assert!(
        j["event"] == "error" && j["error"] == "not-deleted" && j["pcp"]["outcome"] == "refused",
        "{j}"
    );
    let (out, _) = map_once(&lab, &host.ns, &["--delete", "40621", "--via", "pcp"]);
    assert!(
        out.stdout.contains("only for the nonce that made it"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let list = upnpc_list(&lab, &host.ns, &pm.upnp_url);
    assert!(
        list.contains(&format!("{ip}:40621")),
        "PCP deleted it after all?\n{list}"
    );
    let (out, lines) = map_once(&lab, &host.ns, &["--delete", "40621", "--json"]);
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let j = &lines[0];
    assert!(
        j["event"] == "deleted"
            && j["confirmed_by"]
                .as_array()
                .is_some_and(|c| !c.is_empty() && !c.contains(&"pcp".into())),
        "{j}"
    );
    let list = upnpc_list(&lab, &host.ns, &pm.upnp_url);
    assert!(
        !list.contains(&format!("{ip}:40621")),
        "still there:\n{list}"
    );
}

/// The gateway goes away while `pinhole map` runs, and pinhole is stopped then: the
/// deletion is not confirmed, and `released` says so (`confirmed: false`, and when the
/// mapping expires) instead of claiming it deleted; so does the text output (UPnP).
#[test]
fn map_release_unconfirmed_when_the_gateway_is_gone() {
    if !lab_available("map_release_unconfirmed", &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");

    let mut map = MapRun::start(
        &lab,
        &host.ns,
        &["--port", "40630", "--via", "pcp", "--lifetime", "600"],
    );
    map.expect(&lab, "mapped", EVENT_SLACK);
    lab.stop_miniupnpd("gw").expect("stopping miniupnpd");
    map.p.signal("INT").expect("SIGINT");
    let ev = map.expect(&lab, "released", EVENT_SLACK);
    assert!(
        ev["outcome"] == "unconfirmed"
            && ev["confirmed"] == false
            && ev["expires_in"]
                .as_u64()
                .is_some_and(|s| (570..=600).contains(&s))
            && ev["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no answer")),
        "{ev}"
    );
    map.expect_success(&lab);

    lab.restart_miniupnpd("gw")
        .expect("starting miniupnpd again");
    let pinhole = bins::pinhole().expect("the pinhole CLI");
    let mut text = lab
        .spawn_streaming(
            "pinhole map (text)",
            &host.ns,
            &pinhole,
            &[
                "map",
                "--port",
                "40631",
                "--via",
                "upnp",
                "--lifetime",
                "600",
            ],
        )
        .expect("pinhole map");
    assert!(
        text.wait_for_line(EVENT_SLACK, |l| l.starts_with("mapped:"))
            .is_some(),
        "{}",
        text.transcript()
    );
    lab.stop_miniupnpd("gw").expect("stopping miniupnpd");
    text.signal("INT").expect("SIGINT");
    let line = text.wait_for_line(EVENT_SLACK, |l| !l.starts_with("renewed"));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("delete not confirmed by the gateway")
                && l.contains("expires in")),
        "{line:?}\n{}",
        text.transcript()
    );
    assert!(
        text.wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success()),
        "{}",
        text.transcript()
    );
}

/// A gateway that stops answering (miniupnpd stopped) while pinhole renews every 2 s: the
/// mapping is lost with reason `not-answering` (not `refused`), over PCP and UPnP alike.
/// A new `pinhole map --once --json` then fails with a JSON error object on stdout.
#[test]
fn map_reports_a_gateway_that_stops_answering() {
    if !lab_available("map_reports_a_gateway_that_stops_answering", &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
    let lifetime = LIFETIME.to_string();
    let mut runs: Vec<(&str, MapRun)> = [("pcp", "40640"), ("upnp", "40641")]
        .into_iter()
        .map(|(via, port)| {
            let mut m = MapRun::start(
                &lab,
                &host.ns,
                &["--port", port, "--via", via, "--lifetime", &lifetime],
            );
            m.expect(&lab, "mapped", EVENT_SLACK);
            (via, m)
        })
        .collect();
    lab.stop_miniupnpd("gw").expect("stopping miniupnpd");
    for (via, map) in &mut runs {
        loop {
            let ev = map.next(&lab, Duration::from_secs(u64::from(LIFETIME)) + EVENT_SLACK);
            match ev["event"].as_str() {
                Some("renewed") => {}
                Some("lost") => {
                    assert!(
                        ev["reason"] == "not-answering"
                            && ev["detail"]
                                .as_str()
                                .is_some_and(|d| d.contains("stopped answering")),
                        "{via}: {ev}"
                    );
                    break;
                }
                _ => map.fail(&lab, &format!("{via}: expected `lost`, got {ev}")),
            }
        }
    }
    let (out, lines) = map_once(
        &lab,
        &host.ns,
        &["--port", "40642", "--via", "natpmp", "--once", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        lines.len() == 1
            && lines[0]["event"] == "error"
            && lines[0]["error"] == "unavailable"
            && lines[0]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("NAT-PMP: no answer")),
        "{}",
        out.stdout
    );
}

/// `pinhole map --once --verify` behind a carrier-grade NAT (the home router's external
/// address is in 100.64.0.0/10): verification is skipped, and pinhole says why
/// (`unverified`) and ends at once, over each protocol, instead of waiting forever for an
/// outcome.
#[test]
fn map_once_verify_behind_carrier_nat_ends() {
    if !lab_available("map_once_verify_behind_carrier_nat_ends", &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.add_carrier_nat("cgn", NatConfig::port_restricted_cone())
        .expect("carrier NAT");
    lab.add_router(
        "home",
        NatConfig::port_restricted_cone(),
        Uplink::Router("cgn"),
    )
    .expect("home router");
    let host = lab.add_host("h", "home").expect("host").clone();
    let stun = lab.start_carrier_stun("cgn").expect("STUN in the carrier");
    lab.start_miniupnpd_with_stun("home", stun)
        .expect("miniupnpd on the home router");
    let home_wan = lab.router("home").unwrap().wan_ip;
    let reflector = format!("stun:{}", stun.primary);
    for (i, via) in ["pcp", "natpmp", "upnp"].into_iter().enumerate() {
        let port = (40650 + i).to_string();
        let started = Instant::now();
        let (out, lines) = map_once(
            &lab,
            &host.ns,
            &[
                "--port", &port, "--via", via, "--once", "--verify", &reflector, "--json",
            ],
        );
        let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
        assert!(
            out.success() && events == ["mapped", "unverified", "released"],
            "--via {via}: {}\n{}\n{}",
            out.stdout,
            out.stderr,
            lab.server_logs()
        );
        assert!(
            lines[0]["reachable"] == false && external(&lines[0]).ip() == home_wan,
            "{}",
            lines[0]
        );
        assert!(
            lines[1]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("another NAT") && d.contains(&home_wan.to_string())),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2]["outcome"], "deleted", "{}", lines[2]);
        eprintln!("--via {via}: ended in {:?}", started.elapsed());
    }
    // The text output too.
    let (out, _) = map_once(
        &lab,
        &host.ns,
        &["--port", "40653", "--once", "--verify", &reflector],
    );
    assert!(
        out.success() && out.stdout.contains("unverified: verification skipped"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

/// PCP PEER (RFC 6887 §12) against Debian's miniupnpd, with pinhole's own codec
/// (`natlab pcp-map --peer`): Debian's build (2.3.1) does PEER: it answers SUCCESS with
/// its external address and installs a source-NAT rule for the peer in its postrouting
/// chain. (That nftables rule matches the peer's packets *to* the host — saddr the peer,
/// daddr the host — rather than the host's packets to the peer: a bug of miniupnpd's
/// nftables backend, which also cannot read the rule back to delete it. The rule is only
/// checked to exist here.)
#[test]
fn miniupnpd_answers_pcp_peer() {
    if !lab_available("miniupnpd_answers_pcp_peer", &["miniupnpd"]) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    let pm = lab.start_miniupnpd("gw").expect("miniupnpd");
    let wan = lab.router("gw").unwrap().wan_ip;
    let gw = pm.pmp_addr.ip().to_string();
    let ip = host.ip.to_string();
    let remote = format!("{PEER_IP}:40300");
    let out = lab
        .natlab(
            &host.ns,
            &[
                "pcp-map",
                "--gateway",
                &gw,
                "--client",
                &ip,
                "--port",
                "40200",
                "--peer",
                &remote,
            ],
            TIMEOUT,
        )
        .unwrap();
    eprintln!("miniupnpd's answer to PCP PEER: {out}");
    assert!(
        out.starts_with("result SUCCESS") && out.contains(&format!("external {wan}:40200")),
        "PCP PEER: {out}\n{}",
        lab.server_logs()
    );
    let router_ns = lab.router("gw").unwrap().ns.clone();
    let rule = lab
        .exec(
            &router_ns,
            "nft",
            &[
                "list",
                "chain",
                "inet",
                pinhole_tests::lab::MINIUPNPD_TABLE,
                "post_upnp",
            ],
            TIMEOUT,
        )
        .expect("nft");
    eprintln!("miniupnpd's rule for it: {}", rule.stdout);
    // The peer's address as nftables prints a raw 32-bit match.
    let peer_hex = format!("0x{:08x}", u32::from(PEER_IP));
    let host_hex = format!("0x{:08x}", u32::from(host.ip));
    assert!(
        rule.stdout.contains(&peer_hex)
            && rule.stdout.contains(&host_hex)
            && rule.stdout.contains(&format!("snat ip to {wan}:40200")),
        "no source NAT for the peer: {}",
        rule.stdout
    );
}
