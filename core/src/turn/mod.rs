//! TURN client, RFC 8656: ChannelData and stream framing, `turn:` URIs (RFC 7065),
//! REST credentials, and the sans-IO [`Allocation`] machine; with the feature `server`,
//! the development server (`TurnServer`).

mod allocation;
mod channel;
#[cfg(any(test, feature = "server"))]
mod server;

pub use allocation::{
    Allocation, AllocationConfig, AllocationEvent, CHANNEL_REFRESH, DEFAULT_LIFETIME, Input,
    KEEPALIVE_INTERVAL, LIVENESS_INTERVAL, LIVENESS_SILENCE, PERMISSION_REFRESH, REFRESH_MARGIN,
    RequestedFamily,
};
pub use channel::{
    ChannelData, HEADER_LEN as CHANNEL_DATA_HEADER_LEN, MAX_CHANNEL, MIN_CHANNEL, StreamFramer,
    frame_len, is_channel_data,
};
#[cfg(any(test, feature = "server"))]
pub use server::{
    Cidr, CidrError, DEFAULT_ALLOCATION_LIFETIME, DEFAULT_AUTH_FAILURE_RATE,
    DEFAULT_MAX_ALLOCATIONS, DEFAULT_MAX_ALLOCATIONS_PER_USER, DEFAULT_MAX_CHANNELS,
    DEFAULT_MAX_PERMISSIONS, DEFAULT_UNAUTHENTICATED_RATE, PeerClass, PeerPolicy, ServerAction,
    ServerCredentials, TurnServer, TurnServerConfig,
};

use std::net::SocketAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::stun::{DEFAULT_PORT, DEFAULT_TLS_PORT, StunError};

/// Errors from TURN: codecs, the server's error responses, and the allocation's fate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// Shorter than its header or length says.
    #[error("truncated message")]
    Truncated,
    /// A channel number outside 0x4000–0x4FFF.
    #[error("channel number {0:#06x} outside 0x4000..=0x4FFF")]
    BadChannel(u16),
    /// Otherwise malformed.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// The stream carries something other than STUN or ChannelData.
    #[error("stream framing lost")]
    FramingLost,
    /// The output buffer is too small.
    #[error("buffer too small: need {needed} bytes")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// A STUN-level error.
    #[error(transparent)]
    Stun(#[from] StunError),
    /// A `turn:` URI did not parse.
    #[error("bad TURN URI: {0}")]
    Uri(&'static str),
    /// 401 even with credentials: wrong user name or password.
    #[error("401 Unauthenticated: wrong credentials")]
    Unauthenticated,
    /// 403 Forbidden.
    #[error("403 Forbidden")]
    Forbidden,
    /// 437 Allocation Mismatch.
    #[error("437 Allocation Mismatch")]
    AllocationMismatch,
    /// 440 Address Family not Supported.
    #[error("440 Address Family not Supported")]
    AddressFamilyNotSupported,
    /// 441 Wrong Credentials.
    #[error("441 Wrong Credentials")]
    WrongCredentials,
    /// 442 Unsupported Transport Protocol.
    #[error("442 Unsupported Transport Protocol")]
    UnsupportedTransport,
    /// 443 Peer Address Family Mismatch.
    #[error("443 Peer Address Family Mismatch")]
    PeerAddressFamilyMismatch,
    /// 486 Allocation Quota Reached.
    #[error("486 Allocation Quota Reached")]
    AllocationQuotaReached,
    /// 508 Insufficient Capacity.
    #[error("508 Insufficient Capacity")]
    InsufficientCapacity,
    /// 300 Try Alternate, a second time: a redirect is followed once only, so that two
    /// servers sending the client to each other cannot keep it going round.
    #[error(
        "the TURN server redirected again (300 Try Alternate): one redirect is followed, not two"
    )]
    TooManyRedirects,
    /// 300 Try Alternate over UDP to an address of the other family, which the socket
    /// cannot reach.
    #[error("the TURN server redirected to {0}, of another address family than this socket")]
    AlternateFamily(SocketAddr),
    /// The server granted a LIFETIME of 0: the allocation expired as it was made (or a
    /// refresh deleted it).
    #[error("the server granted a lifetime of 0")]
    ZeroLifetime,
    /// Another error code.
    #[error("error {code}: {reason}")]
    ServerError {
        /// The code.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The server did not answer.
    #[error("the TURN server did not answer")]
    TimedOut,
    /// The TCP or TLS connection to the server could not be made, or ended.
    #[error("TURN connection: {0}")]
    Stream(String),
    /// A success response lacked a required attribute.
    #[error("response lacks {0}")]
    MissingAttribute(&'static str),
    /// Data for a peer without a permission.
    #[error("no permission for peer {0}")]
    NoPermission(SocketAddr),
    /// There is no allocation (not yet, or no longer).
    #[error("no allocation")]
    NoAllocation,
    /// All channel numbers are in use.
    #[error("no channel number left")]
    NoChannel,
}

impl TurnError {
    /// The typed error for a TURN error code, RFC 8656 §19.
    pub fn from_code(code: u16, reason: &str) -> Self {
        match code {
            401 => TurnError::Unauthenticated,
            403 => TurnError::Forbidden,
            437 => TurnError::AllocationMismatch,
            440 => TurnError::AddressFamilyNotSupported,
            441 => TurnError::WrongCredentials,
            442 => TurnError::UnsupportedTransport,
            443 => TurnError::PeerAddressFamilyMismatch,
            486 => TurnError::AllocationQuotaReached,
            508 => TurnError::InsufficientCapacity,
            _ => TurnError::ServerError {
                code,
                reason: reason.to_owned(),
            },
        }
    }
}

/// The transport to the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl TurnTransport {
    /// Whether messages travel on a stream (framed, padded ChannelData, no retransmission).
    pub fn is_stream(self) -> bool {
        !matches!(self, TurnTransport::Udp)
    }

    /// `udp`, `tcp` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnTransport::Udp => "udp",
            TurnTransport::Tcp => "tcp",
            TurnTransport::Tls => "tls",
        }
    }
}

