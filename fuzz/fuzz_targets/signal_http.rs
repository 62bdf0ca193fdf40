//! The rendezvous's request-head parser and its rooms fed arbitrary requests. Properties:
//! no panic; the rooms stay within their bounds.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pinhole::signal::{MAX_ROOMS, Rooms, Side, parse_head};

fuzz_target!(|data: &[u8]| {
    let head = parse_head(data);
    let mut rooms = Rooms::new([0; 32]);
    let now = Instant::now();
    let parts: Vec<&str> = head.path.trim_matches('/').split('/').collect();
    if let [_, _, room, peer] = parts.as_slice() {
        let token = rooms.join(now, room).map(|(_, t)| t).unwrap_or_default();
        if let Ok(side) = Side::parse(peer) {
            let _ = rooms.post(now, room, side, &token, head.query.as_bytes());
            let after = head.length.min(1 << 20) as u64;
            let _ = rooms.fetch(now, room, side, &token, after);
            // Someone else's guesses get nothing.
            assert!(rooms.fetch(now, room, side, &head.method, after).is_err() || head.method == token);
        }
    }
    assert!(rooms.len() <= MAX_ROOMS);
});
