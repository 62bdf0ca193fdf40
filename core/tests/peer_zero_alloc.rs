//! `PeerConnection`'s data path on loopback: two connections meet directly (host
//! candidates, no servers), then datagrams go both ways with no heap allocation at all on
//! the thread that runs both connections and their tasks (a current-thread runtime); data
//! that arrives while the application is not receiving is kept for it, in order; the
//! `Vec` API and short buffers still work; consent is answered whether the application
//! waits in a receive, is between receives, or has stopped receiving. Through the
//! development TURN server (on a thread of its own, not counted) the relayed path allocates
//! nothing either.
//!
//! A counting global allocator (`common`) wraps the system one.
#![cfg(feature = "driver")]

use std::net::SocketAddr;
use std::time::Duration;

use pinhole::driver::peer::{IncomingInto, PeerConnection, PeerConnectionEvent};
use pinhole::peer::{PeerConfig, TurnServerSpec};
use pinhole::turn::{Credentials, TurnServerConfig};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Two connections on 127.0.0.1, signalled to each other in-process, until both have a
/// nominated pair. No consent check falls in a short test (their interval is long), so
/// that only data crosses the socket once connected.
async fn connected_pair() -> (PeerConnection, PeerConnection) {
    connected_pair_with(Duration::from_secs(120), Duration::from_secs(600)).await
}

async fn connected_pair_with(
    consent_interval: Duration,
    consent_timeout: Duration,
) -> (PeerConnection, PeerConnection) {
    let mut config = PeerConfig::default();
    config.ice.consent_interval = consent_interval;
    config.ice.consent_timeout = consent_timeout;
    connect(config.clone(), config).await
}

/// `a` (controlling) with `config_a` and `b` with `config_b`, signalled in-process until
/// both have a nominated pair.
async fn connect(config_a: PeerConfig, config_b: PeerConfig) -> (PeerConnection, PeerConnection) {
    let (a, b, _) = connect_relayed(config_a, config_b).await;
    (a, b)
}

