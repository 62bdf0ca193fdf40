//! The ICE candidate line parser and the RFC 8839 description reader. Properties: no
//! panic; what parses is written back to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::ice::{Candidate, IceDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Candidate::parse(text) {
        let again = Candidate::parse(&c.to_string()).expect("a written candidate parses");
        assert_eq!(again, c);
    }
    if let Ok(p) = IceDescription::parse(text) {
        let written = p.description.to_string();
        let again = IceDescription::parse(&written).expect("a written description parses");
        assert_eq!(again.description, p.description);
        assert!(again.skipped.is_empty());
    }
});
