//! `pinhole`: the command-line face of the pinhole NAT traversal library.

mod connect;
mod demo;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};
use pinhole::driver::portmap::GatewayTarget;
use pinhole::driver::{self, DEFAULT_STUN_SERVERS, ServeHandle};
use pinhole::netcheck::{NetcheckConfig, NetcheckEvent, Report, ServerSpec};
use pinhole::portmap::{
    MapProtocol, MapperConfig, MapperEvent, Mapping, ProbeReport, ReleaseOutcome, VerifyConfig,
    Via, ViaChoice,
};
use pinhole::stun::ServerConfig;
use serde_json::json;

/// Exit code when the probe could not reach any server.
const EXIT_UNREACHABLE: u8 = 1;
/// Exit code for usage errors (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "pinhole",
    version,
    about = "NAT traversal: discover, map, relay, connect"
)]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `debug` or `pinhole=trace`.
    /// Defaults to the RUST_LOG environment variable, else `warn`.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Discover the NAT's behaviour (RFC 5780 / RFC 4787): mapping, filtering,
    /// hairpinning, the address others see, and what it means for connectivity.
    Netcheck(NetcheckArgs),
    /// Run a STUN server (Binding; RFC 5780 when given an alternate address).
    Serve(ServeArgs),
    /// Ask the gateway to forward a port (PCP, NAT-PMP or UPnP IGD), keep the mapping
    /// renewed until interrupted, then delete it.
    Map(MapArgs),
    /// Allocate a relayed address on a TURN server (RFC 8656), optionally echo peers'
    /// datagrams back through it, then deallocate.
    Allocate(AllocateArgs),
    /// Connect two peers on this machine (STUN, TURN and signalling embedded on
    /// loopback): directly, then through the relay; print candidates, the selected pairs,
    /// time to connect and throughput.
    Demo(demo::DemoArgs),
    /// Connect to a peer through NATs (ICE over STUN and TURN), meeting it through a
    /// `pinhole signal` room or a shared directory; then carry stdin to the peer and the
    /// peer's data to stdout (a peer-to-peer netcat). Events go to stderr.
    Connect(connect::ConnectArgs),
    /// Run the rendezvous `pinhole connect` meets in (rooms of two; HTTP, see the README).
    Signal(connect::SignalArgs),
}

#[derive(clap::Args)]
struct AllocateArgs {
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ViaArg {
    Any,
    Pcp,
    Natpmp,
    Upnp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Udp,
    Tcp,
}

#[derive(clap::Args)]
struct MapArgs {
    /// The internal port to map (another program listens on it; pinhole does not bind it).
    #[arg(
        long,
        value_parser = clap::value_parser!(u16).range(1..),
        required_unless_present_any = ["list", "delete"],
        conflicts_with_all = ["list", "delete"]
    )]
    port: Option<u16>,
    /// The transport.
    #[arg(long, value_enum, default_value = "udp")]
    protocol: ProtocolArg,
    /// Lifetime to ask for, seconds (the gateway may grant less).
    #[arg(long, value_name = "SECS", default_value_t = 7200, value_parser = clap::value_parser!(u32).range(1..))]
    lifetime: u32,
    /// Which protocol to use (`any` prefers PCP, then NAT-PMP, then UPnP). With
    /// `--delete`: which protocols to ask.
    #[arg(long, value_enum, default_value = "any")]
    via: ViaArg,
    /// Map, print and delete.
    #[arg(long)]
    once: bool,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// The gateway (default: from the routing table). UPnP then searches only there.
    #[arg(long, value_name = "IP")]
    gateway: Option<IpAddr>,
    /// This host's address toward the gateway (default: what the kernel would use).
    #[arg(long, value_name = "IP", requires = "gateway")]
    local_ip: Option<IpAddr>,
    /// Verify that traffic arrives through the mapping with this RFC 5780 STUN server
    /// (`stun:host[:port]`), after every new mapping and every `--verify-interval`; a
    /// mapping that does not forward is deleted and added again. UDP only. pinhole then
    /// binds the mapped port itself to hear the answer, so it must be free. With `--once`,
    /// the verification's outcome is printed before the mapping is deleted.
    #[arg(long, value_name = "URI")]
    verify: Option<String>,
    /// Seconds between verifications (at most a day).
    #[arg(long, value_name = "SECS", default_value_t = 300, requires = "verify", value_parser = clap::value_parser!(u64).range(1..=MAX_VERIFY_INTERVAL_SECS))]
    verify_interval: u64,
    /// List the gateway's port mappings (UPnP IGD; PCP and NAT-PMP have no operation to
    /// list mappings), then exit.
    #[arg(
        long,
        conflicts_with_all = ["once", "verify", "verify_interval", "lifetime", "delete", "protocol"]
    )]
    list: bool,
    /// Delete the mapping of PORT that another program left behind (a crash), then exit:
    /// PCP and NAT-PMP with lifetime 0 for internal port PORT, UPnP DeletePortMapping for
    /// external port PORT, over every protocol `--via` allows.
    #[arg(
        long,
        value_name = "PORT",
        value_parser = clap::value_parser!(u16).range(1..),
        conflicts_with_all = ["once", "verify", "verify_interval", "lifetime", "list"]
    )]
    delete: Option<u16>,
}

/// `map --verify-interval`'s upper bound, seconds: the core's longest interval.
const MAX_VERIFY_INTERVAL_SECS: u64 = pinhole::portmap::MAX_VERIFY_INTERVAL.as_secs();

