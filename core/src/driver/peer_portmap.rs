//! The port mapping of a [`super::peer::PeerConnection`]'s socket: PCP, NAT-PMP or UPnP
//! IGD through the default gateway ([`super::portmap::run_mapper`]), its external address
//! offered as a candidate ([`crate::peer::Peer::port_mapped`]), released when the
//! connection closes.
//!
//! When the gateway maps over PCP, the connection also asks it for PEER mappings
//! (RFC 6887 §12, [`PcpPeer`]) toward the peer's candidates as they arrive
//! ([`PortMapping::pcp_peer_remote`]); their external addresses are offered as
//! candidates too ([`crate::peer::Peer::pcp_peer_mapped`]), and they are deleted with
//! the mapping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use super::portmap::{GatewayTarget, discover_gateway, run_mapper};
use super::{io, os_seed};
use crate::portmap::{
    MapProtocol, MapperConfig, MapperEvent, PcpPeer, PcpPeerConfig, PcpPeerEvent, Via,
};
use crate::{Protocol, Received};

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
    /// A PCP PEER mapping: the socket's traffic toward one of the peer's candidates
    /// leaves from this external address.
    PeerMapped(SocketAddr),
}

/// The mapping task's reports, for the connection's task.
#[derive(Debug)]
pub(super) struct PortMapping {
    events: Option<mpsc::Receiver<PortmapEvent>>,
    /// The peer's candidates, for PCP PEER.
    remotes: Option<mpsc::UnboundedSender<SocketAddr>>,
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
            Self {
                events: None,
                remotes: None,
            },
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
        let (remotes_tx, remotes_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(local, tx, stop_rx, remotes_rx));
        (
            Self {
                events: Some(rx),
                remotes: Some(remotes_tx),
            },
            Release {
                stop: Some(stop_tx),
                task: Some(task),
            },
        )
    }

    /// A candidate of the peer: PEER mappings are asked toward the first few
    /// ([`crate::portmap::MAX_PEERS`]) once the gateway is known to speak PCP.
    pub(super) fn pcp_peer_remote(&self, remote: SocketAddr) {
        if let Some(tx) = &self.remotes {
            let _ = tx.send(remote);
        }
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

async fn run(
    local: SocketAddr,
    tx: mpsc::Sender<PortmapEvent>,
    stop: oneshot::Receiver<()>,
    remotes: mpsc::UnboundedReceiver<SocketAddr>,
) {
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
    // One stop for the mapper and the PEER mappings; PEER starts once PCP has mapped.
    let (stopping_tx, stopping) = watch::channel(false);
    let (pcp_tx, mut pcp) = watch::channel(false);
    let waiting = tx.clone();
    let wait = tokio::spawn(async move {
        tokio::time::sleep(PORT_MAPPING_WAIT).await;
        let _ = waiting.send(PortmapEvent::Done).await;
    });
    let mut mapper_stop = stopping.clone();
    let mapper = run_mapper(
        target,
        config,
        async move {
            let _ = mapper_stop.wait_for(|s| *s).await;
        },
        |ev| {
            match ev {
                MapperEvent::Mapped(m) | MapperEvent::Changed { new: m, .. } => {
                    wait.abort();
                    if m.via == Via::Pcp {
                        let _ = pcp_tx.send(true);
                    }
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
    );
    let peer_tx = tx.clone();
    let mut peer_stop = stopping.clone();
    let peer = async move {
        tokio::select! {
            r = pcp.wait_for(|p| *p) => if r.is_err() { return },
            _ = peer_stop.wait_for(|s| *s) => return,
        }
        let result = run_pcp_peer(target, local, remotes, stopping, |ev| {
            if let PcpPeerEvent::Mapped { external, .. } = ev {
                let _ = peer_tx.try_send(PortmapEvent::PeerMapped(*external));
            }
        })
        .await;
        if let Err(e) = result {
            debug!(error = %e, "PCP PEER mappings ended");
        }
    };
    let stopper = async move {
        let _ = stop.await;
        let _ = stopping_tx.send(true);
    };
    let (result, (), ()) = tokio::join!(mapper, peer, stopper);
    if let Err(e) = result {
        debug!(error = %e, "port mapping ended");
        let _ = tx.try_send(PortmapEvent::Done);
    }
}

/// Runs [`PcpPeer`] for the socket at `internal` through `target`'s gateway from a UDP
/// socket of its own (on `target.local_ip`: the PCP client address must be the internal
/// address, RFC 6887 §12.1): PEER mappings toward the remotes that arrive, until `stop`
/// turns true; then deletes them (bounded by [`super::portmap::RELEASE_TIMEOUT`]).
pub(super) async fn run_pcp_peer(
    target: GatewayTarget,
    internal: SocketAddr,
    mut remotes: mpsc::UnboundedReceiver<SocketAddr>,
    mut stop: watch::Receiver<bool>,
    mut on_event: impl FnMut(&PcpPeerEvent),
) -> Result<(), super::DriverError> {
    let socket = UdpSocket::bind(SocketAddr::new(target.local_ip, 0))
        .await
        .map_err(io("binding the PCP PEER socket"))?;
    let source = socket.local_addr().map_err(io("local address"))?;
    let config = PcpPeerConfig::new(target.gateway, target.local_ip, internal.port());
    let mut m = PcpPeer::new(config, source, os_seed()?);
    let mut release_by: Option<tokio::time::Instant> = None;
    let mut remotes_open = true;
    let mut buf = vec![0u8; crate::portmap::pcp::MAX_MESSAGE_LEN];
    loop {
        while let Some(t) = m.poll_transmit() {
            if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                debug!(error = %e, "PCP PEER: sending");
            }
        }
        while let Some(ev) = m.poll_event() {
            on_event(&ev);
            if matches!(ev, PcpPeerEvent::Released { .. }) {
                return Ok(());
            }
        }
        let next = m
            .poll_timeout()
            .map(tokio::time::Instant::from)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let next = release_by.map_or(next, |r| r.min(next));
        if release_by.is_some_and(|r| r <= tokio::time::Instant::now()) {
            return Ok(());
        }
        tokio::select! {
            r = stop.wait_for(|s| *s), if release_by.is_none() => {
                let _ = r;
                m.release(Instant::now());
                release_by = Some(
                    tokio::time::Instant::now() + super::portmap::RELEASE_TIMEOUT,
                );
            }
            r = remotes.recv(), if remotes_open && release_by.is_none() => match r {
                Some(remote) => {
                    m.add_remote(Instant::now(), remote);
                }
                None => remotes_open = false,
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: source,
                        contents: &buf[..n],
                    };
                    m.handle_input(Instant::now(), rx);
                }
                Err(e) => debug!(error = %e, "PCP PEER: receiving"),
            },
            () = tokio::time::sleep_until(next) => m.handle_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, UdpSocket as StdUdp};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::portmap::pcp::{OpData, Opcode, Request, Response, ResultCode};

    /// The fake gateway: a loopback address of its own (127/8 is all loopback on Linux),
    /// so that port 5351 is not shared with other tests.
    const FAKE_GATEWAY: &str = "127.77.13.1";
    const EXTERNAL: &str = "203.0.113.9:61000";

    /// A fake PCP server on loopback: answers every PEER request with `result` (SUCCESS:
    /// [`EXTERNAL`], with the lifetime asked for); records the requests. Stops after
    /// `secs` seconds.
    fn fake_gateway(gateway: IpAddr, result: ResultCode, secs: u64) -> Arc<Mutex<Vec<Request>>> {
        let sock = StdUdp::bind((gateway, 5351)).expect("binding the fake gateway");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + Duration::from_secs(secs);
            let mut buf = [0u8; 1100];
            while std::time::Instant::now() < end {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(req) = Request::parse(&buf[..n]) else {
                    continue;
                };
                log.lock().unwrap().push(req);
                let OpData::Peer(mut p) = req.data else {
                    continue;
                };
                let ext: SocketAddr = EXTERNAL.parse().unwrap();
                p.map.external_ip = ext.ip();
                p.map.external_port = ext.port();
                let resp = Response {
                    result,
                    lifetime: req.lifetime,
                    epoch: 1,
                    opcode: Opcode::Peer,
                    data: Some(OpData::Peer(p)),
                };
                let mut out = [0u8; 128];
                let n = resp.emit(&mut out).unwrap();
                let _ = sock.send_to(&out[..n], from);
            }
        });
        seen
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<PcpPeerEvent>) -> PcpPeerEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the task ended")
    }

    /// The driver's PEER task against a fake PCP gateway on loopback: a PEER request from
    /// the PCP client address for the socket's port toward the remote, the grant
    /// reported, the mapping deleted (lifetime 0) when the connection stops.
    #[tokio::test]
    async fn pcp_peer_against_a_fake_gateway() {
        let gateway: IpAddr = FAKE_GATEWAY.parse().unwrap();
        let seen = fake_gateway(gateway, ResultCode::SUCCESS, 10);
        let target = GatewayTarget::explicit(gateway, "127.0.0.1".parse().unwrap());
        let internal: SocketAddr = "127.0.0.1:45000".parse().unwrap();
        let remote: SocketAddr = "198.51.100.30:5000".parse().unwrap();
        let (remotes_tx, remotes) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let (ev_tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_pcp_peer(target, internal, remotes, stop, move |ev| {
            let _ = ev_tx.send(ev.clone());
        }));
        remotes_tx.send(remote).unwrap();
        remotes_tx.send(remote).unwrap();
        match next_event(&mut events).await {
            PcpPeerEvent::Mapped {
                remote: r,
                external,
                ..
            } => {
                assert_eq!(r, remote);
                assert_eq!(external, EXTERNAL.parse::<SocketAddr>().unwrap());
            }
            other => panic!("{other:?}"),
        }
        stop_tx.send(true).unwrap();
        assert_eq!(
            next_event(&mut events).await,
            PcpPeerEvent::Released {
                confirmed: 1,
                unconfirmed: 0
            }
        );
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends")
            .unwrap()
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            2,
            "one PEER (the duplicate not asked), one deletion: {seen:?}"
        );
        for (req, lifetime) in seen.iter().zip([crate::portmap::DEFAULT_LIFETIME, 0]) {
            assert_eq!(req.lifetime, lifetime);
            assert_eq!(req.client_ip, target.local_ip);
            let OpData::Peer(p) = req.data else {
                panic!("{req:?}")
            };
            assert_eq!((p.remote, p.map.internal_port), (remote, 45000));
        }
    }

    /// A gateway that answers UNSUPP_OPCODE is asked nothing more: remotes that come
    /// later send no request, and nothing is deleted at the end.
    #[tokio::test]
    async fn pcp_peer_unsupported_asks_nothing_more() {
        let gateway: IpAddr = "127.77.13.2".parse().unwrap();
        let seen = fake_gateway(gateway, ResultCode::UNSUPP_OPCODE, 10);
        let target = GatewayTarget::explicit(gateway, "127.0.0.1".parse().unwrap());
        let internal: SocketAddr = "127.0.0.1:45001".parse().unwrap();
        let (remotes_tx, remotes) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let (ev_tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_pcp_peer(target, internal, remotes, stop, move |ev| {
            let _ = ev_tx.send(ev.clone());
        }));
        remotes_tx
            .send("198.51.100.30:5000".parse().unwrap())
            .unwrap();
        assert_eq!(next_event(&mut events).await, PcpPeerEvent::Unsupported);
        for p in 5001..5004 {
            remotes_tx
                .send(SocketAddr::new("198.51.100.31".parse().unwrap(), p))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_tx.send(true).unwrap();
        assert_eq!(
            next_event(&mut events).await,
            PcpPeerEvent::Released {
                confirmed: 0,
                unconfirmed: 0
            }
        );
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends")
            .unwrap()
            .unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
