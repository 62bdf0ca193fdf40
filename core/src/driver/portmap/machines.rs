//! The port-mapping machines as the driver's runner drives them: [`MapperRun`] (the
//! [`Mapper`], its release bounded) and [`Budgeted`] (a [`Probe`] or a [`Delete`] within a
//! budget). Their UPnP operations come out as events ([`Step::Upnp`]) that [`SideWork`]
//! runs as tasks; the results, and the gateway's announcements, come back as the
//! runner's commands ([`Input`]).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::upnp_client::Upnp;
use super::{DELETE_BUDGET, GatewayTarget, RELEASE_TIMEOUT};
use crate::machine::Machine;
use crate::portmap::{ANNOUNCE_PORT, Delete, Mapper, MapperEvent, Probe, UpnpCommand, UpnpResult};
use crate::{Protocol, Received, Transmit};

/// Binds the port on which the gateway's announcements arrive (multicast to
/// 224.0.0.1:[`ANNOUNCE_PORT`]), shared with other listeners (`SO_REUSEADDR` and
/// `SO_REUSEPORT`). `None` when that is impossible (then restarts are noticed at renewals).
fn announcement_socket(local_ip: IpAddr) -> Option<UdpSocket> {
    let IpAddr::V4(local_v4) = local_ip else {
        return None;
    };
    let bind = || -> std::io::Result<UdpSocket> {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_address(true)?;
        #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, ANNOUNCE_PORT)).into())?;
        // Every multicast-capable interface is in 224.0.0.1 already; joining explicitly
        // matters where sockets only hear groups they joined.
        if let Err(e) = s.join_multicast_v4(&ANNOUNCE_GROUP, &local_v4) {
            debug!(error = %e, "joining 224.0.0.1 failed");
        }
        UdpSocket::from_std(s.into())
    };
    match bind() {
        Ok(s) => Some(s),
        Err(e) => {
            debug!(error = %e, port = ANNOUNCE_PORT, "cannot hear gateway announcements");
            None
        }
    }
}

/// The all-hosts group to which gateways announce (RFC 6887 §8.2, RFC 6886 §3.2.1).
const ANNOUNCE_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// Where announcements are addressed, as the mapper hears them.
const ANNOUNCE_TO: SocketAddr = SocketAddr::new(IpAddr::V4(ANNOUNCE_GROUP), ANNOUNCE_PORT);

/// Reads the gateway's announcements for the runner's command input. Their port is
/// shared with other listeners (`SO_REUSEPORT`), so it is not one of the runner's own
/// sockets; it never sends.
async fn read_announcements(sock: UdpSocket, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 1500];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if tx
                    .send(Input::Announcement(from, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "receive error on the announcement port"),
        }
    }
}

/// What reaches a port-mapping machine besides its own sockets: the runner's commands.
#[derive(Debug)]
pub(super) enum Input {
    /// The UPnP operation the machine asked for finished.
    Upnp(UpnpResult),
    /// A datagram to 224.0.0.1:[`ANNOUNCE_PORT`] (see [`read_announcements`]): (source,
    /// bytes).
    Announcement(SocketAddr, Vec<u8>),
}

/// What a port-mapping machine asks of the runner, as its events.
#[derive(Debug)]
pub(super) enum Step<E> {
    /// Something to report to the caller.
    Event(E),
    /// A UPnP operation to run: [`SideWork::upnp`].
    Upnp(UpnpCommand),
    /// Nothing more to do: the run ends.
    Done,
}

/// The work of one run that is not datagrams on its sockets, as tasks: UPnP operations
/// (SSDP and HTTP), each answering through the runner's command input, and the
/// announcement reader. Dropping it aborts them all.
pub(super) struct SideWork {
    upnp: Upnp,
    tx: mpsc::Sender<Input>,
    tasks: tokio::task::JoinSet<()>,
}

