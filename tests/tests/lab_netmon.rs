//! pinhole's built-in network monitor (issue 14: `pinhole::driver::netmon`, rtnetlink) on
//! a real kernel, inside a lab host's namespace: an address added, the default route
//! removed and put back — each reported once (debounced), with the addresses after it.
//! Nothing is sent on any network; only the namespace's own configuration changes.

use std::time::Duration;

use pinhole_tests::lab::cmd::run_in;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{Lab, NatConfig, Uplink, bins};
use serde_json::Value;

/// The bound on each change's report.
const WITHIN: Duration = Duration::from_secs(10);

#[test]
fn address_and_default_route_changes_are_reported_once_each() {
    if !lab_available("lab_netmon", &[]) {
        return;
    }
    let natlab = bins::natlab().expect("natlab");
    let mut lab = Lab::new().expect("lab");
    lab.add_router("nm", NatConfig::default(), Uplink::Internet)
        .expect("router");
    let host = lab.add_host("nm-h", "nm").expect("host").clone();
    // The host's interface and its default route, as the lab made them.
    let addrs = run_in(&host.ns, "ip", &["-o", "-4", "addr", "show"]).expect("ip addr");
    let dev = addrs
        .lines()
        .find(|l| l.contains(&host.ip.to_string()))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("the host's interface")
        .to_owned();
    let route = run_in(&host.ns, "ip", &["route", "show", "default"]).expect("ip route");
    let via = route
        .split_whitespace()
        .skip_while(|w| *w != "via")
        .nth(1)
        .expect("the default route's gateway")
        .to_owned();

    let mut watch = lab
        .spawn_streaming(
            "watch-network",
            &host.ns,
            &natlab,
            &["watch-network", "--count", "3", "--timeout-ms", "30000"],
        )
        .expect("natlab watch-network");
    assert_eq!(
        watch.next_line(WITHIN).as_deref(),
        Some("ready"),
        "{}",
        watch.transcript()
    );
    let mut next = |what: &str| -> Value {
        let line = watch
            .next_line(WITHIN)
            .unwrap_or_else(|| panic!("no report after {what}:\n{}", watch.transcript()));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    };

    run_in(
        &host.ns,
        "ip",
        &["addr", "add", "10.250.0.7/32", "dev", &dev],
    )
    .expect("ip addr add");
    let c = next("an address was added");
    assert_eq!(c["addresses"], true, "{c}");
    assert!(
        c["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|ip| ip == "10.250.0.7")),
        "{c}"
    );

    run_in(&host.ns, "ip", &["route", "del", "default"]).expect("ip route del");
    let c = next("the default route was removed");
    assert_eq!(c["default_route"], true, "{c}");
    assert_eq!(c["addresses"], false, "one report per burst: {c}");

    run_in(
        &host.ns,
        "ip",
        &["route", "add", "default", "via", &via, "dev", &dev],
    )
    .expect("ip route add");
    let c = next("the default route came back");
    assert_eq!(c["default_route"], true, "{c}");
    assert_eq!(
        watch.wait_exit(WITHIN).map(|s| s.success()),
        Some(true),
        "{}",
        watch.transcript()
    );
}
