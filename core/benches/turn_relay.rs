//! The TURN relay data path on loopback through coturn, client against client.
//!
//! Closed loop: a client allocates on coturn (127.0.0.1), binds a channel (or a permission)
//! for an echo peer, keeps a fixed window of datagrams in flight to the peer through the
//! relay, and sends a new one for every echo that comes back. Measured on the client's
//! thread over a fixed time after a warm-up: completed round trips per second, the
//! thread's user and system CPU per round trip (`getrusage(RUSAGE_THREAD)`), and heap
//! allocations per round trip (a counting global allocator; the echo peer never allocates
//! while measuring, coturn is another process). Raw UDP straight to the peer is the
//! ceiling.
//!
//! Run by hand (needs coturn's `turnserver` on the PATH; it is started here on a free
//! loopback port with a generated config and killed at the end):
//!
//! ```sh
//! cargo bench -p pinhole --bench turn_relay
//! TURN_BENCH_SECS=3 TURN_BENCH_ROUNDS=5 TURN_BENCH_WINDOW=64 cargo bench -p pinhole --bench turn_relay
//! TURN_BENCH_ONLY=pinhole TURN_BENCH_VERBOSE=1 cargo bench -p pinhole --bench turn_relay
//! ```
//!
//! Each client runs `TURN_BENCH_ROUNDS` times (interleaved with the others; medians are
//! printed), `TURN_BENCH_SECS` each. pinhole runs as applications use it, through the tokio
//! driver: its data plane (`TurnHandle::data_plane`: recvmmsg in, GSO out, no heap
//! allocation), without and with adaptive coalescing, and the handle's own
//! `send_to`/`TurnEvent::Data`. `TURN_BENCH_COALESCE_US` and `TURN_BENCH_COALESCE_RATE`
//! override the coalescing row's `Coalescing::max_wait` (µs) and `min_rate` (datagrams/s);
//! `TURN_BENCH_VERBOSE=1` prints datagrams per system call and waits; `TURN_BENCH_SIZES`
//! (default `100,1200`) the payload sizes.
#![allow(unsafe_code, missing_docs, clippy::print_stdout)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Counting allocator.

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------
// Measuring.

fn thread_cpu() -> (Duration, Duration) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Counts completions; decides when the warm-up ends and the measurement stops.
struct Meter {
    warmup: Duration,
    measure: Duration,
    started: Instant,
    begin: Option<(Instant, u64, (Duration, Duration), u64)>,
    done: u64,
    result: Option<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    completed: u64,
    elapsed: Duration,
    user: Duration,
    system: Duration,
    allocs: u64,
}

impl Meter {
    fn new(cfg: &Config) -> Self {
        Self {
            warmup: cfg.warmup,
            measure: cfg.measure,
            started: Instant::now(),
            begin: None,
            done: 0,
            result: None,
        }
    }

    /// Records `n` completions; returns true when the measurement is over.
    #[inline]
    fn complete(&mut self, n: u64) -> bool {
        let before = self.done;
        self.done += n;
        // Checking the clock every 64 completions is plenty.
        if before / 64 == self.done / 64 {
            return false;
        }
        self.check()
    }

    fn check(&mut self) -> bool {
        let now = Instant::now();
        match self.begin {
            None => {
                if now - self.started >= self.warmup {
                    self.begin =
                        Some((now, self.done, thread_cpu(), ALLOCS.load(Ordering::Relaxed)));
                }
                false
            }
            Some((t0, d0, (u0, s0), a0)) => {
                if now - t0 < self.measure {
                    return false;
                }
                let (u1, s1) = thread_cpu();
                self.result = Some(Sample {
                    completed: self.done - d0,
                    elapsed: now - t0,
                    user: u1 - u0,
                    system: s1 - s0,
                    allocs: ALLOCS.load(Ordering::Relaxed) - a0,
                });
                true
            }
        }
    }

    fn timed_out(&self) -> bool {
        self.started.elapsed() > self.warmup + self.measure + Duration::from_secs(10)
    }
}

// ---------------------------------------------------------------------------------------
// coturn and the echo peer.

