//! `pinhole`: the command-line face of the pinhole NAT traversal library.

mod allocate;
mod connect;
mod demo;
mod icmp;
mod map;
mod netcheck;
mod serve;

use allocate::*;
use map::*;
use netcheck::*;
use serve::*;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

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

/// A `--ca PEM` file: its bytes when they hold certificates the TLS client can use, else
/// the usage error naming the file.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let b = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
    match pinhole::driver::turn::check_ca_pem(&b) {
        Ok(_) => Ok(b),
        Err(pinhole::driver::DriverError::Certificates(why)) => {
            Err(format!("--ca {}: {why}", path.display()))
        }
        Err(e) => Err(format!("--ca {}: {e}", path.display())),
    }
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
    use pinhole::netcheck::Report;

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
        let report = |mapping| {
            let mut r = Report::unknown(Vec::new());
            r.udp = true;
            r.public = vec![mapped];
            r.mapping = mapping;
            r.filtering = Behaviour::AddressAndPortDependent;
            r.servers = vec![ServerReport {
                label: "stun:x".into(),
                addr: server,
                rtt: Some(Duration::from_millis(9)),
                mapped: Some(mapped),
                other_address: None,
            }];
            r
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
