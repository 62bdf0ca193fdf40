//! PCP PEER mappings (RFC 6887 §12): [`PcpPeer`], sans-IO.
//!
//! Once the gateway is known to speak PCP (the [`super::Mapper`] mapped over it), a peer
//! connection asks it for a PEER mapping from its socket (the internal address and
//! port) toward the remote peer's candidates. A PEER mapping is an outbound mapping the
//! client creates explicitly: the gateway says which external address and port the
//! socket's traffic toward that peer leaves from (offered to the peer as a
//! server-reflexive candidate), and keeps it for the granted lifetime whether or not
//! traffic flows.
//!
//! - At most [`PcpPeerConfig::max_peers`] remote peers (by default [`MAX_PEERS`]): the
//!   first distinct, publicly routable addresses of the peer's candidates, of the
//!   socket's address family. Others are ignored.
//! - Requests are retransmitted per RFC 6887 §8.1.1 (IRT 3 s, doubling), bounded to
//!   [`PEER_TRANSMITS`] transmissions; a request nothing answered fails.
//! - A granted mapping is renewed at a random point between 1/2 and 5/8 of its lifetime
//!   (RFC 6887 §11.2.1 and §15), with the same nonce and the assigned external address
//!   and port as suggestions (RFC 6887 §12.3, §11.1).
//! - Every answer's epoch is checked (RFC 6887 §8.5): one that shows the gateway
//!   restarted (and so forgot its mappings) makes every granted mapping renew at once,
//!   which re-creates it (RFC 6887 §12.3: a request with the same nonce).
//! - UNSUPP_OPCODE (the gateway speaks PCP, but not PEER) ends it: nothing more is asked
//!   ([`PcpPeerEvent::Unsupported`]).
//! - [`PcpPeer::release`] deletes every granted mapping (lifetime 0, RFC 6887 §15) on
//!   the short schedule of releases ([`super::REQUEST_SCHEDULE`]).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use super::pcp::{self, MapData, OpData, Opcode, PeerData, Request, Response, ResultCode};
use super::requests::epoch_consistent;
use super::{DEFAULT_LIFETIME, MapProtocol, REQUEST_SCHEDULE, is_publicly_routable, natpmp};
use crate::retransmit::{Due, Retransmit, Schedule};
use crate::{Protocol, Received, Transmit};

/// How many remote peers are asked for by default: the first few distinct addresses of
/// the peer's candidates (its server-reflexive and public host candidates), enough for a
/// peer with an address per interface, few enough not to fill a gateway's table.
pub const MAX_PEERS: usize = 4;
/// Transmissions of one PEER request (RFC 6887 §8.1.1's IRT of 3 s, doubling: at 0, 3,
/// 9 and 21 s); it fails 24 s after the last. RFC 6887 allows retrying forever (MRC 0);
/// a connection that has not got its mapping in 45 s has found its path without it.
pub const PEER_TRANSMITS: u32 = 4;
/// The schedule of PEER requests and renewals: [`Schedule::PCP`] bounded to
/// [`PEER_TRANSMITS`].
pub const PEER_SCHEDULE: Schedule = Schedule::PCP.with_max_transmits(Some(PEER_TRANSMITS));

/// What a [`PcpPeer`] is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PcpPeerConfig {
    /// The gateway (the PCP server, port 5351).
    pub gateway: IpAddr,
    /// This host's address toward the gateway: the PCP client address, and the internal
    /// address of the mappings (RFC 6887 §12.1: the same).
    pub client_ip: IpAddr,
    /// The protocol of the socket.
    pub protocol: MapProtocol,
    /// The socket's port: the internal port of the mappings.
    pub internal_port: u16,
    /// Lifetime asked for, seconds.
    pub lifetime: u32,
    /// The most remote peers asked for.
    pub max_peers: usize,
}

