//! `pinhole connect` (a peer-to-peer netcat over ICE) and `pinhole signal` (the
//! rendezvous it can use).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pinhole::driver::peer::{IncomingInto, PeerConnection, PeerConnectionEvent};
use pinhole::driver::{self, DEFAULT_STUN_SERVERS};
use pinhole::ice::BirthdayEvent;
use pinhole::ice::{
    Candidate, IceCredentials, IceState, KeepalivePolicy, PORT_ALLOCATION_ATTRIBUTE,
};
use pinhole::netcheck::PortAllocation;
use pinhole::peer::{PeerConfig, TurnServerSpec};
use pinhole::turn::{Credentials, TurnTransport, TurnUri};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{EXIT_UNREACHABLE, seconds, usage};

/// `pinhole signal` arguments.
#[derive(clap::Args)]
pub(crate) struct SignalArgs {
    /// Where to listen (TCP).
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8478")]
    listen: SocketAddr,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS", value_parser = seconds(crate::MAX_SECS))]
    duration: Option<Duration>,
}

/// `pinhole connect` arguments.
#[derive(clap::Args)]
pub(crate) struct ConnectArgs {
    /// The rendezvous: `http://HOST:PORT` of a `pinhole signal`.
    #[arg(
        long,
        value_name = "URL",
        requires = "room",
        conflicts_with = "signal_dir"
    )]
    signal: Option<String>,
    /// The room to meet in (both peers give the same).
    #[arg(long, value_name = "NAME")]
    room: Option<String>,
    /// File-based signalling: a directory both peers can read and write. Each writes its
    /// description lines to `DIR/NAME.sdp` and reads the peer's from `DIR/PEER.sdp`. A
    /// peer file last written more than --timeout before this side started is a dead
    /// run's, and ignored until it is written again.
    #[arg(long, value_name = "DIR", requires_all = ["name", "peer"])]
    signal_dir: Option<PathBuf>,
    /// This side's name, with --signal-dir (the smaller name is the controlling agent).
    #[arg(long, value_name = "ME")]
    name: Option<String>,
    /// The peer's name, with --signal-dir.
    #[arg(long, value_name = "THEM")]
    peer: Option<String>,
    /// A STUN server, `stun:host[:port]`. Repeatable. Default: the public servers that
    /// netcheck uses.
    #[arg(long, value_name = "URI")]
    stun: Vec<String>,
    /// A TURN server: `turn:host[:port]` (UDP), `turn:host[:port]?transport=tcp` (TCP) or
    /// `turns:host[:port]` (TLS; for networks that block UDP). Repeatable.
    #[arg(long, value_name = "URI")]
    turn: Vec<String>,
    /// PEM file of certificates to trust for `turns:` (default: the system roots): CAs, or
    /// the server's own self-signed certificate.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// The TURN user.
    #[arg(long, value_name = "U")]
    user: Option<String>,
    /// The TURN password.
    #[arg(long, value_name = "P", conflicts_with = "secret")]
    password: Option<String>,
    /// The TURN REST shared secret.
    #[arg(long, value_name = "S")]
    secret: Option<String>,
    /// Offer no direct candidates: every datagram crosses the relay.
    #[arg(long, conflicts_with = "no_relay")]
    no_direct: bool,
    /// Use no relay.
    #[arg(long)]
    no_relay: bool,
    /// Ask the gateway for no port mapping. By default the socket is mapped through the
    /// default gateway (PCP, NAT-PMP or UPnP IGD) and the mapping's external address is
    /// offered too (released on exit); gathering waits for it at most 3 s.
    #[arg(long)]
    no_portmap: bool,
    /// Host candidates only on the address toward the servers (one per family), not on
    /// every usable interface (RFC 8445 §5.1.1.1, the default).
    #[arg(long)]
    primary_interface_only: bool,
    /// No host candidate on interfaces whose names start with PREFIX (a VPN, a container
    /// bridge: `tun`, `docker`…). Repeatable.
    #[arg(long, value_name = "PREFIX")]
    ignore_interface: Vec<String>,
    /// Give up when no path is found within this many seconds.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = seconds(3600))]
    timeout: Duration,
    /// Events as JSON lines on stderr.
    #[arg(long)]
    json: bool,
    /// Offer host candidates as mDNS names (`<uuid>.local`, RFC 6762) instead of their
    /// addresses, as browsers do, answering for them on 224.0.0.251:5353; the peer must
    /// be on the same link to resolve them. (The peer's `.local` candidates are resolved
    /// with or without this.)
    #[arg(long)]
    mdns: bool,
    /// Run as an ICE-lite agent (RFC 8445 §2.5), for a host with a public address (a
    /// server): host candidates only, no gathering, no checks of its own; it answers the
    /// peer's checks and follows its nomination. The peer must be a full agent (it
    /// controls). Says `a=ice-lite` in the description.
    #[arg(long, conflicts_with_all = ["no_direct", "mdns"])]
    lite: bool,
    /// No ICE-TCP candidates (RFC 6544). By default each side also offers TCP candidates
    /// (a listening one, an active one and a simultaneous-open one with its mapping from
    /// STUN over TCP), ranked below UDP and above the relay: a network that blocks UDP
    /// still gets a direct path.
    #[arg(long)]
    no_tcp: bool,
    /// No birthday probing. By default, when one side's NAT maps endpoint-dependently
    /// (its gathering saw a new port per server) and plain checks found no direct pair
    /// within --birthday-wait, that side opens --birthday-sockets sockets toward the
    /// other's server-reflexive address and the other probes random ports of its public
    /// IP, within the caps below; both sides must take part (a=ice-options:x-pinhole-birthday).
    #[arg(long)]
    no_birthday: bool,
    /// Birthday probing: sockets the hard side opens (at most 1024).
    #[arg(long, value_name = "N", default_value = "256", value_parser = clap::value_parser!(u16).range(1..=1024))]
    birthday_sockets: u16,
    /// Birthday probing: probes per second, per side (at most 1000).
    #[arg(long, value_name = "N", default_value = "250", value_parser = clap::value_parser!(u32).range(1..=1000))]
    birthday_rate: u32,
    /// Birthday probing: the easy side's probes in all (at most 16384).
    #[arg(long, value_name = "N", default_value = "2048", value_parser = clap::value_parser!(u32).range(1..=16384))]
    birthday_probes: u32,
    /// Birthday probing: how long it may last.
    #[arg(long, value_name = "SECS", default_value = "12", value_parser = seconds(300))]
    birthday_time: Duration,
    /// ICMP hole punching (issue 13): `--icmp-punch server|client` and its flags.
    #[command(flatten)]
    icmp: crate::icmp::IcmpArgs,
    /// Birthday probing: how long plain checks run without a direct pair first.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = seconds(300))]
    birthday_wait: Duration,
    /// The keepalive policy to start with: `foreground` (RFC 7675 consent checks every
    /// 4-6 s, a dead path noticed within 30 s), `background` (the fewest packets that keep
    /// the path's NAT bindings: one check per interval, shared with the peer, the interval
    /// adapting to what the NATs keep, from 25 s up to 240 s) or `suspended` (nothing; on
    /// resume the path is probed and ICE restarts if it is gone). At run time (Unix):
    /// SIGUSR1 switches to background, SIGUSR2 to foreground, SIGTSTP (Ctrl-Z) to
    /// suspended; the process keeps running (Ctrl-Z does not stop it). Each switch is an
    /// event `keepalive` (with `policy`), each new background interval an event
    /// `keepalive-interval` (with `interval_s`).
    #[arg(long, value_enum, value_name = "POLICY", default_value = "foreground")]
    keepalive: Keepalive,
    /// A fixed background keepalive interval instead of the adaptive one (5 to 3600 s).
    /// It applies whenever the policy is background: from the start with `--keepalive
    /// background`, or after SIGUSR1.
    #[arg(long, value_name = "SECS", value_parser = keepalive_secs)]
    keepalive_interval: Option<Duration>,
}

