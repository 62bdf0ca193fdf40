//! The ICE-TCP frame reader (RFC 4571). The input is split at arbitrary points (the first
//! byte picks the chunk size). Properties: no panic; the reader returns exactly the frames
//! a one-shot pass over the whole stream finds, whatever the split; what it keeps never
//! passes its bound; framing those frames again gives back the stream they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::ice::tcp::{FrameReader, frame};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 64) + 1;

    // Reference: every complete frame of the whole stream, read at once.
    let mut expected: Vec<&[u8]> = Vec::new();
    let mut rest = stream;
    let mut used = 0;
    while let [a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b]));
        if tail.len() < n {
            break;
        }
        expected.push(&tail[..n]);
        rest = &tail[n..];
        used += 2 + n;
    }

    let mut r = FrameReader::new();
    let mut got = Vec::new();
    for piece in stream.chunks(chunk) {
        r.push(piece).expect("a reader drained after each push takes any read this short");
        assert!(r.buffer().len() <= FrameReader::MAX_BUFFERED);
        while let Some(f) = r.next_frame() {
            got.push(f.to_vec());
        }
    }
    assert_eq!(got, expected);
    assert_eq!(r.pending(), stream.len() - used);

    // Round trip: framing the frames again gives the stream's complete part.
    let mut again = Vec::new();
    for f in &got {
        frame(f, &mut again).expect("a frame read fits in one");
    }
    assert_eq!(again, &stream[..used]);
});
