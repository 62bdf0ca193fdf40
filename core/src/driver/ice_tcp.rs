//! ICE-TCP (RFC 6544) for a [`super::peer::PeerConnection`]: the TCP sockets behind the
//! machine's TCP bases ([`crate::peer::Peer::tcp_bases`]) and the connections on them.
//!
//! Per base IP the connection binds:
//! - a listening socket: a *passive* base; each connection the peer makes to it is keyed
//!   by (the listening address, the peer's address). At most [`MAX_ACCEPTED`] at a time
//!   per listener; more are closed at once.
//! - a *simultaneous-open* (`so`) port: a socket bound with `SO_REUSEADDR` and
//!   `SO_REUSEPORT`, listening too (so that a peer whose connection gets through
//!   before ours is accepted, and so that the port stays ours). Connections from that
//!   exact address are made on fresh sockets bound the same way.
//!
//! The machine's TCP transmits say what to do by their source:
//! - port 0 (an *active* base, `(ip, 0)`): a connection from an ephemeral port of that IP
//!   to the destination, made on the first message (bounded by [`CONNECT_TIMEOUT`]);
//! - a passive base: the connection the peer made from the destination, else dropped;
//! - an so base toward a STUN server: a connection from the so address carrying STUN
//!   messages as they are (RFC 8489 §6.2.2), which maps the so port in the NAT as the
//!   peer's connection needs it (bounded by [`STUN_CONNECT_TIMEOUT`]; a connection that
//!   cannot be made is reported to the machine, which then stops waiting for its answer);
//! - an so base toward the peer: TCP simultaneous open (RFC 6544 §7.2.1): both sides
//!   connect to each other's address at about the same time, and through NATs the first
//!   SYNs are often refused or dropped, so a refused connect is tried again every
//!   [`SO_RETRY`] until one connects, the peer's connection is accepted on the so port,
//!   or the check's timeout ([`crate::ice::IceConfig::tcp_check_timeout`]) passes.
//!
//! Connections between the agents carry RFC 4571 frames ([`crate::ice::tcp`]): framed
//! here on the way out, cut back into messages on the way in; each message goes to the
//! peer connection's task, which hands it to the machine as a TCP [`crate::Received`]
//! (the peer's address as its source, the key's base as its destination), its
//! application data to the receive queue. Each connection has a bounded write queue
//! ([`WRITE_QUEUE`]): a message that finds it full is dropped, as a datagram would be.
//! When the peer connection's task ends (closed or dropped), every socket is closed.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::debug;

use super::peer_streams::Write;
use crate::ice::tcp::{FrameReader, frame};
use crate::turn::StreamFramer;

