//! The port mapping of a [`super::peer::PeerConnection`]'s socket: PCP, NAT-PMP or UPnP
//! IGD through the default gateway ([`super::portmap::run_mapper`]), its external address
//! offered as a candidate ([`crate::peer::Peer::port_mapped`]), released when the
//! connection closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::portmap::{discover_gateway, run_mapper};
use crate::portmap::{MapProtocol, MapperConfig, MapperEvent};

/// How long gathering waits for the gateway's first answer. PCP and NAT-PMP answer in
/// milliseconds on a LAN; UPnP needs a search and two HTTP exchanges. Connecting never
/// waits for it: only the end of gathering does (`a=end-of-candidates`, and with it the
/// moment a connection with no pair left may be called failed).
pub const PORT_MAPPING_WAIT: Duration = Duration::from_secs(3);

/// What the mapping task reports.
#[derive(Debug)]
pub(super) enum PortmapEvent {
    /// The socket is reachable at this external address.
    Mapped(SocketAddr),
    /// No mapping (yet): gathering goes on without it.
    Done,
}

/// The mapping task's reports, for the connection's task.
#[derive(Debug)]
pub(super) struct PortMapping {
    events: Option<mpsc::Receiver<PortmapEvent>>,
}

/// The mapping task itself, held by the connection: dropping it lets the task delete
/// the mapping in the background (if the runtime lives on); [`Release::release`] waits
/// for the deletion.
#[derive(Debug)]
pub(super) struct Release {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Release {
    /// Deletes the mapping and waits for the gateway's answer (bounded by the mapper's
    /// [`super::portmap::RELEASE_TIMEOUT`], and a second on top).
    pub(super) async fn release(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.task.take() {
            let bound = super::portmap::RELEASE_TIMEOUT + Duration::from_secs(1);
            let _ = tokio::time::timeout(bound, t).await;
        }
    }
}

impl PortMapping {
    /// None (port mapping off, or a socket that no gateway serves).
    pub(super) fn off() -> (Self, Release) {
        (
            Self { events: None },
            Release {
                stop: None,
                task: None,
            },
        )
    }

    /// Maps the UDP socket at `local` through the default gateway.
    pub(super) fn start(local: SocketAddr) -> (Self, Release) {
        let (tx, rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(local, tx, stop_rx));
        (
            Self { events: Some(rx) },
            Release {
                stop: Some(stop_tx),
                task: Some(task),
            },
        )
    }

    /// The next report (pending forever when there is none).
    pub(super) async fn next(&mut self) -> Option<PortmapEvent> {
        match &mut self.events {
            Some(rx) => match rx.recv().await {
                Some(ev) => Some(ev),
                None => {
                    self.events = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }
}

async fn run(local: SocketAddr, tx: mpsc::Sender<PortmapEvent>, stop: oneshot::Receiver<()>) {
    let target = match discover_gateway().await {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "no gateway to map the socket through");
            let _ = tx.send(PortmapEvent::Done).await;
            return;
        }
    };
    if target.local_ip != local.ip() {
        debug!(gateway = %target.gateway, %local, "the socket is not on the gateway's side: not mapped");
        let _ = tx.send(PortmapEvent::Done).await;
        return;
    }
    let config = MapperConfig::new(
        target.gateway,
        target.local_ip,
        MapProtocol::Udp,
        local.port(),
    );
    let waiting = tx.clone();
    let wait = tokio::spawn(async move {
        tokio::time::sleep(PORT_MAPPING_WAIT).await;
        let _ = waiting.send(PortmapEvent::Done).await;
    });
    let result = run_mapper(
        target,
        config,
        async {
            let _ = stop.await;
        },
        |ev| {
            match ev {
                MapperEvent::Mapped(m) | MapperEvent::Changed { new: m, .. } => {
                    wait.abort();
                    let _ = tx.try_send(PortmapEvent::Mapped(m.external));
                }
                MapperEvent::Unavailable(why) => {
                    debug!(%why, "the gateway does not map");
                    let _ = tx.try_send(PortmapEvent::Done);
                }
                _ => {}
            }
            true
        },
    )
    .await;
    if let Err(e) = result {
        debug!(error = %e, "port mapping ended");
        let _ = tx.try_send(PortmapEvent::Done);
    }
}
