//! A peer connection ([`pinhole::driver::peer::PeerConnection`]) for both foreign APIs:
//! its checked configuration ([`PeerPlan`]), its run on a [`Task`](crate::task::Task)'s
//! thread, and [`PeerControl`], what the handles hold to talk to it.
//!
//! One task owns the connection. The handles' calls become commands on a channel that the
//! task applies between two events; the task reports events and data to a sink, one at a
//! time, in order. What the handles read without asking the task (the local description,
//! the selected pair, whether it is closed) is kept in [`PeerControl`]'s status.
//!
//! A call that needs an answer from the connection ([`PeerControl::restart`],
//! [`PeerControl::network_changed`]) waits for the task; made from the sink (a listener or
//! C callback, on the task's own thread) it is applied at once instead, through the
//! connection the task lends to its thread between two events, so a callback may restart
//! (or do anything else) without deadlocking.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinhole::driver::peer::{Incoming, PeerConnection, PeerConnectionEvent as CoreEvent};
use pinhole::ice::{
    Candidate, CandidateKind, IceCredentials, IceDescription, IceState, PORT_ALLOCATION_ATTRIBUTE,
};
use pinhole::peer::{PeerConfig, TurnServerSpec};
use pinhole::stun::StunUri;
use pinhole::turn::{Credentials, TurnTransport, TurnUri};
use tokio::sync::mpsc;

use super::{MAX_SERVERS, MAX_URI_LEN};
use crate::error::PinholeError;
use crate::task::{Rendezvous, StopSignal};
use crate::types::{
    IceConnectionState, KeepalivePolicy, MAX_KEEPALIVE_INTERVAL_MS, MIN_KEEPALIVE_INTERVAL_MS,
    PeerConnectionConfig, PeerConnectionEvent, RelayPolicy, SelectedPair, parse_socket_addr,
};

/// The largest datagram one send carries (what fits a UDP datagram, through a relay too);
/// the C API's `PINHOLE_PEER_DATA_MAX`.
pub(crate) const MAX_PEER_DATA: usize = crate::capi::PINHOLE_PEER_DATA_MAX;
/// Datagrams handed to `send` that may wait for the connection's thread; more are refused
/// until it catches up.
pub(crate) const MAX_QUEUED_SENDS: usize = 1024;
/// How long a server's name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call that needs the connection's answer waits for its thread (which may be
/// inside a slow callback).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest TURN user name accepted, bytes (RFC 8489 §14.3: less than 513).
const MAX_USERNAME_LEN: usize = 512;
/// The longest TURN password accepted, bytes.
const MAX_PASSWORD_LEN: usize = 4096;

/// A TURN server whose URI was checked (resolved when the connection starts).
#[derive(Debug, Clone)]
struct TurnEntry {
    uri: TurnUri,
    username: String,
    password: String,
}

/// A peer connection whose configuration was checked.
#[derive(Debug, Clone)]
pub(crate) struct PeerPlan {
    stun: Vec<StunUri>,
    turn: Vec<TurnEntry>,
    controlling: bool,
    port_mapping: bool,
    policy: RelayPolicy,
    bind: SocketAddr,
    lite: bool,
    no_network_monitor: bool,
    keepalive: KeepalivePolicy,
    /// A fixed background keepalive interval; None: adaptive.
    keepalive_interval: Option<Duration>,
}

