//! [`Sim`]: steps any set of [`Machine`]s, of any types, over a [`Network`] on its
//! virtual clock, so that tests need not write their own loops that move datagrams.
//!
//! The test keeps ownership of its machines and its network; a [`Sim`] borrows them for a
//! run. Between runs the test inspects or pokes its machines directly, then starts the
//! next run from the returned [`Sim::now`]; datagrams still in flight and NAT bindings
//! stay in the network, so nothing is lost between runs.
//!
//! Each machine is wrapped in a [`Host`]: the host IPs it answers at (one or more), and
//! optional hooks for what it reports (events), what it says about each datagram handed
//! to it (its verdict) and what it sends. A run repeats, at most
//! [`Sim::set_max_iterations`] times (then it fails loudly):
//!
//! 1. each machine's step hook runs, its events go to its event hook, and its datagrams
//!    into the network (sent at the current time);
//! 2. the clock jumps to the earliest of the next landing datagram and the earliest
//!    machine deadline, if that is not after the end of the run; else to the end, and
//!    the run ends once the clock reads the end (so a run to the current time, with
//!    zero latency, moves datagrams back and forth "instantly" until all is quiet);
//! 3. every datagram landed by then is handed to the machine at its destination host
//!    (datagrams for hosts no machine claims are kept, see [`Sim::take_unclaimed`]);
//! 4. every machine whose deadline has come gets `handle_timeout`.
//!
//! ```ignore
//! let mut net = Network::new(7, Conditions::default());
//! let mut events = Vec::new();
//! let mut sim = Sim::new(&mut net, t0);
//! sim.add(Host::new(&mut client, [client_ip]).collect_events(&mut events));
//! sim.add(Host::new(&mut server, [server_ip]));
//! sim.run_until(t0 + Duration::from_secs(1));
//! let now = sim.now();
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::{Delivery, Network};
use crate::machine::Machine;
use crate::{Received, Transmit};

/// Why a run failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    /// The run did not reach its end in the allowed number of steps (machines that keep
    /// talking at zero latency, or a deadline that never moves).
    #[error("the simulation did not reach its end in {iterations} steps (stuck at {elapsed:?})")]
    IterationCap {
        /// The cap.
        iterations: usize,
        /// Virtual time since the run started.
        elapsed: Duration,
    },
    /// Two machines claim one host IP.
    #[error("host {0} already has a machine")]
    HostTaken(IpAddr),
}

type EventHook<'a, M> = Box<dyn FnMut(&mut M, Instant, <M as Machine>::Event) + 'a>;
type StepHook<'a, M> = Box<dyn FnMut(&mut M, Instant) + 'a>;
type VerdictHook<'a, M> = Box<dyn for<'v> FnMut(Instant, <M as Machine>::Verdict<'v>) + 'a>;
type TransmitHook<'a> = Box<dyn FnMut(Instant, &Transmit) + 'a>;

/// A machine borrowed for a run, at its host IPs, with its hooks.
pub struct Host<'a, M: Machine> {
    machine: &'a mut M,
    ips: Vec<IpAddr>,
    on_event: Option<EventHook<'a, M>>,
    on_step: Option<StepHook<'a, M>>,
    on_verdict: Option<VerdictHook<'a, M>>,
    on_transmit: Option<TransmitHook<'a>>,
}

impl<'a, M: Machine> Host<'a, M> {
    /// `machine`, reached at `ips`. Events are dropped unless [`Host::on_event`] is set.
    pub fn new(machine: &'a mut M, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            machine,
            ips: ips.into_iter().collect(),
            on_event: None,
            on_step: None,
            on_verdict: None,
            on_transmit: None,
        }
    }

    /// Hands each event, with the virtual time it was taken, to `f`, with the machine
    /// (to act on what the event asks of its driver).
    pub fn on_event(mut self, f: impl FnMut(&mut M, Instant, M::Event) + 'a) -> Self {
        self.on_event = Some(Box::new(f));
        self
    }

    /// Collects each event, with the virtual time it was taken, into `events`.
    pub fn collect_events(self, events: &'a mut Vec<(Instant, M::Event)>) -> Self {
        self.on_event(move |_, at, e| events.push((at, e)))
    }

    /// Calls `f` with the machine at each step, before its datagrams are taken: for what
    /// a machine asks of its driver outside the [`Machine`] trait (the port mapper's UPnP
    /// commands).
    pub fn on_step(mut self, f: impl FnMut(&mut M, Instant) + 'a) -> Self {
        self.on_step = Some(Box::new(f));
        self
    }

    /// Hands the machine's verdict on each delivered datagram to `f` (to assert on it).
    pub fn on_verdict(mut self, f: impl for<'v> FnMut(Instant, M::Verdict<'v>) + 'a) -> Self {
        self.on_verdict = Some(Box::new(f));
        self
    }

    /// Shows `f` each datagram the machine sends, as sent (before any NAT).
    pub fn on_transmit(mut self, f: impl FnMut(Instant, &Transmit) + 'a) -> Self {
        self.on_transmit = Some(Box::new(f));
        self
    }
}

/// The object-safe face of a [`Host`], whatever its machine's types.
trait Node {
    fn input(&mut self, now: Instant, rx: Received<'_>);
    fn timeout(&mut self, now: Instant);
    fn transmit(&mut self, now: Instant) -> Option<Transmit>;
    fn deadline(&self) -> Option<Instant>;
    fn step(&mut self, now: Instant);
    fn events(&mut self, now: Instant);
}

impl<M: Machine> Node for Host<'_, M> {
    fn input(&mut self, now: Instant, rx: Received<'_>) {
        let verdict = self.machine.handle_input(now, rx);
        if let Some(f) = self.on_verdict.as_mut() {
            f(now, verdict);
        }
    }

