//! The driver's one UDP layer: every socket of the driver (the generic runner's, the TURN
//! client's and its data plane's, a peer connection's) is a [`UdpSocket`] of this module.
//!
//! - Binding with `socket2` (a dual-stack `[::]` socket, buffer sizes), then `quinn-udp`'s
//!   state on the socket (as quinn uses it; its own audited unsafe code keeps this crate
//!   `forbid(unsafe_code)`): GRO on, `IP_PKTINFO`/`IPV6_RECVPKTINFO`, so that every
//!   received datagram carries its local destination IP and a send can choose its source
//!   IP on a wildcard-bound socket, and no IP fragmentation (datagrams larger than the
//!   interface's MTU fail to send, as RFC 8085 §3.2 recommends for UDP applications).
//! - Receiving: a batch per system call (`recvmmsg`, and GRO where the kernel coalesces)
//!   into a reusable [`RecvBatch`]; each datagram is (source, local destination, offset
//!   range), GRO buffers split into their datagrams. On a dual-stack socket IPv4
//!   addresses come out as IPv4 (not IPv4-mapped IPv6) and go in as IPv4.
//! - Sending: one datagram, or a [`SendQueue`] that sends each run of equal-sized
//!   datagrams of the same source and destination as one GSO system call.
//! - [`Coalescing`] (with its rate gate): under a sustained high packet rate, wait a
//!   little before reading, without blocking the runtime's thread.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tracing::debug;

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

/// How to bind a [`UdpSocket`] besides its address.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BindOptions {
    /// `SO_RCVBUF` to ask for (the system's default when `None`).
    pub(crate) recv_buffer: Option<usize>,
    /// `SO_SNDBUF` to ask for (the system's default when `None`).
    pub(crate) send_buffer: Option<usize>,
    /// One datagram at a time: on a socket bound to a concrete IP (where every
    /// datagram's destination is that IP and the source can be no other) plain system
    /// calls without GRO, GSO or control messages, which cost less per datagram than
    /// quinn-udp's batched ones (`recvmmsg` of one with control messages: about 0.9 µs
    /// more per datagram on Linux 6). A wildcard-bound socket gets quinn-udp's state
    /// anyway (it needs `IP_PKTINFO`).
    pub(crate) single: bool,
}

/// A datagram as it arrived, from [`UdpSocket::try_recv_into`]: one buffer, which holds
/// several datagrams of `stride` bytes each (the last may be shorter) when GRO coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recv {
    /// Bytes received.
    pub(crate) len: usize,
    /// The size of each datagram in them (`len` without GRO).
    pub(crate) stride: usize,
    /// Who sent it.
    pub(crate) source: SocketAddr,
    /// Where it arrived: the local IP it was sent to (the bound IP when the platform does
    /// not say) and the socket's port.
    pub(crate) destination: SocketAddr,
}

/// One or more datagrams to send with one system call: several (GSO) when
/// `segment_size` is set and shorter than `contents`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagrams<'a> {
    /// Where to.
    pub(crate) destination: SocketAddr,
    /// The source IP to send from (on a wildcard-bound socket: which of the host's
    /// addresses); `None`: the system's choice (the route's).
    pub(crate) source: Option<IpAddr>,
    /// The datagrams back to back.
    pub(crate) contents: &'a [u8],
    /// Each datagram's size (the last may be shorter); `None`: one datagram.
    pub(crate) segment_size: Option<usize>,
}

/// A UDP socket of the driver: tokio's readiness and quinn-udp's batched system calls.
#[derive(Debug)]
pub(crate) struct UdpSocket {
    io: tokio::net::UdpSocket,
    /// quinn-udp's state: `None` for a [`BindOptions::single`] socket bound to a
    /// concrete IP.
    state: Option<UdpSocketState>,
    /// The bound address (its IP a wildcard when bound to one).
    local: SocketAddr,
    /// Bound to `[::]` taking IPv4 too: IPv4 addresses travel IPv4-mapped on the wire.
    dual: bool,
}

