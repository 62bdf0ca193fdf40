//! Port mapping on tokio: the gateway's address, one UDP socket for PCP and NAT-PMP, and
//! UPnP IGD through `igd-next`, around the sans-IO [`Mapper`] and [`Probe`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use igd_next::{Gateway, PortMappingProtocol};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{DriverError, io, os_seed};
use crate::portmap::{
    ANNOUNCE_PORT, MapProtocol, Mapper, MapperConfig, MapperEvent, Probe, ProbeReport,
    UPNP_TIMEOUT, UpnpCommand, UpnpResult, default_gateway_from_proc_route, natpmp,
};
use crate::{Protocol, Received};

/// How long a release (deletion) may take at shutdown before the driver gives up.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// The budget of the netcheck port-mapping probe.
pub const PROBE_BUDGET: Duration = Duration::from_millis(2500);
/// SSDP unicast search timeout (to the gateway itself).
const SSDP_UNICAST_TIMEOUT: Duration = Duration::from_millis(1200);
/// SSDP multicast search timeout.
const SSDP_MULTICAST_TIMEOUT: Duration = Duration::from_millis(2000);

/// Where port-mapping requests go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayTarget {
    /// The gateway.
    pub gateway: IpAddr,
    /// This host's address toward it.
    pub local_ip: IpAddr,
    /// Whether UPnP may search by multicast on the local network (only when the gateway
    /// was discovered from the routing table, not when it was given explicitly).
    pub multicast: bool,
}

impl GatewayTarget {
    /// An explicit gateway and local address (mobile hosts know them; tests point at
    /// loopback). UPnP then searches by unicast to this gateway only.
    pub fn explicit(gateway: IpAddr, local_ip: IpAddr) -> Self {
        Self {
            gateway,
            local_ip,
            multicast: false,
        }
    }
}

/// Finds the default IPv4 gateway (Linux: `/proc/net/route`) and the local address the
/// kernel would use toward it. Sends nothing.
pub async fn discover_gateway() -> Result<GatewayTarget, DriverError> {
    // A small procfs read: blocking is fine.
    let text = std::fs::read_to_string("/proc/net/route").map_err(io("reading /proc/net/route"))?;
    let gw = default_gateway_from_proc_route(&text).ok_or_else(|| DriverError::Io {
        context: "finding the default gateway".into(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no default IPv4 route"),
    })?;
    let local_ip = local_ip_toward(IpAddr::V4(gw)).await?;
    Ok(GatewayTarget {
        gateway: IpAddr::V4(gw),
        local_ip,
        multicast: true,
    })
}

/// The local address the kernel picks toward `ip` (a UDP connect sends nothing).
pub async fn local_ip_toward(ip: IpAddr) -> Result<IpAddr, DriverError> {
    let any: IpAddr = if ip.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0)).await.map_err(io("binding"))?;
    s.connect((ip, natpmp::SERVER_PORT))
        .await
        .map_err(io(format!("routing toward {ip}")))?;
    Ok(s.local_addr().map_err(io("local address"))?.ip())
}

/// The UPnP side: discovery (cached) and the SOAP calls, each bounded.
///
/// `igd-next`'s blocking client (HTTP/1.1 over `attohttpc`, every request bounded by its
/// own timeouts) runs on a detached thread per command: its async client pulls in hyper
/// with HTTP/2, which alone would take the C library over its size budget. A detached
/// thread never holds up the runtime's shutdown or the process's exit; the driver stops
/// waiting after [`UPNP_TIMEOUT`].
#[derive(Clone)]
struct Upnp {
    target: GatewayTarget,
    igd: Arc<Mutex<Option<Gateway>>>,
}

impl Upnp {
    fn new(target: GatewayTarget) -> Self {
        Self {
            target,
            igd: Arc::new(Mutex::new(None)),
        }
    }

