//! The few DNS messages mDNS host-candidate resolution needs (RFC 1035 §4.1, RFC 6762):
//! an A or AAAA question, and the address records of a response. Parsing is bounded:
//! names of at most [`MAX_NAME_LEN`] bytes, at most [`MAX_POINTER_JUMPS`] compression
//! pointers per name (each pointing strictly backwards), at most [`MAX_RECORDS`] records.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::MdnsError;

/// RFC 1035 §3.2.2: an IPv4 host address.
pub const TYPE_A: u16 = 1;
/// RFC 3596 §2.1: an IPv6 host address.
pub const TYPE_AAAA: u16 = 28;
/// RFC 1035 §3.2.3: any type (a question only).
pub const TYPE_ANY: u16 = 255;
/// RFC 1035 §3.2.4: the Internet class.
pub const CLASS_IN: u16 = 1;
/// RFC 6762 §10.2 (answers: cache-flush) and §5.4 (questions: unicast response wanted):
/// the top bit of the class field.
pub const CLASS_TOP_BIT: u16 = 0x8000;
/// RFC 1035 §2.3.4: the longest name, in wire bytes.
pub const MAX_NAME_LEN: usize = 255;
/// RFC 1035 §2.3.4: the longest label.
pub const MAX_LABEL_LEN: usize = 63;
/// Compression pointers followed per name at most (each must point backwards, so a loop
/// is impossible anyway; this bounds the work).
pub const MAX_POINTER_JUMPS: usize = 16;
/// Records (questions, answers, authority and additional) read per message at most; the
/// rest of a longer message is ignored.
pub const MAX_RECORDS: usize = 64;
/// The largest mDNS message (RFC 6762 §17: 9000 bytes including IP and UDP headers).
pub const MAX_MESSAGE_LEN: usize = 9000;

const HEADER_LEN: usize = 12;
/// RFC 1035 §4.1.1: QR, the response bit.
const FLAG_QR: u16 = 0x8000;
/// RFC 1035 §4.1.1: the opcode bits.
const OPCODE_MASK: u16 = 0x7800;
/// RFC 1035 §4.1.1: the response code bits.
const RCODE_MASK: u16 = 0x000f;
/// RFC 6762 §18.4: a responder sets AA in its responses.
const FLAG_AA: u16 = 0x0400;

/// One address record of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    /// The owner name, lower-cased, without the final dot. `None` when it cannot be one
    /// of ours (a label with a dot or a byte that is not ASCII in it).
    pub name: Option<String>,
    /// The address (A or AAAA).
    pub addr: IpAddr,
    /// The time to live, in seconds (0: the record is being withdrawn, RFC 6762 §10.1).
    pub ttl: u32,
}

/// One question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name, as for [`AddressRecord::name`].
    pub name: Option<String>,
    /// The type (A, AAAA, ANY, …).
    pub qtype: u16,
    /// RFC 6762 §5.4: the querier asked for a unicast response (the QU bit).
    pub unicast_response: bool,
}

