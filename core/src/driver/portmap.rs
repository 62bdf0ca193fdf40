//! Port mapping on tokio: the gateway's address, one UDP socket for PCP and NAT-PMP, and
//! UPnP IGD (SSDP over UDP, HTTP/1.1 over TCP, around the sans-IO [`upnp`] codec), around
//! the sans-IO [`Mapper`], [`Probe`] and [`Delete`]; [`list_mappings`] reads the
//! gateway's UPnP port-mapping table with [`upnp::MappingLister`].

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::runner::{Commands, Immediate, Run, run_machine_with};
use super::sockets::Sockets;
use super::{DriverError, io, os_seed};
use crate::machine::Machine;
use crate::portmap::upnp::{Control, HttpUrl, UpnpError};
use crate::portmap::{
    ANNOUNCE_PORT, Delete, DeleteReport, MapProtocol, Mapper, MapperConfig, MapperEvent, Probe,
    ProbeReport, UPNP_TIMEOUT, UpnpCommand, UpnpResult, ViaChoice, default_gateway_from_proc_route,
    natpmp, upnp,
};
use crate::{Protocol, Received, Transmit};

/// How long a release (deletion) may take at shutdown before the driver gives up.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// The budget of the netcheck port-mapping probe.
pub const PROBE_BUDGET: Duration = Duration::from_millis(2500);
/// How long [`list_mappings`] may take in all (each exchange is bounded on its own too).
pub const LIST_BUDGET: Duration = Duration::from_secs(30);
/// How long [`delete_mapping`] may take: UPnP's bound, and a little.
pub const DELETE_BUDGET: Duration = Duration::from_secs(6);
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

/// The UPnP side: SSDP discovery and the device description (both cached), and the SOAP
/// actions, each bounded, over pinhole's own sans-IO UPnP codec ([`upnp`]).
#[derive(Clone)]
struct Upnp {
    target: GatewayTarget,
    control: Arc<tokio::sync::Mutex<Option<Control>>>,
}

