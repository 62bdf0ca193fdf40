//! The sockets of the generic runner (netcheck, the STUN server, the TURN server, the
//! port mapper, the TURN client): UDP sockets, and at most one TCP or TLS stream of
//! STUN/TURN messages (the TURN client over `turn:?transport=tcp` and `turns:`). No task
//! per socket and no allocation per datagram: one receive future reads a batch from a
//! socket that has datagrams (`recvmmsg`, GRO) into one reusable [`RecvBatch`], or the
//! next whole message from the stream.
//!
//! Readiness-driven: each socket has a waker of its own that puts the socket on a ready
//! list and wakes the receive future, which then polls only the sockets on that list
//! (plus the stream). A wake-up costs the same with 1 socket as with the TURN server's
//! thousand relays: a flood on one relay does not make every other socket be polled per
//! datagram.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::turn::Stream;
use super::udp::{BindOptions, Datagrams, RecvBatch, UdpSocket};
use super::{DriverError, io};
use crate::turn::StreamFramer;
use crate::{Protocol, Received, Transmit};

/// How much one read from a stream takes at most.
const STREAM_READ: usize = 16 * 1024;
/// How long closing a stream cleanly (TLS close_notify, FIN) may take.
const STREAM_SHUTDOWN: Duration = Duration::from_secs(1);

/// A TCP or TLS connection carrying STUN and ChannelData messages (RFC 8656 §12.5 framing).
struct StreamConn {
    /// Our end.
    local: SocketAddr,
    /// The other end.
    peer: SocketAddr,
    io: Pin<Box<dyn Stream>>,
    framer: StreamFramer,
    read: Box<[u8]>,
    /// The message the last receive returned, in the framer's buffer.
    frame: Range<usize>,
}

/// At most this many receive errors in a row (ICMP errors for earlier sends surface as
/// receive errors on Linux) are skipped on one socket in one poll.
const MAX_SKIPPED_ERRORS: usize = 16;

/// Which sockets may have datagrams: filled by the sockets' wakers, drained by
/// [`Sockets::recv`].
struct ReadySet {
    /// Socket indices, in the order they became ready (a socket that gave a batch goes
    /// to the back: a busy socket does not starve the others).
    queue: Mutex<Vec<usize>>,
    /// Whether each socket is in `queue` (so that it is there at most once).
    queued: Vec<AtomicBool>,
    /// The receive future's waker.
    parent: Mutex<Option<Waker>>,
}

impl ReadySet {
    /// A set for `n` sockets, all of them ready (a new socket may have datagrams
    /// already).
    fn all_ready(n: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new((0..n).collect()),
            queued: (0..n).map(|_| AtomicBool::new(true)).collect(),
            parent: Mutex::new(None),
        })
    }

    fn mark(&self, i: usize) {
        if !self.queued[i].swap(true, Ordering::AcqRel) {
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(i);
        }
    }
}

/// The waker a socket's readiness is registered with.
struct SocketWaker {
    set: Arc<ReadySet>,
    index: usize,
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.set.mark(self.index);
        let parent = self
            .set
            .parent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(w) = parent {
            w.wake();
        }
    }
}

/// Bound UDP sockets, a stream, and the buffers their datagrams are read into.
pub(super) struct Sockets {
    /// The UDP sockets (after [`Sockets::add`], [`Sockets::adopt`] or
    /// [`Sockets::remove`], [`Sockets::recv`] rebuilds its readiness list).
    pub(super) sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    batch: RecvBatch,
    /// The readiness list, and each socket's waker (rebuilt when the sockets change).
    ready: Arc<ReadySet>,
    wakers: Vec<Waker>,
    /// A socket was added or removed since the wakers were made.
    changed: bool,
    /// Sockets polled (for tests: what a wake-up costs).
    #[cfg(test)]
    polls: u64,
    /// UDP sockets connected to one remote (where the platform allows it): a send
    /// elsewhere re-targets the socket first (a TURN server's 300 Try Alternate).
    connected: Vec<(SocketAddr, SocketAddr)>,
    stream: Option<StreamConn>,
    /// The last receive was the stream's message (else a UDP batch).
    from_stream: bool,
    /// The address the socket of the last UDP batch is known as.
    last_local: SocketAddr,
    /// Why the sockets can no longer carry anything (the stream closed or broke): the
    /// run ends.
    broken: Option<String>,
}

