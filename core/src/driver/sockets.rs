//! The UDP sockets of netcheck and the STUN server: one receive task per socket, all
//! feeding one channel.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::{DriverError, io};
use crate::Transmit;

/// The largest datagram the driver reads.
pub(super) const MAX_DATAGRAM: usize = 65_535;

/// A datagram a receive task read: (local, remote, bytes).
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

/// Bound UDP sockets and the channel their receive tasks feed.
pub(super) struct Sockets {
    pub(super) sockets: Vec<(SocketAddr, Arc<UdpSocket>)>,
    pub(super) rx: mpsc::Receiver<Datagram>,
    tx: mpsc::Sender<Datagram>,
    tasks: Vec<(SocketAddr, JoinHandle<()>)>,
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
    }
}

impl Sockets {
    /// Binds each address and starts a receive task per socket, all feeding one channel
    /// of (local, remote, bytes).
    pub(super) async fn bind(addrs: &[SocketAddr]) -> Result<Self, DriverError> {
        let (tx, rx) = mpsc::channel(1024);
        let mut s = Self {
            sockets: Vec::new(),
            rx,
            tx,
            tasks: Vec::new(),
        };
        for a in addrs {
            s.add(*a).await?;
        }
        Ok(s)
    }

    /// Binds one more socket (the TURN server's relays); its address.
    pub(super) async fn add(&mut self, addr: SocketAddr) -> Result<SocketAddr, DriverError> {
        let s = UdpSocket::bind(addr)
            .await
            .map_err(io(format!("binding {addr}")))?;
        let local = s.local_addr().map_err(io("local address"))?;
        let s = Arc::new(s);
        let (s2, tx) = (s.clone(), self.tx.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match s2.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if tx.send((local, from, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    // ICMP errors surface as receive errors on Linux: keep reading.
                    Err(e) => debug!(%local, error = %e, "receive error"),
                }
            }
        });
        self.tasks.push((local, task));
        self.sockets.push((local, s));
        Ok(local)
    }

    /// Closes the socket bound at `addr` (the TURN server's relays).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(super) fn remove(&mut self, addr: SocketAddr) {
        self.sockets.retain(|(a, _)| *a != addr);
        self.tasks.retain(|(a, t)| {
            if *a == addr {
                t.abort();
            }
            *a != addr
        });
    }

    pub(super) async fn send(&self, t: &Transmit) {
        let Some((_, s)) = self.sockets.iter().find(|(a, _)| *a == t.source) else {
            debug!(source = %t.source, "no socket for transmit");
            return;
        };
        if let Err(e) = s.send_to(&t.contents, t.destination).await {
            debug!(to = %t.destination, error = %e, "send failed");
        }
    }
}