#[derive(clap::Args)]
struct NetcheckArgs {
    /// A STUN server, `stun:host[:port]` (RFC 7064; UDP). Repeatable. Without it, the
    /// public servers listed in the README are used.
    #[arg(long = "stun", value_name = "URI", conflicts_with = "embedded")]
    stun: Vec<String>,
    /// Start an RFC 5780 server on 127.0.0.1 and 127.0.0.2 inside this process and probe
    /// it: the whole job on one machine, no network needed.
    #[arg(long)]
    embedded: bool,
    /// Print one JSON object instead of a table (and no progress on stderr).
    #[arg(long)]
    json: bool,
    /// Time budget in seconds for the tests, at most 3600; with --lifetime, the 180 s of
    /// the binding-lifetime test come on top.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "10",
        value_parser = seconds(3600),
        allow_negative_numbers = true
    )]
    timeout: Duration,
    /// Also measure the NAT binding lifetime (RFC 5780 §4.6): bindings left idle for 10,
    /// 20, 40, 60, 120 and 180 s. Takes about three minutes; Ctrl-C prints what was found.
    #[arg(long)]
    lifetime: bool,
    /// Skip the hairpinning test.
    #[arg(long)]
    no_hairpin: bool,
    /// Do not probe the gateway for PCP, NAT-PMP and UPnP (implied by --embedded).
    #[arg(long)]
    no_portmap: bool,
    /// The gateway to probe for port mapping (default: from the routing table): a unicast
    /// address.
    #[arg(
        long,
        value_name = "IP",
        value_parser = unicast_ip,
        conflicts_with_all = ["embedded", "no_portmap"]
    )]
    gateway: Option<IpAddr>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The primary address. With --alternate it must be a concrete IP.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:3478")]
    primary: SocketAddr,
    /// The alternate address (different IP and port): enables RFC 5780.
    #[arg(long, value_name = "IP:PORT")]
    alternate: Option<SocketAddr>,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS", value_parser = seconds(MAX_SECS))]
    duration: Option<Duration>,
    /// Requests answered per second from one source IP (bursts of twice that); the rest
    /// are dropped. For the TURN server: answers before authentication (Binding, 401,
    /// 438). 0 turns the limit off.
    #[arg(long, value_name = "N", default_value_t = pinhole::stun::DEFAULT_RATE_LIMIT.per_second,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    rate_limit: u32,
    /// Run a TURN server (for development and tests; use coturn in production) on
    /// --primary instead of the STUN server: UDP allocations with long-term (--user) or
    /// REST (--secret) credentials. Safe by default: it relays only to global unicast
    /// peers (see --allow-loopback-peers, --allow-peer).
    #[arg(long, conflicts_with = "alternate")]
    turn: bool,
    /// A TURN user, `name:password`. Repeatable.
    #[arg(long, value_name = "NAME:PASSWORD", requires = "turn")]
    user: Vec<String>,
    /// TURN REST shared secret (as coturn's static-auth-secret).
    #[arg(long, value_name = "SECRET", requires = "turn")]
    secret: Option<String>,
    /// TURN realm.
    #[arg(long, default_value = "pinhole", requires = "turn")]
    realm: String,
    /// Seconds before a TURN nonce goes stale (438).
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "turn",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    nonce_lifetime: u64,
    /// The longest TURN allocation lifetime granted, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600, requires = "turn",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_lifetime: u64,
    /// Also relay to loopback peers (127.0.0.0/8, ::1), as coturn's flag of that name:
    /// for demos and tests with every party on this machine. Never on a shared host.
    #[arg(long, requires = "turn")]
    allow_loopback_peers: bool,
    /// Also relay to peers in this range (`10.0.0.0/8`, `fd00::/8`), which the server
    /// refuses by default (private, link-local, reserved). Repeatable. Unspecified,
    /// multicast and broadcast peers and the server's own addresses stay refused.
    #[arg(long, value_name = "CIDR", requires = "turn")]
    allow_peer: Vec<pinhole::turn::Cidr>,
    /// The IP relayed sockets are bound on (default: --primary's IP, or with a wildcard
    /// primary the IP the server answers each client from).
    #[arg(long, value_name = "IP", requires = "turn")]
    relay_ip: Option<IpAddr>,
    /// The IP advertised as the relayed address, for a server behind a 1:1 NAT.
    #[arg(long, value_name = "IP", requires = "turn")]
    external_ip: Option<IpAddr>,
    /// The most TURN allocations in total (486 beyond).
    #[arg(long, value_name = "N", default_value_t = pinhole::turn::DEFAULT_MAX_ALLOCATIONS,
          requires = "turn", value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    total_quota: usize,
    /// The most TURN allocations per user (486 beyond; REST users count by name).
    #[arg(long, value_name = "N", default_value_t = pinhole::turn::DEFAULT_MAX_ALLOCATIONS_PER_USER,
          requires = "turn", value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    user_quota: usize,
    /// The most permissions (peer IPs) per TURN allocation (508 beyond).
    #[arg(long, value_name = "N", default_value_t = pinhole::turn::DEFAULT_MAX_PERMISSIONS,
          requires = "turn", value_parser = clap::value_parser!(u32).range(1..=65_536).map(|n| n as usize))]
    max_permissions: usize,
    /// The most channels per TURN allocation (508 beyond; at most 4096 exist).
    #[arg(long, value_name = "N", default_value_t = pinhole::turn::DEFAULT_MAX_CHANNELS,
          requires = "turn", value_parser = clap::value_parser!(u32).range(1..=4096).map(|n| n as usize))]
    max_channels: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pinhole: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        match cli.command {
            Command::Netcheck(args) => netcheck(args).await,
            Command::Serve(args) => serve(args).await,
            Command::Map(args) => map(args).await,
            Command::Allocate(args) => allocate(args).await,
            Command::Demo(args) => demo::demo(args).await,
            Command::Connect(args) => connect::connect(args).await,
            Command::Signal(args) => connect::signal(args).await,
        }
    })
}

/// Logs go to stderr, in colour only when stderr is a terminal and `NO_COLOR` is unset or
/// empty (<https://no-color.org>).
fn init_logging(filter: Option<&str>) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pinhole: {msg}");
    ExitCode::from(EXIT_USAGE)
}

/// The longest any duration flag may be: a year, in seconds. Longer is a typo, and the
/// clock arithmetic behind it would overflow.
const MAX_SECS: u64 = 365 * 24 * 3600;

/// The longest TURN lifetime `allocate --lifetime` asks for: a day (servers cap it lower:
/// coturn's default maximum is 3600 s).
const MAX_TURN_LIFETIME: u64 = 24 * 3600;

/// A value parser for a duration flag: a positive number of seconds, fractions allowed,
/// at most `max`. Anything else is a usage error (exit status 2), never a panic.
fn seconds(max: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("expected a number of seconds from 0 to {max}"))?;
        // `max as f64` is exact: every maximum used is far below 2^53.
        if !(v.is_finite() && v > 0.0 && v <= max as f64) {
            return Err(format!(
                "expected a number of seconds above 0 and at most {max}"
            ));
        }
        Ok(Duration::from_secs_f64(v))
    }
}

/// A value parser for a gateway address: unicast only (not unspecified, multicast or
/// broadcast, which nothing could answer from).
fn unicast_ip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.trim().parse().map_err(|e| format!("{e}"))?;
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(format!(
            "{ip} is not a unicast address: give the gateway's own address"
        ));
    }
    Ok(ip)
}

/// A value parser for a TURN peer: a unicast address and a port other than 0.
fn peer_addr(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (expected IP:PORT)"))?;
    unicast_ip(&a.ip().to_string())?;
    if a.port() == 0 {
        return Err("port 0 is no peer's port".into());
    }
    Ok(a)
}

/// A value parser for user names, passwords and secrets: empty ones are mistakes (an unset
/// shell variable), not credentials.
fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

/// Ctrl-C or SIGTERM, for as many waiters as need it: [`StopSignal::wait`] completes for
/// every waiter once the signal came, also for those that start waiting afterwards.
#[derive(Clone)]
struct StopSignal(tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    /// Starts listening (call it inside the runtime).
    fn new() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stopped| *stopped).await.is_err() {
            // The listener is gone without a signal: none will come.
            std::future::pending::<()>().await;
        }
    }
}

