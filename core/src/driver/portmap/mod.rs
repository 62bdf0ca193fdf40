//! Port mapping on tokio: the gateway's address, one UDP socket for PCP and NAT-PMP, and
//! UPnP IGD (SSDP over UDP, HTTP/1.1 over TCP, around the sans-IO [`upnp`] codec), around
//! the sans-IO [`Mapper`], [`Probe`] and [`Delete`]; [`list_mappings`] reads the
//! gateway's UPnP port-mapping table with [`upnp::MappingLister`].
//!
//! The mapper, the probe and the deletion are configurations of the driver's generic
//! runner: their datagrams (PCP, NAT-PMP, the verification) go over the runner's sockets;
//! their UPnP operations come out as events and run as tasks on the IGD client
//! (`upnp_client`), whose results come back, with the gateway's announcements, through
//! the runner's command input (`machines`: each machine as the runner drives it).

mod machines;
mod upnp_client;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::runner::{Commands, Immediate, Run, run_machine_with};
use super::sockets::Sockets;
use super::{DriverError, io, os_seed};
use crate::portmap::upnp::{self, Control, UpnpError};
use crate::portmap::{
    Delete, DeleteReport, MapProtocol, Mapper, MapperConfig, MapperEvent, Probe, ProbeReport,
    ViaChoice, default_gateway_from_proc_route, natpmp,
};
use machines::{Budgeted, Exchange, Input, MapperRun, SideWork, Step};
use upnp_client::{Upnp, http};

/// How long a release (deletion) may take at shutdown before the driver gives up.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// The budget of the netcheck port-mapping probe.
pub const PROBE_BUDGET: Duration = Duration::from_millis(2500);
/// How long [`list_mappings`] may take in all (each exchange is bounded on its own too).
pub const LIST_BUDGET: Duration = Duration::from_secs(30);
/// How long [`delete_mapping`] may take: UPnP's bound, and a little.
pub const DELETE_BUDGET: Duration = Duration::from_secs(6);

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

/// Binds the runner's sockets, and one UDP socket toward the gateway (for PCP and
/// NAT-PMP) among them; its address.
async fn sockets_near(target: &GatewayTarget) -> Result<(Sockets, SocketAddr), DriverError> {
    let mut sockets = Sockets::bind(&[]).await?;
    let local = sockets
        .add(SocketAddr::new(target.local_ip, 0))
        .await
        .map_err(context(format!("binding {}", target.local_ip)))?;
    Ok((sockets, local))
}

/// Replaces the context of an I/O error.
fn context(what: String) -> impl FnOnce(DriverError) -> DriverError {
    move |e| match e {
        DriverError::Io { source, .. } => DriverError::Io {
            context: what,
            source,
        },
        other => other,
    }
}

/// Runs a [`Mapper`] until it cannot map, `on_event` returns false, or `stop` completes;
/// then deletes the mapping (bounded by [`RELEASE_TIMEOUT`]).
///
/// It also listens for the gateway's announcements on port
/// [`ANNOUNCE_PORT`](crate::portmap::ANNOUNCE_PORT) when it can.
/// With [`MapperConfig::verify`] set (UDP), it binds the mapped port itself
/// (`local_ip:internal_port`) to receive the reflector's answers, so that port must be free:
/// this is for checking a gateway, or for a socket pinhole owns; an application that maps
/// its own socket feeds [`Mapper::handle_input`] itself instead.
///
/// A configuration of the driver's generic runner: PCP, NAT-PMP and the verification
/// over its sockets, UPnP operations as tasks whose results come back (with the
/// announcements) through its command input.
pub async fn run_mapper(
    target: GatewayTarget,
    mut config: MapperConfig,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(&MapperEvent) -> bool,
) -> Result<(), DriverError> {
    config.gateway = target.gateway;
    config.local_ip = target.local_ip;
    let (mut sockets, local) = sockets_near(&target).await?;
    if config.verify.is_some() && config.protocol == MapProtocol::Udp {
        let at = SocketAddr::new(target.local_ip, config.internal_port);
        sockets.add(at).await.map_err(context(format!(
            "binding the mapped port {at} to receive the verification (it must be free)"
        )))?;
    }
    let (tx, rx) = mpsc::channel(16);
    let mut side = SideWork::new(target, tx);
    side.announcements(target.local_ip);
    let mut machine = MapperRun::new(Mapper::new(Instant::now(), config, local, os_seed()?));
    let run = Run {
        stop,
        on_stop: |m: &mut MapperRun| m.release(Instant::now()),
        // Immediate: `on_event` may borrow from the caller's task (see `Immediate`).
        on_event: Immediate(
            |m: &mut MapperRun, _: &mut Sockets, step: Step<MapperEvent>| {
                match step {
                    Step::Event(ev) => {
                        let keep = on_event(&ev);
                        if matches!(ev, MapperEvent::Released(_) | MapperEvent::Unavailable(_)) {
                            ControlFlow::Break(())
                        } else {
                            if !keep {
                                // The deletion goes out before the runner waits again.
                                m.release(Instant::now());
                            }
                            ControlFlow::Continue(())
                        }
                    }
                    Step::Upnp(cmd) => {
                        side.upnp(cmd);
                        ControlFlow::Continue(())
                    }
                    Step::Done => ControlFlow::Break(()),
                }
            },
        ),
        max_idle: Duration::from_secs(3600),
    };
    let commands = Commands {
        rx,
        on_command: Immediate(|m: &mut MapperRun, _: &mut Sockets, input: Input| {
            m.input(Instant::now(), input);
            ControlFlow::Continue(())
        }),
    };
    run_machine_with(&mut machine, &mut sockets, run, Some(commands)).await;
    Ok(())
}

