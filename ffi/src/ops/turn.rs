//! A TURN allocation: its checked configuration, its run, and the commands it takes.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinhole::driver;
use pinhole::driver::turn::{DEALLOCATE_TIMEOUT, TurnClientConfig};
use pinhole::turn::{AllocationEvent, Credentials, TurnTransport, TurnUri};
use tokio::sync::{mpsc, oneshot};

use super::MAX_URI_LEN;
use crate::error::PinholeError;
use crate::task::StopSignal;
use crate::types::{
    DEFAULT_REST_TTL_SECS, DEFAULT_TURN_LIFETIME_SECS, TurnConfig, TurnEvent, parse_socket_addr,
};

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
            config: {
                let mut config = TurnClientConfig::new(uri, credentials);
                config.lifetime = Duration::from_secs(lifetime.into());
                config.family = c.family.map(Into::into).unwrap_or_default();
                config.ca_pem = c.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
                config
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
                    match TurnEvent::from_core(a) {
                        Some(e) => e,
                        None => continue,
                    }
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
                _ => continue,
            };
            match &event {
                TurnEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime_secs,
                } => set(&|s| {
                    s.allocated = true;
                    s.relayed.clone_from(relayed);
                    s.mapped.clone_from(mapped);
                    s.lifetime = Duration::from_secs((*lifetime_secs).into());
                }),
                TurnEvent::Refreshed { lifetime_secs } => {
                    set(&|s| s.lifetime = Duration::from_secs((*lifetime_secs).into()));
                }
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