impl PeerPlan {
    /// Checks a configuration (syntax only: names are resolved when the connection
    /// starts).
    pub(crate) fn new(c: &PeerConnectionConfig) -> Result<Self, PinholeError> {
        if c.stun_servers.len() + c.turn_servers.len() > MAX_SERVERS {
            return Err(PinholeError::invalid(format!(
                "more than {MAX_SERVERS} STUN and TURN servers"
            )));
        }
        let mut stun = Vec::new();
        for s in &c.stun_servers {
            let s = s.trim();
            let uri = if s.starts_with("stun:") || s.starts_with("stuns:") {
                s.to_owned()
            } else {
                format!("stun:{s}")
            };
            super::check_stun_uri("stun_servers", &uri)?;
            stun.push(
                uri.parse::<StunUri>()
                    .map_err(|e| PinholeError::invalid(format!("{s}: {e}")))?,
            );
        }
        let mut turn = Vec::new();
        for t in &c.turn_servers {
            if t.uri.len() > MAX_URI_LEN {
                return Err(PinholeError::invalid(format!(
                    "a TURN URI is longer than {MAX_URI_LEN} bytes"
                )));
            }
            let uri: TurnUri = t
                .uri
                .parse()
                .map_err(|e| PinholeError::invalid(format!("{}: {e}", t.uri)))?;
            if uri.transport == TurnTransport::Tls && !cfg!(feature = "tls") {
                return Err(PinholeError::Unsupported(format!(
                    "{}: turns: (TLS) needs pinhole-ffi built with the `tls` feature",
                    t.uri
                )));
            }
            if t.username.is_empty() || t.username.len() > MAX_USERNAME_LEN {
                return Err(PinholeError::invalid(format!(
                    "a TURN user name must have 1 to {MAX_USERNAME_LEN} bytes"
                )));
            }
            if t.password.is_empty() || t.password.len() > MAX_PASSWORD_LEN {
                return Err(PinholeError::invalid(format!(
                    "a TURN password must have 1 to {MAX_PASSWORD_LEN} bytes"
                )));
            }
            turn.push(TurnEntry {
                uri,
                username: t.username.clone(),
                password: t.password.clone(),
            });
        }
        if c.relay_policy == RelayPolicy::RelayOnly && turn.is_empty() {
            return Err(PinholeError::invalid(
                "relay_policy RelayOnly needs a TURN server",
            ));
        }
        let bind = match c.bind.as_deref() {
            Some(b) => parse_socket_addr("bind", b)?,
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let keepalive_interval = match c.keepalive_interval_ms {
            0 => None,
            ms @ MIN_KEEPALIVE_INTERVAL_MS..=MAX_KEEPALIVE_INTERVAL_MS => {
                Some(Duration::from_millis(u64::from(ms)))
            }
            ms => {
                return Err(PinholeError::invalid(format!(
                    "keepalive_interval_ms {ms}: 0 (adaptive) or \
                     {MIN_KEEPALIVE_INTERVAL_MS} to {MAX_KEEPALIVE_INTERVAL_MS}"
                )));
            }
        };
        Ok(PeerPlan {
            stun,
            turn,
            controlling: c.controlling,
            port_mapping: c.port_mapping,
            policy: c.relay_policy,
            bind,
            lite: c.lite,
            no_network_monitor: c.no_network_monitor,
            keepalive: c.keepalive_policy.unwrap_or_default(),
            keepalive_interval,
        })
    }

    /// Resolves the servers into the core's configuration.
    async fn config(&self) -> Result<PeerConfig, PinholeError> {
        // The families the socket can reach: its own, or both for `[::]`.
        let dual = self.bind.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        let usable = |a: &SocketAddr| dual || a.is_ipv4() == self.bind.is_ipv4();
        let resolve = async |host: &str, port: u16| -> Result<SocketAddr, PinholeError> {
            let found =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                    .map_err(|_| PinholeError::NoServer(format!("resolving {host}: timed out")))?
                    .map_err(|e| PinholeError::NoServer(format!("resolving {host}: {e}")))?;
            let all: Vec<SocketAddr> = found.collect();
            all.iter().copied().find(|a| usable(a)).ok_or_else(|| {
                PinholeError::NoServer(format!("{host}: no address of the family of {}", self.bind))
            })
        };
        let mut config = PeerConfig::default();
        for s in &self.stun {
            match resolve(&s.host, s.port).await {
                Ok(a) => config.stun_servers.push(a),
                Err(e) => tracing::warn!(error = %e, "a STUN server was left out"),
            }
        }
        if self.policy != RelayPolicy::NoRelay {
            for t in &self.turn {
                let server = match resolve(&t.uri.host, t.uri.port).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "a TURN server was left out");
                        continue;
                    }
                };
                let mut spec =
                    TurnServerSpec::new(server, Credentials::long_term(&t.username, &t.password));
                if t.uri.transport != TurnTransport::Udp {
                    spec = spec.over(t.uri.transport, Some(t.uri.host.clone()));
                }
                config.turn_servers.push(spec);
            }
        }
        if self.policy == RelayPolicy::RelayOnly && config.turn_servers.is_empty() {
            return Err(PinholeError::NoServer(
                "relay only, and no TURN server could be resolved".into(),
            ));
        }
        config.relay_only = self.policy == RelayPolicy::RelayOnly;
        config.no_relay = self.policy == RelayPolicy::NoRelay;
        config.port_mapping = self.port_mapping;
        config.ice.lite = self.lite;
        config.no_network_monitor = self.no_network_monitor;
        config.keepalive = self.keepalive.into();
        config.ice.keepalive_interval = self.keepalive_interval;
        Ok(config)
    }

    /// Starts the connection and runs it until `stop` fires, the handle's commands are
    /// gone, or the connection ends by itself. `on_started` hears once whether it started
    /// (then, after `ready` if given, the events begin); the events go to `sink`, the last
    /// being `StateChanged(Closed)` and `Closed`.
    pub(crate) async fn run(
        self,
        stop: StopSignal,
        control: Arc<PeerControl>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        on_started: impl FnOnce(Result<(), PinholeError>),
        ready: Option<tokio::sync::oneshot::Receiver<()>>,
        mut sink: impl FnMut(PeerConnectionEvent),
    ) {
        let mut stop = stop;
        let started = tokio::select! {
            r = async {
                let config = self.config().await?;
                PeerConnection::start(config, self.bind, self.controlling)
                    .await
                    .map_err(PinholeError::from)
            } => r,
            () = stop.wait() => Err(PinholeError::Cancelled),
        };
        let pc = match started {
            Ok(pc) => pc,
            Err(e) => {
                control.status().closed = true;
                on_started(Err(e));
                return;
            }
        };
        {
            let mut s = control.status();
            s.credentials = Some(pc.local_credentials().clone());
            s.pacing_ms = pc.pacing_ms();
            s.lite = self.lite;
            s.keepalive = self.keepalive;
        }
        on_started(Ok(()));
        if let Some(ready) = ready {
            if ready.await.is_err() {
                control.status().closed = true;
                pc.close().await;
                return;
            }
        }
        let mut ctx = Ctx {
            pc,
            remote: None,
            pending: Vec::new(),
            control: control.clone(),
            state: IceState::New,
            nominated: false,
            completed: false,
        };
        // Where the context is lent to this thread's calls while the sink runs.
        let cell: Lent = Rc::new(RefCell::new(None));
        CURRENT.with(|c| *c.borrow_mut() = Some((control.id, cell.clone())));
        enum Step {
            Stop,
            Command(Option<Command>),
            Incoming(Option<Incoming>),
        }
        let error = loop {
            let step = tokio::select! {
                () = stop.wait() => Step::Stop,
                cmd = commands.recv() => Step::Command(cmd),
                inc = ctx.pc.next() => Step::Incoming(inc),
            };
            let mut events = Vec::new();
            match step {
                Step::Stop | Step::Command(None) => break None,
                Step::Command(Some(Command::Send(data))) => {
                    control.queued_sends.fetch_sub(1, Ordering::Relaxed);
                    ctx.pc.send(&data).await;
                }
                Step::Command(Some(Command::Call(f))) => f(&mut ctx),
                Step::Command(Some(Command::NetworkChanged(answer))) => {
                    answer.put(ctx.network_changed().await);
                }
                Step::Incoming(None) => break Some("the connection's task ended".to_owned()),
                Step::Incoming(Some(Incoming::Data(data))) => {
                    events.push(PeerConnectionEvent::Data { data });
                }
                Step::Incoming(Some(Incoming::Event(ev))) => events = ctx.on_event(*ev),
            }
            // With what the commands produced; then what calls made from the sink did.
            events.append(&mut ctx.pending);
            while !events.is_empty() {
                ctx = match lend(&cell, ctx, || {
                    for e in events.drain(..) {
                        sink(e);
                    }
                }) {
                    Some(c) => c,
                    None => {
                        // A bug took the context: end without it.
                        CURRENT.with(|c| *c.borrow_mut() = None);
                        control.status().closed = true;
                        return;
                    }
                };
                events.append(&mut ctx.pending);
            }
        };
        CURRENT.with(|c| *c.borrow_mut() = None);
        control.status().closed = true;
        // Calls still queued get no answer (their senders drop): they fail.
        drop(commands);
        // Deletes a port mapping of the socket (bounded).
        ctx.pc.close().await;
        sink(PeerConnectionEvent::StateChanged {
            state: IceConnectionState::Closed,
        });
        sink(PeerConnectionEvent::Closed { error });
    }
}