struct Coturn {
    child: Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const USER: &str = "bench";
const PASS: &str = "bench-pass";
const REALM: &str = "bench.pinhole.test";

fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn start_coturn() -> Coturn {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("pinhole-turn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = [
        "listening-ip=127.0.0.1".to_owned(),
        "relay-ip=127.0.0.1".to_owned(),
        format!("listening-port={port}"),
        format!("realm={REALM}"),
        "lt-cred-mech".to_owned(),
        format!("user={USER}:{PASS}"),
        "allow-loopback-peers".to_owned(),
        "no-tls".to_owned(),
        "no-dtls".to_owned(),
        "no-cli".to_owned(),
        "no-multicast-peers".to_owned(),
        "min-port=49152".to_owned(),
        "max-port=65535".to_owned(),
        // One relay thread: the same for every client, and the usual per-allocation path.
        "relay-threads=1".to_owned(),
        "simple-log".to_owned(),
        format!("log-file={}", dir.join("turn.log").display()),
        format!("pidfile={}", dir.join("turn.pid").display()),
    ];
    std::fs::write(dir.join("turnserver.conf"), conf.join("\n") + "\n").unwrap();
    let child = Command::new("turnserver")
        .arg("-c")
        .arg(dir.join("turnserver.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting turnserver (is coturn installed?)");
    let c = Coturn {
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    // Bounded wait for a STUN Binding answer.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut req = [0u8; 20];
    req[1] = 1;
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let _ = sock.send_to(&req, c.addr);
        let mut b = [0u8; 512];
        if sock.recv_from(&mut b).is_ok() {
            return c;
        }
    }
    panic!("coturn did not come up");
}

// The echo peer, shared with the TURN tests.
#[path = "../tests/common/echo.rs"]
mod echo;
use echo::Echo as Peer;

#[derive(Debug, Clone, Copy)]
struct Config {
    server: SocketAddr,
    peer: SocketAddr,
    size: usize,
    window: usize,
    warmup: Duration,
    measure: Duration,
}

/// When nothing came back for this long, top the window up again (lost datagrams).
const IDLE_TOPUP: Duration = Duration::from_millis(20);
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Raw UDP: the ceiling.

fn run_raw(cfg: Config) -> Sample {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(cfg.peer).unwrap();
    s.set_read_timeout(Some(IDLE_TOPUP)).unwrap();
    let payload = vec![7u8; cfg.size];
    let mut buf = [0u8; 2048];
    let mut m = Meter::new(&cfg);
    for _ in 0..cfg.window {
        s.send(&payload).unwrap();
    }
    loop {
        match s.recv(&mut buf) {
            Ok(n) => {
                s.send(&buf[..n]).unwrap();
                if m.complete(1) {
                    break;
                }
            }
            Err(_) => {
                for _ in 0..cfg.window {
                    s.send(&payload).unwrap();
                }
                if m.check() || m.timed_out() {
                    break;
                }
            }
        }
    }
    m.result.expect("raw UDP measured")
}

// ---------------------------------------------------------------------------------------
// pinhole: the tokio driver's data plane (TurnHandle::data_plane): recvmmsg in, GSO out,
// on a current-thread runtime (the driver's task and the loop share this thread).

fn run_pinhole_data_plane(cfg: Config) -> Sample {
    run_pinhole_data_plane_with(cfg, pinhole::driver::turn::Coalescing::OFF)
}

fn run_pinhole_data_plane_coalescing(cfg: Config) -> Sample {
    let mut c = pinhole::driver::turn::Coalescing::default();
    if let Ok(us) = std::env::var("TURN_BENCH_COALESCE_US") {
        c.max_wait = Duration::from_micros(us.parse().expect("TURN_BENCH_COALESCE_US"));
    }
    if let Ok(r) = std::env::var("TURN_BENCH_COALESCE_RATE") {
        c.min_rate = r.parse().expect("TURN_BENCH_COALESCE_RATE");
    }
    run_pinhole_data_plane_with(cfg, c)
}

/// Allocates with the driver and binds a channel to the peer.
async fn pinhole_driver_setup(cfg: &Config) -> pinhole::driver::turn::TurnHandle {
    use pinhole::driver::turn::{TurnClientConfig, TurnEvent, allocate};
    use pinhole::turn::{AllocationEvent, Credentials, TurnUri};
    let uri: TurnUri = format!("turn:{}", cfg.server).parse().unwrap();
    let mut h = allocate(TurnClientConfig::new(
        uri,
        Credentials::long_term(USER, PASS),
    ))
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    loop {
        let ev = tokio::time::timeout_at(deadline, h.next_event())
            .await
            .expect("driver: setup timed out")
            .expect("driver ended");
        match ev {
            TurnEvent::Allocation(AllocationEvent::Allocated { .. }) => h.bind_channel(cfg.peer),
            TurnEvent::Allocation(AllocationEvent::ChannelBound { .. }) => return h,
            TurnEvent::Allocation(AllocationEvent::Lost(e)) => panic!("driver: {e}"),
            _ => {}
        }
    }
}

fn run_pinhole_data_plane_with(
    cfg: Config,
    coalescing: pinhole::driver::turn::Coalescing,
) -> Sample {
    use pinhole::driver::turn::RecvBatch;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = pinhole_driver_setup(&cfg).await;
        let mut dp = h.data_plane_with(coalescing).unwrap();
        let mut batch = RecvBatch::new();
        let payload = vec![7u8; cfg.size];
        for _ in 0..cfg.window {
            dp.queue_to(cfg.peer, &payload).await.unwrap();
        }
        let mut m = Meter::new(&cfg);
        let s0 = dp.stats();
        loop {
            // `recv` sends the answers queued below first, then reads a batch.
            match tokio::time::timeout(IDLE_TOPUP, dp.recv(&mut batch)).await {
                Ok(Ok(n)) => {
                    for (peer, data) in batch.iter() {
                        dp.queue_to(peer, data).await.unwrap();
                    }
                    if m.complete(n as u64) {
                        break;
                    }
                }
                Ok(Err(e)) => panic!("data plane: {e}"),
                Err(_) => {
                    for _ in 0..cfg.window {
                        dp.queue_to(cfg.peer, &payload).await.unwrap();
                    }
                    if m.check() || m.timed_out() {
                        break;
                    }
                }
            }
        }
        if std::env::var_os("TURN_BENCH_VERBOSE").is_some() {
            let s = dp.stats();
            let per = |a: u64, b: u64| a as f64 / b.max(1) as f64;
            println!(
                "  pinhole data plane ({} µs): {:.2} datagrams per receive call, {:.2} per send call, {:.2} waits per receive call",
                coalescing.max_wait.as_micros(),
                per(s.datagrams_received - s0.datagrams_received, s.recv_calls - s0.recv_calls),
                per(s.datagrams_sent - s0.datagrams_sent, s.send_calls - s0.send_calls),
                per(s.waits - s0.waits, s.recv_calls - s0.recv_calls),
            );
        }
        drop(dp);
        h.deallocate();
        m.result.expect("data plane measured")
    })
}