    fn search(&self) -> Result<Gateway, String> {
        let cached = self.igd.lock().map(|g| g.clone()).unwrap_or(None);
        if let Some(g) = cached {
            return Ok(g);
        }
        let bind = SocketAddr::new(self.target.local_ip, 0);
        let mut unicast = igd_next::SearchOptions::default();
        unicast.bind_addr = bind;
        unicast.broadcast_address = SocketAddr::new(self.target.gateway, 1900);
        unicast.timeout = Some(SSDP_UNICAST_TIMEOUT);
        unicast.single_search_timeout = Some(SSDP_UNICAST_TIMEOUT);
        let found = match igd_next::search_gateway(unicast) {
            Ok(g) => Ok(g),
            Err(e) if self.target.multicast => {
                debug!(error = %e, "SSDP unicast to the gateway failed; trying multicast");
                let mut multicast = igd_next::SearchOptions::default();
                multicast.bind_addr = bind;
                multicast.timeout = Some(SSDP_MULTICAST_TIMEOUT);
                multicast.single_search_timeout = Some(SSDP_MULTICAST_TIMEOUT);
                igd_next::search_gateway(multicast)
            }
            Err(e) => Err(e),
        };
        let g = found.map_err(|e| format!("no IGD found: {e}"))?;
        if let Ok(mut slot) = self.igd.lock() {
            *slot = Some(g.clone());
        }
        Ok(g)
    }

    /// Runs `cmd` on a thread of its own; the answer, or a failure after [`UPNP_TIMEOUT`].
    async fn run(&self, cmd: UpnpCommand) -> UpnpResult {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("pinhole-upnp".into())
            .spawn(move || {
                let _ = tx.send(this.run_blocking(cmd));
            });
        if let Err(e) = spawned {
            return UpnpResult::Failed(format!("cannot start the UPnP thread: {e}"));
        }
        match tokio::time::timeout(UPNP_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => UpnpResult::Failed("the UPnP thread ended without an answer".into()),
            Err(_) => UpnpResult::Failed("timed out".into()),
        }
    }

    fn run_blocking(&self, cmd: UpnpCommand) -> UpnpResult {
        let g = match self.search() {
            Ok(g) => g,
            Err(e) => return UpnpResult::Failed(e),
        };
        let proto = |p: MapProtocol| match p {
            MapProtocol::Udp => PortMappingProtocol::UDP,
            MapProtocol::Tcp => PortMappingProtocol::TCP,
        };
        match cmd {
            UpnpCommand::Probe => UpnpResult::Available {
                external_ip: g.get_external_ip().ok(),
            },
            UpnpCommand::Map {
                protocol,
                internal,
                external_port,
                lifetime,
            } => {
                let Ok(ip) = g.get_external_ip() else {
                    return UpnpResult::Failed("GetExternalIPAddress failed".into());
                };
                let description = "pinhole";
                let port = if external_port != 0
                    && g.add_port(
                        proto(protocol),
                        external_port,
                        internal,
                        lifetime,
                        description,
                    )
                    .is_ok()
                {
                    Ok(external_port)
                } else {
                    g.add_any_port(proto(protocol), internal, lifetime, description)
                        .map_err(|e| e.to_string())
                };
                match port {
                    Ok(p) => UpnpResult::Mapped {
                        external: SocketAddr::new(ip, p),
                        lifetime,
                    },
                    Err(e) => UpnpResult::Failed(e),
                }
            }
            UpnpCommand::Delete {
                protocol,
                external_port,
            } => match g.remove_port(proto(protocol), external_port) {
                Ok(()) => UpnpResult::Deleted,
                Err(e) => UpnpResult::Failed(e.to_string()),
            },
        }
    }
}

async fn bind_near(target: &GatewayTarget) -> Result<(Arc<UdpSocket>, SocketAddr), DriverError> {
    let s = UdpSocket::bind((target.local_ip, 0))
        .await
        .map_err(io(format!("binding {}", target.local_ip)))?;
    let local = s.local_addr().map_err(io("local address"))?;
    Ok((Arc::new(s), local))
}