/// Lends `ctx` to this thread's calls while `f` runs; gives it back (always, unless a bug
/// took it).
fn lend(cell: &RefCell<Option<Ctx>>, ctx: Ctx, f: impl FnOnce()) -> Option<Ctx> {
    *cell.borrow_mut() = Some(ctx);
    f();
    cell.borrow_mut().take()
}

/// What the connection's task holds, lent to its own thread's calls between events.
pub(crate) struct Ctx {
    pc: PeerConnection,
    /// The peer's credentials of the current session, once known.
    remote: Option<IceCredentials>,
    /// Events produced by a call, reported after it.
    pending: Vec<PeerConnectionEvent>,
    control: Arc<PeerControl>,
    state: IceState,
    /// The selected pair is nominated.
    nominated: bool,
    /// `Completed` was reported for this state.
    completed: bool,
}

/// Where a connection's task lends its context to calls made on its thread.
type Lent = Rc<RefCell<Option<Ctx>>>;

thread_local! {
    /// On a connection's task thread: its id and its context.
    static CURRENT: RefCell<Option<(u64, Lent)>> = const { RefCell::new(None) };
}

impl Ctx {
    /// A core event: the status updated, the events for the sink.
    fn on_event(&mut self, ev: CoreEvent) -> Vec<PeerConnectionEvent> {
        let mut out = Vec::new();
        match ev {
            CoreEvent::Candidate(c) => {
                let text = c.to_string();
                self.control.status().candidates.push(text.clone());
                out.push(PeerConnectionEvent::LocalCandidate { candidate: text });
            }
            CoreEvent::GatheringComplete => {
                let allocation = self.pc.port_allocation().and_then(|a| a.to_attribute());
                let mut s = self.control.status();
                s.gathering_done = true;
                s.port_allocation = allocation;
                out.push(PeerConnectionEvent::GatheringComplete);
            }
            CoreEvent::State(state) => {
                self.state = state;
                if state != IceState::Connected {
                    self.completed = false;
                }
                let mapped = match state {
                    IceState::New => IceConnectionState::New,
                    IceState::Checking => IceConnectionState::Checking,
                    IceState::Connected => IceConnectionState::Connected,
                    IceState::Disconnected => IceConnectionState::Disconnected,
                    IceState::Failed => IceConnectionState::Failed,
                    // IceState is non-exhaustive: a state added later reads as checking.
                    _ => IceConnectionState::Checking,
                };
                out.push(PeerConnectionEvent::StateChanged { state: mapped });
            }
            CoreEvent::SelectedPair {
                local,
                remote,
                nominated,
                rtt,
            } => {
                let pair = SelectedPair {
                    local: address(&local),
                    remote: address(&remote),
                    relayed: local.kind == CandidateKind::Relayed
                        || remote.kind == CandidateKind::Relayed,
                };
                self.nominated = nominated;
                self.control.status().selected = Some(pair.clone());
                out.push(PeerConnectionEvent::SelectedPair {
                    local: pair.local,
                    remote: pair.remote,
                    relayed: pair.relayed,
                    rtt_ms: rtt.map(|r| u32::try_from(r.as_millis()).unwrap_or(u32::MAX)),
                });
            }
            CoreEvent::RelayFailed(reason) => {
                out.push(PeerConnectionEvent::RelayFailed { reason });
            }
            CoreEvent::CandidateUnresolved(name) => {
                out.push(PeerConnectionEvent::CandidateUnresolved { name });
            }
            CoreEvent::NetworkChanged { credentials } => {
                // The built-in monitor restarted ICE on the new network already: the
                // status follows as after `restart`, and the new description must reach
                // the peer (RFC 8445 §9).
                tracing::debug!("the network changed: ICE restarted");
                let local_description = self.restarted(credentials);
                out.push(PeerConnectionEvent::NetworkChanged { local_description });
            }
            // Variants the driver may add later: not for the foreign APIs yet.
            _ => {}
        }
        if self.state == IceState::Connected && self.nominated && !self.completed {
            self.completed = true;
            out.push(PeerConnectionEvent::StateChanged {
                state: IceConnectionState::Completed,
            });
        }
        out
    }

