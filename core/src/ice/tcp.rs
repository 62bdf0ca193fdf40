//! RFC 4571 framing for ICE-TCP (RFC 6544 §3): on a TCP connection between two ICE
//! agents, every STUN message and every datagram of application data is preceded by its
//! length, a 16-bit big-endian number, so that the stream can be cut back into the
//! datagrams it carries.
//!
//! [`frame`] writes one frame; a [`FrameReader`] is fed what the socket gives and yields
//! complete frames, holding at most [`FrameReader::MAX_BUFFERED`] bytes. Sans-IO: no
//! socket is touched here.

use std::ops::Range;

/// The length prefix (RFC 4571 §2: `LENGTH`, 16 bits, network byte order).
pub const LENGTH_LEN: usize = 2;

/// The largest frame's contents (the prefix is 16 bits).
pub const MAX_FRAME: usize = 0xFFFF;

/// What framing can go wrong with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpFramingError {
    /// A frame carries at most [`MAX_FRAME`] bytes.
    #[error("a frame carries at most 65535 bytes, not {0}")]
    TooLong(usize),
    /// More bytes were pushed than the reader holds: take the frames it has first.
    #[error("the frame reader holds at most {} bytes", FrameReader::MAX_BUFFERED)]
    Full,
}

/// Appends `data` to `out` as one RFC 4571 frame (its length, then itself).
pub fn frame(data: &[u8], out: &mut Vec<u8>) -> Result<(), TcpFramingError> {
    let len = u16::try_from(data.len()).map_err(|_| TcpFramingError::TooLong(data.len()))?;
    out.reserve(LENGTH_LEN + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Ok(())
}

/// Cuts an RFC 4571 stream into frames.
///
/// [`FrameReader::push`] what the socket read, then take complete frames with
/// [`FrameReader::next_frame`] until it says `None`; each borrows the reader's buffer
/// (no copy). Any byte sequence is a valid stream (every frame length is), so reading
/// never fails: only pushing more than the bound does.
#[derive(Debug, Default, Clone)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
}

impl FrameReader {
    /// The most bytes a reader holds: one maximal frame plus one read of up to that size.
    pub const MAX_BUFFERED: usize = 2 * (LENGTH_LEN + MAX_FRAME);

    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream. Fails (and keeps nothing of `bytes`) when the
    /// reader would hold more than [`FrameReader::MAX_BUFFERED`] bytes: a caller that
    /// takes every complete frame after each push and pushes at most
    /// `MAX_BUFFERED / 2` bytes at a time never sees it.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), TcpFramingError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if bytes.len() > Self::MAX_BUFFERED - self.buf.len() {
            return Err(TcpFramingError::Full);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete frame's contents, if one is buffered.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let r = self.next_frame_range()?;
        Some(&self.buf[r])
    }

    /// [`FrameReader::next_frame`] as a range of [`FrameReader::buffer`], valid until the
    /// next [`FrameReader::push`].
    pub fn next_frame_range(&mut self) -> Option<Range<usize>> {
        let rest = self.buf.get(self.start..)?;
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        if rest.len() < LENGTH_LEN + len {
            return None;
        }
        let at = self.start + LENGTH_LEN;
        self.start = at + len;
        Some(at..at + len)
    }

    /// The buffered bytes, frames already returned included (until the next push).
    pub fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes buffered but not yet returned in a frame (a partial frame, or frames not
    /// taken yet).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(r: &mut FrameReader) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| r.next_frame().map(<[u8]>::to_vec)).collect()
    }

    #[test]
    fn frame_prefixes_the_length_big_endian() {
        let mut out = vec![0xAA];
        frame(b"hello", &mut out).unwrap();
        assert_eq!(out, [0xAA, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let mut out = Vec::new();
        frame(&[], &mut out).unwrap();
        assert_eq!(out, [0, 0]);
        let big = vec![7u8; 0x1234];
        let mut out = Vec::new();
        frame(&big, &mut out).unwrap();
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(out.len(), 2 + 0x1234);
    }

    #[test]
    fn frame_refuses_more_than_65535_bytes() {
        let mut out = Vec::new();
        frame(&vec![0; MAX_FRAME], &mut out).unwrap();
        assert_eq!(&out[..2], &[0xFF, 0xFF]);
        let mut out = vec![1];
        assert_eq!(
            frame(&vec![0; MAX_FRAME + 1], &mut out),
            Err(TcpFramingError::TooLong(MAX_FRAME + 1))
        );
        assert_eq!(out, [1], "nothing written on error");
    }

    #[test]
    fn reader_cuts_frames_across_any_split() {
        let msgs: Vec<Vec<u8>> = vec![
            b"one".to_vec(),
            Vec::new(),
            vec![0x42; 300],
            b"last".to_vec(),
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            frame(m, &mut stream).unwrap();
        }
        // Every chunk size, 1 byte at a time up to all at once.
        for chunk in 1..=stream.len() {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                r.push(c).unwrap();
                got.extend(frames(&mut r));
            }
            assert_eq!(got, msgs, "chunks of {chunk}");
            assert_eq!(r.pending(), 0);
        }
    }

    #[test]
    fn a_partial_frame_waits() {
        let mut r = FrameReader::new();
        r.push(&[0]).unwrap();
        assert_eq!(r.next_frame(), None);
        r.push(&[3, b'a', b'b']).unwrap();
        assert_eq!(r.next_frame(), None);
        assert_eq!(r.pending(), 4);
        r.push(b"c\x00").unwrap();
        assert_eq!(r.next_frame(), Some(&b"abc"[..]));
        assert_eq!(r.next_frame(), None);
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn ranges_index_the_buffer() {
        let mut stream = Vec::new();
        frame(b"xy", &mut stream).unwrap();
        frame(b"z", &mut stream).unwrap();
        let mut r = FrameReader::new();
        r.push(&stream).unwrap();
        let a = r.next_frame_range().unwrap();
        let b = r.next_frame_range().unwrap();
        assert_eq!(&r.buffer()[a], b"xy");
        assert_eq!(&r.buffer()[b], b"z");
        assert_eq!(r.next_frame_range(), None);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut r = FrameReader::new();
        // A maximal frame's prefix and most of it: still within the bound.
        r.push(&[0xFF, 0xFF]).unwrap();
        r.push(&vec![0; MAX_FRAME - 1]).unwrap();
        assert_eq!(r.next_frame(), None);
        // Past the bound: refused, nothing kept.
        let room = FrameReader::MAX_BUFFERED - r.pending();
        assert_eq!(r.push(&vec![0; room + 1]), Err(TcpFramingError::Full));
        assert_eq!(r.pending(), LENGTH_LEN + MAX_FRAME - 1);
        // One read of up to MAX_BUFFERED / 2 always fits after the frames are taken.
        r.push(&vec![0; FrameReader::MAX_BUFFERED / 2]).unwrap();
        assert_eq!(r.next_frame().map(<[u8]>::len), Some(MAX_FRAME));
        assert!(r.buffer().len() <= FrameReader::MAX_BUFFERED);
    }

    #[test]
    fn consumed_frames_are_dropped_on_push() {
        let mut r = FrameReader::new();
        let mut stream = Vec::new();
        frame(&vec![1; 1000], &mut stream).unwrap();
        for _ in 0..1000 {
            r.push(&stream).unwrap();
            assert_eq!(r.next_frame().map(<[u8]>::len), Some(1000));
        }
        assert!(r.buffer().len() <= stream.len());
    }
}