/// A parsed message: its identifier, its questions and its address records (from the
/// answer, authority and additional sections alike: RFC 6762 §6 lets a responder put the
/// other family's address in the additional section).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The query identifier.
    pub id: u16,
    /// Whether it is a response (QR).
    pub response: bool,
    /// The questions.
    pub questions: Vec<Question>,
    /// The A and AAAA records; other types are skipped.
    pub addresses: Vec<AddressRecord>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MdnsError> {
        let end = self.pos.checked_add(n).ok_or(MdnsError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(MdnsError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, MdnsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, MdnsError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name at the current position (RFC 1035 §4.1.4 compression allowed).
    fn name(&mut self) -> Result<Option<String>, MdnsError> {
        let mut out = String::new();
        let mut usable = true;
        let mut wire_len = 0usize;
        let mut pos = self.pos;
        let mut jumps = 0;
        // Where reading goes on after the name: after its first pointer, or its end.
        let mut resume = None;
        loop {
            let len = *self.buf.get(pos).ok_or(MdnsError::Truncated)?;
            match len & 0xc0 {
                0x00 => {
                    let len = usize::from(len);
                    pos += 1;
                    wire_len += len + 1;
                    if wire_len > MAX_NAME_LEN {
                        return Err(MdnsError::BadName);
                    }
                    if len == 0 {
                        break;
                    }
                    let label = self.buf.get(pos..pos + len).ok_or(MdnsError::Truncated)?;
                    if label.contains(&b'.') || !label.is_ascii() {
                        usable = false;
                    } else {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                    }
                    pos += len;
                }
                0xc0 => {
                    let lo = *self.buf.get(pos + 1).ok_or(MdnsError::Truncated)?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3f, lo]));
                    // Strictly backwards: no loops (and a bound on the jumps besides).
                    if target >= pos || jumps >= MAX_POINTER_JUMPS {
                        return Err(MdnsError::BadName);
                    }
                    jumps += 1;
                    resume.get_or_insert(pos + 2);
                    pos = target;
                }
                // 0x40 and 0x80: extended label types (RFC 6891 §5), unused.
                _ => return Err(MdnsError::BadName),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(usable.then_some(out))
    }
}

/// Parses a DNS message: header, questions and the address records of every section.
/// A message whose opcode or response code is not zero is refused (RFC 6762 §18.3,
/// §18.11: a receiver silently ignores it).
pub fn parse(buf: &[u8]) -> Result<Message, MdnsError> {
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(MdnsError::TooLong);
    }
    let mut r = Reader { buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & (OPCODE_MASK | RCODE_MASK) != 0 {
        return Err(MdnsError::NotStandard);
    }
    let qd = usize::from(r.u16()?);
    let an = usize::from(r.u16()?);
    let ns = usize::from(r.u16()?);
    let ar = usize::from(r.u16()?);
    if qd + an + ns + ar > MAX_RECORDS {
        return Err(MdnsError::TooManyRecords);
    }
    let mut msg = Message {
        id,
        response: flags & FLAG_QR != 0,
        ..Message::default()
    };
    for _ in 0..qd {
        let name = r.name()?;
        let qtype = r.u16()?;
        let class = r.u16()?;
        if class & !CLASS_TOP_BIT == CLASS_IN {
            msg.questions.push(Question {
                name,
                qtype,
                unicast_response: class & CLASS_TOP_BIT != 0,
            });
        }
    }
    for _ in 0..an + ns + ar {
        let name = r.name()?;
        let rtype = r.u16()?;
        // RFC 6762 §10.2: the top bit is cache-flush, not part of the class.
        let class = r.u16()? & !CLASS_TOP_BIT;
        let ttl = r.u32()?;
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if class != CLASS_IN {
            continue;
        }
        let addr = match rtype {
            TYPE_A => IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(data).map_err(|_| MdnsError::BadRecord)?,
            )),
            TYPE_AAAA => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(data).map_err(|_| MdnsError::BadRecord)?,
            )),
            _ => continue,
        };
        msg.addresses.push(AddressRecord { name, addr, ttl });
    }
    Ok(msg)
}

fn push_name(out: &mut Vec<u8>, name: &str) -> Result<(), MdnsError> {
    let start = out.len();
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| (1..=MAX_LABEL_LEN).contains(&usize::from(*l)))
            .ok_or(MdnsError::BadName)?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    if out.len() - start > MAX_NAME_LEN {
        return Err(MdnsError::BadName);
    }
    Ok(())
}

fn header(out: &mut Vec<u8>, id: u16, flags: u16, qd: u16, an: u16) {
    for v in [id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A query with one question: `name`, of `qtype`, class IN, with the QU bit when
/// `unicast_response` (RFC 6762 §5.4). The identifier is `id` (RFC 6762 §18.1: zero for
/// multicast queries).
pub fn encode_query(
    id: u16,
    name: &str,
    qtype: u16,
    unicast_response: bool,
) -> Result<Vec<u8>, MdnsError> {
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    header(&mut out, id, 0, 1, 0);
    push_name(&mut out, name)?;
    out.extend_from_slice(&qtype.to_be_bytes());
    let class = if unicast_response {
        CLASS_IN | CLASS_TOP_BIT
    } else {
        CLASS_IN
    };
    out.extend_from_slice(&class.to_be_bytes());
    Ok(out)
}

/// A response (QR and AA set, RFC 6762 §18.2, §18.4) answering for `name` with one A or
/// AAAA record per address, each with the cache-flush bit (RFC 6762 §10.2: the name is
/// unique) and `ttl` seconds. `question`, when given, is repeated in the question section
/// (RFC 6762 §6.7: a response to a legacy unicast query repeats its question and
/// identifier). At most [`MAX_RECORDS`] − 1 addresses are written.
pub fn encode_response(
    id: u16,
    name: &str,
    addrs: &[IpAddr],
    ttl: u32,
    question: Option<u16>,
) -> Result<Vec<u8>, MdnsError> {
    let addrs = &addrs[..addrs.len().min(MAX_RECORDS - 1)];
    let mut out = Vec::with_capacity(HEADER_LEN + (name.len() + 30) * (addrs.len() + 1));
    let an = u16::try_from(addrs.len()).map_err(|_| MdnsError::TooManyRecords)?;
    header(
        &mut out,
        id,
        FLAG_QR | FLAG_AA,
        u16::from(question.is_some()),
        an,
    );
    if let Some(qtype) = question {
        push_name(&mut out, name)?;
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
    }
    for addr in addrs {
        push_name(&mut out, name)?;
        let (rtype, len, data): (u16, u16, Vec<u8>) = match addr {
            IpAddr::V4(v4) => (TYPE_A, 4, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, 16, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&(CLASS_IN | CLASS_TOP_BIT).to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&data);
    }
    Ok(out)
}
