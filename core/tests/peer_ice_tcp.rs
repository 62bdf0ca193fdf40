//! ICE-TCP (RFC 6544) on the tokio driver, over loopback only: two peer connections with
//! `ice_tcp` on, the candidates they exchange filtered by the test (so that UDP cannot be
//! tried where the test wants TCP), the selected pair's transport, and data both ways.

use std::net::SocketAddr;
use std::time::Duration;

use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};
use pinhole::ice::{Candidate, CandidateTransport, IceState, TcpType};
use pinhole::peer::PeerConfig;

const WAIT: Duration = Duration::from_secs(15);

/// Logs with `RUST_LOG` (e.g. `RUST_LOG=pinhole=debug`).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn lo() -> SocketAddr {
    logs();
    "127.0.0.1:0".parse().unwrap()
}

fn config() -> PeerConfig {
    let mut c = PeerConfig::default();
    c.ice_tcp = true;
    c
}

/// Both sides' nominated pairs (local, remote), and `a`'s candidates.
struct Connected {
    a: (Candidate, Candidate),
    b: (Candidate, Candidate),
    a_candidates: Vec<Candidate>,
}

/// Connects `a` (controlling) and `b`, passing each candidate that `keep` keeps.
async fn connect(
    a: &mut PeerConnection,
    b: &mut PeerConnection,
    keep: impl Fn(&Candidate) -> bool,
) -> Connected {
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());
    let mut nominated: [Option<(Candidate, Candidate)>; 2] = [None, None];
    let mut a_candidates = Vec::new();
    tokio::time::timeout(WAIT, async {
        while nominated.iter().any(Option::is_none) {
            let (i, ev) = tokio::select! {
                ev = a.next_event() => (0, ev.expect("a's task ended")),
                ev = b.next_event() => (1, ev.expect("b's task ended")),
            };
            let other = if i == 0 { &*b } else { &*a };
            match ev {
                PeerConnectionEvent::Candidate(c) => {
                    if i == 0 {
                        a_candidates.push(c.clone());
                    }
                    if keep(&c) {
                        other.add_remote_candidate(c);
                    }
                }
                PeerConnectionEvent::GatheringComplete => other.end_of_remote_candidates(),
                PeerConnectionEvent::SelectedPair {
                    local,
                    remote,
                    nominated: true,
                    ..
                } => nominated[i] = Some((local, remote)),
                PeerConnectionEvent::State(IceState::Failed) => panic!("side {i} failed"),
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    let [a_pair, b_pair] = nominated.map(Option::unwrap);
    Connected {
        a: a_pair,
        b: b_pair,
        a_candidates,
    }
}

/// `n` datagrams of different sizes from `from` reach `to`, each whole, none lost (on
/// TCP nothing is; the first one is sent until it arrives, in case the pair was selected
/// on one side before the other). Their order is not asserted: a renomination that moves
/// the path to another TCP connection while some wait on the old one may reorder them,
/// as datagrams may be.
async fn one_way(from: &PeerConnection, to: &mut PeerConnection, n: usize) {
    let mut buf = vec![0u8; 65_536];
    tokio::time::timeout(WAIT, async {
        loop {
            from.send(b"first").await;
            let got =
                tokio::time::timeout(Duration::from_millis(200), to.recv_from(&mut buf)).await;
            if let Ok(Some((len, _))) = got {
                assert_eq!(&buf[..len], b"first");
                break;
            }
        }
        let len_of = |i: usize| 1 + (i * 97) % 1200;
        for i in 0..n {
            let msg: Vec<u8> = std::iter::repeat_n(i as u8, len_of(i)).collect();
            from.send(&msg).await;
        }
        let mut seen = vec![false; n];
        let mut left = n;
        while left > 0 {
            let (len, _) = to.recv_from(&mut buf).await.expect("the task runs");
            if &buf[..len] == b"first" {
                continue;
            }
            // Sizes identify the datagrams within 256 of each other; the contents say which.
            let i = (0..n)
                .find(|i| !seen[*i] && len_of(*i) == len && buf[0] == *i as u8)
                .unwrap_or_else(|| panic!("an unexpected datagram of {len} bytes"));
            assert!(
                buf[..len].iter().all(|b| *b == i as u8),
                "datagram {i} whole"
            );
            seen[i] = true;
            left -= 1;
        }
    })
    .await
    .expect("data in time");
}

fn is_tcp(c: &Candidate) -> bool {
    c.transport == CandidateTransport::Tcp
}

/// Only TCP candidates exchanged (as when UDP is blocked): the peers connect on a TCP
/// pair and carry data both ways, in order; the largest frame (65 535 bytes) too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_candidates_alone_connect_and_carry_data() {
    let mut a = PeerConnection::start(config(), lo(), true).await.unwrap();
    let mut b = PeerConnection::start(config(), lo(), false).await.unwrap();
    let c = connect(&mut a, &mut b, is_tcp).await;
    for (l, r) in [&c.a, &c.b] {
        assert!(is_tcp(l) && is_tcp(r), "a TCP pair: {l} / {r}");
    }
    // Passive, active and so host candidates were offered, none on the UDP port.
    let tcp: Vec<_> = c.a_candidates.iter().filter(|c| is_tcp(c)).collect();
    for t in [TcpType::Passive, TcpType::Active, TcpType::SimultaneousOpen] {
        assert!(tcp.iter().any(|c| c.tcp_type == Some(t)), "{t:?}: {tcp:?}");
    }
    assert!(tcp.iter().all(|c| c.port != a.local_addr().port()));
    one_way(&a, &mut b, 200).await;
    one_way(&b, &mut a, 200).await;
    let big = vec![0x5A; 65_535];
    a.send(&big).await;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(WAIT, b.recv_from(&mut buf))
        .await
        .expect("in time")
        .expect("the task runs");
    assert_eq!(&buf[..n], &big[..]);
}

/// Simultaneous-open candidates alone: the so ports connect to each other (on one host
/// the so port's listening socket accepts the other side's connection) and carry data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_open_candidates_alone_connect() {
    let mut a = PeerConnection::start(config(), lo(), true).await.unwrap();
    let mut b = PeerConnection::start(config(), lo(), false).await.unwrap();
    let so = |c: &Candidate| is_tcp(c) && c.tcp_type == Some(TcpType::SimultaneousOpen);
    let c = connect(&mut a, &mut b, so).await;
    for (l, r) in [&c.a, &c.b] {
        assert!(so(l) && so(r), "an so pair: {l} / {r}");
    }
    one_way(&a, &mut b, 50).await;
    one_way(&b, &mut a, 50).await;
}

/// Active and passive candidates alone: one side connects to the other's listening
/// socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_and_passive_candidates_alone_connect() {
    let mut a = PeerConnection::start(config(), lo(), true).await.unwrap();
    let mut b = PeerConnection::start(config(), lo(), false).await.unwrap();
    let ap =
        |c: &Candidate| is_tcp(c) && matches!(c.tcp_type, Some(TcpType::Active | TcpType::Passive));
    let c = connect(&mut a, &mut b, ap).await;
    for (l, r) in [&c.a, &c.b] {
        assert!(ap(l) && ap(r), "an active/passive pair: {l} / {r}");
    }
    one_way(&a, &mut b, 50).await;
    one_way(&b, &mut a, 50).await;
}

