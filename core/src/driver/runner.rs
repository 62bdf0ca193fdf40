//! One generic runner: any sans-IO [`Machine`] over a set of UDP sockets (and at most one
//! TCP/TLS stream of STUN/TURN messages), with the real clock, and optionally a stream of
//! commands. The STUN server (`serve`), the TURN server (`serve_turn`), netcheck, the port
//! mapper and its probe and deletion, and the TURN client's control task
//! (`turn::control`, over UDP, TCP or TLS) are configurations of it; what differs between
//! them is which sockets, what an event means, what a command does, and what stopping
//! does.
//!
//! Commands are whatever reaches the machine from outside its sockets: a user's request,
//! or the result of side work that a configuration started on an event (the port
//! mapper's UPnP HTTP exchanges run as tasks whose results come back as commands).

use std::convert::Infallible;
use std::future::Future;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::sockets::Sockets;
use crate::machine::Machine;

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

/// The command input of a run: a stream of commands and what each does.
pub(super) struct Commands<R, H> {
    /// The commands, in order (a channel's receiver, or a borrow of one that outlives
    /// the run: the TURN client's, which goes to its data plane between runs). When
    /// every sender is gone the run goes on without them.
    pub(super) rx: R,
    /// Each command, with the machine and the sockets; `Break` ends the run.
    pub(super) on_command: H,
}

/// Where a run's commands come from.
pub(super) trait CommandRx {
    /// What comes.
    type Command;
    /// The next command; `None` once every sender is gone. Cancel-safe.
    fn next(&mut self) -> impl Future<Output = Option<Self::Command>>;
}

impl<C> CommandRx for mpsc::Receiver<C> {
    type Command = C;
    fn next(&mut self) -> impl Future<Output = Option<C>> {
        self.recv()
    }
}

impl<C> CommandRx for mpsc::UnboundedReceiver<C> {
    type Command = C;
    fn next(&mut self) -> impl Future<Output = Option<C>> {
        self.recv()
    }
}

impl<R: CommandRx> CommandRx for &mut R {
    type Command = R::Command;
    fn next(&mut self) -> impl Future<Output = Option<R::Command>> {
        (**self).next()
    }
}

/// What handles an event or a command: an `async` closure
/// (`AsyncFnMut(&mut M, &mut Sockets, T) -> ControlFlow<()>`), or an [`Immediate`] one.
pub(super) trait Handler<M, T> {
    /// Handles `t`; `Break` ends the run.
    fn handle(
        &mut self,
        machine: &mut M,
        sockets: &mut Sockets,
        t: T,
    ) -> impl Future<Output = ControlFlow<()>>;
}

impl<M, T, F> Handler<M, T> for F
where
    F: AsyncFnMut(&mut M, &mut Sockets, T) -> ControlFlow<()>,
{
    fn handle(
        &mut self,
        machine: &mut M,
        sockets: &mut Sockets,
        t: T,
    ) -> impl Future<Output = ControlFlow<()>> {
        self(machine, sockets, t)
    }
}

/// A handler that never waits: a plain closure
/// (`FnMut(&mut M, &mut Sockets, T) -> ControlFlow<()>`). Use it where the closure holds
/// a borrow from outside the configuration (a user's callback, as netcheck's and the port
/// mapper's): rustc cannot prove `Send` the future of a run through an `async` closure
/// that holds one (rust-lang/rust#139475), so a task could not run it.
pub(super) struct Immediate<F>(pub(super) F);

impl<M, T, F> Handler<M, T> for Immediate<F>
where
    F: FnMut(&mut M, &mut Sockets, T) -> ControlFlow<()>,
{
    #[allow(refining_impl_trait)]
    fn handle(
        &mut self,
        machine: &mut M,
        sockets: &mut Sockets,
        t: T,
    ) -> std::future::Ready<ControlFlow<()>> {
        std::future::ready((self.0)(machine, sockets, t))
    }
}

/// The handler of a run without commands (there are none to handle).
struct NoCommands;

