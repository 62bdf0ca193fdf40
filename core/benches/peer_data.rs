//! Direct-path data through `PeerConnection` against raw UDP, side by side.
//!
//! Two `PeerConnection`s meet on 127.0.0.1 (host candidates, no servers); then each
//! iteration sends one datagram from one to the other and receives it
//! (`PeerConnection::send` + `PeerConnection::recv_from`). The ceiling is the same on two
//! plain tokio `UdpSocket`s (`send_to` + `recv_from`). Everything runs on one thread (a
//! current-thread runtime), and the time criterion reports is that thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`: user and system), so it is CPU per datagram. At the end the
//! ratio of the means (PeerConnection / raw) and the heap allocations per datagram are
//! printed for each payload size.
//!
//! A second pair of rows measures a receiver bound to the wildcard `[::]` (one dual-stack
//! socket for every interface, as `pinhole connect` binds by default). Such a socket must
//! learn each datagram's local destination address (`IP_PKTINFO`/`IPV6_RECVPKTINFO`) to
//! know which local candidate it reached, so its ceiling is raw UDP on that same socket
//! API: a dual-stack socket read with `recvmsg` and its control messages (quinn-udp's
//! `UdpSocketState::recv`, one datagram per call), not `recvfrom`.
//!
//! ```sh
//! cargo bench -p pinhole --bench peer_data -- --warm-up-time 1 --measurement-time 3
//! ```
#![allow(unsafe_code, missing_docs, clippy::print_stdout)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};
use pinhole::peer::PeerConfig;
use tokio::net::UdpSocket;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the arguments it was given.
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

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// (path, size, CPU, datagrams, allocations).
type Total = (&'static str, usize, Duration, u64, u64);

/// Totals per (path, size) over every batch criterion ran.
static TOTALS: Mutex<Vec<Total>> = Mutex::new(Vec::new());

fn record(path: &'static str, size: usize, cpu: Duration, n: u64, allocs: u64) {
    let mut t = TOTALS.lock().unwrap();
    match t.iter_mut().find(|e| e.0 == path && e.1 == size) {
        Some(e) => {
            e.2 += cpu;
            e.3 += n;
            e.4 += allocs;
        }
        None => t.push((path, size, cpu, n, allocs)),
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// `a` on 127.0.0.1, `b` on `b_bind`.
async fn connected_pair(b_bind: SocketAddr) -> (PeerConnection, PeerConnection) {
    let mut config = PeerConfig::default();
    // The bench is about data; consent checks every 5 s would be noise.
    config.ice.consent_interval = Duration::from_secs(600);
    config.ice.consent_timeout = Duration::from_secs(3600);
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut a = PeerConnection::start(config.clone(), lo, true)
        .await
        .unwrap();
    let mut b = PeerConnection::start(config, b_bind, false).await.unwrap();
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());
    let mut nominated = [false, false];
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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let wild: SocketAddr = "[::]:0".parse().unwrap();
    let (a, mut b) = rt.block_on(connected_pair(lo));
    let (wa, mut wb) = rt.block_on(connected_pair(wild));
    let (raw_wb, raw_wb_state) = rt.block_on(async {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.set_only_v6(false).unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&wild.into()).unwrap();
        let s = UdpSocket::from_std(s.into()).unwrap();
        // quinn-udp turns on IP_PKTINFO / IPV6_RECVPKTINFO (and GRO).
        let state = quinn_udp::UdpSocketState::new((&s).into()).unwrap();
        (s, state)
    });
    let raw_wb_addr = SocketAddr::from(([127, 0, 0, 1], raw_wb.local_addr().unwrap().port()));
    let (raw_a, raw_b) = rt.block_on(async {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (a, b)
    });
    let raw_b_addr = raw_b.local_addr().unwrap();
    let mut rbuf = vec![0u8; 65_536];

    let mut g = c.benchmark_group("peer_data");
    for size in [100usize, 1200] {
        let payload = vec![0x5au8; size];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("raw_udp", size), &size, |bn, _| {
            bn.iter_custom(|iters| {
                rt.block_on(async {
                    let allocs = ALLOCS.load(Ordering::Relaxed);
                    let t0 = thread_cpu();
                    for _ in 0..iters {
                        raw_a.send_to(&payload, raw_b_addr).await.unwrap();
                        let (n, _) = raw_b.recv_from(&mut rbuf).await.unwrap();
                        assert_eq!(n, size);
                    }
                    let cpu = thread_cpu() - t0;
                    record(
                        "raw_udp",
                        size,
                        cpu,
                        iters,
                        ALLOCS.load(Ordering::Relaxed) - allocs,
                    );
                    cpu
                })
            });
        });
        g.bench_with_input(BenchmarkId::new("raw_udp_pktinfo", size), &size, |bn, _| {
            bn.iter_custom(|iters| {
                rt.block_on(async {
                    let allocs = ALLOCS.load(Ordering::Relaxed);
                    let t0 = thread_cpu();
                    let mut meta = [quinn_udp::RecvMeta::default()];
                    for _ in 0..iters {
                        raw_a.send_to(&payload, raw_wb_addr).await.unwrap();
                        let n = loop {
                            raw_wb.readable().await.unwrap();
                            let mut bufs = [std::io::IoSliceMut::new(&mut rbuf)];
                            match raw_wb.try_io(tokio::io::Interest::READABLE, || {
                                raw_wb_state.recv((&raw_wb).into(), &mut bufs, &mut meta)
                            }) {
                                Ok(_) => break meta[0].len,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                Err(e) => panic!("{e}"),
                            }
                        };
                        assert_eq!(n, size);
                        assert!(meta[0].dst_ip.is_some());
                    }
                    let cpu = thread_cpu() - t0;
                    record(
                        "raw_udp_pktinfo",
                        size,
                        cpu,
                        iters,
                        ALLOCS.load(Ordering::Relaxed) - allocs,
                    );
                    cpu
                })
            });
        });
        g.bench_with_input(
            BenchmarkId::new("peer_connection_wildcard", size),
            &size,
            |bn, _| {
                bn.iter_custom(|iters| {
                    rt.block_on(async {
                        let allocs = ALLOCS.load(Ordering::Relaxed);
                        let t0 = thread_cpu();
                        for _ in 0..iters {
                            wa.send(&payload).await;
                            let (n, _) = wb.recv_from(&mut rbuf).await.unwrap();
                            assert_eq!(n, size);
                        }
                        let cpu = thread_cpu() - t0;
                        record(
                            "peer_connection_wildcard",
                            size,
                            cpu,
                            iters,
                            ALLOCS.load(Ordering::Relaxed) - allocs,
                        );
                        cpu
                    })
                });
            },
        );
        g.bench_with_input(BenchmarkId::new("peer_connection", size), &size, |bn, _| {
            bn.iter_custom(|iters| {
                rt.block_on(async {
                    let allocs = ALLOCS.load(Ordering::Relaxed);
                    let t0 = thread_cpu();
                    for _ in 0..iters {
                        a.send(&payload).await;
                        let (n, _) = b.recv_from(&mut rbuf).await.unwrap();
                        assert_eq!(n, size);
                    }
                    let cpu = thread_cpu() - t0;
                    record(
                        "peer_connection",
                        size,
                        cpu,
                        iters,
                        ALLOCS.load(Ordering::Relaxed) - allocs,
                    );
                    cpu
                })
            });
        });
    }
    g.finish();
    drop((a, b, wa, wb));
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    let t = TOTALS.lock().unwrap();
    println!();
    let per = |e: Total| e.2.as_nanos() as f64 / e.3 as f64;
    for (title, raw_path, pc_path) in [
        ("bound to 127.0.0.1", "raw_udp", "peer_connection"),
        (
            "receiver on [::] (raw: recvmsg + PKTINFO)",
            "raw_udp_pktinfo",
            "peer_connection_wildcard",
        ),
    ] {
        println!("{title}");
        println!("size  raw UDP ns/dgram  PeerConnection ns/dgram  ratio  allocations/dgram");
        for size in [100usize, 1200] {
            let get = |p: &str| t.iter().find(|e| e.0 == p && e.1 == size).copied();
            if let (Some(raw), Some(pc)) = (get(raw_path), get(pc_path)) {
                println!(
                    "{size:>4}  {:>16.0}  {:>23.0}  {:>5.2}  {:>17.4}",
                    per(raw),
                    per(pc),
                    per(pc) / per(raw),
                    pc.4 as f64 / pc.3 as f64,
                );
            }
        }
    }
}
