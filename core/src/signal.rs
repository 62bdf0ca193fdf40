//! The rendezvous of `pinhole signal`, sans-IO: rooms of two peers that pass each other
//! opaque, bounded messages (for pinhole: RFC 8839 description lines).
//!
//! The first peer to join a room is `a` (it will be the controlling ICE agent), the second
//! `b`; a third is refused. Each posts messages for the other and fetches the ones for
//! itself by sequence number, so a fetch can be repeated safely. Everything is bounded,
//! since the server may face the internet: rooms in total, messages waiting per peer,
//! bytes per message, room names; idle rooms expire.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use subtle::ConstantTimeEq;

/// The most rooms at once.
pub const MAX_ROOMS: usize = 1024;
/// The most messages waiting for one peer.
pub const MAX_QUEUED: usize = 256;
/// The largest message.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// The longest room name (letters, digits, `-`, `_`, `.`).
pub const MAX_ROOM_NAME: usize = 64;
/// A room nobody touched for this long is removed.
pub const ROOM_IDLE: Duration = Duration::from_secs(600);
/// The most bytes waiting in all rooms together (beyond: 503 until some are fetched).
pub const MAX_TOTAL_BYTES: usize = 32 * 1024 * 1024;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The room name is empty, too long or has other characters.
    #[error("bad room name (1-{MAX_ROOM_NAME} of A-Z a-z 0-9 - _ .)")]
    BadRoom,
    /// The peer is not `a` or `b`.
    #[error("bad peer (a or b)")]
    BadPeer,
    /// Both places of the room are taken.
    #[error("the room is full")]
    Full,
    /// No such room (never made, or expired).
    #[error("no such room")]
    NoRoom,
    /// Too many rooms.
    #[error("too many rooms")]
    TooManyRooms,
    /// The message is larger than [`MAX_MESSAGE`].
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    /// The other peer has [`MAX_QUEUED`] messages waiting.
    #[error("too many messages waiting")]
    QueueFull,
    /// The token is not the one `join` gave this peer.
    #[error("wrong token for this peer")]
    Forbidden,
    /// All rooms together hold [`MAX_TOTAL_BYTES`].
    #[error("the server holds too many messages")]
    Busy,
}

/// A side of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first to join.
    A,
    /// The second.
    B,
}

impl Side {
    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    /// Parses `a` or `b`.
    pub fn parse(s: &str) -> Result<Self, SignalError> {
        match s {
            "a" => Ok(Self::A),
            "b" => Ok(Self::B),
            _ => Err(SignalError::BadPeer),
        }
    }

    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::A => 0,
            Self::B => 1,
        }
    }
}

#[derive(Debug, Default)]
struct Inbox {
    /// Sequence number of the first message in `messages`.
    first: u64,
    messages: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
struct Room {
    /// Each side's token, once joined: only it may post as that side or read its inbox.
    tokens: [Option<[u8; 16]>; 2],
    inbox: [Inbox; 2],
    touched: Instant,
}

/// The rooms. See the module docs.
#[derive(Debug)]
pub struct Rooms {
    rooms: HashMap<String, Room>,
    rng: ChaCha20Rng,
    bytes: usize,
}

fn check_name(room: &str) -> Result<(), SignalError> {
    let ok = !room.is_empty()
        && room.len() <= MAX_ROOM_NAME
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SignalError::BadRoom)
    }
}

