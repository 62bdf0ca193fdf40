//! ICMP hole punching (issue 13, the pwnat technique) through real kernel NATs.
//!
//! A server behind one lab NAT runs `pinhole connect --icmp-punch server` (echoes to
//! 192.0.2.99, which the lab internet drops into its black hole); a client behind another
//! runs `pinhole connect --icmp-punch client --icmp-peer <server NAT's WAN address>
//! --stun <pinhole serve>`, forges the Time Exceeded, and both carry a line each way
//! over the punched UDP path and exit 0.
//!
//! The matrix: every NAT kind the lab builds (mapping × filtering × port allocation,
//! RFC 4787 terms, `tests/src/lab/nat.rs`) once on the server's side (client behind the
//! default Linux `masquerade` NAT) and once on the client's side (server behind the
//! default). The oracle, from how Linux NATs ICMP and UDP:
//!
//! - server side: the server's NAT must keep the echo identifier (the client embeds it,
//!   and conntrack relates the error by it) and the server's UDP port (the client sends
//!   to it): port-preserving allocation. `masquerade random` draws a random identifier
//!   and random ports, so the related error finds no mapping and is dropped.
//! - client side: the client advertises the public address its STUN server saw; the
//!   server's NAT (address-and-port-dependent filtering here) lets the client in only
//!   from that address, so the client's mapping toward the server must be the one the
//!   STUN server saw: endpoint-independent mapping. Or endpoint-independent filtering:
//!   the server's `HELLO` to the advertised mapping gets in through it, and the client's
//!   answer leaves through the same mapping (conntrack's reply direction of that inbound
//!   flow), which the server's NAT lets in; the client's own mapping toward the server
//!   (another port) is never used.
//!
//! The forged Time Exceeded leaves the client's Linux NAT untranslated (an ICMP error that
//! belongs to none of its mappings): its outer source is the client's private address,
//! which is why the client advertises the address its STUN server saw. The table shows
//! it (`TE outer src`).
//!
//! Also: the unreachable target never leaves the lab (the internet namespace routes it
//! into its black hole, whose peer is down), checked before the matrix.

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::{in_ns, output_with_input};
use pinhole_tests::lab::support::{lab_available, say};
use pinhole_tests::lab::{
    Behaviour, Lab, NatConfig, PINHOLE_PRIMARY, PortAllocation, Uplink, bins,
};
use serde_json::Value;

/// `--timeout` of both sides.
const TIMEOUT_SECS: u64 = 10;
/// `--timeout` of both sides with an identifier sweep (a pass at [`SWEEP_RATE`] is 13 s).
const SWEEP_TIMEOUT_SECS: u64 = 25;
/// `--icmp-id-sweep` where the test sweeps.
const SWEEP_RATE: u32 = 5000;
/// The bound on one cell's processes.
const CELL_BUDGET: Duration = Duration::from_secs(SWEEP_TIMEOUT_SECS + 15);
/// Cells run at once.
const PARALLEL: usize = 9;
/// The target of the echoes (pinhole's default, TEST-NET-1).
const TARGET: &str = "192.0.2.99";

fn all_kinds() -> Vec<NatConfig> {
    let bs = [
        Behaviour::EndpointIndependent,
        Behaviour::AddressDependent,
        Behaviour::AddressAndPortDependent,
    ];
    let mut v = Vec::new();
    for m in bs {
        for f in bs {
            for a in [PortAllocation::Preserving, PortAllocation::Random] {
                let mut c = NatConfig::new(m, f);
                c.allocation = a;
                v.push(c);
            }
        }
    }
    v
}

fn tag(c: &NatConfig) -> String {
    format!(
        "{}{}{}",
        c.mapping.abbrev().to_lowercase(),
        c.filtering.abbrev().to_lowercase(),
        match c.allocation {
            PortAllocation::Preserving => "p",
            PortAllocation::Random => "r",
        }
    )
}