impl<M> Handler<M, Infallible> for NoCommands {
    #[allow(refining_impl_trait)]
    fn handle(
        &mut self,
        _: &mut M,
        _: &mut Sockets,
        t: Infallible,
    ) -> std::future::Ready<ControlFlow<()>> {
        match t {}
    }
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
    E: Handler<M, M::Event>,
{
    run_machine_with(
        machine,
        sockets,
        run,
        None::<Commands<mpsc::Receiver<Infallible>, NoCommands>>,
    )
    .await;
}

/// [`run_machine`] with a command input: each command is handed to its handler as it
/// arrives; a handler or `on_event` that breaks ends the run, as does a stream that ends
/// or breaks ([`Sockets::broken`]).
pub(super) async fn run_machine_with<M, S, F, E, R, H>(
    machine: &mut M,
    sockets: &mut Sockets,
    run: Run<S, F, E>,
    commands: Option<Commands<R, H>>,
) where
    M: Machine,
    S: Future<Output = ()>,
    F: FnOnce(&mut M),
    E: Handler<M, M::Event>,
    R: CommandRx,
    H: Handler<M, R::Command>,
{
    let Run {
        stop,
        on_stop,
        mut on_event,
        max_idle,
    } = run;
    tokio::pin!(stop);
    let mut on_stop = Some(on_stop);
    let (mut commands, mut on_command) = match commands {
        Some(c) => (Some(c.rx), Some(c.on_command)),
        None => (None, None),
    };
    loop {
        while let Some(t) = machine.poll_transmit() {
            sockets.send(&t).await;
        }
        if sockets.broken().is_some() {
            return;
        }
        while let Some(ev) = machine.poll_event() {
            if on_event.handle(machine, sockets, ev).await.is_break() {
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
            (_, n) = sockets.recv() => {
                let now = Instant::now();
                for i in 0..n {
                    let Some(rx) = sockets.received(i) else { break };
                    let _ = machine.handle_input(now, rx);
                }
                if sockets.broken().is_some() {
                    // The stream is over: what the machine queued cannot go out.
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                machine.handle_timeout(Instant::now());
            }
            cmd = next_command(commands.as_mut()), if commands.is_some() => match (cmd, on_command.as_mut()) {
                (Some(cmd), Some(handle)) => {
                    if handle.handle(machine, sockets, cmd).await.is_break() {
                        return;
                    }
                }
                // Every sender is gone: no more commands.
                _ => commands = None,
            },
            () = &mut stop, if on_stop.is_some() => {
                if let Some(f) = on_stop.take() {
                    f(machine);
                }
            }
        }
    }
}

/// The next command, `None` when every sender is gone (or there is no input).
async fn next_command<R: CommandRx>(rx: Option<&mut R>) -> Option<R::Command> {
    rx?.next().await
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;

    use super::*;
    use crate::{Protocol, Received, Transmit};

    /// A machine that sends what it is told to and reports what it receives.
    #[derive(Default)]
    struct Echo {
        out: VecDeque<Transmit>,
        events: VecDeque<Vec<u8>>,
        stopped: bool,
    }

    impl Machine for Echo {
        type Event = Vec<u8>;
        type Verdict<'a> = bool;
        fn handle_input<'a>(&mut self, _: Instant, rx: Received<'a>) -> bool {
            self.events.push_back(rx.contents.to_vec());
            true
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.out.pop_front()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_event(&mut self) -> Option<Vec<u8>> {
            self.events.pop_front()
        }
    }

    enum Cmd {
        /// Send these bytes to this address from the runner's socket.
        Send(SocketAddr, Vec<u8>),
        Quit,
    }

    const BOUND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn commands_reach_the_machine_and_the_sockets_and_can_end_the_run() {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut sockets = Sockets::bind(&[]).await.unwrap();
        let local = sockets.add("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Cmd::Send(peer_addr, b"hello".to_vec()))
            .await
            .unwrap();
        let mut echo = Echo::default();
        let mut events = Vec::new();
        let run = Run {
            stop: std::future::pending(),
            on_stop: |_: &mut Echo| {},
            on_event: async |_: &mut Echo, _: &mut Sockets, ev: Vec<u8>| {
                events.push(ev);
                ControlFlow::Continue(())
            },
            max_idle: Duration::from_secs(60),
        };
        let mut handled = 0;
        let commands = Commands {
            rx,
            on_command: async |m: &mut Echo, s: &mut Sockets, cmd: Cmd| {
                handled += 1;
                match cmd {
                    Cmd::Send(to, bytes) => {
                        // The handler has the sockets too (as an event handler has).
                        assert_eq!(s.sockets.len(), 1);
                        m.out.push_back(Transmit {
                            proto: Protocol::Udp,
                            source: local,
                            destination: to,
                            contents: bytes,
                        });
                        ControlFlow::Continue(())
                    }
                    Cmd::Quit => ControlFlow::Break(()),
                }
            },
        };
        let driven = async {
            // The command's datagram arrives; the peer answers; the answer is an event;
            // then Quit ends the run.
            let mut buf = [0u8; 64];
            let (n, from) = peer.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&b"hello"[..], local));
            peer.send_to(b"back", local).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(Cmd::Quit).await.unwrap();
            // The sender lives on: only Quit can have ended the run.
            std::future::pending::<()>().await;
        };
        let run = run_machine_with(&mut echo, &mut sockets, run, Some(commands));
        tokio::time::timeout(BOUND, async {
            tokio::select! {
                () = run => {}
                () = driven => unreachable!(),
            }
        })
        .await
        .expect("the run ended on Quit");
        assert_eq!(handled, 2);
        assert_eq!(events, vec![b"back".to_vec()]);
    }

    #[tokio::test]
    async fn a_closed_command_input_does_not_end_the_run() {
        let mut sockets = Sockets::bind(&["127.0.0.1:0".parse().unwrap()])
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel::<Cmd>(1);
        drop(tx);
        let mut echo = Echo::default();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = Run {
            stop: async {
                let _ = stop_rx.await;
            },
            on_stop: |m: &mut Echo| {
                m.stopped = true;
                m.events.push_back(b"stopped".to_vec());
            },
            on_event: Immediate(|m: &mut Echo, _: &mut Sockets, _: Vec<u8>| {
                if m.stopped {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }),
            max_idle: Duration::from_millis(20),
        };
        let commands = Commands {
            rx,
            on_command: Immediate(|_: &mut Echo, _: &mut Sockets, _: Cmd| {
                panic!("no command was sent")
            }),
        };
        {
            let run = run_machine_with(&mut echo, &mut sockets, run, Some(commands));
            tokio::pin!(run);
            // Idle wake-ups and the closed input come and go; the run goes on...
            assert!(
                tokio::time::timeout(Duration::from_millis(200), &mut run)
                    .await
                    .is_err()
            );
            // ...until it is stopped.
            stop_tx.send(()).unwrap();
            tokio::time::timeout(BOUND, run)
                .await
                .expect("the run ended when stopped");
        }
        assert!(echo.stopped);
    }

    /// A task can run a configuration whose `Immediate` handler borrows from the task
    /// (through an `async` closure rustc cannot prove that future `Send`:
    /// rust-lang/rust#139475). A compile-time check.
    #[test]
    fn a_run_with_borrowing_immediate_handlers_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        async fn configured(seen: &mut Vec<Vec<u8>>) {
            let mut sockets = Sockets::bind(&[]).await.unwrap();
            let (_tx, rx) = mpsc::channel::<Cmd>(1);
            let run = Run {
                stop: std::future::pending(),
                on_stop: |_: &mut Echo| {},
                on_event: Immediate(|_: &mut Echo, _: &mut Sockets, ev: Vec<u8>| {
                    seen.push(ev);
                    ControlFlow::Continue(())
                }),
                max_idle: Duration::from_secs(1),
            };
            let commands = Commands {
                rx,
                on_command: Immediate(|_: &mut Echo, _: &mut Sockets, _: Cmd| {
                    ControlFlow::Continue(())
                }),
            };
            run_machine_with(&mut Echo::default(), &mut sockets, run, Some(commands)).await;
        }
        let task = async {
            let mut seen = Vec::new();
            configured(&mut seen).await;
        };
        assert_send(&task);
    }
}