fn token_hex(t: &[u8; 16]) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_token(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let hex = std::str::from_utf8(&b[2 * i..2 * i + 2]).ok()?;
        *o = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

impl Rooms {
    /// No rooms; tokens come from `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            rooms: HashMap::new(),
            rng: ChaCha20Rng::from_seed(seed),
            bytes: 0,
        }
    }

    fn authorize(room: &Room, side: Side, token: &str) -> Result<(), SignalError> {
        let given = parse_token(token).ok_or(SignalError::Forbidden)?;
        match room.tokens[side.index()] {
            Some(t) if bool::from(t.ct_eq(&given)) => Ok(()),
            _ => Err(SignalError::Forbidden),
        }
    }

    /// How many rooms exist.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Removes rooms idle for [`ROOM_IDLE`].
    pub fn expire(&mut self, now: Instant) {
        let mut freed = 0;
        self.rooms.retain(|_, r| {
            let keep = now.saturating_duration_since(r.touched) < ROOM_IDLE;
            if !keep {
                freed += r
                    .inbox
                    .iter()
                    .flat_map(|i| &i.messages)
                    .map(Vec::len)
                    .sum::<usize>();
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Joins `room` (made if new): the side given, and the token that side must show to
    /// post and fetch (32 hex digits).
    pub fn join(&mut self, now: Instant, room: &str) -> Result<(Side, String), SignalError> {
        check_name(room)?;
        self.expire(now);
        if !self.rooms.contains_key(room) && self.rooms.len() >= MAX_ROOMS {
            return Err(SignalError::TooManyRooms);
        }
        let r = self.rooms.entry(room.to_owned()).or_insert_with(|| Room {
            tokens: [None; 2],
            inbox: Default::default(),
            touched: now,
        });
        r.touched = now;
        let side = match r.tokens {
            [None, _] => Side::A,
            [Some(_), None] => Side::B,
            [Some(_), Some(_)] => return Err(SignalError::Full),
        };
        let mut t = [0u8; 16];
        self.rng.fill_bytes(&mut t);
        r.tokens[side.index()] = Some(t);
        Ok((side, token_hex(&t)))
    }

    /// Posts `message` from `from` (showing its `token`) for the other peer of `room`.
    pub fn post(
        &mut self,
        now: Instant,
        room: &str,
        from: Side,
        token: &str,
        message: &[u8],
    ) -> Result<(), SignalError> {
        check_name(room)?;
        if message.len() > MAX_MESSAGE {
            return Err(SignalError::TooLarge);
        }
        let r = self.rooms.get_mut(room).ok_or(SignalError::NoRoom)?;
        Self::authorize(r, from, token)?;
        if self.bytes + message.len() > MAX_TOTAL_BYTES {
            return Err(SignalError::Busy);
        }
        r.touched = now;
        let inbox = &mut r.inbox[from.other().index()];
        if inbox.messages.len() >= MAX_QUEUED {
            return Err(SignalError::QueueFull);
        }
        inbox.messages.push_back(message.to_vec());
        self.bytes += message.len();
        Ok(())
    }

    /// The messages for `to` from sequence number `after` on (0 for all), and the next
    /// sequence number. Messages before `after` are acknowledged and dropped.
    pub fn fetch(
        &mut self,
        now: Instant,
        room: &str,
        to: Side,
        token: &str,
        after: u64,
    ) -> Result<(Vec<Vec<u8>>, u64), SignalError> {
        check_name(room)?;
        let r = self.rooms.get_mut(room).ok_or(SignalError::NoRoom)?;
        Self::authorize(r, to, token)?;
        r.touched = now;
        let inbox = &mut r.inbox[to.index()];
        while inbox.first < after {
            let Some(m) = inbox.messages.pop_front() else {
                break;
            };
            self.bytes -= m.len();
            inbox.first += 1;
        }
        let skip = usize::try_from(after.saturating_sub(inbox.first)).unwrap_or(usize::MAX);
        let out: Vec<Vec<u8>> = inbox.messages.iter().skip(skip).cloned().collect();
        let next = inbox.first + inbox.messages.len() as u64;
        Ok((out, next))
    }
}

/// The parts of an HTTP/1.1 request head that the rendezvous uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query, without `?`.
    pub query: String,
    /// `Content-Length` (0 without one; `usize::MAX` when it is not a number, which the
    /// server refuses as too large).
    pub length: usize,
}

/// Parses a request head (the bytes before the blank line). Lenient and total: a head
/// that is not HTTP gives empty parts, which route nowhere.
pub fn parse_head(head: &[u8]) -> Head {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut length = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(usize::MAX);
            }
        }
    }
    Head {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_peers_meet_and_pass_messages_in_order() {
        let t = Instant::now();
        let mut r = Rooms::new([1; 32]);
        let (a, ta) = r.join(t, "demo").unwrap();
        let (b, tb) = r.join(t, "demo").unwrap();
        assert_eq!((a, b), (Side::A, Side::B));
        assert_ne!(ta, tb);
        assert_eq!(r.join(t, "demo"), Err(SignalError::Full));
        r.post(t, "demo", Side::A, &ta, b"one").unwrap();
        r.post(t, "demo", Side::A, &ta, b"two").unwrap();
        let (m, next) = r.fetch(t, "demo", Side::B, &tb, 0).unwrap();
        assert_eq!((m, next), (vec![b"one".to_vec(), b"two".to_vec()], 2));
        // Repeating a fetch is safe; acknowledging drops.
        assert_eq!(
            r.fetch(t, "demo", Side::B, &tb, 1).unwrap().0,
            vec![b"two".to_vec()]
        );
        assert_eq!(r.fetch(t, "demo", Side::B, &tb, 2).unwrap(), (vec![], 2));
        assert_eq!(r.fetch(t, "demo", Side::A, &ta, 0).unwrap(), (vec![], 0));
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn only_the_token_holder_reads_or_writes_a_side() {
        let t = Instant::now();
        let mut r = Rooms::new([2; 32]);
        let (_, ta) = r.join(t, "x").unwrap();
        let (_, tb) = r.join(t, "x").unwrap();
        r.post(t, "x", Side::A, &ta, b"a=ice-pwd:secret").unwrap();
        for wrong in [ta.as_str(), "", "zz", &"0".repeat(32)] {
            // a's token does not read b's inbox (where a's password waits)…
            assert_eq!(
                r.fetch(t, "x", Side::B, wrong, 0),
                Err(SignalError::Forbidden)
            );
            // …nor acknowledge it away, nor post as b.
            assert_eq!(
                r.fetch(t, "x", Side::B, wrong, 99),
                Err(SignalError::Forbidden)
            );
            assert_eq!(
                r.post(t, "x", Side::B, wrong, b"m"),
                Err(SignalError::Forbidden)
            );
        }
        assert_eq!(r.fetch(t, "x", Side::B, &tb, 0).unwrap().0.len(), 1);
    }

    #[test]
    fn request_heads() {
        let h = parse_head(
            b"GET /v1/rooms/r/a?after=3&wait=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 12",
        );
        assert_eq!(
            h,
            Head {
                method: "GET".into(),
                path: "/v1/rooms/r/a".into(),
                query: "after=3&wait=5".into(),
                length: 12
            }
        );
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\ncontent-length: lots").length,
            usize::MAX
        );
        assert_eq!(parse_head(b"\xff\xfe").path, "");
    }

    #[test]
    fn everything_is_bounded_and_rooms_expire() {
        let t = Instant::now();
        let mut r = Rooms::new([3; 32]);
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(r.join(t, bad), Err(SignalError::BadRoom), "{bad:?}");
        }
        let (_, tq) = r.join(t, "q").unwrap();
        assert_eq!(
            r.post(t, "q", Side::A, &tq, &vec![0; MAX_MESSAGE + 1]),
            Err(SignalError::TooLarge)
        );
        for _ in 0..MAX_QUEUED {
            r.post(t, "q", Side::A, &tq, b"m").unwrap();
        }
        assert_eq!(
            r.post(t, "q", Side::A, &tq, b"m"),
            Err(SignalError::QueueFull)
        );
        for i in 1..MAX_ROOMS {
            r.join(t, &format!("r{i}")).unwrap();
        }
        assert_eq!(r.join(t, "one-too-many"), Err(SignalError::TooManyRooms));
        let later = t + ROOM_IDLE;
        assert!(r.join(later, "fresh").is_ok());
        assert_eq!(r.len(), 1);
        assert_eq!(r.bytes, 0, "expired rooms free their bytes");
        assert_eq!(
            r.post(later, "q", Side::A, &tq, b"m"),
            Err(SignalError::NoRoom)
        );
    }

    #[test]
    fn all_rooms_together_are_bounded_in_bytes() {
        let t = Instant::now();
        let mut r = Rooms::new([4; 32]);
        let big = vec![b'x'; MAX_MESSAGE];
        let mut busy = false;
        'rooms: for i in 0..MAX_ROOMS {
            let name = format!("r{i}");
            let (_, tok) = r.join(t, &name).unwrap();
            for _ in 0..MAX_QUEUED {
                match r.post(t, &name, Side::A, &tok, &big) {
                    Ok(()) => {}
                    Err(SignalError::Busy) => {
                        busy = true;
                        break 'rooms;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(busy);
        assert!(r.bytes <= MAX_TOTAL_BYTES);
    }
}
