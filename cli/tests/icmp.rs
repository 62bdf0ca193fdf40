//! `pinhole connect --icmp-punch`: usage errors, and the clear error without
//! `CAP_NET_RAW`. The end-to-end proof is the NAT lab's `tests/tests/lab_icmp.rs`.
//!
//! Nothing here sends a packet: usage errors stop before any socket, and the capability
//! test runs in a network namespace of its own with nothing but a down loopback (when
//! root, which is also what lets it drop the capability), so even a raw socket that did
//! open could reach nobody.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pinhole");

fn run(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn icmp_punch_usage_errors() {
    for (args, needle) in [
        (&["--icmp-punch", "client"][..], "needs --icmp-peer"),
        (
            &["--icmp-punch", "server", "--icmp-peer", "198.51.100.1"][..],
            "--icmp-peer is for",
        ),
        (
            &["--icmp-punch", "client", "--icmp-peer", "::1"][..],
            "not IPv4",
        ),
        (
            &["--icmp-punch", "client", "--icmp-peer", "0.0.0.0"][..],
            "not a unicast",
        ),
        (
            &[
                "--icmp-punch",
                "server",
                "--signal",
                "http://127.0.0.1:1",
                "--room",
                "r",
            ][..],
            "cannot be used with",
        ),
    ] {
        let out = run(
            Command::new(BIN).arg("connect").args(args),
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn icmp_punch_without_cap_net_raw_says_so() {
    let mut cmd = if is_root() {
        if !(has("unshare") && has("setpriv")) {
            assert!(
                !in_ci(),
                "unshare and setpriv (util-linux) are needed with CI=true"
            );
            eprintln!("!!! SKIPPING icmp_punch_without_cap_net_raw_says_so: no unshare/setpriv");
            return;
        }
        // A network namespace of our own, and no CAP_NET_RAW in the bounding set (root's
        // permitted set after exec).
        let mut c = Command::new("unshare");
        c.args([
            "-n",
            "setpriv",
            "--bounding-set",
            "-net_raw",
            "--inh-caps",
            "-net_raw",
            BIN,
        ]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.args([
        "connect",
        "--icmp-punch",
        "server",
        "--timeout",
        "2",
        "--icmp-port",
        "0",
    ]);
    let started = Instant::now();
    let out = run(&mut cmd, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_NET_RAW"), "{err}");
    assert!(err.contains("raw ICMP socket"), "{err}");
    // At once, not after --timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
