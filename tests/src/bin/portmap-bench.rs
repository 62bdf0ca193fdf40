//! Time to the first usable port mapping, per protocol and for `any`, against a real
//! gateway (miniupnpd in the NAT lab: run it inside a lab host's namespace; the
//! `lab_portmap_bench` test does).
//!
//! ```text
//! portmap-bench echo --bind ADDR
//!     A UDP echo server (the round-trip baseline), until killed; prints `listening ADDR`.
//! portmap-bench run --gateway IP [--local-ip IP] [--runs N] [--port P] [--echo ADDR]
//!                   [--modes pcp,natpmp,upnp,any] [--runtime cli|worker|current]
//!     N rounds; each maps with PCP, NAT-PMP, UPnP and `any` in turn (rotating which goes
//!     first), each on its own internal port from P on, through the library's driver
//!     (`driver::portmap::run_mapper` with an explicit gateway), timing from the call to
//!     the Mapped event, and releases the mapping before the next. Then times N round
//!     trips each, with blocking sockets and no driver: to the echo server, NAT-PMP
//!     external-address requests, and PCP and NAT-PMP MAP requests (each mapping deleted
//!     after). Prints a table in milliseconds; exits 1 if any mapping failed or came from
//!     the wrong protocol.
//!
//!     `--runtime`: `cli` (default) is the pinhole CLI's, two workers with the work in
//!     `block_on` on the main thread; `worker` spawns each mapping onto a worker;
//!     `current` is a current-thread runtime. PORTMAP_BENCH_VERBOSE=1 prints every run.
//! ```

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pinhole::driver::portmap::{GatewayTarget, local_ip_toward, run_mapper};
use pinhole::portmap::{MapProtocol, MapperConfig, MapperEvent, Via, ViaChoice, natpmp, pcp};

const USAGE: &str = "usage:
  portmap-bench echo --bind ADDR
  portmap-bench run --gateway IP [--local-ip IP] [--runs N] [--port P] [--echo ADDR]
                    [--modes pcp,natpmp,upnp,any] [--runtime cli|worker|current]";

/// How long one mapping may take before the run counts as failed.
const MAP_TIMEOUT: Duration = Duration::from_secs(10);
/// A pause between measurements, so that one's leftovers do not land in the next.
const SETTLE: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("echo") => echo(&args[1..]),
        Some("run") => run(&args[1..]),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portmap-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    opt(args, name)
        .map(|v| v.parse().map_err(|e| format!("{name} {v}: {e}")))
        .transpose()
}

fn echo(args: &[String]) -> Result<ExitCode, String> {
    let bind: SocketAddr = parse(args, "--bind")?.ok_or("echo needs --bind")?;
    let sock = UdpSocket::bind(bind).map_err(|e| format!("binding {bind}: {e}"))?;
    println!(
        "listening {}",
        sock.local_addr().map_err(|e| e.to_string())?
    );
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Only(Via),
    Any,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Only(Via::Pcp),
        Mode::Only(Via::NatPmp),
        Mode::Only(Via::Upnp),
        Mode::Any,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Only(v) => v.as_str(),
            Mode::Any => "any",
        }
    }

    fn choice(self) -> ViaChoice {
        match self {
            Mode::Only(v) => ViaChoice::Only(v),
            Mode::Any => ViaChoice::Any,
        }
    }
}

/// Maps once; returns the time to the Mapped event and the protocol that made it.
async fn map_once(target: GatewayTarget, mode: Mode, port: u16) -> Result<(Duration, Via), String> {
    let mut config = MapperConfig::new(target.gateway, target.local_ip, MapProtocol::Udp, port);
    config.lifetime = 120;
    config.via = mode.choice();
    let mut first = None;
    let mut failure = None;
    let start = Instant::now();
    let run = run_mapper(target, config, std::future::pending::<()>(), |ev| {
        match ev {
            MapperEvent::Mapped(m) => {
                first.get_or_insert((start.elapsed(), m.via));
                // Release it: the run ends with Released.
                return false;
            }
            MapperEvent::Unavailable(why) => failure = Some(why.clone()),
            _ => {}
        }
        true
    });
    let result = tokio::time::timeout(MAP_TIMEOUT, run).await;
    if std::env::var_os("PORTMAP_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{} port {port}: mapped after {:?}, done after {:?}",
            mode.name(),
            first.map(|f| f.0),
            start.elapsed()
        );
    }
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no mapping and release within {MAP_TIMEOUT:?}")),
    }
    first.ok_or_else(|| failure.unwrap_or_else(|| "no mapping".into()))
}