impl UdpSocket {
    /// Binds `addr`.
    pub(crate) fn bind(addr: SocketAddr, opts: BindOptions) -> io::Result<Self> {
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            // A `[::]` socket takes only IPv6 unless asked (`bind_dual`), whatever the
            // system's default, as std's and tokio's bind do on Linux.
            s.set_only_v6(true)?;
        }
        Self::finish(s, addr, opts, false)
    }

    /// Binds `[::]:port` taking IPv4 too (`IPV6_V6ONLY` off, whatever the system's
    /// default): one socket for both families.
    pub(crate) fn bind_dual(port: u16, opts: BindOptions) -> io::Result<Self> {
        let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_only_v6(false)?;
        Self::finish(s, addr, opts, true)
    }

    fn finish(
        s: socket2::Socket,
        addr: SocketAddr,
        opts: BindOptions,
        dual: bool,
    ) -> io::Result<Self> {
        if let Some(n) = opts.recv_buffer {
            s.set_recv_buffer_size(n)?;
        }
        if let Some(n) = opts.send_buffer {
            s.set_send_buffer_size(n)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        let std: std::net::UdpSocket = s.into();
        let state = if opts.single && !addr.ip().is_unspecified() {
            None
        } else {
            let state = UdpSocketState::new((&std).into())?;
            // quinn-udp asks for each datagram's TOS (ECN) too; nothing here reads it,
            // and every control message costs the kernel and us time on each receive.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                use rustix::net::sockopt;
                if addr.is_ipv4() || dual {
                    let _ = sockopt::set_ip_recvtos(&std, false);
                }
                if addr.is_ipv6() {
                    let _ = sockopt::set_ipv6_recvtclass(&std, false);
                }
            }
            Some(state)
        };
        let io = tokio::net::UdpSocket::from_std(std)?;
        let local = io.local_addr()?;
        Ok(Self {
            io,
            state,
            local,
            dual,
        })
    }

    /// The bound address (port resolved; a wildcard IP when bound to one).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends to and receives from `to` only, where the platform lets a connected socket
    /// still name a destination on each send (Linux and Android; BSDs and Apple refuse it
    /// with `EISCONN`, so there it does nothing): the kernel then drops datagrams from
    /// others and reports ICMP errors.
    pub(crate) async fn connect_where_supported(&self, to: SocketAddr) -> io::Result<()> {
        if cfg!(any(target_os = "linux", target_os = "android")) {
            self.io.connect(self.wire(to)).await?;
        }
        Ok(())
    }

    /// `to` as the socket takes it: IPv4-mapped on a dual-stack socket.
    fn wire(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.dual => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            other => other,
        }
    }

    fn wire_ip(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) if self.dual => IpAddr::V6(v4.to_ipv6_mapped()),
            other => other,
        }
    }

    /// A received datagram's local destination.
    fn destination(&self, meta: &RecvMeta) -> SocketAddr {
        let ip = meta.dst_ip.map_or(self.local.ip(), unmap);
        SocketAddr::new(ip, self.local.port())
    }

    /// Waits until the socket may be readable.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Waits until the socket may be writable.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    /// Reads a batch of what the socket holds now into `batch` (clearing what it held),
    /// GRO buffers split: how many datagrams. `WouldBlock` when there is none.
    pub(crate) fn try_recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.items.clear();
        batch.filled = 0;
        let slots = batch.metas.len();
        let n = {
            let RecvBatch {
                buf,
                slot_len,
                metas,
                ..
            } = &mut *batch;
            let mut chunks = buf.chunks_mut(*slot_len);
            let mut iovs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
            match &self.state {
                Some(state) => self.io.try_io(Interest::READABLE, || {
                    state.recv((&self.io).into(), &mut iovs[..slots], metas)
                })?,
                None => {
                    let (len, addr) = self.io.try_recv_from(&mut iovs[0])?;
                    metas[0] = RecvMeta {
                        len,
                        stride: len,
                        addr,
                        ..RecvMeta::default()
                    };
                    1
                }
            }
        };
        batch.filled = n;
        for i in 0..n {
            let meta = batch.metas[i];
            let base = i * batch.slot_len;
            let len = meta.len.min(batch.slot_len);
            // With GRO one buffer holds several datagrams, `stride` bytes apart.
            let stride = if meta.stride == 0 { len } else { meta.stride };
            let source = unmap_addr(meta.addr);
            let destination = self.destination(&meta);
            for r in segments(len, stride) {
                batch.items.push(Item {
                    source,
                    destination,
                    start: base + r.start,
                    len: r.len(),
                });
            }
        }
        Ok(batch.items.len())
    }

    /// [`UdpSocket::try_recv`] that waits for a datagram.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        batch: &mut RecvBatch,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.try_recv(batch) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    /// Waits for datagrams and reads a batch of them into `batch`.
    #[cfg(test)]
    pub(crate) async fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_recv(cx, batch)).await
    }

    /// Reads one buffer's worth of what the socket holds now into `buf` (one datagram,
    /// or with GRO several of one size back to back: see [`Recv`]). `WouldBlock` when
    /// there is none.
    pub(crate) fn try_recv_into(&self, buf: &mut [u8]) -> io::Result<Recv> {
        let Some(state) = &self.state else {
            let (len, from) = self.io.try_recv_from(buf)?;
            return Ok(Recv {
                len,
                stride: len,
                source: unmap_addr(from),
                destination: self.local,
            });
        };
        let mut meta = [RecvMeta::default()];
        let mut iov = [IoSliceMut::new(buf)];
        let n = self.io.try_io(Interest::READABLE, || {
            state.recv((&self.io).into(), &mut iov, &mut meta)
        })?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let m = meta[0];
        let len = m.len.min(iov[0].len());
        Ok(Recv {
            len,
            stride: if m.stride == 0 {
                len
            } else {
                m.stride.min(len.max(1))
            },
            source: unmap_addr(m.addr),
            destination: self.destination(&m),
        })
    }

    /// Sends without waiting: `WouldBlock` when the send buffer is full.
    pub(crate) fn try_send(&self, d: &Datagrams<'_>) -> io::Result<()> {
        let Some(state) = &self.state else {
            // Bound to a concrete IP: the source can be no other; GSO's segments one by
            // one.
            match d.segment_size {
                Some(seg) if seg > 0 && seg < d.contents.len() => {
                    for chunk in d.contents.chunks(seg) {
                        self.io.try_send_to(chunk, d.destination)?;
                    }
                }
                // One datagram (an empty one too).
                _ => {
                    self.io.try_send_to(d.contents, d.destination)?;
                }
            }
            return Ok(());
        };
        if d.source.is_none() && d.segment_size.is_none() {
            // One datagram, no control message to pass: `sendto` costs less than
            // `sendmsg` with quinn-udp's (a zero TOS among them).
            return self
                .io
                .try_send_to(d.contents, self.wire(d.destination))
                .map(|_| ());
        }
        let t = quinn_udp::Transmit {
            destination: self.wire(d.destination),
            ecn: None,
            contents: d.contents,
            segment_size: d.segment_size,
            src_ip: d.source.map(|ip| self.wire_ip(ip)),
        };
        self.io
            .try_io(Interest::WRITABLE, || state.try_send((&self.io).into(), &t))
    }

    /// Sends, waiting while the send buffer is full.
    pub(crate) async fn send(&self, d: &Datagrams<'_>) -> io::Result<()> {
        loop {
            match self.try_send(d) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.io.writable().await?,
                r => return r,
            }
        }
    }

    /// How many datagrams one GSO send may carry now (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state
            .as_ref()
            .map_or(1, UdpSocketState::max_gso_segments)
    }
}

