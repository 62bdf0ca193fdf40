//! NAT behaviour discovery (RFC 5780), named in RFC 4787 terms.
//!
//! [`Prober`] is a sans-IO machine. Give it the servers and the local sockets the driver
//! bound (see [`NetcheckConfig::sockets_needed`]), then run the usual loop. It finishes
//! with [`NetcheckEvent::Done`] carrying a [`Report`].
//!
//! What it does, all tests as concurrent as their dependencies allow:
//! - **Test I** (RFC 5780 §4.3) to every server from the *mapping socket*: reachability,
//!   round-trip time, the mapped address, MAPPED-ADDRESS against XOR-MAPPED-ADDRESS (an
//!   address-rewriting ALG), and OTHER-ADDRESS, which marks an RFC 5780 server.
//! - **Mapping** (§4.3), from the mapping socket to the first RFC 5780 server: test II to
//!   (alternate IP, primary port); if the mapping changed, test III to (alternate IP,
//!   alternate port).
//! - **Filtering** (§4.4), from a second, *fresh* socket, so that the mapping tests have
//!   not opened its filter toward the alternate addresses: test I, then CHANGE-REQUEST
//!   "IP and port" and "port only" at once.
//! - **Hairpinning** (§4.5): a Binding request from the mapping socket to its own mapped
//!   address; receiving it means the NAT hairpins.
//! - **Port allocation**: from [`NetcheckConfig::port_allocation_probes`] fresh sockets,
//!   one after the other, a Binding request each, to the reflectors that answered in
//!   turn: each makes a new mapping, so the external ports show how the NAT picks them —
//!   the local port kept (*preserving*), the previous one plus a small step
//!   (*sequential*, what port prediction needs), or neither (*random*). See
//!   [`classify_port_allocation`].
//! - **Binding lifetime** (§4.6), opt-in because it takes minutes: one socket per probed
//!   interval binds at once; after the interval another socket asks the server, with
//!   RESPONSE-PORT, to answer to the first socket's mapping. All intervals run in parallel.
//!
//! Without an RFC 5780 server, mapping is judged by comparing what servers on different IP
//! addresses saw, and the report says what could not be determined.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::stun::attributes::{
    ChangeRequest, MappedAddress, OtherAddress, ResponsePort, XorMappedAddress,
};
use crate::stun::{
    Class, ClientConfig, ExpectFrom, Message, MessageBuilder, Request, StunClient, StunError,
    TransactionEvent, TransactionId,
};
use crate::{Received, Transmit};

/// Initial retransmission timeout of netcheck probes. Shorter than RFC 8489's 500 ms:
/// a probe that goes unanswered is an answer (filtering, hairpinning), so waiting costs.
pub const PROBE_RTO: Duration = Duration::from_millis(200);
/// Transmissions per probe: sent at 0, 200, 600 and 1400 ms.
pub const PROBE_TRANSMITS: u32 = 4;
/// After the last transmission wait `PROBE_LAST_WAIT × PROBE_RTO` (1 s): a probe is
/// declared unanswered 2.4 s after it started.
pub const PROBE_LAST_WAIT: u32 = 5;
/// The default overall budget of a netcheck without lifetime discovery.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(10);
/// Fresh sockets (one Binding request each) that port-allocation discovery uses by
/// default: four steps between five new mappings.
pub const DEFAULT_PORT_ALLOCATION_PROBES: usize = 5;
/// Fewer answered port-allocation probes than this are not enough evidence: the kind is
/// reported [`PortAllocation::Unknown`].
pub const MIN_PORT_ALLOCATION_SAMPLES: usize = 3;
/// The largest step between consecutive new mappings that still counts as sequential
/// allocation: other hosts behind the NAT take ports between ours (a gap), and a random
/// allocator makes a step this small only about once in 500 (64 × 2 of 64 512 ports).
pub const MAX_SEQUENTIAL_STEP: i32 = 64;

/// The intervals probed by binding-lifetime discovery when it is enabled.
pub const DEFAULT_LIFETIME_PROBES: [Duration; 6] = [
    Duration::from_secs(10),
    Duration::from_secs(20),
    Duration::from_secs(40),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(180),
];

/// Errors from setting up a netcheck.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetcheckError {
    /// No server to probe.
    #[error("no STUN server to probe")]
    NoServers,
    /// The number of local sockets is not what the configuration needs.
    #[error("need {needed} local sockets, got {got}")]
    WrongSocketCount {
        /// Sockets the configuration needs.
        needed: usize,
        /// Sockets given.
        got: usize,
    },
    /// Building a probe failed.
    #[error("building a probe: {0}")]
    Stun(#[from] StunError),
}

/// One server to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// How the user named it (for example `stun:stun.example.org:3478`).
    pub label: String,
    /// Its resolved address.
    pub addr: SocketAddr,
}