impl Upnp {
    fn new(target: GatewayTarget) -> Self {
        Self {
            target,
            control: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The gateway's WAN connection service: SSDP (unicast to the gateway, then multicast
    /// when allowed), then the description. Concurrent callers wait for one search.
    async fn search(&self) -> Result<Control, UpnpError> {
        let mut slot = self.control.lock().await;
        if let Some(c) = slot.clone() {
            return Ok(c);
        }
        let location = self.ssdp().await?;
        let resp = http(&location, &upnp::get_request(&location)).await?;
        if resp.status != 200 {
            return Err(UpnpError::Status(resp.status));
        }
        let c = upnp::parse_description(&resp.body, &location)?;
        debug!(service = %c.service_type, control = ?c.url, "UPnP IGD found");
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn ssdp(&self) -> Result<HttpUrl, UpnpError> {
        let sock = UdpSocket::bind((self.target.local_ip, 0))
            .await
            .map_err(|e| UpnpError::NotFound(format!("SSDP socket: {e}")))?;
        let unicast = SocketAddr::new(self.target.gateway, upnp::SSDP_PORT);
        if let Some(l) = ssdp_round(
            &sock,
            unicast,
            SSDP_UNICAST_TIMEOUT,
            Some(self.target.gateway),
        )
        .await
        {
            return Ok(l);
        }
        if self.target.multicast {
            debug!("no SSDP answer from the gateway itself; searching by multicast");
            if let Some(l) =
                ssdp_round(&sock, upnp::SSDP_MULTICAST, SSDP_MULTICAST_TIMEOUT, None).await
            {
                return Ok(l);
            }
        }
        Err(UpnpError::NotFound(
            "no IGD answered the SSDP search".into(),
        ))
    }

    async fn run(&self, cmd: UpnpCommand) -> UpnpResult {
        match tokio::time::timeout(UPNP_TIMEOUT, self.run_unbounded(cmd)).await {
            Ok(r) => r,
            Err(_) => {
                UpnpResult::NoAnswer(format!("no answer within {} s", UPNP_TIMEOUT.as_secs()))
            }
        }
    }

    async fn run_unbounded(&self, cmd: UpnpCommand) -> UpnpResult {
        let c = match self.search().await {
            Ok(c) => c,
            Err(e) => return failure(None, &e),
        };
        let r = self.act(&c, cmd).await;
        if matches!(r, UpnpResult::NoAnswer(_)) {
            // The gateway may have restarted on another HTTP port: search again next time.
            *self.control.lock().await = None;
        }
        r
    }

    async fn act(&self, c: &Control, cmd: UpnpCommand) -> UpnpResult {
        match cmd {
            UpnpCommand::Probe => UpnpResult::Available {
                external_ip: external_ip(c).await.ok(),
            },
            UpnpCommand::Map {
                protocol,
                internal,
                external_port,
                lifetime,
            } => {
                let ip = match external_ip(c).await {
                    Ok(ip) => ip,
                    Err(e) => return failure(Some("GetExternalIPAddress"), &e),
                };
                match add_mapping(c, protocol, internal, external_port, lifetime).await {
                    Ok((port, lease)) => UpnpResult::Mapped {
                        external: SocketAddr::new(ip, port),
                        lifetime: lease,
                    },
                    Err(e) => failure(None, &e),
                }
            }
            UpnpCommand::Delete {
                protocol,
                external_port,
            } => {
                let port = external_port.to_string();
                let args = [
                    ("NewRemoteHost", ""),
                    ("NewExternalPort", port.as_str()),
                    ("NewProtocol", upnp_protocol(protocol)),
                ];
                match soap(c, "DeletePortMapping", &args).await {
                    Ok(_) => UpnpResult::Deleted,
                    Err(UpnpError::Fault { code, .. })
                        if code == upnp::codes::NO_SUCH_ENTRY_IN_ARRAY =>
                    {
                        UpnpResult::NoSuchMapping
                    }
                    Err(e) => failure(None, &e),
                }
            }
        }
    }
}

/// A failed UPnP operation as the mapper hears it: nothing answered, or the gateway refused
/// (or answered something unusable).
fn failure(action: Option<&str>, e: &UpnpError) -> UpnpResult {
    let why = match action {
        Some(a) => format!("{a}: {e}"),
        None => e.to_string(),
    };
    if e.is_no_answer() {
        UpnpResult::NoAnswer(why)
    } else {
        UpnpResult::Failed(why)
    }
}

/// How long one HTTP exchange with the gateway may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// How many random external ports an IGD v1 gateway is offered when the wanted ones are
/// taken (WANIPConnection:1 has no AddAnyPortMapping).
const V1_RANDOM_PORTS: usize = 6;

fn upnp_protocol(p: MapProtocol) -> &'static str {
    match p {
        MapProtocol::Udp => "UDP",
        MapProtocol::Tcp => "TCP",
    }
}

/// Sends the M-SEARCH to `to` (twice, against loss) and waits up to `wait` for an IGD's
/// answer, from `only_from` when given.
async fn ssdp_round(
    sock: &UdpSocket,
    to: SocketAddr,
    wait: Duration,
    only_from: Option<IpAddr>,
) -> Option<HttpUrl> {
    let request = upnp::search_request(to);
    let deadline = tokio::time::Instant::now() + wait;
    let resend = tokio::time::Instant::now() + wait / 3;
    let mut resent = false;
    if let Err(e) = sock.send_to(&request, to).await {
        debug!(%to, error = %e, "SSDP send failed");
        return None;
    }
    let mut buf = vec![0u8; 2048];
    loop {
        let until = if resent {
            deadline
        } else {
            resend.min(deadline)
        };
        match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                if only_from.is_some_and(|ip| ip != from.ip()) {
                    debug!(%from, "SSDP answer from another host ignored");
                    continue;
                }
                match upnp::parse_search_response(&buf[..n], from.ip()) {
                    Ok(location) => return Some(location),
                    Err(e) => debug!(%from, error = %e, "SSDP answer ignored"),
                }
            }
            Ok(Err(e)) => debug!(error = %e, "SSDP receive error"),
            Err(_) if !resent && tokio::time::Instant::now() < deadline => {
                resent = true;
                let _ = sock.send_to(&request, to).await;
            }
            Err(_) => return None,
        }
    }
}