// ---------------------------------------------------------------------------------------
// pinhole: the tokio driver's handle (TurnHandle::send_to, TurnEvent::Data), one Vec per
// datagram through its channels.

fn run_pinhole_driver(cfg: Config) -> Sample {
    use pinhole::driver::turn::TurnEvent;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = pinhole_driver_setup(&cfg).await;
        let payload = vec![7u8; cfg.size];
        for _ in 0..cfg.window {
            h.send_to(cfg.peer, payload.clone());
        }
        let mut m = Meter::new(&cfg);
        loop {
            match tokio::time::timeout(IDLE_TOPUP, h.next_event()).await {
                Ok(Some(TurnEvent::Data { peer, data })) => {
                    h.send_to(peer, data);
                    if m.complete(1) {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("driver ended"),
                Err(_) => {
                    for _ in 0..cfg.window {
                        h.send_to(cfg.peer, payload.clone());
                    }
                    if m.check() || m.timed_out() {
                        break;
                    }
                }
            }
        }
        h.deallocate();
        m.result.expect("driver measured")
    })
}

// ---------------------------------------------------------------------------------------
// webrtc-rs rtc-turn (sans-IO), driven the way its example does: one std socket.

fn run_rtc_turn(cfg: Config) -> Sample {
    use bytes::BytesMut;
    use rtc_shared::{TransportContext, TransportMessage, TransportProtocol};
    use rtc_turn::client::{Client, ClientConfig, Event};
    use sansio::Protocol as _;
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = s.local_addr().unwrap();
    let provider = rtc_crypto::default_provider().unwrap();
    let mut client = Client::new(
        ClientConfig {
            stun_serv_addr: String::new(),
            turn_serv_addr: cfg.server.to_string(),
            local_addr: local,
            transport_protocol: TransportProtocol::UDP,
            username: USER.into(),
            password: PASS.into(),
            realm: REALM.into(),
            software: String::new(),
            rto_in_ms: 0,
            allocation_refresh_interval_cap: None,
        },
        provider,
    )
    .unwrap();
    client.allocate(Instant::now()).unwrap();
    let mut buf = [0u8; 2048];
    let read = |s: &UdpSocket, buf: &mut [u8]| -> Option<TransportMessage<BytesMut>> {
        let (n, from) = s.recv_from(buf).ok()?;
        Some(TransportMessage {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: local,
                peer_addr: from,
                transport_protocol: TransportProtocol::UDP,
                ecn: None,
            },
            message: BytesMut::from(&buf[..n]),
        })
    };
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut relayed = None;
    let mut ready = false;
    while !ready {
        assert!(Instant::now() < deadline, "rtc-turn: setup timed out");
        while let Some(t) = client.poll_write() {
            s.send_to(&t.message, t.transport.peer_addr).unwrap();
        }
        while let Some(ev) = client.poll_event() {
            match ev {
                Event::AllocateResponse(_, addr) => {
                    relayed = Some(addr);
                    client
                        .relay(addr)
                        .unwrap()
                        .create_permission(Instant::now(), cfg.peer)
                        .unwrap();
                }
                Event::CreatePermissionResponse(..) => ready = true,
                Event::AllocateError(_, e) | Event::CreatePermissionError(_, e) => {
                    panic!("rtc-turn: {e}")
                }
                _ => {}
            }
        }
        if let Some(msg) = read(&s, &mut buf) {
            client.handle_read(msg).unwrap();
        }
        client.handle_timeout(Instant::now()).unwrap();
    }
    let relayed = relayed.unwrap();
    s.set_read_timeout(Some(IDLE_TOPUP)).unwrap();
    let payload = vec![7u8; cfg.size];
    let topup = |client: &mut Client, s: &UdpSocket| {
        for _ in 0..cfg.window {
            client
                .relay(relayed)
                .unwrap()
                .send_to(Instant::now(), &payload, cfg.peer)
                .unwrap();
            while let Some(t) = client.poll_write() {
                s.send_to(&t.message, t.transport.peer_addr).unwrap();
            }
        }
    };
    topup(&mut client, &s);
    let mut m = Meter::new(&cfg);
    loop {
        match read(&s, &mut buf) {
            Some(msg) => {
                client.handle_read(msg).unwrap();
                let mut done = 0;
                while let Some(ev) = client.poll_event() {
                    if let Event::DataIndicationOrChannelData(_, from, data) = ev {
                        client
                            .relay(relayed)
                            .unwrap()
                            .send_to(Instant::now(), &data, from)
                            .unwrap();
                        done += 1;
                    }
                }
                let now = Instant::now();
                if client.poll_timeout().is_some_and(|t| t <= now) {
                    client.handle_timeout(now).unwrap();
                }
                while let Some(t) = client.poll_write() {
                    s.send_to(&t.message, t.transport.peer_addr).unwrap();
                }
                if done > 0 && m.complete(done) {
                    break;
                }
            }
            None => {
                topup(&mut client, &s);
                if m.check() || m.timed_out() {
                    break;
                }
            }
        }
    }
    let _ = client.close();
    while let Some(t) = client.poll_write() {
        let _ = s.send_to(&t.message, t.transport.peer_addr);
    }
    m.result.expect("rtc-turn measured")
}

