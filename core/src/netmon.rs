//! Network changes: what a Linux rtnetlink notification says, and a debounce that turns
//! a burst of them into one change.
//!
//! An uplink switch (Wi-Fi to cellular, a new DHCP lease, a VPN coming up) arrives as a
//! burst of notifications: links going down and up, addresses removed and added, routes
//! deleted and re-made. [`parse_notifications`] reads one datagram of them (netlink
//! framing, RFC 3549 §2.3.2: a `nlmsghdr` of 16 bytes in host byte order, then the
//! payload, each message padded to 4 bytes) and says which kinds of change it carries;
//! [`Debounce`] reports a burst once, [`QUIET`] after its last notification (at most
//! [`MAX_DELAY`] after its first). The driver's monitor (`driver::netmon`, Linux and
//! Android) owns the netlink socket and the clock.
//!
//! Routes count only when they are default routes (destination prefix length 0): the
//! kernel adds and removes local and subnet routes with every address, which the address
//! notifications already cover.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a burst must be quiet before it is reported.
pub const QUIET: Duration = Duration::from_millis(200);
/// The longest a change waits to be reported while notifications keep coming.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// `nlmsghdr`'s length (linux/netlink.h).
const HEADER: usize = 16;
/// `NLMSG_DONE`, `NLMSG_ERROR`, `NLMSG_NOOP`, `NLMSG_OVERRUN` (linux/netlink.h).
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// `RTM_NEWLINK`, `RTM_DELLINK` (linux/rtnetlink.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// `RTM_NEWADDR`, `RTM_DELADDR`.
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
/// `RTM_NEWROUTE`, `RTM_DELROUTE`.
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
/// The multicast groups a monitor joins (linux/rtnetlink.h `RTMGRP_*`): links, IPv4 and
/// IPv6 addresses, IPv4 and IPv6 routes.
pub const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

/// Why a notification datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetmonError {
    /// A message header says a length shorter than a header or longer than what is left.
    #[error("netlink message length {0} out of bounds")]
    BadLength(u32),
    /// Fewer bytes than a message header after the last whole message.
    #[error("{0} bytes after the last netlink message")]
    Trailing(usize),
}

/// Which kinds of change a notification (or a burst of them) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// A link appeared, went away, or changed state.
    pub links: bool,
    /// An address was added or removed.
    pub addresses: bool,
    /// A default route was added or removed (an uplink, a VPN).
    pub default_route: bool,
    /// Notifications were lost (the socket's buffer overflowed): anything may have changed.
    pub overrun: bool,
}

impl Change {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.links || self.addresses || self.default_route || self.overrun
    }

    /// Everything may have changed (after lost notifications).
    pub fn everything() -> Self {
        Self {
            links: true,
            addresses: true,
            default_route: true,
            overrun: true,
        }
    }

    fn merge(&mut self, other: Change) {
        self.links |= other.links;
        self.addresses |= other.addresses;
        self.default_route |= other.default_route;
        self.overrun |= other.overrun;
    }
}

/// Reads one datagram of rtnetlink notifications. Messages of other types are skipped;
/// a malformed datagram is refused whole.
pub fn parse_notifications(buf: &[u8]) -> Result<Change, NetmonError> {
    let mut change = Change::default();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err(NetmonError::Trailing(rest.len()));
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let Some(n) = usize::try_from(len)
            .ok()
            .filter(|&n| n >= HEADER && n <= rest.len())
        else {
            return Err(NetmonError::BadLength(len));
        };
        let payload = &rest[HEADER..n];
        match kind {
            RTM_NEWLINK | RTM_DELLINK => change.links = true,
            RTM_NEWADDR | RTM_DELADDR => change.addresses = true,
            // struct rtmsg: family, dst_len, …
            RTM_NEWROUTE | RTM_DELROUTE if payload.get(1) == Some(&0) => {
                change.default_route = true;
            }
            NLMSG_OVERRUN => change.overrun = true,
            NLMSG_NOOP | NLMSG_ERROR | NLMSG_DONE => {}
            _ => {}
        }
        // NLMSG_ALIGN: each message is padded to 4 bytes; the last one may not be.
        let padded = (n + 3) & !3;
        rest = rest.get(padded..).unwrap_or(&[]);
    }
    Ok(change)
}