impl SideWork {
    pub(super) fn new(target: GatewayTarget, tx: mpsc::Sender<Input>) -> Self {
        Self {
            upnp: Upnp::new(target),
            tx,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Runs `cmd`; its result comes back as [`Input::Upnp`].
    pub(super) fn upnp(&mut self, cmd: UpnpCommand) {
        // Forget the tasks that finished (their answers went through the channel).
        while self.tasks.try_join_next().is_some() {}
        let (u, tx) = (self.upnp.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let mut answer = Answer(Some(tx));
            let result = u.run(cmd).await;
            answer.send(result).await;
        });
    }

    /// Listens for the gateway's announcements when their port can be bound.
    pub(super) fn announcements(&mut self, local_ip: IpAddr) {
        if let Some(sock) = announcement_socket(local_ip) {
            self.tasks.spawn(read_announcements(sock, self.tx.clone()));
        }
    }
}

/// A UPnP task's answer. A task that ends without sending one (a panic) answers
/// [`UpnpResult::Failed`] as it unwinds, so that its machine is not left waiting.
struct Answer(Option<mpsc::Sender<Input>>);

impl Answer {
    async fn send(&mut self, result: UpnpResult) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Input::Upnp(result)).await;
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let failed = UpnpResult::Failed("UPnP task failed".into());
            let _ = tx.try_send(Input::Upnp(failed));
        }
    }
}

/// The [`Mapper`] as the runner drives it: its UPnP operations come out as events, and a
/// release is given up [`RELEASE_TIMEOUT`] after it started.
pub(super) struct MapperRun {
    mapper: Mapper,
    /// When the release under way is given up.
    release_by: Option<Instant>,
    /// The release was given up: the run ends after the events that follow.
    gave_up: bool,
    /// [`Step::Done`] was reported.
    done: bool,
}

impl MapperRun {
    pub(super) fn new(mapper: Mapper) -> Self {
        Self {
            mapper,
            release_by: None,
            gave_up: false,
            done: false,
        }
    }

    /// Deletes the mapping (once).
    pub(super) fn release(&mut self, now: Instant) {
        if self.release_by.is_none() {
            self.mapper.release(now);
            self.release_by = Some(now + RELEASE_TIMEOUT);
        }
    }

    /// A command: a UPnP result or an announcement.
    pub(super) fn input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Upnp(r) => self.mapper.handle_upnp(now, r),
            Input::Announcement(source, bytes) => {
                let rx = Received {
                    proto: Protocol::Udp,
                    source,
                    destination: ANNOUNCE_TO,
                    contents: &bytes,
                };
                if !self.mapper.handle_input(now, rx) {
                    debug!(from = %source, "announcement not from the gateway dropped");
                }
            }
        }
    }
}

impl Machine for MapperRun {
    type Event = Step<MapperEvent>;
    type Verdict<'a> = bool;

    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> bool {
        let (from, to) = (rx.source, rx.destination);
        let mine = self.mapper.handle_input(now, rx);
        if !mine {
            debug!(%from, %to, "datagram that is neither the gateway's nor a verification dropped");
        }
        mine
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.release_by.is_some_and(|d| now >= d) {
            debug!("release not confirmed in time");
            self.mapper.abandon_release(&format!(
                "no confirmation within {} s",
                RELEASE_TIMEOUT.as_secs()
            ));
            self.gave_up = true;
            return;
        }
        self.mapper.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.mapper.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.mapper
            .poll_timeout()
            .into_iter()
            .chain(self.release_by)
            .min()
    }

    fn poll_event(&mut self) -> Option<Step<MapperEvent>> {
        if let Some(ev) = self.mapper.poll_event() {
            return Some(Step::Event(ev));
        }
        if let Some(cmd) = self.mapper.poll_upnp() {
            return Some(Step::Upnp(cmd));
        }
        if !self.done && (self.mapper.is_finished() || self.gave_up) {
            self.done = true;
            return Some(Step::Done);
        }
        None
    }
}

/// A one-shot exchange with the gateway ([`Probe`], [`Delete`]) that the runner drives
/// within a budget ([`Budgeted`]).
pub(super) trait Exchange {
    fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool;
    fn handle_timeout(&mut self, now: Instant);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_upnp(&mut self) -> Option<UpnpCommand>;
    fn handle_upnp(&mut self, result: UpnpResult);
    /// Whether what it waits for itself is decided (the budget aside).
    fn is_done(&self) -> bool;
    /// The budget ran out with the UPnP operation still under way or not.
    fn out_of_time(&mut self, upnp_pending: bool);
}

