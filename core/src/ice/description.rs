//! An ICE description as RFC 8839 SDP attribute lines: `a=ice-ufrag`, `a=ice-pwd`,
//! `a=ice-options`, `a=ice-pacing`, `a=ice-lite`, `a=candidate`, `a=end-of-candidates`,
//! and pinhole's own `a=x-pinhole-port-allocation` (how the side's NAT allocates ports:
//! `sequential 1`, `preserving`, `random`; for port prediction), which other
//! implementations ignore as any unknown attribute.
//!
//! This is what pinhole's peers exchange through signalling. A whole SDP (libnice's, a
//! browser's) is accepted too: lines that are not ICE attributes are ignored, and so are
//! candidate lines that cannot be used (an unknown transport or type), which are counted
//! rather than failing the description (RFC 8839 §5.1 lets a receiver ignore them).

use std::fmt;

use super::candidate::{Candidate, CandidateError};

/// The `a=ice-options` token of a side that follows renomination (libwebrtc's, and
/// pinhole's: the controlled agent follows the latest nomination). A peer without it is
/// nominated once (RFC 8445 §8.1.1).
pub const RENOMINATION: &str = "renomination";

/// The most candidates a description may carry; the rest are ignored and counted. An
/// agent never needs more, and a peer must not make us hold more.
pub const MAX_CANDIDATES: usize = 64;
/// The longest description accepted, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 64 * 1024;

/// Why a description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptionError {
    /// Longer than [`MAX_DESCRIPTION_LEN`].
    #[error("ICE description longer than {MAX_DESCRIPTION_LEN} bytes")]
    TooLong,
    /// `a=ice-ufrag` or `a=ice-pwd` is missing.
    #[error("ICE description without a=ice-{0}")]
    Missing(&'static str),
    /// `a=ice-ufrag` or `a=ice-pwd` is not 4–256 (22–256) ice-chars (RFC 8839 §5.4).
    #[error("a=ice-{0} is not {1} ice-chars")]
    BadCredential(&'static str, &'static str),
    /// Two different values for `a=ice-ufrag` or `a=ice-pwd`.
    #[error("two different a=ice-{0} values")]
    Conflicting(&'static str),
}

/// One side's ICE parameters and candidates. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceDescription {
    /// `a=ice-ufrag` (RFC 8839 §5.4): 4 to 256 ice-chars.
    pub ufrag: String,
    /// `a=ice-pwd`: 22 to 256 ice-chars. `Debug` of this type shows it; never log one.
    pub pwd: String,
    /// `a=ice-options` tokens (`trickle`, `renomination`, …).
    pub options: Vec<String>,
    /// `a=ice-pacing` (RFC 8839 §5.2): the Ta, in milliseconds, this side proposes; both
    /// use the higher proposal (RFC 8445 §14.2). A value that is not a number is ignored.
    pub pacing_ms: Option<u32>,
    /// `a=ice-lite`: the peer is a lite implementation (RFC 8445 §2.5).
    pub lite: bool,
    /// `a=x-pinhole-port-allocation` ([`crate::netcheck::PortAllocation::parse_attribute`]):
    /// how this side's NAT allocates ports. A value not understood is ignored.
    pub port_allocation: Option<crate::netcheck::PortAllocation>,
    /// The candidates.
    pub candidates: Vec<Candidate>,
    /// `a=end-of-candidates` (RFC 8838 §8.2): no more will be trickled.
    pub end_of_candidates: bool,
}

/// A description and what was skipped while reading it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The description.
    pub description: IceDescription,
    /// Candidate lines that could not be used, with why (at most [`MAX_CANDIDATES`]).
    pub skipped: Vec<(String, CandidateError)>,
    /// Candidates beyond [`MAX_CANDIDATES`], ignored.
    pub over_limit: usize,
}

/// pinhole's attribute for a side's port allocation (see the module docs).
pub const PORT_ALLOCATION_ATTRIBUTE: &str = "x-pinhole-port-allocation";

