//! The operations both foreign APIs offer, in plain Rust over the FFI types: argument
//! validation (synchronous, so that a start function can refuse at once), and the async
//! bodies that run on a [`Task`](crate::task::Task)'s thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinhole::driver::portmap::GatewayTarget;
use pinhole::driver::turn::{DEALLOCATE_TIMEOUT, TurnClientConfig};
use pinhole::driver::{self, DEFAULT_STUN_SERVERS, ServeHandle};
use pinhole::portmap::{MapProtocol, MapperConfig, MapperEvent, VerifyConfig, ViaChoice};
use pinhole::stun::{ServerConfig, StunUri};
use pinhole::turn::{AllocationEvent, Credentials, TurnTransport, TurnUri};
use tokio::sync::{mpsc, oneshot};

use crate::error::PinholeError;
use crate::task::{Rendezvous, StopSignal, Task};
use crate::types::{
    DEFAULT_MAPPING_LIFETIME_SECS, DEFAULT_REST_TTL_SECS, DEFAULT_TIMEOUT_MS,
    DEFAULT_TURN_LIFETIME_SECS, DEFAULT_VERIFY_INTERVAL_SECS, GatewayProbe, NetcheckConfig,
    NetcheckProgress, NetcheckReport, PortMapping, PortMappingConfig, PortMappingEvent, TurnConfig,
    TurnEvent, parse_ip, parse_socket_addr,
};

/// The longest STUN URI accepted, bytes (the C API's label buffers hold it).
pub(crate) const MAX_URI_LEN: usize = 500;
/// The most STUN servers one netcheck accepts.
pub(crate) const MAX_SERVERS: usize = 32;
/// The longest netcheck budget accepted.
const MAX_TIMEOUT_MS: u32 = 3_600_000;
/// The longest interval between verifications of a mapping accepted, seconds (one day).
pub(crate) const MAX_VERIFY_INTERVAL_SECS: u32 = 86_400;
/// How long resolving the verification reflector may take before the mapper gives up.
const VERIFY_RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a `stun:` URI given for `what`: length, syntax, no `stuns:`.
fn check_stun_uri(what: &str, uri: &str) -> Result<(), PinholeError> {
    if uri.len() > MAX_URI_LEN {
        return Err(PinholeError::invalid(format!(
            "{what}: a STUN URI is longer than {MAX_URI_LEN} bytes"
        )));
    }
    let parsed: StunUri = uri
        .parse()
        .map_err(|e| PinholeError::invalid(format!("{what}: {uri}: {e}")))?;
    if parsed.secure {
        return Err(PinholeError::Unsupported(format!(
            "{what}: {uri}: stuns: (TLS) is not supported here"
        )));
    }
    Ok(())
}

/// A netcheck whose arguments were checked.
#[derive(Debug, Clone)]
pub(crate) struct NetcheckPlan {
    uris: Vec<String>,
    budget: Duration,
    hairpinning: bool,
    lifetime: bool,
    portmap: Option<Option<IpAddr>>,
}