/// One HTTP/1.1 exchange (`Connection: close`), bounded by [`HTTP_TIMEOUT`] and
/// [`upnp::MAX_HTTP_RESPONSE`].
async fn http(url: &HttpUrl, request: &[u8]) -> Result<upnp::HttpResponse, UpnpError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        // Only IP addresses (see `upnp::parse_search_response`): no DNS.
        let addr = url
            .socket_addr()
            .ok_or_else(|| UpnpError::Url(format!("{} is not an IP address", url.host)))?;
        let transport =
            |what: &str, e: std::io::Error| UpnpError::Transport(format!("{what} {addr}: {e}"));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| transport("connecting to", e))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| transport("sending to", e))?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| transport("reading from", e))?;
            buf.extend_from_slice(&chunk[..n]);
            match upnp::parse_http_response(&buf, n == 0) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) if buf.len() <= upnp::MAX_HTTP_RESPONSE => {}
                Ok(None) => return Err(UpnpError::Http("response too large")),
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(UpnpError::Transport(format!(
                "no answer from {} in time",
                url.host_header()
            )))
        })
}

/// A SOAP action; its output arguments, or the gateway's error.
async fn soap(
    c: &Control,
    action: &str,
    args: &[(&str, &str)],
) -> Result<Vec<(String, String)>, UpnpError> {
    let resp = http(&c.url, &upnp::soap_request(c, action, args)).await?;
    upnp::parse_soap_response(&resp, action)
}

async fn external_ip(c: &Control) -> Result<IpAddr, UpnpError> {
    let out = soap(c, "GetExternalIPAddress", &[]).await?;
    upnp::parse_external_ip(&out)
}

