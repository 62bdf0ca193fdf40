//! The ICE agent (RFC 8445), sans-IO: connectivity checks, nomination, consent freshness
//! (RFC 7675), role conflicts, trickled candidates (RFC 8838) and restarts.
//!
//! The agent knows candidates, not sockets and not TURN: local candidates come from
//! outside with their *base* (the local address checks are sent from; a relayed
//! candidate is its own base), and every [`Transmit`] it emits has a base as its source.
//! Whoever owns the sockets sends it from there — through the TURN allocation when the
//! base is a relayed address — and hands datagrams received on a base back to
//! [`IceAgent::handle_input`].
//!
//! Choices (RFC 8445 leaves them to the implementation):
//! - Checks are paced at `Ta` ([`IceConfig::ta`], RFC 8445 §14.2), triggered checks first,
//!   then the waiting pair of highest priority; retransmissions per RFC 8489 §6.2.1 with
//!   [`IceConfig::check_rto`].
//! - **Data flows on the first valid pair**: the controlling agent nominates the first pair
//!   that succeeds and **renominates** when a pair of higher priority succeeds later
//!   (direct after relay), without a restart; the controlled agent follows the latest
//!   nomination (`a=ice-options:renomination`, as libwebrtc and str0m do). The old pair's
//!   nominating check stops then, and a late answer to it nominates nothing. Before any
//!   nomination, the best valid pair already carries data.
//! - **Peers without renomination** ([`IceAgent::set_remote_renomination`]: their
//!   description has no `renomination` ICE option; webrtc-ice's controlled agent, for
//!   one, keeps the first pair nominated to it) get one nomination, as RFC 8445 §8.1.1
//!   requires. So that it is not a relayed pair while a direct one may still succeed,
//!   the first nomination of a relayed pair waits while any direct pair is still
//!   checking, at most [`NOMINATION_HOLD`]; a direct pair that succeeds meanwhile is
//!   nominated at once. (Data already flows on this side's best valid pair meanwhile.)
//! - Consent (RFC 7675 §5.1): a check on the selected pair every 4–6 s; without an answer
//!   for [`IceConfig::consent_timeout`] the pair is dropped and the agent moves to another
//!   valid pair or reports [`IceState::Disconnected`]. These checks are also its keepalives.
//!   A path that stops working says so sooner: a consent check unanswered for
//!   [`UNANSWERED_CHECK`] with nothing else heard on the pair (and, while the peer's data
//!   flowed, its stopping for [`SILENT_PATH`] sends that check at once) starts a probe,
//!   as a resume does: every valid pair is checked, and the selected one has
//!   [`super::keepalive::RESUME_PROBE`] more to answer before the agent moves to one that
//!   did (or, with none, the peer connection restarts ICE). A NAT that maps anew, a
//!   firewall that closes: seconds, not 30 s and a dead connection.
//! - A peer-reflexive candidate at the IP of one of the peer's relayed candidates is that
//!   relay with its port rewritten: it ranks as relayed, not above the direct pairs.
//! - **Port prediction**: when the peer says its NAT allocates ports sequentially
//!   ([`IceAgent::set_remote_port_allocation`], from pinhole's
//!   `a=x-pinhole-port-allocation` attribute), each of its server-reflexive candidates
//!   brings up to [`IceConfig::predicted_ports`] predicted ones (the next ports by its
//!   step), peer-reflexive in kind and ranked just below the candidate they come from,
//!   paired with our host and server-reflexive candidates only. Behind an
//!   endpoint-dependent mapping the peer's checks to us leave from a new port, which is
//!   one of those: our checks to it open our filter for the peer's checks and answer
//!   them, and the ordinary machinery (triggered checks, peer-reflexive candidates) does
//!   the rest. Wrong guesses are a few unanswered checks.
//! - Security: requests without the right USERNAME and MESSAGE-INTEGRITY are dropped
//!   silently; remote candidates (trickled or peer-reflexive) and pairs are bounded; role
//!   conflicts are repaired per RFC 8445 §7.3.1.1, at most a few times per pair. The
//!   password is never logged.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use super::candidate::{Candidate, CandidateKind, CandidateTransport, TcpType};
use super::keepalive::{AdaptiveInterval, KeepalivePolicy, RESUME_PROBE};
use crate::stun::attributes::{
    ErrorCode, IceControlled, IceControlling, Priority, UseCandidate, Username, XorMappedAddress,
};
use crate::stun::{
    ClientConfig, ExpectFrom, IntegrityKey, Message, MessageBuilder, MessageType, Method, Request,
    StunClient, TransactionEvent, TransactionId,
};
use crate::{Protocol, Received, Transmit};

/// The longest a controlling agent holds the nomination of a relayed pair while direct
/// pairs are still being checked, for a peer that does not follow renomination (see the
/// module docs): long enough for direct checks a few round trips away, short enough that a
/// relay-only cell is not slowed noticeably.
pub const NOMINATION_HOLD: Duration = Duration::from_secs(1);

/// NOMINATION (0xC001, comprehension-optional, a 32-bit value), as libwebrtc's
/// renomination carries it: the controlling agent numbers its nominations, and the
/// controlled agent follows the latest number it saw. Pair priorities cannot order
/// renominations: the two agents may rank the same pair differently (a relayed candidate
/// first learned as peer-reflexive keeps that higher priority on one side only).
/// Peers that do not send it are followed by priority, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nomination(u32);

impl<'a> crate::stun::attributes::Attribute<'a> for Nomination {
    const TYPE: crate::stun::AttributeType = crate::stun::AttributeType(0xC001);
    fn decode(value: &'a [u8], _tid: &TransactionId) -> Result<Self, crate::stun::StunError> {
        let b: [u8; 4] =
            value
                .try_into()
                .map_err(|_| crate::stun::StunError::InvalidAttribute {
                    attr: 0xC001,
                    reason: "NOMINATION is 4 bytes",
                })?;
        Ok(Self(u32::from_be_bytes(b)))
    }
    fn encoded_len(&self) -> usize {
        4
    }
    fn encode(&self, out: &mut [u8], _tid: &TransactionId) {
        out.copy_from_slice(&self.0.to_be_bytes());
    }
}

/// A side's ICE credentials (RFC 8445 §5.3): `a=ice-ufrag` and `a=ice-pwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    /// The user name fragment (4 to 256 ice-chars).
    pub ufrag: String,
    /// The password (22 to 256 ice-chars). Never logged: `Debug` hides it.
    pub pwd: String,
}

impl std::fmt::Debug for IceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .field("pwd", &"<redacted>")
            .finish()
    }
}

impl IceCredentials {
    /// Random credentials: an 8-character ufrag (48 bits) and a 24-character password
    /// (144 bits; RFC 8445 §5.3 asks for at least 24 and 128 bits).
    pub fn random(rng: &mut impl RngCore) -> Self {
        const CHARS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(CHARS[(rng.next_u32() % 64) as usize]))
                .collect()
        };
        Self {
            ufrag: pick(8),
            pwd: pick(24),
        }
    }
}

/// The smallest Ta RFC 8445 §14.2 allows: 5 ms.
pub const MIN_TA: Duration = Duration::from_millis(5);
/// The largest `a=ice-pacing` a peer may ask for that this agent follows: 1 s. A higher
/// value (a hostile or broken peer) is taken as 1 s, so that checks never stall.
pub const MAX_REMOTE_TA: Duration = Duration::from_secs(1);

/// The agent's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IceConfig {
    /// Pacing of new checks, offered to the peer as `a=ice-pacing` (RFC 8839 §5.2); both
    /// sides then use the higher of the two offers (RFC 8445 §14.2, see
    /// [`IceAgent::set_remote_pacing`]). RFC 8445 §14.2 suggests 50 ms and allows down
    /// to 5 ms; the default here is that floor, 5 ms: one data stream of one component has
    /// a handful of pairs, and the first pair that can work (server-reflexive, behind a
    /// host pair to an unreachable private address) is checked one Ta after the first —
    /// measured in the lab as 0.5 RTT of the time to a usable path at 100 ms RTT with
    /// 50 ms, 0.2 RTT with 20 ms. Values under 5 ms are raised to 5 ms.
    pub ta: Duration,
    /// The first retransmission timeout of a check (RFC 8445 §14.3 takes RFC 8489's
    /// 500 ms as the floor for a full checklist; one data stream's few pairs can go
    /// faster). Default 250 ms.
    pub check_rto: Duration,
    /// Transmissions of a check before its pair fails (RFC 8489 Rc: 7).
    pub check_transmits: u32,
    /// Consent checks on the selected pair every `consent_interval` ± 20 % (RFC 7675
    /// §5.1: 5 s).
    pub consent_interval: Duration,
    /// Consent is lost after this long without an answer (RFC 7675 §5.1: 30 s).
    pub consent_timeout: Duration,
    /// The most remote candidates held (trickled and peer-reflexive); more are ignored.
    pub max_remote_candidates: usize,
    /// The most candidate pairs (RFC 8445 §6.1.2.5 suggests 100).
    pub max_pairs: usize,
    /// Run as an ICE-lite agent (RFC 8445 §2.5), for hosts with a public address such
    /// as servers: always controlled, sends no checks (it answers them), and takes a pair
    /// as valid when a check arrives on it and as selected when the check nominates it.
    /// Consent is the peer's checks arriving (a lite agent sends none). Offer only host
    /// candidates and `a=ice-lite` in the description. Off by default.
    pub lite: bool,
    /// Predicted candidates per server-reflexive candidate of a peer whose NAT allocates
    /// ports sequentially (see the module docs); default 8, at most
    /// [`MAX_PREDICTED_PORTS`]. 0 turns prediction off.
    pub predicted_ports: usize,
    /// How long a check over TCP waits for its answer (RFC 6544 §7.1: sent once on the
    /// connection, never retransmitted; this bounds the connection attempt too, which
    /// for a simultaneous open the driver repeats until then).
    pub tcp_check_timeout: Duration,
    /// A fixed keepalive interval for [`KeepalivePolicy::Background`] instead of the one
    /// that adapts to the NATs (see [`super::keepalive`]); `None` (the default) adapts.
    pub keepalive_interval: Option<Duration>,
}

/// The most predicted candidates per server-reflexive candidate of the peer, and in all
/// twice that: each is a pair or two to check, and a wrong guess costs a check's
/// retransmissions.
pub const MAX_PREDICTED_PORTS: usize = 8;

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            ta: MIN_TA,
            check_rto: Duration::from_millis(250),
            check_transmits: 7,
            consent_interval: Duration::from_secs(5),
            consent_timeout: Duration::from_secs(30),
            max_remote_candidates: 64,
            max_pairs: 100,
            lite: false,
            predicted_ports: MAX_PREDICTED_PORTS,
            tcp_check_timeout: Duration::from_secs(8),
            keepalive_interval: None,
        }
    }
}

/// The agent's state (RFC 8445 §6.1.3, with RFC 7675's consent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IceState {
    /// Waiting for the remote description or candidates.
    New,
    /// Checking, nothing valid yet.
    Checking,
    /// A pair carries data.
    Connected,
    /// Consent was lost on every valid pair; checks go on while candidates remain.
    Disconnected,
    /// Every pair failed and the peer said no more candidates are coming.
    Failed,
}

