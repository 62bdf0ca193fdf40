//! ICE (RFC 8445) building blocks: candidates with their priorities and foundations, and
//! descriptions as RFC 8839 SDP attribute lines. The agent itself builds on these; it
//! depends on [`crate::stun`] (and on [`crate::netcheck::PortAllocation`], the peer's port
//! allocation it predicts from), never on TURN (relayed candidates are ordinary local
//! candidates to it).

mod agent;
pub mod birthday;
mod candidate;
mod description;
pub mod keepalive;
pub mod tcp;

pub use agent::{
    IceAgent, IceConfig, IceCredentials, IceEvent, IceInput, IceState, MAX_PREDICTED_PORTS,
    MAX_REMOTE_TA, MIN_TA, NOMINATION_HOLD, SILENT_PATH, UNANSWERED_CHECK, pair_priority,
};

pub use birthday::{BirthdayConfig, BirthdayEvent, BirthdayProber, BirthdayRole};
pub use candidate::{
    Candidate, CandidateAddress, CandidateError, CandidateKind, CandidateTransport, MAX_EXTENSIONS,
    MAX_FOUNDATION_LEN, MAX_FQDN_LEN, MAX_LINE_LEN, TcpType, foundation, priority,
};
pub use description::{
    DescriptionError, IceDescription, MAX_CANDIDATES, MAX_DESCRIPTION_LEN,
    PORT_ALLOCATION_ATTRIBUTE, Parsed, RENOMINATION,
};
pub use keepalive::{AdaptiveInterval, KeepalivePolicy, RESUME_PROBE};
