//! The UPnP port-mapping list: GetGenericPortMappingEntry answers
//! (`upnp::parse_generic_mapping_entry`) and the sans-IO `upnp::MappingLister` fed answers
//! cut from the input. Properties: no panic; a parsed entry keeps its description within
//! bounds; a listing always ends, never asks for more than `MAX_LISTED_MAPPINGS` entries,
//! and never holds more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::portmap::upnp::{self, Control, HttpResponse, HttpUrl, MappingLister};

fuzz_target!(|data: &[u8]| {
    for status in [200, 500] {
        let resp = HttpResponse {
            status,
            body: data.to_vec(),
        };
        if let Ok(args) = upnp::parse_soap_response(&resp, "GetGenericPortMappingEntry") {
            if let Ok(e) = upnp::parse_generic_mapping_entry(&args) {
                assert!(e.description.chars().count() <= upnp::MAX_DESCRIPTION_CHARS);
            }
        }
    }
    // A listing whose answers are the input's pieces (split at 0xff) in turn, each a 500
    // when its first byte is odd.
    let control = Control {
        service_type: "urn:schemas-upnp-org:service:WANIPConnection:2".into(),
        url: HttpUrl::parse("http://192.168.1.1:5000/ctl/IPConn").unwrap(),
    };
    let pieces: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let mut lister = MappingLister::new();
    let mut asked = 0usize;
    while lister.next_request(&control).is_some() {
        asked += 1;
        assert!(asked <= upnp::MAX_LISTED_MAPPINGS as usize, "unbounded listing");
        let piece = pieces[(asked - 1) % pieces.len()];
        let status = if piece.first().is_some_and(|b| b & 1 == 1) {
            500
        } else {
            200
        };
        lister.handle_response(&HttpResponse {
            status,
            body: piece.to_vec(),
        });
    }
    assert!(lister.is_done() && lister.end().is_some());
    assert!(
        lister.entries().len() + lister.skipped() as usize <= upnp::MAX_LISTED_MAPPINGS as usize
    );
});