// ---------------------------------------------------------------------------------------
// webrtc-rs turn (tokio), on a current-thread runtime: all its tasks on this thread.

fn run_turn_tokio(cfg: Config) -> Sample {
    use turn::client::{Client, ClientConfig};
    use webrtc_util::Conn;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = Client::new(ClientConfig {
            stun_serv_addr: String::new(),
            turn_serv_addr: cfg.server.to_string(),
            username: USER.into(),
            password: PASS.into(),
            realm: REALM.into(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(sock),
            vnet: None,
        })
        .await
        .unwrap();
        client.listen().await.unwrap();
        let relay = tokio::time::timeout(SETUP_TIMEOUT, client.allocate())
            .await
            .expect("turn: allocate timed out")
            .unwrap();
        let payload = vec![7u8; cfg.size];
        // The first send installs the permission (and later a channel).
        for _ in 0..cfg.window {
            relay.send_to(&payload, cfg.peer).await.unwrap();
        }
        let mut buf = vec![0u8; 2048];
        let mut m = Meter::new(&cfg);
        loop {
            match tokio::time::timeout(IDLE_TOPUP, relay.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    relay.send_to(&buf[..n], from).await.unwrap();
                    if m.complete(1) {
                        break;
                    }
                }
                Ok(Err(e)) => panic!("turn: {e}"),
                Err(_) => {
                    for _ in 0..cfg.window {
                        relay.send_to(&payload, cfg.peer).await.unwrap();
                    }
                    if m.check() || m.timed_out() {
                        break;
                    }
                }
            }
        }
        let r = m.result.expect("turn measured");
        let _ = relay.close().await;
        let _ = client.close().await;
        r
    })
}