/// How often a long netcheck (`--lifetime`) says it is still measuring.
const LIFETIME_PROGRESS_EVERY: Duration = Duration::from_secs(30);

async fn netcheck(args: NetcheckArgs) -> ExitCode {
    let stop = StopSignal::new();
    let mut _embedded: Option<ServeHandle> = None;
    let uris: Vec<String> = if args.embedded {
        match driver::serve_loopback().await {
            Ok(h) => {
                let uri = format!("stun:{}", h.local_addrs()[0]);
                if !args.json {
                    eprintln!(
                        "embedded RFC 5780 server on {}",
                        h.local_addrs()
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                _embedded = Some(h);
                vec![uri]
            }
            Err(e) => {
                eprintln!("pinhole: cannot start the embedded server: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else if args.stun.is_empty() {
        DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect()
    } else {
        args.stun.clone()
    };

    let (servers, unresolved) = match driver::resolve(&uris).await {
        Ok(r) => r,
        Err(e @ (driver::DriverError::Uri { .. } | driver::DriverError::Unsupported(_))) => {
            return usage(e);
        }
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    for u in &unresolved {
        eprintln!("pinhole: skipping {}: {}", u.uri, u.reason);
    }
    if servers.is_empty() {
        if args.json {
            let mut j = json_report(&empty_report(), &unresolved);
            j["portmap"] = serde_json::Value::Null;
            println!("{j}");
        }
        eprintln!("pinhole: no STUN server could be resolved");
        return ExitCode::from(EXIT_UNREACHABLE);
    }

    let lifetime_probes = if args.lifetime {
        pinhole::netcheck::DEFAULT_LIFETIME_PROBES.to_vec()
    } else {
        Vec::new()
    };
    let longest = lifetime_probes.iter().max().copied().unwrap_or_default();
    let config = NetcheckConfig {
        servers: servers.clone(),
        hairpinning: !args.no_hairpin,
        lifetime_probes,
        budget: args.timeout,
        ..NetcheckConfig::default()
    };
    let quiet = args.json;
    if !quiet {
        eprintln!("probing {} server(s)…", servers.len());
        if args.lifetime {
            eprintln!(
                "binding lifetime: bindings are left idle for up to {} s, so this takes up to \
                 {} s (--timeout {} s + {} s); Ctrl-C stops it and prints what was found",
                longest.as_secs(),
                (args.timeout + longest).as_secs_f64().ceil(),
                args.timeout.as_secs_f64(),
                longest.as_secs()
            );
        }
    }
    let started = tokio::time::Instant::now();
    let run = driver::netcheck_until(
        config,
        |ev| {
            if !quiet {
                progress(ev, &servers);
            }
        },
        stop.wait(),
    );
    let netcheck = async {
        tokio::pin!(run);
        let mut ticker =
            tokio::time::interval_at(started + LIFETIME_PROGRESS_EVERY, LIFETIME_PROGRESS_EVERY);
        let end = started + args.timeout + longest;
        loop {
            tokio::select! {
                r = &mut run => return r,
                _ = ticker.tick(), if args.lifetime && !quiet => {
                    let left = end.saturating_duration_since(tokio::time::Instant::now());
                    eprintln!(
                        "  binding lifetime: still measuring, at most {} s left (Ctrl-C \
                         prints what was found)",
                        left.as_secs()
                    );
                }
            }
        }
    };
    let portmap = async {
        if args.no_portmap || args.embedded {
            return None;
        }
        tokio::select! {
            p = portmap_probe(args.gateway) => Some(p),
            () = stop.wait() => Some(Err("interrupted before the gateway probe ended".into())),
        }
    };
    let (report, portmap) = tokio::join!(netcheck, portmap);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = local_ips(&report);
    if args.json {
        let mut j = json_report(&report, &unresolved);
        j["connectivity"] = connectivity(&report, &local).0.into();
        j["portmap"] = portmap_json(portmap.as_ref());
        println!("{j}");
    } else {
        print_table(&report, &local, args.lifetime);
        print_portmap(portmap.as_ref());
    }
    if report.udp {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNREACHABLE)
    }
}

/// The gateway probe's outcome: the gateway and what it speaks, or why it was not probed.
type PortmapOutcome = Result<(IpAddr, ProbeReport), String>;

async fn portmap_probe(gateway: Option<IpAddr>) -> PortmapOutcome {
    let target = match gateway {
        Some(gw) => driver::portmap::local_ip_toward(gw)
            .await
            .map(|ip| GatewayTarget::explicit(gw, ip)),
        None => driver::portmap::discover_gateway().await,
    }
    .map_err(|e| e.to_string())?;
    let report = driver::portmap::probe(target, true)
        .await
        .map_err(|e| e.to_string())?;
    Ok((target.gateway, report))
}

fn portmap_json(p: Option<&PortmapOutcome>) -> serde_json::Value {
    let ip = |a: Option<IpAddr>| a.map(|a| a.to_string());
    match p {
        None => serde_json::Value::Null,
        Some(Err(e)) => json!({
            "gateway": null, "pcp": null, "natpmp": null, "upnp": null,
            "pcp_external": null, "natpmp_external": null, "upnp_external": null,
            "error": e,
        }),
        Some(Ok((gw, r))) => json!({
            "gateway": gw.to_string(),
            "pcp": r.pcp,
            "natpmp": r.natpmp,
            "upnp": r.upnp,
            // A PCP ANNOUNCE carries no address, and netcheck makes no mapping.
            "pcp_external": null,
            "natpmp_external": ip(r.natpmp_external),
            "upnp_external": ip(r.upnp_external),
        }),
    }
}

fn print_portmap(p: Option<&PortmapOutcome>) {
    match p {
        None => {}
        Some(Err(e)) => println!("{:<24} not probed: {e}", "port mapping"),
        Some(Ok((gw, r))) => {
            let with = |v: Option<bool>, ip: Option<IpAddr>| match (v, ip) {
                (Some(true), Some(ip)) => format!("yes ({ip})"),
                (v, _) => yes_no(v).to_owned(),
            };
            println!(
                "{:<24} gateway {gw}: PCP {}, NAT-PMP {}, UPnP {}",
                "port mapping",
                yes_no(r.pcp),
                with(r.natpmp, r.natpmp_external),
                with(r.upnp, r.upnp_external)
            );
        }
    }
}

fn mapping_json(m: &Mapping, event: &str) -> serde_json::Value {
    json!({
        "event": event,
        "protocol": m.protocol.as_str(),
        "external": m.external.to_string(),
        "internal": m.internal.to_string(),
        "lifetime": m.lifetime.as_secs(),
        "via": m.via.as_str(),
        "reachable": m.reachable,
    })
}

/// How long `map --once` may run in all. Mapping is bounded on its own, and verification
/// (with one deletion and re-addition) and the deletion take far less; the bound ends a
/// run whose gateway stops answering halfway, which the mapper would keep re-creating.
const MAP_ONCE_LIMIT: Duration = Duration::from_secs(60);

/// Why `map` failed, as its `--json` error object (`{"event": "error", "error": kind,
/// "detail": ...}` on stdout) and a line on stderr; returns the exit code.
fn map_error(json: bool, kind: &str, detail: impl std::fmt::Display, code: u8) -> ExitCode {
    if json {
        println!(
            "{}",
            json!({"event": "error", "error": kind, "detail": detail.to_string()})
        );
        let _ = std::io::stdout().flush();
    }
    eprintln!("pinhole: {detail}");
    ExitCode::from(code)
}

/// Why `ip` cannot be a gateway or this host's address: unspecified, multicast or
/// broadcast.
fn unusable_unicast(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("an unspecified"),
        _ if ip.is_multicast() => Some("a multicast"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("a broadcast"),
        _ => None,
    }
}

async fn map(args: MapArgs) -> ExitCode {
    let json = args.json;
    for (flag, ip) in [("--gateway", args.gateway), ("--local-ip", args.local_ip)] {
        if let Some(why) = ip.and_then(unusable_unicast) {
            let ip = ip.map_or(String::new(), |i| i.to_string());
            return map_error(
                json,
                "usage",
                format!("{flag} {ip} is {why} address: it cannot be one end of a port mapping"),
                EXIT_USAGE,
            );
        }
    }
    if args.list && !matches!(args.via, ViaArg::Any | ViaArg::Upnp) {
        return map_error(
            json,
            "usage",
            "--list: only UPnP IGD can list port mappings; PCP and NAT-PMP have no such operation",
            EXIT_USAGE,
        );
    }
    let target = match (args.gateway, args.local_ip) {
        (Some(gw), Some(ip)) => Ok(GatewayTarget::explicit(gw, ip)),
        (Some(gw), None) => driver::portmap::local_ip_toward(gw)
            .await
            .map(|ip| GatewayTarget::explicit(gw, ip)),
        _ => driver::portmap::discover_gateway().await,
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return map_error(json, "no-gateway", e, EXIT_UNREACHABLE),
    };
    let protocol = match args.protocol {
        ProtocolArg::Udp => MapProtocol::Udp,
        ProtocolArg::Tcp => MapProtocol::Tcp,
    };
    let via = match args.via {
        ViaArg::Any => ViaChoice::Any,
        ViaArg::Pcp => ViaChoice::Only(Via::Pcp),
        ViaArg::Natpmp => ViaChoice::Only(Via::NatPmp),
        ViaArg::Upnp => ViaChoice::Only(Via::Upnp),
    };
    if args.list {
        return map_list(target, json).await;
    }
    if let Some(port) = args.delete {
        return map_delete(target, protocol, port, via, json).await;
    }
    let Some(port) = args.port else {
        return map_error(json, "usage", "--port is required", EXIT_USAGE);
    };
    let mut config = MapperConfig::new(target.gateway, target.local_ip, protocol, port);
    config.lifetime = args.lifetime;
    if let Some(uri) = &args.verify {
        if protocol != MapProtocol::Udp {
            return map_error(
                json,
                "usage",
                "--verify checks UDP mappings only",
                EXIT_USAGE,
            );
        }
        match driver::resolve(std::slice::from_ref(uri)).await {
            Ok((servers, _)) if !servers.is_empty() => {
                config.verify = Some(VerifyConfig {
                    reflector: servers[0].addr,
                    interval: Duration::from_secs(args.verify_interval),
                });
            }
            Ok((_, unresolved)) => {
                let why = unresolved
                    .first()
                    .map_or("no address", |u| u.reason.as_str());
                return map_error(
                    json,
                    "verify",
                    format!("--verify {uri}: {why}"),
                    EXIT_UNREACHABLE,
                );
            }
            Err(e) => return map_error(json, "usage", format!("--verify: {e}"), EXIT_USAGE),
        }
    }
    let verifying = config.verify.is_some();
    config.via = via;
    let once = args.once;
    let mut mapped = false;
    let mut failure = None;
    // Whether the verification of `--once` has had its outcome (read by `stop`).
    let outcome = std::rc::Rc::new(std::cell::Cell::new(false));
    let stop = {
        let outcome = outcome.clone();
        async move {
            if !once {
                return shutdown_signal().await;
            }
            tokio::select! {
                () = shutdown_signal() => {}
                () = tokio::time::sleep(MAP_ONCE_LIMIT) => {
                    if verifying && !outcome.get() {
                        print_unverified(
                            json,
                            &format!("no outcome within {} s", MAP_ONCE_LIMIT.as_secs()),
                        );
                    }
                }
            }
        }
    };
    let result = driver::portmap::run_mapper(target, config, stop, |ev| {
        let print = |m: &Mapping, what: &str| {
            if json {
                println!("{}", mapping_json(m, what));
            } else {
                println!(
                    "{what}: {} {} -> {} via {}, lifetime {} s{}",
                    m.protocol.as_str(),
                    m.external,
                    m.internal,
                    m.via.as_str(),
                    m.lifetime.as_secs(),
                    if m.reachable {
                        ""
                    } else {
                        " (not reachable from the internet: another NAT lies beyond the gateway)"
                    }
                );
            }
            let _ = std::io::stdout().flush();
        };
        match ev {
            MapperEvent::Mapped(m) => {
                mapped = true;
                print(m, "mapped");
                // With --verify, --once waits for the verification's outcome.
                return !once || verifying;
            }
            MapperEvent::Verified(m) => {
                outcome.set(true);
                print(m, "verified");
                return !once;
            }
            MapperEvent::NotForwarding(m) => {
                outcome.set(true);
                print(m, "not-forwarding");
                return !once;
            }
            MapperEvent::Unverified(why) => {
                outcome.set(true);
                print_unverified(json, why);
                return !once;
            }
            MapperEvent::Renewed(m) => print(m, "renewed"),
            MapperEvent::Changed { new, .. } => print(new, "changed"),
            MapperEvent::Lost(reason) => {
                if json {
                    println!(
                        "{}",
                        json!({"event": "lost", "reason": reason.as_str(), "detail": reason.to_string()})
                    );
                } else {
                    println!("lost: {reason}; re-creating");
                }
            }
            MapperEvent::Unavailable(why) => failure = Some(why.clone()),
            MapperEvent::Released(outcome) => print_released(json, mapped, outcome),
        }
        let _ = std::io::stdout().flush();
        true
    })
    .await;
    if let Err(e) = result {
        return map_error(json, "io", e, 1);
    }
    match failure {
        Some(why) => map_error(
            json,
            "unavailable",
            format!("no port mapping: {why}"),
            EXIT_UNREACHABLE,
        ),
        None if mapped => ExitCode::SUCCESS,
        None => map_error(
            json,
            "unavailable",
            "no port mapping was made",
            EXIT_UNREACHABLE,
        ),
    }
}

fn print_unverified(json: bool, why: &str) {
    if json {
        println!("{}", json!({"event": "unverified", "detail": why}));
    } else {
        println!("unverified: {why}");
    }
    let _ = std::io::stdout().flush();
}

/// The end of a release: whether the gateway confirmed the deletion, and otherwise when
/// the mapping expires on its own.
fn print_released(json: bool, mapped: bool, outcome: &ReleaseOutcome) {
    match outcome {
        ReleaseOutcome::Deleted(m) => {
            if json {
                println!(
                    "{}",
                    json!({"event": "released", "outcome": "deleted", "confirmed": true,
                           "via": m.via.as_str(), "external": m.external.to_string()})
                );
            } else {
                println!(
                    "deleted: {} {} (confirmed by the gateway over {})",
                    m.protocol.as_str(),
                    m.external,
                    m.via.as_str()
                );
            }
        }
        ReleaseOutcome::Unconfirmed { mapping: m, why } => {
            let left = m
                .good_until
                .saturating_duration_since(std::time::Instant::now())
                .as_secs();
            if json {
                println!(
                    "{}",
                    json!({"event": "released", "outcome": "unconfirmed", "confirmed": false,
                           "via": m.via.as_str(), "external": m.external.to_string(),
                           "expires_in": left, "detail": why})
                );
            } else {
                println!(
                    "delete not confirmed by the gateway ({why}); the mapping {} {} expires in {left} s",
                    m.protocol.as_str(),
                    m.external
                );
            }
        }
        ReleaseOutcome::NothingToDelete => {
            if json {
                println!(
                    "{}",
                    json!({"event": "released", "outcome": "nothing-to-delete", "confirmed": null})
                );
            } else if mapped {
                println!("nothing to delete: the mapping had been lost");
            }
        }
    }
    let _ = std::io::stdout().flush();
}

/// `map --list`: the gateway's UPnP port-mapping table; PCP and NAT-PMP are probed alongside,
/// to say plainly when only they answer (they have no operation to list mappings).
async fn map_list(target: GatewayTarget, json: bool) -> ExitCode {
    use pinhole::portmap::upnp::ListEnd;
    let (listed, probed) = tokio::join!(
        driver::portmap::list_mappings(target),
        driver::portmap::probe(target, false)
    );
    let (pcp, natpmp) = match &probed {
        Ok(r) => (r.pcp, r.natpmp),
        Err(_) => (None, None),
    };
    let gateway = target.gateway.to_string();
    let (control, lister) = match listed {
        Ok(l) => l,
        Err(e) => {
            let others: Vec<&str> = [(pcp, "PCP"), (natpmp, "NAT-PMP")]
                .into_iter()
                .filter(|(v, _)| *v == Some(true))
                .map(|(_, n)| n)
                .collect();
            let (kind, detail) = if others.is_empty() {
                (
                    "unavailable",
                    format!(
                        "cannot list the port mappings of {gateway}: UPnP: {e}; PCP and NAT-PMP do not answer either"
                    ),
                )
            } else {
                (
                    "no-list",
                    format!(
                        "cannot list the port mappings of {gateway}: it speaks {}, which {} no operation to list mappings (only UPnP IGD does), and UPnP: {e}",
                        others.join(" and "),
                        if others.len() == 1 { "has" } else { "have" }
                    ),
                )
            };
            if json {
                println!(
                    "{}",
                    json!({"event": "error", "error": kind, "detail": detail, "gateway": gateway,
                           "pcp": pcp, "natpmp": natpmp, "upnp": false})
                );
                let _ = std::io::stdout().flush();
            }
            eprintln!("pinhole: {detail}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let entries = lister.entries();
    let (end, detail) = match lister.end() {
        Some(ListEnd::Complete) | None => ("complete", None),
        Some(ListEnd::Truncated) => (
            "truncated",
            Some(format!(
                "stopped after {} entries; the gateway may hold more",
                pinhole::portmap::upnp::MAX_LISTED_MAPPINGS
            )),
        ),
        Some(ListEnd::Failed(e)) => (
            "failed",
            Some(format!(
                "the gateway stopped the listing after {} entries: {e}",
                entries.len() as u64 + u64::from(lister.skipped())
            )),
        ),
    };
    let failed_empty = end == "failed" && entries.is_empty();
    if json {
        let mappings: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "protocol": e.protocol.as_str(),
                    "external_port": e.external_port,
                    "internal": SocketAddr::new(e.internal_client, e.internal_port).to_string(),
                    "remote_host": e.remote_host.map(|h| h.to_string()),
                    "enabled": e.enabled,
                    "description": e.description,
                    "lease": e.lease,
                })
            })
            .collect();
        let mut j = json!({
            "event": "list", "gateway": gateway, "via": "upnp", "service": control.service_type,
            "mappings": mappings, "end": end, "detail": detail, "skipped": lister.skipped(),
            "pcp": pcp, "natpmp": natpmp,
        });
        if failed_empty {
            j["event"] = json!("error");
            j["error"] = json!(match lister.end() {
                Some(ListEnd::Failed(e)) if e.is_no_answer() => "unavailable",
                _ => "refused",
            });
        }
        println!("{j}");
        let _ = std::io::stdout().flush();
    } else {
        println!(
            "gateway {gateway}, UPnP IGD ({}): {} port mapping{}",
            control.service_type,
            entries.len(),
            if entries.len() == 1 { "" } else { "s" }
        );
        if !entries.is_empty() {
            println!(
                "  {:<8} {:>8}  {:<22} {:>10}  description",
                "protocol", "external", "internal", "lease"
            );
        }
        for e in entries {
            let lease = if e.lease == 0 {
                "permanent".to_owned()
            } else {
                format!("{} s", e.lease)
            };
            let mut extra = String::new();
            if let Some(h) = e.remote_host {
                extra.push_str(&format!(" (only from {h})"));
            }
            if !e.enabled {
                extra.push_str(" (disabled)");
            }
            println!(
                "  {:<8} {:>8}  {:<22} {:>10}  {}{extra}",
                e.protocol.as_str(),
                e.external_port,
                SocketAddr::new(e.internal_client, e.internal_port).to_string(),
                lease,
                e.description.escape_debug()
            );
        }
        if lister.skipped() > 0 {
            println!("note: {} malformed entries skipped", lister.skipped());
        }
        if let Some(d) = &detail {
            println!("note: {d}");
        }
        let others: Vec<&str> = [(pcp, "PCP"), (natpmp, "NAT-PMP")]
            .into_iter()
            .filter(|(v, _)| *v == Some(true))
            .map(|(_, n)| n)
            .collect();
        if !others.is_empty() {
            println!(
                "note: the gateway also speaks {}, which cannot list mappings; this list shows theirs only if the gateway keeps one table for all (miniupnpd does)",
                others.join(" and ")
            );
        }
        let _ = std::io::stdout().flush();
    }
    if failed_empty {
        if let Some(d) = detail {
            eprintln!("pinhole: {d}");
        }
        return ExitCode::from(EXIT_UNREACHABLE);
    }
    ExitCode::SUCCESS
}

/// `map --delete PORT`: deletes a mapping another program left behind, over each protocol
/// `--via` allows, and says which confirmed.
async fn map_delete(
    target: GatewayTarget,
    protocol: MapProtocol,
    port: u16,
    via: ViaChoice,
    json: bool,
) -> ExitCode {
    use pinhole::portmap::DeleteOutcome;
    let report = match driver::portmap::delete_mapping(target, protocol, port, via).await {
        Ok(r) => r,
        Err(e) => return map_error(json, "io", e, 1),
    };
    let confirmed: Vec<&str> = report.confirmed().iter().map(|v| v.as_str()).collect();
    let none_left: Vec<&str> = report
        .each()
        .iter()
        .filter(|(_, o)| **o == DeleteOutcome::NoSuchMapping)
        .map(|(v, _)| v.as_str())
        .collect();
    let ok = !confirmed.is_empty() || !none_left.is_empty();
    let gateway = target.gateway.to_string();
    let summary = if !confirmed.is_empty() {
        format!(
            "deleted: {} port {port} (confirmed by the gateway over {})",
            protocol.as_str(),
            confirmed.join(", ")
        )
    } else if !none_left.is_empty() {
        format!(
            "nothing to delete: the gateway has no {} mapping on external port {port} ({})",
            protocol.as_str(),
            none_left.join(", ")
        )
    } else {
        format!(
            "not deleted: no protocol confirmed the deletion of {} port {port} on {gateway}",
            protocol.as_str()
        )
    };
    if json {
        let mut j = json!({
            "event": if ok { "deleted" } else { "error" },
            "gateway": gateway, "protocol": protocol.as_str(), "port": port,
            "confirmed_by": confirmed,
        });
        for (v, o) in report.each() {
            j[v.as_str()] = json!({"outcome": o.as_str(), "detail": o.detail()});
        }
        if !ok {
            j["error"] = json!("not-deleted");
            j["detail"] = json!(summary);
        }
        println!("{j}");
    } else {
        println!(
            "delete {} port {port} on gateway {gateway}:",
            protocol.as_str()
        );
        for (v, o) in report.each() {
            let line = match o {
                DeleteOutcome::NotAsked => continue,
                DeleteOutcome::Pending => "no answer".to_owned(),
                DeleteOutcome::Confirmed => {
                    "confirmed: the gateway keeps no such mapping now".to_owned()
                }
                DeleteOutcome::NoSuchMapping => {
                    format!("no mapping on external port {port}")
                }
                DeleteOutcome::Refused(why) if v == Via::Pcp => format!(
                    "refused ({why}): a PCP gateway deletes a mapping only for the nonce that made it (RFC 6887 §15), so one left by another program cannot be deleted over PCP"
                ),
                DeleteOutcome::Refused(why) => format!("refused ({why})"),
                DeleteOutcome::NoAnswer(why) => format!("not answering ({why})"),
            };
            println!("  {:<7} {line}", v.as_str());
        }
        println!("{summary}");
    }
    let _ = std::io::stdout().flush();
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("pinhole: {summary}");
        ExitCode::from(EXIT_UNREACHABLE)
    }
}

/// Lifetime of derived TURN REST credentials.
const REST_TTL_SECS: u64 = 24 * 3600;

/// How often `allocate` says it is still waiting for the server.
const ALLOCATE_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Channel numbers there are (0x4000 through 0x4FFF, RFC 8656 §12): one per `--peer`.
const MAX_PEERS: usize = 0x1000;

async fn allocate(args: AllocateArgs) -> ExitCode {
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
    let ca_pem = match &args.ca {
        Some(path) => match std::fs::read(path) {
            Ok(b) => match driver::turn::check_ca_pem(&b) {
                Ok(_) => Some(b),
                Err(pinhole::driver::DriverError::Certificates(why)) => {
                    return usage(format!("--ca {}: {why}", path.display()));
                }
                Err(e) => return usage(format!("--ca {}: {e}", path.display())),
            },
            Err(e) => return usage(format!("--ca {}: {e}", path.display())),
        },
        None => None,
    };
    let config = TurnClientConfig {
        uri: uri.clone(),
        credentials,
        lifetime: Duration::from_secs(args.lifetime),
        family: Default::default(),
        ca_pem,
    };
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
        }
    }
}

fn empty_report() -> Report {
    Report {
        udp: false,
        public: Vec::new(),
        mapping: pinhole::netcheck::Behaviour::Unknown,
        filtering: pinhole::netcheck::Behaviour::Unknown,
        hairpinning: None,
        alg_rewrites: None,
        binding_lifetime: None,
        rfc5780_server: None,
        servers: Vec::new(),
        notes: vec!["no STUN server could be resolved".into()],
    }
}

fn progress(ev: &NetcheckEvent, servers: &[ServerSpec]) {
    let label = |i: usize| servers.get(i).map_or("?", |s| s.label.as_str());
    let line = match ev {
        NetcheckEvent::ServerReplied {
            server,
            mapped,
            rtt,
        } => format!(
            "  {} answered in {:.1} ms, mapped {}",
            label(*server),
            rtt.as_secs_f64() * 1000.0,
            mapped.map_or("?".into(), |m| m.to_string())
        ),
        NetcheckEvent::ServerTimedOut { server } => {
            format!("  {} did not answer", label(*server))
        }
        NetcheckEvent::Mapping(b) => format!("  mapping: {b}"),
        NetcheckEvent::Filtering(b) => format!("  filtering: {b}"),
        NetcheckEvent::Hairpinning(h) => format!("  hairpinning: {}", yes_no(Some(*h))),
        NetcheckEvent::BindingLifetime { idle, open } => format!(
            "  binding lifetime: {} after {} s idle",
            if *open { "still open" } else { "gone" },
            idle.as_secs()
        ),
        NetcheckEvent::Done(_) => return,
    };
    eprintln!("{line}");
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

/// For each server that saw a mapped address: the local IP this host sends to it from (the
/// kernel's choice for a socket connected to it; nothing is sent).
fn local_ips(r: &Report) -> Vec<(SocketAddr, Option<IpAddr>)> {
    r.servers
        .iter()
        .filter_map(|s| Some((s.mapped?, local_ip_toward(s.addr))))
        .collect()
}

fn local_ip_toward(server: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect(server).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// What kind of address `ip` is when it is not a public (global) one.
fn non_global(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (b & 0xc0) == 64 {
                // 100.64.0.0/10, RFC 6598.
                Some("shared CGNAT space")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not unicast")
            } else if v4.is_documentation() {
                Some("documentation range")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_global(v4.into());
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if first & 0xfe00 == 0xfc00 {
                // fc00::/7, unique local addresses (RFC 4193).
                Some("private")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not unicast")
            } else if first == 0x2001 && v6.segments()[1] == 0x0db8 {
                Some("documentation range")
            } else {
                None
            }
        }
    }
}

/// What the report means for connectivity: a stable name for `--json` and plain words.
fn connectivity(r: &Report, local: &[(SocketAddr, Option<IpAddr>)]) -> (&'static str, String) {
    use pinhole::netcheck::Behaviour;
    if !r.udp {
        return (
            "udp-blocked",
            "UDP is blocked, or no STUN server could be reached: direct connections over UDP \
             will not work; only a relay over TCP or TLS (TURN) can connect this host."
                .into(),
        );
    }
    let dependent = matches!(
        r.mapping,
        Behaviour::AddressDependent | Behaviour::AddressAndPortDependent
    );
    let own_address =
        !local.is_empty() && local.iter().all(|(mapped, ip)| *ip == Some(mapped.ip()));
    if own_address && !dependent {
        let filtered = match r.filtering {
            Behaviour::EndpointIndependent => "",
            Behaviour::Unknown => " (a firewall may still filter what others send first)",
            _ => " (but a firewall lets in only answers to what this host sent)",
        };
        return (
            "no-nat",
            format!(
                "No NAT: the servers see this host's own address, so peers can reach it \
                 directly{filtered}."
            ),
        );
    }
    match r.mapping {
        Behaviour::EndpointIndependent => (
            "nat-direct",
            "A NAT that direct connections get through: its mapping is endpoint-independent, \
             so the address STUN reports is the one every peer can use, and hole-punching \
             works."
                .into(),
        ),
        Behaviour::AddressDependent | Behaviour::AddressAndPortDependent => (
            "nat-needs-relay",
            "A NAT that needs help: its mapping is endpoint-dependent, so each peer sees a \
             different port than STUN reports; direct connections need a relay (TURN), a \
             port mapping (PCP, NAT-PMP or UPnP: see `pinhole map`), or a peer that can be \
             reached directly."
                .into(),
        ),
        Behaviour::Unknown => (
            "unknown",
            "Unknown: the NAT's mapping behaviour could not be determined (see the notes); \
             an RFC 5780 server (--stun) tells it."
                .into(),
        ),
    }
}

/// The binding lifetime in plain words.
fn lifetime_words(l: pinhole::netcheck::LifetimeEstimate) -> String {
    match (l.at_least, l.less_than) {
        (Some(a), Some(b)) => format!(
            "between {} s and {} s (open after {0} s idle, gone after {1} s)",
            a.as_secs(),
            b.as_secs()
        ),
        (Some(a), None) => format!(
            "at least {} s (no expiry seen within the test)",
            a.as_secs()
        ),
        (None, Some(b)) => format!(
            "less than {} s (gone after the shortest idle interval tested)",
            b.as_secs()
        ),
        (None, None) => "unknown (no interval finished)".into(),
    }
}

fn print_table(r: &Report, local: &[(SocketAddr, Option<IpAddr>)], lifetime_asked: bool) {
    let mut out = std::io::stdout().lock();
    let mapped = if r.public.is_empty() {
        "none".to_owned()
    } else {
        r.public
            .iter()
            .map(|a| format!("{a} ({})", non_global(a.ip()).unwrap_or("public")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let lifetime = match r.binding_lifetime {
        Some(l) => Some(lifetime_words(l)),
        None if lifetime_asked => Some("not measured (no server answered)".into()),
        None => None,
    };
    let rows = [
        ("UDP", Some(yes_no(Some(r.udp)).to_owned())),
        ("mapped address", Some(mapped)),
        ("mapping", Some(r.mapping.to_string())),
        ("filtering", Some(r.filtering.to_string())),
        ("hairpinning", Some(yes_no(r.hairpinning).to_owned())),
        (
            "ALG rewrites addresses",
            Some(yes_no(r.alg_rewrites).to_owned()),
        ),
        ("binding lifetime", lifetime),
    ];
    let _ = writeln!(out);
    for (k, v) in rows {
        if let Some(v) = v {
            let _ = writeln!(out, "{k:<24} {v}");
        }
    }
    let _ = writeln!(out, "\n{}", connectivity(r, local).1);
    let _ = writeln!(out, "\n{:<40} {:>9}  mapped", "server", "rtt");
    for s in &r.servers {
        let rtt = s.rtt.map_or("-".into(), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        });
        let mapped = s.mapped.map_or("-".into(), |m| m.to_string());
        let _ = writeln!(out, "{:<40} {rtt:>9}  {mapped}", s.label);
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
}

fn json_report(r: &Report, unresolved: &[driver::Unresolved]) -> serde_json::Value {
    let mut notes: Vec<String> = unresolved
        .iter()
        .map(|u| format!("{}: not resolved: {}", u.uri, u.reason))
        .collect();
    notes.extend(r.notes.iter().cloned());
    json!({
        "udp": r.udp,
        "public": r.public.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "mapping": r.mapping.as_str(),
        "filtering": r.filtering.as_str(),
        "hairpinning": r.hairpinning,
        "alg_rewrites": r.alg_rewrites,
        "binding_lifetime": r.binding_lifetime.map(|l| json!({
            "at_least_secs": l.at_least.map(|d| d.as_secs()),
            "less_than_secs": l.less_than.map(|d| d.as_secs()),
        })),
        "rfc5780_server": r.rfc5780_server,
        "servers": r.servers.iter().map(|s| json!({
            "uri": s.label,
            "address": s.addr.to_string(),
            "rtt_ms": s.rtt.map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
            "mapped": s.mapped.map(|m| m.to_string()),
            "other_address": s.other_address.map(|m| m.to_string()),
        })).collect::<Vec<_>>(),
        "notes": notes,
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    use pinhole::ratelimit::RateLimit;
    let rate = (args.rate_limit > 0).then(|| RateLimit::per_second(args.rate_limit));
    let handle = if args.turn {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut config =
            pinhole::turn::TurnServerConfig::new(args.primary, args.realm.clone(), unix);
        if args.realm.is_empty() {
            return usage("--realm must not be empty");
        }
        for u in &args.user {
            let Some((name, password)) = u.split_once(':') else {
                return usage("--user takes name:password");
            };
            if name.is_empty() || password.is_empty() {
                return usage(format!(
                    "--user {u:?}: the name and the password must both be non-empty"
                ));
            }
            config
                .credentials
                .users
                .insert(name.to_owned(), password.to_owned());
        }
        if args.secret.as_deref() == Some("") {
            return usage("--secret must not be empty");
        }
        config.credentials.rest_secret = args.secret.as_ref().map(|s| s.as_bytes().to_vec());
        if config.credentials.users.is_empty() && config.credentials.rest_secret.is_none() {
            return usage("--turn needs --user or --secret");
        }
        for (flag, ip) in [
            ("--relay-ip", args.relay_ip),
            ("--external-ip", args.external_ip),
        ] {
            if let Some(ip) = ip {
                if ip.is_unspecified()
                    || ip.is_multicast()
                    || ip == IpAddr::from([255, 255, 255, 255])
                {
                    return usage(format!(
                        "{flag} {ip}: relayed addresses must be concrete unicast addresses"
                    ));
                }
                if ip.is_ipv4() != args.primary.is_ipv4() {
                    return usage(format!(
                        "{flag} {ip} is not of --primary's address family ({})",
                        args.primary
                    ));
                }
            }
        }
        config.nonce_lifetime = Duration::from_secs(args.nonce_lifetime);
        config.max_lifetime = Duration::from_secs(args.max_lifetime);
        config.peers = pinhole::turn::PeerPolicy {
            allow_loopback: args.allow_loopback_peers,
            allowed: args.allow_peer.clone(),
        };
        config.relay_ip = args.relay_ip;
        config.external_ip = args.external_ip;
        config.max_allocations = args.total_quota;
        config.max_allocations_per_user = args.user_quota;
        config.max_permissions = args.max_permissions;
        config.max_channels = args.max_channels;
        config.unauthenticated_rate = rate;
        driver::serve_turn(config).await
    } else {
        let mut config = match args.alternate {
            Some(alt) => ServerConfig::rfc5780(args.primary, alt),
            None => ServerConfig::new(args.primary),
        };
        config.rate_limit = rate;
        driver::serve(config).await
    };
    let handle = match handle {
        Ok(h) => h,
        Err(driver::DriverError::Stun(e)) => {
            let hint = if args.alternate.is_some() && args.primary.ip().is_unspecified() {
                " (pass --primary with this host's IP, e.g. --primary 192.0.2.1:3478 --alternate 192.0.2.2:3479)"
            } else {
                ""
            };
            return usage(format!("{e}{hint}"));
        }
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    for a in handle.local_addrs() {
        println!("listening on udp {a}");
    }
    if args.turn {
        if args.allow_loopback_peers {
            eprintln!(
                "pinhole: relaying to loopback peers (--allow-loopback-peers): for this machine only"
            );
        }
        for c in &args.allow_peer {
            eprintln!("pinhole: relaying to peers in {c} (--allow-peer)");
        }
    }
    let _ = std::io::stdout().flush();
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = shutdown_signal() => {}
    }
    drop(handle);
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_must_be_unicast() {
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "ff02::1",
            "gateway",
        ] {
            assert!(unicast_ip(bad).is_err(), "{bad}");
        }
        for good in ["192.168.1.1", "127.0.0.3", "fe80::1", "2001:db8::1"] {
            assert_eq!(unicast_ip(good), Ok(good.parse().unwrap()));
        }
        assert!(peer_addr("224.0.0.1:5000").is_err());
        assert!(peer_addr("192.0.2.1:0").is_err());
        assert!(peer_addr("192.0.2.1:5000").is_ok());
    }

    #[test]
    fn seconds_are_range_checked() {
        let p = seconds(3600);
        for bad in [
            "", "x", "0", "-0", "-1", "NaN", "inf", "-inf", "3600.001", "1e20", "1e309",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert_eq!(p("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(p("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(
            seconds(MAX_SECS)("31536000"),
            Ok(Duration::from_secs(MAX_SECS))
        );
    }

    #[test]
    fn connectivity_in_plain_words() {
        use pinhole::netcheck::{Behaviour, ServerReport};
        let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let mapped: SocketAddr = "203.0.113.5:40001".parse().unwrap();
        let report = |mapping| Report {
            udp: true,
            public: vec![mapped],
            mapping,
            filtering: Behaviour::AddressAndPortDependent,
            servers: vec![ServerReport {
                label: "stun:x".into(),
                addr: server,
                rtt: Some(Duration::from_millis(9)),
                mapped: Some(mapped),
                other_address: None,
            }],
            notes: Vec::new(),
            ..empty_report()
        };
        let behind_nat = [(mapped, Some("192.168.1.20".parse().unwrap()))];
        let own = [(mapped, Some(mapped.ip()))];
        let c = |r: &Report, l: &[(SocketAddr, Option<IpAddr>)]| connectivity(r, l);
        assert_eq!(
            c(&report(Behaviour::EndpointIndependent), &behind_nat).0,
            "nat-direct"
        );
        for dependent in [
            Behaviour::AddressDependent,
            Behaviour::AddressAndPortDependent,
        ] {
            let (name, words) = c(&report(dependent), &behind_nat);
            assert_eq!(name, "nat-needs-relay");
            assert!(words.contains("relay"), "{words}");
        }
        assert_eq!(c(&report(Behaviour::Unknown), &behind_nat).0, "unknown");
        let (name, words) = c(&report(Behaviour::EndpointIndependent), &own);
        assert_eq!(name, "no-nat");
        assert!(words.contains("firewall"), "{words}");
        assert_eq!(c(&empty_report(), &[]).0, "udp-blocked");
    }

    #[test]
    fn binding_lifetime_in_plain_words() {
        use pinhole::netcheck::LifetimeEstimate;
        let s = |a: Option<u64>, b: Option<u64>| {
            lifetime_words(LifetimeEstimate {
                at_least: a.map(Duration::from_secs),
                less_than: b.map(Duration::from_secs),
            })
        };
        assert_eq!(
            s(Some(120), None),
            "at least 120 s (no expiry seen within the test)"
        );
        assert!(s(Some(60), Some(120)).starts_with("between 60 s and 120 s"));
        assert!(s(None, Some(10)).starts_with("less than 10 s"));
        assert!(!s(None, None).contains('?'));
    }

    #[test]
    fn addresses_are_not_all_public() {
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("192.168.0.9", Some("private")),
            ("172.31.0.1", Some("private")),
            ("100.64.0.1", Some("shared CGNAT space")),
            ("100.127.255.254", Some("shared CGNAT space")),
            ("100.128.0.1", None),
            ("169.254.1.1", Some("link-local")),
            ("8.8.8.8", None),
            ("::1", Some("loopback")),
            ("fd00::1", Some("private")),
            ("fe80::1", Some("link-local")),
            ("::ffff:10.0.0.1", Some("private")),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(non_global(ip.parse().unwrap()), want, "{ip}");
        }
    }
}