impl NetcheckPlan {
    /// Checks a configuration.
    pub(crate) fn new(config: &NetcheckConfig) -> Result<Self, PinholeError> {
        if config.stun_servers.len() > MAX_SERVERS {
            return Err(PinholeError::invalid(format!(
                "at most {MAX_SERVERS} STUN servers"
            )));
        }
        let uris: Vec<String> = if config.stun_servers.is_empty() {
            DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect()
        } else {
            config.stun_servers.clone()
        };
        for uri in &uris {
            if uri.len() > MAX_URI_LEN {
                return Err(PinholeError::invalid(format!(
                    "a STUN URI is longer than {MAX_URI_LEN} bytes"
                )));
            }
            let parsed: StunUri = uri
                .parse()
                .map_err(|e| PinholeError::invalid(format!("{uri}: {e}")))?;
            if parsed.secure {
                return Err(PinholeError::Unsupported(format!(
                    "{uri}: stuns: (TLS) is not supported for netcheck"
                )));
            }
        }
        let timeout_ms = match config.timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            t if t > MAX_TIMEOUT_MS => {
                return Err(PinholeError::invalid("timeout_ms is over one hour"));
            }
            t => t,
        };
        let portmap = if config.no_portmap {
            None
        } else {
            Some(
                config
                    .gateway
                    .as_deref()
                    .map(|g| parse_ip("gateway", g))
                    .transpose()?,
            )
        };
        Ok(NetcheckPlan {
            uris,
            budget: Duration::from_millis(timeout_ms.into()),
            hairpinning: !config.no_hairpin,
            lifetime: config.binding_lifetime,
            portmap,
        })
    }

    /// Runs it: resolves the servers, probes them and (unless disabled) the gateway at
    /// the same time, and reports progress through `progress`.
    pub(crate) async fn run(
        self,
        mut progress: impl FnMut(NetcheckProgress),
    ) -> Result<NetcheckReport, PinholeError> {
        let (servers, unresolved) = driver::resolve(&self.uris).await?;
        let notes: Vec<String> = unresolved
            .iter()
            .map(|u| format!("{}: not resolved: {}", u.uri, u.reason))
            .collect();
        if servers.is_empty() {
            return Err(PinholeError::NoServer(if notes.is_empty() {
                "no STUN server could be resolved".into()
            } else {
                notes.join("; ")
            }));
        }
        let labels: Vec<String> = servers.iter().map(|s| s.label.clone()).collect();
        let config = pinhole::netcheck::NetcheckConfig {
            servers,
            hairpinning: self.hairpinning,
            lifetime_probes: if self.lifetime {
                pinhole::netcheck::DEFAULT_LIFETIME_PROBES.to_vec()
            } else {
                Vec::new()
            },
            budget: self.budget,
            ..pinhole::netcheck::NetcheckConfig::default()
        };
        let portmap = async {
            match self.portmap {
                None => None,
                Some(gateway) => Some(probe_gateway(gateway).await),
            }
        };
        let (report, portmap) = tokio::join!(
            driver::netcheck(config, |ev| {
                if let Some(p) = NetcheckProgress::from_core(ev, &labels) {
                    progress(p);
                }
            }),
            portmap
        );
        Ok(NetcheckReport::from_core(report?, portmap, notes))
    }
}

async fn probe_gateway(gateway: Option<IpAddr>) -> GatewayProbe {
    let target = match gateway {
        Some(gw) => driver::portmap::local_ip_toward(gw)
            .await
            .map(|ip| GatewayTarget::explicit(gw, ip)),
        None => driver::portmap::discover_gateway().await,
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return GatewayProbe::failed(gateway, e.to_string()),
    };
    match driver::portmap::probe(target, true).await {
        Ok(r) => GatewayProbe::from_core(target.gateway, &r),
        Err(e) => GatewayProbe::failed(Some(target.gateway), e.to_string()),
    }
}

/// A port mapping whose arguments were checked.
#[derive(Debug, Clone)]
pub(crate) struct MappingPlan {
    gateway: Option<IpAddr>,
    local_ip: Option<IpAddr>,
    config: MapperConfig,
    /// The verification reflector's URI (checked; resolved when the mapper starts) and the
    /// interval.
    verify: Option<(String, Duration)>,
}

impl MappingPlan {
    /// Checks a configuration.
    pub(crate) fn new(c: &PortMappingConfig) -> Result<Self, PinholeError> {
        if c.internal_port == 0 {
            return Err(PinholeError::invalid("internal_port must not be 0"));
        }
        let gateway = c
            .gateway
            .as_deref()
            .map(|g| parse_ip("gateway", g))
            .transpose()?;
        let local_ip = c
            .local_ip
            .as_deref()
            .map(|g| parse_ip("local_ip", g))
            .transpose()?;
        if local_ip.is_some() && gateway.is_none() {
            return Err(PinholeError::invalid("local_ip needs an explicit gateway"));
        }
        let unspecified = IpAddr::from([0u8; 4]);
        let mut config =
            MapperConfig::new(unspecified, unspecified, c.protocol.into(), c.internal_port);
        config.suggested_external_port = c.suggested_external_port;
        config.lifetime = match c.lifetime_secs {
            0 => DEFAULT_MAPPING_LIFETIME_SECS,
            l => l,
        };
        config.via = match c.method {
            None => ViaChoice::Any,
            Some(m) => ViaChoice::Only(m.into()),
        };
        let interval = match c.verify_interval_secs {
            0 => DEFAULT_VERIFY_INTERVAL_SECS,
            i if i > MAX_VERIFY_INTERVAL_SECS => {
                return Err(PinholeError::invalid(format!(
                    "verify_interval_secs is over {MAX_VERIFY_INTERVAL_SECS} (one day)"
                )));
            }
            i => i,
        };
        let verify = match &c.verify_stun {
            None => None,
            Some(uri) => {
                check_stun_uri("verify_stun", uri)?;
                if config.protocol != MapProtocol::Udp {
                    return Err(PinholeError::invalid(
                        "verify_stun: only UDP mappings can be verified",
                    ));
                }
                Some((uri.clone(), Duration::from_secs(interval.into())))
            }
        };
        Ok(MappingPlan {
            gateway,
            local_ip,
            config,
            verify,
        })
    }

