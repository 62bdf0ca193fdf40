//! A peer connection on tokio: one UDP socket driven by the sans-IO [`Peer`].
//!
//! [`PeerConnection::start`] binds the socket and starts gathering; candidates come out as
//! [`PeerConnectionEvent::Candidate`] for the signalling channel, the peer's credentials
//! and candidates go in, and once a pair is selected [`PeerConnection::send`] and
//! [`PeerConnection::recv`] carry datagrams (directly or through the relay, whichever
//! pair ICE selected, switching without the application noticing).
//!
//! This first driver gives each datagram its own `Vec` on the way through the task; the
//! allocation-free path of the TURN data plane is not yet shared with it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::peer_portmap::{PortMapping, PortmapEvent, Release};
use super::peer_streams::{StreamEvent, Streams};
use super::{DriverError, io, os_seed};
use crate::ice::{Candidate, IceCredentials, IceEvent, IceState};
use crate::peer::{Peer, PeerConfig, PeerEvent, PeerInput};
use crate::{Protocol, Received};

/// How many received datagrams wait for [`PeerConnection::recv`] before more are dropped.
pub const RECV_QUEUE: usize = 4096;
/// How many datagrams [`PeerConnection::send`] queues before it waits for the socket.
pub const SEND_QUEUE: usize = 1024;

/// What the connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerConnectionEvent {
    /// A local candidate for the peer (trickle).
    Candidate(Candidate),
    /// No more local candidates: tell the peer `a=end-of-candidates`.
    GatheringComplete,
    /// The ICE state changed.
    State(IceState),
    /// Data now goes on this pair.
    SelectedPair {
        /// Ours.
        local: Candidate,
        /// The peer's.
        remote: Candidate,
        /// Whether nominated (else the best valid pair, used until one is).
        nominated: bool,
        /// The validating check's round-trip time.
        rtt: Option<std::time::Duration>,
    },
    /// A relay could not be allocated; the connection goes on without it.
    RelayFailed(String),
}

/// An event or a datagram, from [`PeerConnection::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// An event.
    Event(Box<PeerConnectionEvent>),
    /// A datagram from the peer.
    Data(Vec<u8>),
}

