//! The peer connection's mDNS resolver task: the peer's `<uuid>.local` host candidates
//! (RFC 6762, draft-ietf-mmusic-mdns-ice-candidates) go through an
//! [`MdnsResolver`](crate::mdns::MdnsResolver) on sockets of their own before they reach
//! the agent; a name without an answer is dropped and reported, the agent goes on.
//!
//! The questions are one-shot queries (RFC 6762 §5.1) from an ephemeral port of each
//! family with the QU bit, so that a responder that follows §5.4 or §6.7 answers by
//! unicast to these sockets; the sockets send with TTL 255 (§11) and multicast loopback
//! (a responder on this host hears it). Chromium's responder answers to the group
//! whatever the query, so when asking the real groups the task also listens on
//! 224.0.0.251:5353 (shared with the host's own responder through `SO_REUSEADDR` and
//! `SO_REUSEPORT`, on every IPv4 interface) when it can.
//!
//! [`Publisher`]: the other way round, for [`super::peer::PeerConnection::publish_mdns`]:
//! an [`MdnsResponder`] on that shared port answering for the names the connection gave
//! its host candidates.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use crate::ice::{Candidate, CandidateAddress};
use crate::mdns::{GROUP_V4, MdnsConfig, MdnsEvent, MdnsResolver, MdnsResponder};
use crate::{Protocol, Received};

/// Candidates waiting for their names at most; more are dropped (and reported).
const MAX_WAITING: usize = 64;

/// What became of `.local` candidates: each candidate given to
/// [`Resolver::resolve`] is counted in exactly one outcome.
#[derive(Debug)]
pub(super) enum Outcome {
    /// One candidate resolved: it with an IP address, one per address family the name
    /// had (the first address of each), and the generation it was given with.
    Resolved(Vec<Candidate>, u64),
    /// The name had no answer (or could not be asked): its candidates are dropped.
    Unresolved {
        /// The name.
        name: String,
        /// How many candidates had it.
        candidates: usize,
    },
}