/// A `turn:` or `turns:` URI, RFC 7065 §3.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnUri {
    /// The host (a name, or an IP address without brackets).
    pub host: String,
    /// The port (3478 for `turn:`, 5349 for `turns:` by default).
    pub port: u16,
    /// The transport.
    pub transport: TurnTransport,
}

impl std::str::FromStr for TurnUri {
    type Err = TurnError;

    fn from_str(s: &str) -> Result<Self, TurnError> {
        const FORM: &str =
            "expected turn:host[:port][?transport=udp|tcp] or turns:host[:port] (RFC 7065)";
        let (scheme, rest) = s.split_once(':').ok_or(TurnError::Uri(FORM))?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "turn" => false,
            "turns" => true,
            _ => return Err(TurnError::Uri(FORM)),
        };
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let transport = match query.map(str::to_ascii_lowercase).as_deref() {
            None => {
                if secure {
                    TurnTransport::Tls
                } else {
                    TurnTransport::Udp
                }
            }
            Some("transport=udp") if !secure => TurnTransport::Udp,
            Some("transport=tcp") if secure => TurnTransport::Tls,
            Some("transport=tcp") => TurnTransport::Tcp,
            Some("transport=udp") => {
                return Err(TurnError::Uri(
                    "turns: is TLS over TCP: ?transport=udp (DTLS) is not supported",
                ));
            }
            Some(_) => {
                return Err(TurnError::Uri(
                    "the only query is ?transport=udp or ?transport=tcp (RFC 7065)",
                ));
            }
        };
        let stun: crate::stun::StunUri = format!("stun:{hostport}").parse().map_err(|e| {
            use crate::stun::UriError;
            TurnError::Uri(match e {
                UriError::Port => "bad port: expected a number from 1 to 65535",
                UriError::Slashes => "no // after the scheme: write turn:host[:port] (RFC 7065)",
                UriError::UnbracketedIpv6 => {
                    "an IPv6 address must be in brackets: turn:[2001:db8::1]:3478"
                }
                _ => "bad host: expected a name or an IP address, IPv6 in brackets",
            })
        })?;
        let port = if hostport.ends_with(&format!(":{}", stun.port)) {
            stun.port
        } else if secure {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        };
        Ok(TurnUri {
            host: stun.host,
            port,
            transport,
        })
    }
}

impl std::fmt::Display for TurnUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.transport {
            TurnTransport::Udp => write!(f, "turn:{host}:{}?transport=udp", self.port),
            TurnTransport::Tcp => write!(f, "turn:{host}:{}?transport=tcp", self.port),
            TurnTransport::Tls => write!(f, "turns:{host}:{}?transport=tcp", self.port),
        }
    }
}

/// Long-term credentials for TURN.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password. Never logged: `Debug` hides it.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Plain long-term credentials.
    pub fn long_term(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// TURN REST API credentials (draft-uberti-behave-turn-rest, as coturn's
    /// `use-auth-secret` expects): user name `expiry:user` with `expiry` the Unix time
    /// `unix_now + ttl_secs`, password base64(HMAC-SHA1(secret, user name)). Time comes
    /// from the caller.
    pub fn rest(user: &str, secret: &[u8], unix_now: u64, ttl_secs: u64) -> Self {
        let username = format!("{}:{user}", unix_now + ttl_secs);
        // HMAC accepts any key length.
        let mut mac =
            <Hmac<Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Self { username, password }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7065_uris() {
        let u: TurnUri = "turn:example.org".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("example.org", 3478, TurnTransport::Udp)
        );
        let u: TurnUri = "turn:192.0.2.1:3479?transport=tcp".parse().unwrap();
        assert_eq!((u.port, u.transport), (3479, TurnTransport::Tcp));
        let u: TurnUri = "turns:example.org".parse().unwrap();
        assert_eq!((u.port, u.transport), (5349, TurnTransport::Tls));
        let u: TurnUri = "turns:[2001:db8::1]:443?transport=tcp".parse().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.transport),
            ("2001:db8::1", 443, TurnTransport::Tls)
        );
        assert_eq!(u.to_string().parse::<TurnUri>().unwrap(), u);
        for bad in [
            "stun:x",
            "turn:",
            "turn:x?transport=sctp",
            "turns:x?transport=udp",
            "turn:x:0",
        ] {
            assert!(bad.parse::<TurnUri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn uri_errors_say_what_is_wrong() {
        for (bad, want) in [
            ("stun:x", "RFC 7065"),
            ("turn:x:0", "bad port"),
            ("turn:x:99999?transport=udp", "bad port"),
            ("turn:", "bad host"),
            ("turn://x", "no //"),
            ("turn:2001:db8::1", "brackets"),
            ("turns:x?transport=udp", "DTLS"),
            ("turn:x?transport=sctp", "?transport=udp or ?transport=tcp"),
        ] {
            let e = bad.parse::<TurnUri>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn rest_credentials_match_coturn() {
        // coturn's recipe: HMAC-SHA1 keyed with the secret over "expiry:user", base64.
        // The expected value was computed independently with Python's hmac module.
        let c = Credentials::rest("alice", b"north", 1_700_000_000, 3600);
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.password, "wjwSXO2ch1B6VaLTLMy2Avn5O9o=");
        assert!(!format!("{c:?}").contains(&c.password));
    }
}