/// Binds the port on which the gateway's announcements arrive (multicast to
/// 224.0.0.1:[`ANNOUNCE_PORT`]), shared with other listeners (`SO_REUSEADDR` and
/// `SO_REUSEPORT`). `None` when that is impossible (then restarts are noticed at renewals).
fn announcement_socket(local_ip: IpAddr) -> Option<UdpSocket> {
    let IpAddr::V4(local_v4) = local_ip else {
        return None;
    };
    let bind = || -> std::io::Result<UdpSocket> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, ANNOUNCE_PORT)).into())?;
        // Every multicast-capable interface is in 224.0.0.1 already; joining explicitly
        // matters where sockets only hear groups they joined.
        if let Err(e) = s.join_multicast_v4(&ANNOUNCE_GROUP, &local_v4) {
            debug!(error = %e, "joining 224.0.0.1 failed");
        }
        UdpSocket::from_std(s.into())
    };
    match bind() {
        Ok(s) => Some(s),
        Err(e) => {
            debug!(error = %e, port = ANNOUNCE_PORT, "cannot hear gateway announcements");
            None
        }
    }
}

/// The all-hosts group to which gateways announce (RFC 6887 §8.2, RFC 6886 §3.2.1).
const ANNOUNCE_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// Receives on `sock` if there is one; otherwise never completes.
async fn recv_opt(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Runs a [`Mapper`] until it cannot map, `on_event` returns false, or `stop` completes;
/// then deletes the mapping (bounded by [`RELEASE_TIMEOUT`]).
///
/// It also listens for the gateway's announcements on port [`ANNOUNCE_PORT`] when it can.
/// With [`MapperConfig::verify`] set (UDP), it binds the mapped port itself
/// (`local_ip:internal_port`) to receive the reflector's answers, so that port must be free:
/// this is for checking a gateway, or for a socket pinhole owns; an application that maps
/// its own socket feeds [`Mapper::handle_input`] itself instead.
pub async fn run_mapper(
    target: GatewayTarget,
    mut config: MapperConfig,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(&MapperEvent) -> bool,
) -> Result<(), DriverError> {
    config.gateway = target.gateway;
    config.local_ip = target.local_ip;
    let (sock, local) = bind_near(&target).await?;
    let verify_sock = match config.verify {
        Some(_) if config.protocol == MapProtocol::Udp => {
            let at = SocketAddr::new(target.local_ip, config.internal_port);
            let s = UdpSocket::bind(at).await.map_err(io(format!(
                "binding the mapped port {at} to receive the verification (it must be free)"
            )))?;
            Some(s)
        }
        _ => None,
    };
    let verify_local = match &verify_sock {
        Some(s) => Some(s.local_addr().map_err(io("local address"))?),
        None => None,
    };
    let announcements = announcement_socket(target.local_ip);
    let upnp = Upnp::new(target);
    let (upnp_tx, mut upnp_rx) = mpsc::channel::<UpnpResult>(8);
    let mut mapper = Mapper::new(Instant::now(), config, local, os_seed()?);
    let mut buf = vec![0u8; 1500];
    let mut vbuf = vec![0u8; 1500];
    let mut abuf = vec![0u8; 1500];
    let mut release_deadline: Option<tokio::time::Instant> = None;
    // UPnP operations in flight; dropping the set when this returns aborts them.
    let mut upnp_tasks = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Events first: a release that `on_event` asks for queues a deletion, which must
        // go out now, not when the next timer fires.
        while let Some(ev) = mapper.poll_event() {
            let keep = on_event(&ev);
            if matches!(ev, MapperEvent::Released | MapperEvent::Unavailable(_)) {
                return Ok(());
            }
            if !keep && release_deadline.is_none() {
                mapper.release(Instant::now());
                release_deadline = Some(tokio::time::Instant::now() + RELEASE_TIMEOUT);
            }
        }
        while let Some(t) = mapper.poll_transmit() {
            let via = match &verify_sock {
                Some(v) if Some(t.source) == verify_local => v,
                _ => &*sock,
            };
            if let Err(e) = via.send_to(&t.contents, t.destination).await {
                debug!(to = %t.destination, error = %e, "send failed");
            }
        }
        while let Some(cmd) = mapper.poll_upnp() {
            let (u, tx) = (upnp.clone(), upnp_tx.clone());
            upnp_tasks.spawn(async move {
                let _ = tx.send(u.run(cmd).await).await;
            });
        }
        if mapper.is_finished() {
            return Ok(());
        }
        let wake = mapper
            .poll_timeout()
            .map(tokio::time::Instant::from)
            .into_iter()
            .chain(release_deadline)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: &buf[..n],
                    };
                    if !mapper.handle_input(Instant::now(), rx) {
                        debug!(%from, "datagram not from the gateway dropped");
                    }
                }
                Err(e) => debug!(error = %e, "receive error"),
            },
            r = recv_opt(verify_sock.as_ref(), &mut vbuf) => match (r, verify_local) {
                (Ok((n, from)), Some(destination)) => {
                    let rx = Received { proto: Protocol::Udp, source: from, destination, contents: &vbuf[..n] };
                    if !mapper.handle_input(Instant::now(), rx) {
                        debug!(%from, "datagram on the mapped port that is not a verification dropped");
                    }
                }
                (Err(e), _) => debug!(error = %e, "receive error on the mapped port"),
                _ => {}
            },
            r = recv_opt(announcements.as_ref(), &mut abuf) => match r {
                Ok((n, from)) => {
                    let destination = SocketAddr::new(ANNOUNCE_GROUP.into(), ANNOUNCE_PORT);
                    let rx = Received { proto: Protocol::Udp, source: from, destination, contents: &abuf[..n] };
                    if !mapper.handle_input(Instant::now(), rx) {
                        debug!(%from, "announcement not from the gateway dropped");
                    }
                }
                Err(e) => debug!(error = %e, "receive error on the announcement port"),
            },
            Some(r) = upnp_rx.recv() => mapper.handle_upnp(Instant::now(), r),
            // Reap finished UPnP tasks (their answers came through the channel).
            Some(_) = upnp_tasks.join_next(), if !upnp_tasks.is_empty() => {}
            _ = tokio::time::sleep_until(wake) => {
                if release_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    debug!("release not confirmed in time");
                    on_event(&MapperEvent::Released);
                    return Ok(());
                }
                mapper.handle_timeout(Instant::now());
            }
            _ = &mut stop, if release_deadline.is_none() => {
                mapper.release(Instant::now());
                release_deadline = Some(tokio::time::Instant::now() + RELEASE_TIMEOUT);
            }
        }
    }
}