/// AddPortMapping for `wanted` (when not 0); else, or when it is taken, AddAnyPortMapping
/// (IGD v2) or AddPortMapping on the internal port and then a few random ports (IGD v1).
/// A gateway that only takes permanent leases (error 725) gets lease 0. Returns the
/// external port and the lease granted.
async fn add_mapping(
    c: &Control,
    protocol: MapProtocol,
    internal: SocketAddr,
    wanted: u16,
    lease: u32,
) -> Result<(u16, u32), UpnpError> {
    let proto = upnp_protocol(protocol);
    let mut lease = lease;
    let mut last = UpnpError::Soap("no port tried");
    // One action, retried once with lease 0 on 725.
    async fn attempt(
        c: &Control,
        action: &str,
        proto: &'static str,
        port: u16,
        internal: SocketAddr,
        lease: &mut u32,
    ) -> Result<Vec<(String, String)>, UpnpError> {
        for _ in 0..2 {
            let args = upnp::add_mapping_args(proto, port, internal, *lease);
            let refs: Vec<(&str, &str)> = args.iter().map(|(n, v)| (*n, v.as_str())).collect();
            match soap(c, action, &refs).await {
                Err(UpnpError::Fault { code, .. })
                    if code == upnp::codes::ONLY_PERMANENT_LEASES_SUPPORTED && *lease != 0 =>
                {
                    *lease = 0;
                }
                other => return other,
            }
        }
        Err(UpnpError::Soap("lease refused"))
    }
    if wanted != 0 {
        match attempt(c, "AddPortMapping", proto, wanted, internal, &mut lease).await {
            Ok(_) => return Ok((wanted, lease)),
            Err(e) if e.is_no_answer() => return Err(e),
            Err(e) => last = e,
        }
    }
    if c.is_v2() {
        let suggest = if wanted != 0 { wanted } else { internal.port() };
        match attempt(c, "AddAnyPortMapping", proto, suggest, internal, &mut lease).await {
            Ok(out) => {
                return upnp::argument(&out, "NewReservedPort")
                    .and_then(|p| p.parse().ok())
                    .filter(|&p: &u16| p != 0)
                    .map(|p| (p, lease))
                    .ok_or(UpnpError::Soap("AddAnyPortMapping: no NewReservedPort"));
            }
            Err(UpnpError::Fault { code, .. }) if code == upnp::codes::INVALID_ACTION => {}
            Err(e) => return Err(e),
        }
    }
    let mut seed = [0u8; 8];
    let _ = getrandom::fill(&mut seed);
    let mut x = u64::from_le_bytes(seed) | 1;
    let random = std::iter::repeat_with(move || {
        // xorshift64: only to spread the candidates.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1024 + (x % (65536 - 1024)) as u16
    });
    let candidates = std::iter::once(internal.port())
        .filter(|&p| p != wanted)
        .chain(random.take(V1_RANDOM_PORTS));
    for port in candidates {
        match attempt(c, "AddPortMapping", proto, port, internal, &mut lease).await {
            Ok(_) => return Ok((port, lease)),
            Err(e @ UpnpError::Fault { code, .. })
                if code == upnp::codes::CONFLICT_IN_MAPPING_ENTRY =>
            {
                last = e;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last)
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

/// Where announcements are addressed, as the mapper hears them.
const ANNOUNCE_TO: SocketAddr = SocketAddr::new(IpAddr::V4(ANNOUNCE_GROUP), ANNOUNCE_PORT);

/// Reads the gateway's announcements for the runner's command input. Their port is
/// shared with other listeners (`SO_REUSEPORT`), so it is not one of the runner's own
/// sockets; it never sends.
async fn read_announcements(sock: UdpSocket, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 1500];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if tx
                    .send(Input::Announcement(from, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "receive error on the announcement port"),
        }
    }
}

/// What reaches a port-mapping machine besides its own sockets: the runner's commands.
#[derive(Debug)]
enum Input {
    /// The UPnP operation the machine asked for finished.
    Upnp(UpnpResult),
    /// A datagram to 224.0.0.1:[`ANNOUNCE_PORT`] (see [`read_announcements`]): (source,
    /// bytes).
    Announcement(SocketAddr, Vec<u8>),
}

/// What a port-mapping machine asks of the runner, as its events.
#[derive(Debug)]
enum Step<E> {
    /// Something to report to the caller.
    Event(E),
    /// A UPnP operation to run: [`SideWork::upnp`].
    Upnp(UpnpCommand),
    /// Nothing more to do: the run ends.
    Done,
}

/// The work of one run that is not datagrams on its sockets, as tasks: UPnP operations
/// (SSDP and HTTP), each answering through the runner's command input, and the
/// announcement reader. Dropping it aborts them all.
struct SideWork {
    upnp: Upnp,
    tx: mpsc::Sender<Input>,
    tasks: tokio::task::JoinSet<()>,
}

impl SideWork {
    fn new(target: GatewayTarget, tx: mpsc::Sender<Input>) -> Self {
        Self {
            upnp: Upnp::new(target),
            tx,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Runs `cmd`; its result comes back as [`Input::Upnp`].
    fn upnp(&mut self, cmd: UpnpCommand) {
        // Forget the tasks that finished (their answers went through the channel).
        while self.tasks.try_join_next().is_some() {}
        let (u, tx) = (self.upnp.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let mut answer = Answer(Some(tx));
            let result = u.run(cmd).await;
            answer.send(result).await;
        });
    }

    /// Listens for the gateway's announcements when their port can be bound.
    fn announcements(&mut self, local_ip: IpAddr) {
        if let Some(sock) = announcement_socket(local_ip) {
            self.tasks.spawn(read_announcements(sock, self.tx.clone()));
        }
    }
}

/// A UPnP task's answer. A task that ends without sending one (a panic) answers
/// [`UpnpResult::Failed`] as it unwinds, so that its machine is not left waiting.
struct Answer(Option<mpsc::Sender<Input>>);

impl Answer {
    async fn send(&mut self, result: UpnpResult) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Input::Upnp(result)).await;
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let failed = UpnpResult::Failed("UPnP task failed".into());
            let _ = tx.try_send(Input::Upnp(failed));
        }
    }
}

