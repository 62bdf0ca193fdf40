//! The TURN driver's data plane ([`pinhole::driver::turn::TurnDataPlane`]) against the
//! development TURN server on loopback: data both ways through a channel and through
//! Send/Data indications, batches of more than one datagram, handing receiving back to the
//! handle, and no heap allocation on the steady-state data path.
//!
//! A counting global allocator (`common`) wraps the system one.
#![cfg(all(feature = "driver", feature = "server"))]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use pinhole::driver::turn::{
    Coalescing, DataPlaneError, RecvBatch, TurnClientConfig, TurnEvent, TurnHandle, allocate,
};
use pinhole::turn::{AllocationEvent, Credentials, TurnError, TurnServerConfig};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

const USER: &str = "alice";
const PASS: &str = "data-plane-secret";
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// The development TURN server on 127.0.0.1, on a thread (and runtime) of its own.
struct DevServer {
    addr: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DevServer {
    fn start() -> Self {
        Self::with_lifetime(None)
    }

    /// With this allocation lifetime as the default and shortest granted.
    fn with_lifetime(lifetime: Option<Duration>) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut config =
                    TurnServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "test", 0);
                config
                    .credentials
                    .users
                    .insert(USER.to_owned(), PASS.to_owned());
                // The peers are on loopback, which the server refuses by default.
                config.peers = pinhole::turn::PeerPolicy::with_loopback();
                if let Some(l) = lifetime {
                    config.default_lifetime = l;
                }
                let handle = pinhole::driver::serve_turn(config).await.unwrap();
                addr_tx.send(handle.local_addrs()[0]).unwrap();
                // Serve until told to stop (bounded: a test lasts less than this).
                for _ in 0..600 {
                    if stop_rx.try_recv().is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                drop(handle);
            });
        });
        let addr = addr_rx.recv_timeout(WAIT).expect("dev server up");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

use common::echo::Echo;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn allocated(server: SocketAddr) -> TurnHandle {
    let mut h = allocate(TurnClientConfig::new(
        format!("turn:{server}").parse().unwrap(),
        Credentials::long_term(USER, PASS),
    ))
    .await
    .unwrap();
    match next(&mut h).await {
        TurnEvent::Allocation(AllocationEvent::Allocated { .. }) => h,
        other => panic!("expected Allocated, got {other:?}"),
    }
}

async fn next(h: &mut TurnHandle) -> TurnEvent {
    tokio::time::timeout(WAIT, h.next_event())
        .await
        .expect("an event in time")
        .expect("the allocation's task is running")
}

/// Binds a channel to `channel_peer` and installs a permission for `other`'s IP.
async fn bind(h: &mut TurnHandle, channel_peer: SocketAddr) {
    h.bind_channel(channel_peer);
    loop {
        match next(h).await {
            TurnEvent::Allocation(AllocationEvent::ChannelBound { peer, .. })
                if peer == channel_peer =>
            {
                return;
            }
            TurnEvent::Allocation(AllocationEvent::PermissionCreated(_)) => {}
            other => panic!("expected ChannelBound, got {other:?}"),
        }
    }
}

/// Datagram `i` of a test: its number, then filler, `len` bytes in all.
fn datagram(i: u32, len: usize) -> Vec<u8> {
    let mut d = vec![0xA5; len];
    d[..4].copy_from_slice(&i.to_be_bytes());
    d
}

/// Receives until `want` datagrams of peer data have arrived; returns them.
async fn receive(
    dp: &mut pinhole::driver::turn::TurnDataPlane,
    batch: &mut RecvBatch,
    want: usize,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < want {
        let n = tokio::time::timeout(WAIT, dp.recv(batch))
            .await
            .expect("echoes in time")
            .unwrap();
        assert_eq!(n, batch.len());
        for i in 0..n {
            let (peer, data) = batch.get(i).unwrap();
            let (p2, range) = batch.range(i).unwrap();
            assert_eq!((peer, data), (p2, &batch.buffer()[range]));
            got.push((peer, data.to_vec()));
        }
    }
    got
}