// ---------------------------------------------------------------------------------------
// librice turn-client-proto (sans-IO), one std socket, channel bound.

fn run_turn_client_proto(cfg: Config) -> Sample {
    use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnRecvRet};
    use turn_client_proto::prelude::DelayedTransmitBuild;
    use turn_client_proto::stun::Instant as SansIoInstant;
    use turn_client_proto::stun::agent::Transmit;
    use turn_client_proto::types::{TransportType, TurnCredentials};
    use turn_client_proto::udp::TurnClientUdp;
    // Its own clock type: the time elapsed since a base.
    let base = Instant::now();
    let tnow = || SansIoInstant::from_std(base);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(cfg.server).unwrap();
    let local = s.local_addr().unwrap();
    let mut client = TurnClientUdp::allocate(
        local,
        cfg.server,
        TurnConfig::new(TurnCredentials::new(USER, PASS)),
    );
    let mut buf = [0u8; 2048];
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut ready = false;
    while !ready {
        assert!(
            Instant::now() < deadline,
            "turn-client-proto: setup timed out"
        );
        let now = tnow();
        let _ = client.poll(now);
        while let Some(t) = client.poll_transmit(now) {
            s.send(t.data.as_ref()).unwrap();
        }
        while let Some(ev) = client.poll_event() {
            if std::env::var_os("TURN_BENCH_VERBOSE").is_some() {
                println!("  turn-client-proto: {ev:?}");
            }
            match ev {
                TurnEvent::AllocationCreated(..) => {
                    client
                        .bind_channel(TransportType::Udp, cfg.peer, tnow())
                        .unwrap();
                }
                TurnEvent::ChannelCreated(..) => ready = true,
                TurnEvent::AllocationCreateFailed(_)
                | TurnEvent::ChannelCreateFailed(..)
                | TurnEvent::PermissionCreateFailed(..) => panic!("turn-client-proto: {ev:?}"),
                _ => {}
            }
        }
        if let Ok(n) = s.recv(&mut buf) {
            let t = Transmit::new(&buf[..n], TransportType::Udp, cfg.server, local);
            let _ = client.recv(t, tnow());
        }
    }
    s.set_read_timeout(Some(IDLE_TOPUP)).unwrap();
    let payload = vec![7u8; cfg.size];
    let mut out = [0u8; 2048];
    let topup = |client: &mut TurnClientUdp, out: &mut [u8]| {
        for _ in 0..cfg.window {
            let t = client
                .send_to(TransportType::Udp, cfg.peer, &payload[..], tnow())
                .unwrap()
                .unwrap();
            let n = t.data.write_into(out);
            s.send(&out[..n]).unwrap();
        }
    };
    topup(&mut client, &mut out);
    let mut m = Meter::new(&cfg);
    let mut wake: Option<SansIoInstant> = None;
    loop {
        match s.recv(&mut buf) {
            Ok(n) => {
                let now = tnow();
                let t = Transmit::new(&buf[..n], TransportType::Udp, cfg.server, local);
                let mut done = 0;
                if let TurnRecvRet::PeerData(d) = client.recv(t, now) {
                    let peer = d.peer;
                    let tb = client
                        .send_to(TransportType::Udp, peer, d.data(), now)
                        .unwrap()
                        .unwrap();
                    let k = tb.data.write_into(&mut out);
                    s.send(&out[..k]).unwrap();
                    done = 1;
                }
                if wake.is_none_or(|w| now >= w) {
                    if let turn_client_proto::api::TurnPollRet::WaitUntil(w) = client.poll(now) {
                        wake = Some(w);
                    }
                    while let Some(t) = client.poll_transmit(now) {
                        s.send(t.data.as_ref()).unwrap();
                    }
                }
                if done > 0 && m.complete(done) {
                    break;
                }
            }
            Err(_) => {
                topup(&mut client, &mut out);
                if m.check() || m.timed_out() {
                    break;
                }
            }
        }
    }
    let now = tnow();
    let _ = client.delete(now);
    while let Some(t) = client.poll_transmit(now) {
        let _ = s.send(t.data.as_ref());
    }
    m.result.expect("turn-client-proto measured")
}