/// `--keepalive`: the policies of [`KeepalivePolicy`].
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Keepalive {
    Foreground,
    Background,
    Suspended,
}

impl From<Keepalive> for KeepalivePolicy {
    fn from(k: Keepalive) -> Self {
        match k {
            Keepalive::Foreground => Self::Foreground,
            Keepalive::Background => Self::Background,
            Keepalive::Suspended => Self::Suspended,
        }
    }
}

/// The name of a policy in events.
fn policy_name(p: KeepalivePolicy) -> &'static str {
    match p {
        KeepalivePolicy::Background => "background",
        KeepalivePolicy::Suspended => "suspended",
        _ => "foreground",
    }
}

/// The shortest `--keepalive-interval`: a background keepalive more frequent than the
/// foreground's consent checks (RFC 7675 §5.1: every 5 s on average) saves nothing.
const MIN_KEEPALIVE_SECS: f64 = 5.0;

/// A value parser for `--keepalive-interval`: 5 to 3600 s.
fn keepalive_secs(s: &str) -> Result<Duration, String> {
    let d = seconds(3600)(s)?;
    if d.as_secs_f64() < MIN_KEEPALIVE_SECS {
        return Err(format!(
            "expected a number of seconds from {MIN_KEEPALIVE_SECS} to 3600"
        ));
    }
    Ok(d)
}

/// How long after a resume (leaving suspended, or coming to the foreground) ICE failing
/// is taken for the resumed path being gone: the connection restarts ICE then
/// ([`pinhole::ice::RESUME_PROBE`] after the resume), and `connect` waits for that.
const RESUME_WAIT: Duration = pinhole::ice::RESUME_PROBE.saturating_add(Duration::from_secs(2));

/// How often `connect` looks at the background keepalive interval (to report a change).
const INTERVAL_POLL: Duration = Duration::from_secs(2);

/// The keepalive policies asked for by signal: SIGUSR1 background, SIGUSR2 foreground,
/// SIGTSTP suspended. `None` where signals cannot be listened to.
fn keepalive_signals() -> Option<mpsc::UnboundedReceiver<KeepalivePolicy>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = mpsc::unbounded_channel();
        for (kind, policy) in [
            (SignalKind::user_defined1(), KeepalivePolicy::Background),
            (SignalKind::user_defined2(), KeepalivePolicy::Foreground),
            (
                SignalKind::from_raw(libc::SIGTSTP),
                KeepalivePolicy::Suspended,
            ),
        ] {
            // Registered now, before the peer connects: a signal that comes early is not
            // the default action (SIGUSR1 and SIGUSR2 end a process, SIGTSTP stops it).
            let mut s = match signal(kind) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "no keepalive signal");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    if tx.send(policy).is_err() {
                        return;
                    }
                }
            });
        }
        Some(rx)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The description lines that carry new ICE credentials (after a restart).