    /// An ICE restart of this side: new credentials, the peer's forgotten.
    fn restart(&mut self) -> String {
        let creds = self.pc.restart();
        self.restarted(creds)
    }

    /// The host's network changed: the bases found again and ICE restarted on them
    /// ([`PeerConnection::network_changed`]); the new local description.
    async fn network_changed(&mut self) -> Result<String, PinholeError> {
        let creds = self.pc.network_changed().await?;
        Ok(self.restarted(creds))
    }

    /// This side restarted with `creds` (a restart, a network change): the peer's
    /// credentials forgotten, the status of a new session; its local description.
    fn restarted(&mut self, creds: IceCredentials) -> String {
        self.remote = None;
        self.nominated = false;
        self.completed = false;
        let mut s = self.control.status();
        s.credentials = Some(creds);
        s.candidates.clear();
        s.gathering_done = false;
        s.port_allocation = None;
        s.description()
    }

    /// The peer's description (or more of it).
    fn apply_remote(&mut self, d: IceDescription) {
        let renomination = d.renomination();
        let creds = IceCredentials {
            ufrag: d.ufrag,
            pwd: d.pwd,
        };
        if self.remote.as_ref().is_some_and(|r| *r != creds) {
            // RFC 8445 §9: the peer restarted; this side restarts too, and the new
            // description must reach the peer.
            tracing::debug!("the peer restarted ICE: restarting");
            let local_description = self.restart();
            self.pending
                .push(PeerConnectionEvent::RemoteRestarted { local_description });
        }
        if self.remote.as_ref() != Some(&creds) {
            self.pc.set_remote_credentials(creds.clone());
            self.remote = Some(creds);
        }
        if d.lite {
            self.pc.set_remote_lite(true);
        }
        // Without `renomination` the peer is nominated once (RFC 8445 §8.1.1).
        self.pc.set_remote_renomination(renomination);
        if let Some(ms) = d.pacing_ms {
            self.pc.set_remote_pacing(ms);
        }
        if let Some(a) = d.port_allocation {
            self.pc.set_remote_port_allocation(a);
        }
        for c in d.candidates {
            self.pc.add_remote_candidate(c);
        }
        if d.end_of_candidates {
            self.pc.end_of_remote_candidates();
        }
    }
}

