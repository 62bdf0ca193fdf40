//! `pinhole`: the command-line face of the pinhole NAT traversal library.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

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
    /// hairpinning, public address.
    Netcheck(NetcheckArgs),
    /// Run a STUN server (Binding; RFC 5780 when given an alternate address).
    Serve(ServeArgs),
    /// Ask the gateway to forward a port (PCP, NAT-PMP or UPnP IGD), keep the mapping
    /// renewed until interrupted, then delete it.
    Map(MapArgs),
    /// Allocate a relayed address on a TURN server (RFC 8656), optionally echo peers'
    /// datagrams back through it, then deallocate.
    Allocate(AllocateArgs),
}

#[derive(clap::Args)]
struct AllocateArgs {
    /// The server: `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065).
    #[arg(long, value_name = "URI")]
    turn: String,
    /// The user name.
    #[arg(long, value_name = "U")]
    user: String,
    /// The password (long-term credentials).
    #[arg(
        long,
        value_name = "P",
        required_unless_present = "secret",
        conflicts_with = "secret"
    )]
    password: Option<String>,
    /// The shared secret for TURN REST credentials (coturn's static-auth-secret): the user
    /// name becomes `expiry:U` and the password is derived from it.
    #[arg(long, value_name = "S")]
    secret: Option<String>,
    /// PEM file of a CA to trust for `turns:` (default: the system roots).
    #[arg(long, value_name = "PEM")]
    ca: Option<std::path::PathBuf>,
    /// A peer to permit and bind a channel to. Repeatable.
    #[arg(long, value_name = "IP:PORT")]
    peer: Vec<SocketAddr>,
    /// Send every datagram from a permitted peer back to it through the relay.
    #[arg(long)]
    echo: bool,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Lifetime to ask for, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    lifetime: u64,
    /// Print JSON lines.
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
    /// A STUN server, `stun:host[:port]` (RFC 7064). Repeatable. Without it, the public
    /// servers listed in the README are used.
    #[arg(long = "stun", value_name = "URI", conflicts_with = "embedded")]
    stun: Vec<String>,
    /// Start an RFC 5780 server on 127.0.0.1 and 127.0.0.2 inside this process and probe
    /// it: the whole job on one machine, no network needed.
    #[arg(long)]
    embedded: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Overall time budget in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Also measure the NAT binding lifetime (RFC 5780 §4.6). Takes about three minutes.
    #[arg(long)]
    lifetime: bool,
    /// Skip the hairpinning test.
    #[arg(long)]
    no_hairpin: bool,
    /// Do not probe the gateway for PCP, NAT-PMP and UPnP (implied by --embedded).
    #[arg(long)]
    no_portmap: bool,
    /// The gateway to probe for port mapping (default: from the routing table).
    #[arg(long, value_name = "IP")]
    gateway: Option<IpAddr>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The primary address.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:3478")]
    primary: SocketAddr,
    /// The alternate address (different IP and port): enables RFC 5780.
    #[arg(long, value_name = "IP:PORT")]
    alternate: Option<SocketAddr>,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Run a TURN server (for development and tests; use coturn in production) on
    /// --primary instead of the STUN server: UDP allocations with long-term (--user) or
    /// REST (--secret) credentials.
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
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "turn")]
    nonce_lifetime: u64,
    /// The longest TURN allocation lifetime granted, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600, requires = "turn")]
    max_lifetime: u64,
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
        }
    })
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("pinhole: {msg}");
    ExitCode::from(EXIT_USAGE)
}

