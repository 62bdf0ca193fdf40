//! pinhole integration test support.
//!
//! - [`lab`]: the NAT lab — Linux network namespaces, nftables NATs named in RFC 4787
//!   terms, and real servers (`pinhole serve`, coturn, miniupnpd) started inside it.

pub mod lab;