impl Sockets {
    /// Binds each address.
    pub(super) async fn bind(addrs: &[SocketAddr]) -> Result<Self, DriverError> {
        let mut s = Self {
            sockets: Vec::new(),
            batch: RecvBatch::new(),
            ready: ReadySet::all_ready(0),
            wakers: Vec::new(),
            changed: false,
            #[cfg(test)]
            polls: 0,
            connected: Vec::new(),
            stream: None,
            from_stream: false,
            last_local: SocketAddr::from(([0, 0, 0, 0], 0)),
            broken: None,
        };
        for a in addrs {
            s.add(*a).await?;
        }
        Ok(s)
    }

    /// Binds one more socket (the TURN server's relays); its address.
    #[allow(clippy::unused_async)]
    pub(super) async fn add(&mut self, addr: SocketAddr) -> Result<SocketAddr, DriverError> {
        let s =
            UdpSocket::bind(addr, BindOptions::default()).map_err(io(format!("binding {addr}")))?;
        let local = s.local_addr();
        self.sockets.push((local, Arc::new(s)));
        self.changed = true;
        Ok(local)
    }

    /// Adds a socket bound elsewhere (the TURN client's, which its data plane shares),
    /// known as `local`: the address its machine sends from (for a wildcard socket, the
    /// concrete address toward its server).
    pub(super) fn adopt(&mut self, local: SocketAddr, socket: Arc<UdpSocket>) {
        self.sockets.push((local, socket));
        self.changed = true;
    }

    /// Connects the socket bound at `local` to `remote` where the platform allows a send
    /// with a destination on a connected socket (see
    /// [`UdpSocket::connect_where_supported`]); sends elsewhere re-target it.
    pub(super) async fn connect(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(), DriverError> {
        let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == local) else {
            return Ok(());
        };
        s.connect_where_supported(remote)
            .await
            .map_err(io(format!("routing to {remote}")))?;
        self.connected.retain(|(l, _)| *l != local);
        self.connected.push((local, remote));
        Ok(())
    }

    /// Sets the stream (replacing any), connected from `local` to `peer`.
    pub(super) fn set_stream(
        &mut self,
        io: Pin<Box<dyn Stream>>,
        local: SocketAddr,
        peer: SocketAddr,
    ) {
        self.stream = Some(StreamConn {
            local,
            peer,
            io,
            framer: StreamFramer::new(),
            read: vec![0; STREAM_READ].into_boxed_slice(),
            frame: 0..0,
        });
        self.from_stream = false;
        self.broken = None;
    }

    /// Closes the stream cleanly (for TLS: close_notify, so that the other end sees an
    /// orderly close), bounded by [`STREAM_SHUTDOWN`].
    pub(super) async fn close_stream(&mut self) {
        if let Some(mut s) = self.stream.take() {
            let _ = tokio::time::timeout(STREAM_SHUTDOWN, s.io.shutdown()).await;
        }
        self.from_stream = false;
    }

    /// Why the sockets can no longer be used (the stream closed or broke), if so.
    pub(super) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Closes the socket bound at `addr` (the TURN server's relays).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(super) fn remove(&mut self, addr: SocketAddr) {
        self.sockets.retain(|(a, _)| *a != addr);
        self.changed = true;
    }

