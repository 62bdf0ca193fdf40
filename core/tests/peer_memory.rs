//! Memory per idle connected agent, with many agents in one process.
//!
//! - 1 000 pairs of sans-IO [`Peer`]s (2 000 agents) meet in-process: host candidates on
//!   distinct private addresses, datagrams handed straight to the destination's machine,
//!   on a virtual clock; then a minute of idle connection (consent checks every 5 s) and
//!   the heap bytes they hold are counted (the counting allocator's live bytes), plus each
//!   machine's own size.
//! - 100 pairs of [`PeerConnection`]s (the tokio driver, 200 sockets on 127.0.0.1) likewise,
//!   idle with the application waiting in a receive, as an application does: what the
//!   driver adds per connection besides the kernel's socket buffers (and besides the one
//!   64 KiB receive buffer per runtime thread that the connections' tasks share).
//!
//! Both assert an upper bound on the bytes (the target: 32 KiB per idle agent,
//! besides socket buffers) and print the figure.
//!
//! A counting global allocator (`common`) wraps the system one.
#![allow(clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use pinhole::Protocol;
use pinhole::Received;
use pinhole::ice::IceEvent;
use pinhole::peer::{Peer, PeerConfig, PeerEvent};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// The target for an idle connected agent.
const TARGET: usize = 32 * 1024;

/// Agent `i`'s address: 10.a.b.c with a distinct port per side, so that routing a datagram
/// needs no table (and allocates nothing).
fn addr(i: usize) -> SocketAddr {
    let n = i as u32 + 1;
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | n)),
        5000 + (i % 2) as u16,
    )
}

fn index(a: SocketAddr) -> Option<usize> {
    match a.ip() {
        IpAddr::V4(v4) => (u32::from(v4) & 0x00ff_ffff)
            .checked_sub(1)
            .map(|n| n as usize),
        IpAddr::V6(_) => None,
    }
}

/// Moves every datagram and signalling message once; returns how many agents have a
/// nominated pair now.
fn step(peers: &mut [Peer], now: Instant, nominated: &mut [bool]) {
    for i in 0..peers.len() {
        while let Some(ev) = peers[i].poll_event() {
            let other = i ^ 1;
            match ev {
                PeerEvent::Candidate(c) => peers[other].add_remote_candidate(now, c),
                PeerEvent::GatheringComplete => peers[other].end_of_remote_candidates(),
                PeerEvent::Ice(IceEvent::SelectedPair {
                    nominated: true, ..
                }) => nominated[i] = true,
                _ => {}
            }
        }
    }
    for i in 0..peers.len() {
        while let Some(t) = peers[i].poll_transmit() {
            let Some(j) = index(t.destination).filter(|j| *j < peers.len()) else {
                continue;
            };
            let rx = Received {
                proto: Protocol::Udp,
                source: t.source,
                destination: t.destination,
                contents: &t.contents,
            };
            let _ = peers[j].handle_input(now, rx);
        }
    }
    for p in peers.iter_mut() {
        if p.poll_timeout().is_some_and(|t| t <= now) {
            p.handle_timeout(now);
        }
    }
}

#[test]
fn two_thousand_idle_connected_peers_fit_the_target() {
    const AGENTS: usize = 2_000;
    let t0 = Instant::now();
    let mut peers: Vec<Peer> = Vec::with_capacity(AGENTS);
    let mut nominated = vec![false; AGENTS];
    let config = PeerConfig::default();

    let before = common::live_bytes();
    common::start_counting();
    for i in 0..AGENTS {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        peers.push(Peer::new(t0, config.clone(), addr(i), i % 2 == 0, seed));
    }
    for i in 0..AGENTS {
        let creds = peers[i ^ 1].local_credentials().clone();
        peers[i].set_remote_credentials(creds);
    }
    // Connect: bounded in virtual time (10 ms steps, 10 s).
    let mut now = t0;
    for _ in 0..1_000 {
        step(&mut peers, now, &mut nominated);
        if nominated.iter().all(|n| *n) {
            break;
        }
        now += Duration::from_millis(10);
    }
    let connected = nominated.iter().filter(|n| **n).count();
    // Idle for a minute: consent checks and their answers, nothing else.
    for _ in 0..600 {
        now += Duration::from_millis(100);
        step(&mut peers, now, &mut nominated);
    }
    let heap = common::live_bytes() - before;
    common::stop_counting();

    assert_eq!(connected, AGENTS, "every agent has a nominated pair");
    for p in &peers {
        assert!(
            p.agent().selected().is_some(),
            "still connected after idling"
        );
    }
    let heap = usize::try_from(heap).expect("bytes held");
    let per_agent = heap / AGENTS + std::mem::size_of::<Peer>();
    println!(
        "{AGENTS} idle connected sans-IO agents: {heap} heap bytes, {per_agent} bytes per agent \
         (of which the machine itself {} bytes)",
        std::mem::size_of::<Peer>()
    );
    assert!(
        per_agent <= TARGET,
        "{per_agent} bytes per idle connected agent, above the {TARGET}-byte target"
    );
}

