//! `natlab`: build a NAT lab topology by hand and run commands inside it.
//!
//! ```text
//! natlab up <topology>            build it and leave it running (namespaces phm-…)
//! natlab status                   what is up
//! natlab exec <node> -- cmd…      run a command inside a node's namespace
//! natlab flush <router>           forget the router's mappings (conntrack + NAT maps)
//! natlab down                     stop every server and delete the namespaces
//! natlab sweep                    delete stale namespaces of dead test processes
//! natlab stun-ping [--bind A] [--timeout-ms N] SERVER   (helper, used inside namespaces)
//! natlab udp-recv --bind A [--timeout-ms N]              (helper: print the first datagram)
//! natlab udp-send --bind A --to B [--text T] [--wait-ms N] (helper: send one datagram)
//! natlab pcp-map --gateway G --client C --port N         (helper: one PCP MAP for UDP;
//!                  [--peer IP:PORT]                       a PEER toward IP:PORT with --peer)
//! natlab pcp-fake --bind IP --map-external IP:PORT --peer-external IP:PORT
//!                                                         (helper: a fake PCP gateway)
//! natlab watch-network [--count N] [--timeout-ms N]     (helper: print network changes)
//! ```
//! Topologies: `matrix` (every NAT case), `basic` (one port-restricted NAT), or a case name
//! from `natlab list`. Run as root. See tests/README.md.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use pinhole_tests::lab::netns::{self, MANUAL_PREFIX};
use pinhole_tests::lab::topologies::matrix;
use pinhole_tests::lab::{Lab, LabError, NatConfig, Uplink, cmd, logs_root, stun};

const USAGE: &str = "usage:
  natlab up <topology> [--no-coturn] [--no-pinhole] [--miniupnpd]
  natlab status | down | sweep | list
  natlab exec <node> -- <command> [args...]
  natlab flush <router>
  natlab stun-ping [--bind ADDR] [--timeout-ms N] SERVER
  natlab udp-recv --bind ADDR [--timeout-ms N]
  natlab udp-send --bind ADDR --to ADDR [--text TEXT] [--count N | --wait-ms N]
  natlab pcp-map --gateway IP --client IP --port N [--lifetime SECS] [--timeout-ms N] [--peer IP:PORT]
  natlab pcp-fake --bind IP --map-external IP:PORT --peer-external IP:PORT [--timeout-ms N]
  natlab watch-network [--count N] [--timeout-ms N]
