//! # pinhole
//!
//! NAT traversal as plain state machines. Every protocol machine in this crate is
//! *sans-IO*: it never touches a socket, a thread or the clock. You feed it bytes and the
//! current time, and it hands back datagrams to send, the next deadline and events:
//!
//! - `handle_input(now, …)` — a datagram arrived;
//! - `handle_timeout(now)` — the deadline from `poll_timeout` passed;
//! - `poll_transmit()` — the next datagram to send;
//! - `poll_timeout()` — when to call `handle_timeout` next;
//! - `poll_event()` — what happened.
//!
//! The optional [`driver`] module (feature `driver`, on by default) runs these machines on
//! tokio with real sockets and the real clock. Everything else is deterministic: time is
//! always passed in and randomness comes from a seed, which is what makes simulation,
//! fuzzing and the foreign-language bindings cheap.
//!
//! Modules:
//! - [`demux`]: the RFC 7983 / RFC 9443 classifier for datagrams sharing one socket.
//! - [`stun`]: RFC 8489 messages (zero-copy view and allocation-free builder), every
//!   attribute that STUN, RFC 5780, ICE and TURN define, integrity and fingerprint, client
//!   transactions, and a Binding / RFC 5780 server.
//! - [`holepunch`]: hole punching beyond ICE: ICMP hole punching (pwnat).
//! - [`ice`]: ICE candidates (RFC 8445 priorities and foundations) and RFC 8839
//!   descriptions.
//! - [`mdns`]: multicast DNS (RFC 6762) for `.local` ICE host candidates: a one-shot
//!   resolver and a responder.
//! - [`peer`]: the peer connection's sans-IO core: one socket, the ICE agent, its TURN
//!   allocations and server-reflexive gathering.
//! - [`netcheck`]: NAT behaviour discovery (RFC 5780, RFC 4787 terms).
//! - `sim` (feature `sim`): a seeded virtual network with RFC 4787 NATs for deterministic
//!   tests.
//! - [`retransmit`]: the one retransmission schedule of STUN, PCP and NAT-PMP requests.
//! - [`machine`]: the five methods above as one trait, [`machine::Machine`], implemented by
//!   every machine, for code written once for all of them (the driver's generic runner,
//!   test harnesses).
//! - `signal` (feature `server`): the rooms of `pinhole signal`, the development
//!   rendezvous.
//! - `ratelimit` (feature `server`): per-source token buckets that keep the servers safe
//!   on a public address.
//!
//! The development servers (the STUN server, the TURN server, the rendezvous rooms, and
//! with `driver` their drivers) are compiled only with the feature `server` (on by
//! default), so that a client-only build, such as the mobile library, does not carry
//! them.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod demux;
pub mod holepunch;
pub mod ice;
pub mod machine;
pub mod mdns;
pub mod netcheck;
pub mod netmon;
pub mod peer;
pub mod portmap;
#[cfg(any(test, feature = "server"))]
pub mod ratelimit;
pub mod retransmit;
#[cfg(any(test, feature = "server"))]
pub mod signal;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stun;
pub mod turn;

#[cfg(feature = "driver")]
pub mod driver;

mod transmit;
pub use transmit::{Protocol, Received, Transmit};
