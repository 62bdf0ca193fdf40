//! One generic runner: any sans-IO [`Machine`] over a set of UDP sockets, with the real
//! clock. The STUN server (`serve`) and netcheck are configurations of it; what differs
//! between them is which sockets, what an event means, and what stopping does.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::sockets::Sockets;
use crate::machine::Machine;
use crate::{Protocol, Received};

/// How the runner is configured besides the machine and its sockets.
pub(super) struct Run<S, F, E> {
    /// Completes when the caller wants the machine to stop.
    pub(super) stop: S,
    /// What stopping does to the machine (it may then still report, say a partial
    /// report, before `on_event` breaks).
    pub(super) on_stop: F,
    /// Each event, with the sockets (to bind or close one, as the TURN server's relays
    /// need); `Break` ends the run.
    pub(super) on_event: E,
    /// When the machine has no deadline, it is woken after this long anyway (its
    /// `handle_timeout` may be called early), so that no wait is unbounded by mistake.
    pub(super) max_idle: Duration,
}

/// Drives `machine` over `sockets` until `on_event` breaks or every socket is gone.
pub(super) async fn run_machine<M, S, F, E>(
    machine: &mut M,
    sockets: &mut Sockets,
    run: Run<S, F, E>,
) where
    M: Machine,
    S: Future<Output = ()>,
    F: FnOnce(&mut M),
    E: AsyncFnMut(&mut M, &mut Sockets, M::Event) -> ControlFlow<()>,
{
    let Run {
        stop,
        on_stop,
        mut on_event,
        max_idle,
    } = run;
    tokio::pin!(stop);
    let mut on_stop = Some(on_stop);
    loop {
        while let Some(t) = machine.poll_transmit() {
            sockets.send(&t).await;
        }
        while let Some(ev) = machine.poll_event() {
            if on_event(machine, sockets, ev).await.is_break() {
                return;
            }
        }
        // Events may have queued datagrams (a release, a reply): out before waiting.
        if let Some(t) = machine.poll_transmit() {
            sockets.send(&t).await;
            continue;
        }
        let deadline = machine
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + max_idle);
        tokio::select! {
            (local, n) = sockets.recv() => {
                let now = Instant::now();
                for i in 0..n {
                    let Some((from, _, bytes)) = sockets.datagram(i) else { break };
                    let rx = Received {
                        proto: Protocol::Udp,
                        source: from,
                        destination: local,
                        contents: bytes,
                    };
                    let _ = machine.handle_input(now, rx);
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                machine.handle_timeout(Instant::now());
            }
            () = &mut stop, if on_stop.is_some() => {
                if let Some(f) = on_stop.take() {
                    f(machine);
                }
            }
        }
    }
}
