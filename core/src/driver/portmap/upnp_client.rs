//! The UPnP IGD client on tokio: SSDP over UDP and HTTP/1.1 over TCP, around pinhole's
//! sans-IO UPnP codec ([`upnp`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::debug;

use super::GatewayTarget;
use crate::portmap::upnp::{self, Control, HttpUrl, UpnpError};
use crate::portmap::{MapProtocol, UPNP_TIMEOUT, UpnpCommand, UpnpResult};

/// SSDP unicast search timeout (to the gateway itself).
const SSDP_UNICAST_TIMEOUT: Duration = Duration::from_millis(1200);
/// SSDP multicast search timeout.
const SSDP_MULTICAST_TIMEOUT: Duration = Duration::from_millis(2000);

/// The UPnP side: SSDP discovery and the device description (both cached), and the SOAP
/// actions, each bounded, over pinhole's own sans-IO UPnP codec ([`upnp`]).
#[derive(Clone)]
pub(super) struct Upnp {
    target: GatewayTarget,
    control: Arc<tokio::sync::Mutex<Option<Control>>>,
}

impl Upnp {
    pub(super) fn new(target: GatewayTarget) -> Self {
        Self {
            target,
            control: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The gateway's WAN connection service: SSDP (unicast to the gateway, then multicast
    /// when allowed), then the description. Concurrent callers wait for one search.
    pub(super) async fn search(&self) -> Result<Control, UpnpError> {
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

    pub(super) async fn run(&self, cmd: UpnpCommand) -> UpnpResult {
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
pub(super) async fn http(url: &HttpUrl, request: &[u8]) -> Result<upnp::HttpResponse, UpnpError> {
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
