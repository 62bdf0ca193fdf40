//! Another implementation's ICE agent as a peer of `pinhole connect --signal-dir DIR
//! --name ME --peer THEM` in the NAT lab (issue 15), run inside a lab namespace with `ip
//! netns exec`, as `tests/libnice/nice_peer.py` is for libnice: `--impl webrtc-ice`
//! (webrtc-rs's `webrtc-ice` 0.17: host, server-reflexive and relayed candidates of its own
//! gathering) or `--impl str0m` (str0m's sans-IO agent, crate `is` 0.12, on one UDP socket
//! driven here: a host candidate and a server-reflexive one from a Binding request to
//! --stun; `is` has no TURN client, so --turn is refused).
//!
//! Signalling: it writes its description as RFC 8839 lines (`a=ice-ufrag`, `a=ice-pwd`,
//! `a=ice-lite` when lite, `a=candidate:…`, `a=end-of-candidates`, CRLF-terminated) to
//! DIR/ME.sdp once gathering is over (write and rename), and reads the peer's from
//! DIR/THEM.sdp (polled) until its credentials and `a=end-of-candidates` are in. The
//! smaller name controls; a lite agent is always controlled.
//!
//! `--ip IP`: the host candidate on that address only (else webrtc-ice's on every
//! interface but loopback, str0m's on the address toward --stun).
//!
//! Data: once a pair is selected it sends --send (a line) three times (UDP), prints every
//! datagram it receives on stdout, and exits 0 --linger seconds after it has sent its line
//! and received one; 1 on failure or --timeout; 2 on bad arguments.
//!
//! Events: one JSON object a line on stderr, each with `elapsed_ms` from the start of the
//! process, named as `pinhole connect --json` names them: `remote-description` (with
//! `unix_ms`), `connected` (with the pair's `local` and `remote` `{type, address}`),
//! `path-changed` (the same, when the agent moves data to another pair), `first-data`,
//! `disconnected`.
//!
//! Usage: `ice-peer [--impl webrtc-ice|str0m] --signal-dir DIR --name ME --peer THEM
//! [--ip IP] [--stun IP:PORT] [--turn IP:PORT --user U --password P] [--relay-only] [--lite]
//! [--send LINE] [--timeout S] [--linger S]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pinhole_tests::interop::str0m_is::IsPeer;
use pinhole_tests::interop::wrtc::{Options, WrtcPeer};
use serde_json::{Value, json};

/// How often the peer's file is read.
const POLL: Duration = Duration::from_millis(20);
/// How many times the line is sent.
const SENDS: usize = 3;

struct Args {
    /// str0m's agent rather than webrtc-ice.
    str0m: bool,
    dir: PathBuf,
    name: String,
    peer: String,
    opts: Options,
    send: Option<String>,
    timeout: Duration,
    linger: Duration,
}

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "ice-peer: {why}\nusage: ice-peer [--impl webrtc-ice|str0m] --signal-dir DIR --name ME --peer THEM \
         [--ip IP] [--stun IP:PORT] [--turn IP:PORT --user U --password P] [--relay-only] [--lite] \
         [--send LINE] [--timeout S] [--linger S]"
    );
    ExitCode::from(2)
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut dir, mut name, mut peer) = (None, None, None);
    let (mut stun, mut turn, mut user, mut pass) = (None, None, None, None);
    let mut opts = Options::default();
    let mut send = None;
    let mut str0m = false;
    let (mut timeout, mut linger) = (20.0_f64, 1.0_f64);
    let addr = |v: String| v.parse::<SocketAddr>().map_err(|e| format!("{v}: {e}"));
    let secs = |v: String| {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or(format!("{v}: not a number of seconds"))
    };
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--impl" => {
                str0m = match value()?.as_str() {
                    "webrtc-ice" => false,
                    "str0m" => true,
                    other => return Err(format!("--impl {other}: webrtc-ice or str0m")),
                }
            }
            "--signal-dir" => dir = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--peer" => peer = Some(value()?),
            "--stun" => stun = Some(addr(value()?)?),
            "--turn" => turn = Some(addr(value()?)?),
            "--user" => user = Some(value()?),
            "--password" => pass = Some(value()?),
            "--send" => send = Some(value()?),
            "--timeout" => timeout = secs(value()?)?,
            "--linger" => linger = secs(value()?)?,
            "--ip" => {
                let v = value()?;
                opts.ip = Some(v.parse().map_err(|e| format!("--ip {v}: {e}"))?);
            }
            "--relay-only" => opts.relay_only = true,
            "--lite" => opts.lite = true,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let (Some(dir), Some(name), Some(peer)) = (dir, name, peer) else {
        return Err("--signal-dir, --name and --peer are required".into());
    };
    if name == peer {
        return Err("--name and --peer must differ".into());
    }
    opts.stun = stun;
    if let Some(t) = turn {
        let (Some(u), Some(p)) = (user, pass) else {
            return Err("--turn needs --user and --password".into());
        };
        opts.turn = Some((t, u, p));
    }
    if str0m && opts.turn.is_some() {
        return Err("--impl str0m has no TURN client: no --turn".into());
    }
    if opts.relay_only && opts.turn.is_none() {
        return Err("--relay-only needs --turn".into());
    }
    Ok(Args {
        str0m,
        dir,
        name,
        peer,
        opts,
        send,
        timeout: Duration::from_secs_f64(timeout),
        linger: Duration::from_secs_f64(linger),
    })
}

