//! The port-mapping benchmark: time to the first usable mapping against miniupnpd in the
//! lab, per protocol and for `any`, side by side in one run, with the round-trip time to
//! the gateway for comparison. It prints the figures and asserts none of them (only that
//! every run mapped, over the expected protocol). Alone in its test binary, so that no
//! other lab test runs beside it. `PINHOLE_PORTMAP_BENCH_RUNS` sets the runs per protocol
//! (default 20).

use std::path::Path;
use std::time::Duration;

use pinhole_tests::lab::support::{lab_available, say};
use pinhole_tests::lab::{Lab, NatConfig, Uplink};

#[test]
fn time_to_first_mapping() {
    if !lab_available("time_to_first_mapping", &["miniupnpd"]) {
        return;
    }
    let runs: u32 = std::env::var("PINHOLE_PORTMAP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bench = Path::new(env!("CARGO_BIN_EXE_portmap-bench"));
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve()
        .expect("pinhole serve (miniupnpd's STUN check)");
    let gw = lab
        .add_router("gw", NatConfig::port_restricted_cone(), Uplink::Internet)
        .expect("router")
        .clone();
    let host = lab.add_host("h", "gw").expect("host").clone();
    lab.start_miniupnpd("gw").expect("miniupnpd");
    let echo_addr = format!("{}:7", gw.lan_ip);
    let mut echo = lab
        .spawn_streaming("echo", &gw.ns, bench, &["echo", "--bind", &echo_addr])
        .expect("echo server");
    assert!(
        echo.wait_for_line(Duration::from_secs(5), |l| l.starts_with("listening"))
            .is_some(),
        "{}",
        echo.transcript()
    );
    let out = lab
        .exec(
            &host.ns,
            &bench.to_string_lossy(),
            &[
                "run".to_owned(),
                "--gateway".to_owned(),
                gw.lan_ip.to_string(),
                "--echo".to_owned(),
                echo_addr,
                "--runs".to_owned(),
                runs.to_string(),
            ],
            Duration::from_secs(30) + Duration::from_secs(3) * runs,
        )
        .expect("portmap-bench");
    say(&format!(
        "\nportmap-bench against miniupnpd ({} build):\n{}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        out.stdout
    ));
    assert!(
        out.success(),
        "portmap-bench failed: {}\n{}\n{}",
        out.stdout,
        out.stderr,
        lab.server_logs()
    );
}