/// Where the datagrams lie in a buffer of `len` bytes that GRO filled with datagrams of
/// `stride` bytes (the last may be shorter): one range without GRO, and one empty range
/// for an empty datagram (UDP allows them; they are not to be lost).
pub(crate) fn segments(len: usize, stride: usize) -> impl Iterator<Item = Range<usize>> {
    let stride = stride.max(1);
    let count = if len == 0 { 1 } else { len.div_ceil(stride) };
    (0..count).map(move |k| (k * stride).min(len)..((k + 1) * stride).min(len))
}

/// An IPv4-mapped IPv6 address (from a dual-stack socket) as IPv4.
pub(crate) fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// [`unmap`] for a socket address.
pub(crate) fn unmap_addr(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(IpAddr::V4(ip), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// Caller-owned receive buffers, allocated once and reused: after a receive it holds the
/// datagrams received, in place (each a range of the buffers, no copy), each with where it
/// came from and the local address it arrived at.
///
/// Through a [`TurnDataPlane`](super::turn::TurnDataPlane) it holds the peer data of the
/// datagrams received: the source is then the peer (as the relay saw it) and the range
/// the peer data inside the datagram.
pub struct RecvBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    metas: Vec<RecvMeta>,
    /// How many buffers the last receive filled.
    filled: usize,
    pub(crate) items: Vec<Item>,
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
            filled: 0,
            items: Vec::with_capacity(slots * GRO_MAX_SEGMENTS),
        }
    }

    /// How many datagrams it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The `i`th datagram: where it came from and its data.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let it = self.items.get(i)?;
        Some((it.source, &self.buf[it.start..it.start + it.len]))
    }

    /// The `i`th datagram's data, mutable (to decrypt it in place, say).
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8])> {
        let it = *self.items.get(i)?;
        Some((it.source, &mut self.buf[it.start..it.start + it.len]))
    }

    /// The `i`th datagram's source and where its data lies in [`RecvBatch::buffer`].
    pub fn range(&self, i: usize) -> Option<(SocketAddr, Range<usize>)> {
        let it = self.items.get(i)?;
        Some((it.source, it.start..it.start + it.len))
    }

    /// The local address the `i`th datagram arrived at: the IP it was sent to (one of the
    /// host's, on a socket bound to a wildcard IP; the bound IP where the platform does
    /// not tell) and the socket's port.
    pub fn destination(&self, i: usize) -> Option<SocketAddr> {
        self.items.get(i).map(|it| it.destination)
    }

    /// All the receive buffers, back to back.
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// The datagrams in the order they arrived: (source, data).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items
            .iter()
            .map(|it| (it.source, &self.buf[it.start..it.start + it.len]))
    }

    /// Whether the last receive filled every buffer (more is likely waiting).
    pub(crate) fn was_full(&self) -> bool {
        self.filled == self.metas.len()
    }

    /// The buffers and the datagrams, apart (to rewrite the datagrams while reading the
    /// buffers).
    pub(crate) fn parts(&mut self) -> (&[u8], &mut Vec<Item>) {
        (&self.buf, &mut self.items)
    }
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    destination: SocketAddr,
    source: Option<IpAddr>,
    len: usize,
}