fn event(started: Instant, mut v: Value) {
    v["elapsed_ms"] = json!((started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    eprintln!("{v}");
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The peer's (ufrag, password, candidate lines) once its file holds them all.
fn read_peer(path: &std::path::Path) -> Option<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (mut ufrag, mut pwd, mut lines, mut end) = (None, None, Vec::new(), false);
    for l in text.lines().map(str::trim) {
        if let Some(u) = l.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(u.to_owned());
        } else if let Some(p) = l.strip_prefix("a=ice-pwd:") {
            pwd = Some(p.to_owned());
        } else if l.starts_with("a=candidate:") {
            lines.push(l.to_owned());
        } else if l == "a=end-of-candidates" {
            end = true;
        }
    }
    if !end {
        return None;
    }
    Some((ufrag?, pwd?, lines))
}

/// Writes our description to DIR/ME.sdp (write and rename).
fn write_description(args: &Args, ufrag: &str, pwd: &str, lines: &[String]) -> Result<(), String> {
    let mut desc = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    if args.opts.lite {
        desc.push_str("a=ice-lite\r\n");
    }
    for l in lines {
        desc.push_str(&format!("a={l}\r\n"));
    }
    desc.push_str("a=end-of-candidates\r\n");
    let mine = args.dir.join(format!("{}.sdp", args.name));
    let tmp = args.dir.join(format!("{}.sdp.tmp", args.name));
    std::fs::write(&tmp, &desc)
        .and_then(|()| std::fs::rename(&tmp, &mine))
        .map_err(|e| format!("writing {}: {e}", mine.display()))
}

/// Waits (polling) for the peer's whole description, until `deadline`.
async fn wait_description(
    args: &Args,
    deadline: Instant,
) -> Result<(String, String, Vec<String>), String> {
    let theirs = args.dir.join(format!("{}.sdp", args.peer));
    loop {
        if let Some(d) = read_peer(&theirs) {
            return Ok(d);
        }
        if Instant::now() >= deadline {
            return Err("no peer description within --timeout".into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A `connected` or `path-changed` event for the pair.
fn pair_json(name: &str, pair: Option<(String, String, String, String)>) -> Value {
    let end = |t: Option<&String>, a: Option<&String>| json!({"type": t.map_or("?", |s| s.as_str()), "address": a.map_or("?", |s| s.as_str())});
    json!({
        "event": name,
        "local": end(pair.as_ref().map(|p| &p.0), pair.as_ref().map(|p| &p.1)),
        "remote": end(pair.as_ref().map(|p| &p.2), pair.as_ref().map(|p| &p.3)),
    })
}

/// Prints a datagram of the peer's on stdout; `first-data` for the first.
fn got_data(started: Instant, received: &mut bool, d: &[u8]) {
    use std::io::Write as _;
    if d.is_empty() {
        event(started, json!({"event": "peer-end"}));
        return;
    }
    if !*received {
        *received = true;
        event(started, json!({"event": "first-data", "bytes": d.len()}));
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(d);
    let _ = out.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let started = Instant::now();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    let controlling = args.name < args.peer && !args.opts.lite;
    event(
        started,
        json!({"event": "started", "impl": if args.str0m { "str0m" } else { "webrtc-ice" },
               "controlling": controlling, "lite": args.opts.lite}),
    );
    let r = if args.str0m {
        run_str0m(&args, started, controlling).await
    } else {
        run_webrtc_ice(&args, started, controlling).await
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            event(started, json!({"event": "disconnected", "reason": reason}));
            ExitCode::FAILURE
        }
    }
}

async fn run_webrtc_ice(args: &Args, started: Instant, controlling: bool) -> Result<(), String> {
    let deadline = started + args.timeout;
    let mut peer = WrtcPeer::start(&args.opts)
        .await
        .map_err(|e| format!("webrtc-ice agent: {e}"))?;
    let lines = peer
        .gather(deadline.saturating_duration_since(Instant::now()))
        .await;
    write_description(args, &peer.ufrag, &peer.pwd, &lines)?;
    event(
        started,
        json!({"event": "local-description", "candidates": lines.len()}),
    );
    let (ufrag, pwd, remote) = wait_description(args, deadline).await?;
    let mut ignored = 0;
    for l in &remote {
        if let Err(e) = peer.add_remote(l) {
            ignored += 1;
            event(
                started,
                json!({"event": "candidate-ignored", "line": l, "error": e}),
            );
        }
    }
    event(
        started,
        json!({"event": "remote-description", "unix_ms": unix_ms(),
               "candidates": remote.len() - ignored}),
    );
    let within = deadline.saturating_duration_since(Instant::now());
    let conn = peer
        .connect(controlling, ufrag, pwd, within)
        .await
        .map_err(|e| format!("no path: {e}"))?;
    let mut selected = peer.selected();
    event(started, pair_json("connected", selected.clone()));

    let mut sent = args.send.is_none();
    let mut received = false;
    let mut sends = 0;
    let mut buf = vec![0u8; 65_536];
    let mut finish_at: Option<Instant> = None;
    let result = loop {
        let now = Instant::now();
        if let Some(at) = finish_at {
            if now >= at {
                break Ok(());
            }
        } else if now >= deadline {
            break Err("no data both ways within --timeout".into());
        }
        if let Some(line) = &args.send {
            if sends < SENDS {
                match conn.send(format!("{line}\n").as_bytes()).await {
                    Ok(_) => sent = true,
                    Err(e) => event(
                        started,
                        json!({"event": "send-failed", "error": e.to_string()}),
                    ),
                }
                sends += 1;
            }
        }
        if sent && received && finish_at.is_none() {
            finish_at = Some(Instant::now() + args.linger);
        }
        // The pair data goes on now (the agent's choice; reported when it changes).
        let now_selected = peer.selected();
        if now_selected != selected {
            selected = now_selected;
            event(started, pair_json("path-changed", selected.clone()));
        }
        match tokio::time::timeout(Duration::from_millis(100), conn.recv(&mut buf)).await {
            Ok(Ok(n)) => got_data(started, &mut received, &buf[..n]),
            Ok(Err(e)) => break Err(format!("receive: {e}")),
            Err(_) => {}
        }
    };
    peer.close().await;
    result
}

async fn run_str0m(args: &Args, started: Instant, controlling: bool) -> Result<(), String> {
    let deadline = started + args.timeout;
    // The host candidate: --ip, else the local address toward the STUN server
    // (connecting a UDP socket sends nothing).
    let ip = match (args.opts.ip, args.opts.stun) {
        (Some(ip), _) => ip,
        (None, Some(s)) => std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|u| u.connect(s).and_then(|()| u.local_addr()))
            .map_err(|e| format!("local address toward {s}: {e}"))?
            .ip(),
        (None, None) => {
            return Err("--impl str0m needs --ip or --stun (for its host address)".into());
        }
    };
    let mut peer = IsPeer::bind(SocketAddr::new(ip, 0), args.opts.lite).await?;
    if let Some(s) = args.opts.stun.filter(|_| !args.opts.lite) {
        let mapped = peer
            .gather_srflx(s, deadline.saturating_duration_since(Instant::now()))
            .await?;
        event(
            started,
            json!({"event": "srflx", "address": mapped.to_string()}),
        );
    }
    peer.set_controlling(controlling);
    let (ufrag, pwd) = peer.credentials();
    let lines = peer.candidate_lines();
    write_description(args, &ufrag, &pwd, &lines)?;
    event(
        started,
        json!({"event": "local-description", "candidates": lines.len()}),
    );
    let (r_ufrag, r_pwd, remote) = wait_description(args, deadline).await?;
    peer.set_remote_credentials(&r_ufrag, &r_pwd);
    let mut ignored = 0;
    for l in &remote {
        if let Err(e) = peer.add_remote(l) {
            ignored += 1;
            event(
                started,
                json!({"event": "candidate-ignored", "line": l, "error": e}),
            );
        }
    }
    event(
        started,
        json!({"event": "remote-description", "unix_ms": unix_ms(),
               "candidates": remote.len() - ignored}),
    );
    peer.drive(deadline, |p| p.nominated.is_some()).await;
    if peer.nominated.is_none() {
        return Err(format!("no path (notes: {:?})", peer.notes));
    }
    let mut nominated = peer.nominated;
    event(started, pair_json("connected", peer.pair()));
    let mut sent = args.send.is_none();
    let mut received = false;
    let mut sends = 0;
    let mut finish_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(at) = finish_at {
            if now >= at {
                return Ok(());
            }
        } else if now >= deadline {
            return Err("no data both ways within --timeout".into());
        }
        if let Some(line) = &args.send {
            if sends < SENDS {
                sent |= peer.send(format!("{line}\n").as_bytes()).await;
                sends += 1;
            }
        }
        while let Some(d) = peer.take_data() {
            got_data(started, &mut received, &d);
        }
        if sent && received && finish_at.is_none() {
            finish_at = Some(Instant::now() + args.linger);
        }
        // The agent keeps answering checks (and consent) meanwhile.
        peer.drive(Instant::now() + Duration::from_millis(100), |_| false)
            .await;
        if peer.nominated != nominated {
            nominated = peer.nominated;
            event(started, pair_json("path-changed", peer.pair()));
        }
    }
}