/// One UDP round trip from a fresh socket bound to `local`.
fn round_trip(local: IpAddr, to: SocketAddr, request: &[u8]) -> Result<Duration, String> {
    let sock = UdpSocket::bind((local, 0)).map_err(|e| e.to_string())?;
    sock.connect(to).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    sock.send(request).map_err(|e| e.to_string())?;
    sock.recv(&mut buf)
        .map_err(|e| format!("no answer from {to}: {e}"))?;
    Ok(start.elapsed())
}

struct Stats {
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

/// Nearest-rank percentiles, in milliseconds.
fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
        ms[i - 1]
    };
    Stats {
        median: rank(0.5),
        p90: rank(0.9),
        min: ms[0],
        max: ms[ms.len() - 1],
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let gateway: IpAddr = parse(args, "--gateway")?.ok_or("run needs --gateway")?;
    let runs: usize = parse(args, "--runs")?.unwrap_or(20).max(1);
    let port: u16 = parse(args, "--port")?.unwrap_or(41000);
    let echo: Option<SocketAddr> = parse(args, "--echo")?;
    let local_ip: Option<IpAddr> = parse(args, "--local-ip")?;
    let runtime = opt(args, "--runtime").unwrap_or("cli");
    // `cli`: the pinhole CLI's runtime (two workers, the command in `block_on` on the main
    // thread); `worker`: the same, the mapper spawned onto a worker; `current`: one thread.
    let rt = match runtime {
        "cli" | "worker" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        "current" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        other => return Err(format!("--runtime {other}: cli, worker or current")),
    }
    .map_err(|e| e.to_string())?;
    let on_worker = runtime == "worker";
    let modes: Vec<&str> = opt(args, "--modes")
        .unwrap_or("pcp,natpmp,upnp,any")
        .split(',')
        .collect();
    rt.block_on(async move {
        let local_ip = match local_ip {
            Some(ip) => ip,
            None => local_ip_toward(gateway).await.map_err(|e| e.to_string())?,
        };
        let target = GatewayTarget::explicit(gateway, local_ip);
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); Mode::ALL.len()];
        let mut errors = Vec::new();
        for round in 0..runs {
            for k in 0..Mode::ALL.len() {
                let i = (round + k) % Mode::ALL.len();
                let mode = Mode::ALL[i];
                if !modes.contains(&mode.name()) {
                    continue;
                }
                let expect = match mode {
                    Mode::Only(v) => v,
                    Mode::Any => Via::Pcp,
                };
                let once = map_once(target, mode, port + i as u16);
                let result = if on_worker {
                    tokio::spawn(once).await.map_err(|e| e.to_string()).and_then(|r| r)
                } else {
                    once.await
                };
                match result {
                    Ok((t, via)) if via == expect => samples[i].push(t),
                    Ok((_, via)) => errors.push(format!(
                        "{}: mapped via {} instead of {}",
                        mode.name(),
                        via.as_str(),
                        expect.as_str()
                    )),
                    Err(e) => errors.push(format!("{}: {e}", mode.name())),
                }
                tokio::time::sleep(SETTLE).await;
            }
        }
        // Round trips, off the runtime's workers (blocking sockets, no driver).
        let raw_port = port + Mode::ALL.len() as u16;
        let rtts = tokio::task::spawn_blocking(move || raw_round_trips(local_ip, gateway, echo, runs, raw_port))
            .await
            .map_err(|e| e.to_string())??;

        println!(
            "time to the first usable mapping, {runs} runs each, gateway {gateway}, runtime {runtime} (ms)"
        );
        println!(
            "{:<34} {:>8} {:>8} {:>8} {:>8} {:>4}",
            "", "median", "p90", "min", "max", "n"
        );
        let row = |name: &str, s: &[Duration]| {
            if s.is_empty() {
                println!("{name:<34} {:>8}", "-");
                return;
            }
            let st = stats(s);
            println!(
                "{name:<34} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>4}",
                st.median,
                st.p90,
                st.min,
                st.max,
                s.len()
            );
        };
        for (i, mode) in Mode::ALL.iter().enumerate() {
            if !modes.contains(&mode.name()) {
                continue;
            }
            row(&format!("map via {}", mode.name()), &samples[i]);
        }
        if !rtts.echo.is_empty() {
            row("RTT: UDP echo on the gateway", &rtts.echo);
        }
        row("RTT: NAT-PMP external address", &rtts.natpmp_external);
        row("raw PCP MAP (no driver)", &rtts.pcp_map);
        row("raw NAT-PMP MAP (no driver)", &rtts.natpmp_map);
        if errors.is_empty() {
            Ok(ExitCode::SUCCESS)
        } else {
            for e in &errors {
                eprintln!("portmap-bench: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
    })
}

/// Round trips measured with blocking sockets and the codecs alone.
struct RawTimes {
    /// To the UDP echo server on the gateway.
    echo: Vec<Duration>,
    /// NAT-PMP external-address requests (no state on the gateway).
    natpmp_external: Vec<Duration>,
    /// PCP MAP requests that create a mapping (deleted, untimed, after each).
    pcp_map: Vec<Duration>,
    /// NAT-PMP MAP requests that create a mapping (deleted likewise).
    natpmp_map: Vec<Duration>,
}

fn raw_round_trips(
    local: IpAddr,
    gateway: IpAddr,
    echo: Option<SocketAddr>,
    runs: usize,
    port: u16,
) -> Result<RawTimes, String> {
    let gw = SocketAddr::new(gateway, natpmp::SERVER_PORT);
    let mut t = RawTimes {
        echo: Vec::new(),
        natpmp_external: Vec::new(),
        pcp_map: Vec::new(),
        natpmp_map: Vec::new(),
    };
    let mut ext = [0u8; 12];
    let ext_len = natpmp::Request::ExternalAddress.emit(&mut ext);
    let pcp_req = |lifetime: u32| -> Result<Vec<u8>, String> {
        let req = pcp::Request {
            lifetime,
            client_ip: local,
            data: pcp::OpData::Map(pcp::MapData {
                nonce: *b"portmapbench",
                protocol: MapProtocol::Udp,
                internal_port: port,
                external_port: 0,
                external_ip: pcp::ANY_V4,
            }),
        };
        let mut b = [0u8; 80];
        let n = req.emit(&mut b).map_err(|e| e.to_string())?;
        Ok(b[..n].to_vec())
    };
    let natpmp_req = |lifetime: u32| {
        let mut b = [0u8; 12];
        let n = natpmp::Request::Map {
            protocol: MapProtocol::Udp,
            internal_port: port + 1,
            suggested_external_port: 0,
            lifetime,
        }
        .emit(&mut b);
        b[..n].to_vec()
    };
    for _ in 0..runs {
        if let Some(e) = echo {
            t.echo.push(round_trip(local, e, b"ping")?);
        }
        t.natpmp_external
            .push(round_trip(local, gw, &ext[..ext_len])?);
        t.pcp_map.push(round_trip(local, gw, &pcp_req(120)?)?);
        round_trip(local, gw, &pcp_req(0)?)?;
        t.natpmp_map.push(round_trip(local, gw, &natpmp_req(120))?);
        round_trip(local, gw, &natpmp_req(0))?;
        std::thread::sleep(SETTLE);
    }
    Ok(t)
}
