//! One classifier for everything that shares a socket: RFC 7983 (with RFC 9443's update)
//! by the first byte of a datagram.
//!
//! ICE puts STUN checks, TURN traffic and application data on one UDP socket; each
//! datagram is classified once, here, and offered to the machine that owns its kind.
//!
//! | first byte | kind | |
//! |---|---|---|
//! | 0–3 | STUN | RFC 8489: the top two bits are zero |
//! | 16–19 | ZRTP | RFC 6189 |
//! | 20–63 | DTLS | RFC 9147 (RFC 7983 §7 widened it from 20–23) |
//! | 64–79 | TURN ChannelData | RFC 8656 §12: channels 0x4000–0x4FFF |
//! | 80–127 | QUIC | RFC 9443 §3 gives these to QUIC (short header, fixed bit set) |
//! | 128–191 | RTP / RTCP | RFC 3550 version 2 |
//! | 192–255 | QUIC | long header (RFC 9443) |
//!
//! The test for ChannelData used to be "top two bits 01", which also claims 80–127: a QUIC
//! datagram on a shared socket would have been taken for TURN. RFC 9443 §2 narrows it.

/// What a datagram is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// STUN (first byte 0–3).
    Stun,
    /// ZRTP (16–19).
    Zrtp,
    /// DTLS (20–63).
    Dtls,
    /// TURN ChannelData (64–79).
    ChannelData,
    /// QUIC (80–127 short header, 192–255 long header; RFC 9443).
    Quic,
    /// RTP or RTCP (128–191).
    Rtp,
    /// Anything else (4–15, 24…: unassigned), or an empty datagram.
    Unknown,
}

impl Kind {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stun => "stun",
            Self::Zrtp => "zrtp",
            Self::Dtls => "dtls",
            Self::ChannelData => "channel-data",
            Self::Quic => "quic",
            Self::Rtp => "rtp",
            Self::Unknown => "unknown",
        }
    }
}

/// Classifies a datagram by its first byte (RFC 7983 §7, RFC 9443 §2).
pub fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        None => Kind::Unknown,
        Some(&b) => classify_byte(b),
    }
}

/// Classifies a first byte (RFC 7983 §7, RFC 9443 §2).
pub const fn classify_byte(b: u8) -> Kind {
    match b {
        0..=3 => Kind::Stun,
        16..=19 => Kind::Zrtp,
        20..=63 => Kind::Dtls,
        64..=79 => Kind::ChannelData,
        80..=127 | 192..=255 => Kind::Quic,
        128..=191 => Kind::Rtp,
        _ => Kind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_byte_has_exactly_the_kind_the_rfcs_give_it() {
        for b in 0..=255u8 {
            let want = match b {
                0..=3 => Kind::Stun,
                4..=15 => Kind::Unknown,
                16..=19 => Kind::Zrtp,
                20..=63 => Kind::Dtls,
                64..=79 => Kind::ChannelData,
                80..=127 => Kind::Quic,
                128..=191 => Kind::Rtp,
                192..=255 => Kind::Quic,
            };
            assert_eq!(classify(&[b, 0, 0, 0]), want, "{b}");
        }
        assert_eq!(classify(&[]), Kind::Unknown);
    }

    #[test]
    fn channel_numbers_map_to_channel_data_and_nothing_else_does() {
        for ch in [0x4000u16, 0x4123, 0x4FFF] {
            assert_eq!(classify(&ch.to_be_bytes()), Kind::ChannelData);
        }
        // 0x5000 and up were ChannelData under the old top-two-bits test; they are QUIC.
        for first in [0x50u16, 0x7F] {
            assert_eq!(classify(&(first << 8).to_be_bytes()), Kind::Quic);
        }
    }
}
