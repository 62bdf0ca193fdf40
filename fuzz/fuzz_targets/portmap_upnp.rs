//! The UPnP parsers (SSDP answers, HTTP responses, device descriptions, SOAP answers, URLs)
//! fed the same bytes. Properties: no panic; a response complete before the connection
//! closes is the same response after it closes; what parses as a URL joins and prints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinhole::portmap::upnp::{self, HttpResponse, HttpUrl};

fuzz_target!(|data: &[u8]| {
    let _ = upnp::parse_search_response(data, [192, 168, 1, 1].into());
    if let Ok(Some(r)) = upnp::parse_http_response(data, false) {
        assert_eq!(upnp::parse_http_response(data, true), Ok(Some(r)));
    }
    let _ = upnp::parse_http_response(data, true);
    let location = HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap();
    if let Ok(c) = upnp::parse_description(data, &location) {
        let _ = upnp::soap_request(&c, "GetExternalIPAddress", &[]);
    }
    for status in [200, 500] {
        let resp = HttpResponse { status, body: data.to_vec() };
        if let Ok(out) = upnp::parse_soap_response(&resp, "AddAnyPortMapping") {
            let _ = upnp::argument(&out, "NewReservedPort");
            let _ = upnp::parse_external_ip(&out);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(u) = HttpUrl::parse(text) {
            let _ = u.host_header();
            let _ = u.socket_addr();
            let _ = u.join("ctl/IPConn");
        }
        let _ = location.join(text);
    }
});