/// How long a connection from an active base may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection from an so base to a STUN server may take: gathering waits for
/// it (a server that drops SYNs to its TCP port must not hold the end of candidates
/// long); two SYNs at Linux's initial 1 s retransmission timeout.
pub const STUN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a refused simultaneous-open connect is tried again (the peer's NAT answered
/// our SYN with a reset because the peer's own SYN had not left yet).
pub const SO_RETRY: Duration = Duration::from_millis(150);
/// How many connections a listening socket keeps at a time; more are closed.
pub const MAX_ACCEPTED: usize = 16;
/// How many messages wait to be written on one connection before more are dropped.
pub const WRITE_QUEUE: usize = 256;
/// The listening sockets' backlog.
const BACKLOG: u32 = 16;
/// How many IPs get TCP bases (the first of the connection's bases).
pub const MAX_TCP_IPS: usize = 4;
/// One read.
const READ_BUF: usize = 16 * 1024;
/// Messages on their way to the connection's task.
const EVENTS: usize = 1024;

/// What a connection reports to the connection's task.
#[derive(Debug)]
pub(super) enum TcpEvent {
    /// One message arrived.
    Message(TcpMessage),
    /// The connection from `base` to `remote` could not be made, or ended
    /// ([`crate::peer::Peer::tcp_connection_failed`]).
    Failed {
        /// The key's base.
        base: SocketAddr,
        /// The remote address.
        remote: SocketAddr,
    },
}

/// One message that arrived on an ICE-TCP connection.
#[derive(Debug)]
pub(super) struct TcpMessage {
    /// The key's base: the listening address, the active base `(ip, 0)` or the so base.
    pub(super) base: SocketAddr,
    /// The peer's (or the STUN server's) address.
    pub(super) remote: SocketAddr,
    /// An RFC 4571 frame's contents, or a STUN server's message.
    pub(super) data: Vec<u8>,
}

/// A connection: the base it belongs to and the remote address.
type Key = (SocketAddr, SocketAddr);

/// How a connection comes about.
#[derive(Debug)]
enum How {
    /// From an ephemeral port of the active base's IP.
    Active,
    /// From the so base, to a STUN server (no RFC 4571 framing).
    Stun,
    /// From the so base, to the peer at the same time as it connects to us.
    Simultaneous,
    /// The peer connected to a listening socket.
    Accepted(TcpStream),
}

#[derive(Debug)]
struct Conn {
    id: u64,
    tx: mpsc::Sender<Write>,
    /// While a simultaneous open is under way: where the peer's connection goes when the
    /// so port accepts it first.
    adopt: Option<oneshot::Sender<TcpStream>>,
}

#[derive(Debug, Default)]
struct Table {
    passive: Vec<SocketAddr>,
    so: Vec<SocketAddr>,
    conns: HashMap<Key, Conn>,
    /// Accepted connections alive, by listening address.
    accepted: HashMap<SocketAddr, usize>,
    next_id: u64,
    tasks: Vec<AbortHandle>,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    table: Mutex<Table>,
    events: mpsc::Sender<TcpEvent>,
    stun_servers: Vec<SocketAddr>,
    check_timeout: Duration,
    runtime: tokio::runtime::Handle,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets connection `id` (if `key` still names it); its writer's queue closes.
    fn remove(&self, key: Key, id: u64, accepted: bool) {
        let mut t = self.lock();
        if t.conns.get(&key).is_some_and(|c| c.id == id) {
            t.conns.remove(&key);
        }
        if accepted && let Some(n) = t.accepted.get_mut(&key.0) {
            *n = n.saturating_sub(1);
        }
    }

    fn spawn<F>(self: &Arc<Self>, t: &mut Table, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        t.tasks.retain(|h| !h.is_finished());
        t.tasks.push(self.runtime.spawn(f).abort_handle());
    }
}

/// The ICE-TCP side of a connection: where its handle and its task write.
#[derive(Debug, Clone)]
pub(super) struct IceTcp(Arc<Inner>);

/// What the connection's task owns: the messages that arrived. Dropping it closes every
/// ICE-TCP socket.
#[derive(Debug)]
pub(super) struct TcpTasks {
    inner: Arc<Inner>,
    events: mpsc::Receiver<TcpEvent>,
}

impl Drop for TcpTasks {
    fn drop(&mut self) {
        let mut t = self.inner.lock();
        t.closed = true;
        t.conns.clear();
        for h in t.tasks.drain(..) {
            h.abort();
        }
    }
}

impl TcpTasks {
    /// The next event of any connection.
    pub(super) async fn next(&mut self) -> Option<TcpEvent> {
        self.events.recv().await
    }
}

/// A TCP socket for `addr`'s family.
fn socket_for(addr: SocketAddr) -> io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// A socket bound to the so address (or to `(ip, 0)` for a reservation): address and
/// port shared with the others bound there.
fn so_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let s = socket_for(addr)?;
    s.set_reuseaddr(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    s.set_reuseport(true)?;
    s.bind(addr)?;
    Ok(s)
}

/// A listening socket on `ip`, on a port other than `avoid` (the UDP socket's: a TCP
/// base on the same number would make the candidates harder to tell apart in traces).
fn listen_on(ip: IpAddr, avoid: u16, so: bool) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..3 {
        let addr = SocketAddr::new(ip, 0);
        let s = if so {
            so_socket(addr)?
        } else {
            let s = socket_for(addr)?;
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s
        };
        if s.local_addr()?.port() == avoid {
            last = Some(s);
            continue;
        }
        return s.listen(BACKLOG);
    }
    match last {
        Some(s) => s.listen(BACKLOG),
        None => Err(io::Error::other("no port")),
    }
}

impl IceTcp {
    /// The connection manager, without sockets yet ([`IceTcp::bind`]). `stun_servers`:
    /// the servers an so base asks over TCP; `check_timeout`: how long a simultaneous
    /// open is tried.
    pub(super) fn new(stun_servers: Vec<SocketAddr>, check_timeout: Duration) -> (Self, TcpTasks) {
        let (tx, rx) = mpsc::channel(EVENTS);
        let inner = Arc::new(Inner {
            table: Mutex::new(Table::default()),
            events: tx,
            stun_servers,
            check_timeout,
            runtime: tokio::runtime::Handle::current(),
        });
        (Self(inner.clone()), TcpTasks { inner, events: rx })
    }

