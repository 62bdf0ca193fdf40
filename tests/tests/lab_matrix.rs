//! The NAT behaviour matrix (issue 3's acceptance): for every NAT the lab models, run
//! `pinhole netcheck --json` from a host behind it against `pinhole serve` on two IPs in the
//! lab internet and check the mapping, filtering and hairpinning it reports; then repeat
//! against coturn with two listening IPs and check that the mapping agrees.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pinhole_tests::lab::support::{lab_available, say};
use pinhole_tests::lab::topologies::{Case, matrix};
use pinhole_tests::lab::{COTURN_PRIMARY, Host, Lab, PINHOLE_PRIMARY, bins};
use serde_json::Value;

/// netcheck's own budget; the process gets a few seconds more.
const NETCHECK_BUDGET_SECS: u64 = 10;

#[derive(Debug, Clone, Default)]
struct Got {
    exit: Option<i32>,
    udp: Option<bool>,
    mapping: String,
    filtering: String,
    hairpinning: String,
    port_allocation: String,
    rtt_ms: Option<f64>,
    raw: String,
    error: Option<String>,
}

fn netcheck(lab: &Lab, host: &Host, server: &str) -> Got {
    let pinhole = match bins::pinhole() {
        Ok(p) => p,
        Err(e) => {
            return Got {
                error: Some(e.to_string()),
                ..Got::default()
            };
        }
    };
    let args = [
        "netcheck".to_owned(),
        "--stun".to_owned(),
        format!("stun:{server}"),
        "--json".to_owned(),
        "--timeout".to_owned(),
        NETCHECK_BUDGET_SECS.to_string(),
    ];
    let out = match lab.exec(
        &host.ns,
        &pinhole.to_string_lossy(),
        &args,
        Duration::from_secs(NETCHECK_BUDGET_SECS + 10),
    ) {
        Ok(o) => o,
        Err(e) => {
            return Got {
                error: Some(e.to_string()),
                ..Got::default()
            };
        }
    };
    let mut got = Got {
        exit: out.status.code(),
        raw: format!(
            "stdout: {}\nstderr: {}",
            out.stdout.trim(),
            out.stderr.trim()
        ),
        ..Got::default()
    };
    match serde_json::from_str::<Value>(out.stdout.trim()) {
        Ok(v) => {
            got.udp = v["udp"].as_bool();
            got.mapping = v["mapping"].as_str().unwrap_or("?").to_owned();
            got.filtering = v["filtering"].as_str().unwrap_or("?").to_owned();
            got.hairpinning = match &v["hairpinning"] {
                Value::Bool(b) => b.to_string(),
                Value::Null => "null".to_owned(),
                other => other.to_string(),
            };
            got.port_allocation = v["port_allocation"]["kind"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            got.rtt_ms = v["servers"][0]["rtt_ms"].as_f64();
        }
        Err(e) => got.error = Some(format!("output is not JSON ({e})")),
    }
    got
}

fn expected_strings(case: &Case) -> (String, String, String) {
    let e = case.expect;
    (
        e.mapping
            .map_or("unknown".into(), |b| b.as_str().to_owned()),
        e.filtering
            .map_or("unknown".into(), |b| b.as_str().to_owned()),
        e.hairpinning.map_or("null".into(), |b| b.to_string()),
    )
}

/// What is wrong with `got` for `case`, if anything.
fn check(case: &Case, got: &Got, mapping_only: bool) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(e) = &got.error {
        bad.push(e.clone());
        return bad;
    }
    let (m, f, h) = expected_strings(case);
    if !case.expect.udp {
        if got.exit != Some(1) {
            bad.push(format!(
                "exit {:?}, expected 1 (no server reachable)",
                got.exit
            ));
        }
        if got.udp != Some(false) {
            bad.push(format!("udp {:?}, expected false", got.udp));
        }
        if !mapping_only && got.port_allocation != case.expect.port_allocation {
            bad.push(format!(
                "port allocation {} != expected {}",
                got.port_allocation, case.expect.port_allocation
            ));
        }
        return bad;
    }
    if got.exit != Some(0) {
        bad.push(format!("exit {:?}, expected 0", got.exit));
    }
    if got.mapping != m {
        bad.push(format!("mapping {} != expected {m}", got.mapping));
    }
    if !mapping_only {
        if got.filtering != f {
            bad.push(format!("filtering {} != expected {f}", got.filtering));
        }
        if got.hairpinning != h {
            bad.push(format!("hairpinning {} != expected {h}", got.hairpinning));
        }
        if got.port_allocation != case.expect.port_allocation {
            bad.push(format!(
                "port allocation {} != expected {}",
                got.port_allocation, case.expect.port_allocation
            ));
        }
    }
    bad
}

