//! pinhole's ICE agent against other implementations, on loopback (issue 15).
//!
//! The pinhole side is `pinhole::driver::peer::PeerConnection` in this process, bound to
//! 127.0.0.1; the other side is webrtc-rs's `webrtc-ice` agent (host candidates on `lo`
//! only) or str0m's sans-IO agent (crate `is`) on a 127.0.0.1 socket of its own, through
//! the wrappers of `pinhole_tests::interop`. Descriptions go across as RFC 8839 lines
//! (`candidate:…` written by one implementation, parsed by the other), so each case also
//! proves that each side accepts the other's candidate lines.
//!
//! Every case: each side as controlling and as controlled, and ICE-lite both ways (pinhole
//! full against a lite peer, pinhole lite against a full peer). Pass: both sides report a
//! nominated pair and each receives the other's line. Each test prints a table row per
//! case with the time to connected on each side, from the moment both hold the other's
//! description.
//!
//! Nothing here can be missing at run time (the peers are compiled in and only loopback
//! is used), so there is nothing to skip, with or without CI=true.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pinhole::driver::peer::{Incoming, PeerConnection, PeerConnectionEvent};
use pinhole::ice::{Candidate, IceCredentials};
use pinhole::peer::PeerConfig;
use pinhole_tests::interop::str0m_is::IsPeer;
use pinhole_tests::interop::wrtc::{Options, WrtcPeer};

/// The bound on gathering, on finding a pair, and on the data exchange, each.
const BOUND: Duration = Duration::from_secs(15);
/// Each side sends its line this many times, this far apart (UDP: one may be lost).
const SENDS: usize = 5;
const SEND_GAP: Duration = Duration::from_millis(100);

/// One case's outcome, a row of the table.
struct Row {
    peer: &'static str,
    pinhole_role: &'static str,
    /// pinhole's time to a nominated pair, and the peer's, from t0 (ms).
    connected: (Option<f64>, Option<f64>),
    /// The selected pair's addresses as pinhole saw it.
    pair: String,
    trouble: Vec<String>,
}

impl Row {
    fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |m| format!("{m:.1}"));
        format!(
            "{:<22} | {:<22} | loopback | {:<4} | {:>8} | {:>8} | {}",
            self.peer,
            self.pinhole_role,
            if self.trouble.is_empty() {
                "ok"
            } else {
                "FAIL"
            },
            ms(self.connected.0),
            ms(self.connected.1),
            self.pair
        )
    }
}

fn table(title: &str, rows: &[Row]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "\n{title}");
    let _ = writeln!(
        t,
        "{:<22} | {:<22} | path     | res  | pinh. ms | peer ms  | pair (pinhole's view)",
        "peer", "pinhole role"
    );
    for r in rows {
        let _ = writeln!(t, "{}", r.line());
    }
    t
}

fn assert_rows(title: &str, rows: &[Row]) {
    let t = table(title, rows);
    eprintln!("{t}");
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.trouble.is_empty())
        .map(|r| format!("{} / {}: {}", r.peer, r.pinhole_role, r.trouble.join("; ")))
        .collect();
    assert!(failed.is_empty(), "{t}\nfailed:\n{}", failed.join("\n"));
}

/// A pinhole connection on 127.0.0.1 and its gathered candidate lines.
async fn pinhole_side(controlling: bool, lite: bool) -> (PeerConnection, Vec<String>) {
    let mut config = PeerConfig::default();
    config.ice.lite = lite;
    let mut pc = PeerConnection::start(config, SocketAddr::from(([127, 0, 0, 1], 0)), controlling)
        .await
        .expect("pinhole connection on 127.0.0.1");
    let mut lines = Vec::new();
    let until = tokio::time::Instant::now() + BOUND;
    loop {
        match tokio::time::timeout_at(until, pc.next_event()).await {
            Ok(Some(PeerConnectionEvent::Candidate(c))) => lines.push(c.to_attribute()),
            Ok(Some(PeerConnectionEvent::GatheringComplete)) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("pinhole did not finish gathering within {BOUND:?}"),
        }
    }
    assert!(!lines.is_empty(), "pinhole gathered no candidate");
    (pc, lines)
}

/// Gives pinhole the peer's description.
fn describe_to_pinhole(
    pc: &PeerConnection,
    ufrag: &str,
    pwd: &str,
    lines: &[String],
    peer_lite: bool,
) -> Vec<String> {
    let mut trouble = Vec::new();
    pc.set_remote_credentials(IceCredentials {
        ufrag: ufrag.to_owned(),
        pwd: pwd.to_owned(),
    });
    if peer_lite {
        pc.set_remote_lite(true);
    }
    // Neither peer's description lists `renomination`: nominated once (RFC 8445 §8.1.1).
    pc.set_remote_renomination(false);
    for l in lines {
        match Candidate::parse(l) {
            Ok(c) => pc.add_remote_candidate(c),
            Err(e) => trouble.push(format!("pinhole refused the peer's {l:?}: {e}")),
        }
    }
    pc.end_of_remote_candidates();
    trouble
}

