//! `pinhole allocate`: a TURN allocation from the command line.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use pinhole::driver;
use serde_json::json;

use crate::*;

#[derive(clap::Args)]
pub(crate) struct AllocateArgs {
    /// The server: `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065).
    #[arg(long, value_name = "URI")]
    turn: String,
    /// The user name.
    #[arg(long, value_name = "U", value_parser = non_empty)]
    user: String,
    /// The password (long-term credentials).
    #[arg(
        long,
        value_name = "P",
        required_unless_present = "secret",
        conflicts_with = "secret",
        value_parser = non_empty
    )]
    password: Option<String>,
    /// The shared secret for TURN REST credentials (coturn's static-auth-secret): the user
    /// name becomes `expiry:U` and the password is derived from it.
    #[arg(long, value_name = "S", value_parser = non_empty)]
    secret: Option<String>,
    /// PEM file of certificates to trust for `turns:` (default: the system roots): CAs, or
    /// the server's own self-signed certificate (accepted when it is byte for byte one
    /// of these).
    #[arg(long, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// A peer to permit and bind a channel to. Repeatable (at most 4096, the channel
    /// numbers there are, RFC 8656 §12).
    #[arg(long, value_name = "IP:PORT", value_parser = peer_addr)]
    peer: Vec<SocketAddr>,
    /// Send every datagram from a permitted peer back to it through the relay.
    #[arg(long)]
    echo: bool,
    /// Stop (deallocate) this many seconds after starting, at most 31536000 (a year).
    /// Default: run until interrupted.
    #[arg(
        long,
        value_name = "SECS",
        value_parser = seconds(MAX_SECS),
        allow_negative_numbers = true
    )]
    duration: Option<Duration>,
    /// Lifetime to ask for, seconds, 1 to 86400 (the server may grant less; pinhole
    /// refreshes before it ends).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=MAX_TURN_LIFETIME)
    )]
    lifetime: u64,
    /// Give up, with exit status 1, when no allocation is made within this many seconds
    /// (resolving, connecting and allocating; at most 3600). Progress is on stderr.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "15",
        value_parser = seconds(3600),
        allow_negative_numbers = true
    )]
    timeout: Duration,
    /// Print JSON lines (and no progress on stderr).
    #[arg(long)]
    json: bool,
}

/// Lifetime of derived TURN REST credentials.
pub(crate) const REST_TTL_SECS: u64 = 24 * 3600;

/// How often `allocate` says it is still waiting for the server.
pub(crate) const ALLOCATE_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Channel numbers there are (0x4000 through 0x4FFF, RFC 8656 §12): one per `--peer`.
pub(crate) const MAX_PEERS: usize = 0x1000;