#[test]
fn data_plane_channels_and_indications() {
    let server = DevServer::start();
    let (a, b) = (Echo::start(), Echo::start());
    runtime().block_on(async {
        let mut h = allocated(server.addr).await;
        bind(&mut h, a.addr).await;
        // b shares a's IP: the channel's permission covers it, and b has no channel, so
        // data to b goes as Send indications and comes back as Data indications.
        let mut dp = h.data_plane().unwrap();
        let mut batch = RecvBatch::new();

        // A batch of equal-sized datagrams through the channel: one GSO send on Linux.
        const N: u32 = 20;
        for i in 0..N {
            dp.queue_to(a.addr, &datagram(i, 300)).await.unwrap();
        }
        assert_eq!(dp.queued(), N as usize);
        dp.flush().await.unwrap();
        assert_eq!(dp.queued(), 0);
        let s = dp.stats();
        assert_eq!(s.datagrams_sent, u64::from(N));
        if cfg!(target_os = "linux") {
            assert!(s.send_calls < s.datagrams_sent, "no batching: {s:?}");
        }
        let mut got = receive(&mut dp, &mut batch, N as usize).await;
        got.sort();
        let want: Vec<_> = (0..N).map(|i| (a.addr, datagram(i, 300))).collect();
        assert_eq!(got, want);

        // Through indications, of differing sizes, with send_to (queue and flush).
        for i in 0..5 {
            dp.send_to(b.addr, &datagram(i, 100 + i as usize))
                .await
                .unwrap();
        }
        let mut got = receive(&mut dp, &mut batch, 5).await;
        got.sort();
        let want: Vec<_> = (0..5)
            .map(|i| (b.addr, datagram(i, 100 + i as usize)))
            .collect();
        assert_eq!(got, want);

        // Both at once, in one queue.
        dp.queue_to(a.addr, b"to a").await.unwrap();
        dp.queue_to(b.addr, b"to b").await.unwrap();
        let mut got = receive(&mut dp, &mut batch, 2).await;
        let mut want = vec![(a.addr, b"to a".to_vec()), (b.addr, b"to b".to_vec())];
        got.sort();
        want.sort();
        assert_eq!(got, want);
        eprintln!("data plane counters: {:?}", dp.stats());
        h.deallocate();
    });
}

#[test]
fn data_plane_hand_over_and_errors() {
    let server = DevServer::start();
    let a = Echo::start();
    runtime().block_on(async {
        let mut h = allocated(server.addr).await;
        bind(&mut h, a.addr).await;
        let mut dp = h.data_plane().unwrap();
        assert!(matches!(h.data_plane(), Err(DataPlaneError::InUse)));
        // No permission for this IP: refused, nothing queued.
        let stranger = SocketAddr::from(([127, 0, 0, 2], 9));
        assert!(matches!(
            dp.queue_to(stranger, b"x").await,
            Err(DataPlaneError::Turn(TurnError::NoPermission(_)))
        ));
        assert_eq!(dp.queued(), 0);
        let mut batch = RecvBatch::with_capacity(2, 2048);
        dp.send_to(a.addr, b"via the data plane").await.unwrap();
        let got = receive(&mut dp, &mut batch, 1).await;
        assert_eq!(got, vec![(a.addr, b"via the data plane".to_vec())]);

        // Dropped: the handle receives again, as events.
        drop(dp);
        h.send_to(a.addr, b"via the handle".to_vec());
        loop {
            match next(&mut h).await {
                TurnEvent::Data { peer, data } => {
                    assert_eq!((peer, data.as_slice()), (a.addr, &b"via the handle"[..]));
                    break;
                }
                TurnEvent::Allocation(_) => {}
                other => panic!("expected data, got {other:?}"),
            }
        }

        // A data plane again, with coalescing off; then the allocation ends under it.
        let mut dp = h.data_plane_with(Coalescing::OFF).unwrap();
        assert_eq!(dp.coalescing(), Coalescing::OFF);
        h.deallocate();
        let r = tokio::time::timeout(WAIT, dp.recv(&mut batch))
            .await
            .expect("recv ends once the allocation is over");
        assert!(matches!(r, Err(DataPlaneError::Closed)), "{r:?}");
    });
}

#[test]
fn data_plane_over_tcp_is_refused() {
    let rt = runtime();
    rt.block_on(async {
        // Anything listening: the check comes before any exchange.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let h = allocate(TurnClientConfig::new(
            format!("turn:{addr}?transport=tcp").parse().unwrap(),
            Credentials::long_term(USER, PASS),
        ))
        .await
        .unwrap();
        assert!(matches!(h.data_plane(), Err(DataPlaneError::NotUdp)));
    });
}

#[test]
fn data_plane_steady_state_allocates_nothing() {
    let server = DevServer::start();
    let a = Echo::start();
    runtime().block_on(async {
        let mut h = allocated(server.addr).await;
        bind(&mut h, a.addr).await;
        let mut dp = h.data_plane().unwrap();
        let mut batch = RecvBatch::new();
        let payload = [7u8; 200];
        const WINDOW: usize = 16;
        // A closed loop: every echo is answered at once. Warm up, then count.
        let run = async {
            for _ in 0..WINDOW {
                dp.queue_to(a.addr, &payload).await.unwrap();
            }
            let mut done = 0usize;
            let mut counted = None;
            while done < 3000 {
                if done >= 500 && counted.is_none() {
                    counted = Some(common::start_counting());
                }
                let n = dp.recv(&mut batch).await.unwrap();
                for (peer, data) in batch.iter() {
                    dp.queue_to(peer, data).await.unwrap();
                }
                done += n;
            }
            common::stop_counting() - counted.unwrap()
        };
        let allocations = tokio::time::timeout(WAIT * 3, run)
            .await
            .expect("the closed loop completes (no datagram lost on loopback)");
        eprintln!("data plane counters: {:?}", dp.stats());
        assert_eq!(allocations, 0, "heap allocations on the data path");
        h.deallocate();
    });
}

