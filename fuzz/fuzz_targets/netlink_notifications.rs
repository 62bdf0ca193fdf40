//! The rtnetlink notification reader of the network monitor (`pinhole::netmon`), fed
//! arbitrary datagrams, and the debounce fed what it reads at arbitrary times.
//! Properties: no panic; a refused datagram is refused again (no hidden state); the
//! debounce reports a change only after one went in, and never with nothing changed.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pinhole::netmon::{Debounce, parse_notifications};

fuzz_target!(|data: &[u8]| {
    let first = parse_notifications(data);
    assert_eq!(first, parse_notifications(data));
    let t0 = Instant::now();
    let mut d = Debounce::new();
    let mut fed = false;
    for (i, chunk) in data.chunks(20).enumerate() {
        let now = t0 + Duration::from_millis(u64::from(chunk[0]) * i as u64);
        if let Ok(c) = parse_notifications(chunk) {
            fed |= c.any();
            d.handle_input(now, c);
        }
        d.handle_timeout(now);
        while let Some(c) = d.poll_event() {
            assert!(fed && c.any());
        }
    }
    if let Some(t) = d.poll_timeout() {
        d.handle_timeout(t);
        assert!(d.poll_event().is_some_and(|c| c.any()));
    }
});
