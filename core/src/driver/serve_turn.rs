//! The development TURN server on real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::sockets::MAX_DATAGRAM;
use super::{DriverError, ServeHandle, io, os_seed, portmap};
use crate::{Protocol, Received};

/// Starts the development TURN server ([`crate::turn::TurnServer`]) on `config.listen`
/// (UDP); relayed sockets are bound on `config.relay_ip`, else on the listen IP when it
/// is concrete, else on the local IP the server answers each client from. Its peer
/// policy, quotas and brakes are `config`'s (safe by default: see the server's docs).
/// Dropping the handle stops it and closes every relay.
pub async fn serve_turn(config: crate::turn::TurnServerConfig) -> Result<ServeHandle, DriverError> {
    use crate::turn::{ServerAction, TurnServer};
    use std::collections::HashMap;

    let listen = UdpSocket::bind(config.listen)
        .await
        .map_err(io(format!("binding {}", config.listen)))?;
    let listen_addr = listen.local_addr().map_err(io("local address"))?;
    let mut config = config;
    config.listen = listen_addr;
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(1024);
    // Readers live in a JoinSet owned by the server task: aborting the task (dropping the
    // handle) drops the set, which aborts every reader and closes every socket.
    let spawn_reader =
        |set: &mut tokio::task::JoinSet<()>,
         sock: Arc<UdpSocket>,
         local: SocketAddr,
         tx: mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>| {
            set.spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx.send((local, from, buf[..n].to_vec())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => debug!(%local, error = %e, "receive error"),
                    }
                }
            })
        };
    let listen = Arc::new(listen);
    let mut server = TurnServer::new(Instant::now(), config, os_seed()?);
    let task = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        spawn_reader(&mut readers, listen.clone(), listen_addr, tx.clone());
        let mut relays: HashMap<SocketAddr, (Arc<UdpSocket>, tokio::task::AbortHandle)> =
            HashMap::new();
        loop {
            while let Some(action) = server.poll_action() {
                match action {
                    ServerAction::BindRelay { client, ip } => {
                        // Never a wildcard: the relayed address is advertised to peers. By
                        // default the IP the server answers this client from.
                        let ip = match ip {
                            Some(ip) => ip,
                            None => match portmap::local_ip_toward(client.ip()).await {
                                Ok(ip) if !ip.is_unspecified() => ip,
                                _ => {
                                    debug!(%client, "no local IP toward the client for a relay");
                                    server.relay_failed(client);
                                    continue;
                                }
                            },
                        };
                        match UdpSocket::bind((ip, 0)).await {
                            Ok(s) => match s.local_addr() {
                                Ok(addr) => {
                                    let s = Arc::new(s);
                                    let reader =
                                        spawn_reader(&mut readers, s.clone(), addr, tx.clone());
                                    relays.insert(addr, (s, reader));
                                    server.relay_bound(client, addr);
                                }
                                Err(_) => server.relay_failed(client),
                            },
                            Err(e) => {
                                debug!(error = %e, "cannot bind a relay");
                                server.relay_failed(client);
                            }
                        }
                    }
                    ServerAction::ReleaseRelay(addr) => {
                        if let Some((_, reader)) = relays.remove(&addr) {
                            reader.abort();
                        }
                    }
                }
            }
            while let Some(t) = server.poll_transmit() {
                let sock = if t.source == listen_addr {
                    Some(&listen)
                } else {
                    relays.get(&t.source).map(|(s, _)| s)
                };
                if let Some(s) = sock {
                    if let Err(e) = s.send_to(&t.contents, t.destination).await {
                        debug!(to = %t.destination, error = %e, "send failed");
                    }
                }
            }
            let wake = server
                .poll_timeout()
                .map(tokio::time::Instant::from)
                .unwrap_or_else(|| {
                    tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
                });
            tokio::select! {
                msg = rx.recv() => {
                    let Some((local, from, bytes)) = msg else { break };
                    server.handle_input(Instant::now(), Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: &bytes,
                    });
                }
                _ = tokio::time::sleep_until(wake) => server.handle_timeout(Instant::now()),
            }
        }
        readers.abort_all();
    });
    Ok(ServeHandle::new(vec![listen_addr], task))
}
