//! The batched, allocation-free UDP data path of a TURN allocation: [`TurnDataPlane`].

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use super::Shared;
use crate::turn::{Input, TurnError, is_channel_data};
use crate::{Protocol, Received};

/// The send queue holds at most this many datagrams; queuing one more sends the queue.
pub const SEND_QUEUE_DATAGRAMS: usize = 128;
/// The send queue holds at most this many bytes of encoded datagrams.
pub const SEND_QUEUE_BYTES: usize = 128 * 1024;
/// What a Send indication adds to the data at most (header, XOR-PEER-ADDRESS for IPv6,
/// DATA's header and padding); ChannelData adds 4.
const MAX_OVERHEAD: usize = 64;
/// One GSO send carries at most this many bytes (an IPv4 UDP datagram's limit is 65507).
const GSO_MAX_BYTES: usize = 64_000;
/// ...and at most this many segments (the kernel's UDP_MAX_SEGMENTS on older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// The most datagrams the kernel coalesces into one GRO buffer (UDP_GRO_CNT_MAX).
const GRO_MAX_SEGMENTS: usize = 64;
/// Receive buffers of [`RecvBatch::new`]: room for the largest UDP datagram, or for a
/// full GRO buffer.
const DEFAULT_SLOT_LEN: usize = 65_536;
/// The packet rate that [`Coalescing`] looks at is measured over windows this long.
const RATE_WINDOW: Duration = Duration::from_millis(1);
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

/// Adaptive receive coalescing of a [`TurnDataPlane`]: under a sustained high packet rate,
/// wait a little before each `recvmmsg`, so that every wake-up (and the GSO send of the
/// answers queued meanwhile) carries more datagrams: fewer system calls and wake-ups per
/// datagram, for up to `max_wait` more latency per datagram.
///
/// The policy: the data plane measures the rate of datagrams it receives over windows of
/// 1 ms. When the last window saw at least `min_rate` datagrams per second, the previous
/// `recv` did not fill every receive buffer (a full batch means more is already waiting),
/// and that window ended less than 2 ms ago, `recv` first sends what is queued and then
/// sleeps `max_wait` before reading. Otherwise it reads at once: at low rates, and for the
/// first datagram after a pause, coalescing adds no latency at all.
///
/// The wait blocks the calling thread (tokio's timers cannot wait microseconds), for
/// `max_wait` plus the operating system's timer slack (50 µs by default on Linux), and
/// only under load. Use [`Coalescing::OFF`] where a few tens of microseconds of latency
/// matter more than CPU, or when other tasks share the thread and must not wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    /// How long to wait before reading; zero turns coalescing off.
    pub max_wait: Duration,
    /// Coalesce only at or above this many received datagrams per second.
    pub min_rate: u32,
}

impl Coalescing {
    /// Never wait.
    pub const OFF: Self = Self {
        max_wait: Duration::ZERO,
        min_rate: u32::MAX,
    };
}

impl Default for Coalescing {
    /// 50 µs above 50 000 datagrams per second: where a wait of 50 µs brings several more
    /// datagrams per wake-up, and where a datagram arrives every 20 µs anyway.
    fn default() -> Self {
        Self {
            max_wait: Duration::from_micros(50),
            min_rate: 50_000,
        }
    }
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

#[derive(Debug, Clone, Copy)]
struct Item {
    peer: SocketAddr,
    start: usize,
    len: usize,
}

/// Caller-owned receive buffers for [`TurnDataPlane::recv`], allocated once and reused:
/// after a `recv` it holds the peer data of the datagrams received, in place (each payload
/// is a range of the buffers, no copy).
pub struct RecvBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    metas: Vec<RecvMeta>,
    items: Vec<Item>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.metas.len())
            .field("slot_len", &self.slot_len)
            .field("datagrams", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Buffers for as many datagrams as one system call can receive on this platform
    /// (`quinn_udp::BATCH_SIZE`: 32 on Linux and Android, 1 elsewhere), 64 KiB each: room
    /// for any datagram, and for what GRO coalesces (2 MiB on Linux).
    pub fn new() -> Self {
        Self::with_capacity(quinn_udp::BATCH_SIZE, DEFAULT_SLOT_LEN)
    }

    /// `slots` buffers of `slot_len` bytes (at least 1 and at most `quinn_udp::BATCH_SIZE`
    /// buffers, of at least 1500 bytes). Smaller buffers save memory; a datagram (or GRO
    /// buffer, on Linux) that does not fit is truncated by the kernel and then dropped as
    /// malformed.
    pub fn with_capacity(slots: usize, slot_len: usize) -> Self {
        let slots = slots.clamp(1, quinn_udp::BATCH_SIZE);
        let slot_len = slot_len.max(1500);
        Self {
            buf: vec![0u8; slots * slot_len].into_boxed_slice(),
            slot_len,
            metas: vec![RecvMeta::default(); slots],
            items: Vec::with_capacity(slots * GRO_MAX_SEGMENTS),
        }
    }

    /// How many datagrams of peer data it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The `i`th datagram: the peer and its data.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let it = self.items.get(i)?;
        Some((it.peer, &self.buf[it.start..it.start + it.len]))
    }

    /// The `i`th datagram's data, mutable (to decrypt it in place, say).
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        let it = *self.items.get(i)?;
        Some((it.peer, &mut self.buf[it.start..it.start + it.len]))
    }

    /// The `i`th datagram's peer and where its data lies in [`RecvBatch::buffer`].
    pub fn range(&self, i: usize) -> Option<(SocketAddr, Range<usize>)> {
        let it = self.items.get(i)?;
        Some((it.peer, it.start..it.start + it.len))
    }

    /// All the receive buffers, back to back.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// The datagrams in the order they arrived: (peer, data).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items
            .iter()
            .map(|it| (it.peer, &self.buf[it.start..it.start + it.len]))
    }
}

