//! A port mapping, and the STUN reflector that verifies it.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use pinhole::driver::{self, portmap::GatewayTarget};
use pinhole::portmap::{MapProtocol, MapperConfig, MapperEvent, VerifyConfig, ViaChoice};

use super::{MAX_VERIFY_INTERVAL_SECS, check_stun_uri};
use crate::error::PinholeError;
use crate::task::StopSignal;
use crate::types::{
    DEFAULT_MAPPING_LIFETIME_SECS, DEFAULT_VERIFY_INTERVAL_SECS, NetworkInfo, PortMapping,
    PortMappingConfig, PortMappingEvent, parse_ip,
};

/// Where a mapper's requests go: the gateway (None: the default route's, from the routing
/// table) and the local address toward it (None: the kernel's choice; needs a gateway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NetworkTarget {
    pub(crate) gateway: Option<IpAddr>,
    pub(crate) local_ip: Option<IpAddr>,
}

impl NetworkTarget {
    /// Checks the addresses given as text: IP addresses, a local address only with a
    /// gateway, both of one family.
    pub(crate) fn parse(
        gateway: Option<&str>,
        local_ip: Option<&str>,
    ) -> Result<Self, PinholeError> {
        let gateway = gateway.map(|g| parse_ip("gateway", g)).transpose()?;
        let local_ip = local_ip.map(|g| parse_ip("local_ip", g)).transpose()?;
        match (gateway, local_ip) {
            (None, Some(_)) => Err(PinholeError::invalid("local_ip needs an explicit gateway")),
            (Some(g), Some(l)) if g.is_ipv4() != l.is_ipv4() => Err(PinholeError::invalid(
                format!("gateway {g} and local_ip {l} are of different address families"),
            )),
            _ => Ok(NetworkTarget { gateway, local_ip }),
        }
    }

    /// The target of a host's network facts.
    pub(crate) fn from_info(info: &NetworkInfo) -> Result<Self, PinholeError> {
        Self::parse(info.gateway.as_deref(), info.local_ip.as_deref())
    }

    /// Finds the gateway and local address (sends nothing).
    pub(crate) async fn resolve(self) -> Result<GatewayTarget, pinhole::driver::DriverError> {
        match (self.gateway, self.local_ip) {
            (Some(gw), Some(ip)) => Ok(GatewayTarget::explicit(gw, ip)),
            (Some(gw), None) => driver::portmap::local_ip_toward(gw)
                .await
                .map(|ip| GatewayTarget::explicit(gw, ip)),
            _ => driver::portmap::discover_gateway().await,
        }
    }
}

/// What the mapper says when the host reported a network change.
fn network_changed_reason(to: NetworkTarget) -> String {
    match to.gateway {
        Some(g) => format!("the network changed: mapping again via gateway {g}"),
        None => "the network changed: mapping again via the default route's gateway".into(),
    }
}