fn credential_lines(c: &IceCredentials) -> String {
    format!("a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", c.ufrag, c.pwd)
}

/// How long `connect` waits for a working pair again once none works (after one did):
/// as long as consent takes to be lost (RFC 7675 §5.1: 30 s).
const RECOVERY_WAIT: Duration = Duration::from_secs(30);

/// A restart of the connection's own (`network-changed`) reported this soon after we
/// restarted in answer to the peer's may have happened before ours: its credentials may be
/// stale.
const CROSSED_RESTART: Duration = Duration::from_secs(2);

/// Runs `pinhole signal`.
pub(crate) async fn signal(args: SignalArgs) -> ExitCode {
    let handle = match driver::signal::serve_signal(args.listen).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("signalling on http://{}", handle.local_addrs()[0]);
    let _ = std::io::stdout().flush();
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stop => {}
        () = crate::shutdown_signal() => {}
    }
    ExitCode::SUCCESS
}

/// A signalling channel: lines out, lines in.
enum Channel {
    Http {
        host: String,
        room: String,
        side: String,
        token: String,
    },
    Dir {
        mine: PathBuf,
    },
}

/// One HTTP/1.1 request to the rendezvous; returns the status and body.
async fn http(host: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(host),
    )
    .await
    .map_err(|_| format!("connecting to {host}: timed out"))?
    .map_err(|e| format!("connecting to {host}: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("signalling: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut out))
        .await
        .map_err(|_| "signalling: no answer".to_owned())?
        .map_err(|e| format!("signalling: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "signalling: not an HTTP answer".to_owned())?;
    Ok((status, body.to_owned()))
}

impl Channel {
    async fn send(&self, msg: &str) -> Result<(), String> {
        match self {
            Self::Http {
                host,
                room,
                side,
                token,
            } => {
                let path = format!("/v1/rooms/{room}/{side}?token={token}");
                let (status, body) = http(host, "POST", &path, msg).await?;
                if status == 204 {
                    Ok(())
                } else {
                    Err(format!("signalling answered {status}: {body}"))
                }
            }
            Self::Dir { mine } => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(mine)
                    .map_err(|e| format!("{}: {e}", mine.display()))?;
                f.write_all(msg.as_bytes())
                    .map_err(|e| format!("{}: {e}", mine.display()))
            }
        }
    }
}

/// How often `--signal-dir` reads the peer's file while connecting: every line the peer
/// writes then waits up to this long, and the connection with it.
const DIR_POLL_CONNECTING: Duration = Duration::from_millis(5);
/// How often once connected (later lines are trickled candidates, not urgent).
const DIR_POLL_CONNECTED: Duration = Duration::from_millis(50);
/// What the `--signal-dir` reader reports, once, about a peer file older than the session.
const STALE: &str =
    "the peer's file is older than --timeout: a dead run's; waiting for it to be written again";