/// What to probe and how long to take.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NetcheckConfig {
    /// The servers. The first RFC 5780 server among them is used for the behaviour tests.
    pub servers: Vec<ServerSpec>,
    /// Retransmission of each probe; defaults from [`PROBE_RTO`], [`PROBE_TRANSMITS`] and
    /// [`PROBE_LAST_WAIT`].
    pub probe: ClientConfig,
    /// Test hairpinning (default true).
    pub hairpinning: bool,
    /// Binding-lifetime discovery intervals; empty (the default) disables it.
    pub lifetime_probes: Vec<Duration>,
    /// The overall budget: whatever is unresolved then is reported unknown.
    pub budget: Duration,
    /// Port-allocation discovery: how many fresh sockets send one Binding request each
    /// (default [`DEFAULT_PORT_ALLOCATION_PROBES`]); 0 disables it (then
    /// [`Report::port_allocation`] is `None`, "not tested").
    pub port_allocation_probes: usize,
}

impl Default for NetcheckConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            probe: ClientConfig {
                rto: PROBE_RTO,
                max_transmits: PROBE_TRANSMITS,
                last_wait_multiplier: PROBE_LAST_WAIT,
                accept_bad_fingerprint: true,
                ..ClientConfig::default()
            },
            hairpinning: true,
            lifetime_probes: Vec::new(),
            budget: DEFAULT_BUDGET,
            port_allocation_probes: DEFAULT_PORT_ALLOCATION_PROBES,
        }
    }
}

impl NetcheckConfig {
    /// Probes `servers` with the defaults.
    pub fn new(servers: Vec<ServerSpec>) -> Self {
        Self {
            servers,
            ..Self::default()
        }
    }

    /// How many local UDP sockets the driver must bind and pass to [`Prober::new`]:
    /// the mapping socket, the filtering socket, with lifetime discovery one per
    /// interval plus one to send the RESPONSE-PORT probes from, then one per
    /// port-allocation probe.
    pub fn sockets_needed(&self) -> usize {
        self.allocation_socket_offset() + self.port_allocation_probes
    }

    /// The index of the first port-allocation socket among the locals.
    fn allocation_socket_offset(&self) -> usize {
        2 + if self.lifetime_probes.is_empty() {
            0
        } else {
            self.lifetime_probes.len() + 1
        }
    }
}

/// A NAT behaviour in RFC 4787 terms (§4.1 mapping, §5 filtering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
    /// Not determined.
    Unknown,
}

impl Behaviour {
    /// The RFC 4787 name: `endpoint-independent`, `address-dependent`,
    /// `address-and-port-dependent`, or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a NAT picks the external port of a new mapping (RFC 4787 §4.2.1 port preservation;
/// "sequential" in the hole-punching literature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// The mapping keeps the local port (when it is free): also what no NAT looks like.
    Preserving,
    /// Each new mapping gets the previous one's port plus `delta` (other hosts' mappings
    /// may come between): the ports of the next mappings can be predicted.
    Sequential {
        /// The step between consecutive mappings (the smallest one seen; may be negative).
        delta: i32,
    },
    /// Neither: unpredictable.
    Random,
    /// Probed, but not enough answers to tell.
    Unknown,
}

