//! Running a netcheck.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::runner::{Immediate, Run, run_machine};
use super::sockets::Sockets;
use super::{DriverError, os_seed};
use crate::netcheck::{NetcheckConfig, NetcheckEvent, Prober, Report};

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
    let mut report = None;
    let run = Run {
        stop,
        // What was found so far becomes the report.
        on_stop: Prober::finish_early,
        // Immediate: `on_event` may borrow from the caller's task (see `Immediate`).
        on_event: Immediate(|_: &mut Prober, _: &mut Sockets, ev: NetcheckEvent| {
            on_event(&ev);
            match ev {
                NetcheckEvent::Done(r) => {
                    report = Some(*r);
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }),
        // Until done the prober always has a deadline (its overall budget); stay bounded
        // even if that ever changed.
        max_idle: Duration::from_millis(100),
    };
    run_machine(&mut prober, &mut sockets, run).await;
    report.ok_or_else(|| DriverError::Io {
        context: "netcheck".into(),
        source: std::io::Error::other("the sockets closed before the report"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task can run a netcheck whose callback borrows from the task (a compile-time
    /// check: through an `async` closure rustc cannot prove that run `Send`,
    /// rust-lang/rust#139475).
    #[test]
    fn a_task_can_run_netcheck_with_a_borrowing_callback() {
        fn assert_send<T: Send>(_: &T) {}
        let task = async {
            let mut seen = 0;
            let config = NetcheckConfig::new(Vec::new());
            let _ = netcheck(config, |_| seen += 1).await;
        };
        assert_send(&task);
    }
}