/// A candidate's address as `IP:port` (a name, for an mDNS one).
fn address(c: &Candidate) -> String {
    c.socket_addr()
        .map_or_else(|| format!("{}:{}", c.address, c.port), |a| a.to_string())
}

/// A command for the connection's task.
pub(crate) enum Command {
    /// A datagram for the peer.
    Send(Vec<u8>),
    /// Something to do with the connection, on its thread.
    Call(Box<dyn FnOnce(&mut Ctx) + Send>),
    /// [`Ctx::network_changed`] (which waits), its answer for the caller.
    NetworkChanged(Arc<Rendezvous<Result<String, PinholeError>>>),
}

/// What the handles read without asking the task.
#[derive(Debug, Default)]
pub(crate) struct PeerStatus {
    credentials: Option<IceCredentials>,
    pacing_ms: u32,
    lite: bool,
    /// The local candidates of this session so far, `candidate:...`.
    candidates: Vec<String>,
    gathering_done: bool,
    /// `a=x-pinhole-port-allocation`'s value, once gathering is done.
    port_allocation: Option<String>,
    selected: Option<SelectedPair>,
    /// The keepalive policy last set (applied in order with the other calls).
    keepalive: KeepalivePolicy,
    closed: bool,
}

impl PeerStatus {
    /// The local description: RFC 8839 attribute lines, CRLF-terminated.
    fn description(&self) -> String {
        let Some(c) = &self.credentials else {
            return String::new();
        };
        let mut d = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=ice-options:trickle {}\r\na=ice-pacing:{}\r\n",
            c.ufrag,
            c.pwd,
            pinhole::ice::RENOMINATION,
            self.pacing_ms
        );
        if self.lite {
            d.push_str("a=ice-lite\r\n");
        }
        for c in &self.candidates {
            d.push_str("a=");
            d.push_str(c);
            d.push_str("\r\n");
        }
        if self.gathering_done {
            if let Some(a) = &self.port_allocation {
                d.push_str(&format!("a={}:{a}\r\n", PORT_ALLOCATION_ATTRIBUTE));
            }
            d.push_str("a=end-of-candidates\r\n");
        }
        d
    }
}

/// A connection's handle side: its commands and its status. Shared by the UniFFI object
/// and the C handle.
#[derive(Debug)]
pub(crate) struct PeerControl {
    id: u64,
    commands: mpsc::UnboundedSender<Command>,
    status: Mutex<PeerStatus>,
    queued_sends: AtomicUsize,
}

fn closed_error() -> PinholeError {
    PinholeError::NotAvailable("the peer connection is closed".into())
}