fn abbrev(s: &str) -> &str {
    match s {
        "endpoint-independent" => "EI",
        "address-dependent" => "AD",
        "address-and-port-dependent" => "APD",
        "unknown" => "unknown",
        other => other,
    }
}

fn cell(expected: &str, got: &str) -> String {
    let (e, g) = (abbrev(expected), abbrev(got));
    if e == g {
        format!("{e} ok")
    } else {
        format!("{e}≠{g} !!")
    }
}

#[test]
fn nat_matrix_netcheck_against_pinhole_serve_and_coturn() {
    if !lab_available("nat_matrix", &["turnserver"]) {
        return;
    }
    let started = Instant::now();
    // Build (or find) the CLI before timing anything else.
    bins::pinhole().expect("the pinhole CLI");
    let cases = matrix();
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    lab.start_coturn().expect("coturn");
    let hosts: Vec<Host> = cases
        .iter()
        .map(|c| {
            lab.add_case(c)
                .unwrap_or_else(|e| panic!("building {}: {e}", c.name))
        })
        .collect();
    let built = started.elapsed();

    // Every case in its own thread: netcheck mostly waits for answers that never come.
    let lab_ref = &lab;
    let results: Vec<(Got, Option<Got>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .zip(&hosts)
            .map(|(case, host)| {
                s.spawn(move || {
                    let ours = netcheck(lab_ref, host, &PINHOLE_PRIMARY.to_string());
                    let theirs = case
                        .expect
                        .udp
                        .then(|| netcheck(lab_ref, host, &COTURN_PRIMARY.to_string()));
                    (ours, theirs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("case thread"))
            .collect()
    });

    let w = cases
        .iter()
        .map(|c| c.describe().chars().count())
        .max()
        .unwrap_or(10);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "\nNAT matrix: pinhole netcheck behind each lab NAT (expected vs got; EI = endpoint-independent, AD = address-dependent, APD = address-and-port-dependent)"
    );
    let _ = writeln!(
        table,
        "{:<16} {:<w$} | {:<9} {:<9} {:<11} {:<15} {:>7} | {:<10} {:<9} {:<11}",
        "case",
        "NAT",
        "mapping",
        "filtering",
        "hairpin",
        "ports",
        "rtt ms",
        "coturn:map",
        "filtering",
        "hairpin"
    );
    let _ = writeln!(table, "{}", "-".repeat(w + 116));
    let mut failures = String::new();
    for (case, (ours, theirs)) in cases.iter().zip(&results) {
        let (m, f, h) = expected_strings(case);
        let (om, of, oh) = if case.expect.udp {
            (
                cell(&m, &ours.mapping),
                cell(&f, &ours.filtering),
                cell(&h, &ours.hairpinning),
            )
        } else {
            let udp = if ours.udp == Some(false) {
                "no UDP ok"
            } else {
                "UDP?! !!"
            };
            (udp.to_owned(), "-".to_owned(), "-".to_owned())
        };
        let ports = cell(case.expect.port_allocation, &ours.port_allocation);
        let rtt = ours.rtt_ms.map_or("-".to_owned(), |r| format!("{r:.1}"));
        let (tm, tf, th) = match theirs {
            Some(t) => (
                cell(&m, &t.mapping),
                abbrev(&t.filtering).to_owned(),
                t.hairpinning.clone(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            table,
            "{:<16} {:<w$} | {:<9} {:<9} {:<11} {:<15} {:>7} | {:<10} {:<9} {:<11}",
            case.name,
            case.describe(),
            om,
            of,
            oh,
            ports,
            rtt,
            tm,
            tf,
            th
        );
        let mut bad = check(case, ours, false);
        // The delayed router must really delay: 2 × 40 ms one way.
        if !case.nats.iter().all(|n| n.delay.is_zero()) {
            let min = case.nats.iter().map(|n| n.delay).sum::<Duration>() * 2;
            match ours.rtt_ms {
                Some(r) if r >= min.as_secs_f64() * 1000.0 => {}
                other => bad.push(format!("rtt {other:?} ms, expected at least {min:?}")),
            }
        }
        for b in bad {
            let _ = writeln!(
                failures,
                "{} (pinhole serve): {b}\n  {}",
                case.name, ours.raw
            );
        }
        if let Some(t) = theirs {
            for b in check(case, t, true) {
                let _ = writeln!(failures, "{} (coturn): {b}\n  {}", case.name, t.raw);
            }
        }
    }
    let _ = writeln!(
        table,
        "(coturn columns: mapping is checked against the expectation; its filtering and hairpinning are shown as reported)"
    );
    let _ = writeln!(
        table,
        "lab built in {:.1} s, whole matrix in {:.1} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    say(&table);
    assert!(
        failures.is_empty(),
        "matrix mismatches:\n{failures}\n{}",
        lab.server_logs()
    );
}