/// What the agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IceEvent {
    /// The state changed.
    State(IceState),
    /// The pair data goes on changed (first valid pair, a nomination, a renomination, a
    /// consent loss that moved to another pair).
    SelectedPair {
        /// Our candidate (its base is where data is sent from).
        local: Candidate,
        /// The peer's candidate.
        remote: Candidate,
        /// Whether the pair is nominated (else: the best valid pair, used until then).
        nominated: bool,
        /// The round-trip time of the check that validated it.
        rtt: Option<Duration>,
    },
    /// A peer-reflexive remote candidate was learned from a check (RFC 8445 §7.3.1.3).
    PeerReflexive(Candidate),
    /// The agent changed role to repair a conflict (RFC 8445 §7.3.1.1).
    RoleChanged {
        /// Whether it is now controlling.
        controlling: bool,
    },
}

/// What a datagram offered to the agent was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceInput {
    /// An ICE check or its answer: consumed.
    Consumed,
    /// Not for the agent (application data, another machine's STUN): pass it on.
    NotIce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
struct Local {
    candidate: Candidate,
    base: SocketAddr,
    /// Gone ([`IceAgent::local_candidate_lost`]): pairs with it fail, new ones are not made.
    gone: bool,
}

#[derive(Debug, Clone)]
struct Pair {
    local: usize,
    remote: usize,
    priority: u64,
    state: PairState,
    /// The check in flight, and whether it nominates.
    check: Option<(TransactionId, bool)>,
    /// Whether that check was sent as the controlling agent (a 487 answers that role).
    check_controlling: bool,
    /// A check of ours that a triggered check replaced (RFC 8445 §7.3.1.4), and whether
    /// it nominates: its answer still counts, its silence fails nothing.
    superseded: Option<(TransactionId, bool)>,
    /// Nominated (sent or received USE-CANDIDATE, and succeeded).
    nominated: bool,
    /// The controlled agent received USE-CANDIDATE before its own check succeeded.
    nominate_on_success: bool,
    /// The NOMINATION number of the USE-CANDIDATE waiting for that success, if any.
    nominate_seq: Option<u32>,
    rtt: Option<Duration>,
    /// The last answered check on this pair (consent, RFC 7675).
    last_answer: Option<Instant>,
    /// The last application data from the peer on this pair ([`IceAgent::data_received`]).
    last_data: Option<Instant>,
    /// The last authenticated check from the peer on this pair.
    last_check_in: Option<Instant>,
    /// The last packet the agent knows of on this pair, either way (checks, answers, the
    /// peer's data): the start of the silence a keepalive round measures.
    last_traffic: Option<Instant>,
    role_conflicts: u8,
}

/// A selected pair silent this long (no data, no answer) while the peer's data arrives on
/// another valid pair is given up for that one by the controlling agent: the peer moved
/// (its relay was lost and made again, its network changed under a pair it could not
/// keep). Consent (30 s) would get there too, only much later.
pub const SILENT_PATH: Duration = Duration::from_secs(2);

/// In the foreground, our consent check on the selected pair unanswered this long, with
/// nothing else heard on that pair since it went (no data, no check from the peer),
/// means the path stopped working (a NAT on it rebooted or dropped its mapping, a
/// firewall closed it): every valid pair gets a check at once and the selected one has
/// [`RESUME_PROBE`] more to answer before it is given up, as after a resume, instead of
/// the end of RFC 7675's 30 s consent. The check has gone four times by then (0, 250,
/// 750 and 1750 ms at the default RTO), so one lost answer does not start a probe.
pub const UNANSWERED_CHECK: Duration = Duration::from_secs(2);

/// In the background, the controlled agent checks by itself when the controlling agent's
/// keepalive round is this many times its last pace late: the keeper's interval grows by
/// 30 % at most per round ([`super::keepalive::GROWTH`]), its rounds go at 95–100 % of
/// it, so a round on time is never later than 1.3 / 0.95 ≈ 1.37 times the last pace.
const LATE_ROUND: f64 = 1.45;

/// In the background, a keepalive check goes this many times (at the check RTO, doubled
/// each time: 0, 250 and 750 ms by default) before the round counts as failed and the
/// check is given up: a lost round is repaired by the peer's own check, not by ours.
const BACKGROUND_ROUND_TRANSMITS: u32 = 3;

/// How many times one pair may repair a role conflict before it fails.
const MAX_ROLE_CONFLICTS: u8 = 4;
/// Peer-reflexive candidates learned per local base. Between two NATs with
/// endpoint-dependent mapping and open filtering, every triggered check arrives from a new
/// port and makes another one: without a bound per base that storm would fill the remote
/// candidates and starve the relayed base of the one it needs.
const MAX_PRFLX_PER_BASE: usize = 8;

/// The ICE agent. See the module docs.
#[derive(Debug)]
pub struct IceAgent {
    config: IceConfig,
    rng: ChaCha20Rng,
    controlling: bool,
    tie_breaker: u64,
    local_creds: IceCredentials,
    remote_creds: Option<IceCredentials>,
    locals: Vec<Local>,
    remotes: Vec<Candidate>,
    /// For each remote candidate: the local base it was learned on, if peer-reflexive.
    learned_on: Vec<Option<SocketAddr>>,
    /// The peer's NAT's step between new mappings, when it allocates sequentially.
    remote_step: Option<i32>,
    /// The remote candidates that are predictions (not signalled, not learned).
    predicted: Vec<SocketAddr>,
    remote_done: bool,
    /// Our gathering is over: without it, no pairs yet means "wait", not "failed".
    local_done: bool,
    pairs: Vec<Pair>,
    triggered: VecDeque<usize>,
    client: StunClient,
    selected: Option<usize>,
    /// The last nomination the controlling side sent or the controlled side followed.
    nominated: Option<usize>,
    /// Controlling: the number of the latest nomination (NOMINATION), raised for each
    /// newly nominated pair. Controlled: the highest number followed so far.
    nomination_seq: u32,
    /// Controlled: whether a numbered nomination was followed (then numbers decide).
    followed_numbered: bool,
    /// Whether the peer follows renomination ([`IceAgent::set_remote_renomination`]).
    remote_renomination: bool,
    /// A held first nomination of a relayed pair: until when (see [`NOMINATION_HOLD`]).
    hold_until: Option<Instant>,
    /// Whether the selected pair was reported as nominated.
    selected_nominated: bool,
    /// After a restart, the old selected path carries data until a new pair is chosen.
    previous_path: Option<(SocketAddr, SocketAddr)>,
    /// The protocol of `previous_path`.
    previous_proto: Protocol,
    state: IceState,
    next_check: Option<Instant>,
    /// The peer's `a=ice-pacing`; zero until it offers one.
    remote_ta: Duration,
    next_consent: Option<Instant>,
    /// The keepalive policy (see [`super::keepalive`]).
    policy: KeepalivePolicy,
    /// The background keepalive interval, adapting to the selected path's NATs.
    keepalive: AdaptiveInterval,
    /// Our consent check in flight on the selected pair, and the silence before it.
    round: Option<(TransactionId, Duration)>,
    /// In the background, when our round in flight is given up (see
    /// [`BACKGROUND_ROUND_TRANSMITS`]).
    round_give_up: Option<Instant>,
    /// When the path was last resumed, or found silent ([`UNANSWERED_CHECK`]): pairs
    /// not heard from since have [`RESUME_PROBE`] to answer.
    probe_from: Option<Instant>,
    /// Whether the probe running was started by a silence ([`UNANSWERED_CHECK`]) rather
    /// than a resume: the peer's check on the selected pair ends it too (the peer still
    /// wants the path and reaches us on it), where a resume in the foreground waits for
    /// an answer.
    probe_silence: bool,
    /// When our consent check in flight on the selected pair went.
    consent_sent: Option<Instant>,
    /// The silence deadline last acted upon (each is acted upon once).
    silence_acted: Option<Instant>,
    /// When the policy became [`KeepalivePolicy::Suspended`].
    suspended_at: Option<Instant>,
    /// The peer's last check on the selected pair, and the gap before it (its keepalive
    /// rounds' pace, when it is the side that keeps the path).
    peer_round: Option<(Instant, Option<Duration>)>,
    /// The pair the keepalive interval was learned on.
    keepalive_pair: Option<usize>,
    /// When to look again whether the peer's data moved to another pair
    /// ([`SILENT_PATH`]).
    follow_at: Option<Instant>,
    /// The latest time the agent was given (for work that candidates or credentials
    /// arriving between calls make due).
    now: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<IceEvent>,
}

/// RFC 6544 §6.2: which TCP candidates pair. Active with passive (we connect), so with so
/// (both connect at once); passive with active only when the peer connected to us (the
/// peer-reflexive candidate its check made: port 9 is nobody's address).
/// The candidate transport a datagram's protocol is.
fn transport_of(proto: Protocol) -> CandidateTransport {
    match proto {
        Protocol::Udp => CandidateTransport::Udp,
        Protocol::Tcp => CandidateTransport::Tcp,
    }
}

/// The protocol a candidate's transport sends on.
fn proto_of(transport: CandidateTransport) -> Protocol {
    match transport {
        CandidateTransport::Udp => Protocol::Udp,
        CandidateTransport::Tcp => Protocol::Tcp,
    }
}

fn tcp_pairable(local: Option<TcpType>, remote: &Candidate) -> bool {
    match (local, remote.tcp_type) {
        (Some(TcpType::Active), Some(TcpType::Passive)) => true,
        (Some(TcpType::SimultaneousOpen), Some(TcpType::SimultaneousOpen)) => true,
        (Some(TcpType::Passive), Some(TcpType::Active)) => {
            remote.kind == CandidateKind::PeerReflexive
        }
        _ => false,
    }
}

/// Pair priority, RFC 8445 §6.1.2.3: `2^32·min(G,D) + 2·max(G,D) + (G > D ? 1 : 0)`.
pub fn pair_priority(controlling: u32, controlled: u32) -> u64 {
    let (g, d) = (u64::from(controlling), u64::from(controlled));
    (g.min(d) << 32) + 2 * g.max(d) + u64::from(g > d)
}

