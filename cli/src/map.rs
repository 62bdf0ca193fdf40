//! `pinhole map`: port mappings through the gateway (PCP, NAT-PMP, UPnP IGD).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use pinhole::driver;
use pinhole::driver::portmap::GatewayTarget;
use pinhole::portmap::{
    MapProtocol, MapperConfig, MapperEvent, Mapping, ReleaseOutcome, VerifyConfig, Via, ViaChoice,
};
use serde_json::json;

use crate::*;

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ViaArg {
    Any,
    Pcp,
    Natpmp,
    Upnp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ProtocolArg {
    Udp,
    Tcp,
}

#[derive(clap::Args)]
pub(crate) struct MapArgs {
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
pub(crate) const MAX_VERIFY_INTERVAL_SECS: u64 = pinhole::portmap::MAX_VERIFY_INTERVAL.as_secs();

pub(crate) fn mapping_json(m: &Mapping, event: &str) -> serde_json::Value {
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
pub(crate) const MAP_ONCE_LIMIT: Duration = Duration::from_secs(60);

/// Why `map` failed, as its `--json` error object (`{"event": "error", "error": kind,
/// "detail": ...}` on stdout) and a line on stderr; returns the exit code.
pub(crate) fn map_error(
    json: bool,
    kind: &str,
    detail: impl std::fmt::Display,
    code: u8,
) -> ExitCode {
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
pub(crate) fn unusable_unicast(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("an unspecified"),
        _ if ip.is_multicast() => Some("a multicast"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("a broadcast"),
        _ => None,
    }
}

pub(crate) async fn map(args: MapArgs) -> ExitCode {
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
                let mut verify = VerifyConfig::new(servers[0].addr);
                verify.interval = Duration::from_secs(args.verify_interval);
                config.verify = Some(verify);
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
            // Events this command does not show (added after it was written).
            other => tracing::debug!(event = ?other, "port-mapping event not shown"),
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

pub(crate) fn print_unverified(json: bool, why: &str) {
    if json {
        println!("{}", json!({"event": "unverified", "detail": why}));
    } else {
        println!("unverified: {why}");
    }
    let _ = std::io::stdout().flush();
}

/// The end of a release: whether the gateway confirmed the deletion, and otherwise when
/// the mapping expires on its own.
pub(crate) fn print_released(json: bool, mapped: bool, outcome: &ReleaseOutcome) {
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
        other => {
            if json {
                println!(
                    "{}",
                    json!({"event": "released", "outcome": format!("{other:?}"), "confirmed": null})
                );
            } else {
                println!("released: {other:?}");
            }
        }
    }
    let _ = std::io::stdout().flush();
}

/// `map --list`: the gateway's UPnP port-mapping table; PCP and NAT-PMP are probed alongside,
/// to say plainly when only they answer (they have no operation to list mappings).
pub(crate) async fn map_list(target: GatewayTarget, json: bool) -> ExitCode {
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
pub(crate) async fn map_delete(
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
                other => other.as_str().to_owned(),
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
