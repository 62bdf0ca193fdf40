//! UPnP IGD, sans-IO: the SSDP search, the device description, and the SOAP actions of
//! WANIPConnection (v1 and v2) and WANPPPConnection (v1).
//!
//! Everything here builds or parses bytes; the driver owns the sockets. The parsers accept
//! what real gateways send (any header case, namespace prefixes, chunked bodies, relative
//! control URLs, `URLBase`) and reject the rest with a typed [`UpnpError`]. Answers come
//! from the local network, where anybody can answer an SSDP search: the description must
//! be on the answering host, named by its IP address, and the control URL on that same
//! host, so that no answer can send pinhole's requests to another host or to the DNS. Every parser has
//! a fuzz target (`fuzz/fuzz_targets/portmap_upnp.rs`).
//!
//! The protocol: UPnP Device Architecture 1.1 (SSDP §1, description §2, control §3) and
//! the IGD services' specifications (WANIPConnection:1 and :2, WANPPPConnection:1).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The SSDP multicast address and port (UDA 1.1 §1.1.2).
pub const SSDP_MULTICAST: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);
/// The SSDP port.
pub const SSDP_PORT: u16 = 1900;
/// The device type searched for. IGD v2 devices answer v1 searches too (UDA 1.1 §1.3.2:
/// a device answers searches for lower versions of its type).
pub const IGD_SEARCH_TARGET: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
/// The largest HTTP response (description or SOAP answer) accepted.
pub const MAX_HTTP_RESPONSE: usize = 64 * 1024;
/// How [`UpnpError::Transport`] reads: the start of its message.
pub const TRANSPORT_FAILURE: &str = "HTTP exchange failed";
/// The description pinhole gives its mappings.
pub const MAPPING_DESCRIPTION: &str = "pinhole";

/// How many elements the XML scanner visits in one document at most (a device description
/// has a few hundred).
const MAX_XML_ELEMENTS: usize = 2048;
/// How many output arguments a SOAP answer may carry (the IGD actions have at most eight).
const MAX_SOAP_ARGUMENTS: usize = 32;

