//! The ICE candidate line parser and the RFC 8839 description reader. Properties: no
//! panic; what parses is written back to text that parses to the same value (parse →
//! write → parse), and writing that again gives the same text (the writer is stable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::ice::{Candidate, IceDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Candidate::parse(text) {
        let written = c.to_string();
        let again = Candidate::parse(&written).expect("a written candidate parses");
        assert_eq!(again, c);
        assert_eq!(again.to_string(), written);
        // SDP carries it as `a=…` on a line of its own.
        assert!(!written.contains(['\r', '\n']));
        let sdp = Candidate::parse(&format!("a={written}\r\n")).expect("as an SDP line");
        assert_eq!(sdp, c);
    }
    if let Ok(p) = IceDescription::parse(text) {
        let written = p.description.to_string();
        let again = IceDescription::parse(&written).expect("a written description parses");
        assert_eq!(again.description, p.description);
        assert!(again.skipped.is_empty());
    }
});