    /// Resolves the verification reflector, if one was given, into the mapper's config;
    /// an error says why it cannot be used. Bounded by [`VERIFY_RESOLVE_TIMEOUT`].
    async fn resolve_verify(&mut self, local_ip: IpAddr) -> Result<(), String> {
        let Some((uri, interval)) = &self.verify else {
            return Ok(());
        };
        let resolved = tokio::time::timeout(
            VERIFY_RESOLVE_TIMEOUT,
            driver::resolve(std::slice::from_ref(uri)),
        )
        .await;
        let reflector = match resolved {
            Err(_) => {
                return Err(format!(
                    "verify_stun {uri}: not resolved within {} s",
                    VERIFY_RESOLVE_TIMEOUT.as_secs()
                ));
            }
            Ok(Err(e)) => return Err(format!("verify_stun: {e}")),
            Ok(Ok((servers, unresolved))) => match servers.first() {
                Some(s) => s.addr,
                None => {
                    let why = unresolved
                        .first()
                        .map_or("no address", |u| u.reason.as_str());
                    return Err(format!("verify_stun {uri}: not resolved: {why}"));
                }
            },
        };
        if reflector.is_ipv4() != local_ip.is_ipv4() {
            return Err(format!(
                "verify_stun {uri}: {reflector} is not of the address family of the local \
                 address {local_ip}"
            ));
        }
        self.config.verify = Some(VerifyConfig {
            reflector,
            interval: *interval,
        });
        Ok(())
    }

    /// Runs the mapper until it stops by itself or `stop` fires (then it releases the
    /// mapping). `current` follows the mapping. The last event is always
    /// [`PortMappingEvent::Released`] or [`PortMappingEvent::Unavailable`].
    pub(crate) async fn run(
        mut self,
        stop: StopSignal,
        current: Arc<Mutex<Option<PortMapping>>>,
        mut on_event: impl FnMut(PortMappingEvent),
    ) {
        let mut stop = stop;
        let target = match (self.gateway, self.local_ip) {
            (Some(gw), Some(ip)) => Ok(GatewayTarget::explicit(gw, ip)),
            (Some(gw), None) => driver::portmap::local_ip_toward(gw)
                .await
                .map(|ip| GatewayTarget::explicit(gw, ip)),
            _ => driver::portmap::discover_gateway().await,
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => {
                on_event(PortMappingEvent::Unavailable {
                    reason: e.to_string(),
                });
                return;
            }
        };
        // Stopping while the reflector is being resolved ends the mapper at once (nothing
        // was mapped yet).
        let resolved = tokio::select! {
            r = self.resolve_verify(target.local_ip) => r,
            () = stop.wait() => Err("stopped before the mapper started".into()),
        };
        if let Err(reason) = resolved {
            on_event(PortMappingEvent::Unavailable { reason });
            return;
        }
        let mut terminal = false;
        let set = |m: Option<PortMapping>| {
            if let Ok(mut c) = current.lock() {
                *c = m;
            }
        };
        let result =
            driver::portmap::run_mapper(target, self.config, stop.wait(), |ev: &MapperEvent| {
                match ev {
                    MapperEvent::Mapped(m)
                    | MapperEvent::Renewed(m)
                    | MapperEvent::Verified(m)
                    | MapperEvent::NotForwarding(m) => set(Some(m.into())),
                    MapperEvent::Changed { new, .. } => set(Some(new.into())),
                    MapperEvent::Lost(_)
                    | MapperEvent::Unavailable(_)
                    | MapperEvent::Released(_) => set(None),
                    MapperEvent::Unverified(_) => {}
                }
                terminal |= matches!(ev, MapperEvent::Released(_) | MapperEvent::Unavailable(_));
                on_event(PortMappingEvent::from_core(ev));
                true
            })
            .await;
        if !terminal {
            set(None);
            on_event(PortMappingEvent::Unavailable {
                reason: match result {
                    Err(e) => e.to_string(),
                    Ok(()) => "the mapper stopped".into(),
                },
            });
        }
    }
}

/// Hands the server's start-up outcome to the waiting caller exactly once, also when the
/// server's future is dropped or unwinds before it could.
struct Reply(Option<Arc<Rendezvous<Started>>>);

/// A server's start-up outcome: its addresses, or why it could not start.
type Started = Result<Vec<SocketAddr>, PinholeError>;

