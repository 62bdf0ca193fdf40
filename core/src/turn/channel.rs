//! ChannelData (RFC 8656 §12.4) and the framing of STUN and ChannelData on a TCP or TLS
//! stream (RFC 8656 §12.5, RFC 8489 §6.2.2).

use super::TurnError;

/// The first channel number, RFC 8656 §12.
pub const MIN_CHANNEL: u16 = 0x4000;
/// The last channel number, RFC 8656 §12.
pub const MAX_CHANNEL: u16 = 0x4FFF;
/// The ChannelData header length.
pub const HEADER_LEN: usize = 4;

/// A zero-copy view of one ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number (0x4000–0x4FFF).
    pub channel: u16,
    /// The application data, padding excluded.
    pub data: &'a [u8],
}

/// Whether the first byte announces ChannelData: 64–79, channels 0x4000–0x4FFF (RFC 7983
/// as updated by RFC 9443, which gives 80–127 to QUIC; see [`crate::demux`]).
pub fn is_channel_data(buf: &[u8]) -> bool {
    crate::demux::classify(buf) == crate::demux::Kind::ChannelData
}

impl<'a> ChannelData<'a> {
    /// Parses one ChannelData message. Over UDP the datagram may carry padding (RFC 8656
    /// §12.5 allows it) or not; anything beyond that is an error.
    pub fn parse(buf: &'a [u8]) -> Result<Self, TurnError> {
        if buf.len() < HEADER_LEN {
            return Err(TurnError::Truncated);
        }
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&channel) {
            return Err(TurnError::BadChannel(channel));
        }
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let data = buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(TurnError::Truncated)?;
        let padded = HEADER_LEN + ((len + 3) & !3);
        if buf.len() != HEADER_LEN + len && buf.len() != padded {
            return Err(TurnError::Malformed(
                "ChannelData longer than its length and padding",
            ));
        }
        Ok(Self { channel, data })
    }

    /// Writes a ChannelData message for `data` on `channel` into `out`; with `pad` (TCP and
    /// TLS, RFC 8656 §12.5) it is padded with zeros to a multiple of 4. Returns its length.
    pub fn emit(channel: u16, data: &[u8], pad: bool, out: &mut [u8]) -> Result<usize, TurnError> {
        let len =
            u16::try_from(data.len()).map_err(|_| TurnError::Malformed("data over 65535 bytes"))?;
        let total = if pad {
            HEADER_LEN + ((data.len() + 3) & !3)
        } else {
            HEADER_LEN + data.len()
        };
        let out = out
            .get_mut(..total)
            .ok_or(TurnError::BufferTooSmall { needed: total })?;
        out[..2].copy_from_slice(&channel.to_be_bytes());
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        out[HEADER_LEN + data.len()..].fill(0);
        Ok(total)
    }
}

/// The length of the first complete STUN or ChannelData message at the start of a stream
/// buffer: `Ok(None)` when more bytes are needed, an error when the stream is not STUN or
/// ChannelData (framing is lost and the connection must be dropped).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, TurnError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    // Only STUN and ChannelData travel on a TURN stream (RFC 8656 §12.5).
    let need = match crate::demux::classify_byte(first) {
        crate::demux::Kind::Stun => crate::stun::HEADER_LEN + len,
        crate::demux::Kind::ChannelData => HEADER_LEN + ((len + 3) & !3),
        _ => return Err(TurnError::FramingLost),
    };
    Ok((buf.len() >= need).then_some(need))
}

/// Reassembles STUN and ChannelData messages from a byte stream (TCP or TLS).
///
/// Push what the socket gave, then take complete messages with
/// [`StreamFramer::next_frame`]; each borrows the framer's buffer (no copy). The buffer is
/// bounded: a message can be at most 65535 + 20 bytes.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    start: usize,
}

impl StreamFramer {
    /// The most bytes the framer holds: one maximal message plus one read's worth.
    pub const MAX_BUFFERED: usize = 2 * (crate::stun::HEADER_LEN + 0xFFFF);

    /// An empty framer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), TurnError> {
        if self.start > 0 && (self.start == self.buf.len() || self.start > self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() + bytes.len() > Self::MAX_BUFFERED {
            return Err(TurnError::FramingLost);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete message, if any. An error means the stream is not STUN or
    /// ChannelData; drop the connection.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], TurnError>> {
        match self.next_frame_range()? {
            Ok(r) => Some(Ok(&self.buf[r])),
            Err(e) => Some(Err(e)),
        }
    }

    /// [`StreamFramer::next_frame`] as a range of [`StreamFramer::buffer`], for a driver
    /// that hands the message out later: valid until the next [`StreamFramer::push`].
    pub fn next_frame_range(&mut self) -> Option<Result<std::ops::Range<usize>, TurnError>> {
        match frame_len(&self.buf[self.start..]) {
            Ok(Some(n)) => {
                let at = self.start;
                self.start += n;
                Some(Ok(at..at + n))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The buffered bytes, the messages already returned included (until the next push).
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes buffered but not yet returned.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trip_and_padding() {
        let mut out = [0u8; 16];
        let n = ChannelData::emit(0x4001, b"hello", false, &mut out).unwrap();
        assert_eq!(n, 9);
        assert_eq!(ChannelData::parse(&out[..n]).unwrap().data, b"hello");
        let n = ChannelData::emit(0x4001, b"hello", true, &mut out).unwrap();
        assert_eq!(n, 12);
        assert_eq!(&out[9..12], &[0, 0, 0]);
        let c = ChannelData::parse(&out[..n]).unwrap();
        assert_eq!((c.channel, c.data), (0x4001, &b"hello"[..]));
    }

    #[test]
    fn channel_data_malformed() {
        assert_eq!(ChannelData::parse(&[0x40, 0]), Err(TurnError::Truncated));
        assert_eq!(
            ChannelData::parse(&[0x50, 0, 0, 0]),
            Err(TurnError::BadChannel(0x5000))
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0, 0, 5, 1]),
            Err(TurnError::Truncated)
        );
        assert!(ChannelData::parse(&[0x40, 0, 0, 1, 1, 0, 0, 0, 9]).is_err());
        let mut tiny = [0u8; 4];
        assert!(ChannelData::emit(0x4000, b"x", true, &mut tiny).is_err());
    }

    #[test]
    fn framer_splits_and_joins() {
        let mut stream = Vec::new();
        let mut b = [0u8; 64];
        let n = ChannelData::emit(0x4002, b"abc", true, &mut b).unwrap();
        stream.extend_from_slice(&b[..n]);
        let mut sb = [0u8; 64];
        let stun = crate::stun::MessageBuilder::new(
            &mut sb,
            crate::stun::MessageType::BINDING_REQUEST,
            crate::stun::TransactionId([1; 12]),
        )
        .unwrap()
        .finish()
        .to_vec();
        stream.extend_from_slice(&stun);
        stream.extend_from_slice(&b[..n]);
        // Feed it one byte at a time.
        let mut f = StreamFramer::new();
        let mut frames = Vec::new();
        for byte in &stream {
            f.push(std::slice::from_ref(byte)).unwrap();
            while let Some(fr) = f.next_frame() {
                frames.push(fr.unwrap().to_vec());
            }
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1], stun);
        assert_eq!(ChannelData::parse(&frames[2]).unwrap().data, b"abc");
        assert_eq!(f.pending(), 0);
        // Garbage loses framing.
        f.push(&[0xff, 0, 0, 0]).unwrap();
        assert_eq!(f.next_frame(), Some(Err(TurnError::FramingLost)));
    }
}
