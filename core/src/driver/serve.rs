//! The STUN server on real sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::runner::{Run, run_machine};
use super::sockets::Sockets;
use super::{DriverError, io};
use crate::machine::NoEvent;
use crate::stun::{ServerConfig, StunServer};

/// A running STUN server; dropping it stops the server.
#[derive(Debug)]
pub struct ServeHandle {
    addrs: Vec<SocketAddr>,
    task: JoinHandle<()>,
}

impl ServeHandle {
    pub(crate) fn new(addrs: Vec<SocketAddr>, task: JoinHandle<()>) -> Self {
        Self { addrs, task }
    }

    /// The addresses it listens on (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops the server.
    pub fn stop(self) {}
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a STUN server for `config` on every address it needs (one, or four for
/// RFC 5780). Ports must be given (not 0): an RFC 5780 server's addresses are a 2×2 grid.
pub async fn serve(config: ServerConfig) -> Result<ServeHandle, DriverError> {
    let mut server = StunServer::new(config)?;
    let addrs = server.local_addresses();
    let mut sockets = Sockets::bind(&addrs).await?;
    let bound: Vec<SocketAddr> = sockets.sockets.iter().map(|(a, _)| *a).collect();
    let task = tokio::spawn(async move {
        // Answers only: no events, no deadline, no stop but the handle's drop.
        let run = Run {
            stop: std::future::pending(),
            on_stop: |_: &mut StunServer| {},
            on_event: async |_: &mut StunServer, _: &mut Sockets, ev: NoEvent| match ev {},
            max_idle: Duration::from_secs(3600),
        };
        run_machine(&mut server, &mut sockets, run).await;
    });
    Ok(ServeHandle { addrs: bound, task })
}

/// Starts an RFC 5780 server on loopback, on 127.0.0.1 and 127.0.0.2 with free ports:
/// the embedded default that lets a netcheck run on one machine.
pub async fn serve_loopback() -> Result<ServeHandle, DriverError> {
    let mut last = None;
    // Two free ports that are free on both IPs; retry a few times on collisions.
    for _ in 0..16 {
        let p1 = free_port().await?;
        let p2 = free_port().await?;
        if p1 == p2 {
            continue;
        }
        let primary = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 1).into(), p1);
        let alternate = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), p2);
        // Only this host can reach it (loopback cannot be spoofed from outside), so the
        // per-source limit would only slow this host's own probes.
        let config = ServerConfig {
            rate_limit: None,
            ..ServerConfig::rfc5780(primary, alternate)
        };
        match serve(config).await {
            Ok(h) => return Ok(h),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(DriverError::NothingResolved))
}

async fn free_port() -> Result<u16, DriverError> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(io("finding a free port"))?;
    Ok(s.local_addr().map_err(io("local address"))?.port())
}