/// The [`Mapper`] as the runner drives it: its UPnP operations come out as events, and a
/// release is given up [`RELEASE_TIMEOUT`] after it started.
struct MapperRun {
    mapper: Mapper,
    /// When the release under way is given up.
    release_by: Option<Instant>,
    /// The release was given up: the run ends after the events that follow.
    gave_up: bool,
    /// [`Step::Done`] was reported.
    done: bool,
}

impl MapperRun {
    fn new(mapper: Mapper) -> Self {
        Self {
            mapper,
            release_by: None,
            gave_up: false,
            done: false,
        }
    }

    /// Deletes the mapping (once).
    fn release(&mut self, now: Instant) {
        if self.release_by.is_none() {
            self.mapper.release(now);
            self.release_by = Some(now + RELEASE_TIMEOUT);
        }
    }

    /// A command: a UPnP result or an announcement.
    fn input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Upnp(r) => self.mapper.handle_upnp(now, r),
            Input::Announcement(source, bytes) => {
                let rx = Received {
                    proto: Protocol::Udp,
                    source,
                    destination: ANNOUNCE_TO,
                    contents: &bytes,
                };
                if !self.mapper.handle_input(now, rx) {
                    debug!(from = %source, "announcement not from the gateway dropped");
                }
            }
        }
    }
}

impl Machine for MapperRun {
    type Event = Step<MapperEvent>;
    type Verdict<'a> = bool;

    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> bool {
        let (from, to) = (rx.source, rx.destination);
        let mine = self.mapper.handle_input(now, rx);
        if !mine {
            debug!(%from, %to, "datagram that is neither the gateway's nor a verification dropped");
        }
        mine
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.release_by.is_some_and(|d| now >= d) {
            debug!("release not confirmed in time");
            self.mapper.abandon_release(&format!(
                "no confirmation within {} s",
                RELEASE_TIMEOUT.as_secs()
            ));
            self.gave_up = true;
            return;
        }
        self.mapper.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.mapper.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.mapper
            .poll_timeout()
            .into_iter()
            .chain(self.release_by)
            .min()
    }

    fn poll_event(&mut self) -> Option<Step<MapperEvent>> {
        if let Some(ev) = self.mapper.poll_event() {
            return Some(Step::Event(ev));
        }
        if let Some(cmd) = self.mapper.poll_upnp() {
            return Some(Step::Upnp(cmd));
        }
        if !self.done && (self.mapper.is_finished() || self.gave_up) {
            self.done = true;
            return Some(Step::Done);
        }
        None
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

/// A one-shot exchange with the gateway ([`Probe`], [`Delete`]) that the runner drives
/// within a budget ([`Budgeted`]).
trait Exchange {
    fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool;
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_upnp(&mut self) -> Option<UpnpCommand>;
    fn handle_upnp(&mut self, result: UpnpResult);
    /// Whether what it waits for itself is decided (the budget aside).
    fn is_done(&self) -> bool;
    /// The budget ran out with the UPnP operation still under way or not.
    fn out_of_time(&mut self, upnp_pending: bool);
}

impl Exchange for Probe {
    fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        Probe::handle_input(self, now, rx)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Probe::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Probe::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Probe::poll_timeout(self)
    }
    fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        Probe::poll_upnp(self)
    }
    fn handle_upnp(&mut self, result: UpnpResult) {
        Probe::handle_upnp(self, result);
    }
    /// PCP and NAT-PMP are decided; UPnP is [`Budgeted`]'s to wait for.
    fn is_done(&self) -> bool {
        self.udp_done()
    }
    fn out_of_time(&mut self, upnp_pending: bool) {
        if upnp_pending {
            Probe::handle_upnp(
                self,
                UpnpResult::Failed("no answer within the budget".into()),
            );
        }
    }
}