impl IceAgent {
    /// An agent, controlling or controlled, created at `now`, with fresh credentials
    /// from `seed`.
    pub fn new(now: Instant, config: IceConfig, controlling: bool, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let keepalive = AdaptiveInterval::new(config.keepalive_interval);
        let local_creds = IceCredentials::random(&mut rng);
        let tie_breaker = rng.next_u64();
        let mut client_seed = [0u8; 32];
        rng.fill_bytes(&mut client_seed);
        let client = StunClient::new(
            ClientConfig {
                rto: config.check_rto,
                max_transmits: config.check_transmits,
                last_wait_multiplier: 4,
                max_outstanding: config.max_pairs + 8,
                reliable_timeout: config.tcp_check_timeout,
                ..ClientConfig::default()
            },
            client_seed,
        );
        Self {
            // RFC 8445 §6.1.1: a lite agent is always the controlled one.
            controlling: controlling && !config.lite,
            config,
            rng,
            tie_breaker,
            local_creds,
            remote_creds: None,
            locals: Vec::new(),
            remotes: Vec::new(),
            learned_on: Vec::new(),
            remote_step: None,
            predicted: Vec::new(),
            remote_done: false,
            local_done: false,
            pairs: Vec::new(),
            triggered: VecDeque::new(),
            client,
            selected: None,
            nominated: None,
            nomination_seq: 0,
            followed_numbered: false,
            remote_renomination: true,
            hold_until: None,
            selected_nominated: false,
            previous_path: None,
            previous_proto: Protocol::Udp,
            state: IceState::New,
            next_check: None,
            remote_ta: Duration::ZERO,
            next_consent: None,
            keepalive,
            policy: KeepalivePolicy::Foreground,
            round: None,
            round_give_up: None,
            probe_from: None,
            probe_silence: false,
            consent_sent: None,
            silence_acted: None,
            suspended_at: None,
            peer_round: None,
            keepalive_pair: None,
            follow_at: None,
            now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the peer follows renomination: its description lists the `renomination`
    /// ICE option ([`super::IceDescription::renomination`]; pinhole's does). Without it,
    /// this agent nominates once when it controls (RFC 8445 §8.1.1), holding a relayed
    /// pair's nomination while direct pairs are still checked (see the module docs). On
    /// until told otherwise.
    pub fn set_remote_renomination(&mut self, follows: bool) {
        self.remote_renomination = follows;
    }

    /// The peer is an ICE-lite agent (`a=ice-lite` in its description): it sends no
    /// checks, so this full agent takes the controlling role (RFC 8445 §6.1.1) and
    /// nominates. Ignored when this agent is lite too (two lite agents cannot connect).
    ///
    /// See also [`set_remote_renomination`](Self::set_remote_renomination).
    pub fn set_remote_lite(&mut self, lite: bool) {
        if lite && !self.config.lite && !self.controlling {
            debug!("the peer is ICE-lite: controlling");
            self.switch_role(true);
        }
    }

    /// The peer's `a=ice-pacing` (RFC 8839 §5.2), in milliseconds: both agents pace their
    /// checks at the higher of the two offers (RFC 8445 §14.2), at most
    /// [`MAX_REMOTE_TA`]. A peer that offers none is taken at our own value, as libnice
    /// and browsers (which do not signal it) do with theirs; RFC 8445 would have us
    /// assume 50 ms, which costs a whole round trip's share of connect time for nothing
    /// when the peer is pinhole, libnice (20 ms) or a browser.
    pub fn set_remote_pacing(&mut self, ms: u32) {
        let remote = Duration::from_millis(u64::from(ms)).min(MAX_REMOTE_TA);
        self.remote_ta = remote;
    }

    /// The Ta this agent offers as `a=ice-pacing` ([`IceConfig::ta`], at least 5 ms).
    pub fn offered_ta(&self) -> Duration {
        self.config.ta.max(MIN_TA)
    }

    /// The Ta checks are paced at: the higher of ours and the peer's `a=ice-pacing`.
    pub fn ta(&self) -> Duration {
        self.config.ta.max(self.remote_ta).max(MIN_TA)
    }

    /// Whether this agent runs lite ([`IceConfig::lite`]).
    pub fn is_lite(&self) -> bool {
        self.config.lite
    }

    /// Our credentials, for the local description.
    pub fn local_credentials(&self) -> &IceCredentials {
        &self.local_creds
    }

    /// The peer's credentials, once set.
    pub fn remote_credentials(&self) -> Option<&IceCredentials> {
        self.remote_creds.as_ref()
    }

    /// Whether this agent is controlling.
    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    /// The current state.
    pub fn state(&self) -> IceState {
        self.state
    }

    /// Our candidates so far.
    pub fn local_candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.locals.iter().map(|l| &l.candidate)
    }

    /// The pair data goes on: (our base, the peer's address).
    pub fn selected(&self) -> Option<(SocketAddr, SocketAddr)> {
        let Some(s) = self.selected else {
            return self.previous_path;
        };
        let p = &self.pairs[s];
        Some((self.locals[p.local].base, self.remote_addr(p.remote)?))
    }

    /// The protocol of the pair data goes on ([`Self::selected`]): UDP, or TCP for an
    /// ICE-TCP pair (RFC 6544; the driver frames data on it, RFC 4571).
    pub fn selected_proto(&self) -> Option<Protocol> {
        let Some(s) = self.selected else {
            return self.previous_path.map(|_| self.previous_proto);
        };
        Some(proto_of(
            self.locals[self.pairs[s].local].candidate.transport,
        ))
    }

    /// The selected pair's candidates: (ours, the peer's).
    pub fn selected_candidates(&self) -> Option<(&Candidate, &Candidate)> {
        let p = &self.pairs[self.selected?];
        Some((&self.locals[p.local].candidate, self.remotes.get(p.remote)?))
    }

    /// The peer's candidates: signalled, learned from its checks and predicted.
    pub fn remote_candidates(&self) -> impl Iterator<Item = &Candidate> {
        self.remotes.iter()
    }

    /// Whether `addr` is a known remote candidate: signalled by the peer, or learned from
    /// one of its authenticated checks. Data from anyone else is not the peer's.
    pub fn is_remote(&self, addr: SocketAddr) -> bool {
        self.remotes.iter().any(|c| c.socket_addr() == Some(addr))
            // During a restart, the old path still carries the peer's data (RFC 8445 §9).
            || self.previous_path.is_some_and(|(_, to)| to == addr)
    }

    /// The addresses of the remote candidates known so far.
    pub fn remote_addresses(&self) -> Vec<SocketAddr> {
        self.remotes
            .iter()
            .filter_map(Candidate::socket_addr)
            .collect()
    }

    fn remote_addr(&self, r: usize) -> Option<SocketAddr> {
        self.remotes.get(r)?.socket_addr()
    }

    /// Adds one of our candidates, with its base (RFC 8445 §5.1.1). Returns false when it
    /// is redundant (same address, transport and base as one we have, RFC 8445 §5.1.3) or
    /// not usable (no IP address, or TCP without a `tcptype`).
    ///
    /// TCP candidates (RFC 6544): the base of an active one is its IP with port 0 (the
    /// driver connects from an ephemeral port and keys the connection by that base and the
    /// peer's address); a passive one's is its listening address; a simultaneous-open
    /// one's is the address its connections are bound to. Transmits for TCP pairs carry
    /// [`Protocol::Tcp`] and datagrams from them must arrive with it.
    pub fn add_local_candidate(&mut self, candidate: Candidate, base: SocketAddr) -> bool {
        if candidate.socket_addr().is_none()
            || (candidate.transport == CandidateTransport::Tcp && candidate.tcp_type.is_none())
        {
            return false;
        }
        if let Some(l) = self.locals.iter().position(|l| {
            l.base == base
                && l.candidate.transport == candidate.transport
                && l.candidate.socket_addr() == candidate.socket_addr()
        }) {
            if !self.locals[l].gone {
                return false;
            }
            // The same address again (a new allocation that got the lost one's relayed
            // address back): usable again, its pairs checked afresh.
            self.locals[l].gone = false;
            self.locals[l].candidate = candidate;
            for p in self.pairs.iter_mut().filter(|p| p.local == l) {
                p.state = PairState::Waiting;
                p.check = None;
                p.superseded = None;
                p.nominated = false;
                p.nominate_on_success = false;
                p.nominate_seq = None;
                p.rtt = None;
                p.last_answer = None;
                p.last_data = None;
            }
            for r in 0..self.remotes.len() {
                self.pair_up(l, r);
            }
            self.schedule_checks_now();
            return true;
        }
        let relayed = candidate.kind == CandidateKind::Relayed;
        self.locals.push(Local {
            candidate,
            base,
            gone: false,
        });
        let l = self.locals.len() - 1;
        for r in 0..self.remotes.len() {
            let predicted = self.remotes[r]
                .socket_addr()
                .is_some_and(|a| self.predicted.contains(&a));
            if !(relayed && predicted) {
                self.pair_up(l, r);
            }
        }
        self.schedule_checks_now();
        true
    }

    /// Sets the peer's credentials (from its description). A change of credentials is an
    /// ICE restart by the peer: see [`IceAgent::restart`].
    pub fn set_remote_credentials(&mut self, creds: IceCredentials) {
        self.remote_creds = Some(creds);
        self.schedule_checks_now();
    }

    /// Adds a remote candidate (from the description, or trickled). Candidates without an
    /// IP address (unresolved mDNS names), other transports, duplicates and those beyond
    /// [`IceConfig::max_remote_candidates`] are ignored; returns whether it was added.
    pub fn add_remote_candidate(&mut self, candidate: Candidate) -> bool {
        let Some(addr) = candidate.socket_addr() else {
            debug!("remote candidate without an IP address ignored");
            return false;
        };
        if candidate.transport == CandidateTransport::Tcp && candidate.tcp_type.is_none() {
            debug!("TCP candidate without a tcptype ignored (RFC 6544 §4.5)");
            return false;
        }
        if let Some(i) = self
            .remotes
            .iter()
            .position(|c| c.socket_addr() == Some(addr) && c.transport == candidate.transport)
        {
            // A signalled candidate replaces a peer-reflexive one learned first, with its
            // signalled type and priority (as libwebrtc does; RFC 8445 §7.3.1.3 leaves
            // it open). The learned priority is what a check's PRIORITY attribute says: a
            // peer-reflexive one's (type preference 110) even when the check came from
            // the peer's relayed candidate (RFC 8445 §7.1.1), so keeping it ranked the
            // peer's relay above our direct pairs — on this side only, the two sides then
            // disagreeing on which pair is best (seen in the lab: a controlling agent
            // renominating from a direct pair to a relayed one).
            if self.remotes[i].kind == CandidateKind::PeerReflexive
                && candidate.kind != CandidateKind::PeerReflexive
            {
                self.learned_on[i] = None;
                self.remotes[i] = candidate;
                self.reprioritize();
                self.renominate_best();
                let before = (self.selected, self.events.len());
                self.reselect(self.now);
                // The path data goes on is the same, but what it is known to be changed
                // (a prflx that was the peer's host or relay): say so, so that an app's
                // view of the path (direct or relayed) is never stale.
                if let (Some(s), n) = before
                    && self.selected == Some(s)
                    && self.events.len() == n
                    && self.pairs[s].remote == i
                {
                    self.push_selected(s);
                }
            }
            return false;
        }
        let signalled = self.learned_on.iter().filter(|l| l.is_none()).count()
            - self
                .remotes
                .iter()
                .filter(|c| c.socket_addr().is_some_and(|a| self.predicted.contains(&a)))
                .count();
        if signalled >= self.config.max_remote_candidates {
            debug!("remote candidate beyond the limit ignored");
            return false;
        }
        let srflx = candidate.kind == CandidateKind::ServerReflexive
            && candidate.transport == CandidateTransport::Udp;
        let relayed = candidate.kind == CandidateKind::Relayed;
        self.remotes.push(candidate);
        self.learned_on.push(None);
        let r = self.remotes.len() - 1;
        for l in 0..self.locals.len() {
            self.pair_up(l, r);
        }
        if srflx {
            self.predict_from(r);
        }
        if relayed && self.rank_relay_lookalikes() {
            self.reprioritize();
            self.renominate_best();
            self.reselect(self.now);
        }
        self.schedule_checks_now();
        true
    }

    /// Whether peer-reflexive candidate `c` is one of the peer's relayed candidates seen
    /// with another port: a source at the IP of a relayed candidate of the peer's (of
    /// its TURN server) is that relay behind something that rewrote the port (a TURN
    /// server behind a NAT or a load balancer; in the NAT lab, the source rewriting of
    /// miniupnpd's PEER rule), not a host of the peer's. A check's PRIORITY is a
    /// peer-reflexive one's even from a relayed candidate (RFC 8445 §7.1.1), which would
    /// rank that relay above our direct pairs, on this side only.
    fn relay_lookalike(&self, c: &Candidate) -> bool {
        c.kind == CandidateKind::PeerReflexive
            && self.remotes.iter().any(|k| {
                k.kind == CandidateKind::Relayed
                    && k.transport == c.transport
                    && k.address == c.address
            })
    }

    /// The relayed type preference (RFC 8445 §5.1.2.2) for the peer-reflexive candidate
    /// `c` when it is a relay lookalike ([`IceAgent::relay_lookalike`]), keeping the rest
    /// of its priority; whether it changed.
    fn rank_as_relay(&self, c: &mut Candidate) -> bool {
        if !self.relay_lookalike(c) {
            return false;
        }
        let ranked = (CandidateKind::Relayed.type_preference_on(c.transport) << 24)
            | (c.priority & 0x00FF_FFFF);
        std::mem::replace(&mut c.priority, ranked) != ranked
    }

    /// Ranks the peer-reflexive candidates that turn out to be relay lookalikes (a
    /// relayed candidate of the peer's arrived after them) as relayed; whether any
    /// changed.
    fn rank_relay_lookalikes(&mut self) -> bool {
        let mut changed = false;
        for r in 0..self.remotes.len() {
            let mut c = self.remotes[r].clone();
            if self.rank_as_relay(&mut c) {
                debug!(remote = %c, "a peer-reflexive candidate at the peer's relay: ranked as relayed");
                self.remotes[r] = c;
                changed = true;
            }
        }
        changed
    }

    /// How the peer's NAT allocates external ports, as the peer says (pinhole's
    /// `a=x-pinhole-port-allocation`). A sequential allocation turns on port prediction
    /// for its server-reflexive candidates, those known and those to come (see the module
    /// docs); any other kind turns it off for the candidates to come.
    pub fn set_remote_port_allocation(&mut self, allocation: crate::netcheck::PortAllocation) {
        self.remote_step = allocation
            .delta()
            .filter(|d| *d != 0 && d.abs() <= crate::netcheck::MAX_SEQUENTIAL_STEP);
        if self.remote_step.is_none() {
            return;
        }
        let srflx: Vec<usize> = (0..self.remotes.len())
            .filter(|r| {
                self.remotes[*r].kind == CandidateKind::ServerReflexive
                    && self.learned_on[*r].is_none()
            })
            .collect();
        for r in srflx {
            self.predict_from(r);
        }
        self.schedule_checks_now();
    }

    /// The predicted remote candidates so far.
    pub fn predicted_candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.predicted.iter().copied()
    }

