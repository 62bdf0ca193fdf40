//! `stun:` and `stuns:` URIs, RFC 7064.

use super::{DEFAULT_PORT, DEFAULT_TLS_PORT};

/// Errors from parsing a STUN URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The scheme is neither `stun` nor `stuns`.
    #[error("scheme must be stun: or stuns: (stun:host[:port], RFC 7064)")]
    Scheme,
    /// The host is empty or malformed.
    #[error(
        "bad host: expected a name or an IP address, IPv6 in brackets (stun:[2001:db8::1]:3478)"
    )]
    Host,
    /// The port is not a number from 1 to 65535.
    #[error("bad port: expected a number from 1 to 65535")]
    Port,
    /// The URI has a query (`?transport=...`): RFC 7064 defines none for STUN URIs.
    #[error(
        "a stun: URI takes no query such as ?transport= (RFC 7064); pinhole speaks STUN \
         over UDP only (?transport=tcp belongs to turn: URIs, RFC 7065)"
    )]
    Query,
    /// The URI has `//` after the scheme: RFC 7064 URIs have no authority part.
    #[error("no // after the scheme: write stun:host[:port] (RFC 7064)")]
    Slashes,
    /// An IPv6 address without brackets.
    #[error("an IPv6 address must be in brackets: stun:[2001:db8::1]:3478")]
    UnbracketedIpv6,
}

/// A parsed `stun:host[:port]` or `stuns:host[:port]` URI (RFC 7064 §3.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StunUri {
    /// `stuns:` (over TLS).
    pub secure: bool,
    /// The host: a name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    /// The port, defaulted to 3478 (`stun:`) or 5349 (`stuns:`).
    pub port: u16,
}

impl std::str::FromStr for StunUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError::Scheme)?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "stun" => false,
            "stuns" => true,
            _ => return Err(UriError::Scheme),
        };
        let default = if secure {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        };
        if rest.contains('?') {
            return Err(UriError::Query);
        }
        if rest.starts_with("//") {
            return Err(UriError::Slashes);
        }
        if rest.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(UriError::UnbracketedIpv6);
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or(UriError::Host)?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(UriError::Host);
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(UriError::Port)?),
            };
            (h, port)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !valid_host {
            return Err(UriError::Host);
        }
        let port = match port {
            None => default,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(UriError::Port),
            },
        };
        Ok(StunUri {
            secure,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for StunUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.secure { "stuns" } else { "stun" };
        if self.host.contains(':') {
            write!(f, "{scheme}:[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}:{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7064_forms() {
        let u: StunUri = "stun:example.org".parse().unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port),
            (false, "example.org", 3478)
        );
        let u: StunUri = "stuns:example.org".parse().unwrap();
        assert_eq!(u.port, 5349);
        let u: StunUri = "STUN:192.0.2.1:19302".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("192.0.2.1", 19302));
        let u: StunUri = "stun:[2001:db8::1]:1234".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 1234));
        assert_eq!(u.to_string(), "stun:[2001:db8::1]:1234");
        for bad in [
            "turn:x",
            "stun:",
            "stun:x:0",
            "stun:x:99999",
            "stun:[zz]",
            "x",
            "stun:a b",
        ] {
            assert!(bad.parse::<StunUri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (bad, want) in [
            ("stun:host:3478?transport=tcp", UriError::Query),
            ("stun:host?transport=udp", UriError::Query),
            ("stun://host:3478", UriError::Slashes),
            ("stun:2001:db8::1", UriError::UnbracketedIpv6),
            ("stun:host:http", UriError::Port),
            ("stun:host:0", UriError::Port),
            ("http:host", UriError::Scheme),
            ("stun:", UriError::Host),
        ] {
            assert_eq!(bad.parse::<StunUri>(), Err(want.clone()), "{bad}");
        }
        let msg = UriError::Query.to_string();
        assert!(msg.contains("RFC 7064") && msg.contains("turn:"), "{msg}");
        assert!(!msg.contains("bad port"), "{msg}");
    }
}