/// Answers every Allocate with 300 Try Alternate to `to` (RFC 8489 §10), on 127.0.0.1,
/// from a thread of its own until dropped; counts the Allocates it saw.
struct Redirector {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Redirector {
    fn start(to: SocketAddr) -> Self {
        use pinhole::stun::attributes::{AlternateServer, ErrorCode};
        use pinhole::stun::{Class, Message, MessageBuilder, MessageType, Method};
        use std::sync::atomic::Ordering;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Bounds how long stopping takes.
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, n) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut out = [0u8; 256];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(m) = Message::parse(&buf[..len]) else {
                    continue;
                };
                if m.class() != Class::Request || m.method() != Method::ALLOCATE {
                    continue;
                }
                n.fetch_add(1, Ordering::Relaxed);
                let kind = MessageType::new(Class::Error, Method::ALLOCATE);
                let mut b = MessageBuilder::new(&mut out, kind, m.transaction_id()).unwrap();
                b.add(&ErrorCode::new(300, "Try Alternate")).unwrap();
                b.add(&AlternateServer(to)).unwrap();
                let _ = sock.send_to(b.finish(), from);
            }
        });
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next event of `h` while `dp` does the receiving (which brings the allocation's
/// responses in); peer data meanwhile is a failure.
async fn event_receiving(
    h: &mut TurnHandle,
    dp: &mut pinhole::driver::turn::TurnDataPlane,
    batch: &mut RecvBatch,
) -> TurnEvent {
    tokio::time::timeout(WAIT, async {
        tokio::select! {
            ev = h.next_event() => ev.expect("the allocation's task is running"),
            r = dp.recv(batch) => panic!("no peer data expected yet: {r:?}"),
        }
    })
    .await
    .expect("an event in time")
}

#[test]
fn data_plane_follows_a_redirect_over_udp() {
    // The first server redirects (300 Try Alternate) to the development server. The data
    // plane exists from the start, so it is what receives the 300; the allocation is then
    // made at the alternate, and data goes there, not to the server in the URI.
    let server = DevServer::start();
    let redirector = Redirector::start(server.addr);
    let a = Echo::start();
    runtime().block_on(async {
        let mut h = allocate(TurnClientConfig::new(
            format!("turn:{}", redirector.addr).parse().unwrap(),
            Credentials::long_term(USER, PASS),
        ))
        .await
        .unwrap();
        let mut dp = h.data_plane().unwrap();
        let mut batch = RecvBatch::new();
        match event_receiving(&mut h, &mut dp, &mut batch).await {
            TurnEvent::Allocation(AllocationEvent::Allocated { .. }) => {}
            other => panic!("expected Allocated, got {other:?}"),
        }
        assert_eq!(h.server, redirector.addr);
        assert_eq!(h.current_server(), server.addr);
        h.bind_channel(a.addr);
        loop {
            match event_receiving(&mut h, &mut dp, &mut batch).await {
                TurnEvent::Allocation(AllocationEvent::ChannelBound { .. }) => break,
                TurnEvent::Allocation(AllocationEvent::PermissionCreated(_)) => {}
                other => panic!("expected ChannelBound, got {other:?}"),
            }
        }
        for i in 0..4 {
            dp.queue_to(a.addr, &datagram(i, 200)).await.unwrap();
        }
        let mut got = receive(&mut dp, &mut batch, 4).await;
        got.sort();
        let want: Vec<_> = (0..4).map(|i| (a.addr, datagram(i, 200))).collect();
        assert_eq!(got, want);
        // The redirector saw the first Allocate only.
        assert_eq!(
            redirector.seen.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        h.deallocate();
    });
}

#[test]
fn a_redirect_loop_over_udp_fails_at_once() {
    // Two servers sending the client to each other: the second 300 ends it.
    let first = Redirector::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 9)));
    let second = Redirector::start(first.addr);
    runtime().block_on(async {
        let mut h = allocate(TurnClientConfig::new(
            format!("turn:{}", second.addr).parse().unwrap(),
            Credentials::long_term(USER, PASS),
        ))
        .await
        .unwrap();
        // The redirect error itself, not a timeout (Lost(TimedOut) after 39.5 s), shows it
        // failed at once.
        assert_eq!(
            next(&mut h).await,
            TurnEvent::Allocation(AllocationEvent::Lost(TurnError::TooManyRedirects))
        );
        assert_eq!(h.current_server(), first.addr);
    });
}