#[cfg(feature = "driver")]
#[test]
fn idle_peer_connections_fit_the_target_besides_socket_buffers() {
    use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};

    const PAIRS: usize = 100;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut conns: Vec<PeerConnection> = Vec::with_capacity(2 * PAIRS);
        // The application's receive buffers: its own, not the connection's (not counted).
        let mut bufs: Vec<[u8; 2048]> = vec![[0u8; 2048]; 2 * PAIRS];
        let mut receivers = Vec::with_capacity(2 * PAIRS);
        // Warm the runtime (its timer wheel and I/O driver grow on first use) with one
        // pair that is not counted.
        let warm = connect_pair(lo).await;
        let before = common::live_bytes();
        common::start_counting();
        for _ in 0..PAIRS {
            let (a, b) = connect_pair(lo).await;
            conns.push(a);
            conns.push(b);
        }
        // Idle, the application waiting in a receive.
        let (conns_ref, bufs_ref) = (&mut conns, &mut bufs);
        for (c, b) in conns_ref.iter_mut().zip(bufs_ref.iter_mut()) {
            receivers.push(Box::pin(async move {
                let _ = c.recv_from(b).await;
            }));
        }
        let held_by_receivers = receivers.len() * std::mem::size_of_val(&*receivers[0]);
        let idle = async {
            for r in receivers.iter_mut() {
                let _ = futures_poll_once(r).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        idle.await;
        let heap = common::live_bytes() - before;
        common::stop_counting();
        // The application's receive futures are not the connection's.
        let heap = usize::try_from(heap).expect("bytes held") - held_by_receivers;
        let per = heap / (2 * PAIRS);
        println!(
            "{} idle PeerConnections: {heap} heap bytes, {per} bytes per connection \
             besides the kernel's socket buffers (the application's receive futures, \
             {} bytes each, not included)",
            2 * PAIRS,
            held_by_receivers / (2 * PAIRS),
        );
        drop(receivers);
        drop(warm);
        assert!(
            per <= TARGET,
            "{per} bytes per idle PeerConnection, above the {TARGET}-byte target"
        );
        let _ = PeerConnectionEvent::GatheringComplete;
    });
}

/// Polls a future once (so that a receive registers and waits), then leaves it pending.
#[cfg(feature = "driver")]
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[cfg(feature = "driver")]
async fn connect_pair(
    lo: SocketAddr,
) -> (
    pinhole::driver::peer::PeerConnection,
    pinhole::driver::peer::PeerConnection,
) {
    use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};
    let config = PeerConfig::default();
    let mut a = PeerConnection::start(config.clone(), lo, true)
        .await
        .unwrap();
    let mut b = PeerConnection::start(config, lo, false).await.unwrap();
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());
    let mut nominated = [false, false];
    tokio::time::timeout(Duration::from_secs(20), async {
        while nominated != [true, true] {
            let (i, ev) = tokio::select! {
                ev = a.next_event() => (0, ev.expect("a's task ended")),
                ev = b.next_event() => (1, ev.expect("b's task ended")),
            };
            let other = if i == 0 { &b } else { &a };
            match ev {
                PeerConnectionEvent::Candidate(c) => other.add_remote_candidate(c),
                PeerConnectionEvent::GatheringComplete => other.end_of_remote_candidates(),
                PeerConnectionEvent::SelectedPair {
                    nominated: true, ..
                } => nominated[i] = true,
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    (a, b)
}
