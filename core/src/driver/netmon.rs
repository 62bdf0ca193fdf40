//! The built-in network monitor (Linux and Android): an rtnetlink socket that joins the
//! link, address and route groups, read on the tokio reactor, its notifications parsed
//! and debounced by the sans-IO [`crate::netmon`]. Each report carries the interface
//! addresses as they are then.
//!
//! Hosts with a monitor of their own (Android's `ConnectivityManager`, Apple's
//! `NWPathMonitor`, a desktop's network manager) call `network_changed()` on the
//! connection instead; on other systems [`watch`] says it is unsupported.

use std::net::IpAddr;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::DriverError;
use super::interfaces::InterfaceAddress;
use crate::netmon::Change;

/// One debounced change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkChange {
    /// What kinds of change the burst carried.
    pub change: Change,
    /// The interface addresses after it (up or not; [`super::interfaces::list`]).
    pub addresses: Vec<InterfaceAddress>,
}

impl NetworkChange {
    /// The addresses of interfaces that are up and could be host candidates
    /// ([`super::interfaces::usable`]: no loopback, link-local, multicast…).
    pub fn usable_ips(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .filter(|a| a.up && super::interfaces::usable(a.ip, false))
            .map(|a| a.ip)
            .collect()
    }
}

/// A running monitor; stops when dropped.
#[derive(Debug)]
pub struct NetworkMonitor {
    rx: mpsc::Receiver<NetworkChange>,
    task: JoinHandle<()>,
}

impl Drop for NetworkMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NetworkMonitor {
    /// The next change; `None` when the monitor failed (its socket broke), which it logs.
    pub async fn changed(&mut self) -> Option<NetworkChange> {
        self.rx.recv().await
    }
}

/// Starts watching the host's links, addresses and default routes. Needs a tokio runtime.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn watch() -> Result<NetworkMonitor, DriverError> {
    let fd = linux::open()?;
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(linux::run(fd, tx));
    Ok(NetworkMonitor { rx, task })
}

/// Starts watching the host's links, addresses and default routes: unsupported here.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn watch() -> Result<NetworkMonitor, DriverError> {
    Err(DriverError::Unsupported(
        "a built-in network monitor (Linux and Android only): call network_changed()".into(),
    ))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    use rustix::net::{self, AddressFamily, RecvFlags, SocketFlags, SocketType, netlink};
    use tokio::io::unix::AsyncFd;
    use tokio::sync::mpsc;
    use tracing::debug;

    use super::super::{DriverError, interfaces, io};
    use super::NetworkChange;
    use crate::netmon::{Change, Debounce, GROUPS, parse_notifications};

    /// A notification datagram is at most a page or so; 64 KiB covers any batch.
    const BUF: usize = 64 * 1024;

    pub(super) fn open() -> Result<OwnedFd, DriverError> {
        let fd = net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            // NETLINK_ROUTE is protocol 0: rustix's `None`.
            None,
        )
        .map_err(|e| io("opening an rtnetlink socket")(e.into()))?;
        net::bind(&fd, &netlink::SocketAddrNetlink::new(0, GROUPS))
            .map_err(|e| io("joining the rtnetlink groups")(e.into()))?;
        Ok(fd)
    }

    pub(super) async fn run(fd: OwnedFd, tx: mpsc::Sender<NetworkChange>) {
        // Deprecated for file descriptors that may close while registered; an `OwnedFd`
        // closes only when the `AsyncFd` drops (after deregistering), and the safe
        // alternative is `unsafe` (as in the driver's timerfd).
        #[allow(deprecated)]
        let fd = match AsyncFd::with_interest(fd, tokio::io::Interest::READABLE) {
            Ok(f) => f,
            Err(e) => {
                debug!(error = %e, "network monitor: rtnetlink socket not pollable");
                return;
            }
        };
        let mut buf = vec![0u8; BUF];
        let mut debounce = Debounce::new();
        loop {
            let wake = debounce.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                ready = fd.readable() => {
                    let mut guard = match ready {
                        Ok(g) => g,
                        Err(e) => {
                            debug!(error = %e, "network monitor: rtnetlink socket failed");
                            return;
                        }
                    };
                    // Everything queued, then wait again.
                    loop {
                        match net::recv(guard.get_inner(), &mut buf[..], RecvFlags::DONTWAIT) {
                            Ok((n, _)) => {
                                let change = parse_notifications(&buf[..n]).unwrap_or_else(|e| {
                                    debug!(error = %e, "network monitor: malformed notification");
                                    Change::everything()
                                });
                                debounce.handle_input(Instant::now(), change);
                            }
                            Err(rustix::io::Errno::AGAIN) => {
                                guard.clear_ready();
                                break;
                            }
                            Err(rustix::io::Errno::INTR) => {}
                            Err(rustix::io::Errno::NOBUFS) => {
                                // The kernel dropped notifications: anything may have changed.
                                debug!("network monitor: notifications lost (ENOBUFS)");
                                debounce.handle_input(Instant::now(), Change::everything());
                            }
                            Err(e) => {
                                debug!(error = %e, "network monitor: rtnetlink receive failed");
                                return;
                            }
                        }
                    }
                }
                () = async {
                    match wake {
                        Some(w) => tokio::time::sleep_until(w).await,
                        None => std::future::pending().await,
                    }
                } => {
                    debounce.handle_timeout(Instant::now());
                    while let Some(change) = debounce.poll_event() {
                        let addresses = interfaces::list().unwrap_or_else(|e| {
                            debug!(error = %e, "network monitor: listing interfaces failed");
                            Vec::new()
                        });
                        debug!(?change, n = addresses.len(), "network changed");
                        if tx.send(NetworkChange { change, addresses }).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}