#[test]
fn the_machine_goes_to_the_data_plane_and_back() {
    // One owner at a time: a data plane takes the allocation's machine from the task and
    // runs it (commands, refreshes, channel binding, deallocation) while it exists;
    // dropped, it hands the machine back and the task runs it again; and again.
    let lifetime = Duration::from_secs(2); // refreshed every second
    let server = DevServer::with_lifetime(Some(lifetime));
    let a = Echo::start();
    let b = Echo::start();
    runtime().block_on(async {
        let mut config = TurnClientConfig::new(
            format!("turn:{}", server.addr).parse().unwrap(),
            Credentials::long_term(USER, PASS),
        );
        config.lifetime = lifetime;
        let mut h = allocate(config).await.unwrap();
        match next(&mut h).await {
            TurnEvent::Allocation(AllocationEvent::Allocated { .. }) => {}
            other => panic!("expected Allocated, got {other:?}"),
        }
        bind(&mut h, a.addr).await;
        let mut batch = RecvBatch::with_capacity(4, 2048);

        for round in 0..2 {
            let mut dp = h.data_plane().unwrap();
            dp.send_to(a.addr, b"to a").await.unwrap();
            assert_eq!(
                receive(&mut dp, &mut batch, 1).await,
                vec![(a.addr, b"to a".to_vec())]
            );
            // The machine is the data plane's: its refreshes (two, ~1 s apart) and the
            // handle's commands happen while the application receives.
            let mut refreshed = 0;
            let mut bound = false;
            if round == 0 {
                h.bind_channel(b.addr);
            } else {
                bound = true;
            }
            while refreshed < 2 || !bound {
                match event_receiving(&mut h, &mut dp, &mut batch).await {
                    TurnEvent::Allocation(AllocationEvent::Refreshed { .. }) => refreshed += 1,
                    TurnEvent::Allocation(AllocationEvent::ChannelBound { peer, .. }) => {
                        assert_eq!(peer, b.addr);
                        bound = true;
                    }
                    TurnEvent::Allocation(AllocationEvent::PermissionCreated(_)) => {}
                    other => panic!("expected refreshes and a channel, got {other:?}"),
                }
            }
            // The handle's own sends go through the data plane's owner too.
            h.send_to(b.addr, b"to b via the handle".to_vec());
            assert_eq!(
                receive(&mut dp, &mut batch, 1).await,
                vec![(b.addr, b"to b via the handle".to_vec())]
            );
            assert_eq!(h.current_server(), server.addr);

            // Back to the task: it receives (events) and refreshes again.
            drop(dp);
            h.send_to(a.addr, b"via the handle".to_vec());
            let mut data = false;
            let mut refreshed = false;
            while !(data && refreshed) {
                match next(&mut h).await {
                    TurnEvent::Data { peer, data: d } => {
                        assert_eq!((peer, d.as_slice()), (a.addr, &b"via the handle"[..]));
                        data = true;
                    }
                    TurnEvent::Allocation(AllocationEvent::Refreshed { .. }) => refreshed = true,
                    other => panic!("expected data and a refresh, got {other:?}"),
                }
            }
        }

        // Deallocating while the data plane owns the machine: it does it, then ends.
        let mut dp = h.data_plane_with(Coalescing::OFF).unwrap();
        dp.send_to(a.addr, b"last").await.unwrap();
        receive(&mut dp, &mut batch, 1).await;
        h.deallocate();
        let r = tokio::time::timeout(WAIT, dp.recv(&mut batch))
            .await
            .expect("recv ends once the allocation is over");
        assert!(matches!(r, Err(DataPlaneError::Closed)), "{r:?}");
        let mut confirmed = false;
        while let Some(ev) = tokio::time::timeout(WAIT, h.next_event())
            .await
            .expect("the task ends")
        {
            confirmed |= ev == TurnEvent::Allocation(AllocationEvent::Deallocated);
        }
        assert!(confirmed, "the server confirmed the deallocation");
        drop(dp);

        // The handle dropped while a data plane owns the machine: the data plane
        // deallocates (confirmed: well within DEALLOCATE_TIMEOUT) and ends.
        let mut h = allocated(server.addr).await;
        bind(&mut h, a.addr).await;
        let mut dp = h.data_plane().unwrap();
        dp.send_to(a.addr, b"x").await.unwrap();
        receive(&mut dp, &mut batch, 1).await;
        drop(h);
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(WAIT, dp.recv(&mut batch))
            .await
            .expect("recv ends once the allocation is over");
        assert!(matches!(r, Err(DataPlaneError::Closed)), "{r:?}");
        assert!(
            started.elapsed() < pinhole::driver::turn::DEALLOCATE_TIMEOUT,
            "deallocated, not given up on"
        );
    });
}