impl Exchange for Probe {
    fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        Probe::handle_input(self, now, rx)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Probe::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Probe::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Probe::poll_timeout(self)
    }
    fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        Probe::poll_upnp(self)
    }
    fn handle_upnp(&mut self, result: UpnpResult) {
        Probe::handle_upnp(self, result);
    }
    /// PCP and NAT-PMP are decided; UPnP is [`Budgeted`]'s to wait for.
    fn is_done(&self) -> bool {
        self.udp_done()
    }
    fn out_of_time(&mut self, upnp_pending: bool) {
        if upnp_pending {
            Probe::handle_upnp(
                self,
                UpnpResult::Failed("no answer within the budget".into()),
            );
        }
    }
}

impl Exchange for Delete {
    fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        Delete::handle_input(self, now, rx)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Delete::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Delete::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Delete::poll_timeout(self)
    }
    fn poll_upnp(&mut self) -> Option<UpnpCommand> {
        Delete::poll_upnp(self)
    }
    fn handle_upnp(&mut self, result: UpnpResult) {
        Delete::handle_upnp(self, result);
    }
    fn is_done(&self) -> bool {
        Delete::is_done(self)
    }
    fn out_of_time(&mut self, _upnp_pending: bool) {
        self.give_up(&format!("no answer within {} s", DELETE_BUDGET.as_secs()));
    }
}

/// An [`Exchange`] as the runner drives it: done when it is and its UPnP operation has
/// answered, or when the budget runs out.
pub(super) struct Budgeted<X> {
    exchange: X,
    deadline: Instant,
    upnp_pending: bool,
    expired: bool,
    done: bool,
}

impl<X: Exchange> Budgeted<X> {
    pub(super) fn new(exchange: X, deadline: Instant) -> Self {
        Self {
            exchange,
            deadline,
            upnp_pending: false,
            expired: false,
            done: false,
        }
    }

    /// The exchange, finished or given up.
    pub(super) fn into_inner(self) -> X {
        self.exchange
    }

    /// The UPnP operation's result (too late once the budget ran out).
    pub(super) fn upnp_answered(&mut self, result: UpnpResult) {
        if !self.expired {
            self.upnp_pending = false;
            self.exchange.handle_upnp(result);
        }
    }
}

