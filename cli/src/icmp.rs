//! `pinhole connect --icmp-punch server|client`: ICMP hole punching (the pwnat technique)
//! for a server whose clients cannot signal to it. Linux, `CAP_NET_RAW`.
//!
//! The server sends ICMP echoes to an unreachable address and waits; a client that knows
//! the server's public address forges the Time Exceeded the server's NAT relates to those
//! echoes, and advertises in it where the server should send. Both then send UDP to each
//! other, and stdin/stdout are carried over it as in `pinhole connect`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pinhole::driver::icmp::{
    IcmpLinkEvent, IcmpPunchError, IcmpPunchOptions, IcmpRole, icmp_punch,
};
use pinhole::holepunch::icmp::{
    DEFAULT_ECHO_ID, DEFAULT_PORT, DEFAULT_TARGET, IcmpPunchEvent, MAX_DATA,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{EXIT_UNREACHABLE, usage};

/// The side `--icmp-punch` plays.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IcmpMode {
    /// Echo toward --icmp-target and wait for a client's Time Exceeded.
    Server,
    /// Forge the Time Exceeded toward the server at --icmp-peer.
    Client,
}

/// The `pinhole connect` flags of ICMP hole punching.
#[derive(clap::Args)]
pub(crate) struct IcmpArgs {
    /// ICMP hole punching (pwnat; Linux, needs CAP_NET_RAW), for a server that cannot be
    /// signalled: `server` waits for any client, `client` needs --icmp-peer. No
    /// rendezvous and no ICE: stdin and stdout go over the punched UDP path. `--stun`
    /// (the first) lets the client learn and advertise its public address; --timeout
    /// bounds the wait for the peer.
    #[arg(long, value_name = "MODE", conflicts_with_all = ["signal", "signal_dir"])]
    pub(crate) icmp_punch: Option<IcmpMode>,
    /// (client) The server's public IPv4 address, `IP` or `IP:PORT` (default port:
    /// --icmp-port).
    #[arg(long, value_name = "IP[:PORT]")]
    icmp_peer: Option<String>,
    /// The server's UDP port (the server binds it; the client sends to it).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    icmp_port: u16,
    /// Where the server's echoes go; both sides must agree. Default 192.0.2.99 (TEST-NET-1,
    /// RFC 5737: never routed, so nobody answers).
    #[arg(long, value_name = "IP", default_value_t = DEFAULT_TARGET)]
    icmp_target: Ipv4Addr,
    /// The echo identifier; both sides must agree.
    #[arg(long, value_name = "ID", default_value_t = DEFAULT_ECHO_ID)]
    icmp_echo_id: u16,
    /// (client) For a server NAT that rewrites echo identifiers (Linux `masquerade
    /// random`): forge a Time Exceeded for every identifier, RATE per second (at most
    /// 20000; a pass is 65536 packets of 78 bytes, 13 s at 5000/s), until the server
    /// answers. Off by default.
    #[arg(long, value_name = "RATE", value_parser = clap::value_parser!(u32).range(1..=20_000))]
    icmp_id_sweep: Option<u32>,
}