async fn netcheck(args: NetcheckArgs) -> ExitCode {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return usage("--timeout must be between 0 and 3600 seconds");
    }
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

    let config = NetcheckConfig {
        servers: servers.clone(),
        hairpinning: !args.no_hairpin,
        lifetime_probes: if args.lifetime {
            pinhole::netcheck::DEFAULT_LIFETIME_PROBES.to_vec()
        } else {
            Vec::new()
        },
        budget: Duration::from_secs_f64(args.timeout),
        ..NetcheckConfig::default()
    };
    if !args.json {
        eprintln!("probing {} server(s)…", servers.len());
    }
    let quiet = args.json;
    let portmap = async {
        if args.no_portmap || args.embedded {
            return None;
        }
        Some(portmap_probe(args.gateway).await)
    };
    let (report, portmap) = tokio::join!(
        driver::netcheck(config, |ev| {
            if !quiet {
                progress(ev, &servers);
            }
        }),
        portmap
    );
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        let mut j = json_report(&report, &unresolved);
        j["portmap"] = portmap_json(portmap.as_ref());
        println!("{j}");
    } else {
        print_table(&report);
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

async fn allocate(args: AllocateArgs) -> ExitCode {
    use pinhole::driver::turn::{TurnClientConfig, TurnEvent};
    use pinhole::turn::{AllocationEvent, Credentials, TurnUri};
    let uri: TurnUri = match args.turn.parse() {
        Ok(u) => u,
        Err(e) => return usage(e),
    };
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return usage("--duration must be a positive number of seconds");
        }
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
            Ok(b) => Some(b),
            Err(e) => return usage(format!("--ca {}: {e}", path.display())),
        },
        None => None,
    };
    let config = TurnClientConfig {
        uri: uri.clone(),
        credentials,
        lifetime: Duration::from_secs(args.lifetime.max(1)),
        family: Default::default(),
        ca_pem,
    };
    let mut handle = match driver::turn::allocate(config).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(Duration::from_secs_f64(d)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut allocated = false;
    let mut stopping = false;
    let emit = |v: serde_json::Value, text: String| {
        if args.json {
            println!("{v}");
        } else {
            println!("{text}");
        }
        let _ = std::io::stdout().flush();
    };
    loop {
        let ev = tokio::select! {
            ev = handle.next_event() => ev,
            _ = &mut stop, if !stopping => { stopping = true; handle.deallocate(); continue; }
            _ = &mut signal, if !stopping => { stopping = true; handle.deallocate(); continue; }
        };
        let Some(ev) = ev else { break };
        match ev {
            TurnEvent::Allocation(AllocationEvent::Allocated {
                relayed,
                mapped,
                lifetime,
            }) => {
                allocated = true;
                let r: Vec<String> = relayed.iter().map(ToString::to_string).collect();
                emit(
                    json!({
                        "event": "allocated",
                        "relayed": r.first(),
                        "relayed_all": r,
                        "mapped": mapped.map(|m| m.to_string()),
                        "transport": uri.transport.as_str(),
                        "lifetime": lifetime.as_secs(),
                        "server": handle.server.to_string(),
                    }),
                    format!(
                        "allocated: relayed {} mapped {} via {} ({}), lifetime {} s",
                        r.join(", "),
                        mapped.map_or("?".into(), |m| m.to_string()),
                        handle.server,
                        uri.transport.as_str(),
                        lifetime.as_secs()
                    ),
                );
                for p in &args.peer {
                    handle.bind_channel(*p);
                }
            }
            TurnEvent::Allocation(AllocationEvent::Refreshed { lifetime }) => emit(
                json!({"event": "refreshed", "lifetime": lifetime.as_secs()}),
                format!("refreshed: lifetime {} s", lifetime.as_secs()),
            ),
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
                emit(json!({"event": "deallocated"}), "deallocated".into());
                break;
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
    if allocated {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNREACHABLE)
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

fn print_table(r: &Report) {
    let mut out = std::io::stdout().lock();
    let public = if r.public.is_empty() {
        "none".to_owned()
    } else {
        r.public
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows = [
        ("UDP", yes_no(Some(r.udp)).to_owned()),
        ("public address", public),
        ("mapping", r.mapping.to_string()),
        ("filtering", r.filtering.to_string()),
        ("hairpinning", yes_no(r.hairpinning).to_owned()),
        ("ALG rewrites addresses", yes_no(r.alg_rewrites).to_owned()),
    ];
    let _ = writeln!(out);
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<24} {v}");
    }
    if let Some(l) = r.binding_lifetime {
        let fmt = |d: Option<Duration>| d.map_or("?".into(), |d| format!("{}s", d.as_secs()));
        let _ = writeln!(
            out,
            "{:<24} at least {}, less than {}",
            "binding lifetime",
            fmt(l.at_least),
            fmt(l.less_than)
        );
    }
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
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return usage("--duration must be a positive number of seconds");
        }
    }
    let handle = if args.turn {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut config =
            pinhole::turn::TurnServerConfig::new(args.primary, args.realm.clone(), unix);
        for u in &args.user {
            let Some((name, password)) = u.split_once(':') else {
                return usage("--user takes name:password");
            };
            config
                .credentials
                .users
                .insert(name.to_owned(), password.to_owned());
        }
        config.credentials.rest_secret = args.secret.as_ref().map(|s| s.as_bytes().to_vec());
        if config.credentials.users.is_empty() && config.credentials.rest_secret.is_none() {
            return usage("--turn needs --user or --secret");
        }
        config.nonce_lifetime = Duration::from_secs(args.nonce_lifetime.max(1));
        config.max_lifetime = Duration::from_secs(args.max_lifetime.max(1));
        driver::serve_turn(config).await
    } else {
        let config = match args.alternate {
            Some(alt) => ServerConfig::rfc5780(args.primary, alt),
            None => ServerConfig::new(args.primary),
        };
        driver::serve(config).await
    };
    let handle = match handle {
        Ok(h) => h,
        Err(e @ driver::DriverError::Stun(_)) => return usage(e),
        Err(e) => {
            eprintln!("pinhole: {e}");
            return ExitCode::FAILURE;
        }
    };
    for a in handle.local_addrs() {
        println!("listening on udp {a}");
    }
    let _ = std::io::stdout().flush();
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(Duration::from_secs_f64(d)).await,
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
