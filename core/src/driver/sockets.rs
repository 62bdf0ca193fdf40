//! The UDP sockets of the generic runner (netcheck, the STUN server, the TURN server): no
//! task per socket and no allocation per datagram. One receive future polls every
//! socket's readiness and reads a batch from the first that has datagrams (`recvmmsg`,
//! GRO) into one reusable [`RecvBatch`].

use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;

use tracing::debug;

use super::udp::{BindOptions, Datagrams, RecvBatch, UdpSocket};
use super::{DriverError, io};
use crate::Transmit;

/// At most this many receive errors in a row (ICMP errors for earlier sends surface as
/// receive errors on Linux) are skipped on one socket in one poll.
const MAX_SKIPPED_ERRORS: usize = 16;

/// Bound UDP sockets and the buffers their datagrams are read into.
pub(super) struct Sockets {
    pub(super) sockets: Vec<(SocketAddr, UdpSocket)>,
    batch: RecvBatch,
    /// Where the next poll starts, so that a busy socket does not starve the others.
    next: usize,
}

impl Sockets {
    /// Binds each address.
    pub(super) async fn bind(addrs: &[SocketAddr]) -> Result<Self, DriverError> {
        let mut s = Self {
            sockets: Vec::new(),
            batch: RecvBatch::new(),
            next: 0,
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
        self.sockets.push((local, s));
        Ok(local)
    }

    /// Closes the socket bound at `addr`.
    #[cfg_attr(not(feature = "server"), allow(dead_code))] // the TURN server's
    pub(super) fn remove(&mut self, addr: SocketAddr) {
        self.sockets.retain(|(a, _)| *a != addr);
    }

    pub(super) async fn send(&self, t: &Transmit) {
        let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == t.source) else {
            debug!(source = %t.source, "no socket for transmit");
            return;
        };
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

    /// Waits until a socket has datagrams and reads a batch of them: the socket's bound
    /// address and how many datagrams ([`Sockets::datagram`]). Never returns with no
    /// sockets (it waits for ever). Cancel-safe: nothing is read until it returns.
    pub(super) async fn recv(&mut self) -> (SocketAddr, usize) {
        poll_fn(|cx| {
            let Self {
                sockets,
                batch,
                next,
            } = &mut *self;
            let n = sockets.len();
            for k in 0..n {
                let i = (*next + k) % n;
                let (local, s) = &sockets[i];
                let mut skipped = 0;
                loop {
                    match s.poll_recv(cx, batch) {
                        Poll::Ready(Ok(got)) => {
                            *next = (i + 1) % n;
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

    /// The `i`th datagram of the last [`Sockets::recv`]: its source, the local address it
    /// arrived at, and its bytes.
    pub(super) fn datagram(&self, i: usize) -> Option<(SocketAddr, SocketAddr, &[u8])> {
        let (source, data) = self.batch.get(i)?;
        let destination = self.batch.destination(i)?;
        Some((source, destination, data))
    }
}