impl Exchange for Delete {
    fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        Delete::handle_input(self, now, rx)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Delete::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Delete::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Delete::poll_timeout(self)
    }
    fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        Delete::poll_upnp(self)
    }
    fn handle_upnp(&mut self, result: UpnpResult) {
        Delete::handle_upnp(self, result);
    }
    fn is_done(&self) -> bool {
        Delete::is_done(self)
    }
    fn out_of_time(&mut self, _upnp_pending: bool) {
        self.give_up(&format!("no answer within {} s", DELETE_BUDGET.as_secs()));
    }
}

/// An [`Exchange`] as the runner drives it: done when it is and its UPnP operation has
/// answered, or when the budget runs out.
struct Budgeted<X> {
    exchange: X,
    deadline: Instant,
    upnp_pending: bool,
    expired: bool,
    done: bool,
}

impl<X: Exchange> Budgeted<X> {
    fn new(exchange: X, deadline: Instant) -> Self {
        Self {
            exchange,
            deadline,
            upnp_pending: false,
            expired: false,
            done: false,
        }
    }

    /// The UPnP operation's result (too late once the budget ran out).
    fn upnp_answered(&mut self, result: UpnpResult) {
        if !self.expired {
            self.upnp_pending = false;
            self.exchange.handle_upnp(result);
        }
    }
}

impl<X: Exchange> Machine for Budgeted<X> {
    type Event = Step<Infallible>;
    type Verdict<'a> = bool;

    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> bool {
        let from = rx.source;
        let mine = self.exchange.handle_input(now, rx);
        if !mine {
            debug!(%from, "datagram not from the gateway dropped");
        }
        mine
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.deadline {
            if !self.expired {
                self.expired = true;
                self.exchange.out_of_time(self.upnp_pending);
                self.upnp_pending = false;
            }
        } else if !self.exchange.is_done() {
            self.exchange.handle_timeout(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.exchange.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let own = self
            .exchange
            .poll_timeout()
            .filter(|_| !self.exchange.is_done());
        Some(own.map_or(self.deadline, |t| t.min(self.deadline)))
    }

    fn poll_event(&mut self) -> Option<Step<Infallible>> {
        if let Some(cmd) = self.exchange.poll_upnp() {
            self.upnp_pending = true;
            return Some(Step::Upnp(cmd));
        }
        let finished = self.expired || (self.exchange.is_done() && !self.upnp_pending);
        if finished && !self.done {
            self.done = true;
            return Some(Step::Done);
        }
        None
    }
}

/// Runs `exchange` from `local` (one of `sockets`) within `budget`; returns it finished.
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
    machine.exchange
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
    use crate::portmap::DeleteOutcome;

    const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const SOURCE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 5000);

    fn steps<X: Exchange>(m: &mut Budgeted<X>) -> Vec<String> {
        std::iter::from_fn(|| m.poll_event())
            .map(|s| match s {
                Step::Upnp(cmd) => format!("upnp {cmd:?}"),
                Step::Done => "done".into(),
                Step::Event(never) => match never {},
            })
            .collect()
    }

    #[test]
    fn a_probe_waits_for_upnp_until_the_budget_runs_out() {
        let now = Instant::now();
        let deadline = now + PROBE_BUDGET;
        let mut m = Budgeted::new(Probe::new(now, GATEWAY, SOURCE, true), deadline);
        assert_eq!(steps(&mut m), ["upnp Probe"]);
        // PCP and NAT-PMP give up (nothing answers) well within the budget.
        while let Some(t) = m.poll_timeout().filter(|&t| t < deadline) {
            m.handle_timeout(t);
        }
        assert!(m.exchange.udp_done());
        assert_eq!(m.exchange.report().pcp, Some(false));
        // UPnP has not answered: not done before the budget runs out.
        assert!(steps(&mut m).is_empty());
        assert_eq!(m.poll_timeout(), Some(deadline));
        m.handle_timeout(deadline);
        assert_eq!(steps(&mut m), ["done"]);
        assert_eq!(m.exchange.report().upnp, Some(false));
        // A late answer changes nothing.
        m.upnp_answered(UpnpResult::Available { external_ip: None });
        assert_eq!(m.exchange.report().upnp, Some(false));
    }