// ---------------------------------------------------------------------------------------

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Runner = fn(Config) -> Sample;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run
    // only when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("turn_relay: run with `cargo bench -p pinhole --bench turn_relay`");
        return;
    }
    let measure = Duration::from_secs_f64(env_num("TURN_BENCH_SECS", 1.5));
    let rounds = env_num("TURN_BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let warmup = Duration::from_secs_f64(env_num("TURN_BENCH_WARMUP", 0.5));
    let window = env_num("TURN_BENCH_WINDOW", 64.0) as usize;
    // TURN_BENCH_ONLY=substring[,substring…] runs only the matching clients; RUST_LOG traces
    // them.
    let only = std::env::var("TURN_BENCH_ONLY").ok();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
    let coturn = start_coturn();
    let peer = Peer::start();
    let clients: [(&str, Runner); 7] = [
        ("raw UDP (no relay)", run_raw),
        ("pinhole data plane", run_pinhole_data_plane),
        (
            "pinhole data plane, coalescing",
            run_pinhole_data_plane_coalescing,
        ),
        ("pinhole handle (events)", run_pinhole_driver),
        ("rtc-turn (sans-IO)", run_rtc_turn),
        ("turn (tokio)", run_turn_tokio),
        ("turn-client-proto", run_turn_client_proto),
    ];
    println!(
        "TURN relay through coturn on loopback: window {window}, {:.1} s per run after {:.1} s warm-up\n\
         per round trip (one datagram to the peer through the relay and its echo back)\n",
        measure.as_secs_f64(),
        warmup.as_secs_f64()
    );
    let sizes: Vec<usize> = std::env::var("TURN_BENCH_SIZES")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().parse().expect("TURN_BENCH_SIZES"))
                .collect()
        })
        .unwrap_or_else(|| vec![100, 1200]);
    for size in sizes {
        // Rounds interleave the clients, so that a slow phase of the machine does not hit
        // one client only; each metric is the median over the rounds.
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); clients.len()];
        for _ in 0..rounds {
            for (i, (name, run)) in clients.iter().enumerate() {
                if only
                    .as_deref()
                    .is_some_and(|o| !o.split(',').any(|o| name.contains(o)))
                {
                    continue;
                }
                let cfg = Config {
                    server: coturn.addr,
                    peer: peer.addr,
                    size,
                    window,
                    warmup,
                    measure,
                };
                let run = *run;
                // Each run on a fresh thread, so that RUSAGE_THREAD is its own.
                match std::thread::spawn(move || run(cfg)).join() {
                    Ok(s) => samples[i].push(s),
                    Err(_) => println!("{name}: failed"),
                }
            }
        }
        println!(
            "{size}-byte payloads (median of {rounds} rounds)\n{:<30} {:>9} {:>8} {:>8} {:>9} {:>7}",
            "client", "rt/s", "user µs", "sys µs", "total µs", "allocs"
        );
        for ((name, _), ss) in clients.iter().zip(&samples) {
            if ss.is_empty() {
                continue;
            }
            let median = |f: &dyn Fn(&Sample) -> f64| {
                let mut v: Vec<f64> = ss.iter().map(f).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let per = |d: Duration, s: &Sample| d.as_secs_f64() * 1e6 / s.completed.max(1) as f64;
            println!(
                "{:<30} {:>9.0} {:>8.2} {:>8.2} {:>9.2} {:>7.2}",
                name,
                median(&|s| s.completed as f64 / s.elapsed.as_secs_f64()),
                median(&|s| per(s.user, s)),
                median(&|s| per(s.system, s)),
                median(&|s| per(s.user + s.system, s)),
                median(&|s| s.allocs as f64 / s.completed.max(1) as f64),
            );
        }
        println!();
    }
}
