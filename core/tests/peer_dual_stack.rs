//! A peer connection on one dual-stack socket (bound to `[::]`): a host candidate of each
//! family, and it meets a peer of either family. Loopback only (127.0.0.1 and ::1).

use std::net::SocketAddr;
use std::time::Duration;

use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};
use pinhole::ice::{CandidateKind, IceState};
use pinhole::peer::PeerConfig;

const WAIT: Duration = Duration::from_secs(10);

/// Connects `a` (controlling) and `b`, trickling candidates; `a`'s host candidates and
/// both sides' nominated pairs' local addresses.
async fn connect(
    a: &mut PeerConnection,
    b: &mut PeerConnection,
) -> (Vec<SocketAddr>, [SocketAddr; 2]) {
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());
    let mut hosts = Vec::new();
    let mut nominated = [None, None];
    tokio::time::timeout(WAIT, async {
        while nominated.iter().any(Option::is_none) {
            let (i, ev) = tokio::select! {
                ev = a.next_event() => (0, ev.expect("a's task ended")),
                ev = b.next_event() => (1, ev.expect("b's task ended")),
            };
            let other = if i == 0 { &*b } else { &*a };
            match ev {
                PeerConnectionEvent::Candidate(c) => {
                    if i == 0 && c.kind == CandidateKind::Host {
                        hosts.push(c.socket_addr().unwrap());
                    }
                    other.add_remote_candidate(c);
                }
                PeerConnectionEvent::GatheringComplete => other.end_of_remote_candidates(),
                PeerConnectionEvent::SelectedPair {
                    local,
                    nominated: true,
                    ..
                } => nominated[i] = local.socket_addr(),
                PeerConnectionEvent::State(IceState::Failed) => panic!("side {i} failed"),
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    (hosts, nominated.map(Option::unwrap))
}

async fn one_way(from: &PeerConnection, to: &mut PeerConnection) {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(WAIT, async {
        loop {
            from.send(b"hello over one socket").await;
            let got =
                tokio::time::timeout(Duration::from_millis(200), to.recv_from(&mut buf)).await;
            if let Ok(Some((n, _))) = got {
                assert_eq!(&buf[..n], b"hello over one socket");
                return;
            }
        }
    })
    .await
    .expect("data in time");
}

async fn exchange(a: &mut PeerConnection, b: &mut PeerConnection) {
    one_way(a, b).await;
    one_way(b, a).await;
}

#[tokio::test]
async fn one_dual_stack_socket_meets_ipv6_and_ipv4_peers() {
    let dual: SocketAddr = "[::]:0".parse().unwrap();
    for other in ["[::1]:0", "127.0.0.1:0"] {
        let other: SocketAddr = other.parse().unwrap();
        let mut a = PeerConnection::start(PeerConfig::default(), dual, true)
            .await
            .unwrap();
        let mut b = PeerConnection::start(PeerConfig::default(), other, false)
            .await
            .unwrap();
        let (hosts, [la, lb]) = connect(&mut a, &mut b).await;
        let port = hosts[0].port();
        assert_eq!(
            hosts,
            [
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port)
            ],
            "a host candidate of each family on one socket, IPv4 first"
        );
        // The pair of the other side's family, from the dual-stack socket's base of it.
        assert_eq!(la.is_ipv6(), other.is_ipv6(), "{la}");
        assert_eq!(lb.is_ipv6(), other.is_ipv6(), "{lb}");
        exchange(&mut a, &mut b).await;
    }
}