impl Reply {
    fn put(&mut self, r: Started) {
        if let Some(slot) = self.0.take() {
            slot.put(r);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.put(Err(PinholeError::Internal(
            "the server thread ended".into(),
        )));
    }
}

/// A STUN server running on its own thread; dropping it stops the server.
pub(crate) struct Server {
    task: Task,
    addresses: Vec<SocketAddr>,
}

impl Server {
    /// Starts a server on `primary`, an RFC 5780 server when `alternate` is given (a
    /// different IP and port; ports must not be 0 then). Without `primary`, an RFC 5780
    /// server on 127.0.0.1 and 127.0.0.2 with free ports.
    pub(crate) fn start(
        primary: Option<&str>,
        alternate: Option<&str>,
    ) -> Result<Server, PinholeError> {
        let config = match (primary, alternate) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(PinholeError::invalid(
                    "an alternate needs a primary address",
                ));
            }
            (Some(p), None) => Some(ServerConfig::new(parse_socket_addr("primary", p)?)),
            (Some(p), Some(a)) => Some(ServerConfig::rfc5780(
                parse_socket_addr("primary", p)?,
                parse_socket_addr("alternate", a)?,
            )),
        };
        let started = Arc::new(Rendezvous::<Started>::default());
        let tx = Reply(Some(started.clone()));
        let task = Task::spawn("pinhole-server", move |mut stop| async move {
            let mut tx = tx;
            let started: Result<ServeHandle, _> = match config {
                Some(c) => driver::serve(c).await,
                None => driver::serve_loopback().await,
            };
            match started {
                Ok(handle) => {
                    tx.put(Ok(handle.local_addrs().to_vec()));
                    stop.wait().await;
                    drop(handle);
                }
                Err(e) => tx.put(Err(e.into())),
            }
        })?;
        let addresses = started.take()?;
        Ok(Server { task, addresses })
    }

    /// The addresses it listens on: the primary first (for RFC 5780 then the alternate IP
    /// with the primary port, the primary IP with the alternate port, and the alternate).
    pub(crate) fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops the server and waits for its thread.
    pub(crate) fn stop(self) {
        self.task.stop();
        self.task.join();
    }
}

/// The longest TURN user name accepted, bytes (RFC 8489 §14.3: less than 513).
const MAX_USERNAME_LEN: usize = 512;
/// The longest password or shared secret accepted, bytes.
const MAX_SECRET_LEN: usize = 4096;
/// The largest CA bundle accepted, bytes.
const MAX_CA_PEM_LEN: usize = 1 << 20;
/// The most bytes one send carries (what fits a UDP datagram to the server with the TURN
/// headers); the C API's `PINHOLE_TURN_DATA_MAX`.
pub(crate) const MAX_TURN_DATA: usize = crate::capi::PINHOLE_TURN_DATA_MAX;

/// A TURN allocation whose arguments were checked.
#[derive(Debug, Clone)]
pub(crate) struct TurnPlan {
    config: TurnClientConfig,
}