impl<X: Exchange> Machine for Budgeted<X> {
    type Event = Step<Infallible>;
    type Verdict<'a> = bool;

    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> bool {
        let from = rx.source;
        let mine = self.exchange.handle_input(now, rx);
        if !mine {
            debug!(%from, "datagram not from the gateway dropped");
        }
        mine
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.deadline {
            if !self.expired {
                self.expired = true;
                self.exchange.out_of_time(self.upnp_pending);
                self.upnp_pending = false;
            }
        } else if !self.exchange.is_done() {
            self.exchange.handle_timeout(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.exchange.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let own = self
            .exchange
            .poll_timeout()
            .filter(|_| !self.exchange.is_done());
        Some(own.map_or(self.deadline, |t| t.min(self.deadline)))
    }

    fn poll_event(&mut self) -> Option<Step<Infallible>> {
        if let Some(cmd) = self.exchange.poll_upnp() {
            self.upnp_pending = true;
            return Some(Step::Upnp(cmd));
        }
        let finished = self.expired || (self.exchange.is_done() && !self.upnp_pending);
        if finished && !self.done {
            self.done = true;
            return Some(Step::Done);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::PROBE_BUDGET;
    use super::*;
    use crate::portmap::{DeleteOutcome, MapProtocol, MapperConfig, ViaChoice};

    const GATEWAY: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const SOURCE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 5000);

    fn steps<X: Exchange>(m: &mut Budgeted<X>) -> Vec<String> {
        std::iter::from_fn(|| m.poll_event())
            .map(|s| match s {
                Step::Upnp(cmd) => format!("upnp {cmd:?}"),
                Step::Done => "done".into(),
                Step::Event(never) => match never {},
            })
            .collect()
    }

    #[test]
    fn a_probe_waits_for_upnp_until_the_budget_runs_out() {
        let now = Instant::now();
        let deadline = now + PROBE_BUDGET;
        let mut m = Budgeted::new(Probe::new(now, GATEWAY, SOURCE, true), deadline);
        assert_eq!(steps(&mut m), ["upnp Probe"]);
        // PCP and NAT-PMP give up (nothing answers) well within the budget.
        while let Some(t) = m.poll_timeout().filter(|&t| t < deadline) {
            m.handle_timeout(t);
        }
        assert!(m.exchange.udp_done());
        assert_eq!(m.exchange.report().pcp, Some(false));
        // UPnP has not answered: not done before the budget runs out.
        assert!(steps(&mut m).is_empty());
        assert_eq!(m.poll_timeout(), Some(deadline));
        m.handle_timeout(deadline);
        assert_eq!(steps(&mut m), ["done"]);
        assert_eq!(m.exchange.report().upnp, Some(false));
        // A late answer changes nothing.
        m.upnp_answered(UpnpResult::Available { external_ip: None });
        assert_eq!(m.exchange.report().upnp, Some(false));
    }

    #[test]
    fn a_probe_is_done_when_upnp_answers_after_pcp_and_natpmp() {
        let now = Instant::now();
        let deadline = now + PROBE_BUDGET;
        let mut m = Budgeted::new(Probe::new(now, GATEWAY, SOURCE, true), deadline);
        assert_eq!(steps(&mut m), ["upnp Probe"]);
        while let Some(t) = m.poll_timeout().filter(|&t| t < deadline) {
            m.handle_timeout(t);
        }
        assert!(steps(&mut m).is_empty());
        let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        m.upnp_answered(UpnpResult::Available {
            external_ip: Some(ip),
        });
        assert_eq!(steps(&mut m), ["done"]);
        assert_eq!(m.exchange.report().upnp, Some(true));
        assert_eq!(m.exchange.report().upnp_external, Some(ip));
    }

    #[test]
    fn a_deletion_out_of_time_says_nothing_answered() {
        let now = Instant::now();
        let deadline = now + DELETE_BUDGET;
        let delete = Delete::new(
            now,
            GATEWAY,
            SOURCE,
            MapProtocol::Udp,
            6000,
            ViaChoice::Any,
            [7; 32],
        );
        let mut m = Budgeted::new(delete, deadline);
        assert_eq!(
            steps(&mut m),
            ["upnp Delete { protocol: Udp, external_port: 6000 }"]
        );
        m.handle_timeout(deadline);
        assert_eq!(steps(&mut m), ["done"]);
        let why = format!("no answer within {} s", DELETE_BUDGET.as_secs());
        assert_eq!(m.exchange.report().upnp, DeleteOutcome::NoAnswer(why));
    }

    #[tokio::test]
    async fn a_upnp_task_that_panics_answers_failed() {
        let (tx, mut rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let _answer = Answer(Some(tx));
            panic!("a bug in the UPnP client");
        });
        assert!(task.await.is_err());
        match rx.try_recv() {
            Ok(Input::Upnp(UpnpResult::Failed(why))) => assert_eq!(why, "UPnP task failed"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_mapper_is_done_after_its_last_event() {
        let now = Instant::now();
        let config = MapperConfig::new(GATEWAY, SOURCE.ip(), MapProtocol::Udp, 6000);
        let mut m = MapperRun::new(Mapper::new(now, config, SOURCE, [1; 32]));
        // Nothing mapped yet: released at once.
        m.release(now);
        let got: Vec<String> = std::iter::from_fn(|| m.poll_event())
            .map(|s| match s {
                Step::Event(ev) => format!("{ev:?}"),
                Step::Upnp(cmd) => format!("upnp {cmd:?}"),
                Step::Done => "done".into(),
            })
            .collect();
        assert_eq!(got, ["Released(NothingToDelete)", "done"]);
    }
}