/// Datagrams encoded back to back, waiting to be sent with as few system calls as the
/// platform allows: each run of equal-sized datagrams (the last of a run may be shorter)
/// of one source and destination as one GSO send.
#[derive(Debug)]
pub(crate) struct SendQueue {
    out: Box<[u8]>,
    out_len: usize,
    queued: Vec<Queued>,
    max_datagrams: usize,
    /// How many of `queued` (and how many bytes of `out`) are already sent.
    sent: usize,
    sent_bytes: usize,
    /// Send system calls so far.
    pub(crate) send_calls: u64,
    /// Datagrams sent so far.
    pub(crate) datagrams_sent: u64,
}

impl SendQueue {
    /// Room for `bytes` bytes of datagrams and at most `datagrams` of them.
    pub(crate) fn new(bytes: usize, datagrams: usize) -> Self {
        Self {
            out: vec![0u8; bytes].into_boxed_slice(),
            out_len: 0,
            queued: Vec::with_capacity(datagrams),
            max_datagrams: datagrams.max(1),
            sent: 0,
            sent_bytes: 0,
            send_calls: 0,
            datagrams_sent: 0,
        }
    }

    /// How many datagrams wait.
    pub(crate) fn len(&self) -> usize {
        self.queued.len() - self.sent
    }

