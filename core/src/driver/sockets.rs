//! The sockets of the generic runner (netcheck, the STUN server, the TURN server, the
//! port mapper, the TURN client): UDP sockets, and at most one TCP or TLS stream of
//! STUN/TURN messages (the TURN client over `turn:?transport=tcp` and `turns:`). No task
//! per socket and no allocation per datagram: one receive future polls every socket's
//! readiness and reads a batch from the first that has datagrams (`recvmmsg`, GRO) into
//! one reusable [`RecvBatch`], or the next whole message from the stream.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
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

/// Bound UDP sockets, a stream, and the buffers their datagrams are read into.
pub(super) struct Sockets {
    pub(super) sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    batch: RecvBatch,
    /// Where the next poll starts, so that a busy socket does not starve the others.
    next: usize,
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
            next: 0,
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
        Ok(local)
    }

    /// Adds a socket bound elsewhere (the TURN client's, which its data plane shares),
    /// known as `local`: the address its machine sends from (for a wildcard socket, the
    /// concrete address toward its server).
    pub(super) fn adopt(&mut self, local: SocketAddr, socket: Arc<UdpSocket>) {
        self.sockets.push((local, socket));
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
        poll_fn(|cx| {
            let Self {
                sockets,
                batch,
                next,
                stream,
                from_stream,
                last_local,
                broken,
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
            let n = sockets.len();
            for k in 0..n {
                let i = (*next + k) % n;
                let (local, s) = &sockets[i];
                let mut skipped = 0;
                loop {
                    match s.poll_recv(cx, batch) {
                        Poll::Ready(Ok(got)) => {
                            *next = (i + 1) % n;
                            *from_stream = false;
                            *last_local = *local;
                            return Poll::Ready((*local, got));
                        }
                        Poll::Ready(Err(e)) => {
                            debug!(%local, error = %e, "receive error");
                            skipped += 1;
                            if skipped >= MAX_SKIPPED_ERRORS {
                                // Back to it on the next wake-up (it stays ready).
                                cx.waker().wake_by_ref();
                                break;
                            }
                        }
                        Poll::Pending => break,
                    }
                }
            }
            Poll::Pending
        })
        .await
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