/// How long resolving the verification reflector may take before the mapper gives up.
const VERIFY_RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A port mapping whose arguments were checked.
#[derive(Debug, Clone)]
pub(crate) struct MappingPlan {
    target: NetworkTarget,
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
        let target = NetworkTarget::parse(c.gateway.as_deref(), c.local_ip.as_deref())?;
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
            target,
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
        let mut verify = VerifyConfig::new(reflector);
        verify.interval = *interval;
        self.config.verify = Some(verify);
        Ok(())
    }

    /// [`Self::run_with_network`] without network input (the C API's mapper).
    pub(crate) async fn run(
        self,
        stop: StopSignal,
        current: Arc<Mutex<Option<PortMapping>>>,
        on_event: impl FnMut(PortMappingEvent),
    ) {
        // No sender: the mapper never hears of a change.
        let (_, network) = mpsc::unbounded_channel();
        self.run_with_network(stop, network, current, on_event)
            .await;
    }

    /// Runs the mapper until it stops by itself or `stop` fires (then it releases the
    /// mapping). `current` follows the mapping. The last event is always
    /// [`PortMappingEvent::Released`] or [`PortMappingEvent::Unavailable`].
    ///
    /// A [`NetworkTarget`] from `network` (the host's network facts) moves the mapping: the
    /// mapper deletes it at the old gateway (bounded), says `Lost`, and maps again toward
    /// the new target with the same configuration (the core's mapper has no network input:
    /// this restarts it). When no gateway can be found after a change, it says `Lost` and
    /// waits for the next change instead of stopping.
    pub(crate) async fn run_with_network(
        mut self,
        stop: StopSignal,
        mut network: mpsc::UnboundedReceiver<NetworkTarget>,
        current: Arc<Mutex<Option<PortMapping>>>,
        mut on_event: impl FnMut(PortMappingEvent),
    ) {
        let mut stop = stop;
        let set = |m: Option<PortMapping>| {
            if let Ok(mut c) = current.lock() {
                *c = m;
            }
        };
        let mut next = self.target;
        let mut first = true;
        loop {
            let target = match next.resolve().await {
                Ok(t) => t,
                Err(e) if first => {
                    on_event(PortMappingEvent::Unavailable {
                        reason: e.to_string(),
                    });
                    return;
                }
                Err(e) => {
                    // After a change: wait for the next one (a network without a default
                    // route, say), or the end.
                    on_event(PortMappingEvent::Lost {
                        reason: format!("{e}; waiting for the network to change"),
                    });
                    tokio::select! {
                        () = stop.wait() => {
                            on_event(PortMappingEvent::Released);
                            return;
                        }
                        n = network.recv() => match n {
                            Some(n) => next = latest(n, &mut network),
                            None => {
                                stop.wait().await;
                                on_event(PortMappingEvent::Released);
                                return;
                            }
                        },
                    }
                    continue;
                }
            };
            first = false;
            // Stopping while the reflector is being resolved ends the mapper at once
            // (nothing was mapped yet).
            let resolved = tokio::select! {
                r = self.resolve_verify(target.local_ip) => r,
                () = stop.wait() => Err("stopped before the mapper started".into()),
            };
            if let Err(reason) = resolved {
                on_event(PortMappingEvent::Unavailable { reason });
                return;
            }
            let changed: Cell<Option<NetworkTarget>> = Cell::new(None);
            let mut terminal = false;
            let stop_or_change = async {
                tokio::select! {
                    () = stop.wait() => {}
                    n = network.recv() => match n {
                        Some(n) => changed.set(Some(latest(n, &mut network))),
                        // The handle is gone: its drop stops the task too.
                        None => std::future::pending().await,
                    },
                }
            };
            let result = driver::portmap::run_mapper(
                target,
                self.config.clone(),
                stop_or_change,
                |ev: &MapperEvent| {
                    match ev {
                        MapperEvent::Mapped(m)
                        | MapperEvent::Renewed(m)
                        | MapperEvent::Verified(m)
                        | MapperEvent::NotForwarding(m) => set(Some(m.into())),
                        MapperEvent::Changed { new, .. } => set(Some(new.into())),
                        MapperEvent::Lost(_)
                        | MapperEvent::Unavailable(_)
                        | MapperEvent::Released(_) => set(None),
                        // Events that leave the current mapping as it is.
                        _ => {}
                    }
                    let end = matches!(ev, MapperEvent::Released(_) | MapperEvent::Unavailable(_));
                    if end && changed.get().is_some() {
                        // The end of the old network's mapper, not of this one.
                        return true;
                    }
                    terminal |= end;
                    if let Some(event) = PortMappingEvent::from_core(ev) {
                        on_event(event);
                    }
                    true
                },
            )
            .await;
            if let Some(to) = changed.take() {
                set(None);
                on_event(PortMappingEvent::Lost {
                    reason: network_changed_reason(to),
                });
                next = to;
                continue;
            }
            if !terminal {
                set(None);
                on_event(PortMappingEvent::Unavailable {
                    reason: match result {
                        Err(e) => e.to_string(),
                        Ok(()) => "the mapper stopped".into(),
                    },
                });
            }
            return;
        }
    }
}

/// The last of the changes queued (the ones before it are out of date).
fn latest(
    first: NetworkTarget,
    network: &mut mpsc::UnboundedReceiver<NetworkTarget>,
) -> NetworkTarget {
    let mut last = first;
    while let Ok(n) = network.try_recv() {
        last = n;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{MAX_URI_LEN, Server};
    use crate::task::Task;

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
        let m = Mapping::new(
            std::time::Instant::now(),
            Via::Pcp,
            MapProtocol::Udp,
            "10.0.0.2:40000".parse().unwrap(),
            "203.0.113.7:40000".parse().unwrap(),
            Duration::from_secs(7200),
        );
        assert!(m.reachable);
        let pm = PortMapping::from(&m);
        assert_eq!(
            PortMappingEvent::from_core(&MapperEvent::Verified(m)),
            Some(PortMappingEvent::Verified {
                mapping: pm.clone()
            })
        );
        assert_eq!(
            PortMappingEvent::from_core(&MapperEvent::NotForwarding(m)),
            Some(PortMappingEvent::NotForwarding { mapping: pm })
        );
        assert_eq!(
            PortMappingEvent::from_core(&MapperEvent::Unverified("silent".into())),
            Some(PortMappingEvent::Unverified {
                reason: "silent".into()
            })
        );
        let lost = PortMappingEvent::from_core(&MapperEvent::Lost(
            pinhole::portmap::LossReason::NotForwarding,
        ));
        assert!(matches!(lost, Some(PortMappingEvent::Lost { reason }) if reason.contains("STUN")));
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
}