topologies: basic, matrix, or one case of `natlab list`";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => up(&args[1..]),
        Some("down") => down(),
        Some("status") => status(),
        Some("list") => {
            for c in matrix() {
                println!("{:<18} {}", c.name, c.describe());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("exec") => exec(&args[1..]),
        Some("flush") => flush(&args[1..]),
        Some("sweep") => netns::sweep_stale().map(|s| {
            println!("removed {} stale namespace(s) {}", s.len(), s.join(" "));
            ExitCode::SUCCESS
        }),
        Some("stun-ping") => stun_ping(&args[1..]),
        Some("udp-recv") => udp_recv(&args[1..]),
        Some("udp-send") => udp_send(&args[1..]),
        Some("pcp-map") => pcp_map(&args[1..]),
        Some("pcp-fake") => pcp_fake(&args[1..]),
        Some("watch-network") => watch_network(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natlab: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` options and positional arguments.
struct Opts {
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], with_value: &[&str]) -> Result<Self, LabError> {
        let mut flags = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if with_value.contains(&name) {
                    let v = it
                        .next()
                        .ok_or_else(|| LabError(format!("--{name} needs a value")))?;
                    flags.push((name.to_owned(), Some(v.clone())));
                } else {
                    flags.push((name.to_owned(), None));
                }
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Opts { flags, positional })
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn addr(&self, name: &str) -> Result<Option<SocketAddr>, LabError> {
        self.value(name)
            .map(|v| {
                v.parse()
                    .map_err(|e| LabError(format!("--{name} {v}: {e}")))
            })
            .transpose()
    }

    fn millis(&self, default: u64) -> Result<Duration, LabError> {
        Ok(Duration::from_millis(match self.value("timeout-ms") {
            Some(v) => v
                .parse()
                .map_err(|e| LabError(format!("--timeout-ms {v}: {e}")))?,
            None => default,
        }))
    }
}

fn manual_namespaces() -> Result<Vec<String>, LabError> {
    let prefix = format!("{MANUAL_PREFIX}-");
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

fn state_file() -> std::path::PathBuf {
    logs_root().join(MANUAL_PREFIX).join("natlab-state.txt")
}

fn up(args: &[String]) -> Result<ExitCode, LabError> {
    let opts = Opts::parse(args, &[])?;
    let [topology] = opts.positional.as_slice() else {
        return Err(LabError(USAGE.into()));
    };
    if !manual_namespaces()?.is_empty() {
        return Err(LabError(
            "a hand-built lab is already up: run `natlab down` first".into(),
        ));
    }
    let cases = match topology.as_str() {
        "matrix" => matrix(),
        "basic" => Vec::new(),
        name => {
            let c: Vec<_> = matrix().into_iter().filter(|c| c.name == name).collect();
            if c.is_empty() {
                return Err(LabError(format!("unknown topology {name}\n{USAGE}")));
            }
            c
        }
    };
    let mut lab = Lab::manual()?;
    if !opts.has("no-pinhole") {
        lab.start_pinhole_serve()?;
    }
    if !opts.has("no-coturn") && cmd::has_tool("turnserver") {
        lab.start_coturn()?;
    }
    if topology == "basic" {
        lab.add_router("r1", NatConfig::port_restricted_cone(), Uplink::Internet)?;
        lab.add_host("h1", "r1")?;
        lab.add_host("h2", "r1")?;
    }
    for c in &cases {
        lab.add_case(c)?;
    }
    if opts.has("miniupnpd") {
        let names: Vec<String> = lab
            .routers()
            .iter()
            .filter(|r| r.uplink.is_none())
            .map(|r| r.name.clone())
            .collect();
        for r in names {
            let pm = lab.start_miniupnpd(&r)?;
            println!(
                "miniupnpd on {r}: {} and NAT-PMP/PCP {}",
                pm.upnp_url, pm.pmp_addr
            );
        }
    }
    let text = lab.describe();
    std::fs::write(state_file(), &text)?;
    print!("{text}");
    println!(
        "\nrun commands with: natlab exec <node> -- <command>   (nodes: inet and the names above)\n\
         stop with:         natlab down"
    );
    lab.keep();
    Ok(ExitCode::SUCCESS)
}

fn status() -> Result<ExitCode, LabError> {
    let ns = manual_namespaces()?;
    if ns.is_empty() {
        println!("no hand-built lab is up");
    } else {
        print!(
            "{}",
            std::fs::read_to_string(state_file()).unwrap_or_default()
        );
        println!("namespaces: {}", ns.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn down() -> Result<ExitCode, LabError> {
    let ns = manual_namespaces()?;
    // Hosts and inner routers first does not matter once every process is gone.
    for n in &ns {
        netns::kill_all_in(n);
    }
    for n in &ns {
        netns::destroy(n);
    }
    let _ = std::fs::remove_dir_all(logs_root().join(MANUAL_PREFIX));
    println!("removed {} namespace(s)", ns.len());
    Ok(ExitCode::SUCCESS)
}

fn resolve_node(node: &str) -> Result<String, LabError> {
    let all = netns::list()?;
    for candidate in [format!("{MANUAL_PREFIX}-{node}"), node.to_owned()] {
        if all.contains(&candidate) {
            return Ok(candidate);
        }
    }
    Err(LabError(format!(
        "no lab namespace for {node} (is the lab up? see `natlab status`)"
    )))
}

fn exec(args: &[String]) -> Result<ExitCode, LabError> {
    let Some(node) = args.first() else {
        return Err(LabError(USAGE.into()));
    };
    let rest = &args[1..];
    let rest = match rest.first().map(String::as_str) {
        Some("--") => &rest[1..],
        _ => rest,
    };
    let Some((program, prog_args)) = rest.split_first() else {
        return Err(LabError("exec: no command given".into()));
    };
    let ns = resolve_node(node)?;
    // Interactive: inherit the terminal, no timeout.
    let status = cmd::in_ns(&ns, program, prog_args)
        .status()
        .map_err(|e| LabError(format!("running {program} in {ns}: {e}")))?;
    Ok(ExitCode::from(
        status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)),
    ))
}

fn flush(args: &[String]) -> Result<ExitCode, LabError> {
    let [router] = args else {
        return Err(LabError(USAGE.into()));
    };
    let ns = resolve_node(router)?;
    pinhole_tests::lab::flush_router(&ns)?;
    println!("{router}: mappings flushed");
    Ok(ExitCode::SUCCESS)
}

fn stun_ping(args: &[String]) -> Result<ExitCode, LabError> {
    let opts = Opts::parse(args, &["bind", "timeout-ms"])?;
    let [server] = opts.positional.as_slice() else {
        return Err(LabError(USAGE.into()));
    };
    let server: SocketAddr = server
        .parse()
        .map_err(|e| LabError(format!("{server}: {e}")))?;
    let bind = opts
        .addr("bind")?
        .unwrap_or_else(|| "0.0.0.0:0".parse().expect("literal"));
    let mapped = stun::binding(bind, server, opts.millis(2000)?)?;
    println!("{mapped}");
    Ok(ExitCode::SUCCESS)
}

fn udp_recv(args: &[String]) -> Result<ExitCode, LabError> {
    let opts = Opts::parse(args, &["bind", "timeout-ms"])?;
    let bind = opts
        .addr("bind")?
        .ok_or_else(|| LabError("udp-recv needs --bind".into()))?;
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(opts.millis(3000)?))?;
    // Tell the caller we are listening (it may wait for this line before sending).
    println!("listening {}", sock.local_addr()?);
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            println!("from {from} {}", String::from_utf8_lossy(&buf[..n]));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(LabError(format!("nothing received: {e}"))),
    }
}

/// Sends one datagram; with `--wait-ms` the socket is connected and waits for what comes
/// back, printing `reply`, `refused` (an ICMP port unreachable) or `silence`.
fn udp_send(args: &[String]) -> Result<ExitCode, LabError> {
    let opts = Opts::parse(args, &["bind", "to", "text", "wait-ms", "count"])?;
    let bind = opts
        .addr("bind")?
        .unwrap_or_else(|| "0.0.0.0:0".parse().expect("literal"));
    let to = opts
        .addr("to")?
        .ok_or_else(|| LabError("udp-send needs --to".into()))?;
    let sock = UdpSocket::bind(bind)?;
    let text = opts.value("text").unwrap_or("hello").as_bytes();
    let count: u32 = opts
        .value("count")
        .unwrap_or("1")
        .parse()
        .map_err(|e| LabError(format!("--count: {e}")))?;
    let Some(wait) = opts.value("wait-ms") else {
        for _ in 0..count {
            sock.send_to(text, to)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let wait: u64 = wait
        .parse()
        .map_err(|e| LabError(format!("--wait-ms {wait}: {e}")))?;
    sock.connect(to)?;
    sock.send(text)?;
    sock.set_read_timeout(Some(Duration::from_millis(wait.max(1))))?;
    let mut buf = [0u8; 2048];
    let verdict = match sock.recv(&mut buf) {
        Ok(_) => "reply",
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "silence"
        }
        Err(e) => return Err(LabError(format!("receiving: {e}"))),
    };
    println!("{verdict}");
    Ok(ExitCode::SUCCESS)
}

/// One PCP MAP request for UDP `port` (RFC 6887 §11), or with `--peer` one PEER request
/// toward that remote peer (RFC 6887 §12), with pinhole's own codec; prints
/// `result <name> external <ip:port> lifetime <secs>` (`opcode <n>` added when the
/// answer is not of the opcode asked).
fn pcp_map(args: &[String]) -> Result<ExitCode, LabError> {
    use pinhole::portmap::MapProtocol;
    use pinhole::portmap::natpmp::SERVER_PORT;
    use pinhole::portmap::pcp::{ANY_V4, MapData, OpData, PeerData, Request, Response};

    let opts = Opts::parse(
        args,
        &[
            "gateway",
            "client",
            "port",
            "lifetime",
            "timeout-ms",
            "peer",
        ],
    )?;
    let peer: Option<SocketAddr> = opts
        .value("peer")
        .map(|v| v.parse().map_err(|e| LabError(format!("--peer {v}: {e}"))))
        .transpose()?;
    let parse_ip = |name: &str| -> Result<std::net::IpAddr, LabError> {
        let v = opts
            .value(name)
            .ok_or_else(|| LabError(format!("pcp-map needs --{name}")))?;
        v.parse()
            .map_err(|e| LabError(format!("--{name} {v}: {e}")))
    };
    let gateway = parse_ip("gateway")?;
    let client = parse_ip("client")?;
    let port: u16 = opts
        .value("port")
        .ok_or_else(|| LabError("pcp-map needs --port".into()))?
        .parse()
        .map_err(|e| LabError(format!("--port: {e}")))?;
    let lifetime: u32 = opts
        .value("lifetime")
        .unwrap_or("600")
        .parse()
        .map_err(|e| LabError(format!("--lifetime: {e}")))?;
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&std::process::id().to_be_bytes());
    nonce[4..6].copy_from_slice(&port.to_be_bytes());
    let map = MapData {
        nonce,
        protocol: MapProtocol::Udp,
        internal_port: port,
        external_port: port,
        external_ip: ANY_V4,
    };
    let req = Request {
        lifetime,
        client_ip: client,
        data: match peer {
            Some(remote) => OpData::Peer(PeerData { map, remote }),
            None => OpData::Map(map),
        },
    };
    let mut buf = [0u8; 1100];
    let len = req.emit(&mut buf).map_err(|e| LabError(e.to_string()))?;
    let sock = UdpSocket::bind(SocketAddr::new(client, 0))?;
    let deadline = std::time::Instant::now() + opts.millis(3000)?;
    let mut rx = [0u8; 1100];
    while std::time::Instant::now() < deadline {
        sock.send_to(&buf[..len], SocketAddr::new(gateway, SERVER_PORT))?;
        sock.set_read_timeout(Some(Duration::from_millis(250)))?;
        let Ok((n, _)) = sock.recv_from(&mut rx) else {
            continue;
        };
        let resp = Response::parse(&rx[..n]).map_err(|e| LabError(e.to_string()))?;
        let external = match resp.data {
            Some(OpData::Map(m) | OpData::Peer(PeerData { map: m, .. })) => {
                SocketAddr::new(m.external_ip, m.external_port).to_string()
            }
            _ => "-".to_owned(),
        };
        let asked = if peer.is_some() {
            pinhole::portmap::pcp::Opcode::Peer
        } else {
            pinhole::portmap::pcp::Opcode::Map
        };
        let opcode = if resp.opcode == asked {
            String::new()
        } else {
            format!(" opcode {:?}", resp.opcode)
        };
        println!(
            "result {} external {external} lifetime {}{opcode}",
            resp.result.name(),
            resp.lifetime
        );
        return Ok(ExitCode::SUCCESS);
    }
    Err(LabError(format!("no PCP answer from {gateway}")))
}

/// A fake PCP gateway (RFC 6887) on `--bind`:5351 for `--timeout-ms` (default 30 000):
/// answers every MAP with SUCCESS and `--map-external`, every PEER with SUCCESS and
/// `--peer-external` (the lifetime asked for, the request's nonce), nothing else; prints
/// `ready`, then one line per request: `MAP|PEER lifetime <secs> port <internal> [remote
/// <ip:port>]`. It forwards nothing: it is for what a client asks and does with answers.
fn pcp_fake(args: &[String]) -> Result<ExitCode, LabError> {
    use pinhole::portmap::natpmp::SERVER_PORT;
    use pinhole::portmap::pcp::{OpData, Opcode, Request, Response, ResultCode};

    let opts = Opts::parse(
        args,
        &["bind", "map-external", "peer-external", "timeout-ms"],
    )?;
    let addr = |name: &str| -> Result<SocketAddr, LabError> {
        let v = opts
            .value(name)
            .ok_or_else(|| LabError(format!("pcp-fake needs --{name}")))?;
        v.parse()
            .map_err(|e| LabError(format!("--{name} {v}: {e}")))
    };
    let bind: std::net::IpAddr = opts
        .value("bind")
        .ok_or_else(|| LabError("pcp-fake needs --bind".into()))?
        .parse()
        .map_err(|e| LabError(format!("--bind: {e}")))?;
    let (map_ext, peer_ext) = (addr("map-external")?, addr("peer-external")?);
    let sock = UdpSocket::bind(SocketAddr::new(bind, SERVER_PORT))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    println!("ready");
    let start = std::time::Instant::now();
    let deadline = start + opts.millis(30_000)?;
    let mut buf = [0u8; 1100];
    while std::time::Instant::now() < deadline {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(req) = Request::parse(&buf[..n]) else {
            continue;
        };
        let (opcode, data, line) = match req.data {
            OpData::Map(mut m) => {
                let line = format!("MAP lifetime {} port {}", req.lifetime, m.internal_port);
                m.external_ip = map_ext.ip();
                m.external_port = map_ext.port();
                (Opcode::Map, OpData::Map(m), line)
            }
            OpData::Peer(mut p) => {
                let line = format!(
                    "PEER lifetime {} port {} remote {}",
                    req.lifetime, p.map.internal_port, p.remote
                );
                p.map.external_ip = peer_ext.ip();
                p.map.external_port = peer_ext.port();
                (Opcode::Peer, OpData::Peer(p), line)
            }
            OpData::Announce => continue,
        };
        println!("{line}");
        let resp = Response {
            result: ResultCode::SUCCESS,
            lifetime: req.lifetime,
            epoch: u32::try_from(start.elapsed().as_secs()).unwrap_or(u32::MAX),
            opcode,
            data: Some(data),
        };
        let mut out = [0u8; 128];
        let len = resp.emit(&mut out).map_err(|e| LabError(e.to_string()))?;
        sock.send_to(&out[..len], from)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs pinhole's network monitor (`pinhole::driver::netmon`) in this namespace: prints
/// `ready` once it listens, then one JSON line per debounced change (its kinds and the
/// usable addresses after it), until `--count` changes (default 1) or `--timeout-ms`
/// (default 10 000; exit 1 then).
fn watch_network(args: &[String]) -> Result<ExitCode, LabError> {
    let opts = Opts::parse(args, &["count", "timeout-ms"])?;
    let count: usize = opts
        .value("count")
        .unwrap_or("1")
        .parse()
        .map_err(|e| LabError(format!("--count: {e}")))?;
    let timeout = Duration::from_millis(
        opts.value("timeout-ms")
            .unwrap_or("10000")
            .parse()
            .map_err(|e| LabError(format!("--timeout-ms: {e}")))?,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError(format!("runtime: {e}")))?;
    rt.block_on(async {
        let mut monitor = pinhole::driver::netmon::watch()
            .map_err(|e| LabError(format!("network monitor: {e}")))?;
        println!("ready");
        let deadline = tokio::time::Instant::now() + timeout;
        for _ in 0..count {
            let change = tokio::time::timeout_at(deadline, monitor.changed())
                .await
                .map_err(|_| LabError("no network change within --timeout-ms".into()))?
                .ok_or_else(|| LabError("the network monitor stopped".into()))?;
            let ips: Vec<String> = change
                .usable_ips()
                .iter()
                .map(|ip| ip.to_string())
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "links": change.change.links,
                    "addresses": change.change.addresses,
                    "default_route": change.change.default_route,
                    "overrun": change.change.overrun,
                    "ips": ips,
                })
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