    /// Sends `t` from the socket bound at its source (the stream when that is the
    /// stream's address). A UDP send error is logged (the machine's retransmissions or
    /// timers deal with loss); a stream write error breaks the sockets ([`Sockets::broken`]).
    pub(super) async fn send(&mut self, t: &Transmit) {
        if let Some(s) = self.stream.as_mut().filter(|s| s.local == t.source) {
            if let Err(e) = s.io.write_all(&t.contents).await {
                debug!(to = %s.peer, error = %e, "stream write failed");
                self.broken = Some(e.to_string());
            }
            return;
        }
        let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == t.source) else {
            debug!(source = %t.source, "no socket for transmit");
            return;
        };
        if let Some(c) = self.connected.iter_mut().find(|(l, _)| *l == t.source) {
            if c.1 != t.destination {
                debug!(from = %c.1, to = %t.destination, "re-targeting a connected socket");
                if let Err(e) = s.connect_where_supported(t.destination).await {
                    debug!(to = %t.destination, error = %e, "re-targeting failed");
                    return;
                }
                c.1 = t.destination;
            }
        }
        let d = Datagrams {
            destination: t.destination,
            source: None,
            contents: &t.contents,
            segment_size: None,
        };
        if let Err(e) = s.send(&d).await {
            debug!(to = %t.destination, error = %e, "send failed");
        }
    }

    /// Waits until a socket has datagrams and reads a batch of them (or one message from
    /// the stream): the bound address they arrived at and how many datagrams
    /// ([`Sockets::received`]). When the stream ends or breaks it returns with none and
    /// [`Sockets::broken`] says why. Never returns with no sockets (it waits for ever).
    /// Cancel-safe: nothing is read until it returns (a stream's bytes, once read, stay
    /// in its framer).
    pub(super) async fn recv(&mut self) -> (SocketAddr, usize) {
        if self.changed {
            self.rebuild_wakers();
        }
        poll_fn(|cx| {
            let Self {
                sockets,
                batch,
                ready,
                wakers,
                stream,
                from_stream,
                last_local,
                broken,
                #[cfg(test)]
                polls,
                ..
            } = &mut *self;
            if broken.is_some() {
                return Poll::Pending;
            }
            if let Some(s) = stream {
                match poll_stream(cx, s) {
                    Poll::Ready(Ok(())) => {
                        *from_stream = true;
                        return Poll::Ready((s.local, 1));
                    }
                    Poll::Ready(Err(why)) => {
                        debug!(peer = %s.peer, %why, "stream over");
                        *broken = Some(why);
                        return Poll::Ready((s.local, 0));
                    }
                    Poll::Pending => {}
                }
            }
            {
                let mut parent = ready.parent.lock().unwrap_or_else(PoisonError::into_inner);
                if !parent.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *parent = Some(cx.waker().clone());
                }
            }
            // Only the sockets whose wakers fired (or that gave data last time).
            let due =
                std::mem::take(&mut *ready.queue.lock().unwrap_or_else(PoisonError::into_inner));
            let mut due = due.into_iter();
            while let Some(i) = due.next() {
                ready.queued[i].store(false, Ordering::Release);
                let (local, s) = &sockets[i];
                #[cfg(test)]
                {
                    *polls += 1;
                }
                let mut scx = Context::from_waker(&wakers[i]);
                let mut skipped = 0;
                let got = loop {
                    match s.poll_recv(&mut scx, batch) {
                        Poll::Ready(Ok(got)) => break Some(got),
                        Poll::Ready(Err(e)) => {
                            debug!(%local, error = %e, "receive error");
                            skipped += 1;
                            if skipped >= MAX_SKIPPED_ERRORS {
                                // Back to it on the next wake-up (it stays ready).
                                ready.mark(i);
                                cx.waker().wake_by_ref();
                                break None;
                            }
                        }
                        // Its waker is registered: it comes back when readable.
                        Poll::Pending => break None,
                    }
                };
                if let Some(got) = got {
                    // The others that were due stay due (their flags still say so), first;
                    // this one may have more: after them.
                    ready
                        .queue
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(due);
                    ready.mark(i);
                    *from_stream = false;
                    *last_local = *local;
                    return Poll::Ready((*local, got));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// A new readiness list with every socket on it, and a waker for each.
    fn rebuild_wakers(&mut self) {
        self.changed = false;
        self.ready = ReadySet::all_ready(self.sockets.len());
        self.wakers = (0..self.sockets.len())
            .map(|index| {
                Waker::from(Arc::new(SocketWaker {
                    set: self.ready.clone(),
                    index,
                }))
            })
            .collect();
    }

    /// The `i`th datagram of the last [`Sockets::recv`], as the machine takes it: its
    /// transport, source, the local address it arrived at (as the socket is known: a
    /// wildcard socket's own address, which its transmits name as their source), and its
    /// bytes.
    pub(super) fn received(&self, i: usize) -> Option<Received<'_>> {
        if self.from_stream {
            let s = self.stream.as_ref().filter(|_| i == 0)?;
            return Some(Received {
                proto: Protocol::Tcp,
                source: s.peer,
                destination: s.local,
                contents: s.framer.buffer().get(s.frame.clone())?,
            });
        }
        let (source, contents) = self.batch.get(i)?;
        Some(Received {
            proto: Protocol::Udp,
            source,
            destination: self.last_local,
            contents,
        })
    }
}

/// The stream's next whole message (its range in `s.frame`), reading as needed; an error
/// says why the stream is over (closed, broken, or not STUN/ChannelData).
fn poll_stream(cx: &mut std::task::Context<'_>, s: &mut StreamConn) -> Poll<Result<(), String>> {
    loop {
        match s.framer.next_frame_range() {
            Some(Ok(r)) => {
                s.frame = r;
                return Poll::Ready(Ok(()));
            }
            Some(Err(e)) => return Poll::Ready(Err(e.to_string())),
            None => {}
        }
        let mut buf = ReadBuf::new(&mut s.read);
        match s.io.as_mut().poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                return Poll::Ready(Err("the server closed the connection".into()));
            }
            Poll::Ready(Ok(())) => {
                if s.framer.push(buf.filled()).is_err() {
                    return Poll::Ready(Err("stream framing lost".into()));
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
            Poll::Pending => return Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    async fn recv_bounded(s: &mut Sockets) -> (SocketAddr, usize) {
        tokio::time::timeout(BOUND, s.recv())
            .await
            .expect("a datagram in time")
    }

    #[tokio::test]
    async fn a_wake_up_polls_only_the_sockets_that_became_readable() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut s = Sockets::bind(&vec![lo; 200]).await.unwrap();
        let addrs: Vec<SocketAddr> = s.sockets.iter().map(|(a, _)| *a).collect();
        let peer = std::net::UdpSocket::bind(lo).unwrap();
        // The first receive polls every socket once (each registers its waker).
        peer.send_to(b"one", addrs[150]).unwrap();
        assert_eq!(recv_bounded(&mut s).await, (addrs[150], 1));
        assert!(s.polls <= 201, "{}", s.polls);
        for (k, i) in [10usize, 199, 0, 150].into_iter().enumerate() {
            let before = s.polls;
            peer.send_to(&[k as u8], addrs[i]).unwrap();
            assert_eq!(recv_bounded(&mut s).await, (addrs[i], 1));
            assert_eq!(s.received(0).unwrap().contents, &[k as u8]);
            // The socket that woke, and the one that gave data last time (it may have
            // had more): not the other 198.
            assert!(s.polls - before <= 3, "{} sockets polled", s.polls - before);
        }
    }

    #[tokio::test]
    async fn a_busy_socket_does_not_starve_the_others() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut s = Sockets::bind(&[lo, lo]).await.unwrap();
        let (a, b) = (s.sockets[0].0, s.sockets[1].0);
        let peer = std::net::UdpSocket::bind(lo).unwrap();
        // Far more than one batch for `a`, one datagram for `b`.
        for _ in 0..500 {
            peer.send_to(b"busy", a).unwrap();
        }
        peer.send_to(b"quiet", b).unwrap();
        let mut seen_b = false;
        for _ in 0..3 {
            let (at, _) = recv_bounded(&mut s).await;
            seen_b |= at == b;
        }
        assert!(seen_b, "b was served while a still had datagrams");
    }

    #[tokio::test]
    async fn sockets_added_and_removed_between_receives_are_served() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut s = Sockets::bind(&[lo, lo, lo]).await.unwrap();
        let peer = std::net::UdpSocket::bind(lo).unwrap();
        let first = s.sockets[0].0;
        peer.send_to(b"x", first).unwrap();
        assert_eq!(recv_bounded(&mut s).await.0, first);
        // Remove one in the middle (the others shift), add one: each still delivers.
        s.remove(s.sockets[1].0);
        let added = s.add(lo).await.unwrap();
        for to in [s.sockets[1].0, added, first] {
            peer.send_to(b"y", to).unwrap();
            assert_eq!(recv_bounded(&mut s).await.0, to);
        }
    }
}