    /// Adds the predicted candidates of the peer's server-reflexive candidate `r`: the
    /// next ports by the peer's step, ranked just below it.
    fn predict_from(&mut self, r: usize) {
        let Some(step) = self.remote_step else { return };
        let Some(from) = self.remotes[r].socket_addr() else {
            return;
        };
        let per = self.config.predicted_ports.min(MAX_PREDICTED_PORTS);
        let base_priority = self.remotes[r].priority;
        let component = self.remotes[r].component;
        for k in 1..=per {
            if self.predicted.len() >= 2 * MAX_PREDICTED_PORTS {
                return;
            }
            let Ok(k32) = i32::try_from(k) else { return };
            let port = i32::from(from.port()) + step * k32;
            let Ok(port) = u16::try_from(port) else {
                return;
            };
            if port == 0 {
                return;
            }
            let addr = SocketAddr::new(from.ip(), port);
            if self.remotes.iter().any(|c| c.socket_addr() == Some(addr)) {
                continue;
            }
            let mut c = Candidate::new(
                CandidateKind::PeerReflexive,
                CandidateTransport::Udp,
                addr,
                addr.ip(),
                None,
                0,
            );
            c.component = component;
            c.priority = base_priority.saturating_sub(u32::try_from(k).unwrap_or(u32::MAX));
            debug!(%addr, "predicted remote candidate");
            self.predicted.push(addr);
            self.remotes.push(c);
            self.learned_on.push(None);
            let pr = self.remotes.len() - 1;
            // Our checks from a relay leave from the relay server, whose mapping on the
            // peer's NAT is not the one predicted.
            for l in 0..self.locals.len() {
                if self.locals[l].candidate.kind != CandidateKind::Relayed {
                    self.pair_up(l, pr);
                }
            }
        }
    }

    /// Our own gathering is over (every local candidate was added). Until then the agent
    /// never reports [`IceState::Failed`]: a relayed candidate may still be coming.
    pub fn end_of_local_candidates(&mut self) {
        self.local_done = true;
        self.update_failed();
    }

    /// We gather again (a relay being allocated again): until the next
    /// [`IceAgent::end_of_local_candidates`], no pairs left means "wait", not "failed".
    pub fn gathering_resumed(&mut self) {
        self.local_done = false;
    }

    /// The peer sent `a=end-of-candidates` (RFC 8838 §8.2).
    pub fn end_of_remote_candidates(&mut self) {
        self.remote_done = true;
        self.update_failed();
    }

    /// An ICE restart (RFC 8445 §9): new local credentials, every remote candidate and
    /// pair forgotten; local candidates stay. The selected pair keeps carrying data until
    /// a new one is chosen. Returns the new credentials for the new description.
    pub fn restart(&mut self) -> IceCredentials {
        self.local_creds = IceCredentials::random(&mut self.rng);
        self.remote_creds = None;
        self.remote_done = false;
        for p in &self.pairs {
            for (id, _) in p.check.iter().chain(&p.superseded) {
                self.client.cancel(*id);
            }
        }
        // The old path carries data until a new pair is selected (RFC 8445 §9).
        self.previous_proto = self.selected_proto().unwrap_or(Protocol::Udp);
        self.previous_path = self.selected();
        self.remotes.clear();
        self.learned_on.clear();
        self.predicted.clear();
        self.pairs.clear();
        self.triggered.clear();
        self.selected = None;
        self.selected_nominated = false;
        self.nominated = None;
        if !self.controlling {
            // Numbers start afresh with the restarted peer.
            self.nomination_seq = 0;
            self.followed_numbered = false;
        }
        self.next_check = None;
        self.next_consent = None;
        self.round = None;
        self.round_give_up = None;
        self.probe_from = None;
        self.consent_sent = None;
        self.peer_round = None;
        self.keepalive_pair = None;
        self.keepalive.reset();
        self.set_state(IceState::Checking);
        self.local_creds.clone()
    }

    /// An ICE restart after a network change ([`IceAgent::restart`]): besides the
    /// restart, our candidates that `keep` rejects (given each and its base) are
    /// forgotten, and gathering counts as running again until
    /// [`IceAgent::end_of_local_candidates`] (no pairs yet means "wait", not "failed").
    pub fn restart_with_locals(
        &mut self,
        keep: impl Fn(&Candidate, SocketAddr) -> bool,
    ) -> IceCredentials {
        let creds = self.restart();
        // No pair refers to a local candidate now: indices may move.
        self.locals.retain(|l| keep(&l.candidate, l.base));
        self.local_done = false;
        creds
    }

    fn pair_up(&mut self, l: usize, r: usize) {
        let (local, remote) = (&self.locals[l], &self.remotes[r]);
        if local.gone {
            return;
        }
        let (Some(la), Some(ra)) = (local.candidate.socket_addr(), remote.socket_addr()) else {
            return;
        };
        if la.is_ipv4() != ra.is_ipv4()
            || local.candidate.component != remote.component
            || local.candidate.transport != remote.transport
        {
            return;
        }
        if local.candidate.transport == CandidateTransport::Tcp
            && !tcp_pairable(local.candidate.tcp_type, remote)
        {
            return;
        }
        // Redundant: same base and remote; keep the higher priority (RFC 8445 §6.1.2.4).
        let base = local.base;
        let priority = self.priority_of(l, r);
        if let Some(i) = self
            .pairs
            .iter()
            .position(|p| self.locals[p.local].base == base && p.remote == r)
        {
            if self.pairs[i].priority < priority && self.pairs[i].state == PairState::Waiting {
                self.pairs[i].local = l;
                self.pairs[i].priority = priority;
            }
            return;
        }
        if self.pairs.len() >= self.config.max_pairs {
            return;
        }
        self.pairs.push(Pair {
            local: l,
            remote: r,
            priority,
            state: PairState::Waiting,
            check: None,
            check_controlling: false,
            superseded: None,
            nominated: false,
            nominate_on_success: false,
            nominate_seq: None,
            rtt: None,
            last_answer: None,
            last_data: None,
            last_check_in: None,
            last_traffic: None,
            role_conflicts: 0,
        });
    }

    fn priority_of(&self, l: usize, r: usize) -> u64 {
        let (lp, rp) = (self.locals[l].candidate.priority, self.remotes[r].priority);
        if self.controlling {
            pair_priority(lp, rp)
        } else {
            pair_priority(rp, lp)
        }
    }

    fn reprioritize(&mut self) {
        for i in 0..self.pairs.len() {
            self.pairs[i].priority = self.priority_of(self.pairs[i].local, self.pairs[i].remote);
        }
    }

    /// After priorities changed: a controlling agent whose nominated pair is no longer
    /// the best valid one nominates the best (numbered, so the peer follows).
    fn renominate_best(&mut self) {
        if !self.controlling || self.config.lite || !self.remote_renomination {
            return;
        }
        let Some(n) = self.nominated else { return };
        let Some(b) = self
            .best_valid()
            .filter(|b| *b != n && self.pairs[*b].priority > self.pairs[n].priority)
        else {
            return;
        };
        debug!("a better valid pair after a candidate update: renominating");
        self.stop_nominating(n);
        self.nominate_next(b);
    }