/// Turns bursts of changes into one report each. Sans-IO: time is passed in.
#[derive(Debug, Default)]
pub struct Debounce {
    first: Option<Instant>,
    last: Option<Instant>,
    pending: Change,
    events: VecDeque<Change>,
}

impl Debounce {
    /// A debounce with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// A notification (or several) arrived at `now`.
    pub fn handle_input(&mut self, now: Instant, change: Change) {
        if !change.any() {
            return;
        }
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.pending.merge(change);
    }

    /// Reports the pending burst when it has been quiet for [`QUIET`] or waited
    /// [`MAX_DELAY`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.events.push_back(std::mem::take(&mut self.pending));
            self.first = None;
            self.last = None;
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some((self.last? + QUIET).min(self.first? + MAX_DELAY))
    }

    /// The next burst, reported once.
    pub fn poll_event(&mut self) -> Option<Change> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER + payload.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    /// struct rtmsg with this destination prefix length.
    fn rtmsg(dst_len: u8) -> [u8; 12] {
        [2, dst_len, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0]
    }

    #[test]
    fn kinds_of_change_are_read_from_a_batch() {
        let mut b = msg(RTM_NEWADDR, &[2, 24, 0, 0, 1, 0, 0, 0]);
        b.extend(msg(RTM_DELROUTE, &rtmsg(24)));
        let c = parse_notifications(&b).unwrap();
        assert_eq!(
            c,
            Change {
                addresses: true,
                ..Change::default()
            }
        );
        let mut b = msg(RTM_NEWROUTE, &rtmsg(0));
        b.extend(msg(RTM_NEWLINK, &[0; 16]));
        b.extend(msg(999, &[1, 2, 3]));
        let c = parse_notifications(&b).unwrap();
        assert!(c.default_route && c.links && !c.addresses && !c.overrun);
        assert!(
            parse_notifications(&msg(NLMSG_OVERRUN, &[]))
                .unwrap()
                .overrun
        );
        assert!(!parse_notifications(&[]).unwrap().any());
        // A route message too short to say its prefix length is not a default route.
        assert!(!parse_notifications(&msg(RTM_NEWROUTE, &[])).unwrap().any());
    }

    #[test]
    fn malformed_batches_are_refused() {
        let good = msg(RTM_NEWADDR, &[0; 8]);
        assert_eq!(
            parse_notifications(&good[..good.len() - 1]),
            Err(NetmonError::BadLength(24))
        );
        let mut b = good.clone();
        b.extend_from_slice(&[0; 5]);
        assert_eq!(parse_notifications(&b), Err(NetmonError::Trailing(5)));
        let mut short = good;
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(parse_notifications(&short), Err(NetmonError::BadLength(8)));
        let mut huge = msg(RTM_NEWADDR, &[]);
        huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(
            parse_notifications(&huge),
            Err(NetmonError::BadLength(u32::MAX))
        );
    }

    #[test]
    fn a_burst_is_reported_once_when_quiet() {
        let t0 = Instant::now();
        let mut d = Debounce::new();
        assert_eq!(d.poll_timeout(), None);
        let addr = Change {
            addresses: true,
            ..Change::default()
        };
        let route = Change {
            default_route: true,
            ..Change::default()
        };
        d.handle_input(t0, addr);
        d.handle_input(t0 + Duration::from_millis(50), route);
        d.handle_input(t0 + Duration::from_millis(60), Change::default());
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(250)));
        d.handle_timeout(t0 + Duration::from_millis(249));
        assert_eq!(d.poll_event(), None);
        d.handle_timeout(t0 + Duration::from_millis(250));
        let c = d.poll_event().unwrap();
        assert!(c.addresses && c.default_route && !c.links);
        assert_eq!(d.poll_event(), None);
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn a_change_waits_at_most_max_delay_while_notifications_keep_coming() {
        let t0 = Instant::now();
        let mut d = Debounce::new();
        let mut now = t0;
        let mut reported = Vec::new();
        // A notification every 100 ms for 3 s: never quiet for 200 ms.
        while now < t0 + Duration::from_secs(3) {
            d.handle_input(
                now,
                Change {
                    links: true,
                    ..Change::default()
                },
            );
            now += Duration::from_millis(100);
            d.handle_timeout(now);
            if d.poll_event().is_some() {
                reported.push(now - t0);
            }
        }
        assert_eq!(
            reported,
            [1, 2, 3].map(Duration::from_secs),
            "every MAX_DELAY from each burst's first notification"
        );
    }
}