impl PcpPeerConfig {
    /// PEER mappings of the UDP socket at `client_ip:internal_port` through `gateway`,
    /// with the defaults ([`DEFAULT_LIFETIME`], [`MAX_PEERS`]).
    pub fn new(gateway: IpAddr, client_ip: IpAddr, internal_port: u16) -> Self {
        Self {
            gateway,
            client_ip,
            protocol: MapProtocol::Udp,
            internal_port,
            lifetime: DEFAULT_LIFETIME,
            max_peers: MAX_PEERS,
        }
    }
}

/// What a [`PcpPeer`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PcpPeerEvent {
    /// The gateway granted (or renewed with another address) the mapping toward
    /// `remote`: the socket's traffic to it leaves from `external`.
    Mapped {
        /// The remote peer.
        remote: SocketAddr,
        /// The assigned external address and port.
        external: SocketAddr,
        /// The granted lifetime.
        lifetime: Duration,
    },
    /// The mapping toward `remote` could not be made or renewed.
    Failed {
        /// The remote peer.
        remote: SocketAddr,
        /// Why: the gateway's result code, or no answer.
        why: String,
    },
    /// The gateway does not do PEER (UNSUPP_OPCODE): nothing more is asked.
    Unsupported,
    /// After [`PcpPeer::release`]: every deletion was answered or gave up.
    Released {
        /// Deletions the gateway confirmed.
        confirmed: usize,
        /// Deletions nothing answered (or the gateway refused).
        unconfirmed: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Asking (first time or renewing).
    Asking,
    /// Granted, renewal due at `renew_at`.
    Granted { renew_at: Instant },
    /// Deleting.
    Deleting,
    /// Nothing more to do.
    Done,
}

#[derive(Debug)]
struct Entry {
    remote: SocketAddr,
    nonce: [u8; 12],
    state: State,
    /// The assigned external address (after a grant).
    external: Option<SocketAddr>,
    /// Good until (after a grant).
    good_until: Option<Instant>,
    bytes: Vec<u8>,
    retransmit: Option<Retransmit>,
}

/// PEER mappings of one socket toward the remote peer's candidates. See the module docs.
#[derive(Debug)]
pub struct PcpPeer {
    config: PcpPeerConfig,
    /// The PCP client socket (its IP should be `config.client_ip`).
    source: SocketAddr,
    server: SocketAddr,
    rng: ChaCha20Rng,
    entries: Vec<Entry>,
    unsupported: bool,
    releasing: bool,
    released: bool,
    /// The gateway's last epoch and when it was heard (RFC 6887 §8.5).
    epoch: Option<(u32, Instant)>,
    confirmed: usize,
    unconfirmed: usize,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PcpPeerEvent>,
}

