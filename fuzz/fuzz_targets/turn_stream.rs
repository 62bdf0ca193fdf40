//! The TCP/TLS stream framer. The input is split at arbitrary points (the first byte picks
//! the chunk size). Properties: no panic; the framer returns exactly the frames a one-shot
//! pass over the whole stream finds, each a complete STUN or ChannelData message length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::turn::{StreamFramer, frame_len};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 32) + 1;

    // Reference: frame the whole stream at once.
    let mut expected = Vec::new();
    let mut rest = stream;
    while let Ok(Some(n)) = frame_len(rest) {
        expected.push(rest[..n].to_vec());
        rest = &rest[n..];
    }

    let mut f = StreamFramer::new();
    let mut got = Vec::new();
    'outer: for piece in stream.chunks(chunk) {
        if f.push(piece).is_err() {
            break;
        }
        while let Some(frame) = f.next_frame() {
            match frame {
                Ok(fr) => got.push(fr.to_vec()),
                Err(_) => break 'outer,
            }
        }
    }
    assert_eq!(got, expected);
});