impl PortAllocation {
    /// `preserving`, `sequential`, `random` or `unknown` (the `kind` of `--json`).
    pub fn as_str(self) -> &'static str {
        match self {
            PortAllocation::Preserving => "preserving",
            PortAllocation::Sequential { .. } => "sequential",
            PortAllocation::Random => "random",
            PortAllocation::Unknown => "unknown",
        }
    }

    /// The step of a sequential allocation.
    pub fn delta(self) -> Option<i32> {
        match self {
            PortAllocation::Sequential { delta } => Some(delta),
            _ => None,
        }
    }

    /// The value of pinhole's `a=x-pinhole-port-allocation` attribute: `sequential 1`,
    /// `preserving`, `random`; `None` for [`PortAllocation::Unknown`] (nothing to say).
    pub fn to_attribute(self) -> Option<String> {
        match self {
            PortAllocation::Sequential { delta } => Some(format!("sequential {delta}")),
            PortAllocation::Unknown => None,
            other => Some(other.as_str().to_owned()),
        }
    }

    /// Reads the value of `a=x-pinhole-port-allocation`, tolerantly: case does not matter,
    /// words after the ones understood are ignored (room for later additions), and
    /// anything not understood — an unknown kind, a sequential step that is not a number
    /// or is 0 or larger than [`MAX_SEQUENTIAL_STEP`] — is `None`.
    pub fn parse_attribute(value: &str) -> Option<Self> {
        let mut words = value.split_ascii_whitespace();
        let kind = words.next()?.to_ascii_lowercase();
        match kind.as_str() {
            "preserving" => Some(PortAllocation::Preserving),
            "random" => Some(PortAllocation::Random),
            "sequential" => {
                let delta: i32 = words.next()?.parse().ok()?;
                (delta != 0 && delta.abs() <= MAX_SEQUENTIAL_STEP)
                    .then_some(PortAllocation::Sequential { delta })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for PortAllocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortAllocation::Sequential { delta } => write!(f, "sequential (step {delta:+})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Classifies port allocation from new mappings, each `(local port, external port)`, in
/// the order the NAT made them:
/// - fewer than [`MIN_PORT_ALLOCATION_SAMPLES`]: [`PortAllocation::Unknown`];
/// - more than half keep their local port: [`PortAllocation::Preserving`] (a port that
///   was taken makes the NAT pick another for that one mapping);
/// - else the steps between consecutive external ports, if [`sequential_step`] finds
///   one: [`PortAllocation::Sequential`];
/// - else [`PortAllocation::Random`].
pub fn classify_port_allocation(samples: &[(u16, u16)]) -> PortAllocation {
    if samples.len() < MIN_PORT_ALLOCATION_SAMPLES {
        return PortAllocation::Unknown;
    }
    let preserved = samples.iter().filter(|(l, m)| l == m).count();
    if preserved * 2 > samples.len() {
        return PortAllocation::Preserving;
    }
    let ports: Vec<u16> = samples.iter().map(|(_, m)| *m).collect();
    match sequential_step(&ports) {
        Some(delta) => PortAllocation::Sequential { delta },
        None => PortAllocation::Random,
    }
}

/// The step of external ports allocated one after the other, when they look sequential:
/// every step (all but one when there are four or more: a wrap-around, or a burst of
/// other hosts' traffic) has the same sign and is at most [`MAX_SEQUENTIAL_STEP`] in
/// size. The step is the smallest one seen (the others are gaps where other mappings
/// came between). `None` for fewer than two ports, or ports that do not look sequential.
pub fn sequential_step(ports: &[u16]) -> Option<i32> {
    let steps: Vec<i32> = ports
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    if steps.is_empty() {
        return None;
    }
    let small = |s: &i32| *s != 0 && s.abs() <= MAX_SEQUENTIAL_STEP;
    let up = steps.iter().filter(|s| small(s) && **s > 0).count();
    let down = steps.iter().filter(|s| small(s) && **s < 0).count();
    let (count, sign) = if up >= down { (up, 1) } else { (down, -1) };
    let outliers = if steps.len() >= 4 { 1 } else { 0 };
    if count == 0 || count + outliers < steps.len() {
        return None;
    }
    steps
        .iter()
        .filter(|s| small(s) && s.signum() == sign)
        .map(|s| s.abs())
        .min()
        .map(|m| m * sign)
}

/// What one server told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    /// The server's label.
    pub label: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Round-trip time of test I (`None` when it did not answer).
    pub rtt: Option<Duration>,
    /// The mapped address it saw (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
    pub mapped: Option<SocketAddr>,
    /// Its OTHER-ADDRESS, when it supports RFC 5780.
    pub other_address: Option<SocketAddr>,
}

/// The estimated binding lifetime (RFC 5780 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifetimeEstimate {
    /// The longest idle interval after which the mapping still worked.
    pub at_least: Option<Duration>,
    /// The shortest idle interval after which it was gone (`None`: it outlived them all).
    pub less_than: Option<Duration>,
}

/// The outcome of a netcheck. Fields that could not be determined are `None` or
/// [`Behaviour::Unknown`]: unknown is not false.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Whether any server answered over UDP.
    pub udp: bool,
    /// The distinct public (mapped) addresses seen, in order of discovery.
    pub public: Vec<SocketAddr>,
    /// Mapping behaviour.
    pub mapping: Behaviour,
    /// Filtering behaviour.
    pub filtering: Behaviour,
    /// Whether the NAT hairpins.
    pub hairpinning: Option<bool>,
    /// Whether a middlebox rewrites addresses in payloads (MAPPED-ADDRESS differing from
    /// XOR-MAPPED-ADDRESS).
    pub alg_rewrites: Option<bool>,
    /// The binding lifetime, when lifetime discovery ran.
    pub binding_lifetime: Option<LifetimeEstimate>,
    /// How the NAT allocates external ports: `None` when not tested
    /// ([`NetcheckConfig::port_allocation_probes`] 0), [`PortAllocation::Unknown`] when
    /// too few probes were answered.
    pub port_allocation: Option<PortAllocation>,
    /// The RFC 5780 server used for the behaviour tests.
    pub rfc5780_server: Option<String>,
    /// Per-server results.
    pub servers: Vec<ServerReport>,
    /// What could not be determined, and why.
    pub notes: Vec<String>,
}

impl Report {
    /// A report in which nothing could be determined (no server answered, or none could
    /// be asked), with the reasons in `notes`.
    pub fn unknown(notes: Vec<String>) -> Self {
        Self {
            udp: false,
            public: Vec::new(),
            mapping: Behaviour::Unknown,
            filtering: Behaviour::Unknown,
            hairpinning: None,
            alg_rewrites: None,
            binding_lifetime: None,
            port_allocation: None,
            rfc5780_server: None,
            servers: Vec::new(),
            notes,
        }
    }
}

/// Progress and the result.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NetcheckEvent {
    /// A server answered test I.
    ServerReplied {
        /// Index into the configured servers.
        server: usize,
        /// The mapped address it saw.
        mapped: Option<SocketAddr>,
        /// Round-trip time.
        rtt: Duration,
    },
    /// A server did not answer test I.
    ServerTimedOut {
        /// Index into the configured servers.
        server: usize,
    },
    /// Mapping behaviour is known.
    Mapping(Behaviour),
    /// Filtering behaviour is known.
    Filtering(Behaviour),
    /// Hairpinning is known.
    Hairpinning(bool),
    /// Port allocation is known (or found unknowable).
    PortAllocation(PortAllocation),
    /// A binding-lifetime probe (RFC 5780 §4.6) has its answer: after `idle` without
    /// traffic the binding was still `open`, or gone. Only with lifetime discovery.
    BindingLifetime {
        /// The idle interval probed.
        idle: Duration,
        /// Whether the binding still forwarded after it.
        open: bool,
    },
    /// Finished.
    Done(Box<Report>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    TestI(usize),
    MapII,
    MapIII,
    FilterI,
    FilterIpPort,
    FilterPort,
    Hairpin,
    LifetimeBind(usize),
    LifetimeProbe(usize),
    /// Port-allocation probe `i`, from its own fresh socket.
    Allocation(usize),
}

#[derive(Debug, Default)]
struct ServerState {
    done: bool,
    rtt: Option<Duration>,
    mapped: Option<SocketAddr>,
    plain_mapped: Option<SocketAddr>,
    other: Option<SocketAddr>,
    fingerprint_broken: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct LifetimeSlot {
    mapped: Option<SocketAddr>,
    probe_at: Option<Instant>,
    alive: Option<bool>,
}

/// The NAT behaviour prober. See the module docs.
#[derive(Debug)]
pub struct Prober {
    config: NetcheckConfig,
    locals: Vec<SocketAddr>,
    client: StunClient,
    purposes: HashMap<TransactionId, Purpose>,
    servers: Vec<ServerState>,
    rfc5780: Option<usize>,
    map1: Option<SocketAddr>,
    map2: Option<SocketAddr>,
    mapping: Option<Behaviour>,
    filter_ip_port: Option<bool>,
    filter_port: Option<bool>,
    filtering: Option<Behaviour>,
    hairpin_tid: Option<TransactionId>,
    hairpin: Option<bool>,
    lifetime: Vec<LifetimeSlot>,
    lifetime_server: Option<SocketAddr>,
    /// Port-allocation probes started so far (they run one after the other).
    alloc_started: usize,
    /// Whether a port-allocation probe is in flight.
    alloc_in_flight: bool,
    /// `(local port, external port)` of each answered port-allocation probe, in order.
    alloc_samples: Vec<(u16, u16)>,
    port_allocation: Option<PortAllocation>,
    notes: Vec<String>,
    deadline: Instant,
    events: VecDeque<NetcheckEvent>,
    done: bool,
}

impl Prober {
    /// A prober that starts probing at `now`. `locals` are the bound local sockets, as
    /// many as [`NetcheckConfig::sockets_needed`]; `seed` seeds the transaction IDs.
    pub fn new(
        now: Instant,
        config: NetcheckConfig,
        locals: Vec<SocketAddr>,
        seed: [u8; 32],
    ) -> Result<Self, NetcheckError> {
        if config.servers.is_empty() {
            return Err(NetcheckError::NoServers);
        }
        let needed = config.sockets_needed();
        if locals.len() != needed {
            return Err(NetcheckError::WrongSocketCount {
                needed,
                got: locals.len(),
            });
        }
        let longest = config
            .lifetime_probes
            .iter()
            .max()
            .copied()
            .unwrap_or_default();
        let mut p = Self {
            client: StunClient::new(config.probe.clone(), seed),
            deadline: now + config.budget + longest,
            servers: config
                .servers
                .iter()
                .map(|_| ServerState::default())
                .collect(),
            lifetime: vec![LifetimeSlot::default(); config.lifetime_probes.len()],
            config,
            locals,
            purposes: HashMap::new(),
            rfc5780: None,
            map1: None,
            map2: None,
            mapping: None,
            filter_ip_port: None,
            filter_port: None,
            filtering: None,
            hairpin_tid: None,
            hairpin: None,
            lifetime_server: None,
            alloc_started: 0,
            alloc_in_flight: false,
            alloc_samples: Vec::new(),
            port_allocation: None,
            notes: Vec::new(),
            events: VecDeque::new(),
            done: false,
        };
        for i in 0..p.servers.len() {
            let dest = p.config.servers[i].addr;
            p.send(
                now,
                Purpose::TestI(i),
                p.locals[0],
                dest,
                ExpectFrom::Destination,
                |_| Ok(()),
            )?;
        }
        Ok(p)
    }

    /// Whether the report has been delivered.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Ends the netcheck now with what is known so far, for example when the user
    /// interrupts it during binding-lifetime discovery: tests still running are reported
    /// unknown (a lifetime interval not yet probed leaves the estimate's bounds as they
    /// are), a note says so, and [`NetcheckEvent::Done`] follows. Nothing happens once done.
    pub fn finish_early(&mut self) {
        if self.done {
            return;
        }
        self.notes
            .push("stopped early: tests still running when it was interrupted are unknown".into());
        self.finish();
    }

    fn send(
        &mut self,
        now: Instant,
        purpose: Purpose,
        source: SocketAddr,
        destination: SocketAddr,
        expect_from: ExpectFrom,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), StunError>,
    ) -> Result<TransactionId, StunError> {
        let mut req = Request::binding(source, destination);
        req.expect_from = expect_from;
        if let Purpose::LifetimeProbe(i) = purpose {
            req.response_at = Some(self.locals[2 + i]);
        }
        let id = self.client.start(now, req, fill)?;
        self.purposes.insert(id, purpose);
        Ok(id)
    }

    /// Like `send`, but a failure to build becomes a note rather than an error: the probe
    /// is simply not run.
    fn try_send(
        &mut self,
        now: Instant,
        purpose: Purpose,
        source: SocketAddr,
        destination: SocketAddr,
        expect_from: ExpectFrom,
        fill: impl FnOnce(&mut MessageBuilder<'_>) -> Result<(), StunError>,
    ) -> Option<TransactionId> {
        match self.send(now, purpose, source, destination, expect_from, fill) {
            Ok(id) => Some(id),
            Err(e) => {
                self.notes.push(format!("could not send {purpose:?}: {e}"));
                None
            }
        }
    }

    /// Offers a received datagram; returns whether it belonged to this prober.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        if self.done {
            return false;
        }
        // Our own hairpin request coming back to us.
        if let (Some(tid), Ok(msg)) = (self.hairpin_tid, Message::parse(rx.contents)) {
            if msg.class() == Class::Request
                && msg.transaction_id() == tid
                && rx.destination == self.locals[0]
            {
                debug!(from = %rx.source, "hairpinned request received");
                self.client.cancel(tid);
                self.hairpin_tid = None;
                self.set_hairpin(true);
                self.check_done();
                return true;
            }
        }
        if !self.client.handle_input(now, rx) {
            return false;
        }
        self.drain(now);
        true
    }

    /// Advances timers: retransmissions, timeouts, lifetime probes and the overall budget.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        self.client.handle_timeout(now);
        self.drain(now);
        for i in 0..self.lifetime.len() {
            if let Some(at) = self.lifetime[i].probe_at {
                if at <= now {
                    self.lifetime[i].probe_at = None;
                    self.send_lifetime_probe(now, i);
                }
            }
        }
        if now >= self.deadline {
            self.notes
                .push("the overall time budget ran out before every test finished".into());
            self.finish();
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.client.poll_transmit()
    }

    /// When to call `handle_timeout` next; `None` once done.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let lifetime = self.lifetime.iter().filter_map(|l| l.probe_at).min();
        [self.client.poll_timeout(), lifetime, Some(self.deadline)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NetcheckEvent> {
        self.events.pop_front()
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                TransactionEvent::Response(resp) => {
                    let Some(purpose) = self.purposes.remove(&resp.id) else {
                        continue;
                    };
                    let msg = resp.message();
                    if msg.class() != Class::Success {
                        self.notes
                            .push(format!("{purpose:?}: error response from {}", resp.source));
                        self.on_failure(now, purpose);
                        continue;
                    }
                    let mapped = msg
                        .get::<XorMappedAddress>()
                        .ok()
                        .flatten()
                        .map(|x| x.0)
                        .or_else(|| msg.get::<MappedAddress>().ok().flatten().map(|m| m.0));
                    if let (Purpose::TestI(i), Some(false)) = (purpose, resp.fingerprint_ok) {
                        self.servers[i].fingerprint_broken = true;
                    }
                    self.on_success(now, purpose, &msg, resp.source, mapped, resp.elapsed);
                }
                TransactionEvent::TimedOut { id, .. } => {
                    if let Some(purpose) = self.purposes.remove(&id) {
                        self.on_failure(now, purpose);
                    }
                }
            }
        }
        self.check_done();
    }

    fn on_success(
        &mut self,
        now: Instant,
        purpose: Purpose,
        msg: &Message<'_>,
        source: SocketAddr,
        mapped: Option<SocketAddr>,
        rtt: Duration,
    ) {
        match purpose {
            Purpose::TestI(i) => {
                let s = &mut self.servers[i];
                s.done = true;
                s.rtt = Some(rtt);
                s.mapped = mapped;
                s.plain_mapped = msg.get::<MappedAddress>().ok().flatten().map(|m| m.0);
                let server = self.config.servers[i].addr;
                s.other = msg
                    .get::<OtherAddress>()
                    .ok()
                    .flatten()
                    .map(|o| o.0)
                    .filter(|o| o.ip() != server.ip() && o.port() != server.port());
                self.events.push_back(NetcheckEvent::ServerReplied {
                    server: i,
                    mapped,
                    rtt,
                });
                if self.map1.is_none() {
                    if let Some(m) = mapped {
                        self.start_hairpin(now, m);
                    }
                }
                if self.rfc5780.is_none() && self.servers[i].other.is_some() {
                    self.rfc5780 = Some(i);
                    self.map1 = mapped;
                    self.start_behaviour_tests(now);
                }
                if self.lifetime_server.is_none() && !self.lifetime.is_empty() {
                    self.start_lifetime(now, server);
                }
                if self.alloc_started == 0 {
                    self.next_allocation_probe(now);
                }
            }
            Purpose::MapII => {
                self.map2 = mapped;
                match (self.map1, mapped) {
                    (Some(a), Some(b)) if a == b => {
                        self.set_mapping(Behaviour::EndpointIndependent)
                    }
                    (Some(_), Some(_)) => {
                        if let Some((_, other)) = self.rfc5780_addrs() {
                            self.try_send(
                                now,
                                Purpose::MapIII,
                                self.locals[0],
                                other,
                                ExpectFrom::Destination,
                                |_| Ok(()),
                            );
                        }
                    }
                    _ => self.mapping_unknown("a mapping test response had no mapped address"),
                }
            }
            Purpose::MapIII => match (self.map2, mapped) {
                (Some(a), Some(b)) if a == b => self.set_mapping(Behaviour::AddressDependent),
                (Some(_), Some(_)) => self.set_mapping(Behaviour::AddressAndPortDependent),
                _ => self.mapping_unknown("a mapping test response had no mapped address"),
            },
            Purpose::FilterI => {
                let Some((primary, _)) = self.rfc5780_addrs() else {
                    return;
                };
                let local = self.locals[1];
                self.try_send(
                    now,
                    Purpose::FilterIpPort,
                    local,
                    primary,
                    ExpectFrom::Any,
                    |b| {
                        b.add(&ChangeRequest {
                            change_ip: true,
                            change_port: true,
                        })
                        .map(|_| ())
                    },
                );
                self.try_send(
                    now,
                    Purpose::FilterPort,
                    local,
                    primary,
                    ExpectFrom::Any,
                    |b| {
                        b.add(&ChangeRequest {
                            change_ip: false,
                            change_port: true,
                        })
                        .map(|_| ())
                    },
                );
            }
            Purpose::FilterIpPort | Purpose::FilterPort => {
                let Some((primary, other)) = self.rfc5780_addrs() else {
                    return;
                };
                let expected = if purpose == Purpose::FilterIpPort {
                    other
                } else {
                    SocketAddr::new(primary.ip(), other.port())
                };
                if source != expected {
                    self.notes.push(format!(
                        "the server answered a CHANGE-REQUEST from {source}, not {expected}"
                    ));
                    self.on_failure(now, purpose);
                    return;
                }
                if purpose == Purpose::FilterIpPort {
                    self.filter_ip_port = Some(true);
                } else {
                    self.filter_port = Some(true);
                }
                self.decide_filtering();
            }
            Purpose::Hairpin => {
                // A *response* to the hairpin request means something answered on our
                // own mapped address: not a hairpin of our request.
                self.notes
                    .push("something answered the hairpinning probe on our own address".into());
                self.hairpin_tid = None;
                if self.hairpin.is_none() {
                    self.hairpin = Some(false);
                }
            }
            Purpose::LifetimeBind(i) => {
                self.lifetime[i].mapped = mapped;
                self.lifetime[i].probe_at = Some(now + self.config.lifetime_probes[i]);
            }
            Purpose::LifetimeProbe(i) => self.set_lifetime(i, true),
            Purpose::Allocation(i) => {
                self.alloc_in_flight = false;
                if let Some(m) = mapped {
                    let local = self.locals[self.config.allocation_socket_offset() + i];
                    self.alloc_samples.push((local.port(), m.port()));
                }
                self.next_allocation_probe(now);
            }
        }
    }

    /// Starts the next port-allocation probe, or classifies once all have run. Probes run
    /// one after the other so that the NAT makes their mappings in a known order; each
    /// goes to the next reflector that answered (the servers, and an RFC 5780 server's
    /// alternate address), in turn.
    fn next_allocation_probe(&mut self, now: Instant) {
        if self.alloc_in_flight || self.port_allocation.is_some() {
            return;
        }
        let i = self.alloc_started;
        if i >= self.config.port_allocation_probes {
            if self.config.port_allocation_probes > 0 {
                self.decide_port_allocation();
            }
            return;
        }
        let mut reflectors: Vec<SocketAddr> = self
            .servers
            .iter()
            .zip(&self.config.servers)
            .filter(|(s, _)| s.rtt.is_some())
            .map(|(_, spec)| spec.addr)
            .collect();
        if let Some((_, other)) = self.rfc5780_addrs() {
            reflectors.push(other);
        }
        let Some(dest) = reflectors.get(i % reflectors.len().max(1)).copied() else {
            return;
        };
        self.alloc_started += 1;
        let local = self.locals[self.config.allocation_socket_offset() + i];
        self.alloc_in_flight = self
            .try_send(
                now,
                Purpose::Allocation(i),
                local,
                dest,
                ExpectFrom::Destination,
                |_| Ok(()),
            )
            .is_some();
        if !self.alloc_in_flight {
            self.next_allocation_probe(now);
        }
    }

    fn decide_port_allocation(&mut self) {
        if self.port_allocation.is_some() {
            return;
        }
        let kind = classify_port_allocation(&self.alloc_samples);
        if kind == PortAllocation::Unknown {
            self.notes.push(format!(
                "port allocation: {} of {} probes answered, {MIN_PORT_ALLOCATION_SAMPLES} needed",
                self.alloc_samples.len(),
                self.config.port_allocation_probes
            ));
        }
        self.port_allocation = Some(kind);
        self.events.push_back(NetcheckEvent::PortAllocation(kind));
    }

    fn on_failure(&mut self, now: Instant, purpose: Purpose) {
        match purpose {
            Purpose::TestI(i) => {
                self.servers[i].done = true;
                self.events
                    .push_back(NetcheckEvent::ServerTimedOut { server: i });
            }
            Purpose::MapII | Purpose::MapIII => {
                self.mapping_unknown("the RFC 5780 server's alternate address did not answer")
            }
            Purpose::FilterI => {
                self.filtering = Some(Behaviour::Unknown);
                self.notes
                    .push("filtering: the fresh socket's test I went unanswered".into());
                self.events
                    .push_back(NetcheckEvent::Filtering(Behaviour::Unknown));
            }
            Purpose::FilterIpPort => {
                self.filter_ip_port = Some(false);
                self.decide_filtering();
            }
            Purpose::FilterPort => {
                self.filter_port = Some(false);
                self.decide_filtering();
            }
            Purpose::Hairpin => {
                self.hairpin_tid = None;
                self.set_hairpin(false);
            }
            Purpose::LifetimeBind(i) => {
                self.notes.push(format!(
                    "lifetime probe {i}: its binding request went unanswered"
                ));
                self.lifetime[i].alive = None;
                self.lifetime[i].probe_at = None;
                self.lifetime[i].mapped = None;
            }
            Purpose::LifetimeProbe(i) => self.set_lifetime(i, false),
            Purpose::Allocation(_) => {
                self.alloc_in_flight = false;
                self.next_allocation_probe(now);
            }
        }
    }

    /// (primary, other) addresses of the RFC 5780 server in use.
    fn rfc5780_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        let i = self.rfc5780?;
        Some((self.config.servers[i].addr, self.servers[i].other?))
    }

    fn start_behaviour_tests(&mut self, now: Instant) {
        let Some((primary, other)) = self.rfc5780_addrs() else {
            return;
        };
        if self.map1.is_some() {
            let alt_ip = SocketAddr::new(other.ip(), primary.port());
            self.try_send(
                now,
                Purpose::MapII,
                self.locals[0],
                alt_ip,
                ExpectFrom::Destination,
                |_| Ok(()),
            );
        } else {
            self.mapping_unknown("the RFC 5780 server returned no mapped address");
        }
        self.try_send(
            now,
            Purpose::FilterI,
            self.locals[1],
            primary,
            ExpectFrom::Destination,
            |_| Ok(()),
        );
    }

    fn start_hairpin(&mut self, now: Instant, mapped: SocketAddr) {
        if !self.config.hairpinning || self.hairpin_tid.is_some() || self.hairpin.is_some() {
            return;
        }
        self.hairpin_tid = self.try_send(
            now,
            Purpose::Hairpin,
            self.locals[0],
            mapped,
            ExpectFrom::Any,
            |_| Ok(()),
        );
    }

    fn start_lifetime(&mut self, now: Instant, server: SocketAddr) {
        self.lifetime_server = Some(server);
        for i in 0..self.lifetime.len() {
            let local = self.locals[2 + i];
            self.try_send(
                now,
                Purpose::LifetimeBind(i),
                local,
                server,
                ExpectFrom::Destination,
                |_| Ok(()),
            );
        }
    }

    fn send_lifetime_probe(&mut self, now: Instant, i: usize) {
        let (Some(server), Some(mapped)) = (self.lifetime_server, self.lifetime[i].mapped) else {
            return;
        };
        let sender = self.locals[2 + self.lifetime.len()];
        self.try_send(
            now,
            Purpose::LifetimeProbe(i),
            sender,
            server,
            ExpectFrom::Destination,
            |b| b.add(&ResponsePort(mapped.port())).map(|_| ()),
        );
    }

    fn set_mapping(&mut self, b: Behaviour) {
        if self.mapping.is_none() {
            self.mapping = Some(b);
            self.events.push_back(NetcheckEvent::Mapping(b));
        }
    }

    fn mapping_unknown(&mut self, why: &str) {
        if self.mapping.is_none() {
            self.notes.push(format!("mapping: {why}"));
            self.set_mapping(Behaviour::Unknown);
        }
    }

    fn set_lifetime(&mut self, i: usize, open: bool) {
        if self.lifetime[i].alive.is_none() {
            self.lifetime[i].alive = Some(open);
            self.events.push_back(NetcheckEvent::BindingLifetime {
                idle: self.config.lifetime_probes[i],
                open,
            });
        }
    }

    fn set_hairpin(&mut self, v: bool) {
        if self.hairpin.is_none() {
            self.hairpin = Some(v);
            self.events.push_back(NetcheckEvent::Hairpinning(v));
        }
    }

    fn decide_filtering(&mut self) {
        if self.filtering.is_some() {
            return;
        }
        let decided = match (self.filter_ip_port, self.filter_port) {
            (Some(true), _) => Behaviour::EndpointIndependent,
            (Some(false), Some(true)) => Behaviour::AddressDependent,
            (Some(false), Some(false)) => Behaviour::AddressAndPortDependent,
            _ => return,
        };
        self.filtering = Some(decided);
        self.events.push_back(NetcheckEvent::Filtering(decided));
    }

    fn check_done(&mut self) {
        if self.done {
            return;
        }
        let servers_done = self.servers.iter().all(|s| s.done);
        if !servers_done {
            return;
        }
        let behaviour_done =
            self.rfc5780.is_none() || (self.mapping.is_some() && self.filtering.is_some());
        let hairpin_done = !self.config.hairpinning
            || self.hairpin.is_some()
            || (self.hairpin_tid.is_none() && self.servers.iter().all(|s| s.mapped.is_none()));
        let lifetime_done = self.lifetime_server.is_none()
            || self
                .lifetime
                .iter()
                .all(|l| l.alive.is_some() || (l.mapped.is_none() && l.probe_at.is_none()));
        // Lifetime slots whose bind is still pending are not done.
        let lifetime_pending = self
            .purposes
            .values()
            .any(|p| matches!(p, Purpose::LifetimeBind(_) | Purpose::LifetimeProbe(_)));
        // Port allocation: decided, or never started because no server answered.
        let allocation_done = self.config.port_allocation_probes == 0
            || self.port_allocation.is_some()
            || (self.alloc_started == 0 && self.servers.iter().all(|s| s.rtt.is_none()));
        if behaviour_done && hairpin_done && lifetime_done && !lifetime_pending && allocation_done {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let report = self.report();
        self.events.push_back(NetcheckEvent::Done(Box::new(report)));
    }

    fn report(&mut self) -> Report {
        let udp = self.servers.iter().any(|s| s.rtt.is_some());
        let mut public = Vec::new();
        for m in self
            .servers
            .iter()
            .filter_map(|s| s.mapped)
            .chain(self.map2)
        {
            if !public.contains(&m) {
                public.push(m);
            }
        }
        let mut notes = std::mem::take(&mut self.notes);
        let mut mapping = self.mapping.unwrap_or(Behaviour::Unknown);
        let mut filtering = self.filtering.unwrap_or(Behaviour::Unknown);
        if !udp {
            notes.push("no server answered over UDP".into());
        } else if self.rfc5780.is_none() {
            notes.push(
                "no server returned OTHER-ADDRESS (RFC 5780): filtering cannot be determined"
                    .into(),
            );
            filtering = Behaviour::Unknown;
            mapping = self.mapping_from_plain_servers(&mut notes);
        }
        let alg = {
            // Evidence per server: the two addresses differ, or the payload was changed in
            // transit (FINGERPRINT broken) — what an address-rewriting ALG does.
            let pairs: Vec<bool> = self
                .servers
                .iter()
                .filter_map(|s| {
                    let differ = match (s.plain_mapped, s.mapped) {
                        (Some(p), Some(x)) => Some(p != x),
                        _ => None,
                    };
                    match (differ, s.fingerprint_broken) {
                        (_, true) => Some(true),
                        (d, false) => d,
                    }
                })
                .collect();
            if pairs.is_empty() {
                None
            } else {
                Some(pairs.contains(&true))
            }
        };
        if alg.is_none() && udp {
            notes.push(
                "no server sent MAPPED-ADDRESS next to XOR-MAPPED-ADDRESS: ALG rewriting unknown"
                    .into(),
            );
        }
        let binding_lifetime = (self.lifetime_server.is_some()).then(|| {
            let mut at_least = None;
            let mut less_than = None;
            for (slot, t) in self.lifetime.iter().zip(&self.config.lifetime_probes) {
                match slot.alive {
                    Some(true) => at_least = at_least.max(Some(*t)),
                    Some(false) => less_than = Some(less_than.map_or(*t, |l: Duration| l.min(*t))),
                    None => {}
                }
            }
            LifetimeEstimate {
                at_least,
                less_than,
            }
        });
        let port_allocation = (self.config.port_allocation_probes > 0).then(|| {
            self.port_allocation.unwrap_or_else(|| {
                let kind = classify_port_allocation(&self.alloc_samples);
                if kind == PortAllocation::Unknown && udp {
                    notes.push("port allocation: the probes did not finish".into());
                }
                kind
            })
        });
        Report {
            udp,
            public,
            port_allocation,
            mapping,
            filtering,
            hairpinning: self.hairpin,
            alg_rewrites: alg,
            binding_lifetime,
            rfc5780_server: self.rfc5780.map(|i| self.config.servers[i].label.clone()),
            servers: self
                .servers
                .iter()
                .zip(&self.config.servers)
                .map(|(s, spec)| ServerReport {
                    label: spec.label.clone(),
                    addr: spec.addr,
                    rtt: s.rtt,
                    mapped: s.mapped,
                    other_address: s.other,
                })
                .collect(),
            notes,
        }
    }

    /// Mapping judged from plain servers: the same mapping seen by servers on different
    /// IPs means endpoint-independent; different mappings mean endpoint-dependent, without
    /// telling address-dependent from address-and-port-dependent.
    fn mapping_from_plain_servers(&self, notes: &mut Vec<String>) -> Behaviour {
        let seen: Vec<(SocketAddr, SocketAddr)> = self
            .servers
            .iter()
            .zip(&self.config.servers)
            .filter_map(|(s, spec)| Some((spec.addr, s.mapped?)))
            .collect();
        let mut distinct_ips: Vec<_> = seen.iter().map(|(a, _)| a.ip()).collect();
        distinct_ips.sort();
        distinct_ips.dedup();
        if distinct_ips.len() < 2 {
            notes.push("mapping: needs an RFC 5780 server or two servers on different IPs".into());
            return Behaviour::Unknown;
        }
        if seen.iter().all(|(_, m)| *m == seen[0].1) {
            Behaviour::EndpointIndependent
        } else {
            notes.push(
                "mapping: varies by destination (address-dependent or address-and-port-dependent); \
                 an RFC 5780 server would tell which"
                    .into(),
            );
            Behaviour::Unknown
        }
    }
}

#[cfg(test)]
mod tests;