    /// Whether one more datagram of up to `len` bytes fits.
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.queued.len() < self.max_datagrams && self.out.len() - self.out_len >= len
    }

    /// Queues the datagram that `encode` writes into the free space (returning its
    /// length) for `destination` from `source`; nothing is queued when it fails.
    pub(crate) fn push_with<E>(
        &mut self,
        destination: SocketAddr,
        source: Option<IpAddr>,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let len = encode(&mut self.out[self.out_len..])?;
        self.out_len += len;
        self.queued.push(Queued {
            destination,
            source,
            len,
        });
        Ok(())
    }

    fn clear(&mut self) {
        self.queued.clear();
        self.out_len = 0;
        self.sent = 0;
        self.sent_bytes = 0;
    }

    /// Sends what the socket takes without waiting. `WouldBlock` leaves the rest queued;
    /// on another error the rest of the queue is dropped and the error returned.
    pub(crate) fn try_flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        while self.sent < self.queued.len() {
            let first = self.sent;
            let head = self.queued[first];
            let seg = head.len;
            let max = socket.max_gso_segments().clamp(1, GSO_MAX_SEGMENTS);
            let (mut end, mut bytes) = (first + 1, seg);
            while end < self.queued.len() && end - first < max {
                let q = self.queued[end];
                if q.len > seg
                    || bytes + q.len > GSO_MAX_BYTES
                    || q.destination != head.destination
                    || q.source != head.source
                {
                    break;
                }
                bytes += q.len;
                end += 1;
                if q.len < seg {
                    // A shorter datagram ends a run.
                    break;
                }
            }
            let d = Datagrams {
                destination: head.destination,
                source: head.source,
                contents: &self.out[self.sent_bytes..self.sent_bytes + bytes],
                segment_size: (end - first > 1).then_some(seg),
            };
            match socket.try_send(&d) {
                Ok(()) => {
                    self.sent = end;
                    self.sent_bytes += bytes;
                    self.send_calls += 1;
                    self.datagrams_sent += (end - first) as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // quinn-udp turns GSO off when the kernel or the interface refuses it:
                // send the run again in smaller pieces.
                Err(_) if end - first > socket.max_gso_segments() => {}
                Err(e) => {
                    debug!(error = %e, dropped = self.queued.len() - first, "UDP send failed");
                    self.clear();
                    return Err(e);
                }
            }
        }
        self.clear();
        Ok(())
    }

    /// Sends the queue, waiting while the socket's send buffer is full. Cancel-safe: what
    /// was not sent stays queued.
    pub(crate) async fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        loop {
            match self.try_flush(socket) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
                r => return r,
            }
        }
    }
}

/// Adaptive receive coalescing: under a sustained high packet rate, wait a little before
/// each batched receive, so that every wake-up (and the GSO send of the answers queued
/// meanwhile) carries more datagrams: fewer system calls and wake-ups per datagram, for up
/// to `max_wait` more latency per datagram.
///
/// The policy: the receiver measures the rate of datagrams it receives over windows of
/// 1 ms. When the last window saw at least `min_rate` datagrams per second, the previous
/// receive did not fill every receive buffer (a full batch means more is already waiting),
/// and that window ended less than 2 ms ago, the receiver first sends what is queued and
/// then waits `max_wait` before reading. Otherwise it reads at once: at low rates, and for
/// the first datagram after a pause, coalescing adds no latency at all.
///
/// The wait does not block the runtime's thread: it is a timer of microsecond precision
/// (on Linux and Android a `timerfd` that the runtime's reactor watches), so the thread
/// runs other tasks meanwhile, or sleeps in the reactor. Elsewhere (no such timer) it does
/// not wait. The price of not blocking: a datagram that arrives during the wait may wake
/// the reactor once more (the socket stays registered), so a wait saves less CPU than a
/// blocking sleep did (`benches/turn_relay.rs`: 1.1–1.35× the CPU per round trip of the
/// former blocking wait, at the same throughput). Use [`Coalescing::OFF`] where a few tens of microseconds of latency matter
/// more than CPU.
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

