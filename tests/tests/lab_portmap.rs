//! miniupnpd (UPnP IGD, NAT-PMP, PCP) on a lab router, exercised with miniupnpc's `upnpc`
//! and `natpmpc`, PCP with pinhole's own codec (`natlab pcp-map`), and inbound traffic
//! through the mappings they create.

use std::time::Duration;

use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{Lab, NatConfig, PEER_IP, Uplink};

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
    if !lab_available("pinhole_map", &["miniupnpd"]) {
        return;
    }
    let pinhole = pinhole_tests::lab::bins::pinhole().expect("the pinhole CLI");
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    lab.add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
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
    }
}
