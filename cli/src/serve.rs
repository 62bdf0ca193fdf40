//! `pinhole serve`: the development STUN and TURN servers.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use pinhole::driver;
use pinhole::stun::ServerConfig;

use crate::*;

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
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

pub(crate) async fn serve(args: ServeArgs) -> ExitCode {
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
