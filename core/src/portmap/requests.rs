//! PCP and NAT-PMP requests to the gateway and their retransmission, and the checks of
//! the gateway's answers that every machine shares.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use super::REQUEST_SCHEDULE;
use super::natpmp;
use crate::retransmit::{Due, Retransmit};
use crate::{Protocol, Received, Transmit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Req {
    PcpMap,
    PcpDelete,
    PcpAnnounce,
    NatPmpExternal,
    NatPmpMap,
    NatPmpDelete,
}

#[derive(Debug)]
pub(super) struct Outstanding {
    pub(super) req: Req,
    bytes: Vec<u8>,
    retransmit: Retransmit,
}

/// Retransmits PCP / NAT-PMP requests to the gateway on [`REQUEST_SCHEDULE`] (RFC 6886's
/// schedule, cut short).
#[derive(Debug)]
pub(super) struct Requests {
    source: SocketAddr,
    pub(super) server: SocketAddr,
    pub(super) out: Vec<Outstanding>,
    pub(super) transmits: VecDeque<Transmit>,
}

impl Requests {
    pub(super) fn new(source: SocketAddr, gateway: IpAddr) -> Self {
        Self {
            source,
            server: SocketAddr::new(gateway, natpmp::SERVER_PORT),
            out: Vec::new(),
            transmits: VecDeque::new(),
        }
    }

    pub(super) fn send(&mut self, now: Instant, req: Req, bytes: Vec<u8>) {
        self.out.retain(|o| o.req != req);
        self.transmits.push_back(Transmit {
            proto: Protocol::Udp,
            source: self.source,
            destination: self.server,
            contents: bytes.clone(),
        });
        self.out.push(Outstanding {
            req,
            bytes,
            retransmit: Retransmit::new(now, REQUEST_SCHEDULE),
        });
    }

    pub(super) fn pending(&self, req: Req) -> bool {
        self.out.iter().any(|o| o.req == req)
    }

    pub(super) fn done(&mut self, req: Req) -> bool {
        let before = self.out.len();
        self.out.retain(|o| o.req != req);
        before != self.out.len()
    }

    /// Retransmits what is due; returns the requests that gave up.
    pub(super) fn timeout(&mut self, now: Instant) -> Vec<Req> {
        let mut failed = Vec::new();
        let mut i = 0;
        while i < self.out.len() {
            let o = &mut self.out[i];
            match o.retransmit.handle_timeout(now) {
                None => i += 1,
                Some(Due::Retransmit) => {
                    self.transmits.push_back(Transmit {
                        proto: Protocol::Udp,
                        source: self.source,
                        destination: self.server,
                        contents: o.bytes.clone(),
                    });
                    i += 1;
                }
                Some(Due::GiveUp) => failed.push(self.out.swap_remove(i).req),
            }
        }
        failed
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.out.iter().map(|o| o.retransmit.deadline()).min()
    }

    /// Whether `rx` comes from the gateway's port 5351 to our socket.
    pub(super) fn is_from_gateway(&self, rx: &Received<'_>) -> bool {
        rx.source == self.server && rx.destination == self.source
    }
}

/// A uniformly random pause in `[0, max)`.
pub(super) fn jitter(rng: &mut ChaCha20Rng, max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rng.next_u64() % max_ms)
}

/// RFC 6887 §8.5: is the server's epoch consistent with the previous one?
pub(super) fn epoch_consistent(prev: Option<(u32, Instant)>, epoch: u32, now: Instant) -> bool {
    let Some((prev_epoch, prev_at)) = prev else {
        return true;
    };
    if u64::from(epoch) + 1 < u64::from(prev_epoch) {
        return false;
    }
    let client = now.saturating_duration_since(prev_at).as_secs_f64();
    let server = f64::from(epoch.saturating_sub(prev_epoch));
    !(client + 2.0 < server - server / 16.0 || server + 2.0 < client - client / 16.0)
}
