//! The batched, allocation-free UDP data path of a TURN allocation: [`TurnDataPlane`], on
//! the driver's UDP layer ([`super::super::udp`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::debug;

use super::control::{Lease, Step};
use super::{TurnEvent, route_udp};
use crate::driver::udp::{Coalescer, Datagrams, Item, SendQueue, UdpSocket};
pub use crate::driver::udp::{Coalescing, RecvBatch};
use crate::machine::Machine;
use crate::turn::{Input, TurnError, is_channel_data};
use crate::{Protocol, Received};

/// The send queue holds at most this many datagrams; queuing one more sends the queue.
pub const SEND_QUEUE_DATAGRAMS: usize = 128;
/// The send queue holds at most this many bytes of encoded datagrams.
pub const SEND_QUEUE_BYTES: usize = 128 * 1024;
/// What a Send indication adds to the data at most (header, XOR-PEER-ADDRESS for IPv6,
/// DATA's header and padding); ChannelData adds 4.
const MAX_OVERHEAD: usize = 64;
/// At most this many ICMP errors (connection refused or reset) in a row are skipped in one
/// `recv` before it reports one.
const MAX_SKIPPED_ERRORS: usize = 16;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataPlaneError {
    /// Only UDP allocations have a data plane; over TCP or TLS use
    /// [`super::TurnHandle::send_to`] and [`super::TurnEvent::Data`].
    #[error("the data plane needs a UDP allocation")]
    NotUdp,
    /// Another data plane of this allocation exists.
    #[error("this allocation already has a data plane")]
    InUse,
    /// The datagram cannot be sent: no allocation yet, no permission for the peer, or too
    /// large.
    #[error(transparent)]
    Turn(#[from] TurnError),
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The allocation is over (lost, deallocated, or its handle dropped); the reason came
    /// as a [`super::TurnEvent`].
    #[error("the allocation is over")]
    Closed,
}

/// Counters of a data plane, for tuning and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPlaneStats {
    /// Receive system calls that returned datagrams.
    pub recv_calls: u64,
    /// Datagrams received (data and control).
    pub datagrams_received: u64,
    /// Send system calls.
    pub send_calls: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Coalescing waits.
    pub waits: u64,
}

/// The batched UDP data path of a TURN allocation, from [`super::TurnHandle::data_plane`].
///
/// - Receiving: [`TurnDataPlane::recv`] reads up to a [`RecvBatch`] of datagrams with one
///   system call (`recvmmsg`, and GRO where the kernel coalesces), hands each to the
///   allocation's machine and leaves the peer data in place in the caller's buffers.
///   ChannelData of bound channels and Data indications become data; STUN responses feed
///   the machine.
/// - Sending: [`TurnDataPlane::queue_to`] encodes a datagram (ChannelData when a channel
///   is bound, else a Send indication) into the send queue; [`TurnDataPlane::flush`]
///   sends the queue with as few system calls as it can: runs of equal-sized datagrams
///   (all go to the one server) as one GSO send. [`TurnDataPlane::send_to`] is both.
///   `recv` flushes first, so answers queued while handling a batch go out before the
///   next read.
/// - Neither allocates on the heap (after [`RecvBatch::new`] and this object's own
///   buffers): no copies but the encoding into the send queue.
/// - [`Coalescing`] decides whether to wait a little before reading under load.
///
/// The socket work is the driver's UDP layer, on the `quinn-udp` crate (as used by quinn),
/// which falls back to one datagram per system call where batching is not available. The
/// allocation's socket has quinn-udp's options from the start (among them: GRO on, which
/// the handle's own receiving handles too; IPv4 datagrams are not fragmented, so
/// datagrams larger than the path MTU fail to send).
///
/// # One owner at a time
///
/// While it exists the data plane owns the allocation: the handle's task lends it the
/// machine (at the first `recv` or `queue_to`, which wait for it) and stops touching the
/// socket. `recv` then does everything the task did: it reads the socket, applies the
/// handle's commands ([`super::TurnHandle::bind_channel`], `send_to`, `deallocate`, a
/// dropped handle), runs the timers (refreshes of the allocation, permissions and
/// channels; retransmissions), sends the machine's requests and reports its events to the
/// handle. So keep calling `recv` while the allocation should live. Dropping the data
/// plane hands the machine back to the task, which receives again (peer data as
/// [`super::TurnEvent::Data`]); what is still queued is sent if the socket takes it at
/// once, else dropped.
pub struct TurnDataPlane {
    socket: Arc<UdpSocket>,
    state: State,
    /// Encoded datagrams waiting to be sent (each to the machine's server when it was
    /// encoded: a 300 Try Alternate changes the server only before an allocation exists).
    queue: SendQueue,
    coalescer: Coalescer,
    /// The machine took a control message or a command: its transmits, events and timer
    /// need attention.
    dirty: bool,
    /// The machine's next timer while owned (kept here: computing it walks the
    /// permissions and channels).
    timer: Option<Instant>,
    recv_calls: u64,
    datagrams_received: u64,
    /// This allocation's one data plane permit.
    _permit: OwnedSemaphorePermit,
}