/// The coalescing decision: the received-datagram rate over windows of [`RATE_WINDOW`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateGate {
    window_start: Instant,
    window_count: u64,
    /// The last complete window reached the policy's rate.
    high_rate: bool,
    /// The last receive call filled every buffer.
    last_full: bool,
}

impl RateGate {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            window_count: 0,
            high_rate: false,
            last_full: false,
        }
    }

    /// A receive call at `now` brought `received` datagrams; `full`: it filled every
    /// buffer.
    pub(crate) fn note(&mut self, policy: &Coalescing, now: Instant, received: u64, full: bool) {
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
    pub(crate) fn should_wait(&self, policy: &Coalescing, now: impl FnOnce() -> Instant) -> bool {
        self.high_rate
            && !self.last_full
            && !policy.max_wait.is_zero()
            // A stale measurement (the application paused) does not count.
            && now().saturating_duration_since(self.window_start) < 2 * RATE_WINDOW
    }
}

/// [`Coalescing`] at work: the policy, its rate gate and the timer it waits on.
#[derive(Debug)]
pub(crate) struct Coalescer {
    policy: Coalescing,
    gate: RateGate,
    timer: PreciseTimer,
    /// Waits so far.
    pub(crate) waits: u64,
}

impl Coalescer {
    pub(crate) fn new(policy: Coalescing) -> Self {
        Self {
            policy,
            gate: RateGate::new(Instant::now()),
            timer: PreciseTimer::default(),
            waits: 0,
        }
    }

    pub(crate) fn policy(&self) -> Coalescing {
        self.policy
    }

    pub(crate) fn set_policy(&mut self, policy: Coalescing) {
        self.policy = policy;
    }

    /// Waits `max_wait` when the policy says so, without blocking the thread.
    /// Cancel-safe.
    pub(crate) async fn wait(&mut self) {
        if self.gate.should_wait(&self.policy, Instant::now) {
            self.waits += 1;
            self.timer.sleep(self.policy.max_wait).await;
        }
    }

    /// A receive at `now` brought `received` datagrams; `full`: it filled every buffer.
    pub(crate) fn note(&mut self, now: Instant, received: u64, full: bool) {
        self.gate.note(&self.policy, now, received, full);
    }
}

/// A one-shot timer of microsecond precision that the runtime's reactor waits on
/// (tokio's own timers have a resolution of a millisecond): a `timerfd`, made on first
/// use.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Debug, Default)]
struct PreciseTimer {
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    /// Making one failed: do not try again (and do not wait).
    failed: bool,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl PreciseTimer {
    async fn sleep(&mut self, d: Duration) {
        if let Err(e) = self.try_sleep(d).await {
            debug!(error = %e, "coalescing timer failed: not waiting");
            self.failed = true;
            self.fd = None;
        }
    }

    async fn try_sleep(&mut self, d: Duration) -> io::Result<()> {
        use rustix::time::{
            Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
            timerfd_settime,
        };
        if self.failed || d.is_zero() {
            return Ok(());
        }
        let fd = match &mut self.fd {
            Some(fd) => fd,
            None => {
                let fd = timerfd_create(
                    TimerfdClockId::Monotonic,
                    TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
                )?;
                // Deprecated for file descriptors that may close while registered; an
                // `OwnedFd` closes only when the `AsyncFd` drops (after deregistering),
                // and the safe alternative is `unsafe`.
                #[allow(deprecated)]
                let fd = tokio::io::unix::AsyncFd::with_interest(fd, Interest::READABLE)?;
                self.fd.insert(fd)
            }
        };
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: zero,
            it_value: Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            },
        };
        timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        // The reactor watches it edge-triggered: every expiry is an event, whether or not
        // the count of expiries was read, so it is never read (a system call saved per
        // wait). A wait cancelled before its expiry may wake the next one early; that
        // only shortens that wait.
        let mut guard = fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }
}

