//! `pinhole demo`: two peers connect on this machine, first directly, then through the
//! relay, with STUN, TURN and signalling embedded on loopback. No setup, no network.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};
use pinhole::driver::{self, ServeHandle};
use pinhole::ice::{Candidate, CandidateKind};
use pinhole::peer::{PeerConfig, TurnServerSpec};
use pinhole::stun::ServerConfig;
use pinhole::turn::{Credentials, PeerPolicy, TurnServerConfig};
use serde_json::json;

/// Demo arguments.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Print one JSON object per connection instead of text.
    #[arg(long)]
    json: bool,
    /// Datagrams sent each way to measure throughput (1 200 bytes each).
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    datagrams: u32,
}

/// How long one connection may take to establish before the demo gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the data phase of one connection may take.
const DATA_TIMEOUT: Duration = Duration::from_secs(30);
/// The size of each measured datagram.
const DATAGRAM: usize = 1200;

const USER: &str = "demo";
const PASSWORD: &str = "demo-loopback-only";

struct Servers {
    _stun: ServeHandle,
    _turn: ServeHandle,
    stun: SocketAddr,
    turn: SocketAddr,
}

async fn servers() -> Result<Servers, String> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let stun = driver::serve(ServerConfig::new(any).with_rate_limit(None))
        .await
        .map_err(|e| format!("embedded STUN server: {e}"))?;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut tc = TurnServerConfig::new(any, "pinhole-demo", unix);
    tc.credentials
        .users
        .insert(USER.to_owned(), PASSWORD.to_owned());
    // Both peers are on loopback: the embedded relay allows loopback peers, explicitly.
    tc.peers = PeerPolicy::with_loopback();
    let turn = driver::serve_turn(tc)
        .await
        .map_err(|e| format!("embedded TURN server: {e}"))?;
    Ok(Servers {
        stun: stun.local_addrs()[0],
        turn: turn.local_addrs()[0],
        _stun: stun,
        _turn: turn,
    })
}

struct Outcome {
    local: Candidate,
    remote: Candidate,
    elapsed: Duration,
    rtt: Option<Duration>,
    throughput_mbps: f64,
    lost: u32,
    candidates: [Vec<Candidate>; 2],
}

fn candidate_json(c: &Candidate) -> serde_json::Value {
    json!({"type": c.kind.as_str(), "address": c.socket_addr().map(|a| a.to_string())})
}

/// Connects two peers and measures; `relay` makes the first one offer only its relayed
/// candidate, so every datagram crosses the relay.
async fn one(servers: &Servers, relay: bool, datagrams: u32) -> Result<Outcome, String> {
    let mut base = PeerConfig::default();
    base.stun_servers = vec![servers.stun];
    base.turn_servers = vec![TurnServerSpec::new(
        servers.turn,
        Credentials::long_term(USER, PASSWORD),
    )];
    let mut first = base.clone();
    first.relay_only = relay;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut a = PeerConnection::start(first, loopback, true)
        .await
        .map_err(|e| e.to_string())?;
    let mut b = PeerConnection::start(base, loopback, false)
        .await
        .map_err(|e| e.to_string())?;
    // Signalling, embedded: each side's description goes straight to the other.
    let started = Instant::now();
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());
    let mut candidates: [Vec<Candidate>; 2] = [vec![], vec![]];
    let mut selected: [Option<(Candidate, Candidate, Option<Duration>)>; 2] = [None, None];
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while selected.iter().any(Option::is_none) {
        let (i, ev) = tokio::select! {
            ev = a.next_event() => (0, ev),
            ev = b.next_event() => (1, ev),
            () = tokio::time::sleep_until(deadline) => {
                return Err(format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()));
            }
        };
        let Some(ev) = ev else {
            return Err("a peer connection stopped".into());
        };
        let other = if i == 0 { &b } else { &a };
        match ev {
            PeerConnectionEvent::Candidate(c) => {
                candidates[i].push(c.clone());
                other.add_remote_candidate(c);
            }
            PeerConnectionEvent::GatheringComplete => other.end_of_remote_candidates(),
            // The relayed run waits for the relayed pair.
            PeerConnectionEvent::SelectedPair {
                local,
                remote,
                nominated: true,
                rtt,
            } if !relay || i != 0 || local.kind == CandidateKind::Relayed => {
                selected[i] = Some((local, remote, rtt));
            }
            PeerConnectionEvent::RelayFailed(e) => return Err(format!("relay: {e}")),
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let Some((local, remote, rtt)) = selected[0].clone() else {
        return Err("no selected pair".into());
    };
    // Both ways: b answers a's first datagram.
    let payload = vec![0x80u8; DATAGRAM];
    let data_deadline = tokio::time::Instant::now() + DATA_TIMEOUT;
    let mut echoed = false;
    for _ in 0..50 {
        a.send(b"ping".to_vec()).await;
        let got = tokio::time::timeout(Duration::from_millis(100), b.recv()).await;
        if let Ok(Some(d)) = got {
            if d == b"ping" {
                b.send(b"pong".to_vec()).await;
                if let Ok(Some(d)) =
                    tokio::time::timeout(Duration::from_millis(500), a.recv()).await
                {
                    echoed = d == b"pong";
                }
                break;
            }
        }
    }
    if !echoed {
        return Err("data did not flow both ways".into());
    }
    // Throughput a → b: at most 64 datagrams in flight, so that loopback's socket
    // buffers keep up; 200 ms of silence ends it (the rest count as lost).
    let t0 = Instant::now();
    let (mut sent, mut received) = (0u32, 0u32);
    while received < datagrams && tokio::time::Instant::now() < data_deadline {
        while sent < datagrams && sent - received < 64 {
            a.send(payload.clone()).await;
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_millis(200), b.recv()).await {
            Ok(Some(_)) => received += 1,
            Ok(None) => return Err("a peer connection stopped".into()),
            Err(_) => break,
        }
    }
    let secs = t0.elapsed().as_secs_f64().max(1e-6);
    let throughput_mbps = f64::from(received) * (DATAGRAM * 8) as f64 / secs / 1e6;
    Ok(Outcome {
        local,
        remote,
        elapsed,
        rtt,
        throughput_mbps,
        lost: datagrams.saturating_sub(received),
        candidates,
    })
}