/// Which port-mapping protocols the gateway speaks (no mapping is made), within
/// [`PROBE_BUDGET`].
pub async fn probe(target: GatewayTarget, upnp_enabled: bool) -> Result<ProbeReport, DriverError> {
    let (sock, local) = bind_near(&target).await?;
    let mut probe = Probe::new(Instant::now(), target.gateway, local, upnp_enabled);
    let upnp = Upnp::new(target);
    let upnp_task = probe
        .poll_upnp()
        .map(|cmd| tokio::spawn(async move { upnp.run(cmd).await }));
    let deadline = tokio::time::Instant::now() + PROBE_BUDGET;
    let mut buf = vec![0u8; 1500];
    loop {
        while let Some(t) = probe.poll_transmit() {
            if let Err(e) = sock.send_to(&t.contents, t.destination).await {
                debug!(to = %t.destination, error = %e, "send failed");
            }
        }
        if probe.udp_done() {
            break;
        }
        let wake = probe
            .poll_timeout()
            .map_or(deadline, |t| tokio::time::Instant::from(t).min(deadline));
        tokio::select! {
            r = sock.recv_from(&mut buf) => if let Ok((n, from)) = r {
                let rx = Received { proto: Protocol::Udp, source: from, destination: local, contents: &buf[..n] };
                probe.handle_input(Instant::now(), rx);
            },
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                probe.handle_timeout(Instant::now());
            }
        }
    }
    if let Some(task) = upnp_task {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(r)) => probe.handle_upnp(r),
            _ => probe.handle_upnp(UpnpResult::Failed("no answer within the budget".into())),
        }
    }
    Ok(probe.report().clone())
}