/// Without a precise timer: no wait.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[derive(Debug, Default)]
struct PreciseTimer;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl PreciseTimer {
    #[allow(clippy::unused_async)]
    async fn sleep(&mut self, _d: Duration) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

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

    #[test]
    fn gro_buffers_split_into_their_datagrams_and_empty_ones_stay() {
        let v = |len, stride| segments(len, stride).collect::<Vec<_>>();
        assert_eq!(v(0, 0), vec![0..0]);
        assert_eq!(v(5, 5), vec![0..5]);
        assert_eq!(v(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(v(8, 4), vec![0..4, 4..8]);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// The wait lets the runtime's thread run other tasks: a task spawned before it runs
    /// to completion during it (with `std::thread::sleep`, as before, it could not).
    #[test]
    fn the_coalescing_wait_does_not_block_the_thread() {
        rt().block_on(async {
            let mut c = Coalescer::new(Coalescing {
                max_wait: Duration::from_millis(20),
                min_rate: 1,
            });
            // A high rate, measured a window ago.
            let t0 = Instant::now();
            c.note(t0, 1000, false);
            c.gate.window_start = t0;
            c.gate.high_rate = true;
            let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let r2 = ran.clone();
            let other = tokio::spawn(async move {
                r2.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let started = Instant::now();
            c.wait().await;
            let waited = started.elapsed();
            assert_eq!(c.waits, 1);
            assert!(
                ran.load(std::sync::atomic::Ordering::SeqCst),
                "another task ran during the wait"
            );
            assert!(waited >= Duration::from_millis(20), "{waited:?}");
            assert!(waited < Duration::from_secs(2), "{waited:?}");
            other.await.unwrap();
            // Precise: a 100 µs wait is far shorter than tokio's 1 ms timer resolution.
            c.set_policy(Coalescing {
                max_wait: Duration::from_micros(100),
                min_rate: 1,
            });
            c.gate.window_start = Instant::now();
            let started = Instant::now();
            c.wait().await;
            let waited = started.elapsed();
            assert!(waited >= Duration::from_micros(100), "{waited:?}");
        });
    }

    #[test]
    fn batches_carry_source_destination_and_ranges() {
        rt().block_on(async {
            let a =
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0).into(), BindOptions::default()).unwrap();
            let port = a.local_addr().port();
            let b =
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into(), BindOptions::default()).unwrap();
            // Two destination IPs of one wildcard-bound socket.
            let to1 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let to2 = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port));
            for (to, data) in [(to1, &b"one"[..]), (to2, b"two"), (to1, b"three")] {
                let d = Datagrams {
                    destination: to,
                    source: None,
                    contents: data,
                    segment_size: None,
                };
                b.send(&d).await.unwrap();
            }
            let mut batch = RecvBatch::with_capacity(8, 2048);
            let mut got = Vec::new();
            while got.len() < 3 {
                let n = tokio::time::timeout(Duration::from_secs(5), a.recv(&mut batch))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
                for i in 0..n {
                    let (from, data) = batch.get(i).unwrap();
                    let (_, range) = batch.range(i).unwrap();
                    assert_eq!(&batch.buffer()[range], data);
                    got.push((from, batch.destination(i).unwrap(), data.to_vec()));
                }
            }
            let from = b.local_addr();
            assert_eq!(
                got,
                vec![
                    (from, to1, b"one".to_vec()),
                    (from, to2, b"two".to_vec()),
                    (from, to1, b"three".to_vec()),
                ]
            );
        });
    }