/// Runs the demo.
pub(crate) async fn demo(args: DemoArgs) -> ExitCode {
    let servers = match servers().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !args.json {
        println!(
            "embedded on loopback: STUN {}, TURN {} (relaying to loopback peers), signalling in-process",
            servers.stun, servers.turn
        );
    }
    let mut ok = true;
    for (path, relay) in [("direct", false), ("relay", true)] {
        match one(&servers, relay, args.datagrams).await {
            Ok(o) => {
                let relayed = o.local.kind == CandidateKind::Relayed
                    || o.remote.kind == CandidateKind::Relayed;
                if relayed != relay {
                    ok = false;
                }
                if args.json {
                    println!(
                        "{}",
                        json!({
                            "path": path,
                            "local": candidate_json(&o.local),
                            "remote": candidate_json(&o.remote),
                            "elapsed_ms": (o.elapsed.as_secs_f64() * 1e6).round() / 1e3,
                            "rtt_ms": o.rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
                            "throughput_mbps": (o.throughput_mbps * 10.0).round() / 10.0,
                            "lost": o.lost,
                        })
                    );
                } else {
                    println!("\n{path}:");
                    for (who, cs) in ["peer A", "peer B"].iter().zip(&o.candidates) {
                        for c in cs {
                            println!("  {who} candidate {c}");
                        }
                    }
                    println!(
                        "  selected {} {} <-> {} {}",
                        o.local.kind.as_str(),
                        o.local.socket_addr().map_or("?".into(), |a| a.to_string()),
                        o.remote.kind.as_str(),
                        o.remote.socket_addr().map_or("?".into(), |a| a.to_string()),
                    );
                    println!(
                        "  connected in {:.1} ms, rtt {}, {:.1} Mbit/s ({} of {} datagrams lost)",
                        o.elapsed.as_secs_f64() * 1e3,
                        o.rtt
                            .map_or("?".into(), |r| format!("{:.2} ms", r.as_secs_f64() * 1e3)),
                        o.throughput_mbps,
                        o.lost,
                        args.datagrams
                    );
                    if relayed != relay {
                        println!("  (expected a {path} path)");
                    }
                }
            }
            Err(e) => {
                ok = false;
                if args.json {
                    println!("{}", json!({"path": path, "error": e}));
                } else {
                    println!("\n{path}: failed: {e}");
                }
            }
        }
        let _ = std::io::stdout().flush();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
