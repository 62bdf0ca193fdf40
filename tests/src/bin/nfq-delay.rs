//! `nfq-delay --queue N --delay-us D`: holds every packet of NFQUEUE queue `N` for `D`
//! microseconds before accepting it — a one-way delay for a lab router (tc netem is not
//! available in this kernel). Run it inside the router's namespace (netlink is per
//! namespace), wait for `ready` on standard output, then add
//! `iptables-nft -t mangle -A FORWARD -j NFQUEUE --queue-num N`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

fn usage() -> ! {
    eprintln!("usage: nfq-delay [--queue N] --delay-us MICROSECONDS");
    std::process::exit(2)
}

fn main() {
    let mut queue_num: u16 = 0;
    let mut delay = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--queue" => queue_num = v.parse().unwrap_or_else(|_| usage()),
            "--delay-us" => {
                delay = Some(Duration::from_micros(v.parse().unwrap_or_else(|_| usage())))
            }
            "--delay-ms" => {
                delay = Some(Duration::from_millis(v.parse().unwrap_or_else(|_| usage())))
            }
            _ => usage(),
        }
    }
    let delay = delay.unwrap_or_else(|| usage());
    if let Err(e) = run(queue_num, delay) {
        eprintln!("nfq-delay: {e}");
        std::process::exit(1);
    }
}

fn run(queue_num: u16, delay: Duration) -> std::io::Result<()> {
    let mut q = Queue::open()?;
    q.bind(queue_num)?;
    q.set_queue_max_len(queue_num, 8192)?;
    // Only the verdict matters: copy no payload to userspace.
    q.set_copy_range(queue_num, 0)?;
    q.set_nonblocking(true);
    println!("ready: queue {queue_num}, delay {delay:?}");
    std::io::stdout().flush()?;
    // The delay is constant, so release order is arrival order.
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match q.recv() {
                Ok(msg) => held.push_back((Instant::now() + delay, msg)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // ENOBUFS: the kernel dropped packets because we were slow; carry on.
                Err(e) if e.raw_os_error() == Some(105) => break,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, mut msg) = held.pop_front().expect("front exists");
            msg.set_verdict(Verdict::Accept);
            q.verdict(msg)?;
        }
        let next = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(1));
        std::thread::sleep(next.min(Duration::from_micros(500)));
    }
}
