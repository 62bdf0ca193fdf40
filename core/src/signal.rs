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
    joined: [bool; 2],
    inbox: [Inbox; 2],
    touched: Instant,
}

/// The rooms. See the module docs.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: HashMap<String, Room>,
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

impl Rooms {
    /// No rooms.
    pub fn new() -> Self {
        Self::default()
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
        self.rooms
            .retain(|_, r| now.saturating_duration_since(r.touched) < ROOM_IDLE);
    }

    /// Joins `room` (made if new): the side given.
    pub fn join(&mut self, now: Instant, room: &str) -> Result<Side, SignalError> {
        check_name(room)?;
        self.expire(now);
        if !self.rooms.contains_key(room) && self.rooms.len() >= MAX_ROOMS {
            return Err(SignalError::TooManyRooms);
        }
        let r = self.rooms.entry(room.to_owned()).or_insert_with(|| Room {
            joined: [false; 2],
            inbox: Default::default(),
            touched: now,
        });
        r.touched = now;
        let side = match r.joined {
            [false, _] => Side::A,
            [true, false] => Side::B,
            [true, true] => return Err(SignalError::Full),
        };
        r.joined[side.index()] = true;
        Ok(side)
    }

    /// Posts `message` from `from` for the other peer of `room`.
    pub fn post(
        &mut self,
        now: Instant,
        room: &str,
        from: Side,
        message: &[u8],
    ) -> Result<(), SignalError> {
        check_name(room)?;
        if message.len() > MAX_MESSAGE {
            return Err(SignalError::TooLarge);
        }
        let r = self.rooms.get_mut(room).ok_or(SignalError::NoRoom)?;
        r.touched = now;
        let inbox = &mut r.inbox[from.other().index()];
        if inbox.messages.len() >= MAX_QUEUED {
            return Err(SignalError::QueueFull);
        }
        inbox.messages.push_back(message.to_vec());
        Ok(())
    }

    /// The messages for `to` from sequence number `after` on (0 for all), and the next
    /// sequence number. Messages before `after` are acknowledged and dropped.
    pub fn fetch(
        &mut self,
        now: Instant,
        room: &str,
        to: Side,
        after: u64,
    ) -> Result<(Vec<Vec<u8>>, u64), SignalError> {
        check_name(room)?;
        let r = self.rooms.get_mut(room).ok_or(SignalError::NoRoom)?;
        r.touched = now;
        let inbox = &mut r.inbox[to.index()];
        while inbox.first < after && !inbox.messages.is_empty() {
            inbox.messages.pop_front();
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
        let mut r = Rooms::new();
        assert_eq!(r.join(t, "demo"), Ok(Side::A));
        assert_eq!(r.join(t, "demo"), Ok(Side::B));
        assert_eq!(r.join(t, "demo"), Err(SignalError::Full));
        r.post(t, "demo", Side::A, b"one").unwrap();
        r.post(t, "demo", Side::A, b"two").unwrap();
        let (m, next) = r.fetch(t, "demo", Side::B, 0).unwrap();
        assert_eq!((m, next), (vec![b"one".to_vec(), b"two".to_vec()], 2));
        // Repeating a fetch is safe; acknowledging drops.
        assert_eq!(
            r.fetch(t, "demo", Side::B, 1).unwrap().0,
            vec![b"two".to_vec()]
        );
        assert_eq!(r.fetch(t, "demo", Side::B, 2).unwrap(), (vec![], 2));
        assert_eq!(r.fetch(t, "demo", Side::A, 0).unwrap(), (vec![], 0));
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
        let mut r = Rooms::new();
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert_eq!(r.join(t, bad), Err(SignalError::BadRoom), "{bad:?}");
        }
        r.join(t, "q").unwrap();
        assert_eq!(
            r.post(t, "q", Side::A, &vec![0; MAX_MESSAGE + 1]),
            Err(SignalError::TooLarge)
        );
        for _ in 0..MAX_QUEUED {
            r.post(t, "q", Side::A, b"m").unwrap();
        }
        assert_eq!(r.post(t, "q", Side::A, b"m"), Err(SignalError::QueueFull));
        for i in 1..MAX_ROOMS {
            r.join(t, &format!("r{i}")).unwrap();
        }
        assert_eq!(r.join(t, "one-too-many"), Err(SignalError::TooManyRooms));
        let later = t + ROOM_IDLE;
        assert_eq!(r.join(later, "fresh"), Ok(Side::A));
        assert_eq!(r.len(), 1);
        assert_eq!(r.post(later, "q", Side::A, b"m"), Err(SignalError::NoRoom));
    }
}