impl TurnPlan {
    /// Checks a configuration; REST credentials are derived here, from the clock now.
    pub(crate) fn new(c: &TurnConfig) -> Result<Self, PinholeError> {
        if c.uri.len() > MAX_URI_LEN {
            return Err(PinholeError::invalid(format!(
                "the TURN URI is longer than {MAX_URI_LEN} bytes"
            )));
        }
        let uri: TurnUri = c
            .uri
            .parse()
            .map_err(|e| PinholeError::invalid(format!("{}: {e}", c.uri)))?;
        if uri.transport == TurnTransport::Tls && !cfg!(feature = "tls") {
            return Err(PinholeError::Unsupported(format!(
                "{}: turns: (TLS) needs pinhole-ffi built with the `tls` feature",
                c.uri
            )));
        }
        if c.username.is_empty() || c.username.len() > MAX_USERNAME_LEN {
            return Err(PinholeError::invalid(format!(
                "the user name must have 1 to {MAX_USERNAME_LEN} bytes"
            )));
        }
        let too_long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_SECRET_LEN);
        if too_long(&c.password) || too_long(&c.secret) {
            return Err(PinholeError::invalid(format!(
                "a password or secret is longer than {MAX_SECRET_LEN} bytes"
            )));
        }
        let credentials = match (&c.password, &c.secret) {
            (Some(p), None) => Credentials::long_term(&c.username, p),
            (None, Some(secret)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let ttl = match c.rest_ttl_secs {
                    0 => DEFAULT_REST_TTL_SECS,
                    t => t,
                };
                Credentials::rest(&c.username, secret.as_bytes(), now, ttl.into())
            }
            _ => {
                return Err(PinholeError::invalid(
                    "exactly one of password and secret is required",
                ));
            }
        };
        if c.ca_pem.as_ref().is_some_and(|p| p.len() > MAX_CA_PEM_LEN) {
            return Err(PinholeError::invalid("ca_pem is over 1 MiB"));
        }
        let lifetime = match c.lifetime_secs {
            0 => DEFAULT_TURN_LIFETIME_SECS,
            l => l,
        };
        Ok(TurnPlan {
            config: TurnClientConfig {
                uri,
                credentials,
                lifetime: Duration::from_secs(lifetime.into()),
                family: c.family.map(Into::into).unwrap_or_default(),
                ca_pem: c.ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
            },
        })
    }

    /// Runs the allocation until it is lost, deallocated (on [`TurnCommand::Deallocate`]
    /// or when `stop` fires), or the commands' sender is gone. Events go to `on_event`
    /// (with the typed error of a failure; a failure to allocate is a
    /// [`TurnEvent::Lost`]), peers' data to `on_data`; `status` follows the allocation.
    /// Deallocation is bounded: the loop ends at most a few seconds after it began.
    pub(crate) async fn run(
        self,
        stop: StopSignal,
        mut commands: mpsc::UnboundedReceiver<TurnCommand>,
        status: Arc<Mutex<TurnStatus>>,
        mut on_event: impl FnMut(TurnEvent, Option<PinholeError>),
        mut on_data: impl FnMut(SocketAddr, Vec<u8>),
    ) {
        use pinhole::driver::turn::TurnEvent as Core;
        let mut stop = stop;
        let set = |f: &dyn Fn(&mut TurnStatus)| {
            if let Ok(mut s) = status.lock() {
                f(&mut s);
            }
        };
        let started = tokio::select! {
            r = driver::turn::allocate(self.config) => r,
            () = stop.wait() => {
                set(&|s| s.ended = true);
                return;
            }
        };
        let mut handle = match started {
            Ok(h) => h,
            Err(e) => {
                set(&|s| s.ended = true);
                let e = PinholeError::from(e);
                on_event(
                    TurnEvent::Lost {
                        reason: e.to_string(),
                    },
                    Some(e),
                );
                return;
            }
        };
        let mut permission_waiters: Vec<(IpAddr, oneshot::Sender<Result<(), PinholeError>>)> =
            Vec::new();
        let mut channel_waiters: Vec<(SocketAddr, oneshot::Sender<Result<u16, PinholeError>>)> =
            Vec::new();
        // Set once deallocation began: the loop ends by then whatever the driver does.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let ev = tokio::select! {
                ev = handle.next_event() => ev,
                cmd = commands.recv(), if deadline.is_none() => {
                    let now = std::time::Instant::now();
                    match cmd {
                        Some(TurnCommand::Permission(ip, waiter)) => {
                            if let Some(w) = waiter {
                                permission_waiters.push((ip, w));
                            }
                            handle.create_permission(ip);
                        }
                        Some(TurnCommand::Channel(peer, waiter)) => {
                            if let Some(w) = waiter {
                                channel_waiters.push((peer, w));
                            }
                            handle.bind_channel(peer);
                        }
                        Some(TurnCommand::Send(peer, data)) => handle.send_to(peer, data),
                        Some(TurnCommand::Deallocate) | None => {
                            handle.deallocate();
                            deadline = Some((now + DEALLOCATE_TIMEOUT + Duration::from_secs(1)).into());
                        }
                    }
                    continue;
                }
                () = stop.wait(), if deadline.is_none() => {
                    handle.deallocate();
                    deadline = Some(tokio::time::Instant::now() + DEALLOCATE_TIMEOUT + Duration::from_secs(1));
                    continue;
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    tracing::debug!("TURN deallocation not confirmed in time");
                    None
                }
            };
            let Some(ev) = ev else { break };
            let (event, error) = match ev {
                Core::Data { peer, data } => {
                    on_data(peer, data);
                    continue;
                }
                Core::Allocation(a) => {
                    match &a {
                        AllocationEvent::PermissionCreated(ip) => {
                            resolve(&mut permission_waiters, |w| w == ip, || Ok(()))
                        }
                        AllocationEvent::PermissionFailed(ip, e) => resolve(
                            &mut permission_waiters,
                            |w| w == ip,
                            || Err(e.clone().into()),
                        ),
                        AllocationEvent::ChannelBound { peer, channel } => {
                            resolve(&mut channel_waiters, |w| w == peer, || Ok(*channel))
                        }
                        AllocationEvent::ChannelFailed(peer, e) => resolve(
                            &mut channel_waiters,
                            |w| w == peer,
                            || Err(e.clone().into()),
                        ),
                        _ => {}
                    }
                    TurnEvent::from_core(a)
                }
                Core::SendFailed(peer, e) => {
                    // A permission or channel request the driver refused at once (its
                    // permissions are reported with port 0).
                    let err = PinholeError::from(e.clone());
                    if peer.port() == 0 {
                        resolve(
                            &mut permission_waiters,
                            |w| *w == peer.ip(),
                            || Err(err.clone()),
                        );
                    }
                    resolve(&mut channel_waiters, |w| *w == peer, || Err(err.clone()));
                    (
                        TurnEvent::SendFailed {
                            peer: peer.to_string(),
                            reason: e.to_string(),
                        },
                        Some(err),
                    )
                }
                Core::Disconnected(why) => (
                    TurnEvent::Lost {
                        reason: why.clone(),
                    },
                    Some(PinholeError::Io(why)),
                ),
                // Variants the driver may add later: not for the foreign APIs yet.
                #[allow(unreachable_patterns)]
                _ => continue,
            };
            match &event {
                TurnEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                } => set(&|s| {
                    s.allocated = true;
                    s.relayed.clone_from(relayed);
                    s.mapped.clone_from(mapped);
                    s.lifetime = *lifetime;
                }),
                TurnEvent::Refreshed { lifetime } => set(&|s| s.lifetime = *lifetime),
                TurnEvent::Lost { .. } | TurnEvent::Deallocated => set(&|s| s.ended = true),
                _ => {}
            }
            on_event(event, error);
        }
        set(&|s| s.ended = true);
        // Waiters left get NotAvailable when their senders drop here.
    }
}

