//! The allocation's control task: a configuration of the driver's generic runner
//! ([`run_machine_with`]) around [`Client`], the allocation as one machine with the
//! handle's commands applied to it.
//!
//! The runner owns the socket (or the TCP/TLS stream) and the clock; the task steps in
//! between runs for what a run cannot do: lend the machine to a data plane (the run ends,
//! the machine and the command receiver go to the data plane, and the run resumes when
//! they come back), reconnect a stream to an alternate server after a 300 Try Alternate,
//! and close the stream when the allocation is over.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::super::runner::{Commands, Immediate, Run, run_machine_with};
use super::super::sockets::Sockets;
use super::{Command, Connector, DEALLOCATE_TIMEOUT, Shared, TurnEvent};
use crate::machine::Machine;
use crate::turn::{Allocation, Input, TurnTransport};
use crate::{Protocol, Received, Transmit};

/// When the machine has no timer (it always has one while allocated), the runner wakes
/// it after this long anyway.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// What [`Client`] reports to whoever drives it.
#[derive(Debug)]
pub(super) enum ClientEvent {
    /// For the handle.
    Turn(TurnEvent),
    /// The allocation now lives on this server (a 300 Try Alternate was followed).
    ServerChanged(SocketAddr),
    /// Over TCP or TLS after a 300 Try Alternate: connect to this server (its certificate
    /// checked against the domain when one came with the 300), then
    /// [`Allocation::connected`].
    Reconnect(SocketAddr, Option<String>),
    /// The allocation is over: the last event.
    Done,
}

/// The allocation as the runner drives it: the sans-IO [`Allocation`], the data the
/// handle asked to send (encoded), and the bounded deallocation. No I/O here either.
pub(super) struct Client {
    pub(super) alloc: Allocation,
    /// Data for peers from [`super::TurnHandle::send_to`], encoded.
    out: VecDeque<Transmit>,
    events: VecDeque<ClientEvent>,
    /// Set once deallocating: when to give up (RFC 8656 leaves it to the client; bounded
    /// by [`DEALLOCATE_TIMEOUT`]).
    dealloc_deadline: Option<Instant>,
    /// The server last reported with [`ClientEvent::ServerChanged`].
    published: SocketAddr,
    /// The redirect last reported with [`ClientEvent::Reconnect`] (reported once).
    reconnecting: Option<SocketAddr>,
    /// Over: [`ClientEvent::Done`] was queued.
    done: bool,
    /// How the server is reached.
    proto: Protocol,
}

impl Client {
    pub(super) fn new(alloc: Allocation, transport: TurnTransport) -> Self {
        Self {
            proto: match transport {
                TurnTransport::Udp => Protocol::Udp,
                TurnTransport::Tcp | TurnTransport::Tls => Protocol::Tcp,
            },
            published: alloc.server(),
            alloc,
            out: VecDeque::new(),
            events: VecDeque::new(),
            dealloc_deadline: None,
            reconnecting: None,
            done: false,
        }
    }

    /// Applies a command (`None`: the handle is gone, so deallocate). What the owner must
    /// do beyond the machine comes back as a [`Step`].
    pub(super) fn command(&mut self, cmd: Option<Command>, now: Instant) -> Step {
        match cmd {
            Some(Command::Permission(ip)) => {
                if let Err(e) = self.alloc.create_permission(now, ip) {
                    self.events
                        .push_back(ClientEvent::Turn(TurnEvent::SendFailed(
                            SocketAddr::new(ip, 0),
                            e,
                        )));
                }
            }
            Some(Command::Channel(peer)) => {
                if let Err(e) = self.alloc.bind_channel(now, peer) {
                    self.events
                        .push_back(ClientEvent::Turn(TurnEvent::SendFailed(peer, e)));
                }
            }
            Some(Command::Send(peer, data)) => return Step::Send(peer, data),
            Some(Command::Lend(to)) => return Step::Lend(to),
            Some(Command::Deallocate) | None => {
                if self.dealloc_deadline.is_none() {
                    self.alloc.deallocate(now);
                    self.dealloc_deadline = Some(now + DEALLOCATE_TIMEOUT);
                }
            }
        }
        Step::Nothing
    }