/// Runs `exchange` over `sockets` within `budget`; returns it finished (or given up).
async fn run_exchange<X: Exchange>(
    target: GatewayTarget,
    mut sockets: Sockets,
    exchange: X,
    budget: Duration,
) -> X {
    let (tx, rx) = mpsc::channel(4);
    let mut side = SideWork::new(target, tx);
    let mut machine = Budgeted::new(exchange, Instant::now() + budget);
    let run = Run {
        stop: std::future::pending(),
        on_stop: |_: &mut Budgeted<X>| {},
        on_event: Immediate(
            |_: &mut Budgeted<X>, _: &mut Sockets, step: Step<Infallible>| match step {
                Step::Upnp(cmd) => {
                    side.upnp(cmd);
                    ControlFlow::Continue(())
                }
                Step::Done => ControlFlow::Break(()),
                Step::Event(never) => match never {},
            },
        ),
        // The deadline bounds every wait.
        max_idle: budget,
    };
    let commands = Commands {
        rx,
        on_command: Immediate(|m: &mut Budgeted<X>, _: &mut Sockets, input: Input| {
            if let Input::Upnp(r) = input {
                m.upnp_answered(r);
            }
            ControlFlow::Continue(())
        }),
    };
    run_machine_with(&mut machine, &mut sockets, run, Some(commands)).await;
    machine.into_inner()
}

/// Which port-mapping protocols the gateway speaks (no mapping is made), within
/// [`PROBE_BUDGET`].
pub async fn probe(target: GatewayTarget, upnp_enabled: bool) -> Result<ProbeReport, DriverError> {
    let (sockets, local) = sockets_near(&target).await?;
    let probe = Probe::new(Instant::now(), target.gateway, local, upnp_enabled);
    let probe = run_exchange(target, sockets, probe, PROBE_BUDGET).await;
    Ok(probe.report().clone())
}

/// The gateway's port-mapping table, read over UPnP IGD (PCP and NAT-PMP have no operation
/// to list mappings): GetGenericPortMappingEntry for index 0, 1, … until the gateway
/// answers error 713, at most [`upnp::MAX_LISTED_MAPPINGS`] entries, within
/// [`LIST_BUDGET`] (each exchange within its own bound). Returns the WAN connection service
/// and the listing, which says how it ended; `Err` when no IGD could be found or its
/// description read ([`UpnpError::is_no_answer`]: nothing answered).
pub async fn list_mappings(
    target: GatewayTarget,
) -> Result<(Control, upnp::MappingLister), UpnpError> {
    let deadline = tokio::time::Instant::now() + LIST_BUDGET;
    let u = Upnp::new(target);
    let control = match tokio::time::timeout_at(deadline, u.search()).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(UpnpError::NotFound(format!(
                "no IGD found within {} s",
                LIST_BUDGET.as_secs()
            )));
        }
    };
    let mut lister = upnp::MappingLister::new();
    while let Some(request) = lister.next_request(&control) {
        match tokio::time::timeout_at(deadline, http(&control.url, &request)).await {
            Ok(Ok(resp)) => lister.handle_response(&resp),
            Ok(Err(e)) => lister.handle_failure(e),
            Err(_) => lister.handle_failure(UpnpError::Transport(format!(
                "the listing took longer than {} s",
                LIST_BUDGET.as_secs()
            ))),
        }
    }
    Ok((control, lister))
}

/// Deletes the `protocol` mapping of `port` that some other process made (see [`Delete`]):
/// PCP and NAT-PMP with lifetime 0 for the internal port, UPnP DeletePortMapping for the
/// external port, over the protocols `via` allows, at once; within [`DELETE_BUDGET`].
/// Returns what each protocol answered.
pub async fn delete_mapping(
    target: GatewayTarget,
    protocol: MapProtocol,
    port: u16,
    via: ViaChoice,
) -> Result<DeleteReport, DriverError> {
    let (sockets, local) = sockets_near(&target).await?;
    let delete = Delete::new(
        Instant::now(),
        target.gateway,
        local,
        protocol,
        port,
        via,
        os_seed()?,
    );
    let delete = run_exchange(target, sockets, delete, DELETE_BUDGET).await;
    Ok(delete.report().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    /// A task can run the mapper with a callback that borrows from the task, as
    /// `PeerConnection`'s port mapping does (a compile-time check: rustc cannot prove
    /// such a run `Send` through an `async` closure, rust-lang/rust#139475).
    #[test]
    fn a_task_can_run_the_mapper_with_a_borrowing_callback() {
        fn assert_send<T: Send>(_: &T) {}
        let task = async {
            let seen = std::sync::Mutex::new(Vec::new());
            let target = GatewayTarget::explicit(GATEWAY, LOCAL);
            let config = MapperConfig::new(GATEWAY, LOCAL, MapProtocol::Udp, 6000);
            let _ = run_mapper(target, config, std::future::pending(), |ev| {
                seen.lock().unwrap().push(format!("{ev:?}"));
                true
            })
            .await;
        };
        assert_send(&task);
    }
}
