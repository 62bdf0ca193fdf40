//! NAT lab behaviours beyond netcheck's classification: port allocation, mapping loss on
//! command, silent drops, and RAII teardown.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{
    Lab, NatConfig, PEER_IP, PINHOLE_ALTERNATE, PINHOLE_PRIMARY, Uplink, netns,
};

const PING: Duration = Duration::from_secs(3);

fn bind(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn primary() -> SocketAddr {
    SocketAddr::V4(PINHOLE_PRIMARY)
}

/// Lab with `pinhole serve` and one router + host per config.
fn lab_with(routers: &[(&str, NatConfig)]) -> Lab {
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    for (name, cfg) in routers {
        lab.add_router(name, cfg.clone(), Uplink::Internet)
            .expect("router");
        lab.add_host(&format!("{name}-h"), name).expect("host");
    }
    lab
}

#[test]
fn port_allocation_preserving_versus_random() {
    if !lab_available("port_allocation", &[]) {
        return;
    }
    let lab = lab_with(&[
        ("pres", NatConfig::port_restricted_cone()),
        ("rand", NatConfig::port_restricted_cone().random_ports()),
        ("sympres", NatConfig::symmetric().preserving_ports()),
    ]);
    let pres = lab.host("pres-h").unwrap().ns.clone();
    let rand = lab.host("rand-h").unwrap().ns.clone();
    let sympres = lab.host("sympres-h").unwrap().ns.clone();

    let m = lab.stun_ping(&pres, bind(40000), primary(), PING).unwrap();
    assert_eq!(m.port(), 40000, "port-preserving NAT changed the port: {m}");
    assert_eq!(m.ip(), lab.router("pres").unwrap().wan_ip);

    let a = lab.stun_ping(&rand, bind(40000), primary(), PING).unwrap();
    let b = lab.stun_ping(&rand, bind(40001), primary(), PING).unwrap();
    assert!(
        a.port() != 40000 || b.port() != 40001,
        "random allocation kept both ports: {a} {b}"
    );

    // Endpoint-dependent mapping with preservation: the first mapping keeps the port, a
    // second destination gets a new one.
    let first = lab
        .stun_ping(&sympres, bind(40002), primary(), PING)
        .unwrap();
    let other = SocketAddr::V4(SocketAddrV4::new(
        *PINHOLE_ALTERNATE.ip(),
        PINHOLE_PRIMARY.port(),
    ));
    let second = lab.stun_ping(&sympres, bind(40002), other, PING).unwrap();
    assert_eq!(first.port(), 40002);
    assert_ne!(second.port(), 40002, "second destination reused the port");
}

#[test]
fn mapping_loss_on_command() {
    if !lab_available("mapping_loss", &[]) {
        return;
    }
    let lab = lab_with(&[("fc", NatConfig::full_cone().random_ports())]);
    let host = lab.host("fc-h").unwrap().ns.clone();
    let m1 = lab.stun_ping(&host, bind(40010), primary(), PING).unwrap();
    let again = lab.stun_ping(&host, bind(40010), primary(), PING).unwrap();
    assert_eq!(m1, again, "the mapping changed without a flush");
    // Endpoint-independent: the same mapping toward another server address.
    let other = SocketAddr::V4(PINHOLE_ALTERNATE);
    assert_eq!(lab.stun_ping(&host, bind(40010), other, PING).unwrap(), m1);

    lab.flush_mappings("fc").unwrap();
    let m2 = lab.stun_ping(&host, bind(40010), primary(), PING).unwrap();
    assert_ne!(m1, m2, "the mapping survived the flush");
}

#[test]
fn unsolicited_inbound_is_dropped_silently() {
    if !lab_available("silent_drop", &[]) {
        return;
    }
    let lab = lab_with(&[("r", NatConfig::port_restricted_cone())]);
    let wan = lab.router("r").unwrap().wan_ip;
    let host = lab.host("r-h").unwrap().ns.clone();
    let inet = lab.internet().to_owned();
    let peer = format!("{PEER_IP}:0");
    let probe = |to: String| {
        lab.natlab(
            &inet,
            &["udp-send", "--bind", &peer, "--to", &to, "--wait-ms", "700"],
            Duration::from_secs(5),
        )
        .unwrap()
        .trim()
        .to_owned()
    };
    // Control: a closed port on an ordinary internet address answers ICMP unreachable,
    // and the probe sees it.
    assert_eq!(probe(format!("{PEER_IP}:9")), "refused");
    // The router: nothing comes back for a closed port…
    assert_eq!(probe(format!("{wan}:9")), "silence");
    // …nor for a live mapping probed from a peer it never contacted (filtered).
    let m = lab.stun_ping(&host, bind(40020), primary(), PING).unwrap();
    assert_eq!(probe(m.to_string()), "silence");
}

#[test]
fn random_loss_drops_about_the_configured_share() {
    if !lab_available("random_loss", &[]) {
        return;
    }
    let lab = lab_with(&[("lossy", NatConfig::port_restricted_cone().loss(50))]);
    let host = lab.host("lossy-h").unwrap().ns.clone();
    let router = lab.router("lossy").unwrap().ns.clone();
    // Into the internet's black hole: nothing answers, so only the datagrams cross the loss.
    let to = "192.0.2.1:9".to_owned();
    lab.natlab(
        &host,
        &["udp-send", "--to", &to, "--count", "400"],
        Duration::from_secs(10),
    )
    .unwrap();
    let chain = lab
        .exec(
            &router,
            "nft",
            &["list", "chain", "ip", "lab", "loss"],
            PING,
        )
        .unwrap()
        .stdout;
    let dropped: u64 = chain
        .split("counter packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {chain}"));
    // Binomial(400, 0.5): mean 200, standard deviation 10.
    assert!(
        (140..=260).contains(&dropped),
        "50% loss dropped {dropped} of 400 datagrams"
    );
}

#[test]
fn teardown_runs_on_panic() {
    if !lab_available("teardown", &[]) {
        return;
    }
    let prefix = std::thread::spawn(|| {
        let mut lab = Lab::new().expect("lab");
        lab.add_router("r", NatConfig::default(), Uplink::Internet)
            .expect("router");
        lab.add_host("h", "r").expect("host");
        let prefix = lab.prefix().to_owned();
        std::panic::panic_any(prefix);
    })
    .join()
    .expect_err("the thread panics")
    .downcast::<String>()
    .expect("the prefix");
    let left: Vec<String> = netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    assert!(left.is_empty(), "namespaces left after a panic: {left:?}");
}

#[test]
fn stale_namespaces_are_swept() {
    if !lab_available("sweep", &[]) {
        return;
    }
    // A pid above the kernel's maximum (2^22) is never alive.
    let stale = "ph4194999-0-stale";
    pinhole_tests::lab::cmd::run(&mut pinhole_tests::lab::cmd::command(
        "ip",
        &["netns", "add", stale],
    ))
    .unwrap();
    // (Another test's lab may sweep it first: only its absence is checked.)
    netns::sweep_stale().unwrap();
    assert!(!netns::list().unwrap().iter().any(|n| n == stale));
}