/// Where the machine is.
enum State {
    /// Asked for: the task lends it through this.
    Waiting(oneshot::Receiver<Box<Lease>>),
    /// Ours until dropped.
    Owning(Box<Lease>),
    /// The allocation is over.
    Closed,
}

impl std::fmt::Debug for TurnDataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the machine: its state is no one's business in a log line.
        let state = match self.state {
            State::Waiting(_) => "waiting",
            State::Owning(_) => "owning",
            State::Closed => "closed",
        };
        f.debug_struct("TurnDataPlane")
            .field("state", &state)
            .field("coalescing", &self.coalescing())
            .field("queued", &self.queued())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TurnDataPlane {
    pub(super) fn new(
        permit: OwnedSemaphorePermit,
        lent: oneshot::Receiver<Box<Lease>>,
        socket: Arc<UdpSocket>,
        coalescing: Coalescing,
    ) -> Self {
        Self {
            socket,
            state: State::Waiting(lent),
            queue: SendQueue::new(SEND_QUEUE_BYTES, SEND_QUEUE_DATAGRAMS),
            coalescer: Coalescer::new(coalescing),
            dirty: true,
            timer: None,
            recv_calls: 0,
            datagrams_received: 0,
            _permit: permit,
        }
    }

    /// Waits until the machine is ours; `Closed` when the allocation is over.
    /// Cancel-safe.
    async fn own(&mut self) -> Result<(), DataPlaneError> {
        if let State::Waiting(lent) = &mut self.state {
            self.state = match lent.await {
                Ok(lease) => State::Owning(lease),
                // The task ended before lending it.
                Err(_) => State::Closed,
            };
            self.dirty = true;
        }
        match self.state {
            State::Owning(_) => Ok(()),
            _ => Err(DataPlaneError::Closed),
        }
    }

    /// Applies pending commands and due timers; then, when the machine changed, sends its
    /// transmits, reports its events and notes its next timer. `Closed` once the
    /// allocation is over (the machine is then dropped, which ends the task and, with it,
    /// the handle's events).
    async fn drive(&mut self, now: Instant) -> Result<(), DataPlaneError> {
        let State::Owning(lease) = &mut self.state else {
            return Err(DataPlaneError::Closed);
        };
        let owned = &mut lease.owned;
        let mut queued = false;
        while owned.commands_open {
            let cmd = match owned.stashed.take() {
                Some(cmd) => cmd,
                None => match owned.commands.try_recv() {
                    Ok(cmd) => Some(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                },
            };
            // Every sender is gone (the handle was dropped): deallocate, read no more.
            owned.commands_open &= cmd.is_some();
            self.dirty = true;
            match owned.client.command(cmd, now) {
                Step::Nothing => {}
                Step::Send(peer, data) => {
                    let alloc = &owned.client.alloc;
                    let server = alloc.server();
                    if !self.queue.has_room(data.len() + MAX_OVERHEAD) {
                        self.queue.flush(&self.socket).await?;
                    }
                    if let Err(e) = self
                        .queue
                        .push_with(server, None, |out| alloc.encode_to_peer(peer, &data, out))
                    {
                        let _ = owned.events.send(TurnEvent::SendFailed(peer, e));
                    }
                    queued = true;
                }
                // One data plane at a time (a permit): not while this one exists. Should
                // it happen, the asker finds the allocation over.
                Step::Lend(_) => {}
            }
        }
        if queued {
            self.queue.flush(&self.socket).await?;
        }
        if self.timer.is_some_and(|t| now >= t) {
            // The allocation's timers, or the deallocation's deadline.
            self.dirty = true;
            owned.client.handle_timeout(now);
        }
        if !self.dirty {
            return Ok(());
        }
        // (`dirty` stays set until all is done: should this future be dropped while it
        // sends, the next call goes on.)
        while let Some(t) = owned.client.poll_transmit() {
            if t.destination != owned.target {
                // A 300 Try Alternate was followed: the same socket, another server.
                debug!(from = %owned.target, to = %t.destination, "TURN over UDP: to the alternate server");
                if let Err(e) = route_udp(&self.socket, t.destination).await {
                    let _ = owned.events.send(TurnEvent::Disconnected(format!(
                        "the TURN server redirected to {}: {e}",
                        t.destination
                    )));
                    self.state = State::Closed;
                    return Err(DataPlaneError::Closed);
                }
                owned.target = t.destination;
            }
            let d = Datagrams {
                destination: owned.target,
                source: None,
                contents: &t.contents,
                segment_size: None,
            };
            if let Err(e) = self.socket.send(&d).await {
                let _ = owned.events.send(TurnEvent::Disconnected(e.to_string()));
                self.state = State::Closed;
                return Err(DataPlaneError::Closed);
            }
        }
        // (Over UDP there is no reconnecting.)
        if owned.report().0 {
            self.state = State::Closed;
            return Err(DataPlaneError::Closed);
        }
        self.timer = owned.client.poll_timeout();
        self.dirty = false;
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> DataPlaneStats {
        DataPlaneStats {
            recv_calls: self.recv_calls,
            datagrams_received: self.datagrams_received,
            send_calls: self.queue.send_calls,
            datagrams_sent: self.queue.datagrams_sent,
            waits: self.coalescer.waits,
        }
    }

    /// The coalescing policy in use.
    pub fn coalescing(&self) -> Coalescing {
        self.coalescer.policy()
    }

    /// Changes the coalescing policy.
    pub fn set_coalescing(&mut self, coalescing: Coalescing) {
        self.coalescer.set_policy(coalescing);
    }

    /// How many datagrams wait in the send queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Encodes `data` for `peer` into the send queue (sending the queue first when it is
    /// full). It goes out with the next [`TurnDataPlane::flush`] or `recv`. Fails without
    /// queuing anything when there is no allocation (yet) or no permission or channel for
    /// the peer.
    pub async fn queue_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), DataPlaneError> {
        if !self.queue.has_room(data.len() + MAX_OVERHEAD) {
            self.flush().await?;
        }
        self.own().await?;
        let State::Owning(lease) = &self.state else {
            return Err(DataPlaneError::Closed);
        };
        let alloc = &lease.owned.client.alloc;
        self.queue.push_with(alloc.server(), None, |out| {
            alloc.encode_to_peer(peer, data, out)
        })?;
        Ok(())
    }

    /// Queues `data` for `peer` and sends the queue.
    pub async fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), DataPlaneError> {
        self.queue_to(peer, data).await?;
        self.flush().await
    }

    /// Sends the queue: each run of equal-sized datagrams (the last of a run may be
    /// shorter) as one GSO send where the platform has GSO, else one datagram per system
    /// call. Waits while the socket's send buffer is full. On a socket error the rest of
    /// the queue is dropped and the error returned. Cancel-safe: what was not sent stays
    /// queued.
    pub async fn flush(&mut self) -> Result<(), DataPlaneError> {
        self.queue.flush(&self.socket).await.map_err(|e| {
            debug!(error = %e, "TURN data plane send failed");
            e.into()
        })
    }

    /// Sends what is queued, then waits for datagrams and fills `batch` with the peer data
    /// of those that arrived (clearing what it held); returns how many. Control messages
    /// (STUN responses) among them go to the allocation's machine and are not counted: it
    /// returns only once there is peer data, or an error. Meanwhile it runs the
    /// allocation: the handle's commands, timers, requests and events (see
    /// [`TurnDataPlane`]). Datagrams from channels that are not (or no longer) bound, and
    /// anything malformed, are dropped.
    ///
    /// Fails with [`DataPlaneError::Closed`] once the allocation is over. Cancel-safe:
    /// nothing is lost when the future is dropped while it waits.
    pub async fn recv(&mut self, batch: &mut RecvBatch) -> Result<usize, DataPlaneError> {
        batch.items.clear();
        self.flush().await?;
        self.own().await?;
        // Under load: a moment for more datagrams to arrive (the thread runs other tasks
        // meanwhile).
        self.coalescer.wait().await;
        let mut skipped = 0;
        loop {
            self.drive(Instant::now()).await?;
            match self.socket.try_recv(batch) {
                Ok(_) => {
                    let got = self.take(batch, Instant::now());
                    if self.dirty {
                        // Responses may have produced requests, events or the end.
                        self.drive(Instant::now()).await?;
                    }
                    if got > 0 {
                        return Ok(got);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let State::Owning(lease) = &mut self.state else {
                        return Err(DataPlaneError::Closed);
                    };
                    let owned = &mut lease.owned;
                    let wake = self.timer.map_or_else(
                        || tokio::time::Instant::now() + std::time::Duration::from_secs(60),
                        tokio::time::Instant::from,
                    );
                    let open = owned.commands_open;
                    tokio::select! {
                        r = self.socket.readable() => r?,
                        // Applied by `drive`, next.
                        cmd = owned.commands.recv(), if open => owned.stashed = Some(cmd),
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
                // ICMP errors for earlier sends surface here on a connected socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) && skipped < MAX_SKIPPED_ERRORS =>
                {
                    debug!(error = %e, "receive error");
                    skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Hands the received datagrams to the machine; keeps the peer data in `batch` (the
    /// datagrams rewritten in place: the peer as the source, the data's range). Returns
    /// how many datagrams of peer data.
    fn take(&mut self, batch: &mut RecvBatch, now: Instant) -> usize {
        let State::Owning(lease) = &mut self.state else {
            return 0;
        };
        let alloc = &mut lease.owned.client.alloc;
        let full = batch.was_full();
        let (buf, items) = batch.parts();
        let received = items.len();
        let mut control = false;
        let mut kept = 0;
        let local = alloc.local();
        for i in 0..received {
            let it = items[i];
            let contents = &buf[it.start..it.start + it.len];
            let rx = Received {
                proto: Protocol::Udp,
                source: it.source,
                destination: local,
                contents,
            };
            match alloc.handle_input(now, rx) {
                Input::Data { peer, data, offset } => {
                    // Where the data sits in the receive buffer: the datagram's start
                    // plus the machine's offset.
                    items[kept] = Item {
                        source: peer,
                        destination: it.destination,
                        start: it.start + offset,
                        len: data.len(),
                    };
                    kept += 1;
                }
                Input::Consumed => control |= !is_channel_data(contents),
                Input::NotTurn => {}
            }
        }
        items.truncate(kept);
        self.dirty |= control;
        self.recv_calls += 1;
        self.datagrams_received += received as u64;
        self.coalescer.note(now, received as u64, full);
        kept
    }
}

impl Drop for TurnDataPlane {
    fn drop(&mut self) {
        // Best effort: what the socket takes without waiting.
        if let Err(e) = self.queue.try_flush(&self.socket) {
            debug!(error = %e, "queued TURN data dropped with the data plane");
        }
        // The machine goes back to the allocation's task, which reads the socket again.
        if let State::Owning(lease) = std::mem::replace(&mut self.state, State::Closed) {
            let _ = lease.back.send(lease.owned);
        }
    }
}
