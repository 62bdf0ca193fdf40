//! The TCP and TLS connections of a [`super::peer::PeerConnection`] to its TURN servers
//! (RFC 8656 §3.1: TURN over TCP or TLS reaches a relay from networks that block UDP).
//!
//! One task per server connects (bounded by [`super::turn::CONNECT_TIMEOUT`]), then reads
//! the stream, cuts it into messages with a [`StreamFramer`] and hands each one to the
//! connection's task as a [`StreamEvent::Frame`]; what the [`crate::peer::Peer`] machine
//! sends to that server (protocol TCP) is written as it is. The relay path carries a
//! `Vec` per message: the allocation-free path is the direct one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::turn::Connector;
use crate::peer::TurnServerSpec;
use crate::turn::StreamFramer;
use crate::{Protocol, Transmit};

/// How many messages wait to be written on one stream before more are dropped (as UDP
/// would drop them; the machine retransmits its requests over UDP only, but a relay that
/// cannot keep up loses data either way).
const WRITE_QUEUE: usize = 512;

/// What a stream task reports.
#[derive(Debug)]
pub(super) enum StreamEvent {
    /// The connection is up, from `local`.
    Connected {
        server: SocketAddr,
        local: SocketAddr,
    },
    /// One message (STUN or ChannelData) from the server.
    Frame {
        server: SocketAddr,
        local: SocketAddr,
        data: Vec<u8>,
    },
    /// Not connected, or the connection ended.
    Closed { server: SocketAddr, error: String },
}

/// Where to write for each connected server: shared by the connection's task (control
/// traffic) and its handle (application data through a relay on a stream).
#[derive(Debug, Clone, Default)]
pub(super) struct StreamWriters(Arc<Mutex<Vec<Writer>>>);

/// A server and the queue of its stream's writer.
type Writer = (SocketAddr, mpsc::Sender<Write>);

/// What a stream's writer is given.
#[derive(Debug)]
pub(super) enum Write {
    /// A message, written as it is.
    Bytes(Vec<u8>),
    /// Answered once everything before it is written and flushed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl StreamWriters {
    /// Writes a message of the machine's to its server's stream; `false` when `t` is not
    /// for a stream.
    pub(super) fn send(&self, t: &Transmit) -> bool {
        self.send_bytes(t.proto, t.destination, &t.contents)
    }

    /// Writes `bytes` to the stream to `server`; `false` when `proto` is not TCP.
    pub(super) fn send_bytes(&self, proto: Protocol, server: SocketAddr, bytes: &[u8]) -> bool {
        if proto != Protocol::Tcp {
            return false;
        }
        let writers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match writers.iter().find(|(s, _)| *s == server) {
            Some((_, w)) => {
                if w.try_send(Write::Bytes(bytes.to_vec())).is_err() {
                    debug!(to = %server, "TURN stream full or closed: message dropped");
                }
            }
            None => debug!(to = %server, "no TURN stream to this server: message dropped"),
        }
        true
    }

    /// Waits until every message given to a stream so far is written (each stream
    /// bounded by `within`): before a process that sent its last data exits.
    pub(super) async fn flush(&self, within: std::time::Duration) {
        let writers: Vec<mpsc::Sender<Write>> = {
            let w = self.0.lock().unwrap_or_else(|e| e.into_inner());
            w.iter().map(|(_, s)| s.clone()).collect()
        };
        for w in writers {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if w.send(Write::Flush(tx)).await.is_ok() {
                let _ = tokio::time::timeout(within, rx).await;
            }
        }
    }

    fn add(&self, server: SocketAddr, w: mpsc::Sender<Write>) {
        let mut writers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        writers.retain(|(s, _)| *s != server);
        writers.push((server, w));
    }
}

/// The connections, by server.
#[derive(Debug)]
pub(super) struct Streams {
    writers: StreamWriters,
    events: mpsc::Receiver<StreamEvent>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Streams {
    /// Starts connecting to each server.
    pub(super) fn start<'a>(specs: impl Iterator<Item = &'a TurnServerSpec>) -> Self {
        let (tx, events) = mpsc::channel(1024);
        let writers = StreamWriters::default();
        let tasks = specs
            .map(|spec| tokio::spawn(run(spec.clone(), tx.clone(), writers.clone())))
            .collect();
        Self {
            writers,
            events,
            tasks,
        }
    }

    /// Closes every connection (an event of theirs still queued is dropped with them)
    /// and connects to these servers instead: after a network change, from the new one.
    pub(super) fn reconnect<'a>(&mut self, specs: impl Iterator<Item = &'a TurnServerSpec>) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.writers
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let (tx, events) = mpsc::channel(1024);
        self.events = events;
        self.tasks = specs
            .map(|spec| tokio::spawn(run(spec.clone(), tx.clone(), self.writers.clone())))
            .collect();
    }

    /// The writers, for whoever sends.
    pub(super) fn writers(&self) -> StreamWriters {
        self.writers.clone()
    }

    /// The next event of any stream (pending forever when there is none).
    pub(super) async fn next(&mut self) -> Option<StreamEvent> {
        if self.tasks.is_empty() {
            return std::future::pending().await;
        }
        self.events.recv().await
    }
}

async fn run(spec: TurnServerSpec, events: mpsc::Sender<StreamEvent>, writers: StreamWriters) {
    let server = spec.server;
    let closed = |error: String| StreamEvent::Closed { server, error };
    let host = spec
        .tls_name
        .clone()
        .unwrap_or_else(|| server.ip().to_string());
    let connector = match Connector::new(spec.transport, host, spec.ca_pem.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = events.send(closed(e.to_string())).await;
            return;
        }
    };
    let (stream, local) = match connector.connect_stream(server, None).await {
        Ok(s) => s,
        Err(e) => {
            let _ = events.send(closed(e.to_string())).await;
            return;
        }
    };
    let (wtx, mut wrx) = mpsc::channel::<Write>(WRITE_QUEUE);
    // The writer first, so that the machine's first message finds it.
    writers.add(server, wtx);
    if events
        .send(StreamEvent::Connected { server, local })
        .await
        .is_err()
    {
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut framer = StreamFramer::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = match r {
                    Ok(0) => {
                        let _ = events.send(closed("the server closed the connection".into())).await;
                        return;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        let _ = events.send(closed(e.to_string())).await;
                        return;
                    }
                };
                if framer.push(&buf[..n]).is_err() {
                    let _ = events.send(closed("stream framing lost".into())).await;
                    return;
                }
                while let Some(f) = framer.next_frame() {
                    match f {
                        Ok(f) => {
                            let frame = StreamEvent::Frame { server, local, data: f.to_vec() };
                            if events.send(frame).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = events.send(closed(e.to_string())).await;
                            return;
                        }
                    }
                }
            }
            d = wrx.recv() => match d {
                Some(Write::Bytes(d)) => {
                    if let Err(e) = wr.write_all(&d).await {
                        let _ = events.send(closed(e.to_string())).await;
                        return;
                    }
                }
                Some(Write::Flush(done)) => {
                    // TLS holds records until flushed.
                    let _ = wr.flush().await;
                    let _ = done.send(());
                }
                None => {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), wr.shutdown()).await;
                    return;
                }
            },
        }
    }
}