/// With UDP and TCP candidates both, UDP is selected (TCP ranks below it, RFC 6544
/// §4.2) and data flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_and_tcp_udp_is_selected() {
    let mut a = PeerConnection::start(config(), lo(), true).await.unwrap();
    let mut b = PeerConnection::start(config(), lo(), false).await.unwrap();
    let c = connect(&mut a, &mut b, |_| true).await;
    assert!(c.a_candidates.iter().any(is_tcp), "TCP candidates offered");
    for (l, r) in [&c.a, &c.b] {
        assert!(!is_tcp(l) && !is_tcp(r), "a UDP pair: {l} / {r}");
    }
    one_way(&a, &mut b, 20).await;
    one_way(&b, &mut a, 20).await;
}

/// Closing the connection closes its TCP sockets: the listening ports can be bound
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frees_the_tcp_ports() {
    let mut a = PeerConnection::start(config(), lo(), true).await.unwrap();
    let mut b = PeerConnection::start(config(), lo(), false).await.unwrap();
    let c = connect(&mut a, &mut b, is_tcp).await;
    one_way(&a, &mut b, 1).await;
    let ports: Vec<SocketAddr> = c
        .a_candidates
        .iter()
        .filter(|c| is_tcp(c) && c.tcp_type != Some(TcpType::Active))
        .filter_map(Candidate::socket_addr)
        .collect();
    assert!(!ports.is_empty());
    for p in &ports {
        assert!(
            std::net::TcpListener::bind(p).is_err(),
            "{p} is a's while open"
        );
    }
    a.close().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while ports
            .iter()
            .any(|p| std::net::TcpListener::bind(p).is_err())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a's TCP ports freed after close()");
}
