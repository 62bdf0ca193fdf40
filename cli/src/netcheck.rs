//! `pinhole netcheck`: NAT behaviour discovery and what it means for connectivity.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use pinhole::driver::portmap::GatewayTarget;
use pinhole::driver::{self, DEFAULT_STUN_SERVERS, ServeHandle};
use pinhole::netcheck::{NetcheckConfig, NetcheckEvent, Report, ServerSpec};
use pinhole::portmap::ProbeReport;
use serde_json::json;

use crate::*;

#[derive(clap::Args)]
pub(crate) struct NetcheckArgs {
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

/// How often a long netcheck (`--lifetime`) says it is still measuring.
pub(crate) const LIFETIME_PROGRESS_EVERY: Duration = Duration::from_secs(30);

pub(crate) async fn netcheck(args: NetcheckArgs) -> ExitCode {
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
    let mut config = NetcheckConfig::new(servers.clone());
    config.hairpinning = !args.no_hairpin;
    config.lifetime_probes = lifetime_probes;
    config.budget = args.timeout;
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
pub(crate) type PortmapOutcome = Result<(IpAddr, ProbeReport), String>;

pub(crate) async fn portmap_probe(gateway: Option<IpAddr>) -> PortmapOutcome {
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

pub(crate) fn portmap_json(p: Option<&PortmapOutcome>) -> serde_json::Value {
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

pub(crate) fn print_portmap(p: Option<&PortmapOutcome>) {
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

pub(crate) fn empty_report() -> Report {
    Report::unknown(vec!["no STUN server could be resolved".into()])
}

pub(crate) fn progress(ev: &NetcheckEvent, servers: &[ServerSpec]) {
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
        NetcheckEvent::PortAllocation(k) => format!("  port allocation: {k}"),
        NetcheckEvent::BindingLifetime { idle, open } => format!(
            "  binding lifetime: {} after {} s idle",
            if *open { "still open" } else { "gone" },
            idle.as_secs()
        ),
        NetcheckEvent::Done(_) => return,
        // Progress this command does not show.
        _ => return,
    };
    eprintln!("{line}");
}

pub(crate) fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

/// For each server that saw a mapped address: the local IP this host sends to it from (the
/// kernel's choice for a socket connected to it; nothing is sent).
pub(crate) fn local_ips(r: &Report) -> Vec<(SocketAddr, Option<IpAddr>)> {
    r.servers
        .iter()
        .filter_map(|s| Some((s.mapped?, local_ip_toward(s.addr))))
        .collect()
}

pub(crate) fn local_ip_toward(server: SocketAddr) -> Option<IpAddr> {
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
pub(crate) fn non_global(ip: IpAddr) -> Option<&'static str> {
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
pub(crate) fn connectivity(
    r: &Report,
    local: &[(SocketAddr, Option<IpAddr>)],
) -> (&'static str, String) {
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

/// Port allocation in plain words, for the table.
pub(crate) fn allocation_words(a: Option<pinhole::netcheck::PortAllocation>) -> String {
    use pinhole::netcheck::PortAllocation;
    match a {
        None => "not tested".into(),
        Some(PortAllocation::Unknown) => "unknown (too few probes answered)".into(),
        Some(PortAllocation::Preserving) => "preserving (the local port is kept)".into(),
        Some(PortAllocation::Sequential { delta }) => {
            format!("sequential, step {delta:+} (the next mappings' ports can be predicted)")
        }
        Some(PortAllocation::Random) => "random".into(),
    }
}

/// The binding lifetime in plain words.
pub(crate) fn lifetime_words(l: pinhole::netcheck::LifetimeEstimate) -> String {
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

pub(crate) fn print_table(
    r: &Report,
    local: &[(SocketAddr, Option<IpAddr>)],
    lifetime_asked: bool,
) {
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
        ("port allocation", Some(allocation_words(r.port_allocation))),
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

pub(crate) fn json_report(r: &Report, unresolved: &[driver::Unresolved]) -> serde_json::Value {
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
        "port_allocation": r.port_allocation.map(|a| json!({
            "kind": a.as_str(),
            "delta": a.delta(),
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