/// pinhole's half of a case, from t0: a nominated pair, its line sent [`SENDS`] times,
/// the peer's line received. Returns (ms to connected, pair, trouble).
async fn pinhole_run(
    mut pc: PeerConnection,
    t0: Instant,
    mine: String,
    theirs: String,
) -> (Option<f64>, String, Vec<String>, PeerConnection) {
    let until = tokio::time::Instant::now() + BOUND;
    let mut connected = None;
    let mut pair = String::from("-");
    let mut got = false;
    let mut wrong = Vec::new();
    let mut sent = 0;
    let mut next_send = tokio::time::Instant::now();
    while !(got && sent >= SENDS) {
        let tick = if connected.is_some() && sent < SENDS {
            next_send
        } else {
            until
        };
        tokio::select! {
            n = pc.next() => match n {
                Some(Incoming::Event(ev)) => {
                    if let PeerConnectionEvent::SelectedPair { local, remote, nominated: true, .. } = *ev {
                        if connected.is_none() {
                            connected = Some(t0.elapsed().as_secs_f64() * 1e3);
                            next_send = tokio::time::Instant::now();
                        }
                        pair = format!(
                            "{} {} ↔ {} {}",
                            local.kind.as_str(),
                            local.socket_addr().map_or("?".into(), |a| a.to_string()),
                            remote.kind.as_str(),
                            remote.socket_addr().map_or("?".into(), |a| a.to_string()),
                        );
                    }
                }
                Some(Incoming::Data(d)) => {
                    if d == theirs.as_bytes() {
                        got = true;
                    } else {
                        wrong.push(String::from_utf8_lossy(&d).into_owned());
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(tick) => {
                if tokio::time::Instant::now() >= until {
                    break;
                }
                pc.send(mine.as_bytes()).await;
                sent += 1;
                next_send = tokio::time::Instant::now() + SEND_GAP;
            }
        }
    }
    let mut trouble = Vec::new();
    if connected.is_none() {
        trouble.push("pinhole reported no nominated pair".to_owned());
    }
    if !got {
        trouble.push(format!("pinhole did not receive {theirs:?}"));
    }
    if !wrong.is_empty() {
        trouble.push(format!("pinhole received other data: {wrong:?}"));
    }
    (connected, pair, trouble, pc)
}

/// pinhole ⇄ webrtc-ice. `pinhole_lite` / `peer_lite`: which side runs ICE-lite (the
/// lite side is the controlled one).
async fn with_webrtc_ice(pinhole_controls: bool, pinhole_lite: bool, peer_lite: bool) -> Row {
    let (pc, p_lines) = pinhole_side(pinhole_controls, pinhole_lite).await;
    let mut w = WrtcPeer::start(&Options {
        lite: peer_lite,
        loopback_only: true,
        ..Options::default()
    })
    .await
    .expect("webrtc-ice agent");
    let w_lines = w.gather(BOUND).await;
    assert!(
        !w_lines.is_empty(),
        "webrtc-ice gathered no loopback candidate"
    );
    let mut trouble = Vec::new();

    let t0 = Instant::now();
    trouble.extend(describe_to_pinhole(
        &pc, &w.ufrag, &w.pwd, &w_lines, peer_lite,
    ));
    for l in &p_lines {
        if let Err(e) = w.add_remote(l) {
            trouble.push(format!("webrtc-ice refused pinhole's line: {e}"));
        }
    }
    let p_creds = pc.local_credentials().clone();
    let (p_msg, w_msg) = ("hello from pinhole", "hello from webrtc-ice");
    let pinhole = tokio::spawn(pinhole_run(pc, t0, p_msg.into(), w_msg.into()));

    // webrtc-ice: dial (controlling) or accept (controlled), then the same exchange.
    let mut w_connected = None;
    match w
        .connect(!pinhole_controls, p_creds.ufrag, p_creds.pwd, BOUND)
        .await
    {
        Ok(conn) => {
            w_connected = Some(t0.elapsed().as_secs_f64() * 1e3);
            let until = tokio::time::Instant::now() + BOUND;
            let mut got = false;
            let mut wrong = Vec::new();
            let mut buf = vec![0u8; 2048];
            for _ in 0..SENDS {
                if let Err(e) = conn.send(w_msg.as_bytes()).await {
                    trouble.push(format!("webrtc-ice send: {e}"));
                }
                tokio::time::sleep(SEND_GAP).await;
            }
            while !got {
                match tokio::time::timeout_at(until, conn.recv(&mut buf)).await {
                    Ok(Ok(n)) if &buf[..n] == p_msg.as_bytes() => got = true,
                    Ok(Ok(n)) => wrong.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Ok(Err(e)) => {
                        trouble.push(format!("webrtc-ice recv: {e}"));
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !got {
                trouble.push(format!("webrtc-ice did not receive {p_msg:?}"));
            }
            if !wrong.is_empty() {
                trouble.push(format!("webrtc-ice received other data: {wrong:?}"));
            }
        }
        Err(e) => trouble.push(format!("webrtc-ice found no pair: {e}")),
    }
    let (p_connected, pair, p_trouble, pc) = pinhole.await.expect("pinhole task");
    trouble.extend(p_trouble);
    if let Some((lt, la, rt, ra)) = w.selected() {
        // Both sides on one pair: the peer's view mirrors pinhole's.
        if !pair.contains(&la) || !pair.contains(&ra) {
            trouble.push(format!(
                "webrtc-ice selected {lt} {la} ↔ {rt} {ra}, pinhole {pair}"
            ));
        }
    }
    w.close().await;
    pc.close().await;
    Row {
        peer: if peer_lite {
            "webrtc-ice 0.17 (lite)"
        } else {
            "webrtc-ice 0.17"
        },
        pinhole_role: role(pinhole_controls, pinhole_lite),
        connected: (p_connected, w_connected),
        pair,
        trouble,
    }
}

fn role(controlling: bool, lite: bool) -> &'static str {
    match (controlling, lite) {
        (_, true) => "controlled (lite)",
        (true, false) => "controlling",
        (false, false) => "controlled",
    }
}

/// pinhole ⇄ str0m's `is` agent, driven here on its own socket.
async fn with_str0m(pinhole_controls: bool, pinhole_lite: bool, peer_lite: bool) -> Row {
    let (pc, p_lines) = pinhole_side(pinhole_controls, pinhole_lite).await;
    let mut s = IsPeer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), peer_lite)
        .await
        .expect("str0m agent");
    s.set_controlling(!pinhole_controls && !peer_lite);
    let (s_ufrag, s_pwd) = s.credentials();
    let s_lines = s.candidate_lines();
    let mut trouble = Vec::new();

    let t0 = Instant::now();
    trouble.extend(describe_to_pinhole(
        &pc, &s_ufrag, &s_pwd, &s_lines, peer_lite,
    ));
    let p_creds = pc.local_credentials().clone();
    s.set_remote_credentials(&p_creds.ufrag, &p_creds.pwd);
    for l in &p_lines {
        if let Err(e) = s.add_remote(l) {
            trouble.push(format!("str0m refused pinhole's line: {e}"));
        }
    }
    let (p_msg, s_msg) = ("hello from pinhole", "hello from str0m");
    let pinhole = tokio::spawn(pinhole_run(pc, t0, p_msg.into(), s_msg.into()));

    let deadline = Instant::now() + BOUND;
    s.drive(deadline, |s| s.nominated.is_some()).await;
    let s_connected = s.connected_at.map(|at| (at - t0).as_secs_f64() * 1e3);
    if s.nominated.is_none() {
        trouble.push(format!("str0m nominated no pair (notes: {:?})", s.notes));
    } else {
        let mut got = false;
        let mut wrong = Vec::new();
        for _ in 0..SENDS {
            s.send(s_msg.as_bytes()).await;
            let next = Instant::now() + SEND_GAP;
            s.drive(next, |_| false).await;
        }
        let deadline = Instant::now() + BOUND;
        while !got && Instant::now() < deadline {
            while let Some(d) = s.take_data() {
                if d == p_msg.as_bytes() {
                    got = true;
                } else {
                    wrong.push(String::from_utf8_lossy(&d).into_owned());
                }
            }
            if !got {
                s.drive(Instant::now() + Duration::from_millis(20), |_| false)
                    .await;
            }
        }
        if !got {
            trouble.push(format!("str0m did not receive {p_msg:?}"));
        }
        if !wrong.is_empty() {
            trouble.push(format!("str0m received other data: {wrong:?}"));
        }
    }
    // pinhole's exchange needs the agent answering (checks, consent) until it is done.
    let mut pinhole = pinhole;
    let (p_connected, pair, p_trouble, pc) = loop {
        tokio::select! {
            r = &mut pinhole => break r.expect("pinhole task"),
            () = s.drive(Instant::now() + Duration::from_millis(50), |_| false) => {}
        }
    };
    trouble.extend(p_trouble);
    pc.close().await;
    Row {
        peer: if peer_lite {
            "str0m is 0.12 (lite)"
        } else {
            "str0m is 0.12"
        },
        pinhole_role: role(pinhole_controls, pinhole_lite),
        connected: (p_connected, s_connected),
        pair,
        trouble,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_ice_on_loopback() {
    let mut rows = Vec::new();
    // (pinhole controls, pinhole lite, peer lite)
    for (c, pl, wl) in [
        (true, false, false),
        (false, false, false),
        (true, false, true),
        (false, true, false),
    ] {
        rows.push(with_webrtc_ice(c, pl, wl).await);
    }
    assert_rows("pinhole ⇄ webrtc-ice 0.17, loopback", &rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn str0m_ice_on_loopback() {
    let mut rows = Vec::new();
    for (c, pl, sl) in [
        (true, false, false),
        (false, false, false),
        (true, false, true),
        (false, true, false),
    ] {
        rows.push(with_str0m(c, pl, sl).await);
    }
    assert_rows("pinhole ⇄ str0m is 0.12, loopback", &rows);
}
