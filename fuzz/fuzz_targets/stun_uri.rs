//! The `stun:` URI parser (RFC 7064). Properties: no panic; what parses prints to a URI
//! that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::stun::StunUri;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(uri) = s.parse::<StunUri>() {
        let printed = uri.to_string();
        let again: StunUri = printed.parse().expect("a printed URI parses");
        assert_eq!(again, uri);
    }
});
