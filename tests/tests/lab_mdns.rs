//! mDNS host candidates (issue 15) on a real link: two hosts on one LAN of the NAT lab run
//! `pinhole connect --mdns`, so that each offers its host candidate only as a
//! `<uuid>.local` name and answers for it on 224.0.0.251:5353, and each must resolve the
//! other's name (one-shot queries to the group, RFC 6762) to connect. The multicast stays
//! on the lab's LAN bridge, inside namespaces the test creates.
//!
//! Resolution is what makes the path: each side settles on a host→host pair whose remote
//! address is the peer's LAN address. Without it, a side would only know the peer from
//! the peer's checks (a peer-reflexive candidate), and if neither resolved, there would be
//! no check at all. The description files must carry no host address, only names.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pinhole_tests::lab::cmd::in_ns;
use pinhole_tests::lab::support::lab_available;
use pinhole_tests::lab::{Lab, NatConfig, PINHOLE_PRIMARY, Uplink, bins};
use serde_json::Value;

/// The bound on the whole exchange, from spawn to both exits (then both are killed).
const WITHIN: Duration = Duration::from_secs(30);

struct Side {
    child: Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    events: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn connect_over_mdns_names_on_one_lan() {
    if !lab_available("lab_mdns", &[]) {
        return;
    }
    let bin = bins::pinhole().expect("the pinhole CLI");
    let mut lab = Lab::new().expect("lab");
    lab.start_pinhole_serve().expect("pinhole serve");
    lab.add_router("mdns", NatConfig::default(), Uplink::Internet)
        .expect("router");
    let a = lab.add_host("mdns-a", "mdns").expect("host").clone();
    let b = lab.add_host("mdns-b", "mdns").expect("host").clone();
    let dir = lab.dir().join("mdns-signal");
    std::fs::create_dir_all(&dir).expect("signal dir");
    let lines = ["hello from a over a .local name", "hello back from b"];
    let mut sides: Vec<Side> = [(&a, "a", "b", lines[0]), (&b, "b", "a", lines[1])]
        .into_iter()
        .map(|(host, me, them, line)| {
            let args: Vec<String> = [
                "connect",
                "--json",
                "--mdns",
                "--signal-dir",
                &dir.to_string_lossy(),
                "--name",
                me,
                "--peer",
                them,
                "--stun",
                &format!("stun:{PINHOLE_PRIMARY}"),
                "--no-relay",
                "--no-portmap",
                "--timeout",
                "20",
            ]
            .map(String::from)
            .to_vec();
            let mut child = in_ns(&host.ns, &bin.to_string_lossy(), &args)
                .env("RUST_LOG", "pinhole=debug")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning pinhole connect");
            // The line goes once a pair is selected; then EOF.
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(format!("{line}\n").as_bytes())
                .expect("stdin");
            drop(stdin);
            let mut out = child.stdout.take().expect("stdout");
            let stdout = std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = out.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            });
            let err = child.stderr.take().expect("stderr");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            });
            Side {
                child,
                stdout: Some(stdout),
                events: rx,
                seen: Vec::new(),
            }
        })
        .collect();

    // Both exit (bounded), with what they printed.
    let deadline = Instant::now() + WITHIN;
    let mut codes = [None, None];
    while codes.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, s) in sides.iter_mut().enumerate() {
            while let Ok(l) = s.events.try_recv() {
                s.seen.push(l);
            }
            if codes[i].is_none()
                && let Ok(Some(st)) = s.child.try_wait()
            {
                codes[i] = st.code();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut bad = Vec::new();
    let mut report = String::new();
    for (i, s) in sides.iter_mut().enumerate() {
        let _ = s.child.kill();
        let _ = s.child.wait();
        while let Ok(l) = s.events.recv_timeout(Duration::from_millis(200)) {
            s.seen.push(l);
        }
        let out = s.stdout.take().map(|h| h.join().unwrap_or_default());
        let peer = [&b, &a][i];
        let events: Vec<Value> = s
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        let settled = events
            .iter()
            .rev()
            .find(|e| e["event"] == "connected" || e["event"] == "path-changed");
        report += &format!(
            "\nside {i} exit {:?}, settled {settled:?}\n  {}\n  stdout {out:?}\n",
            codes[i],
            s.seen.join("\n  ")
        );
        if codes[i] != Some(0) {
            bad.push(format!("side {i} exited {:?}", codes[i]));
        }
        if out.as_deref() != Some(&format!("{}\n", lines[1 - i])) {
            bad.push(format!("side {i} printed {out:?}"));
        }
        match settled {
            Some(e)
                if e["remote"]["type"] == "host"
                    && e["remote"]["address"]
                        .as_str()
                        .is_some_and(|r| r.starts_with(&format!("{}:", peer.ip))) => {}
            other => bad.push(format!(
                "side {i} settled on {other:?}, expected host -> {}",
                peer.ip
            )),
        }
        if events.iter().any(|e| e["event"] == "mdns-unresolved") {
            bad.push(format!("side {i} could not resolve a name"));
        }
    }
    // What was signalled: names only, never a host address.
    for (name, host) in [("a", &a), ("b", &b)] {
        let sdp = std::fs::read_to_string(dir.join(format!("{name}.sdp"))).unwrap_or_default();
        let hosts: Vec<&str> = sdp.lines().filter(|l| l.contains(" typ host")).collect();
        if hosts.is_empty()
            || hosts.iter().any(|l| !l.contains(".local "))
            || sdp.contains(&host.ip.to_string())
        {
            bad.push(format!("{name}.sdp offers an address:\n{sdp}"));
        }
    }
    assert!(
        bad.is_empty(),
        "lab_mdns:\n  {}\n{report}",
        bad.join("\n  ")
    );
    println!("lab_mdns: both sides connected host→host over resolved .local names{report}");
}
