//! Running a netcheck.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use tracing::debug;

use super::sockets::Sockets;
use super::{DriverError, os_seed};
use crate::netcheck::{NetcheckConfig, NetcheckEvent, Prober, Report};
use crate::{Protocol, Received};

/// Runs a netcheck: binds `config.sockets_needed()` UDP sockets on the wildcard address
/// of the servers' family, drives a [`Prober`], calls `on_event` for progress, and returns
/// the report.
pub async fn netcheck(
    config: NetcheckConfig,
    on_event: impl FnMut(&NetcheckEvent),
) -> Result<Report, DriverError> {
    netcheck_until(config, on_event, std::future::pending()).await
}

/// [`netcheck`] that also ends when `stop` completes (for example on Ctrl-C): the report
/// then holds what was found so far ([`Prober::finish_early`]).
pub async fn netcheck_until(
    config: NetcheckConfig,
    mut on_event: impl FnMut(&NetcheckEvent),
    stop: impl std::future::Future<Output = ()>,
) -> Result<Report, DriverError> {
    tokio::pin!(stop);
    let mut stopped = false;
    let v6 = config.servers.first().is_some_and(|s| s.addr.is_ipv6());
    let any: IpAddr = if v6 {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let wanted = vec![SocketAddr::new(any, 0); config.sockets_needed()];
    let mut sockets = Sockets::bind(&wanted).await?;
    let locals = sockets.sockets.iter().map(|(a, _)| *a).collect();
    let mut prober = Prober::new(Instant::now(), config, locals, os_seed()?)?;
    loop {
        while let Some(t) = prober.poll_transmit() {
            sockets.send(&t).await;
        }
        while let Some(ev) = prober.poll_event() {
            on_event(&ev);
            if let NetcheckEvent::Done(report) = ev {
                return Ok(*report);
            }
        }
        // Until done the prober always has a deadline (its overall budget); stay bounded
        // even if that ever changed.
        let deadline = prober
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_millis(100));
        tokio::select! {
            msg = sockets.rx.recv() => {
                if let Some((local, from, bytes)) = msg {
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: &bytes,
                    };
                    if !prober.handle_input(Instant::now(), rx) {
                        debug!(%from, "datagram not for the prober dropped");
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                prober.handle_timeout(Instant::now());
            }
            () = &mut stop, if !stopped => {
                stopped = true;
                prober.finish_early();
            }
        }
    }
}
