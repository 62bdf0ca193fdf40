//! The operations both foreign APIs offer, in plain Rust over the FFI types: argument
//! validation (synchronous, so that a start function can refuse at once), and the async
//! bodies that run on a [`Task`](crate::task::Task)'s thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinhole::driver::portmap::GatewayTarget;
use pinhole::driver::{self, DEFAULT_STUN_SERVERS, ServeHandle};
use pinhole::portmap::{MapperConfig, MapperEvent, ViaChoice};
use pinhole::stun::{ServerConfig, StunUri};

use crate::error::PinholeError;
use crate::task::{Rendezvous, StopSignal, Task};
use crate::types::{
    DEFAULT_MAPPING_LIFETIME_SECS, DEFAULT_TIMEOUT_MS, GatewayProbe, NetcheckConfig,
    NetcheckProgress, NetcheckReport, PortMapping, PortMappingConfig, PortMappingEvent, parse_ip,
    parse_socket_addr,
};

/// The longest STUN URI accepted, bytes (the C API's label buffers hold it).
pub(crate) const MAX_URI_LEN: usize = 500;
/// The most STUN servers one netcheck accepts.
pub(crate) const MAX_SERVERS: usize = 32;
/// The longest netcheck budget accepted.
const MAX_TIMEOUT_MS: u32 = 3_600_000;

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
        Ok(MappingPlan {
            gateway,
            local_ip,
            config,
        })
    }

    /// Runs the mapper until it stops by itself or `stop` fires (then it releases the
    /// mapping). `current` follows the mapping. The last event is always
    /// [`PortMappingEvent::Released`] or [`PortMappingEvent::Unavailable`].
    pub(crate) async fn run(
        self,
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
        let mut terminal = false;
        let set = |m: Option<PortMapping>| {
            if let Ok(mut c) = current.lock() {
                *c = m;
            }
        };
        let result =
            driver::portmap::run_mapper(target, self.config, stop.wait(), |ev: &MapperEvent| {
                match ev {
                    MapperEvent::Mapped(m) | MapperEvent::Renewed(m) => set(Some(m.into())),
                    MapperEvent::Changed { new, .. } => set(Some(new.into())),
                    MapperEvent::Lost(_) | MapperEvent::Unavailable(_) | MapperEvent::Released => {
                        set(None)
                    }
                    MapperEvent::Verified(_)
                    | MapperEvent::NotForwarding(_)
                    | MapperEvent::Unverified(_) => {}
                }
                terminal |= matches!(ev, MapperEvent::Released | MapperEvent::Unavailable(_));
                if let Some(ev) = PortMappingEvent::from_core(ev) {
                    on_event(ev);
                }
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