impl PcpPeer {
    /// PEER mappings asked from the PCP socket `source`. Nothing is sent until
    /// [`PcpPeer::add_remote`].
    pub fn new(config: PcpPeerConfig, source: SocketAddr, seed: [u8; 32]) -> Self {
        Self {
            server: SocketAddr::new(config.gateway, natpmp::SERVER_PORT),
            config,
            source,
            rng: ChaCha20Rng::from_seed(seed),
            entries: Vec::new(),
            unsupported: false,
            releasing: false,
            released: false,
            epoch: None,
            confirmed: 0,
            unconfirmed: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Asks for a mapping toward `remote` (a candidate of the peer). Returns false when
    /// it is not asked for: a duplicate address, the cap reached, an address that is not
    /// publicly routable or of another family than the socket's, the gateway without
    /// PEER, or released.
    pub fn add_remote(&mut self, now: Instant, remote: SocketAddr) -> bool {
        if self.unsupported || self.releasing {
            return false;
        }
        if remote.is_ipv4() != self.config.client_ip.is_ipv4()
            || !is_publicly_routable(remote.ip())
            || remote.port() == 0
            || remote.ip().is_multicast()
        {
            debug!(%remote, "PCP PEER: remote not asked for (family or scope)");
            return false;
        }
        if self.entries.iter().any(|e| e.remote == remote) {
            return false;
        }
        if self.entries.len() >= self.config.max_peers {
            debug!(%remote, cap = self.config.max_peers, "PCP PEER: cap reached");
            return false;
        }
        let mut nonce = [0u8; 12];
        self.rng.fill_bytes(&mut nonce);
        self.entries.push(Entry {
            remote,
            nonce,
            state: State::Asking,
            external: None,
            good_until: None,
            bytes: Vec::new(),
            retransmit: None,
        });
        let i = self.entries.len() - 1;
        self.send(now, i, self.config.lifetime, PEER_SCHEDULE);
        true
    }

    /// The remote peers asked for, with their external addresses once granted.
    pub fn mappings(&self) -> impl Iterator<Item = (SocketAddr, Option<SocketAddr>)> + '_ {
        self.entries.iter().map(|e| (e.remote, e.external))
    }

    /// Whether the gateway said it does not do PEER.
    pub fn is_unsupported(&self) -> bool {
        self.unsupported
    }

    /// Whether [`PcpPeer::release`] has finished.
    pub fn is_released(&self) -> bool {
        self.released
    }

    fn send(&mut self, now: Instant, i: usize, lifetime: u32, schedule: Schedule) {
        let e = &self.entries[i];
        let (ext_port, ext_ip) = match e.external {
            Some(a) => (a.port(), a.ip()),
            None if self.config.client_ip.is_ipv4() => (0, pcp::ANY_V4),
            None => (0, IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        };
        let req = Request {
            lifetime,
            client_ip: self.config.client_ip,
            data: OpData::Peer(PeerData {
                map: MapData {
                    nonce: e.nonce,
                    protocol: self.config.protocol,
                    internal_port: self.config.internal_port,
                    external_port: ext_port,
                    external_ip: ext_ip,
                },
                remote: e.remote,
            }),
        };
        let mut buf = [0u8; pcp::HEADER_LEN + pcp::PEER_LEN];
        let Ok(n) = req.emit(&mut buf) else { return };
        let bytes = buf[..n].to_vec();
        self.transmits.push_back(self.transmit(bytes.clone()));
        let e = &mut self.entries[i];
        e.bytes = bytes;
        e.retransmit = Some(Retransmit::new(now, schedule));
    }

    fn transmit(&self, contents: Vec<u8>) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: self.source,
            destination: self.server,
            contents,
        }
    }