/// Reads the peer's messages in the background, line by line. `connected` (set by the
/// caller) slows the `--signal-dir` polling down.
fn receive(
    channel: &Channel,
    theirs: Option<PathBuf>,
    connected: Arc<AtomicBool>,
    stale_before: std::time::SystemTime,
    renew: Arc<tokio::sync::Notify>,
) -> mpsc::UnboundedReceiver<Result<String, String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    match channel {
        Channel::Http {
            host,
            room,
            side,
            token,
        } => {
            let (host, room, side, token) =
                (host.clone(), room.clone(), side.clone(), token.clone());
            tokio::spawn(async move {
                let mut after = 0u64;
                loop {
                    let path =
                        format!("/v1/rooms/{room}/{side}?token={token}&after={after}&wait=5");
                    // After a network change the long poll's connection is from an
                    // address that is gone: its answer would never come. Ask again.
                    let got = tokio::select! {
                        got = http(&host, "GET", &path, "") => got,
                        () = renew.notified() => continue,
                    };
                    let got = got.and_then(|(status, body)| {
                        if status != 200 {
                            return Err(format!("signalling answered {status}: {body}"));
                        }
                        serde_json::from_str::<serde_json::Value>(&body)
                            .map_err(|e| format!("signalling: {e}"))
                    });
                    match got {
                        Ok(v) => {
                            for m in v["messages"].as_array().into_iter().flatten() {
                                for line in m.as_str().unwrap_or_default().lines() {
                                    if tx.send(Ok(line.to_owned())).is_err() {
                                        return;
                                    }
                                }
                            }
                            after = v["next"].as_u64().unwrap_or(after);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            });
        }
        Channel::Dir { .. } => {
            let Some(path) = theirs else { return rx };
            tokio::spawn(async move {
                let mut seen = 0usize;
                let mut said_stale = false;
                loop {
                    // A file from a run that ended long ago (a crashed or finished peer)
                    // is not this session's: wait for the peer to write it again.
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < stale_before);
                    if stale && !said_stale {
                        said_stale = true;
                        let _ = tx.send(Err(STALE.to_owned()));
                    }
                    let text = if stale {
                        None
                    } else {
                        std::fs::read_to_string(&path).ok()
                    };
                    if let Some(text) = text {
                        // Whole lines only: the writer may be mid-line.
                        // A file shorter than what was read: the peer started again.
                        if text.len() < seen {
                            seen = 0;
                        }
                        let complete = text.rfind('\n').map_or(0, |i| i + 1);
                        if complete > seen {
                            for line in text[seen..complete].lines() {
                                if tx.send(Ok(line.to_owned())).is_err() {
                                    return;
                                }
                            }
                            seen = complete;
                        }
                    }
                    tokio::time::sleep(if connected.load(Ordering::Relaxed) {
                        DIR_POLL_CONNECTED
                    } else {
                        DIR_POLL_CONNECTING
                    })
                    .await;
                }
            });
        }
    }
    rx
}

/// Prints one of the timing events of `--json` (for benchmarks, such as the NAT lab's
/// comparison with libnice), with `elapsed_ms` added: `remote-description` (the peer's
/// credentials and `a=end-of-candidates` are in; with `unix_ms`, the wall clock then, which
/// lines up the two sides' clocks), `valid-pair` (the best valid pair before any is
/// nominated) and `first-data` (the first datagram from the peer).
fn timing_event(mut v: serde_json::Value, started: Instant) {
    v["elapsed_ms"] = json!((started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    eprintln!("{v}");
}

fn candidate_json(c: &Candidate) -> serde_json::Value {
    let mut v = json!({
        "type": c.kind.as_str(),
        "address": c.socket_addr().map(|a| a.to_string()),
        "transport": c.transport.as_str().to_ascii_lowercase(),
    });
    if let Some(t) = c.tcp_type {
        v["tcptype"] = json!(t.as_str());
    }
    v
}

/// Runs `pinhole connect`.
pub(crate) async fn connect(args: ConnectArgs) -> ExitCode {
    if args.icmp.icmp_punch.is_some() {
        return crate::icmp::run(&args.icmp, &args.stun, args.timeout, args.json).await;
    }
    // The arguments first: a usage error asks no server anything (not even DNS).
    match (&args.signal, &args.signal_dir) {
        (Some(url), None) if !url.starts_with("http://") => {
            return usage("--signal takes http://HOST:PORT");
        }
        (Some(_), None) => {}
        (None, Some(_)) => {
            let (me, them) = (
                args.name.as_deref().unwrap_or_default(),
                args.peer.as_deref().unwrap_or_default(),
            );
            let ok = |n: &str| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !ok(me) || !ok(them) || me == them {
                return usage("--name and --peer: two different names of A-Z a-z 0-9 - _");
            }
        }
        _ => {
            return usage(
                "give --signal URL --room NAME, or --signal-dir DIR --name ME --peer THEM",
            );
        }
    }
    if args.no_direct && args.turn.is_empty() {
        return usage("--no-direct needs a --turn server");
    }
    // Servers.
    let stun_uris: Vec<String> = if args.stun.is_empty() {
        DEFAULT_STUN_SERVERS
            .iter()
            .map(ToString::to_string)
            .collect()
    } else {
        args.stun.clone()
    };
    let stun = match driver::resolve(&stun_uris).await {
        Ok((s, _)) => s.into_iter().map(|s| s.addr).collect::<Vec<_>>(),
        Err(e) => return usage(e),
    };
    let ca_pem = match args.ca.as_deref().map(crate::read_ca).transpose() {
        Ok(pem) => pem,
        Err(e) => return usage(e),
    };
    let mut turn = Vec::new();
    for uri in &args.turn {
        let u: TurnUri = match uri.parse() {
            Ok(u) => u,
            Err(e) => return usage(format!("--turn {uri}: {e}")),
        };
        let Some(user) = args.user.as_deref().filter(|u| !u.is_empty()) else {
            return usage("--turn needs --user");
        };
        let credentials = match (&args.password, &args.secret) {
            (Some(p), _) if !p.is_empty() => Credentials::long_term(user, p),
            (None, Some(s)) if !s.is_empty() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Credentials::rest(user, s.as_bytes(), now, 24 * 3600)
            }
            _ => return usage("--turn needs a non-empty --password or --secret"),
        };
        let server = match tokio::net::lookup_host((u.host.as_str(), u.port)).await {
            Ok(mut a) => match a.find(SocketAddr::is_ipv4) {
                Some(a) => a,
                None => return usage(format!("--turn {uri}: no IPv4 address")),
            },
            Err(e) => {
                eprintln!("pinhole: resolving {}: {e}", u.host);
                return ExitCode::from(EXIT_UNREACHABLE);
            }
        };
        let mut spec = TurnServerSpec::new(server, credentials);
        if u.transport != TurnTransport::Udp {
            spec = spec.over(u.transport, Some(u.host.clone()));
        }
        if let Some(pem) = &ca_pem {
            spec = spec.with_ca(pem.clone());
        }
        turn.push(spec);
    }
    if args.no_direct && turn.is_empty() {
        return usage("--no-direct needs a --turn server");
    }
    // Signalling.
    let (channel, theirs, controlling) = match (&args.signal, &args.signal_dir) {
        (Some(url), None) => {
            let Some(host) = url.strip_prefix("http://").map(|h| h.trim_end_matches('/')) else {
                return usage("--signal takes http://HOST:PORT");
            };
            let room = args.room.clone().unwrap_or_default();
            let (status, body) =
                match http(host, "POST", &format!("/v1/rooms/{room}/join"), "").await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("pinhole: {e}");
                        return ExitCode::from(EXIT_UNREACHABLE);
                    }
                };
            if status != 200 {
                eprintln!("pinhole: joining room {room}: {status} {body}");
                return ExitCode::from(EXIT_UNREACHABLE);
            }
            let joined = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
            let field = |k: &str| joined[k].as_str().unwrap_or_default().to_owned();
            let (side, token) = (field("peer"), field("token"));
            let controlling = side == "a";
            (
                Channel::Http {
                    host: host.to_owned(),
                    room,
                    side,
                    token,
                },
                None,
                controlling,
            )
        }
        (None, Some(dir)) => {
            let (me, them) = (
                args.name.clone().unwrap_or_default(),
                args.peer.clone().unwrap_or_default(),
            );
            let ok = |n: &str| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !ok(&me) || !ok(&them) || me == them {
                return usage("--name and --peer: two different names of A-Z a-z 0-9 - _");
            }
            let mine = dir.join(format!("{me}.sdp"));
            let _ = std::fs::remove_file(&mine);
            (
                Channel::Dir { mine },
                Some(dir.join(format!("{them}.sdp"))),
                me < them,
            )
        }
        _ => {
            return usage(
                "give --signal URL --room NAME, or --signal-dir DIR --name ME --peer THEM",
            );
        }
    };
    let mut config = PeerConfig::default();
    config.stun_servers = stun;
    config.turn_servers = turn;
    config.relay_only = args.no_direct;
    config.no_relay = args.no_relay;
    config.port_mapping = !args.no_portmap && !args.no_direct;
    config.primary_interface_only = args.primary_interface_only;
    config.ignore_interfaces = args.ignore_interface.clone();
    // Birthday probing (issue 13): on unless --no-birthday, and never without direct
    // candidates.
    config.birthday.enabled = !args.no_birthday && !args.no_direct && !args.lite;
    config.ice.lite = args.lite;
    config.ice_tcp = !args.no_tcp && !args.no_direct && !args.lite;
    config.birthday.sockets = usize::from(args.birthday_sockets);
    config.birthday.probes_per_second = args.birthday_rate;
    config.birthday.max_probes = args.birthday_probes;
    config.birthday.max_duration = args.birthday_time;
    config.birthday.wait = args.birthday_wait;
    let birthday = config.birthday.enabled;
    // Keepalives (issue 14): the policy to start with, and a fixed background interval.
    config.keepalive = args.keepalive.into();
    config.ice.keepalive_interval = args.keepalive_interval;
    let mut policy = config.keepalive;
    let mut policies = keepalive_signals();
    // One dual-stack socket (a host candidate of each family the host routes); IPv4 alone
    // where the system has no IPv6.
    let dual = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
    let started = match PeerConnection::start(config.clone(), dual, controlling).await {
        Ok(p) => Ok(p),
        Err(e) => {
            tracing::debug!(error = %e, "no dual-stack socket: IPv4 only");
            PeerConnection::start(config, SocketAddr::from(([0, 0, 0, 0], 0)), controlling).await
        }
    };
    let mut pc = match started {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Until the peer's a=ice-options says `renomination`, it is nominated once (RFC 8445
    // §8.1.1: webrtc-ice, for one, keeps the first pair nominated to it).
    pc.set_remote_renomination(false);
    if args.mdns
        && let Err(e) = pc.publish_mdns()
    {
        eprintln!("pinhole: publishing mDNS names: {e}");
        return ExitCode::FAILURE;
    }
    let creds = pc.local_credentials().clone();
    if let Err(e) = channel
        .send(&format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=ice-options:trickle {}{}\r\na=ice-pacing:{}\r\n{}",
            creds.ufrag,
            creds.pwd,
            pinhole::ice::RENOMINATION,
            if birthday {
                format!(" {}", pinhole::ice::birthday::ICE_OPTION)
            } else {
                String::new()
            },
            pc.pacing_ms(),
            if args.lite { "a=ice-lite\r\n" } else { "" }
        ))
        .await
    {
        eprintln!("pinhole: {e}");
        return ExitCode::from(EXIT_UNREACHABLE);
    }
    let polling_slow = Arc::new(AtomicBool::new(false));
    let stale_before = std::time::SystemTime::now()
        .checked_sub(args.timeout)
        .unwrap_or(std::time::UNIX_EPOCH);
    let renew = Arc::new(tokio::sync::Notify::new());
    let mut incoming = receive(
        &channel,
        theirs,
        Arc::clone(&polling_slow),
        stale_before,
        Arc::clone(&renew),
    );
    let json = args.json;
    let say = |v: serde_json::Value, text: String| {
        if json {
            eprintln!("{v}");
        } else {
            eprintln!("{text}");
        }
    };
    let started = Instant::now();
    let give_up = tokio::time::Instant::now() + args.timeout;
    let (mut ufrag, mut pwd) = (None::<String>, None::<String>);
    // ICE restarts (RFC 8445 §9): the peer's credentials in use, and whether we restarted
    // since we took them (then new ones from the peer answer our restart; otherwise they
    // are the peer's restart, which we answer with one of ours).
    let mut remote_creds: Option<IceCredentials> = None;
    // Since when no pair works (after one did), if none does now.
    let mut interrupted_at: Option<tokio::time::Instant> = None;
    let mut restarted = false;
    // When we last restarted in answer to the peer's restart (see `CROSSED_RESTART`).
    let mut answered_at: Option<tokio::time::Instant> = None;
    let mut connected = false;
    // A pair works (nominated or not): data may flow. RFC 8445 lets either side send on
    // any valid pair; waiting for the nomination costs a round trip for nothing.
    let mut usable = false;
    // Timing events for benchmarks (--json only; see `timing_event`).
    let (mut have_credentials, mut have_end, mut described) = (false, false, false);
    let mut got_data = false;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 1200];
    // Datagrams from the peer land here, one at a time (no allocation per datagram).
    let mut rbuf = vec![0u8; 65_536];
    let (mut local_done, mut remote_done) = (false, false);
    let interrupted = crate::shutdown_signal();
    tokio::pin!(interrupted);
    // The background interval last reported (it adapts; reported when it changes).
    let mut reported_interval: Option<Duration> = None;
    // When the policy last resumed (see `RESUME_WAIT`).
    let mut resumed_at: Option<tokio::time::Instant> = None;
    let mut interval_poll = tokio::time::interval(INTERVAL_POLL);
    interval_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let code = 'session: loop {
        if local_done && remote_done {
            let _ = stdout.flush().await;
            // Our end-of-data datagrams must leave before the process does.
            pc.flush().await;
            break 'session ExitCode::SUCCESS;
        }
        tokio::select! {
            next = pc.next_into(&mut rbuf) => {
                let ev = match next {
                    None => break 'session ExitCode::FAILURE,
                    Some(IncomingInto::Data { len: 0, .. }) => {
                        remote_done = true;
                        continue;
                    }
                    Some(IncomingInto::Data { len, .. }) => {
                        let d = &rbuf[..len];
                        if json && !got_data {
                            got_data = true;
                            timing_event(json!({"event": "first-data", "bytes": d.len()}), started);
                        }
                        if stdout.write_all(d).await.is_err() {
                            break 'session ExitCode::FAILURE;
                        }
                        let _ = stdout.flush().await;
                        continue;
                    }
                    Some(IncomingInto::Event(ev)) => *ev,
                };
                if matches!(ev, PeerConnectionEvent::SelectedPair { .. }) {
                    usable = true;
                }
                match ev {
                    PeerConnectionEvent::Candidate(c) => {
                        if let Err(e) = channel.send(&format!("a={c}\r\n")).await {
                            eprintln!("pinhole: {e}");
                            break 'session ExitCode::from(EXIT_UNREACHABLE);
                        }
                    }
                    PeerConnectionEvent::GatheringComplete => {
                        // How our NAT allocates ports (issue 13): a peer that reads it
                        // predicts our ports when they are sequential; others ignore it.
                        let allocation = pc
                            .port_allocation()
                            .and_then(|a| a.to_attribute())
                            .map(|v| format!("a={PORT_ALLOCATION_ATTRIBUTE}:{v}\r\n"))
                            .unwrap_or_default();
                        if let Err(e) = channel
                            .send(&format!("{allocation}a=end-of-candidates\r\n"))
                            .await
                        {
                            eprintln!("pinhole: {e}");
                            break 'session ExitCode::from(EXIT_UNREACHABLE);
                        }
                    }
                    PeerConnectionEvent::SelectedPair { local, remote, nominated: true, rtt } => {
                        let event = if connected { "path-changed" } else { "connected" };
                        connected = true;
                        polling_slow.store(true, Ordering::Relaxed);
                        say(
                            json!({
                                "event": event,
                                "local": candidate_json(&local),
                                "remote": candidate_json(&remote),
                                "rtt_ms": rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
                                "elapsed_ms": (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
                            }),
                            format!(
                                "{event}: {} {} <-> {} {} (rtt {}, after {:.0} ms)",
                                local.kind.as_str(),
                                local.socket_addr().map_or("?".into(), |a| a.to_string()),
                                remote.kind.as_str(),
                                remote.socket_addr().map_or("?".into(), |a| a.to_string()),
                                rtt.map_or("?".into(), |r| format!("{:.1} ms", r.as_secs_f64() * 1e3)),
                                started.elapsed().as_secs_f64() * 1e3
                            ),
                        );
                    }
                    PeerConnectionEvent::SelectedPair { local, remote, nominated: false, rtt } if json => {
                        timing_event(
                            json!({
                                "event": "valid-pair",
                                "local": candidate_json(&local),
                                "remote": candidate_json(&remote),
                                "rtt_ms": rtt.map(|r| (r.as_secs_f64() * 1e6).round() / 1e3),
                            }),
                            started,
                        );
                    }
                    PeerConnectionEvent::State(IceState::Failed)
                        if resumed_at.is_some_and(|t| t.elapsed() <= RESUME_WAIT) =>
                    {
                        // A resumed path that did not answer: the connection restarts ICE
                        // (`network-changed` follows), so this is not the end.
                        say(
                            json!({"event": "interrupted", "reason": "the resumed path did not answer: restarting ICE", "wait_s": RECOVERY_WAIT.as_secs()}),
                            format!("interrupted: the resumed path did not answer; restarting ICE, waiting up to {} s", RECOVERY_WAIT.as_secs()),
                        );
                        interrupted_at.get_or_insert(tokio::time::Instant::now());
                    }
                    PeerConnectionEvent::State(IceState::Failed) => {
                        let reason = "no path: every candidate pair failed";
                        say(json!({"event": "disconnected", "reason": reason}), format!("disconnected: {reason}"));
                        break 'session ExitCode::from(EXIT_UNREACHABLE);
                    }
                    PeerConnectionEvent::State(IceState::Disconnected) => {
                        // No working pair now (consent lost, RFC 7675; a relay lost):
                        // the connection may still find one (a relay allocated again, a
                        // network change, the peer's restart). Wait that long for it.
                        say(
                            json!({"event": "interrupted", "reason": "no working pair: waiting for one", "wait_s": RECOVERY_WAIT.as_secs()}),
                            format!("interrupted: no working pair; waiting up to {} s", RECOVERY_WAIT.as_secs()),
                        );
                        interrupted_at.get_or_insert(tokio::time::Instant::now());
                    }
                    PeerConnectionEvent::State(IceState::Connected) if interrupted_at.is_some() => {
                        interrupted_at = None;
                        say(json!({"event": "resumed"}), "resumed: a pair works again".into());
                    }
                    PeerConnectionEvent::NetworkChanged { credentials } => {
                        // The built-in monitor restarted ICE on the new network (or a
                        // resumed path was gone): the peer needs our new credentials (the
                        // candidates follow as events).
                        say(json!({"event": "network-changed"}), "network changed: restarting ICE".into());
                        // Both sides restarting at once (both resumed): the peer's new
                        // credentials may have come, and our answering restart gone out,
                        // between this restart and its event. The event's credentials are
                        // then stale; a restart of our own again makes sure that what the
                        // peer gets is what the agent uses (it answers with one more).
                        let credentials = if answered_at.take().is_some_and(|t| t.elapsed() < CROSSED_RESTART) {
                            pc.restart()
                        } else {
                            credentials
                        };
                        restarted = true;
                        renew.notify_one();
                        if let Err(e) = channel.send(&credential_lines(&credentials)).await {
                            eprintln!("pinhole: {e}");
                            break 'session ExitCode::from(EXIT_UNREACHABLE);
                        }
                    }
                    PeerConnectionEvent::RelayFailed(e) => {
                        say(json!({"event": "relay-failed", "error": e}), format!("relay failed: {e}"));
                    }
                    PeerConnectionEvent::Birthday(BirthdayEvent::Found { local, remote, probes, after, .. }) => {
                        say(
                            json!({
                                "event": "birthday-found",
                                "local": local.to_string(),
                                "remote": remote.to_string(),
                                "probes": probes,
                                "after_ms": (after.as_secs_f64() * 1e6).round() / 1e3,
                            }),
                            format!(
                                "birthday probing: {local} <-> {remote} after {probes} probes, {:.0} ms",
                                after.as_secs_f64() * 1e3
                            ),
                        );
                    }
                    PeerConnectionEvent::Birthday(BirthdayEvent::GaveUp { probes, .. }) => {
                        say(
                            json!({"event": "birthday-gave-up", "probes": probes}),
                            format!("birthday probing gave up after {probes} probes"),
                        );
                    }
                    PeerConnectionEvent::CandidateUnresolved(name) => {
                        say(
                            json!({"event": "mdns-unresolved", "name": name}),
                            format!("peer candidate {name} unresolved (mDNS): ignored"),
                        );
                    }
                    _ => {}
                }
            }
            line = incoming.recv() => {
                match line {
                    Some(Ok(line)) => {
                        let line = line.trim();
                        if let Some(u) = line.strip_prefix("a=ice-ufrag:") {
                            ufrag = Some(u.to_owned());
                        } else if let Some(p) = line.strip_prefix("a=ice-pwd:") {
                            pwd = Some(p.to_owned());
                        } else if line.starts_with("a=candidate:") {
                            match Candidate::parse(line) {
                                Ok(c) => pc.add_remote_candidate(c),
                                Err(e) => tracing::debug!(error = %e, "peer candidate ignored"),
                            }
                        } else if let Some(options) = line.strip_prefix("a=ice-options:") {
                            // A peer that does not follow renomination is nominated once
                            // (RFC 8445 §8.1.1); pinhole's own description says it does.
                            pc.set_remote_renomination(
                                options
                                    .split_ascii_whitespace()
                                    .any(|o| o == pinhole::ice::RENOMINATION),
                            );
                            // Birthday probing needs both sides (issue 13).
                            pc.set_remote_birthday(
                                options
                                    .split_ascii_whitespace()
                                    .any(|o| o == pinhole::ice::birthday::ICE_OPTION),
                            );
                        } else if let Some(ms) = line.strip_prefix("a=ice-pacing:") {
                            // RFC 8839 §5.2; a value that is not a number is ignored.
                            match ms.trim().parse::<u32>() {
                                Ok(ms) => pc.set_remote_pacing(ms),
                                Err(_) => tracing::debug!("peer's a=ice-pacing ignored: not a number"),
                            }
                        } else if let Some(v) = line
                            .strip_prefix("a=")
                            .and_then(|l| l.strip_prefix(PORT_ALLOCATION_ATTRIBUTE))
                            .and_then(|l| l.strip_prefix(':'))
                        {
                            // Tolerant: a value not understood is ignored.
                            match PortAllocation::parse_attribute(v) {
                                Some(a) => pc.set_remote_port_allocation(a),
                                None => tracing::debug!("peer's port allocation not understood"),
                            }
                        } else if line == "a=ice-lite" {
                            // An ICE-lite peer (a server with a public address): this side
                            // controls and nominates (RFC 8445 §6.1.1).
                            pc.set_remote_lite(true);
                        } else if line == "a=end-of-candidates" {
                            pc.end_of_remote_candidates();
                            have_end = true;
                        }
                        if ufrag.is_some() && pwd.is_some() {
                            let (u, p) = (ufrag.take().unwrap_or_default(), pwd.take().unwrap_or_default());
                            let creds = IceCredentials { ufrag: u, pwd: p };
                            if remote_creds.as_ref().is_some_and(|r| *r != creds) {
                                if restarted {
                                    // The answer to our restart.
                                    restarted = false;
                                } else {
                                    // RFC 8445 §9: the peer restarted (its network changed):
                                    // so do we, and it gets our new credentials.
                                    say(json!({"event": "peer-restarted"}), "the peer restarted ICE: restarting".into());
                                    let ours = pc.restart();
                                    answered_at = Some(tokio::time::Instant::now());
                                    if let Err(e) = channel.send(&credential_lines(&ours)).await {
                                        eprintln!("pinhole: {e}");
                                        break 'session ExitCode::from(EXIT_UNREACHABLE);
                                    }
                                }
                            }
                            if remote_creds.as_ref() != Some(&creds) {
                                pc.set_remote_credentials(creds.clone());
                                remote_creds = Some(creds);
                            }
                            have_credentials = true;
                        }
                        if json && have_credentials && have_end && !described {
                            described = true;
                            let unix_ms = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3);
                            timing_event(
                                json!({"event": "remote-description", "unix_ms": unix_ms}),
                                started,
                            );
                        }
                    }
                    Some(Err(e)) if e == STALE => {
                        say(json!({"event": "stale-peer-file"}), format!("pinhole: {e}"));
                    }
                    Some(Err(e)) => {
                        eprintln!("pinhole: {e}");
                        break 'session ExitCode::from(EXIT_UNREACHABLE);
                    }
                    None => {}
                }
            }
            n = stdin.read(&mut buf), if usable && !local_done => {
                match n {
                    Ok(0) | Err(_) => {
                        // End of our direction: an empty datagram, a few times (UDP).
                        for _ in 0..3 {
                            pc.send([]).await;
                        }
                        local_done = true;
                    }
                    Ok(n) => pc.send(&buf[..n]).await,
                }
            }
            () = tokio::time::sleep_until(give_up), if !connected && !usable => {
                say(
                    json!({"event": "disconnected", "reason": "no path within --timeout"}),
                    format!("no path within {} s (--timeout)", args.timeout.as_secs()),
                );
                break 'session ExitCode::from(EXIT_UNREACHABLE);
            }
            () = tokio::time::sleep_until(
                interrupted_at.map_or_else(tokio::time::Instant::now, |t| t + RECOVERY_WAIT)
            ), if interrupted_at.is_some() => {
                let reason = "no working pair: consent lost (RFC 7675) and nothing recovered";
                say(json!({"event": "disconnected", "reason": reason}), format!("disconnected: {reason}"));
                break 'session ExitCode::from(EXIT_UNREACHABLE);
            }
            asked = async { policies.as_mut()?.recv().await }, if policies.is_some() => {
                let Some(asked) = asked else {
                    // No signal listener any more: none will come.
                    policies = None;
                    continue;
                };
                if asked != policy {
                    // Leaving suspended, or coming to the foreground, is a resume: the path
                    // is probed, and ICE restarts if it does not answer.
                    if policy == KeepalivePolicy::Suspended || asked == KeepalivePolicy::Foreground {
                        resumed_at = Some(tokio::time::Instant::now());
                    }
                    policy = asked;
                    pc.set_keepalive_policy(policy);
                    let name = policy_name(policy);
                    say(json!({"event": "keepalive", "policy": name}), format!("keepalive: {name}"));
                    // A background interval is reported afresh in each background spell.
                    reported_interval = None;
                }
            }
            _ = interval_poll.tick(), if policy == KeepalivePolicy::Background => {
                let now = pc.keepalive_interval();
                if reported_interval != Some(now) {
                    reported_interval = Some(now);
                    let secs = (now.as_secs_f64() * 1e3).round() / 1e3;
                    say(
                        json!({"event": "keepalive-interval", "interval_s": secs}),
                        format!("keepalive interval: {secs} s"),
                    );
                }
            }
            () = &mut interrupted => {
                say(json!({"event": "disconnected", "reason": "interrupted"}), "interrupted".into());
                break 'session ExitCode::from(EXIT_UNREACHABLE);
            }
        }
    };
    // Whatever the outcome, a port mapping made for the socket is deleted before exit.
    pc.close().await;
    code
}