    /// Encodes `data` for `peer` into a datagram to the server (ChannelData when a
    /// channel is bound, else a Send indication), queued as a transmit.
    pub(super) fn send(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut out = vec![0u8; data.len() + 64];
        match self.alloc.encode_to_peer(peer, data, &mut out) {
            Ok(n) => {
                out.truncate(n);
                self.out.push_back(Transmit {
                    proto: self.proto,
                    source: self.alloc.local(),
                    destination: self.alloc.server(),
                    contents: out,
                });
            }
            Err(e) => self
                .events
                .push_back(ClientEvent::Turn(TurnEvent::SendFailed(peer, e))),
        }
    }

    /// Whether it is over (the last event queued).
    pub(super) fn is_done(&self) -> bool {
        self.done
    }
}

impl Machine for Client {
    type Event = ClientEvent;
    /// Whether the allocation took it.
    type Verdict<'a> = bool;

    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> bool {
        // Whatever reaches the allocation's own socket or stream from the server is for
        // the allocation, whichever local address the system reports for it (a wildcard
        // socket's PKTINFO may name another after a 300 to a server on another route).
        let rx = Received {
            destination: self.alloc.local(),
            ..rx
        };
        match self.alloc.handle_input(now, rx) {
            Input::Data { peer, data, .. } => {
                // The allocation's own events first, in order.
                self.drain_allocation();
                self.events.push_back(ClientEvent::Turn(TurnEvent::Data {
                    peer,
                    data: data.to_vec(),
                }));
                true
            }
            Input::Consumed => true,
            Input::NotTurn => false,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if self.dealloc_deadline.is_some_and(|d| now >= d) {
            debug!("deallocation not confirmed in time");
            self.drain_allocation();
            self.events
                .push_back(ClientEvent::Turn(TurnEvent::DeallocateUnconfirmed));
            self.events.push_back(ClientEvent::Done);
            self.done = true;
            return;
        }
        if self.alloc.poll_timeout().is_some_and(|t| now >= t) {
            self.alloc.handle_timeout(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.done {
            return None;
        }
        self.alloc.poll_transmit().or_else(|| self.out.pop_front())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        self.alloc
            .poll_timeout()
            .into_iter()
            .chain(self.dealloc_deadline)
            .min()
    }

    fn poll_event(&mut self) -> Option<ClientEvent> {
        if !self.done {
            self.drain_allocation();
            let server = self.alloc.server();
            if server != self.published {
                self.published = server;
                self.events.push_back(ClientEvent::ServerChanged(server));
            }
            match self.alloc.reconnect_to() {
                Some(to) if self.reconnecting != Some(to) => {
                    self.reconnecting = Some(to);
                    let domain = self.alloc.alternate_domain().map(str::to_owned);
                    self.events.push_back(ClientEvent::Reconnect(to, domain));
                }
                Some(_) => {}
                None => self.reconnecting = None,
            }
            if self.alloc.is_done() {
                self.events.push_back(ClientEvent::Done);
                self.done = true;
            }
        }
        self.events.pop_front()
    }
}

impl Client {
    fn drain_allocation(&mut self) {
        while let Some(ev) = self.alloc.poll_event() {
            self.events
                .push_back(ClientEvent::Turn(TurnEvent::Allocation(ev)));
        }
    }
}

/// What a command asks of the owner beyond the machine.
pub(super) enum Step {
    Nothing,
    /// Encode and send this for the handle.
    Send(SocketAddr, Vec<u8>),
    /// A data plane asks for the machine.
    Lend(oneshot::Sender<Box<Lease>>),
}

/// The machine and everything that drives it: owned by the control task, or lent to a
/// data plane (which then alone reads the socket, handles commands and timers, and sends
/// the machine's transmits) until the data plane is dropped and hands it back.
pub(super) struct Owned {
    pub(super) client: Client,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    /// False once every sender is gone.
    pub(super) commands_open: bool,
    pub(super) events: mpsc::UnboundedSender<TurnEvent>,
    /// A command taken from `commands` but not applied yet (`Some(None)`: the handle is
    /// gone): a data plane waiting for one may be dropped before it applies it.
    pub(super) stashed: Option<Option<Command>>,
    pub(super) shared: Arc<Shared>,
    /// Where a data plane's UDP socket is connected (see [`Sockets::connect`]; the data
    /// plane re-targets it likewise).
    pub(super) target: SocketAddr,
}

impl Owned {
    /// Passes on the machine's events: to the handle, or [`Shared::server`]. Whether the
    /// allocation is over; a reconnection it asks for, if any (only over TCP or TLS).
    pub(super) fn report(&mut self) -> (bool, Option<(SocketAddr, Option<String>)>) {
        let mut reconnect = None;
        while let Some(ev) = self.client.poll_event() {
            match pass_on(&self.events, &self.shared, ev) {
                Handled::Go => {}
                Handled::Reconnect(to, domain) => reconnect = Some((to, domain)),
                Handled::Done => return (true, None),
            }
        }
        (false, reconnect)
    }
}

/// Passes an event on: to the handle, or to [`Shared::server`]; what is left to do.
fn pass_on(events: &mpsc::UnboundedSender<TurnEvent>, shared: &Shared, ev: ClientEvent) -> Handled {
    match ev {
        ClientEvent::Turn(ev) => {
            let _ = events.send(ev);
            Handled::Go
        }
        ClientEvent::ServerChanged(server) => {
            *shared.server.lock().unwrap_or_else(PoisonError::into_inner) = server;
            Handled::Go
        }
        ClientEvent::Reconnect(to, domain) => Handled::Reconnect(to, domain),
        ClientEvent::Done => Handled::Done,
    }
}

enum Handled {
    Go,
    Reconnect(SocketAddr, Option<String>),
    Done,
}

/// The machine lent to a data plane, and where to hand it back. Dropped without handing
/// back (the allocation ended under the data plane), it ends the control task.
pub(super) struct Lease {
    pub(super) owned: Owned,
    pub(super) back: oneshot::Sender<Owned>,
}

/// Why a run of the control task ended.
enum Why {
    /// The allocation is over, or its transport broke (reported).
    Over,
    Lend(oneshot::Sender<Box<Lease>>),
    Reconnect(SocketAddr, Option<String>),
}

/// The control task: runs the machine on the runner until the allocation is over,
/// stepping in between runs to lend it, to reconnect, and at the end.
pub(super) async fn run(mut owned: Owned, mut sockets: Sockets, connector: Connector) {
    loop {
        let mut why = Why::Over;
        if let Some(cmd) = owned.stashed.take() {
            // A command a data plane took but had not applied when it handed back.
            match owned.client.command(cmd, Instant::now()) {
                Step::Nothing => {}
                Step::Send(peer, data) => owned.client.send(peer, &data),
                Step::Lend(to) => why = Why::Lend(to),
            }
        }
        if matches!(why, Why::Over) {
            // Split borrows: the machine and the commands go to the runner, the handlers
            // need the channel to the handle and the shared state.
            let client = &mut owned.client;
            let commands = &mut owned.commands;
            let events = &owned.events;
            let shared = &*owned.shared;
            let run =
                Run {
                    // The handle's Deallocate (sent when it is dropped too) ends it.
                    stop: std::future::pending(),
                    on_stop: |_: &mut Client| {},
                    on_event: Immediate(|_: &mut Client, _: &mut Sockets, ev: ClientEvent| {
                        match pass_on(events, shared, ev) {
                            Handled::Go => ControlFlow::Continue(()),
                            Handled::Reconnect(to, domain) => {
                                why = Why::Reconnect(to, domain);
                                ControlFlow::Break(())
                            }
                            Handled::Done => ControlFlow::Break(()),
                        }
                    }),
                    max_idle: MAX_IDLE,
                };
            let mut lend = None;
            let commands_in = Commands {
                rx: &mut *commands,
                on_command: Immediate(|c: &mut Client, _: &mut Sockets, cmd: Command| {
                    match c.command(Some(cmd), Instant::now()) {
                        Step::Nothing => {}
                        Step::Send(peer, data) => c.send(peer, &data),
                        Step::Lend(to) => {
                            lend = Some(to);
                            return ControlFlow::Break(());
                        }
                    }
                    ControlFlow::Continue(())
                }),
            };
            run_machine_with(client, &mut sockets, run, Some(commands_in)).await;
            if let Some(to) = lend {
                why = Why::Lend(to);
            }
            // The runner stops polling a command input whose senders are all gone; so
            // does a data plane.
            owned.commands_open = !(owned.commands.is_closed() && owned.commands.is_empty());
        }
        match why {
            Why::Over => {
                if let Some(reason) = sockets.broken() {
                    if !owned.client.is_done() {
                        let _ = owned
                            .events
                            .send(TurnEvent::Disconnected(reason.to_owned()));
                    }
                    return;
                }
                // Close a stream cleanly: for TLS this sends close_notify, so the server
                // sees an orderly close rather than a broken connection.
                sockets.close_stream().await;
                return;
            }
            Why::Lend(to) => {
                // The data plane owns the machine (and reads the socket) until it hands
                // it back; it keeps nothing when the allocation ended under it.
                let (back, returned) = oneshot::channel();
                owned = match to.send(Box::new(Lease { owned, back })) {
                    Ok(()) => match returned.await {
                        Ok(owned) => owned,
                        Err(_) => return,
                    },
                    // It was dropped before it got the machine.
                    Err(lease) => lease.owned,
                };
            }
            Why::Reconnect(to, domain) => {
                // A 300 Try Alternate over TCP or TLS: close this connection, open one to
                // the alternate server (RFC 8656 §7.4), bounded by CONNECT_TIMEOUT (twice
                // for TLS).
                debug!(%to, ?domain, "TURN: reconnecting to the alternate server");
                sockets.close_stream().await;
                match connector.connect_stream(to, domain.as_deref()).await {
                    Ok((stream, local)) => {
                        sockets.set_stream(stream, local, to);
                        owned.client.alloc.connected(Instant::now(), local);
                    }
                    Err(e) => {
                        let _ = owned.events.send(TurnEvent::Disconnected(format!(
                            "the TURN server redirected to {to}: {e}"
                        )));
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    //! The control task's machine against the development TURN server on the virtual
    //! network: what the driver used to do with tokio timers now happens on the
    //! machine's clock.

    use std::net::{IpAddr, SocketAddr};

    use super::*;
    use crate::sim::{Conditions, Host, Network, Sim};
    use crate::turn::{
        AllocationConfig, AllocationEvent, Credentials, ServerAction, TurnServer, TurnServerConfig,
    };

    const SERVER: &str = "203.0.113.1:3478";
    const CLIENT: &str = "198.51.100.7:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    struct World {
        now: Instant,
        net: Network,
        server: TurnServer,
        client: Client,
        events: Vec<ClientEvent>,
    }

    impl World {
        fn new() -> Self {
            let now = Instant::now();
            let mut config = TurnServerConfig::new(addr(SERVER), "pinhole.test", 1_700_000_000);
            config
                .credentials
                .users
                .insert("alice".into(), "wonderland".into());
            let creds = Credentials::long_term("alice", "wonderland");
            let alloc = Allocation::new(
                now,
                AllocationConfig::new(addr(SERVER), addr(CLIENT), TurnTransport::Udp, creds),
                [7; 32],
            );
            Self {
                now,
                net: Network::new(
                    3,
                    Conditions {
                        latency: Duration::from_millis(10),
                        ..Conditions::default()
                    },
                ),
                server: TurnServer::new(now, config, [8; 32]),
                client: Client::new(alloc, TurnTransport::Udp),
                events: Vec::new(),
            }
        }

        /// Runs for `d`, the server answering only when `server_up`.
        fn run(&mut self, d: Duration, server_up: bool) {
            let server_ip = addr(SERVER).ip();
            let events = &mut self.events;
            let mut sim = Sim::new(&mut self.net, self.now);
            if server_up {
                sim.add(
                    Host::new(&mut self.server, [server_ip]).on_event(|server, _, action| {
                        if let ServerAction::BindRelay { client, .. } = action {
                            server.relay_bound(client, SocketAddr::new(server_ip, 50_000));
                        }
                    }),
                );
            }
            sim.add(
                Host::new(&mut self.client, [addr(CLIENT).ip()]).on_event(|_, _, e| events.push(e)),
            );
            sim.run_for(d);
            self.now = sim.now();
        }

        fn turn_events(&self) -> Vec<&TurnEvent> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    ClientEvent::Turn(t) => Some(t),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn an_unconfirmed_deallocation_ends_at_its_deadline_on_the_machines_clock() {
        let mut w = World::new();
        w.run(Duration::from_secs(1), true);
        assert!(
            w.turn_events()
                .iter()
                .any(|e| matches!(e, TurnEvent::Allocation(AllocationEvent::Allocated { .. }))),
            "{:?}",
            w.events
        );
        // The server goes silent; the handle asks to deallocate.
        let asked = w.now;
        assert!(matches!(
            w.client.command(Some(Command::Deallocate), asked),
            Step::Nothing
        ));
        assert!(
            w.client
                .poll_timeout()
                .is_some_and(|t| t <= asked + DEALLOCATE_TIMEOUT)
        );
        w.events.clear();
        w.run(DEALLOCATE_TIMEOUT + Duration::from_secs(1), false);
        let n = w.events.len();
        assert!(n >= 2, "{:?}", w.events);
        assert!(
            matches!(
                w.events[n - 2],
                ClientEvent::Turn(TurnEvent::DeallocateUnconfirmed)
            ),
            "{:?}",
            w.events
        );
        assert!(matches!(w.events[n - 1], ClientEvent::Done));
        // Over: nothing more to send, no timer, no event.
        assert!(w.client.is_done());
        assert!(w.client.poll_transmit().is_none());
        assert!(w.client.poll_timeout().is_none());
        assert!(w.client.poll_event().is_none());
    }

    #[test]
    fn a_confirmed_deallocation_is_done_and_handle_sends_go_to_the_server() {
        let mut w = World::new();
        w.run(Duration::from_secs(1), true);
        let peer = SocketAddr::new(IpAddr::from([192, 0, 2, 50]), 9000);
        w.client
            .command(Some(Command::Permission(peer.ip())), w.now);
        w.run(Duration::from_secs(1), true);
        // A handle's send is encoded for the server (a Send indication: no channel).
        w.client.send(peer, b"hello");
        let t = w.client.poll_transmit().expect("the encoded datagram");
        assert_eq!((t.source, t.destination), (addr(CLIENT), addr(SERVER)));
        assert!(t.contents.windows(5).any(|x| x == b"hello"));
        w.client.command(None, w.now);
        w.events.clear();
        w.run(Duration::from_secs(1), true);
        assert!(
            matches!(
                w.events.as_slice(),
                [
                    ClientEvent::Turn(TurnEvent::Allocation(AllocationEvent::Deallocated)),
                    ClientEvent::Done
                ]
            ),
            "{:?}",
            w.events
        );
        assert!(w.client.poll_timeout().is_none());
    }
}