/// The batched UDP data path of a TURN allocation, from [`super::TurnHandle::data_plane`].
///
/// - Receiving: [`TurnDataPlane::recv`] reads up to a [`RecvBatch`] of datagrams with one
///   system call (`recvmmsg`, and GRO where the kernel coalesces), hands each to the
///   allocation's machine (one uncontended lock per batch) and leaves the peer data in
///   place in the caller's buffers. ChannelData of bound channels and Data indications
///   become data; STUN responses feed the machine and wake the allocation's task, which
///   sends what follows.
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
/// The socket work is in the `quinn-udp` crate (as used by quinn), which falls back to one
/// datagram per system call where batching is not available. Creating a data plane sets
/// quinn-udp's options on the allocation's socket for good (among them: GRO on, which the
/// handle's own receiving then handles too; IPv4 datagrams are not fragmented, so
/// datagrams larger than the path MTU fail to send).
///
/// While it exists it does all the receiving for the allocation: keep calling `recv`.
/// Dropping it gives receiving back to the handle (and [`super::TurnEvent::Data`]); what
/// is still queued is sent if the socket takes it at once, else dropped.
pub struct TurnDataPlane {
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    coalescing: Coalescing,
    /// The send queue: encoded datagrams back to back, their lengths, and how many (and
    /// how many bytes) of them are already sent.
    out: Box<[u8]>,
    out_len: usize,
    lens: Vec<usize>,
    sent: usize,
    sent_bytes: usize,
    /// Where the queue goes: the machine's server when the datagrams were encoded (all
    /// of them, since only an allocation encodes, and a server changes only before one
    /// exists, after a 300 Try Alternate).
    server: SocketAddr,
    gate: RateGate,
    stats: DataPlaneStats,
}

/// The coalescing decision: the received-datagram rate over windows of [`RATE_WINDOW`].
#[derive(Debug, Clone, Copy)]
struct RateGate {
    window_start: Instant,
    window_count: u64,
    /// The last complete window reached the policy's rate.
    high_rate: bool,
    /// The last receive call filled every buffer.
    last_full: bool,
}

impl RateGate {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            window_count: 0,
            high_rate: false,
            last_full: false,
        }
    }

    /// A receive call at `now` brought `received` datagrams; `full`: it filled every
    /// buffer.
    fn note(&mut self, policy: &Coalescing, now: Instant, received: u64, full: bool) {
        self.window_count += received;
        self.last_full = full;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            // count / elapsed >= min_rate, without division.
            self.high_rate = u128::from(self.window_count) * 1_000_000_000
                >= u128::from(policy.min_rate) * elapsed.as_nanos();
            self.window_start = now;
            self.window_count = 0;
        }
    }

    /// Whether to wait before the next read; `now` is called only when it matters.
    fn should_wait(&self, policy: &Coalescing, now: impl FnOnce() -> Instant) -> bool {
        self.high_rate
            && !self.last_full
            && !policy.max_wait.is_zero()
            // A stale measurement (the application paused) does not count.
            && now().saturating_duration_since(self.window_start) < 2 * RATE_WINDOW
    }
}