    #[test]
    fn a_probe_is_done_when_upnp_answers_after_pcp_and_natpmp() {
        let now = Instant::now();
        let deadline = now + PROBE_BUDGET;
        let mut m = Budgeted::new(Probe::new(now, GATEWAY, SOURCE, true), deadline);
        assert_eq!(steps(&mut m), ["upnp Probe"]);
        while let Some(t) = m.poll_timeout().filter(|&t| t < deadline) {
            m.handle_timeout(t);
        }
        assert!(steps(&mut m).is_empty());
        let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        m.upnp_answered(UpnpResult::Available {
            external_ip: Some(ip),
        });
        assert_eq!(steps(&mut m), ["done"]);
        assert_eq!(m.exchange.report().upnp, Some(true));
        assert_eq!(m.exchange.report().upnp_external, Some(ip));
    }

    #[test]
    fn a_deletion_out_of_time_says_nothing_answered() {
        let now = Instant::now();
        let deadline = now + DELETE_BUDGET;
        let delete = Delete::new(
            now,
            GATEWAY,
            SOURCE,
            MapProtocol::Udp,
            6000,
            ViaChoice::Any,
            [7; 32],
        );
        let mut m = Budgeted::new(delete, deadline);
        assert_eq!(
            steps(&mut m),
            ["upnp Delete { protocol: Udp, external_port: 6000 }"]
        );
        m.handle_timeout(deadline);
        assert_eq!(steps(&mut m), ["done"]);
        let why = format!("no answer within {} s", DELETE_BUDGET.as_secs());
        assert_eq!(m.exchange.report().upnp, DeleteOutcome::NoAnswer(why));
    }

    #[tokio::test]
    async fn a_upnp_task_that_panics_answers_failed() {
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let _answer = Answer(Some(tx));
            panic!("a bug in the UPnP client");
        });
        assert!(task.await.is_err());
        match rx.try_recv() {
            Ok(Input::Upnp(UpnpResult::Failed(why))) => assert_eq!(why, "UPnP task failed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_mapper_is_done_after_its_last_event() {
        let now = Instant::now();
        let config = MapperConfig::new(GATEWAY, SOURCE.ip(), MapProtocol::Udp, 6000);
        let mut m = MapperRun::new(Mapper::new(now, config, SOURCE, [1; 32]));
        // Nothing mapped yet: released at once.
        m.release(now);
        let got: Vec<String> = std::iter::from_fn(|| m.poll_event())
            .map(|s| match s {
                Step::Event(ev) => format!("{ev:?}"),
                Step::Upnp(cmd) => format!("upnp {cmd:?}"),
                Step::Done => "done".into(),
            })
            .collect();
        assert_eq!(got, ["Released(NothingToDelete)", "done"]);
    }

    /// A task can run the mapper with a callback that borrows from the task, as
    /// `PeerConnection`'s port mapping does (a compile-time check: rustc cannot prove
    /// such a run `Send` through an `async` closure, rust-lang/rust#139475).
    #[test]
    fn a_task_can_run_the_mapper_with_a_borrowing_callback() {
        fn assert_send<T: Send>(_: &T) {}
        let task = async {
            let seen = std::sync::Mutex::new(Vec::new());
            let target = GatewayTarget::explicit(GATEWAY, SOURCE.ip());
            let config = MapperConfig::new(GATEWAY, SOURCE.ip(), MapProtocol::Udp, 6000);
            let _ = run_mapper(target, config, std::future::pending(), |ev| {
                seen.lock().unwrap().push(format!("{ev:?}"));
                true
            })
            .await;
        };
        assert_send(&task);
    }
}
