//! `pinhole signal`'s HTTP API over the sans-IO [`Rooms`]: a small rendezvous for
//! development and tests, usable with curl.
//!
//! - `POST /v1/rooms/ROOM/join` → `200 {"peer":"a","token":"…"}` (the first, controlling)
//!   or `"b"`; `409` when the room has two peers. The token (32 hex digits) is that peer's
//!   alone: every other request of the peer carries it as `token=`, else `403`.
//! - `POST /v1/rooms/ROOM/PEER?token=T` with a UTF-8 body (at most 16 KiB) → `204`: a
//!   message for the other peer. `413` too large, `429` too many waiting, `404` no such
//!   room, `503` when the server holds 32 MiB of messages.
//! - `GET /v1/rooms/ROOM/PEER?token=T&after=N&wait=SECS` → `200 {"next":M,"messages":[…]}`:
//!   the messages for PEER from sequence number N on (those before N are acknowledged and
//!   dropped); with `wait` (at most 30 s) it waits for one when there is none.
//!
//! Safe to leave on a public address: requests, bodies, rooms and queues are bounded
//! (see [`crate::signal`]), connections are closed after one request and time out, and at
//! most [`MAX_CONNECTIONS`] are served at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tracing::debug;

use super::{DriverError, ServeHandle, io, os_seed};
use crate::signal::{Head, MAX_MESSAGE, Rooms, Side, SignalError};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// The largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// A connection must deliver its request within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `wait` of a fetch.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

struct State {
    rooms: Mutex<Rooms>,
    posted: Notify,
}

/// Starts the rendezvous server on `listen` (TCP). Dropping the handle stops it.
pub async fn serve_signal(listen: SocketAddr) -> Result<ServeHandle, DriverError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(io(format!("binding {listen}")))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let state = Arc::new(State {
        rooms: Mutex::new(Rooms::new(os_seed()?)),
        posted: Notify::new(),
    });
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, from)) => {
                        let state = state.clone();
                        conns.spawn(async move {
                            let _permit = permit;
                            if let Err(e) = handle(stream, &state).await {
                                debug!(%from, error = %e, "signal request failed");
                            }
                        });
                    }
                    Err(e) => debug!(error = %e, "accept failed"),
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(ServeHandle::new(vec![addr], task))
}

struct Request {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Head {
        method,
        path,
        query,
        length,
    } = crate::signal::parse_head(&buf[..head_end]);
    if length > MAX_MESSAGE {
        return Ok(Some(Request {
            method,
            path,
            query,
            body: vec![0; MAX_MESSAGE + 1],
        }));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(Request {
        method,
        path,
        query,
        body,
    }))
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn status_of(e: &SignalError) -> u16 {
    match e {
        SignalError::BadRoom | SignalError::BadPeer => 400,
        SignalError::Full => 409,
        SignalError::NoRoom => 404,
        SignalError::TooManyRooms => 503,
        SignalError::TooLarge => 413,
        SignalError::QueueFull => 429,
        SignalError::Forbidden => 403,
        SignalError::Busy => 503,
    }
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return respond(&mut stream, 400, "{\"error\":\"bad request\"}").await,
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, 408, "{\"error\":\"request timeout\"}").await,
    };
    let (status, body) = route(&req, state).await;
    respond(&mut stream, status, &body).await
}

async fn route(req: &Request, state: &State) -> (u16, String) {
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let err = |e: SignalError| {
        (
            status_of(&e),
            format!("{{\"error\":{}}}", json_string(&e.to_string())),
        )
    };
    let lock = || state.rooms.lock().unwrap_or_else(PoisonError::into_inner);
    match (req.method.as_str(), parts.as_slice()) {
        ("POST", ["v1", "rooms", room, "join"]) => match lock().join(Instant::now(), room) {
            Ok((side, token)) => (
                200,
                format!("{{\"peer\":\"{}\",\"token\":\"{token}\"}}", side.as_str()),
            ),
            Err(e) => err(e),
        },
        ("POST", ["v1", "rooms", room, peer]) => {
            let side = match Side::parse(peer) {
                Ok(s) => s,
                Err(e) => return err(e),
            };
            if req.body.len() > MAX_MESSAGE {
                return err(SignalError::TooLarge);
            }
            if std::str::from_utf8(&req.body).is_err() {
                return (400, "{\"error\":\"messages are UTF-8 text\"}".into());
            }
            let token = query_value(&req.query, "token").unwrap_or_default();
            let posted = lock().post(Instant::now(), room, side, token, &req.body);
            match posted {
                Ok(()) => {
                    state.posted.notify_waiters();
                    (204, String::new())
                }
                Err(e) => err(e),
            }
        }
        ("GET", ["v1", "rooms", room, peer]) => {
            let side = match Side::parse(peer) {
                Ok(s) => s,
                Err(e) => return err(e),
            };
            let after: u64 = query_value(&req.query, "after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let wait = query_value(&req.query, "wait")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|w| w.is_finite() && *w >= 0.0)
                .map_or(Duration::ZERO, |w| {
                    Duration::from_secs_f64(w.min(MAX_WAIT.as_secs_f64()))
                });
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                // Register before looking, so that a post in between is not missed.
                let notified = state.posted.notified();
                let token = query_value(&req.query, "token").unwrap_or_default();
                let fetched = lock().fetch(Instant::now(), room, side, token, after);
                match fetched {
                    Ok((messages, next))
                        if !messages.is_empty() || tokio::time::Instant::now() >= deadline =>
                    {
                        let list: Vec<String> = messages
                            .iter()
                            .map(|m| json_string(&String::from_utf8_lossy(m)))
                            .collect();
                        return (
                            200,
                            format!("{{\"next\":{next},\"messages\":[{}]}}", list.join(",")),
                        );
                    }
                    Ok(_) => {
                        let _ = tokio::time::timeout_at(deadline, notified).await;
                    }
                    Err(e) => return err(e),
                }
            }
        }
        _ => (404, "{\"error\":\"no such endpoint\"}".into()),
    }
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let _ = stream.shutdown().await;
    Ok(())
}