    /// A single-datagram socket (no quinn-udp state) sends GSO runs one by one and empty
    /// datagrams, and receives them with its bound address as the destination.
    #[test]
    fn single_sockets_send_and_receive_plainly() {
        rt().block_on(async {
            let single = BindOptions {
                single: true,
                ..BindOptions::default()
            };
            let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into(), single).unwrap();
            let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into(), single).unwrap();
            assert!(a.state.is_none());
            assert_eq!(a.max_gso_segments(), 1);
            let mut q = SendQueue::new(4096, 16);
            for len in [10, 10, 4, 0] {
                q.push_with(b.local_addr(), None, |out| {
                    out[..len].fill(len as u8);
                    Ok::<_, ()>(len)
                })
                .unwrap();
            }
            q.flush(&a).await.unwrap();
            let mut batch = RecvBatch::with_capacity(4, 2048);
            let mut got = Vec::new();
            while got.len() < 4 {
                let n = tokio::time::timeout(Duration::from_secs(5), b.recv(&mut batch))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
                for i in 0..n {
                    let (from, data) = batch.get(i).unwrap();
                    assert_eq!(from, a.local_addr());
                    assert_eq!(batch.destination(i), Some(b.local_addr()));
                    got.push(data.len());
                }
            }
            assert_eq!(got, vec![10, 10, 4, 0]);
        });
    }

    /// A GSO send of equal-sized datagrams arrives as separate datagrams (the receiver
    /// splits a GRO buffer), and a send's source IP picks the address on a wildcard
    /// socket; on a dual-stack socket IPv4 comes out as IPv4.
    #[test]
    fn gso_sends_and_source_ips() {
        rt().block_on(async {
            let a = UdpSocket::bind_dual(0, BindOptions::default()).unwrap();
            let port = a.local_addr().port();
            let b =
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0).into(), BindOptions::default()).unwrap();
            let mut q = SendQueue::new(64 * 1024, 128);
            let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            for i in 0..10u8 {
                q.push_with(to, None, |out| {
                    out[..100].fill(i);
                    Ok::<_, ()>(if i == 9 { 50 } else { 100 })
                })
                .unwrap();
            }
            assert_eq!(q.len(), 10);
            q.flush(&b).await.unwrap();
            assert_eq!(q.len(), 0);
            assert_eq!(q.datagrams_sent, 10);
            if b.max_gso_segments() > 1 {
                assert_eq!(q.send_calls, 1, "one GSO send");
            }
            let mut batch = RecvBatch::new();
            let mut seen = Vec::new();
            while seen.len() < 10 {
                let n = tokio::time::timeout(Duration::from_secs(5), a.recv(&mut batch))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
                for i in 0..n {
                    let (from, data) = batch.get(i).unwrap();
                    assert_eq!(from, b.local_addr(), "IPv4, not IPv4-mapped");
                    assert_eq!(batch.destination(i), Some(to));
                    seen.push((data[0], data.len()));
                }
            }
            let want: Vec<(u8, usize)> = (0..10u8)
                .map(|i| (i, if i == 9 { 50 } else { 100 }))
                .collect();
            assert_eq!(seen, want);
            // From the dual-stack wildcard socket, from 127.0.0.2 by choice.
            let d = Datagrams {
                destination: b.local_addr(),
                source: Some(Ipv4Addr::new(127, 0, 0, 2).into()),
                contents: b"hi",
                segment_size: None,
            };
            a.send(&d).await.unwrap();
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    b.readable().await.unwrap();
                    match b.try_recv_into(&mut buf) {
                        Ok(r) => return r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
            .await
            .expect("the datagram arrives");
            assert_eq!(&buf[..r.len], b"hi");
            assert_eq!(
                r.source,
                SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port))
            );
            assert_eq!(r.destination, b.local_addr());
        });
    }
}