/// A running resolver: candidates go in, outcomes come out through the callback. Dropping
/// it stops the task.
#[derive(Debug)]
pub(super) struct Resolver {
    tx: mpsc::UnboundedSender<(Candidate, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolver {
    /// Starts the task on `runtime`; `deliver` gets each outcome.
    pub(super) fn start(
        runtime: &tokio::runtime::Handle,
        config: MdnsConfig,
        deliver: impl FnMut(Outcome) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = runtime.spawn(run(config, rx, deliver));
        Self { tx, task }
    }

    /// Resolves `c`'s name; `generation` comes back with the outcome (the connection's
    /// ICE generation, so that an answer after a restart is not used).
    pub(super) fn resolve(&self, c: Candidate, generation: u64) {
        let _ = self.tx.send((c, generation));
    }
}

fn bind(v4: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let (domain, addr) = if v4 {
        (Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
    } else {
        (Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
    };
    let s = Socket::new(domain, Type::DGRAM, None)?;
    if v4 {
        // RFC 6762 §11: sent with TTL 255.
        s.set_multicast_ttl_v4(255)?;
        s.set_multicast_loop_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_multicast_hops_v6(255)?;
        s.set_multicast_loop_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// 0.0.0.0:5353, shared, joined to 224.0.0.251 on every up IPv4 interface (RFC 6762 §3),
/// sending with TTL 255 (§11).
fn bind_group_v4() -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuse_port(true)?;
    s.set_multicast_ttl_v4(255)?;
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, crate::mdns::MDNS_PORT)).into())?;
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let mut joined = 0;
    for a in super::interfaces::list().unwrap_or_default() {
        if let (IpAddr::V4(ip), true) = (a.ip, a.up) {
            if ip.is_loopback() {
                continue;
            }
            match s.join_multicast_v4(&group, &ip) {
                Ok(()) => joined += 1,
                Err(e) => debug!(%ip, error = %e, "mDNS group not joined on this address"),
            }
        }
    }
    if joined == 0 {
        s.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
    }
    UdpSocket::from_std(s.into())
}

async fn recv(s: &Option<UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match s {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn run(
    config: MdnsConfig,
    mut rx: mpsc::UnboundedReceiver<(Candidate, u64)>,
    mut deliver: impl FnMut(Outcome) + Send + 'static,
) {
    let want4 = config.groups.iter().any(SocketAddr::is_ipv4);
    let want6 = config.groups.iter().any(SocketAddr::is_ipv6);
    let want_group = config.groups.contains(&GROUP_V4);
    let open = |want: bool, v4: bool| {
        if !want {
            return None;
        }
        bind(v4)
            .inspect_err(|e| debug!(error = %e, v4, "no mDNS socket for this family"))
            .ok()
    };
    // The sockets are open only while names are being resolved (the group's port hears
    // every mDNS message on the link).
    let (mut s4, mut s6, mut group): (Option<UdpSocket>, Option<UdpSocket>, Option<UdpSocket>) =
        (None, None, None);
    let mut bufg = vec![0u8; crate::mdns::MAX_MESSAGE_LEN];
    let mut resolver = MdnsResolver::new(config);
    let mut waiting: HashMap<String, Vec<(Candidate, u64)>> = HashMap::new();
    let mut buf4 = vec![0u8; crate::mdns::MAX_MESSAGE_LEN];
    let mut buf6 = vec![0u8; crate::mdns::MAX_MESSAGE_LEN];
    let mut open_rx = true;
    loop {
        let now = Instant::now();
        while let Some(t) = resolver.poll_transmit() {
            let s = if t.destination.is_ipv4() { &s4 } else { &s6 };
            let Some(s) = s else { continue };
            if let Err(e) = s.send_to(&t.contents, t.destination).await {
                debug!(to = %t.destination, error = %e, "mDNS question not sent");
            }
        }
        while let Some(ev) = resolver.poll_event() {
            match ev {
                MdnsEvent::Resolved { name, addrs } => {
                    // The first address of each family: one candidate each.
                    let v4 = addrs.iter().find(|a| a.is_ipv4());
                    let v6 = addrs.iter().find(|a| a.is_ipv6());
                    for (c, generation) in waiting.remove(&name).unwrap_or_default() {
                        let each = v4.iter().chain(v6.iter()).map(|ip| {
                            let mut c = c.clone();
                            c.address = CandidateAddress::Ip(**ip);
                            c
                        });
                        deliver(Outcome::Resolved(each.collect(), generation));
                    }
                }
                MdnsEvent::Unresolved { name } => {
                    let candidates = waiting.remove(&name).map_or(0, |w| w.len());
                    deliver(Outcome::Unresolved { name, candidates });
                }
            }
        }
        if waiting.is_empty() {
            if !open_rx {
                return;
            }
            (s4, s6, group) = (None, None, None);
        }
        let deadline = resolver.poll_timeout();
        let step = tokio::select! {
            c = rx.recv(), if open_rx => Step::Candidate(c),
            r = recv(&s4, &mut buf4) => Step::V4(r),
            r = recv(&s6, &mut buf6) => Step::V6(r),
            r = recv(&group, &mut bufg) => Step::Group(r),
            () = sleep_until(deadline) => Step::Timeout,
        };
        match step {
            Step::Candidate(None) => open_rx = false,
            Step::Candidate(Some((c, generation))) => {
                let name = c.address.to_string();
                if waiting.is_empty() {
                    s4 = open(want4, true);
                    s6 = open(want6, false);
                    // Answers sent to the group (Chromium's responder sends every
                    // answer there).
                    group = want_group
                        .then(|| {
                            bind_group_v4()
                                .inspect_err(
                                    |e| debug!(error = %e, "not listening on the mDNS group"),
                                )
                                .ok()
                        })
                        .flatten();
                }
                if waiting.values().map(Vec::len).sum::<usize>() >= MAX_WAITING {
                    debug!(%name, "too many mDNS candidates waiting: dropped");
                    deliver(Outcome::Unresolved {
                        name,
                        candidates: 1,
                    });
                    continue;
                }
                match resolver.resolve(now, &name) {
                    Ok(()) => waiting.entry(name).or_default().push((c, generation)),
                    Err(e) => {
                        debug!(%name, error = %e, "mDNS candidate dropped");
                        deliver(Outcome::Unresolved {
                            name,
                            candidates: 1,
                        });
                    }
                }
            }
            Step::V4(r) => input(&mut resolver, &s4, &buf4, r),
            Step::V6(r) => input(&mut resolver, &s6, &buf6, r),
            Step::Group(r) => input(&mut resolver, &group, &bufg, r),
            Step::Timeout => resolver.handle_timeout(Instant::now()),
        }
    }
}

enum Step {
    Candidate(Option<(Candidate, u64)>),
    V4(std::io::Result<(usize, SocketAddr)>),
    V6(std::io::Result<(usize, SocketAddr)>),
    Group(std::io::Result<(usize, SocketAddr)>),
    Timeout,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn input(
    resolver: &mut MdnsResolver,
    s: &Option<UdpSocket>,
    buf: &[u8],
    r: std::io::Result<(usize, SocketAddr)>,
) {
    match r {
        Ok((n, source)) => {
            let destination = s
                .as_ref()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or(SocketAddr::from((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)));
            resolver.handle_input(
                Instant::now(),
                Received {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents: &buf[..n],
                },
            );
        }
        Err(e) => debug!(error = %e, "mDNS receive failed"),
    }
}

/// The responder for the names of a connection's own host candidates. Dropping it stops
/// the task.
#[derive(Debug)]
pub(super) struct Publisher {
    tx: mpsc::UnboundedSender<(String, IpAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Binds the shared group port (an error when it cannot) and starts answering.
    pub(super) fn start(runtime: &tokio::runtime::Handle) -> std::io::Result<Self> {
        let socket = {
            let _guard = runtime.enter();
            bind_group_v4()?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = runtime.spawn(publish(socket, rx));
        Ok(Self { tx, task })
    }

    /// Answers for `name` with `ip` from now on.
    pub(super) fn publish(&self, name: String, ip: IpAddr) {
        let _ = self.tx.send((name, ip));
    }
}

async fn publish(socket: UdpSocket, mut rx: mpsc::UnboundedReceiver<(String, IpAddr)>) {
    let mut responder = MdnsResponder::new();
    // Unicast answers only to sources on our links (RFC 6762 §11).
    responder.set_local_networks(super::interfaces::networks());
    let mut names: Vec<(String, Vec<IpAddr>)> = Vec::new();
    let mut buf = vec![0u8; crate::mdns::MAX_MESSAGE_LEN];
    let here = socket.local_addr().unwrap_or(SocketAddr::from((
        Ipv4Addr::UNSPECIFIED,
        crate::mdns::MDNS_PORT,
    )));
    let mut open_rx = true;
    loop {
        tokio::select! {
            n = rx.recv(), if open_rx => {
                let Some((name, ip)) = n else {
                    open_rx = false;
                    continue;
                };
                let i = match names.iter().position(|(n, _)| *n == name) {
                    Some(i) => i,
                    None => {
                        names.push((name, Vec::new()));
                        names.len() - 1
                    }
                };
                if !names[i].1.contains(&ip) {
                    names[i].1.push(ip);
                }
                if let Err(e) = responder.publish(&names[i].0, &names[i].1) {
                    debug!(error = %e, "mDNS name not published");
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, source) = match r {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(error = %e, "mDNS receive failed");
                        continue;
                    }
                };
                responder.handle_input(
                    Instant::now(),
                    Received { proto: Protocol::Udp, source, destination: here, contents: &buf[..n] },
                );
                while let Some(t) = responder.poll_transmit() {
                    if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                        debug!(to = %t.destination, error = %e, "mDNS answer not sent");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::driver::peer::{PeerConnection, PeerConnectionEvent};
    use crate::ice::CandidateKind;
    use crate::mdns::MdnsResponder;
    use crate::peer::PeerConfig;

    /// A peer whose only candidate is an mDNS name reaches the agent through the
    /// resolver (a responder on loopback: no multicast leaves the host), and a name
    /// without an answer is dropped and reported while the connection goes on; the
    /// peer's end of candidates, given at once, waits for the names (regression: the
    /// agent, with no candidate yet, failed at once).
    #[test]
    fn local_candidates_are_resolved_before_the_agent_sees_them() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let responder_socket = UdpSocket::bind(lo).await.unwrap();
            let responder_addr = responder_socket.local_addr().unwrap();
            let mut a = PeerConnection::start(PeerConfig::default(), lo, true)
                .await
                .unwrap();
            let mut config = MdnsConfig::with_groups(vec![responder_addr]);
            config.timeout = Duration::from_millis(600);
            a.set_mdns_config(config);
            let mut b = PeerConnection::start(PeerConfig::default(), lo, false)
                .await
                .unwrap();
            // b's host candidate, as a browser would signal it.
            let name = "0b1c2d3e-4f50-4a7b-8c9d-7e1c2f0a3b4d.local";
            let mut host = loop {
                match tokio::time::timeout(Duration::from_secs(5), b.next_event())
                    .await
                    .expect("b gathers")
                    .expect("b runs")
                {
                    PeerConnectionEvent::Candidate(c) => break c,
                    _ => continue,
                }
            };
            assert_eq!(host.kind, CandidateKind::Host);
            let real = host.socket_addr().unwrap();
            host.address = CandidateAddress::Name(name.into());

            let queries = Arc::new(AtomicUsize::new(0));
            let seen = queries.clone();
            let mut responder = MdnsResponder::new();
            responder.publish(name, &[real.ip()]).unwrap();
            let serve = tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                loop {
                    let (n, from) = responder_socket.recv_from(&mut buf).await.unwrap();
                    seen.fetch_add(1, Ordering::Relaxed);
                    responder.handle_input(
                        Instant::now(),
                        Received {
                            proto: Protocol::Udp,
                            source: from,
                            destination: responder_addr,
                            contents: &buf[..n],
                        },
                    );
                    while let Some(t) = responder.poll_transmit() {
                        responder_socket
                            .send_to(&t.contents, t.destination)
                            .await
                            .unwrap();
                    }
                }
            });

            // Only a checks (b has no candidate of a's): the pair a selects can only be
            // built on the resolved candidate.
            a.set_remote_credentials(b.local_credentials().clone());
            b.set_remote_credentials(a.local_credentials().clone());
            let mut dead = host.clone();
            dead.address = CandidateAddress::Name("dead-beef.local".into());
            dead.port = 9;
            a.add_remote_candidate(dead);
            a.add_remote_candidate(host);
            // At once, as a description ends: the agent must not conclude from it that
            // every pair failed while the names are still being resolved.
            a.end_of_remote_candidates();

            let mut selected = None;
            let mut unresolved = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), async {
                while selected.is_none() || unresolved.is_empty() {
                    tokio::select! {
                        ev = a.next_event() => match ev.expect("a runs") {
                            PeerConnectionEvent::SelectedPair { remote, nominated: true, .. } => {
                                selected = Some(remote);
                            }
                            PeerConnectionEvent::CandidateUnresolved(n) => unresolved.push(n),
                            PeerConnectionEvent::State(s) => {
                                assert_ne!(s, crate::ice::IceState::Failed, "a failed early");
                            }
                            _ => {}
                        },
                        ev = b.next_event() => { ev.expect("b runs"); }
                    }
                }
            })
            .await
            .expect("a connects and gives up the dead name, within 10 s");
            let remote = selected.unwrap();
            assert_eq!(remote.socket_addr(), Some(real));
            assert_eq!(remote.kind, CandidateKind::Host);
            assert_eq!(unresolved, ["dead-beef.local"]);
            // Each name asked (A and AAAA), no more than the schedule allows.
            let n = queries.load(Ordering::Relaxed);
            assert!((4..=12).contains(&n), "{n} queries");
            serve.abort();
        });
    }

    /// A name answered after an ICE restart belongs to the old session: its candidate
    /// is not added (else the agent would check, and here connect to, the peer of the
    /// session it left).
    #[test]
    fn a_name_resolved_after_a_restart_is_not_used() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let responder_socket = UdpSocket::bind(lo).await.unwrap();
            let responder_addr = responder_socket.local_addr().unwrap();
            let mut a = PeerConnection::start(PeerConfig::default(), lo, true)
                .await
                .unwrap();
            a.set_mdns_config(MdnsConfig::with_groups(vec![responder_addr]));
            let mut b = PeerConnection::start(PeerConfig::default(), lo, false)
                .await
                .unwrap();
            let mut host = loop {
                if let PeerConnectionEvent::Candidate(c) =
                    tokio::time::timeout(Duration::from_secs(5), b.next_event())
                        .await
                        .expect("b gathers")
                        .expect("b runs")
                {
                    break c;
                }
            };
            let name = "5a6b7c8d-1e2f-4a3b-9c4d-5e6f7a8b9c0d.local";
            let real = host.socket_addr().unwrap();
            host.address = CandidateAddress::Name(name.into());
            a.set_remote_credentials(b.local_credentials().clone());
            b.set_remote_credentials(a.local_credentials().clone());
            a.add_remote_candidate(host);

            // The question arrives; the restart happens; then the answer.
            let mut buf = [0u8; 1500];
            let (n, from) = tokio::time::timeout(
                Duration::from_secs(5),
                responder_socket.recv_from(&mut buf),
            )
            .await
            .expect("a asks")
            .unwrap();
            let mut responder = MdnsResponder::new();
            responder.publish(name, &[real.ip()]).unwrap();
            let fresh = a.restart();
            // The new session's credentials, both ways (the peer kept its own): only a
            // candidate is missing for a pair.
            a.set_remote_credentials(b.local_credentials().clone());
            b.set_remote_credentials(fresh);
            responder.handle_input(
                Instant::now(),
                Received {
                    proto: Protocol::Udp,
                    source: from,
                    destination: responder_addr,
                    contents: &buf[..n],
                },
            );
            let t = responder.poll_transmit().expect("an answer");
            responder_socket
                .send_to(&t.contents, t.destination)
                .await
                .unwrap();
            // A second or so: no pair, and the answer was consumed (nothing pending).
            let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
                loop {
                    tokio::select! {
                        ev = a.next_event() => {
                            if let PeerConnectionEvent::SelectedPair { remote, .. } = ev.expect("a runs") {
                                return remote;
                            }
                        }
                        ev = b.next_event() => { ev.expect("b runs"); }
                    }
                }
            })
            .await;
            assert!(quiet.is_err(), "a used the old session's candidate: {quiet:?}");
            assert_eq!(a.mdns_wait.lock().unwrap().pending, 0);
        });
    }
}