    /// Binds a passive and an so base on each IP (the first [`MAX_TCP_IPS`]), avoiding
    /// port `avoid`, and starts accepting on them: the passive bases and the so bases, for
    /// [`crate::peer::Peer::tcp_bases`] (empty where nothing could be bound).
    pub(super) fn bind(&self, ips: &[IpAddr], avoid: u16) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut seen = Vec::new();
        let mut passive = Vec::new();
        let mut so = Vec::new();
        for ip in ips.iter().copied() {
            if seen.contains(&ip) || ip.is_unspecified() {
                continue;
            }
            seen.push(ip);
            if seen.len() > MAX_TCP_IPS {
                break;
            }
            for is_so in [false, true] {
                match listen_on(ip, avoid, is_so) {
                    Ok(l) => match l.local_addr() {
                        Ok(a) => {
                            if is_so { &mut so } else { &mut passive }.push(a);
                            let inner = self.0.clone();
                            let mut t = self.0.lock();
                            if is_so {
                                t.so.push(a);
                            } else {
                                t.passive.push(a);
                            }
                            self.0.spawn(&mut t, accept(inner, l, a));
                        }
                        Err(e) => debug!(%ip, error = %e, "ICE-TCP: no listening address"),
                    },
                    Err(e) => debug!(%ip, so = is_so, error = %e, "ICE-TCP: cannot bind"),
                }
            }
        }
        debug!(?passive, ?so, "ICE-TCP bases bound");
        (passive, so)
    }

    /// After a network change: the bases on IPs that are gone are forgotten (their
    /// sockets stay until the connection closes: nothing reaches them), IPs without bases
    /// get them ([`IceTcp::bind`]); returns every base on `ips`, passive and so, for
    /// [`crate::peer::Peer::tcp_bases`].
    pub(super) fn rebind(&self, ips: &[IpAddr], avoid: u16) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let missing: Vec<IpAddr> = {
            let mut t = self.0.lock();
            t.passive.retain(|a| ips.contains(&a.ip()));
            t.so.retain(|a| ips.contains(&a.ip()));
            ips.iter()
                .copied()
                .filter(|ip| !t.passive.iter().chain(&t.so).any(|a| a.ip() == *ip))
                .collect()
        };
        if !missing.is_empty() {
            self.bind(&missing, avoid);
        }
        let t = self.0.lock();
        (t.passive.clone(), t.so.clone())
    }

    /// Whether `addr` is one of the ICE-TCP bases (port 0: an active one).
    pub(super) fn is_base(&self, addr: SocketAddr) -> bool {
        let t = self.0.lock();
        addr.port() == 0 && t.passive.iter().any(|p| p.ip() == addr.ip())
            || t.passive.contains(&addr)
            || t.so.contains(&addr)
    }

    /// Sends a message of the machine's (a STUN message, or application data) from the
    /// TCP base `source` to `destination`: framed (RFC 4571) unless to a STUN server, on
    /// the connection with that key, which is made first when there is none (from an
    /// active or an so base). Never waits: a full queue drops the message.
    pub(super) fn send(&self, source: SocketAddr, destination: SocketAddr, contents: &[u8]) {
        let inner = &self.0;
        let mut t = inner.lock();
        if t.closed {
            return;
        }
        let so = t.so.contains(&source);
        let stun = so && inner.stun_servers.contains(&destination);
        let msg = if stun {
            contents.to_vec()
        } else {
            let mut v = Vec::with_capacity(contents.len() + 2);
            if let Err(e) = frame(contents, &mut v) {
                debug!(error = %e, "ICE-TCP: message dropped");
                return;
            }
            v
        };
        let key = (source, destination);
        let msg = match t.conns.get(&key) {
            Some(c) => match c.tx.try_send(Write::Bytes(msg)) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    debug!(to = %destination, "ICE-TCP write queue full: message dropped");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(Write::Bytes(m))) => {
                    t.conns.remove(&key);
                    m
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            None => msg,
        };
        let how = if source.port() == 0 {
            How::Active
        } else if so {
            if stun { How::Stun } else { How::Simultaneous }
        } else {
            if t.passive.contains(&source) {
                debug!(from = %source, to = %destination, "ICE-TCP: no connection from the peer: message dropped");
            } else {
                debug!(from = %source, "ICE-TCP: not a TCP base: message dropped");
            }
            return;
        };
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let _ = tx.try_send(Write::Bytes(msg));
        let (adopt, adopted) = match how {
            How::Simultaneous => {
                let (a, b) = oneshot::channel();
                (Some(a), Some(b))
            }
            _ => (None, None),
        };
        let id = t.next_id;
        t.next_id += 1;
        t.conns.insert(key, Conn { id, tx, adopt });
        let task = connection(inner.clone(), key, id, how, rx, adopted);
        inner.spawn(&mut t, task);
    }

    /// Waits until what was given to each connection so far is written (each bounded by
    /// `within`).
    pub(super) async fn flush(&self, within: Duration) {
        let writers: Vec<mpsc::Sender<Write>> = {
            let t = self.0.lock();
            t.conns.values().map(|c| c.tx.clone()).collect()
        };
        for w in writers {
            let (tx, rx) = oneshot::channel();
            if w.try_send(Write::Flush(tx)).is_ok() {
                let _ = tokio::time::timeout(within, rx).await;
            }
        }
    }
}