/// Resolves (and removes) the waiters whose key matches.
fn resolve<K, T>(
    waiters: &mut Vec<(K, oneshot::Sender<Result<T, PinholeError>>)>,
    matches: impl Fn(&K) -> bool,
    value: impl Fn() -> Result<T, PinholeError>,
) {
    let mut i = 0;
    while i < waiters.len() {
        if matches(&waiters[i].0) {
            let (_, w) = waiters.swap_remove(i);
            let _ = w.send(value());
        } else {
            i += 1;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What the foreign side asks of a running allocation.
pub(crate) enum TurnCommand {
    /// Install a permission for a peer IP; the waiter, if any, learns the outcome.
    Permission(IpAddr, Option<oneshot::Sender<Result<(), PinholeError>>>),
    /// Bind a channel to a peer; the waiter, if any, learns the channel number.
    Channel(
        SocketAddr,
        Option<oneshot::Sender<Result<u16, PinholeError>>>,
    ),
    /// Send data to a peer through the relay.
    Send(SocketAddr, Vec<u8>),
    /// Deallocate; [`TurnEvent::Deallocated`] follows and the allocation ends.
    Deallocate,
}

/// A running allocation as the foreign side sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TurnStatus {
    /// Whether it was allocated (it may have ended since).
    pub(crate) allocated: bool,
    /// Whether it has ended (lost, deallocated, or never allocated).
    pub(crate) ended: bool,
    /// The relayed addresses.
    pub(crate) relayed: Vec<String>,
    /// This host's address as the server saw it.
    pub(crate) mapped: Option<String>,
    /// The lifetime last granted.
    pub(crate) lifetime: Duration,
}

impl TurnStatus {
    /// Whether it can take commands now; `NotAvailable` before it is allocated and once it
    /// has ended.
    pub(crate) fn usable(&self) -> Result<(), PinholeError> {
        match (self.allocated, self.ended) {
            (true, false) => Ok(()),
            (false, false) => Err(PinholeError::NotAvailable(
                "the allocation does not exist yet".into(),
            )),
            (_, true) => Err(PinholeError::NotAvailable(
                "the allocation has ended".into(),
            )),
        }
    }
}

/// Checks the arguments of a send.
pub(crate) fn turn_send_args(peer: &str, len: usize) -> Result<SocketAddr, PinholeError> {
    let peer = parse_socket_addr("peer", peer)?;
    if len > MAX_TURN_DATA {
        return Err(PinholeError::invalid(format!(
            "at most {MAX_TURN_DATA} bytes per send"
        )));
    }
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TurnConfig {
        TurnConfig {
            uri: "turn:127.0.0.1:3478".into(),
            username: "user".into(),
            password: Some("pw".into()),
            secret: None,
            rest_ttl_secs: 0,
            lifetime_secs: 0,
            family: None,
            ca_pem: None,
        }
    }

    fn mapping(verify_stun: Option<&str>) -> PortMappingConfig {
        PortMappingConfig {
            internal_port: 40000,
            protocol: crate::types::TransportProtocol::Udp,
            gateway: Some("127.0.0.9".into()),
            local_ip: Some("127.0.0.1".into()),
            suggested_external_port: 0,
            lifetime_secs: 60,
            method: None,
            verify_stun: verify_stun.map(str::to_owned),
            verify_interval_secs: 0,
        }
    }

    #[test]
    fn mapping_plans_check_the_verification_arguments() {
        let plan = MappingPlan::new(&mapping(None)).unwrap();
        assert!(plan.verify.is_none());
        let plan = MappingPlan::new(&mapping(Some("stun:127.0.0.1:3478"))).unwrap();
        assert_eq!(
            plan.verify,
            Some(("stun:127.0.0.1:3478".into(), Duration::from_secs(300)))
        );
        // Resolved only when the mapper starts.
        assert!(plan.config.verify.is_none());
        let plan = MappingPlan::new(&PortMappingConfig {
            verify_interval_secs: 30,
            ..mapping(Some("stun:reflector.example"))
        })
        .unwrap();
        assert_eq!(plan.verify.unwrap().1, Duration::from_secs(30));

        let err = |c: PortMappingConfig| MappingPlan::new(&c).unwrap_err();
        for uri in [
            "http://example.org",
            "stun:",
            "stun:127.0.0.1:99999",
            "127.0.0.1:3478",
        ] {
            let e = err(mapping(Some(uri)));
            assert!(matches!(e, PinholeError::InvalidArgument(_)), "{uri}: {e}");
            assert!(e.to_string().contains("verify_stun"), "{e}");
        }
        let long = format!("stun:{}", "a".repeat(MAX_URI_LEN));
        assert!(matches!(
            err(mapping(Some(&long))),
            PinholeError::InvalidArgument(_)
        ));
        assert!(matches!(
            err(mapping(Some("stuns:127.0.0.1"))),
            PinholeError::Unsupported(_)
        ));
        assert!(matches!(
            err(PortMappingConfig {
                protocol: crate::types::TransportProtocol::Tcp,
                ..mapping(Some("stun:127.0.0.1"))
            }),
            PinholeError::InvalidArgument(_)
        ));
        assert!(matches!(
            err(PortMappingConfig {
                verify_interval_secs: MAX_VERIFY_INTERVAL_SECS + 1,
                ..mapping(Some("stun:127.0.0.1"))
            }),
            PinholeError::InvalidArgument(_)
        ));
        // Without a reflector the interval is still checked (it is a plain argument).
        assert!(
            MappingPlan::new(&PortMappingConfig {
                verify_interval_secs: u32::MAX,
                ..mapping(None)
            })
            .is_err()
        );
    }

    #[test]
    fn verification_events_cross_the_ffi() {
        use pinhole::portmap::{MapProtocol, Mapping, Via};
        let m = Mapping {
            protocol: MapProtocol::Udp,
            internal: "10.0.0.2:40000".parse().unwrap(),
            external: "203.0.113.7:40000".parse().unwrap(),
            lifetime: Duration::from_secs(7200),
            good_until: std::time::Instant::now(),
            renew_at: std::time::Instant::now(),
            via: Via::Pcp,
            reachable: true,
        };
        let pm = PortMapping::from(&m);
        assert_eq!(
            PortMappingEvent::from_core(&MapperEvent::Verified(m)),
            PortMappingEvent::Verified {
                mapping: pm.clone()
            }
        );
        assert_eq!(
            PortMappingEvent::from_core(&MapperEvent::NotForwarding(m)),
            PortMappingEvent::NotForwarding { mapping: pm }
        );
        assert_eq!(
            PortMappingEvent::from_core(&MapperEvent::Unverified("silent".into())),
            PortMappingEvent::Unverified {
                reason: "silent".into()
            }
        );
        let lost = PortMappingEvent::from_core(&MapperEvent::Lost(
            pinhole::portmap::LossReason::NotForwarding,
        ));
        assert!(matches!(lost, PortMappingEvent::Lost { reason } if reason.contains("STUN")));
    }

    /// Runs a mapper at 127.0.0.9 (loopback, where no gateway listens) on a task's thread;
    /// its events, once it has stopped (bounded wait).
    fn run_mapping(config: PortMappingConfig) -> Vec<PortMappingEvent> {
        let plan = MappingPlan::new(&config).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let task = Task::spawn("test-portmap", move |stop| async move {
            let mut events = Vec::new();
            plan.run(stop, Arc::new(Mutex::new(None)), |ev| events.push(ev))
                .await;
            let _ = tx.send(events);
        })
        .unwrap();
        let events = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the mapper stops by itself");
        task.join();
        events
    }

    fn free_udp_port() -> u16 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    }

    #[test]
    fn a_verifying_mapper_without_a_gateway_ends_unavailable() {
        let server = Server::start(None, None).unwrap();
        let uri = format!("stun:{}", server.addresses()[0]);

        // The reflector resolves and the mapped port is free: the mapper runs and ends
        // only because nothing maps (no verification without a mapping).
        let events = run_mapping(PortMappingConfig {
            internal_port: free_udp_port(),
            verify_interval_secs: 5,
            ..mapping(Some(&uri))
        });
        let Some(PortMappingEvent::Unavailable { reason }) = events.last() else {
            panic!("{events:?}");
        };
        assert!(
            !reason.contains("verify_stun") && !reason.contains("mapped port"),
            "{reason}"
        );
        assert_eq!(events.len(), 1, "{events:?}");

        // The mapped port is taken: the mapper cannot hear the reflector and says so.
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let events = run_mapping(PortMappingConfig {
            internal_port: taken.local_addr().unwrap().port(),
            ..mapping(Some(&uri))
        });
        let Some(PortMappingEvent::Unavailable { reason }) = events.last() else {
            panic!("{events:?}");
        };
        assert!(reason.contains("mapped port"), "{reason}");

        // A reflector of the other address family than the local address.
        let events = run_mapping(mapping(Some("stun:[::1]:3478")));
        let Some(PortMappingEvent::Unavailable { reason }) = events.last() else {
            panic!("{events:?}");
        };
        assert!(reason.contains("address family"), "{reason}");
        server.stop();
    }

    #[test]
    fn turn_plans_check_their_arguments() {
        let plan = TurnPlan::new(&config()).unwrap();
        assert_eq!(plan.config.lifetime, Duration::from_secs(600));
        assert_eq!(plan.config.credentials.username, "user");

        let rest = TurnPlan::new(&TurnConfig {
            password: None,
            secret: Some("s".into()),
            ..config()
        })
        .unwrap();
        assert!(rest.config.credentials.username.ends_with(":user"));

        let bad = |c: TurnConfig| TurnPlan::new(&c).unwrap_err();
        for c in [
            TurnConfig {
                password: None,
                ..config()
            },
            TurnConfig {
                secret: Some("s".into()),
                ..config()
            },
            TurnConfig {
                username: String::new(),
                ..config()
            },
            TurnConfig {
                uri: "stun:127.0.0.1".into(),
                ..config()
            },
            TurnConfig {
                uri: format!("turn:{}", "a".repeat(600)),
                ..config()
            },
        ] {
            assert!(matches!(bad(c), PinholeError::InvalidArgument(_)));
        }
        let tls = TurnPlan::new(&TurnConfig {
            uri: "turns:127.0.0.1".into(),
            ..config()
        });
        assert_eq!(tls.is_err(), !cfg!(feature = "tls"));
        if let Err(e) = tls {
            assert!(matches!(e, PinholeError::Unsupported(_)));
        }
    }

    #[test]
    fn turn_configs_never_show_credentials() {
        let c = TurnConfig {
            secret: Some("the-secret".into()),
            password: Some("the-password".into()),
            ..config()
        };
        let text = format!("{c:?} {:?}", TurnPlan::new(&config()).unwrap());
        assert!(!text.contains("the-secret") && !text.contains("the-password"));
        assert!(!text.contains("\"pw\""), "{text}");
    }

    #[test]
    fn turn_errors_are_typed() {
        use pinhole::turn::TurnError;
        let code = |e: TurnError| PinholeError::from(e).code();
        use crate::capi::*;
        assert_eq!(code(TurnError::Unauthenticated), PINHOLE_ERR_AUTH);
        assert_eq!(code(TurnError::WrongCredentials), PINHOLE_ERR_AUTH);
        assert_eq!(code(TurnError::AllocationQuotaReached), PINHOLE_ERR_REFUSED);
        assert_eq!(
            code(TurnError::ServerError {
                code: 500,
                reason: "x".into()
            }),
            PINHOLE_ERR_REFUSED
        );
        assert_eq!(code(TurnError::TimedOut), PINHOLE_ERR_TIMEOUT);
        assert_eq!(code(TurnError::NoAllocation), PINHOLE_ERR_NOT_AVAILABLE);
        assert_eq!(code(TurnError::FramingLost), PINHOLE_ERR_IO);
        assert!(turn_send_args("127.0.0.1:9", MAX_TURN_DATA).is_ok());
        assert!(turn_send_args("127.0.0.1:9", MAX_TURN_DATA + 1).is_err());
        assert!(turn_send_args("127.0.0.1", 1).is_err());
    }
}
