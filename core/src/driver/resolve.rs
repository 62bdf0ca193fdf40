//! `stun:` URIs to server addresses.

use std::net::SocketAddr;

use super::DriverError;
use crate::netcheck::ServerSpec;
use crate::stun::StunUri;

/// Public STUN servers used when none are given: Google's and Cloudflare's (plain STUN),
/// and stunprotocol.org's, which supports RFC 5780.
pub const DEFAULT_STUN_SERVERS: [&str; 4] = [
    "stun:stun.l.google.com:19302",
    "stun:stun1.l.google.com:19302",
    "stun:stun.cloudflare.com:3478",
    "stun:stun.stunprotocol.org:3478",
];
/// A server that could not be resolved.
#[derive(Debug, Clone)]
pub struct Unresolved {
    /// The URI.
    pub uri: String,
    /// Why.
    pub reason: String,
}

/// Resolves `stun:` URIs, preferring IPv4 addresses. All returned servers share one
/// address family (that of the first resolved); the others are returned as unresolved.
pub async fn resolve(uris: &[String]) -> Result<(Vec<ServerSpec>, Vec<Unresolved>), DriverError> {
    let mut specs = Vec::new();
    let mut failed = Vec::new();
    for uri in uris {
        let parsed: StunUri = uri.parse().map_err(|source| DriverError::Uri {
            uri: uri.clone(),
            source,
        })?;
        if parsed.secure {
            return Err(DriverError::Unsupported(uri.clone()));
        }
        match tokio::net::lookup_host((parsed.host.as_str(), parsed.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                match addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
                    Some(a) => specs.push(ServerSpec {
                        label: parsed.to_string(),
                        addr: *a,
                    }),
                    None => failed.push(Unresolved {
                        uri: uri.clone(),
                        reason: "no address".into(),
                    }),
                }
            }
            Err(e) => failed.push(Unresolved {
                uri: uri.clone(),
                reason: e.to_string(),
            }),
        }
    }
    if let Some(first) = specs.first() {
        let v4 = first.addr.is_ipv4();
        let (keep, other): (Vec<_>, Vec<_>) =
            specs.into_iter().partition(|s| s.addr.is_ipv4() == v4);
        failed.extend(other.into_iter().map(|s| Unresolved {
            uri: s.label,
            reason: "address family differs from the first server's".into(),
        }));
        specs = keep;
    }
    Ok((specs, failed))
}