/// Accepts the peer's connections on a listening socket (passive or so).
async fn accept(inner: Arc<Inner>, listener: TcpListener, local: SocketAddr) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted.
                debug!(%local, error = %e, "ICE-TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let key = (local, remote);
        let mut t = inner.lock();
        if t.closed {
            return;
        }
        // A simultaneous open under way with this peer: the connection is its.
        if let Some(adopt) = t.conns.get_mut(&key).and_then(|c| c.adopt.take()) {
            match adopt.send(stream) {
                Ok(()) => {
                    debug!(%local, %remote, "ICE-TCP: the peer's simultaneous open accepted");
                    continue;
                }
                Err(s) => {
                    // The attempt ended meanwhile: a connection of its own.
                    drop(t);
                    add_accepted(&inner, key, s);
                    continue;
                }
            }
        }
        drop(t);
        add_accepted(&inner, key, stream);
    }
}

fn add_accepted(inner: &Arc<Inner>, key: Key, stream: TcpStream) {
    let mut t = inner.lock();
    let n = t.accepted.entry(key.0).or_insert(0);
    if *n >= MAX_ACCEPTED {
        debug!(local = %key.0, remote = %key.1, "ICE-TCP: too many connections: closed");
        return;
    }
    *n += 1;
    debug!(local = %key.0, remote = %key.1, "ICE-TCP: connection accepted");
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let id = t.next_id;
    t.next_id += 1;
    // Replaces an older connection with the same key (that one is over: the kernel
    // cannot hold two with the same addresses).
    t.conns.insert(
        key,
        Conn {
            id,
            tx,
            adopt: None,
        },
    );
    let task = connection(inner.clone(), key, id, How::Accepted(stream), rx, None);
    inner.spawn(&mut t, task);
}

/// A connection's life: made (or accepted), then read and written until either side
/// ends it or it is forgotten (its queue's sender dropped).
async fn connection(
    inner: Arc<Inner>,
    key: Key,
    id: u64,
    how: How,
    rx: mpsc::Receiver<Write>,
    adopted: Option<oneshot::Receiver<TcpStream>>,
) {
    let (base, remote) = key;
    let accepted = matches!(how, How::Accepted(_));
    let framed = !matches!(how, How::Stun);
    let made = match how {
        How::Accepted(s) => Ok(s),
        How::Active => {
            connect_from(
                SocketAddr::new(base.ip(), 0),
                remote,
                false,
                CONNECT_TIMEOUT,
            )
            .await
        }
        How::Stun => connect_from(base, remote, true, STUN_CONNECT_TIMEOUT).await,
        How::Simultaneous => {
            let adopted = async {
                match adopted {
                    Some(a) => a.await.ok(),
                    None => None,
                }
            };
            tokio::select! {
                r = simultaneous_open(base, remote, inner.check_timeout) => r,
                Some(s) = adopted => Ok(s),
            }
        }
    };
    let stream = match made {
        Ok(s) => s,
        Err(e) => {
            debug!(%base, %remote, error = %e, "ICE-TCP: not connected");
            inner.remove(key, id, accepted);
            let _ = inner.events.send(TcpEvent::Failed { base, remote }).await;
            return;
        }
    };
    if let Some(c) = inner.lock().conns.get_mut(&key).filter(|c| c.id == id) {
        c.adopt = None;
    }
    let _ = stream.set_nodelay(true);
    debug!(%base, %remote, local = ?stream.local_addr().ok(), "ICE-TCP: connected");
    let r = serve(&inner, key, stream, rx, framed).await;
    debug!(%base, %remote, reason = %r, "ICE-TCP connection ended");
    inner.remove(key, id, accepted);
    let _ = inner.events.send(TcpEvent::Failed { base, remote }).await;
}