impl std::fmt::Debug for TurnDataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnDataPlane")
            .field("shared", &self.shared)
            .field("coalescing", &self.coalescing)
            .field("queued", &self.queued())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TurnDataPlane {
    pub(super) fn new(
        shared: Arc<Shared>,
        socket: Arc<UdpSocket>,
        coalescing: Coalescing,
    ) -> Result<Self, DataPlaneError> {
        if shared
            .data_plane
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(DataPlaneError::InUse);
        }
        let state = match shared.udp_state.get() {
            Some(s) => s.clone(),
            None => match UdpSocketState::new((&*socket).into()) {
                Ok(s) => shared.udp_state.get_or_init(|| Arc::new(s)).clone(),
                Err(e) => {
                    shared.data_plane.store(false, Ordering::Release);
                    return Err(e.into());
                }
            },
        };
        // The allocation's task stops reading the socket.
        shared.wake.notify_one();
        let server = shared.alloc().server();
        Ok(Self {
            shared,
            socket,
            state,
            coalescing,
            out: vec![0u8; SEND_QUEUE_BYTES].into_boxed_slice(),
            out_len: 0,
            lens: Vec::with_capacity(SEND_QUEUE_DATAGRAMS),
            sent: 0,
            sent_bytes: 0,
            server,
            gate: RateGate::new(Instant::now()),
            stats: DataPlaneStats::default(),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> DataPlaneStats {
        self.stats
    }

    /// The coalescing policy in use.
    pub fn coalescing(&self) -> Coalescing {
        self.coalescing
    }

    /// Changes the coalescing policy.
    pub fn set_coalescing(&mut self, coalescing: Coalescing) {
        self.coalescing = coalescing;
    }

    /// How many datagrams wait in the send queue.
    pub fn queued(&self) -> usize {
        self.lens.len() - self.sent
    }

    /// Encodes `data` for `peer` into the send queue (sending the queue first when it is
    /// full). It goes out with the next [`TurnDataPlane::flush`] or `recv`. Fails without
    /// queuing anything when there is no allocation (yet) or no permission or channel for
    /// the peer.
    pub async fn queue_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), DataPlaneError> {
        if self.lens.len() == SEND_QUEUE_DATAGRAMS
            || self.out.len() - self.out_len < data.len() + MAX_OVERHEAD
        {
            self.flush().await?;
        }
        let n = {
            let alloc = self.shared.alloc();
            self.server = alloc.server();
            alloc.encode_to_peer(peer, data, &mut self.out[self.out_len..])?
        };
        self.out_len += n;
        self.lens.push(n);
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
        loop {
            match self.try_flush() {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.socket.writable().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn clear_queue(&mut self) {
        self.lens.clear();
        self.out_len = 0;
        self.sent = 0;
        self.sent_bytes = 0;
    }

    /// Sends what it can without waiting.
    fn try_flush(&mut self) -> io::Result<()> {
        while self.sent < self.lens.len() {
            let first = self.sent;
            let seg = self.lens[first];
            let max = self.state.max_gso_segments().clamp(1, GSO_MAX_SEGMENTS);
            let (mut end, mut bytes) = (first + 1, seg);
            while end < self.lens.len() && end - first < max {
                let l = self.lens[end];
                if l > seg || bytes + l > GSO_MAX_BYTES {
                    break;
                }
                bytes += l;
                end += 1;
                if l < seg {
                    // A shorter datagram ends a run.
                    break;
                }
            }
            let t = Transmit {
                destination: self.server,
                ecn: None,
                contents: &self.out[self.sent_bytes..self.sent_bytes + bytes],
                segment_size: (end - first > 1).then_some(seg),
                src_ip: None,
            };
            let (socket, state) = (&self.socket, &self.state);
            match socket.try_io(Interest::WRITABLE, || {
                state.try_send((&**socket).into(), &t)
            }) {
                Ok(()) => {
                    self.sent = end;
                    self.sent_bytes += bytes;
                    self.stats.send_calls += 1;
                    self.stats.datagrams_sent += (end - first) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // quinn-udp turns GSO off when the kernel or the interface refuses it:
                // send the run again in smaller pieces.
                Err(_) if end - first > self.state.max_gso_segments() => {}
                Err(e) => {
                    debug!(error = %e, dropped = self.lens.len() - first, "TURN data plane send failed");
                    self.clear_queue();
                    return Err(e);
                }
            }
        }
        self.clear_queue();
        Ok(())
    }

    /// Sends what is queued, then waits for datagrams and fills `batch` with the peer data
    /// of those that arrived (clearing what it held); returns how many. Control messages
    /// (STUN responses) among them go to the allocation's machine and are not counted: it
    /// returns only once there is peer data, or an error. Datagrams from channels that are
    /// not (or no longer) bound, and anything malformed, are dropped.
    ///
    /// Fails with [`DataPlaneError::Closed`] once the allocation is over. Cancel-safe:
    /// nothing is lost when the future is dropped while it waits.
    pub async fn recv(&mut self, batch: &mut RecvBatch) -> Result<usize, DataPlaneError> {
        batch.items.clear();
        self.flush().await?;
        if self.gate.should_wait(&self.coalescing, Instant::now) {
            self.stats.waits += 1;
            std::thread::sleep(self.coalescing.max_wait);
        }
        let mut skipped = 0;
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(DataPlaneError::Closed);
            }
            let slots = batch.metas.len();
            let r = {
                let (socket, state) = (&self.socket, &self.state);
                let RecvBatch {
                    buf,
                    slot_len,
                    metas,
                    ..
                } = &mut *batch;
                let mut chunks = buf.chunks_mut(*slot_len);
                let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
                socket.try_io(Interest::READABLE, || {
                    state.recv((&**socket).into(), &mut iovs[..slots], metas)
                })
            };
            match r {
                Ok(n) => {
                    let now = Instant::now();
                    let got = self.take(batch, n, now);
                    if got > 0 {
                        return Ok(got);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let closed = self.shared.closed_notify.notified();
                    tokio::pin!(closed);
                    closed.as_mut().enable();
                    if self.shared.closed.load(Ordering::Acquire) {
                        return Err(DataPlaneError::Closed);
                    }
                    tokio::select! {
                        biased;
                        () = &mut closed => return Err(DataPlaneError::Closed),
                        r = self.socket.readable() => r?,
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

    /// Hands the `n` received buffers' datagrams to the machine, under one lock; keeps the
    /// peer data in `batch`. Returns how many datagrams of peer data.
    fn take(&mut self, batch: &mut RecvBatch, n: usize, now: Instant) -> usize {
        let RecvBatch {
            buf,
            slot_len,
            metas,
            items,
        } = batch;
        let base = buf.as_ptr() as usize;
        let mut received = 0u64;
        let mut control = false;
        {
            let mut alloc = self.shared.alloc();
            let local = alloc.local();
            for (i, meta) in metas.iter().enumerate().take(n) {
                let slot = &buf[i * *slot_len..(i + 1) * *slot_len];
                let len = meta.len.min(slot.len());
                // With GRO one buffer holds several datagrams, `stride` bytes apart.
                let stride = if meta.stride == 0 { len } else { meta.stride };
                let mut at = 0;
                while at < len {
                    let end = (at + stride).min(len);
                    let contents = &slot[at..end];
                    at = end;
                    received += 1;
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: meta.addr,
                        destination: local,
                        contents,
                    };
                    match alloc.handle_input(now, rx) {
                        Input::Data { peer, data } => {
                            // The data is borrowed from `buf`: where it starts there.
                            match (data.as_ptr() as usize).checked_sub(base) {
                                Some(start) if start + data.len() <= buf.len() => {
                                    items.push(Item {
                                        peer,
                                        start,
                                        len: data.len(),
                                    });
                                }
                                _ => debug!("peer data outside the receive buffers dropped"),
                            }
                        }
                        Input::Consumed => control |= !is_channel_data(contents),
                        Input::NotTurn => {}
                    }
                }
            }
        }
        if control {
            // Responses may have produced requests, events or the end of the allocation.
            self.shared.wake.notify_one();
        }
        self.stats.recv_calls += 1;
        self.stats.datagrams_received += received;
        self.gate
            .note(&self.coalescing, now, received, n == metas.len());
        items.len()
    }
}

impl Drop for TurnDataPlane {
    fn drop(&mut self) {
        // Best effort: what the socket takes without waiting.
        if let Err(e) = self.try_flush() {
            debug!(error = %e, "queued TURN data dropped with the data plane");
        }
        self.shared.data_plane.store(false, Ordering::Release);
        // The allocation's task reads the socket again.
        self.shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalescing_waits_only_under_a_sustained_high_rate() {
        let policy = Coalescing {
            max_wait: Duration::from_micros(50),
            min_rate: 50_000,
        };
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        let mut g = RateGate::new(t0);
        assert!(!g.should_wait(&policy, || t0));
        // 10 datagrams per 100 µs is 100 000/s: from the end of the first window on, wait.
        for i in 1..=10 {
            g.note(&policy, us(i * 100), 10, false);
            assert_eq!(g.should_wait(&policy, || us(i * 100)), i >= 10, "{i}");
        }
        // A full batch: read again at once.
        g.note(&policy, us(1100), 32, true);
        assert!(!g.should_wait(&policy, || us(1100)));
        g.note(&policy, us(1200), 10, false);
        assert!(g.should_wait(&policy, || us(1200)));
        // The application paused: the measurement is stale.
        assert!(!g.should_wait(&policy, || us(5000)));
        // The first datagram after a pause closes a window of a low rate.
        g.note(&policy, us(50_000), 1, false);
        assert!(!g.should_wait(&policy, || us(50_000)));
        // 1 datagram per 100 µs (10 000/s) never waits.
        for i in 1..=30 {
            g.note(&policy, us(50_000 + i * 100), 1, false);
            assert!(!g.should_wait(&policy, || us(50_000 + i * 100)));
        }
        // Off is off.
        let mut g = RateGate::new(t0);
        for i in 1..=30 {
            g.note(&Coalescing::OFF, us(i * 100), 1000, false);
            assert!(!g.should_wait(&Coalescing::OFF, || us(i * 100)));
        }
    }
}