impl PeerControl {
    /// A control and the commands' receiver for [`PeerPlan::run`].
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Command>) {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let (commands, rx) = mpsc::unbounded_channel();
        (
            Arc::new(PeerControl {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                commands,
                status: Mutex::new(PeerStatus::default()),
                queued_sends: AtomicUsize::new(0),
            }),
            rx,
        )
    }

    fn status(&self) -> std::sync::MutexGuard<'_, PeerStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the connection has ended (or never started).
    pub(crate) fn is_closed(&self) -> bool {
        self.status().closed
    }

    /// The local description: `a=ice-ufrag`, `a=ice-pwd`, `a=ice-options:trickle renomination`,
    /// `a=ice-pacing`, `a=ice-lite` when lite, the candidates gathered so far, and once
    /// gathering is over `a=end-of-candidates`; CRLF-terminated lines.
    pub(crate) fn local_description(&self) -> String {
        self.status().description()
    }

    /// The pair data goes on, if any.
    pub(crate) fn selected_pair(&self) -> Option<SelectedPair> {
        self.status().selected.clone()
    }

    /// Runs `f` on the connection: at once when called on its own thread (from the sink),
    /// else on its thread, waiting for the answer (bounded).
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Ctx) -> T + Send + 'static,
    ) -> Result<T, PinholeError> {
        if self.is_closed() {
            return Err(closed_error());
        }
        if let Some(cell) = self.here() {
            let mut lent = cell
                .try_borrow_mut()
                .map_err(|_| PinholeError::Internal("the connection is busy".into()))?;
            let ctx = lent
                .as_mut()
                .ok_or_else(|| PinholeError::Internal("the connection is busy".into()))?;
            return Ok(f(ctx));
        }
        // A condition variable, not a channel: the caller may be a C program's main
        // thread, which a channel's wait would give a handle never freed.
        let answer = Arc::new(Rendezvous::<T>::default());
        let answer2 = answer.clone();
        self.commands
            .send(Command::Call(Box::new(move |ctx| answer2.put(f(ctx)))))
            .map_err(|_| closed_error())?;
        Self::wait(answer)
    }

    /// The context the connection's task lends to this thread, when this is the task's
    /// thread (a call from the sink).
    fn here(&self) -> Option<Lent> {
        CURRENT.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(id, _)| *id == self.id)
                .map(|(_, ctx)| ctx.clone())
        })
    }

    /// Waits (bounded) for the task's answer to a command that holds the other reference
    /// to `answer`.
    fn wait<T>(answer: Arc<Rendezvous<T>>) -> Result<T, PinholeError> {
        let deadline = std::time::Instant::now() + CALL_TIMEOUT;
        loop {
            if let Some(v) = answer.take_timeout(Duration::from_millis(50)) {
                return Ok(v);
            }
            // The task ended without applying it (the command was dropped).
            if Arc::strong_count(&answer) == 1 {
                return Err(closed_error());
            }
            if std::time::Instant::now() >= deadline {
                return Err(PinholeError::TimedOut(
                    "the connection's thread did not answer (a callback blocks it?)".into(),
                ));
            }
        }
    }

    /// Queues `f` for the connection's thread without waiting (in order with the other
    /// commands).
    fn post(&self, f: impl FnOnce(&mut Ctx) + Send + 'static) -> Result<(), PinholeError> {
        if self.is_closed() {
            return Err(closed_error());
        }
        self.commands
            .send(Command::Call(Box::new(f)))
            .map_err(|_| closed_error())
    }

    /// The peer's description: RFC 8839 attribute lines or a whole SDP. A new
    /// `a=ice-ufrag` (after one was known) means the peer restarted: this side restarts
    /// too and reports `RemoteRestarted` with its new description. Returns once checked;
    /// applied in order with the other calls.
    pub(crate) fn set_remote_description(&self, text: &str) -> Result<(), PinholeError> {
        let parsed = IceDescription::parse(text)
            .map_err(|e| PinholeError::invalid(format!("remote description: {e}")))?;
        for (line, e) in &parsed.skipped {
            tracing::debug!(%line, error = %e, "a candidate of the peer's was skipped");
        }
        let d = parsed.description;
        self.post(move |ctx| ctx.apply_remote(d))
    }

    /// A trickled candidate of the peer's: `candidate:...` or `a=candidate:...`.
    pub(crate) fn add_remote_candidate(&self, text: &str) -> Result<(), PinholeError> {
        let c = Candidate::parse(text)
            .map_err(|e| PinholeError::invalid(format!("remote candidate: {e}")))?;
        self.post(move |ctx| ctx.pc.add_remote_candidate(c))
    }

    /// The peer's `a=end-of-candidates`.
    pub(crate) fn end_of_remote_candidates(&self) -> Result<(), PinholeError> {
        self.post(|ctx| ctx.pc.end_of_remote_candidates())
    }

    /// Queues a datagram for the peer, returning at once. Errors: `InvalidArgument` (over
    /// [`MAX_PEER_DATA`]), `NotAvailable` (closed, no pair selected yet, or
    /// [`MAX_QUEUED_SENDS`] datagrams already waiting for the connection's thread).
    pub(crate) fn send(&self, data: Vec<u8>) -> Result<(), PinholeError> {
        if data.len() > MAX_PEER_DATA {
            return Err(PinholeError::invalid(format!(
                "a datagram of {} bytes: at most {MAX_PEER_DATA}",
                data.len()
            )));
        }
        {
            let s = self.status();
            if s.closed {
                return Err(closed_error());
            }
            if s.selected.is_none() {
                return Err(PinholeError::NotAvailable(
                    "no path to the peer yet (wait for SelectedPair)".into(),
                ));
            }
        }
        if self.queued_sends.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_SENDS {
            self.queued_sends.fetch_sub(1, Ordering::Relaxed);
            return Err(PinholeError::NotAvailable(format!(
                "{MAX_QUEUED_SENDS} datagrams are waiting to be sent: try again later"
            )));
        }
        self.commands.send(Command::Send(data)).map_err(|_| {
            self.queued_sends.fetch_sub(1, Ordering::Relaxed);
            closed_error()
        })
    }

    /// An ICE restart (RFC 8445 §9): returns the new local description to signal (its
    /// candidates follow as `LocalCandidate` events). The current path carries data until
    /// a new pair is selected.
    pub(crate) fn restart(&self) -> Result<String, PinholeError> {
        self.call(Ctx::restart)
    }

    /// The host's network changed (for hosts with a monitor of their own): the socket's
    /// addresses are found again and ICE restarts on them (RFC 8445 §9), even when they
    /// look the same; returns the new local description to signal (its candidates follow
    /// as `LocalCandidate` events). The current path carries data until a new pair is
    /// selected.
    ///
    /// From the sink (a listener or a callback) it is applied at once: finding the
    /// addresses asks the routing table, which answers without waiting; should it ever
    /// have to wait there, the call fails with `Internal` and ICE does not restart.
    pub(crate) fn network_changed(&self) -> Result<String, PinholeError> {
        if self.is_closed() {
            return Err(closed_error());
        }
        if let Some(cell) = self.here() {
            let mut lent = cell
                .try_borrow_mut()
                .map_err(|_| PinholeError::Internal("the connection is busy".into()))?;
            let ctx = lent
                .as_mut()
                .ok_or_else(|| PinholeError::Internal("the connection is busy".into()))?;
            // The task's thread is inside this call: nothing could wake a future that
            // waits, so it is polled once.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let fut = std::pin::pin!(ctx.network_changed());
            return match fut.poll(&mut cx) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => Err(PinholeError::Internal(
                    "the network's addresses could not be read at once".into(),
                )),
            };
        }
        let answer = Arc::new(Rendezvous::default());
        self.commands
            .send(Command::NetworkChanged(answer.clone()))
            .map_err(|_| closed_error())?;
        Self::wait(answer)?
    }

    /// Sets the keepalive policy (see [`KeepalivePolicy`]), returning at once: applied on
    /// the connection's thread in order with the other calls; [`PeerControl::keepalive_policy`]
    /// says it at once. Errors: `NotAvailable` (closed).
    pub(crate) fn set_keepalive_policy(&self, policy: KeepalivePolicy) -> Result<(), PinholeError> {
        // Under the status lock, so that the status and the order of the commands agree
        // when several threads set it at once.
        let mut s = self.status();
        if s.closed {
            return Err(closed_error());
        }
        self.commands
            .send(Command::Call(Box::new(move |ctx| {
                ctx.pc.set_keepalive_policy(policy.into());
            })))
            .map_err(|_| closed_error())?;
        s.keepalive = policy;
        Ok(())
    }

    /// The keepalive policy last set (the config's until then).
    pub(crate) fn keepalive_policy(&self) -> KeepalivePolicy {
        self.status().keepalive
    }

    /// The background keepalive interval as it stands (it adapts to the path's NATs, or
    /// is the config's fixed one), milliseconds. Waits for the connection's thread (at once
    /// from the sink). Errors: `NotAvailable` (closed), `TimedOut`.
    pub(crate) fn keepalive_interval_ms(&self) -> Result<u32, PinholeError> {
        self.call(|ctx| u32::try_from(ctx.pc.keepalive_interval().as_millis()).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn config(no_network_monitor: bool) -> PeerConnectionConfig {
        PeerConnectionConfig {
            stun_servers: vec![],
            turn_servers: vec![],
            controlling: true,
            port_mapping: false,
            relay_policy: RelayPolicy::All,
            bind: Some("127.0.0.1:0".into()),
            lite: false,
            no_network_monitor,
            keepalive_policy: None,
            keepalive_interval_ms: 0,
        }
    }

    /// `no_network_monitor` reaches the core's configuration, both ways.
    #[test]
    fn no_network_monitor_reaches_the_core_config() {
        runtime().block_on(async {
            for off in [false, true] {
                let plan = PeerPlan::new(&config(off)).unwrap();
                assert_eq!(plan.config().await.unwrap().no_network_monitor, off);
            }
        });
    }

    /// The keepalive policy and the fixed interval reach the core's configuration (the
    /// policy's default: the foreground; the interval's: adaptive); an interval out of
    /// range is refused.
    #[test]
    fn keepalive_settings_reach_the_core_config() {
        use pinhole::ice::KeepalivePolicy as Core;
        runtime().block_on(async {
            let plan = PeerPlan::new(&config(false)).unwrap();
            let c = plan.config().await.unwrap();
            assert_eq!(
                (c.keepalive, c.ice.keepalive_interval),
                (Core::Foreground, None)
            );
            for (p, want) in [
                (KeepalivePolicy::Foreground, Core::Foreground),
                (KeepalivePolicy::Background, Core::Background),
                (KeepalivePolicy::Suspended, Core::Suspended),
            ] {
                for ms in [1_000, 15_000, 3_600_000] {
                    let plan = PeerPlan::new(&PeerConnectionConfig {
                        keepalive_policy: Some(p),
                        keepalive_interval_ms: ms,
                        ..config(false)
                    })
                    .unwrap();
                    let c = plan.config().await.unwrap();
                    assert_eq!(c.keepalive, want);
                    assert_eq!(
                        c.ice.keepalive_interval,
                        Some(Duration::from_millis(u64::from(ms)))
                    );
                }
            }
        });
        for ms in [1, 999, 3_600_001, u32::MAX] {
            let e = PeerPlan::new(&PeerConnectionConfig {
                keepalive_interval_ms: ms,
                ..config(false)
            })
            .unwrap_err();
            assert!(matches!(e, PinholeError::InvalidArgument(_)), "{ms}: {e:?}");
        }
    }

    /// The built-in monitor's `NetworkChanged` (the core restarted already): reported as
    /// `NetworkChanged` with the new description, credentials only (the old session's
    /// candidates and end of candidates gone), the peer's credentials forgotten (its
    /// answer is no second restart); the new session's candidates then fill it. (On
    /// loopback the monitor does not run, so the event is fed in here.)
    #[test]
    fn the_monitors_network_change_is_reported_with_the_new_description() {
        runtime().block_on(async {
            let bind = SocketAddr::from(([127, 0, 0, 1], 0));
            let pc = PeerConnection::start(PeerConfig::default(), bind, true)
                .await
                .unwrap();
            let (control, _commands) = PeerControl::new();
            {
                let mut s = control.status();
                s.credentials = Some(pc.local_credentials().clone());
                s.candidates
                    .push("candidate:1 1 udp 2130706431 127.0.0.1 9 typ host".into());
                s.gathering_done = true;
            }
            let peer = IceCredentials {
                ufrag: "peer".into(),
                pwd: "0123456789012345678901".into(),
            };
            let mut ctx = Ctx {
                pc,
                remote: Some(peer.clone()),
                pending: Vec::new(),
                control: control.clone(),
                state: IceState::Connected,
                nominated: true,
                completed: true,
            };
            let old = control.local_description();
            assert!(old.contains("a=candidate:") && old.contains("a=end-of-candidates"));
            let credentials = IceCredentials {
                ufrag: "newu".into(),
                pwd: "abcdefghijklmnopqrstuv".into(),
            };
            let out = ctx.on_event(CoreEvent::NetworkChanged { credentials });
            let desc = control.local_description();
            assert_eq!(
                out,
                vec![PeerConnectionEvent::NetworkChanged {
                    local_description: desc.clone()
                }]
            );
            assert!(
                desc.starts_with("a=ice-ufrag:newu\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\n"),
                "{desc}"
            );
            assert!(!desc.contains("a=candidate:") && !desc.contains("a=end-of-candidates"));
            assert!(ctx.remote.is_none() && !ctx.nominated && !ctx.completed);
            // The peer's answer (its own restart) is no restart of this side's.
            ctx.apply_remote(IceDescription {
                ufrag: "peer2".into(),
                pwd: "0123456789012345678902".into(),
                ..IceDescription::default()
            });
            assert!(ctx.pending.is_empty(), "{:?}", ctx.pending);
            // The new session's candidates.
            let c = Candidate::parse("candidate:2 1 udp 2130706431 127.0.0.1 10 typ host").unwrap();
            let out = ctx.on_event(CoreEvent::Candidate(c));
            assert_eq!(out.len(), 1);
            assert!(control.local_description().contains(" 10 typ host"));
            ctx.pc.close().await;
        });
    }
}