/// A connection from `local` (port 0: an ephemeral one) to `remote`, bounded by
/// `within`.
async fn connect_from(
    local: SocketAddr,
    remote: SocketAddr,
    so: bool,
    within: Duration,
) -> io::Result<TcpStream> {
    let s = if so {
        so_socket(local)?
    } else {
        let s = socket_for(local)?;
        s.bind(local)?;
        s
    };
    match tokio::time::timeout(within, s.connect(remote)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// TCP simultaneous open from `local` to `remote` (RFC 6544 §7.2.1): connects, and
/// when refused (the peer's NAT reset our SYN, or the peer's host had no socket yet)
/// connects again from the same address every [`SO_RETRY`], for at most `within`. A
/// connect that gets no answer stays pending (the kernel sends the SYN again): the
/// peer's SYN that reaches it makes the connection.
async fn simultaneous_open(
    local: SocketAddr,
    remote: SocketAddr,
    within: Duration,
) -> io::Result<TcpStream> {
    let until = tokio::time::Instant::now() + within;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("simultaneous open: no connection after {attempts} attempts"),
            ));
        }
        let e = match so_socket(local) {
            Ok(s) => match tokio::time::timeout(left, s.connect(remote)).await {
                Ok(Ok(s)) => {
                    debug!(%local, %remote, attempts, "ICE-TCP: simultaneous open connected");
                    return Ok(s);
                }
                Ok(Err(e)) => e,
                Err(_) => continue,
            },
            Err(e) => e,
        };
        debug!(%local, %remote, error = %e, "ICE-TCP: simultaneous open: trying again");
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(SO_RETRY.min(left)).await;
    }
}