    /// The valid pair of highest priority.
    fn best_valid(&self) -> Option<usize> {
        self.pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::Succeeded)
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i)
    }

    /// The controlling agent nominates pair `b` (numbered): its nominating check goes next.
    fn nominate_next(&mut self, b: usize) {
        self.nomination_seq = self.nomination_seq.wrapping_add(1);
        self.nominated = Some(b);
        if !self.triggered.contains(&b) {
            self.triggered.push_front(b);
        }
        self.next_check = Some(self.now);
    }

    fn schedule_checks_now(&mut self) {
        if self.next_check.is_none() && self.remote_creds.is_some() {
            // Due at once: the caller's next handle_timeout sends it.
            self.next_check = Some(self.now);
        }
    }

    /// The next datagram to send: its source is one of our bases.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits
            .pop_front()
            .or_else(|| self.client.poll_transmit())
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// When to call [`IceAgent::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let consent_deadline = self.selected.and_then(|s| self.consent_deadline(s));
        [
            self.client.poll_timeout(),
            self.next_check,
            self.next_consent,
            consent_deadline,
            self.hold_until,
            self.follow_at,
            self.round_give_up,
            self.silence_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Paces checks, retransmits, sends consent checks and notices lost consent.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.client.handle_timeout(now);
        self.drain_client(now);
        if self.next_check.is_some_and(|t| t <= now) {
            self.next_check = None;
            if self.start_next_check(now) {
                self.next_check = Some(now + self.ta());
            }
        }
        if let Some(s) = self.selected {
            if self.consent_deadline(s).is_some_and(|t| now >= t) {
                debug!(policy = ?self.policy, "consent lost on the selected pair (RFC 7675)");
                self.pairs[s].state = PairState::Failed;
                self.pairs[s].nominated = false;
                if self.nominated == Some(s) {
                    self.nominated = None;
                }
                self.selected = None;
                self.reselect(now);
                self.nominate_if_none();
            }
        }
        if self.round_give_up.is_some_and(|t| t <= now) {
            self.round_give_up = None;
            if let Some((id, silence)) = self.round.take() {
                // Not answered after a few tries: a binding expired (the peer's side
                // repairs it, see LATE_ROUND); the rest of the retransmissions would only
                // wake the radio for nothing.
                if let Some(p) = self
                    .pairs
                    .iter_mut()
                    .find(|p| p.check.is_some_and(|(c, _)| c == id))
                {
                    p.check = None;
                }
                self.client.cancel(id);
                self.learn(false, silence);
            }
        }
        self.watch_silence(now);
        if self.next_consent.is_some_and(|t| t <= now) {
            self.next_consent = None;
            if let Some(s) = self.selected.filter(|_| !self.config.lite) {
                if self.pairs[s].check.is_none() {
                    // The controlling agent's consent checks on the pair it nominates
                    // repeat USE-CANDIDATE: a controlled agent that missed the nomination
                    // (its copies lost, or its own check on the pair failed meanwhile)
                    // follows within one consent interval, instead of the two agents
                    // staying on different pairs. For a controlled agent that already
                    // follows, it nominates what is nominated: nothing changes.
                    let nominate = self.controlling && self.nominated == Some(s);
                    let silence =
                        now.saturating_duration_since(self.pairs[s].last_traffic.unwrap_or(now));
                    self.send_check(now, s, nominate);
                    self.round = self.pairs[s].check.map(|(id, _)| (id, silence));
                    self.consent_sent = Some(now);
                    if !self.controlling {
                        // A watcher that had to check: the keeper's pace it knew is
                        // stale (the keeper slowed down, or its round was lost); it
                        // waits its own interval until the keeper's rounds show the pace
                        // again. Else its own checks, each postponing the keeper's, would
                        // keep the path at the old pace for good.
                        if let Some((_, pace)) = &mut self.peer_round {
                            *pace = None;
                        }
                    }
                    // Over TCP a check goes once and its connection retransmits.
                    let udp = self.locals[self.pairs[s].local].candidate.transport
                        == CandidateTransport::Udp;
                    self.round_give_up =
                        (self.policy == KeepalivePolicy::Background && udp).then(|| {
                            now + self.config.check_rto * ((1 << BACKGROUND_ROUND_TRANSMITS) - 1)
                        });
                }
                self.arm_consent(now);
            }
        }
        self.follow_the_data(now);
        self.update_failed();
        self.release_hold(now);
    }

    /// Our candidates on `base` are gone (a relay's allocation was lost: its relayed
    /// address is nobody's now). Their pairs fail at once instead of at the end of
    /// consent (RFC 7675's 30 s), data moves to the best other valid pair, and a
    /// controlling agent nominates it. A candidate added on that base later (a new
    /// allocation that got the same address) pairs as usual.
    pub fn local_candidate_lost(&mut self, base: SocketAddr) {
        let now = self.now;
        let mut any = false;
        for l in 0..self.locals.len() {
            if self.locals[l].base == base && !self.locals[l].gone {
                self.locals[l].gone = true;
                any = true;
            }
        }
        if !any {
            return;
        }
        let mut cancelled = Vec::new();
        for i in 0..self.pairs.len() {
            if !self.locals[self.pairs[i].local].gone
                || self.locals[self.pairs[i].local].base != base
            {
                continue;
            }
            let p = &mut self.pairs[i];
            for slot in [&mut p.check, &mut p.superseded] {
                if let Some((id, _)) = slot.take() {
                    cancelled.push(id);
                }
            }
            p.state = PairState::Failed;
            p.nominated = false;
            self.triggered.retain(|t| *t != i);
            if self.nominated == Some(i) {
                self.nominated = None;
            }
            if self.selected == Some(i) {
                self.selected = None;
            }
        }
        for id in cancelled {
            self.client.cancel(id);
        }
        self.reselect(now);
        self.nominate_if_none();
        self.update_failed();
    }

    /// A controlling agent whose nomination is gone (its pair failed) nominates the best
    /// valid pair left.
    fn nominate_if_none(&mut self) {
        if !self.controlling || self.config.lite || self.nominated.is_some() {
            return;
        }
        if let Some(b) = self.best_valid() {
            debug!("the nominated pair is gone: nominating the best valid one");
            self.nominate_next(b);
        }
    }

    /// Application data from the peer arrived at `base` from `from`: the pair it came on
    /// carries the peer's traffic (see [`SILENT_PATH`]). Cheap on the selected pair.
    pub fn data_received(&mut self, now: Instant, base: SocketAddr, from: SocketAddr) {
        let on = |a: &Self, i: usize| {
            let p = &a.pairs[i];
            a.locals[p.local].base == base && a.remote_addr(p.remote) == Some(from)
        };
        if let Some(s) = self.selected.filter(|s| on(self, *s)) {
            self.pairs[s].last_data = Some(now);
            self.pairs[s].last_traffic = Some(now);
            return;
        }
        if let Some(i) = (0..self.pairs.len())
            .find(|i| self.pairs[*i].state == PairState::Succeeded && on(self, *i))
        {
            self.pairs[i].last_data = Some(now);
            if self.controlling && self.follow_at.is_none() {
                let heard = self.selected.and_then(|s| {
                    let p = &self.pairs[s];
                    p.last_data.max(p.last_answer)
                });
                self.follow_at = Some(heard.map_or(now, |t| (t + SILENT_PATH).max(now)));
            }
        }
    }

    /// [`SILENT_PATH`]: the controlling agent moves the nomination from a silent selected
    /// pair to the valid pair the peer's data arrives on.
    fn follow_the_data(&mut self, now: Instant) {
        if self.follow_at.is_some_and(|t| t <= now) {
            self.follow_at = None;
        }
        if !self.controlling || self.config.lite {
            return;
        }
        let Some(s) = self.selected else { return };
        // A nomination of another pair is on its way already.
        if self.nominated.is_some_and(|n| n != s) {
            return;
        }
        let heard = |p: &Pair| p.last_data.max(p.last_answer);
        if heard(&self.pairs[s]).is_some_and(|t| now < t + SILENT_PATH) {
            return;
        }
        let Some(b) = (0..self.pairs.len())
            .filter(|i| {
                *i != s
                    && self.pairs[*i].state == PairState::Succeeded
                    && self.pairs[*i]
                        .last_data
                        .is_some_and(|t| now < t + SILENT_PATH)
            })
            .max_by_key(|i| self.pairs[*i].priority)
        else {
            return;
        };
        debug!(
            from = s,
            to = b,
            "the selected pair is silent, the peer's data comes on another: nominating that one"
        );
        if self.nominated == Some(s) {
            self.stop_nominating(s);
            self.pairs[s].nominated = false;
            self.nominated = None;
        }
        self.nominate_next(b);
    }

    /// Whether pair `i` goes through a relay (either candidate relayed).
    fn relayed_pair(&self, i: usize) -> bool {
        let p = &self.pairs[i];
        self.locals[p.local].candidate.kind == CandidateKind::Relayed
            || self.remotes[p.remote].kind == CandidateKind::Relayed
    }

    /// Whether a direct pair may still succeed (not yet valid, not failed).
    fn direct_pending(&self) -> bool {
        (0..self.pairs.len()).any(|i| {
            !self.relayed_pair(i)
                && !matches!(
                    self.pairs[i].state,
                    PairState::Succeeded | PairState::Failed
                )
        })
    }

    /// A held nomination goes out once the hold ends or no direct pair is left to wait
    /// for: the best valid pair then.
    fn release_hold(&mut self, now: Instant) {
        let Some(until) = self.hold_until else { return };
        if self.nominated.is_some() || !self.controlling {
            self.hold_until = None;
            return;
        }
        if now < until && self.direct_pending() {
            return;
        }
        self.hold_until = None;
        if let Some(b) = self.best_valid() {
            debug!("nominating after the hold");
            self.nominate_next(b);
        }
    }

    fn arm_consent(&mut self, now: Instant) {
        let (base, low, spread) = match self.policy {
            // RFC 7675 §5.1: uniformly random in [0.8, 1.2] × the interval.
            KeepalivePolicy::Foreground => {
                let base = self.config.consent_interval.as_millis() as u64;
                (base, base * 4 / 5, base * 2 / 5)
            }
            // The controlling agent keeps the path: never later than the interval (it is
            // sized to the NAT's timeout), at least 95 % of it. The controlled agent
            // watches: its own check goes only when the keeper's round is late
            // ([`LATE_ROUND`] × the keeper's pace: lost to a binding that expired on
            // this side, which only this side's packet repairs), or, before it knows
            // the pace, a little after its own interval. Either side's check postpones
            // the other's, so one round per interval goes between them.
            KeepalivePolicy::Background => {
                let base = self.keepalive.interval().as_millis() as u64;
                match self.peer_round {
                    Some((_, Some(pace))) if !self.controlling => {
                        self.next_consent = Some(now + pace.mul_f64(LATE_ROUND));
                        return;
                    }
                    _ if !self.controlling => (base, base, base * 3 / 20),
                    _ => (base, base * 19 / 20, base / 20),
                }
            }
            KeepalivePolicy::Suspended => {
                self.next_consent = None;
                return;
            }
        };
        let jitter = if base == 0 {
            0
        } else {
            self.rng.next_u64() % (spread + 1)
        };
        self.next_consent =
            Some(now + Duration::from_millis(low + jitter).max(Duration::from_millis(1)));
    }

    /// The keepalive policy (see [`super::keepalive`]).
    #[must_use]
    pub fn keepalive_policy(&self) -> KeepalivePolicy {
        self.policy
    }

    /// The background keepalive interval as it stands (it adapts to the selected path's
    /// NATs; see [`super::keepalive`]).
    #[must_use]
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive.interval()
    }

    /// Sets the keepalive policy (see [`super::keepalive`]). Leaving
    /// [`KeepalivePolicy::Suspended`], or going to [`KeepalivePolicy::Foreground`], is a
    /// resume: a check goes at once on the selected pair, and a pair that neither answers
    /// it nor checks us within [`RESUME_PROBE`] is given up.
    pub fn set_keepalive_policy(&mut self, now: Instant, policy: KeepalivePolicy) {
        self.now = self.now.max(now);
        let old = std::mem::replace(&mut self.policy, policy);
        if old == policy {
            return;
        }
        debug!(?old, ?policy, "keepalive policy");
        // The peer's pace under the old policy says nothing of the new one (its
        // foreground consent checks come every 5 s, its background rounds much slower).
        self.peer_round = None;
        match policy {
            KeepalivePolicy::Suspended => {
                self.suspended_at = Some(now);
                self.next_consent = None;
            }
            KeepalivePolicy::Foreground | KeepalivePolicy::Background => {
                self.suspended_at = None;
                let resume =
                    old == KeepalivePolicy::Suspended || policy == KeepalivePolicy::Foreground;
                if resume && self.selected.is_some() {
                    self.start_probe(now, false);
                } else if self.selected.is_some() {
                    self.arm_consent(now);
                }
            }
        }
    }

    /// Probes the path: the selected pair gets a consent check now and has
    /// [`RESUME_PROBE`] to answer it (or, outside the foreground, to be checked by the
    /// peer) before it is given up. The other valid pairs are as stale: each gets a
    /// check now, so that one that still works (a relayed pair whose allocation lived,
    /// a relayed candidate of the peer's that our new mapping reaches) is fresh when the
    /// selected one's probe runs out.
    fn start_probe(&mut self, now: Instant, silence: bool) {
        self.probe_from = Some(now);
        self.probe_silence = silence;
        self.next_consent = Some(now);
        let selected = self.selected;
        // A check in flight on the selected pair is replaced by a new one: its
        // retransmissions are far apart by now, the new one's go at the RTO again.
        if let Some(s) = selected {
            if let Some((id, _)) = self.pairs[s].check.take() {
                self.client.cancel(id);
                if self.round.is_some_and(|(r, _)| r == id) {
                    self.round = None;
                    self.round_give_up = None;
                }
            }
        }
        for i in 0..self.pairs.len() {
            if Some(i) != selected
                && self.pairs[i].state == PairState::Succeeded
                && self.pairs[i].check.is_none()
                && !self.triggered.contains(&i)
            {
                self.triggered.push_back(i);
            }
        }
        self.next_check = Some(now);
    }

    /// Since when the path is being probed (after a resume, or found silent in the
    /// foreground, see [`UNANSWERED_CHECK`]): pairs not heard from since have until
    /// that time and [`RESUME_PROBE`] to answer. `None` when no probe runs.
    #[must_use]
    pub fn probing_since(&self) -> Option<Instant> {
        self.probe_from
    }

    /// When the selected path's silence is looked at next, in the foreground
    /// ([`UNANSWERED_CHECK`], [`SILENT_PATH`]).
    fn silence_deadline(&self) -> Option<Instant> {
        if self.policy != KeepalivePolicy::Foreground
            || self.config.lite
            || self.probe_from.is_some()
        {
            return None;
        }
        let p = &self.pairs[self.selected?];
        let heard = p.last_answer.max(p.last_data).max(p.last_check_in);
        let due = match p.check {
            // Our check in flight, nothing heard on the pair since it went.
            Some(_) => self
                .consent_sent
                .filter(|t| heard.is_none_or(|h| h < *t))
                .map(|t| t + UNANSWERED_CHECK),
            // The peer's data was the last thing heard: when it stops, a consent check
            // goes at once rather than at the next consent time (once: its answer is
            // heard after the data).
            None => p
                .last_data
                .filter(|d| Some(*d) == heard)
                .map(|d| d + SILENT_PATH),
        };
        due.filter(|t| self.silence_acted != Some(*t))
    }

    /// The selected path's silence in the foreground: the peer's data stopped (a
    /// consent check goes now), or our check went unanswered (the path is probed).
    fn watch_silence(&mut self, now: Instant) {
        let Some(due) = self.silence_deadline().filter(|t| *t <= now) else {
            return;
        };
        self.silence_acted = Some(due);
        let Some(s) = self.selected else { return };
        if self.pairs[s].check.is_some() {
            debug!(
                pair = s,
                "the selected pair does not answer: probing every valid pair"
            );
            self.start_probe(now, true);
        } else {
            debug!(pair = s, "the peer's data stopped: a consent check now");
            self.next_consent = Some(now);
        }
    }

    /// When was the pair last heard from: an answer to our check, and outside the
    /// foreground also the peer's own check (see [`super::keepalive`]).
    fn heard(&self, p: &Pair) -> Option<Instant> {
        match self.policy {
            KeepalivePolicy::Foreground => p.last_answer,
            _ => p.last_answer.max(p.last_check_in),
        }
    }

    /// How long a pair stays fresh after it was last heard from: RFC 7675's 30 s in the
    /// foreground, two keepalive intervals and a margin otherwise.
    fn consent_timeout(&self) -> Duration {
        match self.policy {
            KeepalivePolicy::Foreground => self.config.consent_timeout,
            _ => self
                .config
                .consent_timeout
                .max(self.keepalive.interval() * 2 + Duration::from_secs(10)),
        }
    }

    /// When pair `i` stops being fresh (its consent, RFC 7675; see
    /// [`super::keepalive`]): `None` when never heard from, or while suspended for a pair
    /// that was fresh then.
    fn consent_deadline(&self, i: usize) -> Option<Instant> {
        let p = &self.pairs[i];
        let heard = self.heard(p)?;
        let until = heard + self.consent_timeout();
        if let Some(at) = self.suspended_at {
            return (until <= at).then_some(until);
        }
        match self.probe_from {
            // Resumed and not heard from since: the probe's time, whatever the rest says.
            Some(from) if heard < from => Some(from + RESUME_PROBE),
            _ => Some(until),
        }
    }

    /// Whether pair `i` is fresh at `now`.
    fn fresh(&self, i: usize, now: Instant) -> bool {
        let p = &self.pairs[i];
        p.state == PairState::Succeeded
            && self.heard(p).is_some()
            && self.consent_deadline(i).is_none_or(|t| now < t)
    }

    /// The peer's authenticated check arrived on pair `i` (and was answered). On the
    /// selected pair it is a keepalive round: it proves our NAT kept the binding through
    /// the silence before it, and outside the foreground it stands for our own check,
    /// which waits another interval.
    fn check_arrived(&mut self, now: Instant, i: usize) {
        let p = &mut self.pairs[i];
        let silence = now.saturating_duration_since(p.last_traffic.unwrap_or(now));
        p.last_check_in = Some(now);
        p.last_traffic = Some(now);
        if self.selected != Some(i) {
            return;
        }
        let gap = self
            .peer_round
            .map(|(at, _)| now.saturating_duration_since(at));
        // Retransmissions and triggered checks come close together: not a round's pace.
        let pace = gap.filter(|g| *g >= super::keepalive::MIN_INTERVAL / 2);
        let previous = self.peer_round.and_then(|(_, g)| g);
        self.peer_round = Some((now, pace.or(previous)));
        if self.probe_from.is_some()
            && (self.probe_silence || self.policy != KeepalivePolicy::Foreground)
        {
            // Heard since the resume: fresh again (the foreground waits for an answer
            // after a resume, not after a silence).
            self.probe_from = None;
        }
        self.learn(true, silence);
        if self.policy == KeepalivePolicy::Background
            && self.probe_from.is_none()
            && self.pairs[i].check.is_none()
        {
            self.arm_consent(now);
        }
    }

    /// A keepalive round's outcome teaches the adaptive interval.
    fn learn(&mut self, survived: bool, silence: Duration) {
        let changed = if survived {
            self.keepalive.survived(silence)
        } else {
            self.keepalive.expired(silence)
        };
        if changed {
            debug!(
                interval_s = self.keepalive.interval().as_secs_f64(),
                silence_s = silence.as_secs_f64(),
                survived,
                "keepalive interval adapted"
            );
            self.rearm_shorter();
        }
    }

    /// The interval shrank: the next check goes within the new one after the last
    /// traffic on the selected pair, not at the old one's time.
    fn rearm_shorter(&mut self) {
        if self.policy != KeepalivePolicy::Background {
            return;
        }
        let (Some(s), Some(next)) = (self.selected, self.next_consent) else {
            return;
        };
        let Some(last) = self.pairs[s].last_traffic else {
            return;
        };
        let k = self.keepalive.interval();
        let latest = (last + k.mul_f64(0.85)).max(self.now);
        if next > last + k {
            self.next_consent = Some(latest);
        }
    }

    /// Starts one check: a triggered one first, else the best waiting pair. Returns
    /// whether one was started.
    fn start_next_check(&mut self, now: Instant) -> bool {
        if self.remote_creds.is_none() || self.config.lite {
            return false;
        }
        while let Some(i) = self.triggered.pop_front() {
            if i < self.pairs.len()
                && self.pairs[i].check.is_none()
                && self.pairs[i].state != PairState::Failed
            {
                let nominate = self.controlling && self.nominated == Some(i);
                self.send_check(now, i, nominate);
                return true;
            }
        }
        let best = self
            .pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.state == PairState::Waiting && p.check.is_none())
            .max_by_key(|(_, p)| p.priority)
            .map(|(i, _)| i);
        if let Some(i) = best {
            self.send_check(now, i, false);
            return true;
        }
        false
    }

    fn send_check(&mut self, now: Instant, i: usize, nominate: bool) {
        let Some(remote_creds) = self.remote_creds.clone() else {
            return;
        };
        let Some(dest) = self.remote_addr(self.pairs[i].remote) else {
            return;
        };
        let Ok(key) = IntegrityKey::short_term(&remote_creds.pwd) else {
            debug!("the peer's ICE password is not a valid OpaqueString");
            return;
        };
        let local = &self.locals[self.pairs[i].local];
        // The priority a peer-reflexive candidate of ours would get (RFC 8445 §7.1.1).
        let prflx_priority =
            (CandidateKind::PeerReflexive.type_preference_on(local.candidate.transport) << 24)
                | (local.candidate.priority & 0x00FF_FFFF);
        let username = format!("{}:{}", remote_creds.ufrag, self.local_creds.ufrag);
        let (controlling, tie) = (self.controlling, self.tie_breaker);
        let seq = self.nomination_seq;
        let req = Request {
            proto: proto_of(local.candidate.transport),
            source: local.base,
            destination: dest,
            method: Method::BINDING,
            key: Some(key),
            expect_from: ExpectFrom::Destination,
            response_at: None,
        };
        let started = self.client.start(now, req, |b| {
            b.add(&Username(&username))?;
            b.add(&Priority(prflx_priority))?;
            if controlling {
                b.add(&IceControlling(tie))?;
                if nominate {
                    b.add(&UseCandidate)?;
                    b.add(&Nomination(seq))?;
                }
            } else {
                b.add(&IceControlled(tie))?;
            }
            Ok(())
        });
        match started {
            Ok(id) => {
                let p = &mut self.pairs[i];
                p.last_traffic = Some(now);
                p.check = Some((id, nominate));
                p.check_controlling = controlling;
                if p.state == PairState::Waiting {
                    p.state = PairState::InProgress;
                }
                if self.state == IceState::New {
                    self.set_state(IceState::Checking);
                }
            }
            Err(e) => debug!(error = %e, "could not start a check"),
        }
    }

    /// Offers a datagram that arrived at one of our bases.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> IceInput {
        self.now = self.now.max(now);
        if crate::demux::classify(rx.contents) != crate::demux::Kind::Stun {
            return IceInput::NotIce;
        }
        let transport = transport_of(rx.proto);
        if !self
            .locals
            .iter()
            .any(|l| l.base == rx.destination && l.candidate.transport == transport)
        {
            return IceInput::NotIce;
        }
        let Ok(msg) = Message::parse(rx.contents) else {
            return IceInput::NotIce;
        };
        if msg.method() != Method::BINDING {
            return IceInput::NotIce;
        }
        match msg.class() {
            crate::stun::Class::Request => {
                if self.handle_request(now, &rx, &msg) {
                    IceInput::Consumed
                } else {
                    IceInput::NotIce
                }
            }
            crate::stun::Class::Indication => IceInput::Consumed, // keepalive (RFC 8445 §11)
            _ => {
                if self.client.handle_input(now, rx) {
                    self.drain_client(now);
                    IceInput::Consumed
                } else {
                    IceInput::NotIce
                }
            }
        }
    }

    /// A check from the peer (RFC 8445 §7.3). Returns false when it is not an ICE check
    /// for us (no USERNAME of ours: another protocol's Binding request).
    fn handle_request(&mut self, now: Instant, rx: &Received<'_>, msg: &Message<'_>) -> bool {
        let Ok(Some(Username(user))) = msg.get::<Username<'_>>() else {
            return false;
        };
        let Some((ours, _theirs)) = user.split_once(':') else {
            return false;
        };
        if ours != self.local_creds.ufrag {
            debug!(from = %rx.source, "check for another ufrag dropped");
            return true;
        }
        let Ok(key) = IntegrityKey::short_term(&self.local_creds.pwd) else {
            return true;
        };
        if msg.has_fingerprint() && msg.verify_fingerprint().is_err() {
            debug!(from = %rx.source, "check with a bad FINGERPRINT dropped");
            return true;
        }
        if msg.verify_integrity(&key).is_err() {
            debug!(from = %rx.source, "check failing MESSAGE-INTEGRITY dropped");
            return true;
        }
        let tid = msg.transaction_id();
        // Role conflicts, RFC 8445 §7.3.1.1.
        let theirs_controlling = msg.get::<IceControlling>().ok().flatten().map(|c| c.0);
        let theirs_controlled = msg.get::<IceControlled>().ok().flatten().map(|c| c.0);
        if self.controlling {
            if let Some(t) = theirs_controlling {
                if self.tie_breaker >= t {
                    self.respond_487(rx, tid, &key);
                    return true;
                }
                self.switch_role(false);
            }
        } else if let Some(t) = theirs_controlled {
            // A lite agent never controls (RFC 8445 §6.1.1): the full peer must switch.
            if self.tie_breaker >= t && !self.config.lite {
                self.switch_role(true);
            } else {
                self.respond_487(rx, tid, &key);
                return true;
            }
        }
        // Answer: XOR-MAPPED-ADDRESS is where the check came from (RFC 8445 §7.3.1.2).
        let mut buf = [0u8; 256];
        if let Ok(mut b) = MessageBuilder::new(&mut buf, MessageType::BINDING_SUCCESS, tid) {
            let built = b
                .add(&XorMappedAddress(rx.source))
                .and_then(|b| b.add_message_integrity(&key))
                .and_then(|b| b.add_fingerprint());
            if built.is_ok() {
                self.transmits.push_back(Transmit {
                    proto: rx.proto,
                    source: rx.destination,
                    destination: rx.source,
                    contents: b.finish().to_vec(),
                });
            }
        }
        // The remote candidate: known, or peer-reflexive (RFC 8445 §7.3.1.3).
        let transport = transport_of(rx.proto);
        let r = match self
            .remotes
            .iter()
            .position(|c| c.socket_addr() == Some(rx.source) && c.transport == transport)
        {
            Some(r) => r,
            None => {
                let here = self
                    .learned_on
                    .iter()
                    .filter(|l| **l == Some(rx.destination))
                    .count();
                if here >= MAX_PRFLX_PER_BASE {
                    debug!(from = %rx.source, "peer-reflexive candidate beyond the limit ignored");
                    return true;
                }
                let priority = msg.get::<Priority>().ok().flatten().map_or(0, |p| p.0);
                let mut c = Candidate::new(
                    CandidateKind::PeerReflexive,
                    transport,
                    rx.source,
                    rx.source.ip(),
                    None,
                    0,
                );
                c.priority = priority;
                if self.rank_as_relay(&mut c) {
                    debug!(from = %rx.source, "a check from the peer's relay, its port rewritten: ranked as relayed");
                }
                if transport == CandidateTransport::Tcp {
                    // RFC 6544 §7.2.2: the peer connected to our passive candidate from an
                    // active one, or both opened at once.
                    let local = self
                        .locals
                        .iter()
                        .find(|l| l.base == rx.destination && l.candidate.transport == transport)
                        .and_then(|l| l.candidate.tcp_type);
                    c.tcp_type = Some(match local {
                        Some(TcpType::Passive) => TcpType::Active,
                        Some(TcpType::Active) => TcpType::Passive,
                        _ => TcpType::SimultaneousOpen,
                    });
                }
                self.events.push_back(IceEvent::PeerReflexive(c.clone()));
                self.remotes.push(c);
                self.learned_on.push(Some(rx.destination));
                let r = self.remotes.len() - 1;
                for l in 0..self.locals.len() {
                    if self.locals[l].base == rx.destination
                        && self.locals[l].candidate.transport == transport
                    {
                        self.pair_up(l, r);
                    }
                }
                r
            }
        };
        let Some(i) = self
            .pairs
            .iter()
            .position(|p| p.remote == r && self.locals[p.local].base == rx.destination)
        else {
            return true;
        };
        self.check_arrived(now, i);
        let use_candidate = msg.has(crate::stun::AttributeType::USE_CANDIDATE);
        if self.config.lite {
            // RFC 8445 §7.3.1.4-5 for a lite agent: the check that arrived makes the pair
            // valid (its answer goes back the way the check came), a nominating one selects
            // it; each check is the peer's consent (the lite agent sends none).
            let p = &mut self.pairs[i];
            p.state = PairState::Succeeded;
            p.last_answer = Some(now);
            if use_candidate {
                self.nominate(now, i);
            } else {
                self.reselect(now);
            }
            return true;
        }
        // Renomination only ever moves to a pair at least as good, as the controlling side
        // renominates: a late copy of an older USE-CANDIDATE (the relay path is slower,
        // so its copies arrive last) must not take the path back. A nominated pair that
        // failed (consent) may be replaced by anything.
        let seq = msg.get::<Nomination>().ok().flatten().map(|n| n.0);
        let acceptable = self.may_follow(i, seq);
        if use_candidate && !self.controlling && !acceptable {
            debug!(
                pair = i,
                "USE-CANDIDATE for a worse pair than the nominated one ignored"
            );
        }
        if use_candidate && !self.controlling && acceptable {
            if self.pairs[i].state == PairState::Succeeded {
                self.follow(now, i, seq);
            } else {
                self.pairs[i].nominate_on_success = true;
                self.pairs[i].nominate_seq = seq;
            }
        }
        // RFC 8445 §7.3.1.4: a check on a pair whose own check is In-Progress makes a new
        // triggered check. Its earlier transmissions may have been dropped by the peer's
        // NAT before the peer had sent anything (hole punching through filtering NATs);
        // the peer's check shows the way is open now, and waiting for the next
        // retransmission would cost up to its back-off, long enough for a relay pair to
        // win the race. The old transaction is kept as `superseded`: its answer still
        // validates the pair. Once per pair at a time, so that the two agents' checks
        // cannot keep replacing each other.
        let p = &mut self.pairs[i];
        if p.state == PairState::InProgress && p.superseded.is_none() {
            if let Some(old) = p.check.take() {
                p.superseded = Some(old);
                p.state = PairState::Waiting;
            }
        }
        // A triggered check, unless one is in flight or the pair succeeded.
        if p.check.is_none() && p.state != PairState::Succeeded {
            if p.state == PairState::Failed {
                p.state = PairState::Waiting;
            }
            if !self.triggered.contains(&i) {
                self.triggered.push_back(i);
            }
            if self.next_check.is_none() {
                self.next_check = Some(now);
            }
        }
        true
    }

    fn respond_487(&mut self, rx: &Received<'_>, tid: TransactionId, key: &IntegrityKey) {
        let mut buf = [0u8; 256];
        let kind = MessageType::new(crate::stun::Class::Error, Method::BINDING);
        if let Ok(mut b) = MessageBuilder::new(&mut buf, kind, tid) {
            let built = b
                .add(&ErrorCode::new(487, "Role Conflict"))
                .and_then(|b| b.add_message_integrity(key))
                .and_then(|b| b.add_fingerprint());
            if built.is_ok() {
                self.transmits.push_back(Transmit {
                    proto: rx.proto,
                    source: rx.destination,
                    destination: rx.source,
                    contents: b.finish().to_vec(),
                });
            }
        }
    }

    fn switch_role(&mut self, controlling: bool) {
        if self.controlling == controlling {
            return;
        }
        debug!(controlling, "ICE role switched to repair a conflict");
        self.controlling = controlling;
        if !controlling {
            // The new controlling agent numbers its nominations from its own count.
            self.nomination_seq = 0;
            self.followed_numbered = false;
        }
        self.reprioritize();
        self.events.push_back(IceEvent::RoleChanged { controlling });
        // Newly controlling with pairs that already succeeded: nominating waits for no
        // new success (RFC 8445 §8.1.1: the controlling agent nominates a valid pair).
        // Keep the pair a controlled agent already followed, else the best valid one.
        if controlling {
            let followed = self
                .nominated
                .filter(|n| self.pairs[*n].state == PairState::Succeeded);
            let best = followed.or_else(|| {
                self.pairs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.state == PairState::Succeeded)
                    .max_by_key(|(_, p)| p.priority)
                    .map(|(i, _)| i)
            });
            if let Some(i) = best {
                if self.nominated != Some(i) {
                    self.nomination_seq = self.nomination_seq.wrapping_add(1);
                }
                self.nominated = Some(i);
                if !self.triggered.contains(&i) {
                    self.triggered.push_front(i);
                }
                self.next_check = Some(self.now);
            }
        }
    }

    fn drain_client(&mut self, now: Instant) {
        while let Some(ev) = self.client.poll_event() {
            match ev {
                TransactionEvent::Response(resp) => {
                    if let Some((_, silence)) = self.round.filter(|(id, _)| *id == resp.id) {
                        // Answered only after a retransmission (no RTT measured): a binding
                        // on the path had expired in the silence. An answer at the first
                        // try is weaker proof than the peer's check reaching us
                        // ([`Self::check_arrived`]): our NAT may have made the binding
                        // afresh on the same port, and the peer may have sent what never
                        // reached us, which kept its own. It lets the interval grow (the side
                        // whose checks keep the path gets no others to learn from) but not
                        // past a silence that a binding did not survive.
                        self.round = None;
                        if resp.message().class() == crate::stun::Class::Success {
                            if resp.rtt.is_some() {
                                // The keeper only: the watcher's own checks come after a
                                // late round, when the keeper's unseen retransmissions
                                // may have kept the keeper's binding.
                                if self.controlling && self.keepalive.answered(silence) {
                                    debug!(
                                        interval_s = self.keepalive.interval().as_secs_f64(),
                                        "keepalive interval adapted"
                                    );
                                }
                            } else {
                                self.learn(false, silence);
                            }
                        }
                    }
                    if let Some(i) = self
                        .pairs
                        .iter()
                        .position(|p| p.superseded.is_some_and(|(id, _)| id == resp.id))
                    {
                        // A replaced check's answer: success counts (and ends the check
                        // that replaced it, so that a nomination can follow); an error is
                        // left to the check that replaced it.
                        let (_, nominating) =
                            self.pairs[i].superseded.take().unwrap_or((resp.id, false));
                        if resp.message().class() == crate::stun::Class::Success {
                            if let Some((current, current_nominates)) = self.pairs[i].check.take() {
                                self.client.cancel(current);
                                if current_nominates {
                                    self.triggered.push_front(i);
                                    self.next_check = Some(now);
                                }
                            }
                            self.on_success(now, i, nominating, resp.rtt);
                        }
                        continue;
                    }
                    let Some(i) = self
                        .pairs
                        .iter()
                        .position(|p| p.check.is_some_and(|(id, _)| id == resp.id))
                    else {
                        continue;
                    };
                    let (_, nominating) = self.pairs[i].check.take().unwrap_or((resp.id, false));
                    let msg = resp.message();
                    if msg.class() == crate::stun::Class::Success {
                        self.on_success(now, i, nominating, resp.rtt);
                    } else {
                        let code = msg
                            .get::<ErrorCode<'_>>()
                            .ok()
                            .flatten()
                            .map_or(0, |e| e.code);
                        if code == 487 && self.pairs[i].role_conflicts < MAX_ROLE_CONFLICTS {
                            self.pairs[i].role_conflicts += 1;
                            // The opposite of the role the check was sent with: an incoming
                            // check may have switched it already (RFC 8445 §7.2.5.1).
                            let c = !self.pairs[i].check_controlling;
                            self.switch_role(c);
                            self.triggered.push_front(i);
                            self.next_check = Some(now);
                        } else {
                            debug!(code, "check failed with an error response");
                            self.fail_pair(now, i);
                        }
                    }
                }
                TransactionEvent::TimedOut { id, .. } => {
                    if let Some((_, silence)) = self.round.filter(|(r, _)| *r == id) {
                        self.round = None;
                        self.learn(false, silence);
                    }
                    if let Some(p) = self
                        .pairs
                        .iter_mut()
                        .find(|p| p.superseded.is_some_and(|(s, _)| s == id))
                    {
                        p.superseded = None;
                        continue;
                    }
                    if let Some(i) = self
                        .pairs
                        .iter()
                        .position(|p| p.check.is_some_and(|(c, _)| c == id))
                    {
                        self.pairs[i].check = None;
                        // A consent check that times out does not fail a valid pair by
                        // itself: consent_timeout decides.
                        if self.pairs[i].state != PairState::Succeeded {
                            self.fail_pair(now, i);
                        }
                    }
                }
            }
        }
    }

    fn fail_pair(&mut self, now: Instant, i: usize) {
        self.pairs[i].state = PairState::Failed;
        if self.selected == Some(i) {
            self.selected = None;
            self.reselect(now);
        }
        self.update_failed();
    }

    fn on_success(&mut self, now: Instant, i: usize, nominating: bool, rtt: Option<Duration>) {
        // A nominating check counts only while the controlling agent still nominates its
        // pair: a late answer for a pair it has since renominated away from is stale.
        let nominating = nominating && (!self.controlling || self.nominated == Some(i));
        let p = &mut self.pairs[i];
        let first = p.state != PairState::Succeeded;
        p.state = PairState::Succeeded;
        // Valid now: a replaced check still in flight has nothing more to tell.
        if let Some((old, _)) = p.superseded.take() {
            self.client.cancel(old);
        }
        p.last_answer = Some(now);
        p.last_traffic = Some(now);
        if rtt.is_some() {
            p.rtt = rtt;
        }
        if self.selected == Some(i) && self.probe_from.is_some() {
            self.probe_from = None;
        }
        // A nomination's answer counts only while it is still the latest nomination: a
        // slow answer for an older pair must not take the path back (renomination race).
        let latest = self.nominated == Some(i);
        let waiting = !self.controlling && p.nominate_on_success;
        let waiting_seq = p.nominate_seq.take();
        p.nominate_on_success = false;
        // A USE-CANDIDATE that came before this pair was valid is followed now, unless a
        // better pair was nominated meanwhile: an old nomination (of a relayed pair, say,
        // before the controlling agent renominated a direct one) must not take the path
        // back once its own check finally succeeds.
        if nominating && latest {
            self.nominate(now, i);
            return;
        }
        if waiting && self.may_follow(i, waiting_seq) {
            self.follow(now, i, waiting_seq);
            return;
        }
        if first {
            if self.controlling {
                // Nominate the first valid pair, then any better one (renomination) —
                // once only for a peer without renomination, and not a relayed pair while
                // a direct one is still being checked (for at most NOMINATION_HOLD).
                let better = self.nominated.is_none_or(|n| {
                    self.remote_renomination && self.pairs[n].priority < self.pairs[i].priority
                });
                let hold = better
                    && !self.remote_renomination
                    && self.relayed_pair(i)
                    && self.direct_pending();
                if hold {
                    if self.hold_until.is_none() {
                        debug!(
                            "a relayed pair is valid first: its nomination waits for direct checks"
                        );
                        self.hold_until = Some(now + NOMINATION_HOLD);
                    }
                } else if better {
                    debug!(pair = i, old = ?self.nominated, "nominating a better valid pair");
                    self.hold_until = None;
                    if let Some(old) = self.nominated.filter(|o| *o != i) {
                        self.stop_nominating(old);
                    }
                    if self.nominated != Some(i) {
                        self.nomination_seq = self.nomination_seq.wrapping_add(1);
                    }
                    self.nominated = Some(i);
                    self.triggered.push_front(i);
                    self.next_check = Some(now);
                }
            }
            self.reselect(now);
        }
    }

    /// Whether the controlled agent follows a nomination of pair `i`: renomination only
    /// ever moves to a pair at least as good as the one nominated, unless that one is no
    /// longer valid.
    fn may_follow(&self, i: usize, seq: Option<u32>) -> bool {
        // Numbered nominations (NOMINATION): the latest number wins, whatever this side's
        // view of the pairs' priorities.
        if let Some(v) = seq {
            return !self.followed_numbered || v >= self.nomination_seq;
        }
        self.nominated.is_none_or(|n| {
            n == i
                || self.pairs[n].state != PairState::Succeeded
                || self.pairs[n].priority <= self.pairs[i].priority
        })
    }

    /// Stops the nominating checks of a pair the controlling agent no longer nominates:
    /// retransmitted after the better pair's, their USE-CANDIDATE would move the
    /// controlled agent (which follows the latest nomination) back to the old pair.
    fn stop_nominating(&mut self, i: usize) {
        let p = &mut self.pairs[i];
        let mut stopped = Vec::new();
        for slot in [&mut p.check, &mut p.superseded] {
            if let Some((id, true)) = *slot {
                stopped.push(id);
                *slot = None;
            }
        }
        if p.check.is_none() && p.state == PairState::InProgress {
            p.state = PairState::Waiting;
        }
        for id in stopped {
            self.client.cancel(id);
        }
    }

    /// The controlled agent follows a nomination of pair `i` (numbered `seq`, if it was).
    fn follow(&mut self, now: Instant, i: usize, seq: Option<u32>) {
        if let Some(v) = seq {
            self.nomination_seq = self.nomination_seq.max(v);
            self.followed_numbered = true;
        }
        self.nominate(now, i);
    }

    fn nominate(&mut self, now: Instant, i: usize) {
        if let Some(old) = self.nominated.filter(|o| *o != i) {
            self.pairs[old].nominated = false;
        }
        self.pairs[i].nominated = true;
        self.nominated = Some(i);
        self.reselect(now);
    }

    /// Picks the pair data goes on: the nominated one when valid, else the best valid one.
    fn reselect(&mut self, now: Instant) {
        let pick = self
            .nominated
            .filter(|n| self.pairs[*n].nominated && self.fresh(*n, now))
            .or_else(|| {
                (0..self.pairs.len())
                    .filter(|i| self.fresh(*i, now))
                    .max_by_key(|i| self.pairs[*i].priority)
            });
        let nominated = pick.is_some_and(|i| self.pairs[i].nominated);
        if pick == self.selected && nominated == self.selected_nominated {
            return;
        }
        debug!(
            from = ?self.selected,
            to = ?pick,
            nominated,
            by_nomination = ?self.nominated,
            "selected pair changes"
        );
        if pick.is_some() && pick != self.keepalive_pair {
            // What was learned of the keepalive interval was about another path's NATs
            // (the same pair lost for a while and back keeps what it learned).
            self.keepalive.reset();
            self.keepalive_pair = pick;
            self.round = None;
            self.round_give_up = None;
            self.peer_round = None;
        }
        if pick != self.selected {
            // Our consent check in flight was on the old pair: the new one's silence is
            // measured from its own next check.
            self.consent_sent = None;
        }
        self.selected = pick;
        self.selected_nominated = nominated;
        if pick.is_some() {
            self.previous_path = None;
        }
        match pick {
            Some(i) => {
                self.push_selected(i);
                if self.next_consent.is_none() {
                    self.arm_consent(now);
                }
                self.set_state(IceState::Connected);
            }
            None => {
                self.next_consent = None;
                if self.state == IceState::Connected {
                    self.set_state(IceState::Disconnected);
                }
            }
        }
    }

    fn push_selected(&mut self, i: usize) {
        let p = &self.pairs[i];
        self.events.push_back(IceEvent::SelectedPair {
            local: self.locals[p.local].candidate.clone(),
            remote: self.remotes[p.remote].clone(),
            nominated: p.nominated,
            rtt: p.rtt,
        });
    }

    fn update_failed(&mut self) {
        // A resumed path that did not answer leaves the agent disconnected, not failed:
        // the peer connection restarts ICE at that very moment (`PathLost`), and an
        // app must not take the end of a pause for the end of the connection.
        if self.probe_from.is_some() {
            return;
        }
        if self.remote_done
            && self.local_done
            && self.selected.is_none()
            && self.triggered.is_empty()
            && self
                .pairs
                .iter()
                .all(|p| p.state == PairState::Failed && p.check.is_none())
            && matches!(
                self.state,
                IceState::New | IceState::Checking | IceState::Disconnected
            )
        {
            self.set_state(IceState::Failed);
        }
    }

    fn set_state(&mut self, s: IceState) {
        if self.state != s {
            debug!(from = ?self.state, to = ?s, "ICE state");
            self.state = s;
            self.events.push_back(IceEvent::State(s));
        }
    }
}

#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;