enum Command {
    RemoteCredentials(IceCredentials),
    RemoteCandidate(Candidate),
    EndOfCandidates,
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A running peer connection. Dropping it stops the task and closes the socket.
#[derive(Debug)]
pub struct PeerConnection {
    commands: mpsc::UnboundedSender<Command>,
    sends: mpsc::Sender<Vec<u8>>,
    events: mpsc::UnboundedReceiver<PeerConnectionEvent>,
    data: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    credentials: IceCredentials,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    release: Release,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerConnection {
    /// Binds a UDP socket on `bind` and starts gathering. A wildcard `bind` is replaced by
    /// the local IP toward the first STUN or TURN server (or 127.0.0.1 without any): the
    /// connection has one concrete address, its host candidate.
    pub async fn start(
        config: PeerConfig,
        bind: SocketAddr,
        controlling: bool,
    ) -> Result<Self, DriverError> {
        let bind = if bind.ip().is_unspecified() {
            let toward = config
                .stun_servers
                .first()
                .copied()
                .or_else(|| config.turn_servers.first().map(|t| t.server));
            let ip = match toward {
                Some(s) => super::portmap::local_ip_toward(s.ip()).await?,
                None => IpAddr::from([127, 0, 0, 1]),
            };
            SocketAddr::new(ip, bind.port())
        } else {
            bind
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(io(format!("binding {bind}")))?;
        let local = socket.local_addr().map_err(io("local address"))?;
        let port_mapping = config.port_mapping;
        let mut peer = Peer::new(Instant::now(), config, local, controlling, os_seed()?);
        let streams = Streams::start(peer.turn_streams());
        // A loopback socket has no gateway: nothing to ask (and nothing may be sent to
        // one on behalf of a test).
        let (portmap, release) = if port_mapping && !local.ip().is_loopback() {
            PortMapping::start(local)
        } else {
            peer.port_mapping_done();
            PortMapping::off()
        };
        let credentials = peer.local_credentials().clone();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (data_tx, data_rx) = mpsc::channel(RECV_QUEUE);
        let (send_tx, send_rx) = mpsc::channel(SEND_QUEUE);
        let task = tokio::spawn(run(
            Arc::new(socket),
            local,
            peer,
            streams,
            portmap,
            cmd_rx,
            send_rx,
            ev_tx,
            data_tx,
        ));
        Ok(Self {
            commands: cmd_tx,
            sends: send_tx,
            events: ev_rx,
            data: data_rx,
            credentials,
            local,
            task,
            release,
        })
    }

    /// Our ICE credentials, for the local description.
    pub fn local_credentials(&self) -> &IceCredentials {
        &self.credentials
    }

    /// The socket's address (the host candidate).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next event; `None` once the task is gone.
    pub async fn next_event(&mut self) -> Option<PeerConnectionEvent> {
        self.events.recv().await
    }

    /// The peer's credentials (from its description).
    pub fn set_remote_credentials(&self, creds: IceCredentials) {
        let _ = self.commands.send(Command::RemoteCredentials(creds));
    }

    /// A candidate of the peer's (from its description, or trickled).
    pub fn add_remote_candidate(&self, c: Candidate) {
        let _ = self.commands.send(Command::RemoteCandidate(c));
    }

    /// The peer's `a=end-of-candidates`.
    pub fn end_of_remote_candidates(&self) {
        let _ = self.commands.send(Command::EndOfCandidates);
    }

    /// Sends a datagram to the peer on the selected pair (dropped, as UDP would, while no
    /// pair is selected). Waits while [`SEND_QUEUE`] datagrams are queued: the caller
    /// cannot outrun the socket without bound.
    pub async fn send(&self, data: Vec<u8>) {
        let _ = self.sends.send(data).await;
    }

    /// Waits until every datagram passed to [`PeerConnection::send`] before it has been
    /// handed to the socket (before exiting, say, so that the last ones are not lost).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Closes the connection: stops its task and, when the socket was mapped through the
    /// gateway, deletes the mapping and waits for the gateway's answer (bounded: a few
    /// seconds at most). Dropping the connection instead deletes the mapping in the
    /// background, which a runtime that is shutting down may not finish.
    pub async fn close(mut self) {
        self.task.abort();
        self.release.release().await;
    }

    /// The next datagram from the peer; `None` once the task is gone.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.data.recv().await.map(|(_, d)| d)
    }

    /// The next event or datagram, whichever comes first; `None` once the task is gone.
    pub async fn next(&mut self) -> Option<Incoming> {
        tokio::select! {
            ev = self.events.recv() => ev.map(|e| Incoming::Event(Box::new(e))),
            d = self.data.recv() => d.map(|(_, d)| Incoming::Data(d)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    mut peer: Peer,
    mut streams: Streams,
    mut portmap: PortMapping,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut sends: mpsc::Receiver<Vec<u8>>,
    events: mpsc::UnboundedSender<PeerConnectionEvent>,
    data: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut commands_open = true;
    loop {
        while let Some(t) = peer.poll_transmit() {
            if streams.send(&t) {
                continue;
            }
            if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                debug!(to = %t.destination, error = %e, "send failed");
            }
        }
        while let Some(ev) = peer.poll_event() {
            let out = match ev {
                PeerEvent::Candidate(c) => PeerConnectionEvent::Candidate(c),
                PeerEvent::GatheringComplete => PeerConnectionEvent::GatheringComplete,
                PeerEvent::RelayFailed(e) => PeerConnectionEvent::RelayFailed(e.to_string()),
                PeerEvent::Ice(IceEvent::State(s)) => PeerConnectionEvent::State(s),
                PeerEvent::Ice(IceEvent::SelectedPair {
                    local,
                    remote,
                    nominated,
                    rtt,
                }) => PeerConnectionEvent::SelectedPair {
                    local,
                    remote,
                    nominated,
                    rtt,
                },
                PeerEvent::Ice(_) => continue,
            };
            if events.send(out).is_err() {
                return;
            }
        }
        let wake = peer
            .poll_timeout()
            .map(tokio::time::Instant::from)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: &buf[..n],
                    };
                    if let PeerInput::Data { from, range } = peer.handle_input(Instant::now(), rx) {
                        if data.try_send((from, buf[range].to_vec())).is_err() {
                            debug!("receive queue full: datagram dropped");
                        }
                    }
                }
                Err(e) => debug!(error = %e, "receive error"),
            },
            Some(ev) = portmap.next() => match ev {
                PortmapEvent::Mapped(external) => peer.port_mapped(external),
                PortmapEvent::Done => peer.port_mapping_done(),
            },
            Some(ev) = streams.next() => match ev {
                StreamEvent::Connected { server, local } => {
                    peer.turn_stream_connected(Instant::now(), server, local);
                }
                StreamEvent::Frame { server, local, data: frame } => {
                    let rx = Received {
                        proto: Protocol::Tcp,
                        source: server,
                        destination: local,
                        contents: &frame,
                    };
                    if let PeerInput::Data { from, range } = peer.handle_input(Instant::now(), rx) {
                        if data.try_send((from, frame[range].to_vec())).is_err() {
                            debug!("receive queue full: datagram dropped");
                        }
                    }
                }
                StreamEvent::Closed { server, error } => {
                    debug!(%server, %error, "TURN connection over TCP/TLS ended");
                    peer.turn_stream_closed(server, crate::turn::TurnError::Stream(error));
                }
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Command::RemoteCredentials(c)) => peer.set_remote_credentials(c),
                Some(Command::RemoteCandidate(c)) => peer.add_remote_candidate(Instant::now(), c),
                Some(Command::EndOfCandidates) => peer.end_of_remote_candidates(),
                Some(Command::Flush(done)) => {
                    // Everything queued before the flush goes out first.
                    while let Ok(d) = sends.try_recv() {
                        send_one(&socket, &mut streams, &mut peer, &d).await;
                    }
                    let _ = done.send(());
                }
                None => commands_open = false,
            },
            Some(d) = sends.recv() => send_one(&socket, &mut streams, &mut peer, &d).await,
            () = tokio::time::sleep_until(wake) => peer.handle_timeout(Instant::now()),
        }
        if !commands_open && events.is_closed() {
            return;
        }
    }
}

async fn send_one(socket: &UdpSocket, streams: &mut Streams, peer: &mut Peer, data: &[u8]) {
    match peer.send(data) {
        Ok(t) => {
            if streams.send(&t) {
                return;
            }
            if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                debug!(error = %e, "send failed");
            }
        }
        Err(e) => debug!(error = %e, "datagram not sent"),
    }
}