/// [`connect`], and the address `b` sees `a` at: `a`'s local candidate in its nominated
/// pair.
async fn connect_relayed(
    config_a: PeerConfig,
    config_b: PeerConfig,
) -> (PeerConnection, PeerConnection, SocketAddr) {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut a = PeerConnection::start(config_a, lo, true).await.unwrap();
    let mut b = PeerConnection::start(config_b, lo, false).await.unwrap();
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());
    let mut nominated = [false, false];
    let mut a_as = None;
    tokio::time::timeout(WAIT, async {
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
                    nominated: true,
                    local,
                    ..
                } => {
                    nominated[i] = true;
                    if i == 0 {
                        a_as = local.socket_addr();
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    (
        a,
        b,
        a_as.expect("a's nominated local candidate has an address"),
    )
}

/// One datagram each way: `a` sends `n` in the first bytes, `b` echoes what it got. `b`
/// sees `a` as `a_as` (`a`'s socket on a direct pair, its relayed address through a relay).
async fn round_trip(
    a: &mut PeerConnection,
    b: &mut PeerConnection,
    a_as: SocketAddr,
    n: u32,
    out: &mut [u8],
    buf: &mut [u8],
) {
    out[..4].copy_from_slice(&n.to_be_bytes());
    a.send(&*out).await;
    let (len, from) = b.recv_from(buf).await.expect("b receives");
    assert_eq!(len, out.len());
    assert_eq!(from, a_as);
    assert_eq!(buf[..4], n.to_be_bytes());
    b.send(&buf[..len]).await;
    let (len, from) = a.recv_from(buf).await.expect("a receives");
    assert_eq!(len, out.len());
    assert_eq!(from, b.local_addr());
    assert_eq!(buf[..4], n.to_be_bytes());
}

#[test]
fn direct_datagrams_do_not_allocate() {
    runtime().block_on(async {
        let (a, b) = connected_pair().await;
        let a_as = a.local_addr();
        assert_no_allocations(a, b, a_as, 10_000).await;
    });
}

/// Warms up, then asserts that `measured` round trips allocate nothing on this thread.
async fn assert_no_allocations(
    mut a: PeerConnection,
    mut b: PeerConnection,
    a_as: SocketAddr,
    measured: u32,
) {
    const WARM_UP: u32 = 1_000;
    {
        let mut out = vec![0x5au8; 1200];
        let mut buf = vec![0u8; 65_536];
        // Warm up: the checks' last answers, the runtime's lazily grown structures.
        tokio::time::timeout(WAIT, async {
            for n in 0..WARM_UP {
                round_trip(&mut a, &mut b, a_as, n, &mut out, &mut buf).await;
            }
        })
        .await
        .expect("warm-up in time");

        // The counter sees an allocation on this thread.
        let (n, v) = common::allocations_during(|| std::hint::black_box(vec![1u8; 16]));
        assert!(n >= 1, "the counting allocator missed an allocation");
        drop(v);

        // Everything runs on this thread: both applications, both tasks, the reactor.
        let timer = tokio::time::sleep(WAIT);
        tokio::pin!(timer);
        let before = common::start_counting();
        let finished = tokio::select! {
            () = async {
                for n in 0..measured {
                    round_trip(&mut a, &mut b, a_as, n, &mut out, &mut buf).await;
                }
            } => true,
            () = &mut timer => false,
        };
        let allocations = common::stop_counting() - before;
        assert!(
            finished,
            "{measured} round trips did not finish in {WAIT:?}"
        );
        assert_eq!(
            allocations,
            0,
            "{allocations} heap allocations for {} datagrams",
            2 * measured
        );
    }
}

/// The development TURN server on 127.0.0.1 (loopback peers allowed), on a thread and
/// runtime of its own: its allocations are not counted.
struct DevTurn {
    addr: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DevTurn {
    fn start() -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut config = TurnServerConfig::new("127.0.0.1:0".parse().unwrap(), "test", 0);
                config.credentials.users.insert("u".into(), "p".into());
                config.peers = pinhole::turn::PeerPolicy::with_loopback();
                let handle = pinhole::driver::serve_turn(config).await.unwrap();
                addr_tx.send(handle.local_addrs()[0]).unwrap();
                // Bounded: a test lasts less than this.
                for _ in 0..600 {
                    if stop_rx.try_recv().is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        });
        let addr = addr_rx.recv_timeout(WAIT).expect("TURN server up");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for DevTurn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn relayed_datagrams_do_not_allocate() {
    let turn = DevTurn::start();
    runtime().block_on(async {
        let mut config = PeerConfig::default();
        config.ice.consent_interval = Duration::from_secs(120);
        config.ice.consent_timeout = Duration::from_secs(600);
        let mut relayed = config.clone();
        relayed.relay_only = true;
        relayed.turn_servers = vec![TurnServerSpec::new(
            turn.addr,
            Credentials::long_term("u", "p"),
        )];
        let (a, b, a_relayed) = connect_relayed(relayed, config).await;
        assert_no_allocations(a, b, a_relayed, 2_000).await;
    });
}

#[test]
fn data_read_while_not_receiving_waits_in_order() {
    runtime().block_on(async {
        let (a, mut b) = connected_pair().await;
        // `b` is not receiving: its task reads these into its queue.
        for n in 0u8..5 {
            a.send([n; 100]).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 4096];
        for n in 0u8..5 {
            let (len, from) = tokio::time::timeout(WAIT, b.recv_from(&mut buf))
                .await
                .expect("in time")
                .expect("b receives");
            assert_eq!((len, from), (100, a.local_addr()));
            assert!(buf[..len].iter().all(|x| *x == n), "datagram {n} in order");
        }
        // A receive dropped while waiting hands reading back to the task.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), b.recv_from(&mut buf))
                .await
                .is_err()
        );
        a.send(b"after").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (len, _) = tokio::time::timeout(WAIT, b.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("b receives");
        assert_eq!(&buf[..len], b"after");
    });
}

#[test]
fn the_vec_api_and_short_buffers_still_work() {
    runtime().block_on(async {
        let (mut a, mut b) = connected_pair().await;
        a.send(b"ping".to_vec()).await;
        let got = tokio::time::timeout(WAIT, b.recv()).await.expect("in time");
        assert_eq!(got.as_deref(), Some(&b"ping"[..]));
        b.send(vec![9u8; 3000]).await;
        // A short buffer gets the start of the datagram, as from a UDP socket.
        let mut short = [0u8; 10];
        let (len, _) = tokio::time::timeout(WAIT, a.recv_from(&mut short))
            .await
            .expect("in time")
            .expect("a receives");
        assert_eq!((len, short), (10, [9u8; 10]));
        b.send(b"").await;
        let mut buf = [0u8; 4096];
        let got = tokio::time::timeout(WAIT, a.next_into(&mut buf))
            .await
            .expect("in time");
        assert!(
            matches!(got, Some(IncomingInto::Data { len: 0, .. })),
            "{got:?}"
        );
    });
}

/// Whoever reads `b`'s socket (its application inside a receive, or its task once the
/// application has not received for a while) answers `a`'s consent checks: `a` keeps
/// its pair through several consent timeouts.
#[test]
fn consent_is_answered_whoever_reads() {
    runtime().block_on(async {
        let timeout = Duration::from_millis(400);
        let (mut a, mut b) = connected_pair_with(Duration::from_millis(40), timeout).await;
        let mut buf = [0u8; 4096];
        // `a` reports its events meanwhile; a lost consent would be a state change.
        let watch = async |a: &mut PeerConnection, for_: Duration| {
            let end = tokio::time::Instant::now() + for_;
            while let Ok(ev) = tokio::time::timeout_at(end, a.next_event()).await {
                if let Some(PeerConnectionEvent::State(s)) = ev {
                    panic!("a's state changed to {s:?}");
                }
            }
        };
        // 1. `b`'s application waits in a receive throughout.
        let waiting = tokio::time::timeout(3 * timeout, b.recv_from(&mut buf));
        let (r, ()) = tokio::join!(waiting, watch(&mut a, 3 * timeout));
        assert!(r.is_err(), "nothing was sent");
        // 2. `b` receives once, then not at all: its task takes the socket over.
        a.send(b"one").await;
        let (len, _) = tokio::time::timeout(WAIT, b.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("b receives");
        assert_eq!(&buf[..len], b"one");
        watch(&mut a, 3 * timeout).await;
        // Still connected both ways.
        a.send(b"two").await;
        let (len, _) = tokio::time::timeout(WAIT, b.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("b receives");
        assert_eq!(&buf[..len], b"two");
        b.send(b"three").await;
        let (len, _) = tokio::time::timeout(WAIT, a.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("a receives");
        assert_eq!(&buf[..len], b"three");
    });
}
