//! pinhole integration test support.
//!
//! - [`lab`]: the NAT lab — Linux network namespaces, nftables NATs named in RFC 4787
//!   terms, and real servers (`pinhole serve`, coturn, miniupnpd) started inside it.
//! - [`interop`]: other ICE agents (webrtc-rs's `webrtc-ice`, str0m's `is`) as pinhole's
//!   peers.

pub mod interop;
pub mod lab;