#[derive(Debug)]
struct Cell {
    server: NatConfig,
    client: NatConfig,
    expected: bool,
    /// `--icmp-id-sweep` for the client.
    sweep: Option<u32>,
}

#[derive(Debug, Default)]
struct Outcome {
    ok: bool,
    server_exit: Option<i32>,
    client_exit: Option<i32>,
    outer_source: Option<String>,
    advertised: Option<String>,
    elapsed_ms: Option<f64>,
    swept: Option<u64>,
    detail: String,
}

fn events(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn run_cell(lab: &Lab, n: usize, cell: &Cell) -> Outcome {
    let pinhole = bins::pinhole().expect("pinhole binary");
    let pinhole = pinhole.to_string_lossy().into_owned();
    let srv_ns = lab.host(&format!("s{n}h")).unwrap().ns.clone();
    let cli_ns = lab.host(&format!("c{n}h")).unwrap().ns.clone();
    let server_wan = lab.router(&format!("s{n}")).unwrap().wan_ip;
    let timeout = if cell.sweep.is_some() {
        SWEEP_TIMEOUT_SECS
    } else {
        TIMEOUT_SECS
    }
    .to_string();
    let srv_args: Vec<String> = [
        "connect",
        "--icmp-punch",
        "server",
        "--json",
        "--timeout",
        &timeout,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let peer = server_wan.to_string();
    let stun = format!("stun:{PINHOLE_PRIMARY}");
    let mut cli_args: Vec<String> = [
        "connect",
        "--icmp-punch",
        "client",
        "--icmp-peer",
        &peer,
        "--stun",
        &stun,
        "--json",
        "--timeout",
        &timeout,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(rate) = cell.sweep {
        cli_args.extend(["--icmp-id-sweep".to_owned(), rate.to_string()]);
    }
    let p1 = pinhole.clone();
    let server = thread::spawn(move || {
        output_with_input(
            &mut in_ns(&srv_ns, &p1, &srv_args),
            Some("from-server\n"),
            CELL_BUDGET,
        )
    });
    // The server's first echo goes out at once; the client repeats its forgery anyway.
    thread::sleep(Duration::from_millis(300));
    let client = output_with_input(
        &mut in_ns(&cli_ns, &pinhole, &cli_args),
        Some("from-client\n"),
        CELL_BUDGET,
    );
    let server = server.join().expect("server thread");
    let mut o = Outcome::default();
    let (Ok(s), Ok(c)) = (server, client) else {
        o.detail = "a side did not finish within its budget".into();
        return o;
    };
    o.server_exit = s.status.code();
    o.client_exit = c.status.code();
    for ev in events(&s.stderr) {
        if ev["event"] == "icmp-client-learned" {
            o.outer_source = ev["outer_source"].as_str().map(str::to_owned);
        }
    }
    for ev in events(&c.stderr) {
        if ev["event"] == "connected" {
            o.advertised = ev["advertised"].as_str().map(str::to_owned);
            o.elapsed_ms = ev["elapsed_ms"].as_f64();
            o.swept = ev["swept"].as_u64();
        }
    }
    o.ok = s.success()
        && c.success()
        && s.stdout.contains("from-client")
        && c.stdout.contains("from-server");
    if !o.ok || o.ok != cell.expected {
        o.detail = format!(
            "--- server (exit {:?}) stdout:\n{}\nstderr:\n{}\n--- client (exit {:?}) stdout:\n{}\nstderr:\n{}",
            o.server_exit, s.stdout, s.stderr, o.client_exit, c.stdout, c.stderr
        );
    }
    o
}

/// The ICMP target is routed into the internet namespace's black hole: a veth whose peer
/// is down, so nothing leaves the lab. Returns bh0's TX-dropped counter.
fn black_hole_drops(lab: &Lab) -> u64 {
    let route = lab
        .exec(
            lab.internet(),
            "ip",
            &["route", "get", TARGET],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        route.stdout.contains("dev bh0"),
        "the lab internet must route {TARGET} into its black hole: {}",
        route.stdout
    );
    let peer = lab
        .exec(
            lab.internet(),
            "ip",
            &["-o", "link", "show", "bh1"],
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(
        !peer.stdout.contains("state UP") && !peer.stdout.contains(",UP"),
        "the black hole's peer must stay down: {}",
        peer.stdout
    );
    let stats = lab
        .exec(
            lab.internet(),
            "cat",
            &["/sys/class/net/bh0/statistics/tx_dropped"],
            Duration::from_secs(5),
        )
        .unwrap();
    stats.stdout.trim().parse().unwrap_or(0)
}

fn run_matrix(lab: &mut Lab, cells: &[Cell], first: usize) -> Vec<Outcome> {
    for (i, cell) in cells.iter().enumerate() {
        let n = first + i;
        lab.add_router(&format!("s{n}"), cell.server.clone(), Uplink::Internet)
            .unwrap();
        lab.add_host(&format!("s{n}h"), &format!("s{n}")).unwrap();
        lab.add_router(&format!("c{n}"), cell.client.clone(), Uplink::Internet)
            .unwrap();
        lab.add_host(&format!("c{n}h"), &format!("c{n}")).unwrap();
    }
    let lab: &Lab = lab;
    let mut out: Vec<Outcome> = Vec::new();
    for chunk in (0..cells.len()).collect::<Vec<_>>().chunks(PARALLEL) {
        let results: Vec<Outcome> = thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .map(|&i| s.spawn(move || run_cell(lab, first + i, &cells[i])))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("cell thread"))
                .collect()
        });
        out.extend(results);
    }
    out
}

#[test]
fn icmp_punch_matrix_through_lab_nats() {
    if !lab_available("icmp_punch_matrix_through_lab_nats", &[]) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    lab.start_pinhole_serve().unwrap();
    let drops_before = black_hole_drops(&lab);

    let easy = NatConfig::default();
    let server_cells: Vec<Cell> = all_kinds()
        .into_iter()
        .map(|k| Cell {
            expected: k.allocation == PortAllocation::Preserving,
            server: k,
            client: easy.clone(),
            sweep: None,
        })
        .collect();
    let client_cells: Vec<Cell> = all_kinds()
        .into_iter()
        .map(|k| Cell {
            expected: k.mapping == Behaviour::EndpointIndependent
                || k.filtering == Behaviour::EndpointIndependent,
            server: easy.clone(),
            client: k,
            sweep: None,
        })
        .collect();
    let started = Instant::now();
    let server_out = run_matrix(&mut lab, &server_cells, 0);
    let client_out = run_matrix(&mut lab, &client_cells, server_cells.len());
    let drops_after = black_hole_drops(&lab);

    let mut table = String::new();
    let mut failures = Vec::new();
    for (title, cells, outs, side) in [
        (
            "server NAT kind (client behind linux masquerade)",
            &server_cells,
            &server_out,
            's',
        ),
        (
            "client NAT kind (server behind linux masquerade)",
            &client_cells,
            &client_out,
            'c',
        ),
    ] {
        let _ = writeln!(table, "\n{title}");
        let _ = writeln!(
            table,
            "  {:<42} {:>8} {:>9} {:>10} {:>16} {:>22}",
            "NAT", "punched", "expected", "client ms", "TE outer src", "client advertised"
        );
        for (cell, o) in cells.iter().zip(outs.iter()) {
            let k = if side == 's' {
                &cell.server
            } else {
                &cell.client
            };
            let _ = writeln!(
                table,
                "  {:<42} {:>8} {:>9} {:>10} {:>16} {:>22}",
                format!("{} ({})", k.describe(), tag(k)),
                if o.ok { "yes" } else { "no" },
                if cell.expected { "yes" } else { "no" },
                o.elapsed_ms.map_or("-".into(), |t| format!("{t:.0}")),
                o.outer_source.as_deref().unwrap_or("-"),
                o.advertised.as_deref().unwrap_or("-"),
            );
            if o.ok != cell.expected {
                failures.push(format!(
                    "{side}: {} punched={} expected={}\n{}",
                    k.describe(),
                    o.ok,
                    cell.expected,
                    o.detail
                ));
            }
        }
    }
    let _ = writeln!(
        table,
        "\n{} cells in {:.1} s; TX drops counted on the lab internet's black hole (where echoes to {TARGET} end): {}",
        server_cells.len() + client_cells.len(),
        started.elapsed().as_secs_f64(),
        drops_after.saturating_sub(drops_before)
    );
    say(&table);
    assert!(
        drops_after > drops_before,
        "the server's echoes to {TARGET} should have reached the lab internet's black hole"
    );
    assert!(
        failures.is_empty(),
        "cells off the oracle:\n{}",
        failures.join("\n\n")
    );
}

/// A server NAT with `masquerade random` draws a random echo identifier (and random
/// ports): the plain forgery matches nothing. With `--icmp-id-sweep` the client forges a
/// Time Exceeded for every identifier; the one the NAT drew gets through (conntrack puts
/// the server's own identifier back), and the server's first `HELLO` leaves from a random
/// port, which a client NAT with address-dependent filtering lets in (the client has sent
/// to the server's address) and one with address-and-port-dependent filtering does not.
#[test]
fn icmp_punch_id_sweep_through_random_server_nats() {
    if !lab_available("icmp_punch_id_sweep_through_random_server_nats", &[]) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    lab.start_pinhole_serve().unwrap();
    let random_server = NatConfig::port_restricted_cone().random_ports();
    let adf_client = NatConfig::restricted_cone().random_ports();
    let cells = vec![
        Cell {
            server: random_server.clone(),
            client: adf_client.clone(),
            expected: true,
            sweep: Some(SWEEP_RATE),
        },
        Cell {
            server: NatConfig::symmetric(),
            client: adf_client.clone(),
            expected: true,
            sweep: Some(SWEEP_RATE),
        },
        Cell {
            server: random_server.clone(),
            client: NatConfig::default(),
            expected: false,
            sweep: Some(SWEEP_RATE),
        },
        // Without the sweep, the first cell fails (the matrix shows it too).
        Cell {
            server: random_server,
            client: adf_client,
            expected: false,
            sweep: None,
        },
    ];
    let outs = run_matrix(&mut lab, &cells, 0);
    let mut table = format!(
        "\nICMP identifier sweep at {SWEEP_RATE}/s\n  {:<30} {:<30} {:>6} {:>8} {:>9} {:>10} {:>8}\n",
        "server NAT", "client NAT", "sweep", "punched", "expected", "client ms", "swept"
    );
    let mut failures = Vec::new();
    for (cell, o) in cells.iter().zip(&outs) {
        let _ = writeln!(
            table,
            "  {:<30} {:<30} {:>6} {:>8} {:>9} {:>10} {:>8}",
            cell.server.describe(),
            cell.client.describe(),
            if cell.sweep.is_some() { "on" } else { "off" },
            if o.ok { "yes" } else { "no" },
            if cell.expected { "yes" } else { "no" },
            o.elapsed_ms.map_or("-".into(), |t| format!("{t:.0}")),
            o.swept.map_or("-".into(), |n| n.to_string()),
        );
        if o.ok != cell.expected {
            failures.push(format!(
                "{} / {} sweep {:?}: punched={} expected={}\n{}",
                cell.server.describe(),
                cell.client.describe(),
                cell.sweep,
                o.ok,
                cell.expected,
                o.detail
            ));
        }
    }
    say(&table);
    assert!(
        failures.is_empty(),
        "cells off the oracle:\n{}",
        failures.join("\n\n")
    );
}
