//! The development TURN server on real sockets: a configuration of the generic runner
//! whose events bind and close the relayed sockets.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tracing::debug;

use super::runner::{Run, run_machine};
use super::sockets::Sockets;
use super::{DriverError, ServeHandle, os_seed, portmap};
use crate::turn::{ServerAction, TurnServer};

/// Starts the development TURN server ([`crate::turn::TurnServer`]) on `config.listen`
/// (UDP); relayed sockets are bound on `config.relay_ip`, else on the listen IP when it
/// is concrete, else on the local IP the server answers each client from. Its peer
/// policy, quotas and brakes are `config`'s (safe by default: see the server's docs).
/// Dropping the handle stops it and closes every relay.
pub async fn serve_turn(config: crate::turn::TurnServerConfig) -> Result<ServeHandle, DriverError> {
    let mut sockets = Sockets::bind(&[config.listen]).await?;
    let listen_addr = sockets.sockets[0].0;
    let mut config = config;
    config.listen = listen_addr;
    let mut server = TurnServer::new(Instant::now(), config, os_seed()?);
    // The sockets (the listening one and every relay, each with its reader) belong to
    // the task: aborting it (dropping the handle) closes them all.
    let task = tokio::spawn(async move {
        let run = Run {
            stop: std::future::pending(),
            on_stop: |_: &mut TurnServer| {},
            on_event: async |server: &mut TurnServer,
                             sockets: &mut Sockets,
                             action: ServerAction| {
                act(server, sockets, action).await;
                ControlFlow::Continue(())
            },
            max_idle: Duration::from_secs(3600),
        };
        run_machine(&mut server, &mut sockets, run).await;
    });
    Ok(ServeHandle::new(vec![listen_addr], task))
}

/// What the server asks of its driver: a relayed socket for a new allocation (never a
/// wildcard: its address is advertised to peers), or closing one.
async fn act(server: &mut TurnServer, sockets: &mut Sockets, action: ServerAction) {
    match action {
        ServerAction::BindRelay { client, ip } => {
            // By default the IP the server answers this client from.
            let ip = match ip {
                Some(ip) => ip,
                None => match portmap::local_ip_toward(client.ip()).await {
                    Ok(ip) if !ip.is_unspecified() => ip,
                    _ => {
                        debug!(%client, "no local IP toward the client for a relay");
                        server.relay_failed(client);
                        return;
                    }
                },
            };
            match sockets.add((ip, 0).into()).await {
                Ok(addr) => server.relay_bound(client, addr),
                Err(e) => {
                    debug!(error = %e, "cannot bind a relay");
                    server.relay_failed(client);
                }
            }
        }
        ServerAction::ReleaseRelay(addr) => sockets.remove(addr),
    }
}