/// Reads and writes a connection until it ends; the reason.
async fn serve(
    inner: &Inner,
    key: Key,
    stream: TcpStream,
    mut rx: mpsc::Receiver<Write>,
    framed: bool,
) -> String {
    let (base, remote) = key;
    let (mut rd, mut wr) = stream.into_split();
    let reading = async {
        let mut buf = vec![0u8; READ_BUF];
        let mut frames = FrameReader::new();
        let mut stun = StreamFramer::new();
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) => return "closed by the other side".to_string(),
                Ok(n) => n,
                Err(e) => return e.to_string(),
            };
            let mut out = Vec::new();
            if framed {
                if let Err(e) = frames.push(&buf[..n]) {
                    return e.to_string();
                }
                while let Some(f) = frames.next_frame() {
                    out.push(f.to_vec());
                }
            } else {
                if let Err(e) = stun.push(&buf[..n]) {
                    return e.to_string();
                }
                while let Some(f) = stun.next_frame() {
                    match f {
                        Ok(f) => out.push(f.to_vec()),
                        Err(e) => return e.to_string(),
                    }
                }
            }
            for data in out {
                let m = TcpMessage { base, remote, data };
                if inner.events.send(TcpEvent::Message(m)).await.is_err() {
                    return "the connection is closing".to_string();
                }
            }
        }
    };
    let writing = async {
        while let Some(w) = rx.recv().await {
            match w {
                Write::Bytes(b) => {
                    if let Err(e) = wr.write_all(&b).await {
                        return e.to_string();
                    }
                }
                Write::Flush(done) => {
                    let _ = wr.flush().await;
                    let _ = done.send(());
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        "closed".to_string()
    };
    tokio::select! {
        r = reading => r,
        r = writing => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A loopback port with nothing on it (bound, then closed).
    fn free_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    /// A refused simultaneous open (nobody there yet, the kernel answers with a reset) is
    /// tried again from the same address until the other side appears: where one try
    /// gave up at the first reset.
    #[test]
    fn a_refused_simultaneous_open_is_tried_again() {
        rt().block_on(async {
            let so = so_socket("127.0.0.1:0".parse().unwrap()).unwrap();
            let local = so.local_addr().unwrap();
            let _reservation = so.listen(BACKLOG).unwrap();
            let remote = free_port();
            let late = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let l = TcpListener::bind(remote).await.unwrap();
                l.accept().await.unwrap().1
            });
            let t0 = tokio::time::Instant::now();
            let s = simultaneous_open(local, remote, Duration::from_secs(5))
                .await
                .expect("connected once the other side listens");
            assert!(t0.elapsed() >= Duration::from_millis(500));
            assert_eq!(s.local_addr().unwrap(), local, "from the so address itself");
            assert_eq!(late.await.unwrap(), local);
        });
    }

    /// Nobody ever there: it gives up once its time is over, not before.
    #[test]
    fn simultaneous_open_gives_up_after_its_time() {
        rt().block_on(async {
            let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let local = so_socket(local).unwrap().local_addr().unwrap();
            let t0 = tokio::time::Instant::now();
            let r = simultaneous_open(local, free_port(), Duration::from_millis(700)).await;
            let took = t0.elapsed();
            assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
            assert!(took >= Duration::from_millis(700), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
        });
    }

    /// A passive base keeps at most MAX_ACCEPTED connections at a time; more are closed
    /// at once. Messages on the kept ones reach the task, deframed, keyed by the
    /// listening address and the peer's.
    #[test]
    fn a_listener_keeps_a_bounded_number_of_connections() {
        rt().block_on(async {
            let (tcp, mut tasks) = IceTcp::new(Vec::new(), Duration::from_secs(1));
            let (passive, so) = tcp.bind(&["127.0.0.1".parse().unwrap()], 0);
            assert_eq!((passive.len(), so.len()), (1, 1));
            let mut clients = Vec::new();
            for _ in 0..MAX_ACCEPTED + 4 {
                clients.push(TcpStream::connect(passive[0]).await.unwrap());
            }
            let mut closed = 0;
            for c in &mut clients {
                let mut b = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
                    Ok(Ok(_)) => panic!("nothing is sent to them"),
                    Err(_) => {}
                }
            }
            assert_eq!(closed, 4, "the connections past the bound are closed");
            // A kept one: two frames in one write arrive as two messages.
            let c = &mut clients[0];
            let mut stream = Vec::new();
            frame(b"one", &mut stream).unwrap();
            frame(b"two", &mut stream).unwrap();
            c.write_all(&stream).await.unwrap();
            let from = c.local_addr().unwrap();
            for want in [&b"one"[..], b"two"] {
                let m = tokio::time::timeout(Duration::from_secs(2), tasks.next())
                    .await
                    .unwrap()
                    .unwrap();
                let TcpEvent::Message(m) = m else {
                    panic!("a message: {m:?}")
                };
                assert_eq!((m.base, m.remote, &m.data[..]), (passive[0], from, want));
            }
            // And the machine's answer goes back on it, framed.
            tcp.send(passive[0], from, b"back");
            let mut got = [0u8; 6];
            tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, b"\x00\x04back");
        });
    }

    /// STUN over TCP from an so base: the connection leaves from the so address itself,
    /// carries the message without RFC 4571 framing, and the server's messages come back
    /// cut at STUN boundaries, keyed by the so base and the server. A server that refuses
    /// the connection is reported.
    #[test]
    fn stun_over_tcp_leaves_from_the_so_port_unframed() {
        rt().block_on(async {
            let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let at = server.local_addr().unwrap();
            let refusing = free_port();
            let (tcp, mut tasks) = IceTcp::new(vec![at, refusing], Duration::from_secs(1));
            let (_, so) = tcp.bind(&["127.0.0.1".parse().unwrap()], 0);
            let so = so[0];
            assert!(tcp.is_base(so));
            // A Binding request (a header alone).
            let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
            req.extend_from_slice(&[7; 12]);
            tcp.send(so, at, &req);
            let (mut conn, from) = tokio::time::timeout(Duration::from_secs(2), server.accept())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(from, so, "from the so address itself");
            let mut got = vec![0u8; req.len()];
            conn.read_exact(&mut got).await.unwrap();
            assert_eq!(got, req, "no framing");
            // Two responses in one write: two messages.
            let mut resp = req.clone();
            resp[0..2].copy_from_slice(&[0x01, 0x01]);
            let two = [resp.clone(), resp.clone()].concat();
            conn.write_all(&two).await.unwrap();
            for _ in 0..2 {
                let ev = tokio::time::timeout(Duration::from_secs(2), tasks.next())
                    .await
                    .unwrap()
                    .unwrap();
                let TcpEvent::Message(m) = ev else {
                    panic!("a message: {ev:?}")
                };
                assert_eq!((m.base, m.remote, &m.data[..]), (so, at, &resp[..]));
            }
            // Refused: reported, so that the machine stops waiting.
            tcp.send(so, refusing, &req);
            let ev = tokio::time::timeout(Duration::from_secs(3), tasks.next())
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(ev, TcpEvent::Failed { base, remote } if base == so && remote == refusing),
                "{ev:?}"
            );
        });
    }
}