/// Runs `pinhole connect --icmp-punch …`.
pub(crate) async fn run(
    args: &IcmpArgs,
    stun: &[String],
    timeout: Duration,
    json: bool,
) -> ExitCode {
    let Some(mode) = args.icmp_punch else {
        return usage("--icmp-punch: server or client");
    };
    let role = match (mode, &args.icmp_peer) {
        (IcmpMode::Server, None) => IcmpRole::Server,
        (IcmpMode::Server, Some(_)) => return usage("--icmp-peer is for --icmp-punch client"),
        (IcmpMode::Client, None) => {
            return usage("--icmp-punch client needs --icmp-peer IP[:PORT]");
        }
        (IcmpMode::Client, Some(p)) => {
            let server = match p.parse::<SocketAddrV4>() {
                Ok(a) => a,
                Err(_) => match p.parse::<Ipv4Addr>() {
                    Ok(ip) => SocketAddrV4::new(ip, args.icmp_port),
                    Err(_) => return usage(format!("--icmp-peer {p}: not IPv4 IP[:PORT]")),
                },
            };
            if server.ip().is_unspecified()
                || server.ip().is_multicast()
                || server.ip().is_broadcast()
                || server.port() == 0
            {
                return usage(format!("--icmp-peer {p}: not a unicast address and port"));
            }
            IcmpRole::Client { server }
        }
    };
    let stun = match (role, stun.first()) {
        (IcmpRole::Client { .. }, Some(uri)) => {
            match pinhole::driver::resolve(std::slice::from_ref(uri)).await {
                Ok((s, _)) => s.into_iter().map(|s| s.addr).find(SocketAddr::is_ipv4),
                Err(e) => return usage(e),
            }
        }
        _ => None,
    };
    let bind_port = match role {
        IcmpRole::Server => args.icmp_port,
        IcmpRole::Client { .. } => 0,
    };
    let mut options = IcmpPunchOptions::new(
        role,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, bind_port),
        timeout,
    );
    options.config.target = args.icmp_target;
    options.config.echo_id = args.icmp_echo_id;
    if let Some(rate) = args.icmp_id_sweep {
        if mode == IcmpMode::Server {
            return usage("--icmp-id-sweep is for --icmp-punch client");
        }
        options.config.id_sweep_rate = rate;
    }
    options.stun = stun;
    let say = |v: serde_json::Value, text: String| {
        if json {
            eprintln!("{v}");
        } else {
            eprintln!("{text}");
        }
    };
    let started = Instant::now();
    let elapsed_ms = || (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    say(
        json!({"event": "icmp-punching", "role": if mode == IcmpMode::Server { "server" } else { "client" },
               "target": args.icmp_target.to_string(), "echo_id": args.icmp_echo_id}),
        format!(
            "ICMP hole punching as {}",
            if mode == IcmpMode::Server {
                "server"
            } else {
                "client"
            }
        ),
    );
    let punched = tokio::select! {
        r = icmp_punch(options) => r,
        () = crate::shutdown_signal() => {
            say(json!({"event": "disconnected", "reason": "interrupted"}), "interrupted".into());
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let mut link = match punched {
        Ok(l) => l,
        Err(e @ (IcmpPunchError::NoCapability(_) | IcmpPunchError::Unsupported)) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            say(
                json!({"event": "disconnected", "reason": e.to_string()}),
                format!("no path: {e}"),
            );
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if let Some(IcmpPunchEvent::ClientLearned {
        address,
        outer_source,
        advertised,
    }) = &link.learned
    {
        say(
            json!({"event": "icmp-client-learned", "address": address.to_string(),
                   "outer_source": outer_source.to_string(),
                   "advertised": advertised.map(|a| a.to_string())}),
            format!(
                "client learned from its Time Exceeded: sending to {address} (packet from {outer_source})"
            ),
        );
    }
    say(
        json!({"event": "connected", "local": link.local.to_string(), "remote": link.peer.to_string(),
               "advertised": link.advertised.map(|a| a.to_string()), "swept": link.swept,
               "elapsed_ms": elapsed_ms()}),
        format!(
            "connected: {} <-> {} (after {:.0} ms)",
            link.local,
            link.peer,
            elapsed_ms()
        ),
    );

    // Carry stdin to the peer and the peer's data to stdout, until both directions end.
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; MAX_DATA];
    let (mut local_done, mut remote_done) = (false, false);
    let interrupted = crate::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        if local_done && remote_done {
            // Let the last frames leave before the task goes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return ExitCode::SUCCESS;
        }
        tokio::select! {
            ev = link.recv() => match ev {
                Some(IcmpLinkEvent::Data(d)) => {
                    if stdout.write_all(&d).await.is_err() {
                        return ExitCode::FAILURE;
                    }
                    let _ = stdout.flush().await;
                }
                Some(IcmpLinkEvent::PeerEnded) => remote_done = true,
                Some(IcmpLinkEvent::Established) => {
                    say(json!({"event": "established", "elapsed_ms": elapsed_ms()}), "the peer hears us".into());
                }
                Some(_) => {}
                None => return ExitCode::from(EXIT_UNREACHABLE),
            },
            n = stdin.read(&mut buf), if !local_done => match n {
                Ok(0) | Err(_) => {
                    // End of our direction: an empty datagram, a few times (UDP).
                    for _ in 0..3 {
                        link.send(&[]).await;
                    }
                    local_done = true;
                }
                Ok(n) => {
                    link.send(&buf[..n]).await;
                }
            },
            () = &mut interrupted => {
                say(json!({"event": "disconnected", "reason": "interrupted"}), "interrupted".into());
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        }
    }
}