    fn timeout(&mut self, now: Instant) {
        self.machine.handle_timeout(now);
    }

    fn transmit(&mut self, now: Instant) -> Option<Transmit> {
        let t = self.machine.poll_transmit()?;
        if let Some(f) = self.on_transmit.as_mut() {
            f(now, &t);
        }
        Some(t)
    }

    fn deadline(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    fn step(&mut self, now: Instant) {
        if let Some(f) = self.on_step.as_mut() {
            f(self.machine, now);
        }
    }

    fn events(&mut self, now: Instant) {
        while let Some(e) = self.machine.poll_event() {
            if let Some(f) = self.on_event.as_mut() {
                f(self.machine, now, e);
            }
        }
    }
}

/// The default cap on steps per run.
pub const DEFAULT_MAX_ITERATIONS: usize = 100_000;

/// Steps machines over a network on its virtual clock. See the module docs.
pub struct Sim<'a> {
    net: &'a mut Network,
    now: Instant,
    nodes: Vec<Box<dyn Node + 'a>>,
    by_ip: HashMap<IpAddr, usize>,
    unclaimed: Vec<Delivery>,
    max_iterations: usize,
}

impl<'a> Sim<'a> {
    /// A run over `net` whose clock starts at `now`.
    pub fn new(net: &'a mut Network, now: Instant) -> Self {
        Self {
            net,
            now,
            nodes: Vec::new(),
            by_ip: HashMap::new(),
            unclaimed: Vec::new(),
            max_iterations: DEFAULT_MAX_ITERATIONS,
        }
    }

    /// Caps the steps of each run (default [`DEFAULT_MAX_ITERATIONS`]).
    pub fn set_max_iterations(&mut self, n: usize) {
        self.max_iterations = n;
    }

    /// Adds a machine. Its IPs not yet known to the network become public hosts (put
    /// them behind a NAT with [`Network::add_host`] first). Panics if an IP already has
    /// a machine (see [`Sim::try_add`]).
    #[expect(
        clippy::panic,
        reason = "test support: a mis-wired simulation must fail the test that built it"
    )]
    pub fn add<M: Machine + 'a>(&mut self, host: Host<'a, M>) {
        if let Err(e) = self.try_add(host) {
            panic!("{e}");
        }
    }

    /// [`Sim::add`], failing instead of panicking.
    pub fn try_add<M: Machine + 'a>(&mut self, host: Host<'a, M>) -> Result<(), SimError> {
        if let Some(ip) = host.ips.iter().find(|ip| self.by_ip.contains_key(ip)) {
            return Err(SimError::HostTaken(*ip));
        }
        let index = self.nodes.len();
        for ip in &host.ips {
            if !self.net.has_host(*ip) {
                self.net.add_host(*ip, None);
            }
            self.by_ip.insert(*ip, index);
        }
        self.nodes.push(Box::new(host));
        Ok(())
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The network.
    pub fn network(&mut self) -> &mut Network {
        self.net
    }

    /// Datagrams that landed at hosts no machine claims, oldest first.
    pub fn take_unclaimed(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.unclaimed)
    }

    /// Runs `d` of virtual time from now. Panics at the iteration cap.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until `end` (virtual). Panics at the iteration cap (see [`Sim::try_run_until`]).
    #[expect(
        clippy::panic,
        reason = "test support: a run that never converges must fail its test loudly"
    )]
    pub fn run_until(&mut self, end: Instant) {
        if let Err(e) = self.try_run_until(end) {
            panic!("{e}");
        }
    }

    /// Runs until `end` (virtual): afterwards every machine's output up to `end` has been
    /// taken and the clock reads `end` (or later, if it already did).
    pub fn try_run_until(&mut self, end: Instant) -> Result<(), SimError> {
        let start = self.now;
        for _ in 0..self.max_iterations {
            self.flush();
            let pending = self
                .nodes
                .iter()
                .filter_map(|n| n.deadline())
                .chain(self.net.poll_timeout())
                .min();
            match pending {
                // Due by the end (at the end too: a zero-length run still delivers what
                // lands now).
                Some(at) if at <= end => self.now = self.now.max(at),
                _ if self.now >= end => return Ok(()),
                _ => self.now = end,
            }
            while let Some(d) = self.net.poll_delivery(self.now) {
                match self.by_ip.get(&d.host) {
                    Some(&i) => {
                        let t = &d.transmit;
                        let rx = Received {
                            proto: t.proto,
                            source: t.source,
                            destination: t.destination,
                            contents: &t.contents,
                        };
                        self.nodes[i].input(self.now, rx);
                    }
                    None => self.unclaimed.push(d),
                }
            }
            let now = self.now;
            for n in &mut self.nodes {
                if n.deadline().is_some_and(|t| t <= now) {
                    n.timeout(now);
                }
            }
        }
        Err(SimError::IterationCap {
            iterations: self.max_iterations,
            elapsed: self.now.saturating_duration_since(start),
        })
    }

    /// Sends every machine's datagrams and hands over its events, at the current time.
    fn flush(&mut self) {
        let now = self.now;
        for n in &mut self.nodes {
            n.step(now);
            // Events first: acting on one may queue datagrams.
            n.events(now);
            while let Some(t) = n.transmit(now) {
                self.net.send(now, t);
            }
        }
    }
}

impl std::fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("machines", &self.nodes.len())
            .field("hosts", &self.by_ip.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