/// The WAN connection services that can map ports, in order of preference.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// UPnP errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpnpError {
    /// Not an HTTP response, or a malformed one.
    #[error("malformed HTTP response: {0}")]
    Http(&'static str),
    /// An HTTP status other than 200 (and not a SOAP fault).
    #[error("HTTP status {0}")]
    Status(u16),
    /// A URL pinhole cannot use (only `http://`).
    #[error("unusable URL: {0}")]
    Url(String),
    /// An SSDP answer that is not about an IGD or has no LOCATION.
    #[error("not an IGD search response: {0}")]
    NotIgd(&'static str),
    /// The description lists no WAN connection service with a control URL.
    #[error("the device has no WANIPConnection or WANPPPConnection service")]
    NoWanService,
    /// The SOAP answer lacks something it must carry.
    #[error("malformed SOAP response: {0}")]
    Soap(&'static str),
    /// The HTTP exchange itself failed (connecting, sending, reading, in time).
    #[error("HTTP exchange failed: {0}")]
    Transport(String),
    /// No IGD answered the SSDP search.
    #[error("no UPnP IGD found: {0}")]
    NotFound(String),
    /// The gateway refused the action (a UPnP error, e.g. 718 ConflictInMappingEntry).
    #[error("UPnP error {code}: {description}")]
    Fault {
        /// The UPnP error code.
        code: u16,
        /// Its description.
        description: String,
    },
}

/// UPnP error codes the mapper reacts to (WANIPConnection:2 §2.4).
pub mod codes {
    /// The action is not implemented (IGD v1 has no AddAnyPortMapping).
    pub const INVALID_ACTION: u16 = 401;
    /// The external port is mapped to another client.
    pub const CONFLICT_IN_MAPPING_ENTRY: u16 = 718;
    /// The gateway only supports leases of 0 (permanent).
    pub const ONLY_PERMANENT_LEASES_SUPPORTED: u16 = 725;
    /// GetGenericPortMappingEntry: no entry at that index (the end of the table).
    pub const SPECIFIED_ARRAY_INDEX_INVALID: u16 = 713;
    /// No such mapping (DeletePortMapping, GetSpecificPortMappingEntry; some gateways
    /// also end GetGenericPortMappingEntry's table with it).
    pub const NO_SUCH_ENTRY_IN_ARRAY: u16 = 714;
}

impl UpnpError {
    /// Whether nothing answered (no IGD found, or the HTTP exchange failed) rather than
    /// the gateway answering with a refusal or something unusable.
    pub fn is_no_answer(&self) -> bool {
        matches!(self, UpnpError::Transport(_) | UpnpError::NotFound(_))
    }
}

/// An `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written (an IP literal, brackets removed, or a name).
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, UpnpError> {
        let bad = || UpnpError::Url(url.chars().take(120).collect());
        let url = url.trim();
        let rest = strip_prefix_ignore_case(url, "http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // No user information in a gateway's URL.
        if authority.contains('@') || authority.is_empty() {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(bad)?;
            let port = match &v6[end + 1..] {
                "" => 80,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?,
            };
            (&v6[..end], port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || port == 0 || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// Resolves `reference` (absolute, absolute-path, or relative) against this URL.
    pub fn join(&self, reference: &str) -> Result<Self, UpnpError> {
        let reference = reference.trim();
        if strip_prefix_ignore_case(reference, "http://").is_some() {
            return Self::parse(reference);
        }
        let path = if reference.starts_with('/') {
            reference.to_owned()
        } else {
            let dir = self.path.rfind('/').map_or("/", |i| &self.path[..=i]);
            format!("{dir}{reference}")
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(UpnpError::Url(reference.chars().take(120).collect()));
        }
        Ok(Self {
            host: self.host.clone(),
            port: self.port,
            path,
        })
    }

    /// The value of a `Host` header for it.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The socket address to connect to, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// An SSDP M-SEARCH for an IGD, to send to `to` (the gateway, or [`SSDP_MULTICAST`]).
pub fn search_request(to: SocketAddr) -> Vec<u8> {
    let host = match to {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {host}\r\nST: {IGD_SEARCH_TARGET}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n"
    )
    .into_bytes()
}

/// The LOCATION (device description URL) of an SSDP answer about an IGD from `from`; it
/// must name `from` by IP address.
pub fn parse_search_response(datagram: &[u8], from: IpAddr) -> Result<HttpUrl, UpnpError> {
    let text = std::str::from_utf8(datagram).map_err(|_| UpnpError::NotIgd("not text"))?;
    let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
    let status = lines.next().unwrap_or("");
    let mut parts = status.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) || parts.next() != Some("200") {
        return Err(UpnpError::NotIgd("not a 200 response"));
    }
    let mut location = None;
    let mut igd = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("location") {
            location = Some(value);
        } else if name.eq_ignore_ascii_case("st") {
            igd = value.contains("InternetGatewayDevice")
                || SERVICES.iter().any(|s| value.eq_ignore_ascii_case(s));
        }
    }
    if !igd {
        return Err(UpnpError::NotIgd("the search target is not an IGD"));
    }
    let location = HttpUrl::parse(location.ok_or(UpnpError::NotIgd("no LOCATION"))?)?;
    if location.socket_addr().map(|a| a.ip()) != Some(from) {
        return Err(UpnpError::NotIgd(
            "LOCATION is not the answering host's IP address",
        ));
    }
    Ok(location)
}

/// An HTTP/1.1 GET request (for the device description).
pub fn get_request(url: &HttpUrl) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: pinhole UPnP/1.1\r\n\r\n",
        url.path,
        url.host_header()
    )
    .into_bytes()
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Parses an HTTP/1.x response read so far. `Ok(None)`: incomplete, read more (with
/// `eof`, the connection has closed, and a body without length ends there).
pub fn parse_http_response(buf: &[u8], eof: bool) -> Result<Option<HttpResponse>, UpnpError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if eof || buf.len() > MAX_HTTP_RESPONSE {
            return Err(UpnpError::Http("no end of headers"));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| UpnpError::Http("headers are not text"))?;
    let mut lines = head.split("\r\n");
    let mut status_line = lines.next().unwrap_or("").split_whitespace();
    if !status_line.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(UpnpError::Http("no HTTP/1.x status line"));
    }
    let status: u16 = status_line
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(UpnpError::Http("bad status code"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(UpnpError::Http("header line without a colon"));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| UpnpError::Http("bad Content-Length"))?;
            if n > MAX_HTTP_RESPONSE {
                return Err(UpnpError::Http("body too large"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if chunked {
        return dechunk(body, eof).map(|r| {
            r.map(|mut r| {
                r.status = status;
                r
            })
        });
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some(HttpResponse {
            status,
            body: body[..n].to_vec(),
        })),
        Some(_) if eof => Err(UpnpError::Http("body shorter than its Content-Length")),
        Some(_) => Ok(None),
        None if eof => Ok(Some(HttpResponse {
            status,
            body: body.to_vec(),
        })),
        None if body.len() > MAX_HTTP_RESPONSE => Err(UpnpError::Http("body too large")),
        None => Ok(None),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1); trailers are ignored.
fn dechunk(mut data: &[u8], eof: bool) -> Result<Option<HttpResponse>, UpnpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return if eof {
                Err(UpnpError::Http("truncated chunk"))
            } else {
                Ok(None)
            };
        };
        let size_text = std::str::from_utf8(&data[..line_end])
            .map_err(|_| UpnpError::Http("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        // Bounded before any arithmetic: a huge size must not overflow.
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|&n| n <= MAX_HTTP_RESPONSE)
            .ok_or(UpnpError::Http("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            // The status is filled in by the caller.
            return Ok(Some(HttpResponse { status: 0, body }));
        }
        if body.len() + size > MAX_HTTP_RESPONSE {
            return Err(UpnpError::Http("body too large"));
        }
        if data.len() < size + 2 {
            return if eof {
                Err(UpnpError::Http("truncated chunk"))
            } else {
                Ok(None)
            };
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err(UpnpError::Http("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The WAN connection service of a gateway: where to send SOAP actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The service type (e.g. `urn:schemas-upnp-org:service:WANIPConnection:2`).
    pub service_type: String,
    /// The control URL, resolved.
    pub url: HttpUrl,
}

impl Control {
    /// Whether the service is WANIPConnection:2 (which has AddAnyPortMapping).
    pub fn is_v2(&self) -> bool {
        self.service_type.ends_with(":2")
    }
}

/// Finds the preferred WAN connection service in a device description fetched from
/// `location`; its control URL must be on the same host.
pub fn parse_description(xml: &[u8], location: &HttpUrl) -> Result<Control, UpnpError> {
    let xml = String::from_utf8_lossy(xml);
    let base = match elements(&xml, "URLBase").next() {
        Some(b) if !b.trim().is_empty() => HttpUrl::parse(&unescape(b))?,
        _ => location.clone(),
    };
    let mut found: Vec<(usize, String)> = Vec::new();
    for service in elements(&xml, "service") {
        let Some(kind) = elements(service, "serviceType")
            .next()
            .map(|t| unescape(t).trim().to_owned())
        else {
            continue;
        };
        let Some(rank) = SERVICES.iter().position(|s| kind.eq_ignore_ascii_case(s)) else {
            continue;
        };
        if let Some(url) = elements(service, "controlURL").next() {
            let url = unescape(url);
            if !url.trim().is_empty() {
                found.push((rank, format!("{kind}\n{url}")));
            }
        }
    }
    found.sort_by_key(|f| f.0);
    let (_, best) = found.into_iter().next().ok_or(UpnpError::NoWanService)?;
    let (kind, url) = best.split_once('\n').ok_or(UpnpError::NoWanService)?;
    let url = base.join(url)?;
    if url.host != location.host {
        return Err(UpnpError::Url(format!(
            "the control URL is on {}, not on the gateway {}",
            url.host, location.host
        )));
    }
    Ok(Control {
        service_type: kind.to_owned(),
        url,
    })
}

/// A SOAP action, as a complete HTTP/1.1 POST request to the control URL.
pub fn soap_request(control: &Control, action: &str, args: &[(&str, &str)]) -> Vec<u8> {
    let mut body = String::with_capacity(512);
    body.push_str(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>",
    );
    let _ = write!(
        body,
        "<u:{action} xmlns:u=\"{}\">",
        escape(&control.service_type)
    );
    for (name, value) in args {
        let _ = write!(body, "<{name}>{}</{name}>", escape(value));
    }
    let _ = write!(body, "</u:{action}></s:Body></s:Envelope>\r\n");
    format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n\
         SOAPAction: \"{}#{action}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        control.url.path,
        control.url.host_header(),
        control.service_type,
        body.len()
    )
    .into_bytes()
}

/// The output arguments of a SOAP answer to `action`, or the gateway's UPnP error.
pub fn parse_soap_response(
    resp: &HttpResponse,
    action: &str,
) -> Result<Vec<(String, String)>, UpnpError> {
    let xml = String::from_utf8_lossy(&resp.body);
    if resp.status != 200 {
        let code = elements(&xml, "errorCode")
            .next()
            .and_then(|c| c.trim().parse().ok());
        return match code {
            Some(code) => Err(UpnpError::Fault {
                code,
                description: elements(&xml, "errorDescription")
                    .next()
                    .map(|d| unescape(d).trim().chars().take(200).collect())
                    .unwrap_or_default(),
            }),
            None => Err(UpnpError::Status(resp.status)),
        };
    }
    let wanted = format!("{action}Response");
    let inner = elements(&xml, &wanted)
        .next()
        .ok_or(UpnpError::Soap("no response element for the action"))?;
    let mut out = Vec::new();
    let mut rest = inner;
    while let Some((name, text, after)) =
        next_element(rest).filter(|_| out.len() < MAX_SOAP_ARGUMENTS)
    {
        out.push((
            local_name(name).to_owned(),
            unescape(text).trim().to_owned(),
        ));
        rest = after;
    }
    Ok(out)
}

/// The value of output argument `name`.
pub fn argument<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    args.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// GetExternalIPAddress's answer.
pub fn parse_external_ip(args: &[(String, String)]) -> Result<IpAddr, UpnpError> {
    argument(args, "NewExternalIPAddress")
        .and_then(|v| v.parse().ok())
        .ok_or(UpnpError::Soap("no usable NewExternalIPAddress"))
}

/// The input arguments of AddPortMapping and AddAnyPortMapping.
pub fn add_mapping_args(
    protocol: &'static str,
    external_port: u16,
    internal: SocketAddr,
    lease: u32,
) -> [(&'static str, String); 8] {
    [
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", external_port.to_string()),
        ("NewProtocol", protocol.to_owned()),
        ("NewInternalPort", internal.port().to_string()),
        ("NewInternalClient", internal.ip().to_string()),
        ("NewEnabled", "1".to_owned()),
        ("NewPortMappingDescription", MAPPING_DESCRIPTION.to_owned()),
        ("NewLeaseDuration", lease.to_string()),
    ]
}

/// The most entries [`MappingLister`] reads from one gateway's table: far more than a home
/// gateway holds (miniupnpd's default limit is a few hundred), and a bound on what a
/// gateway that never ends its table can make pinhole do.
pub const MAX_LISTED_MAPPINGS: u32 = 512;
/// The longest description of a listed mapping kept, in characters (the rest is cut).
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// One entry of a gateway's port-mapping table (GetGenericPortMappingEntry's output
/// arguments, WANIPConnection:1 §2.4.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMappingEntry {
    /// The remote host the mapping is limited to (`None`: any).
    pub remote_host: Option<IpAddr>,
    /// The external port (0: every port, a wildcard some gateways allow).
    pub external_port: u16,
    /// UDP or TCP.
    pub protocol: super::MapProtocol,
    /// The internal client.
    pub internal_client: IpAddr,
    /// The internal port.
    pub internal_port: u16,
    /// Whether the mapping is enabled.
    pub enabled: bool,
    /// Its description (at most [`MAX_DESCRIPTION_CHARS`] characters kept).
    pub description: String,
    /// Seconds left of its lease (0: permanent).
    pub lease: u32,
}

/// The input argument of GetGenericPortMappingEntry for entry `index`.
pub fn generic_mapping_entry_args(index: u32) -> [(&'static str, String); 1] {
    [("NewPortMappingIndex", index.to_string())]
}

/// Parses GetGenericPortMappingEntry's output arguments (from [`parse_soap_response`]).
pub fn parse_generic_mapping_entry(
    args: &[(String, String)],
) -> Result<PortMappingEntry, UpnpError> {
    let get = |name: &'static str| argument(args, name).ok_or(UpnpError::Soap(name));
    let port = |name: &'static str| -> Result<u16, UpnpError> {
        get(name)?.parse().map_err(|_| UpnpError::Soap(name))
    };
    let remote_host = match get("NewRemoteHost").unwrap_or("") {
        "" | "*" => None,
        h => Some(h.parse().map_err(|_| UpnpError::Soap("NewRemoteHost"))?),
    };
    let protocol = match get("NewProtocol")? {
        p if p.eq_ignore_ascii_case("UDP") => super::MapProtocol::Udp,
        p if p.eq_ignore_ascii_case("TCP") => super::MapProtocol::Tcp,
        _ => return Err(UpnpError::Soap("NewProtocol")),
    };
    let enabled = match get("NewEnabled").unwrap_or("1") {
        "1" | "true" | "yes" => true,
        "0" | "false" | "no" => false,
        _ => return Err(UpnpError::Soap("NewEnabled")),
    };
    Ok(PortMappingEntry {
        remote_host,
        external_port: port("NewExternalPort")?,
        protocol,
        internal_client: get("NewInternalClient")?
            .parse()
            .map_err(|_| UpnpError::Soap("NewInternalClient"))?,
        internal_port: port("NewInternalPort")?,
        enabled,
        description: get("NewPortMappingDescription")
            .unwrap_or("")
            .chars()
            .take(MAX_DESCRIPTION_CHARS)
            .collect(),
        lease: match get("NewLeaseDuration").unwrap_or("0") {
            "" => 0,
            l => l.parse().map_err(|_| UpnpError::Soap("NewLeaseDuration"))?,
        },
    })
}

/// Why a listing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEnd {
    /// The gateway said there are no more entries (error 713, or 714).
    Complete,
    /// [`MAX_LISTED_MAPPINGS`] entries were read; the gateway may hold more.
    Truncated,
    /// The listing stopped at an error: the gateway refused (e.g. 606 Action not
    /// authorized, 401 Invalid Action) or stopped answering. The entries read before
    /// stay.
    Failed(UpnpError),
}

/// Reads a gateway's port-mapping table, sans-IO: GetGenericPortMappingEntry for index 0,
/// 1, … until the gateway answers error 713 (SpecifiedArrayIndexInvalid), bounded by
/// [`MAX_LISTED_MAPPINGS`]. PCP and NAT-PMP have no such operation. The driver sends
/// [`MappingLister::next_request`] and hands back each answer.
#[derive(Debug, Clone, Default)]
pub struct MappingLister {
    entries: Vec<PortMappingEntry>,
    /// Entries the gateway returned that did not parse (skipped).
    skipped: u32,
    next: u32,
    end: Option<ListEnd>,
}

impl MappingLister {
    /// A listing from index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The request for the next entry, or `None` when the listing has ended.
    pub fn next_request(&self, control: &Control) -> Option<Vec<u8>> {
        if self.end.is_some() {
            return None;
        }
        let args = generic_mapping_entry_args(self.next);
        let refs: Vec<(&str, &str)> = args.iter().map(|(n, v)| (*n, v.as_str())).collect();
        Some(soap_request(control, "GetGenericPortMappingEntry", &refs))
    }

    /// The gateway's answer to the last request.
    pub fn handle_response(&mut self, resp: &HttpResponse) {
        if self.end.is_some() {
            return;
        }
        match parse_soap_response(resp, "GetGenericPortMappingEntry") {
            Ok(args) => {
                match parse_generic_mapping_entry(&args) {
                    Ok(e) => self.entries.push(e),
                    Err(_) => self.skipped += 1,
                }
                self.next += 1;
                if self.next >= MAX_LISTED_MAPPINGS {
                    self.end = Some(ListEnd::Truncated);
                }
            }
            Err(UpnpError::Fault { code, .. })
                if code == codes::SPECIFIED_ARRAY_INDEX_INVALID
                    || code == codes::NO_SUCH_ENTRY_IN_ARRAY =>
            {
                self.end = Some(ListEnd::Complete);
            }
            Err(e) => self.end = Some(ListEnd::Failed(e)),
        }
    }

    /// The exchange failed (no answer, connection refused, time up).
    pub fn handle_failure(&mut self, error: UpnpError) {
        if self.end.is_none() {
            self.end = Some(ListEnd::Failed(error));
        }
    }

    /// Whether the listing has ended.
    pub fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// The entries read so far.
    pub fn entries(&self) -> &[PortMappingEntry] {
        &self.entries
    }

    /// How many entries did not parse and were skipped.
    pub fn skipped(&self) -> u32 {
        self.skipped
    }

    /// Why the listing ended (`None`: it has not).
    pub fn end(&self) -> Option<&ListEnd> {
        self.end.as_ref()
    }
}

/// The inner texts of the elements whose local name (without namespace prefix) is `local`,
/// in document order. Comments, processing instructions and CDATA are not interpreted
/// (device descriptions and SOAP answers do not need them).
fn elements<'a>(xml: &'a str, local: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut rest = xml;
    // Each step searches the rest of the text for a closing tag: bounded, so that a
    // hostile document (thousands of unclosed tags) cannot cost quadratic time.
    let mut budget = MAX_XML_ELEMENTS;
    std::iter::from_fn(move || {
        loop {
            budget = budget.checked_sub(1)?;
            let (name, text, after) = next_element(rest)?;
            if local_name(name) == local {
                rest = after;
                return Some(text);
            }
            // Look inside this element, from just after its start tag.
            let start = rest.find('<')?;
            let tag_end = rest[start..].find('>')? + start + 1;
            rest = &rest[tag_end..];
        }
    })
}

/// The next element in `xml`: its full tag name, inner text, and what follows its end tag.
/// Self-closing elements have an empty text.
fn next_element(xml: &str) -> Option<(&str, &str, &str)> {
    let mut rest = xml;
    loop {
        let start = rest.find('<')?;
        let after_lt = &rest[start + 1..];
        if after_lt.starts_with('/') || after_lt.starts_with('?') || after_lt.starts_with('!') {
            rest = &after_lt[after_lt.find('>')? + 1..];
            continue;
        }
        let tag_end = after_lt.find('>')?;
        let tag = &after_lt[..tag_end];
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = &tag[..name_end];
        if name.is_empty() {
            rest = &after_lt[tag_end + 1..];
            continue;
        }
        let content = &after_lt[tag_end + 1..];
        if tag.ends_with('/') {
            return Some((name, "", content));
        }
        let close = format!("</{name}>");
        let end = content.find(&close)?;
        return Some((name, &content[..end], &content[end + close.len()..]));
    }
}

fn local_name(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

/// Replaces XML's five predefined entities and numeric character references.
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337">
<specVersion><major>1</major><minor>1</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
<serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL>
<SCPDURL>/WANIPCn.xml</SCPDURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

    fn location() -> HttpUrl {
        HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap()
    }

    #[test]
    fn urls() {
        let u = location();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("192.168.1.1", 5000, "/rootDesc.xml")
        );
        assert_eq!(u.socket_addr(), Some("192.168.1.1:5000".parse().unwrap()));
        assert_eq!(u.join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(u.join("ctl/IPConn").unwrap().path, "/ctl/IPConn");
        let nested = HttpUrl::parse("HTTP://[fe80::1]:80/a/b.xml").unwrap();
        assert_eq!(nested.host, "fe80::1");
        assert_eq!(nested.host_header(), "[fe80::1]:80");
        assert_eq!(nested.join("c").unwrap().path, "/a/c");
        assert_eq!(u.join("http://10.0.0.1/x").unwrap().host, "10.0.0.1");
        assert_eq!(HttpUrl::parse("http://gw").unwrap().path, "/");
        for bad in [
            "https://gw/",
            "http://",
            "http://u@gw/",
            "http://gw:0/",
            "http://gw:x/",
            "ftp://gw",
            "http://[::1/",
            "http://gw/a b",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssdp() {
        let gw: IpAddr = "192.168.1.1".parse().unwrap();
        let req = String::from_utf8(search_request("192.168.1.1:1900".parse().unwrap())).unwrap();
        assert!(req.starts_with("M-SEARCH * HTTP/1.1\r\nHOST: 192.168.1.1:1900\r\n"));
        assert!(req.contains("MAN: \"ssdp:discover\"") && req.ends_with("\r\n\r\n"));
        let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nst: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:x\r\nLocation: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n";
        assert_eq!(parse_search_response(answer, gw).unwrap(), location());
        // Another host on the network answering with the gateway's description, or a
        // description by name: not taken.
        let stranger: IpAddr = "192.168.1.66".parse().unwrap();
        assert!(matches!(
            parse_search_response(answer, stranger),
            Err(UpnpError::NotIgd(_))
        ));
        let by_name = b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://router.example/desc.xml\r\n\r\n";
        assert!(parse_search_response(by_name, gw).is_err());
        let other = b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:MediaServer:1\r\nLOCATION: http://192.168.1.9/\r\n\r\n";
        assert!(matches!(
            parse_search_response(other, gw),
            Err(UpnpError::NotIgd(_))
        ));
        let no_location =
            b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
        assert!(matches!(
            parse_search_response(no_location, gw),
            Err(UpnpError::NotIgd(_))
        ));
        assert!(parse_search_response(b"NOTIFY * HTTP/1.1\r\n\r\n", gw).is_err());
        assert!(parse_search_response(&[0xff, 0xfe], gw).is_err());
    }

    #[test]
    fn http_responses() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_http_response(&full[..20], false).unwrap(), None);
        assert_eq!(
            parse_http_response(&full[..full.len() - 1], false).unwrap(),
            None
        );
        assert!(parse_http_response(&full[..full.len() - 1], true).is_err());
        let r = parse_http_response(full, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let until_close = b"HTTP/1.0 500 Internal Server Error\r\nServer: x\r\n\r\nbody";
        assert_eq!(parse_http_response(until_close, false).unwrap(), None);
        let r = parse_http_response(until_close, true).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"body"[..]));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n";
        let r = parse_http_response(chunked, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcdefg"[..]));
        assert_eq!(parse_http_response(&chunked[..60], false).unwrap(), None);
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\nxx",
        ] {
            assert!(
                parse_http_response(bad, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn description_picks_the_wan_service() {
        let c = parse_description(DESCRIPTION.as_bytes(), &location()).unwrap();
        assert_eq!(
            c.service_type,
            "urn:schemas-upnp-org:service:WANIPConnection:2"
        );
        assert!(c.is_v2());
        assert_eq!(
            c.url,
            HttpUrl::parse("http://192.168.1.1:5000/ctl/IPConn").unwrap()
        );
        // IGD v1 with a PPP and an IP service, prefixed tags and a URLBase.
        let v1 = r#"<r:root xmlns:r="urn:schemas-upnp-org:device-1-0"><r:URLBase>http://10.0.0.1:49000/</r:URLBase>
<r:service><r:serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</r:serviceType><r:controlURL>upnp/ppp</r:controlURL></r:service>
<r:service><r:serviceType> urn:schemas-upnp-org:service:WANIPConnection:1 </r:serviceType><r:controlURL>upnp/ip?a=1&amp;b=2</r:controlURL></r:service></r:root>"#;
        // The same description fetched from another host: its control URL is elsewhere.
        assert!(matches!(
            parse_description(v1.as_bytes(), &location()),
            Err(UpnpError::Url(_))
        ));
        let at = HttpUrl::parse("http://10.0.0.1:1900/igd.xml").unwrap();
        let c = parse_description(v1.as_bytes(), &at).unwrap();
        assert_eq!(
            c.service_type,
            "urn:schemas-upnp-org:service:WANIPConnection:1"
        );
        assert!(!c.is_v2());
        assert_eq!(
            c.url,
            HttpUrl::parse("http://10.0.0.1:49000/upnp/ip?a=1&b=2").unwrap()
        );
        assert_eq!(
            parse_description(b"<root><service/></root>", &location()),
            Err(UpnpError::NoWanService)
        );
        assert_eq!(
            parse_description(b"<<<>>>", &location()),
            Err(UpnpError::NoWanService)
        );
    }

    #[test]
    fn soap_round_trip() {
        let c = parse_description(DESCRIPTION.as_bytes(), &location()).unwrap();
        let internal: SocketAddr = "192.168.1.10:40000".parse().unwrap();
        let args = add_mapping_args("UDP", 0, internal, 3600);
        let refs: Vec<(&str, &str)> = args.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let req = String::from_utf8(soap_request(&c, "AddAnyPortMapping", &refs)).unwrap();
        assert!(req.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.1.1:5000\r\n"));
        assert!(req.contains(
            "SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:2#AddAnyPortMapping\"\r\n"
        ));
        assert!(req.contains("<NewInternalClient>192.168.1.10</NewInternalClient>"));
        let body_len = req.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(req.contains(&format!("Content-Length: {body_len}\r\n")));

        let ok = HttpResponse {
            status: 200,
            body: br#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:AddAnyPortMappingResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2"><NewReservedPort>40001</NewReservedPort></u:AddAnyPortMappingResponse></s:Body></s:Envelope>"#.to_vec(),
        };
        let out = parse_soap_response(&ok, "AddAnyPortMapping").unwrap();
        assert_eq!(argument(&out, "NewReservedPort"), Some("40001"));
        assert!(parse_soap_response(&ok, "GetExternalIPAddress").is_err());
        let ip = HttpResponse {
            status: 200,
            body: b"<s:Envelope><s:Body><m:GetExternalIPAddressResponse><NewExternalIPAddress> 198.51.100.10 </NewExternalIPAddress></m:GetExternalIPAddressResponse></s:Body></s:Envelope>".to_vec(),
        };
        let out = parse_soap_response(&ip, "GetExternalIPAddress").unwrap();
        assert_eq!(
            parse_external_ip(&out),
            Ok("198.51.100.10".parse().unwrap())
        );
        let fault = HttpResponse {
            status: 500,
            body: b"<s:Envelope><s:Body><s:Fault><faultcode>s:Client</faultcode><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>".to_vec(),
        };
        assert_eq!(
            parse_soap_response(&fault, "AddPortMapping"),
            Err(UpnpError::Fault {
                code: codes::CONFLICT_IN_MAPPING_ENTRY,
                description: "ConflictInMappingEntry".into()
            })
        );
        let plain = HttpResponse {
            status: 404,
            body: b"not found".to_vec(),
        };
        assert_eq!(
            parse_soap_response(&plain, "AddPortMapping"),
            Err(UpnpError::Status(404))
        );
    }

    /// A GetGenericPortMappingEntry answer as miniupnpd sends it.
    fn entry_answer(port: u16, protocol: &str, description: &str) -> HttpResponse {
        HttpResponse {
            status: 200,
            body: format!(
                "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
                 s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
                 <u:GetGenericPortMappingEntryResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\">\
                 <NewRemoteHost></NewRemoteHost><NewExternalPort>{port}</NewExternalPort>\
                 <NewProtocol>{protocol}</NewProtocol><NewInternalPort>40100</NewInternalPort>\
                 <NewInternalClient>192.168.1.10</NewInternalClient><NewEnabled>1</NewEnabled>\
                 <NewPortMappingDescription>{description}</NewPortMappingDescription>\
                 <NewLeaseDuration>598</NewLeaseDuration></u:GetGenericPortMappingEntryResponse>\
                 </s:Body></s:Envelope>\r\n"
            )
            .into_bytes(),
        }
    }

    fn fault(code: u16, description: &str) -> HttpResponse {
        HttpResponse {
            status: 500,
            body: format!(
                "<s:Envelope><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring>\
                 <detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode>\
                 <errorDescription>{description}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
            )
            .into_bytes(),
        }
    }

    #[test]
    fn generic_port_mapping_entries_parse() {
        let out = parse_soap_response(
            &entry_answer(40100, "UDP", "NAT-PMP 40100 udp"),
            "GetGenericPortMappingEntry",
        )
        .unwrap();
        assert_eq!(
            parse_generic_mapping_entry(&out).unwrap(),
            PortMappingEntry {
                remote_host: None,
                external_port: 40100,
                protocol: crate::portmap::MapProtocol::Udp,
                internal_client: "192.168.1.10".parse().unwrap(),
                internal_port: 40100,
                enabled: true,
                description: "NAT-PMP 40100 udp".into(),
                lease: 598,
            }
        );
        // Lower-case protocol, a remote host, escapes, a permanent lease without the
        // argument, a description far too long (cut).
        let long = "x".repeat(5000);
        let args: Vec<(String, String)> = [
            ("NewRemoteHost", "203.0.113.5"),
            ("NewExternalPort", "8080"),
            ("NewProtocol", "tcp"),
            ("NewInternalPort", "80"),
            ("NewInternalClient", "192.168.1.11"),
            ("NewEnabled", "0"),
            ("NewPortMappingDescription", long.as_str()),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let e = parse_generic_mapping_entry(&args).unwrap();
        assert_eq!(e.remote_host, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(e.protocol, crate::portmap::MapProtocol::Tcp);
        assert!(!e.enabled);
        assert_eq!(e.lease, 0);
        assert_eq!(e.description.chars().count(), MAX_DESCRIPTION_CHARS);
        // What an entry must have, and must not be.
        for (name, bad) in [
            ("NewExternalPort", "70000"),
            ("NewExternalPort", ""),
            ("NewProtocol", "SCTP"),
            ("NewInternalClient", "router.local"),
            ("NewInternalPort", "-1"),
            ("NewEnabled", "maybe"),
            ("NewLeaseDuration", "forever"),
            ("NewRemoteHost", "somewhere"),
        ] {
            let mut a = args.clone();
            a.retain(|(n, _)| n != name);
            a.push((name.to_string(), bad.to_string()));
            assert_eq!(
                parse_generic_mapping_entry(&a),
                Err(UpnpError::Soap(name)),
                "{name}={bad}"
            );
        }
        let mut a = args.clone();
        a.retain(|(n, _)| n != "NewInternalClient");
        assert!(parse_generic_mapping_entry(&a).is_err());
        assert!(parse_generic_mapping_entry(&[]).is_err());
    }

    #[test]
    fn the_mapping_list_ends_at_713_and_is_bounded() {
        let c = parse_description(DESCRIPTION.as_bytes(), &location()).unwrap();
        let mut l = MappingLister::new();
        let req = String::from_utf8(l.next_request(&c).unwrap()).unwrap();
        assert!(req.contains("#GetGenericPortMappingEntry\""), "{req}");
        assert!(
            req.contains("<NewPortMappingIndex>0</NewPortMappingIndex>"),
            "{req}"
        );
        l.handle_response(&entry_answer(40100, "UDP", "a"));
        // A malformed entry is skipped, and the listing goes on with the next index.
        l.handle_response(&entry_answer(40101, "ICMP", "b"));
        let req = String::from_utf8(l.next_request(&c).unwrap()).unwrap();
        assert!(
            req.contains("<NewPortMappingIndex>2</NewPortMappingIndex>"),
            "{req}"
        );
        l.handle_response(&entry_answer(40102, "TCP", "c"));
        assert!(!l.is_done());
        l.handle_response(&fault(
            codes::SPECIFIED_ARRAY_INDEX_INVALID,
            "SpecifiedArrayIndexInvalid",
        ));
        assert_eq!(l.end(), Some(&ListEnd::Complete));
        assert_eq!(l.next_request(&c), None);
        assert_eq!(
            l.entries()
                .iter()
                .map(|e| e.external_port)
                .collect::<Vec<_>>(),
            [40100, 40102]
        );
        assert_eq!(l.skipped(), 1);
        // Later answers change nothing.
        l.handle_response(&entry_answer(1, "UDP", "late"));
        assert_eq!(l.entries().len(), 2);

        // 714 ends it too; another fault ends it as a failure, keeping what was read.
        let mut l = MappingLister::new();
        l.handle_response(&fault(codes::NO_SUCH_ENTRY_IN_ARRAY, "NoSuchEntryInArray"));
        assert_eq!(l.end(), Some(&ListEnd::Complete));
        assert!(l.entries().is_empty());
        let mut l = MappingLister::new();
        l.handle_response(&entry_answer(40100, "UDP", "a"));
        l.handle_response(&fault(606, "Action not authorized"));
        assert!(matches!(
            l.end(),
            Some(ListEnd::Failed(UpnpError::Fault { code: 606, .. }))
        ));
        assert_eq!(l.entries().len(), 1);
        let mut l = MappingLister::new();
        l.handle_failure(UpnpError::Transport("timeout".into()));
        assert!(
            l.is_done()
                && l.end()
                    .is_some_and(|e| matches!(e, ListEnd::Failed(e) if e.is_no_answer()))
        );

        // A gateway whose table never ends: at most MAX_LISTED_MAPPINGS requests.
        let mut l = MappingLister::new();
        let mut requests = 0;
        while l.next_request(&c).is_some() {
            requests += 1;
            assert!(requests <= MAX_LISTED_MAPPINGS, "unbounded");
            l.handle_response(&entry_answer(40100, "UDP", "again"));
        }
        assert_eq!(requests, MAX_LISTED_MAPPINGS);
        assert_eq!(l.end(), Some(&ListEnd::Truncated));
        assert_eq!(l.entries().len(), MAX_LISTED_MAPPINGS as usize);
    }

    #[test]
    fn xml_escapes() {
        assert_eq!(
            unescape("a&amp;b&lt;&gt;&quot;&apos;&#65;&#x42;&bogus;&"),
            "a&b<>\"'AB&bogus;&"
        );
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &apos;b&apos;&gt;");
    }
}