pub(crate) async fn allocate(args: AllocateArgs) -> ExitCode {
    use pinhole::driver::turn::{DEALLOCATE_TIMEOUT, TurnClientConfig, TurnEvent};
    use pinhole::turn::{AllocationEvent, Credentials, TurnTransport, TurnUri};
    let started = tokio::time::Instant::now();
    let uri: TurnUri = match args.turn.parse() {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    if args.peer.len() > MAX_PEERS {
        return usage(format!(
            "at most {MAX_PEERS} --peer (one channel number each, RFC 8656 §12)"
        ));
    }
    let credentials = match (&args.password, &args.secret) {
        (Some(p), _) => Credentials::long_term(&args.user, p),
        (None, Some(secret)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Credentials::rest(&args.user, secret.as_bytes(), now, REST_TTL_SECS)
        }
        (None, None) => return usage("--password or --secret is required"),
    };
    let ca_pem = match args.ca.as_deref().map(crate::read_ca).transpose() {
        Ok(pem) => pem,
        Err(e) => return usage(e),
    };
    let mut config = TurnClientConfig::new(uri.clone(), credentials);
    config.lifetime = Duration::from_secs(args.lifetime);
    config.ca_pem = ca_pem;
    let chatty = !args.json;
    let secs = |d: Duration| d.as_secs_f64();
    let give_up = started + args.timeout;
    let stop = StopSignal::new();
    let duration_over = async {
        match args.duration {
            Some(d) => tokio::time::sleep_until(started + d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(duration_over);

    if chatty {
        if uri.host.parse::<IpAddr>().is_err() {
            eprintln!("resolving {}…", uri.host);
        }
        if uri.transport != TurnTransport::Udp {
            eprintln!(
                "connecting to {} port {} over {}…",
                uri.host,
                uri.port,
                if uri.transport == TurnTransport::Tls {
                    "TLS"
                } else {
                    "TCP"
                }
            );
        }
    }
    let mut handle = tokio::select! {
        h = driver::turn::allocate(config) => match h {
            Ok(h) => h,
            Err(e) => {
                eprintln!("pinhole: {e}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        },
        () = tokio::time::sleep_until(give_up) => {
            eprintln!(
                "pinhole: could not reach {} within {} s (--timeout); nothing was allocated",
                uri.host,
                secs(args.timeout)
            );
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        () = &mut duration_over => {
            eprintln!("pinhole: --duration ended before {} was reached; nothing was allocated", uri.host);
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        () = stop.wait() => {
            eprintln!("pinhole: interrupted before {} was reached; nothing was allocated", uri.host);
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    if chatty {
        eprintln!(
            "allocating on {} via {} (giving up after {} s)…",
            handle.server,
            uri.transport.as_str(),
            secs(args.timeout)
        );
    }
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + ALLOCATE_PROGRESS_EVERY,
        ALLOCATE_PROGRESS_EVERY,
    );
    // The lifetime last granted: how long an allocation left behind may live on.
    let mut lifetime: Option<Duration> = None;
    let mut stopping = false;
    let mut timed_out = false;
    let emit = |v: serde_json::Value, text: String| {
        if args.json {
            println!("{v}");
        } else {
            println!("{text}");
        }
        let _ = std::io::stdout().flush();
    };
    let deallocate = |handle: &pinhole::driver::turn::TurnHandle, allocated: bool| {
        if chatty && allocated {
            eprintln!("deallocating…");
        }
        handle.deallocate();
    };
    loop {
        let allocated = lifetime.is_some();
        let ev = tokio::select! {
            ev = handle.next_event() => ev,
            () = &mut duration_over, if !stopping => {
                stopping = true;
                deallocate(&handle, allocated);
                continue;
            }
            () = stop.wait(), if !stopping => {
                stopping = true;
                deallocate(&handle, allocated);
                continue;
            }
            () = tokio::time::sleep_until(give_up), if !allocated && !stopping => {
                eprintln!(
                    "pinhole: no allocation from {} within {} s (--timeout): the server did not \
                     answer, or not in time; giving up",
                    handle.current_server(),
                    secs(args.timeout)
                );
                timed_out = true;
                stopping = true;
                handle.deallocate();
                continue;
            }
            _ = ticker.tick(), if chatty && !allocated && !stopping => {
                eprintln!(
                    "no answer yet from {} after {} s",
                    handle.current_server(),
                    started.elapsed().as_secs()
                );
                continue;
            }
        };
        let Some(ev) = ev else {
            // The task ended without saying how: only when it could not even report that.
            eprintln!("pinhole: the allocation's task ended unexpectedly");
            return ExitCode::from(EXIT_UNREACHABLE);
        };
        match ev {
            TurnEvent::Allocation(AllocationEvent::Allocated {
                relayed,
                mapped,
                lifetime: granted,
            }) => {
                lifetime = Some(granted);
                let r: Vec<String> = relayed.iter().map(ToString::to_string).collect();
                emit(
                    json!({
                        "event": "allocated",
                        "relayed": r.first(),
                        "relayed_all": r,
                        "mapped": mapped.map(|m| m.to_string()),
                        "transport": uri.transport.as_str(),
                        "lifetime": granted.as_secs(),
                        "server": handle.current_server().to_string(),
                    }),
                    format!(
                        "allocated: relayed {} mapped {} via {} ({}), lifetime {} s",
                        r.join(", "),
                        mapped.map_or("?".into(), |m| m.to_string()),
                        handle.current_server(),
                        uri.transport.as_str(),
                        granted.as_secs()
                    ),
                );
                for p in &args.peer {
                    handle.bind_channel(*p);
                }
            }
            TurnEvent::Allocation(AllocationEvent::Refreshed { lifetime: granted }) => {
                lifetime = Some(granted);
                emit(
                    json!({"event": "refreshed", "lifetime": granted.as_secs()}),
                    format!("refreshed: lifetime {} s", granted.as_secs()),
                );
            }
            TurnEvent::Allocation(AllocationEvent::ChannelBound { peer, channel }) => emit(
                json!({"event": "channel", "peer": peer.to_string(), "channel": channel}),
                format!("channel {channel:#06x} bound to {peer}"),
            ),
            TurnEvent::Allocation(AllocationEvent::PermissionCreated(ip)) => emit(
                json!({"event": "permission", "peer": ip.to_string()}),
                format!("permission for {ip}"),
            ),
            TurnEvent::Allocation(AllocationEvent::ChannelFailed(peer, e)) => emit(
                json!({"event": "channel_failed", "peer": peer.to_string(), "error": e.to_string()}),
                format!("channel to {peer} failed: {e}"),
            ),
            TurnEvent::Allocation(AllocationEvent::PermissionFailed(ip, e)) => emit(
                json!({"event": "permission_failed", "peer": ip.to_string(), "error": e.to_string()}),
                format!("permission for {ip} failed: {e}"),
            ),
            TurnEvent::Allocation(AllocationEvent::Lost(e)) => {
                eprintln!(
                    "pinhole: allocation {}: {e}",
                    if allocated { "lost" } else { "failed" }
                );
                return ExitCode::from(EXIT_UNREACHABLE);
            }
            TurnEvent::Allocation(AllocationEvent::Deallocated) => {
                if allocated {
                    emit(json!({"event": "deallocated"}), "deallocated".into());
                    return ExitCode::SUCCESS;
                }
                if !timed_out {
                    let detail =
                        "stopped before an allocation was made; nothing is left on the server";
                    emit(json!({"event": "stopped", "detail": detail}), detail.into());
                }
                return ExitCode::from(EXIT_UNREACHABLE);
            }
            TurnEvent::DeallocateUnconfirmed => {
                let secs = DEALLOCATE_TIMEOUT.as_secs();
                match lifetime {
                    Some(l) => {
                        let detail = format!(
                            "the server did not confirm the deallocation within {secs} s: the \
                             allocation expires on its own within its lifetime ({} s)",
                            l.as_secs()
                        );
                        if args.json {
                            emit(
                                json!({"event": "deallocate_unconfirmed", "lifetime": l.as_secs(), "detail": detail}),
                                String::new(),
                            );
                        }
                        eprintln!("pinhole: {detail}");
                        return ExitCode::SUCCESS;
                    }
                    None => {
                        let detail = format!(
                            "stopped while the server was answering the allocation, and it did \
                             not confirm deleting it within {secs} s: an allocation it made \
                             expires on its own within {} s",
                            args.lifetime
                        );
                        if args.json && !timed_out {
                            emit(json!({"event": "stopped", "detail": detail}), String::new());
                        }
                        eprintln!("pinhole: {detail}");
                        return ExitCode::from(EXIT_UNREACHABLE);
                    }
                }
            }
            TurnEvent::Data { peer, data } => {
                if args.echo {
                    handle.send_to(peer, data);
                }
            }
            TurnEvent::SendFailed(peer, e) => {
                tracing::debug!(%peer, error = %e, "send through the relay failed");
            }
            TurnEvent::Disconnected(why) => {
                eprintln!("pinhole: {why}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
            // Events this command does not show (added after it was written).
            other => tracing::debug!(event = ?other, "TURN event not shown"),
        }
    }
}
