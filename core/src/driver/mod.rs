//! The tokio driver: real sockets and the real clock around the sans-IO machines.
//!
//! - [`netcheck`] binds the sockets a [`Prober`](crate::netcheck::Prober) needs, runs it and returns its report
//!   ([`netcheck_until`]: or what it found when told to stop).
//! - `serve` (feature `server`) runs a `StunServer` on all of its addresses until the
//!   handle is dropped; `serve_turn` the development TURN server.
//! - [`resolve`] turns `stun:` URIs into [`ServerSpec`](crate::netcheck::ServerSpec)s.
//! - [`portmap`] runs the port mapper and the gateway probe.
//! - [`turn`] runs a TURN allocation over UDP, TCP or TLS.
//! - `signal` (feature `server`) serves `pinhole signal`'s rendezvous over HTTP.
//! - [`peer`] runs a peer connection (ICE over STUN and TURN) on one UDP socket.
//! - the peer connection resolves the peer's mDNS (`.local`) candidates on sockets of
//!   their own (`mdns`).
//! - [`icmp`] punches a UDP path with ICMP (pwnat; Linux, `CAP_NET_RAW`).
//! - [`ice_tcp`] runs a peer connection's ICE-TCP sockets and connections (RFC 6544).
//! - [`interfaces`] lists the host's interface addresses for host candidates.

mod error;
pub mod ice_tcp;
pub mod icmp;
pub mod interfaces;
mod mdns;
mod netcheck;
pub mod netmon;
pub mod peer;
mod peer_portmap;
mod peer_streams;
pub use peer_portmap::PORT_MAPPING_WAIT;
pub mod portmap;
mod resolve;
mod runner;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
mod serve_turn;
#[cfg(feature = "server")]
pub mod signal;
mod sockets;
pub mod turn;
mod udp;

pub use error::{DriverError, os_seed};
pub use netcheck::{netcheck, netcheck_until};
pub use resolve::{DEFAULT_STUN_SERVERS, Unresolved, resolve};
#[cfg(feature = "server")]
pub use serve::{ServeHandle, serve, serve_loopback};
#[cfg(feature = "server")]
pub use serve_turn::serve_turn;

use error::io;