    /// Deletes every mapping (lifetime 0); [`PcpPeerEvent::Released`] follows once the
    /// gateway answered each deletion or they gave up. Stops all other requests.
    pub fn release(&mut self, now: Instant) {
        if self.releasing {
            return;
        }
        self.releasing = true;
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            // A request in flight may have been granted: delete it too.
            let delete = e.external.is_some() || e.state == State::Asking;
            e.retransmit = None;
            if delete {
                e.state = State::Deleting;
                self.send(now, i, 0, REQUEST_SCHEDULE);
            } else {
                e.state = State::Done;
            }
        }
        self.check_released();
    }

    fn check_released(&mut self) {
        if self.releasing
            && !self.released
            && self.entries.iter().all(|e| e.state != State::Deleting)
        {
            self.released = true;
            self.events.push_back(PcpPeerEvent::Released {
                confirmed: self.confirmed,
                unconfirmed: self.unconfirmed,
            });
        }
    }

    /// Offers a datagram received on the PCP socket. Returns false when it is not a PEER
    /// answer from the gateway to this socket.
    pub fn handle_input(&mut self, now: Instant, rx: Received<'_>) -> bool {
        if rx.source != self.server || rx.destination != self.source {
            return false;
        }
        let Ok(resp) = Response::parse(rx.contents) else {
            return false;
        };
        if resp.opcode != Opcode::Peer {
            return false;
        }
        // An error answer may leave out the opcode data (RFC 6887 §7.2); then it is the
        // answer to every outstanding request (there is no nonce to tell them apart).
        let which: Vec<usize> = match resp.data {
            Some(OpData::Peer(p)) => self
                .entries
                .iter()
                .position(|e| {
                    e.nonce == p.map.nonce
                        && e.remote == p.remote
                        && p.map.internal_port == self.config.internal_port
                        && p.map.protocol == self.config.protocol
                })
                .into_iter()
                .collect(),
            None if resp.result != ResultCode::SUCCESS => (0..self.entries.len())
                .filter(|&i| self.entries[i].retransmit.is_some())
                .collect(),
            _ => Vec::new(),
        };
        let which: Vec<usize> = which
            .into_iter()
            .filter(|&i| self.entries[i].retransmit.is_some())
            .collect();
        if which.is_empty() {
            return false;
        }
        if !epoch_consistent(self.epoch, resp.epoch, now) {
            debug!(
                epoch = resp.epoch,
                "PCP PEER: the gateway restarted: re-creating the mappings"
            );
            for e in &mut self.entries {
                if let State::Granted { renew_at } = &mut e.state {
                    *renew_at = now;
                }
            }
        }
        self.epoch = Some((resp.epoch, now));
        for i in which {
            self.answered(now, i, &resp);
        }
        self.check_released();
        true
    }

    fn answered(&mut self, now: Instant, i: usize, resp: &Response) {
        let e = &mut self.entries[i];
        e.retransmit = None;
        let remote = e.remote;
        if e.state == State::Deleting {
            e.state = State::Done;
            if resp.result == ResultCode::SUCCESS {
                self.confirmed += 1;
            } else {
                self.unconfirmed += 1;
            }
            return;
        }
        if resp.result == ResultCode::UNSUPP_OPCODE {
            debug!(gateway = %self.server, "PCP PEER: the gateway does not do PEER");
            self.unsupported = true;
            for e in &mut self.entries {
                e.state = State::Done;
                e.retransmit = None;
            }
            self.events.push_back(PcpPeerEvent::Unsupported);
            return;
        }
        if resp.result != ResultCode::SUCCESS {
            e.state = State::Done;
            let why = format!("gateway answered {}", resp.result.name());
            debug!(%remote, %why, "PCP PEER refused");
            self.events.push_back(PcpPeerEvent::Failed { remote, why });
            return;
        }
        let Some(OpData::Peer(p)) = resp.data else {
            return;
        };
        if resp.lifetime == 0 || p.map.external_port == 0 || p.map.external_ip.is_unspecified() {
            e.state = State::Done;
            self.events.push_back(PcpPeerEvent::Failed {
                remote,
                why: "gateway granted no usable mapping".into(),
            });
            return;
        }
        let external = SocketAddr::new(p.map.external_ip, p.map.external_port);
        let lifetime = Duration::from_secs(u64::from(resp.lifetime));
        // RFC 6887 §11.2.1: renew between 1/2 and 5/8 of the lifetime.
        let eighth = lifetime / 8;
        let extra = if eighth.is_zero() {
            Duration::ZERO
        } else {
            let ms = u64::try_from(eighth.as_millis()).unwrap_or(u64::MAX).max(1);
            Duration::from_millis(self.rng.next_u64() % ms)
        };
        let e = &mut self.entries[i];
        let changed = e.external != Some(external);
        e.external = Some(external);
        e.good_until = Some(now + lifetime);
        e.state = State::Granted {
            renew_at: now + lifetime / 2 + extra,
        };
        if changed {
            debug!(%remote, %external, ?lifetime, "PCP PEER mapping granted");
            self.events.push_back(PcpPeerEvent::Mapped {
                remote,
                external,
                lifetime,
            });
        }
    }

    /// Retransmits, renews, and gives up what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            let renew = matches!(e.state, State::Granted { renew_at } if renew_at <= now);
            if renew && e.retransmit.is_none() && !self.releasing {
                e.state = State::Asking;
                self.send(now, i, self.config.lifetime, PEER_SCHEDULE);
                continue;
            }
            let e = &mut self.entries[i];
            let Some(r) = e.retransmit.as_mut() else {
                continue;
            };
            match r.handle_timeout(now) {
                None => {}
                Some(Due::Retransmit) => {
                    let bytes = e.bytes.clone();
                    self.transmits.push_back(self.transmit(bytes));
                }
                Some(Due::GiveUp) => {
                    e.retransmit = None;
                    let remote = e.remote;
                    if e.state == State::Deleting {
                        e.state = State::Done;
                        self.unconfirmed += 1;
                    } else if e.good_until.is_some_and(|g| g > now) {
                        // A renewal nothing answered: ask again while it is still good.
                        e.state = State::Asking;
                        self.send(now, i, self.config.lifetime, PEER_SCHEDULE);
                    } else {
                        e.state = State::Done;
                        self.events.push_back(PcpPeerEvent::Failed {
                            remote,
                            why: "no answer from the gateway".into(),
                        });
                    }
                }
            }
        }
        self.check_released();
    }

    /// The next datagram to send to the gateway.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PcpPeerEvent> {
        self.events.pop_front()
    }

    /// When [`PcpPeer::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match (&e.retransmit, e.state) {
                (Some(r), _) => Some(r.deadline()),
                (None, State::Granted { renew_at }) if !self.releasing => Some(renew_at),
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "192.168.1.20:40000";
    const GATEWAY: &str = "192.168.1.1";
    const EXTERNAL: &str = "203.0.113.5:61000";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn machine() -> PcpPeer {
        let config = PcpPeerConfig::new(GATEWAY.parse().unwrap(), a(CLIENT).ip(), 50000);
        PcpPeer::new(config, a(CLIENT), [7; 32])
    }

    /// A fake PCP server: the answer to one request, with `result` (SUCCESS maps to
    /// [`EXTERNAL`] with the lifetime asked for, capped at 600 s).
    fn answer(t: &Transmit, result: ResultCode) -> (Request, Vec<u8>) {
        assert_eq!(
            t.destination,
            SocketAddr::new(GATEWAY.parse().unwrap(), 5351)
        );
        let req = Request::parse(&t.contents).unwrap();
        let OpData::Peer(mut p) = req.data else {
            panic!("not a PEER request: {req:?}")
        };
        p.map.external_ip = a(EXTERNAL).ip();
        p.map.external_port = a(EXTERNAL).port();
        let resp = Response {
            result,
            lifetime: req.lifetime.min(600),
            epoch: 1000,
            opcode: Opcode::Peer,
            data: Some(OpData::Peer(p)),
        };
        let mut b = [0u8; 128];
        let n = resp.emit(&mut b).unwrap();
        (req, b[..n].to_vec())
    }

    fn deliver(m: &mut PcpPeer, now: Instant, bytes: &[u8]) -> bool {
        m.handle_input(
            now,
            Received {
                proto: Protocol::Udp,
                source: SocketAddr::new(GATEWAY.parse().unwrap(), 5351),
                destination: a(CLIENT),
                contents: bytes,
            },
        )
    }

    /// A PEER request carries the socket's internal port and the remote peer; the grant
    /// is reported, renewed between 1/2 and 5/8 of its lifetime with the same nonce and
    /// the assigned address suggested, and deleted (lifetime 0) on release.
    #[test]
    fn granted_renewed_and_deleted() {
        let t0 = Instant::now();
        let mut m = machine();
        let remote = a("198.51.100.9:3478");
        assert!(m.add_remote(t0, remote));
        let t = m.poll_transmit().unwrap();
        assert_eq!(t.source, a(CLIENT));
        let (req, resp) = answer(&t, ResultCode::SUCCESS);
        assert_eq!(req.lifetime, DEFAULT_LIFETIME);
        assert_eq!(req.client_ip, a(CLIENT).ip());
        let OpData::Peer(p) = req.data else { panic!() };
        assert_eq!(p.remote, remote);
        assert_eq!(p.map.internal_port, 50000);
        assert_eq!(p.map.protocol, MapProtocol::Udp);
        assert_eq!(p.map.external_ip, pcp::ANY_V4);
        assert!(deliver(&mut m, t0, &resp));
        assert_eq!(
            m.poll_event(),
            Some(PcpPeerEvent::Mapped {
                remote,
                external: a(EXTERNAL),
                lifetime: Duration::from_secs(600),
            })
        );
        // A duplicate answer is not ours any more.
        assert!(!deliver(&mut m, t0, &resp));
        let renew = m.poll_timeout().unwrap();
        assert!(renew >= t0 + Duration::from_secs(300) && renew < t0 + Duration::from_secs(375));
        m.handle_timeout(renew);
        let t = m.poll_transmit().unwrap();
        let (again, resp) = answer(&t, ResultCode::SUCCESS);
        let OpData::Peer(p2) = again.data else {
            panic!()
        };
        assert_eq!(p2.map.nonce, p.map.nonce);
        assert_eq!(
            SocketAddr::new(p2.map.external_ip, p2.map.external_port),
            a(EXTERNAL)
        );
        assert!(deliver(&mut m, renew, &resp));
        // The same address: nothing new to offer.
        assert_eq!(m.poll_event(), None);
        let t1 = renew + Duration::from_secs(1);
        m.release(t1);
        let t = m.poll_transmit().unwrap();
        let (del, resp) = answer(&t, ResultCode::SUCCESS);
        assert_eq!(del.lifetime, 0);
        let OpData::Peer(p3) = del.data else { panic!() };
        assert_eq!((p3.map.nonce, p3.remote), (p.map.nonce, remote));
        assert!(!m.is_released());
        assert!(deliver(&mut m, t1, &resp));
        assert_eq!(
            m.poll_event(),
            Some(PcpPeerEvent::Released {
                confirmed: 1,
                unconfirmed: 0
            })
        );
        assert!(m.is_released());
        assert_eq!(m.poll_timeout(), None);
    }

    /// A gateway that answers UNSUPP_OPCODE is asked nothing more: not the other remote
    /// in flight (no retransmission), not later remotes, nothing on release.
    #[test]
    fn unsupported_opcode_stops_asking() {
        let t0 = Instant::now();
        let mut m = machine();
        assert!(m.add_remote(t0, a("198.51.100.9:3478")));
        assert!(m.add_remote(t0, a("198.51.100.10:3478")));
        let t = m.poll_transmit().unwrap();
        let _ = m.poll_transmit().unwrap();
        let (_, resp) = answer(&t, ResultCode::UNSUPP_OPCODE);
        assert!(deliver(&mut m, t0, &resp));
        assert_eq!(m.poll_event(), Some(PcpPeerEvent::Unsupported));
        assert!(m.is_unsupported());
        assert!(!m.add_remote(t0, a("198.51.100.11:3478")));
        assert_eq!(m.poll_timeout(), None);
        m.handle_timeout(t0 + Duration::from_secs(100));
        assert!(m.poll_transmit().is_none());
        m.release(t0 + Duration::from_secs(100));
        assert!(m.poll_transmit().is_none());
        assert_eq!(
            m.poll_event(),
            Some(PcpPeerEvent::Released {
                confirmed: 0,
                unconfirmed: 0
            })
        );
    }

    /// Only the first [`MAX_PEERS`] distinct, public addresses of the socket's family
    /// are asked for.
    #[test]
    fn capped_and_deduplicated() {
        let t0 = Instant::now();
        let mut m = machine();
        assert!(!m.add_remote(t0, a("10.0.0.5:4000")), "private");
        assert!(!m.add_remote(t0, a("127.0.0.1:4000")), "loopback");
        assert!(!m.add_remote(t0, a("[2001:db8::1]:4000")), "other family");
        assert!(!m.add_remote(t0, a("198.51.100.1:0")), "port 0");
        let mut asked = 0;
        for i in 0..10u8 {
            let r = SocketAddr::new(IpAddr::from([198, 51, 100, 20 + i % 6]), 4000);
            if m.add_remote(t0, r) {
                asked += 1;
            }
        }
        assert_eq!(asked, MAX_PEERS);
        let mut n = 0;
        while m.poll_transmit().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_PEERS);
    }

    /// Retransmission per RFC 6887 §8.1.1 (3 s, doubling), bounded to
    /// [`PEER_TRANSMITS`]; then the request fails. Answers with another nonce, from
    /// elsewhere or of another opcode are not taken.
    #[test]
    fn retransmits_then_fails() {
        let t0 = Instant::now();
        let mut m = machine();
        let remote = a("198.51.100.9:3478");
        assert!(m.add_remote(t0, remote));
        let first = m.poll_transmit().unwrap();
        // Another nonce.
        let mut forged = first.clone();
        forged.contents[HEADER_NONCE] ^= 1;
        let (_, resp) = answer(&forged, ResultCode::SUCCESS);
        assert!(!deliver(&mut m, t0, &resp));
        // From another port.
        let (_, resp) = answer(&first, ResultCode::SUCCESS);
        assert!(!m.handle_input(
            t0,
            Received {
                proto: Protocol::Udp,
                source: SocketAddr::new(GATEWAY.parse().unwrap(), 5350),
                destination: a(CLIENT),
                contents: &resp,
            }
        ));
        let mut sent = vec![Duration::ZERO];
        let mut now = t0;
        for _ in 0..20 {
            let Some(next) = m.poll_timeout() else { break };
            now = next;
            m.handle_timeout(now);
            while let Some(t) = m.poll_transmit() {
                assert_eq!(t.contents, first.contents);
                sent.push(now - t0);
            }
        }
        let s = Duration::from_secs;
        assert_eq!(sent, vec![s(0), s(3), s(9), s(21)]);
        assert_eq!(now - t0, s(45));
        assert!(matches!(
            m.poll_event(),
            Some(PcpPeerEvent::Failed { remote: r, .. }) if r == remote
        ));
    }

    /// An answer whose epoch shows a gateway restart (RFC 6887 §8.5) makes the other
    /// granted mappings renew at once (the restarted gateway forgot them).
    #[test]
    fn a_restart_seen_in_the_epoch_renews_at_once() {
        let t0 = Instant::now();
        let mut m = machine();
        assert!(m.add_remote(t0, a("198.51.100.9:3478")));
        let (_, resp) = answer(&m.poll_transmit().unwrap(), ResultCode::SUCCESS);
        assert!(deliver(&mut m, t0, &resp));
        assert!(m.poll_timeout().unwrap() >= t0 + Duration::from_secs(300));
        let t1 = t0 + Duration::from_secs(60);
        assert!(m.add_remote(t1, a("198.51.100.10:3478")));
        let (_, mut resp) = answer(&m.poll_transmit().unwrap(), ResultCode::SUCCESS);
        // Epoch 5 instead of about 1060.
        resp[8..12].copy_from_slice(&5u32.to_be_bytes());
        assert!(deliver(&mut m, t1, &resp));
        assert_eq!(m.poll_timeout(), Some(t1));
        m.handle_timeout(t1);
        let t = m.poll_transmit().expect("the first mapping renewed");
        let req = Request::parse(&t.contents).unwrap();
        let OpData::Peer(p) = req.data else { panic!() };
        assert_eq!(p.remote, a("198.51.100.9:3478"));
        assert!(m.poll_transmit().is_none());
    }

    /// Where the nonce lies in a PEER request.
    const HEADER_NONCE: usize = pcp::HEADER_LEN;
}