fn ice_chars(s: &str, min: usize) -> bool {
    (min..=256).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

impl IceDescription {
    /// Whether the peer trickles (`a=ice-options:trickle`).
    pub fn trickle(&self) -> bool {
        self.options.iter().any(|o| o == "trickle")
    }

    /// Whether the side follows renomination (`a=ice-options:renomination`,
    /// [`RENOMINATION`]; see [`super::IceAgent::set_remote_renomination`]).
    pub fn renomination(&self) -> bool {
        self.options.iter().any(|o| o == RENOMINATION)
    }

    /// Whether the side takes part in birthday probing
    /// (`a=ice-options:x-pinhole-birthday`, [`super::birthday::ICE_OPTION`]).
    pub fn birthday(&self) -> bool {
        self.options
            .iter()
            .any(|o| o == super::birthday::ICE_OPTION)
    }

    /// Reads the ICE attributes out of SDP text (or just the ICE lines). See the module
    /// docs for what is ignored.
    pub fn parse(text: &str) -> Result<Parsed, DescriptionError> {
        if text.len() > MAX_DESCRIPTION_LEN {
            return Err(DescriptionError::TooLong);
        }
        let mut out = Parsed::default();
        let mut ufrag: Option<&str> = None;
        let mut pwd: Option<&str> = None;
        for line in text.lines() {
            let line = line.trim();
            let Some(attr) = line.strip_prefix("a=") else {
                continue;
            };
            let (name, value) = attr.split_once(':').unwrap_or((attr, ""));
            match name {
                "ice-ufrag" => {
                    if !ice_chars(value, 4) {
                        return Err(DescriptionError::BadCredential("ufrag", "4 to 256"));
                    }
                    if ufrag.is_some_and(|u| u != value) {
                        return Err(DescriptionError::Conflicting("ufrag"));
                    }
                    ufrag = Some(value);
                }
                "ice-pwd" => {
                    if !ice_chars(value, 22) {
                        return Err(DescriptionError::BadCredential("pwd", "22 to 256"));
                    }
                    if pwd.is_some_and(|p| p != value) {
                        return Err(DescriptionError::Conflicting("pwd"));
                    }
                    pwd = Some(value);
                }
                "ice-options" => {
                    for o in value.split_ascii_whitespace() {
                        // At most 16 in all, however many lines carry them.
                        if out.description.options.len() >= 16 {
                            break;
                        }
                        if !out.description.options.iter().any(|x| x == o) {
                            out.description.options.push(o.to_owned());
                        }
                    }
                }
                "ice-pacing" => {
                    if let Ok(ms) = value.trim().parse::<u32>() {
                        out.description.pacing_ms = Some(ms);
                    }
                }
                "ice-lite" => out.description.lite = true,
                PORT_ALLOCATION_ATTRIBUTE => {
                    if let Some(a) = crate::netcheck::PortAllocation::parse_attribute(value) {
                        out.description.port_allocation = Some(a);
                    }
                }
                "end-of-candidates" => out.description.end_of_candidates = true,
                "candidate" => {
                    if out.description.candidates.len() >= MAX_CANDIDATES {
                        out.over_limit += 1;
                        continue;
                    }
                    match Candidate::parse(attr) {
                        Ok(c) => out.description.candidates.push(c),
                        Err(e) => {
                            if out.skipped.len() < MAX_CANDIDATES {
                                out.skipped.push((line.chars().take(128).collect(), e));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.description.ufrag = ufrag.ok_or(DescriptionError::Missing("ufrag"))?.to_owned();
        out.description.pwd = pwd.ok_or(DescriptionError::Missing("pwd"))?.to_owned();
        Ok(out)
    }
}

impl fmt::Display for IceDescription {
    /// The ICE attribute lines, CRLF-terminated as SDP wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a=ice-ufrag:{}\r\n", self.ufrag)?;
        write!(f, "a=ice-pwd:{}\r\n", self.pwd)?;
        if !self.options.is_empty() {
            write!(f, "a=ice-options:{}\r\n", self.options.join(" "))?;
        }
        if let Some(ms) = self.pacing_ms {
            write!(f, "a=ice-pacing:{ms}\r\n")?;
        }
        if self.lite {
            f.write_str("a=ice-lite\r\n")?;
        }
        if let Some(v) = self.port_allocation.and_then(|a| a.to_attribute()) {
            write!(f, "a={PORT_ALLOCATION_ATTRIBUTE}:{v}\r\n")?;
        }
        for c in &self.candidates {
            write!(f, "a={c}\r\n")?;
        }
        if self.end_of_candidates {
            f.write_str("a=end-of-candidates\r\n")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBNICE_LIKE: &str = "v=0\r\n\
o=- 1 1 IN IP4 0.0.0.0\r\n\
s=-\r\n\
t=0 0\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:F7gI\r\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n\
a=ice-options:trickle\r\n\
a=candidate:1 1 UDP 2013266431 192.168.1.2 46243 typ host\r\n\
a=candidate:2 1 UDP 1677721855 203.0.113.5 46243 typ srflx raddr 192.168.1.2 rport 46243\r\n\
a=candidate:3 1 SCTP 1 192.168.1.2 5000 typ host\r\n\
a=candidate:4 1 UDP 1 192.168.1.2 5000 typ stranger\r\n\
a=fingerprint:sha-256 AA:BB\r\n\
a=end-of-candidates\r\n";

    #[test]
    fn a_whole_sdp_gives_its_ice_lines() {
        let p = IceDescription::parse(LIBNICE_LIKE).unwrap();
        let d = &p.description;
        assert_eq!(d.ufrag, "F7gI");
        assert_eq!(d.pwd, "x9cml/YzichV2+XlhiMu8g");
        assert!(d.trickle());
        assert!(d.end_of_candidates);
        assert!(!d.lite);
        assert_eq!(d.candidates.len(), 2);
        assert_eq!(p.skipped.len(), 2);
        assert!(matches!(
            p.skipped[0].1,
            CandidateError::UnsupportedTransport(_)
        ));
        assert!(matches!(p.skipped[1].1, CandidateError::UnknownType(_)));
        // Written and read back: the same description.
        let again = IceDescription::parse(&d.to_string()).unwrap();
        assert_eq!(&again.description, d);
        assert!(again.skipped.is_empty());
    }

    #[test]
    fn credentials_are_checked_and_candidates_bounded() {
        let base = "a=ice-ufrag:abcd\na=ice-pwd:0123456789012345678901\n";
        assert!(IceDescription::parse(base).is_ok());
        assert_eq!(
            IceDescription::parse("a=ice-pwd:0123456789012345678901"),
            Err(DescriptionError::Missing("ufrag"))
        );
        assert_eq!(
            IceDescription::parse("a=ice-ufrag:abc\na=ice-pwd:0123456789012345678901"),
            Err(DescriptionError::BadCredential("ufrag", "4 to 256"))
        );
        assert_eq!(
            IceDescription::parse("a=ice-ufrag:abcd\na=ice-pwd:short"),
            Err(DescriptionError::BadCredential("pwd", "22 to 256"))
        );
        assert_eq!(
            IceDescription::parse(&format!("{base}a=ice-ufrag:efgh\n")),
            Err(DescriptionError::Conflicting("ufrag"))
        );
        let mut many = base.to_owned();
        for i in 0..100 {
            many.push_str(&format!(
                "a=candidate:{i} 1 udp 1 192.0.2.1 {} typ host\n",
                1000 + i
            ));
        }
        let p = IceDescription::parse(&many).unwrap();
        assert_eq!(p.description.candidates.len(), MAX_CANDIDATES);
        assert_eq!(p.over_limit, 100 - MAX_CANDIDATES);
        // Options are bounded in all, not per line (found by the fuzzer: a description
        // written back on one line lost what a second line had added).
        let opts = format!(
            "{base}a=ice-options:{}\na=ice-options:{}\n",
            (0..10)
                .map(|i| format!("a{i}"))
                .collect::<Vec<_>>()
                .join(" "),
            (0..10)
                .map(|i| format!("b{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let p = IceDescription::parse(&opts).unwrap();
        assert_eq!(p.description.options.len(), 16);
        let again = IceDescription::parse(&p.description.to_string()).unwrap();
        assert_eq!(again.description, p.description);
        assert_eq!(
            IceDescription::parse(&"a=x\n".repeat(20_000)),
            Err(DescriptionError::TooLong)
        );
    }

    #[test]
    fn ice_pacing_is_read_and_written() {
        let base = "a=ice-ufrag:abcd\na=ice-pwd:0123456789012345678901\n";
        let p = IceDescription::parse(&format!("{base}a=ice-pacing:20\n")).unwrap();
        assert_eq!(p.description.pacing_ms, Some(20));
        let again = IceDescription::parse(&p.description.to_string()).unwrap();
        assert_eq!(again.description.pacing_ms, Some(20));
        // Not a number: ignored, not a failed description.
        let p = IceDescription::parse(&format!("{base}a=ice-pacing:fast\n")).unwrap();
        assert_eq!(p.description.pacing_ms, None);
        assert!(!p.description.to_string().contains("ice-pacing"));
    }

    #[test]
    fn the_birthday_option_is_read_and_written() {
        let base = "a=ice-ufrag:abcd\na=ice-pwd:0123456789012345678901\n";
        let p = IceDescription::parse(&format!("{base}a=ice-options:trickle x-pinhole-birthday\n"))
            .unwrap();
        assert!(p.description.birthday() && p.description.trickle());
        let again = IceDescription::parse(&p.description.to_string()).unwrap();
        assert!(again.description.birthday());
        let p = IceDescription::parse(&format!("{base}a=ice-options:trickle\n")).unwrap();
        assert!(!p.description.birthday());
    }

    #[test]
    fn port_allocation_is_read_tolerantly_and_written() {
        use crate::netcheck::PortAllocation;
        let base = "a=ice-ufrag:abcd\na=ice-pwd:0123456789012345678901\n";
        let p = IceDescription::parse(&format!("{base}a=x-pinhole-port-allocation:sequential 2\n"))
            .unwrap();
        assert_eq!(
            p.description.port_allocation,
            Some(PortAllocation::Sequential { delta: 2 })
        );
        let again = IceDescription::parse(&p.description.to_string()).unwrap();
        assert_eq!(again.description, p.description);
        // Not understood: ignored, not a failed description.
        for bad in ["sequential", "sequential 99999", "fancy 3", ""] {
            let p = IceDescription::parse(&format!("{base}a=x-pinhole-port-allocation:{bad}\n"))
                .unwrap();
            assert_eq!(p.description.port_allocation, None, "{bad:?}");
            assert!(!p.description.to_string().contains("x-pinhole"));
        }
    }
}
